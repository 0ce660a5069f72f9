"""The provider conformance kit: one suite every provider adapter must pass, through a real kernel.

A provider adapter's tests describe the adapter once, as an :class:`AdapterUnderTest`, and inherit
:class:`ConformanceSuite`::

    from sira_kernel import Capabilities
    from sira_kernel.testing.conformance import AdapterUnderTest, ConformanceSuite
    from sira_kernel.testing.fake_openai import FakeOpenAIUpstream

    class TestConformance(ConformanceSuite):
        adapter = AdapterUnderTest(
            name="provider-tiny",
            plugin=TinyProviderPlugin,
            upstream=lambda: FakeOpenAIUpstream(api_key="sk-test-123456"),
            config=lambda fake: {"base_url": fake.base_url, "api_key": "sk-test-123456", "models": ["gpt-4o-mini"]},
            chat_model="gpt-4o-mini",
            capabilities=Capabilities(vision=True),
        )

Every case runs through a real kernel (:func:`~sira_kernel.testing.make_kernel` with the adapter's
plugin, started and stopped per test) by ``kernel.pipeline.chat`` / ``stream`` / ``embed``, so the
adapter and the kernel's error mapping are checked together, and ends by checking that nothing is
held (no plugin lease, no scheduler reservation). The cases (the columns of :data:`CASES`): text;
stream (``StreamStart`` first, deltas, ``Finish``, ``Usage``); tool calls, single and parallel,
whole and streamed, the streamed arguments reassembling to exactly the whole answer's; images;
embeddings; usage; JSON mode; reasoning; any byte split of the upstream's recorded stream parsing
like the whole (:class:`~sira_kernel.testing.providers.StreamSplitSuite`, hypothesis); each error
class (429, 5xx, 400, 401, a hang, a silent stream, a reset connection); a stream failing mid-way;
a client closing a stream early, which must release the upstream stream and the plugin lease; and
the declared capabilities. A case the adapter cannot do by its own declaration (embeddings when
``capabilities.embeddings`` is false, a fault its fake cannot inject) is skipped with that reason.

Faults are the loopback :class:`~sira_kernel.testing.loopback.Fault`; by default they are queued on
the fake (``enqueue``). An adapter without an upstream (``provider-mock``) gives ``inject``, which
turns a fault into text for the user message (its ``[mock:...]`` directives).

The matrix
----------
Each result is recorded per adapter and case; :meth:`ConformanceSuite.matrix` returns what this
session recorded and :func:`render_matrix` makes the markdown table of ``docs/providers.md``.
``python -m sira_kernel.testing.conformance --write`` runs the conformance tests (by default
``tests/conformance`` and ``examples/provider-acme/tests``) and rewrites the tables between the
``<!-- conformance:NAME:begin -->`` / ``end`` markers of ``docs/providers.md``; ``--check`` exits 1
when the committed tables differ from what the run produced.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import anyio
import httpx
import pytest

from ..auth import RequestInfo
from ..config import validate_section
from ..errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from ..kernel import Kernel
from ..providers import Capabilities, Provider
from ..types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    Finish,
    Message,
    ReasoningDelta,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from . import make_kernel
from .loopback import TOOL_ARGUMENTS, Fault
from .providers import (
    LONG_TEXT,
    TOOLS,
    UNICODE_TEXT,
    StreamSplitSuite,
    call_context,
    register_providers,
    text_of,
    tool_calls,
)

__all__ = [
    "CASES",
    "FAULT_KINDS",
    "PNG_BASE64",
    "SURFACE_CASES",
    "TABLES",
    "WRITING",
    "AdapterUnderTest",
    "Case",
    "ConformanceSuite",
    "case",
    "main",
    "record",
    "render_matrix",
    "update_document",
]

F = TypeVar("F", bound=Callable[..., Any])

INFO = RequestInfo(method="POST", path="/v1/chat/completions", headers={}, surface="conformance")

#: A 1×1 PNG: the image of the vision case (its base64 must reach the upstream verbatim).
PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

#: What a fake may be asked to do (the ``Fault`` fields the suite uses, by kind).
FAULT_KINDS: frozenset[str] = frozenset({"status", "hang", "reset", "drop", "first_token_delay", "chunk_delay"})


@dataclass(frozen=True)
class Case:
    """One column of the matrix: ``key`` (what tests record), ``label`` (the column header) and what
    it checks."""

    key: str
    label: str
    checks: str


#: The provider cases, in the matrix's column order.
CASES: tuple[Case, ...] = (
    Case("text", "text", "a reply with text and finish_reason stop; a system message and several turns"),
    Case("stream", "stream", "StreamStart first and once, deltas, Finish after them, Usage last; same text as chat"),
    Case("tools", "tools", "one tool offered: one call with an id, the name and the arguments (chat and stream)"),
    Case("parallel_tools", "parallel tools", "two tools offered: two calls with distinct ids (chat and stream)"),
    Case("tool_results", "tool results", "the calls and their results sent back are answered with text"),
    Case("streamed_tool_args", "streamed tool args",
         "the fragments reassemble to exactly the JSON the upstream sent; the first carries id and name"),
    Case("length", "max_tokens", "a reply cut by max_tokens finishes with length (chat and stream)"),
    Case("vision", "vision", "an image content part reaches the upstream and is answered"),
    Case("embeddings", "embeddings", "one vector per input, in order, of one dimension"),
    Case("usage", "usage", "prompt, completion and total tokens, consistent, equal in chat and stream"),
    Case("json_mode", "JSON mode", "response_format json_object is accepted and reaches the upstream"),
    Case("reasoning", "reasoning", "reasoning arrives as ReasoningDelta before the text, reasoning_content in chat"),
    Case("reassembly", "any byte split",
         "any split of the upstream's recorded streams (text, tools, reasoning; LF and CRLF) parses like the whole"),
    Case("rate_limited", "429", "ProviderRateLimited with the upstream's retry_after (chat and stream)"),
    Case("unavailable", "5xx", "500 and 503 are ProviderUnavailable, retryable (chat and stream)"),
    Case("rejected", "400", "ProviderRejected with status 400, not retryable (chat and stream)"),
    Case("auth", "401", "ProviderRejected, 502 upstream_auth_failed: the gateway's own key (chat and stream)"),
    Case("timeout", "hang", "ProviderTimeout once the first-token timeout passes, not later (chat and stream)"),
    Case("slow_first_token", "silent stream", "headers then nothing: ProviderTimeout at the first-token timeout"),
    Case("reset", "reset", "a reset connection is ProviderUnavailable (chat and stream)"),
    Case("mid_stream", "mid-stream failure",
         "a stream cut (or an error event) after it started ends with a StreamError, never silently"),
    Case("disconnect", "disconnect releases",
         "closing a stream early, or giving up before its first token, releases the upstream and the lease"),
    Case("capabilities", "capabilities", "the declared capabilities and models are the provider's; undeclared refused"),
)

#: The Anthropic surface (the ``anthropic`` SDK through ``api-anthropic``) in front of an adapter.
SURFACE_CASES: tuple[Case, ...] = (
    Case("text", "text", "messages.create: one text block, end_turn, usage"),
    Case("stream", "stream", "messages.stream: text_stream and the final message agree"),
    Case("tool_stream", "streamed tool use", "messages.stream: tool_use blocks with their input reassembled"),
    Case("error", "upstream error",
         "429, 400, 503 upstream: the SDK's RateLimitError, BadRequestError, APIStatusError"),
    Case("mid_stream", "mid-stream failure", "a stream cut upstream raises in the SDK, never a silent truncation"),
    Case("disconnect", "disconnect releases",
         "the SDK leaving a stream early closes the upstream stream and every lease"),
)

#: The matrices by name: ``providers`` (the suite) and ``anthropic-surface``.
TABLES: dict[str, tuple[Case, ...]] = {"providers": CASES, "anthropic-surface": SURFACE_CASES}


def case(key: str) -> Callable[[F], F]:
    """Mark a test of a :class:`ConformanceSuite` subclass as one of the :data:`CASES` (its results
    go into that column of the matrix)."""

    def mark(function: F) -> F:
        function.conformance_case = key  # type: ignore[attr-defined]
        return function

    return mark


# -- describing an adapter --------------------------------------------------------------------------


def _enqueue(fault: Fault, upstream: Any) -> str:
    upstream.enqueue(fault)
    return ""


@dataclass(frozen=True)
class AdapterUnderTest:
    """What :class:`ConformanceSuite` needs to know about one provider adapter."""

    name: str
    """The plugin id it runs under (and the matrix row)."""
    plugin: type[Any]
    """The plugin class (it is handed to ``make_kernel``, so it shadows an installed one)."""
    config: Callable[[Any], Mapping[str, Any]]
    """The ``[plugins.<name>]`` section aimed at the started fake (``None`` without ``upstream``)."""
    chat_model: str
    """A chat model the plugin serves with this config."""
    capabilities: Capabilities
    """What the adapter declares: cases needing a capability it lacks are skipped, and the provider's
    own ``capabilities`` must be these."""
    upstream: Callable[[], AbstractContextManager[Any]] | None = None
    """Starts the fake upstream (a ``LoopbackUpstream`` is its own context manager); None: no upstream."""
    embedding_model: str | None = None
    """An embedding model it serves (needed when ``capabilities.embeddings``)."""
    vision_model: str | None = None
    """The model for the image case (``chat_model`` by default)."""
    reasoning: Mapping[str, Any] | None = None
    """Request fields (``ChatRequest.extra``) that make the model reason; None: no reasoning case."""
    reasoning_upstream: Callable[[], AbstractContextManager[Any]] | None = None
    """A fake whose answers reason, when ``upstream``'s do not (the reasoning case only)."""
    tool_arguments: tuple[Any, Any] = ({"location": "Paris"}, {"location": "Tokyo"})
    """The decoded arguments of the first and second tool call the fake makes for :data:`TOOLS`."""
    tool_arguments_text: tuple[str, str] | None = TOOL_ARGUMENTS
    """The exact argument text the fake streams for those calls, which the streamed fragments must
    reassemble to byte for byte; None when the wire format carries arguments as objects (the
    adapter encodes them: then the streamed text must equal the non-streamed answer's)."""
    stream_error: Fault | None = None
    """A fault making the fake report an error inside a started stream, in its format's own way
    (Anthropic's ``event: error``); None: only the dropped connection is tried."""
    events_before_text: int = 1
    """Stream events (chunks) the fake sends before the first text (for a drop after two texts)."""
    inject: Callable[[Fault, Any], str] = _enqueue
    """Arrange ``fault`` for the next request to ``upstream``; returns text to append to the user
    message (empty when the fault was queued on the fake)."""
    faults: frozenset[str] = FAULT_KINDS
    """The :data:`FAULT_KINDS` ``inject`` can do; cases needing another are skipped."""
    known_deviations: Mapping[str, str] = field(default_factory=dict)
    """Case keys or test names (``"test_auth[chat]"``) that fail for a known reason: strict xfail."""

    def why_not(self, key: str) -> str | None:
        """Why case ``key`` does not apply to this adapter, from its declarations (None: it does)."""
        caps = self.capabilities
        needs: dict[str, tuple[str, ...]] = {
            "stream": ("stream",), "tools": ("tools",), "parallel_tools": ("tools",), "tool_results": ("tools",),
            "streamed_tool_args": ("tools", "stream"), "vision": ("vision",), "embeddings": ("embeddings",),
            "json_mode": ("json_mode",), "mid_stream": ("stream",), "disconnect": ("stream",),
            "slow_first_token": ("stream",), "reassembly": ("stream",),
        }
        for flag in needs.get(key, ()):
            if not getattr(caps, flag):
                return f"{self.name} declares {flag}=False"
        if key == "embeddings" and self.embedding_model is None:
            return f"{self.name} names no embedding_model"
        if key == "reasoning" and self.reasoning is None:
            return f"{self.name} declares no reasoning"
        kinds = {
            "rate_limited": "status", "unavailable": "status", "rejected": "status", "auth": "status",
            "timeout": "hang", "reset": "reset", "mid_stream": "drop", "slow_first_token": "first_token_delay",
            "disconnect": "chunk_delay",
        }
        kind = kinds.get(key)
        if kind is not None and kind not in self.faults:
            return f"{self.name}'s fake cannot inject {kind!r}"
        return None


# -- recording results ------------------------------------------------------------------------------

_RANK = {"pass": 0, "skip": 1, "xfail": 2, "fail": 3}


class _Recorder:
    """A pytest plugin object (registered on first use) collecting each conformance test's outcome."""

    def __init__(self) -> None:
        self.cells: dict[str, tuple[str, str, str]] = {}
        self.outcomes: dict[str, str] = {}
        self.reasons: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid not in self.cells:
            return
        if report.failed:
            outcome = "fail"
        elif report.skipped:
            outcome = "xfail" if hasattr(report, "wasxfail") else "skip"
            if outcome == "skip" and isinstance(report.longrepr, tuple):
                self.reasons[report.nodeid] = str(report.longrepr[2]).removeprefix("Skipped: ")
        elif report.when == "call":
            outcome = "pass"
        else:
            return
        previous = self.outcomes.get(report.nodeid)
        if previous is None or _RANK[outcome] > _RANK[previous]:
            self.outcomes[report.nodeid] = outcome

    def matrix(self, table: str = "providers") -> dict[str, dict[str, str]]:
        rows: dict[str, dict[str, str]] = {}
        for nodeid, (kind, row, key) in self.cells.items():
            outcome = self.outcomes.get(nodeid)
            if kind != table or outcome is None:
                continue
            cells = rows.setdefault(row, {})
            cells[key] = _combine(cells.get(key), outcome)
        return rows


def _combine(cell: str | None, outcome: str) -> str:
    """A column's outcome over its tests: any failure fails it; skips only count when all skipped."""
    if cell is None:
        return outcome
    if "fail" in (cell, outcome):
        return "fail"
    if "xfail" in (cell, outcome):
        return "xfail"
    if "pass" in (cell, outcome):
        return "pass"
    return "skip"


RECORDER = _Recorder()


def record(request: pytest.FixtureRequest, row: str, key: str, table: str = "providers") -> None:
    """Count the running test in the matrix ``table`` as row ``row``, column ``key`` (the suite does
    it for its own tests; other conformance tests call it from a fixture)."""
    manager = request.config.pluginmanager
    if not manager.is_registered(RECORDER):
        manager.register(RECORDER, "sira-conformance-recorder")
    RECORDER.cells[request.node.nodeid] = (table, row, key)


SYMBOLS = {"pass": "✓", "fail": "✗", "xfail": "✗ known", "skip": "–"}


def render_matrix(matrix: Mapping[str, Mapping[str, str]], cases: Sequence[Case] = CASES) -> str:
    """The markdown table of ``matrix`` (adapter → case key → outcome), one row per case and one
    column per adapter: ✓ passed, ✗ failed, "✗ known" a known deviation
    (strict xfail), – not applicable (skipped); the last column says what the case checks."""
    adapters = sorted(matrix)
    lines = [
        "| case | " + " | ".join(f"`{a}`" for a in adapters) + " | what is checked |",
        "|---|" + "---|" * len(adapters) + "---|",
    ]
    for item in cases:
        cells = [SYMBOLS[matrix[a].get(item.key, "skip")] for a in adapters]
        lines.append(f"| {item.label} | " + " | ".join(cells) + f" | {item.checks} |")
    return "\n".join(lines) + "\n"


def update_document(text: str, table: str, rendered: str) -> str:
    """``text`` with the block between ``<!-- conformance:TABLE:begin -->`` and ``...:end -->``
    replaced by ``rendered`` (``ValueError`` when the markers are missing)."""
    begin, end = f"<!-- conformance:{table}:begin -->", f"<!-- conformance:{table}:end -->"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"no {begin} ... {end} block")
    return text[: start + len(begin)] + "\n" + rendered + text[stop:]


# -- the suite --------------------------------------------------------------------------------------


def _request(model: str, text: str, **fields: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content=text)], **fields)


def _check_order(events: Sequence[StreamEvent]) -> None:
    """The order every stream keeps: one StreamStart first, deltas, Finish after them, Usage last."""
    assert events, "the stream yielded nothing"
    assert isinstance(events[0], StreamStart), f"the first event is {events[0]!r}, not StreamStart"
    assert sum(isinstance(e, StreamStart) for e in events) == 1, "more than one StreamStart"
    errors = [e for e in events if isinstance(e, StreamError)]
    assert not errors, f"the stream failed: {errors[0].message}"
    finishes = [i for i, e in enumerate(events) if isinstance(e, Finish)]
    assert finishes, "no Finish event"
    deltas = [i for i, e in enumerate(events) if isinstance(e, TextDelta | ReasoningDelta | ToolCallDelta)]
    if deltas:
        assert max(deltas) < min(finishes), "a delta came after its Finish"
    usages = [i for i, e in enumerate(events) if isinstance(e, Usage)]
    assert len(usages) <= 1, "more than one Usage event"
    if usages:
        assert usages[0] > max(finishes), "Usage came before Finish"


def _calls(response: ChatResponse) -> list[tuple[str, str, str]]:
    message = response.choices[0].message
    return [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]


class ConformanceSuite(StreamSplitSuite):
    """The tests every provider adapter must pass. Inherit it in a ``Test…`` class and set
    ``adapter`` (an :class:`AdapterUnderTest`); see the module doc.

    Class attributes adjust it: ``first_token_timeout`` and ``total_timeout`` are the kernel's limits
    (the hang cases take ``first_token_timeout`` each); ``timeout_slack`` is how much later than the
    first-token timeout a ``ProviderTimeout`` may come.
    """

    pytestmark: ClassVar[Any] = pytest.mark.anyio
    adapter: ClassVar[AdapterUnderTest]
    first_token_timeout: ClassVar[float] = 0.4
    total_timeout: ClassVar[float] = 10.0
    timeout_slack: ClassVar[float] = 1.5

    @classmethod
    def matrix(cls, table: str = "providers") -> dict[str, dict[str, str]]:
        """What this session recorded so far: adapter → case key → pass / fail / xfail / skip."""
        return RECORDER.matrix(table)

    # -- fixtures -----------------------------------------------------------------------------------

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"  # aiohttp runs on asyncio only

    @pytest.fixture(autouse=True)
    def _conformance_case(self, request: pytest.FixtureRequest) -> None:
        key: str | None = getattr(request.function, "conformance_case", None)
        if key is None:
            return
        adapter = self.adapter
        record(request, adapter.name, key)
        why = adapter.why_not(key)
        if why is not None:
            pytest.skip(why)
        name = request.node.name
        deviation = adapter.known_deviations.get(name, adapter.known_deviations.get(key))
        if deviation is not None:
            request.applymarker(pytest.mark.xfail(reason=deviation, strict=True))

    @pytest.fixture
    def upstream(self, request: pytest.FixtureRequest) -> Iterator[Any]:
        """The started fake (None for an adapter without one)."""
        adapter = self.adapter
        start = adapter.upstream
        if getattr(request.function, "conformance_case", None) == "reasoning" and adapter.reasoning_upstream:
            start = adapter.reasoning_upstream
        if start is None:
            yield None
            return
        with start() as fake:
            yield fake

    @pytest.fixture
    async def kernel(self, upstream: Any) -> AsyncIterator[Kernel]:
        """A kernel running only the adapter's plugin, aimed at ``upstream``; on the way out it checks
        that nothing is held (lease, reservation)."""
        adapter = self.adapter
        config = {
            "kernel": {"stop_timeout": 2.0, "drain_timeout": 2.0},
            "limits": {
                "first_token_timeout": self.first_token_timeout,
                "total_timeout": self.total_timeout,
                "connect_timeout": 2.0,
            },
            "plugins": {adapter.name: dict(adapter.config(upstream))},
        }
        async with make_kernel({adapter.name: adapter.plugin}, config) as kernel:
            states = {p.id: p for p in (await kernel.health()).plugins}
            state = states[adapter.name]
            assert state.state == "active", f"{adapter.name} did not start: {state.reason}"
            yield kernel
            self.assert_nothing_held(kernel)

    # -- helpers ------------------------------------------------------------------------------------

    def assert_nothing_held(self, kernel: Kernel) -> None:
        """No lease on the adapter's plugin, no outstanding scheduler reservation."""
        handle = kernel.plugins.handles[self.adapter.name]
        assert handle.leases == 0, f"{handle.leases} lease(s) on {self.adapter.name} still held"
        assert kernel.scheduler.outstanding == 0, "a scheduler reservation is still outstanding"

    def prompt(self, text: str, upstream: Any, *faults: Fault) -> str:
        """``text`` with ``faults`` arranged for the coming requests (and any text they need)."""
        suffix = "".join(self.adapter.inject(fault, upstream) for fault in faults)
        return text + suffix

    def request(self, text: str, *, model: str | None = None, **fields: Any) -> ChatRequest:
        """A one-message chat request to the adapter's chat model (or ``model``)."""
        return _request(model or self.adapter.chat_model, text, **fields)

    async def stream_events(self, kernel: Kernel, request: ChatRequest) -> list[StreamEvent]:
        """Every event of a stream through the kernel (closed at the end)."""
        stream = await kernel.pipeline.stream(request, INFO)
        try:
            return [event async for event in stream]
        finally:
            await stream.aclose()

    async def failure(self, kernel: Kernel, request: ChatRequest, mode: str) -> ProviderError:
        """The ``ProviderError`` the kernel raises for ``request`` (``mode`` chat or stream)."""
        try:
            if mode == "chat":
                await kernel.pipeline.chat(request, INFO)
            else:
                stream = await kernel.pipeline.stream(request, INFO)
                events = [event async for event in stream]
                await stream.aclose()
                pytest.fail(f"the stream started instead of failing: {events[:3]!r}")
        except ProviderError as exc:
            assert exc.provider == self.adapter.name, f"the error names provider {exc.provider!r}"
            return exc
        pytest.fail("the call succeeded instead of failing")

    def provider(self, kernel: Kernel) -> Provider:
        return kernel.snapshot.route_table.providers[self.adapter.name]

    # -- text and streams ---------------------------------------------------------------------------

    @case("text")
    async def test_text(self, kernel: Kernel) -> None:
        response = await kernel.pipeline.chat(self.request("Say hello"), INFO)
        assert response.id and response.model
        assert len(response.choices) == 1
        choice = response.choices[0]
        assert choice.message.role == "assistant"
        assert isinstance(choice.message.content, str) and choice.message.content
        assert choice.finish_reason == "stop"
        assert not choice.message.tool_calls
        turns = [
            Message(role="system", content="You are terse."),
            Message(role="user", content="Hi"),
            Message(role="assistant", content="Hello."),
            Message(role="user", content="Say hello again"),
        ]
        again = await kernel.pipeline.chat(ChatRequest(model=self.adapter.chat_model, messages=turns), INFO)
        assert again.choices[0].message.content and again.choices[0].finish_reason == "stop"

    @case("length")
    @pytest.mark.parametrize("mode", ["chat", "stream"])
    async def test_max_tokens(self, kernel: Kernel, mode: str) -> None:
        if mode == "stream" and not self.adapter.capabilities.stream:
            pytest.skip(f"{self.adapter.name} declares stream=False")
        request = self.request(LONG_TEXT, max_tokens=3, stream=mode == "stream")
        if mode == "chat":
            response = await kernel.pipeline.chat(request, INFO)
            assert response.choices[0].finish_reason == "length"
            assert response.choices[0].message.content
        else:
            events = await self.stream_events(kernel, request)
            _check_order(events)
            assert [e.reason for e in events if isinstance(e, Finish)] == ["length"]

    @case("stream")
    async def test_stream(self, kernel: Kernel) -> None:
        events = await self.stream_events(kernel, self.request(UNICODE_TEXT, stream=True))
        _check_order(events)
        assert text_of(events), "the stream carried no text"
        assert [e.reason for e in events if isinstance(e, Finish)] == ["stop"]
        whole = await kernel.pipeline.chat(self.request(UNICODE_TEXT), INFO)
        assert text_of(events) == whole.choices[0].message.content, "stream and chat answers differ"

    # -- tools --------------------------------------------------------------------------------------

    @case("tools")
    @pytest.mark.parametrize("mode", ["chat", "stream"])
    async def test_tool_call(self, kernel: Kernel, mode: str) -> None:
        expected = self.adapter.tool_arguments[0]
        request = self.request("What is the weather in Paris?", tools=TOOLS[:1], stream=mode == "stream")
        if mode == "chat":
            response = await kernel.pipeline.chat(request, INFO)
            assert response.choices[0].finish_reason == "tool_calls"
            [(call_id, name, arguments)] = _calls(response)
        else:
            events = await self.stream_events(kernel, request)
            _check_order(events)
            assert [e.reason for e in events if isinstance(e, Finish)] == ["tool_calls"]
            [call] = tool_calls(events).values()
            call_id, name, arguments = call.get("id", ""), call.get("name", ""), call["arguments"]
        assert call_id, "the tool call has no id"
        assert name == "get_weather"
        assert json.loads(arguments) == expected

    @case("parallel_tools")
    @pytest.mark.parametrize("mode", ["chat", "stream"])
    async def test_parallel_tool_calls(self, kernel: Kernel, mode: str) -> None:
        request = self.request("Weather and time in Paris and Tokyo?", tools=TOOLS, stream=mode == "stream")
        if mode == "chat":
            response = await kernel.pipeline.chat(request, INFO)
            assert response.choices[0].finish_reason == "tool_calls"
            calls = _calls(response)
        else:
            events = await self.stream_events(kernel, request)
            _check_order(events)
            found = tool_calls(events)
            assert sorted(found) == [(0, 0), (0, 1)], f"calls {sorted(found)}"
            calls = [(c.get("id", ""), c.get("name", ""), c["arguments"]) for _, c in sorted(found.items())]
        assert [name for _, name, _ in calls] == ["get_weather", "get_time"]
        assert [json.loads(arguments) for _, _, arguments in calls] == list(self.adapter.tool_arguments)
        ids = [call_id for call_id, _, _ in calls]
        assert all(ids) and len(set(ids)) == 2, f"tool call ids {ids}"

    @case("tool_results")
    async def test_tool_results_sent_back(self, kernel: Kernel) -> None:
        question = Message(role="user", content="Weather and time in Paris?")
        first = await kernel.pipeline.chat(ChatRequest(model=self.adapter.chat_model, messages=[question],
                                                       tools=TOOLS), INFO)
        calls = first.choices[0].message.tool_calls
        assert calls and len(calls) == 2
        results = [Message(role="tool", tool_call_id=call.id, content=f"result of {call.function.name}")
                   for call in calls]
        history = [question, first.choices[0].message, *results]
        answer = await kernel.pipeline.chat(ChatRequest(model=self.adapter.chat_model, messages=history,
                                                        tools=TOOLS), INFO)
        choice = answer.choices[0]
        assert choice.finish_reason == "stop" and isinstance(choice.message.content, str) and choice.message.content

    @case("streamed_tool_args")
    async def test_streamed_tool_arguments_match_the_whole(self, kernel: Kernel) -> None:
        whole = _calls(await kernel.pipeline.chat(self.request("Both, please", tools=TOOLS), INFO))
        events = await self.stream_events(kernel, self.request("Both, please", tools=TOOLS, stream=True))
        deltas = [e for e in events if isinstance(e, ToolCallDelta)]
        for index in (0, 1):
            mine = [d for d in deltas if d.call_index == index]
            assert mine, f"no deltas for call {index}"
            assert mine[0].id and mine[0].name, "the first delta of a call must carry its id and name"
            assert all(d.name is None or d.name == mine[0].name for d in mine[1:])
            streamed = "".join(d.arguments for d in mine)
            exact = self.adapter.tool_arguments_text
            expected = whole[index][2] if exact is None else exact[index]
            assert streamed == expected, f"streamed {streamed!r} != {expected!r}"
            assert json.loads(streamed) == self.adapter.tool_arguments[index]

    # -- content and features -----------------------------------------------------------------------

    @case("vision")
    async def test_image_input(self, kernel: Kernel, upstream: Any) -> None:
        content: list[dict[str, Any]] = [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_BASE64}"}},
        ]
        model = self.adapter.vision_model or self.adapter.chat_model
        request = ChatRequest(model=model, messages=[Message(role="user", content=content)])
        response = await kernel.pipeline.chat(request, INFO)
        assert response.choices[0].message.content
        if upstream is not None:
            assert PNG_BASE64.encode() in upstream.requests[-1].body, "the image did not reach the upstream"

    @case("embeddings")
    async def test_embeddings(self, kernel: Kernel) -> None:
        model = self.adapter.embedding_model
        assert model is not None
        response = await kernel.pipeline.embed(EmbeddingRequest(model=model, input=["first text", "second"]), INFO)
        assert [d.index for d in response.data] == [0, 1]
        vectors = [d.embedding for d in response.data]
        assert all(isinstance(v, list) and v and all(isinstance(x, float) for x in v) for v in vectors)
        assert len(vectors[0]) == len(vectors[1]) and vectors[0] != vectors[1]
        if response.usage is not None:
            assert response.usage.prompt_tokens > 0

    @case("usage")
    async def test_usage(self, kernel: Kernel) -> None:
        response = await kernel.pipeline.chat(self.request("Count these words"), INFO)
        usage = response.usage
        assert usage is not None, "the response has no usage"
        assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        if not self.adapter.capabilities.stream:
            return
        stream = await kernel.pipeline.stream(self.request("Count these words", stream=True), INFO)
        try:
            events = [event async for event in stream]
        finally:
            await stream.aclose()
        usages = [e for e in events if isinstance(e, Usage)]
        assert len(usages) == 1, "the stream reported no usage"
        assert events[-1] is usages[0], "Usage is not the last event"
        assert stream.usage == usages[0]
        streamed = usages[0]
        assert (streamed.prompt_tokens, streamed.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
        assert streamed.total_tokens == streamed.prompt_tokens + streamed.completion_tokens

    @case("json_mode")
    async def test_json_mode(self, kernel: Kernel, upstream: Any) -> None:
        request = self.request("Reply with an object", response_format={"type": "json_object"})
        response = await kernel.pipeline.chat(request, INFO)
        content = response.choices[0].message.content
        assert isinstance(content, str) and content
        with contextlib.suppress(ValueError):
            json.loads(content)
            return
        assert upstream is not None, "the reply is not JSON"
        assert b"json" in upstream.requests[-1].body.lower(), "response_format did not reach the upstream"

    @case("reasoning")
    async def test_reasoning(self, kernel: Kernel) -> None:
        extra = dict(self.adapter.reasoning or {})
        response = await kernel.pipeline.chat(self.request("Think first", extra=extra), INFO)
        assert response.choices[0].message.reasoning_content, "no reasoning_content"
        if not self.adapter.capabilities.stream:
            return
        events = await self.stream_events(kernel, self.request("Think first", stream=True, extra=dict(extra)))
        _check_order(events)
        kinds = [type(e) for e in events if isinstance(e, TextDelta | ReasoningDelta)]
        assert ReasoningDelta in kinds, "no ReasoningDelta"
        if TextDelta in kinds:
            assert kinds.index(TextDelta) > kinds.index(ReasoningDelta)

    # -- any byte split of the upstream stream (StreamSplitSuite, on recorded bodies) ----------------

    @pytest.fixture
    def recorded(self, upstream: Any) -> list[bytes]:
        """The upstream's stream bodies for a text, a parallel tool-call and (when the adapter reasons
        with its default fake) a reasoning request, fetched with the adapter's own ``stream_request``
        (adapters over :mod:`sira_kernel.upstream`), each also with CRLF line ends."""
        adapter = self.adapter
        section = dict(adapter.config(upstream))
        plugin = adapter.plugin(validate_section(adapter.plugin.Config, section, f"plugins.{adapter.name}"))
        [provider] = register_providers(plugin, adapter.name)
        if upstream is None or not hasattr(provider, "stream_request") or not hasattr(provider, "stream_parser"):
            pytest.skip(f"{adapter.name} has no upstream byte stream (no stream_request / stream_parser)")
        ctx = call_context(adapter.chat_model)
        self._parsing = (provider, ctx)
        requests = [self.request(UNICODE_TEXT, stream=True), self.request("hi", tools=TOOLS, stream=True)]
        if adapter.reasoning is not None and adapter.reasoning_upstream is None:
            requests.append(self.request("Think first", stream=True, extra=dict(adapter.reasoning)))
        bodies = []
        with httpx.Client(timeout=10) as client:
            for request in requests:
                response = client.send(provider.stream_request(request, ctx))
                assert response.status_code == 200, response.text
                bodies += [response.content, response.content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")]
        return bodies

    def parse(self, chunks: Iterable[bytes]) -> Any:  # type: ignore[override]
        provider, ctx = self._parsing
        parser = provider.stream_parser(ctx)
        events = [event for chunk in chunks for event in parser.feed(chunk)]
        if not parser.done:
            events += parser.end()
        assert parser.failure is None, parser.failure
        return events

    @case("reassembly")
    def test_any_split_of_a_recorded_stream_yields_the_same_events(self, recorded: list[bytes]) -> None:
        super().test_any_split_of_a_recorded_stream_yields_the_same_events(recorded)

    @case("reassembly")
    def test_byte_by_byte(self, recorded: list[bytes]) -> None:
        whole = [self.parse([body]) for body in recorded]
        assert any(tool_calls(events) for events in whole), "the recorded tool-call stream has no calls"
        super().test_byte_by_byte(recorded)

    # -- error classes ------------------------------------------------------------------------------

    @case("rate_limited")
    @pytest.mark.parametrize("mode", ["chat", "stream"])
    async def test_rate_limited(self, kernel: Kernel, upstream: Any, mode: str) -> None:
        if mode == "stream" and not self.adapter.capabilities.stream:
            pytest.skip(f"{self.adapter.name} declares stream=False")
        text = self.prompt("hello", upstream, Fault(status=429, retry_after=3))
        error = await self.failure(kernel, self.request(text, stream=mode == "stream"), mode)
        assert isinstance(error, ProviderRateLimited), repr(error)
        assert error.status == 429 and error.retryable
        assert error.retry_after == pytest.approx(3), "the upstream's Retry-After was lost"

    @case("unavailable")
    @pytest.mark.parametrize("status", [500, 503])
    @pytest.mark.parametrize("mode", ["chat", "stream"])
    async def test_server_error(self, kernel: Kernel, upstream: Any, mode: str, status: int) -> None:
        if mode == "stream" and not self.adapter.capabilities.stream:
            pytest.skip(f"{self.adapter.name} declares stream=False")
        text = self.prompt("hello", upstream, Fault(status=status))
        error = await self.failure(kernel, self.request(text, stream=mode == "stream"), mode)
        assert isinstance(error, ProviderUnavailable), repr(error)
        assert error.status in (502, 503) and error.retryable

    @case("rejected")
    @pytest.mark.parametrize("mode", ["chat", "stream"])
    async def test_bad_request(self, kernel: Kernel, upstream: Any, mode: str) -> None:
        if mode == "stream" and not self.adapter.capabilities.stream:
            pytest.skip(f"{self.adapter.name} declares stream=False")
        text = self.prompt("hello", upstream, Fault(status=400, message="conformance: this request is invalid"))
        error = await self.failure(kernel, self.request(text, stream=mode == "stream"), mode)
        assert isinstance(error, ProviderRejected), repr(error)
        assert error.status == 400 and not error.retryable

    @case("auth")
    @pytest.mark.parametrize("mode", ["chat", "stream"])
    async def test_auth(self, kernel: Kernel, upstream: Any, mode: str) -> None:
        if mode == "stream" and not self.adapter.capabilities.stream:
            pytest.skip(f"{self.adapter.name} declares stream=False")
        text = self.prompt("hello", upstream, Fault(status=401, message="conformance: invalid key"))
        error = await self.failure(kernel, self.request(text, stream=mode == "stream"), mode)
        assert isinstance(error, ProviderRejected), repr(error)
        assert (error.status, error.code) == (502, "upstream_auth_failed")

    @case("timeout")
    @pytest.mark.parametrize("mode", ["chat", "stream"])
    async def test_hang(self, kernel: Kernel, upstream: Any, mode: str) -> None:
        if mode == "stream" and not self.adapter.capabilities.stream:
            pytest.skip(f"{self.adapter.name} declares stream=False")
        text = self.prompt("hello", upstream, Fault(hang=True))
        started = time.monotonic()
        error = await self.failure(kernel, self.request(text, stream=mode == "stream"), mode)
        waited = time.monotonic() - started
        assert isinstance(error, ProviderTimeout), repr(error)
        assert error.status == 504
        assert self.first_token_timeout * 0.8 <= waited < self.first_token_timeout + self.timeout_slack, waited

    @case("slow_first_token")
    async def test_silent_stream(self, kernel: Kernel, upstream: Any) -> None:
        text = self.prompt("hello", upstream, Fault(first_token_delay=self.first_token_timeout + 3))
        started = time.monotonic()
        error = await self.failure(kernel, self.request(text, stream=True), "stream")
        waited = time.monotonic() - started
        assert isinstance(error, ProviderTimeout), repr(error)
        assert waited < self.first_token_timeout + self.timeout_slack, waited

    @case("reset")
    @pytest.mark.parametrize("mode", ["chat", "stream"])
    async def test_reset(self, kernel: Kernel, upstream: Any, mode: str) -> None:
        if mode == "stream" and not self.adapter.capabilities.stream:
            pytest.skip(f"{self.adapter.name} declares stream=False")
        text = self.prompt("hello", upstream, Fault(reset=True))
        error = await self.failure(kernel, self.request(text, stream=mode == "stream"), mode)
        assert isinstance(error, ProviderUnavailable) and not isinstance(error, ProviderTimeout), repr(error)
        assert error.retryable

    # -- streams that fail or are abandoned ---------------------------------------------------------

    @case("mid_stream")
    @pytest.mark.parametrize("how", ["dropped", "error_event"])
    async def test_mid_stream_failure(self, kernel: Kernel, upstream: Any, how: str) -> None:
        fault = Fault(drop_after=self.adapter.events_before_text + 2)
        if how == "error_event":
            if self.adapter.stream_error is None:
                pytest.skip(f"{self.adapter.name} gives no stream_error fault")
            fault = self.adapter.stream_error
        full = await kernel.pipeline.chat(self.request(LONG_TEXT), INFO)
        full_text = full.choices[0].message.content
        assert isinstance(full_text, str)
        text = self.prompt(LONG_TEXT, upstream, fault)
        events = await self.stream_events(kernel, self.request(text, stream=True))
        assert isinstance(events[0], StreamStart)
        error = events[-1]
        assert isinstance(error, StreamError), f"the stream ended without an error: {events[-3:]!r}"
        assert error.status >= 500 and error.code
        assert not any(isinstance(e, Finish | Usage) for e in events), "a cut stream reported a normal end"
        partial = text_of(events)
        assert full_text.startswith(partial) and len(partial) < len(full_text), partial

    @case("disconnect")
    async def test_disconnect_releases_the_upstream(self, kernel: Kernel, upstream: Any) -> None:
        text = self.prompt(LONG_TEXT, upstream, Fault(chunk_delay=0.05))
        stream = await kernel.pipeline.stream(self.request(text, stream=True), INFO)
        seen: list[StreamEvent] = []
        try:
            async for event in stream:
                seen.append(event)
                if len(seen) == 3:
                    break
        finally:
            await stream.aclose(client_gone=True)
        assert isinstance(seen[0], StreamStart) and len(seen) == 3
        self.assert_nothing_held(kernel)  # the lease went with aclose(), not later
        if upstream is not None:
            released = await upstream.wait_until_async(
                lambda: upstream.aborted_streams == 1 and upstream.open_streams == 0
            )
            counts = f"open={upstream.open_streams}, aborted={upstream.aborted_streams}"
            assert released, f"the upstream stream was not released ({counts})"
            assert upstream.completed_streams == 0

    @case("disconnect")
    async def test_giving_up_before_the_first_token_releases_everything(self, kernel: Kernel, upstream: Any) -> None:
        text = self.prompt("hello", upstream, Fault(hang=True))
        with anyio.move_on_after(self.first_token_timeout / 2) as scope:
            await kernel.pipeline.stream(self.request(text, stream=True), INFO)
        assert scope.cancelled_caught, "the stream started although the upstream hangs"
        self.assert_nothing_held(kernel)
        if upstream is not None:
            closed = await upstream.wait_until_async(lambda: upstream.connections_open == 0)
            assert closed, f"{upstream.connections_open} upstream connection(s) still open"

    # -- declarations -------------------------------------------------------------------------------

    @case("capabilities")
    async def test_declared_capabilities(self, kernel: Kernel) -> None:
        adapter = self.adapter
        provider = self.provider(kernel)
        assert provider.capabilities == adapter.capabilities, (
            f"the provider declares {provider.capabilities!r}, the adapter description {adapter.capabilities!r}"
        )
        kinds = {m.id: m.kind for m in provider.models()}
        assert kinds.get(adapter.chat_model) == "chat", f"{adapter.chat_model} is not a chat model: {kinds}"
        if adapter.embedding_model is not None:
            assert kinds.get(adapter.embedding_model) == "embedding"
        if not adapter.capabilities.embeddings:
            request = EmbeddingRequest(model=adapter.chat_model, input="x")
            with pytest.raises(ProviderRejected):
                await provider.embed(request, call_context(adapter.chat_model))


# -- the matrix generator ---------------------------------------------------------------------------

DEFAULT_PATHS = ("tests/conformance", "examples/provider-acme/tests")
#: Set while ``--write`` runs the suite: the committed tables are about to be replaced.
WRITING = "SIRA_CONFORMANCE_WRITING"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sira_kernel.testing.conformance [--write | --check] [--doc PATH] [PYTEST ARGS]``:
    run the conformance tests, print the matrix, and write it into (or compare it with) ``--doc``."""
    parser = argparse.ArgumentParser(prog="python -m sira_kernel.testing.conformance", description=main.__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the tables in --doc")
    mode.add_argument("--check", action="store_true", help="exit 1 when the tables in --doc differ")
    parser.add_argument("--doc", default="docs/providers.md", help="the document holding the tables")
    options, pytest_args = parser.parse_known_args(argv)
    # This module (and hypothesis) are imported already, too late for pytest to rewrite their asserts.
    quiet = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    if options.write:  # tests of the committed tables (tests/conformance/test_matrix.py) stand aside
        os.environ[WRITING] = "1"
    status = pytest.main([*(pytest_args or DEFAULT_PATHS), "-q", "-p", "no:cacheprovider", *quiet], plugins=[RECORDER])
    doc = Path(options.doc)
    text = doc.read_text() if doc.exists() else ""
    updated = text
    for table, cases in TABLES.items():
        rendered = render_matrix(RECORDER.matrix(table), cases)
        print(f"\n{table}:\n{rendered}")
        if options.write or options.check:
            updated = update_document(updated, table, rendered)
    if options.write and updated != text:
        doc.write_text(updated)
        print(f"{doc} updated")
    if options.check and updated != text:
        print(f"{doc}: the committed matrix differs from this run's (write it with --write)", file=sys.stderr)
        return 1
    return int(status)


if __name__ == "__main__":
    from sira_kernel.testing.conformance import main as _main  # the module the tests record into

    raise SystemExit(_main())
