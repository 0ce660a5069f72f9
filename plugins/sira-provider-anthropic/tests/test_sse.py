"""The stream parser over the kernel's SSE decoder: any byte split of a stream yields the same events."""

from __future__ import annotations

from collections.abc import Iterable

import httpx
import pytest
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream, fixture_names, load_fixture
from sira_kernel.testing.providers import UNICODE_TEXT, StreamSplitSuite
from sira_kernel.types import StreamEvent, TextDelta, ToolCallDelta

from sira_provider_anthropic import StreamParser

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


def parse(chunks: Iterable[bytes]) -> list[StreamEvent]:
    parser = StreamParser(provider="p", secrets=(), fallback_id="r", fallback_model="m", created=1)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    assert parser.done
    return events


class TestByteSplits(StreamSplitSuite):
    parse = staticmethod(parse)


def test_recorded_streams_carry_the_reply(recorded: list[bytes]) -> None:
    unicode_stream = next(r for r in recorded if "héllo".encode() in r)
    events = parse([unicode_stream])
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == f"Echo: {UNICODE_TEXT}"
    tool_stream = next(r for r in recorded if b'"name":"b"' in r)
    events = parse([tool_stream])
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
