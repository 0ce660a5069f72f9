"""The kernel's vocabulary: requests, responses and typed stream events, shaped like OpenAI chat.

Every surface translates its wire format into these structs, every provider adapter translates them
into its upstream's, and every stream-aware plugin sees the same parsed stream of events.

Fields the kernel does not model are kept in ``extra`` (a plain dict) and passed through to providers
that accept them; message content parts stay plain dicts so any part type (text, image_url,
input_audio, file…) survives the trip.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import msgspec

__all__ = [
    "ChatChoice",
    "ChatRequest",
    "ChatResponse",
    "EmbeddingData",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "Finish",
    "Message",
    "ModelInfo",
    "ReasoningDelta",
    "StreamError",
    "StreamEvent",
    "StreamStart",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolFunction",
    "Usage",
]


class ToolFunction(msgspec.Struct):
    name: str
    arguments: str = ""


class ToolCall(msgspec.Struct):
    id: str
    function: ToolFunction
    type: str = "function"


class Message(msgspec.Struct, omit_defaults=True):
    """One chat message. ``content`` is text, a list of content parts, or None (tool-call turns)."""

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning_signature: str | None = None
    """Opaque signature of the reasoning (Anthropic thinking blocks must be sent back with it)."""


class ChatRequest(msgspec.Struct, omit_defaults=True):
    """A chat completion request. Unmodelled fields live in ``extra`` and pass through."""

    model: str
    messages: list[Message]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    user: str | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def include_usage(self) -> bool:
        """True when a streaming client asked for a final usage chunk."""
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    @property
    def token_limit(self) -> int | None:
        """The output token cap the client asked for, whichever field it used."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class Usage(msgspec.Struct):
    """Token counts. As a stream event it reports the totals for the whole response.

    Cached prompt tokens go in ``prompt_tokens_details`` as OpenAI reports them
    (``{"cached_tokens": n}``), with ``"cache_creation_tokens"`` for tokens written to a cache.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


class ChatChoice(msgspec.Struct):
    index: int
    message: Message
    finish_reason: str | None = None
    logprobs: Any = None


class ChatResponse(msgspec.Struct):
    """A complete (non-streamed) chat completion."""

    id: str
    model: str
    choices: list[ChatChoice]
    created: int = 0
    usage: Usage | None = None
    system_fingerprint: str | None = None
    object: str = "chat.completion"


# -- stream events ----------------------------------------------------------------------------------


class StreamStart(msgspec.Struct, omit_defaults=True):
    """First event of a stream: the response id and the model that answers."""

    id: str
    model: str
    created: int = 0


class TextDelta(msgspec.Struct, omit_defaults=True):
    """A piece of assistant text for choice ``index``."""

    text: str
    index: int = 0


class ReasoningDelta(msgspec.Struct, omit_defaults=True):
    """A piece of reasoning ("thinking") text for choice ``index``; ``signature`` when the upstream
    signs its reasoning (it arrives once, usually at the end of the block)."""

    text: str
    index: int = 0
    signature: str | None = None


class ToolCallDelta(msgspec.Struct, omit_defaults=True):
    """A piece of tool call ``call_index`` of choice ``index``.

    The first delta of a call carries ``id`` and ``name``; later ones carry argument fragments.
    Concatenating ``arguments`` of all deltas of one call gives the full JSON arguments.
    """

    call_index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None
    index: int = 0


class Finish(msgspec.Struct, omit_defaults=True):
    """Choice ``index`` is complete; ``reason`` is OpenAI's finish_reason (stop, length, tool_calls…)."""

    reason: str
    index: int = 0


class StreamError(msgspec.Struct, omit_defaults=True):
    """The stream failed after it started. Surfaces end the stream with an error event."""

    message: str
    status: int = 502
    code: str = "upstream_error"
    error_type: str = "api_error"


StreamEvent: TypeAlias = StreamStart | TextDelta | ReasoningDelta | ToolCallDelta | Finish | Usage | StreamError


# -- embeddings and models --------------------------------------------------------------------------


class EmbeddingRequest(msgspec.Struct, omit_defaults=True):
    model: str
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    user: str | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class EmbeddingData(msgspec.Struct):
    index: int
    embedding: list[float] | str
    object: str = "embedding"


class EmbeddingResponse(msgspec.Struct):
    data: list[EmbeddingData]
    model: str
    usage: Usage | None = None
    object: str = "list"


class ModelInfo(msgspec.Struct, omit_defaults=True):
    """A model a provider serves. ``id`` is the public name; ``upstream`` the name sent upstream."""

    id: str
    owned_by: str = "sira"
    upstream: str | None = None
    kind: Literal["chat", "embedding"] = "chat"
    context_window: int | None = None
