"""Streamed chat: typed events in upstream order, as they arrive, over real HTTP."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from sira_kernel.providers import CallContext
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream, Fault
from sira_kernel.testing.providers import TOOLS, call_context, collect, text_of, tool_calls
from sira_kernel.testing.providers import chat_request as ask
from sira_kernel.types import Finish, ReasoningDelta, StreamStart, TextDelta, ToolCallDelta, Usage

from sira_provider_openai import OpenAIProvider

pytestmark = pytest.mark.anyio


def ctx(model: str = "gpt-4o-mini") -> CallContext:
    return call_context(model)


async def test_text_stream_in_order(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    events = await collect(provider.stream(ask("hello there"), ctx()))

    assert events[0] == StreamStart(id="chatcmpl-fake-1", model="gpt-4o-mini", created=1_700_000_000)
    assert [e for e in events if isinstance(e, TextDelta)] == [
        TextDelta("Echo:"),
        TextDelta(" hello"),
        TextDelta(" there"),
    ]
    assert events[-2:] == [
        Finish("stop"),
        Usage(
            prompt_tokens=2,
            completion_tokens=3,
            total_tokens=5,
            prompt_tokens_details={"cached_tokens": 0, "audio_tokens": 0},
            completion_tokens_details={"reasoning_tokens": 0},
        ),
    ]
    sent = fake.requests[-1].json
    assert sent["stream"] is True
    assert sent["model"] == "gpt-4o-mini"
    assert sent["stream_options"] == {"include_usage": True}  # metering asks even if the client did not
    assert fake.requests[-1].headers["accept"] == "text/event-stream"
    assert fake.completed_streams == 1


async def test_client_stream_options_are_kept(open_provider: Any, fake: FakeOpenAIUpstream) -> None:
    async with open_provider(stream_usage=False) as provider:
        events = await collect(provider.stream(ask(), ctx()))
        assert not any(isinstance(e, Usage) for e in events)
        assert "stream_options" not in fake.requests[-1].json

        request = ask(stream_options={"include_usage": True, "continuous_usage_stats": False})
        events = await collect(provider.stream(request, ctx()))
        assert isinstance(events[-1], Usage)
        assert fake.requests[-1].json["stream_options"] == {
            "include_usage": True,
            "continuous_usage_stats": False,
        }


async def test_streamed_tool_call_arguments_reassemble_exactly(provider: OpenAIProvider) -> None:
    events = await collect(provider.stream(ask("weather?", tools=TOOLS[:1]), ctx()))
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len(deltas) > 2  # the arguments really arrived in fragments
    assert deltas[0].id == "call_fake_0" and deltas[0].name == "get_weather" and deltas[0].arguments == ""
    assert tool_calls(events) == {
        (0, 0): {"id": "call_fake_0", "name": "get_weather", "arguments": '{"location": "Paris"}'}
    }
    assert Finish("tool_calls") in events
    assert text_of(events) == ""


async def test_streamed_parallel_tool_calls(provider: OpenAIProvider) -> None:
    events = await collect(provider.stream(ask("weather and time?", tools=TOOLS), ctx()))
    calls = tool_calls(events)
    assert [calls[(0, k)]["name"] for k in (0, 1)] == ["get_weather", "get_time"]
    assert [json.loads(calls[(0, k)]["arguments"]) for k in (0, 1)] == [
        {"location": "Paris"},
        {"location": "Tokyo"},
    ]


async def test_n_choices_stream(provider: OpenAIProvider) -> None:
    events = await collect(provider.stream(ask("a b", n=2), ctx()))
    assert text_of(events, 0) == text_of(events, 1) == "Echo: a b"
    assert [e for e in events if isinstance(e, Finish)] == [Finish("stop", 0), Finish("stop", 1)]
    assert sum(isinstance(e, StreamStart) for e in events) == 1


async def test_reasoning_deltas(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.reasoning = True
    events = await collect(provider.stream(ask("why"), ctx()))
    reasoning = [e for e in events if isinstance(e, ReasoningDelta)]
    assert "".join(e.text for e in reasoning) == "Let me think about that."
    assert events.index(reasoning[-1]) < events.index(next(e for e in events if isinstance(e, TextDelta)))

    response = await provider.chat(ask("why", stream=False), ctx())
    assert response.choices[0].message.reasoning_content == "Let me think about that."


async def test_sse_line_endings_comments_and_multiline_data(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    first_half = b'{"id":"c1","model":"m",'
    second_half = '"choices":[{"index":0,"delta":{"content":"héllo 🎉"}}]}'.encode()
    body = (
        b": keep-alive\r\n\r\n"
        + b"event: message\r\ndata: "
        + first_half
        + b"\r\ndata:"
        + second_half
        + b"\r\n\r\n"
        + b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\r\r'
        + b"data: [DONE]\n\n"
    )
    fake.enqueue(Fault(body=body))
    events = await collect(provider.stream(ask(), ctx()))
    # The two data lines of one event are joined with "\n", which JSON reads as whitespace.
    assert events == [StreamStart("c1", "m"), TextDelta("héllo 🎉"), Finish("stop")]


async def test_stream_without_done_after_finish_is_complete(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    fake.enqueue(
        Fault(
            body=b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"x"},'
            b'"finish_reason":"stop"}]}\n\n'
        )
    )
    events = await collect(provider.stream(ask(), ctx()))
    assert events == [StreamStart("c", "m"), TextDelta("x"), Finish("stop")]


async def test_json_answer_to_a_stream_request(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    completion = {
        "id": "cmpl-1",
        "model": "m",
        "created": 5,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    fake.enqueue(Fault(body=msgspec.json.encode(completion), content_type="application/json"))
    events = await collect(provider.stream(ask(), ctx()))
    assert events == [
        StreamStart("cmpl-1", "m", 5),
        TextDelta("whole"),
        Finish("stop"),
        Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
    ]
