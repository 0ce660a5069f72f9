"""The pluggy plugin: owns one provider instance and its pooled upstream client."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from sira_kernel.hookspecs import hookimpl
from sira_kernel.upstream import provider_lifespan

from ._config import OpenAIConfig
from ._provider import OpenAIProvider

if TYPE_CHECKING:
    from sira_kernel.context import PluginContext
    from sira_kernel.registrations import ProviderRegistrar

__all__ = ["OpenAIProviderPlugin"]


class OpenAIProviderPlugin:
    """Serves chat, streamed chat and embeddings from an OpenAI-compatible upstream.

    One activation is one upstream: run several (``[plugins.ollama] use = "provider-openai"``) to
    reach several; each registers a provider named after its instance id.
    """

    sira_api = 1
    Config = OpenAIConfig
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()

    def __init__(self, config: OpenAIConfig | None = None) -> None:
        self.config = config if config is not None else OpenAIConfig()
        self.provider = OpenAIProvider("provider-openai", self.config)

    @hookimpl
    def sira_lifespan(self, context: PluginContext) -> contextlib.AbstractAsyncContextManager[None]:
        """Open the upstream client (and discover models if configured); close it on exit."""
        discover = self.provider.discover if self.config.discover_models else None
        return provider_lifespan(self.provider, context, discover=discover)

    @hookimpl
    def sira_register_providers(self, register: ProviderRegistrar) -> None:
        """Register the provider under this instance's id."""
        self.provider.name = register.owner
        register(self.provider)
