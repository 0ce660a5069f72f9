"""Pins the public surface: ``sira_kernel.__all__`` changes only on purpose, and all of it imports."""

from __future__ import annotations

import importlib

import sira_kernel

PUBLIC_API = [
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


def test_all_is_pinned() -> None:
    # A failure here means the public surface changed: update this list (and the docs) on purpose.
    assert sira_kernel.__all__ == PUBLIC_API


def test_the_pinned_list_is_sorted_and_unique() -> None:
    assert PUBLIC_API == sorted(PUBLIC_API)
    assert len(set(PUBLIC_API)) == len(PUBLIC_API)


def test_every_public_name_is_importable() -> None:
    module = importlib.import_module("sira_kernel")
    for name in PUBLIC_API:
        assert hasattr(module, name), name
        exec(f"from sira_kernel import {name}", {})  # noqa: S102 - the import statement users write


def test_nothing_private_is_exported() -> None:
    assert not [name for name in PUBLIC_API if name.startswith("_")]

