"""The plugin contract the kernel relies on: entry point, class attributes, hooks, lifespan, config."""

from __future__ import annotations

import importlib.metadata
from types import SimpleNamespace
from typing import Any

import pluggy
import pytest
from sira_kernel import hookspecs
from sira_kernel.auth import RequestInfo
from sira_kernel.config import ConfigError, KernelConfig, Secret, parse_config, validate_section
from sira_kernel.context import PluginContext
from sira_kernel.errors import ProviderUnavailable
from sira_kernel.providers import CallContext, Provider
from sira_kernel.registrations import ProviderRegistrar, Staged
from sira_kernel.testing import make_kernel
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream
from sira_kernel.types import ChatRequest, Message, TextDelta, Usage

import sira_provider_anthropic
from sira_provider_anthropic import AnthropicConfig, AnthropicProvider, AnthropicProviderPlugin

from .conftest import API_KEY

pytestmark = pytest.mark.anyio


def info() -> RequestInfo:
    return RequestInfo(method="POST", path="/v1/chat/completions", headers={})


def context(plugin_id: str, config: KernelConfig | None = None) -> PluginContext:
    kernel: Any = SimpleNamespace(config=config or KernelConfig())
    return PluginContext(kernel, plugin_id, None)


def register(plugin: AnthropicProviderPlugin, owner: str) -> list[Provider]:
    staged = Staged(owner=owner)
    plugin.sira_register_providers(ProviderRegistrar(staged))
    return staged.providers


def ask(text: str = "hi", model: str = "m", **fields: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content=text)], **fields)


def test_public_api_is_pinned() -> None:
    assert sira_provider_anthropic.__all__ == [
        "AnthropicConfig",
        "AnthropicProvider",
        "AnthropicProviderPlugin",
        "SSEDecoder",
        "StreamParser",
        "UnsupportedRequest",
        "to_anthropic",
    ]


def test_entry_point() -> None:
    [entry] = [
        e
        for e in importlib.metadata.entry_points(group="sira_kernel.plugins")
        if e.name == "provider-anthropic"
    ]
    assert entry.load() is AnthropicProviderPlugin


def test_class_contract() -> None:
    assert AnthropicProviderPlugin.sira_api == 1
    assert AnthropicProviderPlugin.Config is AnthropicConfig
    assert AnthropicProviderPlugin.requires == () and AnthropicProviderPlugin.provides == ()
    assert AnthropicProviderPlugin.__doc__


def test_hooks_match_the_kernel_hookspecs() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    plugin = AnthropicProviderPlugin(AnthropicConfig())
    manager.register(plugin, name="provider-anthropic")
    manager.check_pending()
    hooks = {caller.name for caller in manager.get_hookcallers(plugin) or []}
    assert hooks == {"sira_lifespan", "sira_register_providers"}


def test_config_defaults() -> None:
    config = AnthropicConfig()
    assert (config.base_url, config.anthropic_version, config.default_max_tokens) == (
        "https://api.anthropic.com",
        "2023-06-01",
        4096,
    )
    assert config.passthrough_fields == ["thinking", "top_k", "metadata", "service_tier", "container"]
    assert config.api_key is None and config.beta == [] and config.thinking is None


def test_config_section_validation() -> None:
    section = {
        "api_key": "sk-ant-abcdef123456",
        "models": ["claude-sonnet-4-5"],
        "beta": ["interleaved-thinking-2025-05-14"],
        "default_max_tokens": "8192",  # from ${VAR}: converted
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }
    config = validate_section(AnthropicConfig, section, "plugins.claude")
    assert isinstance(config.api_key, Secret) and config.api_key.reveal() == "sk-ant-abcdef123456"
    assert "sk-ant" not in repr(config)
    assert config.default_max_tokens == 8192
    with pytest.raises(ConfigError, match=r"plugins\.claude\.model: unknown key"):
        validate_section(AnthropicConfig, {"model": "x"}, "plugins.claude")
    with pytest.raises(ConfigError, match="default_max_tokens"):
        validate_section(AnthropicConfig, {"default_max_tokens": 0}, "plugins.claude")
    with pytest.raises(ConfigError, match="total_timeout"):
        validate_section(AnthropicConfig, {"total_timeout": -1}, "plugins.claude")


def test_instances_from_kernel_toml() -> None:
    kernel_config = parse_config(
        {
            "kernel": {"plugins": ["provider-anthropic", "claude-eu"]},
            "plugins": {
                "provider-anthropic": {"models": ["claude-sonnet-4-5"]},
                "claude-eu": {
                    "use": "provider-anthropic",
                    "base_url": "https://eu.example.com",
                    "aliases": {"claude-eu": "claude-sonnet-4-5"},
                },
            },
        }
    )
    assert kernel_config.entry_point_for("claude-eu") == "provider-anthropic"
    config = validate_section(AnthropicConfig, kernel_config.plugin_section("claude-eu"), "plugins.claude-eu")
    assert config.base_url == "https://eu.example.com"


def test_provider_is_a_provider() -> None:
    assert isinstance(AnthropicProvider("x", AnthropicConfig()), Provider)


async def test_lifespan_then_registration(fake: FakeAnthropicUpstream) -> None:
    plugin = AnthropicProviderPlugin(
        AnthropicConfig(base_url=fake.base_url, api_key=Secret(API_KEY), models=["claude-sonnet-4-5"])
    )
    async with plugin.sira_lifespan(context("claude")):
        [provider] = register(plugin, "claude")
        assert provider.name == "claude"
        response = await provider.chat(ask(), CallContext(upstream_model="claude-sonnet-4-5", request_id="r"))
        assert response.choices[0].message.content == "Echo: hi"
    with pytest.raises(ProviderUnavailable) as caught:  # the lifespan closed the client
        await provider.chat(ask(), CallContext(upstream_model="claude-sonnet-4-5", request_id="r"))
    assert caught.value.provider == "claude"


async def test_two_instances_coexist(fake: FakeAnthropicUpstream) -> None:
    key = Secret(API_KEY)
    first = AnthropicProviderPlugin(AnthropicConfig(base_url=fake.base_url, api_key=key, models=["a"]))
    second = AnthropicProviderPlugin(AnthropicConfig(base_url=fake.base_url, api_key=key, models=["b"]))
    async with first.sira_lifespan(context("claude-a")), second.sira_lifespan(context("claude-b")):
        [provider_a] = register(first, "claude-a")
        [provider_b] = register(second, "claude-b")
        assert (provider_a.name, provider_b.name) == ("claude-a", "claude-b")
        assert [m.id for m in provider_a.models()] == ["a"]
        await provider_b.chat(ask(), CallContext(upstream_model="b", request_id="r"))
    assert fake.requests[-1].json["model"] == "b"


async def test_through_the_kernel_pipeline(fake: FakeAnthropicUpstream) -> None:
    """The installed entry point, configured like kernel.toml, serving the pipeline end to end."""
    section = {
        "base_url": fake.base_url,
        "api_key": API_KEY,
        "models": ["claude-sonnet-4-5"],
        "aliases": {"claude": "claude-haiku-4-5"},
        "default_max_tokens": 512,
    }
    kernel = make_kernel(config={"plugins": {"provider-anthropic": section}}, enable=["provider-anthropic"])
    async with kernel:
        health = {p.id: p for p in (await kernel.health()).plugins}
        assert health["provider-anthropic"].state == "active", health["provider-anthropic"].reason

        response = await kernel.pipeline.chat(ask("hello gateway", model="claude"), info())
        assert response.choices[0].message.content == "Echo: hello gateway"
        sent = fake.requests[-1]
        assert (sent.json["model"], sent.json["max_tokens"]) == ("claude-haiku-4-5", 512)

        stream = await kernel.pipeline.stream(ask("streamed", model="claude-sonnet-4-5", stream=True), info())
        try:
            events = [event async for event in stream]
        finally:
            await stream.aclose()
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Echo: streamed"
        assert any(isinstance(e, Usage) for e in events)
        assert await fake.wait_until_async(lambda: fake.completed_streams == 1)
