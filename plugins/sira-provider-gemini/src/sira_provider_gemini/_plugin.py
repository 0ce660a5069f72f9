"""The pluggy plugin: owns one provider instance and its pooled upstream client."""

from __future__ import annotations

from sira_kernel.upstream import UpstreamProviderPlugin

from ._config import GeminiConfig
from ._provider import GeminiProvider

__all__ = ["GeminiProviderPlugin"]


class GeminiProviderPlugin(UpstreamProviderPlugin):
    """Serves chat, streamed chat and embeddings from the Google Gemini API.

    One activation is one upstream (one key, one base URL): run several
    (``[plugins.gemini-eu] use = "provider-gemini"``) to reach several; each registers a provider
    named after its instance id. Models are discovered at startup when ``discover_models`` is set.
    """

    Config = GeminiConfig
    config: GeminiConfig
    provider: GeminiProvider

    def __init__(self, config: GeminiConfig | None = None) -> None:
        self.config = config if config is not None else GeminiConfig()
        self.provider = GeminiProvider("provider-gemini", self.config)
