"""The decision log: one :class:`RouteDecision` per routed request, kept in a ring and on the bus.

A decision is recorded when its request's plan is finished: the answer came (``ok``), the plan gave
up (``failed``), no deployment could take it (``unavailable``), or the client went away
(``cancelled``). It is appended to a bounded ring (``GET /api/v1/route/decision-log``) and, when
anything subscribes to ``route.decision``, published on the bus. It never contains prompt text.
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar, Protocol

import msgspec

__all__ = ["Decided", "DecisionLog", "RouteAttempt", "RouteDecision"]


class RouteAttempt(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One attempt of a routed request."""

    deployment: str
    """``provider/model``."""
    group: str
    why: str
    """``first``; ``retry`` (same group); ``fallback:<kind>`` (the previous group failed with that
    error class, or ``fallback:unavailable`` when none of its deployments could take the request,
    ``fallback:context_window`` when the prompt exceeded its ``context_window``); ``retry_after``
    (waited for a rate-limited deployment's Retry-After)."""
    score: float | None = None
    """The strategy's score of the chosen deployment (see ``sira_router._strategies``)."""
    delay_s: float = 0.0
    """Backoff slept before this attempt."""
    probe: bool = False
    """This attempt was a half-open breaker's probe."""
    status: int | None = None
    """200, the error's HTTP status, or None while unknown (cancelled)."""
    error: str | None = None
    """The error class (``rate_limit``, ``server``, ``timeout``, ``context_window``…)."""
    latency_ms: float | None = None


class RouteDecision(msgspec.Struct, kw_only=True):
    """Why one request went where it went. Published on ``route.decision``."""

    topic: ClassVar[str] = "route.decision"

    request_id: str | None
    timestamp: float
    model: str
    """The model the client asked for."""
    group: str | None
    """The group the request was first routed to."""
    rule: str | None = None
    """The rule that matched, if any."""
    strategy: str | None = None
    reason: str = ""
    outcome: str = "ok"
    """``ok``, ``failed``, ``unavailable`` (nothing could take it), ``cancelled`` (client went away)."""
    attempts: list[RouteAttempt] = msgspec.field(default_factory=list)
    fallbacks: list[str] = msgspec.field(default_factory=list)
    """Groups fallen back to, in order."""
    skipped: list[str] = msgspec.field(default_factory=list)
    """Deployments passed over while choosing, with why: ``openai-b/gpt-4o: open 8.2s``, ``inactive``,
    ``half_open: probe in flight``, ``at rpm/tpm limit``."""
    notes: list[str] = msgspec.field(default_factory=list)
    """Other events: ``retry budget exhausted``, ``prompt exceeds context window (9000 > 8192)``…"""
    complexity: float | None = None
    """The request-complexity score when a complexity rule computed it."""
    prompt_tokens: int | None = None
    """When the router counted them (rules, context windows, cost)."""
    principal: str | None = None
    tenant: str | None = None


class Decided(Protocol):
    """A finished plan: it builds its decision when asked (so the request path builds none)."""

    def decision(self) -> RouteDecision: ...


class DecisionLog:
    """The last ``size`` finished plans (a ring: appending never grows it past ``size``).

    The ring keeps the plans themselves, which already hold everything a decision says, so
    recording costs one append; :meth:`latest` builds the :class:`RouteDecision` structs."""

    def __init__(self, size: int) -> None:
        self._ring: deque[Decided] = deque(maxlen=size)
        self.recorded = 0

    def append(self, plan: Decided) -> None:
        self._ring.append(plan)
        self.recorded += 1

    def latest(self, limit: int | None = None) -> list[RouteDecision]:
        """Newest first."""
        items = list(self._ring)
        items.reverse()
        if limit is not None:
            items = items[:limit]
        return [plan.decision() for plan in items]

    def __len__(self) -> int:
        return len(self._ring)
