"""The stream parser over the kernel's SSE decoder: any byte split of a stream yields the same events.

The decoder's own rules are checked here too, once for every adapter (it is ``sira_kernel.sse``'s).
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx
import pytest
from hypothesis import given, settings
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream
from sira_kernel.testing.providers import (
    SSE_DECODER_CASES,
    UNICODE_TEXT,
    GeneratedStream,
    StreamSplitSuite,
    decode_sse,
    generated_sse_streams,
)
from sira_kernel.types import StreamEvent, TextDelta, ToolCallDelta

from sira_provider_openai._stream import StreamParser


@pytest.fixture(scope="module")
def recorded() -> list[bytes]:
    """Real upstream SSE bodies from the fake: multibyte text, tool calls, usage; LF and CRLF."""
    tools = [{"type": "function", "function": {"name": n, "parameters": {}}} for n in ("a", "b")]
    bodies = [
        {"messages": [{"role": "user", "content": UNICODE_TEXT}], "n": 2},
        {"messages": [{"role": "user", "content": "weather?"}], "tools": tools},
    ]
    recordings = []
    with FakeOpenAIUpstream(reasoning=True) as fake, httpx.Client(base_url=fake.base_url) as client:
        for body in bodies:
            payload = {"model": "m", "stream": True, "stream_options": {"include_usage": True}, **body}
            response = client.post("/chat/completions", json=payload)
            recordings.append(response.content)
    recordings.append(recordings[0].replace(b"\n", b"\r\n"))
    recordings.append(b": ping\r\n\r\n" + recordings[1].replace(b"\n\n", b"\n: ping\n\n"))
    return recordings


def parse(chunks: Iterable[bytes]) -> list[StreamEvent]:
    parser = StreamParser(provider="p", secrets=(), fallback_id="r", fallback_model="m")
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    assert parser.done
    return events


class TestByteSplits(StreamSplitSuite):
    parse = staticmethod(parse)


def test_recorded_streams_carry_the_reply(recorded: list[bytes]) -> None:
    events = parse([recorded[0]])
    for index in (0, 1):
        text = "".join(e.text for e in events if isinstance(e, TextDelta) and e.index == index)
        assert text == f"Echo: {UNICODE_TEXT}"
    tool_events = parse([recorded[1]])
    arguments = "".join(
        e.arguments for e in tool_events if isinstance(e, ToolCallDelta) and e.call_index == 1
    )
    assert arguments == '{"location": "Tokyo"}'


@settings(max_examples=300, deadline=None)
@given(generated_sse_streams())
def test_generated_streams_round_trip(stream: GeneratedStream) -> None:
    assert decode_sse(stream.chunks) == stream.events


@pytest.mark.parametrize(("stream", "expected"), SSE_DECODER_CASES)
def test_decoder_rules(stream: bytes, expected: list[tuple[str, bytes]]) -> None:
    assert decode_sse([stream]) == expected
    assert decode_sse([stream[i : i + 1] for i in range(len(stream))]) == expected
