"""The request pipeline: bounds, deadlines, usage records exactly once, capacity always returned."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from sira_kernel import (
    AuthorizationDenied,
    ChatRequest,
    Kernel,
    LimitSpec,
    Message,
    ModelInfo,
    ModelNotFound,
    Principal,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    RequestError,
    RequestInfo,
    StreamError,
    UsageRecord,
    hookimpl,
)
from sira_kernel.bus import Subscription
from sira_kernel.testing import FakeProvider, FakeProviderPlugin, make_kernel

pytestmark = pytest.mark.anyio

INFO = RequestInfo(method="POST", path="/v1/chat/completions", headers={}, request_id="req-test")


def chat(model: str = "fake-1", **fields: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message("user", "hello there")], **fields)


def provider(kernel: Kernel) -> FakeProvider:
    found, _ = kernel.snapshot.providers["fake"]
    assert isinstance(found, FakeProvider)
    return found


class Recorder:
    def __init__(self, kernel: Kernel) -> None:
        self.records: list[UsageRecord] = []
        self.sub = Subscription("recorder", "usage.*", self.records.append)
        kernel.bus.add(self.sub)
        kernel.task_group.start_soon(self.sub.run)

    async def settled(self, count: int) -> list[UsageRecord]:
        with anyio.fail_after(5):
            while len(self.records) < count:
                await anyio.sleep(0.001)
        await anyio.sleep(0.01)
        return self.records


def assert_nothing_held(kernel: Kernel) -> None:
    assert kernel.scheduler.pools["requests"].in_use == 0
    assert kernel.scheduler.outstanding == 0
    assert all(h.leases == 0 for h in kernel.plugins.handles.values())


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"n": 0}, "n"), ({"n": 99}, "n"), ({"max_tokens": 0}, "max_tokens"),
     ({"max_completion_tokens": 10**7}, "max_completion_tokens")],
)
async def test_bounds_are_400_with_the_param(fields: dict[str, Any], param: str) -> None:
    async with make_kernel({"fake": FakeProviderPlugin}) as kernel:
        recorder = Recorder(kernel)
        with pytest.raises(RequestError) as err:
            await kernel.pipeline.chat(chat(**fields), INFO)
        assert err.value.param == param and err.value.status == 400
        [record] = await recorder.settled(1)
        assert record.status == 400
        assert provider(kernel).calls == 0
        assert_nothing_held(kernel)


async def test_empty_messages_rejected() -> None:
    async with make_kernel({"fake": FakeProviderPlugin}) as kernel:
        with pytest.raises(RequestError, match="at least one message"):
            await kernel.pipeline.chat(ChatRequest(model="fake-1", messages=[]), INFO)


async def test_unknown_model_is_404_and_explicit_provider_prefix_works() -> None:
    async with make_kernel({"fake": FakeProviderPlugin}) as kernel:
        with pytest.raises(ModelNotFound):
            await kernel.pipeline.chat(chat("nope"), INFO)
        response = await kernel.pipeline.chat(chat("fake/fake-1"), INFO)
        assert response.model == "fake-1"


async def test_total_deadline_is_a_backstop_for_a_provider_that_hangs() -> None:
    config = {"limits": {"total_timeout": 0.2}}
    async with make_kernel({"fake": FakeProviderPlugin}, config) as kernel:
        recorder = Recorder(kernel)
        provider(kernel).hang = True
        with pytest.raises(ProviderTimeout):
            await kernel.pipeline.chat(chat(), INFO)
        [record] = await recorder.settled(1)
        assert record.status == 504
        assert_nothing_held(kernel)


async def test_stream_total_deadline_ends_the_stream_with_an_error() -> None:
    config = {"limits": {"total_timeout": 0.3}, "plugins": {"fake": {"reply": "a b c d e f g h", "delay": 0.1}}}
    async with make_kernel({"fake": FakeProviderPlugin}, config) as kernel:
        recorder = Recorder(kernel)
        stream = await kernel.pipeline.stream(chat(stream=True), INFO)
        events = []
        with stream.guard() as guard:  # how consumers iterate: one scope the deadline cancels
            async for event in stream:
                events.append(event)
        assert guard.cancelled_caught
        events.append(stream.interrupted())
        await stream.aclose()
        assert isinstance(events[-1], StreamError) and events[-1].status == 504
        [record] = await recorder.settled(1)
        assert record.status == 504 and record.stream
        assert provider(kernel).closed_streams == 1
        assert_nothing_held(kernel)


async def test_one_usage_record_per_request_whatever_happens() -> None:
    async with make_kernel({"fake": FakeProviderPlugin}) as kernel:
        recorder = Recorder(kernel)
        fake = provider(kernel)
        await kernel.pipeline.chat(chat(), INFO)                          # 200
        fake.fail = ProviderUnavailable("down", provider="fake")
        with pytest.raises(ProviderUnavailable):
            await kernel.pipeline.chat(chat(), INFO)                      # 502 before the stream
        with pytest.raises(ProviderUnavailable):
            await kernel.pipeline.stream(chat(stream=True), INFO)         # 502 for a stream
        fake.fail = None
        stream = await kernel.pipeline.stream(chat(stream=True), INFO)
        async for _ in stream:
            break
        await stream.aclose(client_gone=True)                             # 499
        await stream.aclose(client_gone=True)                             # closing twice records nothing more
        fake.hang = True
        with anyio.move_on_after(0.05):
            await kernel.pipeline.chat(chat(), INFO)                      # cancelled by the caller: 499
        records = await recorder.settled(5)
        assert [r.status for r in records] == [200, 502, 502, 499, 499]
        assert records[0].total_tokens == 7 and records[0].provider == "fake"  # 2 prompt + 5 reply words
        assert_nothing_held(kernel)


class Gatekeeper:
    """Authenticates keys "a" (tenant t1, limited) and "b"; denies model fake-2 to everyone but "b"."""

    sira_api = 1

    @hookimpl
    async def sira_authenticate(self, request: RequestInfo) -> Principal | None:
        token = request.bearer_token
        if token == "a":
            limits = (LimitSpec(key=("key", "a"), per_minute=2),)
            return Principal(id="a", kind="key", tenant="t1", limits=limits)
        if token == "b":
            return Principal(id="b", kind="key")
        return None

    @hookimpl
    def sira_authorize(self, principal: Principal, request: RequestInfo, operation: str, model: str | None) -> Any:
        return False if model == "fake-2" and principal.id != "b" else None


async def test_decision_hooks_and_principal_limits_through_the_pipeline() -> None:
    config = {"server": {"master_key": "sk-master-0123456789"}, "plugins": {"fake": {"models": ["fake-1", "fake-2"]}}}
    async with make_kernel({"gate": Gatekeeper, "fake": FakeProviderPlugin}, config) as kernel:
        recorder = Recorder(kernel)

        def info(token: str) -> RequestInfo:
            return RequestInfo(method="POST", path="/", headers={"authorization": f"Bearer {token}"})

        assert (await kernel.pipeline.chat(chat(), info("a"))).model == "fake-1"
        with pytest.raises(AuthorizationDenied):
            await kernel.pipeline.chat(chat("fake-2"), info("a"))
        assert (await kernel.pipeline.chat(chat("fake-2"), info("b"))).model == "fake-2"
        await kernel.pipeline.chat(chat(), info("a"))
        with pytest.raises(RateLimited) as limited:                        # 2 per minute for key a
            await kernel.pipeline.chat(chat(), info("a"))
        assert limited.value.retry_after is not None and limited.value.retry_after > 0
        master = await kernel.pipeline.chat(chat(), info("sk-master-0123456789"))  # the trylast default
        assert master.model == "fake-1"
        records = await recorder.settled(6)
        assert [(r.principal, r.status) for r in records] == [
            ("a", 200), ("a", 403), ("b", 200), ("a", 200), ("a", 429), ("master", 200)
        ]
        assert records[0].tenant == "t1"
        models = [m.id for m in await kernel.pipeline.models(info("a"))]
        assert models == ["fake-1", "fake-1-embed"]  # fake-2 is denied to key a
        assert_nothing_held(kernel)


class Partial:
    """Implements decision hooks with fewer arguments than the spec, as pluggy allows."""

    sira_api = 1

    @hookimpl
    def sira_authorize(self, model: str | None) -> Any:
        return False if model == "fake-2" else None


async def test_decision_hooks_may_take_a_subset_of_the_arguments() -> None:
    config = {"plugins": {"fake": {"models": ["fake-1", "fake-2"]}}}
    async with make_kernel({"partial": Partial, "fake": FakeProviderPlugin}, config) as kernel:
        assert (await kernel.pipeline.chat(chat(), INFO)).model == "fake-1"
        with pytest.raises(AuthorizationDenied):
            await kernel.pipeline.chat(chat("fake-2"), INFO)


@pytest.mark.parametrize("stream", [False, True])
async def test_usage_is_counted_when_the_provider_reports_none(stream: bool) -> None:
    config = {"plugins": {"fake": {"reply": "one two three four five six seven eight"}}}
    async with make_kernel({"fake": FakeProviderPlugin}, config) as kernel:
        recorder = Recorder(kernel)
        provider(kernel).report_usage = False
        if stream:
            chat_stream = await kernel.pipeline.stream(chat(stream=True), INFO)
            [_ async for _ in chat_stream]
            await chat_stream.aclose()
        else:
            await kernel.pipeline.chat(chat(), INFO)
        [record] = await recorder.settled(1)
        assert record.usage_estimated
        # the kernel's fallback: ceil(chars / 4) for the reply; text plus 4 per message for the prompt
        assert record.completion_tokens == -(-len("one two three four five six seven eight") // 4)
        assert record.prompt_tokens == -(-len("hello there") // 4) + 4
        assert record.total_tokens == record.prompt_tokens + record.completion_tokens


async def test_model_kind_is_checked() -> None:
    class Embedder(FakeProviderPlugin):
        @hookimpl
        def sira_register_providers(self, register: Any) -> None:
            fake = FakeProvider(register.owner, ["chat-model"])
            base_models = fake.models

            def models() -> list[Any]:
                from sira_kernel import ModelInfo

                return [*base_models(), ModelInfo(id="embed-model", kind="embedding")]

            fake.models = models  # type: ignore[method-assign]
            register(fake)

    async with make_kernel({"fake": Embedder}) as kernel:
        with pytest.raises(RequestError, match="is an embedding model") as err:
            await kernel.pipeline.chat(chat("embed-model"), INFO)
        assert err.value.param == "model"
        from sira_kernel import EmbeddingRequest

        with pytest.raises(RequestError, match="is a chat model"):
            await kernel.pipeline.embed(EmbeddingRequest(model="chat-model", input="x"), INFO)
        assert (await kernel.pipeline.embed(EmbeddingRequest(model="embed-model", input="x"), INFO)).data


class Failover:
    """A plan trying each deployment once, in order: the shape a routing plugin's plan takes."""

    def __init__(self, deployments: Any) -> None:
        self.left = list(deployments)
        self.reports: list[tuple[str, str | None]] = []

    async def next(self, failure: Any, remaining: float) -> Any:
        return self.left.pop(0) if self.left else None

    def report(self, deployment: Any, error: Any, latency_s: float, first_token_s: float | None) -> None:
        self.reports.append((deployment.provider, None if error is None else error.code))


class FailoverRouter:
    sira_api = 1
    plans: list[Failover] = []

    @hookimpl
    def sira_route(self, request: Any, principal: Any, routes: Any) -> Any:
        from sira_kernel import Deployment, Route

        plan = Failover([Deployment("first", "fake-1"), Deployment("second", "fake-1")])
        FailoverRouter.plans.append(plan)
        return Route(tuple(plan.left), reason="test failover", plan=plan)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_routing_plan_drives_retries_and_every_attempt_is_recorded(stream: bool) -> None:
    plugins = {"router": FailoverRouter, "first": FakeProviderPlugin, "second": FakeProviderPlugin}
    async with make_kernel(plugins) as kernel:
        recorder = Recorder(kernel)
        first, _ = kernel.snapshot.providers["first"]
        first.fail = ProviderUnavailable("first is down", provider="first")  # type: ignore[attr-defined]
        info = RequestInfo(method="POST", path="/", headers={})
        if stream:
            chat_stream = await kernel.pipeline.stream(chat(stream=True), info)
            assert chat_stream.deployment.provider == "second"
            [_ async for _ in chat_stream]
            await chat_stream.aclose()
        else:
            await kernel.pipeline.chat(chat(), info)
        assert info.route == "second/fake-1; attempts=2"
        [record] = await recorder.settled(1)
        assert record.status == 200 and record.attempts == 2 and record.provider == "second"
        assert [(a.provider, a.status) for a in record.attempt_log] == [("first", 502), ("second", 200)]
        assert FailoverRouter.plans[-1].reports == [("first", "upstream_unavailable"), ("second", None)]
        assert_nothing_held(kernel)


async def test_no_retry_once_a_stream_has_started() -> None:
    plugins = {"router": FailoverRouter, "first": FakeProviderPlugin, "second": FakeProviderPlugin}
    config = {"plugins": {"first": {"reply": "a b c d", "delay": 0.01}}}
    async with make_kernel(plugins, config) as kernel:
        recorder = Recorder(kernel)
        chat_stream = await kernel.pipeline.stream(chat(stream=True), INFO)
        assert chat_stream.deployment.provider == "first"
        events = chat_stream.__aiter__()
        await events.__anext__()  # StreamStart: the client has its first byte
        chat_stream._events = _failing_after_start()  # the upstream dies mid-stream
        rest = [event async for event in events]
        await chat_stream.aclose()
        assert isinstance(rest[-1], StreamError)
        [record] = await recorder.settled(1)
        assert record.attempts == 1 and record.status == 502
        second, _ = kernel.snapshot.providers["second"]
        assert second.calls == 0  # type: ignore[attr-defined]


async def _failing_after_start() -> Any:
    raise ProviderUnavailable("connection reset mid-stream", provider="first")
    yield  # pragma: no cover - makes this an async generator


class HeaderRouter:
    """Routes on a request header, which only the ``info`` argument carries."""

    sira_api = 1

    @hookimpl
    def sira_route(self, request: Any, routes: Any, info: RequestInfo) -> Any:
        from sira_kernel import Deployment, Route

        if info.headers.get("x-tier") == "second":
            return Route((Deployment("second", "fake-1"),), reason="header x-tier")
        return None


async def test_sira_route_sees_the_http_request() -> None:
    plugins = {"router": HeaderRouter, "first": FakeProviderPlugin, "second": FakeProviderPlugin}
    async with make_kernel(plugins) as kernel:
        tiered = RequestInfo(method="POST", path="/", headers={"x-tier": "second"})
        await kernel.pipeline.chat(chat(), tiered)
        assert tiered.route == "second/fake-1; attempts=1"
        plain = RequestInfo(method="POST", path="/", headers={})
        await kernel.pipeline.chat(chat(), plain)
        assert plain.route == "first/fake-1; attempts=1"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({}, {"max_tokens": 100}), ({"max_tokens": 500}, {"max_tokens": 100}), ({"max_tokens": 40}, {"max_tokens": 40}),
     ({"max_completion_tokens": 900}, {"max_completion_tokens": 100}), ({"n": 4}, {"max_tokens": 25})],
)
async def test_a_principal_output_cap_lowers_or_sets_the_request_limit(
    fields: dict[str, Any], expected: dict[str, int]
) -> None:
    class Capped:
        sira_api = 1

        @hookimpl
        def sira_authenticate(self, request: RequestInfo) -> Principal:
            return Principal(id="capped", kind="key", max_output_tokens=100)

    async with make_kernel({"capped": Capped, "fake": FakeProviderPlugin}) as kernel:
        request = chat(**fields)
        await kernel.pipeline.chat(request, INFO)
        for field, value in expected.items():
            assert getattr(request, field) == value


async def test_a_router_that_hangs_is_bounded_like_auth() -> None:
    class Hanging:
        sira_api = 1

        @hookimpl
        async def sira_route(self, request: Any) -> Any:
            await anyio.sleep_forever()

    async with make_kernel({"hang": Hanging, "fake": FakeProviderPlugin}, {"limits": {"auth_timeout": 0.1}}) as kernel:
        with anyio.fail_after(5), pytest.raises(ProviderUnavailable, match="routing failed in plugin 'hang'"):
            await kernel.pipeline.chat(chat(), INFO)
        assert_nothing_held(kernel)


class Lister:
    """Lists two extra names (one shadowing a provider model) and denies one of them to 'limited'."""

    sira_api = 1

    @hookimpl
    def sira_list_models(self, principal: Principal, routes: Any) -> list[ModelInfo]:
        return [ModelInfo("smart", owned_by="lister", context_window=1000), ModelInfo("fake-1", owned_by="lister"),
                ModelInfo("secret")]

    @hookimpl
    def sira_authorize(self, principal: Principal, request: RequestInfo, operation: str, model: str | None) -> Any:
        return False if (principal.id == "limited" and model == "secret") else None


class BrokenLister:
    sira_api = 1

    @hookimpl
    def sira_list_models(self) -> list[ModelInfo]:
        raise RuntimeError("boom")


class LimitedAuth:
    sira_api = 1

    @hookimpl
    def sira_authenticate(self, request: RequestInfo) -> Principal | None:
        return Principal(id="limited", kind="key") if request.headers.get("x-who") == "limited" else None


async def test_model_listing_is_the_union_of_every_plugins_names() -> None:
    plugins = {"fake": FakeProviderPlugin, "lister": Lister, "broken": BrokenLister, "auth": LimitedAuth}
    async with make_kernel(plugins) as kernel:
        listed = {m.id: m for m in await kernel.pipeline.models(INFO)}
        assert {"smart", "fake-1", "secret"} <= set(listed)
        assert listed["smart"].context_window == 1000
        assert listed["fake-1"].owned_by == "lister"  # a plugin's entry wins over the provider's (default last)
        assert len([m for m in await kernel.pipeline.models(INFO) if m.id == "fake-1"]) == 1
        limited = RequestInfo(method="GET", path="/v1/models", headers={"x-who": "limited"})
        assert "secret" not in {m.id for m in await kernel.pipeline.models(limited)}  # authorized per entry
        # BrokenLister raised: logged, its names left out, the listing still answered
