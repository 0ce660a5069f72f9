"""What virtual keys cost: ``auth-keys`` with 100,000 keys in SQLite, hit and miss, and revoke latency.

In-process, no HTTP. A temporary SQLite file gets ``--keys`` virtual keys (real ``sk-sira-`` keys,
stored as their HMAC-SHA256, one tenant), then kernels with ``storage-sqlite`` (on that file),
``auth-keys`` and ``FakeProviderPlugin`` (which answers at once) are started on it:

* **pipeline, master key** vs **pipeline, virtual key (cache hit)**: 16 concurrent tasks call
  ``kernel.pipeline.chat`` in a loop; the first with the master key (the kernel's own check), the
  second with one cached virtual key each. Timed in ``--reps`` pairs, each virtual-key run right
  after a master-key run; ``added`` is the median of the paired differences.
* **authenticate + authorize, cache hit**: the plugin's two hooks called directly.
* **authenticate + authorize, cache miss**: every call presents a key not yet cached, so it hashes
  it, reads it by hash from SQLite (100,000 rows; the tenant is cached), builds the principal and
  caches it; awaited one at a time, and 64 in flight. Each one-at-a-time run is paired with a run
  of ``KeyStore.find_key_by_hash`` alone (a round trip to the store's reader thread, which every
  miss pays): the difference is the plugin's own share. On a busy machine the thread hop, not the
  plugin, is what varies.
* **revoke → rejection**: two kernels on the same SQLite file (as two workers) both have a key
  cached; the key is revoked through the first kernel's store; the second is asked every
  millisecond until it refuses the key. ``--revokes`` trials: median and maximum.

The floors from the issue, with PASS/FAIL: a key check adds under 50 µs per request, hit and miss;
a revoke is refused by every worker within 1 s.

    python bench/auth.py                 # uvloop when installed
    python bench/auth.py --quick --loop asyncio
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
from sira_auth_keys import AuthKeysPlugin, KeyHasher, generate_key
from sira_auth_keys._auth import KeyAuthenticator
from sira_storage_sqlite import SQLiteStorage

from loops import add_loop_option, run
from sira_kernel import AuthenticationFailed, ChatRequest, Message, RequestInfo
from sira_kernel.kernel import Kernel
from sira_kernel.logs import configure_logging
from sira_kernel.storage import KeyStore, Tenant
from sira_kernel.testing import FakeProviderPlugin, make_kernel

MASTER = "sk-bench-master-key-0123456789"
SECRET = "bench-hash-secret-0123456789abcdef"
FLOOR_US = 50.0
FLOOR_REVOKE_S = 1.0
CLIENTS = 16
PATH = "/v1/chat/completions"


class Sizes(msgspec.Struct):
    keys: int = 100_000
    reps: int = 11
    per_client: int = 400
    direct_ops: int = 50_000
    misses: int = 5_000
    miss_reps: int = 7
    revokes: int = 20


QUICK = Sizes(keys=100_000, reps=5, per_client=200, direct_ops=10_000, misses=2_000, miss_reps=3, revokes=8)


def info(key: str, request_id: str = "bench") -> RequestInfo:
    return RequestInfo(method="POST", path=PATH, headers={"authorization": f"Bearer {key}"}, request_id=request_id)


async def populate(path: Path, count: int) -> list[str]:
    """``count`` keys in one tenant, inserted in one transaction; returns the clear keys."""
    hasher = KeyHasher(SECRET)
    keys = [generate_key() for _ in range(count)]
    async with SQLiteStorage(str(path)) as storage:
        await storage.create_tenant(Tenant(id="bench", name="bench", created_at=time.time()))
        rows = [(f"key-{i}", hasher(key), key[:12], f"key {i}", "bench", "member", time.time(), "bench", "{}", "{}")
                for i, key in enumerate(keys)]
        await storage._db.write(lambda c: c.executemany(
            "INSERT INTO api_keys (id, key_hash, prefix, name, tenant_id, role, created_at, created_by, limits,"
            " metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows))
    return keys


def build(path: Path) -> Kernel:
    config: dict[str, Any] = {
        "server": {"master_key": MASTER},
        "plugins": {"storage-sqlite": {"path": str(path)}, "auth-keys": {"hash_secret": SECRET}},
    }
    return make_kernel({"auth-keys": AuthKeysPlugin, "fake": FakeProviderPlugin}, config,
                       enable=["storage-sqlite", "auth-keys", "fake"])


def authenticator(kernel: Kernel) -> KeyAuthenticator:
    found = kernel.plugins.handles["auth-keys"].instance.authenticator
    assert found is not None
    return found  # type: ignore[no-any-return]


async def per_request_us(kernel: Kernel, keys: list[str], per_client: int) -> float:
    """Wall-clock µs per request with CLIENTS tasks, client ``i`` presenting ``keys[i]``."""
    chat = kernel.pipeline.chat
    request = ChatRequest(model="fake-1", messages=[Message("user", "Say hello")])

    async def client(key: str) -> None:
        for n in range(per_client):
            await chat(request, info(key, f"r{n}"))

    gc.collect()
    started = time.perf_counter_ns()
    async with anyio.create_task_group() as tasks:
        for i in range(CLIENTS):
            tasks.start_soon(client, keys[i % len(keys)])
    return (time.perf_counter_ns() - started) / (CLIENTS * per_client) / 1000


async def bench_pipeline(kernel: Kernel, keys: list[str], sizes: Sizes) -> tuple[float, float, float]:
    virtual = keys[:CLIENTS]
    master = [MASTER]
    await per_request_us(kernel, master, max(10, sizes.per_client // 5))  # warm-up, and caches the keys
    await per_request_us(kernel, virtual, max(10, sizes.per_client // 5))
    bases, values, added = [], [], []
    for _ in range(sizes.reps):
        base = await per_request_us(kernel, master, sizes.per_client)
        value = await per_request_us(kernel, virtual, sizes.per_client)
        bases.append(base)
        values.append(value)
        added.append(value - base)
    return statistics.median(bases), statistics.median(values), statistics.median(added)


async def bench_hit(kernel: Kernel, key: str, sizes: Sizes) -> float:
    auth = authenticator(kernel)
    request = info(key)
    principal = auth.authenticate(request)
    if not hasattr(principal, "id"):
        principal = await principal  # type: ignore[misc]
    samples = []
    for _ in range(sizes.reps):
        gc.collect()
        started = time.perf_counter_ns()
        for _ in range(sizes.direct_ops):
            answer = auth.authenticate(request)
            auth.authorize(answer, request, "chat", "fake-1")  # type: ignore[arg-type]
        samples.append((time.perf_counter_ns() - started) / sizes.direct_ops / 1000)
    return statistics.median(samples)


async def bench_miss(kernel: Kernel, keys: list[str], sizes: Sizes, in_flight: int) -> float:
    """µs per cache miss: ``sizes.misses`` keys not cached yet, ``in_flight`` at a time."""
    auth = authenticator(kernel)
    cold = random.sample(keys[CLIENTS + 1:], sizes.misses)
    hasher = KeyHasher(SECRET)

    async def check(key: str) -> None:
        request = info(key)
        answer = auth.authenticate(request)
        assert answer is not None and not hasattr(answer, "id"), "expected a miss"
        principal = await answer  # type: ignore[misc]
        auth.authorize(principal, request, "chat", "fake-1")

    loads = auth.loads
    gc.collect()
    started = time.perf_counter_ns()
    if in_flight == 1:
        for key in cold:
            await check(key)
    else:
        queue = iter(cold)

        async def worker() -> None:
            for key in queue:
                await check(key)

        async with anyio.create_task_group() as tasks:
            for _ in range(in_flight):
                tasks.start_soon(worker)
    elapsed = time.perf_counter_ns() - started
    assert auth.loads - loads == len(cold)
    for key in cold:  # leave the cache as it was, for the next round
        auth._drop(hasher(key))
    return elapsed / len(cold) / 1000


async def bench_store(kernel: Kernel, keys: list[str], sizes: Sizes) -> float:
    """µs per ``KeyStore.find_key_by_hash`` alone (what a miss cannot avoid), one at a time."""
    store = kernel.services.get(KeyStore)
    hasher = KeyHasher(SECRET)
    hashes = [hasher(key) for key in random.sample(keys[CLIENTS + 1:], sizes.misses)]
    gc.collect()
    started = time.perf_counter_ns()
    for key_hash in hashes:
        await store.find_key_by_hash(key_hash)
    return (time.perf_counter_ns() - started) / len(hashes) / 1000


async def bench_misses(kernel: Kernel, keys: list[str], sizes: Sizes) -> tuple[float, float, float]:
    """Median µs of a miss and of the store lookup alone, timed in pairs, and of their difference."""
    await bench_store(kernel, keys, sizes)  # warm the page cache
    misses, lookups, own = [], [], []
    for _ in range(sizes.miss_reps):
        lookup = await bench_store(kernel, keys, sizes)
        miss = await bench_miss(kernel, keys, sizes, 1)
        misses.append(miss)
        lookups.append(lookup)
        own.append(miss - lookup)
    return statistics.median(misses), statistics.median(lookups), statistics.median(own)


async def bench_revoke(first: Kernel, second: Kernel, keys: list[str], sizes: Sizes) -> list[float]:
    store = first.services.get(KeyStore)
    a, b = authenticator(first), authenticator(second)
    latencies = []
    for trial in range(sizes.revokes):
        key = keys[-1 - trial]
        for auth in (a, b):
            answer = auth.authenticate(info(key))
            if not hasattr(answer, "id"):
                await answer  # type: ignore[misc]
        record = await store.find_key_by_hash(KeyHasher(SECRET)(key))
        assert record is not None
        await anyio.sleep(random.uniform(0, 0.25))  # revokes land anywhere in the poll cycle
        started = time.perf_counter()
        await store.revoke_key(record.id, time.time())
        a.invalidate([record.id])  # what the admin API does on the worker that revoked
        while True:
            try:
                answer = b.authenticate(info(key))
                if not hasattr(answer, "id"):
                    await answer  # type: ignore[misc]
            except AuthenticationFailed:
                break
            await anyio.sleep(0.001)
        latencies.append(time.perf_counter() - started)
    return latencies


def describe_loop() -> str:
    loop = asyncio.get_running_loop()
    if type(loop).__module__.startswith("uvloop"):
        import uvloop

        return f"uvloop {uvloop.__version__}"
    return "asyncio"


async def main(sizes: Sizes) -> None:
    loop = describe_loop()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        started = time.perf_counter()
        keys = await populate(path, sizes.keys)
        print(f"Sira auth-keys: Python {platform.python_version()}, event loop {loop}, {sizes.keys:,} keys in "
              f"SQLite (stored in {time.perf_counter() - started:.1f} s), median of {sizes.reps} repetitions\n")
        first, second = build(path), build(path)
        async with first, second:
            base, value, added = await bench_pipeline(first, keys, sizes)
            hit = await bench_hit(first, keys[0], sizes)
            miss, lookup, own = await bench_misses(first, keys, sizes)
            miss_64 = await bench_miss(first, keys, sizes, 64)
            revokes = await bench_revoke(first, second, keys, sizes)
    rows: list[tuple[str, float, str, str]] = []
    failed = []

    def row(label: str, value: float, floor: float | None, unit: str = "µs") -> None:
        if floor is None:
            rows.append((label, value, "reference", ""))
            return
        passed = value < floor
        if not passed:
            failed.append(label)
        rows.append((label, value, f"< {floor:g} {unit}", "PASS" if passed else "FAIL"))

    row(f"pipeline, master key ({CLIENTS} clients), µs/request", base, None)
    row(f"pipeline, virtual key ({CLIENTS} clients), µs/request", value, None)
    row("  added by a virtual key (cache hit)", added, FLOOR_US)
    row("authenticate + authorize, cache hit", hit, FLOOR_US)
    row("authenticate + authorize, cache miss (SQLite)", miss, FLOOR_US)
    row("  KeyStore.find_key_by_hash alone", lookup, None)
    row("  the plugin's own share of a miss", own, None)
    row("  the same, 64 misses in flight (amortised)", miss_64, None)
    row("revoke -> refused by the 2nd kernel, median (s)", statistics.median(revokes), FLOOR_REVOKE_S, "s")
    row("revoke -> refused by the 2nd kernel, max (s)", max(revokes), FLOOR_REVOKE_S, "s")
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'measurement':<{width}}  {'value':>9}  {'floor':<10}  result")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 10}  ------")
    for label, number, floor, result in rows:
        shown = f"{number:>9.3f}" if label.startswith("revoke") else f"{number:>9.2f}"
        print(f"{label:<{width}}  {shown}  {floor:<10}  {result}")
    print(f"\n{'all floors met' if not failed else 'FAILED: ' + '; '.join(failed)} (event loop: {loop})")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_loop_option(parser)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--keys", type=int, help="keys stored (default 100,000)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    if args.keys:
        sizes = msgspec.structs.replace(sizes, keys=args.keys)
    configure_logging(level="warning")
    run(main, sizes, loop=args.loop)


if __name__ == "__main__":
    cli()
