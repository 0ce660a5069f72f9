"""The Anthropic surface in front of every bundled adapter: the official ``anthropic`` SDK talks to a
real gateway (``api-anthropic`` + the adapter, in a :class:`ServerThread`) whose adapter talks to its
fake upstream. Each test is one cell of the ``anthropic-surface`` conformance matrix."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import pytest
from sira_api_anthropic import AnthropicSurfacePlugin

from sira_kernel.testing import ServerThread, make_kernel
from sira_kernel.testing.conformance import AdapterUnderTest, case, record
from sira_kernel.testing.gateway import MASTER_KEY, assert_nothing_held
from sira_kernel.testing.loopback import Fault
from sira_kernel.testing.providers import LONG_TEXT

from .adapters import ALL

TOOLS: list[Any] = [
    {"name": name, "description": f"{name} somewhere", "input_schema": {"type": "object", "properties": {}}}
    for name in ("get_weather", "get_time")
]


@dataclass
class Gateway:
    adapter: AdapterUnderTest
    upstream: Any
    server: ServerThread

    def say(self, text: str, *faults: Fault) -> list[Any]:
        """One user message saying ``text``, with ``faults`` arranged for the next request."""
        suffix = "".join(self.adapter.inject(fault, self.upstream) for fault in faults)
        return [{"role": "user", "content": text + suffix}]


@pytest.fixture(scope="module", params=ALL, ids=[adapter.name for adapter in ALL])
def gateway(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    adapter: AdapterUnderTest = request.param
    upstream = adapter.upstream() if adapter.upstream is not None else contextlib.nullcontext()
    with upstream as fake:
        config = {
            "kernel": {"stop_timeout": 2.0, "drain_timeout": 2.0},
            "server": {"master_key": MASTER_KEY},
            "limits": {"first_token_timeout": 1.5, "total_timeout": 10.0},
            "plugins": {adapter.name: dict(adapter.config(fake))},
        }
        plugins = {"api-anthropic": AnthropicSurfacePlugin, adapter.name: adapter.plugin}
        with ServerThread(lambda: make_kernel(plugins, config)) as server:
            yield Gateway(adapter, fake, server)


@pytest.fixture
def client(gateway: Gateway, request: pytest.FixtureRequest) -> Iterator[anthropic.Anthropic]:
    record(request, gateway.adapter.name, request.function.conformance_case, table="anthropic-surface")
    if gateway.upstream is not None:
        gateway.upstream.reset()
    with anthropic.Anthropic(base_url=gateway.server.base_url, api_key=MASTER_KEY, max_retries=0, timeout=20) as c:
        yield c
    assert_nothing_held(gateway.server)


@case("text")
def test_text(client: anthropic.Anthropic, gateway: Gateway) -> None:
    message = client.messages.create(
        model=gateway.adapter.chat_model, max_tokens=200, system="Be brief.", messages=gateway.say("Hello gateway")
    )
    assert message.type == "message" and message.role == "assistant"
    [block] = message.content
    assert block.type == "text" and block.text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@case("stream")
def test_stream(client: anthropic.Anthropic, gateway: Gateway) -> None:
    with client.messages.stream(
        model=gateway.adapter.chat_model, max_tokens=200, messages=gateway.say("héllo wörld 🎉")
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1, "the text came in one piece: not streamed"
    [block] = final.content
    assert block.type == "text" and block.text == "".join(pieces)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


@case("tool_stream")
def test_tool_use_streamed(client: anthropic.Anthropic, gateway: Gateway) -> None:
    with client.messages.stream(
        model=gateway.adapter.chat_model, max_tokens=200, tools=TOOLS, messages=gateway.say("Weather and time?")
    ) as stream:
        partial: dict[int, str] = {}
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partial[event.index] = partial.get(event.index, "") + event.delta.partial_json
        final = stream.get_final_message()
    uses = [block for block in final.content if block.type == "tool_use"]
    assert [use.name for use in uses] == ["get_weather", "get_time"]
    assert [use.input for use in uses] == list(gateway.adapter.tool_arguments)
    assert len({use.id for use in uses}) == 2 and all(use.id for use in uses)
    assert final.stop_reason == "tool_use"
    assert len(partial) == 2, "the tool inputs did not stream as input_json_delta"


@case("error")
@pytest.mark.parametrize(
    ("status", "error", "client_status"),
    [
        (429, anthropic.RateLimitError, 429),
        (400, anthropic.BadRequestError, 400),
        (503, anthropic.APIStatusError, 502),
    ],
)
def test_upstream_error(
    client: anthropic.Anthropic, gateway: Gateway, status: int, error: type[anthropic.APIStatusError],
    client_status: int,
) -> None:
    messages = gateway.say("hello", Fault(status=status, retry_after=3 if status == 429 else None))
    with pytest.raises(error) as caught:
        client.messages.create(model=gateway.adapter.chat_model, max_tokens=50, messages=messages)
    assert caught.value.status_code == client_status
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "3"


@case("mid_stream")
def test_mid_stream_failure_raises(client: anthropic.Anthropic, gateway: Gateway) -> None:
    adapter = gateway.adapter
    messages = gateway.say(LONG_TEXT, Fault(drop_after=adapter.events_before_text + 2))
    pieces: list[str] = []
    with pytest.raises(anthropic.APIError):
        with client.messages.stream(model=adapter.chat_model, max_tokens=500, messages=messages) as stream:
            for piece in stream.text_stream:
                pieces.append(piece)
            stream.get_final_message()
    assert pieces, "the stream failed before any text: not a mid-stream failure"


@case("disconnect")
def test_client_leaving_a_stream_releases_the_upstream(client: anthropic.Anthropic, gateway: Gateway) -> None:
    adapter, upstream = gateway.adapter, gateway.upstream
    messages = gateway.say(LONG_TEXT, Fault(chunk_delay=0.05))
    with client.messages.stream(model=adapter.chat_model, max_tokens=500, messages=messages) as stream:
        first = next(iter(stream.text_stream))
    assert first
    if upstream is not None:
        assert upstream.wait_until(lambda: upstream.aborted_streams == 1 and upstream.open_streams == 0), (
            f"the upstream stream was not released (open={upstream.open_streams}, aborted={upstream.aborted_streams})"
        )
        assert upstream.completed_streams == 0
