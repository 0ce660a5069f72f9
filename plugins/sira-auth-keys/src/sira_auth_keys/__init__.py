"""Sira's virtual keys (plugin id ``auth-keys``): keys, tenants, teams, users, roles, limits, budgets.

Applications get ``sk-sira-…`` keys instead of provider keys. A key is shown once and stored as an
HMAC-SHA256 of itself (``hash_secret``); it can expire, be revoked (every worker stops accepting it
within ``poll_interval``) and be rotated (the old key stays valid for a grace period). Each key
belongs to a tenant and optionally a team and a user, carries a role (admin, tenant-admin,
member, viewer), allowed models and routes, requests/min, tokens/min and concurrency limits, and a
USD budget with a reset period; teams and tenants have limits and budgets too. The admin API on
the kernel's admin listener manages all of it (tenant admins manage their own tenant, never
granting more than they hold), every action is audited, and ``sira keys`` drives it from a shell.

Public API: :class:`AuthKeysPlugin` (the entry point), :class:`AuthKeysConfig`, the key helpers
(:func:`generate_key`, :func:`is_well_formed`, :class:`KeyHasher`), the policy
(:class:`Actor`, :func:`check_key_grant`, :func:`role_within`, :data:`PERMISSIONS`), and the budget
ledger (:class:`Ledger`, :class:`BudgetExceeded`, :class:`ConcurrencyLimited`, :func:`period_bounds`).
"""

from __future__ import annotations

from ._budgets import BudgetExceeded, BudgetUnavailable, ConcurrencyLimited, Ledger, period_bounds
from ._config import AuthKeysConfig
from ._keys import KEY_PREFIX, KeyHasher, generate_key, is_well_formed
from ._plugin import AuthKeysPlugin
from ._policy import PERMISSIONS, Actor, Denied, check_key_grant, role_within

__all__ = [
    "KEY_PREFIX",
    "PERMISSIONS",
    "Actor",
    "AuthKeysConfig",
    "AuthKeysPlugin",
    "BudgetExceeded",
    "BudgetUnavailable",
    "ConcurrencyLimited",
    "Denied",
    "KeyHasher",
    "Ledger",
    "check_key_grant",
    "generate_key",
    "is_well_formed",
    "period_bounds",
    "role_within",
]
