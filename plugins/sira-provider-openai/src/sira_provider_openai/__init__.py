"""Sira provider for OpenAI and every OpenAI-compatible server.

vLLM, Ollama, llama.cpp server, Groq, DeepSeek, Together and Azure OpenAI all speak this wire
format. One plugin activation serves one upstream; see the README for the config keys.
"""

from __future__ import annotations

from sira_kernel.sse import SSEDecoder

from ._config import OpenAIConfig
from ._plugin import OpenAIProviderPlugin
from ._provider import OpenAIProvider

__all__ = ["OpenAIConfig", "OpenAIProvider", "OpenAIProviderPlugin", "SSEDecoder"]
