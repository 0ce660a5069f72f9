"""Circuit breakers (one per deployment) and the retry budget (one per group).

Both sit behind small interfaces (:class:`Breaker` / :class:`BreakerStore`, :class:`RetryBudget`)
whose methods are synchronous: they are read on every routed request, and the request path must
not wait on I/O or take a lock to decide. The in-process implementations here are the defaults.

Why in-process is the right default, even with several gateway instances:

* a breaker judges the health of a deployment *as seen from this instance* (Envoy's outlier
  detection works the same way); instances converge on their own within one cooldown;
* a retry budget that holds on every instance holds for the sum: if each instance adds at most
  20 % retries on top of its own first attempts, so does the fleet.

A shared backend (Redis) can still replace the store: implement :class:`BreakerStore` with breakers
that answer from a local view and push transitions to Redis (and pull the others') from a
background task, so the request path stays synchronous.

Breaker states::

    closed ──(N consecutive failures, or error ratio over the window)──▶ open
    open ──(cooldown elapsed)──▶ half-open: one probe request is let through
    half-open ──probe succeeds──▶ closed          half-open ──probe fails──▶ open (cooldown doubled)

An upstream 429 with Retry-After opens the breaker for that long (capped by ``max_cooldown``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import msgspec

from ._config import BreakerConfig, BudgetConfig

__all__ = ["Breaker", "BreakerState", "BreakerStore", "LocalBreaker", "LocalBreakers", "RetryBudget"]

_BUCKETS = 10


class BreakerState(msgspec.Struct, kw_only=True):
    """A breaker as the admin API and the health report show it."""

    deployment: str
    state: str
    """``closed``, ``open`` or ``half_open``."""
    retry_in_s: float = 0.0
    """Seconds until an open breaker lets a probe through."""
    consecutive_failures: int = 0
    window_attempts: int = 0
    window_failures: int = 0
    opened: int = 0
    """How many times it has opened."""
    last_error: str | None = None
    probing: bool = False


@runtime_checkable
class Breaker(Protocol):
    """One deployment's circuit breaker. Every method is cheap and synchronous."""

    def allows(self, now: float) -> bool:
        """True when a request may go to the deployment now (closed, or half-open with no probe out)."""
        ...

    def wants_probe(self, now: float) -> bool:
        """True when the cooldown is over and no probe is out: the next request should test it."""
        ...

    def admit(self, now: float) -> bool:
        """A request is being sent; returns True when it is the half-open probe."""
        ...

    def success(self, now: float, probe: bool = False) -> None:
        """A request sent to the deployment succeeded; ``probe`` when it was the half-open probe."""
        ...

    def failure(self, now: float, kind: str, retry_after: float | None = None, probe: bool = False) -> None:
        """A request failed with an error of class ``kind`` (see ``sira_router._errors``)."""
        ...

    def release_probe(self) -> None:
        """The probe was abandoned (the client went away) without an outcome."""
        ...

    def reopens_in(self, now: float) -> float:
        """Seconds until :meth:`allows` may be true again (0 when it is)."""
        ...

    def reset(self) -> None: ...

    def state(self, now: float) -> BreakerState: ...


@runtime_checkable
class BreakerStore(Protocol):
    """Where breakers live: ``breaker(key)`` returns the same object for the same deployment key."""

    def breaker(self, key: str) -> Breaker: ...

    def states(self, now: float) -> list[BreakerState]: ...


class LocalBreaker:
    """The in-process :class:`Breaker`."""

    __slots__ = (
        "_config", "_counts", "_epochs", "_scale", "consecutive", "cooldown", "half_open", "key", "last_error",
        "open_until", "opened", "probe_started", "probing",
    )

    def __init__(self, key: str, config: BreakerConfig) -> None:
        self.key = key
        self._config = config
        self.open_until = 0.0
        self.half_open = False
        self.probing = False
        self.probe_started = 0.0
        self.consecutive = 0
        self.cooldown = config.cooldown
        self.opened = 0
        self.last_error: str | None = None
        # Time-bucketed window: per bucket [attempts, failures] and the bucket's epoch number.
        self._scale = _BUCKETS / config.window
        self._epochs = [-1] * _BUCKETS
        self._counts = [[0, 0] for _ in range(_BUCKETS)]

    def allows(self, now: float) -> bool:
        if self.open_until > now:
            return False
        if self.probing:
            return now - self.probe_started >= self._config.probe_timeout
        return True

    def wants_probe(self, now: float) -> bool:
        return self.half_open and self.open_until <= now and self.allows(now)

    def admit(self, now: float) -> bool:
        if self.half_open:
            self.probing = True
            self.probe_started = now
            return True
        return False

    def _count(self, now: float, failed: bool) -> None:
        epoch = int(now * self._scale)
        slot = epoch % _BUCKETS
        counts = self._counts[slot]
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            counts[0] = counts[1] = 0
        counts[0] += 1
        if failed:
            counts[1] += 1

    def _window(self, now: float) -> tuple[int, int]:
        epoch = int(now * self._scale)
        attempts = failures = 0
        for slot in range(_BUCKETS):
            if epoch - self._epochs[slot] < _BUCKETS:
                attempts += self._counts[slot][0]
                failures += self._counts[slot][1]
        return attempts, failures

    def success(self, now: float, probe: bool = False) -> None:
        self.consecutive = 0
        if probe:
            self.reset()  # the probe answered: a clean slate
            return
        # A request admitted before the breaker opened may still succeed; only the probe closes it.
        self._count(now, False)

    def failure(self, now: float, kind: str, retry_after: float | None = None, probe: bool = False) -> None:
        config = self._config
        self.last_error = kind
        self.consecutive += 1
        hold = min(retry_after, config.max_cooldown) if kind == "rate_limit" and retry_after else 0.0
        if probe:
            self.probing = False
            self.cooldown = min(self.cooldown * 2, config.max_cooldown)
            self._open(now, max(self.cooldown, hold))
            return
        self._count(now, True)
        if hold:
            self._open(now, hold)
            return
        if self.half_open:
            return  # already open (or probing): requests that were in flight change nothing
        if self.consecutive >= config.consecutive_failures:
            self._open(now, self.cooldown)
            return
        attempts, failures = self._window(now)
        if attempts >= config.min_requests and failures >= config.error_ratio * attempts:
            self._open(now, self.cooldown)

    def _open(self, now: float, seconds: float) -> None:
        until = now + seconds
        if until > self.open_until:
            if self.open_until <= now:
                self.opened += 1
            self.open_until = until
        self.half_open = True  # once the cooldown ends, the next request is a probe

    def release_probe(self) -> None:
        self.probing = False

    def reopens_in(self, now: float) -> float:
        if self.open_until > now:
            return self.open_until - now
        if self.probing:
            return max(0.0, self.probe_started + self._config.probe_timeout - now)
        return 0.0

    def reset(self) -> None:
        self.open_until = 0.0
        self.half_open = self.probing = False
        self.consecutive = 0
        self.cooldown = self._config.cooldown
        self._epochs = [-1] * _BUCKETS

    def state(self, now: float) -> BreakerState:
        if self.open_until > now:
            name = "open"
        elif self.half_open:
            name = "half_open"
        else:
            name = "closed"
        attempts, failures = self._window(now)
        return BreakerState(
            deployment=self.key, state=name, retry_in_s=round(max(0.0, self.open_until - now), 3),
            consecutive_failures=self.consecutive, window_attempts=attempts, window_failures=failures,
            opened=self.opened, last_error=self.last_error, probing=self.probing,
        )


class LocalBreakers:
    """The in-process :class:`BreakerStore`."""

    def __init__(self, config: BreakerConfig) -> None:
        self._config = config
        self._breakers: dict[str, LocalBreaker] = {}

    def breaker(self, key: str) -> LocalBreaker:
        found = self._breakers.get(key)
        if found is None:
            found = self._breakers[key] = LocalBreaker(key, self._config)
        return found

    def states(self, now: float) -> list[BreakerState]:
        return [b.state(now) for b in self._breakers.values()]


class RetryBudget:
    """A token bucket limiting retries to ``ratio`` of first attempts (plus a small steady allowance).

    Each first attempt deposits ``ratio`` tokens; each retry withdraws one; the bucket holds at most
    ``burst`` and also refills at ``min_per_second``. Over any period, retries ≤ ratio × first
    attempts + min_per_second × seconds + burst, so an outage cannot multiply the load.
    """

    __slots__ = ("_clock", "_last", "capacity", "denied", "level", "min_per_second", "ratio", "withdrawn")

    def __init__(self, config: BudgetConfig, clock: Callable[[], float]) -> None:
        self.ratio = config.ratio
        self.capacity = config.burst
        self.min_per_second = config.min_per_second
        self.level = config.burst
        self._clock = clock
        self._last = clock()
        self.withdrawn = 0
        self.denied = 0

    def deposit(self) -> None:
        level = self.level + self.ratio
        self.level = level if level < self.capacity else self.capacity

    def withdraw(self, now: float) -> bool:
        """Take one retry token; False (and counted in ``denied``) when the budget is spent."""
        elapsed = now - self._last
        if elapsed > 0:
            self._last = now
            self.level = min(self.capacity, self.level + elapsed * self.min_per_second)
        if self.level >= 1.0:
            self.level -= 1.0
            self.withdrawn += 1
            return True
        self.denied += 1
        return False
