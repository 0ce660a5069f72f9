"""Shared helpers: a router driven by hand, with a fake clock, as the kernel's attempt loop would."""

from __future__ import annotations

import random
from typing import Any

import msgspec
from sira_kernel import (
    ChatRequest,
    Deployment,
    InProcessCounters,
    Message,
    Principal,
    ProviderError,
    RequestInfo,
    RouteTable,
)
from sira_kernel.testing import FakeProvider

from sira_router import Router, RouterConfig

PRINCIPAL = Principal(id="key-1", kind="key", tenant="acme")


class Clock:
    """A monotonic clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def table(*providers: str, models: tuple[str, ...] = ("m",)) -> RouteTable:
    return RouteTable({name: FakeProvider(name, list(models)) for name in providers})


def make_router(clock: Clock | None = None, seed: int = 7, **config: Any) -> Router:
    clock = clock or Clock()
    return Router(
        msgspec.convert(config, RouterConfig), clock=clock, rng=random.Random(seed), counters=InProcessCounters(clock)
    )


def ask(model: str = "g", text: str = "hello", **fields: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content=text)], **fields)


def info(**headers: str) -> RequestInfo:
    return RequestInfo(method="POST", path="/v1/chat/completions", headers=headers, request_id="req-test")


async def route_once(
    router: Router,
    routes: RouteTable,
    request: ChatRequest | None = None,
    *,
    fail: dict[str, ProviderError] | None = None,
    latency: dict[str, float] | None = None,
    remaining: float = 60.0,
) -> list[Deployment]:
    """Run one request's attempts the way ``Pipeline._attempt`` does; the deployments tried, in order.

    ``fail`` maps ``provider`` to the error its attempts raise; ``latency`` maps it to the seconds
    reported (the fake clock does not move)."""
    route = router.route(request or ask(), PRINCIPAL, routes, info())
    assert route is not None
    plan = route.plan
    tried: list[Deployment] = []
    failure: ProviderError | None = None
    while True:
        deployment = await plan.next(failure, remaining)
        if deployment is None:
            return tried
        tried.append(deployment)
        error = (fail or {}).get(deployment.provider)
        plan.report(deployment, error, (latency or {}).get(deployment.provider, 0.01), None)
        if error is None:
            return tried
        failure = error
