"""Every Anthropic failure maps to the right kernel error; streams release their connection."""

from __future__ import annotations

import pytest
from sira_kernel.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from sira_kernel.providers import CallContext
from sira_kernel.testing.fake_anthropic import FakeAnthropicUpstream, Fault
from sira_kernel.testing.providers import LONG_TEXT, UpstreamFailureSuite, call_context, collect
from sira_kernel.testing.providers import chat_request as ask
from sira_kernel.types import (
    ChatRequest,
    Message,
    StreamError,
    StreamStart,
    TextDelta,
    ToolCall,
    ToolFunction,
)

from sira_provider_anthropic import AnthropicProvider

pytestmark = pytest.mark.anyio


def ctx(model: str = "claude-sonnet-4-5") -> CallContext:
    return call_context(model)


class TestUpstreamFailures(UpstreamFailureSuite):
    """Deadlines, broken connections, size limits, releasing the upstream: the shared suite."""

    model = "claude-sonnet-4-5"
    events_before_text = 3  # message_start, content_block_start, ping
    stream_timeout = 0.55
    first_text_within = 0.8
    max_message = 700  # with Anthropic's request-id


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


async def test_auth_failures_quote_nothing(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.enqueue(Fault(status=401, message=f"invalid x-api-key {fake.api_key}"))
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(ask(), ctx())
    assert str(fake.api_key) not in caught.value.message and "credentials" in caught.value.message


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


async def test_invalid_event_json(provider: AnthropicProvider, fake: FakeAnthropicUpstream) -> None:
    fake.enqueue(Fault(body=b"event: message_start\ndata: {oops\n\n"))
    with pytest.raises(ProviderUnavailable):
        await collect(provider.stream(ask(stream=True), ctx()))


# -- broken connections and bodies ------------------------------------------------------------------


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


async def test_stream_cut_before_message_delta(
    provider: AnthropicProvider, fake: FakeAnthropicUpstream
) -> None:
    fake.enqueue(Fault(body=b'event: message_start\ndata: {"type":"message_start","message":{"id":"m"}}\n\n'))
    events = await collect(provider.stream(ask(stream=True), ctx()))
    assert isinstance(events[-1], StreamError) and "before it finished" in events[-1].message
