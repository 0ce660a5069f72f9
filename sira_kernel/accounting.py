"""Token counting and pricing: the service interfaces the pipeline asks, and the kernel's fallbacks.

The kernel knows no tokenizer and no price. Plugins register a :class:`TokenCounter` (for example
``sira-tokenizer``: exact counts for OpenAI models) and a :class:`PriceBook` (``sira-pricing``:
USD per million tokens from a data file operators can override). The pipeline uses them when they
are registered:

* every :class:`~sira_kernel.events.UsageRecord` gets ``cost_usd`` from the price book;
* a stream that ends without the provider reporting usage gets its tokens counted (and
  ``usage_estimated`` set), so no request goes unbilled;
* reservations against token limits use the counter's prompt count.

Without a counter the kernel falls back to :func:`estimate_text_tokens`: one token per four
characters, rounded up — the usual rule of thumb for English text with BPE tokenizers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .logs import get_logger
from .types import ChatRequest

if TYPE_CHECKING:
    from .events import UsageRecord

__all__ = [
    "PriceBook",
    "TokenCounter",
    "count_chat_tokens",
    "estimate_chat_tokens",
    "estimate_text_tokens",
    "message_text",
]

_log = get_logger("sira.accounting")

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
"""Tokens a chat format spends per message on roles and separators (OpenAI's documented 3, plus one)."""


@runtime_checkable
class TokenCounter(Protocol):
    """Counts tokens the way a model's tokenizer would. Register it as a service."""

    def count_text(self, model: str, text: str) -> int:
        """Tokens in ``text`` for ``model``."""
        ...

    def count_chat(self, request: ChatRequest) -> int:
        """Prompt tokens of a whole chat request (messages, names, tools)."""
        ...

    def is_exact(self, model: str) -> bool:
        """True when counts for ``model`` come from its real tokenizer rather than an estimate."""
        ...


@runtime_checkable
class PriceBook(Protocol):
    """Prices usage. Register it as a service; the pipeline calls it for every usage record."""

    def cost(self, record: UsageRecord) -> float | None:
        """USD for the tokens in ``record`` (None when the model has no known price)."""
        ...


def estimate_text_tokens(text: str) -> int:
    """The kernel's fallback estimate: ceil(characters / 4)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def message_text(request: ChatRequest) -> list[str]:
    """Every piece of text in a request's messages (content strings, text parts, tool arguments)."""
    pieces: list[str] = []
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            pieces.append(content)
        elif content:
            for part in content:
                text = part.get("text")
                if isinstance(text, str):
                    pieces.append(text)
        if message.tool_calls:
            for call in message.tool_calls:
                pieces.append(call.function.name)
                pieces.append(call.function.arguments)
    return pieces


def count_chat_tokens(counter: TokenCounter | None, request: ChatRequest) -> int:
    """The prompt tokens of ``request``: ``counter``'s count (the ``TokenCounter`` service, when
    one is registered), else :func:`estimate_chat_tokens`. A counter that fails is logged and the
    estimate used: counting never fails a request."""
    if counter is not None:
        try:
            return counter.count_chat(request)
        except Exception:
            _log.exception("accounting.token_count_failed", model=request.model)
    return estimate_chat_tokens(request)


def estimate_chat_tokens(request: ChatRequest) -> int:
    """Fallback prompt estimate: text at four characters a token plus a per-message overhead."""
    chars = sum(len(piece) for piece in message_text(request))
    return -(-chars // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD * len(request.messages)
