"""The ASGI plumbing every HTTP surface plugin needs, so that a surface keeps only its wire format.

A surface (``api-openai``, ``api-anthropic``, yours) registers raw ASGI endpoints (no per-request
Starlette ``Request``: this is the hot path) that turn a wire-format request into kernel types, run it
through ``kernel.pipeline`` and turn the answer, or the :class:`~sira_kernel.errors.SiraError` it
raised, back into the wire format. Everything between those two translations is here:

* :class:`SurfacePlugin` is the base of the plugin: it keeps its config and, while it is active,
  the running kernel. :class:`Endpoint` is the base of its endpoints: calling one runs
  :meth:`Endpoint.handle`, ends the request quietly when the client went away (:class:`ClientGone`)
  and answers a ``SiraError`` with the surface's :meth:`Endpoint.send_error`.
* :func:`read_body` reads the request body under ``limits.max_body_bytes`` (413
  :class:`~sira_kernel.errors.PayloadTooLarge`) and within ``limits.body_timeout`` (408, so a
  client trickling its body a byte at a time cannot hold a request open); :func:`request_info` builds the
  :class:`~sira_kernel.auth.RequestInfo` the pipeline wants.
* :func:`unless_disconnected` awaits a pipeline call and cancels it (and the upstream call with it)
  if the client disconnects first.
* :func:`send_json` sends a whole JSON answer. A stream: :func:`relay_stream` runs the surface's
  writer beside a disconnect watcher (the writer sends the head with :func:`start_event_stream`,
  then one body message per event, and returns the bytes that end the stream), then closes the
  :class:`~sira_kernel.pipeline.ChatStream` saying whether the client went away (a 499 in the usage
  record); ``SiraError.stream_event()`` is the event for an error raised once the stream started.
* :func:`request_id_header`, :func:`route_header` and :func:`retry_after_headers` build the headers
  answers carry: the request id (``send_json`` and ``start_event_stream`` send ``x-request-id``),
  where the pipeline sent the request (``x-sira-route``) and, on an error that says when to try
  again, ``retry-after``.

What is left to a surface is its wire format: decoding a request, encoding an answer, a stream
event and an error. ``sira_api_openai`` is the example to read: three endpoints in about 100 lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Generic, ParamSpec, Protocol, TypeVar

import anyio

from .asgi import Receive, Scope, Send
from .auth import RequestInfo
from .deadline import TaskDeadline
from .errors import PayloadTooLarge, RequestError, SiraError
from .hookspecs import hookimpl

if TYPE_CHECKING:
    from .context import PluginContext
    from .kernel import Kernel
    from .pipeline import ChatStream

__all__ = [
    "SSE_HEADERS",
    "ClientGone",
    "Endpoint",
    "HoldsKernel",
    "Receive",
    "Scope",
    "Send",
    "SurfacePlugin",
    "read_body",
    "relay_stream",
    "request_id_header",
    "request_info",
    "retry_after_headers",
    "route_header",
    "send_json",
    "start_event_stream",
    "unless_disconnected",
]

T = TypeVar("T")
P = ParamSpec("P")
ConfigT = TypeVar("ConfigT")
Headers = list[tuple[bytes, bytes]]

_JSON = (b"content-type", b"application/json")
SSE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
)
"""The head of every ``text/event-stream`` answer (:func:`start_event_stream` sends it)."""


class ClientGone(Exception):
    """The client disconnected before it was answered: there is nobody left to send an error to.

    Raised by :func:`read_body` and :func:`unless_disconnected`; :class:`Endpoint` ends the request
    quietly on it. It is not a :class:`~sira_kernel.errors.SiraError`: it never becomes an answer.
    """


# -- the request -------------------------------------------------------------------------------------


def request_info(scope: Scope, surface: str) -> RequestInfo:
    """The :class:`RequestInfo` of an ASGI scope, for ``surface`` (``"openai"``, ``"admin"``…).

    ``path`` is the raw ASGI path (never rebuilt from the Host header), header names are lower-cased
    (a repeated header keeps its last value), ``client`` is the peer address and ``request_id`` the
    id the kernel bound to the request (``scope["sira.request_id"]``). A websocket scope has no
    method: it reads as ``GET``.
    """
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    client = scope.get("client")
    return RequestInfo(
        method=scope.get("method", "GET"),
        path=scope.get("raw_path", b"").decode("latin-1") or scope["path"],
        headers=headers,
        client=client[0] if client else None,
        surface=surface,
        request_id=scope.get("sira.request_id", ""),
    )


async def read_body(scope: Scope, receive: Receive, limit: int, timeout: float | None = None) -> bytes:
    """The whole request body; :class:`PayloadTooLarge` (413) as soon as it is known to pass ``limit`` bytes.

    A ``Content-Length`` over the limit is refused before anything is read; otherwise the chunks are
    counted as they arrive, so a body without (or lying about) its length is refused once it passes
    the limit, without being held whole. With ``timeout`` (pass ``limits.body_timeout``), a body
    that has not arrived whole within that many seconds is a 408 ``request_timeout`` (slowloris).
    Raises :class:`ClientGone` if the client disconnects first.
    """
    if timeout is None:
        return await _read_body(scope, receive, limit)
    with TaskDeadline(asyncio.get_running_loop().time() + timeout):  # a third of fail_after's cost
        return await _read_body(scope, receive, limit)
    raise RequestError(f"the request body did not arrive within {timeout:g}s", status=408, code="request_timeout")


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = 0
            if declared > limit:
                raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
            break
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body = message.get("body", b"")
        if body:
            total += len(body)
            if total > limit:
                raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
            chunks.append(body)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Watch:
    """Watches ``receive`` for the client going away, from a plain asyncio task.

    A task group per request would do the same at several times the cost (and anyio delivers the
    cancellation of a watcher blocked in ``receive`` over several loop iterations). The watcher only
    cancels ``scope``; what was cancelled is then the caller's to judge.
    """

    __slots__ = ("finished", "gone", "scope", "task")

    def __init__(self, receive: Receive, scope: anyio.CancelScope) -> None:
        self.scope = scope
        self.gone = False
        self.finished = False
        self.task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    # Servers also report a disconnect once the response is complete.
                    self.gone = not self.finished
                    self.scope.cancel()
                    return
        except Exception:  # a receive that fails has nothing more to tell
            return

    def stop(self) -> None:
        self.task.cancel()


async def unless_disconnected(receive: Receive, call: Callable[[], Awaitable[T]]) -> T:
    """Await ``call()``; if the client disconnects first, cancel it (and the upstream call with it).

    Raises :class:`ClientGone` when the client went away, and the call's own exception as it was
    raised. Use it after the body was read: the watcher consumes ``receive``.
    """
    with anyio.CancelScope() as scope:
        watch = _Watch(receive, scope)
        try:
            return await call()
        finally:
            watch.stop()
    raise ClientGone  # only reached when the watcher cancelled the call


# -- headers -----------------------------------------------------------------------------------------


def request_id_header(scope: Scope, name: bytes = b"x-request-id") -> tuple[bytes, bytes]:
    """The request id (``scope["sira.request_id"]``) as a response header, under ``name``.

    :func:`send_json` and :func:`start_event_stream` send ``x-request-id`` already; a surface whose
    clients read the id under another name adds it with this (Anthropic's ``request-id``).
    """
    return (name, scope.get("sira.request_id", "").encode())


def route_header(info: RequestInfo) -> Headers | None:
    """``x-sira-route: <provider>/<model>; attempts=<n>``: where the pipeline sent the request.

    ``None`` until the pipeline answered (``info.route`` is set by ``chat``, ``stream`` and
    ``embed``), so it can be passed as the ``headers`` of :func:`send_json` either way.
    """
    return None if info.route is None else [(b"x-sira-route", info.route.encode())]


def retry_after_headers(exc: SiraError) -> Headers:
    """``retry-after`` (whole seconds, at least 1) when the error says when to try again, else ``[]``."""
    if exc.retry_after is None:
        return []
    return [(b"retry-after", str(max(1, round(exc.retry_after))).encode())]


# -- answering ---------------------------------------------------------------------------------------


async def send_json(scope: Scope, send: Send, status: int, body: bytes, headers: Headers | None = None) -> None:
    """Send a whole JSON answer: ``content-type``, ``x-request-id``, ``headers``, ``content-length``.

    A 408 also says ``connection: close`` (RFC 9110 §15.5.9), so the server drops a connection whose
    client was too slow to send its body instead of reading the rest of it.
    """
    head = [_JSON, (b"x-request-id", scope.get("sira.request_id", "").encode())]
    if headers:
        head.extend(headers)
    if status == 408:
        head.append((b"connection", b"close"))
    head.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def start_event_stream(scope: Scope, send: Send, headers: Headers | None = None) -> None:
    """Send the head of a 200 ``text/event-stream`` answer: :data:`SSE_HEADERS`, ``x-request-id``, ``headers``.

    The body follows as ``http.response.body`` messages with ``more_body=True``; the last one is
    :func:`relay_stream`'s to send.
    """
    head = [*SSE_HEADERS, (b"x-request-id", scope.get("sira.request_id", "").encode())]
    if headers:
        head.extend(headers)
    await send({"type": "http.response.start", "status": 200, "headers": head})


async def relay_stream(
    receive: Receive,
    send: Send,
    stream: ChatStream,
    write: Callable[P, Awaitable[bytes]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> bool:
    """Run ``write(*args, **kwargs)`` beside a disconnect watcher, end the response, close ``stream``.

    ``write`` sends the head and the events of ``stream`` and returns the bytes that end the
    response; they go out as the last body message. If the client disconnects (or the server fails
    to write to it, ``OSError``) before then, the writer is cancelled. Either way ``stream`` is closed
    with ``client_gone`` set accordingly (the usage record says 499), and that is what this returns.
    A disconnect reported after the last byte is not the client going away: servers report one
    when the response is complete. The writer's own exception is re-raised once the stream is closed.
    """
    client_gone = False
    error: Exception | None = None
    try:
        with anyio.CancelScope() as scope:
            watch = _Watch(receive, scope)
            try:
                last = await write(*args, **kwargs)
                watch.finished = True
                await send({"type": "http.response.body", "body": last, "more_body": False})
            except OSError:  # the server could not write: the client is gone
                client_gone = not watch.finished
            except Exception as exc:  # re-raised below, once the stream is closed
                error = exc
            finally:
                watch.stop()
        client_gone = client_gone or watch.gone
    finally:
        await stream.aclose(client_gone=client_gone)
    if error is not None:
        raise error
    return client_gone


# -- endpoints ---------------------------------------------------------------------------------------


class HoldsKernel(Protocol):
    """What :class:`Endpoint` needs of its plugin: the running kernel while the plugin is active,
    else ``None`` (:class:`SurfacePlugin` keeps it)."""

    @property
    def kernel(self) -> Kernel | None: ...


class SurfacePlugin(Generic[ConfigT]):
    """Base of a surface plugin: keeps its ``config`` and, while it is active, the running ``kernel``.

    Subclasses declare ``sira_api`` and ``Config`` and register their endpoints (built with the
    plugin: ``Chat(self)``) in ``sira_register_routes``. A subclass that owns resources of its own
    overrides ``sira_lifespan`` (with ``@hookimpl``) and enters :meth:`keep_kernel` in it.
    """

    def __init__(self, config: ConfigT) -> None:
        self.config = config
        self.kernel: Kernel | None = None

    @asynccontextmanager
    async def keep_kernel(self, context: PluginContext) -> AsyncIterator[None]:
        """Hold ``context.kernel`` in ``self.kernel`` for as long as the context is entered."""
        self.kernel = context.kernel
        try:
            yield
        finally:
            self.kernel = None

    @hookimpl
    def sira_lifespan(self, context: PluginContext) -> AbstractAsyncContextManager[None]:
        return self.keep_kernel(context)


PluginT = TypeVar("PluginT", bound=HoldsKernel)


class Endpoint(Generic[PluginT]):
    """Base of a surface's raw ASGI endpoints, bound to the surface plugin (``self.plugin``).

    Subclasses implement :meth:`handle` (the request) and :meth:`send_error` (the wire format's
    error answer). Calling the endpoint runs :meth:`handle`; :class:`ClientGone` ends the request
    without an answer and a :class:`~sira_kernel.errors.SiraError` is answered with
    :meth:`send_error`. Anything else propagates to the server (a plain 500, if nothing was sent).
    """

    def __init__(self, plugin: PluginT) -> None:
        self.plugin = plugin

    @property
    def kernel(self) -> Kernel:
        """The running kernel (the endpoint is only routed to while its plugin is active)."""
        kernel = self.plugin.kernel
        assert kernel is not None
        return kernel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.handle(scope, receive, send)
        except ClientGone:
            return
        except SiraError as exc:
            await self.send_error(scope, send, exc)

    async def read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body within the kernel's ``limits.max_body_bytes`` and ``limits.body_timeout``
        (:func:`read_body`)."""
        limits = self.kernel.config.limits
        return await read_body(scope, receive, limits.max_body_bytes, limits.body_timeout)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request."""
        raise NotImplementedError

    async def send_error(self, scope: Scope, send: Send, exc: SiraError) -> None:
        """Answer ``exc`` in the surface's error shape (status, body, ``retry_after_headers(exc)``)."""
        raise NotImplementedError
