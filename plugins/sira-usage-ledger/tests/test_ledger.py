"""The ledger in a kernel: one row per request, batching, retries, spill and replay, overflow, unload."""

from __future__ import annotations

import importlib.metadata
import json
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import sira_usage_ledger
from ledger_helpers import MemoryUsageStore, chat, eventually, info, record, store_plugin
from sira_usage_ledger import LedgerConfig, LedgerPlugin, LedgerStatus, UsageLedger

from sira_kernel import ProviderUnavailable, SiraError
from sira_kernel.kernel import Kernel
from sira_kernel.testing import FakeProviderPlugin, make_kernel

pytestmark = pytest.mark.anyio

FAST = {"flush_interval": 0.05, "replay_interval": 0.2, "retry_backoff": 0.01}


def ledger_kernel(tmp_path: Path, store: MemoryUsageStore, **ledger: Any) -> Kernel:
    config = {
        "kernel": {"data_dir": str(tmp_path), "stop_timeout": 5.0, "drain_timeout": 5.0},
        "plugins": {"ledger": {**FAST, **ledger}},
    }
    plugins = {"fake": FakeProviderPlugin, "store": store_plugin(store), "ledger": LedgerPlugin}
    return make_kernel(plugins, config=config)


def ledger_of(kernel: Kernel) -> UsageLedger:
    found = kernel.services.get(LedgerStatus)
    assert isinstance(found, UsageLedger)
    return found


def spill_lines(tmp_path: Path, name: str = "ledger-spill.jsonl") -> list[dict[str, Any]]:
    path = tmp_path / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def balanced(ledger: UsageLedger) -> bool:
    c = ledger.counters()
    return c.pending == 0 and c.received == c.written + c.spilled


# -- the plugin contract ------------------------------------------------------------------------------


def test_public_api_is_pinned() -> None:
    assert sira_usage_ledger.__all__ == [
        "BadParameter", "LedgerConfig", "LedgerCounters", "LedgerHealth", "LedgerPlugin", "LedgerStatus",
        "ReportQuery", "SpillFile", "UsageLedger", "parse_query", "parse_time",
    ]


def test_entry_point_and_class_contract() -> None:
    [entry] = [e for e in importlib.metadata.entry_points(group="sira_kernel.plugins") if e.name == "ledger"]
    assert entry.load() is LedgerPlugin
    assert LedgerPlugin.sira_api == 1 and LedgerPlugin.Config is LedgerConfig
    assert LedgerPlugin.requires == ("UsageStore",)


def test_every_config_key_is_documented() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for field in msgspec.structs.fields(LedgerConfig):
        assert f"| `{field.name}` |" in readme, field.name


async def test_bad_config_fails_only_the_ledger(tmp_path: Path) -> None:
    kernel = ledger_kernel(tmp_path, MemoryUsageStore(), batch_size=0, bogus=1)
    async with kernel:
        infos = {p.id: p for p in kernel.plugins.infos()}
        assert infos["ledger"].state == "failed"
        assert "batch_size" in (infos["ledger"].reason or "") or "bogus" in (infos["ledger"].reason or "")
        assert infos["store"].state == "active"


async def test_without_a_store_the_ledger_does_not_start(tmp_path: Path) -> None:
    async with make_kernel({"fake": FakeProviderPlugin, "ledger": LedgerPlugin},
                           config={"kernel": {"data_dir": str(tmp_path)}}) as kernel:
        info = {p.id: p for p in kernel.plugins.infos()}["ledger"]
        assert info.state == "failed" and "UsageStore" in (info.reason or "")


# -- the request path ----------------------------------------------------------------------------------


async def test_exactly_one_row_per_request_through_the_pipeline(tmp_path: Path) -> None:
    store = MemoryUsageStore()
    async with ledger_kernel(tmp_path, store) as kernel:
        provider = kernel.snapshot.route_table.providers["fake"]
        for _ in range(6):
            await kernel.pipeline.chat(chat(), info())
        provider.fail = ProviderUnavailable("down for the test", provider="fake")
        for _ in range(2):
            with pytest.raises(SiraError):
                await kernel.pipeline.chat(chat(), info())
        with pytest.raises(SiraError):
            await kernel.pipeline.chat(chat("no-such-model"), info())
        ledger = ledger_of(kernel)
        await eventually(lambda: len(store.rows) == 9 and balanced(ledger))
        await anyio.sleep(0.1)  # nothing more arrives
        assert len(store.rows) == 9
        statuses = sorted(r.status for r in store.rows.values())
        assert statuses == [200] * 6 + [404, 502, 502]
        c = ledger.counters()
        assert (c.received, c.written, c.spilled, c.store_errors, c.dropped) == (9, 9, 0, 0, 0)
        assert c.queue is not None and c.queue.delivered == 9 and c.queue.dropped == 0
        health = {h.interface: h for h in (await kernel.health()).services}["LedgerStatus"]
        assert health.healthy and "received=9 written=9" in health.detail


async def test_records_are_written_in_batches(tmp_path: Path) -> None:
    store = MemoryUsageStore()
    async with ledger_kernel(tmp_path, store, batch_size=10, flush_interval=0.6) as kernel:
        for i in range(25):
            kernel.bus.publish_nowait(record(f"req-{i}"))
        ledger = ledger_of(kernel)
        await eventually(lambda: store.calls == [10, 10], timeout=0.5)
        await eventually(lambda: store.calls == [10, 10, 5])  # the rest once flush_interval passed
        assert len(store.rows) == 25
        assert (ledger.counters().batches, ledger.counters().written) == (3, 25)


async def test_a_failing_store_is_retried_then_the_batch_is_spilled_and_replayed(tmp_path: Path) -> None:
    store = MemoryUsageStore()
    async with ledger_kernel(tmp_path, store, max_retries=2, replay_interval=0.3) as kernel:
        ledger = ledger_of(kernel)
        store.fail_next = 2  # two failures, then the third attempt gets through
        kernel.bus.publish_nowait(record("req-retried"))
        await eventually(lambda: "req-retried" in store.rows)
        assert (ledger.counters().store_errors, ledger.counters().spilled) == (2, 0)

        store.down = True
        for i in range(3):
            kernel.bus.publish_nowait(record(f"req-spilled-{i}"))
        await eventually(lambda: ledger.counters().spilled == 3)
        c = ledger.counters()
        assert c.store_failing and c.store_errors >= 5 and c.pending == 0
        assert c.received == c.written + c.spilled == 4
        assert [line["request_id"] for line in spill_lines(tmp_path)] == [f"req-spilled-{i}" for i in range(3)]
        health = {h.interface: h for h in (await kernel.health()).services}["LedgerStatus"]
        assert not health.healthy
        assert "store failing (StoreDown: the store is down)" in health.detail
        assert "spill file holds 3 records" in health.detail
        assert not (await kernel.health()).ready

        # While the store is failing, new batches go straight to the spill file: no retries each.
        errors = ledger.counters().store_errors
        kernel.bus.publish_nowait(record("req-while-down"))
        await eventually(lambda: ledger.counters().spilled == 4)
        assert ledger.counters().store_errors - errors <= 1  # at most a replay's probe

        store.down = False
        await eventually(lambda: len(store.rows) == 5 and ledger.counters().spill_bytes == 0)
        c = ledger.counters()
        assert not c.store_failing and c.replayed == 4
        assert not (tmp_path / "ledger-spill.jsonl").exists()
        assert (await kernel.health()).ready


async def test_the_spill_file_is_replayed_at_start_without_duplicates(tmp_path: Path) -> None:
    store = MemoryUsageStore()
    already = record("req-1")
    await store.write_usage([already])
    lines = [msgspec.json.encode(record(f"req-{i}")) for i in (1, 2, 3)]
    lines.append(msgspec.json.encode(record("req-2")))  # spilled twice (a retry after a crash)
    lines.append(b'{"request_id": "torn", "timest')  # a line cut short by a crash
    (tmp_path / "ledger-spill.jsonl").write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4])
    async with ledger_kernel(tmp_path, store) as kernel:
        ledger = ledger_of(kernel)
        await eventually(lambda: ledger.counters().spill_bytes == 0)
        assert sorted(store.rows) == ["req-1", "req-2", "req-3"]
        assert store.rows["req-1"] is already
        c = ledger.counters()
        assert (c.replayed, c.rejected) == (4, 1)
    rejected = (tmp_path / "ledger-spill.jsonl.rejected").read_bytes()
    assert rejected == b'{"request_id": "torn", "timest\n'


async def test_a_full_queue_spills_and_nothing_is_lost(tmp_path: Path) -> None:
    store = MemoryUsageStore()
    store.delay = 0.05  # a slow store: the writer falls behind a burst
    async with ledger_kernel(tmp_path, store, queue_size=4, batch_size=5, replay_interval=60) as kernel:
        ledger = ledger_of(kernel)
        started = time.perf_counter()
        for i in range(200):
            kernel.bus.publish_nowait(record(f"req-{i}"))  # what the request path does: never waits
        assert time.perf_counter() - started < 0.5
        await eventually(lambda: balanced(ledger) and ledger.counters().received == 200)
        c = ledger.counters()
        assert c.dropped > 0 and c.spilled == c.dropped and c.written + c.spilled == 200
        assert c.queue is not None and c.queue.dropped == c.dropped and c.queue.lagged > 0
        assert c.queue.high_water == 4
        store.delay = 0

        async def replayed_all() -> bool:
            await ledger.replay()  # 0 while the replay at start still runs: it saw a shorter file
            return ledger.counters().spill_bytes == 0

        await eventually(replayed_all)
        assert sorted(store.rows) == sorted(f"req-{i}" for i in range(200))
        assert ledger.counters().replayed == c.spilled  # each spilled record replayed exactly once
        assert not (tmp_path / "ledger-spill.jsonl").exists()


async def test_requests_do_not_wait_for_a_hanging_store(tmp_path: Path) -> None:
    store = MemoryUsageStore()
    store.delay = 30  # every write hangs until write_timeout
    async with ledger_kernel(tmp_path, store, queue_size=8, batch_size=2, write_timeout=0.2,
                             max_retries=0) as kernel:
        started = time.perf_counter()
        for _ in range(40):
            await kernel.pipeline.chat(chat(), info())
        assert time.perf_counter() - started < 2.0
        ledger = ledger_of(kernel)
        await eventually(lambda: balanced(ledger) and ledger.counters().received == 40)
        c = ledger.counters()
        assert c.spilled == 40 and c.written == 0 and c.store_failing
        assert c.last_error == "TimeoutError: the store did not answer in time"


async def test_unload_flushes_what_is_buffered(tmp_path: Path) -> None:
    store = MemoryUsageStore()
    async with ledger_kernel(tmp_path, store, flush_interval=60, batch_size=100, queue_size=1000) as kernel:
        for i in range(30):
            kernel.bus.publish_nowait(record(f"req-{i}"))
        ledger = ledger_of(kernel)
        await kernel.unload("ledger")  # the queue is delivered, then close() writes the partial batch
        assert len(store.rows) == 30 and store.calls == [30]
        c = ledger.counters()
        assert (c.received, c.written, c.spilled, c.pending) == (30, 30, 0, 0)
        assert not (tmp_path / "ledger-spill.jsonl").exists()


async def test_unload_with_the_store_down_spills_everything(tmp_path: Path) -> None:
    store = MemoryUsageStore()
    async with ledger_kernel(tmp_path, store, flush_interval=60, batch_size=10, queue_size=1000,
                             max_retries=0) as kernel:
        store.down = True
        for i in range(25):
            kernel.bus.publish_nowait(record(f"req-{i}"))
        ledger = ledger_of(kernel)
        await kernel.unload("ledger")
        c = ledger.counters()
        assert (c.received, c.written, c.spilled, c.pending, c.lost) == (25, 0, 25, 0, 0)
        assert sorted(line["request_id"] for line in spill_lines(tmp_path)) == sorted(f"req-{i}" for i in range(25))
        store.down = False
        await kernel.load("ledger")  # a new activation replays them
        await eventually(lambda: len(store.rows) == 25 and not (tmp_path / "ledger-spill.jsonl").exists())


async def test_a_reload_loses_nothing(tmp_path: Path) -> None:
    store = MemoryUsageStore()
    async with ledger_kernel(tmp_path, store, batch_size=7) as kernel:
        for i in range(50):
            await kernel.pipeline.chat(chat(), info())
            if i == 20:
                await kernel.replace("ledger")
        await eventually(lambda: len(store.rows) == 50)


async def test_the_spill_path_is_configurable(tmp_path: Path) -> None:
    store = MemoryUsageStore()
    store.down = True
    target = tmp_path / "elsewhere" / "usage.jsonl"
    async with ledger_kernel(tmp_path, store, spill_path=str(target), max_retries=0) as kernel:
        kernel.bus.publish_nowait(record("req-x"))
        await eventually(lambda: target.exists())
    assert [json.loads(line)["request_id"] for line in target.read_bytes().splitlines()] == ["req-x"]
