"""The plugin contract the kernel relies on: entry point, class attributes, hooks, lifespan, config."""

from __future__ import annotations

import importlib.metadata
from types import SimpleNamespace
from typing import Any

import pluggy
import pytest
from sira_kernel import hookspecs
from sira_kernel.config import ConfigError, KernelConfig, Secret, parse_config, validate_section
from sira_kernel.context import PluginContext
from sira_kernel.errors import ProviderUnavailable
from sira_kernel.providers import CallContext, Provider
from sira_kernel.registrations import ProviderRegistrar, Staged
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream, Fault
from sira_kernel.types import ChatRequest, Message

import sira_provider_openai
from sira_provider_openai import OpenAIConfig, OpenAIProvider, OpenAIProviderPlugin

pytestmark = pytest.mark.anyio


def context(plugin_id: str, config: KernelConfig | None = None) -> PluginContext:
    kernel: Any = SimpleNamespace(config=config or KernelConfig())
    return PluginContext(kernel, plugin_id, None)


def register(plugin: OpenAIProviderPlugin, owner: str) -> list[Provider]:
    staged = Staged(owner=owner)
    plugin.sira_register_providers(ProviderRegistrar(staged))
    return staged.providers


def ask(text: str = "hi") -> ChatRequest:
    return ChatRequest(model="m", messages=[Message(role="user", content=text)])


def test_public_api_is_pinned() -> None:
    assert sira_provider_openai.__all__ == [
        "OpenAIConfig",
        "OpenAIProvider",
        "OpenAIProviderPlugin",
        "SSEDecoder",
    ]


def test_entry_point() -> None:
    [entry] = [
        e for e in importlib.metadata.entry_points(group="sira_kernel.plugins") if e.name == "provider-openai"
    ]
    assert entry.load() is OpenAIProviderPlugin


def test_class_contract() -> None:
    assert OpenAIProviderPlugin.sira_api == 1
    assert OpenAIProviderPlugin.Config is OpenAIConfig
    assert OpenAIProviderPlugin.requires == () and OpenAIProviderPlugin.provides == ()
    assert OpenAIProviderPlugin.__doc__


def test_hooks_match_the_kernel_hookspecs() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    plugin = OpenAIProviderPlugin(OpenAIConfig())
    manager.register(plugin, name="provider-openai")
    manager.check_pending()
    hooks = {caller.name for caller in manager.get_hookcallers(plugin) or []}
    assert hooks == {"sira_lifespan", "sira_register_providers"}


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


def test_instances_from_kernel_toml() -> None:
    kernel_config = parse_config(
        {
            "kernel": {"plugins": ["provider-openai", "ollama"]},
            "plugins": {
                "provider-openai": {"models": ["gpt-4o-mini"]},
                "ollama": {
                    "use": "provider-openai",
                    "base_url": "http://127.0.0.1:11434/v1",
                    "models": ["llama3"],
                },
            },
        }
    )
    assert kernel_config.entry_point_for("ollama") == "provider-openai"
    config = validate_section(OpenAIConfig, kernel_config.plugin_section("ollama"), "plugins.ollama")
    assert config.base_url == "http://127.0.0.1:11434/v1"


async def test_lifespan_then_registration(fake: FakeOpenAIUpstream) -> None:
    plugin = OpenAIProviderPlugin(
        OpenAIConfig(base_url=fake.base_url, api_key=Secret(str(fake.api_key)), models=["llama3"])
    )
    lifespan = plugin.sira_lifespan(context("ollama"))
    async with lifespan:
        [provider] = register(plugin, "ollama")
        assert provider.name == "ollama"
        assert isinstance(provider, Provider)
        response = await provider.chat(ask(), CallContext(upstream_model="llama3", request_id="r"))
        assert response.choices[0].message.content == "Echo: hi"
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(), CallContext(upstream_model="llama3", request_id="r"))
    assert caught.value.provider == "ollama"


async def test_two_instances_coexist(fake: FakeOpenAIUpstream) -> None:
    key = Secret(str(fake.api_key))
    first = OpenAIProviderPlugin(OpenAIConfig(base_url=fake.base_url, api_key=key, models=["a"]))
    second = OpenAIProviderPlugin(OpenAIConfig(base_url=fake.base_url, api_key=key, models=["b"]))
    async with first.sira_lifespan(context("openai-a")), second.sira_lifespan(context("openai-b")):
        [provider_a] = register(first, "openai-a")
        [provider_b] = register(second, "openai-b")
        assert (provider_a.name, provider_b.name) == ("openai-a", "openai-b")
        assert provider_a is not provider_b
        assert [m.id for m in provider_a.models()] == ["a"]
        await provider_b.chat(ask(), CallContext(upstream_model="b", request_id="r"))
    assert fake.requests[-1].json["model"] == "b"


async def test_lifespan_discovers_models(fake: FakeOpenAIUpstream) -> None:
    plugin = OpenAIProviderPlugin(
        OpenAIConfig(base_url=fake.base_url, api_key=Secret(str(fake.api_key)), discover_models=True)
    )
    async with plugin.sira_lifespan(context("vllm")):
        [provider] = register(plugin, "vllm")
        assert [m.id for m in provider.models()] == list(fake.models)


async def test_failed_discovery_does_not_stop_the_plugin(fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(status=503))
    plugin = OpenAIProviderPlugin(
        OpenAIConfig(
            base_url=fake.base_url, api_key=Secret(str(fake.api_key)), models=["x"], discover_models=True
        )
    )
    async with plugin.sira_lifespan(context("vllm")):
        [provider] = register(plugin, "vllm")
        assert [m.id for m in provider.models()] == ["x"]


def test_provider_is_a_provider() -> None:
    assert isinstance(OpenAIProvider("x", OpenAIConfig()), Provider)
