"""The pluggy plugin: owns one provider instance and its pooled upstream client."""

from __future__ import annotations

from sira_kernel.upstream import UpstreamProviderPlugin

from ._config import AnthropicConfig
from ._provider import AnthropicProvider

__all__ = ["AnthropicProviderPlugin"]


class AnthropicProviderPlugin(UpstreamProviderPlugin):
    """Serves chat and streamed chat from Anthropic's Messages API (Claude models).

    One activation is one upstream account: run several (``[plugins.claude-eu] use =
    "provider-anthropic"``) to reach several; each registers a provider named after its instance id.
    """

    Config = AnthropicConfig
    config: AnthropicConfig
    provider: AnthropicProvider

    def __init__(self, config: AnthropicConfig | None = None) -> None:
        self.config = config if config is not None else AnthropicConfig()
        self.provider = AnthropicProvider("provider-anthropic", self.config)
