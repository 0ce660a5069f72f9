from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import msgspec
import pluggy
import pytest
from sira_kernel import hookspecs
from sira_kernel.config import parse_config, validate_section
from sira_kernel.errors import ConfigError
from sira_kernel.providers import Provider
from sira_kernel.registrations import ProviderRegistrar, Staged

import sira_provider_mock
from sira_provider_mock import MockConfig, MockProvider, MockProviderPlugin
from sira_provider_mock._directives import _PARSERS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_public_api_is_pinned() -> None:
    assert sira_provider_mock.__all__ == ["MockConfig", "MockProvider", "MockProviderPlugin"]


def test_plugin_class_contract() -> None:
    assert MockProviderPlugin.sira_api == 1
    assert MockProviderPlugin.Config is MockConfig
    assert MockProviderPlugin.requires == ()
    assert MockProviderPlugin.provides == ()


def test_entry_point_is_declared() -> None:
    (found,) = [ep for ep in entry_points(group="sira_kernel.plugins") if ep.name == "provider-mock"]
    assert found.load() is MockProviderPlugin


def test_registers_one_provider_named_after_the_instance_through_pluggy() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    plugin = MockProviderPlugin(MockConfig(models=["demo"]))
    manager.register(plugin, name="mock-eu")
    staged = Staged(owner="mock-eu")
    manager.hook.sira_register_providers(register=ProviderRegistrar(staged))
    (provider,) = staged.providers
    assert isinstance(provider, MockProvider)
    assert isinstance(provider, Provider)
    assert provider.name == "mock-eu"
    assert [m.id for m in provider.models()] == ["demo", "mock-embed"]


def test_default_models_and_capabilities(provider: MockProvider) -> None:
    assert [(m.id, m.kind) for m in provider.models()] == [
        ("mock-1", "chat"),
        ("mock-large", "chat"),
        ("mock-embed", "embedding"),
    ]
    caps = provider.capabilities
    assert caps.chat and caps.stream and caps.tools and caps.vision and caps.embeddings and caps.json_mode


def test_config_section_validates_through_the_kernel() -> None:
    config = parse_config({"plugins": {"provider-mock": {"pace_ms": "5", "reply": "hi"}}})
    section = validate_section(MockConfig, config.plugin_section("provider-mock"), "plugins.provider-mock")
    assert section.pace_ms == 5.0
    assert section.reply == "hi"
    assert section.fail_status == 503
    assert section.embedding_dimensions == 8


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"pace": 1}, "pace"),
        ({"fail_rate": 1.5}, "fail_rate"),
        ({"fail_rate": -0.1}, "fail_rate"),
        ({"fail_status": 200}, "fail_status"),
        ({"pace_ms": -1}, "pace_ms"),
        ({"embedding_dimensions": 0}, "embedding_dimensions"),
        ({"models": "mock-1"}, "models"),
    ],
)
def test_invalid_config_names_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate_section(MockConfig, raw, "plugins.provider-mock")


def test_readme_documents_every_config_key_and_directive() -> None:
    readme = README.read_text(encoding="utf-8")
    for field in msgspec.structs.fields(MockConfig):
        assert f"`{field.name}`" in readme, field.name
    for directive in [*_PARSERS, "hang"]:
        assert f"[mock:{directive}" in readme, directive
