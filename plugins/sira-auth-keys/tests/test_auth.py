"""Keys over real HTTP: lifecycle, hashing at rest, expiry, revoke, rotation, models and routes, limits, budgets."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sira_auth_keys import AuthKeysPlugin, KeyHasher
from sira_auth_keys.testing import MASTER, SECRET, Admin, chat

from sira_kernel import RequestInfo, UsageRecord
from sira_kernel.storage import UsageStore
from sira_kernel.testing import FakeProviderPlugin, ServerThread, make_kernel


def plugin(server: ServerThread) -> AuthKeysPlugin:
    instance = server.kernel.plugins.handles["auth-keys"].instance
    assert isinstance(instance, AuthKeysPlugin)
    return instance


def db_path(server: ServerThread) -> Path:
    return Path(server.kernel.config.plugins["storage-sqlite"]["path"])


def wait_for(check: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def tenant(admin: Admin) -> str:
    return admin.tenant("acme")


def test_key_lifecycle(server: ServerThread, admin: Admin, tenant: str) -> None:
    key, record = admin.key(tenant, name="ci", metadata={"owner": "ops"})
    assert record["prefix"] == key[:12] and record["status"] == "active" and "key_hash" not in record
    response = chat(server, key)
    assert response.status_code == 200, response.text
    shown = admin.ok("GET", f"/keys/{record['id']}")
    assert "key" not in shown and "key_hash" not in shown and shown["metadata"] == {"owner": "ops"}
    assert record["id"] in [k["id"] for k in admin.ok("GET", "/keys")["keys"]]
    renamed = admin.ok("PUT", f"/keys/{record['id']}", {"name": "ci-2"})
    assert renamed["name"] == "ci-2"
    assert chat(server, key).status_code == 200
    assert admin.ok("DELETE", f"/keys/{record['id']}")["status"] == "revoked"
    refused = chat(server, key)  # this worker forgets the key at once
    assert refused.status_code == 401 and refused.json()["error"]["message"] == "this API key was revoked"


def test_keys_are_stored_as_keyed_hashes_only(server: ServerThread, admin: Admin, tenant: str) -> None:
    key, record = admin.key(tenant, name="hashed")
    assert chat(server, key).status_code == 200
    with sqlite3.connect(db_path(server)) as connection:
        rows = connection.execute("SELECT key_hash, prefix FROM api_keys WHERE id = ?", (record["id"],)).fetchall()
        dump = "\n".join(connection.iterdump())
    assert rows == [(KeyHasher(SECRET)(key), key[:12])]
    assert key not in dump and key[12:] not in dump and SECRET not in dump
    for path in db_path(server).parent.glob("sira.db*"):
        data = path.read_bytes()
        assert key.encode() not in data and key[12:].encode() not in data and SECRET.encode() not in data


def test_credentials_not_ours_malformed_or_unknown(server: ServerThread, admin: Admin, tenant: str) -> None:
    auth = plugin(server).authenticator
    assert auth is not None
    loads = auth.loads
    for malformed in ("sk-sira-short", "sk-sira-" + "a" * 39 + "!", "sk-sira-" + "a" * 20 + "'--" + "a" * 17):
        response = chat(server, malformed)
        assert response.status_code == 401 and response.json()["error"]["message"] == "malformed API key"
    assert auth.loads == loads  # refused before any store lookup
    unknown = "sk-sira-" + "A" * 40
    for _ in range(3):
        response = chat(server, unknown)
        assert response.status_code == 401 and response.json()["error"]["message"] == "invalid API key"
    assert auth.loads == loads + 1  # the negative cache answers the repeats
    other = chat(server, "sk-other-0123456789abcdef")  # not ours: the master-key default answers
    assert other.status_code == 401 and other.json()["error"]["message"] == "invalid API key"
    assert chat(server, MASTER).status_code == 200


def test_expiry(server: ServerThread, admin: Admin, tenant: str) -> None:
    key, record = admin.key(tenant, name="short-lived", expires_in=0.6)
    assert chat(server, key).status_code == 200
    time.sleep(0.7)
    response = chat(server, key)
    assert response.status_code == 401 and response.json()["error"]["message"] == "this API key has expired"
    assert admin.ok("GET", f"/keys/{record['id']}")["status"] == "expired"
    assert admin("POST", "/keys", {"name": "past", "tenant_id": tenant, "expires_at": 1000.0}).status_code == 400


def test_rotation_keeps_the_old_key_for_the_grace_period(server: ServerThread, admin: Admin, tenant: str) -> None:
    old, record = admin.key(tenant, name="rotating", allowed_models=["fake-1"], limits={"rpm": 100})
    rotated = admin.ok("POST", f"/keys/{record['id']}/rotate", {"grace_seconds": 0.6}, status=201)
    new = rotated["key"]
    assert new != old and rotated["record"]["allowed_models"] == ["fake-1"]
    assert rotated["record"]["limits"]["rpm"] == 100
    assert rotated["previous"]["rotated_to"] == rotated["record"]["id"]
    assert rotated["previous"]["status"] == "rotating"
    assert chat(server, old).status_code == 200 and chat(server, new).status_code == 200
    time.sleep(0.7)
    assert chat(server, old).status_code == 401
    assert chat(server, new).status_code == 200
    again = admin("POST", f"/keys/{record['id']}/rotate", {})
    assert again.status_code == 409


def test_a_rotated_key_continues_its_predecessors_limits_and_budget(server: ServerThread, admin: Admin,
                                                                   tenant: str) -> None:
    old, record = admin.key(tenant, name="line", limits={"rpm": 3, "budget_usd": 1.0, "budget_period": "daily"})
    assert [chat(server, old).status_code for _ in range(2)] == [200, 200]
    rotated = admin.ok("POST", f"/keys/{record['id']}/rotate", {"grace_seconds": 0}, status=201)
    assert rotated["record"]["principal_id"] == record["id"] == rotated["previous"]["principal_id"]
    new = rotated["key"]
    assert chat(server, new).status_code == 200
    limited = chat(server, new)  # the same requests-per-minute bucket as the old key
    assert limited.status_code == 429 and f"key/{record['id']}" in limited.json()["error"]["message"]
    budget = admin.ok("GET", f"/budgets/key/{rotated['record']['id']}")
    assert budget["id"] == record["id"] and budget["spent_usd"] == pytest.approx(3 * 0.006)
    # nobody can forge a line: sira: metadata is reserved, and an update keeps the line
    reserved = admin("PUT", f"/keys/{rotated['record']['id']}", {"metadata": {"sira:lineage": "other"}})
    assert reserved.status_code == 400 and reserved.json()["error"]["param"] == "metadata"
    updated = admin.ok("PUT", f"/keys/{rotated['record']['id']}", {"metadata": {"team": "x"}})
    assert updated["principal_id"] == record["id"] and updated["metadata"]["team"] == "x"


def test_allowed_models(server: ServerThread, admin: Admin, tenant: str) -> None:
    key, _ = admin.key(tenant, name="models", allowed_models=["fake-1"])
    assert chat(server, key, "fake-1").status_code == 200
    denied = chat(server, key, "fake-2")
    assert denied.status_code == 403
    listed = httpx.get(f"{server.base_url}/v1/models", headers={"authorization": f"Bearer {key}"})
    assert [m["id"] for m in listed.json()["data"]] == ["fake-1"]


def test_allowed_routes_use_the_raw_path(server: ServerThread, admin: Admin, tenant: str) -> None:
    key, _ = admin.key(tenant, name="routes", allowed_routes=["/v1/chat/completions"])
    assert chat(server, key).status_code == 200
    headers = {"authorization": f"Bearer {key}"}
    embed = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": "fake-1-embed", "input": "x"},
                       headers=headers)
    assert embed.status_code == 403 and "route" in embed.json()["error"]["message"]
    assert httpx.get(f"{server.base_url}/v1/models", headers=headers).status_code == 403
    # api-openai also serves /api/v1/chat/completions: the same endpoint, another path, not allowed
    assert chat(server, key, path="/api/v1/chat/completions").status_code == 403
    # an admin listener request with this key fails too (routes apply everywhere)
    assert admin("GET", "/keys", key=key).status_code == 403


def test_requests_per_minute(server: ServerThread, admin: Admin, tenant: str) -> None:
    key, record = admin.key(tenant, name="rpm", limits={"rpm": 2})
    assert [chat(server, key).status_code for _ in range(2)] == [200, 200]
    limited = chat(server, key)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert f"key/{record['id']}" in limited.json()["error"]["message"]


def test_team_tokens_per_minute(server: ServerThread, admin: Admin, tenant: str) -> None:
    team = admin.team(tenant, "tpm-team", tpm=600)
    key, _ = admin.key(tenant, name="tpm", team_id=team)
    # the kernel's scheduler reserves the prompt estimate (317) + 256 completion tokens, then settles
    # with the 255 tokens the fake provider reports: the next request waits longer than the queue timeout
    prompt = "word " * 250
    assert chat(server, key, content=prompt).status_code == 200
    limited = chat(server, key, content=prompt)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert f"team/{team}" in limited.json()["error"]["message"]
    too_big = chat(server, key, max_tokens=700)
    assert too_big.status_code == 429 and "limit on team/" in too_big.json()["error"]["message"]


def test_concurrent_requests(server: ServerThread, admin: Admin, tenant: str) -> None:
    key, record = admin.key(tenant, name="one-at-a-time", limits={"max_concurrent": 1})
    provider = server.kernel.snapshot.route_table.providers["fake"]
    provider.delay = 0.5
    try:
        first: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: first.append(chat(server, key)))
        thread.start()
        ledger = plugin(server).ledger
        slot = ("principal", record["id"])
        wait_for(lambda: slot in ledger.counters and ledger.counters[slot].running == 1)
        second = chat(server, key)
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
        assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
        thread.join()
        assert first[0].status_code == 200
    finally:
        provider.delay = 0.0
    wait_for(lambda: ledger.counters[slot].running == 0)  # freed by the usage record
    assert chat(server, key).status_code == 200


def test_streams_hold_their_slot_until_they_end(server: ServerThread, admin: Admin, tenant: str) -> None:
    key, record = admin.key(tenant, name="streamer", limits={"max_concurrent": 1, "budget_usd": 10.0})
    provider = server.kernel.snapshot.route_table.providers["fake"]
    provider.delay = 0.1  # between words: the stream stays open for half a second
    try:
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"model": "fake-1", "messages": [{"role": "user", "content": "hi"}],
                                "stream": True}) as streamed:
            assert streamed.status_code == 200
            assert chat(server, key).status_code == 429  # the stream is still open
            body = streamed.read()
    finally:
        provider.delay = 0.0
    assert b"[DONE]" in body
    ledger = plugin(server).ledger
    slot = ("principal", record["id"])
    wait_for(lambda: ledger.counters[slot].running == 0)
    assert ledger.budgets[slot].spent == pytest.approx(0.006) and ledger.budgets[slot].reserved == 0
    assert chat(server, key).status_code == 200


def test_a_reloaded_plugin_keeps_serving_keys(server: ServerThread, admin: Admin, tenant: str) -> None:
    key, _ = admin.key(tenant, name="reload")
    assert chat(server, key).status_code == 200
    server.call(server.kernel.replace, "auth-keys")
    assert chat(server, key).status_code == 200
    assert admin("GET", "/keys").status_code == 200


def test_nothing_is_left_held(server: ServerThread) -> None:
    ledger = plugin(server).ledger
    wait_for(lambda: not ledger.holds)
    assert all(slot.running == 0 for slot in ledger.counters.values())
    assert all(budget.reserved == 0 for budget in ledger.budgets.values())


def test_key_budget(server: ServerThread, admin: Admin, tenant: str) -> None:
    # 0.001 USD a token; "hi" + the fake reply is 6 tokens: 0.006 a request, reserved as
    # 0.024 (the 62-byte body as 16 prompt tokens + 8 completion tokens): 5 requests fit in 0.05
    key, record = admin.key(tenant, name="budget", limits={"budget_usd": 0.05, "budget_period": "daily"})
    statuses = [chat(server, key).status_code for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2, statuses
    refused = chat(server, key)
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["code"] == "budget_exceeded"
    assert f"key '{record['id']}'" in error["message"] and "resets at" in error["message"]
    assert int(refused.headers["retry-after"]) >= 1  # the room comes back at the next UTC midnight
    view = admin.ok("GET", f"/budgets/key/{record['id']}")
    assert view["spent_usd"] == pytest.approx(0.03) and view["reserved_usd"] == 0
    assert view["resets_at"] > time.time() and view["period"] == "daily"


def test_a_team_budget_is_shared_by_its_keys(server: ServerThread, admin: Admin, tenant: str) -> None:
    team = admin.team(tenant, "budgeted", budget_usd=0.025, budget_period="weekly")
    first, _ = admin.key(tenant, name="first", team_id=team)
    second, _ = admin.key(tenant, name="second", team_id=team)
    assert chat(server, first).status_code == 200  # spent 0.006; each reservation is 0.024
    refused = chat(server, second)
    assert refused.status_code == 429 and f"team '{team}'" in refused.json()["error"]["message"]
    assert admin.ok("GET", f"/budgets/team/{team}")["spent_usd"] == pytest.approx(0.006)


def test_spend_recorded_by_other_workers_counts(server: ServerThread, admin: Admin, tenant: str) -> None:
    key, record = admin.key(tenant, name="shared-spend", limits={"budget_usd": 1.0})
    assert chat(server, key).status_code == 200
    elsewhere = UsageRecord(request_id="req-elsewhere-1", timestamp=time.time(), operation="chat",
                            principal=record["id"], principal_kind="key", tenant=tenant, model="fake-1",
                            total_tokens=1000, cost_usd=0.99)

    async def write() -> None:
        await server.kernel.services.get(UsageStore).write_usage([elsewhere])

    server.call(write)  # as the ledger of another worker would
    deadline = time.monotonic() + 3
    while chat(server, key).status_code != 429:  # the next spend refresh (0.2 s here) brings it in
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_disabled_tenant_stops_its_keys(server: ServerThread, admin: Admin) -> None:
    other = admin.tenant("to-disable")
    key, _ = admin.key(other, name="k")
    assert chat(server, key).status_code == 200
    admin.ok("PUT", f"/tenants/{other}", {"disabled": True})
    assert chat(server, key).status_code == 401
    admin.ok("PUT", f"/tenants/{other}", {"disabled": False})
    assert chat(server, key).status_code == 200


@pytest.mark.anyio
async def test_without_hash_secret_or_master_key_the_plugin_fails_clearly(tmp_path: Path) -> None:
    config = {"plugins": {"storage-sqlite": {"path": str(tmp_path / "x.db")}}}
    kernel = make_kernel({"auth-keys": AuthKeysPlugin, "fake": FakeProviderPlugin}, config,
                         enable=["storage-sqlite", "auth-keys", "fake"])
    async with kernel:
        info = {p.id: p for p in kernel.plugins.infos()}["auth-keys"]
        assert info.state == "failed" and "hash_secret" in (info.reason or "")
        assert "SIRA_KEY_SECRET" in (info.reason or "")
    short = {"plugins": {"storage-sqlite": {"path": str(tmp_path / "x.db")}, "auth-keys": {"hash_secret": "short"}}}
    kernel = make_kernel({"auth-keys": AuthKeysPlugin}, short, enable=["storage-sqlite", "auth-keys"])
    async with kernel:
        info = {p.id: p for p in kernel.plugins.infos()}["auth-keys"]
        assert info.state == "failed" and "at least 16 characters" in (info.reason or "")
        assert "short" not in (info.reason or "").replace("shorter", "")


@pytest.mark.anyio
async def test_the_master_key_is_the_fallback_secret(tmp_path: Path) -> None:
    config = {"server": {"master_key": MASTER}, "plugins": {"storage-sqlite": {"path": str(tmp_path / "y.db")}}}
    async with make_kernel({"auth-keys": AuthKeysPlugin}, config, enable=["storage-sqlite", "auth-keys"]) as kernel:
        instance = kernel.plugins.handles["auth-keys"].instance
        assert instance.hash_key("sk-sira-" + "a" * 40) == KeyHasher(MASTER)("sk-sira-" + "a" * 40)
        info = RequestInfo(method="POST", path="/v1/chat/completions", headers={})
        assert instance.sira_authenticate(info) is None  # no credential: not ours
