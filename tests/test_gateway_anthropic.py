"""End to end: the official ``anthropic`` SDK → Sira (real HTTP server) → any provider.

Sira runs the installed ``api-anthropic`` surface next to ``api-openai``, with ``provider-openai``
pointed at a fake OpenAI-format upstream (a real aiohttp server), a second ``provider-openai``
instance (``reasoner``) at a fake that reasons, ``provider-anthropic`` at a fake Anthropic API
(which checks requests as strictly as the real one) and ``provider-mock``: an Anthropic client
reaches all of them through the same kernel pipeline.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from sira_kernel.testing import ServerThread, make_kernel
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream
from sira_kernel.testing.fake_anthropic import Fault as AnthropicFault
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream, Fault, chunk_event, error_event
from sira_kernel.testing.gateway import (
    MASTER_KEY,
    UPSTREAM_KEY,
    UsageLog,
    assert_nothing_held,
    gateway_config,
    http_chunks,
)

HELLO = [{"role": "user", "content": "Hello gateway"}]
TOOLS: list[Any] = [
    {"name": "get_weather", "description": "Weather in a city", "input_schema": {
        "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
    {"name": "get_time", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}},
]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def reasoning_upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream(reasoning=True, models=["think-1"]) as fake:
        yield fake


@pytest.fixture(scope="module")
def anthropic_upstream() -> Iterator[FakeAnthropicUpstream]:
    with FakeAnthropicUpstream(api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(upstream: FakeOpenAIUpstream, reasoning_upstream: FakeOpenAIUpstream,
            anthropic_upstream: FakeAnthropicUpstream) -> Iterator[ServerThread]:
    config = gateway_config(
        upstream,
        plugins=["api-openai", "api-anthropic", "provider-openai", "reasoner", "provider-anthropic", "provider-mock"],
        sections={
            "reasoner": {"use": "provider-openai", "base_url": reasoning_upstream.base_url, "models": ["think-1"]},
            "provider-anthropic": {
                "base_url": anthropic_upstream.base_url, "api_key": UPSTREAM_KEY, "models": ["claude-gateway-1"],
            },
        },
    )
    with ServerThread(lambda: make_kernel(config=config)) as server:
        yield server


@pytest.fixture(scope="module")
def usage(gateway: ServerThread) -> UsageLog:
    return UsageLog.subscribe(gateway)


@pytest.fixture
def client(gateway: ServerThread, upstream: FakeOpenAIUpstream, usage: UsageLog) -> Iterator[anthropic.Anthropic]:
    upstream.reset()
    usage.take()
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=MASTER_KEY, max_retries=0, timeout=20) as c:
        yield c
    assert_nothing_held(gateway)


def _sse(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every server-sent event in ``body``."""
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def _kinds(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Event names with runs of content_block_delta collapsed to one."""
    kinds: list[str] = []
    for name, _ in events:
        if not (name == "content_block_delta" and kinds and kinds[-1] == name):
            kinds.append(name)
    return kinds


# -- text ----------------------------------------------------------------------------------------------


def test_events_that_arrive_together_go_out_in_one_write(gateway: ServerThread, upstream: FakeOpenAIUpstream,
                                                        usage: UsageLog) -> None:
    upstream.reset()
    usage.take()
    body = {"model": "gpt-4o-mini", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "one two three four five"}]}
    upstream.enqueue(Fault(together=True))  # the whole answer in one upstream write
    chunks = http_chunks(gateway.base_url, "/v1/messages", body)
    # message_start and every delta in one body message, then the end (message_delta, message_stop)
    assert len(chunks) == 2, [c[:60] for c in chunks]
    events = _sse(b"".join(chunks).decode())
    assert _kinds(events) == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                              "message_delta", "message_stop"]
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == "Echo: one two three four five"
    [record] = usage.wait(1)
    assert record.status == 200 and record.stream
    assert_nothing_held(gateway)



def test_text_non_stream(client: anthropic.Anthropic, upstream: FakeOpenAIUpstream, usage: UsageLog) -> None:
    raw = client.messages.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=100, messages=HELLO, system="Be brief.", stop_sequences=["zzz"],
        metadata={"user_id": "user-42"}, extra_body={"temperature": 0.5, "top_k": 5, "custom_knob": {"a": 1}},
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [(b.type, b.text) for b in message.content] == [("text", "Echo: Hello gateway")]  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 3)
    assert message.usage.cache_read_input_tokens == 0
    assert raw.headers["request-id"].startswith("req-") and message._request_id == raw.headers["request-id"]
    assert raw.headers["x-sira-route"] == "provider-openai/gpt-4o-mini; attempts=1"
    sent = upstream.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.json["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello gateway"},
    ]
    assert (sent.json["max_tokens"], sent.json["temperature"], sent.json["stop"]) == (100, 0.5, ["zzz"])
    assert sent.json["user"] == "user-42" and "metadata" not in sent.json
    assert sent.json["top_k"] == 5 and sent.json["custom_knob"] == {"a": 1}  # passed through
    [record] = usage.wait(1)
    assert (record.status, record.provider, record.principal_kind) == (200, "provider-openai", "master")


def test_stream_helper_text_and_final_message(client: anthropic.Anthropic, upstream: FakeOpenAIUpstream) -> None:
    words = " ".join(f"w{i}" for i in range(12))
    upstream.enqueue(Fault(chunk_delay=0.03))
    seen_while_upstream_open = None
    with client.messages.stream(
        model="gpt-4o-mini", max_tokens=100, messages=[{"role": "user", "content": words}]
    ) as stream:
        pieces = []
        for piece in stream.text_stream:
            if seen_while_upstream_open is None:
                seen_while_upstream_open = upstream.open_streams == 1
            pieces.append(piece)
        final = stream.get_final_message()
    assert "".join(pieces) == f"Echo: {words}" and len(pieces) == 13
    assert seen_while_upstream_open is True  # relayed as it arrived, not buffered
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 13)
    assert upstream.requests[-1].json["stream_options"] == {"include_usage": True}


def test_raw_stream_events_in_anthropic_order(gateway: ServerThread, client: anthropic.Anthropic) -> None:
    events = list(client.messages.create(model="gpt-4o-mini", max_tokens=100, messages=HELLO, stream=True))
    assert [e.type for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]
    start = events[0].message  # type: ignore[union-attr]
    assert start.content == [] and start.stop_reason is None and start.usage.output_tokens == 0
    assert events[1].content_block.type == "text" and events[1].index == 0  # type: ignore[union-attr]
    assert "".join(e.delta.text for e in events[2:5]) == "Echo: Hello gateway"  # type: ignore[union-attr]
    delta = events[6]
    assert delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens == 3  # type: ignore[union-attr]
    assert delta.usage.input_tokens == 2  # type: ignore[union-attr]

    # On the wire: every event is named, and its name is its data's "type".
    response = httpx.post(
        f"{gateway.base_url}/v1/messages", headers={"x-api-key": MASTER_KEY, "anthropic-version": "2099-01-01"},
        json={"model": "gpt-4o-mini", "max_tokens": 100, "messages": HELLO, "stream": True},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"] == response.headers["x-request-id"]
    wire = _sse(response.text)
    assert all(name == data["type"] for name, data in wire)
    assert _kinds(wire) == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
        "message_stop",
    ]


def test_max_tokens_is_the_stop_reason_when_the_reply_is_cut(client: anthropic.Anthropic) -> None:
    long = [{"role": "user", "content": "one two three four five"}]
    message = client.messages.create(model="gpt-4o-mini", max_tokens=2, messages=long)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2
    with client.messages.stream(model="gpt-4o-mini", max_tokens=2, messages=long) as stream:
        assert stream.get_final_message().stop_reason == "max_tokens"


# -- tools ---------------------------------------------------------------------------------------------


def test_tool_use_non_stream(client: anthropic.Anthropic, upstream: FakeOpenAIUpstream) -> None:
    message = client.messages.create(
        model="gpt-4o-mini", max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": "weather?"}]
    )
    assert message.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in message.content] == [  # type: ignore[union-attr]
        ("tool_use", "get_weather", {"location": "Paris"}), ("tool_use", "get_time", {"location": "Tokyo"}),
    ]
    assert all(b.id for b in message.content)  # type: ignore[union-attr]
    sent = upstream.requests[-1].json
    assert sent["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city", "parameters": TOOLS[0]["input_schema"]}}
    assert "tool_choice" not in sent and "parallel_tool_calls" not in sent


def test_tool_choice_and_disable_parallel_tool_use(client: anthropic.Anthropic, upstream: FakeOpenAIUpstream) -> None:
    message = client.messages.create(
        model="gpt-4o-mini", max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": "time?"}],
        tool_choice={"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
    )
    assert [b.name for b in message.content] == ["get_time"]  # type: ignore[union-attr]
    sent = upstream.requests[-1].json
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert sent["parallel_tool_calls"] is False
    client.messages.create(model="gpt-4o-mini", max_tokens=100, tools=TOOLS, tool_choice={"type": "any"},
                           messages=[{"role": "user", "content": "x"}])
    assert upstream.requests[-1].json["tool_choice"] == "required"
    none = client.messages.create(model="gpt-4o-mini", max_tokens=100, tools=TOOLS, tool_choice={"type": "none"},
                                  messages=[{"role": "user", "content": "x"}])
    assert upstream.requests[-1].json["tool_choice"] == "none" and none.stop_reason == "end_turn"


def test_tool_use_streamed(client: anthropic.Anthropic) -> None:
    events = list(client.messages.create(
        model="gpt-4o-mini", max_tokens=100, tools=TOOLS, stream=True, messages=[{"role": "user", "content": "w?"}]
    ))
    starts = [e for e in events if e.type == "content_block_start"]
    assert [(e.index, e.content_block.type, e.content_block.input) for e in starts] == [  # type: ignore[union-attr]
        (0, "tool_use", {}), (1, "tool_use", {}),
    ]
    fragments: dict[int, list[str]] = {0: [], 1: []}
    for event in events:
        if event.type == "content_block_delta":
            fragments[event.index].append(event.delta.partial_json)  # type: ignore[union-attr]
    assert ["".join(f) for f in fragments.values()] == ['{"location": "Paris"}', '{"location": "Tokyo"}']
    assert all(len(f) > 1 for f in fragments.values())  # relayed as fragments, as they arrived
    assert [e.type for e in events if e.type.endswith("_stop")][-3:] == [
        "content_block_stop", "content_block_stop", "message_stop"]

    with client.messages.stream(model="gpt-4o-mini", max_tokens=100, tools=TOOLS,
                                messages=[{"role": "user", "content": "w?"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in final.content] == [  # type: ignore[union-attr]
        ("get_weather", {"location": "Paris"}), ("get_time", {"location": "Tokyo"}),
    ]


def test_tool_result_round_trip(client: anthropic.Anthropic, upstream: FakeOpenAIUpstream) -> None:
    message = client.messages.create(
        model="gpt-4o-mini", max_tokens=100, tools=TOOLS,
        messages=[
            {"role": "user", "content": "weather in Paris and the time?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {"location": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_02", "is_error": True,
                 "content": [{"type": "text", "text": "clock unavailable"}]},
            ]},
        ],
    )
    assert message.stop_reason == "end_turn"
    sent = upstream.requests[-1].json["messages"]
    assert sent[1]["role"] == "assistant" and sent[1]["content"] == "Let me check."
    calls = [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in sent[1]["tool_calls"]]
    assert calls == [
        ("toolu_01", "get_weather", {"location": "Paris"}), ("toolu_02", "get_time", {"location": "Paris"}),
    ]
    assert sent[2:] == [
        {"role": "tool", "content": "sunny", "tool_call_id": "toolu_01"},
        {"role": "tool", "content": "Error: clock unavailable", "tool_call_id": "toolu_02"},
    ]


# -- system prompt, images, thinking --------------------------------------------------------------------


def test_system_blocks_and_images_reach_the_upstream_as_openai_fields(
    client: anthropic.Anthropic, upstream: FakeOpenAIUpstream
) -> None:
    client.messages.create(
        model="gpt-4o-mini", max_tokens=100,
        system=[{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in French."}],
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ]}],
    )
    sent = upstream.requests[-1].json["messages"]
    assert sent[0] == {"role": "system", "content": "You are terse.\nAnswer in French."}
    assert sent[1]["content"] == [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]


def test_reasoning_becomes_thinking_blocks(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="think-1", max_tokens=100, messages=HELLO)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Let me think about that."  # type: ignore[union-attr]
    events = list(client.messages.create(model="think-1", max_tokens=100, messages=HELLO, stream=True))
    starts = [(e.index, e.content_block.type) for e in events if e.type == "content_block_start"]  # type: ignore[union-attr]
    assert starts == [(0, "thinking"), (1, "text")]
    with client.messages.stream(model="think-1", max_tokens=100, messages=HELLO) as stream:
        final = stream.get_final_message()
    assert final.content[0].thinking == "Let me think about that."  # type: ignore[union-attr]
    assert final.content[1].text == "Echo: Hello gateway"  # type: ignore[union-attr]


# -- count_tokens --------------------------------------------------------------------------------------


def test_count_tokens(client: anthropic.Anthropic, gateway: ServerThread, usage: UsageLog) -> None:
    short = client.messages.count_tokens(model="gpt-4o-mini", messages=HELLO).input_tokens
    longer = client.messages.count_tokens(
        model="gpt-4o-mini", system="x" * 400, messages=HELLO, tools=TOOLS
    ).input_tokens
    assert 0 < short < longer
    assert longer - short >= 100 + 300  # the system text (400 chars / 4) and the tools' overhead
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=HELLO)
    with anthropic.Anthropic(base_url=gateway.base_url, api_key="sk-wrong-000000", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError):
            bad.messages.count_tokens(model="gpt-4o-mini", messages=HELLO)
    assert usage.wait(0) == []  # counting is not usage


# -- errors --------------------------------------------------------------------------------------------


def test_auth_errors(gateway: ServerThread, client: anthropic.Anthropic) -> None:
    with anthropic.Anthropic(base_url=gateway.base_url, api_key="sk-wrong-key-000000", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as err:
            bad.messages.create(model="gpt-4o-mini", max_tokens=10, messages=HELLO)  # type: ignore[arg-type]
    assert err.value.status_code == 401 and MASTER_KEY not in json.dumps(err.value.body)
    assert err.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with anthropic.Anthropic(base_url=gateway.base_url, auth_token=MASTER_KEY, max_retries=0) as bearer:
        assert bearer.messages.create(model="gpt-4o-mini", max_tokens=10, messages=HELLO).content


def test_unknown_model_and_missing_max_tokens(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="claude-nope", max_tokens=10, messages=HELLO)  # type: ignore[arg-type]
    assert err.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:  # the SDK insists on max_tokens: go below it
        client.post("/v1/messages", body={"model": "gpt-4o-mini", "messages": HELLO}, cast_to=anthropic.types.Message)
    assert bad.value.body == {"type": "error", "error": {"type": "invalid_request_error",  # type: ignore[comparison-overlap]
                              "message": "max_tokens: Field required"}, "request_id": bad.value.request_id}


@pytest.mark.parametrize(
    ("fault", "exception", "status", "error_type"),
    [
        (Fault(status=429, retry_after=7), anthropic.RateLimitError, 429, "rate_limit_error"),
        (Fault(status=500), anthropic.InternalServerError, 502, "api_error"),
        (Fault(status=400), anthropic.BadRequestError, 400, "invalid_request_error"),
        (Fault(status=401), anthropic.InternalServerError, 502, "api_error"),
        (Fault(reset=True), anthropic.InternalServerError, 502, "api_error"),
        (Fault(hang=True), anthropic.GatewayTimeoutError, 504, "api_error"),
    ],
    ids=["429", "500", "400", "upstream-401", "reset", "hang"],
)
def test_upstream_failures_map_to_sdk_errors(
    client: anthropic.Anthropic, upstream: FakeOpenAIUpstream, usage: UsageLog, fault: Fault,
    exception: type[anthropic.APIStatusError], status: int, error_type: str,
) -> None:
    upstream.enqueue(fault)
    with pytest.raises(exception) as err:
        client.messages.create(model="gpt-4o-mini", max_tokens=10, messages=HELLO)  # type: ignore[arg-type]
    assert err.value.status_code == status
    body: Any = err.value.body
    assert body["type"] == "error" and body["error"]["type"] == error_type and body["error"]["message"]
    assert UPSTREAM_KEY not in json.dumps(body)
    headers = err.value.response.headers
    if status == 429:
        assert headers["retry-after"] == "7"
    if fault.status == 401:  # the gateway's own upstream key is bad: retrying cannot help
        assert headers["x-should-retry"] == "false"
    [record] = usage.wait(1)
    assert record.status == status


def test_upstream_error_before_the_stream_starts_is_an_http_error(
    client: anthropic.Anthropic, upstream: FakeOpenAIUpstream
) -> None:
    upstream.enqueue(Fault(status=429, retry_after=3))
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(model="gpt-4o-mini", max_tokens=10, messages=HELLO, stream=True)
    assert err.value.response.headers["retry-after"] == "3"


def stream_until_error(client: anthropic.Anthropic, content: str) -> tuple[list[str], anthropic.APIStatusError]:
    """The text a ``messages.stream`` of ``content`` yielded before it raised, and what it raised."""
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as err:
        with client.messages.stream(model="gpt-4o-mini", max_tokens=100,
                                    messages=[{"role": "user", "content": content}]) as stream:
            for text in stream.text_stream:
                received.append(text)
    return received, err.value


def test_mid_stream_drop_raises_instead_of_truncating(
    client: anthropic.Anthropic, upstream: FakeOpenAIUpstream, usage: UsageLog
) -> None:
    upstream.enqueue(Fault(drop_after=3))
    received, error = stream_until_error(client, "one two three four five six")
    assert received  # some text made it before the error, then the error was not swallowed
    assert error.body["error"]["type"] == "api_error"  # type: ignore[index]
    [record] = usage.wait(1)
    assert record.status >= 500 and record.stream


def test_error_in_the_same_read_as_text_comes_after_the_text(
    client: anthropic.Anthropic, upstream: FakeOpenAIUpstream, usage: UsageLog
) -> None:
    upstream.enqueue(Fault(body=chunk_event({"role": "assistant", "content": ""}) + chunk_event({"content": "Hel"})
                           + chunk_event({"content": "lo"}) + error_event("the model crashed", code="boom")))
    received, error = stream_until_error(client, "hi")
    assert "".join(received) == "Hello"
    assert "the model crashed" in error.body["error"]["message"]  # type: ignore[index]
    [record] = usage.wait(1)
    assert record.status >= 500 and record.stream


def test_client_disconnect_mid_stream_closes_upstream(
    gateway: ServerThread, upstream: FakeOpenAIUpstream, client: anthropic.Anthropic, usage: UsageLog
) -> None:
    upstream.enqueue(Fault(chunk_delay=0.2))
    body = {"model": "gpt-4o-mini", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": " ".join(["word"] * 40)}]}
    with httpx.Client(timeout=10) as http:
        url = f"{gateway.base_url}/v1/messages"
        with http.stream("POST", url, json=body, headers={"x-api-key": MASTER_KEY}) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines) == "event: message_start"
            upstream.wait_until(lambda: upstream.open_streams == 1)
        # leaving the block closes the connection mid-stream
    assert upstream.wait_until(lambda: upstream.aborted_streams == 1 and upstream.open_streams == 0, timeout=5)
    [record] = usage.wait(1)
    assert record.status == 499 and record.error_code == "client_closed"


def test_client_disconnect_while_waiting_cancels_the_upstream_call(
    gateway: ServerThread, upstream: FakeOpenAIUpstream, client: anthropic.Anthropic, usage: UsageLog
) -> None:
    upstream.enqueue(Fault(hang=True))
    body = {"model": "gpt-4o-mini", "max_tokens": 10, "messages": HELLO}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.base_url}/v1/messages", json=body, timeout=0.3, headers={"x-api-key": MASTER_KEY})
    [record] = usage.wait(1)
    # 499 (client gone), not the 504 the 1.5 s first-token deadline would have produced
    assert record.status == 499 and record.error_code == "client_closed"
    assert record.latency_ms < 1500


# -- provider-mock -------------------------------------------------------------------------------------


def test_provider_mock_text_tools_and_stream(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="mock-1", max_tokens=100, messages=HELLO)
    assert message.content[0].text == "This is a mock reply to: Hello gateway"  # type: ignore[union-attr]
    with client.messages.stream(model="mock-1", max_tokens=100, messages=HELLO) as stream:
        assert "".join(stream.text_stream) == "This is a mock reply to: Hello gateway"
        assert stream.get_final_message().usage.output_tokens == message.usage.output_tokens
    with client.messages.stream(model="mock-1", max_tokens=100, tools=TOOLS,
                                messages=[{"role": "user", "content": "w?"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in final.content] == [  # type: ignore[union-attr]
        ("get_weather", {"location": "mock"}), ("get_time", {"location": "mock"}),
    ]
    answer = client.messages.create(model="mock-1", max_tokens=100, tools=TOOLS, messages=[
        {"role": "user", "content": "w?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "rainy"}]},
    ])
    assert answer.content[0].text == "The tool returned: rainy"  # type: ignore[union-attr]


def test_provider_mock_failures(client: anthropic.Anthropic, usage: UsageLog) -> None:
    def ask(text: str, **kwargs: Any) -> Any:
        return client.messages.create(model="mock-1", max_tokens=100,
                                      messages=[{"role": "user", "content": text}], **kwargs)

    received = []
    with pytest.raises(anthropic.APIStatusError) as err:
        for event in ask("one two three four five [mock:drop=2]", stream=True):
            received.append(event.type)
    assert received.count("content_block_delta") == 2 and "message_stop" not in received
    assert err.value.body["error"]["message"] == "mock: upstream dropped the stream"  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError) as limited:
        ask("[mock:status=429][mock:retry_after=3]")
    assert limited.value.response.headers["retry-after"] == "3"
    with pytest.raises(anthropic.InternalServerError) as failed:
        ask("[mock:status=503]")
    assert failed.value.status_code == 502
    statuses = sorted(r.status for r in usage.wait(3))
    assert statuses == [429, 502, 502]


# -- provider-anthropic: Anthropic in, Anthropic out ---------------------------------------------------

THINKING = {"type": "enabled", "budget_tokens": 1024}


def test_anthropic_upstream_thinking_and_tool_use_round_trip(
    client: anthropic.Anthropic, anthropic_upstream: FakeAnthropicUpstream
) -> None:
    """The fake only accepts thinking signatures it issued: a turn sent back through Sira twice
    (upstream → kernel → client → kernel → upstream) must arrive unchanged."""
    anthropic_upstream.reset()
    question = {"role": "user", "content": "weather in Paris?"}
    with client.messages.stream(model="claude-gateway-1", max_tokens=2048, tools=TOOLS[:1],
                                messages=[question], extra_body={"thinking": THINKING}) as stream:
        first = stream.get_final_message()
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert first.content[0].signature and first.stop_reason == "tool_use"  # type: ignore[union-attr]
    call = first.content[2]
    assert (call.name, call.input) == ("get_weather", {"location": "Paris"})  # type: ignore[union-attr]
    assert anthropic_upstream.requests[-1].json["thinking"] == THINKING

    answer = client.messages.create(
        model="claude-gateway-1", max_tokens=2048, tools=TOOLS[:1], extra_body={"thinking": THINKING},
        messages=[question, {"role": "assistant", "content": [b.model_dump() for b in first.content]},  # type: ignore[misc]
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}],
    )
    assert answer.stop_reason == "end_turn"
    assert [b.type for b in answer.content] == ["thinking", "text"]
    assert answer.content[1].text == "Echo: sunny"  # type: ignore[union-attr]
    sent = anthropic_upstream.requests[-1].json["messages"]
    assert sent[1]["content"][0] == first.content[0].model_dump()  # the thinking block, signature and all
    assert sent[2]["content"] == [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]


def test_anthropic_upstream_prompt_cache_usage(
    client: anthropic.Anthropic, anthropic_upstream: FakeAnthropicUpstream
) -> None:
    anthropic_upstream.reset()
    system: Any = [{"type": "text", "text": "A long and stable system prompt " * 4,
                    "cache_control": {"type": "ephemeral"}}]
    first = client.messages.create(model="claude-gateway-1", max_tokens=50, system=system, messages=HELLO)
    with client.messages.stream(model="claude-gateway-1", max_tokens=50, system=system, messages=HELLO) as stream:
        second = stream.get_final_message()
    assert anthropic_upstream.requests[-1].json["system"] == system  # the cache mark made the trip
    assert first.usage.cache_creation_input_tokens and not first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.input_tokens == first.usage.input_tokens == 2  # "Hello gateway", the uncached part


def test_anthropic_upstream_errors_keep_their_anthropic_types(
    client: anthropic.Anthropic, anthropic_upstream: FakeAnthropicUpstream
) -> None:
    anthropic_upstream.enqueue(AnthropicFault(status=529, retry_after=2))
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        client.messages.create(model="claude-gateway-1", max_tokens=50, messages=HELLO)
    assert overloaded.value.status_code == 529 and overloaded.value.response.headers["retry-after"] == "2"
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    anthropic_upstream.enqueue(AnthropicFault(error_after=3))
    with pytest.raises(anthropic.APIStatusError) as mid_stream:
        with client.messages.stream(model="claude-gateway-1", max_tokens=50, messages=HELLO) as stream:
            stream.until_done()
    assert mid_stream.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


# -- bad input -----------------------------------------------------------------------------------------


def test_bad_input_matrix_keeps_serving(gateway: ServerThread, client: anthropic.Anthropic) -> None:
    url = f"{gateway.base_url}/v1/messages"
    auth = {"x-api-key": MASTER_KEY, "content-type": "application/json"}

    def body(**fields: Any) -> bytes:
        return json.dumps({"model": "gpt-4o-mini", "max_tokens": 10, "messages": HELLO, **fields}).encode()

    def user(*blocks: Any) -> list[dict[str, Any]]:
        return [{"role": "user", "content": list(blocks)}]

    invalid = "invalid_request_error"
    cases: list[tuple[bytes, int, str, str]] = [
        (b"{not json", 400, invalid, "not valid JSON"),
        (b"[1, 2]", 400, invalid, "JSON object"),
        (b"", 400, invalid, "empty"),
        (json.dumps({"max_tokens": 10, "messages": HELLO}).encode(), 400, invalid, "model: Field required"),
        (json.dumps({"model": "gpt-4o-mini", "max_tokens": 10}).encode(), 400, invalid, "messages: Field required"),
        (body(model=5), 400, invalid, "model: Expected `str`"),
        (body(max_tokens="10"), 400, invalid, "max_tokens: Expected `int | null`"),
        (body(max_tokens=10**9), 400, invalid, "max_tokens must be between 1 and 4096"),
        (body(max_tokens=0), 400, invalid, "max_tokens"),
        (body(messages="hi"), 400, invalid, "messages: Expected `array`"),
        (body(messages=[]), 400, invalid, "messages: at least one message"),
        (body(messages=[{"role": "system", "content": "x"}]), 400, invalid, "messages.0.role: Invalid enum value"),
        (body(messages=[{"role": "user"}]), 400, invalid, "messages.0.content: Field required"),
        (body(messages=[{"role": "user", "content": 5}]), 400, invalid, "messages.0.content: Expected"),
        (body(messages=[{"role": "user", "content": []}]), 400, invalid, "messages.0.content: at least one"),
        (body(messages=user({"type": "video"})), 400, invalid, "messages.0.content.0.type: Invalid value 'video'"),
        (body(messages=user({"type": "text"})), 400, invalid, "messages.0.content.0.text: Field required"),
        (body(messages=user({"type": "image", "source": {"type": "base64", "media_type": "image/png"}})), 400,
         invalid, "messages.0.content.0.source.data: Field required"),
        (body(messages=user({"type": "tool_use", "id": "t", "name": "n", "input": {}})), 400, invalid,
         "messages.0.content.0: 'tool_use' blocks are only allowed in assistant messages"),
        (body(messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n",
                                                            "input": [1]}]}]),
         400, invalid, "messages.0.content.0.input: Input should be an object"),
        (body(tools=[{"name": "t"}]), 400, invalid, "tools.0.input_schema: Field required"),
        (body(tools=[{"name": "t", "input_schema": "{}"}]), 400, invalid, "tools.0.input_schema"),
        (body(tool_choice={"type": "sometimes"}), 400, invalid, "tool_choice.type: Invalid value 'sometimes'"),
        (body(metadata={"user_id": 5}), 400, invalid, "metadata.user_id"),
        (body(temperature="hot"), 400, invalid, "temperature: Expected `float | null`"),
        (body(model="no-such-model"), 404, "not_found_error", "no-such-model"),
        (b'{"model": "gpt-4o-mini", "max_tokens": 10, "messages": ['
         + b'{"role":"user","content":"x"},' * 3000 + b"{}]}", 413, "request_too_large", "larger than the limit"),
    ]
    # TCP_NODELAY: httpx writes head and body apart, and Nagle + delayed ACK would add 40 ms a request.
    nodelay = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    with httpx.Client(timeout=10, transport=nodelay) as http:
        for content, status, error_type, text in cases:
            response = http.post(url, content=content, headers=auth)
            assert response.status_code == status, (content[:80], response.text)
            error = response.json()
            assert set(error) == {"type", "error", "request_id"} and error["type"] == "error", error
            assert error["error"]["type"] == error_type and text in error["error"]["message"], (content[:80], error)
            assert error["request_id"] == response.headers["request-id"]
            assert http.get(f"{gateway.base_url}/health/live").status_code == 200
        big = http.post(url, content=b"x" * 70000, headers=auth)
        assert big.status_code == 413 and big.json()["error"]["type"] == "request_too_large"
        assert http.post(f"{url}/count_tokens", content=b"[]", headers=auth).status_code == 400
        assert http.get(url, headers=auth).status_code == 405
    message = client.messages.create(model="gpt-4o-mini", max_tokens=10, messages=HELLO)  # type: ignore[arg-type]
    assert message.content[0].text == "Echo: Hello gateway"  # type: ignore[union-attr]
