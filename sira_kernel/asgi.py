"""The ASGI side of the kernel: per-snapshot apps built from registered routes and middleware.

:class:`KernelApp` is what uvicorn serves. It runs the kernel in the ASGI lifespan and hands each
connection to the app of the snapshot current when the connection arrived. Each snapshot's app is
a Starlette ``Router`` of the routes plugins registered, every endpoint wrapped so that it holds a
lease on its plugin while it runs (a streaming response included), inside the registered
middleware (lowest ``order`` outermost). The kernel adds ``/health/live`` and ``/health/ready``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router, WebSocketRoute

from .errors import PluginUnavailable
from .logs import get_logger

if TYPE_CHECKING:
    from .kernel import Kernel
    from .plugins import PluginHandle
    from .registrations import MiddlewareSpec, RouteSpec

__all__ = ["ASGIApp", "KernelApp", "build_apps", "json_error", "next_request_id"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = get_logger("sira.asgi")
_encode = msgspec.json.encode
_PREFIX = f"{os.getpid():x}"
_counter = itertools.count(1)


def next_request_id() -> str:
    """A request id unique within this process (cheap: pid prefix and a counter)."""
    return f"req-{_PREFIX}-{next(_counter):x}"


def json_error(status: int, message: str, code: str, error_type: str = "invalid_request_error") -> Response:
    """An OpenAI-shaped error response."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return Response(_encode(body), status_code=status, media_type="application/json")


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    response = json_error(404, f"no route for {scope.get('method', '')} {scope.get('path', '')}", "not_found")
    await response(scope, receive, send)


class _Route(Route):
    """A Starlette route whose 405 answer has the same JSON error shape as every other error."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            response = json_error(405, f"method {scope['method']} is not allowed on {scope['path']}",
                                  "method_not_allowed")
            response.headers["allow"] = ", ".join(sorted(self.methods))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _ExactFirst:
    """``router``, with its parameterless HTTP routes found by one dict lookup: Starlette tries every
    route's regex in registration order (about 1 µs each, on every request). A route is only looked
    up directly when no route registered before it could match its path, and a method it does not
    serve goes to the router (for another route's full match, or the 405), so the answer is always
    the router's own."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.exact: dict[str, Route] = {}
        earlier: list[Route] = []
        for route in router.routes:
            if not isinstance(route, Route):  # websocket routes never match an HTTP request
                continue
            if "{" not in route.path and not any(r.path_regex.match(route.path) for r in earlier):
                self.exact.setdefault(route.path, route)
            earlier.append(route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            route = self.exact.get(scope["path"])
            if route is not None and (route.methods is None or scope["method"] in route.methods):
                scope.setdefault("router", self.router)
                scope["endpoint"], scope["path_params"] = route.endpoint, {}
                await route.handle(scope, receive, send)
                return
        await self.router(scope, receive, send)


def _leased(app: ASGIApp, handle: PluginHandle) -> ASGIApp:
    async def leased(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            lease = handle.lease()
        except PluginUnavailable:
            if scope["type"] == "http":
                response = json_error(503, f"plugin {handle.id!r} is not available", "plugin_unavailable",
                                      "server_error")
                await response(scope, receive, send)
            return
        with lease:
            await app(scope, receive, send)

    return leased


def _health_routes(kernel: Kernel) -> list[Route]:
    async def live(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def ready(request: Request) -> Response:
        report = await kernel.health()
        return Response(_encode(report), status_code=200 if report.ready else 503, media_type="application/json")

    return [
        _Route("/health/live", live, methods=["GET"]),
        _Route("/health/ready", ready, methods=["GET"]),
        _Route("/health", ready, methods=["GET"]),
    ]


def build_apps(
    kernel: Kernel,
    routes: tuple[RouteSpec, ...],
    middleware: tuple[MiddlewareSpec, ...],
    handles: dict[str, PluginHandle],
) -> dict[str, ASGIApp]:
    """One ASGI app per listener ("public", "admin") for a snapshot."""
    apps: dict[str, ASGIApp] = {}
    from .admin import AdminGuard, admin_routes

    for listener in ("public", "admin"):
        built: list[Route | WebSocketRoute] = [*_health_routes(kernel)] if listener == "public" else [
            *admin_routes(kernel)
        ]
        for spec in routes:
            if spec.listener != listener:
                continue
            route: Route | WebSocketRoute
            if spec.websocket:
                route = WebSocketRoute(spec.path, spec.endpoint, name=spec.name)
            else:
                route = _Route(spec.path, spec.endpoint, methods=list(spec.methods) if spec.methods else None,
                               name=spec.name)
            handle = handles.get(spec.owner)
            if handle is not None:
                route.app = _leased(route.app, handle)
            built.append(route)
        # No trailing-slash redirects: Starlette builds their Location from the Host header, so
        # "Host: evil.com" + "/v1/chat/completions/" answered 307 to http://evil.com/... (a path is
        # served exactly as registered, or it is a 404).
        app: ASGIApp = _ExactFirst(Router(routes=built, default=_not_found, redirect_slashes=False))
        if listener == "admin":
            app = AdminGuard(app, kernel)  # inside plugin middleware, before any admin route
        for mw in reversed(middleware):  # lowest order ends up outermost
            app = mw.cls(app, *mw.args, **mw.kwargs)
        apps[listener] = app
    return apps


def _head_size(scope: Scope) -> int:
    """Bytes of the request target and headers (uvicorn with httptools accepts any size)."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4  # ": " and CRLF
    return size


async def _head_too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1009})
        return
    response = json_error(431, f"the request target and headers are larger than {limit} bytes",
                          "request_header_fields_too_large")
    response.headers["connection"] = "close"
    await response(scope, receive, send)


class KernelApp:
    """The ASGI application uvicorn serves: kernel lifespan plus dispatch to the current snapshot.

    ``factory`` builds the kernel at startup (so each worker process builds its own). One server
    may listen on several sockets: connections arriving on a port in ``admin_ports`` go to the
    admin app, every other one to the public app.
    """

    def __init__(
        self,
        factory: Callable[[], Kernel],
        listener: str = "public",
        admin_ports: frozenset[int] = frozenset(),
        after_start: Callable[[Kernel], None] | None = None,
    ) -> None:
        self._factory = factory
        self.listener = listener
        self.admin_ports = admin_ports
        self._after_start = after_start
        self.kernel: Kernel | None = None
        self._stack: AsyncExitStack | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        kernel = self.kernel
        if kernel is None:
            if kind == "http":
                await json_error(503, "the gateway is starting", "starting", "server_error")(scope, receive, send)
            return
        request_id = next_request_id()
        scope["sira.request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        if kind in ("http", "websocket") and _head_size(scope) > kernel.config.limits.max_header_bytes:
            await _head_too_large(scope, receive, send, kernel.config.limits.max_header_bytes)
            return
        listener = self.listener
        if self.admin_ports:
            server = scope.get("server")
            if server is not None and server[1] in self.admin_ports:
                listener = "admin"
        await kernel.snapshot.apps[listener](scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self._stack = AsyncExitStack()
                    kernel = self._factory()
                    self.kernel = await self._stack.enter_async_context(kernel)
                    if self._after_start is not None:
                        self._after_start(self.kernel)
                except Exception as exc:
                    _log.exception("kernel.start_failed")
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if self._stack is not None:
                        await self._stack.aclose()
                finally:
                    self.kernel = None
                    await send({"type": "lifespan.shutdown.complete"})
                return
