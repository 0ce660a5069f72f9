"""Streamed chat: typed events in upstream order, as they arrive, over real HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sira_kernel.providers import CallContext
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream, Fault
from sira_kernel.testing.providers import TOOLS, call_context, collect, text_of, tool_calls
from sira_kernel.testing.providers import chat_request as ask
from sira_kernel.types import (
    ChatRequest,
    Finish,
    Message,
    ReasoningDelta,
    StreamError,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    Usage,
)

from sira_provider_anthropic import AnthropicProvider

pytestmark = pytest.mark.anyio


def ctx(model: str = "claude-sonnet-4-5") -> CallContext:
    return call_context(model)


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def start(message_id: str = "msg_s", **usage: int) -> tuple[str, dict[str, Any]]:
    message = {"id": message_id, "type": "message", "role": "assistant", "model": "claude-x", "content": []}
    if usage:
        message["usage"] = usage
    return ("message_start", {"type": "message_start", "message": message})


def finish(stop_reason: str = "end_turn", **usage: int) -> tuple[str, dict[str, Any]]:
    data: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
    }
    if usage:
        data["usage"] = usage
    return ("message_delta", data)


STOP = ("message_stop", {"type": "message_stop"})


async def test_text_stream_in_order(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    events = await collect(provider.stream(ask("hello there"), ctx()))

    assert isinstance(events[0], StreamStart)
    assert (events[0].id, events[0].model) == ("msg_fake_1", "claude-sonnet-4-5")
    assert events[1:] == [
        TextDelta("Echo:"),
        TextDelta(" hello"),
        TextDelta(" there"),
        Finish("stop"),
        Usage(
            prompt_tokens=2,
            completion_tokens=3,
            total_tokens=5,
            prompt_tokens_details={"cached_tokens": 0, "cache_creation_tokens": 0},
        ),
    ]
    sent = fake.requests[-1]
    assert sent.json["stream"] is True
    assert sent.headers["accept"] == "text/event-stream"
    assert await fake.wait_until_async(lambda: fake.completed_streams == 1)


async def test_streamed_tool_call_arguments_reassemble_exactly(provider: AnthropicProvider) -> None:
    events = await collect(provider.stream(ask("weather?", tools=TOOLS[:1], tool_choice="required"), ctx()))
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0] == ToolCallDelta(0, "", "toolu_fake_0", "get_weather")
    assert len(deltas) > 3  # the arguments really arrived in fragments, in order
    assert tool_calls(events) == {
        (0, 0): {"id": "toolu_fake_0", "name": "get_weather", "arguments": '{"location": "Paris"}'}
    }
    assert events[-2:-1] == [Finish("tool_calls")]
    assert text_of(events) == ""


async def test_streamed_parallel_tool_calls_count_tool_blocks_only(provider: AnthropicProvider) -> None:
    # tool_choice auto: a text block comes first (content index 0), so the calls are blocks 1 and 2
    # but call_index 0 and 1.
    events = await collect(provider.stream(ask("weather and time?", tools=TOOLS), ctx()))
    assert text_of(events) == "Let me check."
    calls = tool_calls(events)
    assert [calls[(0, k)]["name"] for k in (0, 1)] == ["get_weather", "get_time"]
    assert [json.loads(calls[(0, k)]["arguments"]) for k in (0, 1)] == [
        {"location": "Paris"},
        {"location": "Tokyo"},
    ]
    indexes = [e.call_index for e in events if isinstance(e, ToolCallDelta)]
    assert indexes == sorted(indexes)  # every fragment of call 0 before call 1's


async def test_thinking_stream_with_signature(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    request = ask("why?", extra={"thinking": {"type": "enabled", "budget_tokens": 1024}})
    events = await collect(provider.stream(request, ctx()))
    reasoning = [e for e in events if isinstance(e, ReasoningDelta)]
    assert "".join(e.text for e in reasoning) == "Let me think about that."
    signed = [e for e in reasoning if e.signature]
    assert len(signed) == 1 and signed[0] is reasoning[-1] and signed[0].text == ""
    assert events.index(reasoning[-1]) < events.index(next(e for e in events if isinstance(e, TextDelta)))

    # The streamed reasoning and signature, sent back, pass the fake's signature check.
    message = Message(
        role="assistant",
        content=text_of(events),
        reasoning_content="".join(e.text for e in reasoning),
        reasoning_signature=signed[0].signature,
    )
    history = [Message(role="user", content="why?"), message, Message(role="user", content="ok")]
    reply = await collect(
        provider.stream(ChatRequest(model="m", messages=history, extra=request.extra), ctx())
    )
    assert text_of(reply) == "Echo: ok"


async def test_stop_sequence_and_length_in_streams(provider: AnthropicProvider) -> None:
    events = await collect(provider.stream(ask("a b STOP c", stop="STOP"), ctx()))
    assert text_of(events) == "Echo: a b " and Finish("stop") in events
    events = await collect(provider.stream(ask("a b c d", max_completion_tokens=3), ctx()))
    assert text_of(events) == "Echo: a b" and Finish("length") in events


async def test_usage_with_cache_tokens(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.enqueue(
        Fault(
            body=sse(
                start(
                    input_tokens=21,
                    cache_creation_input_tokens=188086,
                    cache_read_input_tokens=7,
                    output_tokens=1,
                ),
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": "Hi"},
                    },
                ),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                finish(output_tokens=393),
                STOP,
            )
        )
    )
    events = await collect(provider.stream(ask(), ctx()))
    assert events[1:] == [
        TextDelta("Hi"),  # text already in content_block_start is not lost
        Finish("stop"),
        Usage(
            prompt_tokens=21 + 188086 + 7,
            completion_tokens=393,
            total_tokens=21 + 188086 + 7 + 393,
            prompt_tokens_details={"cached_tokens": 7, "cache_creation_tokens": 188086},
        ),
    ]


async def test_cumulative_usage_in_message_delta_wins(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(
        Fault(body=sse(start(input_tokens=5, output_tokens=1), finish(input_tokens=9, output_tokens=4), STOP))
    )
    events = await collect(provider.stream(ask(), ctx()))
    assert events[-1] == Usage(
        prompt_tokens=9,
        completion_tokens=4,
        total_tokens=13,
        prompt_tokens_details={"cached_tokens": 0, "cache_creation_tokens": 0},
    )


async def test_tool_without_arguments_gets_an_empty_object(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    block = {"type": "tool_use", "id": "toolu_n", "name": "now", "input": {}}
    fake.enqueue(
        Fault(
            body=sse(
                start(),
                ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": ""},
                    },
                ),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                finish("tool_use"),
                STOP,
            )
        )
    )
    events = await collect(provider.stream(ask(), ctx()))
    assert tool_calls(events) == {(0, 0): {"id": "toolu_n", "name": "now", "arguments": "{}"}}
    assert not any(isinstance(e, Usage) for e in events)  # this stream reported no usage at all


async def test_unknown_events_and_blocks_are_ignored(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(
        Fault(
            body=b": keep-alive comment\r\n\r\n"
            + sse(
                start(),
                ("future_event", {"type": "future_event", "whatever": [1, 2]}),
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "redacted_thinking", "data": "x"},
                    },
                ),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 1,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 1,
                        "delta": {"type": "citations_delta", "citation": {}},
                    },
                ),
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 1,
                        "delta": {"type": "text_delta", "text": "ok"},
                    },
                ),
                finish(),
                STOP,
            ).replace(b"\n", b"\r\n")
        )
    )
    events = await collect(provider.stream(ask(), ctx()))
    assert events[1:] == [TextDelta("ok"), Finish("stop")]


async def test_stream_cut_after_message_delta_is_complete(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(body=sse(start(input_tokens=3), finish(output_tokens=2))))  # no message_stop
    events = await collect(provider.stream(ask(), ctx()))
    assert isinstance(events[-1], Usage) and events[-1].total_tokens == 5
    assert Finish("stop") in events
    assert not any(isinstance(e, StreamError) for e in events)


async def test_json_answer_to_a_stream_request(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    message = {
        "id": "msg_j",
        "model": "claude-x",
        "stop_reason": "tool_use",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "whole"},
            {"type": "tool_use", "id": "toolu_j", "name": "f", "input": {"a": 1}},
        ],
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    fake.enqueue(Fault(body=json.dumps(message).encode(), content_type="application/json"))
    events = await collect(provider.stream(ask(), ctx()))
    assert isinstance(events[0], StreamStart) and events[0].id == "msg_j"
    assert events[1:] == [
        ReasoningDelta("hmm", signature="sig"),
        TextDelta("whole"),
        ToolCallDelta(0, '{"a":1}', "toolu_j", "f"),
        Finish("tool_calls"),
        Usage(
            prompt_tokens=1,
            completion_tokens=2,
            total_tokens=3,
            prompt_tokens_details={"cached_tokens": 0, "cache_creation_tokens": 0},
        ),
    ]
