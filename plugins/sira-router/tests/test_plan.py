"""Attempt plans inside a real kernel (in-process): retries, fallbacks, deadlines, the decision log."""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from sira_kernel import (
    ChatRequest,
    EmbeddingRequest,
    Message,
    ModelNotFound,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    RequestError,
    RequestInfo,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    UsageRecord,
    hookimpl,
)
from sira_kernel.bus import Subscription
from sira_kernel.kernel import Kernel
from sira_kernel.providers import CallContext
from sira_kernel.registrations import ProviderRegistrar
from sira_kernel.testing import FakeProvider, FakeProviderPlugin, make_kernel

from sira_router import RouteDecision, RouterPlugin

pytestmark = pytest.mark.anyio


class FlakyProvider(FakeProvider):
    """A FakeProvider that fails its next calls with the queued errors, and can break mid-stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue: list[Exception] = []
        self.break_stream = False

    async def _maybe_fail(self) -> None:
        if self.queue:
            self.calls += 1
            raise self.queue.pop(0)
        await super()._maybe_fail()

    async def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        if not self.break_stream:
            async for event in super().stream(request, ctx):
                yield event
            return
        await self._maybe_fail()
        yield StreamStart(id="s", model=ctx.upstream_model)
        yield TextDelta("Hel")
        raise ProviderUnavailable("connection lost mid-stream", provider=self.name)


class FlakyPlugin(FakeProviderPlugin):
    @hookimpl
    def sira_register_providers(self, register: ProviderRegistrar) -> None:
        self.provider = FlakyProvider(register.owner, self.config.models, self.config.reply, self.config.delay)
        register(self.provider)


def kernel_with(router: dict[str, Any], providers: tuple[str, ...] = ("a", "b", "c"), **limits: Any) -> Kernel:
    plugins: dict[str, Any] = {name: FlakyPlugin for name in providers}
    plugins["router"] = RouterPlugin
    config: dict[str, Any] = {"plugins": {"router": router, **{p: {"models": ["m", "emb"]} for p in providers}}}
    if limits:
        config["limits"] = limits
    return make_kernel(plugins, config=config)


def provider(kernel: Kernel, name: str) -> FlakyProvider:
    found = kernel.snapshot.providers[name][0]
    assert isinstance(found, FlakyProvider)
    return found


def router_of(kernel: Kernel) -> Any:
    return kernel.plugins.handles["router"].instance.router


def group(*providers: str, **settings: Any) -> dict[str, Any]:
    return {"deployments": [{"provider": p, "model": "m"} for p in providers], **settings}


def ask(model: str = "g", text: str = "hello there", **fields: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message("user", text)], **fields)


def new_info() -> RequestInfo:
    return RequestInfo(method="POST", path="/v1/chat/completions", headers={}, request_id="req-plan")


class Records:
    def __init__(self, kernel: Kernel, pattern: str) -> None:
        self.items: list[Any] = []
        self.subscription = Subscription(f"test:{pattern}", pattern, self.items.append)
        kernel.bus.add(self.subscription)
        kernel.task_group.start_soon(self.subscription.run)

    async def wait(self, count: int) -> list[Any]:
        with anyio.fail_after(5):
            while len(self.items) < count:
                await anyio.sleep(0.005)
        return self.items


DOWN = ProviderUnavailable("upstream answered 503", provider="x")


async def test_retry_on_another_member_then_success_logs_every_attempt() -> None:
    async with kernel_with({"groups": {"g": group("a", "b", strategy="round_robin", retries=1)}}) as kernel:
        usage = Records(kernel, "usage.request")
        provider(kernel, "a").queue.append(DOWN)
        info = new_info()
        response = await kernel.pipeline.chat(ask(), info)
        assert response.choices[0].message.content == "Hello from the fake provider"
        assert info.route == "b/m; attempts=2"
        [record] = await usage.wait(1)
        assert [(a.provider, a.status) for a in record.attempt_log] == [("a", 502), ("b", 200)]
        [decision] = router_of(kernel).decision_log(1)
        assert [(x.deployment, x.why, x.error) for x in decision.attempts] == [
            ("a/m", "first", "server"), ("b/m", "retry", None)
        ]


async def test_fallback_chains_are_followed_in_order_each_group_once() -> None:
    config = {"retries": 0, "groups": {
        "g": group("a", fallbacks=["g2"]), "g2": group("b", fallbacks=["g3", "g"]), "g3": group("c"),
    }}
    async with kernel_with(config) as kernel:
        provider(kernel, "a").queue.append(DOWN)
        provider(kernel, "b").queue.append(ProviderRateLimited("429", provider="b"))
        info = new_info()
        await kernel.pipeline.chat(ask(), info)
        assert info.route == "c/m; attempts=3"
        [decision] = router_of(kernel).decision_log(1)
        assert decision.fallbacks == ["g2", "g3"] and decision.outcome == "ok"
        assert [x.why for x in decision.attempts] == ["first", "fallback:server", "fallback:rate_limit"]


async def test_fallbacks_by_error_class() -> None:
    config = {"retries": 0, "groups": {
        "g": group("a", fallbacks=["general"], fallbacks_on={"timeout": ["slow-ok"],
                                                              "content_policy": ["lenient"]}),
        "general": group("b"), "slow-ok": group("c"), "lenient": group("b"),
    }}
    async with kernel_with(config) as kernel:
        a = provider(kernel, "a")
        from sira_kernel import ProviderTimeout

        for error, expected in [
            (ProviderTimeout("no first token"), "c/m"),
            (DOWN, "b/m"),
            (ProviderRejected("upstream answered 400: flagged by the content_filter"), "b/m"),
        ]:
            a.queue.append(error)
            info = new_info()
            await kernel.pipeline.chat(ask(), info)
            assert info.route == f"{expected}; attempts=2", error
        a.queue.append(ProviderRejected("upstream answered 400: bad value"))
        with pytest.raises(ProviderRejected):
            await kernel.pipeline.chat(ask(), new_info())
        assert a.calls == 4 and provider(kernel, "b").calls == 2


async def test_a_long_prompt_skips_a_group_whose_context_window_it_exceeds() -> None:
    config = {"groups": {"g": group("a", context_window=50, fallbacks_on={"context_window": ["big"]}),
                         "big": group("b")}}
    async with kernel_with(config) as kernel:
        info = new_info()
        await kernel.pipeline.chat(ask(text="word " * 400), info)
        assert info.route == "b/m; attempts=1" and provider(kernel, "a").calls == 0
        [decision] = router_of(kernel).decision_log(1)
        assert decision.notes[0].startswith("prompt exceeds context window of 'g'")
        assert decision.prompt_tokens is not None and decision.prompt_tokens > 50
        await kernel.pipeline.chat(ask(text="short"), info := new_info())
        assert info.route == "a/m; attempts=1"
    config = {"groups": {"g": group("a", context_window=50)}}  # no larger group: the upstream decides
    async with kernel_with(config) as kernel:
        await kernel.pipeline.chat(ask(text="word " * 400), info := new_info())
        assert info.route == "a/m; attempts=1"


async def test_max_attempts_bounds_a_request() -> None:
    config = {"max_attempts": 3, "retries": 10, "backoff_base": 0.001, "backoff_max": 0.002,
              "groups": {"g": group("a", "b")}}
    async with kernel_with(config) as kernel:
        provider(kernel, "a").fail = DOWN
        provider(kernel, "b").fail = DOWN
        usage = Records(kernel, "usage.request")
        with pytest.raises(ProviderUnavailable):
            await kernel.pipeline.chat(ask(), new_info())
        [record] = await usage.wait(1)
        assert record.attempts == 3 and record.status == 502
        [decision] = router_of(kernel).decision_log(1)
        assert decision.outcome == "failed" and "max_attempts (3) reached" in decision.notes


async def test_no_wait_past_the_request_deadline() -> None:
    config = {"retries": 3, "max_retry_after": 30.0, "groups": {"g": group("a")}}
    async with kernel_with(config, total_timeout=1.0) as kernel:
        provider(kernel, "a").queue.append(ProviderRateLimited("429", retry_after=5.0))
        started = time.monotonic()
        with pytest.raises(ProviderRateLimited) as caught:
            await kernel.pipeline.chat(ask(), new_info())
        assert time.monotonic() - started < 0.5
        assert caught.value.retry_after == 5.0  # the client learns when to come back


async def test_nothing_usable_is_a_503_with_retry_after() -> None:
    config = {"breaker": {"consecutive_failures": 1, "cooldown": 30.0},
              "groups": {"g": group("a", "ghost", retries=0)}}
    async with kernel_with(config) as kernel:
        usage = Records(kernel, "usage.request")
        provider(kernel, "a").queue.append(DOWN)
        with pytest.raises(ProviderUnavailable):
            await kernel.pipeline.chat(ask(), new_info())
        with pytest.raises(ProviderUnavailable) as caught:
            await kernel.pipeline.chat(ask(), new_info())
        assert caught.value.status == 503 and caught.value.code == "no_deployment_available"
        assert caught.value.retry_after is not None and 29 <= caught.value.retry_after <= 30
        assert "a/m: open" in caught.value.message and "ghost/m: inactive" in caught.value.message
        records = await usage.wait(2)
        assert records[1].attempts == 0 and records[1].status == 503
        assert router_of(kernel).decision_log(1)[0].outcome == "unavailable"


async def test_decisions_are_published_on_the_bus() -> None:
    async with kernel_with({"groups": {"g": group("a")}}) as kernel:
        events = Records(kernel, "route.#")
        await kernel.pipeline.chat(ask(), new_info())
        [decision] = await events.wait(1)
        assert isinstance(decision, RouteDecision) and decision.request_id == "req-plan"
        assert decision.attempts[0].status == 200


async def test_a_stream_that_breaks_after_starting_is_not_retried() -> None:
    async with kernel_with({"retries": 2, "groups": {"g": group("a", "b")}}) as kernel:
        a, b = provider(kernel, "a"), provider(kernel, "b")
        a.break_stream = b.break_stream = True
        stream = await kernel.pipeline.stream(ask(stream=True), new_info())
        try:
            events = [event async for event in stream]
        finally:
            await stream.aclose()
        assert isinstance(events[-1], StreamError)
        assert a.calls + b.calls == 1
        await anyio.sleep(0)  # the plan settles once the task yields
        [decision] = router_of(kernel).decision_log(1)
        assert decision.outcome == "failed" and len(decision.attempts) == 1
        assert decision.attempts[0].error == "server"


async def test_a_cancelled_request_gives_back_its_in_flight_count() -> None:
    async with kernel_with({"groups": {"g": group("a")}}) as kernel:
        provider(kernel, "a").hang = True
        with anyio.move_on_after(0.1):
            await kernel.pipeline.chat(ask(), new_info())
        # The kernel drops the plan without a report; the task's step holds the cancellation
        # (and with it the plan) until the task next yields.
        await anyio.sleep(0)
        gc.collect()
        router = router_of(kernel)
        assert router.upstreams["a/m"].in_flight == 0
        assert router.decision_log(1)[0].outcome == "cancelled"


async def test_unlisted_models_get_an_implicit_group_unless_disabled() -> None:
    config = {"retries": 2, "backoff_base": 0.001, "groups": {}}
    async with kernel_with(config, providers=("a", "b")) as kernel:
        provider(kernel, "a").queue.append(DOWN)
        provider(kernel, "b").queue.append(DOWN)
        info = new_info()
        await kernel.pipeline.chat(ask(model="m"), info)
        assert info.route is not None and info.route.endswith("attempts=3")
        assert router_of(kernel).decision_log(1)[0].group == "m"
    async with kernel_with({"route_unlisted": False, "groups": {}}, providers=("a",)) as kernel:
        provider(kernel, "a").queue.append(DOWN)
        with pytest.raises(ProviderUnavailable):
            await kernel.pipeline.chat(ask(model="m"), new_info())
        assert router_of(kernel).decision_log() == []
        with pytest.raises(ModelNotFound):
            await kernel.pipeline.chat(ask(model="nope"), new_info())


async def test_aliases_and_embeddings() -> None:
    config = {"groups": {"emb": {"aliases": ["embed-small"], "deployments": [{"provider": "b", "model": "m-embed"}]},
                         "g": group("a")}}
    async with kernel_with(config) as kernel:
        info = new_info()
        response = await kernel.pipeline.embed(EmbeddingRequest(model="embed-small", input=["a", "bc"]), info)
        assert len(response.data) == 2 and info.route == "b/m-embed; attempts=1"
        # a routed name has the kind of what it routes to: the wrong operation is a 400, not an upstream call
        with pytest.raises(RequestError, match="is an embedding model"):
            await kernel.pipeline.chat(ask(model="embed-small"), new_info())
        with pytest.raises(RequestError, match="is a chat model"):
            await kernel.pipeline.embed(EmbeddingRequest(model="g", input="a"), new_info())
        assert provider(kernel, "b").calls == 1 and provider(kernel, "a").calls == 0


async def test_unload_of_a_provider_marks_its_deployments_inactive() -> None:
    async with kernel_with({"retries": 0, "groups": {"g": group("a", "b")}}) as kernel:
        await kernel.unload("a")
        for _ in range(20):
            info = new_info()
            await kernel.pipeline.chat(ask(), info)
            assert info.route == "b/m; attempts=1"
        assert router_of(kernel).upstreams["a/m"].active is False


def test_errors_raised_by_report_never_reach_the_kernel() -> None:
    # report() must tolerate a deployment it did not hand out (the kernel's default plan would).
    from router_helpers import PRINCIPAL, make_router, table
    from sira_kernel import Deployment

    router = make_router(groups={"g": group("a")})
    route = router.route(ask(), PRINCIPAL, table("a"))
    assert route is not None
    route.plan.report(Deployment("zzz", "m"), ProviderError("x"), 0.1, None)


async def test_usage_records_charge_tokens_per_minute_through_the_bus() -> None:
    config = {"groups": {"g": {"strategy": "usage", "deployments": [
        {"provider": "a", "model": "m", "tpm": 10_000}]}}}
    async with kernel_with(config, providers=("a",)) as kernel:
        router = router_of(kernel)
        await kernel.pipeline.chat(ask(), new_info())
        key = router.upstreams["a/m"].tpm_key
        with anyio.fail_after(5):
            while True:
                level = await kernel.scheduler.backend.level(key, 1000.0, 0.0)
                if level < 1000.0:
                    break
                await anyio.sleep(0.005)
        assert level == pytest.approx(1000.0 - 7, abs=0.5)  # 2 prompt words + 5 reply words


async def test_record_is_published_once_per_request() -> None:
    async with kernel_with({"retries": 2, "backoff_base": 0.001, "groups": {"g": group("a", "b")}}) as kernel:
        usage = Records(kernel, "usage.request")
        provider(kernel, "a").queue.append(DOWN)
        provider(kernel, "b").queue.append(DOWN)
        for _ in range(5):
            await kernel.pipeline.chat(ask(), new_info())
        records: list[UsageRecord] = await usage.wait(5)
        await anyio.sleep(0.05)
        assert len(records) == 5 and records[0].attempts == 3
