"""Sira's offline provider: deterministic replies, paced streams, tool calls, embeddings and failures.

The default kernel.toml runs it, so a gateway works with no network and no keys. Tests and demos
steer it with ``[mock:...]`` directives in the last user message (see the README).
"""

from __future__ import annotations

from ._config import MockConfig
from ._plugin import MockProviderPlugin
from ._provider import MockProvider

__all__ = ["MockConfig", "MockProvider", "MockProviderPlugin"]
