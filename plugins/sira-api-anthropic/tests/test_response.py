"""Kernel responses and errors → Anthropic's message object and error mapping."""

from __future__ import annotations

import json

import pytest
from sira_kernel import ChatChoice, ChatResponse, Message, ToolCall, ToolFunction, Usage

from sira_api_anthropic._response import encode_message, error_body, error_status, stop_reason, tool_input, usage_of


def message(**fields: object) -> ChatResponse:
    reply = Message(role="assistant", **fields)  # type: ignore[arg-type]
    return ChatResponse(id="chatcmpl-1", model="gpt-4o", choices=[ChatChoice(0, reply, "stop")],
                        usage=Usage(10, 5, 15))


def test_text_message() -> None:
    body = json.loads(encode_message(message(content="Hello")))
    assert body == {
        "id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "gpt-4o",
        "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0},
    }


def test_thinking_text_and_tool_use_blocks_in_order() -> None:
    calls = [ToolCall("call_1", ToolFunction("get_weather", '{"city": "Paris"}')),
             ToolCall("call_2", ToolFunction("noop", ""))]
    body = json.loads(encode_message(message(
        content="Checking.", tool_calls=calls, reasoning_content="Hmm.", reasoning_signature="sig"
    )))
    assert body["content"] == [
        {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "noop", "input": {}},
    ]
    assert body["stop_reason"] == "tool_use"  # the upstream said "stop", but the reply calls tools


def test_text_parts_empty_replies_and_no_choices() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "x"}, {"type": "text", "text": "b"}]
    assert json.loads(encode_message(message(content=parts)))["content"] == [{"type": "text", "text": "ab"}]
    assert json.loads(encode_message(message(content="")))["content"] == []
    empty = json.loads(encode_message(ChatResponse(id="msg_x", model="m", choices=[])))
    assert (empty["id"], empty["content"], empty["stop_reason"]) == ("msg_x", [], "end_turn")
    assert empty["usage"]["input_tokens"] == 0


def test_tool_input_keeps_malformed_arguments_visible() -> None:
    assert tool_input('{"a": 1}') == {"a": 1}
    assert tool_input("  ") == {}
    assert tool_input('{"a": ') == {"_raw_arguments": '{"a": '}
    assert tool_input("[1]") == {"_raw_arguments": "[1]"}


@pytest.mark.parametrize(
    ("finish", "tools", "expected"),
    [
        ("stop", False, "end_turn"), (None, False, "end_turn"), ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"), ("function_call", True, "tool_use"), ("stop", True, "tool_use"),
        ("content_filter", False, "refusal"), ("stop_sequence", False, "stop_sequence"),
        ("pause_turn", False, "pause_turn"), ("something_new", False, "end_turn"), ("length", True, "max_tokens"),
    ],
)
def test_stop_reasons(finish: str | None, tools: bool, expected: str) -> None:
    assert stop_reason(finish, tools) == expected


def test_usage_separates_cached_tokens_like_anthropic() -> None:
    usage = Usage(prompt_tokens=100, completion_tokens=7, total_tokens=107,
                  prompt_tokens_details={"cached_tokens": 60, "cache_creation_tokens": 30})
    assert usage_of(usage).__struct_fields__  # a struct, encoded as an object
    got = usage_of(usage)
    assert (got.input_tokens, got.cache_read_input_tokens, got.cache_creation_input_tokens, got.output_tokens) == (
        10, 60, 30, 7)
    assert usage_of(None).input_tokens == 0
    odd = Usage(prompt_tokens=5, prompt_tokens_details={"cached_tokens": 9})
    assert usage_of(odd).input_tokens == 0  # never negative


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, (400, "invalid_request_error")), (401, (401, "authentication_error")),
        (403, (403, "permission_error")), (404, (404, "not_found_error")), (413, (413, "request_too_large")),
        (422, (422, "invalid_request_error")), (429, (429, "rate_limit_error")), (500, (500, "api_error")),
        (502, (502, "api_error")), (503, (529, "overloaded_error")), (504, (504, "api_error")),
        (529, (529, "overloaded_error")),
    ],
)
def test_error_status(status: int, expected: tuple[int, str]) -> None:
    assert error_status(status) == expected


def test_error_body_shape() -> None:
    assert json.loads(error_body("not_found_error", "no such model", "req-1")) == {
        "type": "error", "error": {"type": "not_found_error", "message": "no such model"}, "request_id": "req-1",
    }
