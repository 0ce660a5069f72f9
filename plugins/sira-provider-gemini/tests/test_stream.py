"""Streamed chat: typed events in upstream order, as they arrive, over real HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest
from sira_kernel.errors import ProviderRejected, ProviderUnavailable
from sira_kernel.providers import CallContext
from sira_kernel.testing.fake_gemini import THOUGHT_SIGNATURE, FakeGeminiUpstream, Fault, GeminiFault
from sira_kernel.testing.providers import TOOLS, call_context, collect, text_of, tool_calls
from sira_kernel.testing.providers import chat_request as ask
from sira_kernel.types import (
    Finish,
    ReasoningDelta,
    StreamError,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    Usage,
)

from sira_provider_gemini import GeminiProvider

pytestmark = pytest.mark.anyio


def ctx(model: str = "gemini-2.0-flash") -> CallContext:
    return call_context(model)


def sse(*responses: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + msgspec.json.encode(r) + b"\r\n\r\n" for r in responses)


def candidate(text: str | None = None, finish: str | None = None, index: int = 0) -> dict[str, Any]:
    found: dict[str, Any] = {"index": index}
    if text is not None:
        found["content"] = {"role": "model", "parts": [{"text": text}]}
    if finish is not None:
        found["finishReason"] = finish
    return found


async def test_text_stream_in_order(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    events = await collect(provider.stream(ask("hello there"), ctx()))

    start = events[0]
    assert isinstance(start, StreamStart)
    assert (start.id, start.model) == ("fake-gemini-1", "gemini-2.0-flash")
    assert abs(start.created - time.time()) < 60
    assert events[1:] == [
        TextDelta("Echo:"),
        TextDelta(" hello"),
        TextDelta(" there"),
        Finish("stop"),
        Usage(2, 3, 5, {"cached_tokens": 0}, {"reasoning_tokens": 0}),  # from the last usageMetadata
    ]
    sent = fake.requests[-1]
    assert (sent.path, sent.query) == (
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        {"alt": "sse"},
    )
    assert sent.headers["accept"] == "text/event-stream"
    assert fake.completed_streams == 1


async def test_streamed_tool_call(provider: GeminiProvider) -> None:
    events = await collect(provider.stream(ask("weather?", tools=TOOLS[:1]), ctx()))
    # Gemini sends whole argument objects: one delta per call, with id, name and the full JSON.
    assert [e for e in events if isinstance(e, ToolCallDelta)] == [
        ToolCallDelta(0, '{"location":"Paris"}', "call_0", "get_weather")
    ]
    assert events[-2] == Finish("tool_calls")
    assert text_of(events) == ""


async def test_streamed_parallel_tool_calls(provider: GeminiProvider) -> None:
    events = await collect(provider.stream(ask("weather and time?", tools=TOOLS), ctx()))
    calls = tool_calls(events)
    assert [calls[(0, k)]["name"] for k in (0, 1)] == ["get_weather", "get_time"]
    assert [calls[(0, k)]["id"] for k in (0, 1)] == ["call_0", "call_1"]
    assert [json.loads(calls[(0, k)]["arguments"]) for k in (0, 1)] == [
        {"location": "Paris"},
        {"location": "Tokyo"},
    ]
    assert [e for e in events if isinstance(e, Finish)] == [Finish("tool_calls")]


async def test_n_candidates_stream(provider: GeminiProvider) -> None:
    events = await collect(provider.stream(ask("a b", n=2), ctx()))
    assert text_of(events, 0) == text_of(events, 1) == "Echo: a b"
    assert [e for e in events if isinstance(e, Finish)] == [Finish("stop", 0), Finish("stop", 1)]
    assert sum(isinstance(e, StreamStart) for e in events) == 1
    usage = events[-1]
    assert isinstance(usage, Usage) and usage.completion_tokens == 6


async def test_thoughts_and_signatures_stream_as_reasoning(
    open_provider: Any, fake: FakeGeminiUpstream
) -> None:
    async with open_provider(include_thoughts=True) as provider:
        events = await collect(provider.stream(ask("weather?", tools=TOOLS[:1]), ctx("gemini-2.5-flash")))
    assert events[1:4] == [
        ReasoningDelta("Let me think about that."),
        ReasoningDelta("", signature=THOUGHT_SIGNATURE),  # the signature of the call that follows
        ToolCallDelta(0, '{"location":"Paris"}', "call_0", "get_weather"),
    ]
    usage = events[-1]
    assert isinstance(usage, Usage)
    assert usage.completion_tokens_details == {"reasoning_tokens": 5}


async def test_safety_block_mid_stream(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    fake.enqueue(GeminiFault(safety_block="SAFETY"))
    events = await collect(provider.stream(ask("something risky here"), ctx()))
    assert isinstance(events[0], StreamStart)
    assert events[1:3] == [TextDelta("Echo:"), Finish("content_filter")]
    assert isinstance(events[3], Usage) and len(events) == 4


async def test_blocked_prompt_fails_before_the_stream_starts(
    provider: GeminiProvider, fake: FakeGeminiUpstream
) -> None:
    fake.enqueue(GeminiFault(prompt_block="BLOCKLIST"))
    stream = provider.stream(ask("something bad"), ctx())
    with pytest.raises(ProviderRejected) as caught:
        await stream.__anext__()
    assert (caught.value.status, caught.value.code) == (400, "content_filter")
    assert "BLOCKLIST" in caught.value.message


async def test_error_object_mid_stream(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    fake.enqueue(GeminiFault(error_after=2, status=503, message="The model is overloaded."))
    events = await collect(provider.stream(ask("one two three"), ctx()))
    assert events[1:3] == [TextDelta("Echo:"), TextDelta(" one")]
    error = events[-1]
    assert isinstance(error, StreamError)
    assert (error.status, error.code) == (502, "upstream_unavailable")
    assert "503 UNAVAILABLE: The model is overloaded." in error.message

    fake.enqueue(GeminiFault(error_after=1, status=429, retry_delay="3s"))
    events = await collect(provider.stream(ask("one two three"), ctx()))
    assert isinstance(events[-1], StreamError) and events[-1].status == 429


async def test_error_object_as_first_event_is_raised(
    provider: GeminiProvider, fake: FakeGeminiUpstream
) -> None:
    fake.enqueue(GeminiFault(error_after=0, status=500))
    with pytest.raises(ProviderUnavailable) as caught:
        await collect(provider.stream(ask(), ctx()))
    assert caught.value.status == 502 and "500 INTERNAL" in caught.value.message


async def test_stream_cut_before_finishing(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    fake.enqueue(Fault(body=sse({"candidates": [candidate("hi")]})))
    events = await collect(provider.stream(ask(), ctx()))
    assert events[1:2] == [TextDelta("hi")]
    assert isinstance(events[-1], StreamError)
    assert "before it finished" in events[-1].message

    fake.enqueue(Fault(body=b""))
    with pytest.raises(ProviderUnavailable, match="empty stream"):
        await collect(provider.stream(ask(), ctx()))


async def test_every_candidate_must_finish(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    body = sse(
        {"candidates": [candidate("a", index=0), candidate("b", index=1)]},
        {"candidates": [candidate(finish="STOP", index=0)]},
    )
    fake.enqueue(Fault(body=body))
    events = await collect(provider.stream(ask(n=2), ctx()))
    assert Finish("stop", 0) in events
    assert isinstance(events[-1], StreamError)


async def test_invalid_event_before_and_after_the_start(
    provider: GeminiProvider, fake: FakeGeminiUpstream
) -> None:
    fake.enqueue(Fault(body=b"data: {oops\r\n\r\n"))
    with pytest.raises(ProviderUnavailable, match="invalid stream event"):
        await collect(provider.stream(ask(), ctx()))

    fake.enqueue(Fault(body=sse({"candidates": [candidate("hi")]}) + b"data: {oops\r\n\r\n"))
    events = await collect(provider.stream(ask(), ctx()))
    assert events[1:] == [TextDelta("hi"), events[-1]]
    assert isinstance(events[-1], StreamError) and events[-1].status == 502


async def test_finish_reasons(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    reasons = {
        "MAX_TOKENS": "length",
        "RECITATION": "content_filter",
        "PROHIBITED_CONTENT": "content_filter",
        "SPII": "content_filter",
        "BLOCKLIST": "content_filter",
        "MALFORMED_FUNCTION_CALL": "stop",
        "SOMETHING_NEW": "stop",
    }
    for gemini, openai in reasons.items():
        fake.enqueue(Fault(body=sse({"candidates": [candidate("x", finish=gemini)]})))
        events = await collect(provider.stream(ask(), ctx()))
        assert Finish(openai) in events, gemini


async def test_json_answer_to_a_stream_request(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    # Without alt=sse Gemini streams a JSON array; some proxies answer with one whole response.
    array = msgspec.json.encode(
        [
            {"candidates": [candidate("whole")], "responseId": "r1", "modelVersion": "m"},
            {"candidates": [candidate(" answer", "STOP")], "usageMetadata": {"promptTokenCount": 1}},
        ]
    )
    fake.enqueue(Fault(body=array, content_type="application/json"))
    events = await collect(provider.stream(ask(), ctx()))
    assert events[0] == StreamStart("r1", "m", events[0].created)  # type: ignore[union-attr]
    assert events[1:] == [
        TextDelta("whole"),
        TextDelta(" answer"),
        Finish("stop"),
        Usage(1, 0, 1, {"cached_tokens": 0}, {"reasoning_tokens": 0}),
    ]
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}}
    fake.enqueue(Fault(body=msgspec.json.encode(blocked), content_type="application/json"))
    with pytest.raises(ProviderRejected):
        await collect(provider.stream(ask(), ctx()))
