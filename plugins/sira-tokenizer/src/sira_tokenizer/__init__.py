"""Token counting for Sira (plugin id ``tokenizer``): a ``TokenCounter`` service.

OpenAI models are counted exactly with their tiktoken encoding (``o200k_base`` for GPT-4o, 4.1, o-series;
``cl100k_base`` for GPT-4, 3.5 and the v3 embeddings), through ``bpe-openai``, which produces the same
token ids as tiktoken and ships the vocabularies (tiktoken downloads them at first use). Other models
(Claude, Gemini, Llama…) have tokenizers that are not public or not bundled: they are counted with
``default_encoding`` as an estimate, and ``is_exact()`` says so.

Chat prompts are counted as OpenAI documents it: 3 tokens per message, plus the tokens of its role,
content and name (1 more when a name is given), plus 3 tokens priming the reply; tool definitions
add the tokens of their JSON.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import bpe_openai
import msgspec

from sira_kernel import ChatRequest, hookimpl
from sira_kernel.accounting import TokenCounter
from sira_kernel.registrations import ServiceRegistrar

__all__ = ["BPETokenCounter", "TokenizerConfig", "TokenizerPlugin"]

# tiktoken's model-prefix → encoding table (model.py), for the families bpe-openai does not map itself.
MODEL_PREFIX_ENCODINGS: tuple[tuple[str, str], ...] = (
    ("gpt-5", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-oss", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
)

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3


class TokenizerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    default_encoding: str = "o200k_base"
    """Encoding used (as an estimate) for models without a known tiktoken encoding."""
    model_encodings: dict[str, str] = msgspec.field(default_factory=dict)
    """Model id → encoding name, for models the library does not know (e.g. fine-tunes, aliases)."""


class BPETokenCounter:
    """A :class:`~sira_kernel.accounting.TokenCounter` over tiktoken-compatible encodings."""

    def __init__(self, config: TokenizerConfig) -> None:
        self._config = config
        self._default = bpe_openai.get_encoding(config.default_encoding)
        self._lookup = lru_cache(maxsize=1024)(self._resolve)

    def _resolve(self, model: str) -> tuple[Any, bool]:
        name = self._config.model_encodings.get(model)
        if name is not None:
            return bpe_openai.get_encoding(name), True
        bare = model.rpartition("/")[2]  # "provider/model" addressing
        for prefix, encoding in MODEL_PREFIX_ENCODINGS:
            if bare.startswith(prefix):
                return bpe_openai.get_encoding(encoding), True
        try:
            return bpe_openai.encoding_for_model(bare), True
        except Exception:  # UnsupportedModelError and friends: not an OpenAI model
            return self._default, False

    def is_exact(self, model: str) -> bool:
        return bool(self._lookup(model)[1])

    def count_text(self, model: str, text: str) -> int:
        if not text:
            return 0
        return len(self._lookup(model)[0].encode(text))

    def count_chat(self, request: ChatRequest) -> int:
        encoding = self._lookup(request.model)[0]
        total = REPLY_PRIMING
        for message in request.messages:
            total += TOKENS_PER_MESSAGE + len(encoding.encode(message.role))
            content = message.content
            if isinstance(content, str):
                total += len(encoding.encode(content))
            elif content:
                for part in content:
                    text = part.get("text")
                    if isinstance(text, str):
                        total += len(encoding.encode(text))
                    elif part.get("type") == "image_url":
                        total += 85  # OpenAI's base cost of a low-detail image tile
            if message.name:
                total += TOKENS_PER_NAME + len(encoding.encode(message.name))
            for call in message.tool_calls or ():
                total += len(encoding.encode(call.function.name)) + len(encoding.encode(call.function.arguments))
        if request.tools:
            total += len(encoding.encode(msgspec.json.encode(request.tools).decode()))
        return total


class TokenizerPlugin:
    """Registers a TokenCounter service (exact for OpenAI models, estimated for the rest)."""

    sira_api = 1
    Config = TokenizerConfig
    provides = ("TokenCounter",)

    def __init__(self, config: TokenizerConfig) -> None:
        self.counter = BPETokenCounter(config)

    @hookimpl
    def sira_register_services(self, register: ServiceRegistrar) -> None:
        register(TokenCounter, self.counter)
