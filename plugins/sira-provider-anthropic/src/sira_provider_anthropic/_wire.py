"""Anthropic Messages API answers → kernel responses: the message object, stop reasons, usage.

Only the fields the gateway reads are declared; msgspec skips the rest while decoding, so new
fields Anthropic adds cost nothing. Missing fields get defaults: documented examples leave out
``id``, ``model`` or ``usage``, and a gateway should not fail on those.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgspec
from sira_kernel.types import (
    ChatChoice,
    ChatResponse,
    Finish,
    Message,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolFunction,
    Usage,
)

__all__ = [
    "AnthropicMessage",
    "AnthropicUsage",
    "Block",
    "decode_message",
    "finish_reason",
    "response_events",
    "to_chat_response",
    "to_usage",
]

_encode = msgspec.json.Encoder().encode

#: Anthropic ``stop_reason`` → OpenAI ``finish_reason``.
FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # a server tool paused a long turn; the client may continue it
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class Block(msgspec.Struct):
    """One content block of any type (text, tool_use, thinking, redacted_thinking, …)."""

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    thinking: str | None = None
    signature: str | None = None


class AnthropicUsage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class AnthropicMessage(msgspec.Struct):
    """A Messages API answer (also the ``message`` of a stream's ``message_start``)."""

    type: str = "message"
    id: str = ""
    model: str = ""
    content: list[Block] = msgspec.field(default_factory=list)
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: AnthropicUsage | None = None


decode_message = msgspec.json.Decoder(AnthropicMessage).decode


def finish_reason(stop_reason: str | None) -> str:
    """OpenAI's ``finish_reason`` for an Anthropic ``stop_reason`` (unknown ones count as ``stop``)."""
    return FINISH_REASONS.get(stop_reason or "end_turn", "stop")


def to_usage(input_tokens: int, output_tokens: int, cache_read: int, cache_write: int) -> Usage:
    """Kernel usage: every prompt token (cached, written to cache or not) counts as a prompt token."""
    prompt = input_tokens + cache_read + cache_write
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=output_tokens,
        total_tokens=prompt + output_tokens,
        prompt_tokens_details={"cached_tokens": cache_read, "cache_creation_tokens": cache_write},
    )


def to_chat_response(message: AnthropicMessage, *, fallback_id: str, fallback_model: str) -> ChatResponse:
    """The kernel response for a whole Anthropic message.

    Text blocks are joined into ``content``; ``tool_use`` blocks become ``tool_calls`` (arguments
    as a JSON string); thinking blocks become ``reasoning_content``, with ``reasoning_signature``
    when there is exactly one (the signature verifies that block's text as a whole, so the
    concatenation of several cannot carry one). ``redacted_thinking`` and server-tool blocks have no
    OpenAI-shaped place and are left out.
    """
    texts: list[str] = []
    thoughts: list[str] = []
    signatures: list[str] = []
    calls: list[ToolCall] = []
    for block in message.content:
        if block.type == "text" and block.text:
            texts.append(block.text)
        elif block.type == "tool_use":
            arguments = _encode(block.input if block.input is not None else {}).decode()
            calls.append(
                ToolCall(id=block.id or "", function=ToolFunction(name=block.name or "", arguments=arguments))
            )
        elif block.type == "thinking":
            thoughts.append(block.thinking or "")
            if block.signature:
                signatures.append(block.signature)
    reply = Message(
        role="assistant",
        content="".join(texts) if texts or not calls else None,
        tool_calls=calls or None,
        reasoning_content="".join(thoughts) if thoughts else None,
        reasoning_signature=signatures[0] if len(thoughts) == 1 and len(signatures) == 1 else None,
    )
    usage = message.usage
    return ChatResponse(
        id=message.id or fallback_id,
        model=message.model or fallback_model,
        created=int(time.time()),
        choices=[ChatChoice(index=0, message=reply, finish_reason=finish_reason(message.stop_reason))],
        usage=None
        if usage is None
        else to_usage(
            usage.input_tokens or 0,
            usage.output_tokens or 0,
            usage.cache_read_input_tokens or 0,
            usage.cache_creation_input_tokens or 0,
        ),
    )


def response_events(response: ChatResponse) -> Iterator[StreamEvent]:
    """The stream events (after ``StreamStart``) equivalent to a whole response, for upstreams that
    answer a stream request with one JSON message."""
    message = response.choices[0].message
    if message.reasoning_content:
        yield ReasoningDelta(message.reasoning_content, signature=message.reasoning_signature)
    if isinstance(message.content, str) and message.content:
        yield TextDelta(message.content)
    for number, call in enumerate(message.tool_calls or ()):
        yield ToolCallDelta(number, call.function.arguments, call.id, call.function.name)
    yield Finish(response.choices[0].finish_reason or "stop")
    if response.usage is not None:
        yield response.usage
