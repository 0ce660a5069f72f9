"""Kernel stream events → Anthropic SSE events: order, block indexes and shapes."""

from __future__ import annotations

import json
from typing import Any

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

from sira_api_anthropic._stream import EventEncoder


def run(*events: StreamEvent, failure: StreamError | None = None) -> list[tuple[str, dict[str, Any]]]:
    encoder = EventEncoder(StreamStart(id="chatcmpl-9", model="gpt-4o"))
    raw = encoder.start() + b"".join(encoder.encode(e) for e in events)
    raw += encoder.error(failure, "req-1") if failure is not None else encoder.finish()
    parsed = []
    for block in raw.decode().strip().split("\n\n"):
        event_line, data_line = block.split("\n")
        name, data = event_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert name == data["type"]
        parsed.append((name, data))
    return parsed


def shape(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """A compact view: (event, index, what) per event."""
    out: list[tuple[Any, ...]] = []
    for name, data in events:
        if name == "content_block_start":
            out.append((name, data["index"], data["content_block"]["type"]))
        elif name == "content_block_delta":
            delta = data["delta"]
            value = next(v for k, v in delta.items() if k != "type")
            out.append((name, data["index"], delta["type"], value))
        elif name == "content_block_stop":
            out.append((name, data["index"]))
        elif name == "message_delta":
            out.append((name, data["delta"]["stop_reason"]))
        else:
            out.append((name,))
    return out


def test_text_stream() -> None:
    events = run(TextDelta("Hel"), TextDelta(""), TextDelta("lo"), Finish("stop"), Usage(3, 2, 5))
    assert shape(events) == [
        ("message_start",),
        ("content_block_start", 0, "text"),
        ("content_block_delta", 0, "text_delta", "Hel"),
        ("content_block_delta", 0, "text_delta", "lo"),
        ("content_block_stop", 0),
        ("message_delta", "end_turn"),
        ("message_stop",),
    ]
    start = events[0][1]["message"]
    assert start == {"id": "msg_chatcmpl-9", "type": "message", "role": "assistant", "model": "gpt-4o",
                     "content": [], "stop_reason": None, "stop_sequence": None,
                     "usage": {"input_tokens": 0, "output_tokens": 0}}
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert events[-2][1]["usage"] == {"input_tokens": 3, "output_tokens": 2, "cache_creation_input_tokens": 0,
                                      "cache_read_input_tokens": 0}
    assert events[-2][1]["delta"]["stop_sequence"] is None


def test_thinking_then_text_then_parallel_tool_calls() -> None:
    events = run(
        ReasoningDelta("Let me "), ReasoningDelta("think."), ReasoningDelta("", signature="sig-1"),
        TextDelta("Calling."),
        ToolCallDelta(0, "", id="call_a", name="get_weather"), ToolCallDelta(0, '{"city":'), ToolCallDelta(0, '"P"}'),
        ToolCallDelta(1, '{"x"', id="call_b", name="get_time"), ToolCallDelta(1, ": 1}"),
        Finish("tool_calls"), Usage(1, 1, 2),
    )
    assert shape(events) == [
        ("message_start",),
        ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta", "Let me "),
        ("content_block_delta", 0, "thinking_delta", "think."),
        ("content_block_delta", 0, "signature_delta", "sig-1"),
        ("content_block_stop", 0),
        ("content_block_start", 1, "text"),
        ("content_block_delta", 1, "text_delta", "Calling."),
        ("content_block_stop", 1),
        ("content_block_start", 2, "tool_use"),
        ("content_block_delta", 2, "input_json_delta", '{"city":'),
        ("content_block_delta", 2, "input_json_delta", '"P"}'),
        ("content_block_stop", 2),
        ("content_block_start", 3, "tool_use"),
        ("content_block_delta", 3, "input_json_delta", '{"x"'),
        ("content_block_delta", 3, "input_json_delta", ": 1}"),
        ("content_block_stop", 3),
        ("message_delta", "tool_use"),
        ("message_stop",),
    ]
    assert events[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[9][1]["content_block"] == {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}


def test_a_tool_call_without_an_id_gets_one_and_a_late_fragment_finds_its_block() -> None:
    events = run(
        ToolCallDelta(0, '{"a":', name="f"), ToolCallDelta(1, "{", id="call_b", name="g"),
        ToolCallDelta(0, " 1}"), ToolCallDelta(1, "}"), Finish("stop"),
    )
    assert shape(events)[1:-2] == [
        ("content_block_start", 0, "tool_use"),
        ("content_block_delta", 0, "input_json_delta", '{"a":'),
        ("content_block_stop", 0),
        ("content_block_start", 1, "tool_use"),
        ("content_block_delta", 1, "input_json_delta", "{"),
        ("content_block_delta", 0, "input_json_delta", " 1}"),  # the SDK accumulates by index
        ("content_block_delta", 1, "input_json_delta", "}"),
        ("content_block_stop", 1),
    ]
    assert events[1][1]["content_block"]["id"] == "toolu_msg_chatcmpl-9_0"
    assert shape(events)[-2] == ("message_delta", "tool_use")


def test_other_choices_and_unknown_finishes_are_ignored() -> None:
    events = run(TextDelta("a", index=1), TextDelta("b"), Finish("length", index=1), Finish("length"))
    assert shape(events) == [
        ("message_start",), ("content_block_start", 0, "text"), ("content_block_delta", 0, "text_delta", "b"),
        ("content_block_stop", 0), ("message_delta", "max_tokens"), ("message_stop",),
    ]


def test_an_empty_reply_still_ends_properly() -> None:
    events = run(Finish("stop"))
    assert shape(events) == [("message_start",), ("message_delta", "end_turn"), ("message_stop",)]
    assert events[1][1]["usage"]["output_tokens"] == 0


def test_a_failure_ends_the_stream_with_an_error_event() -> None:
    events = run(TextDelta("partial"), failure=StreamError(message="upstream went away", status=502))
    assert shape(events)[-1] == ("error",)
    assert events[-1][1] == {"type": "error", "error": {"type": "api_error", "message": "upstream went away"},
                             "request_id": "req-1"}
    assert "message_stop" not in [name for name, _ in events]
    overloaded = run(failure=StreamError(message="busy", status=503))
    assert overloaded[-1][1]["error"]["type"] == "overloaded_error"


def test_text_is_json_escaped() -> None:
    tricky = 'quote " backslash \\ newline \n unicode é 🎉'
    events = run(TextDelta(tricky), Finish("stop"))
    assert events[2][1]["delta"]["text"] == tricky
