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

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol, runtime_checkable

import msgspec

from .types import ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, ModelInfo, StreamEvent

__all__ = ["CallContext", "Capabilities", "EventBatches", "Provider"]


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

        An adapter that parses several events from one upstream read may return them as an
        :class:`EventBatches`: consumers that can (the bundled surfaces) then send each read's events
        to the client in one write. Adapters built on ``sira_kernel.upstream.Upstream`` do.
        """
        ...

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        """Embed the input. Providers without embeddings raise ``ProviderRejected``."""
        ...


class EventBatches:
    """A provider's event stream that also hands out its events a read at a time.

    Wraps an async generator that yields ``list[StreamEvent]``, one list per upstream read (in
    upstream order; an empty list is allowed). Iterating it yields the events one by one, as the
    :meth:`Provider.stream` contract asks; :meth:`next_batch` returns everything that arrived
    together, so a surface can relay a read's events in one write instead of one per event.
    Both may be mixed: :meth:`next_batch` first returns what is left of a partly iterated batch.
    """

    __slots__ = ("_batches", "_index", "_pending")

    def __init__(self, batches: AsyncGenerator[list[StreamEvent], None]) -> None:
        self._batches = batches
        self._pending: list[StreamEvent] = []
        self._index = 0

    def __aiter__(self) -> EventBatches:
        return self

    async def __anext__(self) -> StreamEvent:
        pending, index = self._pending, self._index
        while index >= len(pending):
            pending = self._pending = await self._batches.__anext__()  # StopAsyncIteration ends us too
            index = 0
        self._index = index + 1
        return pending[index]

    async def next_batch(self) -> list[StreamEvent]:
        """The rest of the current read's events, or the next read's (``StopAsyncIteration`` at the end)."""
        pending, index = self._pending, self._index
        if index < len(pending):
            self._pending, self._index = [], 0
            return pending[index:] if index else pending
        return await self._batches.__anext__()

    def take_pending(self) -> list[StreamEvent]:
        """What is left of the current read's events, without waiting for the next read."""
        pending, index = self._pending, self._index
        self._pending, self._index = [], 0
        return pending[index:]

    async def aclose(self) -> None:
        """Close the underlying generator (cancels the upstream request)."""
        self._pending, self._index = [], 0
        await self._batches.aclose()
