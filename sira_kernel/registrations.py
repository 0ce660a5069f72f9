"""The objects a plugin's registration hooks receive, and the records they produce.

Each registrar stages what one plugin registers during one activation. Nothing is visible to
requests until the kernel commits the whole batch in one atomic swap of its registry snapshot.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

import msgspec

from .errors import PluginLoadError
from .providers import Provider

__all__ = [
    "Health",
    "HealthCheck",
    "MiddlewareRegistrar",
    "MiddlewareSpec",
    "OverflowPolicy",
    "ProviderRegistrar",
    "RouteRegistrar",
    "RouteSpec",
    "ServiceRegistrar",
    "ServiceSpec",
    "Staged",
    "SubscriptionRegistrar",
    "SubscriptionSpec",
    "Tool",
    "ToolRegistrar",
]

T = TypeVar("T")

OverflowPolicy = Literal["block", "drop_oldest", "drop_newest"]
Listener = Literal["public", "admin"]


class Health:
    """A health check's answer with a reason: true when healthy, and a ``detail`` that the kernel's
    health report (``/health/ready``, ``/api/v1/health``) shows beside the service, healthy or not."""

    __slots__ = ("detail", "healthy")

    def __init__(self, healthy: bool, detail: str = "") -> None:
        self.healthy = healthy
        self.detail = detail

    def __bool__(self) -> bool:
        return self.healthy

    def __repr__(self) -> str:
        return f"Health({self.healthy!r}, {self.detail!r})"


#: A service's health check: sync or async, answering a bool or a :class:`Health`.
HealthCheck = Callable[[], Awaitable[bool | Health] | bool | Health]


class ServiceSpec(msgspec.Struct, frozen=True):
    interface: type
    name: str
    impl: Any
    owner: str
    health: Any = None


class RouteSpec(msgspec.Struct, frozen=True):
    path: str
    endpoint: Any
    methods: tuple[str, ...] | None
    name: str | None
    listener: Listener
    websocket: bool
    owner: str


class MiddlewareSpec(msgspec.Struct, frozen=True):
    cls: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    order: int
    owner: str


class SubscriptionSpec(msgspec.Struct, frozen=True):
    pattern: str
    handler: Any
    queue_size: int | None
    overflow: OverflowPolicy
    name: str
    owner: str
    block_timeout: float = 1.0
    on_drop: Any = None


class Tool(msgspec.Struct, frozen=True):
    """A tool a plugin offers: a name, a description, JSON-schema parameters and an async callable."""

    name: str
    description: str
    parameters: dict[str, Any]
    call: Any


class Staged(msgspec.Struct):
    """Everything one plugin registered during one activation, not yet visible to requests."""

    owner: str
    providers: list[Provider] = msgspec.field(default_factory=list)
    services: list[ServiceSpec] = msgspec.field(default_factory=list)
    routes: list[RouteSpec] = msgspec.field(default_factory=list)
    middleware: list[MiddlewareSpec] = msgspec.field(default_factory=list)
    subscriptions: list[SubscriptionSpec] = msgspec.field(default_factory=list)
    tools: list[Tool] = msgspec.field(default_factory=list)
    responders: list[tuple[str, Any]] = msgspec.field(default_factory=list)


class _Registrar:
    def __init__(self, staged: Staged) -> None:
        self._staged = staged

    @property
    def owner(self) -> str:
        """The id of the plugin being registered."""
        return self._staged.owner

    def _fail(self, message: str) -> PluginLoadError:
        return PluginLoadError(self._staged.owner, message)


class ProviderRegistrar(_Registrar):
    """``register(provider)``: add a provider adapter. Its ``name`` must be unique among providers."""

    def __call__(self, provider: Provider) -> None:
        for attr in ("name", "capabilities", "models", "chat", "stream", "embed"):
            if not hasattr(provider, attr):
                raise self._fail(f"provider {provider!r} lacks {attr!r} (see sira_kernel.Provider)")
        self._staged.providers.append(provider)


class ServiceRegistrar(_Registrar):
    """``register(Interface, impl, name="default", health=None)``: offer a service.

    ``Interface`` is the Protocol (or class) consumers look it up by; ``health`` is an optional
    callable (sync or async) returning True when the service is healthy.
    """

    def __call__(
        self, interface: type[T], impl: T, *, name: str = "default", health: HealthCheck | None = None
    ) -> None:
        self._staged.services.append(
            ServiceSpec(interface=interface, name=name, impl=impl, owner=self.owner, health=health)
        )


class RouteRegistrar(_Registrar):
    """``register(path, endpoint, methods=None, name=None, listener="public")``: add an HTTP route.

    ``endpoint`` is a Starlette endpoint (``async def endpoint(request) -> Response``) or a raw ASGI
    app given as a callable *object* (an instance with ``async def __call__(scope, receive, send)``;
    Starlette takes a plain function for a request endpoint). ``methods=None`` serves GET and HEAD
    for endpoints and every method for ASGI objects. ``register.websocket(path, endpoint)`` adds a
    WebSocket route.
    """

    def __call__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        methods: Sequence[str] | None = None,
        name: str | None = None,
        listener: Listener = "public",
    ) -> None:
        if not path.startswith("/"):
            raise self._fail(f"route path {path!r} must start with '/'")
        self._staged.routes.append(
            RouteSpec(
                path=path,
                endpoint=endpoint,
                methods=tuple(m.upper() for m in methods) if methods else None,
                name=name,
                listener=listener,
                websocket=False,
                owner=self.owner,
            )
        )

    def websocket(
        self, path: str, endpoint: Callable[..., Any], *, name: str | None = None, listener: Listener = "public"
    ) -> None:
        """Add a WebSocket route."""
        self._staged.routes.append(
            RouteSpec(
                path=path, endpoint=endpoint, methods=None, name=name, listener=listener,
                websocket=True, owner=self.owner,
            )
        )


class MiddlewareRegistrar(_Registrar):
    """``register(MiddlewareClass, *args, order=0, **kwargs)``: wrap the HTTP app.

    The class is instantiated as ``MiddlewareClass(app, *args, **kwargs)`` (Starlette's shape).
    Lower ``order`` runs outermost. Middleware is pure ASGI, so it sees streamed bodies chunk by chunk.
    """

    def __call__(self, cls: Callable[..., Any], /, *args: Any, order: int = 0, **kwargs: Any) -> None:
        self._staged.middleware.append(
            MiddlewareSpec(cls=cls, args=args, kwargs=kwargs, order=order, owner=self.owner)
        )


class SubscriptionRegistrar(_Registrar):
    """``register(pattern, handler, queue_size=None, overflow="drop_oldest", name=None, ...)``.

    ``queue_size`` defaults to the kernel's ``bus.default_queue_size``.
    ``register.responder(topic, handler)`` answers bus requests on ``topic`` (one responder per
    topic); it is removed with the plugin.

    ``pattern`` is a dotted topic where ``*`` matches one segment and ``#`` any number (including
    none). ``handler(event)`` may be sync or async; it runs in the plugin's own delivery task, in
    publish order. ``on_drop(event)`` is called for each event the overflow policy drops.
    """

    def __call__(
        self,
        pattern: str,
        handler: Callable[[Any], Any],
        *,
        queue_size: int | None = None,
        overflow: OverflowPolicy = "drop_oldest",
        name: str | None = None,
        block_timeout: float = 1.0,
        on_drop: Callable[[Any], None] | None = None,
    ) -> None:
        if overflow not in ("block", "drop_oldest", "drop_newest"):
            raise self._fail(f"unknown overflow policy {overflow!r}")
        if queue_size is not None and queue_size < 1:
            raise self._fail("queue_size must be at least 1")
        self._staged.subscriptions.append(
            SubscriptionSpec(
                pattern=pattern,
                handler=handler,
                queue_size=queue_size,
                overflow=overflow,
                name=name or f"{self.owner}:{pattern}",
                owner=self.owner,
                block_timeout=block_timeout,
                on_drop=on_drop,
            )
        )

    def responder(self, topic: str, handler: Callable[[Any], Any]) -> None:
        """Answer ``await bus.request(topic, event)`` with ``handler(event)`` (sync or async)."""
        if any(t == topic for t, _ in self._staged.responders):
            raise self._fail(f"two responders for topic {topic!r}")
        self._staged.responders.append((topic, handler))


class ToolRegistrar(_Registrar):
    """``register(Tool(name, description, parameters, call))``: offer a tool."""

    def __call__(self, tool: Tool) -> None:
        if not inspect.iscoroutinefunction(tool.call) and not callable(tool.call):
            raise self._fail(f"tool {tool.name!r} has no callable")
        self._staged.tools.append(tool)

