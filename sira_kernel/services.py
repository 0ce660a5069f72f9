"""The service registry: typed services looked up by interface and name, owned by plugins.

Lookups read an immutable mapping that the plugin registry swaps in one assignment when a plugin's
registrations are committed or removed, so the request path never takes a lock.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast

import anyio
import msgspec

from .registrations import Health, ServiceSpec

__all__ = ["ServiceHealth", "ServiceRegistry"]

T = TypeVar("T")


class ServiceHealth(msgspec.Struct):
    interface: str
    name: str
    owner: str
    healthy: bool
    detail: str = ""


def interface_name(interface: type | str) -> str:
    """The name dependency declarations use for an interface (``KeyStore`` for ``class KeyStore``)."""
    return interface if isinstance(interface, str) else interface.__name__


class ServiceRegistry:
    """Look up services by interface (a Protocol or class) and name."""

    def __init__(self) -> None:
        self._by_key: Mapping[tuple[str, str], ServiceSpec] = {}

    def _replace(self, specs: Iterable[ServiceSpec]) -> None:
        """Swap in a new set of services (called by the plugin registry under its lock)."""
        self._by_key = {(interface_name(s.interface), s.name): s for s in specs}

    def get(self, interface: type[T], name: str = "default") -> T:
        """The service registered for ``interface`` under ``name``; ``LookupError`` if none."""
        spec = self._by_key.get((interface.__name__, name))
        if spec is None:
            raise LookupError(f"no service {interface.__name__}[{name!r}] is registered")
        return cast(T, spec.impl)

    def find(self, interface: type[T], name: str = "default") -> T | None:
        """Like :meth:`get`, but None when missing."""
        spec = self._by_key.get((interface.__name__, name))
        return None if spec is None else cast(T, spec.impl)

    def all(self, interface: type[T]) -> dict[str, T]:
        """Every service registered for ``interface``, by name."""
        wanted = interface.__name__
        return {name: cast(T, s.impl) for (iface, name), s in self._by_key.items() if iface == wanted}

    def owner_of(self, interface: type | str, name: str = "default") -> str | None:
        spec = self._by_key.get((interface_name(interface), name))
        return None if spec is None else spec.owner

    def provided(self) -> set[str]:
        """Names of every interface with at least one registered service."""
        return {iface for iface, _ in self._by_key}

    def specs(self) -> list[ServiceSpec]:
        return list(self._by_key.values())

    async def health(self, timeout: float = 2.0) -> list[ServiceHealth]:
        """Run every service's health check concurrently, each bounded by ``timeout``."""
        specs = list(self._by_key.values())
        results: list[ServiceHealth] = [
            ServiceHealth(interface_name(s.interface), s.name, s.owner, True) for s in specs
        ]

        async def check(i: int, spec: ServiceSpec) -> None:
            if spec.health is None:
                return
            try:
                with anyio.fail_after(timeout):
                    answer: Any = spec.health()
                    if inspect.isawaitable(answer):
                        answer = await answer
                results[i].healthy = bool(answer)
                if isinstance(answer, Health):
                    results[i].detail = answer.detail
                elif not answer:
                    results[i].detail = "health check returned false"
            except TimeoutError:
                results[i].healthy = False
                results[i].detail = f"health check timed out after {timeout}s"
            except Exception as exc:  # a broken check is an unhealthy service, not a broken kernel
                results[i].healthy = False
                results[i].detail = f"health check raised {type(exc).__name__}"

        async with anyio.create_task_group() as tg:
            for i, spec in enumerate(specs):
                tg.start_soon(check, i, spec)
        return results
