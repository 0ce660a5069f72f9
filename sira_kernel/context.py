"""What a plugin's lifespan receives: its id, its config and handles to the kernel's mechanisms."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .logs import get_logger

if TYPE_CHECKING:
    from .bus import MessageBus
    from .config import KernelConfig
    from .kernel import Kernel
    from .scheduler import Scheduler
    from .services import ServiceRegistry

__all__ = ["PluginContext"]

T = TypeVar("T")


class PluginContext:
    """Handed to ``sira_lifespan``. Everything a plugin needs from the kernel while it is active.

    Background work goes through :meth:`start_task`: such tasks belong to the plugin and are
    cancelled when it unloads, before its lifespan exits.
    """

    def __init__(self, kernel: Kernel, plugin_id: str, plugin_config: Any) -> None:
        self.kernel = kernel
        self.plugin_id = plugin_id
        self.plugin_config = plugin_config
        self.log = get_logger(plugin_id)
        self._start_task: Callable[[Callable[..., Awaitable[Any]], tuple[Any, ...], str | None], None] | None = None

    @property
    def config(self) -> KernelConfig:
        """The kernel-wide config (server, limits, logging…)."""
        return self.kernel.config

    @property
    def bus(self) -> MessageBus:
        return self.kernel.bus

    @property
    def services(self) -> ServiceRegistry:
        return self.kernel.services

    @property
    def scheduler(self) -> Scheduler:
        return self.kernel.scheduler

    def start_task(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None) -> None:
        """Run ``fn(*args)`` in the plugin's task group until it returns or the plugin unloads."""
        if self._start_task is None:
            raise RuntimeError("start_task is only available while the plugin is starting or active")
        self._start_task(fn, args, name)
