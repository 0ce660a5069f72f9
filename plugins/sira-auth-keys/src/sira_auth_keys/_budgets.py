"""USD budgets and concurrent-request limits per key, team and tenant: reserve, then reconcile.

**Admission** (:meth:`Ledger.admit`, called from ``sira_authorize``) is synchronous: the check and
the reservation happen with no ``await`` between them, so concurrent requests in one process can
never both see the same headroom. A request is admitted only if, for every budget that applies
(key, team, tenant), ``spent + reserved + estimate <= budget`` (and ``spent < budget``), and every
concurrency counter is below its limit. It then adds ``estimate`` to each budget's ``reserved``,
one to each counter, and keeps a :class:`Hold` under the request id.

**Reconciliation** (:meth:`Ledger.settle`, on the request's ``usage.request`` record): the hold's
estimates leave ``reserved`` and the record's actual ``cost_usd`` is added to ``spent`` of every
budget of the record's key, team and tenant. Counters drop by one. A hold whose record never comes
is given back after ``hold_timeout``.

**Spend from other workers.** ``spent`` starts from ``UsageStore.spend(scope, id, since=period
start)`` (loaded before the first admission) and is refreshed from it periodically; spend only
grows within a period, so the two views merge with ``max``. Within one process the budget holds:
a request's estimate bounds its cost, because the kernel caps the output of a budgeted key's
requests at ``estimate_completion_tokens`` (``Principal.max_output_tokens``) and the prompt estimate
is an upper bound; across processes, each can overshoot by what the others spent since its last
refresh.

**The estimate** is the PriceBook's cost of the request's prompt, taken as ``Content-Length / 4``
tokens (the JSON body is an upper bound on the text in it), plus ``estimate_completion_tokens``
completion tokens, for the model the client named; ``fallback_estimate_usd`` when that has no price.

Concurrency is counted here, in-process (not a scheduler pool): a slot is taken in
``sira_authorize`` and given back when the request's usage record is delivered, just after the
response (or stream) ends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from sira_kernel import AuthorizationDenied
from sira_kernel.storage import BudgetPeriod

__all__ = [
    "Budget",
    "BudgetExceeded",
    "BudgetUnavailable",
    "ConcurrencyLimited",
    "Hold",
    "Ledger",
    "period_bounds",
]

SCOPE_NAMES = {"principal": "key", "team": "team", "tenant": "tenant"}
TOTAL_RETRY_AFTER = 86_400.0
"""Retry-After for a ``total`` budget that is spent: it never resets, so try again tomorrow (or raise it)."""


def period_bounds(period: BudgetPeriod, now: float) -> tuple[float, float | None]:
    """(start, reset) of the UTC calendar period containing ``now``; ``total`` never resets."""
    if period == "total":
        return 0.0, None
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        start, end = day, day + timedelta(days=1)
    elif period == "weekly":
        start = day - timedelta(days=day.weekday())  # Monday
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(
            month=start.month + 1
        )
    return start.timestamp(), end.timestamp()


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class BudgetExceeded(AuthorizationDenied):
    """A key's, team's or tenant's USD budget has no room for this request (429 + Retry-After)."""

    status = 429
    code = "budget_exceeded"
    error_type = "rate_limit_error"


class BudgetUnavailable(AuthorizationDenied):
    """A budget's spend so far could not be read from the UsageStore yet (503 + Retry-After)."""

    status = 503
    code = "budget_unavailable"
    error_type = "server_error"


class ConcurrencyLimited(AuthorizationDenied):
    """A key, team or tenant already has ``max_concurrent`` requests running (429 + Retry-After)."""

    status = 429
    code = "concurrency_limit_exceeded"
    error_type = "rate_limit_error"


class Budget:
    """One scope's budget in the current period: limit, spent, reserved (all USD)."""

    __slots__ = ("limit", "loaded", "period", "period_start", "reserved", "resets_at", "scope", "scope_id",
                 "spent", "used_at")

    def __init__(self, scope: str, scope_id: str, limit: float, period: BudgetPeriod, now: float) -> None:
        self.scope = scope  # "principal" (a key), "team" or "tenant": the UsageStore's scope names
        self.scope_id = scope_id
        self.limit = limit
        self.period = period
        self.period_start, self.resets_at = period_bounds(period, now)
        self.spent = 0.0
        self.reserved = 0.0
        self.loaded = False
        self.used_at = now

    @property
    def label(self) -> str:
        return f"{SCOPE_NAMES[self.scope]} {self.scope_id!r}"

    def configure(self, limit: float, period: BudgetPeriod, now: float) -> None:
        """Take the current limit and period from the stored key, team or tenant."""
        self.limit = limit
        if period != self.period:
            self.period = period
            self.period_start, self.resets_at = period_bounds(period, now)
            self.spent, self.loaded = 0.0, False

    def roll(self, now: float) -> None:
        """Start the next period when the current one is over."""
        if self.resets_at is not None and now >= self.resets_at:
            self.period_start, self.resets_at = period_bounds(self.period, now)
            self.spent = 0.0  # what the store says for the new period comes with the next refresh

    def merge_spent(self, stored: float, period_start: float) -> None:
        """Spend only grows within a period: keep the larger of ours and the store's."""
        if period_start == self.period_start:
            self.spent = max(self.spent, stored)
            self.loaded = True

    def refuse(self, estimate: float, now: float) -> BudgetExceeded:
        if self.resets_at is None:
            when = "it does not reset (period total)"
            retry = TOTAL_RETRY_AFTER
        else:
            when = f"it resets at {_iso(self.resets_at)}"
            retry = max(1.0, self.resets_at - now)
        if self.reserved > 0 and self.spent + estimate <= self.limit:
            retry = min(retry, 1.0)  # the room is held by requests in flight, which settle soon
        return BudgetExceeded(
            f"budget of {self.label} exceeded: ${self.spent:.4f} spent and ${self.reserved:.4f} reserved "
            f"of ${self.limit:.4f} ({self.period}), this request needs about ${estimate:.4f}; {when}",
            retry_after=math.ceil(retry),
        )

    def view(self) -> dict[str, object]:
        return {
            "scope": SCOPE_NAMES[self.scope], "id": self.scope_id, "budget_usd": self.limit,
            "period": self.period, "spent_usd": round(self.spent, 10), "reserved_usd": round(self.reserved, 10),
            "remaining_usd": round(max(0.0, self.limit - self.spent - self.reserved), 10),
            "period_start": self.period_start,
            "resets_at": self.resets_at, "resets_at_iso": None if self.resets_at is None else _iso(self.resets_at),
        }


class Concurrency:
    """A counter of running requests for one scope, with its limit."""

    __slots__ = ("label", "limit", "running")

    def __init__(self, label: str, limit: int) -> None:
        self.label = label
        self.limit = limit
        self.running = 0


class Hold:
    """What one admitted request holds until its usage record arrives."""

    __slots__ = ("budgets", "created", "estimate", "slots")

    def __init__(self, budgets: tuple[Budget, ...], estimate: float, slots: tuple[Concurrency, ...],
                 created: float) -> None:
        self.budgets = budgets
        self.estimate = estimate
        self.slots = slots
        self.created = created


class Ledger:
    """Budgets and concurrency counters by scope, and the holds of requests in flight."""

    def __init__(self, clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.monotonic = monotonic
        self.budgets: dict[tuple[str, str], Budget] = {}
        self.counters: dict[tuple[str, str], Concurrency] = {}
        self.holds: dict[str, Hold] = {}

    def budget(self, scope: str, scope_id: str, limit: float, period: BudgetPeriod) -> Budget:
        """The budget of ``scope``/``scope_id``, created or updated with the current limit and period."""
        now = self.clock()
        key = (scope, scope_id)
        found = self.budgets.get(key)
        if found is None:
            found = self.budgets[key] = Budget(scope, scope_id, limit, period, now)
        else:
            found.configure(limit, period, now)
        return found

    def counter(self, scope: str, scope_id: str, limit: int) -> Concurrency:
        key = (scope, scope_id)
        found = self.counters.get(key)
        if found is None:
            found = self.counters[key] = Concurrency(f"{SCOPE_NAMES[scope]} {scope_id!r}", limit)
        else:
            found.limit = limit
        return found

    def admit(self, request_id: str, budgets: tuple[Budget, ...], slots: tuple[Concurrency, ...],
              estimate: float) -> None:
        """Check every budget and counter, then take the reservation: atomically (no await here).

        Raises :class:`BudgetExceeded` or :class:`ConcurrencyLimited`. Without a request id nothing
        can be matched to a usage record later, so the request is checked but nothing is held.
        """
        if request_id in self.holds:  # asked twice for one request: it already holds its share
            return
        for slot in slots:
            if slot.running >= slot.limit:
                raise ConcurrencyLimited(
                    f"{slot.label} already has {slot.running} requests running, its limit is {slot.limit}",
                    retry_after=1.0,
                )
        now = self.clock()
        for budget in budgets:
            budget.roll(now)
            budget.used_at = now
            if not budget.loaded:
                raise BudgetUnavailable(f"the spend of {budget.label} could not be read yet; try again",
                                        retry_after=1.0)
            if budget.spent >= budget.limit or budget.spent + budget.reserved + estimate > budget.limit:
                raise budget.refuse(estimate, now)
        if not request_id:
            return
        for slot in slots:
            slot.running += 1
        for budget in budgets:
            budget.reserved += estimate
        self.holds[request_id] = Hold(budgets, estimate, slots, self.monotonic())

    def _release(self, hold: Hold) -> None:
        for budget in hold.budgets:
            budget.reserved = max(0.0, budget.reserved - hold.estimate)
        for slot in hold.slots:
            slot.running = max(0, slot.running - 1)

    def settle(self, request_id: str, cost_usd: float | None, scopes: Iterable[tuple[str, str | None]],
               at: float) -> None:
        """A request finished: give back its hold, add its actual cost to its scopes' budgets."""
        hold = self.holds.pop(request_id, None) if request_id else None
        if hold is not None:
            self._release(hold)
        if not cost_usd:
            return
        for scope, scope_id in scopes:
            if scope_id is None:
                continue
            budget = self.budgets.get((scope, scope_id))
            if budget is not None:
                budget.roll(self.clock())
                if at >= budget.period_start:
                    budget.spent += cost_usd

    def expire_holds(self, older_than: float) -> int:
        """Give back holds whose usage record did not come within ``older_than`` seconds."""
        cutoff = self.monotonic() - older_than
        stale = [rid for rid, hold in self.holds.items() if hold.created < cutoff]
        for rid in stale:
            self._release(self.holds.pop(rid))
        return len(stale)

    def recently_used(self, within: float) -> list[Budget]:
        cutoff = self.clock() - within
        return [b for b in self.budgets.values() if b.used_at >= cutoff or not b.loaded]
