"""The plugin contract the kernel relies on, and the installed plugin running inside a real kernel."""

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
from sira_kernel.errors import ProviderRejected, ProviderUnavailable
from sira_kernel.providers import CallContext, Provider
from sira_kernel.registrations import ProviderRegistrar, Staged
from sira_kernel.testing import make_kernel
from sira_kernel.testing.fake_gemini import FakeGeminiUpstream, GeminiFault
from sira_kernel.types import ChatRequest, EmbeddingRequest, Finish, Message, StreamStart, TextDelta, Usage

import sira_provider_gemini
from sira_provider_gemini import GeminiConfig, GeminiProvider, GeminiProviderPlugin

pytestmark = pytest.mark.anyio

INFO = RequestInfo(method="POST", path="/v1/chat/completions", headers={})


def context(plugin_id: str, config: KernelConfig | None = None) -> PluginContext:
    kernel: Any = SimpleNamespace(config=config or KernelConfig())
    return PluginContext(kernel, plugin_id, None)


def register(plugin: GeminiProviderPlugin, owner: str) -> list[Provider]:
    staged = Staged(owner=owner)
    plugin.sira_register_providers(ProviderRegistrar(staged))
    return staged.providers


def ask(text: str = "hi", model: str = "m", **fields: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content=text)], **fields)


def test_public_api_is_pinned() -> None:
    assert sira_provider_gemini.__all__ == [
        "GeminiConfig",
        "GeminiProvider",
        "GeminiProviderPlugin",
        "SSEDecoder",
        "SafetySetting",
        "to_gemini_schema",
    ]


def test_entry_point() -> None:
    [entry] = [
        e for e in importlib.metadata.entry_points(group="sira_kernel.plugins") if e.name == "provider-gemini"
    ]
    assert entry.load() is GeminiProviderPlugin


def test_class_contract() -> None:
    assert GeminiProviderPlugin.sira_api == 1
    assert GeminiProviderPlugin.Config is GeminiConfig
    assert GeminiProviderPlugin.requires == () and GeminiProviderPlugin.provides == ()
    assert GeminiProviderPlugin.__doc__
    provider = GeminiProvider("x", GeminiConfig())
    assert isinstance(provider, Provider)
    capabilities = provider.capabilities
    assert (capabilities.vision, capabilities.tools, capabilities.embeddings, capabilities.json_mode) == (
        True,
        True,
        True,
        True,
    )


def test_hooks_match_the_kernel_hookspecs() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    plugin = GeminiProviderPlugin(GeminiConfig())
    manager.register(plugin, name="provider-gemini")
    manager.check_pending()
    hooks = {caller.name for caller in manager.get_hookcallers(plugin) or []}
    assert hooks == {"sira_lifespan", "sira_register_providers"}


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


def test_instances_from_kernel_toml() -> None:
    kernel_config = parse_config(
        {
            "kernel": {"plugins": ["provider-gemini", "gemini-eu"]},
            "plugins": {
                "provider-gemini": {"models": ["gemini-2.5-flash"]},
                "gemini-eu": {
                    "use": "provider-gemini",
                    "base_url": "https://eu-proxy.example",
                    "models": ["x"],
                },
            },
        }
    )
    assert kernel_config.entry_point_for("gemini-eu") == "provider-gemini"
    config = validate_section(GeminiConfig, kernel_config.plugin_section("gemini-eu"), "plugins.gemini-eu")
    assert config.base_url == "https://eu-proxy.example"


async def test_lifespan_then_registration(fake: FakeGeminiUpstream) -> None:
    plugin = GeminiProviderPlugin(
        GeminiConfig(base_url=fake.base_url, api_key=Secret(str(fake.api_key)), models=["gemini-2.0-flash"])
    )
    async with plugin.sira_lifespan(context("gemini-eu")):
        [provider] = register(plugin, "gemini-eu")
        assert provider.name == "gemini-eu"
        response = await provider.chat(ask(), CallContext(upstream_model="gemini-2.0-flash", request_id="r"))
        assert response.choices[0].message.content == "Echo: hi"
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(), CallContext(upstream_model="gemini-2.0-flash", request_id="r"))
    assert caught.value.provider == "gemini-eu"


async def test_two_instances_coexist(fake: FakeGeminiUpstream) -> None:
    key = Secret(str(fake.api_key))
    first = GeminiProviderPlugin(GeminiConfig(base_url=fake.base_url, api_key=key, models=["a"]))
    second = GeminiProviderPlugin(GeminiConfig(base_url=fake.base_url, api_key=key, models=["b"]))
    async with first.sira_lifespan(context("gemini-a")), second.sira_lifespan(context("gemini-b")):
        [provider_a] = register(first, "gemini-a")
        [provider_b] = register(second, "gemini-b")
        assert (provider_a.name, provider_b.name) == ("gemini-a", "gemini-b")
        assert [m.id for m in provider_a.models()] == ["a"]
        await provider_b.chat(ask(), CallContext(upstream_model="b", request_id="r"))
    assert fake.requests[-1].path == "/v1beta/models/b:generateContent"


async def test_lifespan_discovers_models_and_survives_a_failed_discovery(fake: FakeGeminiUpstream) -> None:
    config = GeminiConfig(base_url=fake.base_url, api_key=Secret(str(fake.api_key)), discover_models=True)
    plugin = GeminiProviderPlugin(config)
    async with plugin.sira_lifespan(context("gemini")):
        [provider] = register(plugin, "gemini")
        assert [m.id for m in provider.models()] == list(fake.models)

    fake.enqueue(GeminiFault(status=503))
    config = GeminiConfig(
        base_url=fake.base_url, api_key=Secret(str(fake.api_key)), models=["x"], discover_models=True
    )
    plugin = GeminiProviderPlugin(config)
    async with plugin.sira_lifespan(context("gemini")):
        [provider] = register(plugin, "gemini")
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
