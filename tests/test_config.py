"""kernel.toml decoding: defaults, ${VAR} interpolation, path-naming errors, secrets, reserved keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from importlib_metadata import entry_points

from sira_kernel import ConfigError, KernelConfig, Secret, load_config, parse_config
from sira_kernel.config import validate_section
from sira_kernel.plugins import ENTRY_POINT_GROUP
from sira_kernel.testing import FakeProviderPlugin, make_kernel

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET_VALUE = "sk-live-do-not-print-7f3a9c"


def config_error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "kernel.toml")
    return caught.value.message


# -- defaults and loading -----------------------------------------------------------------------------


def test_defaults() -> None:
    config = parse_config({})
    assert config == KernelConfig(source="<memory>")
    assert config.kernel.plugins == [] and config.kernel.autoload is False
    assert config.kernel.drain_timeout == 30.0 and config.kernel.stop_timeout == 10.0
    assert config.server.host == "127.0.0.1" and config.server.port == 8080
    assert config.server.master_key is None
    assert config.limits.max_body_bytes == 4 * 1024 * 1024
    assert config.logging.format == "console" and config.logging.level == "info"
    assert config.plugins == {}
    assert load_config(None) == KernelConfig()


def test_load_config_reads_a_file_and_records_its_source(tmp_path: Path) -> None:
    path = tmp_path / "kernel.toml"
    path.write_text('[server]\nport = 9000\n\n[plugins.fake]\nreply = "hi"\n')
    config = load_config(path)
    assert config.server.port == 9000
    assert config.plugins == {"fake": {"reply": "hi"}}
    assert config.source == str(path)


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: invalid TOML"):
        load_config(broken)
    typed = tmp_path / "typed.toml"
    typed.write_text('[server]\nport = "eighty"\n')
    with pytest.raises(ConfigError, match=r"typed\.toml: server\.port: expected `int`, got `str`"):
        load_config(typed)


# -- interpolation ------------------------------------------------------------------------------------


def test_environment_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIRA_TEST_PORT", "9100")
    monkeypatch.setenv("SIRA_TEST_HOST", "0.0.0.0")
    monkeypatch.delenv("SIRA_TEST_UNSET", raising=False)
    config = parse_config({
        "server": {"port": "${SIRA_TEST_PORT}", "host": "${SIRA_TEST_HOST}"},
        "kernel": {"data_dir": "${SIRA_TEST_UNSET:-/var/lib/sira}/data", "plugins": ["${SIRA_TEST_UNSET:-fake}"]},
        "plugins": {"fake": {"url": "http://${SIRA_TEST_HOST}:${SIRA_TEST_PORT}/v1", "empty": "${SIRA_TEST_UNSET:-}"}},
    })
    assert config.server.port == 9100  # a string from the environment still becomes an int
    assert config.server.host == "0.0.0.0"
    assert config.kernel.data_dir == "/var/lib/sira/data"
    assert config.kernel.plugins == ["fake"]
    assert config.plugins["fake"] == {"url": "http://0.0.0.0:9100/v1", "empty": ""}


def test_a_set_variable_wins_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIRA_TEST_PORT", "7000")
    assert parse_config({"server": {"port": "${SIRA_TEST_PORT:-9}"}}).server.port == 7000


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"server": {"host": "${SIRA_TEST_UNSET}"}}, "server.host"),
        ({"plugins": {"fake": {"urls": ["ok", "${SIRA_TEST_UNSET}"]}}}, "plugins.fake.urls[1]"),
    ],
)
def test_a_missing_variable_names_the_key(monkeypatch: pytest.MonkeyPatch, raw: dict[str, Any], path: str) -> None:
    monkeypatch.delenv("SIRA_TEST_UNSET", raising=False)
    message = config_error(raw)
    assert message.startswith(f"{path}: ")
    assert "${SIRA_TEST_UNSET} is not set" in message


# -- errors name the path ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"bogus": 1}, "kernel.toml: bogus: unknown key"),
        ({"server": {"prot": 80}}, "kernel.toml: server.prot: unknown key"),
        ({"scheduler": {"pools": {"db": {"limit": 1, "size": 2}}}}, "scheduler.pools"),
    ],
)
def test_unknown_keys_are_rejected_with_their_path(raw: dict[str, Any], expected: str) -> None:
    message = config_error(raw)
    assert expected in message and "unknown key" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"server": {"port": "eighty"}}, "kernel.toml: server.port: expected `int`, got `str`"),
        ({"kernel": {"plugins": "fake"}}, "kernel.toml: kernel.plugins: expected `array`, got `str`"),
        ({"kernel": {"plugins": ["ok", 3]}}, "kernel.toml: kernel.plugins[1]: expected `str`, got `int`"),
        ({"limits": {"queue_timeout": []}}, "kernel.toml: limits.queue_timeout: expected `float`, got `array`"),
        ({"kernel": "yes"}, "kernel.toml: kernel: expected `object`, got `str`"),
        ({"plugins": {"fake": 5}}, "kernel.toml: plugins.fake: expected a table"),
    ],
)
def test_wrong_types_name_the_path_and_the_expected_type(raw: dict[str, Any], expected: str) -> None:
    assert config_error(raw) == expected


def test_an_invalid_choice_does_not_echo_the_value() -> None:
    message = config_error({"logging": {"level": SECRET_VALUE}})
    assert message.startswith("kernel.toml: logging.level: ")
    assert SECRET_VALUE not in message


class DemoConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    class Retry(msgspec.Struct, forbid_unknown_fields=True):
        attempts: int = 2

    api_key: Secret
    base_url: str = "https://api.example.com"
    retry: Retry = msgspec.field(default_factory=Retry)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"api_key": "k" * 10, "colour": "red"}, "plugins.demo.colour: unknown key"),
        ({"api_key": "k" * 10, "retry": {"attempts": 1, "delay": 2}}, "plugins.demo.retry.delay: unknown key"),
        ({"api_key": "k" * 10, "retry": {"attempts": "x"}}, "plugins.demo.retry.attempts: expected `int`, got `str`"),
        ({"api_key": 12345}, "plugins.demo.api_key: expected `str`"),
        ({}, "plugins.demo: object missing required field `api_key`"),
    ],
)
def test_plugin_sections_are_validated_with_their_path(raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_section(DemoConfig, raw, "plugins.demo")
    assert caught.value.message == expected


# -- secrets -------------------------------------------------------------------------------------------


def test_secrets_never_show_their_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIRA_TEST_KEY", SECRET_VALUE)
    config = parse_config({"server": {"master_key": "${SIRA_TEST_KEY}"}})
    key = config.server.master_key
    assert isinstance(key, Secret) and key.reveal() == SECRET_VALUE
    for text in (repr(key), str(key), f"{key}", repr(config), str(config.server), repr([key])):
        assert SECRET_VALUE not in text
    assert "*" in repr(key)

    section = validate_section(DemoConfig, {"api_key": SECRET_VALUE}, "plugins.demo")
    assert SECRET_VALUE not in repr(section)
    assert section.api_key == Secret(SECRET_VALUE)


@pytest.mark.parametrize(
    "raw",
    [
        {"server": {"master_key": "${SIRA_TEST_KEY}", "port": "${SIRA_TEST_KEY}"}},
        {"server": {"master_key": "${SIRA_TEST_KEY}", "nope": "${SIRA_TEST_KEY}"}},
        {"kernel": {"plugins": [{"id": "${SIRA_TEST_KEY}"}]}},
        {"limits": {"max_n": "${SIRA_TEST_KEY}"}},
    ],
)
def test_secrets_never_appear_in_errors(monkeypatch: pytest.MonkeyPatch, raw: dict[str, Any]) -> None:
    monkeypatch.setenv("SIRA_TEST_KEY", SECRET_VALUE)
    message = config_error(raw)
    assert SECRET_VALUE not in message


def test_secrets_in_plugin_sections_never_appear_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_section(DemoConfig, {"api_key": SECRET_VALUE, "retry": {"attempts": SECRET_VALUE}}, "plugins.demo")
    assert SECRET_VALUE not in str(caught.value)


# -- reserved plugin keys ----------------------------------------------------------------------------


def test_use_and_when_env_are_read_by_the_kernel_not_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIRA_TEST_GATE", raising=False)
    config = parse_config({
        "kernel": {"plugins": ["fake-a", "fake-b", "gated"]},
        "plugins": {
            "fake-a": {"use": "fake", "reply": "a"},
            "fake-b": {"use": "fake", "reply": "b", "when_env": ""},
            "gated": {"use": "fake", "when_env": "SIRA_TEST_GATE"},
        },
    })
    assert config.entry_point_for("fake-a") == "fake" and config.entry_point_for("fake") == "fake"
    assert config.plugin_section("fake-a") == {"reply": "a"}
    assert config.plugin_section("gated") == {}
    assert config.enabled_plugins() == ["fake-a", "fake-b"]
    monkeypatch.setenv("SIRA_TEST_GATE", "")
    assert config.enabled_plugins() == ["fake-a", "fake-b"]
    monkeypatch.setenv("SIRA_TEST_GATE", "1")
    assert config.enabled_plugins() == ["fake-a", "fake-b", "gated"]


@pytest.mark.anyio
async def test_several_instances_of_one_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIRA_TEST_GATE", raising=False)
    config = {
        "kernel": {"plugins": ["fast", "smart", "gated"]},
        "plugins": {
            "fast": {"use": "fake", "models": ["fast-1"], "reply": "fast"},
            "smart": {"use": "fake", "models": ["smart-1"], "reply": "smart"},
            "gated": {"use": "fake", "models": ["gated-1"], "when_env": "SIRA_TEST_GATE"},
        },
    }
    async with make_kernel({"fake": FakeProviderPlugin}, config) as kernel:
        assert sorted(kernel.snapshot.providers) == ["fast", "smart"]
        fast, smart = (kernel.plugins.handles[i] for i in ("fast", "smart"))
        assert fast.entry_point == smart.entry_point == "fake"
        assert fast.config.reply == "fast" and smart.config.models == ["smart-1"]
        states = {i.id: i.state for i in kernel.plugins.infos()}
        assert "gated" not in states or states["gated"] != "failed"
        assert (await kernel.health()).status == "ok"


# -- the repository's own kernel.toml ----------------------------------------------------------------


def test_the_repository_kernel_toml_loads() -> None:
    config = load_config(REPO_ROOT / "kernel.toml")
    assert config.kernel.plugins, "the default config should enable some plugins"
    assert set(config.enabled_plugins()) <= set(config.kernel.plugins)
    installed = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for plugin_id in config.enabled_plugins():
        ep = installed.get(config.entry_point_for(plugin_id))
        schema = getattr(ep.load(), "Config", None) if ep is not None else None
        if schema is not None:  # an installed plugin's section must pass its own Config
            validate_section(schema, config.plugin_section(plugin_id), f"plugins.{plugin_id}")


@pytest.mark.parametrize(
    ("section", "key"),
    [({"scheduler": {"pools": {"p": {"limit": 0}}}}, "limit"), ({"limits": {"max_n": 0}}, "limits.max_n"),
     ({"server": {"port": 70000}}, "server.port"), ({"limits": {"total_timeout": -1}}, "limits.total_timeout")],
)
def test_numeric_bounds_are_config_errors(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_config(section, "kernel.toml")
