"""The router's admin API (Starlette endpoints), for the master key (or any admin principal) only.

The routes are registered on the kernel's admin listener (``server.admin_host:admin_port``,
loopback by default) under ``admin_prefix`` (``/api/v1``), where the kernel's guard has already
required a principal with the ``admin`` role (the master key has it). With ``admin_listener =
"public"`` (for a kernel run with ``server.admin = false``) they are served on the public listener
instead, and every request is authenticated here through the kernel's ``pipeline.authenticate``
and must come from the ``master`` principal or one with the ``admin`` role; without a master key
nobody qualifies.

=========================================  ======================================================
``GET    {prefix}/rules``                  the rules in force
``POST   {prefix}/rules``                  add a rule (409 if the name exists)
``GET    {prefix}/rules/{name}``           one rule
``PUT    {prefix}/rules/{name}``           replace (or create) a rule
``DELETE {prefix}/rules/{name}``           delete a rule
``POST   {prefix}/rules/test``             dry-run a request against the rules
``GET    {prefix}/route/decision-log``     the latest decisions, newest first (``?limit=N``)
``GET    {prefix}/route/breakers``         every deployment's circuit breaker
``POST   {prefix}/route/breakers/reset``   close breakers (``{"deployment": "p/m"}`` or all)
``GET    {prefix}/route/groups``           groups, members and their live state
=========================================  ======================================================
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from sira_kernel import AuthenticationFailed, AuthorizationDenied, ChatRequest, ConfigError, Principal
from sira_kernel.admin import ADMIN_ROLE
from sira_kernel.asgi import json_error
from sira_kernel.surface import request_info
from starlette.requests import Request
from starlette.responses import Response

from ._config import RuleConfig

if TYPE_CHECKING:
    from sira_kernel.registrations import RouteRegistrar

    from ._plugin import RouterPlugin

__all__ = ["register_admin"]

Endpoint = Callable[[Request], Awaitable[Response]]
MAX_BODY = 256 * 1024


class _TestPrincipal(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str = "dry-run"
    tenant: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


def _json(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json")


def _bad(message: str, status: int = 400, code: str = "invalid_request") -> Response:
    return json_error(status, message, code)


def _is_admin(principal: Any) -> bool:
    return isinstance(principal, Principal) and (principal.kind == "master" or ADMIN_ROLE in principal.roles)


async def _body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ValueError(f"the body is larger than {MAX_BODY} bytes")
    return body


def register_admin(
    register: RouteRegistrar, plugin: RouterPlugin, prefix: str, listener: Literal["admin", "public"]
) -> None:
    """Register every admin route under ``prefix`` on ``listener``."""
    router = plugin.router

    def guarded(handler: Endpoint) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            kernel = plugin.kernel
            if kernel is None:
                return json_error(503, "the router is not running", "plugin_unavailable", "server_error")
            if not _is_admin(request.scope.get("sira.principal")):  # the admin listener's guard sets it
                snap, info = kernel.snapshot, request_info(request.scope, "admin")
                try:
                    principal = await kernel.pipeline.authenticate(snap, info)
                    # as the admin guard does: a deny vote (a key's allowed_routes…) applies here too
                    await kernel.pipeline.authorize(snap, principal, info, "admin", None)
                except (AuthenticationFailed, AuthorizationDenied) as exc:
                    return json_error(exc.status, exc.message, exc.code, exc.error_type)
                if not _is_admin(principal):
                    return json_error(403, "the router admin API needs the master key", "permission_denied",
                                      "permission_error")
            try:
                return await handler(request)
            except ValueError as exc:  # includes msgspec's DecodeError / ValidationError
                return _bad(str(exc))
            except RecursionError:  # a JSON bomb ([[[[…]]]])
                return _bad("the body is nested too deeply")
            except ConfigError as exc:
                return _bad(exc.message)

        return endpoint

    async def decode_rule(request: Request, name: str | None = None) -> RuleConfig:
        raw = msgspec.json.decode(await _body(request))
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object")
        if name is not None:
            raw.setdefault("name", name)
            if raw["name"] != name:
                raise ValueError(f"the body names rule {raw['name']!r} but the path names {name!r}")
        return msgspec.convert(raw, RuleConfig)

    async def rules(request: Request) -> Response:
        if request.method == "GET":
            return _json({"rules": router.rule_configs()})
        rule = await decode_rule(request)
        if router.find_rule(rule.name) is not None:
            return _bad(f"a rule named {rule.name!r} exists; PUT {prefix}/rules/{rule.name} replaces it", 409,
                        "conflict")
        router.put_rule(rule)
        await plugin.save_rules()
        return _json({"rule": rule}, 201)

    async def one_rule(request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "GET":
            found = router.find_rule(name)
            if found is None:
                return _bad(f"no rule named {name!r}", 404, "not_found")
            return _json({"rule": found})
        if request.method == "DELETE":
            if not router.delete_rule(name):
                return _bad(f"no rule named {name!r}", 404, "not_found")
            await plugin.save_rules()
            return Response(status_code=204)
        rule = await decode_rule(request, name)
        created = router.put_rule(rule)
        await plugin.save_rules()
        return _json({"rule": rule}, 201 if created else 200)

    async def test_rules(request: Request) -> Response:
        raw = msgspec.json.decode(await _body(request))
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object")
        headers = {str(k).lower(): str(v) for k, v in (raw.pop("headers", None) or {}).items()}
        who = msgspec.convert(raw.pop("principal", None) or {}, _TestPrincipal)
        metadata = raw.pop("metadata", None)
        chat = msgspec.convert(raw, ChatRequest)
        if metadata is not None:
            chat.extra["metadata"] = metadata
        principal = Principal(id=who.id, kind="key", tenant=who.tenant, metadata=who.metadata)
        return _json(router.dry_run(chat, principal, headers))

    async def decision_log(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            return _bad("limit must be an integer")
        limit = max(1, min(limit, router.config.decision_log_size))
        return _json({"decisions": router.decision_log(limit), "recorded": router.decisions.recorded})

    async def breakers(request: Request) -> Response:
        return _json({"breakers": router.breaker_states()})

    async def reset_breakers(request: Request) -> Response:
        body = await _body(request)
        raw = msgspec.json.decode(body) if body.strip() else {}
        deployment = raw.get("deployment") if isinstance(raw, dict) else None
        count = router.reset_breakers(deployment)
        if deployment is not None and count == 0:
            return _bad(f"no deployment {deployment!r}", 404, "not_found")
        return _json({"reset": count, "breakers": router.breaker_states()})

    async def groups(request: Request) -> Response:
        return _json({"groups": router.group_info()})

    # /rules/test before /rules/{name}, so a POST to it is not taken for a rule name.
    register(f"{prefix}/rules/test", guarded(test_rules), methods=["POST"], listener=listener)
    register(f"{prefix}/rules", guarded(rules), methods=["GET", "POST"], listener=listener)
    register(f"{prefix}/rules/{{name}}", guarded(one_rule), methods=["GET", "PUT", "DELETE"], listener=listener)
    register(f"{prefix}/route/decision-log", guarded(decision_log), methods=["GET"], listener=listener)
    register(f"{prefix}/route/breakers", guarded(breakers), methods=["GET"], listener=listener)
    register(f"{prefix}/route/breakers/reset", guarded(reset_breakers), methods=["POST"], listener=listener)
    register(f"{prefix}/route/groups", guarded(groups), methods=["GET"], listener=listener)
