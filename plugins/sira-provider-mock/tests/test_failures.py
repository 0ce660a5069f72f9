from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from sira_kernel.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from sira_kernel.providers import CallContext
from sira_kernel.types import ChatRequest, EmbeddingRequest, Message, StreamError, StreamStart, TextDelta

from sira_provider_mock import MockProvider

pytestmark = pytest.mark.anyio

Ask = Callable[..., ChatRequest]
Collect = Callable[..., Any]

STATUSES = [
    (429, ProviderRateLimited, 429),
    (500, ProviderUnavailable, 502),
    (502, ProviderUnavailable, 502),
    (503, ProviderUnavailable, 502),
    (504, ProviderTimeout, 504),
    (400, ProviderRejected, 400),
    (404, ProviderRejected, 404),
    (422, ProviderRejected, 422),
    (401, ProviderRejected, 502),
    (403, ProviderRejected, 502),
]


@pytest.mark.parametrize(("status", "error", "answered"), STATUSES)
async def test_status_directive(
    provider: MockProvider, ctx: CallContext, ask: Ask, status: int, error: type[ProviderError], answered: int
) -> None:
    with pytest.raises(error) as caught:
        await provider.chat(ask(f"please fail [mock:status={status}]"), ctx)
    assert type(caught.value) is error
    assert caught.value.status == answered
    assert caught.value.provider == "mock"
    assert str(status) in caught.value.message


@pytest.mark.parametrize(("status", "error", "answered"), STATUSES[:3])
async def test_status_directive_raises_before_the_stream_starts(
    provider: MockProvider, ask: Ask, collect: Collect, status: int, error: type[ProviderError], answered: int
) -> None:
    with pytest.raises(error):
        await collect(provider, ask(f"[mock:status={status}]"))


async def test_retry_after(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    with pytest.raises(ProviderRateLimited) as default:
        await provider.chat(ask("[mock:status=429]"), ctx)
    assert default.value.retry_after == 1
    with pytest.raises(ProviderRateLimited) as given:
        await provider.chat(ask("[mock:status=429][mock:retry_after=7.5]"), ctx)
    assert given.value.retry_after == 7.5


async def test_directives_read_from_the_last_user_message_only(
    provider: MockProvider, ctx: CallContext
) -> None:
    request = ChatRequest(
        model="m",
        messages=[
            Message(role="user", content="[mock:status=500]"),
            Message(role="assistant", content="ok"),
            Message(role="user", content="fine now"),
        ],
    )
    response = await provider.chat(request, ctx)
    assert response.choices[0].message.content == "This is a mock reply to: fine now"


@pytest.mark.parametrize(
    "text",
    [
        "[mock:explode]",
        "[mock:status=200]",
        "[mock:status=abc]",
        "[mock:drop]",
        "[mock:hang=1]",
        "[mock:tokens=-1]",
    ],
)
async def test_bad_directives_are_rejected(
    provider: MockProvider, ctx: CallContext, ask: Ask, text: str
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await provider.chat(ask(text), ctx)
    assert caught.value.status == 400
    assert "mock" in caught.value.message


async def test_hang_is_cancellable(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    with anyio.move_on_after(0.05) as scope:
        await provider.chat(ask("[mock:hang]"), ctx)
    assert scope.cancelled_caught


async def test_hang_in_stream_is_cancellable(provider: MockProvider, ask: Ask) -> None:
    received: list[Any] = []
    with anyio.move_on_after(0.05) as scope:
        async for event in provider.stream(
            ask("[mock:hang]"), CallContext(upstream_model="m", request_id="r")
        ):
            received.append(event)
    assert scope.cancelled_caught
    assert received == []


async def test_hang_ends_at_the_first_token_deadline(
    provider: MockProvider, ask: Ask, collect: Collect
) -> None:
    ctx = CallContext(upstream_model="m", request_id="r", first_token_timeout=0.05)
    with anyio.fail_after(2), pytest.raises(ProviderTimeout):
        await provider.chat(ask("[mock:hang]"), ctx)
    with anyio.fail_after(2), pytest.raises(ProviderTimeout):
        await collect(provider, ask("[mock:hang]"), ctx)


async def test_slow_first_token_times_out(provider: MockProvider, ask: Ask) -> None:
    ctx = CallContext(upstream_model="m", request_id="r", first_token_timeout=0.02)
    with anyio.fail_after(2), pytest.raises(ProviderTimeout):
        await provider.chat(ask("[mock:first_token_ms=5000]"), ctx)


async def test_slow_stream_ends_with_a_timeout_error(
    provider: MockProvider, ask: Ask, collect: Collect
) -> None:
    ctx = CallContext(upstream_model="m", request_id="r", total_timeout=0.05)
    with anyio.fail_after(2):
        events = await collect(provider, ask("[mock:pace_ms=20][mock:tokens=50]"), ctx)
    assert isinstance(events[-1], StreamError) and events[-1].status == 504
    assert 1 <= sum(isinstance(e, TextDelta) for e in events) < 50
    with anyio.fail_after(2), pytest.raises(ProviderTimeout):
        await provider.chat(ask("[mock:pace_ms=20][mock:tokens=50]"), ctx)


async def test_drop_mid_stream(provider: MockProvider, ask: Ask, collect: Collect) -> None:
    events = await collect(provider, ask("[mock:drop=3] [mock:tokens=10]"))
    assert isinstance(events[0], StreamStart)
    assert [type(e) for e in events[1:4]] == [TextDelta] * 3
    assert events[4:] == [StreamError(message="mock: upstream dropped the stream", status=502)]


async def test_drop_after_a_short_reply_still_drops(
    provider: MockProvider, ask: Ask, collect: Collect
) -> None:
    events = await collect(provider, ask("[mock:drop=500] hi"))
    assert isinstance(events[-1], StreamError)
    assert not any(type(e).__name__ in ("Finish", "Usage") for e in events)


async def test_drop_without_streaming(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.chat(ask("[mock:drop=3]"), ctx)
    assert type(caught.value) is ProviderUnavailable


async def _outcomes(provider: MockProvider, ctx: CallContext, calls: int) -> list[bool]:
    request = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
    outcomes = []
    for _ in range(calls):
        try:
            await provider.chat(request, ctx)
        except ProviderUnavailable:
            outcomes.append(False)
        else:
            outcomes.append(True)
    return outcomes


async def test_fail_rate_is_deterministic(
    make_provider: Callable[..., MockProvider], ctx: CallContext
) -> None:
    first = await _outcomes(make_provider(fail_rate=0.3, seed=42), ctx, 300)
    again = await _outcomes(make_provider(fail_rate=0.3, seed=42), ctx, 300)
    other = await _outcomes(make_provider(fail_rate=0.3, seed=7), ctx, 300)
    assert first == again
    assert first != other
    assert 0.2 < first.count(False) / 300 < 0.4


async def test_fail_status_and_full_failure(
    make_provider: Callable[..., MockProvider], ctx: CallContext, ask: Ask
) -> None:
    provider = make_provider(fail_rate=1.0, fail_status=429)
    for _ in range(3):
        with pytest.raises(ProviderRateLimited) as caught:
            await provider.chat(ask("hi"), ctx)
        assert caught.value.retry_after == 1
    with pytest.raises(ProviderRateLimited):
        await provider.embed(EmbeddingRequest(model="mock-embed", input="x"), ctx)


async def test_fail_rate_zero_never_fails(
    make_provider: Callable[..., MockProvider], ctx: CallContext
) -> None:
    assert all(await _outcomes(make_provider(fail_rate=0.0), ctx, 50))


async def test_embedding_directives(provider: MockProvider, ctx: CallContext) -> None:
    with pytest.raises(ProviderUnavailable):
        await provider.embed(EmbeddingRequest(model="e", input=["fine", "[mock:status=503]"]), ctx)
    with anyio.move_on_after(0.05) as scope:
        await provider.embed(EmbeddingRequest(model="e", input="[mock:hang]"), ctx)
    assert scope.cancelled_caught
