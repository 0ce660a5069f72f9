"""The ``[plugins.auth-keys]`` section."""

from __future__ import annotations

from typing import Annotated

import msgspec

from sira_kernel import Secret

__all__ = ["AuthKeysConfig"]

Seconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]


class AuthKeysConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every key of ``[plugins.auth-keys]``; README.md explains each one."""

    hash_secret: Secret | None = None
    """The HMAC-SHA256 key virtual keys are hashed with (``"${SIRA_KEY_SECRET}"``, at least 16
    characters). Unset: the master key's value is used. Neither set: the plugin fails to start.
    Changing it invalidates every issued key."""
    key_length: Annotated[int, msgspec.Meta(ge=32, le=64)] = 40
    """Random base62 characters after ``sk-sira-`` in newly created keys (40 ≈ 238 bits)."""
    admin_prefix: Annotated[str, msgspec.Meta(pattern=r"^(/[a-z0-9-]+)+\Z")] = "/api/v1"
    """Where the admin API lives on the admin listener (``{prefix}/keys``, ``{prefix}/tenants``…)."""
    cache_size: Annotated[int, msgspec.Meta(ge=16, le=10_000_000)] = 100_000
    """Authenticated keys kept in memory (hash → key, principal, limits; about 1.6 KB each)."""
    negative_cache_size: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10_000
    """Hashes of unknown, revoked or expired keys remembered, so repeated bad keys skip the store."""
    negative_cache_ttl: Seconds = 10.0
    poll_interval: Annotated[float, msgspec.Meta(gt=0, le=5)] = 0.25
    """How often ``KeyStore.changes_since`` is polled: a revoke reaches every worker within it."""
    refresh_interval: Seconds = 10.0
    """A cached key's tenant, team and user are read again after this long (disabling a tenant or
    changing a team's limits reaches other workers within it; this worker sees its own changes at once)."""
    spend_refresh_interval: Seconds = 5.0
    """How often budget spend is re-read from the UsageStore (what other workers spent)."""
    estimate_completion_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096
    """Output tokens reserved when a request is admitted against a budget, and the output cap the
    kernel then enforces on requests of budgeted keys (``max_tokens`` is lowered or set to it, shared
    by ``n`` choices), so the reservation bounds what the request can cost."""
    fallback_estimate_usd: Annotated[float, msgspec.Meta(ge=0, le=1_000)] = 0.0
    """Reserved per request when the model has no price (or no PriceBook is registered)."""
    default_rotation_grace: Annotated[float, msgspec.Meta(ge=0, le=30 * 86_400)] = 3_600.0
    """Seconds the old key stays valid after a rotation, unless the request says otherwise."""
    hold_timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Seconds after which a budget reservation or concurrency slot whose usage record never came
    is given back (default: ``limits.total_timeout`` + 60)."""
    audit_reads: bool = True
    """Also write GET requests of the admin API to the audit log (mutations always are)."""
