"""Test helpers: a small in-memory ``UsageStore`` (and a plugin serving it), records, waiting."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import anyio
import msgspec

from sira_kernel import ChatRequest, Message, RequestInfo, UsageRecord, hookimpl
from sira_kernel.registrations import ServiceRegistrar
from sira_kernel.storage import UsageFilter, UsageStore, UsageSummaryRow

_ids = itertools.count(1)


def info() -> RequestInfo:
    """A request's RequestInfo, with an id of its own (the usage record's ``request_id``)."""
    return RequestInfo(method="POST", path="/v1/chat/completions", headers={}, request_id=f"req-test-{next(_ids)}")


def chat(model: str = "fake-1", text: str = "hi") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content=text)])


class StoreDown(RuntimeError):
    pass


class MemoryUsageStore:
    """A UsageStore in a dict, with failure knobs: ``fail_next`` calls fail, or every one while ``down``."""

    def __init__(self) -> None:
        self.rows: dict[str, UsageRecord] = {}
        self.calls: list[int] = []  # batch size of every successful write_usage call
        self.failures = 0
        self.fail_next = 0
        self.down = False
        self.delay = 0.0

    async def write_usage(self, records: Sequence[UsageRecord]) -> None:
        if self.delay:
            await anyio.sleep(self.delay)
        if self.down or self.fail_next > 0:
            self.fail_next = max(0, self.fail_next - 1)
            self.failures += 1
            raise StoreDown("the store is down")
        for record in records:
            self.rows.setdefault(record.request_id, record)
        self.calls.append(len(records))

    def _match(self, r: UsageRecord, w: UsageFilter) -> bool:
        return (
            (w.since is None or r.timestamp >= w.since)
            and (w.until is None or r.timestamp < w.until)
            and all(
                getattr(w, f) is None or getattr(r, f) == getattr(w, f)
                for f in ("tenant", "team", "principal", "model", "provider")
            )
        )

    async def query_usage(self, where: UsageFilter) -> list[UsageRecord]:
        if where.limit < 0 or where.offset < 0:
            raise ValueError("limit and offset must be >= 0")
        # newest first, like sira-storage-sqlite
        found = [r for r in reversed(self.rows.values()) if self._match(r, where)]
        found.sort(key=lambda r: r.timestamp, reverse=True)
        return found[where.offset : where.offset + where.limit]

    async def summarize_usage(self, where: UsageFilter, group_by: Sequence[str]) -> list[UsageSummaryRow]:
        unknown = set(group_by) - {"tenant", "team", "principal", "model", "provider", "status", "day"}
        if unknown:
            raise ValueError(f"cannot group usage by {sorted(unknown)[0]!r}")
        groups: dict[tuple[str | None, ...], list[UsageRecord]] = {}
        for r in self.rows.values():
            if self._match(r, where):
                key = tuple(_group_value(r, g) for g in group_by)
                groups.setdefault(key, []).append(r)
        return [
            UsageSummaryRow(
                group=dict(zip(group_by, key, strict=True)), requests=len(rs),
                errors=sum(1 for r in rs if r.status >= 400),
                prompt_tokens=sum(r.prompt_tokens for r in rs),
                completion_tokens=sum(r.completion_tokens for r in rs),
                total_tokens=sum(r.total_tokens for r in rs), cost_usd=sum(r.cost_usd or 0.0 for r in rs),
                avg_latency_ms=sum(r.latency_ms for r in rs) / len(rs),
            )
            for key, rs in sorted(groups.items(), key=lambda kv: [str(v) for v in kv[0]])
        ]

    async def spend(self, scope: str, scope_id: str, since: float) -> float:
        return sum(r.cost_usd or 0.0 for r in self.rows.values() if getattr(r, scope) == scope_id
                   and r.timestamp >= since)


def _group_value(record: UsageRecord, name: str) -> str | None:
    if name == "day":
        return datetime.fromtimestamp(record.timestamp, UTC).date().isoformat()
    value = getattr(record, name)
    return None if value is None else str(value)


class MemoryStorePlugin:
    """Provides the class's MemoryUsageStore (made by :func:`store_plugin`), shared across activations."""

    sira_api = 1
    provides = ("UsageStore",)
    store: MemoryUsageStore

    @hookimpl
    def sira_register_services(self, register: ServiceRegistrar) -> None:
        register(UsageStore, type(self).store)


def store_plugin(store: MemoryUsageStore) -> type:
    """A store plugin class serving ``store``."""
    return type("BoundMemoryStorePlugin", (MemoryStorePlugin,), {"store": store})


def record(request_id: str, *, timestamp: float | None = None, **fields: object) -> UsageRecord:
    base = {"operation": "chat", "principal": "master", "principal_kind": "master", "model": "fake-1",
            "provider": "fake", "upstream_model": "fake-1", "status": 200, "prompt_tokens": 3,
            "completion_tokens": 5, "total_tokens": 8, "latency_ms": 12.5, "attempts": 1}
    base.update(fields)
    return msgspec.convert({"request_id": request_id, "timestamp": timestamp or time.time(), **base}, UsageRecord)


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true (polling), or fail after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while True:
            answer = check()
            if not isinstance(answer, bool):
                answer = await answer
            if answer:
                return
            await anyio.sleep(0.01)
