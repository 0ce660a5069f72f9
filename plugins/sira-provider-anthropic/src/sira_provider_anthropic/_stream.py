"""Turning an Anthropic SSE byte stream into the kernel's typed stream events.

=====================================================  =============================================
Anthropic event                                        kernel events
=====================================================  =============================================
``message_start``                                      ``StreamStart(id, model)``; prompt usage kept
``content_block_start`` text / thinking                ``TextDelta`` / ``ReasoningDelta`` if it has text
``content_block_start`` tool_use                       ``ToolCallDelta(call_index, "", id, name)``;
                                                       tool blocks are numbered 0, 1, 2… in order
``content_block_delta`` text_delta                     ``TextDelta``
``content_block_delta`` input_json_delta               ``ToolCallDelta(call_index, partial_json)``
``content_block_delta`` thinking_delta                 ``ReasoningDelta``
``content_block_delta`` signature_delta                ``ReasoningDelta("", signature=...)``
``content_block_stop`` of a tool_use without input     ``ToolCallDelta(call_index, "{}")``
``message_delta``                                      ``Finish(reason)``; output usage kept
``message_stop``                                       ``Usage`` (when the stream reported any)
``error``                                              a failure (see ``_errors``)
``ping``, unknown events, other block types            nothing
=====================================================  =============================================

Usage: ``message_delta``'s counts are cumulative and win over ``message_start``'s where both
have one (newer API versions repeat the input counts there).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from sira_kernel.errors import ProviderError, ProviderUnavailable
from sira_kernel.sse import SSEDecoder
from sira_kernel.types import (
    Finish,
    ReasoningDelta,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
)
from sira_kernel.upstream import sanitize

from ._errors import ERROR_STATUS, error_for, upstream_error
from ._wire import AnthropicMessage, AnthropicUsage, Block, finish_reason, to_usage

__all__ = ["StreamParser"]

_encode = msgspec.json.Encoder().encode


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None
    stop_reason: str | None = None


class _Event(msgspec.Struct):
    """Any Anthropic stream event; which fields are set depends on ``type``."""

    type: str = ""
    message: AnthropicMessage | None = None
    index: int = 0
    content_block: Block | None = None
    delta: _Delta | None = None
    usage: AnthropicUsage | None = None
    error: Any = None


_decode_event = msgspec.json.Decoder(_Event).decode


class StreamParser:
    """Feed raw bytes; get kernel events. ``StreamStart`` comes before everything else.

    After :meth:`feed`: ``started`` says ``StreamStart`` was emitted, ``finished`` that
    ``message_delta`` gave a stop reason, ``done`` that ``message_stop`` arrived, and ``failure``
    holds the error when the upstream sent ``event: error`` or an event that is not valid JSON.
    Nothing after ``done`` or a failure is parsed. :meth:`end` gives what a stream cut after its
    ``message_delta`` still owes (the ``Usage``), and fails one cut before it.
    """

    __slots__ = (
        "_cache_read",
        "_cache_write",
        "_calls",
        "_calls_with_arguments",
        "_created",
        "_decoder",
        "_fallback_id",
        "_fallback_model",
        "_input",
        "_output",
        "_provider",
        "_secrets",
        "_usage_seen",
        "done",
        "failure",
        "finished",
        "started",
    )

    def __init__(
        self, *, provider: str, secrets: Iterable[str], fallback_id: str, fallback_model: str, created: int
    ) -> None:
        self._decoder = SSEDecoder()
        self._provider = provider
        self._secrets = tuple(secrets)
        self._fallback_id = fallback_id
        self._fallback_model = fallback_model
        self._created = created  # Anthropic has no timestamp: the caller's clock at the request
        self._calls: dict[int, int] = {}  # content block index -> call_index of its tool_use
        self._calls_with_arguments: set[int] = set()  # block indexes that sent arguments
        self._input = self._output = self._cache_read = self._cache_write = 0
        self._usage_seen = False
        self.started = False
        self.finished = False
        self.done = False
        self.failure: ProviderError | None = None

    def feed(self, raw: bytes) -> list[StreamEvent]:
        """The events completed by ``raw``."""
        events: list[StreamEvent] = []
        if self.done or self.failure is not None:
            return events
        for name, data in self._decoder.feed(raw):
            try:
                event = _decode_event(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.failure = ProviderUnavailable(
                    f"Anthropic sent an invalid stream event: {exc}", provider=self._provider
                )
                break
            kind = event.type or name
            if kind == "error" or name == "error":
                self.failure = self._error(data)
                break
            if kind == "ping":
                continue
            if not self.started:
                self._start(event.message if kind == "message_start" else None, events)
            if kind == "content_block_start":
                self._block_start(event.index, event.content_block, events)
            elif kind == "content_block_delta":
                self._block_delta(event.index, event.delta, events)
            elif kind == "content_block_stop":
                call_index = self._calls.get(event.index)
                if call_index is not None and event.index not in self._calls_with_arguments:
                    events.append(ToolCallDelta(call_index, "{}"))  # a tool called without arguments
            elif kind == "message_delta":
                if event.delta is not None and event.delta.stop_reason:
                    events.append(Finish(finish_reason(event.delta.stop_reason)))
                    self.finished = True
                self._count(event.usage, cumulative=True)
            elif kind == "message_stop":
                self.done = True
                events.extend(self._final_usage())
                break
        return events

    def end(self) -> list[StreamEvent]:
        """The body ended without ``message_stop``: the ``Usage`` still owed when the stream was cut
        after its ``message_delta`` (complete enough), else ``failure`` is set."""
        if self.failure is not None:
            return []
        if not self.finished:
            self.failure = ProviderUnavailable(
                "Anthropic closed the stream before it finished", provider=self._provider
            )
            return []
        return self._final_usage()

    def _final_usage(self) -> list[StreamEvent]:
        """The ``Usage`` event, once, if the stream reported usage."""
        if not self._usage_seen:
            return []
        self._usage_seen = False
        return [to_usage(self._input, self._output, self._cache_read, self._cache_write)]

    # -- events -------------------------------------------------------------------------------------

    def _start(self, message: AnthropicMessage | None, events: list[StreamEvent]) -> None:
        self.started = True
        events.append(
            StreamStart(
                id=(message.id if message else "") or self._fallback_id,
                model=(message.model if message else "") or self._fallback_model,
                created=self._created,
            )
        )
        if message is not None:
            self._count(message.usage, cumulative=False)

    def _block_start(self, index: int, block: Block | None, events: list[StreamEvent]) -> None:
        if block is None:
            return
        if block.type == "text" and block.text:
            events.append(TextDelta(block.text))
        elif block.type == "thinking" and block.thinking:
            events.append(ReasoningDelta(block.thinking))
        elif block.type == "tool_use":
            call_index = len(self._calls)
            events.append(ToolCallDelta(call_index, "", block.id or "", block.name or ""))
            self._calls[index] = call_index
            if isinstance(block.input, dict) and block.input:  # some proxies send the whole input here
                events.append(ToolCallDelta(call_index, _encode(block.input).decode()))
                self._calls_with_arguments.add(index)

    def _block_delta(self, index: int, delta: _Delta | None, events: list[StreamEvent]) -> None:
        if delta is None:
            return
        kind = delta.type
        if kind == "text_delta":
            if delta.text:
                events.append(TextDelta(delta.text))
        elif kind == "input_json_delta":
            call_index = self._calls.get(index)
            if call_index is not None and delta.partial_json:
                self._calls_with_arguments.add(index)
                events.append(ToolCallDelta(call_index, delta.partial_json))
        elif kind == "thinking_delta":
            if delta.thinking:
                events.append(ReasoningDelta(delta.thinking))
        elif kind == "signature_delta":
            if delta.signature:
                events.append(ReasoningDelta("", signature=delta.signature))
        # citations_delta and future delta types carry nothing the kernel models.

    def _count(self, usage: AnthropicUsage | None, *, cumulative: bool) -> None:
        if usage is None:
            return
        self._usage_seen = True
        if usage.input_tokens is not None:
            self._input = usage.input_tokens
        if usage.cache_read_input_tokens is not None:
            self._cache_read = usage.cache_read_input_tokens
        if usage.cache_creation_input_tokens is not None:
            self._cache_write = usage.cache_creation_input_tokens
        if usage.output_tokens is not None and (cumulative or not self._output):
            self._output = usage.output_tokens

    def _error(self, data: bytes) -> ProviderError:
        error_type, text = upstream_error(data)
        status = ERROR_STATUS.get(error_type or "", 500)
        return error_for(error_type, status, sanitize(text, self._secrets), provider=self._provider)
