"""The service registry: typed lookup by interface and name, ownership, health, lock-free reads."""

from __future__ import annotations

import time
from typing import Any, Protocol

import anyio
import pytest

from sira_kernel import hookimpl
from sira_kernel.registrations import Health
from sira_kernel.services import ServiceRegistry
from sira_kernel.testing import FakeProviderPlugin, make_kernel

pytestmark = pytest.mark.anyio


class KeyStore(Protocol):
    def owner(self, key: str) -> str | None: ...


class Cache(Protocol):
    def get(self, key: str) -> Any: ...


class MemoryKeyStore:
    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys

    def owner(self, key: str) -> str | None:
        return self.keys.get(key)


class KeysPlugin:
    provides = (KeyStore,)

    @hookimpl
    def sira_register_services(self, register: Any) -> None:
        register(KeyStore, MemoryKeyStore({"k1": "alice"}))
        register(KeyStore, MemoryKeyStore({"k2": "bob"}), name="readonly")


async def test_lookup_by_interface_and_name() -> None:
    async with make_kernel({"keys": KeysPlugin}) as kernel:
        services = kernel.services
        assert services.get(KeyStore).owner("k1") == "alice"
        assert services.get(KeyStore, "readonly").owner("k2") == "bob"
        assert services.find(KeyStore, "missing") is None
        assert services.find(Cache) is None
        with pytest.raises(LookupError, match=r"Cache\['default'\]"):
            services.get(Cache)
        assert sorted(services.all(KeyStore)) == ["default", "readonly"]
        assert services.all(Cache) == {}
        assert services.owner_of(KeyStore, "readonly") == "keys"
        assert services.owner_of("KeyStore") == "keys"
        assert services.provided() == {"KeyStore"}


async def test_services_belong_to_their_plugin_and_leave_with_it() -> None:
    class CachePlugin:
        @hookimpl
        def sira_register_services(self, register: Any) -> None:
            register(Cache, {"hit": 1})

    async with make_kernel({"keys": KeysPlugin, "cache": CachePlugin}) as kernel:
        assert kernel.services.owner_of(Cache) == "cache"
        await kernel.unload("keys")
        assert kernel.services.find(KeyStore) is None
        assert kernel.services.all(KeyStore) == {}
        assert kernel.services.find(Cache) == {"hit": 1}
        await kernel.load("keys")
        assert kernel.services.get(KeyStore).owner("k1") == "alice"


async def test_a_second_plugin_cannot_take_a_registered_service_name() -> None:
    class Impostor:
        @hookimpl
        def sira_register_services(self, register: Any) -> None:
            register(KeyStore, MemoryKeyStore({"k1": "mallory"}))

    async with make_kernel({"keys": KeysPlugin, "impostor": Impostor}) as kernel:
        impostor = next(i for i in kernel.plugins.infos() if i.id == "impostor")
        assert impostor.state == "failed"
        assert "KeyStore['default'] is already registered by 'keys'" in (impostor.reason or "")
        assert kernel.services.get(KeyStore).owner("k1") == "alice"


def checks_plugin() -> type:
    async def async_ok() -> bool:
        await anyio.sleep(0)
        return True

    async def async_down() -> bool:
        return False

    def raises() -> bool:
        raise ConnectionError("db at postgres://admin:hunter2-secret@db is down")

    async def hangs() -> bool:
        await anyio.sleep_forever()
        raise AssertionError

    class Checks:
        @hookimpl
        def sira_register_services(self, register: Any) -> None:
            register(Cache, object(), name="sync-ok", health=lambda: True)
            register(Cache, object(), name="sync-down", health=lambda: False)
            register(Cache, object(), name="async-ok", health=async_ok)
            register(Cache, object(), name="async-down", health=async_down)
            register(Cache, object(), name="raises", health=raises)
            register(Cache, object(), name="hangs", health=hangs)
            register(Cache, object(), name="hangs-too", health=hangs)
            register(Cache, object(), name="unchecked")

    return Checks


async def test_health_checks_are_aggregated_concurrently_and_bounded() -> None:
    async with make_kernel({"checks": checks_plugin()}) as kernel:
        began = time.monotonic()
        report = {h.name: h for h in await kernel.services.health(timeout=0.3)}
        # Both hanging checks share one bound: they run concurrently.
        assert time.monotonic() - began < 0.55
        healthy = {name for name, h in report.items() if h.healthy}
        assert healthy == {"sync-ok", "async-ok", "unchecked"}
        assert report["sync-down"].detail == "health check returned false"
        assert report["async-down"].detail == "health check returned false"
        assert report["raises"].detail == "health check raised ConnectionError"
        assert "hunter2" not in report["raises"].detail
        assert report["hangs"].detail == "health check timed out after 0.3s"
        assert all(h.owner == "checks" and h.interface == "Cache" for h in report.values())


async def test_an_unhealthy_service_makes_the_kernel_not_ready() -> None:
    state = {"up": True}

    class Flaky:
        @hookimpl
        def sira_register_services(self, register: Any) -> None:
            register(Cache, object(), health=lambda: state["up"])

    async with make_kernel({"flaky": Flaky, "fake": FakeProviderPlugin}) as kernel:
        report = await kernel.health()
        assert report.ready and report.status == "ok"
        state["up"] = False
        report = await kernel.health()
        assert not report.ready and report.status == "unavailable"
        assert [(s.name, s.healthy, s.owner) for s in report.services] == [("default", False, "flaky")]


async def test_lookups_do_not_wait_for_the_registry_lock() -> None:
    async with make_kernel({"keys": KeysPlugin}) as kernel:
        lookups: list[str | None] = []

        async def hold_lock(*, task_status: Any) -> None:
            async with kernel.plugins.lock:
                task_status.started()
                await anyio.sleep(0.3)

        with anyio.fail_after(0.2):
            async with anyio.create_task_group() as tg:
                await tg.start(hold_lock)
                assert kernel.plugins.lock.locked()
                for _ in range(100):
                    lookups.append(kernel.services.get(KeyStore).owner("k1"))
                    await anyio.sleep(0)
                tg.cancel_scope.cancel()
        assert lookups == ["alice"] * 100


def test_the_registry_swaps_a_whole_mapping() -> None:
    """Lookups read one immutable mapping; ``_replace`` swaps it, never mutates it in place."""
    registry = ServiceRegistry()
    before = registry._by_key
    registry._replace([])
    assert registry._by_key is not before
    assert not hasattr(registry, "lock") and not hasattr(registry, "_lock")


async def test_a_health_answer_with_detail_is_reported() -> None:
    class Checked:
        sira_api = 1

        @hookimpl
        def sira_register_services(self, register: Any) -> None:
            register(KeyStore, MemoryKeyStore({}), name="a", health=lambda: Health(False, "breaker open: b1"))
            register(KeyStore, MemoryKeyStore({}), name="b", health=lambda: Health(True, "2 deployments closed"))

    async with make_kernel({"checked": Checked}) as kernel:
        report = {h.name: (h.healthy, h.detail) for h in await kernel.services.health()}
        assert report == {"a": (False, "breaker open: b1"), "b": (True, "2 deployments closed")}
