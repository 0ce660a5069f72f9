"""Sira provider for the Google Gemini API (the Generative Language API, ``v1beta``).

Chat and streamed chat through ``generateContent`` / ``streamGenerateContent?alt=sse``, tools,
images, thinking and safety blocks translated to and from the kernel's OpenAI-shaped types, and
embeddings through ``batchEmbedContents``. One plugin activation serves one upstream; see the README
for the config keys.
"""

from __future__ import annotations

from sira_kernel.sse import SSEDecoder

from ._config import GeminiConfig, SafetySetting
from ._plugin import GeminiProviderPlugin
from ._provider import GeminiProvider
from ._schema import to_gemini_schema

__all__ = [
    "GeminiConfig",
    "GeminiProvider",
    "GeminiProviderPlugin",
    "SSEDecoder",
    "SafetySetting",
    "to_gemini_schema",
]
