"""What the mock answers: one :class:`Answer` per request, shared by ``chat()`` and ``stream()``.

Building the answer once and rendering it twice keeps the streamed and non-streamed replies
identical by construction: the concatenated deltas of a stream are the content of a chat reply.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sira_kernel.types import ChatRequest, Message

from ._directives import Directives
from ._schema import example_from_schema

__all__ = ["Answer", "ToolSelectionError", "build_answer", "count_words", "message_text", "split_tokens"]

#: How much of the user's message the default reply echoes.
ECHO_CHARS = 60


class ToolSelectionError(ValueError):
    """``tool_choice`` names a function that is not among the request's tools."""


class Answer:
    """One choice's reply: text tokens or tool calls, its finish reason and its token count.

    Every choice of an ``n > 1`` request gets the same answer.
    """

    __slots__ = ("completion_tokens", "finish_reason", "tokens", "tool_calls")

    def __init__(
        self,
        *,
        tokens: list[str] | None = None,
        tool_calls: list[tuple[str, str]] | None = None,
        finish_reason: str = "stop",
    ) -> None:
        self.tokens = tokens or []
        self.tool_calls = tool_calls or []
        """``(name, arguments JSON)`` per call."""
        self.finish_reason = finish_reason
        self.completion_tokens = len(self.tokens) + sum(
            1 + len(split_tokens(arguments)) for _, arguments in self.tool_calls
        )

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def split_tokens(text: str) -> list[str]:
    """Split ``text`` into mock tokens: each word with the space after it. ``"".join`` restores it."""
    if not text:
        return []
    words = text.split(" ")
    tokens = [word + " " for word in words[:-1]]
    if words[-1]:
        tokens.append(words[-1])
    return tokens


def message_text(message: Message) -> str:
    """The text of a message: its content string, or its text parts joined by spaces."""
    content = message.content
    if isinstance(content, str):
        return content
    if not content:
        return ""
    texts = [part["text"] for part in content if isinstance(part.get("text"), str)]
    return " ".join(texts)


def count_words(messages: Sequence[Message]) -> int:
    """The mock's prompt token count: whitespace-separated words in every message's text."""
    total = 0
    for message in messages:
        content = message.content
        if isinstance(content, str):
            total += len(content.split())
        elif content:
            for part in content:
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text.split())
    return total


def build_answer(
    request: ChatRequest, user_text: str, directives: Directives, fixed_reply: str | None
) -> Answer:
    """Decide the reply to ``request``. ``user_text`` is the last user message, directives removed."""
    messages = request.messages
    last = messages[-1] if messages else None
    if request.tools and request.tool_choice != "none" and last is not None and last.role == "user":
        calls = _tool_calls(request)
        if calls:
            return Answer(tool_calls=calls, finish_reason="tool_calls")

    if fixed_reply is not None:
        text = fixed_reply
    elif last is not None and last.role == "tool":
        text = _summarize_tool_results(messages)
    else:
        text = _echo(user_text)
    if directives.tokens is not None:
        text = _exactly(text, directives.tokens)

    response_format = request.response_format
    if response_format:
        kind = response_format.get("type")
        if kind == "json_object":
            text = json.dumps({"reply": text})
        elif kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {"type": "object"}
            text = json.dumps(example_from_schema(schema))

    finish_reason = "stop"
    if request.stop:
        text = _cut_at_stop(text, request.stop)
    tokens = split_tokens(text)
    limit = request.token_limit
    if limit is not None and len(tokens) > limit:
        tokens = tokens[: max(limit, 0)]
        finish_reason = "length"
    return Answer(tokens=tokens, finish_reason=finish_reason)


def _echo(user_text: str) -> str:
    snippet = " ".join(user_text[: ECHO_CHARS * 4].split())[:ECHO_CHARS]
    return f"This is a mock reply to: {snippet}" if snippet else "This is a mock reply."


def _summarize_tool_results(messages: Sequence[Message]) -> str:
    results: list[str] = []
    for message in reversed(messages):
        if message.role != "tool":
            break
        results.append(" ".join(message_text(message)[: ECHO_CHARS * 4].split())[:ECHO_CHARS])
    results.reverse()
    if len(results) == 1:
        return f"The tool returned: {results[0]}"
    return f"The {len(results)} tools returned: " + "; ".join(results)


def _exactly(text: str, count: int) -> str:
    """``count`` tokens, cycling through the words of ``text``."""
    words = text.split() or ["mock"]
    return " ".join(words[i % len(words)] for i in range(count))


def _cut_at_stop(text: str, stop: str | list[str]) -> str:
    cut = len(text)
    for sequence in [stop] if isinstance(stop, str) else stop:
        if sequence:
            found = text.find(sequence)
            if found != -1 and found < cut:
                cut = found
    return text[:cut]


def _function_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools' function definitions (OpenAI's ``{"type": "function", "function": {...}}``)."""
    functions = []
    for tool in tools:
        function = tool.get("function", tool)
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            functions.append(function)
    return functions


def _tool_calls(request: ChatRequest) -> list[tuple[str, str]]:
    functions = _function_tools(request.tools or [])
    if not functions:
        return []
    choice = request.tool_choice
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name") or choice.get("name")
        named = [f for f in functions if f["name"] == wanted]
        if not named:
            raise ToolSelectionError(f"tool_choice names {wanted!r}, which is not among the tools")
        chosen = named
    elif request.parallel_tool_calls is not False and len(functions) >= 2:
        chosen = functions[:2]
    else:
        chosen = functions[:1]
    return [(f["name"], json.dumps(_arguments(f))) for f in chosen]


def _arguments(function: dict[str, Any]) -> dict[str, Any]:
    """Arguments for one call, built from its ``parameters`` schema; always a JSON object."""
    parameters = function.get("parameters", function.get("input_schema"))
    if parameters is None:
        return {}
    value = example_from_schema(parameters)
    return value if isinstance(value, dict) else {}
