"""kernel.toml, decoded with msgspec into typed structs.

``${VAR}`` and ``${VAR:-default}`` in any string are replaced from the environment before
validation; a missing variable without a default is an error naming the key. Unknown keys are
rejected. Errors name the key path and what was expected, never the value (values may be secrets).
Fields typed :class:`Secret` never print their value.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from .errors import ConfigError

__all__ = [
    "BusConfig",
    "KernelConfig",
    "KernelSection",
    "LimitsConfig",
    "LoggingConfig",
    "PoolConfig",
    "SchedulerConfig",
    "Secret",
    "ServerConfig",
    "load_config",
    "parse_config",
    "validate_section",
]

T = TypeVar("T")

#: Keys the kernel reads from a ``[plugins.<id>]`` section itself; the rest go to the plugin.
RESERVED_PLUGIN_KEYS = frozenset({"use", "when_env"})


PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class Secret:
    """A string that never shows itself in repr, str, logs or errors. ``reveal()`` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        from .logs import register_secret

        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class KernelSection(_Section):
    plugins: list[str] = msgspec.field(default_factory=list)
    """Plugin ids to activate, in any order (start order follows service dependencies)."""
    autoload: bool = False
    """Activate every installed plugin, not just the listed ones."""
    drain_timeout: Seconds = 30.0
    start_timeout: Seconds = 30.0
    stop_timeout: Seconds = 10.0
    data_dir: str = ".sira"


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    workers: PositiveInt = 1
    master_key: Secret | None = None
    admin: bool = True
    """Serve the admin listener (admin API: plugins, and what plugins register there)."""
    admin_host: str = "127.0.0.1"
    admin_port: Port = 8081
    access_log: bool = False
    graceful_timeout: Seconds = 30.0
    gc_freeze: bool = True
    """After startup, move every object that exists then out of the cyclic collector's view
    (``gc.freeze()``), so full collections do not walk the kernel and the libraries each time."""


class LimitsConfig(_Section):
    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    body_timeout: Seconds = 60.0
    """How long a client may take to send a whole request body (408 after)."""
    max_header_bytes: PositiveInt = 32 * 1024
    """Largest request target plus headers (431 above it, on both listeners)."""
    max_n: PositiveInt = 8
    max_tokens: PositiveInt = 131_072
    max_messages: PositiveInt = 4096
    connect_timeout: Seconds = 10.0
    first_token_timeout: Seconds = 60.0
    total_timeout: Seconds = 600.0
    max_response_bytes: PositiveInt = 32 * 1024 * 1024
    max_concurrent_requests: PositiveInt = 4096
    queue_timeout: Seconds = 10.0
    auth_timeout: Seconds = 5.0
    """How long one plugin's ``sira_authenticate`` or ``sira_authorize`` answer may take (401 / 403 after)."""


class LoggingConfig(_Section):
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class BusConfig(_Section):
    default_queue_size: PositiveInt = 1024
    request_timeout: Seconds = 5.0


class PoolConfig(_Section):
    limit: PositiveInt
    queue_timeout: Annotated[float, msgspec.Meta(ge=0)] = 10.0


class SchedulerConfig(_Section):
    pools: dict[str, PoolConfig] = msgspec.field(default_factory=dict)


class KernelConfig(_Section):
    kernel: KernelSection = msgspec.field(default_factory=KernelSection)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    bus: BusConfig = msgspec.field(default_factory=BusConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    plugins: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    source: str = "<defaults>"
    """Where this config came from (a path); set by the loader."""

    def plugin_section(self, plugin_id: str) -> dict[str, Any]:
        """The plugin's own keys (reserved kernel keys removed)."""
        raw = self.plugins.get(plugin_id, {})
        return {k: v for k, v in raw.items() if k not in RESERVED_PLUGIN_KEYS}

    def entry_point_for(self, plugin_id: str) -> str:
        """The entry-point name an instance id runs (``use = "provider-openai"``), or the id itself."""
        return str(self.plugins.get(plugin_id, {}).get("use", plugin_id))

    def enabled_plugins(self) -> list[str]:
        """The listed plugin ids whose ``when_env`` variable (if any) is set and non-empty."""
        enabled = []
        for plugin_id in self.kernel.plugins:
            env = self.plugins.get(plugin_id, {}).get("when_env")
            if env and not os.environ.get(str(env)):
                continue
            enabled.append(plugin_id)
        return enabled


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, path: str) -> Any:
    if isinstance(value, str):
        if "${" not in value:
            return value

        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is not None:
                return found
            if default is not None:
                return default
            raise ConfigError(f"{path}: environment variable ${{{name}}} is not set and has no default")

        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Secret:
        if isinstance(obj, str):
            return Secret(obj)
        raise ValueError("Expected `str`")
    raise NotImplementedError


def _explain(err: msgspec.ValidationError, where: str, prefix: str = "") -> ConfigError:
    """``where`` names the file (or section), ``prefix`` the key path the decoded value sits at."""
    text = str(err)
    message, _, at = text.partition(" - at `$")
    path = ".".join(p for p in (prefix, at.rstrip("`").lstrip(".")) if p)
    unknown = re.match(r"Object contains unknown field `([^`]+)`", message)
    if unknown:
        key = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        return ConfigError(f"{where}: {key}: unknown key" if where else f"{key}: unknown key")
    if message.startswith("Invalid enum value"):
        # msgspec quotes the rejected value here, and a value may be a secret.
        message = "not one of the allowed values"
    detail = f"{path or '(top level)'}: {message.rstrip('.').lower()}"
    return ConfigError(f"{where}: {detail}" if where else detail)


def validate_section(struct: type[T], raw: dict[str, Any], where: str) -> T:
    """Decode ``raw`` into ``struct``, rejecting unknown top-level keys, with path-naming errors."""
    fields = {f.encode_name for f in msgspec.structs.fields(struct)}  # type: ignore[arg-type]
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key")
    try:
        return msgspec.convert(raw, struct, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as err:
        raise _explain(err, "", where) from None


def parse_config(raw: dict[str, Any], source: str = "<memory>") -> KernelConfig:
    """Validate an already-parsed TOML document (after ``${VAR}`` interpolation)."""
    data = _interpolate(raw, "")
    for plugin_id, section in data.get("plugins", {}).items():
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: plugins.{plugin_id}: expected a table")
    try:
        config = msgspec.convert(data, KernelConfig, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as err:
        raise _explain(err, source) from None
    config.source = source
    return config


def load_config(path: str | os.PathLike[str] | None) -> KernelConfig:
    """Read and validate a kernel.toml. ``None`` gives the defaults (no plugins)."""
    if path is None:
        return KernelConfig()
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except OSError as err:
        raise ConfigError(f"{file}: cannot read: {err.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{file}: invalid TOML: {err}") from None
    return parse_config(raw, str(file))
