"""Acme's wire format: the kernel's types to ``POST /acme/v1/generate`` bodies and back.

Acme speaks in turns (``who``: system, user, bot, tool), answers ``{"text", "calls", "ended",
"count"}``, streams one JSON object per line (``start``, ``delta``, ``tool``, ``end`` or ``error``)
and reports failures as ``{"problem": {"kind", "detail"}}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from sira_kernel import (
    CallContext,
    ChatChoice,
    ChatRequest,
    ChatResponse,
    Finish,
    Message,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolFunction,
    Usage,
)
from sira_kernel.upstream import parse_retry_after, sanitize

__all__ = ["AcmeStreamParser", "decode_answer", "encode_request", "status_error"]

#: Acme's ``ended`` → the kernel's (OpenAI's) finish reason.
FINISH_REASONS = {"done": "stop", "calls": "tool_calls", "limit": "length"}


# -- requests ---------------------------------------------------------------------------------------


def _text(content: str | list[dict[str, Any]] | None, provider: str) -> tuple[str, list[dict[str, str]]]:
    """A message's text and its pictures (Acme takes images inline only)."""
    if content is None or isinstance(content, str):
        return content or "", []
    texts, pictures = [], []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            head, comma, data = url.partition(",")
            if not (url.startswith("data:") and head.endswith(";base64") and comma):
                raise ProviderRejected("Acme takes images as base64 data: URLs only", provider=provider, status=400)
            pictures.append({"mime": head[5:].removesuffix(";base64"), "data": data})
        else:
            raise ProviderRejected(f"Acme cannot take {kind!r} content", provider=provider, status=400)
    return "\n".join(texts), pictures


def _turn(message: Message, provider: str) -> dict[str, Any]:
    text, pictures = _text(message.content, provider)
    who = {"system": "system", "developer": "system", "user": "user", "assistant": "bot", "tool": "tool"}.get(
        message.role
    )
    if who is None:
        raise ProviderRejected(f"Acme has no turn for role {message.role!r}", provider=provider, status=400)
    turn: dict[str, Any] = {"who": who, "text": text}
    if pictures:
        turn["pictures"] = pictures
    if message.tool_calls:
        turn["calls"] = [{"ref": c.id, "tool": c.function.name, "input": c.function.arguments or "{}"}
                         for c in message.tool_calls]
    if who == "tool":
        turn["ref"] = message.tool_call_id or ""
    return turn


def encode_request(request: ChatRequest, ctx: CallContext, *, provider: str, stream: bool) -> dict[str, Any]:
    """The ``/acme/v1/generate`` body for ``request`` (``ProviderRejected`` for what Acme cannot take)."""
    body: dict[str, Any] = {
        "engine": ctx.upstream_model,
        "turns": [_turn(message, provider) for message in request.messages],
        "stream": stream,
    }
    if request.tools and request.tool_choice != "none":
        tools = [t.get("function", {}) for t in request.tools if t.get("type") == "function"]
        body["tools"] = [{"name": f["name"], "about": f.get("description", ""),
                          "schema": f.get("parameters", {"type": "object"})} for f in tools]
        if request.parallel_tool_calls is False:
            body["single_tool"] = True
    if request.token_limit is not None:
        body["max_words"] = request.token_limit
    if request.response_format and request.response_format.get("type") in ("json_object", "json_schema"):
        body["format"] = "json"
    return body


# -- answers ----------------------------------------------------------------------------------------


class _Count(msgspec.Struct):
    read: int = 0
    wrote: int = 0

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.read, completion_tokens=self.wrote, total_tokens=self.read + self.wrote)


class _Call(msgspec.Struct):
    ref: str
    tool: str
    input: str = "{}"


class _Answer(msgspec.Struct):
    id: str
    engine: str
    text: str = ""
    calls: list[_Call] = msgspec.field(default_factory=list)
    ended: str = "done"
    count: _Count | None = None


_decode_answer = msgspec.json.Decoder(_Answer).decode


def decode_answer(data: bytes, *, provider: str) -> ChatResponse:
    """A whole Acme answer as a ``ChatResponse`` (``ProviderUnavailable`` when it is unreadable)."""
    try:
        answer = _decode_answer(data)
    except msgspec.DecodeError as exc:
        raise ProviderUnavailable(f"Acme sent an unreadable answer: {exc}", provider=provider) from None
    calls = [ToolCall(id=c.ref, function=ToolFunction(name=c.tool, arguments=c.input)) for c in answer.calls]
    message = Message(role="assistant", content=answer.text or None, tool_calls=calls or None)
    return ChatResponse(
        id=answer.id, model=answer.engine,
        choices=[ChatChoice(index=0, message=message, finish_reason=FINISH_REASONS.get(answer.ended, answer.ended))],
        usage=answer.count.usage() if answer.count else None,
    )


def answer_events(response: ChatResponse) -> list[StreamEvent]:
    """A whole answer as stream events (for a server that ignored ``"stream": true``)."""
    message = response.choices[0].message
    events: list[StreamEvent] = [StreamStart(id=response.id, model=response.model)]
    if isinstance(message.content, str) and message.content:
        events.append(TextDelta(message.content))
    for index, call in enumerate(message.tool_calls or ()):
        events.append(ToolCallDelta(index, call.function.arguments, id=call.id, name=call.function.name))
    events.append(Finish(response.choices[0].finish_reason or "stop"))
    if response.usage is not None:
        events.append(response.usage)
    return events


# -- the stream -------------------------------------------------------------------------------------


class _Start(msgspec.Struct):
    id: str
    engine: str


class _Tool(msgspec.Struct):
    n: int
    ref: str | None = None
    name: str | None = None
    input: str = ""


class _End(msgspec.Struct):
    ended: str = "done"
    count: _Count | None = None


class _Problem(msgspec.Struct):
    kind: str = "internal"
    detail: str = ""


class _Line(msgspec.Struct):
    start: _Start | None = None
    delta: str | None = None
    tool: _Tool | None = None
    end: _End | None = None
    error: _Problem | None = None


_decode_line = msgspec.json.Decoder(_Line).decode


class AcmeStreamParser:
    """Acme's stream (one JSON object per line) in, kernel events out: a ``StreamParser``.

    Bytes may arrive split anywhere; a line is parsed once its ``\\n`` arrived (``\\r\\n`` works too).
    """

    def __init__(self, provider: str, secrets: Iterable[str] = ()) -> None:
        self._provider = provider
        self._secrets = tuple(secrets)
        self._buffer = b""
        self.started = False
        self.done = False
        self.failure: ProviderError | None = None

    def feed(self, raw: bytes) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        *lines, self._buffer = (self._buffer + raw).split(b"\n")
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                item = _decode_line(line)
            except msgspec.DecodeError:
                self.failure = ProviderUnavailable("Acme sent an unreadable stream line", provider=self._provider)
                break
            if item.start is not None and not self.started:
                self.started = True
                events.append(StreamStart(id=item.start.id, model=item.start.engine))
            if item.delta:
                events.append(TextDelta(item.delta))
            if item.tool is not None:
                tool = item.tool
                events.append(ToolCallDelta(tool.n, tool.input, id=tool.ref, name=tool.name))
            if item.end is not None:
                events.append(Finish(FINISH_REASONS.get(item.end.ended, item.end.ended)))
                if item.end.count is not None:
                    events.append(item.end.count.usage())
                self.done = True
                break
            if item.error is not None:
                self.failure = problem_error(item.error.kind, item.error.detail, provider=self._provider,
                                             secrets=self._secrets)
                break
        return events

    def end(self) -> list[StreamEvent]:
        """The body ended before the ``end`` line: the answer was cut short."""
        if self.failure is None:
            self.failure = ProviderUnavailable("Acme closed the stream before its end line", provider=self._provider)
        return []


# -- errors -----------------------------------------------------------------------------------------


def problem_error(
    kind: str, detail: str, *, provider: str, secrets: Iterable[str], retry_after: float | None = None
) -> ProviderError:
    """The kernel error for an Acme ``problem`` reported inside a started stream."""
    message = f"Acme {kind}: {sanitize(detail, secrets)}"
    if kind == "rate_limited":
        return ProviderRateLimited(message, provider=provider, retry_after=retry_after)
    if kind == "timeout":
        return ProviderTimeout(message, provider=provider)
    return ProviderUnavailable(message, provider=provider, retry_after=retry_after)


def status_error(
    status: int, headers: Mapping[str, str], body: bytes, *, provider: str, secrets: Iterable[str]
) -> ProviderError:
    """The kernel error for a non-2xx answer (a ``StatusErrorMapper``)."""
    if status in (401, 403):  # the gateway's own key was refused: not the client's fault
        return ProviderRejected(f"Acme refused this provider's key (HTTP {status})", provider=provider,
                                status=502, code="upstream_auth_failed")
    try:
        problem = msgspec.json.decode(body, type=dict[str, _Problem]).get("problem", _Problem())
    except (msgspec.DecodeError, msgspec.ValidationError):
        problem = _Problem(detail=body.decode("utf-8", "replace"))
    message = f"Acme answered {status} ({problem.kind}): {sanitize(problem.detail, secrets)}"
    retry_after = parse_retry_after(headers)
    if status == 429:
        return ProviderRateLimited(message, provider=provider, retry_after=retry_after)
    if status == 408:
        return ProviderTimeout(message, provider=provider)
    if 400 <= status < 500:
        return ProviderRejected(message, provider=provider, status=status)
    return ProviderUnavailable(message, provider=provider, retry_after=retry_after)
