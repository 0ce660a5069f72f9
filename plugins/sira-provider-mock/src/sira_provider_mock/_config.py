"""The ``[plugins.provider-mock]`` section of kernel.toml."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["MAX_DIMENSIONS", "MockConfig"]

#: Upper bound on embedding dimensions (config and per request); every limit has a bound.
MAX_DIMENSIONS = 16_384

NonNegative = Annotated[float, msgspec.Meta(ge=0)]


def _default_models() -> list[str]:
    return ["mock-1", "mock-large"]


def _default_embedding_models() -> list[str]:
    return ["mock-embed"]


class MockConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Settings of one mock provider instance. Every key is optional; the defaults run offline demos.

    Times are in milliseconds. ``fail_rate`` makes a deterministic share of calls fail with
    ``fail_status``: the draws come from a ``random.Random(seed)`` owned by the provider, so the
    same sequence of calls fails the same way on every run.
    """

    models: list[str] = msgspec.field(default_factory=_default_models)
    """Chat model ids this provider serves."""
    embedding_models: list[str] = msgspec.field(default_factory=_default_embedding_models)
    """Embedding model ids this provider serves."""
    reply: str | None = None
    """A fixed text for every text reply, instead of one derived from the last user message."""
    pace_ms: NonNegative = 0.0
    """Pause between two streamed tokens (non-streamed replies take as long in total)."""
    first_token_ms: NonNegative = 0.0
    """Pause before the first token (the stream starts after it)."""
    fail_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    """Share of calls, from 0 to 1, that fail with ``fail_status``."""
    fail_status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 503
    """The upstream status a ``fail_rate`` failure simulates (mapped like ``[mock:status=NNN]``)."""
    seed: int = 0
    """Seed of the ``fail_rate`` draws."""
    embedding_dimensions: Annotated[int, msgspec.Meta(ge=1, le=MAX_DIMENSIONS)] = 8
    """Length of embedding vectors when the request does not ask for ``dimensions``."""
