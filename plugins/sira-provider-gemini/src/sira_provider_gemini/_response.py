"""Gemini ``GenerateContentResponse`` objects, decoded and turned into the kernel's events and responses.

A streamed response and a whole one have the same shape, so both go through :class:`Translator`,
which turns each response object into kernel stream events in part order; :func:`assemble` folds
the events of a whole response back into a ``ChatResponse``. One code path means a streamed and a
non-streamed answer can never disagree.

Parts map as: ``text`` → ``TextDelta``; ``text`` with ``thought: true`` → ``ReasoningDelta``;
``functionCall`` → one ``ToolCallDelta`` carrying the id (Gemini's, or ``call_<n>`` numbered per
candidate when it gives none), the name and the whole JSON arguments; a part's ``thoughtSignature`` →
a ``ReasoningDelta`` with that ``signature`` (and empty text, unless the part is a thought) just
before the part's own event. ``finishReason`` → ``Finish`` (:data:`FINISH_REASONS`).
"""

from __future__ import annotations

from typing import Any

import msgspec
from sira_kernel.types import (
    ChatChoice,
    ChatResponse,
    Finish,
    Message,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolFunction,
    Usage,
)

__all__ = [
    "FINISH_REASONS",
    "GenerateContentResponse",
    "Translator",
    "assemble",
    "decode_response",
    "decode_responses",
    "finish_reason",
    "to_usage",
]

#: Gemini's ``finishReason`` → OpenAI's ``finish_reason``. ``STOP`` becomes ``tool_calls`` when the
#: candidate called a function; reasons not listed here become ``stop``.
FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "OTHER": "content_filter",
    "MALFORMED_FUNCTION_CALL": "stop",
    "UNEXPECTED_TOOL_CALL": "stop",
    "TOO_MANY_TOOL_CALLS": "stop",
}


class _FunctionCall(msgspec.Struct):
    name: str = ""
    args: dict[str, Any] | None = None
    id: str | None = None


class _Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool = False
    thought_signature: str | None = None
    function_call: _FunctionCall | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] | None = None
    role: str | None = None


class _Candidate(msgspec.Struct, rename="camel"):
    content: _Content | None = None
    finish_reason: str | None = None
    index: int = 0  # proto3 JSON leaves out a zero index


class _PromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None
    block_reason_message: str | None = None


class _UsageMetadata(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    total_token_count: int = 0
    cached_content_token_count: int = 0
    thoughts_token_count: int = 0
    tool_use_prompt_token_count: int = 0


class GenerateContentResponse(msgspec.Struct, rename="camel"):
    """The parts of a ``GenerateContentResponse`` the adapter reads (msgspec ignores the rest).

    ``error`` is set when the object is an error (Google sends ``{"error": {...}}`` mid-stream).
    """

    candidates: list[_Candidate] | None = None
    prompt_feedback: _PromptFeedback | None = None
    usage_metadata: _UsageMetadata | None = None
    model_version: str | None = None
    response_id: str | None = None
    error: Any = None

    @property
    def block_reason(self) -> str | None:
        """Why the prompt was refused, when it was (then there are no candidates)."""
        feedback = self.prompt_feedback
        return feedback.block_reason if feedback is not None and not self.candidates else None


decode_response = msgspec.json.Decoder(GenerateContentResponse).decode
decode_responses = msgspec.json.Decoder(list[GenerateContentResponse]).decode


def finish_reason(reason: str, called_functions: bool) -> str:
    mapped = FINISH_REASONS.get(reason, "stop")
    return "tool_calls" if mapped == "stop" and reason == "STOP" and called_functions else mapped


def to_usage(metadata: _UsageMetadata) -> Usage:
    """Gemini counts thoughts apart from the answer; OpenAI counts reasoning inside completion tokens."""
    prompt = metadata.prompt_token_count + metadata.tool_use_prompt_token_count
    completion = metadata.candidates_token_count + metadata.thoughts_token_count
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=metadata.total_token_count or prompt + completion,
        prompt_tokens_details={"cached_tokens": metadata.cached_content_token_count},
        completion_tokens_details={"reasoning_tokens": metadata.thoughts_token_count},
    )


class Translator:
    """Turns the response objects of one answer, in order, into kernel stream events.

    Keeps what spans objects: how many function calls each candidate made (their ``call_index`` and
    generated ids), which candidates were seen and which finished, and the latest usage.
    """

    __slots__ = ("_calls", "finished", "seen", "usage")

    def __init__(self) -> None:
        self._calls: dict[int, int] = {}
        self.seen: set[int] = set()
        self.finished: set[int] = set()
        self.usage: Usage | None = None

    @property
    def complete(self) -> bool:
        """Every candidate seen has finished (and there was one)."""
        return bool(self.finished) and self.seen <= self.finished

    def events(self, response: GenerateContentResponse, out: list[StreamEvent]) -> None:
        """Append the events ``response`` carries to ``out``."""
        for candidate in response.candidates or ():
            index = candidate.index
            self.seen.add(index)
            content = candidate.content
            for part in (content.parts or ()) if content is not None else ():
                self._part(part, index, out)
            reason = candidate.finish_reason
            if reason and reason != "FINISH_REASON_UNSPECIFIED" and index not in self.finished:
                self.finished.add(index)
                out.append(Finish(finish_reason(reason, self._calls.get(index, 0) > 0), index))
        if response.usage_metadata is not None:
            self.usage = to_usage(response.usage_metadata)

    def _part(self, part: _Part, index: int, out: list[StreamEvent]) -> None:
        signature = part.thought_signature
        if part.thought:
            if part.text or signature:
                out.append(ReasoningDelta(part.text or "", index, signature))
            return
        if signature:
            out.append(ReasoningDelta("", index, signature))
        call = part.function_call
        if call is not None:
            number = self._calls.get(index, 0)
            self._calls[index] = number + 1
            arguments = msgspec.json.encode(call.args or {}).decode()
            out.append(ToolCallDelta(number, arguments, call.id or f"call_{number}", call.name, index))
        elif part.text:
            out.append(TextDelta(part.text, index))


def assemble(
    response: GenerateContentResponse, *, fallback_id: str, fallback_model: str, created: int
) -> ChatResponse:
    """A whole ``GenerateContentResponse`` as a kernel ``ChatResponse``."""
    translator = Translator()
    events: list[StreamEvent] = []
    translator.events(response, events)
    texts: dict[int, list[str]] = {i: [] for i in sorted(translator.seen)}
    reasoning: dict[int, list[str]] = {i: [] for i in texts}
    signatures: dict[int, str] = {}
    calls: dict[int, list[ToolCall]] = {i: [] for i in texts}
    finishes: dict[int, str] = {}
    for event in events:
        if isinstance(event, TextDelta):
            texts[event.index].append(event.text)
        elif isinstance(event, ReasoningDelta):
            reasoning[event.index].append(event.text)
            if event.signature is not None:
                signatures.setdefault(event.index, event.signature)
        elif isinstance(event, ToolCallDelta):
            call_id, name = event.id or f"call_{event.call_index}", event.name or ""
            calls[event.index].append(ToolCall(id=call_id, function=ToolFunction(name, event.arguments)))
        elif isinstance(event, Finish):
            finishes[event.index] = event.reason
    choices = [
        ChatChoice(
            index=i,
            message=Message(
                role="assistant",
                content="".join(texts[i]) or None,
                tool_calls=calls[i] or None,
                reasoning_content="".join(reasoning[i]) or None,
                reasoning_signature=signatures.get(i),
            ),
            finish_reason=finishes.get(i),
        )
        for i in texts
    ]
    return ChatResponse(
        id=response.response_id or fallback_id,
        model=response.model_version or fallback_model,
        choices=choices,
        created=created,
        usage=translator.usage,
    )
