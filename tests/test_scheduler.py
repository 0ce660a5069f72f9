"""The resource scheduler: concurrency pools (priority, fairness, timeouts, cancellation), token
buckets on an injected clock, reserve-then-reconcile, and property tests that nothing leaks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sira_kernel.auth import LimitSpec
from sira_kernel.errors import CapacityError, QueueTimeout, RateLimited
from sira_kernel.scheduler import ConcurrencyPool, CounterBackend, InProcessCounters, Reservation, Scheduler

# -- helpers --------------------------------------------------------------------------------------


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class YieldingCounters(InProcessCounters):
    """The in-process backend behind an await, like a network backend: calls interleave, yet each
    call is still atomic."""

    async def take(self, key: str, amount: float, capacity: float, per_second: float) -> float:
        await anyio.sleep(0)
        return await super().take(key, amount, capacity, per_second)

    async def give(self, key: str, amount: float, capacity: float, per_second: float) -> None:
        await anyio.sleep(0)
        await super().give(key, amount, capacity, per_second)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0)


async def level(scheduler: Scheduler, spec: LimitSpec) -> float:
    """The current level of the bucket ``spec`` names (the scheduler's key format)."""
    suffix = ":t" if spec.unit == "tokens" else ":r"
    return await scheduler.backend.level("|".join(spec.key) + suffix, spec.per_minute, spec.per_minute / 60)


REQUESTS = LimitSpec(key=("tenant", "t1"), per_minute=3)
TOKENS = LimitSpec(key=("tenant", "t1", "model", "m"), per_minute=1000, unit="tokens")


# -- ConcurrencyPool ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pool_fast_path_admits_without_waiting() -> None:
    pool = ConcurrencyPool("p", limit=2)
    await pool.acquire()
    await pool.acquire(tenant="b", priority=0)
    stats = pool.stats()
    assert (stats.in_use, stats.waiting, stats.admitted, stats.timed_out) == (2, 0, 2, 0)
    pool.release()
    pool.release()
    assert pool.in_use == 0


@pytest.mark.anyio
async def test_pool_waiter_gets_the_released_slot() -> None:
    pool = ConcurrencyPool("p", limit=1)
    await pool.acquire()
    admitted = anyio.Event()

    async def waiter() -> None:
        await pool.acquire()
        admitted.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(waiter)
        await wait_until(lambda: pool.waiting == 1)
        assert not admitted.is_set()
        pool.release()
        assert pool.in_use == 1  # handed over, never freed in between
        await admitted.wait()
    assert (pool.in_use, pool.waiting, pool.admitted) == (1, 0, 2)
    pool.release()
    assert pool.in_use == 0


@pytest.mark.anyio
async def test_pool_queue_timeout_has_retry_after() -> None:
    pool = ConcurrencyPool("p", limit=1, queue_timeout=0.05)
    await pool.acquire()
    with pytest.raises(QueueTimeout) as caught:
        await pool.acquire()
    assert caught.value.status == 503
    assert caught.value.retry_after == 1.0
    assert "limit of 1" in str(caught.value)
    with pytest.raises(QueueTimeout):
        await pool.acquire(timeout=0)
    assert (pool.in_use, pool.waiting, pool.timed_out, pool.admitted) == (1, 0, 2, 1)


async def admission_order(pool: ConcurrencyPool, waiters: list[tuple[str, str, int]]) -> list[str]:
    """Queue ``(label, tenant, priority)`` waiters in that order behind a held slot, then release it
    and let each admitted waiter release in turn. Returns labels in admission order."""
    await pool.acquire()
    order: list[str] = []

    async def wait(label: str, tenant: str, priority: int) -> None:
        await pool.acquire(tenant=tenant, priority=priority)
        order.append(label)
        pool.release()

    async with anyio.create_task_group() as tasks:
        for i, (label, tenant, priority) in enumerate(waiters):
            tasks.start_soon(wait, label, tenant, priority)
            await wait_until(lambda n=i + 1: pool.waiting == n)  # type: ignore[misc]
        pool.release()
    assert (pool.in_use, pool.waiting) == (0, 0)
    return order


@pytest.mark.anyio
async def test_pool_higher_priority_is_served_first() -> None:
    pool = ConcurrencyPool("p", limit=1)
    order = await admission_order(
        pool, [("low1", "a", 2), ("mid", "a", 1), ("low2", "b", 2), ("high", "c", 0)]
    )
    assert order == ["high", "mid", "low1", "low2"]


@pytest.mark.anyio
async def test_pool_round_robins_between_tenants() -> None:
    pool = ConcurrencyPool("p", limit=1)
    waiters = [(f"A{i}", "A", 1) for i in range(10)] + [("B0", "B", 1), ("B1", "B", 1)]
    order = await admission_order(pool, waiters)
    assert order[:4] == ["A0", "B0", "A1", "B1"]
    assert [x for x in order if x.startswith("A")] == [f"A{i}" for i in range(10)]


@pytest.mark.anyio
async def test_pool_cancelled_waiter_leaves_no_trace() -> None:
    pool = ConcurrencyPool("p", limit=1)
    await pool.acquire()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(pool.acquire)
        await wait_until(lambda: pool.waiting == 1)
        tasks.cancel_scope.cancel()
    assert (pool.in_use, pool.waiting) == (1, 0)
    pool.release()
    assert pool.in_use == 0


@pytest.mark.anyio
@pytest.mark.parametrize("another_waiter", [False, True])
async def test_pool_slot_handed_over_at_the_moment_of_cancellation_is_passed_on(another_waiter: bool) -> None:
    """The slot is granted and the waiter's task cancelled in the same loop iteration, before the
    waiter runs again: acquire() raises CancelledError and the slot goes to the next in line (or
    back to the pool), so it is never lost."""
    pool = ConcurrencyPool("p", limit=1)
    await pool.acquire()
    second_admitted = anyio.Event()

    async def second() -> None:
        await pool.acquire(tenant="second")
        second_admitted.set()

    # A bare asyncio task, so the cancellation lands exactly on the granted waiter's await.
    first = asyncio.get_running_loop().create_task(pool.acquire(tenant="first"))
    async with anyio.create_task_group() as tasks:
        await wait_until(lambda: pool.waiting == 1)
        if another_waiter:
            tasks.start_soon(second)
            await wait_until(lambda: pool.waiting == 2)
        pool.release()  # hands the slot to `first` ...
        first.cancel()  # ... whose task is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await first
        if another_waiter:
            await second_admitted.wait()
    assert pool.waiting == 0
    assert pool.in_use == (1 if another_waiter else 0)
    if another_waiter:
        pool.release()
    assert pool.in_use == 0


@pytest.mark.anyio
async def test_pool_scope_cancelled_as_the_slot_arrives_never_leaks() -> None:
    """The same race through an anyio cancel scope: whichever way acquire() ends, the slot is
    accounted for (held by the caller, who releases it, or passed on)."""
    pool = ConcurrencyPool("p", limit=1)
    await pool.acquire()
    scope = anyio.CancelScope()
    outcome: list[str] = []

    async def waiter() -> None:
        with scope:
            await pool.acquire()
            try:
                outcome.append("admitted")
                await anyio.sleep_forever()
            finally:
                pool.release()
        outcome.append("cancelled")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(waiter)
        await wait_until(lambda: pool.waiting == 1)
        pool.release()
        scope.cancel()
    assert outcome[-1] == "cancelled"
    assert (pool.in_use, pool.waiting) == (0, 0)


@pytest.mark.anyio
async def test_pool_release_more_than_acquired_raises() -> None:
    pool = ConcurrencyPool("p", limit=2)
    with pytest.raises(RuntimeError, match="released more than acquired"):
        pool.release()
    await pool.acquire()
    pool.release()
    with pytest.raises(RuntimeError):
        pool.release()
    assert pool.in_use == 0


def test_pool_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ConcurrencyPool("p", limit=0)


@pytest.mark.anyio
async def test_pool_resized_up_admits_waiters() -> None:
    scheduler = Scheduler()
    pool = scheduler.pool("p", 1)
    await pool.acquire()
    admitted: list[int] = []

    async def waiter(n: int) -> None:
        await pool.acquire()
        admitted.append(n)

    async with anyio.create_task_group() as tasks:
        for n in range(2):
            tasks.start_soon(waiter, n)
        await wait_until(lambda: pool.waiting == 2)
        assert scheduler.pool("p", 3) is pool
        await wait_until(lambda: len(admitted) == 2)
    assert (pool.in_use, pool.waiting) == (3, 0)


@pytest.mark.anyio
async def test_pool_resized_down_stops_handing_over_until_below_the_limit() -> None:
    scheduler = Scheduler()
    pool = scheduler.pool("p", 3)
    for _ in range(3):
        await pool.acquire()
    admitted = anyio.Event()

    async def waiter() -> None:
        await pool.acquire()
        admitted.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(waiter)
        await wait_until(lambda: pool.waiting == 1)
        scheduler.pool("p", 1)
        pool.release()
        pool.release()
        assert (pool.in_use, pool.waiting) == (1, 1)
        pool.release()  # now the pool is below its new limit: the waiter gets this slot
        await admitted.wait()
    assert (pool.in_use, pool.waiting) == (1, 0)


# -- token buckets --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_requests_per_minute() -> None:
    clock = FakeClock()
    scheduler = Scheduler(clock=clock)
    for _ in range(3):
        await scheduler.reserve(limits=[REQUESTS])
    with pytest.raises(RateLimited) as caught:
        await scheduler.reserve(limits=[REQUESTS])
    assert caught.value.status == 429
    assert caught.value.retry_after == 20.0  # one request refills in 60/3 s
    assert "3 requests/min on tenant/t1" in str(caught.value)
    clock.advance(20)
    await scheduler.reserve(limits=[REQUESTS])
    assert scheduler.outstanding == 4


@pytest.mark.anyio
async def test_tokens_per_minute() -> None:
    clock = FakeClock()
    scheduler = Scheduler(clock=clock)
    await scheduler.reserve(limits=[TOKENS], tokens=600)
    assert await level(scheduler, TOKENS) == 400
    with pytest.raises(RateLimited) as caught:
        await scheduler.reserve(limits=[TOKENS], tokens=600, queue_timeout=5)
    assert caught.value.retry_after == 12.0  # 200 missing tokens at 1000/60 per second
    assert await level(scheduler, TOKENS) == 400
    clock.advance(12)
    await scheduler.reserve(limits=[TOKENS], tokens=600, queue_timeout=0)
    assert await level(scheduler, TOKENS) == 0


@pytest.mark.anyio
async def test_reserve_waits_for_a_refill_that_fits_the_queue_timeout() -> None:
    clock = FakeClock()
    scheduler = Scheduler(clock=clock)
    fast = LimitSpec(key=("k",), per_minute=6000, unit="tokens")  # 100 tokens/s: refills in ms
    await scheduler.reserve(limits=[fast], tokens=6000)
    got: list[Reservation] = []

    async def reserve() -> None:
        got.append(await scheduler.reserve(limits=[fast], tokens=2, queue_timeout=5))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(reserve)
        await anyio.sleep(0.1)  # several refill waits of 20 ms, but the fake clock stands still
        assert got == []
        clock.advance(0.05)  # 5 tokens come back (a little more than needed: floats)
        await wait_until(lambda: len(got) == 1)
    assert scheduler.outstanding == 2
    assert await level(scheduler, fast) == pytest.approx(3)


@pytest.mark.anyio
async def test_amount_above_capacity_is_rejected_at_once() -> None:
    scheduler = Scheduler(clock=FakeClock())
    with pytest.raises(RateLimited, match="needs 1001 tokens") as caught:
        await scheduler.reserve(limits=[REQUESTS, TOKENS], tokens=1001, queue_timeout=3600)
    assert caught.value.retry_after == 60.0
    assert await level(scheduler, REQUESTS) == 3  # the requests bucket taken first was given back
    assert scheduler.outstanding == 0


@pytest.mark.anyio
async def test_buckets_are_all_or_nothing() -> None:
    scheduler = Scheduler(clock=FakeClock())
    await scheduler.reserve(limits=[TOKENS], tokens=900)
    with pytest.raises(RateLimited):
        await scheduler.reserve(limits=[REQUESTS, TOKENS], tokens=200)
    assert await level(scheduler, REQUESTS) == 3
    assert await level(scheduler, TOKENS) == 100


@pytest.mark.anyio
async def test_settle_corrects_by_actual_minus_estimate() -> None:
    scheduler = Scheduler(clock=FakeClock())
    under = await scheduler.reserve(limits=[REQUESTS, TOKENS], tokens=100)
    over = await scheduler.reserve(limits=[REQUESTS, TOKENS], tokens=100)
    assert await level(scheduler, TOKENS) == 800
    await under.settle(40)  # used less: 60 come back
    assert await level(scheduler, TOKENS) == 860
    await over.settle(250)  # used more: 150 more are taken
    assert await level(scheduler, TOKENS) == 710
    assert await level(scheduler, REQUESTS) == 1  # a settled request still counts
    await over.settle(0)  # settling twice changes nothing
    await over.release()
    assert await level(scheduler, TOKENS) == 710
    assert (under.state, over.state, scheduler.outstanding) == ("settled", "settled", 0)


@pytest.mark.anyio
async def test_release_refunds_everything() -> None:
    scheduler = Scheduler(clock=FakeClock())
    pool = scheduler.pool("p", 2)
    reservation = await scheduler.reserve(pool="p", limits=[REQUESTS, TOKENS], tokens=300)
    assert (pool.in_use, scheduler.outstanding) == (1, 1)
    assert await level(scheduler, REQUESTS) == 2
    await reservation.release()
    assert (pool.in_use, scheduler.outstanding, reservation.state) == (0, 0, "released")
    assert await level(scheduler, REQUESTS) == 3
    assert await level(scheduler, TOKENS) == 1000


@pytest.mark.anyio
async def test_reservation_as_context_manager() -> None:
    scheduler = Scheduler(clock=FakeClock())
    scheduler.pool("p", 1)
    async with await scheduler.reserve(pool="p", limits=[TOKENS], tokens=100) as ok:
        pass
    assert ok.state == "settled"
    assert await level(scheduler, TOKENS) == 900
    with pytest.raises(KeyError):
        async with await scheduler.reserve(pool="p", limits=[TOKENS], tokens=100) as failed:
            raise KeyError("upstream broke")
    assert failed.state == "released"
    assert await level(scheduler, TOKENS) == 900
    assert (scheduler.pools["p"].in_use, scheduler.outstanding) == (0, 0)


@pytest.mark.anyio
async def test_pool_timeout_in_reserve_gives_the_buckets_back() -> None:
    scheduler = Scheduler(clock=FakeClock())
    scheduler.pool("p", 1)
    held = await scheduler.reserve(pool="p")
    with pytest.raises(QueueTimeout):
        await scheduler.reserve(pool="p", limits=[REQUESTS, TOKENS], tokens=500, queue_timeout=0.05)
    assert await level(scheduler, REQUESTS) == 3
    assert await level(scheduler, TOKENS) == 1000
    assert scheduler.outstanding == 1
    await held.settle(0)
    assert (scheduler.pools["p"].in_use, scheduler.outstanding) == (0, 0)


def test_unknown_pool() -> None:
    scheduler = Scheduler()
    with pytest.raises(KeyError):
        scheduler.pool("missing")


def test_in_process_counters_satisfy_the_protocol() -> None:
    assert isinstance(InProcessCounters(), CounterBackend)


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    tasks=st.integers(1, 40),
    capacity=st.integers(1, 20),
    yielding=st.booleans(),
    timeout_fraction=st.sampled_from([0.0, 0.5, 0.99]),
)
def test_concurrent_reserves_never_exceed_bucket_capacity(
    tasks: int, capacity: int, yielding: bool, timeout_fraction: float
) -> None:
    """With a frozen clock, N concurrent reserves against a bucket of C admit exactly min(N, C)."""
    clock = FakeClock()
    backend = YieldingCounters(clock) if yielding else InProcessCounters(clock)
    scheduler = Scheduler(backend, clock=clock)
    spec = LimitSpec(key=("k",), per_minute=capacity)
    refill = 60 / capacity  # seconds for one request to come back: longer than the queue timeout
    admitted: list[Reservation] = []
    refused: list[RateLimited] = []

    async def one() -> None:
        try:
            admitted.append(await scheduler.reserve(limits=[spec], queue_timeout=refill * timeout_fraction))
        except RateLimited as exc:
            refused.append(exc)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(tasks):
                group.start_soon(one)
        assert await scheduler.backend.level("k:r", capacity, capacity / 60) == capacity - len(admitted)

    anyio.run(main, backend="asyncio")
    assert len(admitted) == min(tasks, capacity)
    assert len(refused) == tasks - len(admitted)
    assert scheduler.outstanding == len(admitted)


class _Slot:
    __slots__ = ("reservation", "scope", "state", "tokens")

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.scope = anyio.CancelScope()
        self.state = "pending"  # -> held | refused | cancelled -> settled | released
        self.reservation: Reservation | None = None


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 300), st.sampled_from(["a", "b", "c"]), st.integers(0, 2)),
        st.tuples(st.just("settle"), st.integers(0, 50), st.integers(0, 400)),
        st.tuples(st.just("release"), st.integers(0, 50)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("yield"), st.integers(1, 3)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=OPS, limit=st.integers(1, 3), yielding=st.booleans())
def test_random_interleavings_leak_nothing(ops: list[tuple[Any, ...]], limit: int, yielding: bool) -> None:
    """Reserve, settle, release and cancel in any order and interleaving: afterwards nothing is
    outstanding, the pool is empty, and each bucket holds exactly capacity minus what settled
    requests used (so exactly capacity again once everything was released instead)."""
    clock = FakeClock()
    backend = YieldingCounters(clock) if yielding else InProcessCounters(clock)
    scheduler = Scheduler(backend, clock=clock)
    pool = scheduler.pool("p", limit, queue_timeout=60)
    requests = LimitSpec(key=("r",), per_minute=6)
    tokens = LimitSpec(key=("t",), per_minute=1000, unit="tokens")
    slots: list[_Slot] = []
    settled_tokens: list[int] = []

    async def reserve(slot: _Slot, tenant: str, priority: int) -> None:
        with slot.scope:
            try:
                slot.reservation = await scheduler.reserve(
                    pool="p", limits=[requests, tokens], tokens=slot.tokens, tenant=tenant, priority=priority
                )
            except CapacityError:
                slot.state = "refused"
                return
            slot.state = "held"
        if slot.state == "pending":
            slot.state = "cancelled"

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for op in ops:
                kind = op[0]
                if kind == "reserve":
                    slot = _Slot(op[1])
                    slots.append(slot)
                    group.start_soon(reserve, slot, op[2], op[3])
                elif kind == "yield":
                    for _ in range(op[1]):
                        await anyio.sleep(0)
                elif slots:
                    slot = slots[op[1] % len(slots)]
                    if kind == "cancel":
                        slot.scope.cancel()
                    elif slot.state == "held":
                        assert slot.reservation is not None
                        if kind == "settle":
                            await slot.reservation.settle(op[2])
                            settled_tokens.append(op[2])
                            slot.state = "settled"
                        else:
                            await slot.reservation.release()
                            slot.state = "released"
            for slot in slots:
                slot.scope.cancel()  # whatever still waits gives up
        for slot in slots:
            assert slot.state != "pending"
            if slot.state == "held":
                assert slot.reservation is not None
                await slot.reservation.release()
        assert scheduler.outstanding == 0
        assert (pool.in_use, pool.waiting) == (0, 0)
        assert await level(scheduler, requests) == 6 - len(settled_tokens)
        assert await level(scheduler, tokens) == 1000 - sum(settled_tokens)
        clock.advance(3600)
        assert await level(scheduler, requests) == 6
        assert await level(scheduler, tokens) == 1000

    anyio.run(main, backend="asyncio")


@settings(max_examples=150, deadline=None)
@given(
    holders=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 2), st.integers(0, 5), st.booleans()),
        min_size=1,
        max_size=30,
    ),
    limit=st.integers(1, 5),
)
def test_pool_never_exceeds_its_limit(holders: list[tuple[str, int, int, bool]], limit: int) -> None:
    """Many tasks contend for the pool; some are cancelled while waiting or holding. Inside the
    critical section there are never more than ``limit`` tasks, and every survivor gets in."""
    pool = ConcurrencyPool("p", limit, queue_timeout=60)
    inside = 0
    most = 0
    served = 0

    async def hold(tenant: str, priority: int, work: int) -> None:
        nonlocal inside, most, served
        await pool.acquire(tenant=tenant, priority=priority)
        try:
            inside += 1
            most = max(most, inside)
            for _ in range(work):
                await anyio.sleep(0)
            served += 1
        finally:
            inside -= 1
            pool.release()

    async def main() -> None:
        scopes: list[anyio.CancelScope] = []

        async def run(tenant: str, priority: int, work: int, scope: anyio.CancelScope) -> None:
            with scope:
                await hold(tenant, priority, work)

        async with anyio.create_task_group() as group:
            for tenant, priority, work, doomed in holders:
                scope = anyio.CancelScope()
                group.start_soon(run, tenant, priority, work, scope)
                if doomed:
                    scopes.append(scope)
            await anyio.sleep(0)
            for scope in scopes:
                scope.cancel()

    anyio.run(main, backend="asyncio")
    assert most <= limit
    assert served >= len(holders) - sum(1 for *_, doomed in holders if doomed)
    assert (pool.in_use, pool.waiting, inside) == (0, 0, 0)
