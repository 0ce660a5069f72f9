"""The plugin contract the kernel relies on: entry point, class attributes, hooks, lifespan, config."""

from __future__ import annotations

from typing import Any

import pytest
import sira_kernel.sse
from sira_kernel.config import ConfigError, Secret, validate_section
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream, Fault
from sira_kernel.testing.providers import ProviderPluginContract, plugin_context, register_providers

import sira_provider_openai
from sira_provider_openai import OpenAIConfig, OpenAIProviderPlugin

pytestmark = pytest.mark.anyio


class TestPluginContract(ProviderPluginContract):
    plugin_class = OpenAIProviderPlugin
    entry_point = "provider-openai"
    model = "llama3"

    def plugin_config(self, fake: Any, **keys: Any) -> OpenAIConfig:
        return OpenAIConfig(base_url=fake.base_url, api_key=Secret(str(fake.api_key)), **keys)


def test_public_api_is_pinned() -> None:
    assert sira_provider_openai.__all__ == [
        "OpenAIConfig",
        "OpenAIProvider",
        "OpenAIProviderPlugin",
        "SSEDecoder",
    ]
    assert sira_provider_openai.SSEDecoder is sira_kernel.sse.SSEDecoder


def test_config_section_validation() -> None:
    config = validate_section(
        OpenAIConfig,
        {"base_url": "http://localhost:11434/v1", "api_key": "sk-abcdef123456", "models": ["llama3"]},
        "plugins.ollama",
    )
    assert isinstance(config.api_key, Secret) and config.api_key.reveal() == "sk-abcdef123456"
    assert config.models == ["llama3"]
    with pytest.raises(ConfigError, match=r"plugins\.ollama\.model: unknown key"):
        validate_section(OpenAIConfig, {"model": "x"}, "plugins.ollama")
    with pytest.raises(ConfigError, match="max_connections"):
        validate_section(OpenAIConfig, {"max_connections": "many"}, "plugins.ollama")


async def test_lifespan_discovers_models(fake: FakeOpenAIUpstream) -> None:
    plugin = OpenAIProviderPlugin(
        OpenAIConfig(base_url=fake.base_url, api_key=Secret(str(fake.api_key)), discover_models=True)
    )
    async with plugin.sira_lifespan(plugin_context("vllm")):
        [provider] = register_providers(plugin, "vllm")
        assert [m.id for m in provider.models()] == list(fake.models)


async def test_failed_discovery_does_not_stop_the_plugin(fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(status=503))
    plugin = OpenAIProviderPlugin(
        OpenAIConfig(
            base_url=fake.base_url, api_key=Secret(str(fake.api_key)), models=["x"], discover_models=True
        )
    )
    async with plugin.sira_lifespan(plugin_context("vllm")):
        [provider] = register_providers(plugin, "vllm")
        assert [m.id for m in provider.models()] == ["x"]
