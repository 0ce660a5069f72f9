"""Test helpers for provider adapters: fixtures, request builders, stream helpers and test suites.

The bundled adapters' tests use them, and so can a third-party adapter's. Against a fake upstream
(:mod:`sira_kernel.testing.loopback` and its subclasses), a ``conftest.py`` gets its fixtures from
:func:`adapter_fixtures`::

    anyio_backend, fake, open_provider, provider = adapter_fixtures(
        lambda: FakeOpenAIUpstream(api_key=API_KEY),
        lambda config: MyProvider("mine", MyConfig(**config)),
        api_key=API_KEY,
        defaults={"models": ["gpt-4o-mini"]},
    )

and a test module inherits the suites every adapter over :mod:`sira_kernel.upstream` must pass::

    class TestUpstreamFailures(UpstreamFailureSuite):
        model = "gpt-4o-mini"

    class TestPluginContract(ProviderPluginContract):
        plugin_class = MyProviderPlugin
        entry_point = "provider-mine"
        model = "gpt-4o-mini"

        def plugin_config(self, fake: Any, **keys: Any) -> MyConfig:
            return MyConfig(base_url=fake.base_url, api_key=Secret(str(fake.api_key)), **keys)

A stream parser is tested against every byte split of recorded streams by :class:`StreamSplitSuite`
(or with :func:`byte_splits`, a hypothesis strategy, and :func:`split_at` directly).
"""

from __future__ import annotations

import importlib.metadata
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar, TypeAlias

import anyio
import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .. import hookspecs
from ..config import KernelConfig, Secret, parse_config, validate_section
from ..context import PluginContext
from ..errors import ProviderRateLimited, ProviderRejected, ProviderTimeout, ProviderUnavailable
from ..providers import CallContext, Provider
from ..registrations import ProviderRegistrar, Staged
from ..sse import SSEDecoder
from ..types import ChatRequest, Message, StreamError, StreamEvent, StreamStart, TextDelta, ToolCallDelta
from .loopback import Fault, LoopbackUpstream, RecordedRequest

__all__ = [
    "LONG_TEXT",
    "SSE_DECODER_CASES",
    "TOOLS",
    "UNICODE_TEXT",
    "GeneratedStream",
    "OpenProvider",
    "ProviderPluginContract",
    "StreamSplitSuite",
    "UpstreamFailureSuite",
    "adapter_fixtures",
    "byte_splits",
    "call_context",
    "chat_request",
    "collect",
    "decode_sse",
    "generated_sse_streams",
    "plugin_context",
    "register_providers",
    "split_at",
    "text_of",
    "tool_calls",
]

#: 41 words: a reply long enough to stream for a while.
LONG_TEXT = " ".join(f"word{i}" for i in range(40))
#: Multibyte text: byte splits land inside its characters.
UNICODE_TEXT = "héllo wörld 日本語 🎉 naïve"

#: Two OpenAI-format function tools, ``get_weather`` and ``get_time``, without parameters: the fakes
#: call the first (and, for parallel calls, the second) with ``{"location": "Paris"}`` / ``"Tokyo"``.
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
    for name in ("get_weather", "get_time")
]

#: ``async with open_provider(**config) as provider``: a started provider aimed at the fake.
OpenProvider: TypeAlias = Callable[..., AbstractAsyncContextManager[Any]]


# -- building calls and reading streams -------------------------------------------------------------


def call_context(model: str, **limits: Any) -> CallContext:
    """A :class:`CallContext` for ``model`` (request id ``req-test``); ``limits`` are its timeouts etc."""
    return CallContext(upstream_model=model, request_id="req-test", **limits)


def chat_request(text: str = "hello there", *, model: str = "public-model", **fields: Any) -> ChatRequest:
    """A one-message chat request from the user saying ``text``."""
    return ChatRequest(model=model, messages=[Message(role="user", content=text)], **fields)


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    """Every event of a stream."""
    return [event async for event in events]


def text_of(events: Iterable[StreamEvent], index: int = 0) -> str:
    """The text choice ``index`` streamed."""
    return "".join(e.text for e in events if isinstance(e, TextDelta) and e.index == index)


def tool_calls(events: Iterable[StreamEvent]) -> dict[tuple[int, int], dict[str, Any]]:
    """Streamed tool calls reassembled per ``(choice, call_index)`` the way a client does:
    ``{"id", "name", "arguments"}`` (``id``/``name`` only when sent)."""
    calls: dict[tuple[int, int], dict[str, Any]] = defaultdict(lambda: {"arguments": ""})
    for event in events:
        if isinstance(event, ToolCallDelta):
            call = calls[(event.index, event.call_index)]
            if event.id is not None:
                call["id"] = event.id
            if event.name is not None:
                call["name"] = event.name
            call["arguments"] += event.arguments
    return dict(calls)


# -- fixtures ---------------------------------------------------------------------------------------


def adapter_fixtures(
    make_fake: Callable[[], LoopbackUpstream],
    make_provider: Callable[[dict[str, Any]], AbstractAsyncContextManager[Any]],
    *,
    api_key: str,
    defaults: Mapping[str, Any],
) -> tuple[Any, Any, Any, Any]:
    """The fixtures an adapter's ``conftest.py`` needs, in this order:

    ``anyio_backend`` (asyncio: aiohttp runs on asyncio only); ``fake``: a started
    ``make_fake()`` per test; ``open_provider``: ``async with open_provider(**config) as provider``
    opens ``make_provider(config)`` with ``base_url`` and ``api_key`` defaulting to the fake's;
    ``provider``: one opened with ``defaults``.
    """

    @pytest.fixture(name="anyio_backend")
    def anyio_backend() -> str:
        return "asyncio"

    @pytest.fixture(name="fake")
    def fake() -> Iterator[LoopbackUpstream]:
        with make_fake() as server:
            yield server

    @pytest.fixture(name="open_provider")
    def open_provider(fake: LoopbackUpstream) -> OpenProvider:
        @asynccontextmanager
        async def open_(**config: Any) -> AsyncIterator[Any]:
            config.setdefault("base_url", fake.base_url)
            config.setdefault("api_key", Secret(api_key))
            async with make_provider(config) as provider:
                yield provider

        return open_

    @pytest.fixture(name="provider")
    async def provider(open_provider: OpenProvider) -> AsyncIterator[Any]:
        async with open_provider(**defaults) as started:
            yield started

    return anyio_backend, fake, open_provider, provider


def plugin_context(plugin_id: str, config: KernelConfig | None = None) -> PluginContext:
    """The context a plugin's ``sira_lifespan`` gets, without a kernel behind it (``config`` only)."""
    kernel: Any = SimpleNamespace(config=config or KernelConfig())
    return PluginContext(kernel, plugin_id, None)


def register_providers(plugin: Any, owner: str) -> list[Provider]:
    """What ``plugin.sira_register_providers`` registers for the plugin instance ``owner``."""
    staged = Staged(owner=owner)
    plugin.sira_register_providers(ProviderRegistrar(staged))
    return staged.providers


# -- byte streams -----------------------------------------------------------------------------------


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at every offset in ``cuts`` (in any order, repeats ignored)."""
    pieces, start = [], 0
    for cut in sorted(set(cuts)):
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    return pieces


def byte_splits(data: bytes, *, max_cuts: int = 40) -> st.SearchStrategy[list[bytes]]:
    """A hypothesis strategy: ``data`` cut into chunks anywhere, always also around every byte of
    one place (so CRLF pairs and multibyte characters get split)."""
    size = len(data)
    cuts = st.lists(st.integers(0, size), max_size=max_cuts)
    around = st.integers(0, size).map(lambda at: [at, at + 1, at + 2, at + 3])
    return st.builds(lambda c, a: split_at(data, [x for x in c + a if x <= size]), cuts, around)


def decode_sse(chunks: Iterable[bytes]) -> list[tuple[str, bytes]]:
    """The ``(event, data)`` pairs one :class:`~sira_kernel.sse.SSEDecoder` makes of ``chunks``."""
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


#: ``(stream, events)``: the event-stream rules an SSE decoder follows, one case each.
SSE_DECODER_CASES: list[tuple[bytes, list[tuple[str, bytes]]]] = [
    (b"data: x\n\n", [("", b"x")]),
    (b"data: x\r\n\r\n", [("", b"x")]),
    (b"data:x\n\n", [("", b"x")]),  # the space after the colon is optional
    (b"data:  x\n\n", [("", b" x")]),  # only one space is stripped
    (b"data: a\ndata: b\n\n", [("", b"a\nb")]),
    (b"data: a\r\ndata: b\r\n\r\n", [("", b"a\nb")]),
    (b"data\n\n", [("", b"")]),  # a field with no colon has an empty value
    (b"data:\n\n", [("", b"")]),
    (b": comment\n\n", []),  # no data, no event
    (b": comment\r\n\r\n", []),
    (b"event: ping\n\n", []),  # an event name without data is not dispatched
    (b"event: error\ndata: {}\n\n", [("error", b"{}")]),
    (b"event: a\ndata: 1\n\ndata: 2\n\n", [("a", b"1"), ("", b"2")]),  # the name resets
    (b"id: 1\nretry: 5\ndata: x\n\n", [("", b"x")]),
    (b"\xef\xbb\xbfdata: x\n\n", [("", b"x")]),  # a leading BOM is ignored
    (b"\xef\xbb\xbfevent: e\ndata: x\n\n", [("e", b"x")]),
    (b"data: x\r\rdata: y\r\n\r\n", [("", b"x"), ("", b"y")]),
    (b"data: x\n", []),  # unterminated at the end: discarded
    (b"data: x\r\n", []),
    (b"data: [DONE]\n\n", [("", b"[DONE]")]),
]


@dataclass(frozen=True)
class GeneratedStream:
    """An event stream made up by :func:`generated_sse_streams`, cut into ``chunks``."""

    chunks: list[bytes]
    events: list[tuple[str, bytes]]
    """What a decoder must make of it."""


def generated_sse_streams(
    names: Iterable[str] = ("", "message", "error"), *, max_events: int = 8
) -> st.SearchStrategy[GeneratedStream]:
    """A hypothesis strategy: streams of events (named from ``names``, multi-line data, comment lines
    before some) with ``\\n``, ``\\r\\n`` or ``\\r`` line endings, cut anywhere."""
    line = st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=30)
    event = st.tuples(st.sampled_from(list(names)), st.lists(line, min_size=1, max_size=3), st.booleans())

    @st.composite
    def streams(draw: Any) -> GeneratedStream:
        newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
        text, expected = "", []
        for name, lines, comment in draw(st.lists(event, max_size=max_events)):
            if comment:
                text += f": comment{newline}"
            if name:
                text += f"event: {name}{newline}"
            text += "".join(f"data: {line}{newline}" for line in lines) + newline
            expected.append((name, "\n".join(lines).encode()))
        stream = text.encode()
        cuts = draw(st.lists(st.integers(0, len(stream)), max_size=30))
        return GeneratedStream(split_at(stream, cuts), expected)

    result: st.SearchStrategy[GeneratedStream] = streams()
    return result


# -- suites -----------------------------------------------------------------------------------------


class StreamSplitSuite:
    """Every byte split of a recorded stream parses like the whole stream, and decodes to the same
    server-sent events.

    Inherit it in a ``Test…`` class of a module with a module-scoped ``recorded`` fixture (stream
    bodies: the fake's, checked-in fixtures, variants with CRLF and comments) and give the class a
    static ``parse(chunks)`` that feeds the adapter's parser and returns what it made (asserting the
    stream was complete).
    """

    @staticmethod
    def parse(chunks: Iterable[bytes]) -> Any:
        raise NotImplementedError

    def test_any_split_of_a_recorded_stream_yields_the_same_events(self, recorded: list[bytes]) -> None:
        # A fresh hypothesis test per call: one shared across subclasses would run on different
        # executors (hypothesis refuses that).
        @settings(max_examples=150, deadline=None)
        @given(data=st.data())
        def any_split(data: st.DataObject) -> None:
            stream = data.draw(st.sampled_from(recorded))
            chunks = data.draw(byte_splits(stream))
            assert self.parse(chunks) == self.parse([stream])
            assert decode_sse(chunks) == decode_sse([stream])

        any_split()

    def test_byte_by_byte(self, recorded: list[bytes]) -> None:
        for stream in recorded:
            assert self.parse([stream[i : i + 1] for i in range(len(stream))]) == self.parse([stream])


class UpstreamFailureSuite:
    """Tests every adapter over :mod:`sira_kernel.upstream` must pass against its fake: deadlines,
    broken connections and bodies, size limits, releasing the upstream, Retry-After, secrets.

    Inherit it in a ``Test…`` class of a module whose conftest has :func:`adapter_fixtures`' fixtures
    and set ``model`` (a chat model the fake serves). ``events_before_text``: stream events the fake
    sends before the first text (a role chunk, ``message_start``…); ``stream_timeout``: a total
    timeout that passes in the middle of a ``LONG_TEXT`` stream paced at 0.1 s; ``first_text_within``:
    seconds to the first text of a stream paced at 0.15 s; ``max_message``: a bound on an error
    message quoting a long upstream message.
    """

    pytestmark: ClassVar[Any] = pytest.mark.anyio
    model: ClassVar[str]
    events_before_text: ClassVar[int] = 1
    stream_timeout: ClassVar[float] = 0.45
    first_text_within: ClassVar[float] = 0.5
    max_message: ClassVar[int] = 600

    def ctx(self, **limits: Any) -> CallContext:
        return call_context(self.model, **limits)

    # -- Retry-After and secrets --------------------------------------------------------------------

    async def test_429_with_retry_after_seconds(self, provider: Any, fake: LoopbackUpstream) -> None:
        fake.enqueue(Fault(status=429, retry_after=7), Fault(status=429, retry_after=1.5))
        with pytest.raises(ProviderRateLimited) as caught:
            await provider.chat(chat_request(), self.ctx())
        assert (caught.value.status, caught.value.retry_after) == (429, 7.0)
        with pytest.raises(ProviderRateLimited) as caught:
            await collect(provider.stream(chat_request(), self.ctx()))
        assert caught.value.retry_after == 1.5

    async def test_429_with_retry_after_http_date_or_ms(self, provider: Any, fake: LoopbackUpstream) -> None:
        import email.utils

        when = email.utils.formatdate(time.time() + 30, usegmt=True)
        fake.enqueue(Fault(status=429, headers={"Retry-After": when}))
        with pytest.raises(ProviderRateLimited) as caught:
            await provider.chat(chat_request(), self.ctx())
        assert caught.value.retry_after is not None and 27 <= caught.value.retry_after <= 31
        fake.enqueue(Fault(status=429, retry_after=9, headers={"retry-after-ms": "250"}))
        with pytest.raises(ProviderRateLimited) as caught:
            await provider.chat(chat_request(), self.ctx())
        assert caught.value.retry_after == 0.25

    async def test_error_messages_never_echo_secrets(self, open_provider: OpenProvider, fake: Any) -> None:
        key = str(fake.api_key)
        async with open_provider(headers={"X-Proxy-Token": "proxy-secret-123"}) as provider:
            fake.enqueue(Fault(status=400, message=f"bad header proxy-secret-123 with key {key}" + "x" * 2000))
            with pytest.raises(ProviderRejected) as caught:
                await provider.chat(chat_request(), self.ctx())
        message = caught.value.message
        assert "proxy-secret-123" not in message and key not in message
        assert len(message) < self.max_message

    async def test_wrong_key_against_a_real_check(self, open_provider: OpenProvider) -> None:
        async with open_provider(api_key=Secret("wrong-key-abcdefghij")) as provider:
            with pytest.raises(ProviderRejected) as caught:
                await provider.chat(chat_request(), self.ctx())
        assert (caught.value.status, caught.value.code) == (502, "upstream_auth_failed")
        assert "wrong-key" not in caught.value.message

    # -- deadlines ----------------------------------------------------------------------------------

    async def test_hang_hits_the_first_token_timeout(self, provider: Any, fake: LoopbackUpstream) -> None:
        fake.enqueue(Fault(hang=True), Fault(hang=True))
        started = time.monotonic()
        with pytest.raises(ProviderTimeout) as caught:
            await provider.chat(chat_request(), self.ctx(first_token_timeout=0.2))
        assert caught.value.status == 504
        with pytest.raises(ProviderTimeout):
            await collect(provider.stream(chat_request(), self.ctx(first_token_timeout=0.2)))
        assert time.monotonic() - started < 2

    async def test_slow_headers_hit_the_total_timeout(self, provider: Any, fake: LoopbackUpstream) -> None:
        fake.enqueue(Fault(delay=2))
        with pytest.raises(ProviderTimeout):
            await provider.chat(chat_request(), self.ctx(first_token_timeout=5, total_timeout=0.2))

    async def test_slow_body_hits_the_total_timeout(self, provider: Any, fake: LoopbackUpstream) -> None:
        fake.enqueue(Fault(first_token_delay=2))  # headers now, body later
        with pytest.raises(ProviderTimeout):
            await provider.chat(chat_request(), self.ctx(total_timeout=0.3))

    async def test_slow_first_event_raises_before_the_stream_starts(
        self, provider: Any, fake: LoopbackUpstream
    ) -> None:
        fake.enqueue(Fault(first_token_delay=2))
        stream = provider.stream(chat_request(), self.ctx(first_token_timeout=0.2))
        with pytest.raises(ProviderTimeout):
            await stream.__anext__()
        assert await fake.wait_until_async(lambda: fake.open_streams == 0)

    async def test_total_timeout_mid_stream_is_a_stream_error(self, provider: Any, fake: LoopbackUpstream) -> None:
        fake.enqueue(Fault(chunk_delay=0.1))
        events = await collect(provider.stream(chat_request(LONG_TEXT), self.ctx(total_timeout=self.stream_timeout)))
        assert isinstance(events[0], StreamStart)
        assert any(isinstance(e, TextDelta) for e in events)
        error = events[-1]
        assert isinstance(error, StreamError)
        assert (error.status, error.code) == (504, "upstream_timeout")
        assert await fake.wait_until_async(lambda: fake.aborted_streams == 1 and fake.open_streams == 0)

    async def test_config_timeouts_only_tighten(self, open_provider: OpenProvider, fake: LoopbackUpstream) -> None:
        async with open_provider(first_token_timeout=0.2, total_timeout=900) as provider:
            for limits, named in (
                ({"first_token_timeout": 60}, "0.2s"),  # the config's tighter limit wins
                ({"first_token_timeout": 0.1}, "0.1s"),  # the kernel's tighter limit wins
                ({"first_token_timeout": 60, "total_timeout": 0.15}, "0.15s"),  # the deadline that passed
            ):
                fake.enqueue(Fault(hang=True))
                with pytest.raises(ProviderTimeout) as caught:
                    await provider.chat(chat_request(), self.ctx(**limits))
                assert f"within {named}" in caught.value.message

    # -- broken connections and bodies --------------------------------------------------------------

    async def test_reset_is_unavailable(self, provider: Any, fake: LoopbackUpstream) -> None:
        fake.enqueue(Fault(reset=True), Fault(reset=True))
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.chat(chat_request(), self.ctx())
        assert type(caught.value) is ProviderUnavailable and caught.value.status == 502
        with pytest.raises(ProviderUnavailable):
            await collect(provider.stream(chat_request(), self.ctx()))
        response = await provider.chat(chat_request("again"), self.ctx())  # the pool recovers
        assert response.choices[0].message.content == "Echo: again"

    async def test_connection_refused_is_unavailable_not_a_timeout(self, open_provider: OpenProvider) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # bound, never listening: connections are refused
            async with open_provider(base_url=f"http://127.0.0.1:{port}") as provider:
                provider.name = "down"
                with pytest.raises(ProviderUnavailable) as caught:
                    await provider.chat(chat_request(), self.ctx())
        assert type(caught.value) is ProviderUnavailable
        assert caught.value.provider == "down"

    async def test_truncated_body_is_unavailable(self, provider: Any, fake: LoopbackUpstream) -> None:
        fake.enqueue(Fault(drop_after=40))
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.chat(chat_request(), self.ctx())
        assert type(caught.value) is ProviderUnavailable

    async def test_mid_stream_drop_is_a_stream_error(self, provider: Any, fake: LoopbackUpstream) -> None:
        fake.enqueue(Fault(drop_after=self.events_before_text + 2))
        events = await collect(provider.stream(chat_request(LONG_TEXT), self.ctx()))
        assert isinstance(events[0], StreamStart)
        assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta("Echo:"), TextDelta(" word0")]
        error = events[-1]
        assert isinstance(error, StreamError)
        assert (error.status, error.code) == (502, "upstream_unavailable")
        assert fake.dropped_streams == 1

    async def test_drop_before_the_first_event_raises(self, provider: Any, fake: LoopbackUpstream) -> None:
        fake.enqueue(Fault(drop_after=0))
        with pytest.raises(ProviderUnavailable):
            await collect(provider.stream(chat_request(), self.ctx()))

    async def test_response_too_large(self, provider: Any, fake: LoopbackUpstream) -> None:
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.chat(chat_request(LONG_TEXT), self.ctx(max_response_bytes=200))
        assert "larger than 200 bytes" in caught.value.message
        fake.enqueue(Fault(chunk_delay=0.01))  # so that the limit is crossed after the stream started
        events = await collect(provider.stream(chat_request(LONG_TEXT), self.ctx(max_response_bytes=2000)))
        assert isinstance(events[0], StreamStart)
        assert isinstance(events[-1], StreamError) and "larger than 2000 bytes" in events[-1].message

    async def test_not_started_is_unavailable(self, open_provider: OpenProvider) -> None:
        async with open_provider() as provider:
            pass
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.chat(chat_request(), self.ctx())
        assert "is not started" in caught.value.message

    # -- streams and the connection pool ------------------------------------------------------------

    async def test_events_arrive_before_the_upstream_finishes(self, provider: Any, fake: LoopbackUpstream) -> None:
        fake.enqueue(Fault(chunk_delay=0.15))
        started = time.monotonic()
        stream = provider.stream(chat_request("one two three four"), self.ctx())
        seen: list[StreamEvent] = []
        async for event in stream:
            seen.append(event)
            if isinstance(event, TextDelta):
                break
        first_text_after = time.monotonic() - started
        assert fake.open_streams == 1 and fake.completed_streams == 0  # the upstream is still writing
        assert first_text_after < self.first_text_within
        rest = await collect(stream)
        assert text_of(seen + rest) == "Echo: one two three four"

    async def test_stream_keeps_the_connection_for_reuse(self, provider: Any, fake: LoopbackUpstream) -> None:
        for _ in range(5):
            events = await collect(provider.stream(chat_request(), self.ctx()))
            assert not any(isinstance(e, StreamError) for e in events)
        await provider.chat(chat_request(), self.ctx())
        assert fake.connections_open == 1  # every stream read to its end: back to the pool

    async def test_early_aclose_releases_the_upstream_stream(self, provider: Any, fake: LoopbackUpstream) -> None:
        fake.enqueue(Fault(chunk_delay=0.05))
        stream = provider.stream(chat_request(LONG_TEXT), self.ctx())
        seen = [await stream.__anext__() for _ in range(3)]
        assert isinstance(seen[0], StreamStart)
        assert fake.open_streams == 1
        await stream.aclose()
        assert await fake.wait_until_async(lambda: fake.aborted_streams == 1 and fake.open_streams == 0)
        assert fake.completed_streams == 0
        assert (await provider.chat(chat_request("ok"), self.ctx())).choices[0].message.content == "Echo: ok"

    async def test_cancelled_consumer_releases_the_upstream_stream(self, provider: Any, fake: LoopbackUpstream) -> None:
        fake.enqueue(Fault(chunk_delay=0.05))
        seen: list[StreamEvent] = []
        with anyio.move_on_after(0.3):
            async for event in provider.stream(chat_request(LONG_TEXT), self.ctx()):
                seen.append(event)
        assert 2 < len(seen) < 40
        assert await fake.wait_until_async(lambda: fake.aborted_streams == 1 and fake.open_streams == 0)

    async def test_hanging_request_cancelled_by_the_caller(self, provider: Any, fake: LoopbackUpstream) -> None:
        fake.enqueue(Fault(hang=True))
        with anyio.move_on_after(0.2) as scope:
            await provider.chat(chat_request(), self.ctx())
        assert scope.cancelled_caught
        assert await fake.wait_until_async(lambda: fake.connections_open == 0)


class ProviderPluginContract:
    """Tests of the plugin contract the kernel relies on, for a provider plugin class that owns one
    provider as ``plugin.provider`` (the bundled ones do).

    Inherit it in a ``Test…`` class; set ``plugin_class``, ``entry_point`` (the distribution's entry
    point name) and ``model`` (a chat model the fake serves), and implement :meth:`plugin_config`.
    """

    pytestmark: ClassVar[Any] = pytest.mark.anyio
    plugin_class: ClassVar[type[Any]]
    entry_point: ClassVar[str]
    model: ClassVar[str]

    def plugin_config(self, fake: Any, **keys: Any) -> Any:
        """The plugin's config aimed at ``fake`` (its base URL and key), with ``keys`` set."""
        raise NotImplementedError

    def sent_model(self, request: RecordedRequest) -> str:
        """The upstream model a recorded chat request asked for."""
        return str(request.json["model"])

    def test_entry_point(self) -> None:
        entries = importlib.metadata.entry_points(group="sira_kernel.plugins")
        [entry] = [e for e in entries if e.name == self.entry_point]
        assert entry.load() is self.plugin_class

    def test_class_contract(self) -> None:
        plugin = self.plugin_class
        assert plugin.sira_api == 1
        assert isinstance(plugin.Config, type) and plugin.Config.__doc__
        assert plugin.requires == () and plugin.provides == ()
        assert plugin.__doc__
        assert isinstance(plugin(plugin.Config()).provider, Provider)

    def test_hooks_match_the_kernel_hookspecs(self) -> None:
        manager = pluggy.PluginManager(hookspecs.PROJECT)
        manager.add_hookspecs(hookspecs)
        plugin = self.plugin_class(self.plugin_class.Config())
        manager.register(plugin, name=self.entry_point)
        manager.check_pending()
        hooks = {caller.name for caller in manager.get_hookcallers(plugin) or []}
        assert hooks == {"sira_lifespan", "sira_register_providers"}

    def test_instances_from_kernel_toml(self) -> None:
        kernel_config = parse_config(
            {
                "kernel": {"plugins": [self.entry_point, "second"]},
                "plugins": {
                    self.entry_point: {"models": [self.model]},
                    "second": {"use": self.entry_point, "base_url": "https://second.example", "models": ["x"]},
                },
            }
        )
        assert kernel_config.entry_point_for("second") == self.entry_point
        section = kernel_config.plugin_section("second")
        config = validate_section(self.plugin_class.Config, section, "plugins.second")
        assert (config.base_url, config.models) == ("https://second.example", ["x"])

    async def test_lifespan_then_registration(self, fake: Any) -> None:
        plugin = self.plugin_class(self.plugin_config(fake, models=[self.model]))
        async with plugin.sira_lifespan(plugin_context("upstream-a")):
            [provider] = register_providers(plugin, "upstream-a")
            assert provider.name == "upstream-a"
            assert isinstance(provider, Provider)
            response = await provider.chat(chat_request("hi"), call_context(self.model))
            assert response.choices[0].message.content == "Echo: hi"
        with pytest.raises(ProviderUnavailable) as caught:  # the lifespan closed the client
            await provider.chat(chat_request("hi"), call_context(self.model))
        assert caught.value.provider == "upstream-a"

    async def test_two_instances_coexist(self, fake: Any) -> None:
        first = self.plugin_class(self.plugin_config(fake, models=["a"]))
        second = self.plugin_class(self.plugin_config(fake, models=["b"]))
        async with first.sira_lifespan(plugin_context("one")), second.sira_lifespan(plugin_context("two")):
            [provider_a] = register_providers(first, "one")
            [provider_b] = register_providers(second, "two")
            assert (provider_a.name, provider_b.name) == ("one", "two")
            assert provider_a is not provider_b
            assert [m.id for m in provider_a.models()] == ["a"]
            await provider_b.chat(chat_request("hi"), call_context("b"))
        assert self.sent_model(fake.requests[-1]) == "b"
