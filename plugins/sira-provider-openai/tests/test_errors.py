"""Every upstream failure maps to the right kernel error; streams release their connection."""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from sira_kernel.config import Secret
from sira_kernel.errors import (
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from sira_kernel.providers import CallContext
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream, Fault
from sira_kernel.types import (
    ChatRequest,
    EmbeddingRequest,
    Message,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
)

from sira_provider_openai import OpenAIConfig, OpenAIProvider

pytestmark = pytest.mark.anyio

LONG_TEXT = " ".join(f"word{i}" for i in range(40))


def ctx(model: str = "gpt-4o-mini", **limits: Any) -> CallContext:
    return CallContext(upstream_model=model, request_id="req-test", **limits)


def ask(text: str = "hello there", **fields: Any) -> ChatRequest:
    return ChatRequest(model="public-model", messages=[Message(role="user", content=text)], **fields)


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in events]


# -- upstream statuses ------------------------------------------------------------------------------


async def test_429_with_retry_after_seconds(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(status=429, retry_after=7, message="Rate limit reached for requests"))
    with pytest.raises(ProviderRateLimited) as caught:
        await provider.chat(ask(), ctx())
    error = caught.value
    assert (error.status, error.retry_after, error.provider) == (429, 7.0, "openai")
    assert "Rate limit reached" in error.message

    fake.enqueue(Fault(status=429, retry_after=1.5))
    with pytest.raises(ProviderRateLimited) as caught:
        await collect(provider.stream(ask(), ctx()))
    assert caught.value.retry_after == 1.5


async def test_429_with_retry_after_http_date(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    fake.enqueue(Fault(status=429, headers={"Retry-After": when}))
    with pytest.raises(ProviderRateLimited) as caught:
        await provider.chat(ask(), ctx())
    assert caught.value.retry_after is not None
    assert 27 <= caught.value.retry_after <= 31


async def test_429_with_retry_after_ms(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(status=429, retry_after=9, headers={"retry-after-ms": "250"}))
    with pytest.raises(ProviderRateLimited) as caught:
        await provider.chat(ask(), ctx())
    assert caught.value.retry_after == 0.25


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_unavailable(provider: OpenAIProvider, fake: FakeOpenAIUpstream, status: int) -> None:
    fake.enqueue(Fault(status=status, message="The server is overloaded"))
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(), ctx())
    assert type(caught.value) is ProviderUnavailable
    assert caught.value.status == 502
    assert caught.value.retryable
    assert "overloaded" in caught.value.message

    fake.enqueue(Fault(status=status))
    with pytest.raises(ProviderUnavailable):
        await collect(provider.stream(ask(), ctx()))


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_4xx_is_rejected_with_the_upstream_status(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream, status: int
) -> None:
    fake.enqueue(Fault(status=status, message="Invalid value for 'temperature'"))
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(ask(), ctx())
    assert caught.value.status == status
    assert not caught.value.retryable
    assert "Invalid value for 'temperature'" in caught.value.message


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_is_the_gateways_problem(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream, status: int
) -> None:
    fake.enqueue(Fault(status=status, message=f"Incorrect API key provided: {fake.api_key}"))
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(ask(), ctx())
    assert caught.value.status == 502
    assert "credentials" in caught.value.message
    assert str(fake.api_key) not in caught.value.message


async def test_wrong_key_against_a_real_check(open_provider: Any, fake: FakeOpenAIUpstream) -> None:
    async with open_provider(api_key=Secret("sk-wrong-key-abcdefghij")) as provider:
        with pytest.raises(ProviderRejected) as caught:
            await provider.embed(EmbeddingRequest(model="e", input="x"), ctx())
    assert caught.value.status == 502
    assert "sk-wrong" not in caught.value.message


async def test_error_messages_never_echo_secrets(open_provider: Any, fake: FakeOpenAIUpstream) -> None:
    async with open_provider(headers={"X-Proxy-Token": "proxy-secret-123"}) as provider:
        fake.enqueue(
            Fault(status=400, message=f"bad header proxy-secret-123 with key {fake.api_key}" + "x" * 2000)
        )
        with pytest.raises(ProviderRejected) as caught:
            await provider.chat(ask(), ctx())
    message = caught.value.message
    assert "proxy-secret-123" not in message
    assert str(fake.api_key) not in message
    assert len(message) < 600


# -- deadlines --------------------------------------------------------------------------------------


async def test_hang_hits_the_first_token_timeout(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(hang=True), Fault(hang=True))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as caught:
        await provider.chat(ask(), ctx(first_token_timeout=0.2))
    assert caught.value.status == 504
    with pytest.raises(ProviderTimeout):
        await collect(provider.stream(ask(), ctx(first_token_timeout=0.2)))
    assert time.monotonic() - started < 2


async def test_slow_headers_hit_the_total_timeout(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(delay=2))
    with pytest.raises(ProviderTimeout):
        await provider.chat(ask(), ctx(first_token_timeout=5, total_timeout=0.2))


async def test_slow_body_hits_the_total_timeout(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(first_token_delay=2))  # headers now, body later
    with pytest.raises(ProviderTimeout):
        await provider.chat(ask(), ctx(total_timeout=0.3))


async def test_slow_first_chunk_raises_before_the_stream_starts(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    fake.enqueue(Fault(first_token_delay=2))
    stream = provider.stream(ask(), ctx(first_token_timeout=0.2))
    with pytest.raises(ProviderTimeout):
        await stream.__anext__()
    assert await fake.wait_until_async(lambda: fake.open_streams == 0)


async def test_total_timeout_mid_stream_is_a_stream_error(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    fake.enqueue(Fault(chunk_delay=0.1))
    events = await collect(provider.stream(ask(LONG_TEXT), ctx(total_timeout=0.45)))
    assert isinstance(events[0], StreamStart)
    assert any(isinstance(e, TextDelta) for e in events)
    error = events[-1]
    assert isinstance(error, StreamError)
    assert (error.status, error.code) == (504, "upstream_timeout")
    assert await fake.wait_until_async(lambda: fake.aborted_streams == 1 and fake.open_streams == 0)


async def test_config_timeouts_tighten_the_kernel_limits(
    open_provider: Any, fake: FakeOpenAIUpstream
) -> None:
    async with open_provider(first_token_timeout=0.2) as provider:
        fake.enqueue(Fault(hang=True))
        with pytest.raises(ProviderTimeout) as caught:
            await provider.chat(ask(), ctx(first_token_timeout=60))
    assert "0.2s" in caught.value.message
    async with open_provider(total_timeout=900) as provider:
        fake.enqueue(Fault(hang=True))
        with pytest.raises(ProviderTimeout) as caught:  # the total deadline passed first: it is named
            await provider.chat(ask(), ctx(first_token_timeout=60, total_timeout=0.3))
    assert "0.3s" in caught.value.message


# -- broken connections and bodies ------------------------------------------------------------------


async def test_reset_is_unavailable(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(reset=True), Fault(reset=True))
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(), ctx())
    assert caught.value.status == 502
    with pytest.raises(ProviderUnavailable):
        await collect(provider.stream(ask(), ctx()))
    # The pool recovers: the next call opens a fresh connection.
    response = await provider.chat(ask("again"), ctx())
    assert response.choices[0].message.content == "Echo: again"


async def test_connection_refused_is_unavailable_not_a_timeout(fake: FakeOpenAIUpstream) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        config = OpenAIConfig(base_url=f"http://127.0.0.1:{port}/v1")
        async with OpenAIProvider("down", config) as provider:
            with pytest.raises(ProviderUnavailable) as caught:
                await provider.chat(ask(), ctx())
    assert type(caught.value) is ProviderUnavailable
    assert caught.value.provider == "down"


async def test_invalid_json_is_unavailable(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(body=b"{not json"), Fault(body=b'{"unexpected": true}'))
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(), ctx())
    assert "invalid chat completion" in caught.value.message
    with pytest.raises(ProviderUnavailable):
        await provider.chat(ask(), ctx())


async def test_error_object_with_status_200(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(body=b'{"error": {"message": "model is loading"}}'))
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(), ctx())
    assert "model is loading" in caught.value.message


async def test_invalid_chunk_before_and_after_the_start(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    fake.enqueue(Fault(body=b"data: {oops\n\n"))
    with pytest.raises(ProviderUnavailable):
        await collect(provider.stream(ask(), ctx()))

    fake.enqueue(
        Fault(
            body=b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
            b"data: {oops\n\n"
        )
    )
    events = await collect(provider.stream(ask(), ctx()))
    assert events[:2] == [StreamStart("c", "m"), TextDelta("hi")]
    assert isinstance(events[2], StreamError) and events[2].status == 502
    assert len(events) == 3


async def test_error_object_mid_stream(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(
        Fault(
            body=b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
            b'data: {"error":{"message":"The server had an error","type":"server_error"}}\n\n'
        )
    )
    events = await collect(provider.stream(ask(), ctx()))
    error = events[-1]
    assert isinstance(error, StreamError)
    assert "The server had an error" in error.message


async def test_stream_cut_before_finishing(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(
        Fault(body=b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n')
    )
    events = await collect(provider.stream(ask(), ctx()))
    assert isinstance(events[-1], StreamError)
    assert "before it finished" in events[-1].message


async def test_mid_stream_drop_is_a_stream_error(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(drop_after=3))
    events = await collect(provider.stream(ask(LONG_TEXT), ctx()))
    assert isinstance(events[0], StreamStart)
    assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta("Echo:"), TextDelta(" word0")]
    error = events[-1]
    assert isinstance(error, StreamError)
    assert (error.status, error.code) == (502, "upstream_unavailable")
    assert fake.dropped_streams == 1


async def test_truncated_body_is_unavailable(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(drop_after=40))
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(), ctx())
    assert type(caught.value) is ProviderUnavailable


async def test_drop_before_the_first_chunk_raises(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(drop_after=0))
    with pytest.raises(ProviderUnavailable):
        await collect(provider.stream(ask(), ctx()))


async def test_response_too_large(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(LONG_TEXT), ctx(max_response_bytes=200))
    assert "larger than 200 bytes" in caught.value.message

    fake.enqueue(Fault(chunk_delay=0.01))  # so that the limit is crossed after the stream started
    events = await collect(provider.stream(ask(LONG_TEXT), ctx(max_response_bytes=2000)))
    assert isinstance(events[0], StreamStart)
    assert isinstance(events[-1], StreamError)
    assert "larger than 2000 bytes" in events[-1].message


async def test_not_started_is_unavailable() -> None:
    provider = OpenAIProvider("idle", OpenAIConfig())
    with pytest.raises(ProviderUnavailable):
        await provider.chat(ask(), ctx())


# -- releasing the upstream -------------------------------------------------------------------------


async def test_early_aclose_releases_the_upstream_stream(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    fake.enqueue(Fault(chunk_delay=0.05))
    stream = provider.stream(ask(LONG_TEXT), ctx())
    seen = [await stream.__anext__() for _ in range(3)]
    assert isinstance(seen[0], StreamStart)
    assert fake.open_streams == 1
    await stream.aclose()
    assert await fake.wait_until_async(lambda: fake.aborted_streams == 1 and fake.open_streams == 0)
    assert fake.completed_streams == 0
    # The provider still works afterwards.
    assert (await provider.chat(ask("ok"), ctx())).choices[0].message.content == "Echo: ok"


async def test_cancelled_consumer_releases_the_upstream_stream(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    fake.enqueue(Fault(chunk_delay=0.05))
    seen: list[StreamEvent] = []
    with anyio.move_on_after(0.3):
        async for event in provider.stream(ask(LONG_TEXT), ctx()):
            seen.append(event)
    assert 2 < len(seen) < 40
    assert await fake.wait_until_async(lambda: fake.aborted_streams == 1 and fake.open_streams == 0)


async def test_hanging_request_cancelled_by_the_caller(
    provider: OpenAIProvider, fake: FakeOpenAIUpstream
) -> None:
    fake.enqueue(Fault(hang=True))
    with anyio.move_on_after(0.2) as scope:
        await provider.chat(ask(), ctx())
    assert scope.cancelled_caught
    assert await fake.wait_until_async(lambda: fake.connections_open == 0)
