"""sira-hello: a greeting endpoint, a ``Greeter`` service and a counter of gateway requests.

An example third-party Sira plugin. It shows the extension points most plugins need:

* a ``Config`` struct validated from ``[plugins.hello]`` in kernel.toml;
* a lifespan (``sira_lifespan``) that owns the plugin's state while it is active;
* a typed service (``Greeter``) other plugins can look up by interface;
* an HTTP route (``GET /hello`` by default) returning the configured greeting as JSON;
* a bus subscription counting the ``usage.request`` records the gateway publishes;
* a pure ASGI middleware adding a response header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse

from sira_kernel import PluginContext, UsageRecord, hookimpl
from sira_kernel.registrations import (
    MiddlewareRegistrar,
    RouteRegistrar,
    ServiceRegistrar,
    SubscriptionRegistrar,
)

__all__ = ["Greeter", "HelloConfig", "HelloPlugin", "SimpleGreeter"]


class HelloConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[plugins.hello]`` section of kernel.toml. Every key is optional."""

    greeting: str = "Hello"
    """The word every greeting starts with."""
    path: str = "/hello"
    """Where the greeting endpoint is served (must start with ``/``)."""
    header: str = "x-hello"
    """Response header added to every gateway response (value: the plugin id); ``""`` disables it."""


class Greeter(Protocol):
    """The service this plugin offers to other plugins (``services.get(Greeter, "hello")``)."""

    greeting: str
    requests_seen: int

    def greet(self, name: str) -> str: ...


class SimpleGreeter:
    """The ``Greeter`` implementation. One per plugin activation: a reload starts from zero."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting
        self.requests_seen = 0
        self.running = False

    def greet(self, name: str) -> str:
        return f"{self.greeting}, {name}!"

    def healthy(self) -> bool:
        """Service health check: healthy while the plugin's lifespan is running."""
        return self.running


class AddHeader:
    """Pure ASGI middleware: adds one header to every HTTP response."""

    def __init__(self, app: Any, name: bytes, value: bytes) -> None:
        self.app, self.name, self.value = app, name, value

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (self.name, self.value)]
            await send(message)

        await self.app(scope, receive, send_with_header)


class HelloPlugin:
    """Says hello over HTTP, offers a Greeter service and counts the requests the gateway served."""

    sira_api = 1
    Config = HelloConfig
    provides = ("Greeter",)

    def __init__(self, config: HelloConfig) -> None:
        # Cheap and free of I/O: the kernel may construct the class and fail it before the lifespan.
        self.config = config
        self.greeter = SimpleGreeter(config.greeting)
        self.plugin_id = "hello"

    # -- lifecycle ------------------------------------------------------------------------------

    @hookimpl
    def sira_lifespan(self, context: PluginContext) -> AbstractAsyncContextManager[None]:
        return self._lifespan(context)

    @asynccontextmanager
    async def _lifespan(self, context: PluginContext) -> AsyncIterator[None]:
        # Entered before the registration hooks, exited after the plugin has drained.
        self.plugin_id = context.plugin_id  # the instance id when run under `use = "hello"`
        self.greeter.running = True
        context.log.info("hello.started", greeting=self.config.greeting, path=self.config.path)
        try:
            yield
        finally:
            self.greeter.running = False
            context.log.info("hello.stopped", requests_seen=self.greeter.requests_seen)

    # -- registrations --------------------------------------------------------------------------

    @hookimpl
    def sira_register_services(self, register: ServiceRegistrar) -> None:
        # Named after the instance id, so several instances (`use = "hello"`) do not collide.
        register(Greeter, self.greeter, name=register.owner, health=self.greeter.healthy)

    @hookimpl
    def sira_register_routes(self, register: RouteRegistrar) -> None:
        register(self.config.path, self.hello, methods=["GET"])

    @hookimpl
    def sira_register_middleware(self, register: MiddlewareRegistrar) -> None:
        if self.config.header:
            register(AddHeader, self.config.header.lower().encode("latin-1"), register.owner.encode(), order=100)

    @hookimpl
    def sira_register_subscriptions(self, register: SubscriptionRegistrar) -> None:
        register("usage.request", self.count, queue_size=1024, overflow="drop_oldest")

    # -- handlers -------------------------------------------------------------------------------

    async def hello(self, request: Request) -> JSONResponse:
        name = request.query_params.get("name", "world")
        return JSONResponse(
            {
                "message": self.greeter.greet(name),
                "greeting": self.greeter.greeting,
                "requests_seen": self.greeter.requests_seen,
                "plugin": self.plugin_id,
            }
        )

    def count(self, record: UsageRecord) -> None:
        # Runs in this plugin's own delivery task, one record at a time: no lock needed.
        self.greeter.requests_seen += 1
