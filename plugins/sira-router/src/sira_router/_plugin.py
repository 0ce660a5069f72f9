"""The ``router`` plugin: wires :class:`~sira_router.Router` into the kernel.

* ``sira_route`` answers every request for a group, an alias, a model a rule matches, or (with
  ``route_unlisted``) any model a provider serves, with a :class:`~sira_kernel.Route` whose
  ``plan`` is a fresh :class:`~sira_router.RouterPlan`.
* ``sira_authorize`` abstains; it only remembers the request's :class:`~sira_kernel.RequestInfo`
  (headers, request id) in a context variable, because ``sira_route`` is not given it and header
  rules and the decision log need it. The pipeline calls authorize and route in the same task.
* The lifespan hands the router the scheduler's counter backend (usage-based routing), the
  TokenCounter and PriceBook services (looked up when needed, so they may come and go) and the bus.
* Services: ``RouterState`` (this router) with a health check; routes: the admin API;
  subscriptions: ``usage.request`` to charge tokens-per-minute limits, when any deployment has one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import anyio
import msgspec
from sira_kernel import (
    ConfigError,
    Kernel,
    MessageBus,
    ModelInfo,
    PluginContext,
    Principal,
    RequestInfo,
    Route,
    RouteTable,
    hookimpl,
)
from sira_kernel.accounting import PriceBook, TokenCounter, count_chat_tokens
from sira_kernel.bus import topic_matches
from sira_kernel.logs import get_logger
from sira_kernel.registrations import RouteRegistrar, ServiceRegistrar, SubscriptionRegistrar

from ._admin import register_admin
from ._config import RouterConfig, RuleConfig
from ._decisions import RouteDecision
from ._plan import RouterPlan
from ._router import Router, RouterState

__all__ = ["RouterPlugin"]

_log = get_logger("router")
_REQUEST_INFO: ContextVar[RequestInfo | None] = ContextVar("sira_router_request_info", default=None)


def _publisher(bus: MessageBus) -> Callable[[RouterPlan], None]:
    """Build and publish decisions only while something subscribes to ``route.decision`` (checked
    again whenever the bus's subscription tuple changes, which it does on every add or remove)."""
    seen: tuple[Any, ...] | None = None
    wanted = False

    def publish(plan: RouterPlan) -> None:
        nonlocal seen, wanted
        subscriptions = bus.subscriptions
        if subscriptions is not seen:
            seen = subscriptions
            wanted = any(topic_matches(s.pattern, RouteDecision.topic) for s in subscriptions)
        if wanted:
            bus.publish_nowait(plan.decision())

    return publish


class RouterPlugin:
    """Model groups, strategies, retries, fallbacks, circuit breakers and rules."""

    sira_api = 1
    Config = RouterConfig
    provides = ("RouterState",)

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        rules = config.rules
        if config.rules_file and Path(config.rules_file).exists():
            rules = _read_rules(Path(config.rules_file))
        # Compiling here validates groups and rules: a bad config fails the plugin, not a request.
        self.router = Router(msgspec.structs.replace(config, rules=rules))
        self.kernel: Kernel | None = None

    @hookimpl
    def sira_lifespan(self, context: PluginContext) -> contextlib.AbstractAsyncContextManager[None]:
        return self._lifespan(context)

    @contextlib.asynccontextmanager
    async def _lifespan(self, context: PluginContext) -> AsyncIterator[None]:
        router = self.router
        services = context.services
        router.counters = context.scheduler.backend
        router.price_book = lambda: services.find(PriceBook)

        router.count_tokens = lambda request: count_chat_tokens(services.find(TokenCounter), request)
        router.publish = _publisher(context.bus)
        self.kernel = context.kernel
        try:
            yield
        finally:
            self.kernel = None
            router.publish = None

    @hookimpl
    def sira_register_services(self, register: ServiceRegistrar) -> None:
        # The check answers a Health whose ``detail`` names the breakers that are not closed.
        register(RouterState, self.router, health=self.router.health)

    @hookimpl
    def sira_register_routes(self, register: RouteRegistrar) -> None:
        listener = self.config.admin_listener
        if listener != "none":
            register_admin(register, self, self.config.admin_prefix.rstrip("/"), listener)

    @hookimpl
    def sira_register_subscriptions(self, register: SubscriptionRegistrar) -> None:
        if any(upstream.tpm for upstream in self.router.upstreams.values()):
            register("usage.request", self.router.observe_usage, name="router:tpm")

    @hookimpl
    def sira_authorize(self, principal: Principal, request: RequestInfo, operation: str, model: str | None) -> None:
        _REQUEST_INFO.set(request)
        return None

    @hookimpl
    def sira_list_models(self, routes: RouteTable) -> list[ModelInfo]:
        return self.router.listed_models(routes)

    @hookimpl
    def sira_route(self, request: Any, principal: Principal, routes: RouteTable) -> Route | None:
        return self.router.route(request, principal, routes, _REQUEST_INFO.get())

    async def save_rules(self) -> None:
        """Write the rules in force to ``rules_file`` (atomically), when one is configured."""
        if not self.config.rules_file:
            return
        data = msgspec.json.encode({"rules": self.router.rule_configs()})
        await anyio.to_thread.run_sync(_write_atomically, Path(self.config.rules_file), data)


def _read_rules(path: Path) -> list[RuleConfig]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return msgspec.convert(raw.get("rules", []), list[RuleConfig])
    except (OSError, ValueError, AttributeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"plugins.router.rules_file: cannot read {path}: {exc}") from None


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
