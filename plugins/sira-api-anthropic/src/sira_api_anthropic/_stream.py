"""Kernel stream events → Anthropic's server-sent events, in Anthropic's exact order.

One response is::

    message_start                       the message, empty content, usage zero (known at the end)
    content_block_start  index 0        text {"text": ""} | thinking | tool_use {"input": {}}
    content_block_delta  index 0 ...    text_delta | thinking_delta / signature_delta | input_json_delta
    content_block_stop   index 0
    content_block_start  index 1 ...    a new block whenever the kind changes or a new tool call starts
    message_delta                       stop_reason, stop_sequence and the final usage
    message_stop

A failure after the stream started ends it with ``event: error`` (Anthropic's error object),
which the ``anthropic`` SDK raises. Only choice 0 is relayed (Anthropic has no ``n``).

The per-delta events are built with byte templates around a ``msgspec``-encoded string: this
runs once per token.
"""

from __future__ import annotations

from typing import Any

import msgspec
from sira_kernel import (
    Finish,
    ReasoningDelta,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    Usage,
)

from ._response import error_body, error_status, message_id, stop_reason, usage_of

__all__ = ["EventEncoder"]

_encode = msgspec.json.Encoder().encode

_BLOCK_START = b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,"content_block":%s}\n\n'
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"%s","%s":%s}}\n\n'
)
_TEXT_BLOCK = b'{"type":"text","text":""}'
_THINKING_BLOCK = b'{"type":"thinking","thinking":"","signature":""}'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def sse(event: str, data: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class EventEncoder:
    """Turns the kernel events of one stream into Anthropic SSE bytes.

    Call :meth:`start` once, :meth:`encode` for each event (it returns the bytes to send, or
    ``b""``), then :meth:`finish` when the stream ended normally or :meth:`error` when it failed.
    """

    __slots__ = ("_block", "_call", "_call_blocks", "_finish", "_kind", "_next", "_usage", "id", "model")

    def __init__(self, start: StreamStart) -> None:
        self.id = message_id(start.id)
        self.model = start.model
        self._next = 0  # the index the next block gets
        self._block = -1  # the open block's index, -1 when none is open
        self._kind = ""  # the open block's type
        self._call = -1  # the call_index of the open tool_use block
        self._call_blocks: dict[int, int] = {}  # call_index → block index, for every tool call seen
        self._finish: str | None = None
        self._usage: Usage | None = None

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return sse("message_start", _encode({"type": "message_start", "message": message}))

    def _open(self, kind: str, block: bytes) -> bytes:
        """Close the open block (if any) and start a new one of ``kind``."""
        out = _BLOCK_STOP % self._block if self._block >= 0 else b""
        self._block = index = self._next
        self._next += 1
        self._kind = kind
        return out + _BLOCK_START % (index, block)

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            if event.index or not event.text:
                return b""
            out = b"" if self._kind == "text" else self._open("text", _TEXT_BLOCK)
            return out + _DELTA % (self._block, b"text_delta", b"text", _encode(event.text))
        if isinstance(event, ToolCallDelta):
            return b"" if event.index else self._tool(event)
        if isinstance(event, ReasoningDelta):
            return b"" if event.index else self._reasoning(event)
        if isinstance(event, Finish):
            if not event.index:
                self._finish = event.reason
            return b""
        if isinstance(event, Usage):
            self._usage = event
        return b""  # StreamStart (already sent); StreamError is the caller's (see error())

    def _tool(self, event: ToolCallDelta) -> bytes:
        out = b""
        call = event.call_index
        if self._kind != "tool_use" or call != self._call:
            earlier = self._call_blocks.get(call)
            if earlier is not None and event.id is None:
                # A fragment of a call whose block is closed (an upstream interleaving parallel
                # calls): the SDK accumulates input by block index, so the arguments stay whole.
                if not event.arguments:
                    return b""
                return _DELTA % (earlier, b"input_json_delta", b"partial_json", _encode(event.arguments))
            block = _encode(
                {"type": "tool_use", "id": event.id or f"toolu_{self.id}_{call}", "name": event.name or "", "input": {}}
            )
            out = self._open("tool_use", block)
            self._call = call
            self._call_blocks[call] = self._block
        if event.arguments:
            out += _DELTA % (self._block, b"input_json_delta", b"partial_json", _encode(event.arguments))
        return out

    def _reasoning(self, event: ReasoningDelta) -> bytes:
        out = b""
        if event.text:
            if self._kind != "thinking":
                out = self._open("thinking", _THINKING_BLOCK)
            out += _DELTA % (self._block, b"thinking_delta", b"thinking", _encode(event.text))
        if event.signature:
            if self._kind != "thinking":
                out += self._open("thinking", _THINKING_BLOCK)
            out += _DELTA % (self._block, b"signature_delta", b"signature", _encode(event.signature))
        return out

    def finish(self) -> bytes:
        """Close the open block, then ``message_delta`` (stop reason, final usage) and ``message_stop``."""
        out = _BLOCK_STOP % self._block if self._block >= 0 else b""
        self._block, self._kind = -1, ""
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(self._finish, bool(self._call_blocks)), "stop_sequence": None},
            "usage": usage_of(self._usage),
        }
        return out + sse("message_delta", _encode(delta)) + _MESSAGE_STOP

    @staticmethod
    def error(error: StreamError, request_id: str) -> bytes:
        """The ``event: error`` that ends a failed stream; the SDK raises it as ``APIStatusError``."""
        _, error_type = error_status(error.status)
        return sse("error", error_body(error_type, error.message, request_id))
