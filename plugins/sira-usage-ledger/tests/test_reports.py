"""Reports: strict query parsing, CSV rendering, and the admin endpoints in-process (ASGI)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from ledger_helpers import MemoryUsageStore, record, store_plugin
from sira_usage_ledger import BadParameter, LedgerPlugin, parse_query, parse_time
from sira_usage_ledger._reports import DETAILED_PARAMS, SUMMARY_PARAMS, to_csv

from sira_kernel import AuthenticationFailed, Principal, RequestInfo, hookimpl
from sira_kernel.kernel import Kernel
from sira_kernel.logs import register_secret
from sira_kernel.testing import FakeProviderPlugin, make_kernel

MASTER = "sk-ledger-reports-master-0123456789"
T0 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
DAY = 86_400.0

# -- parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1795000000", 1795000000.0),
        ("1795000000.25", 1795000000.25),
        ("0", 0.0),
        ("2026-11-01", T0),
        ("2026-11-01T00:00:00Z", T0),
        ("2026-11-01T01:00:00+01:00", T0),
        ("2026-11-01T00:00:00", T0),
        ("2026-11-01 12:00:00.500", T0 + 43_200.5),
    ],
)
def test_times_are_unix_seconds_or_iso_8601(value: str, expected: float) -> None:
    assert parse_time("since", value) == expected


@pytest.mark.parametrize(
    "value", ["", "yesterday", "-5", "1e9", "nan", "inf", " 1795000000", "1969-12-31", "2026-13-01", "0x10",
              "1" * 13],
)
def test_bad_times_are_refused(value: str) -> None:
    with pytest.raises(BadParameter) as caught:
        parse_time("until", value)
    assert caught.value.param == "until" and caught.value.message.startswith("until: ")


def test_a_valid_query() -> None:
    query = parse_query(
        [("since", "2026-11-01"), ("until", "1795000000"), ("tenant", "acme"), ("key", "key-7"),
         ("model", "mock-1"), ("provider", "provider-mock"), ("team", "red"), ("group_by", "tenant, key,day"),
         ("format", "csv")],
        SUMMARY_PARAMS,
    )
    assert query.group_by == ("tenant", "key", "day") and query.format == "csv"
    where = query.where
    assert (where.since, where.until) == (T0, 1795000000.0)
    assert (where.tenant, where.principal, where.model, where.provider, where.team) == (
        "acme", "key-7", "mock-1", "provider-mock", "red")
    detailed = parse_query([("limit", "10000"), ("offset", "20")], DETAILED_PARAMS)
    assert (detailed.where.limit, detailed.where.offset, detailed.format) == (10000, 20, "json")
    assert parse_query([], DETAILED_PARAMS).where.limit == 100


@pytest.mark.parametrize(
    ("items", "allowed", "param"),
    [
        ([("colour", "red")], SUMMARY_PARAMS, "colour"),
        ([("limit", "5")], SUMMARY_PARAMS, "limit"),  # the summary is not paged
        ([("group_by", "tenant")], DETAILED_PARAMS, "group_by"),
        ([("tenant", "a"), ("tenant", "b")], SUMMARY_PARAMS, "tenant"),
        ([("tenant", "")], SUMMARY_PARAMS, "tenant"),
        ([("model", "x" * 257)], SUMMARY_PARAMS, "model"),
        ([("key", "a\nb")], SUMMARY_PARAMS, "key"),
        ([("group_by", "tenant,colour")], SUMMARY_PARAMS, "group_by"),
        ([("group_by", "principal")], SUMMARY_PARAMS, "group_by"),
        ([("group_by", "model,model")], SUMMARY_PARAMS, "group_by"),
        ([("group_by", "tenant,")], SUMMARY_PARAMS, "group_by"),
        ([("limit", "0")], DETAILED_PARAMS, "limit"),
        ([("limit", "10001")], DETAILED_PARAMS, "limit"),
        ([("limit", "ten")], DETAILED_PARAMS, "limit"),
        ([("limit", "-1")], DETAILED_PARAMS, "limit"),
        ([("offset", "-1")], DETAILED_PARAMS, "offset"),
        ([("offset", "1.5")], DETAILED_PARAMS, "offset"),
        ([("format", "xml")], DETAILED_PARAMS, "format"),
        ([("since", "2026-11-02"), ("until", "2026-11-01")], SUMMARY_PARAMS, "until"),
        ([("since", "soon")], SUMMARY_PARAMS, "since"),
    ],
)
def test_bad_queries_name_the_field(items: list[tuple[str, str]], allowed: frozenset[str], param: str) -> None:
    with pytest.raises(BadParameter) as caught:
        parse_query(items, allowed)
    assert caught.value.param == param


def test_csv_quotes_neutralises_formulas_and_writes_nulls() -> None:
    rows = [{"a": 'say "hi", then\nleave', "b": None, "c": True, "d": 1.5},
            {"a": "=HYPERLINK(\"http://x\")", "b": "-1", "c": False, "d": 2}]
    text = to_csv(["a", "b", "c", "d"], rows)
    assert text.startswith("a,b,c,d\r\n")
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed == [["a", "b", "c", "d"], ['say "hi", then\nleave', "", "true", "1.5"],
                      ["'=HYPERLINK(\"http://x\")", "'-1", "false", "2"]]


# -- the endpoints -------------------------------------------------------------------------------------


def seeded_store() -> MemoryUsageStore:
    store = MemoryUsageStore()
    rows = [
        record("r1", timestamp=T0 + 10, tenant="acme", principal="key-a", model="mock-1", cost_usd=0.01),
        record("r2", timestamp=T0 + 20, tenant="acme", principal="key-a", model="mock-1", status=500,
               error_code="upstream_error", cost_usd=0.02, latency_ms=30.0),
        record("r3", timestamp=T0 + 30, tenant="acme", principal="key-b", model="mock-large", cost_usd=0.5),
        record("r4", timestamp=T0 + DAY + 5, tenant="globex", principal="key-g", model="mock-1",
               provider="other", upstream_model="m1", cost_usd=None),
        # text a client chose: a formula, a comma, and a secret pasted into the model name
        record("r5", timestamp=T0 + DAY + 6, tenant="globex", principal="key-g", model=f"=1+1,{MASTER}",
               status=404, error_code="model_not_found", provider=None, upstream_model=None, attempts=0),
    ]
    store.rows = {r.request_id: r for r in rows}
    return store


class TenantKeys:
    """Authenticates ``tk-<tenant>`` tokens as a tenant's key without the admin role; with
    ``delegate`` it also votes allow on the admin listener (a plugin admitting tenant admins)."""

    sira_api = 1
    delegate = False

    @hookimpl
    def sira_authenticate(self, request: RequestInfo) -> Principal | None:
        token = request.bearer_token
        if token is None or not token.startswith("tk-"):
            return None
        if token == "tk-bad":
            raise AuthenticationFailed("unknown key")
        return Principal(id=f"key-{token[3:]}", kind="key", tenant=token[3:], roles=("tenant-admin",))

    @hookimpl
    def sira_authorize(self, principal: Principal, operation: str) -> bool | None:
        return True if self.delegate and operation == "admin" and principal.kind == "key" else None


class DelegatingKeys(TenantKeys):
    delegate = True


@asynccontextmanager
async def reports_kernel(tmp_path: Path, store: MemoryUsageStore, auth: type = TenantKeys) -> AsyncIterator[Kernel]:
    plugins = {"fake": FakeProviderPlugin, "store": store_plugin(store), "ledger": LedgerPlugin, "keys": auth}
    config: dict[str, Any] = {"kernel": {"data_dir": str(tmp_path)}, "server": {"master_key": MASTER}}
    async with make_kernel(plugins, config=config) as kernel:
        yield kernel


def client(kernel: Kernel, token: str | None = MASTER, listener: str = "admin") -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=kernel.snapshot.apps[listener])  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://sira", headers=headers)


@pytest.mark.anyio
async def test_summary_groups_filters_and_totals(tmp_path: Path) -> None:
    async with reports_kernel(tmp_path, seeded_store()) as kernel, client(kernel) as http:
        response = await http.get("/api/v1/reports/summary", params={"group_by": "tenant,model"})
        assert response.status_code == 200
        body = response.json()
        assert body["group_by"] == ["tenant", "model"] and body["truncated"] is False
        by_group = {(r["tenant"], r["model"]): r for r in body["rows"]}
        acme = by_group[("acme", "mock-1")]
        assert (acme["requests"], acme["errors"], acme["total_tokens"]) == (2, 1, 16)
        assert acme["cost_usd"] == pytest.approx(0.03) and acme["avg_latency_ms"] == pytest.approx(21.25)
        assert body["totals"]["requests"] == 5 and body["totals"]["errors"] == 2
        assert body["totals"]["cost_usd"] == pytest.approx(0.53)
        assert MASTER not in response.text

        one = (await http.get("/api/v1/reports/summary")).json()
        assert [r["requests"] for r in one["rows"]] == [5] and one["group_by"] == []

        keys = await http.get("/api/v1/reports/summary", params={"group_by": "key,status", "tenant": "acme"})
        assert {(r["key"], r["status"], r["requests"]) for r in keys.json()["rows"]} == {
            ("key-a", "200", 1), ("key-a", "500", 1), ("key-b", "200", 1)}
        assert keys.json()["filters"] == {"tenant": "acme"}

        days = await http.get("/api/v1/reports/summary", params={"group_by": "day", "since": "2026-11-02"})
        assert [(r["day"], r["requests"]) for r in days.json()["rows"]] == [("2026-11-02", 2)]

        window = await http.get("/api/v1/reports/summary",
                                params={"since": str(int(T0 + 20)), "until": "2026-11-01T00:00:30Z"})
        assert window.json()["totals"]["requests"] == 1  # since inclusive, until exclusive

        by_provider = await http.get("/api/v1/reports/summary", params={"provider": "other", "key": "key-g"})
        assert by_provider.json()["totals"]["requests"] == 1


@pytest.mark.anyio
async def test_summary_as_csv(tmp_path: Path) -> None:
    async with reports_kernel(tmp_path, seeded_store()) as kernel, client(kernel) as http:
        response = await http.get("/api/v1/reports/summary", params={"group_by": "model", "format": "csv"})
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        disposition = response.headers["content-disposition"]
        assert disposition.startswith('attachment; filename="sira-usage-summary-') and disposition.endswith('.csv"')
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert list(rows[0]) == ["model", "requests", "errors", "prompt_tokens", "completion_tokens",
                                 "total_tokens", "cost_usd", "avg_latency_ms"]
        models = {r["model"]: r for r in rows}
        assert models["mock-1"]["requests"] == "3" and models["mock-large"]["cost_usd"] == "0.5"
        assert models["'=1+1,[REDACTED]"]["requests"] == "1"
        assert MASTER not in response.text


@pytest.mark.anyio
async def test_detailed_pages_filters_and_exports(tmp_path: Path) -> None:
    async with reports_kernel(tmp_path, seeded_store()) as kernel, client(kernel) as http:
        first = (await http.get("/api/v1/reports/detailed", params={"limit": "2"})).json()
        assert [r["request_id"] for r in first["rows"]] == ["r5", "r4"]  # newest first
        assert (first["count"], first["next_offset"]) == (2, 2)
        last = (await http.get("/api/v1/reports/detailed", params={"limit": "2", "offset": "4"})).json()
        assert [r["request_id"] for r in last["rows"]] == ["r1"] and last["next_offset"] is None

        acme = (await http.get("/api/v1/reports/detailed", params={"tenant": "acme", "model": "mock-1"})).json()
        assert [(r["request_id"], r["status"], r["error_code"]) for r in acme["rows"]] == [
            ("r2", 500, "upstream_error"), ("r1", 200, None)]
        row = acme["rows"][1]
        assert row["key"] == "key-a" and row["deployment"] == "fake/fake-1"
        assert row["time"] == "2026-11-01T00:00:10.000Z" and row["attempt_log"] == []

        response = await http.get("/api/v1/reports/detailed", params={"format": "csv", "until": "2026-11-02"})
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert 'filename="sira-usage-detailed-' in response.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [r["request_id"] for r in rows] == ["r3", "r2", "r1"]
        assert rows[1]["status"] == "500" and rows[1]["stream"] == "false" and rows[2]["ttft_ms"] == ""

        globex = (await http.get("/api/v1/reports/detailed", params={"key": "key-g"})).json()
        assert globex["rows"][0]["model"] == "=1+1,[REDACTED]" and globex["rows"][0]["deployment"] is None


@pytest.mark.anyio
async def test_secrets_never_appear_in_rows(tmp_path: Path) -> None:
    register_secret("a-registered-secret")
    store = seeded_store()
    store.rows["r6"] = record("r6", tenant="a-registered-secret", model="Bearer abcdefghijkl")
    async with reports_kernel(tmp_path, store) as kernel, client(kernel) as http:
        for path in ("/api/v1/reports/summary?group_by=model", "/api/v1/reports/detailed",
                     "/api/v1/reports/detailed?format=csv", "/api/v1/reports/summary?group_by=model&format=csv"):
            text = (await http.get(path)).text
            assert "=1+1,[REDACTED]" in text
            for secret in (MASTER, "a-registered-secret", "abcdefghijkl"):
                assert secret not in text
        echoed = await http.get("/api/v1/reports/summary", params={"tenant": "a-registered-secret"})
        assert echoed.json()["filters"] == {"tenant": "[REDACTED]"}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/api/v1/reports/summary?group_by=password", "group_by"),
        ("/api/v1/reports/summary?since=yesterday", "since"),
        ("/api/v1/reports/summary?until=2026-01-01&since=2026-02-01", "until"),
        ("/api/v1/reports/detailed?limit=0", "limit"),
        ("/api/v1/reports/detailed?limit=100000", "limit"),
        ("/api/v1/reports/detailed?offset=-3", "offset"),
        ("/api/v1/reports/detailed?format=xlsx", "format"),
        ("/api/v1/reports/detailed?tenant=a&tenant=b", "tenant"),
        ("/api/v1/reports/detailed?sort=cost", "sort"),
    ],
)
async def test_bad_parameters_are_400s_naming_the_field(tmp_path: Path, path: str, param: str) -> None:
    async with reports_kernel(tmp_path, seeded_store()) as kernel, client(kernel) as http:
        response = await http.get(path)
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["param"], error["code"], error["type"]) == (param, "invalid_parameter", "invalid_request_error")
        assert error["message"].startswith(f"{param}: ")


@pytest.mark.anyio
async def test_only_admins_read_reports_and_only_on_the_admin_listener(tmp_path: Path) -> None:
    paths = ("/api/v1/reports/summary", "/api/v1/reports/detailed", "/api/v1/ledger")
    async with reports_kernel(tmp_path, seeded_store()) as kernel:
        for path in paths:
            async with client(kernel, token=None) as anonymous:
                assert (await anonymous.get(path)).status_code == 401
            async with client(kernel, token="sk-wrong-0123456789") as wrong:
                assert (await wrong.get(path)).status_code == 401
            async with client(kernel, token="tk-acme") as tenant:
                assert (await tenant.get(path)).status_code == 403
            async with client(kernel, listener="public") as public:
                assert (await public.get(path)).status_code == 404
            async with client(kernel) as admin:
                assert (await admin.get(path)).status_code == 200
                assert (await admin.post(path)).status_code == 405


@pytest.mark.anyio
async def test_delegated_admin_access_does_not_open_the_reports(tmp_path: Path) -> None:
    async with reports_kernel(tmp_path, seeded_store(), auth=DelegatingKeys) as kernel:
        async with client(kernel, token="tk-acme") as tenant:
            assert (await tenant.get("/api/v1/no-such-route")).status_code == 404  # past the guard
            assert (await tenant.get("/api/v1/plugins")).status_code == 403  # kernel routes: admin role only
            for path in ("/api/v1/reports/summary", "/api/v1/reports/detailed", "/api/v1/ledger"):
                response = await tenant.get(path)
                assert response.status_code == 403
                assert response.json()["error"]["message"] == "usage reports need a principal with the admin role"


@pytest.mark.anyio
async def test_a_failing_store_is_a_503(tmp_path: Path) -> None:
    store = seeded_store()

    async def broken(*args: Any) -> Any:
        raise RuntimeError(f"disk on fire {MASTER}")

    async with reports_kernel(tmp_path, store) as kernel, client(kernel) as http:
        store.query_usage = broken  # type: ignore[method-assign]
        store.summarize_usage = broken  # type: ignore[method-assign]
        for path in ("/api/v1/reports/summary", "/api/v1/reports/detailed"):
            response = await http.get(path)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "store_failed" and MASTER not in response.text


@pytest.mark.anyio
async def test_the_ledger_endpoint_shows_the_counters(tmp_path: Path) -> None:
    async with reports_kernel(tmp_path, seeded_store()) as kernel, client(kernel) as http:
        body = (await http.get("/api/v1/ledger")).json()
        assert {"received", "written", "batches", "spilled", "replayed", "store_errors", "dropped", "pending",
                "store_failing", "queue"} <= set(body)
        assert body["queue"]["queue_size"] == 10_000 and body["store_failing"] is False
