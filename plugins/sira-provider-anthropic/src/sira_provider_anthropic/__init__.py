"""Sira provider for Anthropic's Messages API (Claude).

Translates the kernel's OpenAI-shaped requests, responses and stream events to and from
``POST /v1/messages``: system prompts, multi-turn, images, tools, extended thinking, prompt-cache
usage, streaming. One plugin activation serves one upstream account; see the README for the
config keys.
"""

from __future__ import annotations

from sira_kernel.sse import SSEDecoder

from ._config import AnthropicConfig
from ._plugin import AnthropicProviderPlugin
from ._provider import AnthropicProvider
from ._stream import StreamParser
from ._translate import UnsupportedRequest, to_anthropic

__all__ = [
    "AnthropicConfig",
    "AnthropicProvider",
    "AnthropicProviderPlugin",
    "SSEDecoder",
    "StreamParser",
    "UnsupportedRequest",
    "to_anthropic",
]
