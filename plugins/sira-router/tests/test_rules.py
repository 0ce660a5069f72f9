"""Routing rules: each condition, priorities, targets, complexity tiers, token counting."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest
from router_helpers import PRINCIPAL, ask, info, make_router, table
from sira_kernel import (
    ChatRequest,
    ConfigError,
    Message,
    Principal,
    RequestInfo,
    hookimpl,
)
from sira_kernel.accounting import TokenCounter
from sira_kernel.registrations import ServiceRegistrar
from sira_kernel.testing import FakeProviderPlugin, make_kernel

from sira_router import ComplexityConfig, RouterPlugin, complexity_score

pytestmark = pytest.mark.anyio

GROUPS = {
    "default": {"deployments": [{"provider": "a", "model": "m", "tags": ["us"]},
                                {"provider": "b", "model": "m", "tags": ["eu"]}]},
    "small": {"deployments": [{"provider": "a", "model": "small"}]},
    "medium": {"deployments": [{"provider": "a", "model": "medium"}]},
    "large": {"deployments": [{"provider": "b", "model": "large"}]},
}
ROUTES = table("a", "b", models=("m", "small", "medium", "large"))


def routed(rules: list[dict[str, Any]], request: ChatRequest, principal: Principal = PRINCIPAL,
           request_info: RequestInfo | None = None) -> tuple[str | None, str | None]:
    """(rule name, group name) for a request; (None, None) when the router leaves it to the kernel."""
    router = make_router(groups=GROUPS, rules=rules)
    route = router.route(request, principal, ROUTES, request_info or info())
    if route is None:
        return None, None
    plan = route.plan
    return (plan._rule.name if plan._rule else None), plan._group.name


def rule(name: str, target: str, priority: int = 0, **when: Any) -> dict[str, Any]:
    return {"name": name, "target": target, "priority": priority, "when": when}


def test_no_rule_matches_and_the_group_decides() -> None:
    assert routed([rule("r", "large", models=["other"])], ask("default")) == (None, "default")


@pytest.mark.parametrize(("when", "request_", "principal", "headers", "matches"), [
    ({"models": ["gpt-*"]}, ask("gpt-4o"), PRINCIPAL, {}, True),
    ({"models": ["gpt-*"]}, ask("claude"), PRINCIPAL, {}, False),
    ({"tenants": ["acme"]}, ask(), PRINCIPAL, {}, True),
    ({"tenants": ["other"]}, ask(), PRINCIPAL, {}, False),
    ({"keys": ["key-*"]}, ask(), PRINCIPAL, {}, True),
    ({"keys": ["admin"]}, ask(), PRINCIPAL, {}, False),
    ({"metadata": {"tier": "gold"}}, ask(), Principal(id="p", metadata={"tier": "gold"}), {}, True),
    ({"metadata": {"tier": "gold"}}, ask(extra={"metadata": {"tier": "gold"}}), PRINCIPAL, {}, True),
    ({"metadata": {"tier": "gold"}}, ask(extra={"metadata": {"tier": "silver"}}), PRINCIPAL, {}, False),
    ({"headers": {"X-Route": "fast*"}}, ask(), PRINCIPAL, {"x-route": "faster"}, True),
    ({"headers": {"x-route": "fast"}}, ask(), PRINCIPAL, {}, False),
    ({"tools": True}, ask(tools=[{"type": "function", "function": {"name": "f"}}]), PRINCIPAL, {}, True),
    ({"tools": True}, ask(), PRINCIPAL, {}, False),
    ({"tools": False}, ask(), PRINCIPAL, {}, True),
    ({"images": True}, ChatRequest(model="g", messages=[Message("user", [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])]), PRINCIPAL, {}, True),
    ({"images": True}, ask(), PRINCIPAL, {}, False),
    ({"stream": True}, ask(stream=True), PRINCIPAL, {}, True),
    ({"stream": True}, ask(), PRINCIPAL, {}, False),
    ({"min_prompt_tokens": 100}, ask(text="word " * 400), PRINCIPAL, {}, True),
    ({"min_prompt_tokens": 100}, ask(text="hi"), PRINCIPAL, {}, False),
    ({"max_prompt_tokens": 100}, ask(text="hi"), PRINCIPAL, {}, True),
    ({"models": ["g"], "tenants": ["acme"], "tools": False}, ask(), PRINCIPAL, {}, True),
    ({"models": ["g"], "tenants": ["acme"], "tools": True}, ask(), PRINCIPAL, {}, False),
])
def test_conditions(when: dict[str, Any], request_: ChatRequest, principal: Principal, headers: dict[str, str],
                    matches: bool) -> None:
    result = routed([rule("r", "large", **when)], request_, principal, info(**headers))
    assert (result == ("r", "large")) is matches


def test_higher_priority_first_then_definition_order() -> None:
    rules = [rule("first", "small"), rule("second", "medium"), rule("urgent", "large", priority=9, tenants=["acme"])]
    assert routed(rules, ask()) == ("urgent", "large")
    assert routed(rules, ask(), Principal(id="p", tenant="other")) == ("first", "small")
    rules[0]["enabled"] = False
    assert routed(rules, ask(), Principal(id="p")) == ("second", "medium")


def test_targets_can_be_a_deployment_and_tags_narrow_a_group() -> None:
    router = make_router(groups=GROUPS, rules=[
        rule("direct", "b/special", models=["special"]),
        {"name": "eu", "target": "default", "tags": ["eu"], "when": {"tenants": ["acme"]}},
    ])
    route = router.route(ask("special"), PRINCIPAL, ROUTES, info())
    assert route is not None and route.deployments[0].provider == "b" and route.deployments[0].model == "special"
    route = router.route(ask("anything"), PRINCIPAL, ROUTES, info())
    assert route is not None and [d.provider for d in route.deployments] == ["b"]


@pytest.mark.parametrize(("bad", "message"), [
    ([rule("x", "nowhere")], "neither a group nor provider/model"),
    ([rule("x", "small"), rule("x", "large")], "two rules have this name"),
    ([{"name": "x", "type": "complexity"}], "needs tiers"),
    ([{"name": "x"}], "needs a target"),
    ([{"name": "x", "target": "default", "tags": ["mars"]}], "has the tags"),
])
def test_invalid_rules_are_refused(bad: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_router(groups=GROUPS, rules=bad)


def test_complexity_score_features() -> None:
    config = ComplexityConfig()
    trivial = ask(text="hi")
    assert complexity_score(trivial, 2, config) < 0.05
    code = ask(text="Why does this fail?\n```python\ndef f(x):\n    return x[0]\n```")
    assert 0.2 <= complexity_score(code, 30, config) <= 0.5
    hard = ChatRequest(model="auto", tools=[{"type": "function", "function": {"name": "run"}}], messages=[
        Message("user", "Prove step by step that it terminates, then optimize it:\n```\nwhile x: x -= 1\n```"),
        *[Message("assistant" if i % 2 else "user", "more") for i in range(12)],
    ])
    assert complexity_score(hard, 3000, config) > 0.95
    assert complexity_score(hard, 3000, ComplexityConfig(length_weight=0, reasoning_weight=0, code_weight=0,
                                                         tools_weight=0, turns_weight=0)) == 0.0


def test_complexity_rule_picks_a_tier() -> None:
    rules = [{"name": "smart", "type": "complexity", "when": {"models": ["auto"]}, "tiers": [
        {"target": "large"}, {"target": "small", "max_score": 0.2}, {"target": "medium", "max_score": 0.5},
    ]}]
    assert routed(rules, ask("auto", text="hi")) == ("smart", "small")
    assert routed(rules, ask("auto", text="Explain why this is slow:\n```sql\nSELECT * FROM t\n```")) == (
        "smart", "medium")
    hard = ask("auto", text="Prove step by step and derive the bound. " * 400,
               tools=[{"type": "function", "function": {"name": "f"}}])
    assert routed(rules, hard) == ("smart", "large")
    router = make_router(groups=GROUPS, rules=rules)
    answer = router.dry_run(ask("auto", text="hi"), PRINCIPAL)
    assert answer["rule"] == "smart" and answer["group"] == "small" and answer["complexity"] < 0.2


class CountingTokens:
    def count_text(self, model: str, text: str) -> int:
        return 1000

    def count_chat(self, request: ChatRequest) -> int:
        return 5000

    def is_exact(self, model: str) -> bool:
        return True


class TokenizerPlugin:
    sira_api = 1
    provides = ("TokenCounter",)

    @hookimpl
    def sira_register_services(self, register: ServiceRegistrar) -> None:
        register(TokenCounter, CountingTokens())


async def test_prompt_tokens_come_from_the_token_counter_service() -> None:
    config = {"plugins": {"a": {"models": ["m"]}, "router": {
        "groups": {"g": {"deployments": [{"provider": "a", "model": "m"}]},
                   "long": {"deployments": [{"provider": "a", "model": "long"}]}},
        "rules": [{"name": "long", "target": "long", "when": {"min_prompt_tokens": 4000}}],
    }}}
    plugins = {"a": FakeProviderPlugin, "tokenizer": TokenizerPlugin, "router": RouterPlugin}
    async with make_kernel(plugins, config=config) as kernel:
        request_info = RequestInfo(method="POST", path="/v1/chat/completions", headers={})
        await kernel.pipeline.chat(ask("g", text="short"), request_info)  # short, but the counter says 5000
        assert request_info.route == "a/long; attempts=1"
        await kernel.unload("tokenizer")
        await kernel.pipeline.chat(ask("g", text="short"), request_info)
        assert request_info.route == "a/m; attempts=1"
        router = kernel.plugins.handles["router"].instance.router
        assert [d.prompt_tokens for d in router.decision_log(2)] == [6, 5000]


async def test_header_rules_see_the_request_headers_through_the_pipeline() -> None:
    config = {"plugins": {"a": {"models": ["m"]}, "b": {"models": ["m"]}, "router": {
        "groups": {"g": {"deployments": [{"provider": "a", "model": "m"}]}},
        "rules": [{"name": "beta", "target": "b/m", "when": {"headers": {"x-channel": "beta"}}}],
    }}}
    async with make_kernel({"a": FakeProviderPlugin, "b": FakeProviderPlugin, "router": RouterPlugin},
                           config=config) as kernel:
        async def send(headers: dict[str, str]) -> str | None:
            request_info = RequestInfo(method="POST", path="/v1/chat/completions", headers=headers)
            await kernel.pipeline.chat(ask("g"), request_info)
            return request_info.route

        assert await send({"x-channel": "beta"}) == "b/m; attempts=1"
        assert await send({}) == "a/m; attempts=1"
        results: list[str | None] = []

        async def one(headers: dict[str, str]) -> None:
            results.append(await send(headers))

        async with anyio.create_task_group() as tg:  # concurrent requests keep their own headers
            for i in range(20):
                tg.start_soon(one, {"x-channel": "beta"} if i % 2 else {})
        assert sorted(results) == sorted(["b/m; attempts=1", "a/m; attempts=1"] * 10)


def test_rule_configs_round_trip_through_json() -> None:
    router = make_router(groups=GROUPS, rules=[rule("r", "large", models=["gpt-*"], min_prompt_tokens=3)])
    encoded = msgspec.json.encode(router.rule_configs())
    assert b'"min_prompt_tokens":3' in encoded
