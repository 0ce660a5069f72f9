"""A fake Anthropic Messages API upstream: a real HTTP server on loopback, for tests.

A :class:`~sira_kernel.testing.loopback.LoopbackUpstream` (an aiohttp server on ``127.0.0.1`` in a
background thread, recorded requests, queued faults, stream counters) speaking Anthropic's wire
format::

    from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream, Fault

    with FakeAnthropicUpstream(api_key="sk-ant-test") as fake:
        fake.enqueue(Fault(status=529))                   # the next request: overloaded_error
        fake.enqueue(Fault(error_after=3))                # then a stream cut by `event: error`
        fake.replay("tool_use_stream")                    # then a documented exchange, byte for byte
        ...
        assert fake.requests[-1].json["max_tokens"] == 4096

Public API
----------
``FakeAnthropicUpstream(*, chunk_delay=0.0, api_key=None, models=DEFAULT_MODELS)``
    ``chunk_delay`` paces streamed events; ``api_key``, when set, makes the server demand
    ``x-api-key: <key>`` and answer 401 ``authentication_error`` otherwise; ``models`` is what
    ``GET /v1/models`` lists.

    ``start()`` / ``stop()``, or use it as a context manager. Attributes and methods:

    - ``base_url``: ``"http://127.0.0.1:PORT"`` (clients append ``/v1/messages``); ``port``.
    - ``requests``: list of :class:`~sira_kernel.testing.loopback.RecordedRequest` (``method``,
      ``path``, ``query``, ``headers`` with lower-cased names, ``json``, ``body``).
    - ``open_streams``, ``aborted_streams`` (the client went away), ``dropped_streams`` (cut on
      purpose by ``Fault.drop_after``), ``completed_streams``, ``connections_open``.
    - ``enqueue(*faults)``: :class:`Fault` objects for the coming requests, one each, FIFO
      (the loopback ``Fault`` works too); ``pending_faults``.
    - ``replay(name, **fault_fields)``: the next request is answered with the checked-in exchange
      ``name`` (see :func:`fixture_names`), whatever it asked.
    - ``wait_until(predicate, timeout=5.0)`` / ``await wait_until_async(...)``; ``reset()``.

Endpoints
---------
``POST /v1/messages`` (JSON, or SSE with ``"stream": true``), ``POST /v1/messages/count_tokens``
(``{"input_tokens": n}``), ``GET /v1/models``. Every request needs ``anthropic-version``.

Requests are checked the way the real API checks them, so adapter bugs surface as 400s:
unknown top-level fields, a missing ``model``/``max_tokens``, roles other than user/assistant,
turns that do not alternate (the real API merges them; the fake is stricter on purpose), empty
text blocks, ``tool_use`` blocks without a ``tool_result`` in the next user turn, thinking blocks
whose signature this server did not issue, ``thinking.budget_tokens`` not below ``max_tokens``,
``temperature`` above 1.

Replies are deterministic. The text is ``"Echo: <text of the last user turn>"`` (tool results
included; ``"Hello from the fake upstream."`` when there is none), streamed one ``text_delta`` per
word. With ``tools`` (and ``tool_choice`` not ``none``) and a last user turn that is not tool
results, the reply is ``tool_use`` blocks: one per tool up to two (one with
``disable_parallel_tool_use`` or a named ``tool`` choice), inputs ``{"location": "Paris"}`` then
``{"location": "Tokyo"}``, streamed as an empty ``input_json_delta`` and then 6-character
fragments; with ``tool_choice`` ``auto`` a short text block comes first. A request with
``thinking`` gets a ``thinking`` block first (``"Let me think about that."``, streamed by word,
then a ``signature_delta``). ``max_tokens`` cuts the text (``max_tokens`` stop reason) and a
``stop_sequences`` entry found in it cuts it there (``stop_sequence``).

Usage counts whitespace-separated words: ``input_tokens`` over tools, system and messages,
``output_tokens`` over what the reply holds. Prompt caching is simulated: the prompt up to the
last block carrying ``cache_control`` is a cache prefix, reported as
``cache_creation_input_tokens`` the first time it is seen and ``cache_read_input_tokens`` after.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from . import loopback
from .loopback import (
    FALLBACK_REPLY,
    THINKING_TEXT,
    TOOL_ARGUMENTS,
    LoopbackUpstream,
    RecordedRequest,
    body_fault,
    fixture_files,
    fragments,
    split_sse,
    split_words,
    sse_event,
)

__all__ = [
    "DEFAULT_MODELS",
    "ERROR_TYPES",
    "Exchange",
    "FakeAnthropicUpstream",
    "Fault",
    "RecordedRequest",
    "fixture_names",
    "load_fixture",
]

DEFAULT_MODELS: tuple[str, ...] = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
TOOL_PREAMBLE = "Let me check."

#: Anthropic's error ``type`` for each HTTP status it documents.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_MESSAGE_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
        "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
        "container", "mcp_servers", "context_management",
    }
)  # fmt: skip
_COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"})


@dataclass
class Fault(loopback.Fault):
    """What the server does to one request; the loopback ``Fault`` plus Anthropic-only knobs.

    ``status`` answers an Anthropic error body (``{"type": "error", "error": {...}}``) whose type
    follows the status (529 is ``overloaded_error``) unless ``error_type`` says otherwise.
    ``drop_after`` counts SSE events on streams (bytes on JSON answers).
    """

    error_type: str | None = None
    """The Anthropic error ``type`` for ``status`` or ``error_after`` (default: from the status,
    ``overloaded_error`` mid-stream)."""
    error_after: int | None = None
    """Stream: after this many events, send ``event: error`` (``error_type``, ``message``) and end
    the stream cleanly, as Anthropic does when it fails mid-answer."""
    fixture: str | None = None
    """Answer with this checked-in exchange (see :func:`fixture_names`) instead of generating one."""


# -- checked-in exchanges ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """One documented exchange: the request body and a JSON ``response`` or an SSE ``stream``."""

    name: str
    request: dict[str, Any]
    response: dict[str, Any] | None
    stream: bytes | None


def fixture_names() -> list[str]:
    """The names of the checked-in exchanges, sorted."""
    return loopback.fixture_names("anthropic")


def load_fixture(name: str) -> Exchange:
    """The checked-in exchange ``name``; ``KeyError`` when there is none."""
    files = fixture_files("anthropic", name, label="Anthropic")
    response = files.get("response.json")
    return Exchange(
        name=name,
        request=msgspec.json.decode(files["request.json"]),
        response=msgspec.json.decode(response) if response is not None else None,
        stream=files.get("stream.sse"),
    )


# -- the server -------------------------------------------------------------------------------------


class FakeAnthropicUpstream(LoopbackUpstream):
    """A real Anthropic-format HTTP server on loopback, run in a background thread. See the module doc."""

    fault_type = Fault

    def __init__(
        self,
        *,
        chunk_delay: float = 0.0,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
    ) -> None:
        super().__init__(chunk_delay=chunk_delay, api_key=api_key, models=models)
        self._cached_prefixes: set[str] = set()

    def replay(self, name: str, **fault_fields: Any) -> None:
        """Answer the next request with the checked-in exchange ``name`` (plus any other
        :class:`Fault` fields)."""
        load_fixture(name)  # fail here, in the test, for an unknown name
        self.enqueue(Fault(fixture=name, **fault_fields))

    def reset(self) -> None:
        """Forget recorded requests, queued faults, counters and the simulated prompt cache."""
        super().reset()
        self._cached_prefixes.clear()

    # -- request handling ---------------------------------------------------------------------------

    async def handle(self, request: web.Request, body: Any, fault: loopback.Fault) -> web.StreamResponse:
        """Answer in Anthropic's format (see the module doc)."""
        self._ids += 1
        headers = {"request-id": f"req_fake_{self._ids}", **self.fault_headers(fault)}
        is_stream = isinstance(body, dict) and bool(body.get("stream"))
        if fault.body is not None:
            return body_fault(fault, headers, stream=is_stream)
        if fault.status is not None and fault.status >= 400:
            error_type = getattr(fault, "error_type", None) or _error_type(fault.status)
            return _error(fault.status, error_type, fault.message, headers)
        fixture = getattr(fault, "fixture", None)
        if fixture is not None:
            return await self._replay(request, load_fixture(fixture), fault, headers)

        path = request.path.rstrip("/")
        if request.method == "GET" and path == "/v1/models":
            return web.json_response(self._models_body(), headers=headers)
        if request.method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            return _error(404, "not_found_error", f"Not found: {request.method} {request.path}", headers)
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key", headers)
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required", headers)
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "The request body is not valid JSON.", headers)
        counting = path.endswith("/count_tokens")
        problem = _check(body, counting=counting)
        if problem is not None:
            return _error(400, "invalid_request_error", problem, headers)
        if counting:
            return web.json_response({"input_tokens": _prompt_words(body)}, headers=headers)

        reply = _Reply.build(body, f"msg_fake_{self._ids}", self._cache_usage(body))
        if is_stream:
            return await self._stream_events(request, reply.events(), fault, headers)
        return await self.write_json(request, msgspec.json.encode(reply.message()), fault, headers)

    async def _replay(
        self, request: web.Request, exchange: Exchange, fault: loopback.Fault, headers: dict[str, str]
    ) -> web.StreamResponse:
        if exchange.stream is not None:
            return await self._stream_events(request, split_sse(exchange.stream), fault, headers)
        assert exchange.response is not None
        return await self.write_json(request, msgspec.json.encode(exchange.response), fault, headers)

    async def _stream_events(
        self, request: web.Request, events: Iterable[bytes], fault: loopback.Fault, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Write SSE ``events``, shaped by the fault (pacing, cuts, an error event after ``error_after``)."""
        error_after = getattr(fault, "error_after", None)
        if error_after is not None:
            error_type = getattr(fault, "error_type", None) or "overloaded_error"
            error = sse_event(_error_body(error_type, fault.message), event="error")
            events = itertools.chain(itertools.islice(events, error_after), [error])
        return await self.write_sse(request, events, fault, headers, content_type="text/event-stream; charset=utf-8")

    def _models_body(self) -> dict[str, Any]:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in self.models
        ]
        return {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    def _cache_usage(self, body: dict[str, Any]) -> _Usage:
        """Prompt words split into uncached, written-to-cache and read-from-cache, as Anthropic does."""
        total = _prompt_words(body)
        prefix_blocks = _cache_prefix(body)
        if not prefix_blocks:
            return _Usage(input=total)
        prefix_words = sum(_block_words(b) for b in prefix_blocks)
        key = hashlib.sha256(msgspec.json.encode(prefix_blocks, order="sorted")).hexdigest()
        if key in self._cached_prefixes:
            return _Usage(input=total - prefix_words, cache_read=prefix_words)
        self._cached_prefixes.add(key)
        return _Usage(input=total - prefix_words, cache_creation=prefix_words)


# -- request checks ---------------------------------------------------------------------------------


def _check(body: dict[str, Any], *, counting: bool) -> str | None:
    """The real API's complaint about ``body`` (a few of its checks), or None."""
    allowed = _COUNT_FIELDS if counting else _MESSAGE_FIELDS
    for key in body:
        if key not in allowed:
            return f"{key}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not counting and (not isinstance(max_tokens, int) or max_tokens < 1):
        return "max_tokens: Field required"
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)) and not 0 <= temperature <= 1:
        return "temperature: Input should be less than or equal to 1"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled" and not counting:
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if isinstance(max_tokens, int) and budget >= max_tokens:
            return "`max_tokens` must be greater than `thinking.budget_tokens`"
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return "system: Input should be a valid list"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous_role: str | None = None
    pending_tool_ids: set[str] = set()
    for number, message in enumerate(messages):
        where = f"messages.{number}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            role = message.get("role") if isinstance(message, dict) else None
            return f"{where}: Unexpected role {role!r}. Allowed roles are 'user' and 'assistant'."
        role = message["role"]
        if role == previous_role:
            return f"{where}: roles must alternate between 'user' and 'assistant'"
        blocks = _blocks(message.get("content"))
        if blocks is None:
            return f"{where}.content: Input should be a valid string or list"
        if not blocks and not (role == "assistant" and number == len(messages) - 1):
            return f"{where}: all messages must have non-empty content"
        results = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        if pending_tool_ids - results:
            return f"{where}: `tool_use` ids were found without `tool_result` blocks immediately after: " + ", ".join(
                sorted(pending_tool_ids - results)
            )
        if results - pending_tool_ids:
            return f"{where}: unexpected `tool_use_id` found in `tool_result` blocks"
        pending_tool_ids = set()
        for block in blocks:
            kind = block.get("type")
            if kind == "text" and not block.get("text"):
                return f"{where}: text content blocks must be non-empty"
            if kind == "tool_use":
                if role != "assistant" or not isinstance(block.get("input"), dict):
                    return f"{where}: invalid tool_use block"
                pending_tool_ids.add(str(block.get("id")))
            if kind == "thinking" and block.get("signature") != _signature(str(block.get("thinking"))):
                return f"{where}: Invalid `signature` in `thinking` block"
            if kind == "image" and not isinstance(block.get("source"), dict):
                return f"{where}: image blocks need a source"
        previous_role = role
    return None


def _blocks(content: Any) -> list[dict[str, Any]] | None:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return content
    return None


def _signature(thinking: str) -> str:
    """The signature this server gives a thinking text (and demands back with it)."""
    return base64.b64encode(hashlib.sha256(b"fake:" + thinking.encode()).digest()).decode()


# -- token counting ---------------------------------------------------------------------------------


def _block_words(block: Any) -> int:
    if isinstance(block, str):
        return len(block.split())
    if not isinstance(block, dict):
        return 0
    kind = block.get("type")
    if kind == "text":
        return len(str(block.get("text", "")).split())
    if kind == "tool_use":
        return len(msgspec.json.encode(block.get("input", {})).split())
    if kind == "tool_result":
        content = block.get("content", "")
        return sum(_block_words(b) for b in content) if isinstance(content, list) else _block_words(content)
    if kind == "thinking":
        return len(str(block.get("thinking", "")).split())
    if "input_schema" in block or "name" in block:  # a tool definition
        return len(f"{block.get('name', '')} {block.get('description', '')}".split())
    return 0


def _prompt_blocks(body: dict[str, Any]) -> Iterator[Any]:
    """Every block of the prompt, in Anthropic's cache order: tools, system, messages."""
    yield from body.get("tools") or ()
    system = body.get("system")
    if isinstance(system, list):
        yield from system
    elif isinstance(system, str):
        yield system
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            yield from _blocks(message.get("content")) or ()


def _prompt_words(body: dict[str, Any]) -> int:
    return sum(_block_words(block) for block in _prompt_blocks(body))


def _cache_prefix(body: dict[str, Any]) -> list[Any]:
    """The prompt blocks up to and including the last one that carries ``cache_control``."""
    blocks = list(_prompt_blocks(body))
    marked = [i for i, b in enumerate(blocks) if isinstance(b, dict) and b.get("cache_control")]
    return blocks[: marked[-1] + 1] if marked else []


@dataclass
class _Usage:
    input: int
    cache_creation: int = 0
    cache_read: int = 0


# -- reply construction -----------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """The text of a turn's content, tool results included."""
    blocks = _blocks(content) or []
    parts: list[str] = []
    for block in blocks:
        if block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_result":
            inner = block.get("content", "")
            parts.append(inner if isinstance(inner, str) else _text_of(inner))
    return " ".join(p for p in parts if p)


def _event(event: str, data: dict[str, Any]) -> bytes:
    return sse_event(data, event=event)


def _thinking_on(body: dict[str, Any]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


@dataclass
class _ToolUse:
    id: str
    name: str
    arguments: str


@dataclass
class _Reply:
    """A deterministic answer to one Messages request, renderable whole or as SSE events."""

    id: str
    model: str
    thinking_words: list[str]
    text_words: list[str]
    tool_uses: list[_ToolUse]
    stop_reason: str
    stop_sequence: str | None
    usage: _Usage

    @classmethod
    def build(cls, body: dict[str, Any], message_id: str, usage: _Usage) -> _Reply:
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        last = messages[-1] if messages else {}
        last_blocks = _blocks(last.get("content")) or []
        answering_tools = any(b.get("type") == "tool_result" for b in last_blocks)
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name")]
        choice: dict[str, Any] = body.get("tool_choice") or {"type": "auto"}
        tool_uses: list[_ToolUse] = []
        preamble = ""
        if tools and choice.get("type") != "none" and last.get("role") == "user" and not answering_tools:
            if choice.get("type") == "tool":
                tools = [t for t in tools if t["name"] == choice.get("name")] or tools[:1]
            count = 1 if choice.get("disable_parallel_tool_use") or choice.get("type") == "tool" else 2
            for k, tool in enumerate(tools[:count]):
                tool_uses.append(_ToolUse(f"toolu_fake_{k}", str(tool["name"]), TOOL_ARGUMENTS[k]))
            preamble = TOOL_PREAMBLE if choice.get("type") == "auto" else ""
        user_text = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        text = preamble if tool_uses else (f"Echo: {user_text}" if user_text.strip() else FALLBACK_REPLY)
        stop_reason = "tool_use" if tool_uses else "end_turn"
        stop_sequence: str | None = None
        for sequence in body.get("stop_sequences") or ():
            if isinstance(sequence, str) and sequence and sequence in text:
                text, stop_reason, stop_sequence = text[: text.index(sequence)], "stop_sequence", sequence
                break
        words = split_words(text)
        limit = body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(words):
            words, stop_reason, stop_sequence, tool_uses = words[:limit], "max_tokens", None, []
        return cls(
            id=message_id,
            model=str(body.get("model")),
            thinking_words=split_words(THINKING_TEXT) if _thinking_on(body) else [],
            text_words=words,
            tool_uses=tool_uses,
            stop_reason=stop_reason,
            stop_sequence=stop_sequence,
            usage=usage,
        )

    @property
    def output_tokens(self) -> int:
        pieces = sum(len(fragments(t.arguments)) for t in self.tool_uses)
        return len(self.thinking_words) + len(self.text_words) + pieces

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.usage.input,
            "cache_creation_input_tokens": self.usage.cache_creation,
            "cache_read_input_tokens": self.usage.cache_read,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def message(self) -> dict[str, Any]:
        """The non-streamed Message object."""
        content: list[dict[str, Any]] = []
        if self.thinking_words:
            thinking = "".join(self.thinking_words)
            content.append({"type": "thinking", "thinking": thinking, "signature": _signature(thinking)})
        if self.text_words:
            content.append({"type": "text", "text": "".join(self.text_words)})
        for tool in self.tool_uses:
            content.append(
                {"type": "tool_use", "id": tool.id, "name": tool.name, "input": msgspec.json.decode(tool.arguments)}
            )
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self._usage(self.output_tokens),
        }

    def events(self) -> Iterator[bytes]:
        """The SSE events of the streamed answer, as Anthropic sends them."""
        start = {**self.message(), "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = self._usage(1)
        yield _event("message_start", {"type": "message_start", "message": start})
        index = 0
        if self.thinking_words:
            yield from self._block(index, {"type": "thinking", "thinking": ""})
            for word in self.thinking_words:
                yield self._delta(index, {"type": "thinking_delta", "thinking": word})
            yield self._delta(index, {"type": "signature_delta", "signature": _signature("".join(self.thinking_words))})
            yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
            index += 1
        if self.text_words:
            yield from self._block(index, {"type": "text", "text": ""})
            for word in self.text_words:
                yield self._delta(index, {"type": "text_delta", "text": word})
            yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
            index += 1
        for tool in self.tool_uses:
            yield from self._block(index, {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}})
            for fragment in ["", *fragments(tool.arguments)]:
                yield self._delta(index, {"type": "input_json_delta", "partial_json": fragment})
            yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
            index += 1
        yield _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                "usage": {"output_tokens": self.output_tokens},
            },
        )
        yield _event("message_stop", {"type": "message_stop"})

    @staticmethod
    def _block(index: int, block: dict[str, Any]) -> Iterator[bytes]:
        yield _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        if index == 0:
            yield _event("ping", {"type": "ping"})  # Anthropic pings early in every stream

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


# -- errors -----------------------------------------------------------------------------------------


def _error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def _error_body(error_type: str, message: str | None) -> dict[str, Any]:
    default = "Overloaded" if error_type == "overloaded_error" else f"The fake upstream failed: {error_type}."
    return {"type": "error", "error": {"type": error_type, "message": message or default}}


def _error(status: int, error_type: str, message: str | None, headers: dict[str, str]) -> web.Response:
    body = _error_body(error_type, message)
    body["request_id"] = headers.get("request-id")
    return web.Response(status=status, body=msgspec.json.encode(body), content_type="application/json", headers=headers)
