"""The ``[plugins.storage-sqlite]`` section, and where the database file goes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

from sira_kernel.config import KernelConfig

from ._database import MEMORY

__all__ = ["SQLiteConfig", "database_path"]


class SQLiteConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[plugins.storage-sqlite]`` section of kernel.toml. Every key is optional."""

    path: str | None = None
    """The database file. None: ``sira.db`` in ``kernel.data_dir``. A relative path is resolved
    against the config file's directory; ``":memory:"`` keeps everything in memory (tests)."""
    busy_timeout_ms: Annotated[int, msgspec.Meta(ge=0)] = 5000
    """How long a write waits for another process's write lock before failing."""
    session_purge_interval: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    """Seconds between deletions of expired sessions (reads ignore them in between)."""


def _config_dir(config: KernelConfig) -> Path:
    source = config.source
    return Path(source).parent if source and not source.startswith("<") else Path.cwd()


def database_path(plugin: SQLiteConfig, config: KernelConfig) -> str:
    """The database file's absolute path (or ``":memory:"``), resolved like ``sira``'s data dir."""
    if plugin.path == MEMORY:
        return MEMORY
    base = _config_dir(config)
    if plugin.path is None:
        data_dir = Path(config.kernel.data_dir)
        return str((data_dir if data_dir.is_absolute() else base / data_dir) / "sira.db")
    path = Path(plugin.path)
    return str(path if path.is_absolute() else base / path)
