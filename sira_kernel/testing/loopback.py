"""A fake upstream's machinery without a wire format: a real HTTP server on loopback, for tests.

:class:`LoopbackUpstream` runs an aiohttp server on ``127.0.0.1`` (a random free port) in a
background thread with its own event loop, so synchronous tests, async tests and other threads can
all talk to it over real TCP. It records every request, applies queued :class:`Fault` objects and
counts streams; a subclass answers in one upstream's wire format by implementing :meth:`handle`.
``fake_openai.FakeOpenAIUpstream``, ``fake_anthropic.FakeAnthropicUpstream`` and
``fake_gemini.FakeGeminiUpstream`` are such subclasses; a fake for another format is one more::

    class FakeEchoUpstream(LoopbackUpstream):
        async def handle(self, request: web.Request, body: Any, fault: Fault) -> web.StreamResponse:
            headers = self.fault_headers(fault)
            if fault.body is not None:
                return body_fault(fault, headers, stream=False)
            if fault.status is not None:
                return web.json_response({"error": "injected"}, status=fault.status, headers=headers)
            return await self.write_json(request, msgspec.json.encode({"echo": body}), fault, headers)

Test API (every subclass)
-------------------------
``start()`` / ``stop()``, or use it as a context manager.

- ``base_url`` (``"http://127.0.0.1:PORT"`` unless the format adds a prefix), ``root_url``, ``port``.
- ``requests``: list of :class:`RecordedRequest` (``method``, ``path``, ``query``, ``headers`` with
  lower-cased names, ``json`` the parsed body or None, ``body`` the raw bytes).
- ``open_streams``: streaming responses being written now; ``aborted_streams``: streams whose client
  went away before the end; ``dropped_streams``: streams the server cut on purpose
  (``Fault.drop_after``); ``completed_streams``; ``connections_open``: TCP connections open now.
- ``enqueue(*faults)``: queue :class:`Fault` objects, one per coming request, FIFO; a request with
  no queued fault behaves normally. ``pending_faults`` says how many are left.
- ``wait_until(predicate, timeout=5.0)`` / ``await wait_until_async(predicate, timeout=5.0)``: poll
  until ``predicate()`` is true (the server updates its counters in its own thread).
- ``reset()``: forget recorded requests, queued faults and counters.

A fault's ``reset``, ``delay`` and ``hang`` are applied here before :meth:`handle` runs; the rest
(``status``, ``body``, ``first_token_delay``, ``chunk_delay``, ``drop_after``…) by the subclass,
mostly through :meth:`write_json` and :meth:`write_sse`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import importlib.resources
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Self

import msgspec
from aiohttp import web

__all__ = [
    "FALLBACK_REPLY",
    "THINKING_TEXT",
    "TOOL_ARGUMENTS",
    "Fault",
    "LoopbackUpstream",
    "RecordedRequest",
    "abort",
    "body_fault",
    "embedding_vector",
    "fixture_files",
    "fixture_names",
    "format_seconds",
    "fragments",
    "split_sse",
    "split_words",
    "sse_event",
]

#: The deterministic reply vocabulary the fakes share.
FALLBACK_REPLY = "Hello from the fake upstream."
THINKING_TEXT = "Let me think about that."
TOOL_ARGUMENTS = ('{"location": "Paris"}', '{"location": "Tokyo"}')

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass
class Fault:
    """What the server does to one request instead of (or on top of) answering normally.

    Applied in this order: ``reset``, ``delay``, ``hang``, then ``status``/``body``, then the normal
    answer shaped by ``first_token_delay``, ``chunk_delay`` and ``drop_after``. Fakes subclass it
    for their format's own failure modes.
    """

    status: int | None = None
    """Answer this HTTP status (400 or more) with the format's error body; with ``body``, any status."""
    retry_after: float | None = None
    """Send a ``Retry-After`` header with this many seconds."""
    hang: bool = False
    """Accept the request, then never answer until the client goes away or the server stops."""
    delay: float = 0.0
    """Seconds to wait before sending the response headers."""
    first_token_delay: float = 0.0
    """Send the headers, then wait this long before the first chunk (non-stream: before the body)."""
    drop_after: int | None = None
    """Stream: after this many events (chunks), abort the TCP connection (no end marker).
    Non-stream: send the headers and the first ``drop_after`` bytes of the body, then abort."""
    reset: bool = False
    """Abort the connection (TCP RST) as soon as the request arrives; no response at all."""
    body: bytes | None = None
    """Send these raw bytes as the body (with ``status``, default 200), e.g. invalid JSON."""
    chunk_delay: float | None = None
    """Seconds between streamed chunks for this request (overrides the server's ``chunk_delay``)."""
    end_delay: float = 0.0
    """Stream: wait this long after the end marker before ending the body (the chunked terminator),
    so the client reads the marker alone and has to wait for the rest."""
    together: bool = False
    """Stream: write every event and the end marker in one write (one read on the other side), as a
    fast upstream or a buffering proxy does; ``first_token_delay`` still applies before it."""
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
    peer_port: int = 0
    """The client's port: requests with the same one came over the same (kept-alive) connection."""


class LoopbackUpstream:
    """A real HTTP server on loopback, run in a background thread; subclasses speak a wire format.

    See the module doc for the test API. ``fault_type`` is what a request without a queued fault
    gets (a subclass's own :class:`Fault` subclass, so its extra fields read as defaults).
    """

    fault_type: ClassVar[type[Fault]] = Fault

    def __init__(self, *, chunk_delay: float = 0.0, api_key: str | None = None, models: Sequence[str] = ()) -> None:
        self.chunk_delay = chunk_delay
        self.api_key = api_key
        self.models = list(models)
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
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What a client of this format is configured with (``root_url`` unless a subclass says)."""
        return self.root_url

    def start(self) -> Self:
        """Start the server thread and wait until it accepts connections."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
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

        self._thread = threading.Thread(target=run, name=f"{type(self).__name__}-{id(self):x}", daemon=True)
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

    def __enter__(self) -> Self:
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
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        try:
            body = msgspec.json.decode(raw) if raw else None
        except msgspec.DecodeError:
            body = None
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                json=body,
                body=raw,
                peer_port=peer[1] if peer else 0,
            )
        )
        fault = self._faults.popleft() if self._faults else self.fault_type()
        if fault.reset:
            abort(request, rst=True)
            # aiohttp fails to write this to the aborted transport and treats it as a client disconnect.
            return web.Response(status=500)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.hang:
            while not self._stopping:
                await asyncio.sleep(0.02)
            abort(request, rst=False)
            return web.Response(status=500)
        return await self.handle(request, body, fault)

    async def handle(self, request: web.Request, body: Any, fault: Fault) -> web.StreamResponse:
        """Answer ``request`` (``body`` is its parsed JSON, or None) in the subclass's wire format."""
        raise NotImplementedError

    def fault_headers(self, fault: Fault) -> dict[str, str]:
        """The response headers ``fault`` asks for: its ``headers`` and ``Retry-After``."""
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["Retry-After"] = format_seconds(fault.retry_after)
        return headers

    async def write_json(
        self, request: web.Request, data: bytes, fault: Fault, headers: dict[str, str]
    ) -> web.StreamResponse:
        """``data`` as a JSON answer; with ``first_token_delay`` the body comes that long after the
        headers, with ``drop_after`` only its first bytes come before the connection is cut."""
        if not fault.first_token_delay and fault.drop_after is None:
            return web.Response(body=data, content_type="application/json", headers=headers)
        response = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(request)
        if fault.first_token_delay:
            await asyncio.sleep(fault.first_token_delay)
        if fault.drop_after is not None:
            await response.write(data[: fault.drop_after])
            await asyncio.sleep(0.01)  # let the partial body leave before the connection is cut
            abort(request, rst=False)
            return response
        await response.write(data)
        return response

    async def write_sse(
        self,
        request: web.Request,
        events: Iterable[bytes],
        fault: Fault,
        headers: dict[str, str],
        *,
        tail: bytes = b"",
        content_type: str = "text/event-stream",
    ) -> web.StreamResponse:
        """Write the SSE ``events`` one by one, then ``tail`` (an end marker) and the end of the body.

        The stream counters follow; ``fault`` shapes it: ``first_token_delay`` before the first
        event, ``chunk_delay`` (or the server's) between events, ``drop_after`` cuts the connection
        after that many events, ``end_delay`` holds the end of the body back after ``tail``.
        """
        delay = self.chunk_delay if fault.chunk_delay is None else fault.chunk_delay
        response = web.StreamResponse(headers={**headers, "Content-Type": content_type, "Cache-Control": "no-cache"})
        await response.prepare(request)
        self.open_streams += 1
        try:
            if fault.first_token_delay:
                await asyncio.sleep(fault.first_token_delay)
            if fault.together:
                events, tail = [b"".join([*events, tail])], b""
            for sent, event in enumerate(events):
                if fault.drop_after is not None and sent >= fault.drop_after:
                    self.dropped_streams += 1
                    abort(request, rst=False)
                    return response
                if sent and delay:
                    await asyncio.sleep(delay)
                await response.write(event)
            if tail:
                await response.write(tail)
            if fault.end_delay:
                await asyncio.sleep(fault.end_delay)
            # Counted before the end of the body goes out: a client that read to the end sees it.
            self.completed_streams += 1
            await response.write_eof()
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


# -- helpers for subclasses -------------------------------------------------------------------------


def abort(request: web.Request, *, rst: bool) -> None:
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


def body_fault(fault: Fault, headers: dict[str, str], *, stream: bool) -> web.Response:
    """The answer to a fault with ``body``: those bytes, with ``status`` (200 by default) and
    ``content_type`` (by default SSE for a ``stream`` request, else JSON)."""
    assert fault.body is not None
    headers["Content-Type"] = fault.content_type or ("text/event-stream" if stream else "application/json")
    return web.Response(status=fault.status or 200, body=fault.body, headers=headers)


def format_seconds(seconds: float) -> str:
    """``7`` for 7.0, ``1.5`` for 1.5: a ``Retry-After`` value."""
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def sse_event(data: Any, *, event: str | None = None, newline: bytes = b"\n") -> bytes:
    """One SSE event: an optional ``event:`` line and one ``data:`` line of ``data`` (raw bytes, or
    anything msgspec encodes as JSON), ended with a blank line."""
    payload = data if isinstance(data, bytes) else msgspec.json.encode(data)
    head = b"event: " + event.encode() + newline if event is not None else b""
    return head + b"data: " + payload + newline + newline


def split_sse(body: bytes) -> list[bytes]:
    """``body`` cut after each event's blank line (any line ending), so the pieces join back into it."""
    events, start = [], 0
    for match in _EVENT_END.finditer(body):
        events.append(body[start : match.end()])
        start = match.end()
    if start < len(body):
        events.append(body[start:])
    return events


def split_words(text: str) -> list[str]:
    """``text`` as streamed one word per chunk: ``"a b"`` → ``["a", " b"]``."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]] if text else []


def fragments(arguments: str, size: int = 6) -> list[str]:
    """Tool-call arguments cut into ``size``-character pieces, as upstreams stream them."""
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit-range vector for ``text``."""
    digest = b""
    counter = 0
    while len(digest) < dimensions:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    return [round(b / 127.5 - 1.0, 6) for b in digest[:dimensions]]


# -- checked-in exchanges ---------------------------------------------------------------------------


def _fixtures(kind: str) -> Any:
    return importlib.resources.files("sira_kernel.testing").joinpath("fixtures", kind)


def fixture_names(kind: str) -> list[str]:
    """The names of the checked-in exchanges of wire format ``kind`` (``"anthropic"``…), sorted."""
    return sorted(entry.name for entry in _fixtures(kind).iterdir() if entry.is_dir())


def fixture_files(kind: str, name: str, *, label: str | None = None) -> dict[str, bytes]:
    """The files of the checked-in exchange ``kind/name`` (``request.json``, ``stream.sse``…) by
    name; ``KeyError`` (naming the format ``label``) when there is no such exchange."""
    folder = _fixtures(kind).joinpath(name)
    if not name or "/" in name or not folder.is_dir():
        have = ", ".join(fixture_names(kind))
        raise KeyError(f"no {label or kind} fixture named {name!r} (have: {have})")
    return {entry.name: entry.read_bytes() for entry in folder.iterdir() if entry.is_file()}
