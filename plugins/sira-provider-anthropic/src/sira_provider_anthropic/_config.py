"""The ``[plugins.<id>]`` section of an Anthropic provider instance."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from sira_kernel.config import Secret
from sira_kernel.upstream import UpstreamSettings

__all__ = ["DEFAULT_PASSTHROUGH_FIELDS", "AnthropicConfig"]

#: Request fields Sira does not model that are forwarded to Anthropic by default. Anthropic rejects
#: unknown top-level fields, so only fields of its Messages API belong here.
DEFAULT_PASSTHROUGH_FIELDS: tuple[str, ...] = ("thinking", "top_k", "metadata", "service_tier", "container")

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class AnthropicConfig(UpstreamSettings, kw_only=True, forbid_unknown_fields=True):
    """Where the upstream is, how to authenticate, what it serves and how requests are shaped.

    Every key is documented in the distribution's README. The upstream URL, the key and the headers
    come only from here: nothing a client sends can change them.
    """

    base_url: str = "https://api.anthropic.com"
    """The API root, without ``/v1`` (requests go to ``{base_url}/v1/messages``)."""
    api_key: Secret | None = None
    """Sent as ``x-api-key``. None sends no credentials (a local proxy that adds them)."""
    anthropic_version: str = "2023-06-01"
    """Sent as ``anthropic-version``."""
    beta: list[str] = msgspec.field(default_factory=list)
    """Beta feature names, sent comma-separated as ``anthropic-beta`` (none: no header)."""
    models: list[str] = msgspec.field(default_factory=list)
    """Model ids served, public id = upstream name."""
    aliases: dict[str, str] = msgspec.field(default_factory=dict)
    """Public model id -> upstream model name."""
    default_max_tokens: PositiveInt = 4096
    """``max_tokens`` sent when the client set none (Anthropic requires one)."""
    thinking: dict[str, Any] | None = None
    """Extended thinking for every request that does not set its own ``thinking``, e.g.
    ``{type = "enabled", budget_tokens = 2048}``."""
    passthrough_fields: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_PASSTHROUGH_FIELDS))
    """Request fields Sira does not model (``ChatRequest.extra``) forwarded to Anthropic; any other
    extra field is dropped. Never one Sira builds itself (``model``, ``messages``, ``system``…)."""
