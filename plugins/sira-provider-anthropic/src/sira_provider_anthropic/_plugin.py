"""The pluggy plugin: owns one provider instance and its pooled upstream client."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from sira_kernel.hookspecs import hookimpl
from sira_kernel.upstream import provider_lifespan

from ._config import AnthropicConfig
from ._provider import AnthropicProvider

if TYPE_CHECKING:
    from sira_kernel.context import PluginContext
    from sira_kernel.registrations import ProviderRegistrar

__all__ = ["AnthropicProviderPlugin"]


class AnthropicProviderPlugin:
    """Serves chat and streamed chat from Anthropic's Messages API (Claude models).

    One activation is one upstream account: run several (``[plugins.claude-eu] use =
    "provider-anthropic"``) to reach several; each registers a provider named after its instance id.
    """

    sira_api = 1
    Config = AnthropicConfig
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()

    def __init__(self, config: AnthropicConfig | None = None) -> None:
        self.config = config if config is not None else AnthropicConfig()
        self.provider = AnthropicProvider("provider-anthropic", self.config)

    @hookimpl
    def sira_lifespan(self, context: PluginContext) -> contextlib.AbstractAsyncContextManager[None]:
        """Open the upstream client; close it on exit."""
        return provider_lifespan(self.provider, context)

    @hookimpl
    def sira_register_providers(self, register: ProviderRegistrar) -> None:
        """Register the provider under this instance's id."""
        self.provider.name = register.owner
        register(self.provider)
