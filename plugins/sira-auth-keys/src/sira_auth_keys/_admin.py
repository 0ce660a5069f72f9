"""The admin API on the kernel's admin listener: keys, tenants, teams, users, budgets, audit log.

Who gets in: the kernel's guard admits principals with the ``admin`` role (the master key, admin
keys); this plugin's ``sira_authorize`` votes an explicit allow for tenant-admin and viewer keys on
*these* routes only (never the kernel's), so every handler here checks the caller itself:

* ``read`` (GET) needs admin, tenant-admin or viewer; ``manage`` (POST/PUT/DELETE on keys, teams,
  users) admin or tenant-admin; tenants are created, changed and deleted by admins only;
* a tenant-admin or viewer sees and touches its own tenant only: anything else is a 404, exactly
  as if it did not exist;
* nothing is granted wider than the caller holds (:mod:`._policy`), and an object wider than the
  caller (an admin's key, for a tenant-admin) cannot be changed by it.

Every request is written to the AuditStore (reads too unless ``audit_reads = false``): who, what,
which object, the outcome, the client address and the request id. Never the key, its hash or the
hash secret. Bodies are validated strictly (:mod:`._schema`); errors are 400 with ``param``.

=============================================  =========================================
``POST   {prefix}/keys``                       create a key: the key is in the answer, once
``GET    {prefix}/keys``                       list (``?tenant_id=``, ``?team_id=``)
``GET    {prefix}/keys/{key_id}``              one key (never its hash)
``PUT    {prefix}/keys/{key_id}``              update name, team, role, models, routes, limits, metadata, expiry
``DELETE {prefix}/keys/{key_id}``              revoke (as ``POST …/revoke``)
``POST   {prefix}/keys/{key_id}/revoke``       revoke
``POST   {prefix}/keys/{key_id}/rotate``       a new key; the old one expires after ``grace_seconds``
``GET|POST {prefix}/tenants``, ``GET|PUT|DELETE {prefix}/tenants/{id}``
``GET|POST {prefix}/teams``, ``GET|PUT|DELETE {prefix}/teams/{id}``
``GET|POST {prefix}/users``, ``GET|PUT|DELETE {prefix}/users/{id}``
``GET    {prefix}/budgets``                    every budget in reach: spend, reserved, reset time
``GET    {prefix}/budgets/{scope}/{id}``       one (scope: key, team or tenant)
``GET    {prefix}/audit``                      the audit log (``?since=&actor=&tenant_id=&limit=``)
=============================================  =========================================
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path

from sira_kernel import Principal
from sira_kernel.logs import get_logger
from sira_kernel.storage import AuditEntry, AuditStore, KeyRecord, KeyStore, Limits, Team, Tenant, UsageStore, User
from sira_kernel.surface import request_info

from ._budgets import SCOPE_NAMES, Budget, period_bounds
from ._keys import LINEAGE, display_prefix, generate_key, lineage
from ._policy import Actor, Denied, check_key_grant, check_limits_within, role_within
from ._schema import (
    ID_PATTERN,
    Invalid,
    KeyCreate,
    KeyUpdate,
    LimitsIn,
    Rotate,
    TeamCreate,
    TeamUpdate,
    TenantCreate,
    TenantUpdate,
    UserCreate,
    UserUpdate,
    check_id,
    decode,
)

if TYPE_CHECKING:
    from sira_kernel.registrations import RouteRegistrar

    from ._plugin import AuthKeysPlugin

__all__ = ["AdminPaths", "register_admin"]

_log = get_logger("auth-keys")
_ID_CHARS = string.ascii_lowercase + string.digits
AUDIT_LIMIT = 1000


def new_id(kind: str) -> str:
    """``key_…``, ``team_…``: 16 random lowercase base36 characters (URL-safe, opaque)."""
    return f"{kind}_" + "".join(secrets.choice(_ID_CHARS) for _ in range(16))


class NotFound(Exception):
    def __init__(self, what: str, object_id: str) -> None:
        super().__init__(f"no {what} {object_id!r}")
        self.message = f"no {what} {object_id!r}"


class Conflict(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _json(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json")


def _error(status: int, message: str, code: str, error_type: str, param: str | None = None) -> Response:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return _json(body, status)


def key_view(record: KeyRecord, now: float | None = None) -> dict[str, Any]:
    """A key as the API shows it: everything but its hash, and its status."""
    now = time.time() if now is None else now
    view = msgspec.structs.asdict(record)
    del view["key_hash"]
    view["principal_id"] = lineage(record.metadata, record.id)
    view["limits"] = msgspec.structs.asdict(record.limits)
    if record.revoked_at is not None and record.revoked_at <= now:
        view["status"] = "revoked"
    elif record.expires_at is not None and record.expires_at <= now:
        view["status"] = "expired"
    elif record.rotated_to is not None:
        view["status"] = "rotating"
    else:
        view["status"] = "active"
    return view


def _limits(data: LimitsIn) -> Limits:
    return Limits(rpm=data.rpm, tpm=data.tpm, max_concurrent=data.max_concurrent, budget_usd=data.budget_usd,
                  budget_period=data.budget_period)


class AdminPaths:
    """Matches a raw path against this plugin's admin routes (for the delegation vote)."""

    def __init__(self) -> None:
        self.templates: list[str] = []
        self._patterns: list[Any] = []

    def add(self, template: str) -> None:
        self.templates.append(template)
        self._patterns.append(compile_path(template)[0])

    def __call__(self, path: str) -> bool:
        return any(pattern.match(path) for pattern in self._patterns)


def _path_id(request: Request) -> str | None:
    """The ``{object_id}`` of the path when it is an id (anything else, an API key pasted there say,
    is not written to the audit log)."""
    value = request.path_params.get("object_id")
    return value if isinstance(value, str) and ID_PATTERN.match(value) else None


class Call:
    """One admin request being handled: the caller, the request, and what the audit entry says."""

    def __init__(self, request: Request, actor: Actor, action: str, target_type: str) -> None:
        self.request = request
        self.actor = actor
        self.action = action
        self.target_type = target_type
        self.target_id: str | None = _path_id(request)
        self.tenant_id: str | None = actor.home_tenant
        self.details: dict[str, Any] = {}
        self.now = time.time()

    async def body(self) -> bytes:
        data = b""
        async for chunk in self.request.stream():
            data += chunk
            if len(data) > 64 * 1024:
                raise Invalid("the body is larger than 65536 bytes")
        return data

    def query_id(self, name: str) -> str | None:
        value = self.request.query_params.get(name)
        return None if value is None else check_id(value, name)

    def require(self, permission: str) -> None:
        if not self.actor.can(permission):
            what = {"read": "read", "manage": "change", "global": "change tenants in"}[permission]
            raise Denied(f"a {self.actor.role} key cannot {what} the admin API" if permission != "global"
                         else "only admins can create, change or delete tenants")

    def scoped_tenant(self, requested: str | None) -> str | None:
        """The tenant a listing is limited to: the caller's own unless it is global."""
        if self.actor.is_global:
            return requested
        if requested is not None and requested != self.actor.home_tenant:
            raise NotFound("tenant", requested)
        return self.actor.home_tenant


Handler = Callable[[Call], Awaitable[Response]]


def register_admin(register: RouteRegistrar, plugin: AuthKeysPlugin, prefix: str, paths: AdminPaths) -> None:
    """Register every admin route under ``prefix`` on the admin listener."""

    def keys() -> KeyStore:
        return plugin.services().get(KeyStore)

    def audit_store() -> AuditStore:
        return plugin.services().get(AuditStore)

    def actor_of(principal: Any) -> Actor | None:
        if not isinstance(principal, Principal):
            return None
        entry = plugin.authenticator.current(principal) if plugin.authenticator is not None else None
        if entry is not None:
            return entry.actor()
        if principal.kind == "master" or "admin" in principal.roles:
            return Actor(id=principal.id, kind=principal.kind, role="admin", home_tenant=principal.tenant)
        return None

    async def write_audit(call: Call | None, request: Request, actor_id: str, action: str, target_type: str,
                          outcome: str) -> None:
        if call is not None and call.request.method == "GET" and not plugin.config.audit_reads and outcome == "ok":
            return
        info = request_info(request.scope, "admin")
        entry = AuditEntry(
            id=new_id("aud"), at=time.time(), actor=actor_id, action=action, target_type=target_type,
            target_id=call.target_id if call else _path_id(request),
            tenant_id=call.tenant_id if call else None, client=info.client, request_id=info.request_id or None,
            outcome=outcome, details=call.details if call else {},
        )
        try:
            await audit_store().write_audit(entry)
        except Exception:
            _log.exception("auth_keys.audit_failed", action=action)

    def route(path: str, methods: dict[str, tuple[str, str, Handler]]) -> None:
        """``methods``: HTTP method -> (action, target type, handler)."""

        async def endpoint(request: Request) -> Response:
            action, target_type, handler = methods[request.method if request.method != "HEAD" else "GET"]
            principal = request.scope.get("sira.principal")
            actor = actor_of(principal)
            actor_id = principal.id if isinstance(principal, Principal) else "unknown"
            if actor is None:
                await write_audit(None, request, actor_id, action, target_type, "denied")
                return _error(403, "this admin API needs an admin, tenant-admin or viewer key", "permission_denied",
                              "permission_error")
            call = Call(request, actor, action, target_type)
            outcome, response = "ok", None
            try:
                call.require("read" if request.method in ("GET", "HEAD") else "manage")
                response = await handler(call)
            except Invalid as exc:
                outcome = "invalid"
                call.details = {"error": exc.message, "param": exc.param}
                response = _error(400, exc.message, "invalid_request", "invalid_request_error", exc.param)
            except Denied as exc:
                outcome = "denied"
                call.details = {"error": exc.message, "param": exc.param}
                response = _error(403, exc.message, "permission_denied", "permission_error", exc.param)
            except NotFound as exc:
                outcome = "not_found"
                call.details = {"error": exc.message}
                response = _error(404, exc.message, "not_found", "invalid_request_error")
            except Conflict as exc:
                outcome = "conflict"
                call.details = {"error": exc.message}
                response = _error(409, exc.message, "conflict", "invalid_request_error")
            except Exception:
                outcome = "error"
                _log.exception("auth_keys.admin_failed", action=action)
                response = _error(500, "the request failed; see the gateway log", "internal_error", "server_error")
            finally:
                await write_audit(call, request, actor_id, action, target_type, outcome)
            return response

        paths.add(path)
        register(path, endpoint, methods=sorted(methods), listener="admin")

    # -- lookups honouring the caller's reach ----------------------------------------------------------

    async def tenant_in_reach(call: Call, tenant_id: str) -> Tenant:
        tenant = await keys().get_tenant(tenant_id) if call.actor.reaches(tenant_id) else None
        if tenant is None:
            raise NotFound("tenant", tenant_id)
        return tenant

    async def team_in_reach(call: Call, team_id: str) -> Team:
        team = await keys().get_team(team_id)
        if team is None or not call.actor.reaches(team.tenant_id):
            raise NotFound("team", team_id)
        return team

    async def user_in_reach(call: Call, user_id: str) -> User:
        user = await keys().get_user(user_id)
        if user is None or not call.actor.reaches(user.tenant_id):
            raise NotFound("user", user_id)
        return user

    async def key_in_reach(call: Call, key_id: str) -> KeyRecord:
        record = await keys().get_key(key_id)
        if record is None or not call.actor.reaches(record.tenant_id):
            raise NotFound("key", key_id)
        call.tenant_id = record.tenant_id
        return record

    def object_id(call: Call) -> str:
        return check_id(call.request.path_params["object_id"], "id")

    def changed(*ids: str | None) -> None:
        """This worker forgets at once; the others when they poll (keys) or refresh (the rest)."""
        if plugin.authenticator is not None:
            plugin.authenticator.invalidate([i for i in ids if i])

    async def check_key_refs(call: Call, record: KeyRecord) -> None:
        """The key's team and user exist in its tenant, and the key's role is within the user's."""
        if record.team_id is not None:
            team = await keys().get_team(record.team_id)
            if team is None or team.tenant_id != record.tenant_id:
                raise Invalid("team_id: no such team in the key's tenant", "team_id")
        if record.user_id is not None:
            user = await keys().get_user(record.user_id)
            if user is None or user.tenant_id != record.tenant_id:
                raise Invalid("user_id: no such user in the key's tenant", "user_id")
            if not role_within(record.role, user.role):
                raise Invalid(f"role: wider than the user's role {user.role!r}", "role")

    def may_change(call: Call, role: str, what: str) -> None:
        if not role_within(role, call.actor.role):
            raise Denied(f"a {call.actor.role} cannot change a {role}'s {what}")

    def key_details(record: KeyRecord) -> dict[str, Any]:
        return {
            "name": record.name, "role": record.role, "team_id": record.team_id, "user_id": record.user_id,
            "allowed_models": record.allowed_models, "allowed_routes": record.allowed_routes,
            "limits": msgspec.structs.asdict(record.limits), "expires_at": record.expires_at,
        }

    # -- keys ---------------------------------------------------------------------------------------------

    async def create_key(call: Call) -> Response:
        data = decode(await call.body(), KeyCreate)
        actor = call.actor
        tenant_id = data.tenant_id or actor.home_tenant
        if tenant_id is None:
            raise Invalid("tenant_id: required", "tenant_id")
        await tenant_in_reach(call, tenant_id)
        if data.expires_at is not None and data.expires_in is not None:
            raise Invalid("expires_in: give expires_at or expires_in, not both", "expires_in")
        expires_at = data.expires_at if data.expires_in is None else call.now + data.expires_in
        if expires_at is not None and expires_at <= call.now:
            raise Invalid("expires_at: must be in the future", "expires_at")
        secret = generate_key(plugin.config.key_length)
        record = KeyRecord(
            id=new_id("key"), key_hash=plugin.hash_key(secret), prefix=display_prefix(secret), name=data.name,
            tenant_id=tenant_id, role=data.role, created_at=call.now, created_by=actor.id, team_id=data.team_id,
            user_id=data.user_id, allowed_models=data.allowed_models, allowed_routes=data.allowed_routes,
            limits=_limits(data.limits), metadata=data.metadata, expires_at=expires_at,
        )
        call.tenant_id = tenant_id
        call.details = key_details(record)
        check_key_grant(actor, record)
        await check_key_refs(call, record)
        stored = await keys().create_key(record)
        call.target_id = stored.id
        return _json({"key": secret, "record": key_view(stored, call.now)}, 201)

    async def list_keys(call: Call) -> Response:
        tenant_id = call.scoped_tenant(call.query_id("tenant_id"))
        team_id = call.query_id("team_id")
        records = await keys().list_keys(tenant_id=tenant_id, team_id=team_id)
        call.details = {"tenant_id": tenant_id, "team_id": team_id, "count": len(records)}
        return _json({"keys": [key_view(r, call.now) for r in records]})

    async def get_key(call: Call) -> Response:
        return _json(key_view(await key_in_reach(call, object_id(call)), call.now))

    async def update_key(call: Call) -> Response:
        data = decode(await call.body(), KeyUpdate)
        record = await key_in_reach(call, object_id(call))
        actor = call.actor
        may_change(call, record.role, "key")
        own = actor.key is not None and actor.key.id == record.id
        if own and (data.team_id is not UNSET and data.team_id != record.team_id):
            raise Denied("you cannot move your own key to another team", "team_id")
        changes: dict[str, Any] = {}
        for field in ("name", "team_id", "role", "allowed_models", "allowed_routes", "metadata", "expires_at"):
            value = getattr(data, field)
            if value is not UNSET:
                changes[field] = value
        if data.limits is not UNSET:
            changes["limits"] = _limits(data.limits)
        if "metadata" in changes and LINEAGE in record.metadata:
            changes["metadata"] = {**changes["metadata"], LINEAGE: record.metadata[LINEAGE]}
        if changes.get("expires_at") is not None and changes["expires_at"] <= call.now:
            raise Invalid("expires_at: must be in the future", "expires_at")
        updated = msgspec.structs.replace(record, **changes)
        call.details = {"changed": sorted(changes), **key_details(updated)}
        check_key_grant(actor, updated)
        await check_key_refs(call, updated)
        stored = await keys().update_key(updated)
        changed(record.id)
        return _json(key_view(stored, call.now))

    async def revoke_key(call: Call) -> Response:
        record = await key_in_reach(call, object_id(call))
        may_change(call, record.role, "key")
        if record.revoked_at is not None:
            return _json(key_view(record, call.now))
        stored = await keys().revoke_key(record.id, call.now)
        changed(record.id)
        return _json(key_view(stored, call.now))

    async def rotate_key(call: Call) -> Response:
        data = decode(await call.body(), Rotate)
        record = await key_in_reach(call, object_id(call))
        may_change(call, record.role, "key")
        if record.revoked_at is not None or (record.expires_at is not None and record.expires_at <= call.now):
            raise Conflict(f"key {record.id!r} is revoked or expired: create a new one instead")
        if record.rotated_to is not None:
            raise Conflict(f"key {record.id!r} was already rotated to {record.rotated_to!r}")
        grace = plugin.config.default_rotation_grace if data.grace_seconds is None else data.grace_seconds
        secret = generate_key(plugin.config.key_length)
        fresh = msgspec.structs.replace(
            record, id=new_id("key"), key_hash=plugin.hash_key(secret), prefix=display_prefix(secret),
            created_at=call.now, created_by=call.actor.id, revoked_at=None, rotated_to=None,
            metadata={**record.metadata, LINEAGE: lineage(record.metadata, record.id)},
        )
        check_key_grant(call.actor, fresh)
        stored = await keys().create_key(fresh)
        old_expiry = call.now + grace
        if record.expires_at is not None:
            old_expiry = min(old_expiry, record.expires_at)
        previous = await keys().update_key(msgspec.structs.replace(record, rotated_to=stored.id,
                                                                   expires_at=old_expiry))
        changed(record.id)
        call.details = {"new_key_id": stored.id, "grace_seconds": grace}
        return _json({"key": secret, "record": key_view(stored, call.now),
                      "previous": key_view(previous, call.now)}, 201)

    # -- tenants ------------------------------------------------------------------------------------------

    def tenant_view(tenant: Tenant) -> dict[str, Any]:
        return msgspec.structs.asdict(tenant) | {"limits": msgspec.structs.asdict(tenant.limits)}

    async def list_tenants(call: Call) -> Response:
        if call.actor.is_global:
            tenants = await keys().list_tenants()
        else:
            found = await keys().get_tenant(call.actor.home_tenant or "")
            tenants = [found] if found is not None else []
        return _json({"tenants": [tenant_view(t) for t in tenants]})

    async def create_tenant(call: Call) -> Response:
        call.require("global")
        data = decode(await call.body(), TenantCreate)
        tenant = Tenant(id=new_id("ten"), name=data.name, created_at=call.now, limits=_limits(data.limits),
                        metadata=data.metadata, disabled=data.disabled)
        call.details = {"name": data.name, "limits": msgspec.structs.asdict(tenant.limits)}
        try:
            stored = await keys().create_tenant(tenant)
        except ValueError:
            raise Conflict(f"a tenant named {data.name!r} exists") from None
        call.target_id = call.tenant_id = stored.id
        return _json(tenant_view(stored), 201)

    async def get_tenant(call: Call) -> Response:
        tenant = await tenant_in_reach(call, object_id(call))
        call.tenant_id = tenant.id
        return _json(tenant_view(tenant))

    def narrower_only(call: Call, new: Limits, old: Limits, what: str, applies: bool) -> None:
        """Limits that apply to the caller itself can only be narrowed by it."""
        if applies and call.actor.key is not None:
            check_limits_within(new, old, f"the current limit of {what}, which applies to your own key")

    async def update_tenant(call: Call) -> Response:
        call.require("global")
        data = decode(await call.body(), TenantUpdate)
        tenant = await tenant_in_reach(call, object_id(call))
        call.tenant_id = tenant.id
        changes: dict[str, Any] = {k: getattr(data, k) for k in ("name", "metadata", "disabled")
                                   if getattr(data, k) is not UNSET}
        if data.limits is not UNSET:
            changes["limits"] = _limits(data.limits)
            own = call.actor.key
            narrower_only(call, changes["limits"], tenant.limits, f"tenant {tenant.id!r}",
                          own is not None and own.tenant_id == tenant.id)
        updated = msgspec.structs.replace(tenant, **changes)
        call.details = {"changed": sorted(changes)}
        try:
            stored = await keys().update_tenant(updated)
        except ValueError:
            raise Conflict("a tenant with that name exists") from None
        changed(tenant.id)
        return _json(tenant_view(stored))

    async def delete_tenant(call: Call) -> Response:
        call.require("global")
        tenant = await tenant_in_reach(call, object_id(call))
        call.tenant_id = tenant.id
        if call.actor.key is not None and call.actor.key.tenant_id == tenant.id:
            raise Denied("you cannot delete your own tenant")
        try:
            await keys().delete_tenant(tenant.id)
        except ValueError as exc:
            raise Conflict(f"tenant {tenant.id!r} cannot be deleted: {exc}") from None
        changed(tenant.id)
        return Response(status_code=204)

    # -- teams --------------------------------------------------------------------------------------------

    def team_view(team: Team) -> dict[str, Any]:
        return msgspec.structs.asdict(team) | {"limits": msgspec.structs.asdict(team.limits)}

    async def list_teams(call: Call) -> Response:
        tenant_id = call.scoped_tenant(call.query_id("tenant_id"))
        return _json({"teams": [team_view(t) for t in await keys().list_teams(tenant_id)]})

    async def create_team(call: Call) -> Response:
        data = decode(await call.body(), TeamCreate)
        tenant_id = data.tenant_id or call.actor.home_tenant
        if tenant_id is None:
            raise Invalid("tenant_id: required", "tenant_id")
        await tenant_in_reach(call, tenant_id)
        call.tenant_id = tenant_id
        team = Team(id=new_id("team"), tenant_id=tenant_id, name=data.name, created_at=call.now,
                    limits=_limits(data.limits), metadata=data.metadata)
        call.details = {"name": data.name, "limits": msgspec.structs.asdict(team.limits)}
        try:
            stored = await keys().create_team(team)
        except ValueError:
            raise Conflict(f"a team named {data.name!r} exists in tenant {tenant_id!r}") from None
        call.target_id = stored.id
        return _json(team_view(stored), 201)

    async def get_team(call: Call) -> Response:
        team = await team_in_reach(call, object_id(call))
        call.tenant_id = team.tenant_id
        return _json(team_view(team))

    async def update_team(call: Call) -> Response:
        data = decode(await call.body(), TeamUpdate)
        team = await team_in_reach(call, object_id(call))
        call.tenant_id = team.tenant_id
        changes: dict[str, Any] = {k: getattr(data, k) for k in ("name", "metadata") if getattr(data, k) is not UNSET}
        if data.limits is not UNSET:
            changes["limits"] = _limits(data.limits)
            own = call.actor.key
            narrower_only(call, changes["limits"], team.limits, f"team {team.id!r}",
                          own is not None and own.team_id == team.id)
        call.details = {"changed": sorted(changes)}
        try:
            stored = await keys().update_team(msgspec.structs.replace(team, **changes))
        except ValueError:
            raise Conflict("a team with that name exists") from None
        changed(team.id)
        return _json(team_view(stored))

    async def delete_team(call: Call) -> Response:
        team = await team_in_reach(call, object_id(call))
        call.tenant_id = team.tenant_id
        if call.actor.key is not None and call.actor.key.team_id == team.id:
            raise Denied("you cannot delete your own team")
        try:
            await keys().delete_team(team.id)
        except ValueError as exc:
            raise Conflict(f"team {team.id!r} cannot be deleted: {exc}") from None
        changed(team.id)
        return Response(status_code=204)

    # -- users --------------------------------------------------------------------------------------------

    async def list_users(call: Call) -> Response:
        tenant_id = call.scoped_tenant(call.query_id("tenant_id"))
        return _json({"users": [msgspec.structs.asdict(u) for u in await keys().list_users(tenant_id)]})

    async def create_user(call: Call) -> Response:
        data = decode(await call.body(), UserCreate)
        tenant_id = data.tenant_id or call.actor.home_tenant
        if tenant_id is None:
            raise Invalid("tenant_id: required", "tenant_id")
        await tenant_in_reach(call, tenant_id)
        call.tenant_id = tenant_id
        call.actor.check_role(data.role)
        if data.team_id is not None:
            team = await keys().get_team(data.team_id)
            if team is None or team.tenant_id != tenant_id:
                raise Invalid("team_id: no such team in the user's tenant", "team_id")
        user = User(id=new_id("user"), tenant_id=tenant_id, email=data.email, role=data.role, created_at=call.now,
                    team_id=data.team_id, disabled=data.disabled)
        call.details = {"role": data.role, "team_id": data.team_id}
        try:
            stored = await keys().create_user(user)
        except ValueError:
            raise Conflict("a user with that email exists") from None
        call.target_id = stored.id
        return _json(msgspec.structs.asdict(stored), 201)

    async def get_user(call: Call) -> Response:
        user = await user_in_reach(call, object_id(call))
        call.tenant_id = user.tenant_id
        return _json(msgspec.structs.asdict(user))

    async def update_user(call: Call) -> Response:
        data = decode(await call.body(), UserUpdate)
        user = await user_in_reach(call, object_id(call))
        call.tenant_id = user.tenant_id
        may_change(call, user.role, "user")
        changes: dict[str, Any] = {k: getattr(data, k) for k in ("email", "team_id", "role", "disabled")
                                   if getattr(data, k) is not UNSET}
        if "role" in changes:
            call.actor.check_role(changes["role"])
        own = call.actor.key is not None and call.actor.key.user_id == user.id
        if own and ("team_id" in changes and changes["team_id"] != user.team_id):
            raise Denied("you cannot move yourself to another team", "team_id")
        if changes.get("team_id") is not None:
            team = await keys().get_team(changes["team_id"])
            if team is None or team.tenant_id != user.tenant_id:
                raise Invalid("team_id: no such team in the user's tenant", "team_id")
        call.details = {"changed": sorted(changes), "role": changes.get("role", user.role)}
        try:
            stored = await keys().update_user(msgspec.structs.replace(user, **changes))
        except ValueError:
            raise Conflict("a user with that email exists") from None
        changed(user.id)
        return _json(msgspec.structs.asdict(stored))

    async def delete_user(call: Call) -> Response:
        user = await user_in_reach(call, object_id(call))
        call.tenant_id = user.tenant_id
        may_change(call, user.role, "user")
        await keys().delete_user(user.id)
        changed(user.id)
        return Response(status_code=204)

    # -- budgets ------------------------------------------------------------------------------------------

    async def budget_of(scope: str, scope_id: str, limits: Limits) -> dict[str, Any] | None:
        if limits.budget_usd is None:
            return None
        found = plugin.ledger.budgets.get((scope, scope_id))
        if found is not None and found.loaded and found.period == limits.budget_period:
            found.roll(time.time())
            return found.view() | {"budget_usd": limits.budget_usd}
        start, resets_at = period_bounds(limits.budget_period, time.time())
        usage = plugin.services().find(UsageStore)
        spent = await usage.spend(scope, scope_id, start) if usage is not None else 0.0
        view = Budget(scope, scope_id, limits.budget_usd, limits.budget_period, time.time())
        view.spent, view.loaded = spent, True
        return view.view()

    async def list_budgets(call: Call) -> Response:
        tenant_id = call.scoped_tenant(call.query_id("tenant_id"))
        store = keys()
        tenants = [await tenant_in_reach(call, tenant_id)] if tenant_id else await store.list_tenants()
        found: list[dict[str, Any]] = []
        for tenant in tenants:
            scopes: list[tuple[str, str, Limits]] = [("tenant", tenant.id, tenant.limits)]
            scopes += [("team", t.id, t.limits) for t in await store.list_teams(tenant.id)]
            lines = {lineage(k.metadata, k.id): k.limits for k in await store.list_keys(tenant_id=tenant.id)
                     if k.revoked_at is None}
            scopes += [("principal", line, limits) for line, limits in lines.items()]
            for scope, scope_id, limits in scopes:
                view = await budget_of(scope, scope_id, limits)
                if view is not None:
                    found.append(view)
        return _json({"budgets": found})

    async def get_budget(call: Call) -> Response:
        scope_name = call.request.path_params["scope"]
        scopes = {name: scope for scope, name in SCOPE_NAMES.items()}
        if scope_name not in scopes:
            raise Invalid("scope: one of key, team, tenant", "scope")
        scope = scopes[scope_name]
        scope_id = object_id(call)
        limits: Limits
        if scope == "tenant":
            limits = (await tenant_in_reach(call, scope_id)).limits
        elif scope == "team":
            limits = (await team_in_reach(call, scope_id)).limits
        else:
            record = await key_in_reach(call, scope_id)
            limits, scope_id = record.limits, lineage(record.metadata, record.id)
        view = await budget_of(scope, scope_id, limits)
        if view is None:
            raise NotFound(f"budget on {scope_name}", scope_id)
        return _json(view)

    # -- audit --------------------------------------------------------------------------------------------

    async def query_audit(call: Call) -> Response:
        params = call.request.query_params
        tenant_id = call.scoped_tenant(call.query_id("tenant_id"))
        actor = params.get("actor")
        if actor is not None:
            check_id(actor, "actor")
        try:
            since = float(params["since"]) if "since" in params else None
        except ValueError:
            raise Invalid("since: expected a UNIX time in seconds", "since") from None
        try:
            limit = int(params.get("limit", "100"))
        except ValueError:
            raise Invalid("limit: expected an integer", "limit") from None
        if not 1 <= limit <= AUDIT_LIMIT:
            raise Invalid(f"limit: between 1 and {AUDIT_LIMIT}", "limit")
        entries = await audit_store().query_audit(since=since, actor=actor, tenant_id=tenant_id, limit=limit)
        return _json({"entries": entries})

    # -- the routes ---------------------------------------------------------------------------------------

    route(f"{prefix}/keys", {"GET": ("key.list", "key", list_keys), "POST": ("key.create", "key", create_key)})
    route(f"{prefix}/keys/{{object_id}}", {
        "GET": ("key.get", "key", get_key), "PUT": ("key.update", "key", update_key),
        "DELETE": ("key.revoke", "key", revoke_key),
    })
    route(f"{prefix}/keys/{{object_id}}/revoke", {"POST": ("key.revoke", "key", revoke_key)})
    route(f"{prefix}/keys/{{object_id}}/rotate", {"POST": ("key.rotate", "key", rotate_key)})
    route(f"{prefix}/tenants", {"GET": ("tenant.list", "tenant", list_tenants),
                                "POST": ("tenant.create", "tenant", create_tenant)})
    route(f"{prefix}/tenants/{{object_id}}", {
        "GET": ("tenant.get", "tenant", get_tenant), "PUT": ("tenant.update", "tenant", update_tenant),
        "DELETE": ("tenant.delete", "tenant", delete_tenant),
    })
    route(f"{prefix}/teams", {"GET": ("team.list", "team", list_teams), "POST": ("team.create", "team", create_team)})
    route(f"{prefix}/teams/{{object_id}}", {
        "GET": ("team.get", "team", get_team), "PUT": ("team.update", "team", update_team),
        "DELETE": ("team.delete", "team", delete_team),
    })
    route(f"{prefix}/users", {"GET": ("user.list", "user", list_users), "POST": ("user.create", "user", create_user)})
    route(f"{prefix}/users/{{object_id}}", {
        "GET": ("user.get", "user", get_user), "PUT": ("user.update", "user", update_user),
        "DELETE": ("user.delete", "user", delete_user),
    })
    route(f"{prefix}/budgets", {"GET": ("budget.list", "budget", list_budgets)})
    route(f"{prefix}/budgets/{{scope}}/{{object_id}}", {"GET": ("budget.get", "budget", get_budget)})
    route(f"{prefix}/audit", {"GET": ("audit.query", "audit", query_audit)})
