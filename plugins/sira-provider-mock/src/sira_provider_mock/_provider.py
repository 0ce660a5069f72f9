"""The mock :class:`~sira_kernel.providers.Provider`: answers without a network, like an upstream would."""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import AsyncIterator, Iterator

import anyio
from sira_kernel.errors import ProviderRejected, ProviderTimeout, ProviderUnavailable
from sira_kernel.providers import CallContext, Capabilities
from sira_kernel.types import (
    ChatChoice,
    ChatRequest,
    ChatResponse,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    Finish,
    Message,
    ModelInfo,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolFunction,
    Usage,
)

from ._answer import Answer, ToolSelectionError, build_answer, count_words, message_text
from ._config import MAX_DIMENSIONS, MockConfig
from ._directives import MARKER, NO_DIRECTIVES, DirectiveError, Directives, error_for_status, parse_directives
from ._embeddings import embedding_inputs, encode_base64, input_tokens, vector_for

__all__ = ["MockProvider"]

#: Most choices one request may ask for (the kernel's ``limits.max_n`` is normally lower).
MAX_CHOICES = 128

#: How many fragments a streamed tool call's arguments are split into.
ARGUMENT_FRAGMENTS = 3

DROP_MESSAGE = "mock: upstream dropped the stream"


class _Turn:
    """Everything decided before the first byte: directives, the answer and its bookkeeping."""

    __slots__ = ("answer", "created", "directives", "n", "prompt_tokens", "response_id", "sequence")

    def __init__(
        self, *, sequence: int, directives: Directives, answer: Answer, n: int, prompt_tokens: int
    ) -> None:
        self.sequence = sequence
        self.response_id = f"chatcmpl-mock-{sequence}"
        self.created = int(time.time())
        self.directives = directives
        self.answer = answer
        self.n = n
        self.prompt_tokens = prompt_tokens

    def call_id(self, choice: int, call: int) -> str:
        return f"call_mock_{self.sequence}_{choice}_{call}"

    def usage(self) -> Usage:
        completion = self.answer.completion_tokens * self.n
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
        )


class MockProvider:
    """An offline provider: deterministic replies, paced streams, tool calls, embeddings, failures.

    The reply, its pacing and its failures come from ``config`` (a :class:`MockConfig`) and from
    ``[mock:...]`` directives in the last user message; see the package README for the full list.
    Like a real adapter it honours ``ctx.first_token_timeout`` and ``ctx.total_timeout``, raising
    ``ProviderTimeout`` (or yielding a 504 ``StreamError`` once a stream has started).
    """

    def __init__(self, *, name: str, config: MockConfig | None = None) -> None:
        self.name = name
        self.config = config if config is not None else MockConfig()
        self.capabilities = Capabilities(
            chat=True, stream=True, tools=True, vision=True, embeddings=True, json_mode=True
        )
        self._sequence = itertools.count(1)
        self._failures = random.Random(self.config.seed)

    def __repr__(self) -> str:
        return f"MockProvider(name={self.name!r})"

    def models(self) -> list[ModelInfo]:
        """The configured chat models, then the embedding models."""
        chat = [ModelInfo(id=model) for model in self.config.models]
        return chat + [ModelInfo(id=model, kind="embedding") for model in self.config.embedding_models]

    # -- chat ---------------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest, ctx: CallContext) -> ChatResponse:
        """Answer ``request`` in one response, after the delay a stream of it would take."""
        turn = self._begin(request)
        directives, answer = turn.directives, turn.answer
        first_token = self._first_token_seconds(directives)
        if directives.hang:
            await self._hang(ctx)
        if directives.drop is not None:
            await self._wait_first_token(first_token, ctx)
            raise ProviderUnavailable("mock: upstream dropped the connection", provider=self.name)
        pace = self._pace_seconds(directives)
        if first_token or pace:
            await self._wait_first_token(first_token, ctx)
            rest = pace * max(_step_count(answer) - 1, 0)
            if first_token + rest > ctx.total_timeout:
                await anyio.sleep(max(ctx.total_timeout - first_token, 0))
                raise ProviderTimeout(self._total_timeout_message(ctx), provider=self.name)
            if rest:
                await anyio.sleep(rest)
        return ChatResponse(
            id=turn.response_id,
            model=ctx.upstream_model,
            choices=[self._choice(turn, index) for index in range(turn.n)],
            created=turn.created,
            usage=turn.usage(),
        )

    def _choice(self, turn: _Turn, index: int) -> ChatChoice:
        answer = turn.answer
        if answer.tool_calls:
            calls = [
                ToolCall(id=turn.call_id(index, i), function=ToolFunction(name=name, arguments=arguments))
                for i, (name, arguments) in enumerate(answer.tool_calls)
            ]
            message = Message(role="assistant", content=None, tool_calls=calls)
        else:
            message = Message(role="assistant", content=answer.text)
        return ChatChoice(index=index, message=message, finish_reason=answer.finish_reason)

    # -- stream -------------------------------------------------------------------------------------

    async def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        """Stream the same answer ``chat()`` gives, one token (or argument fragment) per step.

        Yields ``StreamStart``, the deltas of every choice (``pace_ms`` apart), a ``Finish`` per
        choice and a ``Usage``. Failures before the start are raised; after it (``[mock:drop=N]``,
        the total deadline) they end the stream with a ``StreamError``.
        """
        turn = self._begin(request)
        directives = turn.directives
        if directives.hang:
            await self._hang(ctx)
        started = anyio.current_time()
        await self._wait_first_token(self._first_token_seconds(directives), ctx)
        yield StreamStart(id=turn.response_id, model=ctx.upstream_model, created=turn.created)

        pace = self._pace_seconds(directives)
        deadline = started + ctx.total_timeout
        drop = directives.drop
        for step, events in enumerate(_steps(turn)):
            if step and pace:
                now = anyio.current_time()
                if now + pace > deadline:
                    await anyio.sleep(max(deadline - now, 0))
                    yield StreamError(
                        message=self._total_timeout_message(ctx), status=504, code="upstream_timeout"
                    )
                    return
                await anyio.sleep(pace)
            if step == drop:
                yield StreamError(message=DROP_MESSAGE, status=502)
                return
            for event in events:
                yield event
        if drop is not None:  # the reply was shorter than N steps: drop before it finishes
            yield StreamError(message=DROP_MESSAGE, status=502)
            return
        for index in range(turn.n):
            yield Finish(reason=turn.answer.finish_reason, index=index)
        yield turn.usage()

    # -- embeddings ---------------------------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        """Deterministic unit vectors, one per input, derived from a hash of the input.

        ``[mock:status=NNN]``, ``[mock:hang]``, ``[mock:drop=N]`` and ``[mock:first_token_ms=N]``
        in an input string apply here too.
        """
        self._maybe_fail()
        items = embedding_inputs(request.input)
        if not items:
            raise ProviderRejected("mock: input must not be empty", provider=self.name, status=400)
        dimensions = request.dimensions
        if dimensions is None:
            dimensions = self.config.embedding_dimensions
        if not 1 <= dimensions <= MAX_DIMENSIONS:
            raise ProviderRejected(
                f"mock: dimensions must be from 1 to {MAX_DIMENSIONS}", provider=self.name, status=400
            )
        for item in items:
            if isinstance(item, str) and MARKER in item:
                directives = self._directives(item)[0]
                if directives.hang:
                    await self._hang(ctx)
                await self._wait_first_token(self._first_token_seconds(directives), ctx)
                if directives.drop is not None:
                    raise ProviderUnavailable("mock: upstream dropped the connection", provider=self.name)
                break
        else:
            await self._wait_first_token(self.config.first_token_ms / 1000, ctx)

        vectors = [vector_for(item, dimensions) for item in items]
        as_base64 = request.encoding_format == "base64"
        data = [
            EmbeddingData(index=i, embedding=encode_base64(vector) if as_base64 else vector)
            for i, vector in enumerate(vectors)
        ]
        tokens = sum(input_tokens(item) for item in items)
        return EmbeddingResponse(
            data=data, model=ctx.upstream_model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
        )

    # -- shared -------------------------------------------------------------------------------------

    def _begin(self, request: ChatRequest) -> _Turn:
        """Decide the whole turn, raising the failures that happen before an upstream would answer."""
        self._maybe_fail()
        n = 1 if request.n is None else request.n
        if not 1 <= n <= MAX_CHOICES:
            raise ProviderRejected(f"mock: n must be from 1 to {MAX_CHOICES}", provider=self.name, status=400)
        user_text = ""
        for message in reversed(request.messages):
            if message.role == "user":
                user_text = message_text(message)
                break
        directives = NO_DIRECTIVES
        if MARKER in user_text:
            directives, user_text = self._directives(user_text)
        try:
            answer = build_answer(request, user_text, directives, self.config.reply)
        except ToolSelectionError as err:
            raise ProviderRejected(f"mock: {err}", provider=self.name, status=400) from None
        return _Turn(
            sequence=next(self._sequence),
            directives=directives,
            answer=answer,
            n=n,
            prompt_tokens=count_words(request.messages),
        )

    def _directives(self, text: str) -> tuple[Directives, str]:
        """Parse the directives in ``text`` and raise the failure a ``status`` directive asks for."""
        try:
            directives, stripped = parse_directives(text)
        except DirectiveError as err:
            raise ProviderRejected(f"mock: {err}", provider=self.name, status=400) from None
        if directives.status is not None:
            raise error_for_status(
                directives.status,
                provider=self.name,
                reason=f"[mock:status={directives.status}]",
                retry_after=directives.retry_after,
            )
        return directives, stripped

    def _maybe_fail(self) -> None:
        rate = self.config.fail_rate
        if rate and self._failures.random() < rate:
            raise error_for_status(self.config.fail_status, provider=self.name, reason="fail_rate")

    def _pace_seconds(self, directives: Directives) -> float:
        pace_ms = directives.pace_ms
        return (self.config.pace_ms if pace_ms is None else pace_ms) / 1000

    def _first_token_seconds(self, directives: Directives) -> float:
        first_ms = directives.first_token_ms
        return (self.config.first_token_ms if first_ms is None else first_ms) / 1000

    async def _wait_first_token(self, seconds: float, ctx: CallContext) -> None:
        """Sleep ``seconds`` before the first token, or raise ``ProviderTimeout`` at the deadline."""
        if seconds <= 0:
            return
        limit = ctx.first_token_timeout
        if seconds <= limit and math.isfinite(seconds):
            await anyio.sleep(seconds)
            return
        await self._sleep(min(seconds, limit))
        raise ProviderTimeout(f"mock: no first token within {limit:g} s", provider=self.name)

    async def _hang(self, ctx: CallContext) -> None:
        """Never answer: only cancellation or the first-token deadline ends the wait."""
        await self._wait_first_token(math.inf, ctx)

    @staticmethod
    async def _sleep(seconds: float) -> None:
        if math.isfinite(seconds):
            await anyio.sleep(seconds)
        else:
            await anyio.sleep_forever()

    @staticmethod
    def _total_timeout_message(ctx: CallContext) -> str:
        return f"mock: reply not complete within {ctx.total_timeout:g} s"


def _step_count(answer: Answer) -> int:
    if answer.tool_calls:
        return sum(1 + len(_fragments(arguments)) for _, arguments in answer.tool_calls)
    return len(answer.tokens)


def _steps(turn: _Turn) -> Iterator[list[StreamEvent]]:
    """The stream's content, one list of events (a delta per choice) per paced step."""
    answer, choices = turn.answer, range(turn.n)
    if not answer.tool_calls:
        for token in answer.tokens:
            yield [TextDelta(text=token, index=index) for index in choices]
        return
    for call, (name, arguments) in enumerate(answer.tool_calls):
        yield [
            ToolCallDelta(call_index=call, id=turn.call_id(index, call), name=name, index=index)
            for index in choices
        ]
        for fragment in _fragments(arguments):
            yield [ToolCallDelta(call_index=call, arguments=fragment, index=index) for index in choices]


def _fragments(arguments: str) -> list[str]:
    """Split a call's JSON arguments into a few pieces, the way upstreams stream them."""
    size = max(1, -(-len(arguments) // ARGUMENT_FRAGMENTS))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]
