"""OpenAI wire format ⇄ kernel types: request decoding, chunk encoding, error bodies."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from sira_kernel import (
    ChatRequest,
    EmbeddingRequest,
    Finish,
    ReasoningDelta,
    RequestError,
    SiraError,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    Usage,
)

_decode_json = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode

CHAT_FIELDS = frozenset(f.name for f in msgspec.structs.fields(ChatRequest)) - {"extra"}
EMBED_FIELDS = frozenset(f.name for f in msgspec.structs.fields(EmbeddingRequest)) - {"extra"}
_AT = re.compile(r" - at `\$\.?([^`]*)`$")


def _parse_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise RequestError("the request body is empty; send a JSON object")
    try:
        data = _decode_json.decode(body)
    except msgspec.DecodeError:
        raise RequestError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    return data


def _convert(data: dict[str, Any], struct: type[Any], known: frozenset[str]) -> Any:
    extra = {k: v for k, v in data.items() if k not in known}
    if extra:
        data = {k: v for k, v in data.items() if k in known}
    try:
        request = msgspec.convert(data, struct)
    except msgspec.ValidationError as err:
        text = str(err)
        match = _AT.search(text)
        param = match.group(1) if match else None
        message = _AT.sub("", text)
        missing = re.match(r"Object missing required field `([^`]+)`", message)
        if missing:
            field = f"{param}.{missing.group(1)}" if param else missing.group(1)
            raise RequestError(f"missing required field '{field}'", param=field) from None
        where = f" at '{param}'" if param else ""
        raise RequestError(f"invalid request{where}: {message}", param=param) from None
    request.extra = extra
    return request


def _decode(body: bytes, struct: type[Any], known: frozenset[str]) -> Any:
    try:
        return _convert(_parse_object(body), struct, known)
    except RecursionError:  # a JSON bomb ([[[[…]]]]): msgspec gives up at Python's recursion limit
        raise RequestError("the request body is nested too deeply") from None


def decode_chat(body: bytes) -> ChatRequest:
    """Parse and validate a chat completion body; unknown fields go to ``extra``."""
    return _decode(body, ChatRequest, CHAT_FIELDS)  # type: ignore[no-any-return]


def decode_embeddings(body: bytes) -> EmbeddingRequest:
    return _decode(body, EmbeddingRequest, EMBED_FIELDS)  # type: ignore[no-any-return]


def error_body(exc: SiraError) -> bytes:
    return _encode(
        {"error": {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}}
    )


# -- stream chunks -----------------------------------------------------------------------------------


class _Function(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct, omit_defaults=True):
    index: int
    id: str | None = None
    type: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _ChunkChoice(msgspec.Struct):
    index: int
    delta: _Delta
    finish_reason: str | None = None
    logprobs: None = None


class _Chunk(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[_ChunkChoice]
    object: str = "chat.completion.chunk"
    usage: Usage | None = None


class _ChunkNoUsage(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[_ChunkChoice]
    object: str = "chat.completion.chunk"


class ChunkEncoder:
    """Turns kernel stream events into ``data: {...}\\n\\n`` SSE lines for one response."""

    def __init__(self, start: StreamStart, include_usage: bool) -> None:
        self.id = start.id
        self.created = start.created
        self.model = start.model  # what the provider says answered, as in non-streamed responses
        self.include_usage = include_usage
        self._roles_sent: set[int] = set()

    def _line(self, choice: _ChunkChoice) -> bytes:
        return b"data: " + _encode(_ChunkNoUsage(self.id, self.created, self.model, [choice])) + b"\n\n"

    def _delta(self, index: int, delta: _Delta) -> _Delta:
        if index not in self._roles_sent:
            self._roles_sent.add(index)
            delta.role = "assistant"
        return delta

    def first(self) -> bytes:
        """The opening chunk: the assistant role for choice 0, empty content (as OpenAI sends)."""
        self._roles_sent.add(0)
        return self._line(_ChunkChoice(0, _Delta(role="assistant", content="")))

    def encode(self, event: StreamEvent) -> bytes | None:
        if isinstance(event, TextDelta):
            return self._line(_ChunkChoice(event.index, self._delta(event.index, _Delta(content=event.text))))
        if isinstance(event, ToolCallDelta):
            call = _ToolCall(
                index=event.call_index,
                id=event.id,
                type="function" if event.id is not None else None,
                function=_Function(name=event.name, arguments=event.arguments),
            )
            return self._line(_ChunkChoice(event.index, self._delta(event.index, _Delta(tool_calls=[call]))))
        if isinstance(event, ReasoningDelta):
            delta = self._delta(event.index, _Delta(reasoning_content=event.text))
            return self._line(_ChunkChoice(event.index, delta))
        if isinstance(event, Finish):
            return self._line(_ChunkChoice(event.index, self._delta(event.index, _Delta()), event.reason))
        if isinstance(event, Usage):
            if not self.include_usage:
                return None
            return b"data: " + _encode(_Chunk(self.id, self.created, self.model, [], usage=event)) + b"\n\n"
        if isinstance(event, StreamError):
            return stream_error_line(event)
        return None  # StreamStart (already sent) and events this surface does not show

    def encode_batch(self, events: list[StreamEvent]) -> bytes:
        """The SSE lines of ``events``, joined (one body message for what arrived together)."""
        if len(events) == 1:
            return self.encode(events[0]) or b""
        return b"".join([line for line in map(self.encode, events) if line is not None])


def stream_error_line(event: StreamError) -> bytes:
    """The SSE line that makes the ``openai`` SDK raise ``APIError`` mid-stream."""
    body = {"error": {"message": event.message, "type": event.error_type, "param": None, "code": event.code}}
    return b"data: " + _encode(body) + b"\n\n"


DONE = b"data: [DONE]\n\n"
