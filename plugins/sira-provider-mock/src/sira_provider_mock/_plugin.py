"""The plugin class the kernel discovers through the ``sira_kernel.plugins`` entry point."""

from __future__ import annotations

from sira_kernel.hookspecs import hookimpl
from sira_kernel.registrations import ProviderRegistrar

from ._config import MockConfig
from ._provider import MockProvider

__all__ = ["MockProviderPlugin"]


class MockProviderPlugin:
    """Registers one :class:`MockProvider`, named after the plugin instance id.

    It holds no clients or tasks, so it needs no lifespan. Several instances with different
    ``[plugins.<id>]`` sections (``use = "provider-mock"``) give a router several deployments.
    """

    sira_api = 1
    Config = MockConfig
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()

    def __init__(self, config: MockConfig) -> None:
        self.config = config

    @hookimpl
    def sira_register_providers(self, register: ProviderRegistrar) -> None:
        """Register the mock provider under the plugin instance id."""
        register(MockProvider(name=register.owner, config=self.config))
