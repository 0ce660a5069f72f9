"""The pluggy plugin: owns one provider instance and its pooled upstream client."""

from __future__ import annotations

from sira_kernel.upstream import UpstreamProviderPlugin

from ._config import OpenAIConfig
from ._provider import OpenAIProvider

__all__ = ["OpenAIProviderPlugin"]


class OpenAIProviderPlugin(UpstreamProviderPlugin):
    """Serves chat, streamed chat and embeddings from an OpenAI-compatible upstream.

    One activation is one upstream: run several (``[plugins.ollama] use = "provider-openai"``) to
    reach several; each registers a provider named after its instance id. Models are discovered at
    startup when ``discover_models`` is set.
    """

    Config = OpenAIConfig
    config: OpenAIConfig
    provider: OpenAIProvider

    def __init__(self, config: OpenAIConfig | None = None) -> None:
        self.config = config if config is not None else OpenAIConfig()
        self.provider = OpenAIProvider("provider-openai", self.config)
