"""Counting a request's input tokens for ``POST /v1/messages/count_tokens``.

When a plugin registers the kernel's :class:`~sira_kernel.accounting.TokenCounter` service (for
example ``sira-tokenizer``), its ``count_chat`` answers, for the upstream model the request would be
routed to. Otherwise :func:`estimate_input_tokens` gives a documented estimate, the same for every
model: the kernel's fallback (:func:`~sira_kernel.accounting.estimate_chat_tokens`: message text,
tool call names and arguments at four characters a token, plus 4 tokens per message), plus what an
Anthropic prompt often carries besides text::

    + 1,600 per image or file part
    + ceil((reasoning characters + characters of the tools' JSON) / 4)
    + 300 + 10 per tool, when tools are given

1,600 is about the most Anthropic bills for one image once it is resized; 300 approximates the
system prompt a provider adds when tools are present. It is an estimate for budgeting, never exact.
"""

from __future__ import annotations

import msgspec
from sira_kernel import ChatRequest, Deployment, SiraError
from sira_kernel.accounting import CHARS_PER_TOKEN, TokenCounter, estimate_chat_tokens
from sira_kernel.logs import get_logger

__all__ = ["count_input_tokens", "estimate_input_tokens"]

ATTACHMENT_TOKENS = 1600
TOOLS_TOKENS = 300
TOOL_TOKENS = 10
_ATTACHMENTS = frozenset({"image_url", "file", "input_audio"})

_encode = msgspec.json.Encoder().encode
_log = get_logger("api-anthropic")


def estimate_input_tokens(request: ChatRequest) -> int:
    """The estimate described in the module docstring (at least 1)."""
    attachments = 0
    chars = 0
    for message in request.messages:
        content = message.content
        if isinstance(content, list):
            attachments += sum(1 for part in content if part.get("type") in _ATTACHMENTS)
        if message.reasoning_content:
            chars += len(message.reasoning_content)
    tools = request.tools or ()
    for tool in tools:
        chars += len(_encode(tool))
    estimate = estimate_chat_tokens(request) + ATTACHMENT_TOKENS * attachments + -(-chars // CHARS_PER_TOKEN)
    if tools:
        estimate += TOOLS_TOKENS + TOOL_TOKENS * len(tools)
    return max(estimate, 1)


def count_input_tokens(counter: TokenCounter | None, request: ChatRequest, deployment: Deployment) -> int:
    """The registered counter's count for the routed upstream model, or the estimate without one.

    A counter that raises a ``SiraError`` answers the client with it; one that fails otherwise is
    logged and the estimate answers, so a broken tokenizer does not break the endpoint.
    """
    if counter is None:
        return estimate_input_tokens(request)
    try:
        # The upstream name picks the tokenizer ("fast" may be an alias of "gpt-4o-mini").
        return int(counter.count_chat(msgspec.structs.replace(request, model=deployment.model)))
    except SiraError:
        raise
    except Exception:
        _log.exception("count_tokens.counter_failed", model=deployment.model)
        return estimate_input_tokens(request)
