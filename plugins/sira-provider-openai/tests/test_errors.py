"""Every upstream failure maps to the right kernel error; streams release their connection."""

from __future__ import annotations

import pytest
from sira_kernel.errors import ProviderRateLimited, ProviderRejected, ProviderUnavailable
from sira_kernel.providers import CallContext
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream, Fault
from sira_kernel.testing.providers import UpstreamFailureSuite, call_context, chat_request, collect
from sira_kernel.types import StreamError, StreamStart, TextDelta

from sira_provider_openai import OpenAIProvider

pytestmark = pytest.mark.anyio

ask = chat_request


def ctx(model: str = "gpt-4o-mini") -> CallContext:
    return call_context(model)


class TestUpstreamFailures(UpstreamFailureSuite):
    """Deadlines, broken connections, size limits, releasing the upstream: the shared suite."""

    model = "gpt-4o-mini"


# -- upstream statuses ------------------------------------------------------------------------------


async def test_429_quotes_the_upstream(provider: OpenAIProvider, fake: FakeOpenAIUpstream) -> None:
    fake.enqueue(Fault(status=429, retry_after=7, message="Rate limit reached for requests"))
    with pytest.raises(ProviderRateLimited) as caught:
        await provider.chat(ask(), ctx())
    error = caught.value
    assert (error.status, error.retry_after, error.provider) == (429, 7.0, "openai")
    assert "Rate limit reached" in error.message


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


# -- bodies ---------------------------------------------------------------------------------------


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
