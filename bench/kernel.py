"""Micro-benchmarks of the kernel's own mechanisms, without HTTP: what each costs per request.

* **hook dispatch**: ``sira_authenticate`` with five plugins (four answer None, the one pluggy
  calls last answers) plus the kernel's ``trylast`` default, dispatched the way the request path
  does it (``await kernel.pipeline.authenticate(kernel.snapshot, info)``), and through pluggy
  itself (``pm.hook.sira_authenticate(request=info)``) for comparison;
* **bus throughput**: events published with ``publish_nowait`` in batches to 1 and 10 subscribers,
  yielding between batches so the delivery tasks drain, timed until every event is delivered;
* **scheduler admission**: ``acquire`` + ``release`` of a pool and ``reserve`` + ``settle``,
  uncontended, and with 64 tasks contending for a pool of 8.

Each figure is the median of several timed repetitions after a warm-up (``time.perf_counter_ns``).
Nothing is asserted: the table prints each figure beside its floor with PASS/FAIL.

    python bench/kernel.py            # uvloop when installed
    python bench/kernel.py --loop asyncio --quick
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import msgspec

from loops import add_loop_option, run
from sira_kernel.auth import Principal, RequestInfo
from sira_kernel.bus import MessageBus, Subscription
from sira_kernel.hookspecs import hookimpl
from sira_kernel.logs import configure_logging
from sira_kernel.scheduler import ConcurrencyPool, Scheduler
from sira_kernel.testing import make_kernel

DISPATCH_FLOOR_US = 20.0
BUS_FLOOR_PER_S = 200_000
ADMIT_FLOOR_US = 10.0


class Sizes(msgspec.Struct):
    reps: int = 7
    dispatch_calls: int = 20_000
    bus_events: int = 200_000
    bus_batch: int = 1_000
    admit_ops: int = 50_000
    contended_ops_per_task: int = 500


QUICK = Sizes(reps=5, dispatch_calls=5_000, bus_events=50_000, admit_ops=10_000, contended_ops_per_task=100)


class Row(msgspec.Struct):
    label: str
    value: float
    unit: str
    floor: str = ""
    passed: bool | None = None


async def median_per_op(run: Callable[[int], Awaitable[int]], n: int, reps: int) -> float:
    """Median nanoseconds per operation of ``run(n)``, which performs (and returns) an op count."""
    await run(max(1, n // 5))  # warm-up: caches, specialisation, lazily created structures
    samples = []
    for _ in range(reps):
        gc.collect()
        started = time.perf_counter_ns()
        ops = await run(n)
        samples.append((time.perf_counter_ns() - started) / ops)
    return statistics.median(samples)


# -- hook dispatch ----------------------------------------------------------------------------------


class Abstains:
    """Not my credential: ask the next plugin."""

    @hookimpl
    def sira_authenticate(self, request: RequestInfo) -> Principal | None:
        return None


class Answers:
    PRINCIPAL = Principal(id="bench-user", kind="key", tenant="bench")

    @hookimpl
    def sira_authenticate(self, request: RequestInfo) -> Principal | None:
        return self.PRINCIPAL if request.bearer_token == "sk-bench-key" else None


async def bench_dispatch(sizes: Sizes) -> list[Row]:
    # pluggy calls the last registered plugin first, so the answering plugin is activated first.
    plugins: dict[str, Any] = {"answers": Answers, **{f"abstains-{i}": Abstains for i in range(4)}}
    kernel = make_kernel(plugins)
    info = RequestInfo(
        method="POST", path="/v1/chat/completions", headers={"authorization": "Bearer sk-bench-key"}
    )
    async with kernel:
        snapshot = kernel.snapshot
        order = [plugin_id for _, plugin_id in snapshot.authenticate]
        authenticate = kernel.pipeline.authenticate
        principal = await authenticate(snapshot, info)
        hook = kernel.plugins.pm.hook.sira_authenticate

        async def via_pipeline(n: int) -> int:
            for _ in range(n):
                await authenticate(snapshot, info)
            return n

        async def via_pluggy(n: int) -> int:
            for _ in range(n):
                hook(request=info)
            return n

        pipeline_ns = await median_per_op(via_pipeline, sizes.dispatch_calls, sizes.reps)
        pluggy_ns = await median_per_op(via_pluggy, sizes.dispatch_calls, sizes.reps)
    print(f"dispatch order: {' → '.join(order)}; answered by {principal.id!r}")
    pipeline_us = pipeline_ns / 1000
    return [
        Row("sira_authenticate, kernel dispatch (5 plugins + default)", pipeline_us, "µs/call",
            f"< {DISPATCH_FLOOR_US:g} µs", pipeline_us < DISPATCH_FLOOR_US),
        Row("sira_authenticate, raw pluggy hook call (same plugins)", pluggy_ns / 1000, "µs/call", "reference"),
    ]


# -- bus --------------------------------------------------------------------------------------------


class Tick(msgspec.Struct):
    topic: ClassVar[str] = "bench.tick"
    n: int


async def bus_run(subscribers: int, sizes: Sizes) -> tuple[float, float, int]:
    """Publish ``sizes.bus_events`` events; return (published/s, delivered/s, dropped)."""
    bus = MessageBus()
    queue_size = 4 * sizes.bus_batch  # the publisher waits for the queues to fall below one batch
    subs = [
        Subscription(f"bench-{i}", "bench.#", lambda event: None, queue_size=queue_size)
        for i in range(subscribers)
    ]
    events = [Tick(n) for n in range(sizes.bus_batch)]
    total = sizes.bus_events
    async with anyio.create_task_group() as tasks:
        for sub in subs:
            bus.add(sub)
            tasks.start_soon(sub.run)
        await anyio.sleep(0)  # let the delivery loops start and park
        publish = bus.publish_nowait
        started = time.perf_counter_ns()
        sent = 0
        while sent < total:
            for event in events:
                publish(event)
            sent += len(events)
            await anyio.sleep(0)
            while any(sub.queued > sizes.bus_batch for sub in subs):
                await anyio.sleep(0)
        published_ns = time.perf_counter_ns() - started
        while any(sub.delivered + sub.dropped < total for sub in subs):
            await anyio.sleep(0)
        delivered_ns = time.perf_counter_ns() - started
        for sub in subs:
            bus.remove(sub)
    dropped = sum(sub.dropped for sub in subs)
    delivered = sum(sub.delivered for sub in subs)
    return total / published_ns * 1e9, delivered / delivered_ns * 1e9, dropped


async def bench_bus(sizes: Sizes) -> list[Row]:
    rows = []
    for subscribers in (1, 10):
        await bus_run(subscribers, Sizes(bus_events=sizes.bus_events // 5, bus_batch=sizes.bus_batch))  # warm-up
        runs = []
        for _ in range(sizes.reps):
            gc.collect()
            runs.append(await bus_run(subscribers, sizes))
        published = statistics.median(r[0] for r in runs)
        delivered = statistics.median(r[1] for r in runs)
        dropped = sum(r[2] for r in runs)
        label = f"bus → {subscribers} subscriber{'s' if subscribers > 1 else ''}"
        if subscribers == 1:
            rows.append(Row(f"{label}: delivered", delivered, "events/s", f"≥ {BUS_FLOOR_PER_S:,}/s",
                            delivered >= BUS_FLOOR_PER_S))
        else:
            rows.append(Row(f"{label}: delivered (sum over subscribers)", delivered, "events/s"))
        rows.append(Row(f"{label}: published (each to every subscriber)", published, "events/s"))
        rows.append(Row(f"{label}: dropped (all repetitions)", dropped, "events"))
    return rows


# -- scheduler --------------------------------------------------------------------------------------


async def bench_scheduler(sizes: Sizes) -> list[Row]:
    pool = ConcurrencyPool("bench", limit=8)

    async def acquire_release(n: int) -> int:
        for _ in range(n):
            await pool.acquire()
            pool.release()
        return n

    scheduler = Scheduler()
    scheduler.pool("p", 8)

    async def reserve_settle(n: int) -> int:
        reserve = scheduler.reserve
        for _ in range(n):
            reservation = await reserve(pool="p")
            await reservation.settle(0)
        return n

    tasks_n, per_task = 64, sizes.contended_ops_per_task
    contended_pool = ConcurrencyPool("contended", limit=8, queue_timeout=60)
    most = 0

    async def contended(n: int) -> int:
        # Each holder yields once inside the critical section, so the other 56 tasks queue.
        inside = 0

        async def worker(ops: int) -> None:
            nonlocal inside, most
            for _ in range(ops):
                await contended_pool.acquire(tenant="t")
                inside += 1
                most = max(most, inside)
                await anyio.lowlevel.checkpoint()
                inside -= 1
                contended_pool.release()

        async with anyio.create_task_group() as group:
            for _ in range(tasks_n):
                group.start_soon(worker, n // tasks_n)
        return (n // tasks_n) * tasks_n

    async def baseline(n: int) -> int:
        # The same 64 tasks and checkpoints without the pool: the cost of the switching itself.
        async def worker(ops: int) -> None:
            for _ in range(ops):
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as group:
            for _ in range(tasks_n):
                group.start_soon(worker, n // tasks_n)
        return (n // tasks_n) * tasks_n

    pool_ns = await median_per_op(acquire_release, sizes.admit_ops, sizes.reps)
    reserve_ns = await median_per_op(reserve_settle, sizes.admit_ops, sizes.reps)
    contended_ns = await median_per_op(contended, tasks_n * per_task, sizes.reps)
    baseline_ns = await median_per_op(baseline, tasks_n * per_task, sizes.reps)
    waits = contended_pool.admitted
    print(
        f"contended pool: at most {most} holders at once (limit 8); "
        f"{contended_pool.timed_out} timeouts; {waits:,} admissions"
    )
    pool_us, reserve_us = pool_ns / 1000, reserve_ns / 1000
    return [
        Row("pool acquire+release, uncontended", pool_us, "µs/op", f"< {ADMIT_FLOOR_US:g} µs",
            pool_us < ADMIT_FLOOR_US),
        Row("scheduler reserve(pool)+settle(0), uncontended", reserve_us, "µs/op", f"< {ADMIT_FLOOR_US:g} µs",
            reserve_us < ADMIT_FLOOR_US),
        Row("pool acquire+release, 64 tasks on limit 8", contended_ns / 1000, "µs/op", "reference"),
        Row("  same 64 tasks and checkpoints, no pool", baseline_ns / 1000, "µs/op", "reference"),
        Row("  pool overhead under contention", (contended_ns - baseline_ns) / 1000, "µs/op", "reference"),
    ]


# -- main -------------------------------------------------------------------------------------------


def describe_loop() -> str:
    loop = asyncio.get_running_loop()
    kind = type(loop)
    if kind.__module__.startswith("uvloop"):
        import uvloop

        return f"uvloop {uvloop.__version__} ({kind.__module__}.{kind.__qualname__})"
    return f"asyncio ({kind.__module__}.{kind.__qualname__})"


def fmt(row: Row) -> str:
    if row.unit.startswith("events"):
        return f"{row.value:,.0f} {row.unit}"
    return f"{row.value:,.2f} {row.unit}"


async def main(sizes: Sizes) -> None:
    loop = describe_loop()
    print(f"Sira kernel micro-benchmarks: Python {platform.python_version()}, event loop {loop}")
    print(f"median of {sizes.reps} repetitions after a warm-up\n")
    rows = [*await bench_dispatch(sizes), *await bench_bus(sizes), *await bench_scheduler(sizes)]
    width = max(len(r.label) for r in rows)
    print(f"\n{'measure':<{width}}  {'median':>22}  {'floor':<14}  result")
    print(f"{'-' * width}  {'-' * 22}  {'-' * 14}  ------")
    for row in rows:
        result = "" if row.passed is None else ("PASS" if row.passed else "FAIL")
        print(f"{row.label:<{width}}  {fmt(row):>22}  {row.floor:<14}  {result}")
    failed = [r.label for r in rows if r.passed is False]
    print(f"\n{'all floors met' if not failed else 'FAILED: ' + '; '.join(failed)} (event loop: {loop})")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_loop_option(parser)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = parser.parse_args()
    configure_logging(level="warning")  # plugin lifecycle lines would interleave with the table
    run(main, QUICK if args.quick else Sizes(), loop=args.loop)


if __name__ == "__main__":
    cli()
