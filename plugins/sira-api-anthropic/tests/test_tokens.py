"""The documented count_tokens estimate: the kernel's text estimate plus images, reasoning and tools."""

from __future__ import annotations

import msgspec
from sira_kernel import ChatRequest, Message, ToolCall, ToolFunction
from sira_kernel.accounting import MESSAGE_OVERHEAD

from sira_api_anthropic import estimate_input_tokens
from sira_api_anthropic._tokens import ATTACHMENT_TOKENS, TOOL_TOKENS, TOOLS_TOKENS


def request(*messages: Message, tools: list[dict[str, object]] | None = None) -> ChatRequest:
    return ChatRequest(model="m", messages=list(messages), tools=tools)


def test_four_characters_per_token_plus_a_per_message_overhead() -> None:
    assert estimate_input_tokens(request(Message("user", "x" * 40))) == 10 + MESSAGE_OVERHEAD
    assert estimate_input_tokens(request(Message("user", "x" * 41))) == 11 + MESSAGE_OVERHEAD  # rounded up
    two = request(Message("system", "x" * 8), Message("user", "y" * 8))
    assert estimate_input_tokens(two) == 4 + 2 * MESSAGE_OVERHEAD


def test_images_files_tool_calls_reasoning_and_tool_results_count() -> None:
    parts = [{"type": "text", "text": "x" * 20}, {"type": "image_url", "image_url": {"url": "data:..."}},
             {"type": "file", "file": {"file_data": "data:..."}}]
    assert estimate_input_tokens(request(Message("user", parts))) == 5 + 2 * ATTACHMENT_TOKENS + MESSAGE_OVERHEAD
    call = ToolCall("t", ToolFunction("abcd", "x" * 12))
    assistant = Message("assistant", None, tool_calls=[call], reasoning_content="y" * 8)
    result = Message("tool", "z" * 8, tool_call_id="t")
    assert estimate_input_tokens(request(assistant, result)) == (4 + 2) + 2 + 2 * MESSAGE_OVERHEAD


def test_tools_add_a_fixed_overhead_and_their_definitions() -> None:
    base = estimate_input_tokens(request(Message("user", "hi")))
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with_tool = estimate_input_tokens(request(Message("user", "hi"), tools=[tool]))
    schema_tokens = -(-len(msgspec.json.encode(tool)) // 4)
    assert with_tool - base == TOOLS_TOKENS + TOOL_TOKENS + schema_tokens
    assert estimate_input_tokens(ChatRequest(model="m", messages=[])) == 1
