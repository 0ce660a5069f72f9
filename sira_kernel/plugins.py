"""The plugin registry: discovery, activation, leases, draining, hot unload and replace.

A plugin is a class published under the entry-point group ``sira_kernel.plugins``; the entry-point
name is its stable id. The kernel instantiates it once per activation (``cls(config)`` when the class
declares a ``Config`` struct, else ``cls()``), registers the instance with pluggy under
``<id>#<generation>``, enters its lifespan, collects its registrations and commits them in one
atomic snapshot swap. Class attributes a plugin may declare:

``sira_api``   the kernel API version it targets (default: this kernel's ``API_VERSION``)
``Config``     a msgspec Struct for its ``[plugins.<id>]`` section
``requires``   service interface names (or classes) it needs; start order follows them
``provides``   service interface names (or classes) it registers

Every failure (import, duplicate id, incompatible API, config, unknown hook, constructor, lifespan
start, registration, dependency) marks only that plugin failed, with the reason, and the rest boot.
Registry changes are serialized by one lock; requests read the current snapshot without locking.

Unload: the plugin leaves the snapshot (no new request reaches it), in-flight work holding a
:class:`Lease` gets ``drain_timeout`` to finish, then is cancelled; the plugin's tasks are cancelled,
its lifespan exits (shielded, bounded by ``stop_timeout``), pluggy forgets it and the kernel checks
that no hook implementation of it is left.
"""

from __future__ import annotations

import enum
import gc
import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, cast

import anyio
import msgspec
import pluggy
import structlog
from anyio.abc import TaskGroup, TaskStatus
from importlib_metadata import EntryPoint, entry_points

from . import API_VERSION, hookspecs
from .config import validate_section
from .context import PluginContext
from .errors import (
    ConfigError,
    IncompatiblePlugin,
    KernelInvariantError,
    PluginError,
    PluginLoadError,
    PluginUnavailable,
    SiraError,
)
from .logs import get_logger
from .registrations import (
    MiddlewareRegistrar,
    ProviderRegistrar,
    RouteRegistrar,
    ServiceRegistrar,
    Staged,
    SubscriptionRegistrar,
    ToolRegistrar,
)
from .services import interface_name

if TYPE_CHECKING:
    from .kernel import Kernel

__all__ = [
    "ENTRY_POINT_GROUP",
    "Lease",
    "LocalEntryPoint",
    "PluginHandle",
    "PluginInfo",
    "PluginRegistry",
    "PluginState",
]

ENTRY_POINT_GROUP = "sira_kernel.plugins"
_log = get_logger("sira.plugins")

_REGISTRARS: dict[str, type] = {
    "sira_register_providers": ProviderRegistrar,
    "sira_register_services": ServiceRegistrar,
    "sira_register_routes": RouteRegistrar,
    "sira_register_middleware": MiddlewareRegistrar,
    "sira_register_subscriptions": SubscriptionRegistrar,
    "sira_register_tools": ToolRegistrar,
}


class PluginState(enum.StrEnum):
    DISCOVERED = "discovered"
    STARTING = "starting"
    ACTIVE = "active"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class PluginInfo(msgspec.Struct):
    """What the CLI, health report and admin API show about one plugin."""

    id: str
    state: str
    entry_point: str
    distribution: str | None = None
    version: str | None = None
    reason: str | None = None
    generation: int = 0
    leases: int = 0
    requires: list[str] = msgspec.field(default_factory=list)
    provides: list[str] = msgspec.field(default_factory=list)


class Lease:
    """In-flight work holding a plugin active. Release it exactly once (it is a context manager).

    While a lease is held the plugin cannot finish draining. If the drain timeout passes, the
    registry calls :meth:`revoke`: the cancel scope attached with :meth:`attach` is cancelled and
    ``revoked`` turns True, so the holder can end its work with a clear error.
    """

    __slots__ = ("_handle", "_released", "revoked", "scope")

    def __init__(self, handle: PluginHandle) -> None:
        self._handle = handle
        self._released = False
        self.revoked = False
        self.scope: anyio.CancelScope | None = None

    def attach(self, scope: anyio.CancelScope | None) -> None:
        """Point at the cancel scope the holder is currently waiting in (None when not waiting)."""
        self.scope = scope
        if scope is not None and self.revoked:
            scope.cancel()

    def revoke(self) -> None:
        self.revoked = True
        if self.scope is not None:
            self.scope.cancel()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._handle._release(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PluginHandle:
    """One activation (generation) of one plugin id."""

    def __init__(self, plugin_id: str, entry_point: str, generation: int) -> None:
        self.id = plugin_id
        self.entry_point = entry_point
        self.generation = generation
        self.state = PluginState.DISCOVERED
        self.reason: str | None = None
        self.distribution: str | None = None
        self.version: str | None = None
        self.cls: type | None = None
        self.config: Any = None
        self.instance: Any = None
        self.context: PluginContext | None = None
        self.staged = Staged(owner=plugin_id)
        self.requires: tuple[str, ...] = ()
        self.provides: tuple[str, ...] = ()
        self.leases = 0
        self._lease_set: set[Lease] = set()
        self._drained: anyio.Event | None = None
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._subscriptions: list[Any] = []

    @property
    def pluggy_name(self) -> str:
        return f"{self.id}#{self.generation}"

    def lease(self) -> Lease:
        """Hold the plugin active for some in-flight work. Raises PluginUnavailable if it is not."""
        if self.state is not PluginState.ACTIVE:
            raise PluginUnavailable(self.id, f"is {self.state.value}")
        lease = Lease(self)
        self.leases += 1
        self._lease_set.add(lease)
        return lease

    def _release(self, lease: Lease) -> None:
        self.leases -= 1
        self._lease_set.discard(lease)
        if self.leases == 0 and self._drained is not None:
            self._drained.set()

    def info(self) -> PluginInfo:
        return PluginInfo(
            id=self.id, state=self.state.value, entry_point=self.entry_point,
            distribution=self.distribution, version=self.version, reason=self.reason,
            generation=self.generation, leases=self.leases,
            requires=list(self.requires), provides=list(self.provides),
        )

    def fail(self, reason: str) -> None:
        self.state = PluginState.FAILED
        self.reason = reason
        _log.error("plugin.failed", plugin=self.id, reason=reason)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Dist(msgspec.Struct, frozen=True):
    name: str
    version: str


class LocalEntryPoint:
    """An entry point that is not installed: for tests and embedding (``Kernel.add_plugin_source``).

    ``target`` is the plugin class, or a zero-argument callable returning it (which may raise, to
    simulate an import error).
    """

    def __init__(self, name: str, target: Any, distribution: str = "<local>", version: str = "0") -> None:
        self.name = name
        self.value = f"<local:{name}>"
        self.dist = _Dist(distribution, version)
        self._target = target

    def load(self) -> Any:
        if inspect.isclass(self._target):
            return self._target
        return self._target()


class PluginRegistry:
    """Owns the pluggy manager and every plugin handle; changes the kernel's snapshot atomically."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.lock = anyio.Lock()
        self.handles: dict[str, PluginHandle] = {}
        self.failed: dict[str, PluginHandle] = {}
        self.draining: dict[str, PluginHandle] = {}  # generations on their way out, for reports
        self._generation = 0
        self._entry_points: dict[str, EntryPoint | LocalEntryPoint] = {}
        self._local: list[LocalEntryPoint] = []
        self._duplicates: dict[str, str] = {}
        self._builtin: list[tuple[str, object]] = []

    # -- discovery ----------------------------------------------------------------------------------

    def add_source(self, entry_point: LocalEntryPoint) -> None:
        """Make a plugin available without installing a distribution (tests, embedding)."""
        self._local.append(entry_point)
        self._entry_points = {}

    def rescan(self) -> dict[str, EntryPoint | LocalEntryPoint]:
        """Re-read installed entry points (after a ``pip install`` at runtime, too)."""
        importlib.invalidate_caches()
        found: dict[str, EntryPoint | LocalEntryPoint] = {}
        owners: dict[str, str] = {}
        duplicates: dict[str, str] = {}
        local_ids = {ep.name for ep in self._local}
        installed = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in local_ids]
        # A plugin handed to the kernel directly (tests, embedding) shadows an installed one.
        for ep in [*installed, *self._local]:
            dist = ep.dist.name if ep.dist is not None else "<unknown>"
            if ep.name in found:
                if owners[ep.name] == dist:
                    continue  # the same distribution seen twice on sys.path
                duplicates[ep.name] = (
                    f"plugin id {ep.name!r} is declared by two distributions: {owners[ep.name]} and {dist}"
                )
                continue
            found[ep.name] = ep
            owners[ep.name] = dist
        self._entry_points = found
        self._duplicates = duplicates
        return found

    def available(self) -> dict[str, EntryPoint | LocalEntryPoint]:
        """Installed plugin entry points by id (as of the last rescan)."""
        if not self._entry_points:
            self.rescan()
        return dict(self._entry_points)

    def add_builtin(self, plugin_id: str, instance: object) -> None:
        """Register a kernel-internal plugin (the trylast defaults). It is always active."""
        self.pm.register(instance, name=plugin_id)
        self._builtin.append((plugin_id, instance))

    # -- activation ---------------------------------------------------------------------------------

    def _prepare(self, plugin_id: str, entry_point: str) -> PluginHandle:
        """Import the plugin class and validate its config; never raises (failures mark the handle)."""
        self._generation += 1
        handle = PluginHandle(plugin_id, entry_point, self._generation)
        if entry_point in self._duplicates:
            handle.fail(self._duplicates[entry_point])
            return handle
        ep = self._entry_points.get(entry_point)
        if ep is None:
            self.rescan()
            ep = self._entry_points.get(entry_point)
        if ep is None:
            if entry_point in self._duplicates:
                handle.fail(self._duplicates[entry_point])
            else:
                handle.fail(f"no installed plugin provides entry point {entry_point!r} ({ENTRY_POINT_GROUP})")
            return handle
        if ep.dist is not None:
            handle.distribution, handle.version = ep.dist.name, ep.dist.version
        try:
            cls = ep.load()
        except BaseException as exc:  # an import may raise anything, even SystemExit
            if isinstance(exc, KeyboardInterrupt):
                raise
            handle.fail(f"import failed: {_describe(exc)}")
            return handle
        if not inspect.isclass(cls):
            handle.fail(f"entry point {ep.value!r} is not a class")
            return handle
        handle.cls = cls
        wanted = getattr(cls, "sira_api", API_VERSION)
        if wanted != API_VERSION:
            err = IncompatiblePlugin(plugin_id, f"targets kernel API {wanted}, this kernel speaks {API_VERSION}")
            handle.fail(err.reason)
            return handle
        handle.requires = tuple(interface_name(r) for r in getattr(cls, "requires", ()))
        handle.provides = tuple(interface_name(p) for p in getattr(cls, "provides", ()))
        schema = getattr(cls, "Config", None)
        section = self.kernel.config.plugin_section(plugin_id)
        try:
            if schema is not None:
                handle.config = validate_section(schema, section, f"plugins.{plugin_id}")
            elif section:
                raise ConfigError(f"plugins.{plugin_id}: this plugin takes no configuration")
        except ConfigError as exc:
            handle.fail(f"invalid config: {exc.message}")
        except Exception as exc:  # a Config struct msgspec cannot use (bad annotation): the plugin's bug
            handle.fail(f"config schema {getattr(schema, '__name__', schema)!r} is unusable: {_describe(exc)}")
        return handle

    @staticmethod
    def _order(handles: list[PluginHandle], already: set[str]) -> list[PluginHandle]:
        """Topological order by requires/provides; marks plugins with missing or cyclic needs failed."""
        providers: dict[str, list[PluginHandle]] = {}
        for h in handles:
            for name in h.provides:
                providers.setdefault(name, []).append(h)
        for h in handles:
            missing = [r for r in h.requires if r not in providers and r not in already]
            if missing:
                h.fail(f"requires {', '.join(missing)}, which no enabled plugin provides")
        ordered: list[PluginHandle] = []
        state: dict[str, int] = {}  # 1 = visiting, 2 = done

        def visit(h: PluginHandle, path: list[str]) -> None:
            mark = state.get(h.id)
            if mark == 2:
                return
            if mark == 1:
                cycle = path[path.index(h.id):] + [h.id]
                for member in {x for x in handles if x.id in cycle}:
                    if member.state is not PluginState.FAILED:
                        member.fail(f"dependency cycle: {' -> '.join(cycle)}")
                return
            state[h.id] = 1
            for need in h.requires:
                for dep in providers.get(need, []):
                    if dep is not h:
                        visit(dep, [*path, h.id])
            state[h.id] = 2
            ordered.append(h)

        for h in handles:
            visit(h, [])
        return ordered

    async def activate(self, plugin_ids: Iterable[str]) -> list[PluginHandle]:
        """Import, order and start the given plugin ids. Returns every handle (failed ones too)."""
        async with self.lock:
            self.rescan()
            handles = []
            for plugin_id in plugin_ids:
                if plugin_id in self.handles:
                    continue
                handle = self._prepare(plugin_id, self.kernel.config.entry_point_for(plugin_id))
                handles.append(handle)
            viable = [h for h in handles if h.state is not PluginState.FAILED]
            for handle in self._order(viable, self.kernel.services.provided()):
                await self._start_and_commit(handle)
            for handle in handles:
                if handle.state is PluginState.FAILED:
                    self.failed[handle.id] = handle
                    self.kernel._publish_lifecycle(handle, "failed")
            return handles

    async def _start_and_commit(self, handle: PluginHandle, replacing: PluginHandle | None = None) -> bool:
        if handle.state is PluginState.FAILED:
            return False
        provided = self.kernel.services.provided()
        if replacing is not None:
            provided -= set(replacing.provides)
        missing = [r for r in handle.requires if r not in provided]
        if missing:
            owners = ", ".join(missing)
            handle.fail(f"requires {owners}, which is not provided by any active plugin")
            return False
        try:
            await self._start(handle)
            self._check_conflicts(handle, replacing)
        except PluginError as exc:
            handle.fail(exc.reason)
            await self._teardown(handle)
            return False
        except Exception as exc:
            handle.fail(f"start failed: {_describe(exc)}")
            await self._teardown(handle)
            return False
        handle.state = PluginState.ACTIVE
        self.handles[handle.id] = handle
        self.failed.pop(handle.id, None)
        self.kernel._commit(self._active(), self._exclude(replacing))
        self._start_subscriptions(handle)
        _log.info("plugin.active", plugin=handle.id, generation=handle.generation)
        self.kernel._publish_lifecycle(handle, "active")
        return True

    def _active(self) -> list[PluginHandle]:
        return [h for h in self.handles.values() if h.state is PluginState.ACTIVE]

    @staticmethod
    def _exclude(handle: PluginHandle | None) -> set[int]:
        return set() if handle is None else {handle.generation}

    async def _start(self, handle: PluginHandle) -> None:
        assert handle.cls is not None
        cls = handle.cls
        try:
            instance = cls(handle.config) if getattr(cls, "Config", None) is not None else cls()
        except Exception as exc:
            raise PluginLoadError(handle.id, f"constructor failed: {_describe(exc)}") from exc
        handle.instance = instance
        self._register_hooks(handle)
        handle.context = PluginContext(self.kernel, handle.id, handle.config)
        handle.state = PluginState.STARTING
        await self._run_lifespan(handle)
        for hook_name, registrar_cls in _REGISTRARS.items():
            for impl in self._impls_of(hook_name, instance):
                try:
                    result = impl.function(registrar_cls(handle.staged))
                    if inspect.isawaitable(result):
                        await result
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginLoadError(handle.id, f"{hook_name} failed: {_describe(exc)}") from exc

    def _register_hooks(self, handle: PluginHandle) -> None:
        instance = handle.instance
        try:
            self.pm.register(instance, name=handle.pluggy_name)
        except pluggy.PluginValidationError as exc:
            raise PluginLoadError(handle.id, f"invalid hook implementation: {exc}") from exc
        seen: dict[str, int] = {}
        for caller in self.pm.get_hookcallers(instance) or []:
            impls = [i for i in caller.get_hookimpls() if i.plugin is instance]
            seen[caller.name] = len(impls)
            if caller.spec is None:
                raise PluginLoadError(
                    handle.id, f"implements {caller.name}, which is not a hook of this kernel (typo?)"
                )
            # The kernel calls every sira_ hook itself (never through pluggy's call loop), so a
            # wrapper would be silently skipped or called as a plain function: refuse it.
            if any(i.hookwrapper or i.wrapper for i in impls):
                raise PluginLoadError(
                    handle.id, f"implements {caller.name} as a hook wrapper, which Sira does not support"
                )
        twice = [name for name, count in seen.items() if count > 1]
        if twice:
            raise PluginLoadError(handle.id, f"implements {', '.join(twice)} more than once")
        # sira_configure is called here rather than through pluggy's call_historic: a historic
        # call would replay the config of the first call to every later plugin, so a generation
        # started by ``Kernel.replace(id, config)`` would be configured with the old config.
        kwargs = {"config": self.kernel.config}
        for impl in self._impls_of("sira_configure", instance):
            try:
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            except Exception as exc:
                raise PluginLoadError(handle.id, f"sira_configure failed: {_describe(exc)}") from exc

    def _impls_of(self, hook_name: str, instance: object) -> list[pluggy.HookImpl]:
        caller = getattr(self.pm.hook, hook_name)
        return [i for i in caller.get_hookimpls() if i.plugin is instance]

    async def _run_lifespan(self, handle: PluginHandle) -> None:
        impls = self._impls_of("sira_lifespan", handle.instance)
        handle._stop = anyio.Event()
        handle._stopped = anyio.Event()
        timeout = self.kernel.config.kernel.start_timeout
        try:
            with anyio.fail_after(timeout):
                await self.kernel.task_group.start(self._host, handle, impls)
        except TimeoutError:
            raise PluginLoadError(handle.id, f"lifespan did not start within {timeout:g}s") from None

    async def _host(
        self, handle: PluginHandle, impls: list[pluggy.HookImpl], *, task_status: TaskStatus[None]
    ) -> None:
        """Run one plugin's lifespan in a task of its own, so it enters and exits in the same task."""
        assert handle._stop is not None and handle._stopped is not None
        # This task outlives whatever request started it (an admin call): do not log under its id.
        structlog.contextvars.clear_contextvars()
        stop_timeout = self.kernel.config.kernel.stop_timeout
        manager: AbstractAsyncContextManager[None] | None = None
        start_failure: Exception | None = None
        try:
            async with anyio.create_task_group() as tasks:
                self._bind_task_starter(handle, tasks)
                if impls:
                    try:
                        manager = cast("AbstractAsyncContextManager[None] | None", impls[0].function(handle.context))
                        if manager is not None:
                            await manager.__aenter__()
                    except Exception as exc:
                        # Raised after the task group has closed: raised inside it, the failure
                        # would reach the caller as an opaque ExceptionGroup instead of its cause.
                        start_failure = exc
                        tasks.cancel_scope.cancel()
                if start_failure is None:
                    task_status.started()
                    await handle._stop.wait()
                # The plugin's own tasks end (the task group waits for them) before its lifespan
                # exits, so they never use a client the lifespan has already closed.
                tasks.cancel_scope.cancel()
            if handle.context is not None:
                handle.context._start_task = None
            if start_failure is not None:
                raise PluginLoadError(
                    handle.id, f"lifespan start failed: {_describe(start_failure)}"
                ) from start_failure
            if manager is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(stop_timeout) as bounded:
                    try:
                        await manager.__aexit__(None, None, None)
                    except Exception as exc:
                        handle.reason = f"lifespan exit failed: {_describe(exc)}"
                        _log.error("plugin.lifespan_exit_failed", plugin=handle.id, reason=handle.reason)
                if bounded.cancelled_caught:
                    handle.reason = f"lifespan exit did not finish within {stop_timeout:g}s"
                    _log.error("plugin.lifespan_exit_timeout", plugin=handle.id)
        finally:
            if handle.context is not None:
                handle.context._start_task = None
            handle._stopped.set()

    @staticmethod
    def _bind_task_starter(handle: PluginHandle, tasks: TaskGroup) -> None:
        def start_task(fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], name: str | None) -> None:
            async def guarded() -> None:
                try:
                    await fn(*args)
                except Exception:
                    _log.exception("plugin.task_failed", plugin=handle.id, task=name or getattr(fn, "__name__", "?"))

            tasks.start_soon(guarded, name=f"{handle.id}:{name or getattr(fn, '__name__', 'task')}")

        assert handle.context is not None
        handle.context._start_task = start_task

    def _check_conflicts(self, handle: PluginHandle, replacing: PluginHandle | None) -> None:
        others = [h for h in self._active() if h is not replacing and h.id != handle.id]
        names = {p.name: h.id for h in others for p in h.staged.providers}
        for provider in handle.staged.providers:
            if provider.name in names:
                raise PluginLoadError(
                    handle.id, f"provider name {provider.name!r} is already registered by {names[provider.name]!r}"
                )
        taken: dict[tuple[str, str], list[tuple[tuple[str, ...] | None, str]]] = {}
        for h in others:
            for r in h.staged.routes:
                taken.setdefault((r.listener, r.path), []).append((r.methods, h.id))
        for r in handle.staged.routes:
            for methods, owner in taken.get((r.listener, r.path), []):
                # no methods means every method, so it overlaps anything on the same path
                if methods is None or r.methods is None or set(methods) & set(r.methods):
                    shown = ",".join(r.methods) if r.methods else "*"
                    raise PluginLoadError(handle.id, f"route {shown} {r.path} is already registered by {owner!r}")
        answered = {topic: h.id for h in others for topic, _ in h.staged.responders}
        for topic, _ in handle.staged.responders:
            if topic in answered:
                raise PluginLoadError(handle.id, f"bus topic {topic!r} already has a responder ({answered[topic]!r})")
        services = {(interface_name(s.interface), s.name): h.id for h in others for s in h.staged.services}
        for s in handle.staged.services:
            key = (interface_name(s.interface), s.name)
            if key in services:
                raise PluginLoadError(
                    handle.id, f"service {key[0]}[{key[1]!r}] is already registered by {services[key]!r}"
                )

    def _start_subscriptions(self, handle: PluginHandle) -> None:
        from .bus import Subscription

        assert handle.context is not None
        for spec in handle.staged.subscriptions:
            queue_size = spec.queue_size if spec.queue_size is not None else self.kernel.bus.default_queue_size
            sub = Subscription(
                spec.name, spec.pattern, spec.handler, owner=handle.id, queue_size=queue_size,
                overflow=spec.overflow, block_timeout=spec.block_timeout, on_drop=spec.on_drop,
            )
            handle._subscriptions.append(sub)
            self.kernel.bus.add(sub)
            handle.context.start_task(sub.run, name=f"bus:{spec.pattern}")
        for topic, responder in handle.staged.responders:
            # A generation being replaced still answers until it drains; the new one takes over now.
            self.kernel.bus.remove_responders(topic=topic, owner_prefix=f"{handle.id}#")
            self.kernel.bus.add_responder(topic, responder, owner=handle.pluggy_name)

    # -- unload -------------------------------------------------------------------------------------

    def dependents(self, plugin_id: str) -> list[str]:
        handle = self.handles.get(plugin_id)
        if handle is None:
            return []
        mine = {interface_name(s.interface) for s in handle.staged.services} | set(handle.provides)
        return [h.id for h in self._active() if h.id != plugin_id and set(h.requires) & mine]

    async def unload(self, plugin_id: str, drain_timeout: float | None = None) -> PluginInfo:
        """Stop routing to the plugin, drain its leases, exit its lifespan and forget it."""
        async with self.lock:
            handle = self.handles.get(plugin_id)
            if handle is None or handle.state is not PluginState.ACTIVE:
                raise PluginUnavailable(plugin_id, "is not active")
            needed_by = self.dependents(plugin_id)
            if needed_by:
                raise PluginError(plugin_id, f"is required by active plugins: {', '.join(needed_by)}", status=409)
            handle.state = PluginState.DRAINING
            del self.handles[plugin_id]
            self.kernel._commit(self._active(), set())
            await self._drain_and_stop(handle, drain_timeout)
            return handle.info()

    async def _drain_and_stop(self, handle: PluginHandle, drain_timeout: float | None) -> None:
        self.draining[handle.id] = handle
        try:
            await self._drain_and_stop_now(handle, drain_timeout)
        finally:
            if self.draining.get(handle.id) is handle:
                del self.draining[handle.id]

    async def _drain_and_stop_now(self, handle: PluginHandle, drain_timeout: float | None) -> None:
        self.kernel._publish_lifecycle(handle, "draining")
        timeout = self.kernel.config.kernel.drain_timeout if drain_timeout is None else drain_timeout
        self.kernel.bus.remove_responders(handle.pluggy_name)
        for sub in handle._subscriptions:
            self.kernel.bus.remove(sub)
        for sub in handle._subscriptions:  # what was queued before removal is still delivered
            if not await sub.wait_drained(timeout):
                _log.warning("plugin.subscription_not_drained", plugin=handle.id, queued=sub.queued)
        if handle.leases:
            handle._drained = anyio.Event()
            with anyio.move_on_after(timeout):
                await handle._drained.wait()
            if handle.leases:
                _log.warning("plugin.drain_timeout", plugin=handle.id, leases=handle.leases)
                for lease in list(handle._lease_set):
                    lease.revoke()
                with anyio.move_on_after(max(1.0, self.kernel.config.kernel.stop_timeout)):
                    await handle._drained.wait()
        await self._teardown(handle)
        if gc.get_freeze_count():  # a server froze its startup objects: let the collector reclaim the plugin's
            gc.unfreeze()
        handle.state = PluginState.STOPPED
        self.kernel._publish_lifecycle(handle, "stopped")
        _log.info("plugin.stopped", plugin=handle.id, generation=handle.generation)

    async def _teardown(self, handle: PluginHandle) -> None:
        """Exit the lifespan (if running), unregister from pluggy, and check nothing is left."""
        if handle._stop is not None and handle._stopped is not None:
            handle._stop.set()
            with anyio.CancelScope(shield=True):
                await handle._stopped.wait()
        instance = handle.instance
        if instance is not None and self.pm.is_registered(instance):
            self.pm.unregister(instance)
        if instance is not None:
            leftovers = [
                caller.name for caller in vars(self.pm.hook).values()
                if isinstance(caller, pluggy.HookCaller)
                and any(i.plugin is instance for i in caller.get_hookimpls())
            ]
            if leftovers:
                raise KernelInvariantError(f"plugin {handle.id!r} left hook implementations: {leftovers}")
        handle.instance = None
        handle.context = None
        handle._subscriptions = []
        handle.staged = Staged(owner=handle.id)

    # -- load and replace ---------------------------------------------------------------------------

    async def load(self, plugin_id: str) -> PluginInfo:
        """Hot-load ``plugin_id`` (rescanning entry points, so a distribution installed after start
        is found). Raises PluginLoadError with the reason if it fails."""
        async with self.lock:
            if plugin_id in self.handles:
                raise PluginError(plugin_id, "is already active", status=409)
            self.rescan()
            handle = self._prepare(plugin_id, self.kernel.config.entry_point_for(plugin_id))
            ok = await self._start_and_commit(handle)
            if not ok:
                self.failed[plugin_id] = handle
                self.kernel._publish_lifecycle(handle, "failed")
                raise PluginLoadError(plugin_id, handle.reason or "failed", status=422)
            return handle.info()

    async def replace(self, plugin_id: str, drain_timeout: float | None = None) -> PluginInfo:
        """Make-before-break: start a new generation with the current config, then drain the old one.
        If the new generation fails, the old one keeps serving and PluginLoadError is raised."""
        async with self.lock:
            old = self.handles.get(plugin_id)
            if old is None or old.state is not PluginState.ACTIVE:
                raise PluginUnavailable(plugin_id, "is not active")
            self.rescan()
            new = self._prepare(plugin_id, self.kernel.config.entry_point_for(plugin_id))
            # The new generation must not collide with the old one's names while both exist.
            ok = await self._start_and_commit(new, replacing=old)
            if not ok:
                self.handles[plugin_id] = old
                raise PluginLoadError(plugin_id, f"replacement failed, old generation kept: {new.reason}", status=422)
            old.state = PluginState.DRAINING
            await self._drain_and_stop(old, drain_timeout)
            return new.info()

    async def stop_all(self) -> None:
        """Unload every plugin in reverse start order (kernel shutdown)."""
        async with self.lock:
            # ``handles`` is in start order (activation inserts, unload deletes, replace keeps the
            # slot). Generations are numbered in config order before dependency ordering, so
            # sorting by them would stop a service's provider before the plugins that need it.
            order = list(reversed(self.handles.values()))
            self.handles.clear()
            self.kernel._commit([], set())
            with anyio.CancelScope(shield=True):
                for handle in order:
                    handle.state = PluginState.DRAINING
                    try:
                        await self._drain_and_stop(handle, None)
                    except SiraError as exc:
                        _log.error("plugin.stop_failed", plugin=handle.id, reason=str(exc))

    def infos(self) -> list[PluginInfo]:
        """Every plugin the registry knows: active, failed and merely installed."""
        out = {h.id: h.info() for h in self.failed.values()}
        out.update({h.id: h.info() for h in self.draining.values()})
        out.update({h.id: h.info() for h in self.handles.values()})  # an active generation wins
        for plugin_id, ep in self.available().items():
            if plugin_id not in out:
                out[plugin_id] = PluginInfo(
                    id=plugin_id, state=PluginState.DISCOVERED.value, entry_point=plugin_id,
                    distribution=ep.dist.name if ep.dist else None, version=ep.dist.version if ep.dist else None,
                )
        return sorted(out.values(), key=lambda i: i.id)

