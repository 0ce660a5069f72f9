"""A fake OpenAI-format upstream: a real HTTP server on loopback, for tests.

It runs an aiohttp server on ``127.0.0.1`` (a random free port) in a background thread with its own
event loop, so synchronous tests, async tests and other threads can all talk to it over real TCP::

    from sira_kernel.testing.fake_openai import FakeOpenAIUpstream, Fault

    with FakeOpenAIUpstream(chunk_delay=0.01) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test")
        fake.enqueue(Fault(status=429, retry_after=2))     # the next request gets a 429
        ...
        assert fake.requests[-1].json["model"] == "gpt-4o-mini"

Public API
----------
``FakeOpenAIUpstream(*, chunk_delay=0.0, api_key=None, models=DEFAULT_MODELS, reasoning=False)``
    ``chunk_delay`` paces streamed chunks (seconds between them); ``api_key``, when set, makes the
    server demand ``Authorization: Bearer <key>`` (or Azure's ``api-key: <key>``) and answer 401
    otherwise; ``models`` is what ``GET /v1/models`` lists; ``reasoning`` adds reasoning text
    (``reasoning_content``) to every reply, as DeepSeek-style servers do.

    ``start()`` / ``stop()``, or use it as a context manager. Attributes and methods:

    - ``base_url``: ``"http://127.0.0.1:PORT/v1"``; ``root_url``: ``"http://127.0.0.1:PORT"``
      (the Azure-style ``base_url``); ``port``.
    - ``requests``: list of :class:`RecordedRequest` (``method``, ``path``, ``query``, ``headers``
      with lower-cased names, ``json`` the parsed body or None, ``body`` the raw bytes).
    - ``open_streams``: streaming responses being written now; ``aborted_streams``: streams whose
      client went away before the end; ``dropped_streams``: streams the server cut on purpose
      (``Fault.drop_after``); ``completed_streams``; ``connections_open``: TCP connections open now.
    - ``enqueue(*faults)``: queue :class:`Fault` objects, one per coming request, FIFO; a request
      with no queued fault behaves normally. ``pending_faults`` says how many are left.
    - ``wait_until(predicate, timeout=5.0)`` / ``await wait_until_async(predicate, timeout=5.0)``:
      poll until ``predicate()`` is true (the server updates its counters in its own thread).
    - ``reset()``: forget recorded requests, queued faults and counters.

Endpoints
---------
``POST /v1/chat/completions`` (plain and ``stream: true`` SSE, ``stream_options.include_usage``,
``n``, tools, ``max_tokens``), ``POST /v1/embeddings``, ``GET /v1/models``, and the Azure scheme
``POST /openai/deployments/{deployment}/chat/completions?api-version=...`` (and ``/embeddings``).

Replies are deterministic. The text is ``"Echo: <last user message>"`` (``"Hello from the fake
upstream."`` when there is no user text), streamed one word per chunk. ``prompt_tokens`` is the number
of whitespace-separated words in all messages; ``completion_tokens`` the number of reply words (times
``n``). ``max_tokens``/``max_completion_tokens`` cut the reply to that many words (finish_reason
``"length"``). When the request has ``tools`` and the last message is a user message, the reply is a
tool call to the first tool with arguments ``{"location": "Paris"}`` (finish_reason ``"tool_calls"``);
with two tools or more and ``parallel_tool_calls`` not false, a second call to the second tool with
``{"location": "Tokyo"}``. Streamed tool-call arguments arrive in several fragments, as OpenAI sends
them. The request's ``model`` is echoed back (the deployment name for Azure when the body has none).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import msgspec
from aiohttp import web

__all__ = ["DEFAULT_MODELS", "Fault", "FakeOpenAIUpstream", "RecordedRequest"]

DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
CREATED = 1_700_000_000
FALLBACK_REPLY = "Hello from the fake upstream."
TOOL_ARGUMENTS = ('{"location": "Paris"}', '{"location": "Tokyo"}')
EMBEDDING_DIMENSIONS = 8

_STATUS_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("server_error", "timeout"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass
class Fault:
    """What the server does to one request instead of (or on top of) answering normally.

    Applied in this order: ``reset``, ``delay``, ``hang``, then ``status``/``body``, then the normal
    answer shaped by ``first_token_delay``, ``chunk_delay`` and ``drop_after``.
    """

    status: int | None = None
    """Answer this HTTP status (400 or more) with an OpenAI-shaped error body; with ``body``, any status."""
    retry_after: float | None = None
    """Send a ``Retry-After`` header with this many seconds."""
    hang: bool = False
    """Accept the request, then never answer until the client goes away or the server stops."""
    delay: float = 0.0
    """Seconds to wait before sending the response headers."""
    first_token_delay: float = 0.0
    """Send the headers, then wait this long before the first chunk (non-stream: before the body)."""
    drop_after: int | None = None
    """Stream: after this many ``data:`` chunks, abort the TCP connection (no ``[DONE]``).
    Non-stream: send the headers and the first ``drop_after`` bytes of the body, then abort."""
    reset: bool = False
    """Abort the connection (TCP RST) as soon as the request arrives; no response at all."""
    body: bytes | None = None
    """Send these raw bytes as the body (with ``status``, default 200), e.g. invalid JSON."""
    chunk_delay: float | None = None
    """Seconds between streamed chunks for this request (overrides the server's ``chunk_delay``)."""
    message: str | None = None
    """The error message for ``status`` (a generic one by default)."""
    content_type: str | None = None
    """Content-Type for ``body`` (default: text/event-stream for stream requests, else JSON)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers."""


@dataclass
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    body: bytes


class FakeOpenAIUpstream:
    """A real OpenAI-compatible HTTP server on loopback, run in a background thread. See the module doc."""

    def __init__(
        self,
        *,
        chunk_delay: float = 0.0,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        reasoning: bool = False,
    ) -> None:
        self.chunk_delay = chunk_delay
        self.api_key = api_key
        self.models = list(models)
        self.reasoning = reasoning
        self.requests: list[RecordedRequest] = []
        self.open_streams = 0
        self.aborted_streams = 0
        self.dropped_streams = 0
        self.completed_streams = 0
        self.port = 0
        self._faults: collections.deque[Fault] = collections.deque()
        self._ids = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT``: the base URL for Azure-style clients."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the base URL for OpenAI clients."""
        return f"{self.root_url}/v1"

    def start(self) -> FakeOpenAIUpstream:
        """Start the server thread and wait until it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("FakeOpenAIUpstream is already running")
        self._stopping = False
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve_start())
            except BaseException as exc:  # reported to start() below
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._serve_stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-openai-{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop the server: abort open connections (ending hanging requests) and join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._stopping = True
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeOpenAIUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def _serve_start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True, shutdown_timeout=2.0)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._sock = sock
        self._runner = runner

    async def _serve_stop(self) -> None:
        runner = self._runner
        if runner is None:
            return
        self._runner = None
        server = runner.server
        if server is not None:
            for handler in server.connections:
                if handler.transport is not None:
                    handler.transport.abort()
        await asyncio.sleep(0)
        await runner.cleanup()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- test helpers -------------------------------------------------------------------------------

    def enqueue(self, *faults: Fault) -> None:
        """Queue faults for the coming requests, one per request, in order."""
        self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        """How many queued faults no request has taken yet."""
        return len(self._faults)

    @property
    def connections_open(self) -> int:
        """TCP connections open on the server now."""
        runner = self._runner
        server = runner.server if runner is not None else None
        return len(server.connections) if server is not None else 0

    def reset(self) -> None:
        """Forget recorded requests, queued faults and counters."""
        self.requests.clear()
        self._faults.clear()
        self.aborted_streams = self.dropped_streams = self.completed_streams = 0

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate`` (blocking this thread) until it is true or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    async def wait_until_async(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Like :meth:`wait_until` without blocking the caller's event loop."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    # -- request handling ---------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = msgspec.json.decode(raw) if raw else None
        except msgspec.DecodeError:
            body = None
            parse_failed = True
        else:
            parse_failed = False
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                json=body,
                body=raw,
            )
        )
        fault = self._faults.popleft() if self._faults else Fault()

        if fault.reset:
            _abort(request, rst=True)
            # aiohttp fails to write this to the aborted transport and treats it as a client disconnect.
            return web.Response(status=500)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.hang:
            while not self._stopping:
                await asyncio.sleep(0.02)
            _abort(request, rst=False)
            return web.Response(status=500)

        is_stream = isinstance(body, dict) and bool(body.get("stream"))
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["Retry-After"] = _format_seconds(fault.retry_after)
        if fault.body is not None:
            content_type = fault.content_type or ("text/event-stream" if is_stream else "application/json")
            headers["Content-Type"] = content_type
            return web.Response(status=fault.status or 200, body=fault.body, headers=headers)
        if fault.status is not None and fault.status >= 400:
            return _error(fault.status, fault.message, headers)

        route = self._route(request)
        if route is None:
            return _error(404, f"Unknown request URL: {request.method} {request.path}", headers)
        kind, deployment = route
        if deployment is not None and "api-version" not in request.query:
            return _error(404, "Resource not found", headers)
        if not self._authorized(request, azure=deployment is not None):
            return _error(401, "Incorrect API key provided.", headers)
        if kind == "models":
            return web.json_response(self._models_body(), headers=headers)
        if parse_failed or not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.", headers)
        model = body.get("model") or deployment
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", headers)
        if kind == "embeddings":
            return web.json_response(_embeddings_body(body, model), headers=headers)
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' must be a non-empty array", headers)
        self._ids += 1
        completion = _Completion.build(body, model, f"chatcmpl-fake-{self._ids}", self.reasoning)
        if is_stream:
            return await self._stream(request, completion, fault, headers)
        if fault.first_token_delay or fault.drop_after is not None:
            return await self._partial_body(request, completion.response(), fault, headers)
        return web.Response(
            body=msgspec.json.encode(completion.response()), content_type="application/json", headers=headers
        )

    def _route(self, request: web.Request) -> tuple[str, str | None] | None:
        path = request.path.rstrip("/")
        if request.method == "GET" and path == "/v1/models":
            return ("models", None)
        if request.method != "POST":
            return None
        if path == "/v1/chat/completions":
            return ("chat", None)
        if path == "/v1/embeddings":
            return ("embeddings", None)
        parts = path.split("/")
        # /openai/deployments/{deployment}/{chat/completions|embeddings}
        if len(parts) >= 5 and parts[1] == "openai" and parts[2] == "deployments":
            rest = "/".join(parts[4:])
            if rest == "chat/completions":
                return ("chat", parts[3])
            if rest == "embeddings":
                return ("embeddings", parts[3])
        return None

    def _authorized(self, request: web.Request, *, azure: bool) -> bool:
        if self.api_key is None:
            return True
        if azure:
            return request.headers.get("api-key") == self.api_key
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _models_body(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "fake"} for m in self.models
            ],
        }

    async def _partial_body(
        self, request: web.Request, payload: dict[str, Any], fault: Fault, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Headers first; the body after ``first_token_delay``, or cut after ``drop_after`` bytes."""
        data = msgspec.json.encode(payload)
        response = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(request)
        if fault.first_token_delay:
            await asyncio.sleep(fault.first_token_delay)
        if fault.drop_after is not None:
            await response.write(data[: fault.drop_after])
            await asyncio.sleep(0.01)  # let the partial body leave before the connection is cut
            _abort(request, rst=False)
            return response
        await response.write(data)
        return response

    async def _stream(
        self, request: web.Request, completion: _Completion, fault: Fault, headers: dict[str, str]
    ) -> web.StreamResponse:
        delay = self.chunk_delay if fault.chunk_delay is None else fault.chunk_delay
        response = web.StreamResponse(
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        self.open_streams += 1
        sent = 0
        try:
            if fault.first_token_delay:
                await asyncio.sleep(fault.first_token_delay)
            for index, chunk in enumerate(completion.chunks()):
                if fault.drop_after is not None and sent >= fault.drop_after:
                    self.dropped_streams += 1
                    _abort(request, rst=False)
                    return response
                if index and delay:
                    await asyncio.sleep(delay)
                await response.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
                sent += 1
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self.completed_streams += 1
            return response
        except asyncio.CancelledError:
            if not self._stopping:
                self.aborted_streams += 1
            raise
        except ConnectionError:
            if not self._stopping:
                self.aborted_streams += 1
            return response
        finally:
            self.open_streams -= 1


# -- reply construction -----------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _word_count(messages: list[Any]) -> int:
    return sum(len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))


def _split_words(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]] if words else []


def _fragments(arguments: str, size: int = 6) -> list[str]:
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


@dataclass
class _ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class _Completion:
    """A deterministic answer to one chat request, renderable whole or as stream chunks."""

    id: str
    model: str
    n: int
    words: list[str]
    reasoning_words: list[str]
    finish_reason: str
    tool_calls: list[_ToolCall]
    prompt_tokens: int
    include_usage: bool

    @classmethod
    def build(cls, body: dict[str, Any], model: str, completion_id: str, reasoning: bool) -> _Completion:
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        n = body.get("n") or 1
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        tool_calls: list[_ToolCall] = []
        last = messages[-1] if messages else {}
        tool_choice = body.get("tool_choice")
        if tools and last.get("role") == "user" and tool_choice != "none":
            if isinstance(tool_choice, dict):
                wanted = (tool_choice.get("function") or {}).get("name")
                tools = [t for t in tools if (t.get("function") or {}).get("name") == wanted] or tools[:1]
            count = 2 if len(tools) >= 2 and body.get("parallel_tool_calls") is not False else 1
            for k in range(count):
                name = (tools[k].get("function") or {}).get("name", f"tool_{k}")
                tool_calls.append(_ToolCall(f"call_fake_{k}", name, TOOL_ARGUMENTS[k]))
        user_text = next(
            (_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        text = f"Echo: {user_text}" if user_text.strip() else FALLBACK_REPLY
        words = [] if tool_calls else _split_words(text)
        finish = "tool_calls" if tool_calls else "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(words):
            words, finish = words[:limit], "length"
        stream_options = body.get("stream_options") or {}
        return cls(
            id=completion_id,
            model=model,
            n=n if isinstance(n, int) and n > 0 else 1,
            words=words,
            reasoning_words=_split_words("Let me think about that.") if reasoning else [],
            finish_reason=finish,
            tool_calls=tool_calls,
            prompt_tokens=_word_count(messages),
            include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
        )

    @property
    def completion_tokens(self) -> int:
        per_choice = (
            len(self.words)
            + len(self.reasoning_words)
            + sum(len(_fragments(c.arguments)) for c in self.tool_calls)
        )
        return per_choice * self.n

    def usage(self) -> dict[str, Any]:
        completion = self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": len(self.reasoning_words) * self.n},
        }

    def response(self) -> dict[str, Any]:
        """The non-streamed ``chat.completion`` object."""
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        else:
            message["content"] = "".join(self.words)
        if self.reasoning_words:
            message["reasoning_content"] = "".join(self.reasoning_words)
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": CREATED,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": i, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
                for i in range(self.n)
            ],
            "usage": self.usage(),
            "service_tier": "default",
        }

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _deltas(self) -> Iterator[dict[str, Any]]:
        yield {"role": "assistant", "content": None if self.tool_calls else "", "refusal": None}
        for word in self.reasoning_words:
            yield {"reasoning_content": word}
        for word in self.words:
            yield {"content": word}
        for k, call in enumerate(self.tool_calls):
            yield {
                "tool_calls": [
                    {
                        "index": k,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ]
            }
            for fragment in _fragments(call.arguments):
                yield {"tool_calls": [{"index": k, "function": {"arguments": fragment}}]}

    def chunks(self) -> Iterator[dict[str, Any]]:
        """The ``chat.completion.chunk`` objects of the stream, choices interleaved, usage last."""
        for delta in self._deltas():
            for i in range(self.n):
                yield self._chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
        for i in range(self.n):
            yield self._chunk(
                [{"index": i, "delta": {}, "logprobs": None, "finish_reason": self.finish_reason}]
            )
        if self.include_usage:
            final = self._chunk([])
            final["usage"] = self.usage()
            yield final


def _embeddings_body(body: dict[str, Any], model: str) -> dict[str, Any]:
    raw = body.get("input", "")
    if isinstance(raw, str):
        inputs: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        inputs = [raw]  # one tokenised input
    else:
        inputs = list(raw) if isinstance(raw, list) else [raw]
    dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for index, item in enumerate(inputs):
        text = item if isinstance(item, str) else " ".join(str(x) for x in item)
        tokens += len(text.split()) if isinstance(item, str) else len(item)
        vector = _vector(text, dimensions)
        embedding: Any = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _vector(text: str, dimensions: int) -> list[float]:
    digest = b""
    counter = 0
    while len(digest) < dimensions:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    return [round(b / 127.5 - 1.0, 6) for b in digest[:dimensions]]


def _abort(request: web.Request, *, rst: bool) -> None:
    """Close the request's connection at once; with ``rst`` the peer sees a TCP reset."""
    transport = request.transport
    if transport is None:
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def _error(status: int, message: str | None, headers: dict[str, str]) -> web.Response:
    error_type, code = _STATUS_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    body = {
        "error": {
            "message": message or f"The fake upstream answered {status}.",
            "type": error_type,
            "param": None,
            "code": code,
        }
    }
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type="application/json", headers=headers
    )
