"""The SSE decoder and stream parser: any byte split of a stream yields the same events."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream, fixture_names, load_fixture
from sira_kernel.types import StreamEvent, TextDelta, ToolCallDelta

from sira_provider_anthropic import SSEDecoder, StreamParser

UNICODE_TEXT = "héllo wörld 日本語 🎉 naïve"
TOOLS = [{"name": name, "input_schema": {"type": "object"}} for name in ("a", "b")]


@pytest.fixture(scope="module")
def recorded() -> list[bytes]:
    """SSE bodies: every documented stream, and the fake's (multibyte text, tools, thinking); LF and CRLF."""
    documented = [load_fixture(name).stream for name in fixture_names()]
    recordings = [stream for stream in documented if stream is not None and b"message_stop" in stream]
    bodies = [
        {"messages": [{"role": "user", "content": UNICODE_TEXT}]},
        {"messages": [{"role": "user", "content": "weather?"}], "tools": TOOLS},
        {
            "messages": [{"role": "user", "content": "why?"}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
    ]
    headers = {"anthropic-version": "2023-06-01"}
    generated = []
    with FakeAnthropicUpstream() as fake, httpx.Client(base_url=fake.base_url, headers=headers) as client:
        for body in bodies:
            response = client.post(
                "/v1/messages", json={"model": "m", "max_tokens": 2000, "stream": True, **body}
            )
            assert response.status_code == 200, response.text
            generated.append(response.content)
    text, tools, _ = generated
    crlf = text.replace(b"\n", b"\r\n")
    commented = b": hello\r\n\r\n" + tools.replace(b"\n\n", b"\n: ping\n\n")
    return [*recordings, *generated, crlf, commented]


def split(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    start = 0
    for cut in sorted(set(cuts)):
        yield data[start:cut]
        start = cut
    yield data[start:]


def decode(chunks: Iterator[bytes] | list[bytes]) -> list[tuple[str, bytes]]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def parse(chunks: Iterator[bytes] | list[bytes]) -> tuple[list[StreamEvent], bool]:
    parser = StreamParser(provider="p", secrets=(), fallback_id="r", fallback_model="m", created=1)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events, parser.done


@settings(max_examples=150, deadline=None)
@given(which=st.integers(0, 100), cuts=st.lists(st.integers(0, 20_000), max_size=40), data=st.data())
def test_any_split_of_a_recorded_stream_yields_the_same_events(
    recorded: list[bytes], which: int, cuts: list[int], data: st.DataObject
) -> None:
    stream = recorded[which % len(recorded)]
    cuts = [c % (len(stream) + 1) for c in cuts]
    # Also cut around every byte of one randomly chosen place (CRLF pairs, multibyte characters).
    around = data.draw(st.integers(0, len(stream)))
    cuts += [around, around + 1, around + 2]
    whole_events, whole_done = parse([stream])
    split_events, split_done = parse(split(stream, cuts))
    assert split_events == whole_events
    assert split_done and whole_done
    assert decode(split(stream, cuts)) == decode([stream])


def test_byte_by_byte(recorded: list[bytes]) -> None:
    for stream in recorded:
        assert parse([stream[i : i + 1] for i in range(len(stream))]) == parse([stream])


def test_recorded_streams_carry_the_reply(recorded: list[bytes]) -> None:
    unicode_stream = next(r for r in recorded if "héllo".encode() in r)
    events, done = parse([unicode_stream])
    assert done
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == f"Echo: {UNICODE_TEXT}"
    tool_stream = next(r for r in recorded if b'"name":"b"' in r)
    events, _ = parse([tool_stream])
    arguments = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta) and e.call_index == 1)
    assert arguments == '{"location": "Tokyo"}'


def test_nothing_is_parsed_after_message_stop_or_an_error() -> None:
    parser = StreamParser(provider="p", secrets=(), fallback_id="r", fallback_model="m", created=1)
    parser.feed(b'event: message_start\ndata: {"type":"message_start","message":{"id":"x"}}\n\n')
    parser.feed(b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"boom"}}\n\n')
    assert parser.failure is not None and "boom" in parser.failure.message
    late = (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":"late"}}\n\n'
    )
    assert parser.feed(late) == []


# Generated streams: arbitrary events in arbitrary line endings survive arbitrary splits.

_line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=30)
_event = st.tuples(
    st.sampled_from(["", "message_start", "content_block_delta", "error"]),
    st.lists(_line_text, min_size=1, max_size=3),
    st.booleans(),  # a comment line before the event
)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(_event, max_size=8),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(0, 2_000), max_size=30),
)
def test_generated_streams_round_trip(
    events: list[tuple[str, list[str], bool]], newline: str, cuts: list[int]
) -> None:
    text = ""
    expected = []
    for name, lines, comment in events:
        if comment:
            text += f": comment{newline}"
        if name:
            text += f"event: {name}{newline}"
        text += "".join(f"data: {line}{newline}" for line in lines) + newline
        expected.append((name, "\n".join(lines).encode()))
    stream = text.encode()
    cuts = [c % (len(stream) + 1) for c in cuts]
    assert decode(split(stream, cuts)) == expected


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: x\n\n", [("", b"x")]),
        (b"data:x\n\n", [("", b"x")]),  # the space after the colon is optional
        (b"data:  x\n\n", [("", b" x")]),  # only one space is stripped
        (b"data: a\ndata: b\n\n", [("", b"a\nb")]),
        (b"data\n\n", [("", b"")]),  # a field with no colon has an empty value
        (b": comment\n\n", []),  # no data, no event
        (b"event: ping\n\n", []),  # an event name without data is not dispatched
        (b"event: error\ndata: {}\n\n", [("error", b"{}")]),
        (b"event: a\ndata: 1\n\ndata: 2\n\n", [("a", b"1"), ("", b"2")]),  # the name resets
        (b"id: 1\nretry: 5\ndata: x\n\n", [("", b"x")]),
        (b"\xef\xbb\xbfevent: e\ndata: x\n\n", [("e", b"x")]),  # a leading BOM is ignored
        (b"data: x\r\rdata: y\r\n\r\n", [("", b"x"), ("", b"y")]),
        (b"data: x\n", []),  # unterminated at the end: discarded
    ],
)
def test_decoder_rules(stream: bytes, expected: list[tuple[str, bytes]]) -> None:
    assert decode([stream]) == expected
    assert decode([stream[i : i + 1] for i in range(len(stream))]) == expected
