"""Sira's kernel: plugin registry, service registry, message bus and resource scheduler.

The public surface for plugin authors and operators is re-exported here; everything else lives in
the modules named below and may change. ``tests/test_public_api.py`` pins ``__all__``.
"""

from __future__ import annotations

API_VERSION = 1
"""The kernel API version plugins declare in ``sira_api``."""

from .asgi import KernelApp  # noqa: E402
from .auth import LimitSpec, Principal, RequestInfo  # noqa: E402
from .bus import BusBridge, MessageBus, Subscription  # noqa: E402
from .config import KernelConfig, Secret, load_config, parse_config  # noqa: E402
from .context import PluginContext  # noqa: E402
from .errors import (  # noqa: E402
    AuthenticationFailed,
    AuthorizationDenied,
    BusTimeout,
    CapacityError,
    ConfigError,
    IncompatiblePlugin,
    KernelInvariantError,
    ModelNotFound,
    PayloadTooLarge,
    PluginError,
    PluginLoadError,
    PluginUnavailable,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    QueueTimeout,
    RateLimited,
    RequestError,
    SiraError,
)
from .events import PluginEvent, UsageRecord  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .kernel import HealthReport, Kernel  # noqa: E402
from .pipeline import ChatStream  # noqa: E402
from .plugins import Lease, PluginInfo, PluginState  # noqa: E402
from .providers import CallContext, Capabilities, EventBatches, Provider  # noqa: E402
from .registrations import Tool  # noqa: E402
from .routing import Deployment, Route, RouteTable  # noqa: E402
from .scheduler import ConcurrencyPool, CounterBackend, InProcessCounters, Reservation, Scheduler  # noqa: E402
from .services import ServiceRegistry  # noqa: E402
from .types import (  # noqa: E402
    ChatChoice,
    ChatRequest,
    ChatResponse,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    Finish,
    Message,
    ModelInfo,
    ReasoningDelta,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolFunction,
    Usage,
)

__all__ = [
    "API_VERSION",
    "AuthenticationFailed",
    "AuthorizationDenied",
    "BusBridge",
    "BusTimeout",
    "CallContext",
    "Capabilities",
    "CapacityError",
    "ChatChoice",
    "ChatRequest",
    "ChatResponse",
    "ChatStream",
    "ConcurrencyPool",
    "ConfigError",
    "CounterBackend",
    "Deployment",
    "EmbeddingData",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EventBatches",
    "Finish",
    "HealthReport",
    "InProcessCounters",
    "IncompatiblePlugin",
    "Kernel",
    "KernelApp",
    "KernelConfig",
    "KernelInvariantError",
    "Lease",
    "LimitSpec",
    "Message",
    "MessageBus",
    "ModelInfo",
    "ModelNotFound",
    "PayloadTooLarge",
    "PluginContext",
    "PluginError",
    "PluginEvent",
    "PluginInfo",
    "PluginLoadError",
    "PluginState",
    "PluginUnavailable",
    "Principal",
    "Provider",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderRejected",
    "ProviderTimeout",
    "ProviderUnavailable",
    "QueueTimeout",
    "RateLimited",
    "ReasoningDelta",
    "RequestError",
    "RequestInfo",
    "Reservation",
    "Route",
    "RouteTable",
    "Scheduler",
    "Secret",
    "ServiceRegistry",
    "SiraError",
    "StreamError",
    "StreamEvent",
    "StreamStart",
    "Subscription",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolFunction",
    "Usage",
    "UsageRecord",
    "hookimpl",
    "load_config",
    "parse_config",
]
