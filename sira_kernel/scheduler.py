"""The resource scheduler: concurrency pools, token buckets and reserve-then-reconcile.

* A :class:`ConcurrencyPool` admits at most ``limit`` holders at once. Waiters queue by priority class
  (lower number first, strictly) and, inside a class, round-robin between tenants, so one tenant's
  burst cannot starve another's. A waiter that is not admitted within its queue timeout gets
  :class:`~sira_kernel.errors.QueueTimeout` (503 + Retry-After).
* Token buckets enforce requests/min and tokens/min on any key tuple (tenant, key, model,
  deployment…). Their counters live behind :class:`CounterBackend` so several instances can share
  them (Redis later); :class:`InProcessCounters` is the default. An empty bucket whose refill comes
  later than the queue timeout gives :class:`~sira_kernel.errors.RateLimited` (429 + Retry-After).
* :meth:`Scheduler.reserve` takes an *estimate* of the tokens a request will use from every bucket
  and a pool slot, and returns a :class:`Reservation`. ``settle(actual)`` corrects the buckets by the
  difference and frees the slot; ``release()`` (on failure) returns everything. ``outstanding``
  counts reservations neither settled nor released, so leaks are visible.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import anyio
import msgspec

from .auth import LimitSpec
from .errors import QueueTimeout, RateLimited

__all__ = [
    "ConcurrencyPool",
    "CounterBackend",
    "InProcessCounters",
    "PoolStats",
    "Reservation",
    "Scheduler",
]


@runtime_checkable
class CounterBackend(Protocol):
    """Token-bucket counters, shared by whoever shares the backend. Must be atomic per call."""

    async def take(self, key: str, amount: float, capacity: float, per_second: float) -> float:
        """Take ``amount`` from bucket ``key`` if it holds that much; return 0.0.

        Otherwise take nothing and return the seconds until it would hold enough.
        A bucket starts full (``capacity``) and refills at ``per_second``.
        """
        ...

    async def give(self, key: str, amount: float, capacity: float, per_second: float) -> None:
        """Put ``amount`` back (negative: take more unconditionally, e.g. when settling an
        under-estimate). The level never exceeds ``capacity``; it may go below zero (debt)."""
        ...

    async def level(self, key: str, capacity: float, per_second: float) -> float:
        """The bucket's current level."""
        ...


class InProcessCounters:
    """The default :class:`CounterBackend`: a dict of buckets in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}

    def _refill(self, key: str, capacity: float, per_second: float) -> list[float]:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [capacity, now]
            return bucket
        level, last = bucket
        if now > last:
            bucket[0] = min(capacity, level + (now - last) * per_second)
            bucket[1] = now
        return bucket

    async def take(self, key: str, amount: float, capacity: float, per_second: float) -> float:
        bucket = self._refill(key, capacity, per_second)
        if bucket[0] >= amount:
            bucket[0] -= amount
            return 0.0
        if per_second <= 0:
            return float("inf")
        return (amount - bucket[0]) / per_second

    async def give(self, key: str, amount: float, capacity: float, per_second: float) -> None:
        bucket = self._refill(key, capacity, per_second)
        bucket[0] = min(capacity, bucket[0] + amount)

    async def level(self, key: str, capacity: float, per_second: float) -> float:
        return self._refill(key, capacity, per_second)[0]


class PoolStats(msgspec.Struct):
    name: str
    limit: int
    in_use: int
    waiting: int
    admitted: int
    timed_out: int


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class ConcurrencyPool:
    """At most ``limit`` concurrent holders; fair, prioritised waiting with a queue timeout."""

    def __init__(self, name: str, limit: int, queue_timeout: float = 10.0) -> None:
        if limit < 1:
            raise ValueError("a pool limit must be at least 1")
        self.name = name
        self.limit = limit
        self.queue_timeout = queue_timeout
        self.in_use = 0
        self.admitted = 0
        self.timed_out = 0
        # priority -> tenant -> waiters; tenants rotate for round-robin fairness
        self._waiting: dict[int, OrderedDict[str, deque[_Waiter]]] = {}
        self._n_waiting = 0

    @property
    def waiting(self) -> int:
        return self._n_waiting

    def stats(self) -> PoolStats:
        return PoolStats(self.name, self.limit, self.in_use, self._n_waiting, self.admitted, self.timed_out)

    async def acquire(self, tenant: str = "", priority: int = 1, timeout: float | None = None) -> None:
        """Take a slot, waiting in line if the pool is full. Raises QueueTimeout past ``timeout``."""
        if self.in_use < self.limit and not self._n_waiting:
            self.in_use += 1
            self.admitted += 1
            return
        waiter = _Waiter()
        tenants = self._waiting.setdefault(priority, OrderedDict())
        line = tenants.get(tenant)
        if line is None:
            line = tenants[tenant] = deque()
        line.append(waiter)
        self._n_waiting += 1
        limit = self.queue_timeout if timeout is None else timeout
        try:
            with anyio.move_on_after(limit):
                await waiter.event.wait()
        except BaseException:
            # Cancelled from outside. If the slot was handed to us meanwhile, pass it on.
            if waiter.granted:
                self.release()
            else:
                self._forget(priority, tenant, waiter)
            raise
        if not waiter.granted:
            self._forget(priority, tenant, waiter)
            self.timed_out += 1
            raise QueueTimeout(
                f"pool {self.name!r} is at its limit of {self.limit} concurrent requests; "
                f"waited {limit:g}s",
                retry_after=max(1.0, limit / 2),
            )
        self.admitted += 1

    def _forget(self, priority: int, tenant: str, waiter: _Waiter) -> None:
        tenants = self._waiting.get(priority)
        if tenants is None:
            return
        line = tenants.get(tenant)
        if line is None:
            return
        try:
            line.remove(waiter)
        except ValueError:
            return
        self._n_waiting -= 1
        if not line:
            del tenants[tenant]
            if not tenants:
                del self._waiting[priority]

    def release(self) -> None:
        """Free a slot, handing it to the next waiter (highest priority, next tenant in turn)."""
        if self.in_use <= 0:
            raise RuntimeError(f"pool {self.name!r} released more than acquired")
        if self._n_waiting and self.in_use <= self.limit:
            self._hand_over()  # the slot passes straight on: in_use is unchanged
        else:
            self.in_use -= 1

    def resize(self, limit: int) -> None:
        """Change the limit. Growing admits waiters at once; shrinking takes effect as holders leave."""
        if limit < 1:
            raise ValueError("a pool limit must be at least 1")
        self.limit = limit
        while self._n_waiting and self.in_use < limit:
            self.in_use += 1
            self._hand_over()

    def _hand_over(self) -> None:
        """Grant a slot the caller has counted in ``in_use`` to the next waiter in line."""
        priority = min(self._waiting)
        tenants = self._waiting[priority]
        tenant, line = next(iter(tenants.items()))
        waiter = line.popleft()
        self._n_waiting -= 1
        if line:
            tenants.move_to_end(tenant)  # round-robin: this tenant goes to the back
        else:
            del tenants[tenant]
        if not tenants:
            del self._waiting[priority]
        waiter.granted = True
        waiter.event.set()


class Reservation:
    """Capacity held for one request: a pool slot and token-bucket amounts, until settled or released."""

    __slots__ = ("_held", "_pool", "_scheduler", "estimate", "state")

    def __init__(
        self,
        scheduler: Scheduler,
        pool: ConcurrencyPool | None,
        held: list[tuple[str, float, float, float, bool]],
        estimate: int,
    ) -> None:
        self._scheduler = scheduler
        self._pool = pool
        self._held = held  # (key, amount, capacity, per_second, is_tokens)
        self.estimate = estimate
        self.state = "held"

    def _finish(self, state: str) -> bool:
        if self.state != "held":
            return False
        self.state = state
        self._scheduler.outstanding -= 1
        if self._pool is not None:
            self._pool.release()
        return True

    async def settle(self, actual_tokens: int) -> None:
        """The request finished using ``actual_tokens``: correct token buckets and free the slot."""
        if not self._finish("settled"):
            return
        delta = self.estimate - actual_tokens
        if delta:
            backend = self._scheduler.backend
            for key, _amount, capacity, per_second, is_tokens in self._held:
                if is_tokens:
                    with anyio.CancelScope(shield=True):
                        await backend.give(key, delta, capacity, per_second)

    async def release(self) -> None:
        """The request failed before using anything: give every amount back and free the slot."""
        if not self._finish("released") or not self._held:
            return
        backend = self._scheduler.backend
        with anyio.CancelScope(shield=True):
            for key, amount, capacity, per_second, _ in self._held:
                await backend.give(key, amount, capacity, per_second)

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            await self.release()
        elif self.state == "held":
            await self.settle(self.estimate)


class Scheduler:
    """Owns the pools and the counter backend; admits requests with :meth:`reserve`."""

    def __init__(self, backend: CounterBackend | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend: CounterBackend = backend if backend is not None else InProcessCounters(clock)
        self.clock = clock
        self.pools: dict[str, ConcurrencyPool] = {}
        self.outstanding = 0

    def pool(self, name: str, limit: int | None = None, queue_timeout: float = 10.0) -> ConcurrencyPool:
        """The pool called ``name``; created (or resized) when ``limit`` is given."""
        existing = self.pools.get(name)
        if limit is None:
            if existing is None:
                raise KeyError(f"no pool named {name!r}")
            return existing
        if existing is None:
            existing = self.pools[name] = ConcurrencyPool(name, limit, queue_timeout)
        else:
            existing.resize(limit)
            existing.queue_timeout = queue_timeout
        return existing

    async def reserve(
        self,
        *,
        pool: str | None = None,
        limits: Sequence[LimitSpec] = (),
        tokens: int = 0,
        tenant: str = "",
        priority: int = 1,
        queue_timeout: float | None = None,
    ) -> Reservation:
        """Admit one request: take 1 from each requests bucket, ``tokens`` from each tokens bucket,
        then a slot in ``pool``. Waits for refills or slots up to ``queue_timeout``."""
        target = self.pools[pool] if pool is not None else None
        timeout = queue_timeout if queue_timeout is not None else (target.queue_timeout if target else 0.0)
        deadline = self.clock() + timeout
        held: list[tuple[str, float, float, float, bool]] = []
        if limits:
            held = await self._take_buckets(limits, tokens, deadline)
        if target is not None:
            try:
                if target.in_use < target.limit and not target.waiting:
                    target.in_use += 1  # the uncontended fast path, same as acquire()
                    target.admitted += 1
                else:
                    await target.acquire(tenant, priority, max(0.0, deadline - self.clock()))
            except BaseException:
                with anyio.CancelScope(shield=True):
                    for key, amount, capacity, per_second, _ in held:
                        await self.backend.give(key, amount, capacity, per_second)
                raise
        self.outstanding += 1
        return Reservation(self, target, held, tokens)

    async def _take_buckets(
        self, limits: Sequence[LimitSpec], tokens: int, deadline: float
    ) -> list[tuple[str, float, float, float, bool]]:
        while True:
            held: list[tuple[str, float, float, float, bool]] = []
            wait = 0.0
            failed: LimitSpec | None = None
            try:
                for spec in limits:
                    is_tokens = spec.unit == "tokens"
                    amount = float(tokens if is_tokens else 1)
                    capacity = spec.per_minute
                    per_second = capacity / 60.0
                    key = "|".join(spec.key) + (":t" if is_tokens else ":r")
                    if amount > capacity:
                        raise RateLimited(
                            f"request needs {amount:g} {spec.unit} but the limit on {'/'.join(spec.key)} "
                            f"is {capacity:g} per minute",
                            retry_after=60.0,
                        )
                    wait = await self.backend.take(key, amount, capacity, per_second)
                    if wait > 0:
                        failed = spec
                        break
                    held.append((key, amount, capacity, per_second, is_tokens))
            except BaseException:
                # Cancelled (or the backend failed) with some buckets already taken: give them back.
                await self._give_back(held)
                raise
            if failed is None:
                return held
            await self._give_back(held)
            if self.clock() + wait > deadline:
                raise RateLimited(
                    f"rate limit of {failed.per_minute:g} {failed.unit}/min on {'/'.join(failed.key)} reached",
                    retry_after=max(1.0, round(wait, 3)),
                )
            await anyio.sleep(wait)

    async def _give_back(self, held: list[tuple[str, float, float, float, bool]]) -> None:
        with anyio.CancelScope(shield=True):
            for key, amount, capacity, per_second, _ in held:
                await self.backend.give(key, amount, capacity, per_second)
