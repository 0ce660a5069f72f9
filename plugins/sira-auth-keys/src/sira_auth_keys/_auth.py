"""Authentication and authorization of virtual keys, with the in-memory cache in front of the store.

The hot path (:meth:`KeyAuthenticator.authenticate` on a cached key) is synchronous: prefix and
format check, one HMAC, one dict lookup, one clock read. A miss returns a coroutine that reads the
key by hash (then compares the hashes in constant time), its tenant, team and user, builds the
:class:`~sira_kernel.Principal` once and caches it.

Invalidation: :meth:`poll_changes` runs as a plugin task and asks ``KeyStore.changes_since`` every
``poll_interval``; every changed id (a key's, or a tenant's, team's or user's if the store reports
those) drops the cached keys that refer to it, so a revoke reaches every worker sharing the store
within ``poll_interval`` plus one query. Cached keys also expire on their own after
``refresh_interval`` (their tenant, team and user are read again) and at the key's ``expires_at``.
A load that overlapped an invalidation is used once but not cached.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import anyio

from sira_kernel import AuthenticationFailed, AuthorizationDenied, LimitSpec, Principal, RequestInfo, UsageRecord
from sira_kernel.accounting import PriceBook
from sira_kernel.logs import get_logger
from sira_kernel.services import ServiceRegistry
from sira_kernel.storage import KeyRecord, KeyStore, Limits, Role, Team, Tenant, UsageStore, User

from ._budgets import Budget, Concurrency, Ledger
from ._config import AuthKeysConfig
from ._keys import KEY_PREFIX, KeyHasher, is_well_formed, lineage
from ._policy import PERMISSIONS, Actor, RoutePatterns, effective_role

__all__ = ["CURRENT", "CachedKey", "KeyAuthenticator"]

_log = get_logger("auth-keys")

CURRENT: ContextVar[CachedKey | None] = ContextVar("sira_auth_keys_current", default=None)
"""The cached key ``authenticate`` answered with, for ``authorize`` and the admin API in the same
task (the pipeline and the admin guard call them in one task). Holding it keeps the key's budgets
and limits with the request even if the cache drops the key meanwhile."""

RESERVING_OPERATIONS = frozenset({"chat", "embeddings"})
ASSUMED_BODY_BYTES = 16 * 1024
"""The prompt size assumed for a budget estimate when a request has no Content-Length (chunked)."""


class CachedKey:
    """A key as authenticated: its record, the principal answered for it and what it holds."""

    __slots__ = ("budgets", "key_hash", "principal", "record", "refs", "role", "routes", "slots", "valid_until")

    def __init__(
        self, record: KeyRecord, key_hash: str, principal: Principal, role: Role, routes: RoutePatterns | None,
        budgets: tuple[Budget, ...], slots: tuple[Concurrency, ...], valid_until: float,
    ) -> None:
        self.record = record
        self.key_hash = key_hash
        self.principal = principal
        self.role = role
        self.routes = routes
        self.budgets = budgets
        self.slots = slots
        self.valid_until = valid_until
        self.refs = tuple(ref for ref in (record.id, record.tenant_id, record.team_id, record.user_id) if ref)

    def actor(self) -> Actor:
        return Actor(id=self.record.id, kind="key", role=self.role, home_tenant=self.record.tenant_id,
                     key=self.record)


def _specs(scope: str, scope_id: str, limits: Limits) -> list[LimitSpec]:
    specs = []
    if limits.rpm is not None:
        specs.append(LimitSpec(key=(scope, scope_id), per_minute=float(limits.rpm), unit="requests"))
    if limits.tpm is not None:
        specs.append(LimitSpec(key=(scope, scope_id), per_minute=float(limits.tpm), unit="tokens"))
    return specs


class KeyAuthenticator:
    """Answers ``sira_authenticate`` and ``sira_authorize`` for virtual keys."""

    def __init__(
        self,
        config: AuthKeysConfig,
        hasher: KeyHasher,
        services: ServiceRegistry,
        ledger: Ledger,
        admin_paths: Callable[[str], bool],
        max_body_bytes: int = 4 * 1024 * 1024,
        hold_timeout: float = 660.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.hasher = hasher
        self.services = services
        self.ledger = ledger
        self.admin_paths = admin_paths
        self.max_body_bytes = max_body_bytes
        self.hold_timeout = hold_timeout
        self.clock = clock
        self.entries: dict[str, CachedKey] = {}
        self.by_ref: dict[str, set[str]] = {}
        self.negative: dict[str, tuple[float, str]] = {}
        self.objects: dict[tuple[str, str], tuple[Any, float]] = {}  # (kind, id) -> (tenant|team|user|None, until)
        self.epoch = 0
        self.version: int | None = None
        self.loads = 0

    # -- stores ---------------------------------------------------------------------------------------

    def keystore(self) -> KeyStore:
        return self.services.get(KeyStore)

    # -- authenticate ---------------------------------------------------------------------------------

    def authenticate(self, info: RequestInfo) -> Principal | Awaitable[Principal] | None:
        token = info.bearer_token
        if token is None or not token.startswith(KEY_PREFIX):
            return None  # not one of ours: the next plugin (or the master key) decides
        if not is_well_formed(token):
            raise AuthenticationFailed("malformed API key")
        key_hash = self.hasher(token)
        entry = self.entries.get(key_hash)
        if entry is not None and self.clock() < entry.valid_until:
            CURRENT.set(entry)
            return entry.principal
        refused = self.negative.get(key_hash)
        if refused is not None and refused[0] > time.monotonic():
            raise AuthenticationFailed(refused[1])
        return self._load(key_hash)

    def _refuse(self, key_hash: str, message: str) -> AuthenticationFailed:
        if self.config.negative_cache_size:
            if len(self.negative) >= self.config.negative_cache_size:
                self.negative.pop(next(iter(self.negative)))
            self.negative[key_hash] = (time.monotonic() + self.config.negative_cache_ttl, message)
        return AuthenticationFailed(message)

    async def _object(self, kind: str, object_id: str) -> Any:
        """A tenant, team or user, read at most once per ``refresh_interval``."""
        cached = self.objects.get((kind, object_id))
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        value = await getattr(self.keystore(), f"get_{kind}")(object_id)
        if len(self.objects) >= self.config.cache_size:
            self.objects.clear()
        self.objects[(kind, object_id)] = (value, now + self.config.refresh_interval)
        return value

    async def _load(self, key_hash: str) -> Principal:
        epoch = self.epoch
        self.loads += 1
        record = await self.keystore().find_key_by_hash(key_hash)
        if record is None or not hmac.compare_digest(record.key_hash.encode(), key_hash.encode()):
            raise self._refuse(key_hash, "invalid API key")
        now = self.clock()
        if record.revoked_at is not None and record.revoked_at <= now:
            raise self._refuse(key_hash, "this API key was revoked")
        if record.expires_at is not None and record.expires_at <= now:
            raise self._refuse(key_hash, "this API key has expired")
        tenant: Tenant | None = await self._object("tenant", record.tenant_id)
        if tenant is None or tenant.disabled:
            raise AuthenticationFailed("this API key's tenant is disabled")
        team: Team | None = None
        if record.team_id is not None:
            team = await self._object("team", record.team_id)
            if team is None:
                raise AuthenticationFailed("this API key's team no longer exists")
        user: User | None = None
        if record.user_id is not None:
            user = await self._object("user", record.user_id)
            if user is None or user.disabled:
                raise AuthenticationFailed("this API key's user is disabled")
        role = effective_role(record.role, user.role if user is not None else None)
        if role is None:
            raise AuthenticationFailed("this API key's role is no longer held by its user; issue a new key")
        entry = self._build(record, key_hash, tenant, team, role, now)
        await self._load_budgets(entry.budgets)
        if self.epoch == epoch:
            self._insert(entry)
        CURRENT.set(entry)
        return entry.principal

    def _build(self, record: KeyRecord, key_hash: str, tenant: Tenant, team: Team | None, role: Role,
               now: float) -> CachedKey:
        ledger = self.ledger
        principal_id = lineage(record.metadata, record.id)
        scopes: list[tuple[str, str, Limits]] = [("principal", principal_id, record.limits)]
        if team is not None:
            scopes.append(("team", team.id, team.limits))
        scopes.append(("tenant", tenant.id, tenant.limits))
        specs: list[LimitSpec] = []
        budgets: list[Budget] = []
        slots: list[Concurrency] = []
        for scope, scope_id, limits in scopes:
            specs.extend(_specs("key" if scope == "principal" else scope, scope_id, limits))
            if limits.budget_usd is not None:
                budgets.append(ledger.budget(scope, scope_id, limits.budget_usd, limits.budget_period))
            if limits.max_concurrent is not None:
                slots.append(ledger.counter(scope, scope_id, limits.max_concurrent))
        principal = Principal(
            id=principal_id, kind="key", tenant=record.tenant_id, team=record.team_id, roles=(role,),
            allowed_models=tuple(record.allowed_models) if record.allowed_models is not None else None,
            limits=tuple(specs), metadata={**record.metadata, "sira:key_id": record.id},
            # A budget reserves estimate_completion_tokens of output; the kernel makes that a cap, so
            # concurrent requests cannot spend past the budget by more than one reservation.
            max_output_tokens=self.config.estimate_completion_tokens if budgets else None,
        )
        valid_until = now + self.config.refresh_interval
        if record.expires_at is not None:
            valid_until = min(valid_until, record.expires_at)
        routes = RoutePatterns(record.allowed_routes) if record.allowed_routes is not None else None
        return CachedKey(record, key_hash, principal, role, routes, tuple(budgets), tuple(slots), valid_until)

    async def _load_budgets(self, budgets: tuple[Budget, ...]) -> None:
        """Spend so far in this period, from the usage ledger, before a budget admits anything."""
        usage = self.services.find(UsageStore)
        for budget in budgets:
            if budget.loaded:
                continue
            if usage is None:
                budget.loaded = True  # nothing stored: what this process sees is all there is
                continue
            start = budget.period_start
            try:
                budget.merge_spent(await usage.spend(budget.scope, budget.scope_id, start), start)
            except Exception:
                _log.exception("auth_keys.spend_failed", scope=budget.scope)  # admit() refuses until loaded

    def _insert(self, entry: CachedKey) -> None:
        entries = self.entries
        old = entries.get(entry.key_hash)
        if old is not None:
            self._drop(old.key_hash)
        while len(entries) >= self.config.cache_size:
            self._drop(next(iter(entries)))
        entries[entry.key_hash] = entry
        for ref in entry.refs:
            self.by_ref.setdefault(ref, set()).add(entry.key_hash)

    def _drop(self, key_hash: str) -> None:
        entry = self.entries.pop(key_hash, None)
        if entry is None:
            return
        for ref in entry.refs:
            hashes = self.by_ref.get(ref)
            if hashes is not None:
                hashes.discard(key_hash)
                if not hashes:
                    del self.by_ref[ref]

    def invalidate(self, ids: list[str] | tuple[str, ...]) -> None:
        """Forget everything cached about these ids (keys, tenants, teams, users)."""
        self.epoch += 1
        objects = self.objects
        for ref in ids:
            for key_hash in list(self.by_ref.get(ref, ())):
                entry = self.entries.get(key_hash)
                if entry is not None:
                    # A store stamps a tenant's, team's or user's change on their keys' ids only:
                    # read what those keys refer to again too.
                    record = entry.record
                    objects.pop(("tenant", record.tenant_id), None)
                    objects.pop(("team", record.team_id or ""), None)
                    objects.pop(("user", record.user_id or ""), None)
                self._drop(key_hash)
            for kind in ("tenant", "team", "user"):
                objects.pop((kind, ref), None)

    def clear(self) -> None:
        self.epoch += 1
        self.entries.clear()
        self.by_ref.clear()
        self.objects.clear()
        self.negative.clear()

    # -- background -------------------------------------------------------------------------------------

    async def start_version(self) -> None:
        """Where change polling starts: the store's current version."""
        self.version, _ = await self.keystore().changes_since(0)

    async def poll_changes(self) -> None:
        """Drop changed keys every ``poll_interval``; give back holds whose usage record never came."""
        while True:
            await anyio.sleep(self.config.poll_interval)
            try:
                await self.poll_once()
            except Exception:
                _log.exception("auth_keys.poll_failed")
            expired = self.ledger.expire_holds(self.hold_timeout)
            if expired:
                _log.warning("auth_keys.holds_expired", count=expired)

    async def poll_once(self) -> None:
        store = self.services.find(KeyStore)
        if store is None:  # the kernel is shutting down (or the store is being replaced)
            return
        if self.version is None:
            self.version, _ = await store.changes_since(0)
            self.clear()  # changes before now were not seen: start afresh
            return
        version, ids = await store.changes_since(self.version)
        if version < self.version:  # a different store (or a reset one): nothing cached can be trusted
            self.clear()
        elif ids:
            self.invalidate(ids)
        self.version = version

    async def refresh_spend(self) -> None:
        """Merge what every worker spent (the UsageStore) into the budgets in use, periodically."""
        while True:
            await anyio.sleep(self.config.spend_refresh_interval)
            try:
                await self.refresh_spend_once()
            except Exception:
                _log.exception("auth_keys.spend_refresh_failed")

    async def refresh_spend_once(self) -> None:
        usage = self.services.find(UsageStore)
        if usage is None:
            return
        for budget in self.ledger.recently_used(within=max(600.0, 4 * self.config.spend_refresh_interval)):
            start = budget.period_start
            budget.merge_spent(await usage.spend(budget.scope, budget.scope_id, start), start)

    # -- authorize ----------------------------------------------------------------------------------------

    def current(self, principal: Principal) -> CachedKey | None:
        """The cached key ``principal`` was authenticated from, in this task; None if not ours."""
        entry = CURRENT.get()
        if entry is not None and entry.principal is principal:
            return entry
        return None

    def authorize(self, principal: Principal, request: RequestInfo, operation: str, model: str | None) -> bool | None:
        entry = self.current(principal)
        if entry is None:
            return None
        if entry.routes is not None and not entry.routes.allows(request.path):
            raise AuthorizationDenied("this API key is not allowed to call this route")
        if operation == "admin":
            return self._admin_vote(entry, request)
        if "use" not in PERMISSIONS[entry.role]:
            raise AuthorizationDenied(f"a {entry.role} key cannot call models")
        if operation in RESERVING_OPERATIONS and request.method == "POST" and (entry.budgets or entry.slots):
            estimate = self.estimate(operation, model, request) if entry.budgets else 0.0
            self.ledger.admit(request.request_id, entry.budgets, entry.slots, estimate)
        return None

    def _admin_vote(self, entry: CachedKey, request: RequestInfo) -> bool | None:
        """Tenant admins and viewers reach this plugin's admin routes, and nothing else; admins
        pass the kernel's guard by their role; members do not reach the admin listener."""
        role = entry.role
        if role not in ("tenant-admin", "viewer") or RoutePatterns.ambiguous(request.path):
            return None
        if not self.admin_paths(request.path):
            return None
        if role == "viewer" and request.method not in ("GET", "HEAD"):
            raise AuthorizationDenied("a viewer key is read-only")
        return True

    def estimate(self, operation: str, model: str | None, request: RequestInfo) -> float:
        """USD reserved for a request before it runs (see ``_budgets``)."""
        raw = request.headers.get("content-length")
        try:
            size = int(raw) if raw is not None else ASSUMED_BODY_BYTES
        except ValueError:
            size = ASSUMED_BODY_BYTES
        size = min(max(size, 0), self.max_body_bytes)
        prompt = math.ceil(size / 4)
        completion = self.config.estimate_completion_tokens if operation == "chat" else 0
        book = self.services.find(PriceBook)
        cost: float | None = None
        if book is not None and model is not None:
            record = UsageRecord(
                request_id=request.request_id, timestamp=self.clock(), operation=operation, principal="estimate",
                principal_kind="key", model=model, prompt_tokens=prompt, completion_tokens=completion,
                total_tokens=prompt + completion,
            )
            try:
                cost = book.cost(record)
            except Exception:
                _log.exception("auth_keys.estimate_failed", model=model)
        return cost if cost is not None else self.config.fallback_estimate_usd

    def on_usage(self, record: UsageRecord) -> None:
        """``usage.request``: settle the request's hold with its actual cost."""
        self.ledger.settle(
            record.request_id, record.cost_usd,
            (("principal", record.principal), ("team", record.team), ("tenant", record.tenant)),
            record.timestamp,
        )
