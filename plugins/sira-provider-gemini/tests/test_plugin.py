"""The plugin contract the kernel relies on, and the installed plugin running inside a real kernel."""

from __future__ import annotations

from typing import Any

import pytest
import sira_kernel.sse
from sira_kernel.auth import RequestInfo
from sira_kernel.config import ConfigError, Secret, validate_section
from sira_kernel.errors import ProviderRejected
from sira_kernel.testing import make_kernel
from sira_kernel.testing.fake_gemini import FakeGeminiUpstream, GeminiFault
from sira_kernel.testing.loopback import RecordedRequest
from sira_kernel.testing.providers import ProviderPluginContract, plugin_context, register_providers
from sira_kernel.testing.providers import chat_request as ask
from sira_kernel.types import EmbeddingRequest, Finish, StreamStart, TextDelta, Usage

import sira_provider_gemini
from sira_provider_gemini import GeminiConfig, GeminiProvider, GeminiProviderPlugin

pytestmark = pytest.mark.anyio

INFO = RequestInfo(method="POST", path="/v1/chat/completions", headers={})


class TestPluginContract(ProviderPluginContract):
    plugin_class = GeminiProviderPlugin
    entry_point = "provider-gemini"
    model = "gemini-2.0-flash"

    def plugin_config(self, fake: Any, **keys: Any) -> GeminiConfig:
        return GeminiConfig(base_url=fake.base_url, api_key=Secret(str(fake.api_key)), **keys)

    def sent_model(self, request: RecordedRequest) -> str:
        return request.path.removeprefix("/v1beta/models/").removesuffix(":generateContent")


def test_public_api_is_pinned() -> None:
    assert sira_provider_gemini.__all__ == [
        "GeminiConfig",
        "GeminiProvider",
        "GeminiProviderPlugin",
        "SSEDecoder",
        "SafetySetting",
        "to_gemini_schema",
    ]
    assert sira_provider_gemini.SSEDecoder is sira_kernel.sse.SSEDecoder


def test_capabilities() -> None:
    capabilities = GeminiProvider("x", GeminiConfig()).capabilities
    assert (capabilities.vision, capabilities.tools, capabilities.embeddings, capabilities.json_mode) == (
        True,
        True,
        True,
        True,
    )


def test_config_section_validation() -> None:
    config = validate_section(
        GeminiConfig,
        {
            "api_key": "AIza-abcdef123456",
            "models": ["gemini-2.5-flash"],
            "safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
            "first_token_timeout": "30",
        },
        "plugins.gemini",
    )
    assert isinstance(config.api_key, Secret) and config.api_key.reveal() == "AIza-abcdef123456"
    assert "AIza" not in repr(config)
    assert config.first_token_timeout == 30.0
    assert config.base_url == "https://generativelanguage.googleapis.com" and config.api_version == "v1beta"
    with pytest.raises(ConfigError, match=r"plugins\.gemini\.model: unknown key"):
        validate_section(GeminiConfig, {"model": "x"}, "plugins.gemini")
    with pytest.raises(ConfigError, match=r"safety_settings\[0\]\.treshold: unknown key"):
        validate_section(
            GeminiConfig, {"safety_settings": [{"category": "c", "treshold": "t"}]}, "plugins.gemini"
        )
    for bad in ({"api_version": "v1beta/../x"}, {"base_url": "ftp://x"}, {"max_connections": 0}):
        with pytest.raises(ConfigError, match=r"plugins\.gemini"):
            validate_section(GeminiConfig, bad, "plugins.gemini")


async def test_lifespan_discovers_models_and_survives_a_failed_discovery(fake: FakeGeminiUpstream) -> None:
    config = GeminiConfig(base_url=fake.base_url, api_key=Secret(str(fake.api_key)), discover_models=True)
    plugin = GeminiProviderPlugin(config)
    async with plugin.sira_lifespan(plugin_context("gemini")):
        [provider] = register_providers(plugin, "gemini")
        assert [m.id for m in provider.models()] == list(fake.models)

    fake.enqueue(GeminiFault(status=503))
    config = GeminiConfig(
        base_url=fake.base_url, api_key=Secret(str(fake.api_key)), models=["x"], discover_models=True
    )
    plugin = GeminiProviderPlugin(config)
    async with plugin.sira_lifespan(plugin_context("gemini")):
        [provider] = register_providers(plugin, "gemini")
        assert [m.id for m in provider.models()] == ["x"]


# -- inside a real kernel ---------------------------------------------------------------------------


def gemini_kernel(fake: FakeGeminiUpstream, **section: Any) -> Any:
    plugin_section = {
        "base_url": fake.base_url,
        "api_key": str(fake.api_key),
        "models": ["gemini-2.0-flash"],
        "embedding_models": ["text-embedding-004"],
        "aliases": {"fast": "gemini-2.0-flash"},
        **section,
    }
    # The installed entry point is used: enable its id, hand make_kernel no class for it.
    return make_kernel(config={"plugins": {"provider-gemini": plugin_section}}, enable=["provider-gemini"])


async def test_through_the_kernel_pipeline(fake: FakeGeminiUpstream) -> None:
    async with gemini_kernel(fake) as kernel:
        response = await kernel.pipeline.chat(ask("hello kernel", model="fast"), INFO)
        assert response.choices[0].message.content == "Echo: hello kernel"
        assert fake.requests[-1].path == "/v1beta/models/gemini-2.0-flash:generateContent"

        stream = await kernel.pipeline.stream(
            ask("hello stream", model="gemini-2.0-flash", stream=True), INFO
        )
        try:
            events = [event async for event in stream]
        finally:
            await stream.aclose()
        assert isinstance(events[0], StreamStart)
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Echo: hello stream"
        assert Finish("stop") in events and isinstance(events[-1], Usage)

        embeddings = await kernel.pipeline.embed(
            EmbeddingRequest(model="text-embedding-004", input=["a", "b"]),
            RequestInfo(method="POST", path="/v1/embeddings", headers={}),
        )
        assert [d.index for d in embeddings.data] == [0, 1]

        fake.enqueue(GeminiFault(prompt_block="SAFETY"))
        with pytest.raises(ProviderRejected) as caught:
            await kernel.pipeline.chat(ask("bad", model="fast"), INFO)
        assert (caught.value.status, caught.value.code) == (400, "content_filter")


async def test_a_bad_section_fails_only_this_plugin(fake: FakeGeminiUpstream) -> None:
    async with gemini_kernel(fake, api_version="not a version") as kernel:
        states = {p.id: p for p in (await kernel.health()).plugins}
    assert states["provider-gemini"].state == "failed"
    assert "api_version" in (states["provider-gemini"].reason or "")
