"""The hook contract between the kernel and its plugins.

All hooks are synchronous pluggy hooks prefixed ``sira_``. Where a hook may return an awaitable the
kernel awaits it itself, in pluggy's call order (pluggy never awaits). Three kinds:

* **registration** hooks hand objects to the kernel, which records the plugin that owns them. The
  kernel calls them once per activation of a plugin, for that plugin only, and commits everything
  they registered atomically: a request sees all of a plugin's registrations or none.
* **decision** hooks answer a question on the request path. The kernel's defaults are registered
  ``trylast``, so any plugin's answer wins.
* **lifecycle** hooks configure a plugin and own its resources while it is active.

docs/plugin-hooks.md documents each hook with this exact signature; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .auth import Principal, RequestInfo
    from .config import KernelConfig
    from .context import PluginContext
    from .registrations import (
        MiddlewareRegistrar,
        ProviderRegistrar,
        RouteRegistrar,
        ServiceRegistrar,
        SubscriptionRegistrar,
        ToolRegistrar,
    )
    from .routing import Route, RouteTable
    from .types import ModelInfo

PROJECT = "sira"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Hook kinds, used by the kernel and by the docs test.
REGISTRATION_HOOKS = (
    "sira_register_providers",
    "sira_register_services",
    "sira_register_routes",
    "sira_register_middleware",
    "sira_register_subscriptions",
    "sira_register_tools",
)
DECISION_HOOKS = ("sira_authenticate", "sira_authorize", "sira_route", "sira_list_models")
LIFECYCLE_HOOKS = ("sira_configure", "sira_lifespan")


# -- registration -----------------------------------------------------------------------------------


@hookspec
def sira_register_providers(register: ProviderRegistrar) -> None:
    """Register provider adapters: ``register(provider)`` for each ``Provider`` object."""


@hookspec
def sira_register_services(register: ServiceRegistrar) -> None:
    """Register services: ``register(Interface, impl, name="default", health=None)``."""


@hookspec
def sira_register_routes(register: RouteRegistrar) -> None:
    """Register HTTP routes: ``register(path, endpoint, methods=None, name=None, listener="public")``."""


@hookspec
def sira_register_middleware(register: MiddlewareRegistrar) -> None:
    """Register ASGI middleware: ``register(MiddlewareClass, *args, order=0, **kwargs)``."""


@hookspec
def sira_register_subscriptions(register: SubscriptionRegistrar) -> None:
    """Subscribe to bus topics: ``register("usage.*", handler, overflow="drop_oldest")``; answer bus
    requests with ``register.responder(topic, handler)``."""


@hookspec
def sira_register_tools(register: ToolRegistrar) -> None:
    """Register tools that surfaces may expose to models: ``register(Tool(...))``."""


# -- decision ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def sira_authenticate(request: RequestInfo) -> Principal | None | Awaitable[Principal | None]:
    """Identify the caller. First non-None answer wins; None means "not mine, ask the next plugin".

    Raise ``AuthenticationFailed`` to reject outright. Any other exception, or no plugin answering,
    is also a 401: authentication fails closed.
    """


@hookspec
def sira_authorize(
    principal: Principal, request: RequestInfo, operation: str, model: str | None
) -> bool | None | Awaitable[bool | None]:
    """Vote on whether ``principal`` may perform ``operation`` (``"chat"``, ``"embeddings"``,
    ``"models"``…) on ``model``. Every plugin votes: False denies, True allows, None abstains.
    Any deny wins; an exception is a deny.
    """


@hookspec(firstresult=True)
def sira_route(
    request: Any, principal: Principal, routes: RouteTable, info: RequestInfo
) -> Route | None | Awaitable[Route | None]:
    """Choose where a request goes. First non-None ``Route`` wins. ``routes`` is the table of models
    the active providers serve; ``info`` the HTTP facts (headers, path, request id). The kernel's
    default maps the model name to the provider serving it.
    """


@hookspec
def sira_list_models(principal: Principal, routes: RouteTable, info: RequestInfo) -> Iterable[ModelInfo] | None:
    """The public models this plugin answers requests for, for a model listing (``GET /v1/models``).

    Every plugin is asked; the listing is the union, the first entry for an id winning (pluggy
    order, the kernel's default last). The kernel's default lists what the providers serve
    (``routes.models()``); a router adds the names it routes (groups, aliases). Each entry is then
    authorized for ``principal`` like a request for that model.
    """


# -- lifecycle --------------------------------------------------------------------------------------


@hookspec(historic=True)
def sira_configure(config: KernelConfig) -> None:
    """Called once for every plugin, even one registered later, with the validated kernel config.

    The kernel calls each plugin's implementation itself, right after registering the plugin with
    pluggy and before its lifespan, with the config current at that moment (a generation started
    by ``Kernel.replace(id, config)`` sees the new one). Raising marks the plugin failed.

    A plugin's own ``[plugins.<id>]`` section is not passed here: it is validated against the
    plugin's ``Config`` struct and given to the plugin's constructor.
    """


@hookspec(firstresult=True)
def sira_lifespan(context: PluginContext) -> AbstractAsyncContextManager[None] | None:
    """Return an async context manager that owns the plugin's clients, pools and tasks.

    The kernel enters it before committing the plugin's registrations and exits it (shielded, with a
    bound) after the plugin has drained on unload. The kernel calls it for one plugin at a time.
    """
