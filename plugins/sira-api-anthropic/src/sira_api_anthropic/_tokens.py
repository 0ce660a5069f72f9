"""Counting a request's input tokens for ``POST /v1/messages/count_tokens``.

When a plugin registers a :class:`TokenCounter` service (interface name ``"TokenCounter"``, service
name ``"default"``), its answer is used. Otherwise :func:`estimate_input_tokens` gives a documented
estimate, the same for every model::

    ceil(characters / 4) + 4 per message + 1,600 per image or file + (300 + 10 per tool, when tools are given)

``characters`` counts every message's text (string content and text parts), reasoning text, tool
call names and JSON arguments, tool results, and the JSON of each tool definition. Four
characters per token is the usual rule of thumb for English with BPE tokenizers; 1,600 is about the
most Anthropic bills for one image once it is resized; 300 approximates the system prompt a
provider adds when tools are present. It is an estimate for budgeting, never exact.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import Protocol

import msgspec
from sira_kernel import ChatRequest, Deployment, SiraError
from sira_kernel.logs import get_logger

__all__ = ["TokenCounter", "count_input_tokens", "estimate_input_tokens"]

CHARS_PER_TOKEN = 4
MESSAGE_TOKENS = 4
ATTACHMENT_TOKENS = 1600
TOOLS_TOKENS = 300
TOOL_TOKENS = 10

_encode = msgspec.json.Encoder().encode
_log = get_logger("api-anthropic")


class TokenCounter(Protocol):
    """A service that counts the prompt tokens of a chat request exactly (a tokenizer plugin).

    ``deployment`` is where the request would go (provider and upstream model), so the counter
    can pick the right tokenizer. It may return the count or an awaitable of it.
    """

    def count_tokens(self, request: ChatRequest, deployment: Deployment) -> int | Awaitable[int]: ...


def estimate_input_tokens(request: ChatRequest) -> int:
    """The estimate described in the module docstring (at least 1)."""
    chars = 0
    attachments = 0
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            chars += len(content)
        elif content:
            for part in content:
                text = part.get("text")
                if isinstance(text, str):
                    chars += len(text)
                elif part.get("type") in ("image_url", "file", "input_audio"):
                    attachments += 1
        if message.reasoning_content:
            chars += len(message.reasoning_content)
        for call in message.tool_calls or ():
            chars += len(call.function.name) + len(call.function.arguments)
    tools = request.tools or ()
    tool_tokens = TOOLS_TOKENS + TOOL_TOKENS * len(tools) if tools else 0
    for tool in tools:
        chars += len(_encode(tool))
    estimate = (
        -(-chars // CHARS_PER_TOKEN)
        + MESSAGE_TOKENS * len(request.messages)
        + ATTACHMENT_TOKENS * attachments
        + tool_tokens
    )
    return max(estimate, 1)


async def count_input_tokens(counter: TokenCounter | None, request: ChatRequest, deployment: Deployment) -> int:
    """The registered counter's answer, or the estimate when there is no counter.

    A counter that raises a ``SiraError`` answers the client with it; one that fails otherwise
    is logged and the estimate is used, so a broken tokenizer does not break the endpoint.
    """
    if counter is None:
        return estimate_input_tokens(request)
    try:
        answer = counter.count_tokens(request, deployment)
        if inspect.isawaitable(answer):
            answer = await answer
        return int(answer)
    except SiraError:
        raise
    except Exception:
        _log.exception("count_tokens.counter_failed", counter=type(counter).__name__)
        return estimate_input_tokens(request)
