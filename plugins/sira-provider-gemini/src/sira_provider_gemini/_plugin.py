"""The pluggy plugin: owns one provider instance and its pooled upstream client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from sira_kernel.hookspecs import hookimpl

from ._config import GeminiConfig
from ._provider import GeminiProvider

if TYPE_CHECKING:
    from sira_kernel.context import PluginContext
    from sira_kernel.registrations import ProviderRegistrar

__all__ = ["GeminiProviderPlugin"]


class GeminiProviderPlugin:
    """Serves chat, streamed chat and embeddings from the Google Gemini API.

    One activation is one upstream (one key, one base URL): run several
    (``[plugins.gemini-eu] use = "provider-gemini"``) to reach several; each registers a provider
    named after its instance id.
    """

    sira_api = 1
    Config = GeminiConfig
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()

    def __init__(self, config: GeminiConfig | None = None) -> None:
        self.config = config if config is not None else GeminiConfig()
        self.provider = GeminiProvider("provider-gemini", self.config)

    @hookimpl
    def sira_lifespan(self, context: PluginContext) -> contextlib.AbstractAsyncContextManager[None]:
        """Open the upstream client (and discover models if configured); close it on exit."""
        return self._lifespan(context)

    @contextlib.asynccontextmanager
    async def _lifespan(self, context: PluginContext) -> AsyncIterator[None]:
        self.provider.name = context.plugin_id
        limits = context.config.limits
        await self.provider.open(connect_timeout=limits.connect_timeout)
        try:
            if self.config.discover_models:
                try:
                    found = await self.provider.discover(timeout=limits.first_token_timeout)
                except Exception as exc:  # serving the configured models beats not starting at all
                    context.log.warning("model discovery failed", error=str(exc))
                else:
                    context.log.info("models discovered", count=len(found))
            yield
        finally:
            await self.provider.aclose()

    @hookimpl
    def sira_register_providers(self, register: ProviderRegistrar) -> None:
        """Register the provider under this instance's id."""
        self.provider.name = register.owner
        register(self.provider)
