"""OpenAI's wire format: encoding requests, decoding responses and stream chunks.

Requests are encoded straight from the kernel's structs with one ``msgspec`` pass; pass-through
fields (``extra``) are spliced into the encoded object instead of re-encoding the whole request.
Responses decode straight into the kernel's structs; unknown fields are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
from sira_kernel.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Finish,
    Message,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "Chunk",
    "chunk_events",
    "decode_chat",
    "decode_chunk",
    "decode_embeddings",
    "decode_models",
    "encode_chat",
    "encode_embeddings",
    "response_events",
]

_encode = msgspec.json.Encoder().encode

#: Fields the kernel models: a pass-through field may never shadow one (``model`` above all: the
#: router chose it, a client must not override the choice by smuggling it into ``extra``).
_CHAT_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(ChatRequest))
_EMBEDDING_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(EmbeddingRequest))


def _splice(body: bytes, extra: dict[str, Any], reserved: frozenset[str]) -> bytes:
    """Append ``extra``'s keys (minus ``reserved`` ones) to the encoded JSON object ``body``."""
    if not reserved.isdisjoint(extra):
        extra = {k: v for k, v in extra.items() if k not in reserved}
        if not extra:
            return body
    return body[:-1] + b"," + _encode(extra)[1:]


def encode_chat(
    request: ChatRequest, *, model: str, stream: bool, force_usage: bool, passthrough: bool
) -> bytes:
    """The upstream JSON body for ``request``, sent as ``model``.

    What only Anthropic reads is left out: ``reasoning_content`` and ``reasoning_signature`` of
    earlier assistant turns (DeepSeek rejects reasoning on input) and the ``cache_control`` marks
    of content parts and tools (an Anthropic-format client's prompt caching; OpenAI-compatible
    servers reject unknown keys). ``stream_options`` is only sent with ``stream`` (OpenAI rejects
    it otherwise); ``force_usage`` asks for the final usage chunk even if the client did not.
    """
    messages = request.messages
    for message in messages:
        if (
            message.reasoning_content is not None
            or message.reasoning_signature is not None
            or (isinstance(message.content, list) and _marked(message.content))
        ):
            messages = [_for_openai(m) for m in messages]
            break
    tools = request.tools
    if tools and _marked(tools):
        tools = [_unmarked(tool) for tool in tools]
    stream_options = request.stream_options
    if not stream:
        stream_options = None
    elif force_usage and not request.include_usage:
        stream_options = (
            {**stream_options, "include_usage": True} if stream_options else {"include_usage": True}
        )
    upstream = msgspec.structs.replace(
        request,
        model=model,
        messages=messages,
        tools=tools,
        stream=stream,
        stream_options=stream_options,
        extra={},
    )
    body = _encode(upstream)
    if passthrough and request.extra:
        body = _splice(body, request.extra, _CHAT_FIELDS)
    return body


def _marked(items: list[dict[str, Any]]) -> bool:
    """True if a content part or tool in ``items`` carries a ``cache_control`` mark."""
    for item in items:  # a loop, not any(): no generator on the hot path
        if "cache_control" in item:
            return True
    return False


def _unmarked(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "cache_control"} if "cache_control" in item else item


def _for_openai(message: Message) -> Message:
    """``message`` without reasoning and ``cache_control`` marks (the caller's is left as it is)."""
    content = message.content
    if isinstance(content, list) and _marked(content):
        content = [_unmarked(part) for part in content]
    if (
        content is message.content
        and message.reasoning_content is None
        and message.reasoning_signature is None
    ):
        return message
    return msgspec.structs.replace(message, content=content, reasoning_content=None, reasoning_signature=None)


def encode_embeddings(request: EmbeddingRequest, *, model: str, passthrough: bool) -> bytes:
    """The upstream JSON body for an embeddings request, sent as ``model``."""
    body = _encode(msgspec.structs.replace(request, model=model, extra={}))
    if passthrough and request.extra:
        body = _splice(body, request.extra, _EMBEDDING_FIELDS)
    return body


decode_chat = msgspec.json.Decoder(ChatResponse).decode
decode_embeddings = msgspec.json.Decoder(EmbeddingResponse).decode


# -- stream chunks ----------------------------------------------------------------------------------


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallChunk(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # vLLM, Ollama and OpenRouter spell it this way
    tool_calls: list[_ToolCallChunk] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class Chunk(msgspec.Struct):
    """One ``chat.completion.chunk`` (or an error object some servers send mid-stream)."""

    id: str = ""
    model: str = ""
    created: int | float = 0
    choices: list[_Choice] | None = None
    usage: Usage | None = None
    error: Any = None


decode_chunk = msgspec.json.Decoder(Chunk).decode


def chunk_events(chunk: Chunk, out: list[StreamEvent]) -> bool:
    """Append the kernel stream events ``chunk`` carries to ``out``; True if a choice finished."""
    finished = False
    if chunk.choices:
        for choice in chunk.choices:
            index = choice.index
            delta = choice.delta
            if delta is not None:
                reasoning = delta.reasoning_content or delta.reasoning
                if reasoning:
                    out.append(ReasoningDelta(reasoning, index))
                if delta.content:
                    out.append(TextDelta(delta.content, index))
                if delta.tool_calls:
                    for call in delta.tool_calls:
                        function = call.function
                        if function is None:
                            out.append(ToolCallDelta(call.index, "", call.id, None, index))
                        else:
                            out.append(
                                ToolCallDelta(
                                    call.index, function.arguments or "", call.id, function.name, index
                                )
                            )
            if choice.finish_reason:
                out.append(Finish(choice.finish_reason, index))
                finished = True
    if chunk.usage is not None:
        out.append(chunk.usage)
    return finished


def response_events(response: ChatResponse) -> Iterator[StreamEvent]:
    """Events equivalent to a whole response, for upstreams that answer a stream request with JSON."""
    for choice in response.choices:
        message = choice.message
        if message.reasoning_content:
            yield ReasoningDelta(message.reasoning_content, choice.index)
        if isinstance(message.content, str) and message.content:
            yield TextDelta(message.content, choice.index)
        for k, call in enumerate(message.tool_calls or ()):
            yield ToolCallDelta(k, call.function.arguments, call.id, call.function.name, choice.index)
        yield Finish(choice.finish_reason or "stop", choice.index)
    if response.usage is not None:
        yield response.usage


class _Model(msgspec.Struct):
    id: str


class _ModelList(msgspec.Struct):
    data: list[_Model]


_decode_models = msgspec.json.Decoder(_ModelList).decode


def decode_models(body: bytes) -> list[str]:
    """The model ids of a ``GET /models`` answer."""
    return [m.id for m in _decode_models(body).data]
