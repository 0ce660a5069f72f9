"""SQL injection payloads everywhere a client's text meets the storage layer.

Keys (``Authorization: Bearer`` and ``x-api-key``), ids in admin paths, query filters of reports,
the audit log and listings, and the JSON bodies of admin mutations all get the classic payloads.
Each answer must be a quick 4xx (or, for a filter, a 200 that matches nothing), and a dump of every
SQLite table before and after must be equal (the audit log and the usage ledger may only grow).
A payload that is legitimately stored (key metadata, a model name in the ledger) must come back
byte for byte as data.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import pytest

PAYLOADS = [
    "' OR '1'='1",
    "' OR 1=1 --",
    "'; DROP TABLE api_keys; --",
    "1; SELECT pg_sleep(5)",
    "1' AND randomblob(1000000000) --",
    '" OR ""="',
    "x' UNION SELECT key_hash, 1, 1 FROM api_keys --",
    "%' OR key_hash LIKE '%",
    "\\'; UPDATE api_keys SET role='admin'; --",
    "ключ-🔑-鍵-ünïcødé",
    "a\x00b' OR '1'='1",
    "A" * 5000,
    "sk-sira-' OR '1'='1",
    "sk-sira-" + "a" * 38 + "'--",
]
HEADER_SAFE = [p for p in PAYLOADS if "\x00" not in p]


@pytest.fixture(scope="module")
def world(gateway: Any) -> dict[str, Any]:
    """Something to steal or destroy: two tenants with teams, users, keys, usage and audit rows."""
    tenant = gateway.tenant("victim")
    other = gateway.tenant("bystander")
    team = gateway.team(tenant)
    user = gateway.user(tenant)
    key, record = gateway.key(tenant, team_id=team)
    gateway.key(other, role="tenant-admin")
    answer = gateway.chat(key)
    assert answer.status_code == 200, answer.text
    gateway.wait_usage([answer.headers["x-request-id"]])
    return {"tenant": tenant, "other": other, "team": team, "user": user, "key": key, "record": record}


def quick(call: Any, *args: Any, **kwargs: Any) -> Any:
    began = time.monotonic()
    response = call(*args, **kwargs)
    elapsed = time.monotonic() - began
    return response, elapsed


def check(results: list[tuple[str, int, float]], allowed: set[int], bound: float) -> None:
    wrong = [(what, status) for what, status, _ in results if status not in allowed]
    assert not wrong, wrong[:10]
    slow = [(what, round(elapsed, 2)) for what, _, elapsed in results if elapsed > bound]
    assert not slow, slow[:10]


def test_injection_in_api_keys_is_a_quick_401_and_changes_nothing(gateway: Any, world: Any, sec: Any) -> None:
    before = gateway.dump()
    results = []
    body = {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}
    anthropic = {"model": "mock-1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    for payload in HEADER_SAFE:
        raw = payload.encode()
        for header in ({"authorization": b"Bearer " + raw}, {"x-api-key": raw}, {"api-key": raw}):
            for listener, method, path, json in (
                ("public", "POST", "/v1/chat/completions", body),
                ("public", "GET", "/v1/models", None),
                ("public", "POST", "/v1/messages", anthropic),
                ("public", "POST", "/v1/embeddings", {"model": "mock-embed", "input": "x"}),
                ("admin", "GET", "/api/v1/keys", None),
                ("admin", "POST", "/api/v1/keys", {"name": "x", "tenant_id": world["tenant"]}),
            ):
                response, elapsed = quick(gateway.call, listener, method, path, None, headers=header, json=json)
                results.append((f"{listener} {method} {path} {header.keys()} {payload[:30]!r}",
                                response.status_code, elapsed))
    check(results, {401}, sec.QUICK)
    sec.assert_unchanged(before, gateway.dump())


@pytest.mark.parametrize("listener", ["public", "admin"])
def test_nul_and_control_bytes_in_a_key_never_authenticate(gateway: Any, listener: str, sec: Any) -> None:
    port = gateway.port(listener)
    path = b"/v1/models" if listener == "public" else b"/api/v1/keys"
    for header in (b"Authorization: Bearer a\x00b", b"Authorization: Bearer " + sec.MASTER.encode() + b"\x00",
                   b"x-api-key: \x00" + sec.MASTER.encode(), b"Authorization: Bearer \x7f\x1b[2J",
                   b"Authorization: Bearer " + "ключ".encode()):
        answer = sec.raw_request(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + header
                                 + b"\r\nConnection: close\r\n\r\n")
        assert sec.raw_status(answer) in (400, 401), (header, answer[:200])


def object_routes(gateway: Any) -> list[Any]:
    return [r for r in gateway.routes("admin") if r.params]


def test_injection_in_admin_path_ids_is_a_quick_4xx_and_changes_nothing(gateway: Any, world: Any, sec: Any) -> None:
    routes = object_routes(gateway)
    assert {"/api/v1/keys/{object_id}", "/api/v1/plugins/{plugin_id}/{action}",
            "/api/v1/budgets/{scope}/{object_id}", "/api/v1/rules/{name}"} <= {r.path for r in routes}
    before = gateway.dump()
    results = []
    for payload in PAYLOADS:
        segment = quote(payload, safe="")
        for route in routes:
            for method in route.methods:
                if route.owner == "router" and method == "PUT":
                    continue  # PUT /rules/{name} creates a rule of that name: names are data there
                for param in route.params:
                    values = {"scope": "key", "action": "load", "plugin_id": "provider-mock",
                              "object_id": world["record"]["id"], param: segment}
                    path = route.fill(values)
                    json = {"name": "renamed"} if method in ("POST", "PUT") else None
                    response, elapsed = quick(gateway.admin, method, path, json=json)
                    results.append((f"{method} {path[:80]}", response.status_code, elapsed))
    check(results, {400, 404, 405, 409, 422}, sec.QUICK)
    sec.assert_unchanged(before, gateway.dump())


REPORT_FILTERS = ("tenant", "team", "key", "model", "provider")


def test_injection_in_report_filters_matches_nothing(gateway: Any, world: Any, sec: Any) -> None:
    # Report filters are free text (a model name is whatever clients sent): a payload is a value to
    # compare with, so it matches no row. An injected OR would match every row.
    everything = gateway.ok("GET", "/api/v1/reports/summary")
    assert everything["totals"]["requests"] >= 1
    results = []
    for payload in PAYLOADS:
        for name in REPORT_FILTERS:
            for report in ("summary", "detailed"):
                response, elapsed = quick(gateway.admin, "GET", f"/api/v1/reports/{report}",
                                          params={name: payload})
                results.append((f"{report} {name}={payload[:30]!r}", response.status_code, elapsed))
                if response.status_code == 200:
                    data = response.json()
                    rows = data["rows"]
                    assert rows == [], (name, payload, rows[:2])
                    if report == "summary":
                        assert data["totals"]["requests"] == 0
        for name in ("since", "until", "group_by", "format", "limit", "offset", payload[:60] or "x"):
            for report in ("summary", "detailed"):
                response, elapsed = quick(gateway.admin, "GET", f"/api/v1/reports/{report}", params={name: payload})
                results.append((f"{report} {name[:20]!r}={payload[:30]!r}", response.status_code, elapsed))
                assert response.status_code == 400, (report, name, payload[:40], response.text[:200])
    check(results, {200, 400}, sec.QUICK)


def test_injection_in_listing_and_audit_filters_is_refused(gateway: Any, world: Any, sec: Any) -> None:
    before = gateway.dump()
    results = []
    for payload in PAYLOADS:
        for path, names in (
            ("/api/v1/keys", ("tenant_id", "team_id")),
            ("/api/v1/teams", ("tenant_id",)),
            ("/api/v1/users", ("tenant_id",)),
            ("/api/v1/budgets", ("tenant_id",)),
            ("/api/v1/audit", ("tenant_id", "actor", "since", "limit")),
            ("/api/v1/route/decision-log", ("limit",)),
            ("/api/v1/plugins/provider-mock/unload", ("drain_timeout",)),
        ):
            for name in names:
                method = "POST" if path.endswith("/unload") else "GET"
                response, elapsed = quick(gateway.admin, method, path, params={name: payload})
                results.append((f"{path} {name}={payload[:30]!r}", response.status_code, elapsed))
    check(results, {400}, sec.QUICK)
    sec.assert_unchanged(before, gateway.dump())
    assert "provider-mock" in gateway.ok("GET", "/api/v1/health")["providers"]


def mutation_bodies(world: Any, payload: str) -> list[tuple[str, str, Any]]:
    key_id, tenant, team = world["record"]["id"], world["tenant"], world["team"]
    return [
        ("POST", "/api/v1/tenants", {"name": payload}),
        ("PUT", f"/api/v1/tenants/{tenant}", {"name": payload}),
        ("POST", "/api/v1/teams", {"name": payload, "tenant_id": tenant}),
        ("POST", "/api/v1/teams", {"name": "t", "tenant_id": payload}),
        ("PUT", f"/api/v1/teams/{team}", {"name": payload}),
        ("POST", "/api/v1/users", {"email": payload, "tenant_id": tenant}),
        ("POST", "/api/v1/users", {"email": "a@b.example", "tenant_id": tenant, "team_id": payload}),
        ("PUT", f"/api/v1/users/{world['user']}", {"email": payload}),
        ("PUT", f"/api/v1/users/{world['user']}", {"role": payload}),
        ("POST", "/api/v1/keys", {"name": payload, "tenant_id": tenant}),
        ("POST", "/api/v1/keys", {"name": "k", "tenant_id": payload}),
        ("POST", "/api/v1/keys", {"name": "k", "tenant_id": tenant, "team_id": payload}),
        ("POST", "/api/v1/keys", {"name": "k", "tenant_id": tenant, "user_id": payload}),
        ("POST", "/api/v1/keys", {"name": "k", "tenant_id": tenant, "role": payload}),
        ("POST", "/api/v1/keys", {"name": "k", "tenant_id": tenant, "allowed_models": [payload]}),
        ("POST", "/api/v1/keys", {"name": "k", "tenant_id": tenant, "allowed_routes": [payload]}),
        ("POST", "/api/v1/keys", {"name": "k", "tenant_id": tenant, "metadata": {"sira:lineage": payload}}),
        ("POST", "/api/v1/keys", {"name": "k", "tenant_id": tenant, "limits": {"budget_period": payload}}),
        ("POST", "/api/v1/keys", {"name": "k", "tenant_id": tenant, "expires_at": payload}),
        ("POST", "/api/v1/keys", {"name": "k", "tenant_id": tenant, payload: 1}),
        ("PUT", f"/api/v1/keys/{key_id}", {"name": payload}),
        ("PUT", f"/api/v1/keys/{key_id}", {"team_id": payload}),
        ("PUT", f"/api/v1/keys/{key_id}", {"allowed_models": [payload]}),
        ("POST", f"/api/v1/keys/{key_id}/rotate", {"grace_seconds": payload}),
        ("POST", "/api/v1/rules", {"name": "r", "when": {payload: payload}}),
        ("POST", "/api/v1/route/breakers/reset", {"deployment": payload}),
    ]


def test_injection_in_admin_json_bodies_is_a_quick_400_and_changes_nothing(gateway: Any, world: Any,
                                                                            sec: Any) -> None:
    before = gateway.dump()
    rules = gateway.ok("GET", "/api/v1/rules")
    results = []
    for payload in PAYLOADS:
        for method, path, body in mutation_bodies(world, payload):
            response, elapsed = quick(gateway.admin, method, path, json=body)
            results.append((f"{method} {path} {str(body)[:60]}", response.status_code, elapsed))
    check(results, {400, 404}, sec.QUICK)
    sec.assert_unchanged(before, gateway.dump())
    assert gateway.ok("GET", "/api/v1/rules") == rules
    assert gateway.chat(world["key"]).status_code == 200  # the victim's key still works, unchanged


def test_payloads_stored_as_data_come_back_as_data(gateway: Any, world: Any, sec: Any) -> None:
    # Where text is legitimately stored (key metadata, the model name clients send), a payload is
    # a value: stored and returned byte for byte, with nothing else touched.
    tables_before = {t: len(rows) for t, rows in gateway.dump().items()}
    metadata = {f"k{i}": payload for i, payload in enumerate(PAYLOADS) if len(payload) < 1000}
    _, record = gateway.key(world["tenant"], metadata=metadata)
    assert gateway.ok("GET", f"/api/v1/keys/{record['id']}")["metadata"] == metadata
    ids = []
    for payload in PAYLOADS[:11]:
        response = gateway.chat(world["key"], model=payload)
        assert response.status_code == 404, response.text
        ids.append(response.headers["x-request-id"])
    gateway.wait_usage(ids)
    stored = {row[0] for row in gateway.rows(
        f"SELECT model FROM usage_records WHERE request_id IN ({','.join('?' * len(ids))})", *ids)}
    assert stored == set(PAYLOADS[:11])
    after = {t: len(rows) for t, rows in gateway.dump().items()}
    assert after["api_keys"] == tables_before["api_keys"] + 1
    assert after["tenants"] == tables_before["tenants"] and after["users"] == tables_before["users"]
