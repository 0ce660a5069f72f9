"""EventBatches (a provider stream read a read at a time) and ChatStream.batches() on top of it."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec
import pytest

from sira_kernel import (
    CallContext,
    ChatRequest,
    Finish,
    Message,
    RequestInfo,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    Usage,
    hookimpl,
)
from sira_kernel.providers import EventBatches
from sira_kernel.registrations import ProviderRegistrar
from sira_kernel.testing import FakeProvider, FakeProviderPlugin, make_kernel

pytestmark = pytest.mark.anyio

INFO = RequestInfo(method="POST", path="/v1/chat/completions", headers={}, request_id="req-test")
START = StreamStart(id="s1", model="m")


def reads(*batches: list[StreamEvent], closed: list[bool] | None = None) -> EventBatches:
    async def generate() -> AsyncGenerator[list[StreamEvent], None]:
        try:
            for batch in batches:
                yield batch
        finally:
            if closed is not None:
                closed.append(True)

    return EventBatches(generate())


async def test_iterating_yields_every_event_in_order() -> None:
    events = reads([START, TextDelta("a")], [], [TextDelta("b"), Finish("stop")])
    assert [e async for e in events] == [START, TextDelta("a"), TextDelta("b"), Finish("stop")]


async def test_next_batch_returns_what_arrived_together_and_mixes_with_iteration() -> None:
    events = reads([START, TextDelta("a"), TextDelta("b")], [TextDelta("c")], [Finish("stop")])
    assert await events.__anext__() == START
    assert events.take_pending() == [TextDelta("a"), TextDelta("b")]  # the rest of the first read
    assert events.take_pending() == []
    assert await events.next_batch() == [TextDelta("c")]
    assert await events.__anext__() == Finish("stop")
    with pytest.raises(StopAsyncIteration):
        await events.next_batch()


async def test_next_batch_after_a_partly_iterated_batch_returns_its_rest() -> None:
    events = reads([START, TextDelta("a"), TextDelta("b")])
    await events.__anext__()
    assert await events.next_batch() == [TextDelta("a"), TextDelta("b")]
    with pytest.raises(StopAsyncIteration):
        await events.__anext__()


async def test_aclose_closes_the_generator() -> None:
    closed: list[bool] = []
    events = reads([START], [TextDelta("a")], closed=closed)
    await events.__anext__()
    await events.aclose()
    assert closed == [True]


class BatchingProvider(FakeProvider):
    """Streams in reads: the StreamStart and two deltas together, then the rest (with ``tail``)."""

    tail: list[StreamEvent] = [TextDelta(" c"), Finish("stop"), Usage(1, 3, 4)]

    def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        async def generate() -> AsyncGenerator[list[StreamEvent], None]:
            yield [StreamStart(id="s1", model=ctx.upstream_model), TextDelta("a"), TextDelta(" b")]
            yield list(self.tail)

        return EventBatches(generate())


class BatchingPlugin(FakeProviderPlugin):
    @hookimpl
    def sira_register_providers(self, register: ProviderRegistrar) -> None:
        self.provider = BatchingProvider(register.owner, self.config.models, self.config.reply, self.config.delay)
        register(self.provider)


def chat() -> ChatRequest:
    return ChatRequest(model="fake-1", messages=[Message("user", "hi")], stream=True)


async def collect(plugin: Any) -> tuple[list[list[StreamEvent]], Any]:
    async with make_kernel({"fake": plugin}) as kernel:
        stream = await kernel.pipeline.stream(chat(), INFO)
        batches = [batch async for batch in stream.batches()]
        await stream.aclose()
        return batches, stream


async def test_chat_stream_batches_follow_the_provider_reads() -> None:
    batches, stream = await collect(BatchingPlugin)
    assert [[type(e).__name__ for e in b] for b in batches] == [
        ["StreamStart", "TextDelta", "TextDelta"], ["TextDelta", "Finish", "Usage"]
    ]
    assert stream.usage == Usage(1, 3, 4)


async def test_a_stream_error_ends_its_batch_and_the_stream() -> None:
    BatchingProvider.tail = [TextDelta(" c"), StreamError(message="boom"), TextDelta(" never")]
    try:
        batches, _ = await collect(BatchingPlugin)
    finally:
        BatchingProvider.tail = [TextDelta(" c"), Finish("stop"), Usage(1, 3, 4)]
    assert batches[-1] == [TextDelta(" c"), StreamError(message="boom")]


async def test_a_provider_that_does_not_batch_gives_one_event_per_batch() -> None:
    batches, _ = await collect(FakeProviderPlugin)
    assert all(len(batch) == 1 for batch in batches)
    assert isinstance(batches[0][0], StreamStart) and isinstance(batches[-1][0], Finish | Usage)
    assert msgspec.structs.asdict(batches[1][0])["text"] == "Hello"
