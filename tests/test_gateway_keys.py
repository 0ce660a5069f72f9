"""Virtual keys end to end: storage-sqlite + auth-keys + api-openai over real HTTP.

* two kernels sharing one SQLite file (as two workers do): a revoke on one reaches the other
  within a second;
* the budget race: 50 concurrent requests whose usage would sum to 5× a budget are admitted for
  at most the budget plus one request's reservation;
* ``sira keys create|list|rotate|revoke`` as subprocesses against a running ``sira serve``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from sira_auth_keys.testing import Admin, chat, gateway_factory

from sira_kernel.testing import ServerThread, free_port

SIRA = [sys.executable, "-m", "sira_kernel"]


def test_a_revoke_reaches_a_second_kernel_on_the_same_store_within_a_second(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    with ServerThread(gateway_factory(db)) as one, ServerThread(gateway_factory(db)) as two, Admin(one) as admin:
        tenant = admin.tenant("shared")
        key, record = admin.key(tenant, name="everywhere")
        assert chat(one, key).status_code == 200 and chat(two, key).status_code == 200  # cached on both
        admin.ok("POST", f"/keys/{record['id']}/revoke")
        revoked = time.monotonic()
        assert chat(one, key).status_code == 401  # the worker that revoked forgets at once
        while chat(two, key).status_code != 401:
            assert time.monotonic() - revoked < 1.0, "the second kernel still accepts the revoked key"
            time.sleep(0.02)
        assert time.monotonic() - revoked < 1.0
        # and a key created on one is usable on the other at once (a miss reads the store)
        fresh, _ = admin.key(tenant, name="fresh")
        assert chat(two, fresh).status_code == 200


def test_budget_race_admits_at_most_the_budget_plus_one_reservation(tmp_path: Path) -> None:
    price = 0.001  # USD a token
    content = "word " * 100  # the fake provider counts 100 prompt + 5 completion tokens: 0.105 USD
    actual = 105 * price
    budget = 50 * actual / 5  # 50 requests would spend 5x the budget
    factory = gateway_factory(tmp_path / "race.db", price=price, fake={"delay": 0.3},
                              auth={"estimate_completion_tokens": 5})
    with ServerThread(factory) as server, Admin(server) as admin:
        tenant = admin.tenant("racing")
        key, record = admin.key(tenant, name="racer", limits={"budget_usd": budget, "budget_period": "monthly"})
        body = {"model": "fake-1", "messages": [{"role": "user", "content": content}]}
        estimate = (len(httpx.Request("POST", "http://x", json=body).content) / 4 + 5) * price

        async def race() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30,
                                         limits=httpx.Limits(max_connections=50)) as client:
                headers = {"authorization": f"Bearer {key}"}
                responses: list[httpx.Response] = []

                async def one() -> None:
                    responses.append(await client.post("/v1/chat/completions", json=body, headers=headers))

                async with anyio.create_task_group() as tg:
                    for _ in range(50):
                        tg.start_soon(one)
                return responses

        responses = anyio.run(race)
        admitted = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        assert admitted and refused
        assert {r.status_code for r in refused} == {429}
        assert all(r.json()["error"]["code"] == "budget_exceeded" and "retry-after" in r.headers for r in refused)
        spent = sum(r.json()["usage"]["total_tokens"] for r in admitted) * price
        assert spent <= budget + estimate, (len(admitted), spent, budget, estimate)
        assert len(admitted) == int(budget // estimate)  # every reservation that fitted, and no more
        deadline = time.monotonic() + 3
        while (view := admin.ok("GET", f"/budgets/key/{record['id']}"))["reserved_usd"] > 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert view["spent_usd"] == pytest.approx(spent)


# -- sira keys, against sira serve ---------------------------------------------------------------------


MASTER = "sk-cli-keys-master-0123456789"
ENV = {"SIRA_MASTER_KEY": MASTER, "SIRA_KEY_SECRET": "cli-keys-hash-secret-0123456789"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, int]]:
    tmp = tmp_path_factory.mktemp("keys-cli")
    port, admin_port = free_port(), free_port()
    config = tmp / "kernel.toml"
    config.write_text(textwrap.dedent(f"""
        [kernel]
        plugins = ["storage-sqlite", "auth-keys", "api-openai", "provider-mock"]
        data_dir = "{tmp / 'data'}"

        [server]
        port = {port}
        admin_port = {free_port()}
        master_key = "${{SIRA_MASTER_KEY}}"

        [logging]
        level = "warning"

        [plugins.auth-keys]
        hash_secret = "${{SIRA_KEY_SECRET}}"

        [plugins.provider-mock]
        models = ["mock-1"]
    """))
    env = os.environ | ENV
    process = subprocess.Popen([*SIRA, "serve", "--config", str(config), "--admin-port", str(admin_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "sira serve did not start"
            time.sleep(0.1)
        yield config, port, admin_port
    finally:
        process.terminate()
        process.communicate(timeout=30)


def keys(served: tuple[Path, int, int], *args: str, admin_key: str | None = None) -> subprocess.CompletedProcess[str]:
    config, _, admin_port = served
    env = os.environ | ENV
    if admin_key is not None:
        env["SIRA_ADMIN_KEY"] = admin_key
    return subprocess.run([*SIRA, "keys", *args, "--config", str(config), "--admin-port", str(admin_port)],
                          capture_output=True, text=True, env=env, timeout=60)


def call(served: tuple[Path, int, int], key: str) -> int:
    body = {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"http://127.0.0.1:{served[1]}/v1/chat/completions", json=body,
                          headers={"authorization": f"Bearer {key}"}, timeout=10)
    return response.status_code


def test_sira_keys_create_list_rotate_revoke(served: tuple[Path, int, int]) -> None:
    admin = httpx.Client(base_url=f"http://127.0.0.1:{served[2]}/api/v1", headers={"authorization": f"Bearer {MASTER}"})
    tenant = admin.post("/tenants", json={"name": "cli"}).json()["id"]

    created = keys(served, "create", "--name", "ci", "--tenant", tenant, "--models", "mock-1", "--rpm", "60")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sk-sira-") and "\n" not in key and "shown once" in created.stderr
    key_id = created.stderr.split()[1]
    assert call(served, key) == 200

    listed = keys(served, "list", "--tenant", tenant)
    assert listed.returncode == 0 and key_id in listed.stdout and key[:12] in listed.stdout
    assert key not in listed.stdout

    rotated = keys(served, "rotate", key_id, "--grace", "0")
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.strip()
    assert new_key.startswith("sk-sira-") and new_key != key
    assert call(served, new_key) == 200
    deadline = time.monotonic() + 1.5
    while call(served, key) != 401:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    new_id = rotated.stderr.split()[1]
    revoked = keys(served, "revoke", new_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert call(served, new_key) == 401

    missing = keys(served, "revoke", "key_doesnotexist")
    assert missing.returncode == 2 and "404" in missing.stderr and "Traceback" not in missing.stderr

    # a tenant admin's key drives the CLI too, within its rights
    boss = keys(served, "create", "--name", "boss", "--tenant", tenant, "--role", "tenant-admin", "--json")
    boss_key = httpx.Response(200, content=boss.stdout).json()["key"]
    escalate = keys(served, "create", "--name", "root", "--role", "admin", admin_key=boss_key)
    assert escalate.returncode == 2 and "403" in escalate.stderr
    mine = keys(served, "create", "--name", "mine", admin_key=boss_key)
    assert mine.returncode == 0 and call(served, mine.stdout.strip()) == 200
    admin.close()
