"""The per-request attempt plan: which deployment each attempt goes to, and whether to try again.

The kernel runs the attempt loop (``Pipeline._attempt``): before each attempt it awaits
``plan.next(failure, remaining)``; after each attempt it calls ``plan.report(...)``. A
:class:`RouterPlan` answers like this:

1. **First attempt**: the group's strategy picks a usable member (active provider, breaker letting
   requests through), best priority tier first. A prompt longer than the group's
   ``context_window`` goes straight to its ``context_window`` fallbacks. If no member is usable,
   the group's general ``fallbacks`` are tried; if nothing anywhere is, ``next`` raises a 503
   (or a 429 when every deployment is at its rpm/tpm limit) with Retry-After.
2. **After a retryable failure** (``rate_limit``, ``server``, ``timeout``), while the group has
   ``retries`` left, its ``timeout`` has not passed and its retry budget has a token:
   a member this request has not tried yet, at once; else a tried one that is usable again,
   after an exponential backoff with full jitter (never past the request's deadline).
3. **Then the fallbacks** for that error class, in order (each group once per request), each
   group getting a first attempt and then its own retries.
4. **Last resort** for a rate limit: when nothing else can answer, wait for the deployment's
   Retry-After (if it is at most ``max_retry_after`` and before the deadline) and retry it.
5. ``context_window`` and ``content_policy`` failures go only to their ``fallbacks_on`` groups;
   other non-retryable failures (``ProviderRejected``) end the plan: the client gets the error.

``report`` feeds the deployment's breaker, its latency EWMAs and in-flight count, and finishes the
plan's decision record when the request is over. Hot-path cost: one plan object (and the attempt
records of the decision log); no locks; strategies read precomputed tiers.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

import anyio
from sira_kernel import Deployment, Principal, ProviderError, ProviderUnavailable, RateLimited, RequestInfo
from sira_kernel.accounting import estimate_text_tokens

from ._decisions import RouteAttempt, RouteDecision
from ._errors import BREAKER_KINDS, classify
from ._groups import RETRY_KINDS, UNAVAILABLE, Group, Member, Tier
from ._strategies import candidates, score_of, usable

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from ._router import Router
    from ._rules import CompiledRule

__all__ = ["RouterPlan"]

_EMPTY: dict[str, str] = {}


def _ewma(average: float, sample: float, alpha: float) -> float:
    """Exponentially weighted moving average; 0 means "no sample yet"."""
    return average + alpha * (sample - average) if average else sample


class _Attempt:
    """What tenacity's wait strategies read from a retry state."""

    __slots__ = ("attempt_number",)

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number


class RouterPlan:
    """The router's :class:`~sira_kernel.routing.AttemptPlan` for one request."""

    __slots__ = (
        "_attempt_started", "_attempts", "_complexity", "_created", "_deadline", "_done", "_fallbacks",
        "_finished_at", "_group", "_group_attempts", "_group_started", "_in_flight", "_info", "_member", "_notes",
        "_origin", "_outcome", "_pending", "_probe", "_request_id", "_router", "_rule", "_skipped", "_tokens",
        "_tried", "_visited", "model", "principal", "request", "streaming",
    )

    def __init__(self, router: Router, request: Any, principal: Principal, info: RequestInfo | None) -> None:
        self._router = router
        self.request = request
        self.model: str = request.model
        self.principal = principal
        self.streaming: bool = getattr(request, "stream", False)
        self._info = info
        self._group: Group | None = None
        self._origin: Group | None = None
        self._rule: CompiledRule | None = None
        self._member: Member | None = None
        self._probe = False
        self._in_flight = False
        self._tried = 0
        self._visited = 0
        self._group_attempts = 0
        self._group_started = 0.0
        self._attempts: list[RouteAttempt] | None = None
        self._fallbacks: list[str] | None = None
        self._skipped: list[str] | None = None
        self._notes: list[str] | None = None
        self._tokens = -1
        self._complexity = -1.0
        self._created = 0.0  # when the first attempt was chosen: the request's start, near enough
        self._attempt_started = 0.0
        self._outcome = ""
        self._finished_at = 0.0
        self._request_id: str | None = None
        self._deadline = float("inf")
        self._pending = False
        self._done = True  # until bound to a group: a plan that routes nothing records nothing

    def bind(self, group: Group, rule: CompiledRule | None = None) -> RouterPlan:
        self._group = self._origin = group
        self._rule = rule
        self._visited = group.bit
        self._done = False
        return self

    # -- facts about the request (computed at most once, only when asked) --------------------------

    @property
    def headers(self) -> dict[str, str]:
        return self._info.headers if self._info is not None else _EMPTY

    def random(self) -> float:
        return self._router.rng.random()

    def randrange(self, n: int) -> int:
        return int(self._router.rng.random() * n)  # random() < 1, so always < n; faster than randrange

    def prompt_tokens(self) -> int:
        if self._tokens < 0:
            request = self.request
            if hasattr(request, "messages"):
                self._tokens = self._router.count_tokens(request)
            else:  # embeddings
                data = request.input
                text = data if isinstance(data, str) else " ".join(str(x) for x in data)
                self._tokens = estimate_text_tokens(text)
        return self._tokens

    def known_prompt_tokens(self) -> int | None:
        return self._tokens if self._tokens >= 0 else None

    def output_tokens(self) -> int:
        cap = getattr(self.request, "token_limit", None)
        if cap:
            return int(cap)
        group = self._group
        return group.expected_output if group is not None else 256

    def complexity(self) -> float:
        if self._complexity < 0:
            from ._rules import complexity_score

            self._complexity = complexity_score(self.request, self.prompt_tokens(), self._router.config.complexity)
        return self._complexity

    def skip(self, member: Member, now: float) -> None:
        """Note a member passed over because it could not take a request."""
        upstream = member.upstream
        if not upstream.active:
            why = "inactive"
        else:
            state = upstream.breaker.state(now)
            why = f"open {state.retry_in_s:.1f}s" if state.state == "open" else "half_open: probe in flight"
        entry = f"{member.name}: {why}"
        skipped = self._skipped
        if skipped is None:
            self._skipped = [entry]
        elif entry not in skipped:
            skipped.append(entry)

    def _note(self, text: str) -> None:
        if self._notes is None:
            self._notes = [text]
        else:
            self._notes.append(text)

    # -- choosing ----------------------------------------------------------------------------------

    def _pick_sync(self, group: Group, now: float, mask: int) -> Member | None:
        picker = group.picker
        assert picker is not None
        for tier in group.tiers:
            member = picker(tier, now, mask, self)
            if member is not None:
                return member
        return None

    async def _pick(self, group: Group, now: float, mask: int) -> Member | None:
        if group.picker is None:  # the usage strategy
            for tier in group.tiers:
                member = await self._pick_usage(tier, now, mask)
                if member is not None:
                    return member
            return None
        return self._pick_sync(group, now, mask)

    async def _pick_usage(self, tier: Tier, now: float, mask: int) -> Member | None:
        """The member with the most rpm/tpm headroom; takes one request from its rpm bucket.

        The buckets live in the kernel scheduler's counter backend (shared when it is), keyed
        ``router:<provider>/<model>:rpm|tpm``, sized by ``usage_burst`` so that no 60-second window
        exceeds the limit; tokens are charged from the usage record afterwards."""
        router = self._router
        counters = router.counters
        burst = router.config.usage_burst
        refill = (1.0 - burst) / 60.0
        found = candidates(tier, now, mask, self)
        room: list[float] = []
        for member in found:
            upstream = member.upstream
            share = 1.0
            if upstream.rpm:
                capacity = upstream.rpm * burst
                share = min(share, await counters.level(upstream.rpm_key, capacity, upstream.rpm * refill) / capacity)
            if upstream.tpm:
                capacity = upstream.tpm * burst
                share = min(share, await counters.level(upstream.tpm_key, capacity, upstream.tpm * refill) / capacity)
            room.append(share)
        for share, member in sorted(zip(room, found, strict=True), key=lambda pair: -pair[0]):
            upstream = member.upstream
            if upstream.tpm and share <= 0:
                continue
            if upstream.rpm:
                if await counters.take(upstream.rpm_key, 1.0, upstream.rpm * burst, upstream.rpm * refill) > 0:
                    continue
            return member
        for member in found:
            entry = f"{member.name}: at rpm/tpm limit"
            if self._skipped is None:
                self._skipped = [entry]
            elif entry not in self._skipped:
                self._skipped.append(entry)
        return None

    def _start(self, member: Member, why: str, now: float, delay: float = 0.0) -> Deployment:
        upstream = member.upstream
        upstream.in_flight += 1
        self._in_flight = True
        self._probe = probe = upstream.breaker.admit(now)
        self._member = member
        self._tried |= member.bit
        self._group_attempts += 1
        self._attempt_started = now
        group = self._group
        assert group is not None
        record = RouteAttempt(
            deployment=member.name, group=group.name, why=why, delay_s=delay, probe=probe,
            score=score_of(group.strategy, member, self) if group.scored else member.weight,
        )
        if self._attempts is None:
            self._attempts = [record]
        else:
            self._attempts.append(record)
        return member.deployment

    def _enter(self, group: Group, now: float) -> None:
        """Move on to a fallback group: a first attempt there, with its own retries."""
        self._group = group
        self._visited |= group.bit
        self._tried = 0
        self._group_attempts = 0
        self._group_started = now
        group.budget.deposit()
        if self._fallbacks is None:
            self._fallbacks = [group.name]
        else:
            self._fallbacks.append(group.name)

    async def _fall_back(self, kind: str, now: float) -> Deployment | None:
        """The first usable member of the next unvisited group in the current group's chain for ``kind``."""
        group = self._group
        assert group is not None
        for target in group.chains.get(kind, ()):
            if self._visited & target.bit:
                continue
            member = await self._pick(target, now, 0)
            if member is not None:
                self._enter(target, now)
                return self._start(member, f"fallback:{kind}", now)
            self._visited |= target.bit
        return None

    # -- the AttemptPlan protocol ------------------------------------------------------------------

    async def next(self, failure: ProviderError | None, remaining: float) -> Deployment | None:
        if self._done:
            return None
        router = self._router
        now = router.clock()
        self._pending = False
        self._deadline = now + remaining
        if failure is None and self._attempts is None:
            # The common case, kept flat: the first pick of a synchronous strategy.
            group = self._group
            assert group is not None
            self._created = self._group_started = now
            group.budget.deposit()
            picker = group.picker
            if picker is not None and group.context_window is None:
                for tier in group.tiers:
                    member = picker(tier, now, 0, self)
                    if member is not None:
                        return self._start(member, "first", now)
            return await self._first(now)
        choice = None if failure is None else await self._after(failure, now, remaining)
        if choice is None:  # (failure is None here only if the kernel skipped a report: stop too)
            self._finish("failed", now)
        return choice

    async def _first(self, now: float) -> Deployment | None:
        """The first attempt when the fast path in :meth:`next` found nothing (or does not apply)."""
        group = self._group
        assert group is not None
        if group.context_window is not None and self.prompt_tokens() > group.context_window:
            self._note(f"prompt exceeds context window of {group.name!r} ({self._tokens} > {group.context_window})")
            choice = await self._fall_back("context_window", now)
            if choice is not None:
                return choice
            # No larger group can take it: let the group's own upstream judge (and explain) it.
        member = await self._pick(group, now, 0)
        if member is not None:
            return self._start(member, "first", now)
        choice = await self._fall_back(UNAVAILABLE, now)
        if choice is not None:
            return choice
        raise self._unavailable(now)

    async def _after(self, failure: ProviderError, now: float, remaining: float) -> Deployment | None:
        router = self._router
        group = self._group
        previous = self._member
        assert group is not None and previous is not None
        if self._attempts is not None and len(self._attempts) >= router.config.max_attempts:
            self._note(f"max_attempts ({router.config.max_attempts}) reached")
            return None
        kind = classify(failure)
        if kind not in RETRY_KINDS:
            if kind in ("context_window", "content_policy"):
                return await self._fall_back(kind, now)
            return None
        if self._group_attempts <= group.retries:
            if group.timeout is not None and now - self._group_started >= group.timeout:
                self._note(f"group {group.name!r} timeout ({group.timeout:g}s) passed")
            else:
                choice = await self._retry(group, now, remaining)
                if choice is not None:
                    return choice
        choice = await self._fall_back(kind, now)
        if choice is not None:
            return choice
        if kind == "rate_limit":
            return await self._wait_retry_after(group, previous, remaining)
        return None

    async def _retry(self, group: Group, now: float, remaining: float) -> Deployment | None:
        """Another member of the same group: an untried one at once, or a tried one after backoff."""
        member = await self._pick(group, now, self._tried)
        delay = 0.0
        if member is None:
            member = await self._pick(group, now, 0)
            if member is None:
                return None
            delay = group.backoff(cast("RetryCallState", _Attempt(self._group_attempts)))
            if delay >= remaining:
                self._note(f"backoff of {delay:.3f}s would pass the deadline")
                return None
        if not group.budget.withdraw(now):
            self._note(f"retry budget of {group.name!r} exhausted")
            return None
        if delay > 0:
            await anyio.sleep(delay)
            now = self._router.clock()
            if not usable(member, now):
                return None
        return self._start(member, "retry", now, delay)

    async def _wait_retry_after(self, group: Group, member: Member, remaining: float) -> Deployment | None:
        """Nothing else can answer: wait out a rate-limited member's Retry-After, then retry it."""
        router = self._router
        now = router.clock()
        wait = member.upstream.breaker.reopens_in(now)
        if self._group_attempts > group.retries:
            return None
        if not 0 < wait <= router.config.max_retry_after or wait >= remaining:
            return None
        if not group.budget.withdraw(now):
            self._note(f"retry budget of {group.name!r} exhausted")
            return None
        await anyio.sleep(wait)
        now = router.clock()
        if not usable(member, now):
            return None
        return self._start(member, "retry_after", now, wait)

    def _unavailable(self, now: float) -> Exception:
        """Nothing could take the request at all: a 503 (or 429) with the soonest time to retry."""
        group = self._origin
        assert group is not None
        self._finish("unavailable", now)
        waits = [m.upstream.breaker.reopens_in(now) for m in group.members if m.upstream.active]
        retry_after = max(1.0, min(waits)) if waits else None
        if self._skipped and all(s.endswith("at rpm/tpm limit") for s in self._skipped):
            return RateLimited(
                f"every deployment of {group.name!r} is at its rpm/tpm limit", retry_after=retry_after or 1.0
            )
        detail = "; ".join(self._skipped or ()) or "none is active"
        return ProviderUnavailable(
            f"no deployment of {group.name!r} can take requests now ({detail})",
            status=503, code="no_deployment_available", retry_after=retry_after,
        )

    def report(
        self, deployment: Deployment, error: ProviderError | None, latency_s: float, first_token_s: float | None
    ) -> None:
        member = self._member
        if member is None or not self._in_flight or deployment is not member.deployment:
            return
        self._in_flight = False
        upstream = member.upstream
        upstream.in_flight -= 1
        router = self._router
        now = router.clock()
        probe, self._probe = self._probe, False
        attempts = self._attempts
        assert attempts is not None
        record = attempts[-1]
        record.latency_ms = latency_s * 1000
        alpha = router.config.latency_alpha
        if error is None:
            record.status = 200
            upstream.breaker.success(now, probe)
            if probe:  # a recovered deployment starts afresh, not weighed down by its outage
                alpha = 1.0
            if not self.streaming:
                upstream.latency = _ewma(upstream.latency, max(latency_s, 1e-6), alpha)
            elif first_token_s is not None:
                # first_token_s counts from the start of the request: take earlier attempts out.
                sample = first_token_s - (self._attempt_started - self._created)
                upstream.ttft = _ewma(upstream.ttft, max(sample, 1e-6), alpha)
            self._finish("ok", now)
            return
        kind = classify(error)
        record.status = error.status
        record.error = kind
        if kind in BREAKER_KINDS:
            upstream.breaker.failure(now, kind, error.retry_after, probe)
            sample = max(latency_s, router.config.failure_penalty)
            if self.streaming:
                upstream.ttft = _ewma(upstream.ttft, sample, alpha)
            else:
                upstream.latency = _ewma(upstream.latency, sample, alpha)
        else:
            upstream.breaker.success(now, probe)  # the upstream answered; the request was at fault
        if (self.streaming and first_token_s is not None) or now >= self._deadline:
            self._finish("failed", now)  # the kernel will not ask for another attempt
            return
        # The kernel calls next() right after report() when it may try again. If it does not (the
        # stream had already started), settle the decision once the task yields.
        self._pending = True
        try:
            asyncio.get_running_loop().call_soon(self._settle)
        except RuntimeError:
            pass  # no asyncio loop: __del__ settles it

    def _settle(self) -> None:
        if self._pending and not self._done:
            self._finish("failed", self._router.clock())

    def _finish(self, outcome: str, now: float) -> None:
        """The request is over: hand this plan to the decision log (the decision itself is built
        only when someone reads it, see :meth:`decision`)."""
        if self._done:
            return
        self._done = True
        self._pending = False
        self._outcome = outcome
        self._finished_at = time.time()
        info = self._info
        if info is not None:
            self._request_id = info.request_id
            self._info = None  # its headers hold the caller's credentials: keep nothing of them
        self.request = None  # prompt text never outlives the request
        self._router.record(self)

    def decision(self) -> RouteDecision:
        """This (finished) request's :class:`RouteDecision`."""
        origin = self._origin
        rule = self._rule
        assert origin is not None
        for attempt in self._attempts or ():  # final once the plan is done: tidy for display
            if attempt.latency_ms is not None:
                attempt.latency_ms = round(attempt.latency_ms, 3)
            if attempt.score is not None:
                attempt.score = round(attempt.score, 9)
            attempt.delay_s = round(attempt.delay_s, 4)
        return RouteDecision(
            request_id=self._request_id,
            timestamp=self._finished_at,
            model=self.model,
            group=origin.name,
            rule=rule.name if rule is not None else None,
            strategy=origin.strategy,
            reason=rule.reason if rule is not None else origin.reason,
            outcome=self._outcome,
            attempts=self._attempts or [],
            fallbacks=self._fallbacks or [],
            skipped=self._skipped or [],
            notes=self._notes or [],
            complexity=self._complexity if self._complexity >= 0 else None,
            prompt_tokens=self._tokens if self._tokens >= 0 else None,
            principal=self.principal.id,
            tenant=self.principal.tenant,
        )

    def __del__(self) -> None:
        # The kernel reports every attempt that ends, but an attempt cancelled with its request (the
        # client went away) ends without a report: give back what it held.
        if self._done:
            return
        try:
            if self._in_flight and self._member is not None:
                self._member.upstream.in_flight -= 1
                if self._probe:
                    self._member.upstream.breaker.release_probe()
                if self._attempts:
                    self._attempts[-1].error = "cancelled"
            self._finish("failed" if self._pending else "cancelled", self._router.clock())
        except Exception:  # nothing may escape a finalizer
            pass
