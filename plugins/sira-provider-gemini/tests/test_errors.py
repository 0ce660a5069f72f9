"""Every Gemini failure maps to the right kernel error; streams release their connection; no key leaks."""

from __future__ import annotations

from typing import Any

import pytest
from sira_kernel.config import Secret
from sira_kernel.errors import ProviderRateLimited, ProviderRejected, ProviderTimeout, ProviderUnavailable
from sira_kernel.providers import CallContext
from sira_kernel.testing.fake_gemini import FakeGeminiUpstream, Fault, GeminiFault
from sira_kernel.testing.providers import UpstreamFailureSuite, call_context, collect
from sira_kernel.testing.providers import chat_request as ask
from sira_kernel.types import EmbeddingRequest, StreamError

from sira_provider_gemini import GeminiProvider

pytestmark = pytest.mark.anyio


def ctx(model: str = "gemini-2.0-flash") -> CallContext:
    return call_context(model)


class TestUpstreamFailures(UpstreamFailureSuite):
    """Deadlines, broken connections, size limits, releasing the upstream: the shared suite."""

    model = "gemini-2.0-flash"
    events_before_text = 0


# -- Google's error statuses ------------------------------------------------------------------------


async def test_429_with_retry_info(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    fake.enqueue(GeminiFault(status=429, retry_delay="12s", message="You exceeded your current quota."))
    with pytest.raises(ProviderRateLimited) as caught:
        await provider.chat(ask(), ctx())
    error = caught.value
    assert (error.status, error.retry_after, error.provider) == (429, 12.0, "gemini")
    assert "429 RESOURCE_EXHAUSTED: You exceeded your current quota." in error.message

    fake.enqueue(GeminiFault(status=429, retry_delay="45.837906927s"))
    with pytest.raises(ProviderRateLimited) as caught:
        await collect(provider.stream(ask(), ctx()))
    assert caught.value.retry_after == pytest.approx(45.837906927)

    fake.enqueue(GeminiFault(status=429))
    with pytest.raises(ProviderRateLimited) as caught:
        await provider.embed(EmbeddingRequest(model="e", input="x"), ctx("text-embedding-004"))
    assert caught.value.retry_after is None


async def test_retry_after_header_wins_over_retry_info(
    provider: GeminiProvider, fake: FakeGeminiUpstream
) -> None:
    fake.enqueue(GeminiFault(status=429, retry_after=3, retry_delay="30s"))
    with pytest.raises(ProviderRateLimited) as caught:
        await provider.chat(ask(), ctx())
    assert caught.value.retry_after == 3


@pytest.mark.parametrize(
    ("status", "google_status"),
    [(400, "INVALID_ARGUMENT"), (400, "FAILED_PRECONDITION"), (404, "NOT_FOUND"), (409, "ABORTED")],
)
async def test_4xx_is_rejected_with_the_upstream_status(
    provider: GeminiProvider, fake: FakeGeminiUpstream, status: int, google_status: str
) -> None:
    fake.enqueue(
        GeminiFault(status=status, google_status=google_status, message="User location is not supported.")
    )
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(ask(), ctx())
    error = caught.value
    assert error.status == status
    assert not error.retryable
    assert f"{status} {google_status}: User location is not supported." in error.message


async def test_requests_gemini_refuses_quote_google(
    provider: GeminiProvider, fake: FakeGeminiUpstream
) -> None:
    bogus = ask(extra={"generationConfig": {"bogusField": 1}})  # a native field passed through as is
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(bogus, ctx())
    assert caught.value.status == 400
    assert 'Unknown name "bogusField"' in caught.value.message
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(ask(), ctx("text-embedding-004"))  # generateContent on an embedding model
    assert caught.value.status == 404
    assert "is not supported for generateContent" in caught.value.message


@pytest.mark.parametrize(("status", "google_status"), [(401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED")])
async def test_auth_failure_is_the_gateways_problem(
    provider: GeminiProvider, fake: FakeGeminiUpstream, status: int, google_status: str
) -> None:
    fake.enqueue(GeminiFault(status=status, message=f"Key {fake.api_key} was refused"))
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(ask(), ctx())
    error = caught.value
    assert (error.status, error.code) == (502, "upstream_auth_failed")
    assert google_status in error.message and "api_key" in error.message
    assert str(fake.api_key) not in error.message


async def test_wrong_and_missing_keys_against_the_real_check(
    open_provider: Any, fake: FakeGeminiUpstream
) -> None:
    # Google answers a wrong key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID), not 401.
    async with open_provider(api_key=Secret("AIza-wrong-key-abcdefghij")) as provider:
        with pytest.raises(ProviderRejected) as caught:
            await provider.chat(ask(), ctx())
        assert (caught.value.status, caught.value.code) == (502, "upstream_auth_failed")
        assert "AIza-wrong" not in caught.value.message
        with pytest.raises(ProviderRejected) as caught:
            await provider.embed(EmbeddingRequest(model="e", input="x"), ctx("text-embedding-004"))
        assert caught.value.status == 502
    async with open_provider(api_key=None) as provider:
        with pytest.raises(ProviderRejected) as caught:
            await provider.chat(ask(), ctx())
        assert caught.value.status == 502  # 403 PERMISSION_DENIED: no key at all
    assert "x-goog-api-key" not in fake.requests[-1].headers


@pytest.mark.parametrize(
    ("status", "google_status"), [(500, "INTERNAL"), (503, "UNAVAILABLE"), (499, "CANCELLED")]
)
async def test_5xx_is_unavailable(
    provider: GeminiProvider, fake: FakeGeminiUpstream, status: int, google_status: str
) -> None:
    fake.enqueue(GeminiFault(status=status, retry_delay="2s"))
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(), ctx())
    error = caught.value
    assert type(error) is ProviderUnavailable
    assert (error.status, error.retryable, error.retry_after) == (502, True, 2.0)
    assert google_status in error.message

    fake.enqueue(GeminiFault(status=status))
    with pytest.raises(ProviderUnavailable):
        await collect(provider.stream(ask(), ctx()))


async def test_504_deadline_exceeded_is_a_timeout(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    fake.enqueue(GeminiFault(status=504))
    with pytest.raises(ProviderTimeout) as caught:
        await provider.chat(ask(), ctx())
    assert caught.value.status == 504 and "DEADLINE_EXCEEDED" in caught.value.message


async def test_api_key_is_never_in_urls_or_messages(open_provider: Any, fake: FakeGeminiUpstream) -> None:
    key = str(fake.api_key)
    async with open_provider(headers={"X-Proxy-Token": "proxy-secret-123"}) as provider:
        await provider.chat(ask(), ctx())
        await collect(provider.stream(ask(), ctx()))
        await provider.embed(EmbeddingRequest(model="e", input="x"), ctx("text-embedding-004"))
        await provider.discover(timeout=5)
        fake.enqueue(GeminiFault(status=400, message=f"bad key {key} and proxy-secret-123 " + "x" * 2000))
        with pytest.raises(ProviderRejected) as caught:
            await provider.chat(ask(), ctx())
        fake.enqueue(GeminiFault(error_after=1, status=500, message=f"internal {key}"))
        events = await collect(provider.stream(ask(), ctx()))
    for request in fake.requests:
        assert key not in request.path and key not in str(request.query) and "key" not in request.query
        assert request.headers["x-goog-api-key"] == key
    assert key not in caught.value.message and "proxy-secret-123" not in caught.value.message
    assert len(caught.value.message) < 600
    error = events[-1]
    assert isinstance(error, StreamError) and key not in error.message


# -- broken connections and bodies ------------------------------------------------------------------


async def test_truncated_and_invalid_bodies(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    fake.enqueue(Fault(drop_after=40), Fault(body=b"{not json"), Fault(body=b'{"candidates": []}'))
    for expected in ("connection", "invalid response", "no candidates"):
        with pytest.raises(ProviderUnavailable, match=expected):
            await provider.chat(ask(), ctx())


async def test_error_object_with_status_200(provider: GeminiProvider, fake: FakeGeminiUpstream) -> None:
    fake.enqueue(
        Fault(body=b'{"error": {"code": 503, "message": "model is loading", "status": "UNAVAILABLE"}}')
    )
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask(), ctx())
    assert "model is loading" in caught.value.message
