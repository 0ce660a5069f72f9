"""Circuit breakers and retry budgets: the state machine, and what it does to traffic."""

from __future__ import annotations

import gc
from collections import Counter

import pytest
from router_helpers import PRINCIPAL, Clock, ask, info, make_router, route_once, table
from sira_kernel import ProviderRateLimited, ProviderRejected, ProviderUnavailable

from sira_router import BreakerConfig, BudgetConfig, LocalBreakers, RetryBudget
from sira_router._breaker import LocalBreaker

pytestmark = pytest.mark.anyio

DOWN = ProviderUnavailable("upstream answered 503")


def breaker(**config: object) -> LocalBreaker:
    return LocalBreaker("p/m", BreakerConfig(**config))  # type: ignore[arg-type]


def test_opens_after_consecutive_failures_and_probes_after_the_cooldown() -> None:
    b = breaker(consecutive_failures=3, cooldown=10.0)
    for _ in range(2):
        b.failure(0.0, "server")
    assert b.allows(0.0) and b.state(0.0).state == "closed"
    b.failure(0.0, "server")
    assert not b.allows(9.9) and b.state(5.0).state == "open" and b.reopens_in(5.0) == 5.0
    assert b.allows(10.0) and b.wants_probe(10.0)
    assert b.admit(10.0) is True  # the probe
    assert not b.allows(10.1)  # one probe at a time
    b.success(10.5, probe=True)
    assert b.allows(10.5) and b.state(10.5).state == "closed" and b.opened == 1


def test_a_failed_probe_reopens_with_a_doubled_cooldown_up_to_the_maximum() -> None:
    b = breaker(consecutive_failures=1, cooldown=10.0, max_cooldown=25.0)
    b.failure(0.0, "timeout")
    opened = 0.0
    for cooldown in (20.0, 25.0, 25.0):
        now = b.open_until
        assert b.admit(now)
        b.failure(now, "timeout", probe=True)
        assert b.open_until - now == cooldown
        opened = now
    assert not b.allows(opened + 24.0)


def test_late_failures_of_requests_sent_before_opening_change_nothing() -> None:
    b = breaker(consecutive_failures=1, cooldown=10.0)
    b.failure(0.0, "server")
    until = b.open_until
    for _ in range(20):
        b.failure(1.0, "server")  # in flight when it opened
    assert b.open_until == until and b.cooldown == 10.0


def test_error_ratio_over_the_window_opens_it() -> None:
    b = breaker(consecutive_failures=100, error_ratio=0.5, min_requests=10, window=10.0)
    for i in range(20):  # alternate: never two failures in a row, but half of them fail
        if i % 2:
            b.failure(i * 0.1, "server")
        else:
            b.success(i * 0.1)
        if i < 9:
            assert b.allows(i * 0.1)
    assert not b.allows(2.0)
    # Old history ages out of the window.
    c = breaker(consecutive_failures=100, error_ratio=0.5, min_requests=10, window=10.0)
    for i in range(9):
        c.failure(i * 0.01, "server")
        c.success(i * 0.01)
    for i in range(10):
        c.success(30.0 + i)
    c.failure(40.0, "server")
    assert c.allows(40.0)


def test_retry_after_holds_it_open_that_long() -> None:
    b = breaker(max_cooldown=60.0)
    b.failure(0.0, "rate_limit", retry_after=7.0)
    assert not b.allows(6.9) and b.allows(7.0)
    b.reset()
    b.failure(0.0, "rate_limit", retry_after=600.0)
    assert b.reopens_in(0.0) == 60.0  # capped


def test_an_abandoned_probe_is_released() -> None:
    b = breaker(consecutive_failures=1, cooldown=1.0, probe_timeout=30.0)
    b.failure(0.0, "server")
    assert b.admit(1.0)
    assert not b.allows(2.0)
    b.release_probe()
    assert b.allows(2.0)
    # And an unanswered one stops blocking after probe_timeout.
    assert b.admit(2.0) and not b.allows(31.9) and b.allows(32.0)


def test_store_returns_one_breaker_per_deployment() -> None:
    store = LocalBreakers(BreakerConfig())
    assert store.breaker("a/m") is store.breaker("a/m")
    assert [s.deployment for s in store.states(0.0)] == ["a/m"]


async def test_an_open_breaker_stops_traffic_within_one_probe_interval() -> None:
    clock = Clock()
    router = make_router(clock, retries=0, breaker={"consecutive_failures": 3, "cooldown": 5.0}, groups={
        "g": {"deployments": [{"provider": "ok", "model": "m"}, {"provider": "bad", "model": "m"}]},
    })
    routes = table("ok", "bad")
    sent_to_bad: list[float] = []
    for _ in range(600):  # 60 s at 10 requests a second
        try:
            tried = await route_once(router, routes, fail={"bad": DOWN})
        except ProviderUnavailable:
            tried = []
        sent_to_bad += [clock.now for d in tried if d.provider == "bad"]
        clock.advance(0.1)
    opened_at = sent_to_bad[2]  # the third consecutive failure opened it
    later = [t for t in sent_to_bad if t > opened_at]
    # After opening, only probes: the first one once the cooldown is over (when the weighted pick
    # next lands on it), then one per doubled cooldown.
    assert 5.0 <= later[0] - opened_at < 6.0
    gaps = [b - a for a, b in zip(later, later[1:], strict=False)]
    assert len(gaps) == 2 and 10.0 <= gaps[0] < 11.0 and 20.0 <= gaps[1] < 21.0
    states = {s.deployment: s for s in router.breaker_states()}
    assert states["bad/m"].state == "open" and states["ok/m"].state == "closed"


async def test_the_breaker_closes_when_the_deployment_recovers() -> None:
    clock = Clock()
    router = make_router(clock, retries=0, breaker={"consecutive_failures": 2, "cooldown": 1.0}, groups={
        "g": {"strategy": "round_robin", "deployments": [{"provider": "a", "model": "m"},
                                                          {"provider": "b", "model": "m"}]},
    })
    routes = table("a", "b")
    for _ in range(4):
        await route_once(router, routes, fail={"b": DOWN})
    assert router.upstreams["b/m"].breaker.state(clock()).state == "open"
    clock.advance(1.0)
    counts: Counter[str] = Counter()
    for _ in range(10):
        counts[(await route_once(router, routes))[0].provider] += 1
    assert counts == {"a": 5, "b": 5}
    [probe_decision] = [d for d in reversed(router.decision_log()) if d.attempts[0].probe]
    assert probe_decision.attempts[0].deployment == "b/m" and probe_decision.outcome == "ok"


async def test_client_errors_do_not_open_breakers() -> None:
    router = make_router(retries=0, breaker={"consecutive_failures": 2}, groups={
        "g": {"deployments": [{"provider": "a", "model": "m"}]},
    })
    routes = table("a")
    for _ in range(5):
        await route_once(router, routes, fail={"a": ProviderRejected("upstream answered 400: bad temperature")})
    assert router.upstreams["a/m"].breaker.state(0.0).state == "closed"


async def test_a_cancelled_attempt_gives_back_its_in_flight_count_and_probe() -> None:
    clock = Clock()
    router = make_router(clock, breaker={"consecutive_failures": 1, "cooldown": 1.0}, groups={
        "g": {"deployments": [{"provider": "a", "model": "m"}]},
    })
    routes = table("a")
    upstream = router.upstreams["a/m"]
    upstream.breaker.failure(clock(), "server")
    clock.advance(1.0)
    route = router.route(ask(), PRINCIPAL, routes, info())
    assert route is not None
    assert await route.plan.next(None, 10.0) is not None  # the probe goes out…
    assert upstream.in_flight == 1 and not upstream.breaker.allows(clock())
    del route  # …and the client goes away: the kernel drops the plan without a report
    gc.collect()
    assert upstream.in_flight == 0 and upstream.breaker.allows(clock())
    [decision] = router.decision_log(1)
    assert decision.outcome == "cancelled" and decision.attempts[0].error == "cancelled"


def test_retry_budget_allows_a_ratio_of_first_attempts() -> None:
    clock = Clock()
    budget = RetryBudget(BudgetConfig(ratio=0.2, burst=5.0, min_per_second=0.0), clock)
    allowed = 0
    for _ in range(1000):
        budget.deposit()
        allowed += budget.withdraw(clock())
        allowed += budget.withdraw(clock())  # every request wants two retries
    assert allowed <= 0.2 * 1000 + 5 and allowed >= 0.2 * 1000 - 1
    assert budget.denied > 0


async def test_retries_cannot_multiply_load_during_an_outage() -> None:
    clock = Clock()
    router = make_router(clock, retries=3, backoff_base=0.0001, backoff_max=0.0005,
                         breaker={"consecutive_failures": 10_000, "min_requests": 10_000},
                         budget={"ratio": 0.2, "burst": 10.0, "min_per_second": 0.0},
                         groups={"g": {"deployments": [{"provider": "a", "model": "m"},
                                                       {"provider": "b", "model": "m"}]}})
    routes = table("a", "b")
    attempts = 0
    for _ in range(1000):
        try:
            tried = await route_once(router, routes, fail={"a": DOWN, "b": DOWN})
        except ProviderUnavailable:
            pytest.fail("the breakers are disabled here")
        attempts += len(tried)
        clock.advance(0.01)
    assert attempts <= 1000 * 1.2 + 10
    assert any("retry budget" in note for d in router.decision_log(50) for note in d.notes)


async def test_rate_limited_deployment_is_skipped_for_its_retry_after() -> None:
    clock = Clock()
    router = make_router(clock, retries=1, groups={"g": {"deployments": [
        {"provider": "a", "model": "m", "priority": 0}, {"provider": "b", "model": "m", "priority": 1},
    ]}})
    routes = table("a", "b")
    tried = await route_once(router, routes, fail={"a": ProviderRateLimited("429", retry_after=4.0)})
    assert [d.provider for d in tried] == ["a", "b"]
    clock.advance(3.9)
    assert [d.provider for d in await route_once(router, routes)] == ["b"]
    clock.advance(0.2)
    assert [d.provider for d in await route_once(router, routes)] == ["a"]
