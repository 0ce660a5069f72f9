"""End to end: HTTP clients → Sira (real server) → the mock provider; the usage ledger stores every
request in SQLite off the hot path and reports it over the admin listener.

Installed plugins, from their entry points, exactly as ``sira serve`` runs them: ``api-openai``,
``provider-mock``, ``storage-sqlite`` and ``ledger``; plus a small inline auth plugin giving two
tenants keys of their own (``tk-acme``, ``tk-globex``) without the admin role.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from sira_usage_ledger import LedgerStatus

from sira_kernel import Principal, RequestInfo, UsageRecord, hookimpl
from sira_kernel.storage import UsageFilter, UsageStore
from sira_kernel.testing import ServerThread, make_kernel

MASTER = "sk-test-master-ledger-0123456789"
REPORT_PATHS = ("/api/v1/reports/summary", "/api/v1/reports/detailed", "/api/v1/ledger")


class TenantKeys:
    """``tk-<tenant>`` authenticates as that tenant's key (``key-<tenant>``), without the admin role."""

    sira_api = 1

    @hookimpl
    def sira_authenticate(self, request: RequestInfo) -> Principal | None:
        token = request.bearer_token
        if token is None or not token.startswith("tk-"):
            return None
        tenant = token[3:]
        return Principal(id=f"key-{tenant}", kind="key", tenant=tenant)


# (who, model, message, stream, expected status): 20 requests, 6 of them failing
REQUESTS: list[tuple[str, str, str, bool, int]] = [
    *[(MASTER, "mock-1", f"hello {i}", False, 200) for i in range(6)],
    *[(MASTER, "mock-1", f"stream {i}", True, 200) for i in range(2)],
    *[("tk-acme", "mock-large", f"large {i}", False, 200) for i in range(4)],
    *[("tk-acme", "mock-1", "[mock:status=500] fail", False, 502) for _ in range(3)],
    *[("tk-globex", "mock-1", "[mock:status=429] slow down", False, 429) for _ in range(2)],
    ("tk-globex", "mock-1", "fine", False, 200),
    (MASTER, "mock-1", "[mock:status=404]", False, 404),
    ("tk-globex", "no-such-model", "hi", False, 404),
]


def _config(data_dir: Path) -> dict[str, Any]:
    return {
        "kernel": {
            "plugins": ["api-openai", "provider-mock", "storage-sqlite", "ledger", "keys"],
            "data_dir": str(data_dir), "stop_timeout": 5.0, "drain_timeout": 5.0,
        },
        "server": {"master_key": MASTER},
        "plugins": {
            "provider-mock": {"models": ["mock-1", "mock-large"]},
            "ledger": {"batch_size": 8, "flush_interval": 0.05},
        },
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    data_dir = tmp_path_factory.mktemp("ledger-gateway")
    with ServerThread(lambda: make_kernel({"keys": TenantKeys}, config=_config(data_dir))) as server:
        server.data_dir = data_dir  # type: ignore[attr-defined]
        yield server


@pytest.fixture(scope="module")
def admin(gateway: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.admin_url, headers={"authorization": f"Bearer {MASTER}"},
                      timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def served(gateway: ServerThread, admin: httpx.Client) -> dict[str, Any]:
    """Send the 20 requests once; wait until the ledger has written them all."""
    started = time.time()
    ids: dict[str, tuple[str, str, int]] = {}
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        for who, model, text, stream, expected in REQUESTS:
            body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
            response = client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {who}"})
            if stream:
                response.read()
            assert response.status_code == expected, (text, response.text)
            ids[response.headers["x-request-id"]] = (who, model, expected)
    deadline = time.monotonic() + 10
    while True:
        counters = admin.get("/api/v1/ledger").json()
        if counters["written"] >= len(REQUESTS) and counters["pending"] == 0:
            break
        assert time.monotonic() < deadline, counters
        time.sleep(0.02)
    return {"ids": ids, "started": started, "finished": time.time(), "counters": counters}


def test_every_request_is_stored_once_and_counted(served: dict[str, Any], gateway: ServerThread,
                                                  admin: httpx.Client) -> None:
    counters = served["counters"]
    assert counters["received"] == counters["written"] == len(REQUESTS)
    assert (counters["spilled"], counters["dropped"], counters["store_errors"], counters["lost"]) == (0, 0, 0, 0)
    assert counters["batches"] >= 3  # batch_size 8
    assert counters["queue"]["delivered"] == len(REQUESTS) and counters["queue"]["dropped"] == 0
    health = httpx.get(f"{gateway.base_url}/health/ready").json()
    [ledger] = [s for s in health["services"] if s["interface"] == "LedgerStatus"]
    assert ledger["healthy"] and f"written={len(REQUESTS)}" in ledger["detail"]
    assert not (gateway.data_dir / "ledger-spill.jsonl").exists()  # type: ignore[attr-defined]
    assert (gateway.data_dir / "sira.db").exists()  # type: ignore[attr-defined]


def test_detailed_report_has_one_row_per_request(served: dict[str, Any], admin: httpx.Client) -> None:
    body = admin.get("/api/v1/reports/detailed", params={"limit": "100"}).json()
    assert body["count"] == len(REQUESTS) and body["next_offset"] is None
    rows = {row["request_id"]: row for row in body["rows"]}
    assert set(rows) == set(served["ids"])
    for request_id, (who, model, status) in served["ids"].items():
        row = rows[request_id]
        assert (row["model"], row["status"]) == (model, status)
        assert row["key"] == ("master" if who == MASTER else f"key-{who[3:]}")
        assert row["tenant"] == (None if who == MASTER else who[3:])
    ok = next(r for r in rows.values() if r["status"] == 200 and r["model"] == "mock-large")
    assert ok["deployment"] == "provider-mock/mock-large" and ok["total_tokens"] > 0 and ok["latency_ms"] > 0
    failed = next(r for r in rows.values() if r["status"] == 502)
    assert failed["error_code"] and failed["attempt_log"][0]["status"] == 502
    assert sum(1 for r in rows.values() if r["stream"]) == 2
    unknown = next(r for r in rows.values() if r["model"] == "no-such-model")
    assert (unknown["provider"], unknown["attempts"], unknown["error_code"]) == (None, 0, "model_not_found")

    page = admin.get("/api/v1/reports/detailed", params={"limit": "15", "offset": "0"}).json()
    rest = admin.get("/api/v1/reports/detailed", params={"limit": "15", "offset": "15"}).json()
    assert (page["next_offset"], rest["count"], rest["next_offset"]) == (15, 5, None)
    assert {r["request_id"] for r in page["rows"] + rest["rows"]} == set(served["ids"])


def test_summary_report_totals_and_groups(served: dict[str, Any], admin: httpx.Client) -> None:
    everything = admin.get("/api/v1/reports/summary").json()
    assert everything["totals"]["requests"] == len(REQUESTS) and everything["totals"]["errors"] == 7

    by_tenant = admin.get("/api/v1/reports/summary", params={"group_by": "tenant"}).json()
    assert {r["tenant"]: (r["requests"], r["errors"]) for r in by_tenant["rows"]} == {
        None: (9, 1), "acme": (7, 3), "globex": (4, 3)}

    by_status = admin.get("/api/v1/reports/summary", params={"group_by": "status"}).json()
    assert {r["status"]: r["requests"] for r in by_status["rows"]} == {"200": 13, "404": 2, "429": 2, "502": 3}

    acme = admin.get("/api/v1/reports/summary", params={"tenant": "acme", "group_by": "model,key"}).json()
    assert [(r["model"], r["key"], r["requests"], r["errors"]) for r in acme["rows"]] == [
        ("mock-1", "key-acme", 3, 3), ("mock-large", "key-acme", 4, 0)]
    tokens = sum(r["total_tokens"] for r in acme["rows"])
    assert acme["totals"]["total_tokens"] == tokens > 0


def test_filters_by_time_key_model_and_provider(served: dict[str, Any], admin: httpx.Client) -> None:
    def total(**params: str) -> int:
        return admin.get("/api/v1/reports/summary", params=params).json()["totals"]["requests"]

    since, finished = served["started"] - 1, served["finished"] + 1
    assert total(since=str(int(since)), until=str(int(finished) + 1)) == len(REQUESTS)
    assert total(until=str(int(since))) == 0
    assert total(since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished + 60))) == 0
    assert total(key="key-globex") == 4
    assert total(model="mock-large") == 4
    assert total(provider="provider-mock", tenant="globex") == 3  # the unknown model reached no provider
    detailed = admin.get("/api/v1/reports/detailed", params={"key": "key-acme", "model": "mock-1"}).json()
    assert {r["status"] for r in detailed["rows"]} == {502} and detailed["count"] == 3


def test_csv_exports(served: dict[str, Any], admin: httpx.Client) -> None:
    response = admin.get("/api/v1/reports/detailed", params={"format": "csv", "limit": "100"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"].startswith('attachment; filename="sira-usage-detailed-')
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == len(REQUESTS) and {r["request_id"] for r in rows} == set(served["ids"])
    assert sorted(int(r["status"]) for r in rows) == sorted(status for _, _, status in served["ids"].values())

    summary = admin.get("/api/v1/reports/summary", params={"format": "csv", "group_by": "tenant,status"})
    assert summary.headers["content-disposition"].startswith('attachment; filename="sira-usage-summary-')
    lines = list(csv.reader(io.StringIO(summary.text)))
    assert lines[0] == ["tenant", "status", "requests", "errors", "prompt_tokens", "completion_tokens",
                        "total_tokens", "cost_usd", "avg_latency_ms"]
    assert sum(int(line[2]) for line in lines[1:]) == len(REQUESTS)
    assert ["globex", "429"] == next(line[:2] for line in lines[1:] if line[1] == "429")
    for text in (response.text, summary.text):
        assert MASTER not in text


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/api/v1/reports/summary?group_by=tenant,secret", "group_by"),
        ("/api/v1/reports/summary?since=last-week", "since"),
        ("/api/v1/reports/detailed?limit=10001", "limit"),
        ("/api/v1/reports/detailed?offset=x", "offset"),
        ("/api/v1/reports/detailed?format=pdf", "format"),
        ("/api/v1/reports/summary?tenant=", "tenant"),
        ("/api/v1/reports/detailed?model=a&model=b", "model"),
        ("/api/v1/reports/summary?order=desc", "order"),
    ],
)
def test_bad_parameters_are_400s(served: dict[str, Any], admin: httpx.Client, path: str, param: str) -> None:
    response = admin.get(path)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_reports_need_the_admin_listener_and_an_admin(gateway: ServerThread) -> None:
    for path in REPORT_PATHS:
        assert httpx.get(f"{gateway.admin_url}{path}").status_code == 401
        wrong = httpx.get(f"{gateway.admin_url}{path}", headers={"authorization": "Bearer sk-not-the-master-key-0"})
        assert wrong.status_code == 401
        tenant = httpx.get(f"{gateway.admin_url}{path}", headers={"authorization": "Bearer tk-acme"})
        assert tenant.status_code == 403
        public = httpx.get(f"{gateway.base_url}{path}", headers={"authorization": f"Bearer {MASTER}"})
        assert public.status_code == 404


# -- with the real SQLite store, in-process --------------------------------------------------------------


def _record(request_id: str, **fields: Any) -> UsageRecord:
    return UsageRecord(request_id=request_id, timestamp=time.time(), operation="chat", principal="master",
                       principal_kind="master", model="mock-1", **fields)


@pytest.mark.anyio
async def test_sqlite_replay_is_idempotent_and_unload_flushes(tmp_path: Path) -> None:
    spill = tmp_path / "ledger-spill.jsonl"
    lines = [msgspec.json.encode(_record(f"spilled-{i}")) for i in range(5)]
    spill.write_bytes(b"\n".join([*lines, lines[0], lines[3]]) + b"\n")  # two spilled twice
    config = {
        "kernel": {"plugins": ["storage-sqlite", "ledger"], "data_dir": str(tmp_path)},
        "plugins": {"ledger": {"flush_interval": 60, "batch_size": 100}},
    }
    async with make_kernel(config=config) as kernel:
        store = kernel.services.get(UsageStore)
        ledger = kernel.services.get(LedgerStatus)
        with anyio.fail_after(5):
            while spill.exists():
                await anyio.sleep(0.01)
        everything = UsageFilter(limit=1000)
        assert sorted(r.request_id for r in await store.query_usage(everything)) == [f"spilled-{i}" for i in range(5)]
        await store.write_usage([_record("spilled-1")])  # and a replay of what is stored changes nothing
        assert len(await store.query_usage(everything)) == 5

        for i in range(30):
            kernel.bus.publish_nowait(_record(f"live-{i}"))  # flush_interval 60: all still buffered
        await kernel.unload("ledger")
        assert len(await store.query_usage(everything)) == 35
        counters = ledger.counters()
        assert (counters.received, counters.written, counters.spilled, counters.replayed) == (30, 30, 0, 7)
