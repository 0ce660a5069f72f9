"""Every Anthropic failure maps to the right kernel error; streams release their connection."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from sira_kernel.config import Secret
from sira_kernel.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from sira_kernel.providers import CallContext
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream, Fault
from sira_kernel.types import (
    ChatRequest,
    Message,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCall,
    ToolFunction,
)

from sira_provider_anthropic import AnthropicConfig, AnthropicProvider

pytestmark = pytest.mark.anyio

LONG_TEXT = " ".join(f"word{i}" for i in range(40))


def ctx(model: str = "claude-sonnet-4-5", **limits: Any) -> CallContext:
    return CallContext(upstream_model=model, request_id="req-test", **limits)


def ask(text: str = "hello there", **fields: Any) -> ChatRequest:
    return ChatRequest(model="public-model", messages=[Message(role="user", content=text)], **fields)


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in events]


# -- Anthropic's error types ------------------------------------------------------------------------

ERRORS = [
    # (status, Anthropic type, kernel class, client status, code, retryable)
    (400, "invalid_request_error", ProviderRejected, 400, "upstream_rejected", False),
    (401, "authentication_error", ProviderRejected, 502, "upstream_auth_failed", False),
    (403, "permission_error", ProviderRejected, 502, "upstream_auth_failed", False),
    (402, "billing_error", ProviderRejected, 502, "upstream_billing", False),
    (404, "not_found_error", ProviderRejected, 404, "upstream_rejected", False),
    (413, "request_too_large", ProviderRejected, 413, "upstream_rejected", False),
    (429, "rate_limit_error", ProviderRateLimited, 429, "upstream_rate_limited", True),
    (500, "api_error", ProviderUnavailable, 502, "upstream_unavailable", True),
    (504, "timeout_error", ProviderTimeout, 504, "upstream_timeout", True),
    (529, "overloaded_error", ProviderUnavailable, 503, "upstream_overloaded", True),
]


@pytest.mark.parametrize(("status", "error_type", "kind", "client_status", "code", "retryable"), ERRORS)
async def test_error_types(
    provider: AnthropicProvider,
    fake: FakeAnthropicUpstream,
    status: int,
    error_type: str,
    kind: type[ProviderError],
    client_status: int,
    code: str,
    retryable: bool,
) -> None:
    fake.enqueue(Fault(status=status, message=f"Something about {error_type}"), Fault(status=status))
    with pytest.raises(kind) as caught:
        await provider.chat(ask(), ctx())
    error = caught.value
    assert type(error) is kind
    assert (error.status, error.code, error.retryable, error.provider) == (
        client_status,
        code,
        retryable,
        "anthropic",
    )
    if status not in (401, 403):
        assert error_type in error.message and f"Something about {error_type}" in error.message
        assert "req_fake_1" in error.message  # Anthropic's request-id helps whoever reads the log
    with pytest.raises(kind):  # a stream fails the same way before it starts
        await collect(provider.stream(ask(stream=True), ctx()))


async def test_the_type_wins_over_the_status(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(status=500, error_type="overloaded_error"))
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(), ctx())
    assert (caught.value.status, caught.value.code) == (503, "upstream_overloaded")


@pytest.mark.parametrize(
    ("status", "kind", "client_status"),
    [
        (401, ProviderRejected, 502),
        (408, ProviderTimeout, 504),
        (413, ProviderRejected, 413),
        (422, ProviderRejected, 422),
        (503, ProviderUnavailable, 502),
        (529, ProviderUnavailable, 503),
    ],
)
async def test_bodies_without_an_anthropic_error_fall_back_to_the_status(
    provider: AnthropicProvider,
    fake: FakeAnthropicUpstream,
    status: int,
    kind: type[ProviderError],
    client_status: int,
) -> None:
    fake.enqueue(Fault(status=status, body=b"<html>Bad gateway day</html>", content_type="text/html"))
    with pytest.raises(kind) as caught:
        await provider.chat(ask(), ctx())
    assert caught.value.status == client_status


async def test_retry_after_on_429_and_529(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.enqueue(Fault(status=429, retry_after=7), Fault(status=529, retry_after=1.5))
    with pytest.raises(ProviderRateLimited) as limited:
        await provider.chat(ask(), ctx())
    assert limited.value.retry_after == 7.0
    with pytest.raises(ProviderUnavailable) as overloaded:
        await collect(provider.stream(ask(stream=True), ctx()))
    assert overloaded.value.retry_after == 1.5


async def test_credentials_never_leak(open_provider: Any, fake: FakeAnthropicUpstream) -> None:
    async with open_provider(headers={"X-Proxy-Token": "proxy-secret-123"}) as provider:
        fake.enqueue(Fault(status=401, message=f"invalid x-api-key {fake.api_key}"))
        with pytest.raises(ProviderRejected) as caught:
            await provider.chat(ask(), ctx())
        assert str(fake.api_key) not in caught.value.message and "credentials" in caught.value.message
        fake.enqueue(Fault(status=400, message=f"bad proxy-secret-123 and {fake.api_key}" + "x" * 2000))
        with pytest.raises(ProviderRejected) as caught:
            await provider.chat(ask(), ctx())
    message = caught.value.message
    assert "proxy-secret-123" not in message and str(fake.api_key) not in message
    assert len(message) < 700


async def test_wrong_key_against_a_real_check(open_provider: Any) -> None:
    async with open_provider(api_key=Secret("sk-ant-wrong-key-abcdefghij")) as provider:
        with pytest.raises(ProviderRejected) as caught:
            await provider.chat(ask(), ctx())
    assert caught.value.status == 502
    assert "sk-ant-wrong" not in caught.value.message


async def test_upstream_validation_errors_are_the_clients(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(ask(temperature=1.7), ctx())  # OpenAI allows 2, Anthropic 1
    assert caught.value.status == 400 and "temperature" in caught.value.message


async def test_refused_requests_never_reach_the_upstream(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(ask(n=3), ctx())
    assert (caught.value.status, caught.value.param) == (400, "n")
    bad_call = Message(role="assistant", tool_calls=[ToolCall("t", ToolFunction("f", "{oops"))])
    with pytest.raises(ProviderRejected) as caught:
        await collect(provider.stream(ChatRequest(model="m", messages=[bad_call], stream=True), ctx()))
    assert caught.value.status == 400 and "not valid JSON" in caught.value.message
    assert fake.requests == []


# -- mid-stream failures ----------------------------------------------------------------------------


async def test_overloaded_event_mid_stream(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.enqueue(Fault(error_after=4))  # message_start, block start, ping, "Echo:", then the error
    events = await collect(provider.stream(ask(LONG_TEXT, stream=True), ctx()))
    assert isinstance(events[0], StreamStart)
    assert events[1] == TextDelta("Echo:")
    error = events[-1]
    assert isinstance(error, StreamError)
    assert (error.status, error.code, error.error_type) == (503, "upstream_overloaded", "api_error")
    assert "Overloaded" in error.message
    assert len(events) == 3
    # Anthropic ends the stream itself after an error event.
    assert await fake.wait_until_async(lambda: fake.completed_streams == 1)


@pytest.mark.parametrize(
    ("error_type", "status", "code"),
    [
        ("api_error", 502, "upstream_unavailable"),
        ("rate_limit_error", 429, "upstream_rate_limited"),
        ("invalid_request_error", 400, "upstream_rejected"),
        ("brand_new_error", 502, "upstream_unavailable"),
    ],
)
async def test_other_error_events_mid_stream(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream, error_type: str, status: int, code: str
) -> None:
    fake.enqueue(Fault(error_after=4, error_type=error_type, message="went wrong"))
    events = await collect(provider.stream(ask(stream=True), ctx()))
    error = events[-1]
    assert isinstance(error, StreamError) and (error.status, error.code) == (status, code)


async def test_error_event_before_message_start_raises(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(error_after=0))
    with pytest.raises(ProviderUnavailable) as caught:
        await collect(provider.stream(ask(stream=True), ctx()))
    assert (caught.value.status, caught.value.code) == (503, "upstream_overloaded")


async def test_dropped_connection_mid_stream(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(drop_after=5))
    events = await collect(provider.stream(ask(LONG_TEXT, stream=True), ctx()))
    assert isinstance(events[0], StreamStart)
    assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta("Echo:"), TextDelta(" word0")]
    error = events[-1]
    assert isinstance(error, StreamError)
    assert (error.status, error.code) == (502, "upstream_unavailable")
    assert fake.dropped_streams == 1


async def test_drop_before_the_first_event_raises(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(drop_after=0))
    with pytest.raises(ProviderUnavailable):
        await collect(provider.stream(ask(stream=True), ctx()))


async def test_invalid_event_json(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.enqueue(Fault(body=b"event: message_start\ndata: {oops\n\n"))
    with pytest.raises(ProviderUnavailable):
        await collect(provider.stream(ask(stream=True), ctx()))


# -- deadlines --------------------------------------------------------------------------------------


async def test_hang_hits_the_first_token_timeout(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(hang=True), Fault(hang=True))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as caught:
        await provider.chat(ask(), ctx(first_token_timeout=0.2))
    assert caught.value.status == 504
    with pytest.raises(ProviderTimeout):
        await collect(provider.stream(ask(stream=True), ctx(first_token_timeout=0.2)))
    assert time.monotonic() - started < 2


async def test_slow_body_hits_the_total_timeout(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(first_token_delay=2))  # headers now, body later
    with pytest.raises(ProviderTimeout):
        await provider.chat(ask(), ctx(total_timeout=0.3))


async def test_slow_first_event_raises_before_the_stream_starts(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(first_token_delay=2))
    stream = provider.stream(ask(stream=True), ctx(first_token_timeout=0.2))
    with pytest.raises(ProviderTimeout):
        await stream.__anext__()
    assert await fake.wait_until_async(lambda: fake.open_streams == 0)


async def test_total_timeout_mid_stream_is_a_stream_error(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(chunk_delay=0.1))
    events = await collect(provider.stream(ask(LONG_TEXT, stream=True), ctx(total_timeout=0.55)))
    assert isinstance(events[0], StreamStart)
    assert any(isinstance(e, TextDelta) for e in events)
    error = events[-1]
    assert isinstance(error, StreamError)
    assert (error.status, error.code) == (504, "upstream_timeout")
    assert await fake.wait_until_async(lambda: fake.aborted_streams == 1 and fake.open_streams == 0)


async def test_config_timeouts_only_tighten(open_provider: Any, fake: FakeAnthropicUpstream) -> None:
    async with open_provider(first_token_timeout=0.2) as provider:
        fake.enqueue(Fault(hang=True))
        with pytest.raises(ProviderTimeout) as caught:
            await provider.chat(ask(), ctx(first_token_timeout=60))
        assert "0.2s" in caught.value.message
    async with open_provider(total_timeout=900) as provider:
        fake.enqueue(Fault(hang=True))
        with pytest.raises(ProviderTimeout) as caught:  # 900 s configured, but the kernel says 0.3
            await provider.chat(ask(), ctx(first_token_timeout=60, total_timeout=0.3))
        assert "0.3s" in caught.value.message


# -- broken connections and bodies ------------------------------------------------------------------


async def test_reset_is_unavailable(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.enqueue(Fault(reset=True), Fault(reset=True))
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(), ctx())
    assert type(caught.value) is ProviderUnavailable and caught.value.status == 502
    with pytest.raises(ProviderUnavailable):
        await collect(provider.stream(ask(stream=True), ctx()))
    response = await provider.chat(ask("again"), ctx())  # the pool recovers with a fresh connection
    assert response.choices[0].message.content == "Echo: again"


async def test_connection_refused_is_unavailable_not_a_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with AnthropicProvider(
            "down", AnthropicConfig(base_url=f"http://127.0.0.1:{port}")
        ) as provider:
            with pytest.raises(ProviderUnavailable) as caught:
                await provider.chat(ask(), ctx())
    assert type(caught.value) is ProviderUnavailable
    assert caught.value.provider == "down"


async def test_invalid_json_and_error_objects_with_200(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(body=b"{not json"))
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(), ctx())
    assert "invalid message" in caught.value.message
    fake.enqueue(Fault(body=b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'))
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(), ctx())
    assert caught.value.code == "upstream_overloaded"


async def test_truncated_body_is_unavailable(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(drop_after=40))
    with pytest.raises(ProviderUnavailable):
        await provider.chat(ask(), ctx())


async def test_stream_cut_before_message_delta(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(body=b'event: message_start\ndata: {"type":"message_start","message":{"id":"m"}}\n\n'))
    events = await collect(provider.stream(ask(stream=True), ctx()))
    assert isinstance(events[-1], StreamError) and "before it finished" in events[-1].message


async def test_response_too_large(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(LONG_TEXT), ctx(max_response_bytes=200))
    assert "larger than 200 bytes" in caught.value.message

    fake.enqueue(Fault(chunk_delay=0.01))  # so that the limit is crossed after the stream started
    events = await collect(provider.stream(ask(LONG_TEXT, stream=True), ctx(max_response_bytes=2000)))
    assert isinstance(events[0], StreamStart)
    assert isinstance(events[-1], StreamError) and "larger than 2000 bytes" in events[-1].message


async def test_not_started_is_unavailable() -> None:
    with pytest.raises(ProviderUnavailable):
        await AnthropicProvider("idle", AnthropicConfig()).chat(ask(), ctx())


# -- releasing the upstream -------------------------------------------------------------------------


async def test_early_aclose_releases_the_upstream_stream(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(chunk_delay=0.05))
    stream = provider.stream(ask(LONG_TEXT, stream=True), ctx())
    seen = [await stream.__anext__() for _ in range(3)]
    assert isinstance(seen[0], StreamStart)
    assert fake.open_streams == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert await fake.wait_until_async(lambda: fake.aborted_streams == 1 and fake.open_streams == 0)
    assert fake.completed_streams == 0
    assert (await provider.chat(ask("ok"), ctx())).choices[0].message.content == "Echo: ok"


async def test_cancelled_consumer_releases_the_upstream_stream(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(chunk_delay=0.05))
    seen: list[StreamEvent] = []
    with anyio.move_on_after(0.3):
        async for event in provider.stream(ask(LONG_TEXT, stream=True), ctx()):
            seen.append(event)
    assert 2 < len(seen) < 40
    assert await fake.wait_until_async(lambda: fake.aborted_streams == 1 and fake.open_streams == 0)


async def test_hanging_request_cancelled_by_the_caller(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(hang=True))
    with anyio.move_on_after(0.2) as scope:
        await provider.chat(ask(), ctx())
    assert scope.cancelled_caught
    assert await fake.wait_until_async(lambda: fake.connections_open == 0)
