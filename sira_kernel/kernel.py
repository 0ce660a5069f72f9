"""The kernel: owns the four mechanisms and the registry snapshot the request path reads.

``async with Kernel(config) as kernel:`` starts the enabled plugins; leaving the block unloads them
in reverse order. Every registry change builds a new immutable :class:`Snapshot` and swaps it in
with a single assignment, so a request that read ``kernel.snapshot`` sees one consistent world.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from anyio.abc import TaskGroup

from .auth import ANONYMOUS, Principal, RequestInfo
from .bus import MessageBus
from .config import KernelConfig
from .errors import AuthenticationFailed, SiraError
from .events import PluginEvent
from .hookspecs import DECISION_HOOKS, hookimpl
from .logs import get_logger
from .pipeline import Pipeline
from .plugins import PluginHandle, PluginInfo, PluginRegistry, PluginState
from .providers import Provider
from .registrations import MiddlewareSpec, RouteSpec, Tool
from .routing import Route, RouteTable
from .scheduler import PoolStats, Scheduler
from .services import ServiceHealth, ServiceRegistry

if TYPE_CHECKING:
    from .asgi import ASGIApp
    from .types import ModelInfo

__all__ = ["HealthReport", "Kernel", "KernelDefaults", "Snapshot"]

_log = get_logger("sira.kernel")
HookList = tuple[tuple[Callable[..., Any], str], ...]


def _accepting_only(
    function: Callable[..., Any], argnames: tuple[str, ...], spec_argnames: tuple[str, ...]
) -> Callable[..., Any]:
    """pluggy lets an implementation take a subset of the spec's arguments; the pipeline passes
    them all by keyword, so such an implementation gets a thin adapter (built once per snapshot)."""
    if set(argnames) >= set(spec_argnames):
        return function
    wanted = tuple(argnames)

    def adapter(**kwargs: Any) -> Any:
        return function(**{name: kwargs[name] for name in wanted})

    return adapter


class Snapshot:
    """Everything the request path needs, frozen at one registry generation."""

    __slots__ = (
        "apps", "authenticate", "authorize", "generation", "handles", "list_models", "middleware",
        "providers", "route", "route_table", "routes", "tools",
    )

    def __init__(
        self,
        generation: int,
        handles: dict[str, PluginHandle],
        providers: dict[str, tuple[Provider, PluginHandle]],
        routes: tuple[RouteSpec, ...],
        middleware: tuple[MiddlewareSpec, ...],
        tools: tuple[Tool, ...],
        hooks: dict[str, HookList],
        apps: dict[str, ASGIApp],
    ) -> None:
        self.generation = generation
        self.handles = handles
        self.providers = providers
        self.route_table = RouteTable({name: p for name, (p, _) in providers.items()})
        self.routes = routes
        self.middleware = middleware
        self.tools = tools
        self.authenticate = hooks.get("sira_authenticate", ())
        self.authorize = hooks.get("sira_authorize", ())
        self.route = hooks.get("sira_route", ())
        self.list_models = hooks.get("sira_list_models", ())
        self.apps = apps


class PluginHealth(msgspec.Struct):
    id: str
    state: str
    reason: str | None = None


class HealthReport(msgspec.Struct):
    """The kernel's health: ``status`` is "ok", "degraded" (some plugin failed) or "unavailable"."""

    status: str
    ready: bool
    uptime_s: float
    generation: int
    plugins: list[PluginInfo]
    services: list[ServiceHealth]
    pools: list[PoolStats]
    providers: list[str]


class KernelDefaults:
    """The kernel's own decisions, registered ``trylast`` so any plugin's answer wins.

    Authentication: with ``server.master_key`` set, a request must present it (Bearer, ``x-api-key``
    or ``api-key``); with none set, every caller is anonymous (a warning is logged at start when the
    server is not bound to loopback). Authorization abstains. Routing maps the model name to the
    provider that serves it.
    """

    def __init__(self, kernel: Kernel) -> None:
        key = kernel.config.server.master_key
        self._master = key.reveal().encode() if key else None
        self._master_principal = Principal(id="master", kind="master", roles=("admin",))

    @hookimpl(trylast=True)
    def sira_authenticate(self, request: RequestInfo) -> Principal | None:
        if self._master is None:
            return ANONYMOUS
        token = request.bearer_token
        if token is not None and hmac.compare_digest(token.encode(), self._master):
            return self._master_principal
        if token is None:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
        raise AuthenticationFailed("invalid API key")

    @hookimpl(trylast=True)
    def sira_authorize(self, principal: Principal, request: RequestInfo, operation: str, model: str | None) -> None:
        if principal.allowed_models is not None and model is not None and model not in principal.allowed_models:
            return False  # type: ignore[return-value]
        return None

    @hookimpl(trylast=True)
    def sira_list_models(self, routes: RouteTable) -> Iterable[ModelInfo]:
        return routes.models()

    @hookimpl(trylast=True)
    def sira_route(self, request: Any, routes: RouteTable) -> Route | None:
        deployments = routes.lookup(request.model)
        if not deployments:
            return None
        return Route(deployments, reason="default: model served by provider")


class Kernel:
    """Sira's microkernel. Use as ``async with Kernel(config) as kernel: ...``."""

    def __init__(self, config: KernelConfig | None = None, *, scheduler: Scheduler | None = None) -> None:
        self.config = config if config is not None else KernelConfig()
        self.bus = MessageBus(self.config.bus.default_queue_size, self.config.bus.request_timeout)
        self.services = ServiceRegistry()
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        limits = self.config.limits
        self.scheduler.pool("requests", limits.max_concurrent_requests, limits.queue_timeout)
        for name, pool in self.config.scheduler.pools.items():
            self.scheduler.pool(name, pool.limit, pool.queue_timeout)
        self.plugins = PluginRegistry(self)
        self.pipeline = Pipeline(self)
        self.defaults = KernelDefaults(self)
        self.plugins.add_builtin("kernel", self.defaults)
        self._generation = 0
        self._task_group: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self.started_at = 0.0
        self.running = False
        self.snapshot: Snapshot = self._build([])

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def task_group(self) -> TaskGroup:
        if self._task_group is None:
            raise SiraError("the kernel is not running (use 'async with Kernel(...)')")
        return self._task_group

    async def __aenter__(self) -> Kernel:
        self._stack = AsyncExitStack()
        self._task_group = await self._stack.enter_async_context(anyio.create_task_group())
        self.started_at = time.monotonic()
        self.running = True
        if self.config.server.master_key is None and self.config.server.host not in ("127.0.0.1", "localhost", "::1"):
            _log.warning(
                "kernel.open_access",
                detail="no server.master_key is set and the server is not bound to loopback: anyone can call it",
            )
        await self.start_plugins()
        return self

    async def start_plugins(self) -> None:
        """Activate the configured plugins (every installed one when ``kernel.autoload`` is on)."""
        wanted = self.config.enabled_plugins()
        if self.config.kernel.autoload:
            wanted += [p for p in self.plugins.available() if p not in wanted]
        await self.plugins.activate(wanted)

    async def __aexit__(self, *exc: object) -> None:
        self.running = False
        try:
            await self.plugins.stop_all()
        finally:
            assert self._task_group is not None and self._stack is not None
            self._task_group.cancel_scope.cancel()
            await self._stack.aclose()
            self._task_group = None

    # -- plugin operations (serialized by the registry's lock) -------------------------------------

    async def load(self, plugin_id: str) -> PluginInfo:
        """Hot-load a plugin (rescans installed distributions)."""
        return await self.plugins.load(plugin_id)

    async def unload(self, plugin_id: str, drain_timeout: float | None = None) -> PluginInfo:
        """Hot-unload a plugin after draining its in-flight work."""
        return await self.plugins.unload(plugin_id, drain_timeout)

    async def replace(
        self, plugin_id: str, config: KernelConfig | None = None, drain_timeout: float | None = None
    ) -> PluginInfo:
        """Start a new generation of a plugin (optionally with a new config), then drain the old."""
        previous = self.config
        if config is not None:
            self.config = config
        try:
            return await self.plugins.replace(plugin_id, drain_timeout)
        except BaseException:
            self.config = previous  # the old generation keeps serving with the config it started with
            raise

    # -- snapshots ----------------------------------------------------------------------------------

    def _hook_lists(self, instances: set[int]) -> dict[str, HookList]:
        hooks: dict[str, HookList] = {}
        for name in DECISION_HOOKS:
            caller = getattr(self.plugins.pm.hook, name)
            ordered = []
            for impl in reversed(caller.get_hookimpls()):  # pluggy calls the last registered first
                if impl.hookwrapper or impl.wrapper or id(impl.plugin) not in instances:
                    continue
                function = _accepting_only(impl.function, impl.argnames, caller.spec.argnames if caller.spec else ())
                ordered.append((function, impl.plugin_name.partition("#")[0]))
            hooks[name] = tuple(ordered)
        return hooks

    def _build(self, active: list[PluginHandle]) -> Snapshot:
        from .asgi import build_apps

        self._generation += 1
        providers: dict[str, tuple[Provider, PluginHandle]] = {}
        routes: list[RouteSpec] = []
        middleware: list[MiddlewareSpec] = []
        tools: list[Tool] = []
        for handle in active:
            for provider in handle.staged.providers:
                providers[provider.name] = (provider, handle)
            routes.extend(handle.staged.routes)
            middleware.extend(handle.staged.middleware)
            tools.extend(handle.staged.tools)
        instances = {id(h.instance) for h in active} | {id(self.defaults)}
        handles = {h.id: h for h in active}
        mw = tuple(sorted(middleware, key=lambda m: m.order))
        apps = build_apps(self, tuple(routes), mw, handles)
        return Snapshot(
            self._generation, handles, providers, tuple(routes), mw, tuple(tools),
            self._hook_lists(instances), apps,
        )

    def _commit(self, active: list[PluginHandle], exclude: set[int]) -> None:
        """Swap in a snapshot of ``active`` (called by the registry while it holds its lock)."""
        active = [h for h in active if h.generation not in exclude]
        snapshot = self._build(active)
        self.services._replace(s for h in active for s in h.staged.services)
        self.snapshot = snapshot

    def _publish_lifecycle(self, handle: PluginHandle, state: str) -> None:
        event = PluginEvent(plugin_id=handle.id, state=state, generation=handle.generation, reason=handle.reason)
        self.bus.publish_nowait(event, topic=f"plugin.{state}")

    # -- health -------------------------------------------------------------------------------------

    async def health(self) -> HealthReport:
        """Plugins, services and pools in one report. Ready when running with a provider and every
        service healthy; degraded when some configured plugin failed."""
        services = await self.services.health()
        plugins = self.plugins.infos()
        enabled = set(self.config.enabled_plugins())
        failed = [p for p in plugins if p.state == PluginState.FAILED.value and p.id in enabled]
        providers = sorted(self.snapshot.providers)
        ready = self.running and bool(providers) and all(s.healthy for s in services)
        status = "unavailable" if not ready else ("degraded" if failed else "ok")
        return HealthReport(
            status=status, ready=ready,
            uptime_s=round(time.monotonic() - self.started_at, 3) if self.started_at else 0.0,
            generation=self.snapshot.generation, plugins=plugins, services=services,
            pools=[p.stats() for p in self.scheduler.pools.values()], providers=providers,
        )
