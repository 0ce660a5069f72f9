"""The plugin contract, config validation, the admin API (in-process ASGI), health and persistence."""

from __future__ import annotations

import importlib.metadata
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sira_kernel import Principal, RequestInfo, hookimpl
from sira_kernel.kernel import Kernel
from sira_kernel.testing import FakeProviderPlugin, make_kernel

import sira_router
from sira_router import RouterConfig, RouterPlugin, RouterState

pytestmark = pytest.mark.anyio

MASTER = "sk-router-master-0123456789"
DOCS = Path(__file__).resolve().parents[3] / "docs" / "routing.md"


def test_public_api_is_pinned() -> None:
    assert sira_router.__all__ == [
        "Breaker", "BreakerConfig", "BreakerState", "BreakerStore", "BudgetConfig", "ComplexityConfig",
        "DeploymentConfig", "GroupConfig", "LocalBreakers", "RetryBudget", "RouteAttempt", "RouteDecision",
        "Router", "RouterConfig", "RouterHealth", "RouterPlan", "RouterPlugin", "RouterState", "RuleConfig",
        "RuleTier", "RuleWhen", "classify", "complexity_score",
    ]


def test_entry_point_and_class_contract() -> None:
    [entry] = [e for e in importlib.metadata.entry_points(group="sira_kernel.plugins") if e.name == "router"]
    assert entry.load() is RouterPlugin
    assert RouterPlugin.sira_api == 1 and RouterPlugin.Config is RouterConfig
    assert RouterPlugin.provides == ("RouterState",)


def _config_keys(struct: type, prefix: str = "") -> list[str]:
    keys = []
    for field in msgspec.structs.fields(struct):
        keys.append(field.encode_name)
        kind = field.type
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            keys += _config_keys(kind)
    return keys


def test_every_config_key_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    structs = [RouterConfig, sira_router.GroupConfig, sira_router.DeploymentConfig, sira_router.BreakerConfig,
               sira_router.BudgetConfig, sira_router.ComplexityConfig, sira_router.RuleConfig,
               sira_router.RuleWhen, sira_router.RuleTier]
    missing = sorted({key for s in structs for key in _config_keys(s) if f"`{key}`" not in text})
    assert not missing, f"docs/routing.md does not document: {missing}"


@pytest.mark.parametrize(("router", "reason"), [
    ({"groups": {"g": {"deployments": []}}}, "needs at least one deployment"),
    ({"groups": {"g": {"deployments": [{"provider": "a", "model": "m"}], "fallbacks": ["nope"]}}},
     "groups.g.fallbacks: no group named 'nope'"),
    ({"groups": {"g": {"deployments": [{"provider": "a", "model": "m"}], "fallbacks_on": {"context_window": ["x"]}}}},
     "fallbacks_on.context_window: no group named 'x'"),
    ({"groups": {"g": {"deployments": [{"provider": "a", "model": "m"}], "aliases": ["h"]},
                 "h": {"deployments": [{"provider": "a", "model": "m"}]}}}, "'h' is already a group or alias"),
    ({"groups": {"g": {"deployments": [{"provider": "a", "model": "m", "rpm": 5}]},
                 "h": {"deployments": [{"provider": "a", "model": "m", "rpm": 6}]}}}, "a deployment has one limit"),
    ({"groups": {"g": {"deployments": [{"provider": "a", "model": "m"}], "strategy": "fastest"}}}, "strategy"),
    ({"rules": [{"name": "r", "target": "nowhere"}]}, "neither a group nor provider/model"),
])
async def test_a_bad_config_fails_the_plugin_with_a_reason(router: dict[str, Any], reason: str) -> None:
    config = {"plugins": {"a": {"models": ["m"]}, "router": router}}
    async with make_kernel({"a": FakeProviderPlugin, "router": RouterPlugin}, config=config) as kernel:
        [info] = [p for p in kernel.plugins.infos() if p.id == "router"]
        assert info.state == "failed" and info.reason is not None and reason in info.reason
        assert [p.state for p in kernel.plugins.infos() if p.id == "a"] == ["active"]


class KeyAuthPlugin:
    """Callers with ``sk-user-…`` are ordinary keys (kind "key"), not the master."""

    sira_api = 1

    @hookimpl
    def sira_authenticate(self, request: RequestInfo) -> Principal | None:
        token = request.bearer_token
        if token and token.startswith("sk-user-"):
            return Principal(id=token, kind="key")
        return None


GROUPS = {
    "g": {"deployments": [{"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}], "fallbacks": ["h"]},
    "h": {"deployments": [{"provider": "b", "model": "m"}]},
}


def _kernel(**router: Any) -> Kernel:
    config = {"server": {"master_key": MASTER},
              "plugins": {"a": {"models": ["m"]}, "b": {"models": ["m"]}, "router": {"groups": GROUPS, **router}}}
    return make_kernel({"a": FakeProviderPlugin, "b": FakeProviderPlugin, "auth": KeyAuthPlugin,
                        "router": RouterPlugin}, config=config)


@pytest.fixture
async def kernel() -> AsyncIterator[Kernel]:
    async with _kernel() as k:
        yield k


def _client(kernel: Kernel, token: str | None = MASTER, listener: str = "admin",
            prefix: str = "/api/v1") -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=kernel.snapshot.apps[listener])  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url=f"http://gateway{prefix}", headers=headers)


@pytest.mark.parametrize("listener", ["admin", "public"])
async def test_admin_routes_need_the_master_principal(listener: str) -> None:
    async with _kernel(admin_listener=listener) as kernel:
        for token, status in [(None, 401), ("sk-user-1234", 403), ("sk-wrong-0000", 401), (MASTER, 200)]:
            async with _client(kernel, token, listener) as client:
                for path in ("/rules", "/route/decision-log", "/route/breakers", "/route/groups"):
                    response = await client.get(path)
                    assert response.status_code == status, (token, path)
                    if status != 200:
                        assert "error" in response.json()
        other = "public" if listener == "admin" else "admin"
        async with _client(kernel, MASTER, other) as client:
            assert (await client.get("/rules")).status_code == 404


async def test_rules_crud(kernel: Kernel) -> None:
    async with _client(kernel) as client:
        assert (await client.get("/rules")).json() == {"rules": []}
        created = await client.post("/rules", json={"name": "r1", "target": "h", "when": {"tenants": ["acme"]}})
        assert created.status_code == 201 and created.json()["rule"]["target"] == "h"
        assert (await client.post("/rules", json={"name": "r1", "target": "h"})).status_code == 409
        bad = await client.post("/rules", json={"name": "r2", "target": "nowhere"})
        assert bad.status_code == 400 and "neither a group" in bad.json()["error"]["message"]
        typo = await client.post("/rules", json={"name": "r2", "target": "h", "whenn": {}})
        assert typo.status_code == 400
        replaced = await client.put("/rules/r1", json={"target": "g", "priority": 3})
        assert replaced.status_code == 200 and replaced.json()["rule"] == (await client.get("/rules/r1")).json()["rule"]
        assert (await client.put("/rules/r3", json={"target": "b/m"})).status_code == 201
        mismatch = await client.put("/rules/r3", json={"name": "other", "target": "h"})
        assert mismatch.status_code == 400
        assert [r["name"] for r in (await client.get("/rules")).json()["rules"]] == ["r1", "r3"]
        assert (await client.delete("/rules/r1")).status_code == 204
        assert (await client.delete("/rules/r1")).status_code == 404
        assert (await client.get("/rules/r1")).status_code == 404
        assert [r.name for r in kernel.services.get(RouterState).rule_configs()] == ["r3"]


async def test_rules_test_endpoint_dry_runs_a_request(kernel: Kernel) -> None:
    async with _client(kernel) as client:
        await client.post("/rules", json={"name": "tools", "target": "h", "when": {"tools": True,
                                                                                   "metadata": {"app": "bot"}}})
        body = {"model": "g", "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}], "metadata": {"app": "bot"}}
        answer = (await client.post("/rules/test", json=body)).json()
        assert answer["rule"] == "tools" and answer["group"] == "h"
        assert answer["deployments"] == [{"deployment": "b/m", "priority": 0, "weight": 1.0, "usable": True,
                                          "breaker": "closed"}]
        body.pop("tools")
        answer = (await client.post("/rules/test", json=body)).json()
        assert answer["rule"] is None and answer["group"] == "g" and answer["fallbacks"]["server"] == ["h"]
        assert (await client.post("/rules/test", json={"model": "g"})).status_code == 400


async def test_breakers_groups_and_decision_log_endpoints(kernel: Kernel) -> None:
    router = kernel.services.get(RouterState)
    info = RequestInfo(method="POST", path="/v1/chat/completions", headers={"authorization": f"Bearer {MASTER}"},
                       request_id="req-x")
    from sira_kernel import ChatRequest, Message

    for _ in range(3):
        await kernel.pipeline.chat(ChatRequest(model="g", messages=[Message("user", "hi")]), info)
    kernel.snapshot.providers["a"][0].fail = None
    router.upstreams["a/m"].breaker.failure(router.clock(), "rate_limit", retry_after=60.0)  # type: ignore[attr-defined]
    async with _client(kernel) as client:
        log = (await client.get("/route/decision-log", params={"limit": 2})).json()
        assert log["recorded"] == 3 and len(log["decisions"]) == 2
        assert log["decisions"][0]["request_id"] == "req-x" and log["decisions"][0]["principal"] == "master"
        assert (await client.get("/route/decision-log", params={"limit": "x"})).status_code == 400
        breakers = {b["deployment"]: b["state"] for b in (await client.get("/route/breakers")).json()["breakers"]}
        assert breakers["a/m"] == "open"
        groups = {g["name"]: g for g in (await client.get("/route/groups")).json()["groups"]}
        assert groups["g"]["chains"] == {"rate_limit": ["h"], "server": ["h"], "timeout": ["h"], "unavailable": ["h"]}
        assert [d["deployment"] for d in groups["g"]["deployments"]] == ["a/m", "b/m"]
        assert (await client.post("/route/breakers/reset", json={"deployment": "zz/m"})).status_code == 404
        reset = await client.post("/route/breakers/reset", json={"deployment": "a/m"})
        assert reset.status_code == 200 and reset.json()["reset"] == 1
        assert {b["deployment"]: b["state"] for b in reset.json()["breakers"]}["a/m"] == "closed"


async def test_health_reports_the_router_service_and_its_breakers(kernel: Kernel) -> None:
    router = kernel.services.get(RouterState)
    report = await kernel.health()
    [service] = [s for s in report.services if s.interface == "RouterState"]
    assert service.healthy and service.owner == "router"
    health = router.health()  # type: ignore[attr-defined]
    assert health and "0 not closed" in health.detail
    router.upstreams["a/m"].breaker.failure(router.clock(), "rate_limit", retry_after=60.0)  # type: ignore[attr-defined]
    health = router.health()  # type: ignore[attr-defined]
    assert health and re.search(r"1 not closed: a/m open", health.detail)
    for upstream in router.upstreams.values():  # type: ignore[attr-defined]
        upstream.breaker.failure(router.clock(), "rate_limit", retry_after=60.0)  # type: ignore[attr-defined]
    assert not router.health()  # type: ignore[attr-defined]
    assert not (await kernel.health()).ready


async def test_admin_changes_persist_in_the_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "rules.json"
    async with _kernel(rules_file=str(path), rules=[{"name": "from-config", "target": "h"}]) as kernel:
        async with _client(kernel) as client:
            assert (await client.post("/rules", json={"name": "added", "target": "g"})).status_code == 201
    assert [r["name"] for r in json.loads(path.read_text())["rules"]] == ["from-config", "added"]
    async with _kernel(rules_file=str(path)) as kernel:
        assert [r.name for r in kernel.services.get(RouterState).rule_configs()] == ["from-config", "added"]
    path.write_text("{not json")
    async with _kernel(rules_file=str(path)) as kernel:
        [info] = [p for p in kernel.plugins.infos() if p.id == "router"]
        assert info.state == "failed" and "rules_file" in (info.reason or "")


async def test_admin_api_can_be_moved_or_disabled() -> None:
    async with _kernel(admin_listener="none") as kernel:
        async with _client(kernel) as client:
            assert (await client.get("/rules")).status_code == 404
    async with _kernel(admin_prefix="/router/") as kernel:
        async with _client(kernel, prefix="/router") as client:
            assert (await client.get("/rules")).status_code == 200
