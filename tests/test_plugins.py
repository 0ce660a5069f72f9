"""The plugin registry: isolation of failures, dependencies, hot unload/replace, leases and decision hooks.

Every test builds an isolated kernel with ``make_kernel`` and real plugin classes defined inline.
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import msgspec
import pytest

from sira_kernel import (
    AuthenticationFailed,
    AuthorizationDenied,
    ChatRequest,
    Deployment,
    Message,
    ModelNotFound,
    PluginError,
    PluginLoadError,
    PluginUnavailable,
    Principal,
    RequestInfo,
    Route,
    StreamError,
    TextDelta,
    hookimpl,
)
from sira_kernel.kernel import Kernel
from sira_kernel.plugins import LocalEntryPoint
from sira_kernel.testing import FakeProvider, FakeProviderPlugin, make_config, make_kernel

pytestmark = pytest.mark.anyio

INFO = RequestInfo(method="POST", path="/v1/chat/completions", headers={})


def chat_request(model: str = "fake-1") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message("user", "hello")])


async def answer(kernel: Kernel, model: str = "fake-1") -> str:
    response = await kernel.pipeline.chat(chat_request(model), INFO)
    return str(response.choices[0].message.content)


def info_of(kernel: Kernel, plugin_id: str) -> Any:
    return next(i for i in kernel.plugins.infos() if i.id == plugin_id)


def lifespan_of(enter: Any = None, exit: Any = None) -> Any:
    """A ``sira_lifespan`` result running the given async callables on enter and exit."""

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        if enter is not None:
            await enter()
        yield
        if exit is not None:
            await exit()

    return lifespan()


# -- per-plugin isolation ---------------------------------------------------------------------------


def _import_fails() -> type:
    raise ImportError("No module named 'sira_nowhere'")


class WithConfig:
    class Config(msgspec.Struct, forbid_unknown_fields=True):
        size: int = 1


class TargetsFutureApi:
    sira_api = 99


class ConstructorRaises:
    def __init__(self) -> None:
        raise RuntimeError("constructor exploded")


class LifespanStartRaises:
    @hookimpl
    def sira_lifespan(self, context: Any) -> Any:
        async def enter() -> None:
            raise RuntimeError("cannot connect to the upstream")

        return lifespan_of(enter)


class RegistrationRaises:
    @hookimpl
    def sira_register_services(self, register: Any) -> None:
        raise ValueError("registration exploded")


class MisspelledHook:
    @hookimpl
    def sira_authenticat(self, request: Any) -> None:
        return None


BROKEN: dict[str, tuple[Any, str]] = {
    "import-fails": (_import_fails, "import failed: ImportError: No module named 'sira_nowhere'"),
    "wrong-type": (WithConfig, "plugins.wrong-type"),
    "unknown-key": (WithConfig, "plugins.unknown-key.colour: unknown key"),
    "future-api": (TargetsFutureApi, "targets kernel API 99"),
    "constructor": (ConstructorRaises, "constructor failed: RuntimeError: constructor exploded"),
    "lifespan": (LifespanStartRaises, "lifespan start failed: RuntimeError: cannot connect to the upstream"),
    "registration": (RegistrationRaises, "sira_register_services failed: ValueError: registration exploded"),
    "typo": (MisspelledHook, "sira_authenticat"),
}


async def test_each_broken_plugin_fails_alone_and_the_healthy_one_serves() -> None:
    plugins: dict[str, Any] = {pid: target for pid, (target, _) in BROKEN.items()}
    plugins["fake"] = FakeProviderPlugin
    config = {"plugins": {"wrong-type": {"size": "big"}, "unknown-key": {"size": 2, "colour": "red"}}}
    async with make_kernel(plugins, config) as kernel:
        infos = {i.id: i for i in kernel.plugins.infos()}
        for plugin_id, (_, reason) in BROKEN.items():
            assert infos[plugin_id].state == "failed", plugin_id
            assert reason in (infos[plugin_id].reason or ""), (plugin_id, infos[plugin_id].reason)
        wrong_type = infos["wrong-type"].reason or ""
        assert "size" in wrong_type and "expected `int`" in wrong_type and "big" not in wrong_type
        assert infos["fake"].state == "active"

        health = await kernel.health()
        assert health.status == "degraded"
        reported = {p.id: p for p in health.plugins}
        assert {pid for pid, p in reported.items() if p.state == "failed"} == set(BROKEN)
        assert all(reported[pid].reason for pid in BROKEN)

        assert await answer(kernel) == "Hello from the fake provider"
        # Nothing of a failed plugin stays registered with pluggy.
        pm = kernel.plugins.pm
        assert {pm.get_name(p).partition("#")[0] for p in pm.get_plugins()} == {"kernel", "fake"}


async def test_failed_load_raises_with_the_reason_and_kernel_keeps_serving() -> None:
    async with make_kernel({"fake": FakeProviderPlugin, "broken": ConstructorRaises}, enable=["fake"]) as kernel:
        with pytest.raises(PluginLoadError, match="constructor exploded") as caught:
            await kernel.load("broken")
        assert caught.value.plugin_id == "broken"
        assert info_of(kernel, "broken").state == "failed"
        assert await answer(kernel) == "Hello from the fake provider"


async def test_lifespan_exit_raising_still_unloads_and_records_the_reason() -> None:
    class ExitRaises(FakeProviderPlugin):
        @hookimpl
        def sira_lifespan(self, context: Any) -> Any:
            async def exit() -> None:
                raise RuntimeError("close failed")

            return lifespan_of(exit=exit)

    async with make_kernel({"bad-exit": ExitRaises, "fake": FakeProviderPlugin},
                           {"plugins": {"bad-exit": {"models": ["other-1"]}}}) as kernel:
        info = await kernel.unload("bad-exit")
        assert info.state == "stopped"
        assert info.reason == "lifespan exit failed: RuntimeError: close failed"
        assert "bad-exit" not in kernel.snapshot.providers
        assert all(kernel.plugins.pm.get_name(p) != "bad-exit#1" for p in kernel.plugins.pm.get_plugins())
        assert await answer(kernel) == "Hello from the fake provider"


async def test_lifespan_hanging_on_exit_is_bounded_by_stop_timeout() -> None:
    class ExitHangs(FakeProviderPlugin):
        @hookimpl
        def sira_lifespan(self, context: Any) -> Any:
            return lifespan_of(exit=anyio.sleep_forever)

    config = {"kernel": {"stop_timeout": 0.2}, "plugins": {"hangs": {"models": ["other-1"]}}}
    async with make_kernel({"hangs": ExitHangs, "fake": FakeProviderPlugin}, config) as kernel:
        began = time.monotonic()
        with anyio.fail_after(5):
            info = await kernel.unload("hangs")
        assert time.monotonic() - began < 2
        assert info.reason == "lifespan exit did not finish within 0.2s"
        assert await answer(kernel) == "Hello from the fake provider"


# -- dependencies -----------------------------------------------------------------------------------


class KeyStore(Protocol):
    def lookup(self, key: str) -> str | None: ...


class DictKeyStore:
    def lookup(self, key: str) -> str | None:
        return {"k1": "alice"}.get(key)


def dependency_plugins(log: list[str]) -> dict[str, Any]:
    class Base:
        name = "?"

        @hookimpl
        def sira_lifespan(self, context: Any) -> Any:
            async def enter() -> None:
                log.append(f"start {self.name}")

            async def exit() -> None:
                log.append(f"stop {self.name}")

            return lifespan_of(enter, exit)

    class Store(Base):
        name = "store"
        provides = (KeyStore,)

        @hookimpl
        def sira_register_services(self, register: Any) -> None:
            register(KeyStore, DictKeyStore())

    class Auth(Base):
        name = "auth"
        requires = ("KeyStore",)
        provides = ("Authenticator",)

        @hookimpl
        def sira_register_services(self, register: Any) -> None:
            register(type("Authenticator", (), {}), object())

    class Audit(Base):
        name = "audit"
        requires = ("Authenticator", KeyStore)

    # Listed in the wrong order on purpose: start order must follow requires/provides.
    return {"audit": Audit, "auth": Auth, "store": Store}


async def test_start_order_follows_dependencies_and_stop_order_reverses_it() -> None:
    log: list[str] = []
    async with make_kernel(dependency_plugins(log)) as kernel:
        assert log == ["start store", "start auth", "start audit"]
        assert info_of(kernel, "auth").requires == ["KeyStore"]
        assert info_of(kernel, "store").provides == ["KeyStore"]
        assert kernel.services.get(KeyStore).lookup("k1") == "alice"
    assert log[3:] == ["stop audit", "stop auth", "stop store"]


async def test_missing_dependency_fails_naming_the_service() -> None:
    log: list[str] = []
    plugins = dependency_plugins(log)
    plugins.pop("store")
    async with make_kernel({**plugins, "fake": FakeProviderPlugin}) as kernel:
        auth = info_of(kernel, "auth")
        assert auth.state == "failed" and "KeyStore" in (auth.reason or "")
        audit = info_of(kernel, "audit")
        assert audit.state == "failed" and "requires" in (audit.reason or "")
        assert log == []
        assert await answer(kernel) == "Hello from the fake provider"


async def test_dependency_cycle_fails_both_plugins() -> None:
    class Chicken:
        requires = ("Egg",)
        provides = ("Chicken",)

    class Egg:
        requires = ("Chicken",)
        provides = ("Egg",)

    async with make_kernel({"chicken": Chicken, "egg": Egg, "fake": FakeProviderPlugin}) as kernel:
        for plugin_id in ("chicken", "egg"):
            info = info_of(kernel, plugin_id)
            assert info.state == "failed"
            assert "dependency cycle" in (info.reason or "")
            assert "chicken" in (info.reason or "") and "egg" in (info.reason or "")
        assert info_of(kernel, "fake").state == "active"


async def test_unloading_a_plugin_others_require_is_refused() -> None:
    async with make_kernel(dependency_plugins([])) as kernel:
        with pytest.raises(PluginError) as caught:
            await kernel.unload("store")
        assert caught.value.status == 409
        assert "auth" in caught.value.reason and "audit" in caught.value.reason
        assert info_of(kernel, "store").state == "active"
        await kernel.unload("audit")
        await kernel.unload("auth")
        await kernel.unload("store")
        assert kernel.services.find(KeyStore) is None


async def test_the_same_id_from_two_distributions_fails_naming_both() -> None:
    kernel = make_kernel({"twin": FakeProviderPlugin, "fake": FakeProviderPlugin})
    kernel.plugins.add_source(LocalEntryPoint("twin", FakeProviderPlugin, distribution="sira-twin-fork"))
    async with kernel:
        twin = info_of(kernel, "twin")
        assert twin.state == "failed"
        assert "test-twin" in (twin.reason or "") and "sira-twin-fork" in (twin.reason or "")
        assert "twin" not in kernel.snapshot.providers
        assert await answer(kernel) == "Hello from the fake provider"


# -- hot unload leaves nothing behind ----------------------------------------------------------------


class Everything(FakeProviderPlugin):
    """Registers one of each kind of thing, to check that unload removes all of it."""

    @hookimpl
    def sira_register_services(self, register: Any) -> None:
        register(KeyStore, DictKeyStore(), health=lambda: True)

    @hookimpl
    def sira_register_routes(self, register: Any) -> None:
        async def endpoint(request: Any) -> Any:  # pragma: no cover - never called
            raise AssertionError

        register("/everything", endpoint, methods=["GET"])

    @hookimpl
    def sira_register_subscriptions(self, register: Any) -> None:
        register("usage.#", self.on_usage)

    def on_usage(self, event: Any) -> None:
        pass

    @hookimpl
    def sira_authorize(self, principal: Any, request: Any, operation: str, model: str | None) -> None:
        return None

    @hookimpl
    def sira_lifespan(self, context: Any) -> Any:
        context.start_task(anyio.sleep_forever, name="idle")
        return lifespan_of()


async def test_a_plugin_frozen_at_startup_is_reclaimed_after_unload() -> None:
    """``sira serve`` freezes what exists after startup (server.gc_freeze); an unload gives it back."""
    async with make_kernel({"everything": Everything}) as kernel:
        ref = weakref.ref(kernel.plugins.handles["everything"].instance)
        gc.collect()
        gc.freeze()
        try:
            await kernel.unload("everything")
            assert gc.get_freeze_count() == 0
            gc.collect()
            assert ref() is None
        finally:
            gc.unfreeze()


async def test_load_unload_loop_leaves_nothing_behind() -> None:
    async with make_kernel({"everything": Everything}, enable=[]) as kernel:
        pm = kernel.plugins.pm
        baseline = set(pm.get_plugins())
        assert baseline == {kernel.defaults}
        for _ in range(20):
            await kernel.load("everything")
            ref = weakref.ref(kernel.plugins.handles["everything"].instance)
            assert "everything" in kernel.snapshot.providers
            assert kernel.services.find(KeyStore) is not None
            assert [r.path for r in kernel.snapshot.routes] == ["/everything"]
            assert len(kernel.bus.subscriptions) == 1
            assert await answer(kernel) == "Hello from the fake provider"

            await kernel.unload("everything")
            gc.collect()
            assert ref() is None, gc.get_referrers(ref())
            assert set(pm.get_plugins()) == baseline
            for caller in vars(pm.hook).values():
                impls = getattr(caller, "get_hookimpls", list)()
                assert all(not i.plugin_name.startswith("everything") for i in impls)
            snapshot = kernel.snapshot
            assert snapshot.providers == {} and snapshot.routes == () and snapshot.handles == {}
            assert [fn for fn, pid in snapshot.authorize if pid == "everything"] == []
            assert kernel.services.specs() == []
            assert kernel.bus.subscriptions == ()
            assert "everything" not in kernel.plugins.handles
            with pytest.raises(ModelNotFound):
                await answer(kernel)


# -- leases and draining ----------------------------------------------------------------------------


def slow_stream_kernel(drain_config: dict[str, Any] | None = None) -> Kernel:
    config: dict[str, Any] = {
        "plugins": {
            "slow": {"models": ["fake-1", "slow-only"], "reply": "one two three four five", "delay": 0.04},
            "other": {"models": ["fake-1"], "reply": "from other"},
        },
        **(drain_config or {}),
    }
    return make_kernel({"slow": FakeProviderPlugin, "other": FakeProviderPlugin}, config)


async def test_unload_waits_for_an_open_stream_with_a_generous_drain_timeout() -> None:
    async with slow_stream_kernel() as kernel:
        done: dict[str, float] = {}
        events: list[Any] = []
        stream = await kernel.pipeline.stream(chat_request("slow-only"), INFO)
        assert stream.deployment.provider == "slow"

        async def consume() -> None:
            try:
                async for event in stream:
                    events.append(event)
            finally:
                await stream.aclose()
            done["stream"] = time.monotonic()

        async def unload() -> None:
            info = await kernel.unload("slow", drain_timeout=10)
            done["unload"] = time.monotonic()
            done["state"] = info.state  # type: ignore[assignment]

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await anyio.sleep(0.05)
                tg.start_soon(unload)
                await anyio.sleep(0.02)
                # While "slow" drains, new requests never reach it.
                assert kernel.plugins.handles.get("slow") is None
                assert await answer(kernel, "fake-1") == "from other"
                with pytest.raises(ModelNotFound):
                    await answer(kernel, "slow-only")
                assert "stream" not in done and "unload" not in done

        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        assert text == "one two three four five"
        assert not any(isinstance(e, StreamError) for e in events)
        assert done["stream"] <= done["unload"]
        assert done["state"] == "stopped"


async def test_unload_with_a_tiny_drain_timeout_ends_the_stream_with_an_error() -> None:
    async with slow_stream_kernel({"kernel": {"stop_timeout": 1.0}}) as kernel:
        slow_provider = kernel.snapshot.providers["slow"][0]
        slow_provider.delay = 0.5  # type: ignore[attr-defined]
        events: list[Any] = []
        stream = await kernel.pipeline.stream(chat_request("slow-only"), INFO)

        async def consume() -> None:
            try:
                with stream.guard() as guard:  # as surfaces consume streams: revoking cancels it
                    async for event in stream:
                        events.append(event)
                if guard.cancelled_caught:
                    events.append(stream.interrupted())
            finally:
                await stream.aclose()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await anyio.sleep(0.05)
                began = time.monotonic()
                info = await kernel.unload("slow", drain_timeout=0.05)
                assert time.monotonic() - began < 1.5
        assert info.state == "stopped"
        assert isinstance(events[-1], StreamError)
        assert events[-1].code == "provider_unloaded" and events[-1].status == 503
        assert slow_provider.closed_streams == 1  # type: ignore[attr-defined]
        with pytest.raises((ModelNotFound, PluginUnavailable)):
            await answer(kernel, "slow-only")


async def test_a_non_streamed_call_in_flight_is_cancelled_after_the_drain_timeout() -> None:
    async with make_kernel({"fake": FakeProviderPlugin}, {"plugins": {"fake": {"delay": 30}}}) as kernel:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                failures: list[BaseException] = []

                async def call() -> None:
                    try:
                        await answer(kernel)
                    except Exception as exc:
                        failures.append(exc)

                tg.start_soon(call)
                await anyio.sleep(0.05)
                await kernel.unload("fake", drain_timeout=0.05)
        assert len(failures) == 1 and getattr(failures[0], "code", None) == "provider_unloaded"


# -- replace (make-before-break) ---------------------------------------------------------------------


class Switchable:
    """A provider plugin whose reply and start behaviour come from its config."""

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        reply: str = "v1"
        fail_start: bool = False
        delay: float = 0.0

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def sira_lifespan(self, context: Any) -> Any:
        async def enter() -> None:
            if self.config.fail_start:
                raise ConnectionError("upstream refused")

        return lifespan_of(enter)

    @hookimpl
    def sira_register_providers(self, register: Any) -> None:
        register(FakeProvider(register.owner, ["fake-1"], self.config.reply, self.config.delay))


def switchable_config(**section: Any) -> Any:
    return make_config({"plugins": {"switch": section}}, plugins=["switch"])


async def test_replace_starts_the_new_generation_then_drains_the_old() -> None:
    async with make_kernel({"switch": Switchable}, switchable_config(reply="old words here", delay=0.05)) as kernel:
        first = kernel.plugins.handles["switch"].generation
        stream = await kernel.pipeline.stream(chat_request(), INFO)
        events: list[Any] = []
        replaced: dict[str, Any] = {}

        async def consume() -> None:
            try:
                async for event in stream:
                    events.append(event)
            finally:
                await stream.aclose()
            replaced.setdefault("stream_done_before_replace", "replace" not in replaced)

        async def replace() -> None:
            replaced["replace"] = await kernel.replace("switch", switchable_config(reply="new"))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await anyio.sleep(0.02)
                tg.start_soon(replace)
                await anyio.sleep(0.03)
                # The new generation answers while the old one still drains its stream.
                assert await answer(kernel) == "new"
                assert "replace" not in replaced
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "old words here"
        assert replaced["stream_done_before_replace"] is True
        assert replaced["replace"].generation > first
        assert replaced["replace"].state == "active"
        assert await answer(kernel) == "new"
        assert len(kernel.plugins.pm.get_plugins()) == 2  # the kernel's defaults and the new generation


@pytest.mark.parametrize(
    ("section", "reason"),
    [({"reply": 5}, "invalid config"), ({"reply": "v2", "fail_start": True}, "upstream refused")],
    ids=["invalid-config", "lifespan-fails"],
)
async def test_failed_replace_keeps_the_old_generation(section: dict[str, Any], reason: str) -> None:
    async with make_kernel({"switch": Switchable}, switchable_config()) as kernel:
        old = kernel.plugins.handles["switch"]
        with pytest.raises(PluginLoadError, match=reason):
            await kernel.replace("switch", switchable_config(**section))
        assert kernel.plugins.handles["switch"] is old
        assert info_of(kernel, "switch").state == "active"
        assert await answer(kernel) == "v1"
        assert len(kernel.plugins.pm.get_plugins()) == 2


async def test_failed_replace_keeps_the_old_config() -> None:
    original = switchable_config()
    async with make_kernel({"switch": Switchable}, original) as kernel:
        with pytest.raises(PluginLoadError):
            await kernel.replace("switch", switchable_config(reply=5))
        assert kernel.config is original


# -- atomic registration ----------------------------------------------------------------------------


class SlowStarter(FakeProviderPlugin):
    @hookimpl
    def sira_lifespan(self, context: Any) -> Any:
        return lifespan_of(lambda: anyio.sleep(0.1))

    @hookimpl
    def sira_register_services(self, register: Any) -> None:
        register(KeyStore, DictKeyStore())

    @hookimpl
    def sira_register_routes(self, register: Any) -> None:
        async def endpoint(request: Any) -> Any:  # pragma: no cover - never called
            raise AssertionError

        register("/slow", endpoint)


async def test_a_starting_plugin_is_seen_entirely_or_not_at_all() -> None:
    async with make_kernel({"slow": SlowStarter}, enable=[]) as kernel:
        seen: list[tuple[bool, bool, bool]] = []
        loaded = anyio.Event()

        async def poll() -> None:
            while not loaded.is_set():
                snapshot = kernel.snapshot
                seen.append((
                    "slow" in snapshot.providers,
                    any(r.path == "/slow" for r in snapshot.routes),
                    kernel.services.find(KeyStore) is not None,
                ))
                await anyio.sleep(0)

        async def load() -> None:
            await kernel.load("slow")
            loaded.set()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                tg.start_soon(load)
        assert len(seen) > 10
        assert set(seen) <= {(False, False, False), (True, True, True)}
        assert seen[0] == (False, False, False)
        assert "slow" in kernel.snapshot.providers and kernel.services.find(KeyStore) is not None


# -- decision hooks ---------------------------------------------------------------------------------


class AsyncAbstainer:
    """Answers authenticate with a coroutine resolving to None: the chain must continue."""

    calls = 0

    @hookimpl(tryfirst=True)
    def sira_authenticate(self, request: RequestInfo) -> Any:
        async def decide() -> None:
            await anyio.sleep(0)
            AsyncAbstainer.calls += 1
            return None

        return decide()


class AsyncKeyAuth:
    @hookimpl
    def sira_authenticate(self, request: RequestInfo) -> Any:
        async def decide() -> Principal | None:
            if request.bearer_token == "k1":
                return Principal(id="alice", kind="key")
            return None

        return decide()


def authed(token: str) -> RequestInfo:
    return RequestInfo(method="POST", path="/v1/chat/completions", headers={"authorization": f"Bearer {token}"})


async def test_authenticate_awaits_answers_in_order_and_knows_who_answered() -> None:
    AsyncAbstainer.calls = 0
    plugins = {"abstain": AsyncAbstainer, "keys": AsyncKeyAuth, "fake": FakeProviderPlugin}
    async with make_kernel(plugins, {"server": {"master_key": "master-key-123456"}}) as kernel:
        ids = [plugin_id for _, plugin_id in kernel.snapshot.authenticate]
        assert ids == ["abstain", "keys", "kernel"]
        principal = await kernel.pipeline.authenticate(kernel.snapshot, authed("k1"))
        assert principal.id == "alice" and AsyncAbstainer.calls == 1
        # Nobody but the kernel's default recognises the master key.
        master = await kernel.pipeline.authenticate(kernel.snapshot, authed("master-key-123456"))
        assert master.kind == "master" and AsyncAbstainer.calls == 2
        with pytest.raises(AuthenticationFailed):
            await kernel.pipeline.authenticate(kernel.snapshot, authed("nope-nope-nope"))
        response = await kernel.pipeline.chat(chat_request(), authed("k1"))
        assert response.choices[0].message.content == "Hello from the fake provider"


async def test_authenticate_raising_is_a_401() -> None:
    class Crashes:
        @hookimpl
        def sira_authenticate(self, request: RequestInfo) -> Any:
            raise KeyError("database gone")

    async with make_kernel({"crash": Crashes, "fake": FakeProviderPlugin}) as kernel:
        with pytest.raises(AuthenticationFailed) as caught:
            await kernel.pipeline.chat(chat_request(), INFO)
        assert caught.value.status == 401
        assert "database gone" not in caught.value.message


def voter(vote: Any) -> type:
    class Voter:
        @hookimpl
        def sira_authorize(self, principal: Any, request: Any, operation: str, model: str | None) -> Any:
            if isinstance(vote, Exception):
                raise vote

            async def later() -> Any:
                return vote

            return later()

    return Voter


@pytest.mark.parametrize(
    ("votes", "allowed"),
    [
        ((None, None), True),
        ((True, None), True),
        ((True, False), False),
        ((False, True), False),
        ((None, RuntimeError("policy store down")), False),
    ],
)
async def test_authorize_any_deny_wins_and_none_abstains(votes: tuple[Any, ...], allowed: bool) -> None:
    plugins: dict[str, Any] = {f"voter-{i}": voter(v) for i, v in enumerate(votes)}
    plugins["fake"] = FakeProviderPlugin
    async with make_kernel(plugins) as kernel:
        assert {pid for _, pid in kernel.snapshot.authorize} == {"voter-0", "voter-1", "kernel"}
        if allowed:
            assert await answer(kernel) == "Hello from the fake provider"
        else:
            with pytest.raises(AuthorizationDenied) as caught:
                await answer(kernel)
            assert caught.value.status == 403


async def test_a_plugin_route_wins_over_the_default() -> None:
    class PinToB:
        @hookimpl
        def sira_route(self, request: Any, principal: Any, routes: Any) -> Any:
            async def decide() -> Route | None:
                if request.model == "smart":
                    return Route((Deployment("b", "fake-1"),), reason="alias")
                return None

            return decide()

    plugins = {"router": PinToB, "a": FakeProviderPlugin, "b": FakeProviderPlugin}
    config = {"plugins": {"a": {"reply": "from a"}, "b": {"reply": "from b"}}}
    async with make_kernel(plugins, config) as kernel:
        assert [pid for _, pid in kernel.snapshot.route] == ["router", "kernel"]
        assert await answer(kernel, "smart") == "from b"
        # The router abstains for other models, and the default maps the model name.
        assert await answer(kernel, "fake-1") in ("from a", "from b")
        with pytest.raises(ModelNotFound):
            await answer(kernel, "unknown-model")


# -- plugin tasks -----------------------------------------------------------------------------------


async def test_plugin_tasks_are_cancelled_before_its_lifespan_exits() -> None:
    log: list[str] = []

    class Ticker(FakeProviderPlugin):
        @hookimpl
        def sira_lifespan(self, context: Any) -> Any:
            async def tick() -> None:
                try:
                    log.append("task running")
                    await anyio.sleep_forever()
                finally:
                    log.append("task cancelled")

            async def enter() -> None:
                context.start_task(tick, name="ticker")

            async def exit() -> None:
                log.append("lifespan exit")

            return lifespan_of(enter, exit)

    async with make_kernel({"ticker": Ticker}) as kernel:
        await anyio.sleep(0.01)
        assert log == ["task running"]
        await kernel.unload("ticker")
        assert log == ["task running", "task cancelled", "lifespan exit"]


# -- sira_configure ----------------------------------------------------------------------------------


async def test_configure_sees_the_current_config_and_a_raise_fails_the_plugin() -> None:
    ports: list[int] = []

    class Configured(Switchable):
        @hookimpl
        def sira_configure(self, config: Any) -> None:
            ports.append(config.server.port)

    class ConfigureRaises:
        @hookimpl
        def sira_configure(self, config: Any) -> None:
            raise LookupError("no such region")

    first = make_config({"server": {"port": 1111}}, plugins=["switch", "picky"])
    async with make_kernel({"switch": Configured, "picky": ConfigureRaises}, first) as kernel:
        picky = info_of(kernel, "picky")
        assert picky.state == "failed"
        assert picky.reason == "sira_configure failed: LookupError: no such region"
        await kernel.replace("switch", make_config({"server": {"port": 2222}}, plugins=["switch"]))
        # Each generation is configured once, with the config current when it starts.
        assert ports == [1111, 2222]



class WrapsAuthenticate:
    @hookimpl(wrapper=True)
    def sira_authenticate(self, request: Any) -> Any:
        return (yield)


class WrapsRegistration:
    @hookimpl(hookwrapper=True)
    def sira_register_providers(self, register: Any) -> Any:
        yield


@pytest.mark.parametrize(
    ("plugin", "hook"),
    [(WrapsAuthenticate, "sira_authenticate"), (WrapsRegistration, "sira_register_providers")],
)
async def test_hook_wrappers_are_refused(plugin: type, hook: str) -> None:
    async with make_kernel({"wrapping": plugin, "fake": FakeProviderPlugin}) as kernel:
        info = info_of(kernel, "wrapping")
        assert info.state == "failed"
        assert info.reason == f"implements {hook} as a hook wrapper, which Sira does not support"
        assert [pid for _, pid in kernel.snapshot.authenticate] == ["kernel"]
        assert await answer(kernel) == "Hello from the fake provider"


class AnyMethodRoute:
    sira_api = 1

    @hookimpl
    def sira_register_routes(self, register: Any) -> None:
        async def endpoint(request: Any) -> Any:  # pragma: no cover - never called
            raise AssertionError

        register("/shared", endpoint)  # no methods: every method


class GetRoute(AnyMethodRoute):
    @hookimpl
    def sira_register_routes(self, register: Any) -> None:
        async def endpoint(request: Any) -> Any:  # pragma: no cover - never called
            raise AssertionError

        register("/shared", endpoint, methods=["GET"])


async def test_a_route_for_every_method_conflicts_with_one_for_get() -> None:
    async with make_kernel({"any": AnyMethodRoute, "get": GetRoute}) as kernel:
        states = {i.id: (i.state, i.reason) for i in kernel.plugins.infos()}
        assert states["any"][0] == "active"
        assert states["get"][0] == "failed" and "already registered by 'any'" in (states["get"][1] or "")


async def test_a_plugin_handed_to_make_kernel_shadows_an_installed_one() -> None:
    async with make_kernel({"provider-mock": FakeProviderPlugin}) as kernel:
        [info] = [i for i in kernel.plugins.infos() if i.id == "provider-mock"]
        assert info.state == "active" and info.distribution == "test-provider-mock"


class BrokenSchema:
    """A plugin whose Config struct msgspec cannot decode into (an unsupported annotation)."""

    sira_api = 1

    class Config(msgspec.Struct):
        handler: Callable[[], None] | None = None  # not a type msgspec can convert to

    def __init__(self, config: Any) -> None:  # pragma: no cover - never constructed
        raise AssertionError


async def test_an_unusable_config_schema_fails_only_that_plugin() -> None:
    config = {"plugins": {"broken": {"handler": "x"}}}
    async with make_kernel({"broken": BrokenSchema, "fake": FakeProviderPlugin}, config) as kernel:
        states = {i.id: (i.state, i.reason or "") for i in kernel.plugins.infos()}
        assert states["broken"][0] == "failed" and "unusable" in states["broken"][1]
        assert states["fake"][0] == "active"
