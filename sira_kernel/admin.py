"""The admin listener: its guard and the kernel's own admin endpoints.

The admin listener (``server.admin_host``:``server.admin_port``, loopback by default) serves only
routes registered with ``listener="admin"``. Every request on it is authenticated through the same
``sira_authenticate`` chain as the public API and must come from a principal holding the ``admin``
role (the master key has it); anything else is a 401 or 403 before any route runs. Mutations are
POST/PUT/DELETE only.

Delegation: a principal *without* the admin role gets through only when some ``sira_authorize``
plugin votes ``True`` (an explicit allow) on ``operation="admin"`` and none votes ``False``. An
auth plugin uses this to let, say, a tenant administrator reach *its own* admin routes, which then
check the caller's roles themselves; such a plugin must vote True only for the paths of its own
routes (``request.path``). Abstaining (None) keeps the default: admins only.

The kernel's own endpoints, under ``/api/v1``:

* ``GET /api/v1/plugins`` — every plugin: state, generation, leases, reason
* ``POST /api/v1/plugins/{id}/load`` — hot-load (rescans installed distributions)
* ``POST /api/v1/plugins/{id}/unload`` — drain and unload (``?drain_timeout=seconds``)
* ``POST /api/v1/plugins/{id}/reload`` — make-before-break replacement with the current config
* ``GET /api/v1/health`` — the kernel health report
* ``GET /api/v1/bus`` — per-subscription queue statistics
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import AuthorizationDenied, RequestError, SiraError
from .surface import request_info

if TYPE_CHECKING:
    from .asgi import ASGIApp, Receive, Scope, Send
    from .kernel import Kernel

__all__ = ["ADMIN_ROLE", "AdminGuard", "admin_routes", "require_admin"]

ADMIN_ROLE = "admin"
_encode = msgspec.json.encode


def _error(exc: SiraError) -> Response:
    body = {"error": {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}}
    return Response(_encode(body), status_code=exc.status, media_type="application/json")


class AdminGuard:
    """Wraps the admin app: authenticate every request, require the admin role (or an explicit
    allow vote from a ``sira_authorize`` plugin), fail closed."""

    def __init__(self, app: ASGIApp, kernel: Kernel) -> None:
        self.app = app
        self.kernel = kernel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        info = request_info(scope, "admin")
        pipeline = self.kernel.pipeline
        snap = self.kernel.snapshot
        try:
            principal = await pipeline.authenticate(snap, info)
            allowed = await pipeline.authorize(snap, principal, info, "admin", None)
            if ADMIN_ROLE not in principal.roles and not allowed:
                raise AuthorizationDenied("the admin API needs a principal with the admin role")
        except SiraError as exc:
            if scope["type"] == "http":
                await _error(exc)(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        scope["sira.principal"] = principal
        await self.app(scope, receive, send)


def require_admin(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Only principals holding the admin role, whatever plugins allowed at the guard.

    The guard may admit other principals (a tenant administrator, on a plugin's explicit allow
    vote) for routes that scope what they show; the kernel's own endpoints act on the whole
    gateway, so they check the role themselves.
    """

    async def guarded(request: Request) -> Response:
        principal = request.scope.get("sira.principal")
        if principal is None or ADMIN_ROLE not in principal.roles:
            return _error(AuthorizationDenied("this endpoint needs the admin role"))
        return await endpoint(request)

    return guarded


def admin_routes(kernel: Kernel) -> list[Route]:
    """The kernel's own admin endpoints (plugins, health, bus), admin role only."""

    def json(data: Any, status: int = 200) -> Response:
        return Response(_encode(data), status_code=status, media_type="application/json")

    async def plugins(request: Request) -> Response:
        return json({"plugins": kernel.plugins.infos()})

    async def operate(request: Request) -> Response:
        plugin_id = request.path_params["plugin_id"]
        action = request.path_params["action"]
        try:
            if action == "load":
                info = await kernel.load(plugin_id)
            elif action == "unload":
                raw = request.query_params.get("drain_timeout")
                try:
                    drain = float(raw) if raw is not None else None
                except ValueError:
                    raise RequestError("drain_timeout must be a number of seconds", param="drain_timeout") from None
                info = await kernel.unload(plugin_id, drain)
            elif action == "reload":
                info = await kernel.replace(plugin_id)
            else:
                raise RequestError(f"unknown action {action!r}: use load, unload or reload")
        except SiraError as exc:
            return _error(exc)
        return json(info)

    async def health(request: Request) -> Response:
        report = await kernel.health()
        return json(report, 200 if report.ready else 503)

    async def bus(request: Request) -> Response:
        return json({"published": kernel.bus.published, "subscriptions": kernel.bus.stats()})

    return [
        Route("/api/v1/plugins", require_admin(plugins), methods=["GET"]),
        Route("/api/v1/plugins/{plugin_id}/{action}", require_admin(operate), methods=["POST"]),
        Route("/api/v1/health", require_admin(health), methods=["GET"]),
        Route("/api/v1/bus", require_admin(bus), methods=["GET"]),
    ]
