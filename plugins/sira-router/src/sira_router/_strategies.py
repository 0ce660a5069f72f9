"""The synchronous strategies: choose one usable member of a priority tier.

Every pick function has the signature ``pick(tier, now, mask, ctx) -> Member | None``: ``mask`` has
the bits of members to leave out (already tried by this request), ``ctx`` is the request's plan
(for its random generator, whether it streams, its token counts, and to note skipped members).
A member is *usable* when its provider is active and its circuit breaker lets a request through.

The common case (nothing masked, the chosen member usable) allocates nothing; the slow path builds
the list of usable candidates. The ``usage`` strategy needs the kernel's counter backend, which is
asynchronous, so it lives in the plan (``RouterPlan._pick_usage``).

=============== =================================================================================
strategy        choice (score shown in the decision log)
=============== =================================================================================
``weighted``    random, proportional to ``weight`` (score: the weight)
``round_robin`` the next member in turn (no score)
``least_busy``  fewest requests in flight from this instance; ties broken at random (score: in flight)
``latency``     power of two choices: two random members, the lower of EWMA latency × (in flight + 1);
                streams use the EWMA of time to first token (score: that product, in seconds); a
                member whose breaker waits for its half-open probe wins, so it gets tested
``cost``        lowest ``input_price × prompt tokens + output_price × expected output tokens``
                (score: estimated USD)
=============== =================================================================================
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Protocol

from ._groups import Member, Tier

__all__ = ["PICKERS", "PickContext", "candidates", "score_of", "usable"]

_INF = float("inf")


class PickContext(Protocol):
    """What a strategy may ask of the request being routed (implemented by the plan)."""

    def random(self) -> float: ...

    def randrange(self, n: int) -> int: ...

    @property
    def streaming(self) -> bool: ...

    def prompt_tokens(self) -> int: ...

    def known_prompt_tokens(self) -> int | None:
        """The prompt tokens if they were counted already (the decision log never counts)."""
        ...

    def output_tokens(self) -> int: ...

    def skip(self, member: Member, now: float) -> None: ...


def usable(member: Member, now: float) -> bool:
    upstream = member.upstream
    return upstream.active and upstream.breaker.allows(now)


def candidates(tier: Tier, now: float, mask: int, ctx: PickContext) -> list[Member]:
    """The usable members not in ``mask``; unusable ones are noted on the plan."""
    found = []
    for member in tier.members:
        if mask & member.bit:
            continue
        if usable(member, now):
            found.append(member)
        else:
            ctx.skip(member, now)
    return found


def pick_weighted(tier: Tier, now: float, mask: int, ctx: PickContext) -> Member | None:
    members = tier.members
    if not mask:
        if tier.total > 0:
            member = members[bisect_right(tier.cumulative, ctx.random() * tier.total)]
        else:
            member = members[ctx.randrange(len(members))]
        if usable(member, now):
            return member
    found = candidates(tier, now, mask, ctx)
    if not found:
        return None
    total = sum(m.weight for m in found)
    if total <= 0:
        return found[ctx.randrange(len(found))]
    point = ctx.random() * total
    for member in found:
        point -= member.weight
        if point < 0:
            return member
    return found[-1]


def pick_round_robin(tier: Tier, now: float, mask: int, ctx: PickContext) -> Member | None:
    members = tier.members
    count = len(members)
    start = next(tier.counter)
    for step in range(count):
        member = members[(start + step) % count]
        if mask & member.bit:
            continue
        if usable(member, now):
            return member
        ctx.skip(member, now)
    return None


def pick_least_busy(tier: Tier, now: float, mask: int, ctx: PickContext) -> Member | None:
    members = tier.members
    count = len(members)
    start = ctx.randrange(count) if count > 1 else 0
    best: Member | None = None
    for step in range(count):
        member = members[(start + step) % count]
        if mask & member.bit:
            continue
        if not usable(member, now):
            ctx.skip(member, now)
            continue
        if best is None or member.upstream.in_flight < best.upstream.in_flight:
            best = member
    return best


def _latency_score(member: Member, streaming: bool) -> float:
    upstream = member.upstream
    ewma = upstream.ttft if streaming and upstream.ttft else upstream.latency
    return ewma * (upstream.in_flight + 1)


def _better(a: Member, b: Member, now: float, streaming: bool) -> Member:
    """The lower score of two; a member waiting for its half-open probe gets it (its score still
    carries the failures that opened its breaker, so it would otherwise never be tested again)."""
    if a.upstream.breaker.wants_probe(now):
        return a
    if b.upstream.breaker.wants_probe(now):
        return b
    return a if _latency_score(a, streaming) <= _latency_score(b, streaming) else b


def pick_latency(tier: Tier, now: float, mask: int, ctx: PickContext) -> Member | None:
    members = tier.members
    count = len(members)
    streaming = ctx.streaming
    if not mask and count > 1:
        first = ctx.randrange(count)
        second = ctx.randrange(count - 1)
        if second >= first:
            second += 1
        a, b = members[first], members[second]
        if usable(a, now) and usable(b, now):
            return _better(a, b, now, streaming)
    found = candidates(tier, now, mask, ctx)
    if len(found) <= 1:
        return found[0] if found else None
    first = ctx.randrange(len(found))
    second = ctx.randrange(len(found) - 1)
    if second >= first:
        second += 1
    return _better(found[first], found[second], now, streaming)


def _cost(member: Member, prompt: int, output: int) -> float:
    if member.input_price is None and member.output_price is None:
        return _INF
    return ((member.input_price or 0.0) * prompt + (member.output_price or 0.0) * output) / 1e6


def pick_cost(tier: Tier, now: float, mask: int, ctx: PickContext) -> Member | None:
    order = tier.cost_order
    if order is not None:  # the order does not depend on the request's size
        for member in order:
            if mask & member.bit:
                continue
            if usable(member, now):
                return member
            ctx.skip(member, now)
        return None
    prompt, output = ctx.prompt_tokens(), ctx.output_tokens()
    best: Member | None = None
    best_cost = _INF
    for member in tier.members:
        if mask & member.bit:
            continue
        if not usable(member, now):
            ctx.skip(member, now)
            continue
        cost = _cost(member, prompt, output)
        if best is None or cost < best_cost:
            best, best_cost = member, cost
    return best


PICKERS: dict[str, Callable[[Tier, float, int, PickContext], Member | None]] = {
    "weighted": pick_weighted,
    "round_robin": pick_round_robin,
    "least_busy": pick_least_busy,
    "latency": pick_latency,
    "cost": pick_cost,
}


def score_of(strategy: str, member: Member, ctx: PickContext) -> float | None:
    """The chosen member's score under ``strategy``, for the decision log."""
    if strategy == "least_busy":
        return float(member.upstream.in_flight)
    if strategy == "latency":
        return _latency_score(member, ctx.streaming)
    if strategy == "cost":
        prompt = ctx.known_prompt_tokens()
        if prompt is None:
            return None
        cost = _cost(member, prompt, ctx.output_tokens())
        return None if cost == _INF else cost
    return member.weight
