"""The stream parser over the kernel's SSE decoder: any byte split of a Gemini stream parses alike."""

from __future__ import annotations

from collections.abc import Iterable

import httpx
import pytest
from sira_kernel.testing.fake_gemini import FIXTURES, FakeGeminiUpstream, GeminiFault, load_fixture
from sira_kernel.testing.providers import UNICODE_TEXT, StreamSplitSuite
from sira_kernel.types import Finish, StreamEvent, TextDelta, ToolCallDelta, Usage

from sira_provider_gemini._stream import StreamParser

STREAM_FIXTURES = [name for name in FIXTURES if load_fixture(name).stream is not None]


@pytest.fixture(scope="module")
def recorded() -> list[bytes]:
    """Real upstream SSE bodies: the fake's (multibyte text, two candidates, parallel calls, thoughts,
    a safety block) and the checked-in fixtures'; with CRLF (Google's), LF and comment lines."""
    tools = [{"functionDeclarations": [{"name": n} for n in ("a", "b")]}]
    thinking = {"thinkingConfig": {"includeThoughts": True}}
    bodies = [
        ({"generationConfig": {"candidateCount": 2}}, None),
        ({"tools": tools, "generationConfig": thinking}, None),
        ({}, GeminiFault(safety_block="SAFETY")),
    ]
    recordings = []
    with FakeGeminiUpstream() as fake, httpx.Client(base_url=fake.base_url) as client:
        for extra, fault in bodies:
            if fault is not None:
                fake.enqueue(fault)
            payload = {"contents": [{"role": "user", "parts": [{"text": UNICODE_TEXT}]}], **extra}
            response = client.post(
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", json=payload
            )
            recordings.append(response.content)
    recordings += [load_fixture(name).stream or b"" for name in STREAM_FIXTURES if name != "prompt_blocked"]
    recordings.append(recordings[0].replace(b"\r\n", b"\n"))
    recordings.append(b": ping\r\n\r\n" + recordings[1].replace(b"\r\n\r\n", b"\r\n: keep-alive\r\n\r\n"))
    return recordings


def parse(chunks: Iterable[bytes]) -> list[StreamEvent]:
    parser = StreamParser(provider="p", secrets=(), fallback_id="r", fallback_model="m", created=7)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    events += parser.end()
    assert parser.failure is None and isinstance(events[-1], Usage)
    return events


class TestByteSplits(StreamSplitSuite):
    parse = staticmethod(parse)


def test_recorded_streams_carry_the_reply(recorded: list[bytes]) -> None:
    two = parse([recorded[0]])
    for index in (0, 1):
        text = "".join(e.text for e in two if isinstance(e, TextDelta) and e.index == index)
        assert text == f"Echo: {UNICODE_TEXT}"
    assert [e for e in two if isinstance(e, Finish)] == [Finish("stop", 0), Finish("stop", 1)]
    calls = [e for e in parse([recorded[1]]) if isinstance(e, ToolCallDelta)]
    assert [(c.call_index, c.name, c.arguments) for c in calls] == [
        (0, "a", '{"location":"Paris"}'),
        (1, "b", '{"location":"Tokyo"}'),
    ]
    assert Finish("content_filter") in parse([recorded[2]])


def test_a_cut_stream_fails_however_it_is_split(recorded: list[bytes]) -> None:
    stream = recorded[0]
    cut = stream[: stream.rindex(b"data:")]  # the last event (with the finish) never arrives
    for size in (1, 7, len(cut)):
        parser = StreamParser(provider="p", secrets=(), fallback_id="r", fallback_model="m", created=7)
        for start in range(0, len(cut), size):
            parser.feed(cut[start : start + size])
        assert parser.end() == []
        assert parser.failure is not None and "before it finished" in parser.failure.message


def test_an_error_event_is_a_redacted_failure() -> None:
    parser = StreamParser(
        provider="p", secrets=("sekrit-key",), fallback_id="r", fallback_model="m", created=7
    )
    events = parser.feed(b'data: {"error": {"code": 429, "message": "slow down sekrit-key"}}\r\n\r\n')
    assert events == [] and parser.failure is not None
    assert parser.failure.status == 429 and "sekrit-key" not in parser.failure.message
