"""The request pipeline: authenticate → authorize → route → schedule → provider → usage event.

Surfaces (HTTP plugins) translate their wire format into kernel types and call :class:`Pipeline`;
they turn the :class:`~sira_kernel.errors.SiraError` it raises into their own error shape. Each call
reads the kernel's registry snapshot once, so it sees every plugin entirely or not at all, holds a
lease on the provider's plugin until the response (or stream) ends, and publishes exactly one
:class:`~sira_kernel.events.UsageRecord`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .accounting import PriceBook, TokenCounter, count_chat_tokens, estimate_text_tokens
from .auth import Principal, RequestInfo
from .errors import (
    AuthenticationFailed,
    AuthorizationDenied,
    ModelNotFound,
    PluginUnavailable,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RequestError,
    SiraError,
)
from .events import Attempt, UsageRecord
from .logs import get_logger
from .providers import CallContext, EventBatches, Provider
from .routing import AttemptPlan, Deployment, Route, SingleAttempt
from .scheduler import Reservation
from .types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelInfo,
    ReasoningDelta,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    Usage,
)

if TYPE_CHECKING:
    from .kernel import Kernel, Snapshot
    from .plugins import Lease

__all__ = ["ChatStream", "Pipeline"]

_log = get_logger("sira.pipeline")
T = TypeVar("T")
CLIENT_CLOSED = 499


def _interrupted(deployment: Deployment, lease: Lease, total_timeout: float) -> ProviderError:
    """Why a provider call's cancel scope fired: its plugin was unloaded, or the total deadline passed."""
    if lease.revoked:
        return ProviderUnavailable(
            f"provider {deployment.provider!r} was unloaded before it finished answering",
            status=503, code="provider_unloaded", provider=deployment.provider,
        )
    return ProviderTimeout(
        f"provider {deployment.provider!r} did not finish within {total_timeout:g}s", provider=deployment.provider
    )


def _cap_output(request: ChatRequest, cap: int) -> None:
    """Lower (or set) the request's output limit to ``cap`` tokens in all, shared by its choices."""
    per_choice = max(1, cap // (request.n or 1))
    limit = request.token_limit
    if limit is None or limit > per_choice:
        if request.max_completion_tokens is not None:
            request.max_completion_tokens = per_choice
        else:
            request.max_tokens = per_choice


async def _aclose(events: AsyncIterator[StreamEvent]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            try:
                await close()
            except Exception:
                _log.exception("pipeline.stream_close_failed")


def _apply_usage(record: UsageRecord, usage: Usage) -> None:
    record.prompt_tokens = usage.prompt_tokens
    record.completion_tokens = usage.completion_tokens
    record.total_tokens = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
    details = usage.prompt_tokens_details
    if details:
        cached = details.get("cached_tokens")
        if isinstance(cached, int):
            record.cached_tokens = cached


def _refusal(hook: str, plugin_id: str) -> SiraError:
    """What a decision hook that failed or did not answer in time amounts to (fail closed)."""
    if hook == "authenticate":
        return AuthenticationFailed("authentication failed")
    if hook == "authorize":
        return AuthorizationDenied("authorization failed")
    return ProviderUnavailable(f"routing failed in plugin {plugin_id!r}")


class ChatStream:
    """A started chat stream: iterate it for events; always ``aclose()`` it (surfaces do).

    The first event (``StreamStart``) has already arrived from the provider when a surface receives
    this object, so upstream failures before that are raised as errors with a proper status (and
    may have been retried by the route's plan); once it exists, the stream is never retried.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        events: AsyncIterator[StreamEvent],
        first: StreamEvent,
        call: _Call,
        lease: Lease,
        deployment: Deployment,
        plan: AttemptPlan,
        attempt_started: float,
    ) -> None:
        self._pipeline = pipeline
        self._events = events
        self._first: StreamEvent | None = first
        self._call = call
        self._lease = lease
        self._plan = plan
        self._attempt_started = attempt_started
        self._pieces: list[str] = []  # streamed text, counted only if the provider reports no usage
        self.deployment = deployment
        self.usage: Usage | None = None
        self._closed = False
        self._failed: StreamError | None = None

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._iterate()

    def guard(self) -> anyio.CancelScope:
        """A cancel scope to iterate the stream in: ``with stream.guard() as guard: async for …``.

        It is cancelled when the request's deadline passes or the provider's plugin is unloaded
        and its drain timeout runs out. Then ``guard.cancelled_caught`` is true and the consumer
        ends the response with :meth:`interrupted`'s error event.
        """
        scope = anyio.CancelScope(deadline=self._call.deadline)
        self._lease.attach(scope)
        return scope

    def interrupted(self) -> StreamError:
        """The error event for a stream whose :meth:`guard` was cancelled (also recorded as the outcome)."""
        self._lease.attach(None)
        why = _interrupted(self.deployment, self._lease, self._pipeline.kernel.config.limits.total_timeout)
        event = why.stream_event()
        self._failed = event
        return event

    async def _iterate(self) -> AsyncIterator[StreamEvent]:
        async for batch in self.batches():
            for event in batch:
                yield event

    async def batches(self) -> AsyncIterator[list[StreamEvent]]:
        """The events in batches: those that arrived from the upstream together (one read) come out
        in one list, so a surface can send them to the client in one write. The first batch starts
        with ``StreamStart``; a ``StreamError`` ends its batch and the stream. A provider that does
        not batch (its ``stream`` is no :class:`EventBatches`) gives one event per batch.
        """
        batch: list[StreamEvent] | None = None
        if self._first is not None:
            first, self._first = self._first, None
            events = self._events
            batch = [first, *events.take_pending()] if isinstance(events, EventBatches) else [first]
        while True:
            if batch is None:
                # No cancel scope per batch (they cost more than relaying it): the consumer holds one
                # for the whole stream with :meth:`guard`, which the lease and the deadline cancel.
                events = self._events
                try:
                    batch = await events.next_batch() if isinstance(events, EventBatches) else [await anext(events)]
                except StopAsyncIteration:
                    return
                except ProviderError as exc:
                    batch = [exc.stream_event()]
                except Exception as exc:
                    _log.exception("pipeline.stream_failed", provider=self.deployment.provider)
                    batch = [StreamError(message=f"upstream stream failed: {type(exc).__name__}")]
            if batch:
                end = self._note(batch)
                if end:
                    yield batch[:end]
                    return
                yield batch
            batch = None

    def _note(self, batch: list[StreamEvent]) -> int:
        """Account for ``batch``; the length of the batch up to a ``StreamError`` in it, else 0."""
        record = self._call.record
        if record.ttft_ms is None:
            for event in batch:
                if not isinstance(event, StreamStart):
                    record.ttft_ms = (time.perf_counter() - self._call.started) * 1000
                    break
        for index, event in enumerate(batch):
            if isinstance(event, TextDelta | ReasoningDelta):
                self._pieces.append(event.text)
            elif isinstance(event, ToolCallDelta):
                self._pieces.append(event.arguments)
            elif isinstance(event, Usage):
                self.usage = event
            elif isinstance(event, StreamError):
                self._failed = event
                return index + 1
        return 0

    async def aclose(self, client_gone: bool = False) -> None:
        """End the stream: close the provider's iterator, settle capacity, publish usage once."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                close = getattr(self._events, "aclose", None)
                if close is not None:
                    await close()
            except Exception:
                _log.exception("pipeline.stream_close_failed", provider=self.deployment.provider)
            finally:
                self._lease.release()
                call = self._call
                record = call.record
                if self.usage is not None:
                    _apply_usage(record, self.usage)
                elif self._pieces or self._failed is None:
                    self._pipeline._count_usage(record, call.request, "".join(self._pieces))
                failed = self._failed
                if failed is not None:
                    record.status, record.error_code = failed.status, failed.code
                    record.attempt_log[-1].status, record.attempt_log[-1].error_code = failed.status, failed.code
                elif client_gone:
                    record.status, record.error_code = CLIENT_CLOSED, "client_closed"
                record.attempt_log[-1].latency_ms = (time.perf_counter() - self._attempt_started) * 1000
                # the plan judges its deployment: time to first token from this attempt's start
                ttft = None
                if record.ttft_ms is not None:
                    ttft = max(0.0, record.ttft_ms / 1000 - (self._attempt_started - call.started))
                error = None
                if failed is not None:
                    error = ProviderError(failed.message, status=failed.status, code=failed.code,
                                          provider=self.deployment.provider)
                try:
                    self._plan.report(self.deployment, error, time.perf_counter() - self._attempt_started, ttft)
                except Exception:
                    _log.exception("pipeline.plan_report_failed")
                if self.usage is not None or failed is None:
                    await call.settle()
                await self._pipeline._close(call)  # gives back a reservation nothing was measured for


class _Call:
    """One client request's bookkeeping while it runs: record, capacity, deadline."""

    __slots__ = ("deadline", "record", "request", "reservation", "started")

    def __init__(self, record: UsageRecord, request: Any) -> None:
        self.started = time.perf_counter()
        self.record = record
        self.request = request
        self.reservation: Reservation | None = None
        self.deadline = 0.0

    async def settle(self) -> None:
        """Settle the capacity reserved for this call at the tokens its record counts."""
        assert self.reservation is not None
        reservation, self.reservation = self.reservation, None
        await reservation.settle(self.record.total_tokens)


class Pipeline:
    """Runs one request through the kernel's decision hooks, scheduler and a provider."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    # -- decision hooks -----------------------------------------------------------------------------

    async def _ask(self, function: Callable[..., Any], plugin_id: str, hook: str, **kwargs: Any) -> Any:
        """Call one decision-hook implementation and await its answer within ``limits.auth_timeout``.

        The hook's own ``SiraError`` passes through; any other exception, or no answer in time, is
        logged with the plugin's id and becomes the hook's refusal: decisions fail closed.
        """
        try:
            answer = function(**kwargs)
            if inspect.isawaitable(answer):
                with anyio.fail_after(self.kernel.config.limits.auth_timeout):
                    answer = await answer
            return answer
        except SiraError:
            raise
        except TimeoutError:
            _log.error(f"pipeline.{hook}_timeout", plugin=plugin_id)
            raise _refusal(hook, plugin_id) from None
        except Exception:
            _log.exception(f"pipeline.{hook}_failed", plugin=plugin_id)
            raise _refusal(hook, plugin_id) from None

    async def authenticate(self, snap: Snapshot, info: RequestInfo) -> Principal:
        """First non-None principal in pluggy order; anything else (exception, no answer, an answer
        that takes longer than ``limits.auth_timeout``) is a 401."""
        for function, plugin_id in snap.authenticate:
            answer = await self._ask(function, plugin_id, "authenticate", request=info)
            if answer is not None:
                if not isinstance(answer, Principal):
                    _log.error("pipeline.authenticate_bad_answer", plugin=plugin_id)
                    raise AuthenticationFailed("authentication failed")
                return answer
        raise AuthenticationFailed("no credentials were accepted")

    async def authorize(
        self, snap: Snapshot, principal: Principal, info: RequestInfo, operation: str, model: str | None
    ) -> bool:
        """Every plugin votes; any False (or exception, or a vote that takes longer than
        ``limits.auth_timeout``) denies. Returns True when some plugin voted True (an explicit
        allow: the admin guard's test for principals without the admin role)."""
        allowed = False
        for function, plugin_id in snap.authorize:
            vote = await self._ask(
                function, plugin_id, "authorize", principal=principal, request=info, operation=operation, model=model
            )
            if vote is False:
                target = f" on model {model!r}" if model else ""
                raise AuthorizationDenied(f"not allowed to {operation}{target}")
            if vote is True:
                allowed = True
        return allowed

    async def route(
        self, snap: Snapshot, request: Any, principal: Principal, info: RequestInfo | None = None
    ) -> Route:
        """First ``Route`` with deployments in pluggy order; a failing or hanging router is a 502."""
        for function, plugin_id in snap.route:
            answer = await self._ask(
                function, plugin_id, "route", request=request, principal=principal, routes=snap.route_table, info=info
            )
            if answer is not None:
                if not answer.deployments:
                    break
                return answer  # type: ignore[no-any-return]
        raise ModelNotFound(f"the model {request.model!r} does not exist or is not served here", param="model")

    # -- helpers ------------------------------------------------------------------------------------

    def _record(self, info: RequestInfo, operation: str, model: str | None, stream: bool = False) -> UsageRecord:
        return UsageRecord(
            request_id=info.request_id, timestamp=time.time(), operation=operation,
            principal="unknown", principal_kind="unknown", model=model, stream=stream,
        )

    def _finish(self, record: UsageRecord, started: float) -> None:
        record.latency_ms = (time.perf_counter() - started) * 1000
        if record.total_tokens:
            book = self.kernel.services.find(PriceBook)
            if book is not None:
                try:
                    record.cost_usd = book.cost(record)
                except Exception:
                    _log.exception("pipeline.pricing_failed", model=record.model)
        self.kernel.bus.publish_nowait(record)

    def _prompt_tokens(self, request: ChatRequest) -> int:
        return count_chat_tokens(self.kernel.services.find(TokenCounter), request)

    def _count_usage(self, record: UsageRecord, request: ChatRequest, completion: str) -> None:
        """The provider reported no usage: count it here so the request is still accounted for."""
        counter = self.kernel.services.find(TokenCounter)
        completion_tokens = estimate_text_tokens(completion)
        if counter is not None:
            try:
                completion_tokens = counter.count_text(request.model, completion)
            except Exception:
                _log.exception("pipeline.token_count_failed", model=request.model)
        record.prompt_tokens = self._prompt_tokens(request)
        record.completion_tokens = completion_tokens
        record.total_tokens = record.prompt_tokens + completion_tokens
        record.usage_estimated = True

    def _check_bounds(self, request: ChatRequest) -> None:
        limits = self.kernel.config.limits
        if not request.messages:
            raise RequestError("messages must contain at least one message", param="messages")
        if len(request.messages) > limits.max_messages:
            raise RequestError(f"at most {limits.max_messages} messages are allowed", param="messages")
        if request.n is not None and not 1 <= request.n <= limits.max_n:
            raise RequestError(f"n must be between 1 and {limits.max_n}", param="n")
        cap = request.token_limit
        if cap is not None and not 1 <= cap <= limits.max_tokens:
            field = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
            raise RequestError(f"{field} must be between 1 and {limits.max_tokens}", param=field)

    def _call_context(self, deployment: Deployment, info: RequestInfo) -> CallContext:
        limits = self.kernel.config.limits
        return CallContext(
            upstream_model=deployment.model, request_id=info.request_id,
            connect_timeout=limits.connect_timeout, first_token_timeout=limits.first_token_timeout,
            total_timeout=limits.total_timeout, max_response_bytes=limits.max_response_bytes,
        )

    async def _admit(
        self, snap: Snapshot, info: RequestInfo, operation: str, model: str, call: _Call
    ) -> Route:
        """Authenticate, authorize, route and reserve capacity; fills ``call``."""
        record, request = call.record, call.request
        principal = await self.authenticate(snap, info)
        record.principal, record.principal_kind = principal.id, principal.kind
        record.tenant, record.team = principal.tenant, principal.team
        await self.authorize(snap, principal, info, operation, model)
        if principal.max_output_tokens is not None and isinstance(request, ChatRequest):
            _cap_output(request, principal.max_output_tokens)
        route = await self.route(snap, request, principal, info)
        table = snap.route_table
        known = table.info(model)
        if known is None and route.deployments:  # a routed name (a router's group): what it routes to
            known = table.deployment_info(route.deployments[0])
        wanted = "embedding" if operation == "embeddings" else "chat"
        if known is not None and known.kind != wanted:
            raise RequestError(
                f"the model {model!r} is {'an' if known.kind[0] in 'aeiou' else 'a'} {known.kind} model "
                f"and cannot serve {operation}",
                param="model",
            )
        tokens = 0
        if principal.limits and isinstance(request, ChatRequest):
            tokens = self._prompt_tokens(request) + (request.token_limit or 256)
        call.reservation = await self.kernel.scheduler.reserve(
            pool="requests", limits=principal.limits, tokens=tokens,
            tenant=principal.tenant or principal.id, priority=principal.priority,
        )
        call.deadline = anyio.current_time() + self.kernel.config.limits.total_timeout
        return route

    async def _attempt(
        self,
        snap: Snapshot,
        route: Route,
        call: _Call,
        info: RequestInfo,
        start: Callable[[Provider, CallContext], Awaitable[T]],
        keep_lease: bool = False,
    ) -> tuple[T, Deployment, Lease, AttemptPlan, float]:
        """Run attempts as the route's plan directs until one succeeds or the plan gives up.

        The kernel's own plan is a single attempt; retries and fallbacks come only from a routing
        plugin's plan. Every attempt is logged on the usage record.
        """
        plan: AttemptPlan = route.plan if route.plan is not None else SingleAttempt(route.deployments[0])
        record = call.record
        total = self.kernel.config.limits.total_timeout
        failure: ProviderError | None = None
        while True:
            remaining = call.deadline - anyio.current_time()
            deployment = await plan.next(failure, remaining) if remaining > 0 else None
            if deployment is None:
                if failure is None:
                    failure = ProviderTimeout(f"no attempt could be made within {total:g}s")
                raise failure
            record.provider, record.upstream_model = deployment.provider, deployment.model
            began = time.perf_counter()
            lease: Lease | None = None
            try:
                entry = snap.providers.get(deployment.provider)
                if entry is None:
                    raise ProviderUnavailable(
                        f"provider {deployment.provider!r} is not active", provider=deployment.provider, status=503
                    )
                provider, handle = entry
                try:
                    lease = handle.lease()
                except PluginUnavailable as exc:
                    raise ProviderUnavailable(exc.message, provider=deployment.provider, status=503) from None
                with anyio.CancelScope(deadline=call.deadline) as scope:
                    lease.attach(scope)
                    result = await start(provider, self._call_context(deployment, info))
                lease.attach(None)
                if scope.cancelled_caught:
                    raise _interrupted(deployment, lease, total)
            except ProviderError as exc:
                if lease is not None:
                    lease.release()
                latency = time.perf_counter() - began
                record.attempt_log.append(
                    Attempt(provider=deployment.provider, model=deployment.model, status=exc.status,
                            error_code=exc.code, latency_ms=latency * 1000)
                )
                record.attempts = len(record.attempt_log)
                plan.report(deployment, exc, latency, None)
                failure = exc
                continue
            except BaseException:
                if lease is not None:
                    lease.release()
                raise
            latency = time.perf_counter() - began
            record.attempt_log.append(
                Attempt(provider=deployment.provider, model=deployment.model, status=200, latency_ms=latency * 1000)
            )
            record.attempts = len(record.attempt_log)
            info.route = f"{deployment.provider}/{deployment.model}; attempts={record.attempts}"
            if not keep_lease:
                lease.release()
                plan.report(deployment, None, latency, None)
            return result, deployment, lease, plan, began

    def _failed(self, record: UsageRecord, exc: BaseException) -> None:
        if isinstance(exc, SiraError):
            record.status, record.error_code = exc.status, exc.code
        elif isinstance(exc, anyio.get_cancelled_exc_class()):
            record.status, record.error_code = CLIENT_CLOSED, "client_closed"
        else:
            record.status, record.error_code = 500, "internal_error"

    async def _close(self, call: _Call) -> None:
        if call.reservation is not None:
            await call.reservation.release()  # shields its own awaits; nothing to await when nothing is held
            call.reservation = None
        self._finish(call.record, call.started)

    # -- operations ---------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest, info: RequestInfo) -> ChatResponse:
        """A non-streamed chat completion."""
        snap = self.kernel.snapshot
        call = _Call(self._record(info, "chat", request.model), request)
        try:
            self._check_bounds(request)
            route = await self._admit(snap, info, "chat", request.model, call)
            response, *_ = await self._attempt(
                snap, route, call, info, lambda provider, ctx: provider.chat(request, ctx)
            )
            record = call.record
            if response.usage is not None:
                _apply_usage(record, response.usage)
            else:
                completion = "".join(
                    c.message.content for c in response.choices if isinstance(c.message.content, str)
                )
                self._count_usage(record, request, completion)
            await call.settle()
            return response
        except BaseException as exc:
            self._failed(call.record, exc)
            raise
        finally:
            await self._close(call)

    async def stream(self, request: ChatRequest, info: RequestInfo) -> ChatStream:
        """Start a streamed chat completion. Errors before the provider's first event are raised
        (after the route's plan had its chance to retry or fall back)."""
        snap = self.kernel.snapshot
        call = _Call(self._record(info, "chat", request.model, stream=True), request)

        async def start(provider: Provider, ctx: CallContext) -> tuple[AsyncIterator[StreamEvent], StreamEvent]:
            events = provider.stream(request, ctx)
            try:
                first = await events.__anext__()
                if isinstance(first, StreamError):
                    raise ProviderError(first.message, status=first.status, code=first.code, provider=provider.name)
            except StopAsyncIteration:
                await _aclose(events)
                raise ProviderUnavailable(
                    "the upstream ended the stream before sending anything", provider=provider.name,
                    code="upstream_empty",
                ) from None
            except BaseException:
                await _aclose(events)
                raise
            return events, first

        try:
            self._check_bounds(request)
            route = await self._admit(snap, info, "chat", request.model, call)
            (events, first), deployment, lease, plan, began = await self._attempt(
                snap, route, call, info, start, keep_lease=True
            )
        except BaseException as exc:
            self._failed(call.record, exc)
            await self._close(call)
            raise
        return ChatStream(self, events, first, call, lease, deployment, plan, began)

    async def embed(self, request: EmbeddingRequest, info: RequestInfo) -> EmbeddingResponse:
        """Embeddings through the same admission path as chat."""
        snap = self.kernel.snapshot
        call = _Call(self._record(info, "embeddings", request.model), request)
        try:
            route = await self._admit(snap, info, "embeddings", request.model, call)
            response, *_ = await self._attempt(
                snap, route, call, info, lambda provider, ctx: provider.embed(request, ctx)
            )
            record = call.record
            if response.usage is not None:
                record.prompt_tokens = response.usage.prompt_tokens
                record.total_tokens = response.usage.total_tokens or response.usage.prompt_tokens
            await call.settle()
            return response
        except BaseException as exc:
            self._failed(call.record, exc)
            raise
        finally:
            await self._close(call)

    async def models(self, info: RequestInfo) -> list[ModelInfo]:
        """The models the caller may use (authenticated; each model authorized)."""
        snap = self.kernel.snapshot
        principal = await self.authenticate(snap, info)
        await self.authorize(snap, principal, info, "models", None)
        listed: dict[str, ModelInfo] = {}
        for function, plugin_id in snap.list_models:  # the kernel's default (the providers' models) last
            try:
                answer = function(principal=principal, routes=snap.route_table, info=info)
                for model in answer or ():
                    listed.setdefault(model.id, model)
            except Exception:  # a listing without one plugin's names beats no listing
                _log.exception("pipeline.list_models_failed", plugin=plugin_id)
        allowed = []
        for model in listed.values():
            operation = "embeddings" if model.kind == "embedding" else "chat"
            try:
                await self.authorize(snap, principal, info, operation, model.id)
            except AuthorizationDenied:
                continue
            allowed.append(model)
        return allowed


