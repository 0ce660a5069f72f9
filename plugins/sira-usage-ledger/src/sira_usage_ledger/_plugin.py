"""The plugin class: wires the ledger to the bus, the service registry and the admin listener."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from sira_kernel import KernelConfig, PluginContext, Principal, hookimpl
from sira_kernel.admin import ADMIN_ROLE
from sira_kernel.asgi import json_error
from sira_kernel.registrations import RouteRegistrar, ServiceRegistrar, SubscriptionRegistrar
from sira_kernel.storage import UsageStore

from ._config import LedgerConfig
from ._ledger import LedgerHealth, LedgerStatus, UsageLedger
from ._reports import Reports
from ._spill import SpillFile

__all__ = ["LedgerPlugin", "data_dir"]

TOPIC = "usage.request"
Endpoint = Callable[[Request], Awaitable[Response]]


def data_dir(config: KernelConfig) -> Path:
    """The kernel's ``data_dir``; a relative one is resolved next to the config file, as ``sira`` does."""
    source = config.source
    base = Path(source).parent if source and not source.startswith("<") else Path.cwd()
    path = Path(config.kernel.data_dir)
    return path if path.is_absolute() else base / path


def _admins_only(endpoint: Endpoint) -> Endpoint:
    """Serve only principals with the admin role.

    The admin listener's guard also admits a principal without it when an auth plugin votes an
    explicit allow (for that plugin's own routes, such as a tenant administrator's key endpoints):
    usage across every tenant is not for them.
    """

    async def guarded(request: Request) -> Response:
        principal = request.scope.get("sira.principal")
        if not isinstance(principal, Principal) or ADMIN_ROLE not in principal.roles:
            return json_error(403, "usage reports need a principal with the admin role", "permission_denied",
                              "permission_error")
        return await endpoint(request)

    return guarded


class LedgerPlugin:
    """The usage ledger: every request's usage record stored off the hot path, and usage reports.

    Subscribes to ``usage.request``, writes records to the ``UsageStore`` in batches, spills to a
    JSON-lines file instead of losing a record, and serves ``GET /api/v1/ledger``,
    ``/api/v1/reports/summary`` and ``/api/v1/reports/detailed`` on the admin listener.
    """

    sira_api = 1
    Config = LedgerConfig
    requires = ("UsageStore",)
    provides = ("LedgerStatus",)

    def __init__(self, config: LedgerConfig) -> None:
        self.config = config
        self.ledger: UsageLedger | None = None
        self.reports: Reports | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @hookimpl
    def sira_lifespan(self, context: PluginContext) -> AbstractAsyncContextManager[None]:
        return self._lifespan(context)

    @asynccontextmanager
    async def _lifespan(self, context: PluginContext) -> AsyncIterator[None]:
        config = self.config
        spill_path = Path(config.spill_path)
        if not spill_path.is_absolute():
            spill_path = data_dir(context.config) / spill_path
        name = config.store

        def store() -> UsageStore:
            return context.services.get(UsageStore, name)

        ledger = UsageLedger(
            config, SpillFile(spill_path), store, context.log, bus=context.bus,
            stop_timeout=context.config.kernel.stop_timeout,
        )
        self.ledger = ledger
        self.reports = Reports(store, context.log)
        context.start_task(ledger.run_writer, name="writer")
        context.start_task(ledger.run_spiller, name="spiller")
        context.start_task(ledger.run_replayer, name="replayer")
        context.log.info("ledger.started", spill_path=str(spill_path), batch_size=config.batch_size,
                         queue_size=config.queue_size)
        try:
            yield
        finally:
            # The kernel has delivered what was queued for the subscription and cancelled the tasks.
            await ledger.close()
            context.log.info("ledger.stopped", **{k: v for k, v in msgspec.structs.asdict(ledger.counters()).items()
                                                  if isinstance(v, int) and not isinstance(v, bool)})

    # -- registrations --------------------------------------------------------------------------

    @hookimpl
    def sira_register_subscriptions(self, register: SubscriptionRegistrar) -> None:
        ledger = self._running()
        register(TOPIC, ledger.accept, queue_size=self.config.queue_size, overflow="drop_newest",
                 on_drop=ledger.overflow, name=f"{register.owner}:{TOPIC}")

    @hookimpl
    def sira_register_services(self, register: ServiceRegistrar) -> None:
        ledger = self._running()
        # The check answers a LedgerHealth: true or false, with a detail the health report shows.
        register(LedgerStatus, ledger, health=self._health)

    @hookimpl
    def sira_register_routes(self, register: RouteRegistrar) -> None:
        reports = self.reports
        assert reports is not None
        register("/api/v1/ledger", _admins_only(self.status), methods=["GET"], listener="admin")
        register("/api/v1/reports/summary", _admins_only(reports.summary), methods=["GET"], listener="admin")
        register("/api/v1/reports/detailed", _admins_only(reports.detailed), methods=["GET"], listener="admin")

    # -- handlers -------------------------------------------------------------------------------

    def _running(self) -> UsageLedger:
        assert self.ledger is not None, "the lifespan creates the ledger before registrations"
        return self.ledger

    def _health(self) -> LedgerHealth:
        return self._running().health()

    async def status(self, request: Request) -> Response:
        """``GET /api/v1/ledger``: the ledger's counters."""
        return Response(msgspec.json.encode(self._running().counters()), media_type="application/json")
