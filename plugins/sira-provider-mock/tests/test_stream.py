from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from sira_kernel.providers import CallContext
from sira_kernel.types import ChatRequest, Finish, StreamStart, TextDelta, Usage

from sira_provider_mock import MockProvider

pytestmark = pytest.mark.anyio

Ask = Callable[..., ChatRequest]
Collect = Callable[..., Any]


async def test_event_order(provider: MockProvider, ctx: CallContext, ask: Ask, collect: Collect) -> None:
    events = await collect(provider, ask("Hello there"))
    start, *deltas, finish, usage = events
    assert isinstance(start, StreamStart)
    assert start.id.startswith("chatcmpl-mock-") and start.model == "mock-1-upstream" and start.created > 0
    assert all(isinstance(d, TextDelta) for d in deltas)
    assert [d.text for d in deltas] == ["This ", "is ", "a ", "mock ", "reply ", "to: ", "Hello ", "there"]
    assert finish == Finish(reason="stop", index=0)
    assert usage == Usage(prompt_tokens=2, completion_tokens=8, total_tokens=10)


async def test_n_choices_stream_interleaved(provider: MockProvider, ask: Ask, collect: Collect) -> None:
    events = await collect(provider, ask("hi", n=2))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert [d.index for d in deltas[:4]] == [0, 1, 0, 1]
    assert [e.index for e in events if isinstance(e, Finish)] == [0, 1]
    assert isinstance(events[-1], Usage) and events[-1].completion_tokens == len(deltas)


async def test_length_finish_in_stream(provider: MockProvider, ask: Ask, collect: Collect) -> None:
    events = await collect(provider, ask("hello", max_tokens=2))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["This ", "is "]
    assert Finish(reason="length") in events


async def _arrival_times(
    provider: MockProvider, request: ChatRequest, ctx: CallContext
) -> list[tuple[Any, float]]:
    started = anyio.current_time()
    return [(event, anyio.current_time() - started) async for event in provider.stream(request, ctx)]


async def test_tokens_are_spread_over_time(
    make_provider: Callable[..., MockProvider], ctx: CallContext, ask: Ask
) -> None:
    provider = make_provider(pace_ms=20, first_token_ms=40)
    timed = await _arrival_times(provider, ask("[mock:tokens=5]"), ctx)
    start_at = next(t for e, t in timed if isinstance(e, StreamStart))
    delta_times = [t for e, t in timed if isinstance(e, TextDelta)]
    assert start_at >= 0.035
    assert len(delta_times) == 5
    gaps = [b - a for a, b in zip(delta_times, delta_times[1:], strict=False)]
    assert all(gap >= 0.015 for gap in gaps), gaps
    assert delta_times[-1] - delta_times[0] < 0.5


async def test_pace_directive_overrides_config(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    timed = await _arrival_times(provider, ask("[mock:pace_ms=15] [mock:tokens=4]"), ctx)
    delta_times = [t for e, t in timed if isinstance(e, TextDelta)]
    assert delta_times[-1] - delta_times[0] >= 3 * 0.015 - 0.005


async def test_first_token_directive(provider: MockProvider, ctx: CallContext, ask: Ask) -> None:
    timed = await _arrival_times(provider, ask("[mock:first_token_ms=30] hi"), ctx)
    assert timed[0][1] >= 0.025


async def test_closing_the_stream_midway(
    make_provider: Callable[..., MockProvider], ctx: CallContext, ask: Ask
) -> None:
    provider = make_provider(pace_ms=1000)
    stream = provider.stream(ask("[mock:tokens=100]"), ctx)
    with anyio.fail_after(2):
        assert isinstance(await stream.__anext__(), StreamStart)
        assert isinstance(await stream.__anext__(), TextDelta)
        await stream.aclose()  # suspended at a yield: returns at once


async def test_stream_cancelled_while_pacing(
    make_provider: Callable[..., MockProvider], ctx: CallContext, ask: Ask
) -> None:
    provider = make_provider(pace_ms=1000)
    received: list[Any] = []
    with anyio.move_on_after(0.1) as scope:
        async for event in provider.stream(ask("[mock:tokens=100]"), ctx):
            received.append(event)
    assert scope.cancelled_caught
    assert len(received) == 2
