"""The plugin contract the kernel relies on: entry point, class attributes, hooks, lifespan, config."""

from __future__ import annotations

from typing import Any

import pytest
import sira_kernel.sse
from sira_kernel.auth import RequestInfo
from sira_kernel.config import ConfigError, Secret, validate_section
from sira_kernel.testing import make_kernel
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream
from sira_kernel.testing.providers import ProviderPluginContract, chat_request
from sira_kernel.types import TextDelta, Usage

import sira_provider_anthropic
from sira_provider_anthropic import AnthropicConfig, AnthropicProviderPlugin

from .conftest import API_KEY

pytestmark = pytest.mark.anyio


def info() -> RequestInfo:
    return RequestInfo(method="POST", path="/v1/chat/completions", headers={})


class TestPluginContract(ProviderPluginContract):
    plugin_class = AnthropicProviderPlugin
    entry_point = "provider-anthropic"
    model = "claude-sonnet-4-5"

    def plugin_config(self, fake: Any, **keys: Any) -> AnthropicConfig:
        return AnthropicConfig(base_url=fake.base_url, api_key=Secret(API_KEY), **keys)


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
    assert sira_provider_anthropic.SSEDecoder is sira_kernel.sse.SSEDecoder


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

        response = await kernel.pipeline.chat(chat_request("hello gateway", model="claude"), info())
        assert response.choices[0].message.content == "Echo: hello gateway"
        sent = fake.requests[-1]
        assert (sent.json["model"], sent.json["max_tokens"]) == ("claude-haiku-4-5", 512)

        stream = await kernel.pipeline.stream(
            chat_request("streamed", model="claude-sonnet-4-5", stream=True), info()
        )
        try:
            events = [event async for event in stream]
        finally:
            await stream.aclose()
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Echo: streamed"
        assert any(isinstance(e, Usage) for e in events)
        assert await fake.wait_until_async(lambda: fake.completed_streams == 1)
