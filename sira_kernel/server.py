"""Serving the kernel with uvicorn: the app factory each worker process calls."""

from __future__ import annotations

import gc
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
    env = os.environ.get
    if env("SIRA_SERVER_HOST"):
        config.server.host = env("SIRA_SERVER_HOST", "")
    if env("SIRA_SERVER_PORT"):
        config.server.port = int(env("SIRA_SERVER_PORT", "0"))
    if env("SIRA_ADMIN_PORT"):
        config.server.admin_port = int(env("SIRA_ADMIN_PORT", "0"))
    if env("SIRA_ADMIN") == "0":
        config.server.admin = False
    configure_logging(config.logging.format, config.logging.level)
    admin_ports = frozenset({config.server.admin_port}) if config.server.admin else frozenset()
    return KernelApp(lambda: kernel_factory(config), admin_ports=admin_ports, after_start=tune_gc)


def tune_gc(kernel: Kernel) -> None:
    """Once a worker's kernel has started: with ``server.gc_freeze``, take what exists then (the
    kernel, the plugins, the libraries) out of the cyclic collector's view (``gc.freeze()``), so a
    full collection walks only what requests left behind instead of pausing the worker for ~13 ms.
    Unloading a plugin gives it back (see ``PluginRegistry.unload``)."""
    if kernel.config.server.gc_freeze:
        gc.collect()
        gc.freeze()
