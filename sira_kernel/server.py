"""Serving the kernel with uvicorn: the app factory each worker process calls."""

from __future__ import annotations

import os

from .asgi import KernelApp
from .config import KernelConfig, load_config
from .kernel import Kernel
from .logs import configure_logging

__all__ = ["CONFIG_ENV", "create_app", "kernel_factory"]

CONFIG_ENV = "SIRA_CONFIG"
"""Environment variable naming the kernel.toml a worker loads (set by ``sira serve``)."""


def kernel_factory(config: KernelConfig) -> Kernel:
    return Kernel(config)


def create_app() -> KernelApp:
    """The ASGI app for one worker: loads the config named by ``$SIRA_CONFIG`` (or ./kernel.toml)."""
    path = os.environ.get(CONFIG_ENV) or "kernel.toml"
    config = load_config(path)
    overrides = {k: os.environ.get(f"SIRA_SERVER_{k.upper()}") for k in ("host", "port")}
    if overrides["host"]:
        config.server.host = overrides["host"]
    if overrides["port"]:
        config.server.port = int(overrides["port"])
    configure_logging(config.logging.format, config.logging.level)
    return KernelApp(lambda: kernel_factory(config))
