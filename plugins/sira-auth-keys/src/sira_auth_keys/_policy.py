"""Roles, route patterns and the rule that nobody grants more than it holds.

Roles are sets of permissions; one role is *within* another when its set is a subset:

============  ==========================================  =====================================
role          permissions                                 may
============  ==========================================  =====================================
admin         use, read, manage, global                   everything, in every tenant
tenant-admin  use, read, manage                           manage keys, teams, users of its tenant
member        use                                         call models
viewer        read                                        read its tenant on the admin API
============  ==========================================  =====================================

An :class:`Actor` is the caller of the admin API. Every grant it makes (a key, a user, a team's
limits) passes :func:`check_key_grant` and friends, server-side: a role within its own, its own
tenant only (unless global), and for a key principal nothing wider than its own key: models,
routes, requests/tokens per minute, concurrency, budget and expiry. Limits that apply to the
actor itself (its own key, its own team) can only be narrowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from sira_kernel.storage import BudgetPeriod, KeyRecord, Limits, Role

__all__ = [
    "PERIOD_ORDER",
    "PERMISSIONS",
    "ROLES",
    "Actor",
    "Denied",
    "RoutePatterns",
    "check_key_grant",
    "check_limits_within",
    "effective_role",
    "role_within",
]

ROLES: tuple[Role, ...] = get_args(Role)
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"use", "read", "manage", "global"}),
    "tenant-admin": frozenset({"use", "read", "manage"}),
    "member": frozenset({"use"}),
    "viewer": frozenset({"read"}),
}
PERIOD_ORDER: dict[BudgetPeriod, int] = {"daily": 0, "weekly": 1, "monthly": 2, "total": 3}


class Denied(Exception):
    """A grant wider than the actor holds, or an object outside its reach (403, naming the field)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def role_within(role: str, holder: str) -> bool:
    """True when every permission of ``role`` is one ``holder`` has."""
    return PERMISSIONS[role] <= PERMISSIONS[holder]


def effective_role(key_role: Role, user_role: Role | None) -> Role | None:
    """What a key may do given its user's current role: the narrower of the two, or None when
    they are incomparable (the key is then refused until it is reissued)."""
    if user_role is None or role_within(key_role, user_role):
        return key_role
    if role_within(user_role, key_role):
        return user_role
    return None


class RoutePatterns:
    """A key's ``allowed_routes``: exact raw paths, or prefixes written with a trailing ``*``.

    Matched against the raw ASGI path. A path with percent-escapes, ``.``/``..`` segments or an
    empty segment is refused outright: the router would decode or treat it differently from the
    text compared here.
    """

    __slots__ = ("exact", "patterns", "prefixes")

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = tuple(patterns)
        self.exact = frozenset(p for p in patterns if not p.endswith("*"))
        self.prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    @staticmethod
    def ambiguous(path: str) -> bool:
        if "%" in path or "//" in path or "\\" in path:
            return True
        return any(segment in (".", "..") for segment in path.split("/"))

    def allows(self, path: str) -> bool:
        if self.ambiguous(path):
            return False
        return path in self.exact or path.startswith(self.prefixes)

    def covers(self, pattern: str) -> bool:
        """True when every path ``pattern`` allows, these patterns allow too."""
        if pattern.endswith("*"):
            return pattern[:-1].startswith(self.prefixes)
        return pattern in self.exact or pattern.startswith(self.prefixes)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling the admin API, and what bounds its grants."""

    id: str
    kind: str
    role: Role
    home_tenant: str | None
    """The tenant new objects go to by default (None for the master key)."""
    key: KeyRecord | None = None
    """The caller's own key when it is a virtual key: its limits bound everything it grants."""

    @property
    def is_global(self) -> bool:
        return "global" in PERMISSIONS[self.role]

    def can(self, permission: str) -> bool:
        return permission in PERMISSIONS[self.role]

    def reaches(self, tenant_id: str | None) -> bool:
        """May this actor see objects of ``tenant_id``?"""
        return self.is_global or (tenant_id is not None and tenant_id == self.home_tenant)

    def check_role(self, role: str, param: str = "role") -> None:
        if not role_within(role, self.role):
            raise Denied(f"a {self.role} cannot grant the role {role!r}", param)


def _limit_within(new: float | None, bound: float | None, field: str, what: str) -> None:
    if bound is None:
        return
    if new is None:
        raise Denied(f"limits.{field} must be set, at most {bound:g} ({what})", f"limits.{field}")
    if new > bound:
        raise Denied(f"limits.{field} may be at most {bound:g} ({what})", f"limits.{field}")


def check_limits_within(new: Limits, bound: Limits, what: str) -> None:
    """Refuse ``new`` when any of its limits or its budget is wider than ``bound``'s."""
    _limit_within(new.rpm, bound.rpm, "rpm", what)
    _limit_within(new.tpm, bound.tpm, "tpm", what)
    _limit_within(new.max_concurrent, bound.max_concurrent, "max_concurrent", what)
    _limit_within(new.budget_usd, bound.budget_usd, "budget_usd", what)
    if bound.budget_usd is not None and PERIOD_ORDER[new.budget_period] < PERIOD_ORDER[bound.budget_period]:
        # the same amount over a shorter period is more money over time
        raise Denied(
            f"limits.budget_period may not be shorter than {bound.budget_period!r} ({what})", "limits.budget_period"
        )


def check_key_grant(actor: Actor, key: KeyRecord) -> None:
    """Refuse a key (new, or as it would be after an update) wider than ``actor`` holds."""
    actor.check_role(key.role)
    if not actor.reaches(key.tenant_id):
        raise Denied("keys may only be created in your own tenant", "tenant_id")
    own = actor.key
    if own is None:
        return
    if own.allowed_models is not None:
        if key.allowed_models is None:
            raise Denied("allowed_models must be set, within your own key's models", "allowed_models")
        wider = sorted(set(key.allowed_models) - set(own.allowed_models))
        if wider:
            raise Denied(f"allowed_models includes models your key may not use: {', '.join(wider)}",
                         "allowed_models")
    if own.allowed_routes is not None:
        if key.allowed_routes is None:
            raise Denied("allowed_routes must be set, within your own key's routes", "allowed_routes")
        mine = RoutePatterns(own.allowed_routes)
        wider = [route for route in key.allowed_routes if not mine.covers(route)]
        if wider:
            raise Denied(f"allowed_routes includes routes your key may not call: {', '.join(wider)}",
                         "allowed_routes")
    check_limits_within(key.limits, own.limits, "your own key's limit")
    if own.expires_at is not None and (key.expires_at is None or key.expires_at > own.expires_at):
        raise Denied("the key may not outlive your own key: set expires_at no later than it", "expires_at")
