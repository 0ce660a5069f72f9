"""Storage service interfaces: keys and tenants, the usage ledger, the audit log, sessions.

The kernel stores nothing itself. Storage plugins (``sira-storage-sqlite`` embedded by default;
PostgreSQL later) register implementations of these Protocols as services, and policy plugins
(``sira-auth-keys``, the usage ledger, reports) look them up by interface::

    keys = context.services.get(KeyStore)

Every backend must pass the same contract suite (``sira_kernel.testing.storage_contract``).
Conventions shared by all of them:

* ids are strings chosen by the store (opaque, URL-safe); timestamps are UNIX seconds (float, UTC);
* virtual keys are never stored in clear: only ``KeyRecord.key_hash`` (a keyed hash computed by the
  auth plugin) and a short display ``prefix``;
* ``None`` in an optional limit or list means "no restriction";
* methods raise ``LookupError`` for a missing id where they must update something, ``ValueError``
  for a conflict (a duplicate name or hash); they never embed secrets in messages;
* every query takes bound parameters: no caller-supplied text is ever spliced into SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from .events import UsageRecord

__all__ = [
    "AuditEntry",
    "AuditStore",
    "BudgetPeriod",
    "KeyRecord",
    "KeyStore",
    "Limits",
    "Role",
    "SessionStore",
    "Team",
    "Tenant",
    "UsageFilter",
    "UsageStore",
    "UsageSummaryRow",
    "User",
]

Role = Literal["admin", "tenant-admin", "member", "viewer"]
BudgetPeriod = Literal["daily", "weekly", "monthly", "total"]


class Limits(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Limits and budget shared by keys, teams and tenants (None: unlimited)."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_usd: float | None = None
    budget_period: BudgetPeriod = "monthly"


class Tenant(msgspec.Struct, kw_only=True):
    """An organisation. Everything else (teams, users, keys, usage) belongs to one."""

    id: str
    name: str
    created_at: float
    limits: Limits = msgspec.field(default_factory=Limits)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    disabled: bool = False


class Team(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    name: str
    created_at: float
    limits: Limits = msgspec.field(default_factory=Limits)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class User(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    email: str
    role: Role
    created_at: float
    team_id: str | None = None
    disabled: bool = False


class KeyRecord(msgspec.Struct, kw_only=True):
    """A virtual key. ``key_hash`` identifies it; the key itself is shown once and never stored."""

    id: str
    key_hash: str
    prefix: str
    """The first characters of the key (``sk-sira-abcd``), for people to recognise it."""
    name: str
    tenant_id: str
    role: Role
    created_at: float
    created_by: str
    team_id: str | None = None
    user_id: str | None = None
    allowed_models: list[str] | None = None
    allowed_routes: list[str] | None = None
    limits: Limits = msgspec.field(default_factory=Limits)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    expires_at: float | None = None
    revoked_at: float | None = None
    rotated_to: str | None = None
    """Id of the key that replaced this one on rotation (this one stays valid until ``expires_at``)."""


@runtime_checkable
class KeyStore(Protocol):
    """Tenants, teams, users and virtual keys."""

    async def create_tenant(self, tenant: Tenant) -> Tenant: ...
    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...
    async def list_tenants(self) -> list[Tenant]: ...
    async def update_tenant(self, tenant: Tenant) -> Tenant: ...
    async def delete_tenant(self, tenant_id: str) -> None: ...

    async def create_team(self, team: Team) -> Team: ...
    async def get_team(self, team_id: str) -> Team | None: ...
    async def list_teams(self, tenant_id: str | None = None) -> list[Team]: ...
    async def update_team(self, team: Team) -> Team: ...
    async def delete_team(self, team_id: str) -> None: ...

    async def create_user(self, user: User) -> User: ...
    async def get_user(self, user_id: str) -> User | None: ...
    async def list_users(self, tenant_id: str | None = None) -> list[User]: ...
    async def update_user(self, user: User) -> User: ...
    async def delete_user(self, user_id: str) -> None: ...

    async def create_key(self, key: KeyRecord) -> KeyRecord: ...
    async def get_key(self, key_id: str) -> KeyRecord | None: ...
    async def find_key_by_hash(self, key_hash: str) -> KeyRecord | None: ...
    async def list_keys(self, tenant_id: str | None = None, team_id: str | None = None) -> list[KeyRecord]: ...
    async def update_key(self, key: KeyRecord) -> KeyRecord: ...
    async def revoke_key(self, key_id: str, at: float) -> KeyRecord: ...
    async def changes_since(self, version: int) -> tuple[int, list[str]]:
        """(current version, ids of keys changed since ``version``): lets every worker drop cached
        keys within a second of a revoke, without re-reading the table."""
        ...


class UsageFilter(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A filter over the usage ledger; None fields do not filter."""

    since: float | None = None
    until: float | None = None
    tenant: str | None = None
    team: str | None = None
    principal: str | None = None
    model: str | None = None
    provider: str | None = None
    limit: int = 1000
    offset: int = 0


class UsageSummaryRow(msgspec.Struct, kw_only=True):
    """One group of a usage summary (grouped by the requested keys)."""

    group: dict[str, str | None]
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float
    avg_latency_ms: float


@runtime_checkable
class UsageStore(Protocol):
    """The usage ledger: one row per client request (``UsageRecord``), written in batches."""

    async def write_usage(self, records: Sequence[UsageRecord]) -> None:
        """Store a batch atomically (all or none). A request id already stored is not stored twice."""
        ...

    async def query_usage(self, where: UsageFilter) -> list[UsageRecord]: ...

    async def summarize_usage(self, where: UsageFilter, group_by: Sequence[str]) -> list[UsageSummaryRow]:
        """Totals grouped by any of: tenant, team, principal, model, provider, status, day."""
        ...

    async def spend(self, scope: str, scope_id: str, since: float) -> float:
        """USD spent since ``since`` by a ``scope`` ("tenant", "team" or "principal")."""
        ...


class AuditEntry(msgspec.Struct, kw_only=True):
    """One administrative action: who did what to which object, when, from where. Never a secret."""

    id: str
    at: float
    actor: str
    action: str
    target_type: str
    target_id: str | None = None
    tenant_id: str | None = None
    client: str | None = None
    request_id: str | None = None
    outcome: str = "ok"
    details: dict[str, Any] = msgspec.field(default_factory=dict)


@runtime_checkable
class AuditStore(Protocol):
    async def write_audit(self, entry: AuditEntry) -> None: ...
    async def query_audit(
        self, since: float | None = None, actor: str | None = None, tenant_id: str | None = None, limit: int = 1000
    ) -> list[AuditEntry]: ...


@runtime_checkable
class SessionStore(Protocol):
    """Short-lived state with a time to live (conversation state, WebSocket sessions: later issues)."""

    async def get_session(self, key: str) -> bytes | None: ...
    async def put_session(self, key: str, value: bytes, ttl_s: float) -> None: ...
    async def delete_session(self, key: str) -> None: ...
