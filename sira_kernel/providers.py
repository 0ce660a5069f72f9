"""The provider adapter interface: what a provider plugin registers and the kernel calls.

A provider plugin creates one pooled upstream client in its ``sira_lifespan`` and registers one or
more :class:`Provider` objects in ``sira_register_providers``. The kernel calls them on the request
path with a :class:`CallContext` that carries the upstream model name and the deadlines to honour.

Adapters map every upstream failure to the kernel's ``ProviderError`` tree (see ``errors.py``):
connection failures and 5xx to ``ProviderUnavailable``, 429 to ``ProviderRateLimited`` (with the
upstream's Retry-After), deadlines to ``ProviderTimeout`` and the upstream's own 4xx to
``ProviderRejected``. After a stream has started, failures are yielded as a ``StreamError`` event
(or raised; the kernel turns a raise into the same event).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

import msgspec

from .types import ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, ModelInfo, StreamEvent

__all__ = ["CallContext", "Capabilities", "Provider"]


class Capabilities(msgspec.Struct, frozen=True):
    """What a provider can do; surfaces and routers read these instead of guessing."""

    chat: bool = True
    stream: bool = True
    tools: bool = True
    vision: bool = False
    embeddings: bool = False
    json_mode: bool = True
    passthrough_fields: bool = True
    """Whether unknown request fields (``ChatRequest.extra``) are forwarded upstream."""


class CallContext(msgspec.Struct, kw_only=True):
    """Per-call facts the kernel hands to an adapter.

    ``upstream_model`` replaces ``request.model`` when talking upstream. Timeouts are in seconds;
    ``max_response_bytes`` bounds what an adapter may read from the upstream for one call.
    """

    upstream_model: str
    request_id: str
    connect_timeout: float = 10.0
    first_token_timeout: float = 60.0
    total_timeout: float = 600.0
    max_response_bytes: int = 32 * 1024 * 1024


@runtime_checkable
class Provider(Protocol):
    """An upstream provider. ``name`` is unique among active providers (by default the plugin id)."""

    name: str
    capabilities: Capabilities

    def models(self) -> list[ModelInfo]:
        """The models this provider serves now (public ids and upstream names). Cheap and sync."""
        ...

    async def chat(self, request: ChatRequest, ctx: CallContext) -> ChatResponse:
        """Complete a chat request without streaming."""
        ...

    def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        """Stream a chat completion as typed events, in upstream order, as they arrive.

        The iterator yields ``StreamStart`` first, then deltas, ``Finish`` per choice, ``Usage``
        when known, and ``StreamError`` if the upstream fails after the start. Closing the iterator
        (``aclose``) must cancel the upstream request and release its connection.
        """
        ...

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        """Embed the input. Providers without embeddings raise ``ProviderRejected``."""
        ...
