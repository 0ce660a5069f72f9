"""The ``[plugins.<id>]`` section of an OpenAI-compatible provider instance."""

from __future__ import annotations

import msgspec
from sira_kernel.config import Secret
from sira_kernel.upstream import UpstreamSettings

__all__ = ["OpenAIConfig"]


class OpenAIConfig(UpstreamSettings, kw_only=True, forbid_unknown_fields=True):
    """Where the upstream is, how to authenticate, what it serves and how to pool connections.

    Every key is documented in the distribution's README. The upstream URL and credentials come only
    from here: nothing a client sends can change them.
    """

    base_url: str = "https://api.openai.com/v1"
    """The API root. OpenAI-style servers: up to and including ``/v1``. Azure: the resource endpoint
    (``https://NAME.openai.azure.com``)."""
    api_key: Secret | None = None
    """Sent as ``Authorization: Bearer <key>`` (Azure: ``api-key: <key>``). None sends no credentials."""
    organization: str | None = None
    """Sent as ``OpenAI-Organization``."""
    project: str | None = None
    """Sent as ``OpenAI-Project``."""
    models: list[str] = msgspec.field(default_factory=list)
    """Chat model ids served, public id = upstream name."""
    aliases: dict[str, str] = msgspec.field(default_factory=dict)
    """Public model id -> upstream model name (Azure: deployment name)."""
    embedding_models: list[str] = msgspec.field(default_factory=list)
    """Embedding model ids served."""
    azure: bool = False
    """Use Azure OpenAI's URL scheme and ``api-key`` header."""
    api_version: str = "2024-10-21"
    """Azure ``api-version`` query parameter."""
    discover_models: bool = False
    """Fetch ``GET /models`` at startup and serve every model it lists, besides ``models``."""
    stream_usage: bool = True
    """Ask the upstream for a final usage chunk on every stream (``stream_options.include_usage``)
    so usage can be metered even when the client did not ask for it."""
    passthrough_fields: bool = True
    """Forward request fields Sira does not model (``ChatRequest.extra``) to the upstream."""
