"""Strategies, measured over many routed requests driven in-process (the router called directly)."""

from __future__ import annotations

import heapq
from collections import Counter

import pytest
from router_helpers import PRINCIPAL, Clock, ask, info, make_router, route_once, table
from sira_kernel import (
    Deployment,
    ProviderUnavailable,
    RateLimited,
    RouteTable,
    UsageRecord,
)

from sira_router import Router

pytestmark = pytest.mark.anyio

N = 10_000


def _members(*specs: tuple[str, dict[str, object]]) -> list[dict[str, object]]:
    return [{"provider": name, "model": "m", **extra} for name, extra in specs]


async def test_weighted_shares_hold_within_two_percent() -> None:
    router = make_router(groups={"g": {"strategy": "weighted", "deployments": _members(
        ("a", {"weight": 5}), ("b", {"weight": 3}), ("c", {"weight": 2}), ("z", {"weight": 0}),
    )}})
    routes = table("a", "b", "c", "z")
    counts: Counter[str] = Counter()
    for _ in range(N):
        [deployment] = await route_once(router, routes)
        counts[deployment.provider] += 1
    for name, share in {"a": 0.5, "b": 0.3, "c": 0.2, "z": 0.0}.items():
        assert abs(counts[name] / N - share) < 0.02, counts


async def test_weighted_shares_among_the_usable_members_when_one_is_down() -> None:
    clock = Clock()
    router = make_router(clock, breaker={"consecutive_failures": 1}, groups={"g": {
        "retries": 0, "deployments": _members(("a", {"weight": 6}), ("b", {"weight": 3}), ("c", {"weight": 1})),
    }})
    routes = table("a", "b", "c")
    router.upstreams["a/m"].breaker.failure(clock(), "server")  # open
    counts: Counter[str] = Counter()
    for _ in range(N):
        [deployment] = await route_once(router, routes)
        counts[deployment.provider] += 1
    assert counts["a"] == 0
    assert abs(counts["b"] / N - 0.75) < 0.02 and abs(counts["c"] / N - 0.25) < 0.02


async def test_round_robin_takes_turns() -> None:
    router = make_router(groups={"g": {"strategy": "round_robin", "deployments": _members(("a", {}), ("b", {}),
                                                                                           ("c", {}))}})
    routes = table("a", "b", "c")
    order = [(await route_once(router, routes))[0].provider for _ in range(9)]
    assert order == ["a", "b", "c"] * 3


async def test_priorities_keep_traffic_on_the_best_tier_while_it_is_usable() -> None:
    clock = Clock()
    router = make_router(clock, groups={"g": {"deployments": _members(
        ("primary", {"priority": 0}), ("spare", {"priority": 1}),
    )}})
    routes = table("primary", "spare")
    assert {(await route_once(router, routes))[0].provider for _ in range(200)} == {"primary"}
    router.upstreams["primary/m"].breaker.failure(clock(), "rate_limit", retry_after=30)
    assert {(await route_once(router, routes))[0].provider for _ in range(200)} == {"spare"}


def _simulate(router: Router, routes: RouteTable, clock: Clock, service: dict[str, float],
              requests: int = 3000, gap: float = 0.004, broken: frozenset[str] = frozenset(),
              stream: bool = False) -> Counter[str]:
    """Open-loop arrivals every ``gap`` seconds; each deployment takes ``service[p]`` seconds (a
    broken one fails at once). Completions are reported when the fake clock passes them."""
    import anyio

    counts: Counter[str] = Counter()

    async def run() -> None:
        pending: list[tuple[float, int, object, Deployment, float]] = []
        for index in range(requests):
            clock.now += gap
            while pending and pending[0][0] <= clock.now:
                _, _, plan, deployment, took = heapq.heappop(pending)
                if deployment.provider in broken:
                    plan.report(deployment, ProviderUnavailable("down"), took, None)  # type: ignore[attr-defined]
                else:
                    plan.report(deployment, None, took, took if stream else None)  # type: ignore[attr-defined]
            route = router.route(ask(stream=stream), PRINCIPAL, routes, info())
            assert route is not None
            deployment = await route.plan.next(None, 60.0)
            assert deployment is not None
            counts[deployment.provider] += 1
            took = 0.0005 if deployment.provider in broken else service[deployment.provider]
            heapq.heappush(pending, (clock.now + took, index, route.plan, deployment, took))

    anyio.run(run)
    return counts


@pytest.mark.parametrize("strategy", ["least_busy", "latency"])
@pytest.mark.parametrize("stream", [False, True])
def test_least_busy_and_latency_prefer_the_healthy_fast_deployment(strategy: str, stream: bool) -> None:
    clock = Clock()
    router = make_router(clock, breaker={"consecutive_failures": 3, "cooldown": 2.0}, groups={"g": {
        "strategy": strategy, "deployments": _members(("fast", {}), ("slow", {}), ("broken", {})),
    }})
    counts = _simulate(router, table("fast", "slow", "broken"), clock, {"fast": 0.01, "slow": 0.2},
                       broken=frozenset({"broken"}), stream=stream)
    total = sum(counts.values())
    assert counts["fast"] / total > 0.9, counts
    assert counts["broken"] / total < 0.01, counts  # its breaker keeps it out after a few failures


async def test_latency_prefers_the_lower_ewma_and_explores_new_members() -> None:
    router = make_router(groups={"g": {"strategy": "latency", "deployments": _members(("a", {}), ("b", {}))}})
    routes = table("a", "b")
    # Both unmeasured at first: each gets tried; afterwards a (reported faster) wins.
    seen: Counter[str] = Counter()
    for _ in range(200):
        seen[(await route_once(router, routes, latency={"a": 0.05, "b": 0.5}))[0].provider] += 1
    assert seen["b"] >= 1 and seen["a"] > 190


async def test_cost_picks_the_cheapest_for_this_request() -> None:
    router = make_router(groups={"g": {"strategy": "cost", "deployments": _members(
        ("cheap_in", {"input_price": 0.1, "output_price": 10.0}),
        ("cheap_out", {"input_price": 5.0, "output_price": 0.5}),
        ("unpriced", {}),
    )}})
    routes = table("cheap_in", "cheap_out", "unpriced")
    long_prompt = ask(text="word " * 4000, max_tokens=10)
    short_prompt = ask(text="hi", max_tokens=2000)
    assert (await route_once(router, routes, long_prompt))[0].provider == "cheap_in"
    assert (await route_once(router, routes, short_prompt))[0].provider == "cheap_out"
    [decision, *_] = router.decision_log()
    assert decision.strategy == "cost" and decision.attempts[0].score == pytest.approx(2000 * 0.5 / 1e6, rel=0.2)


async def test_cost_reads_missing_prices_from_the_price_book() -> None:
    class Book:
        def cost(self, record: UsageRecord) -> float | None:
            per_million = {"x": (1.0, 1.0), "y": (0.2, 0.2)}[record.provider or ""]
            return (record.prompt_tokens * per_million[0] + record.completion_tokens * per_million[1]) / 1e6

    router = make_router(groups={"g": {"strategy": "cost", "deployments": _members(("x", {}), ("y", {}))}})
    router.price_book = Book
    routes = table("x", "y")
    assert {(await route_once(router, routes))[0].provider for _ in range(20)} == {"y"}
    assert [m.input_price for m in router.named["g"].members] == [1.0, 0.2]


async def test_usage_based_keeps_each_deployment_under_its_rpm() -> None:
    clock = Clock()
    limits = {"big": 120, "small": 30}
    router = make_router(clock, groups={"g": {"strategy": "usage", "retries": 0, "deployments": _members(
        ("big", {"rpm": limits["big"]}), ("small", {"rpm": limits["small"]}),
    )}})
    routes = table("big", "small")
    per_second: dict[str, list[int]] = {"big": [], "small": []}
    limited = 0
    for _ in range(240):  # four minutes at 4 requests a second: well above the total of 150/min
        sent: Counter[str] = Counter()
        for _ in range(4):
            try:
                [deployment] = await route_once(router, routes)
            except RateLimited as exc:
                limited += 1
                assert exc.status == 429 and exc.retry_after is not None
            else:
                sent[deployment.provider] += 1
        for name in per_second:
            per_second[name].append(sent[name])
        clock.advance(1.0)
    for name, counts in per_second.items():
        windows = [sum(counts[start:start + 60]) for start in range(len(counts) - 59)]
        assert max(windows) <= limits[name], (name, max(windows))  # no 60-second window over the limit
        assert windows[-1] >= 0.85 * limits[name], (name, windows[-1])  # and the capacity is used
    assert limited > 0


async def test_usage_based_charges_tokens_from_usage_records() -> None:
    clock = Clock()
    router = make_router(clock, groups={"g": {"strategy": "usage", "deployments": _members(
        ("a", {"tpm": 1000}), ("b", {"tpm": 1000}),
    )}})
    routes = table("a", "b")
    record = UsageRecord(request_id="r", timestamp=0.0, operation="chat", principal="p", principal_kind="key",
                         provider="a", upstream_model="m", total_tokens=5000)
    await router.observe_usage(record)  # a is far over its tokens per minute now
    assert {(await route_once(router, routes))[0].provider for _ in range(20)} == {"b"}
