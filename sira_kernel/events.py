"""Events the kernel publishes on the bus. Each names its topic in a ``topic`` ClassVar."""

from __future__ import annotations

from typing import ClassVar

import msgspec

__all__ = ["Attempt", "PluginEvent", "UsageRecord"]


class Attempt(msgspec.Struct, kw_only=True):
    """One try of a request against one deployment (a request with retries or fallbacks has several)."""

    provider: str
    model: str
    status: int
    error_code: str | None = None
    latency_ms: float = 0.0


class UsageRecord(msgspec.Struct, kw_only=True):
    """One client request's outcome, published once per request on ``usage.request``.

    Published for every request that reached the pipeline, successful or not, exactly once, after
    the response (or stream) ended. ``status`` is the HTTP status the client got (499 when the
    client went away first). Never contains prompts, completions or credentials.
    """

    topic: ClassVar[str] = "usage.request"

    request_id: str
    timestamp: float
    operation: str
    principal: str
    principal_kind: str
    tenant: str | None = None
    team: str | None = None
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    status: int = 200
    error_code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    usage_estimated: bool = False
    """True when the provider reported no usage and the tokens were counted by the gateway."""
    cost_usd: float | None = None
    """From the registered PriceBook service; None when there is none or the model has no price."""
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    attempts: int = 0
    """How many provider attempts the request took (0 when it failed before reaching a provider)."""
    attempt_log: list[Attempt] = msgspec.field(default_factory=list)


class PluginEvent(msgspec.Struct, kw_only=True):
    """A plugin changed state. Published on ``plugin.<state>`` (active, draining, stopped, failed)."""

    plugin_id: str
    state: str
    generation: int
    reason: str | None = None
