"""Token counting for Sira (plugin id ``tokenizer``): a ``TokenCounter`` service.

OpenAI models are counted exactly with tiktoken and their encoding (``o200k_base`` for GPT-4o, 4.1,
5 and the o-series; ``cl100k_base`` for GPT-4, 3.5 and the v3 embeddings), using tiktoken's own
model table. tiktoken downloads its vocabulary files at first use, which fails on a machine without
internet access; the ``bpe-openai`` distribution ships the same files, so this plugin seeds
tiktoken's cache from them (in ``<data dir>/tiktoken`` unless ``TIKTOKEN_CACHE_DIR`` is set) and
tiktoken checks their SHA-256 as usual. Encodings load on first use: an idle gateway does not pay
their memory (about 80 MB each).

Other models (Claude, Gemini, Llama…) have tokenizers that are not public or not bundled: they are
counted with ``default_encoding`` as an estimate, and ``is_exact()`` says so.

Chat prompts are counted as OpenAI documents it: 3 tokens per message, plus the tokens of its role,
content and name (1 more when a name is given), plus 3 tokens priming the reply; tool definitions
add the tokens of their JSON, an image part 85 tokens.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import anyio.to_thread
import msgspec
import tiktoken

from sira_kernel import ChatRequest, hookimpl
from sira_kernel.accounting import TokenCounter
from sira_kernel.registrations import ServiceRegistrar

__all__ = ["TiktokenCounter", "TokenizerConfig", "TokenizerPlugin", "seed_tiktoken_cache"]

def data_dir(config: Any) -> Path:
    """The kernel's data dir, relative to the config file's folder (as the CLI resolves it)."""
    path = Path(config.kernel.data_dir)
    if path.is_absolute():
        return path
    source = config.source
    base = Path(source).parent if source and not source.startswith("<") else Path.cwd()
    return base / path


_BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


def seed_tiktoken_cache(cache_dir: Path) -> None:
    """Put the vocabulary files ``bpe-openai`` ships where tiktoken looks for its downloads."""
    spec = importlib.util.find_spec("bpe_openai")  # locates the package without importing it
    if spec is None or spec.origin is None:
        return
    shipped = Path(spec.origin).parent / "data"
    cache_dir.mkdir(parents=True, exist_ok=True)
    for archive in shipped.glob("*.tiktoken.gz"):
        name = archive.name.removesuffix(".tiktoken.gz")
        target = cache_dir / hashlib.sha1(_BLOB.format(name).encode()).hexdigest()
        if not target.exists():
            partial = target.with_suffix(".partial")
            with gzip.open(archive, "rb") as source:
                partial.write_bytes(source.read())
            os.replace(partial, target)  # atomic: several workers may seed at once


TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3


class TokenizerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[plugins.tokenizer]``."""

    default_encoding: str = "o200k_base"
    """Encoding used (as an estimate) for models without a known tiktoken encoding."""
    model_encodings: dict[str, str] = msgspec.field(default_factory=dict)
    """Model id → encoding name, for models the library does not know (e.g. fine-tunes, aliases)."""


class TiktokenCounter:
    """A :class:`~sira_kernel.accounting.TokenCounter` over tiktoken encodings (loaded on first use)."""

    def __init__(self, config: TokenizerConfig) -> None:
        self._config = config
        self._lookup = lru_cache(maxsize=1024)(self._resolve)

    def _resolve(self, model: str) -> tuple[Any, bool]:
        name = self._config.model_encodings.get(model)
        if name is not None:
            return tiktoken.get_encoding(name), True
        bare = model.rpartition("/")[2]  # "provider/model" addressing
        try:
            return tiktoken.encoding_for_model(bare), True
        except KeyError:  # not an OpenAI model: estimate with the default encoding
            return tiktoken.get_encoding(self._config.default_encoding), False

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
        self.counter = TiktokenCounter(config)

    @hookimpl
    def sira_lifespan(self, context: Any) -> Any:
        return self._seeded(context)

    @asynccontextmanager
    async def _seeded(self, context: Any) -> AsyncIterator[None]:
        if not os.environ.get("TIKTOKEN_CACHE_DIR"):
            os.environ["TIKTOKEN_CACHE_DIR"] = str(data_dir(context.config) / "tiktoken")
        await anyio.to_thread.run_sync(seed_tiktoken_cache, Path(os.environ["TIKTOKEN_CACHE_DIR"]))
        yield

    @hookimpl
    def sira_register_services(self, register: ServiceRegistrar) -> None:
        register(TokenCounter, self.counter)
