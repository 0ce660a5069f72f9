"""The ``[plugins.<id>]`` section of a Gemini provider instance."""

from __future__ import annotations

import re

import msgspec
from sira_kernel.config import Secret
from sira_kernel.upstream import UpstreamSettings

__all__ = ["GeminiConfig", "SafetySetting"]

_API_VERSION = re.compile(r"v[0-9]+[a-z0-9]*")

#: Google's documented escape hatch for a function-call turn whose real signature was lost.
SKIP_SIGNATURE = "skip_thought_signature_validator"


class SafetySetting(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One entry of Gemini's ``safetySettings``, sent as is."""

    category: str
    """``HARM_CATEGORY_HARASSMENT``, ``HARM_CATEGORY_HATE_SPEECH``, ``HARM_CATEGORY_SEXUALLY_EXPLICIT``,
    ``HARM_CATEGORY_DANGEROUS_CONTENT`` or ``HARM_CATEGORY_CIVIC_INTEGRITY``."""
    threshold: str
    """``BLOCK_NONE``, ``BLOCK_ONLY_HIGH``, ``BLOCK_MEDIUM_AND_ABOVE``, ``BLOCK_LOW_AND_ABOVE`` or ``OFF``."""


class GeminiConfig(UpstreamSettings, kw_only=True, forbid_unknown_fields=True):
    """Where the Gemini API is, how to authenticate, what it serves and how to pool connections.

    Every key is documented in the distribution's README. The upstream URL and credentials come only
    from here: nothing a client sends can change them.
    """

    base_url: str = "https://generativelanguage.googleapis.com"
    """The API root, without the version (a proxy speaking the same API works too)."""
    api_key: Secret | None = None
    """Sent as ``x-goog-api-key`` (never in the URL, so it cannot leak into access logs). None sends none."""
    api_version: str = "v1beta"
    """The path segment after ``base_url`` (``v1beta``; ``v1`` lacks system instructions and tools)."""
    models: list[str] = msgspec.field(default_factory=list)
    """Chat model ids served, public id = upstream name (``gemini-2.5-flash``; ``tunedModels/x`` works)."""
    aliases: dict[str, str] = msgspec.field(default_factory=dict)
    """Public model id -> upstream model name."""
    embedding_models: list[str] = msgspec.field(default_factory=list)
    """Embedding model ids served (``text-embedding-004``, ``gemini-embedding-001``)."""
    safety_settings: list[SafetySetting] = msgspec.field(default_factory=list)
    """Sent as ``safetySettings`` on every chat request (a client's own ``safetySettings`` wins)."""
    include_thoughts: bool = False
    """Ask thinking models for their thought summaries (``thinkingConfig.includeThoughts``); they stream
    as reasoning deltas and come back as ``reasoning_content``."""
    thought_signature_fallback: str = SKIP_SIGNATURE
    """The ``thoughtSignature`` put on an assistant function-call turn that arrives without its own
    (OpenAI-format clients cannot carry one back). ``""`` sends none."""
    discover_models: bool = False
    """List ``GET /{api_version}/models`` at startup and serve every model it lists, besides ``models``."""
    passthrough_fields: bool = True
    """Forward Gemini-native request fields a client adds (``generationConfig``, ``safetySettings``,
    ``toolConfig``, ``cachedContent``, native tools) and the known extras ``top_k`` and
    ``reasoning_effort``. Other unknown fields are OpenAI's and are never sent to Gemini."""

    def __post_init__(self) -> None:
        if not _API_VERSION.fullmatch(self.api_version):
            raise ValueError("api_version must look like 'v1beta' or 'v1'")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
