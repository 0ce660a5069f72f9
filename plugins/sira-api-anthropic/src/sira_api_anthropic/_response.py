"""Kernel responses and errors → Anthropic's wire format.

* A :class:`~sira_kernel.ChatResponse` becomes a ``message`` object: ``content`` is a ``thinking``
  block (when the reply has reasoning), a ``text`` block (when it has text) and one ``tool_use``
  block per tool call, whose ``input`` is the parsed arguments object.
* Finish reasons: ``stop`` → ``end_turn``, ``length`` → ``max_tokens``, ``tool_calls`` →
  ``tool_use``, ``content_filter`` → ``refusal``; Anthropic's own reasons pass unchanged; a reply
  with tool calls is ``tool_use`` whatever the upstream said. ``stop_sequence`` is never reported:
  an OpenAI-format upstream does not say which stop sequence ended the reply, so it is
  ``end_turn`` with ``stop_sequence: null``.
* Usage: ``input_tokens`` is the prompt tokens minus the cached ones (Anthropic counts cache reads
  and writes apart, OpenAI includes them), ``cache_read_input_tokens`` is
  ``prompt_tokens_details.cached_tokens``, ``cache_creation_input_tokens`` is
  ``prompt_tokens_details.cache_creation_tokens``, ``output_tokens`` is ``completion_tokens``.
* Errors have Anthropic's shape ``{"type": "error", "error": {"type", "message"}, "request_id"}``;
  :func:`error_status` maps a kernel status onto Anthropic's status and error type.
"""

from __future__ import annotations

from typing import Any

import msgspec
from sira_kernel import ChatResponse, Message, Usage

__all__ = [
    "AnthropicUsage",
    "error_body",
    "error_status",
    "message_id",
    "encode_message",
    "stop_reason",
    "tool_input",
    "usage_of",
]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
    # Anthropic's own reasons, from providers that pass them through.
    "end_turn": "end_turn",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "tool_use": "tool_use",
    "pause_turn": "pause_turn",
    "refusal": "refusal",
}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_status(status: int) -> tuple[int, str]:
    """Anthropic's (HTTP status, error type) for a kernel error status.

    503 (the gateway's queue is full, or a provider is draining) is Anthropic's 529
    ``overloaded_error``, which its SDK retries with backoff; any other 5xx is ``api_error`` with
    its own status (502 upstream failure, 504 timeout); any other 4xx is ``invalid_request_error``.
    """
    if status == 503:
        return 529, "overloaded_error"
    error_type = _ERROR_TYPES.get(status)
    if error_type is not None:
        return status, error_type
    return status, "api_error" if status >= 500 else "invalid_request_error"


def error_body(error_type: str, message: str, request_id: str) -> bytes:
    return _encode({"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id})


def message_id(response_id: str) -> str:
    """Anthropic-style ids start with ``msg_``; keep the upstream's id after it, for correlation."""
    return response_id if response_id.startswith("msg_") else f"msg_{response_id}"


def stop_reason(finish_reason: str | None, used_tools: bool) -> str:
    reason = STOP_REASONS.get(finish_reason or "stop", "end_turn")
    if used_tools and reason == "end_turn":
        return "tool_use"  # some OpenAI-compatible servers finish a tool call with "stop"
    return reason


class AnthropicUsage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


def usage_of(usage: Usage | None) -> AnthropicUsage:
    if usage is None:
        return AnthropicUsage()
    details = usage.prompt_tokens_details or {}
    cache_read = details.get("cached_tokens") or 0
    cache_creation = details.get("cache_creation_tokens") or 0
    return AnthropicUsage(
        input_tokens=max(usage.prompt_tokens - cache_read - cache_creation, 0),
        output_tokens=usage.completion_tokens,
        cache_creation_input_tokens=cache_creation,
        cache_read_input_tokens=cache_read,
    )


def tool_input(arguments: str) -> Any:
    """A tool call's arguments as the object Anthropic's ``input`` must be.

    Arguments that are not a JSON object (a model's malformed output) are kept whole as
    ``{"_raw_arguments": "..."}`` rather than lost, so the client can see and report them.
    """
    if not arguments or arguments.isspace():
        return {}
    try:
        value = _decode(arguments)
    except msgspec.DecodeError:
        value = None
    if isinstance(value, dict):
        return value
    return {"_raw_arguments": arguments}


# -- the message object ------------------------------------------------------------------------------


class _Text(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class _Thinking(msgspec.Struct, tag_field="type", tag="thinking"):
    thinking: str
    signature: str


class _ToolUse(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: Any


class _Message(msgspec.Struct, kw_only=True):
    id: str
    type: str = "message"
    role: str = "assistant"
    model: str
    content: list[_Text | _Thinking | _ToolUse]
    stop_reason: str
    stop_sequence: str | None = None
    usage: AnthropicUsage


def _text_of(message: Message) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    if not content:
        return ""
    return "".join(part["text"] for part in content if isinstance(part.get("text"), str))


def encode_message(response: ChatResponse) -> bytes:
    """The JSON ``message`` object for a complete response (its first choice)."""
    content: list[_Text | _Thinking | _ToolUse] = []
    finish: str | None = None
    calls = None
    if response.choices:
        choice = response.choices[0]
        finish = choice.finish_reason
        message = choice.message
        if message.reasoning_content:
            content.append(_Thinking(message.reasoning_content, message.reasoning_signature or ""))
        text = _text_of(message)
        if text:
            content.append(_Text(text))
        calls = message.tool_calls
        for call in calls or ():
            content.append(_ToolUse(call.id, call.function.name, tool_input(call.function.arguments)))
    return _encode(
        _Message(
            id=message_id(response.id),
            model=response.model,
            content=content,
            stop_reason=stop_reason(finish, bool(calls)),
            usage=usage_of(response.usage),
        )
    )
