"""Model groups compiled for the request path: members, priority tiers, fallback chains, budgets.

Everything a request needs is precomputed here when the config is loaded (or a rule changes), so
routing a request is a dict lookup and a pick among a few members:

* :class:`Upstream` — the live state of one deployment (``provider/model``): in-flight count,
  latency EWMAs, circuit breaker, rate-limit counter keys. Shared by every group listing it.
* :class:`Member` — a deployment as one group configures it (weight, priority, prices, tags).
* :class:`Tier` — the members of one priority, with cumulative weights for the weighted pick.
* :class:`Group` — the tiers plus the group's settings, its retry budget and its fallback chains
  (flattened: ``chain[kind]`` is every group reachable through fallbacks for that error class, in
  order, each group once).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sira_kernel import ConfigError, Deployment
from tenacity import wait_random_exponential

from ._breaker import Breaker, BreakerStore, RetryBudget
from ._config import ERROR_KINDS, DeploymentConfig, RouterConfig

__all__ = ["Group", "Member", "Tier", "Upstream", "compile_groups", "implicit_group"]

_INF = float("inf")
RETRY_KINDS = ("rate_limit", "server", "timeout")
"""Error classes retried inside a group and sent through the general ``fallbacks``."""
UNAVAILABLE = "unavailable"
"""Chain key for "no member could take the request at all" (the general ``fallbacks``)."""


class Upstream:
    """Live state of one deployment, shared by every group that lists it."""

    __slots__ = (
        "active", "breaker", "deployment", "in_flight", "key", "latency", "rpm", "rpm_key", "tpm", "tpm_key",
        "ttft",
    )

    def __init__(self, deployment: Deployment, breaker: Breaker) -> None:
        self.deployment = deployment
        self.key = f"{deployment.provider}/{deployment.model}"
        self.breaker = breaker
        self.active = True
        """The provider is registered in the current kernel snapshot."""
        self.in_flight = 0
        self.latency = 0.0
        """EWMA of whole-response latency in seconds (0: not measured yet)."""
        self.ttft = 0.0
        """EWMA of time to first token of streams in seconds (0: not measured yet)."""
        self.rpm: int | None = None
        self.tpm: int | None = None
        self.rpm_key = f"router:{self.key}:rpm"
        self.tpm_key = f"router:{self.key}:tpm"


class Member:
    """One deployment as a group configures it."""

    __slots__ = (
        "bit", "config", "deployment", "input_price", "name", "output_price", "priority", "tags", "upstream",
        "weight",
    )

    def __init__(self, upstream: Upstream, config: DeploymentConfig, bit: int) -> None:
        self.upstream = upstream
        self.deployment = upstream.deployment
        self.name = upstream.key
        self.config = config
        self.bit = bit
        self.weight = config.weight
        self.priority = config.priority
        self.tags = frozenset(config.tags)
        self.input_price = config.input_price
        self.output_price = config.output_price


class Tier:
    """The members of one priority, with what the strategies need precomputed."""

    __slots__ = ("cost_order", "counter", "cumulative", "members", "total")

    def __init__(self, members: tuple[Member, ...]) -> None:
        self.members = members
        running = 0.0
        cumulative = []
        for member in members:
            running += member.weight
            cumulative.append(running)
        self.cumulative = tuple(cumulative)
        self.total = running
        self.counter = itertools.count()
        self.cost_order: tuple[Member, ...] | None = None
        self.update_costs()

    def update_costs(self) -> None:
        """Precompute the cost order when it does not depend on the request's token counts: when
        sorting by input price and by output price gives the same order (unknown prices last)."""
        def key_in(m: Member) -> float:
            return _INF if m.input_price is None else m.input_price

        def key_out(m: Member) -> float:
            return _INF if m.output_price is None else m.output_price

        by_in = tuple(sorted(self.members, key=key_in))
        by_out = tuple(sorted(self.members, key=key_out))
        self.cost_order = by_in if by_in == by_out else None


class Group:
    """A compiled model group."""

    __slots__ = (
        "aliases", "backoff", "bit", "budget", "chains", "config", "context_window", "deployments",
        "expected_output", "fallbacks", "fallbacks_on", "implicit", "members", "name", "picker", "reason",
        "retries", "scored", "strategy", "tiers", "timeout",
    )

    def __init__(
        self,
        name: str,
        members: tuple[Member, ...],
        *,
        strategy: str,
        retries: int,
        backoff_base: float,
        backoff_max: float,
        timeout: float | None,
        context_window: int | None,
        expected_output: int,
        budget: RetryBudget,
        fallbacks: tuple[str, ...] = (),
        fallbacks_on: Mapping[str, tuple[str, ...]] | None = None,
        aliases: tuple[str, ...] = (),
        bit: int = 0,
        implicit: bool = False,
    ) -> None:
        from ._strategies import PICKERS  # the strategies import this module

        self.name = name
        self.members = members
        self.strategy = strategy
        self.picker = PICKERS.get(strategy)
        """The synchronous pick function; None for ``usage`` (asynchronous, in the plan)."""
        self.scored = strategy in ("least_busy", "latency", "cost")
        """Whether the decision log's score must be taken when the pick is made (else: the weight)."""
        self.retries = retries
        self.backoff = wait_random_exponential(multiplier=backoff_base, max=backoff_max)
        self.timeout = timeout
        self.context_window = context_window
        self.expected_output = expected_output
        self.budget = budget
        self.fallbacks = fallbacks
        self.fallbacks_on = dict(fallbacks_on or {})
        self.aliases = aliases
        self.bit = bit
        self.implicit = implicit
        self.reason = f"group {name!r} ({strategy})"
        ordered = sorted(members, key=lambda m: m.priority)
        self.deployments = tuple(m.deployment for m in ordered)
        self.tiers = tuple(
            Tier(tuple(tier)) for _, tier in itertools.groupby(ordered, key=lambda m: m.priority)
        )
        self.chains: dict[str, tuple[Group, ...]] = {}

    def direct_fallbacks(self, kind: str) -> tuple[str, ...]:
        """The groups named for ``kind`` (general ``fallbacks`` for retryable classes)."""
        if kind in self.fallbacks_on:
            return self.fallbacks_on[kind]
        if kind in RETRY_KINDS or kind == UNAVAILABLE:
            return self.fallbacks
        return ()

    def subset(self, tags: frozenset[str], name: str) -> Group:
        """The same group restricted to members carrying every tag in ``tags`` (a rule's ``tags``)."""
        members = tuple(m for m in self.members if tags <= m.tags)
        if not members:
            raise ConfigError(f"{name}: no deployment of group {self.name!r} has the tags {sorted(tags)}")
        group = Group(
            self.name, members, strategy=self.strategy, retries=self.retries, backoff_base=1.0, backoff_max=1.0,
            timeout=self.timeout, context_window=self.context_window, expected_output=self.expected_output,
            budget=self.budget, fallbacks=self.fallbacks, fallbacks_on=self.fallbacks_on, bit=self.bit,
        )
        group.backoff = self.backoff
        group.chains = self.chains
        group.reason = f"{self.reason} tags={','.join(sorted(tags))}"
        return group


def _resolve_chains(groups: Mapping[str, Group]) -> None:
    """Flatten each group's fallbacks per error class: depth first, each group at most once."""
    kinds = (*ERROR_KINDS, UNAVAILABLE)
    for group in groups.values():
        for kind in kinds:
            seen = {group.name}
            chain: list[Group] = []

            def walk(current: Group, kind: str = kind, seen: set[str] = seen, chain: list[Group] = chain) -> None:
                for name in current.direct_fallbacks(kind):
                    target = groups[name]
                    if target.name in seen:
                        continue
                    seen.add(target.name)
                    chain.append(target)
                    walk(target)

            walk(group)
            if chain:
                group.chains[kind] = tuple(chain)


def _upstream(
    upstreams: dict[str, Upstream], breakers: BreakerStore, config: DeploymentConfig, where: str
) -> Upstream:
    deployment = Deployment(config.provider, config.model)
    key = f"{config.provider}/{config.model}"
    upstream = upstreams.get(key)
    if upstream is None:
        upstream = upstreams[key] = Upstream(deployment, breakers.breaker(key))
    for limit in ("rpm", "tpm"):
        value = getattr(config, limit)
        if value is None:
            continue
        known = getattr(upstream, limit)
        if known is not None and known != value:
            raise ConfigError(
                f"{where}.{limit}: {key} has {limit} = {known} in another group; a deployment has one limit"
            )
        setattr(upstream, limit, value)
    return upstream


def compile_groups(
    config: RouterConfig,
    upstreams: dict[str, Upstream],
    breakers: BreakerStore,
    clock: Callable[[], float],
    budgets: dict[str, RetryBudget] | None = None,
) -> dict[str, Group]:
    """Every configured group by name *and* by alias, with fallback chains resolved.

    ``budgets`` carries retry budgets over from a previous compilation (same group name)."""
    by_name: dict[str, Group] = {}
    for index, (name, section) in enumerate(config.groups.items()):
        where = f"plugins.router.groups.{name}"
        if not section.deployments:
            raise ConfigError(f"{where}.deployments: a group needs at least one deployment")
        members = []
        seen: set[str] = set()
        for position, dep in enumerate(section.deployments):
            upstream = _upstream(upstreams, breakers, dep, f"{where}.deployments[{position}]")
            if upstream.key in seen:
                raise ConfigError(f"{where}.deployments[{position}]: {upstream.key} is listed twice")
            seen.add(upstream.key)
            members.append(Member(upstream, dep, 1 << position))
        budget = (budgets or {}).get(name) or RetryBudget(config.budget, clock)
        by_name[name] = Group(
            name, tuple(members),
            strategy=section.strategy or config.strategy,
            retries=config.retries if section.retries is None else section.retries,
            backoff_base=section.backoff_base or config.backoff_base,
            backoff_max=section.backoff_max or config.backoff_max,
            timeout=section.timeout, context_window=section.context_window,
            expected_output=section.expected_output_tokens, budget=budget,
            fallbacks=tuple(section.fallbacks),
            fallbacks_on={kind: tuple(names) for kind, names in section.fallbacks_on.items()},
            aliases=tuple(section.aliases), bit=1 << index,
        )
    for name, group in by_name.items():
        where = f"plugins.router.groups.{name}"
        named: list[tuple[str, Iterable[str]]] = [("fallbacks", group.fallbacks)]
        named += [(f"fallbacks_on.{kind}", names) for kind, names in group.fallbacks_on.items()]
        for key, names in named:
            for target in names:
                if target not in by_name:
                    raise ConfigError(f"{where}.{key}: no group named {target!r}")
    _resolve_chains(by_name)
    table = dict(by_name)
    for name, group in by_name.items():
        for alias in group.aliases:
            if alias in table:
                raise ConfigError(f"plugins.router.groups.{name}.aliases: {alias!r} is already a group or alias")
            table[alias] = group
    return table


def implicit_group(
    name: str,
    deployments: Iterable[Deployment],
    config: RouterConfig,
    upstreams: dict[str, Upstream],
    breakers: BreakerStore,
    budget: RetryBudget,
) -> Group:
    """A group for a model no group lists: its deployments equally weighted, the default settings."""
    members = []
    for position, deployment in enumerate(deployments):
        dep = DeploymentConfig(provider=deployment.provider, model=deployment.model)
        members.append(Member(_upstream(upstreams, breakers, dep, f"<{name}>"), dep, 1 << position))
    return Group(
        name, tuple(members), strategy=config.strategy, retries=config.retries,
        backoff_base=config.backoff_base, backoff_max=config.backoff_max, timeout=None, context_window=None,
        expected_output=256, budget=budget, implicit=True,
    )


def describe(group: Group) -> dict[str, Any]:
    """A group as the admin API shows it."""
    return {
        "name": group.name,
        "aliases": list(group.aliases),
        "strategy": group.strategy,
        "retries": group.retries,
        "timeout": group.timeout,
        "context_window": group.context_window,
        "fallbacks": list(group.fallbacks),
        "fallbacks_on": {k: list(v) for k, v in group.fallbacks_on.items()},
        "chains": {k: [g.name for g in v] for k, v in group.chains.items()},
        "budget": {
            "level": round(group.budget.level, 3), "capacity": group.budget.capacity,
            "retries": group.budget.withdrawn, "denied": group.budget.denied,
        },
        "deployments": [
            {
                "deployment": m.name, "weight": m.weight, "priority": m.priority, "tags": sorted(m.tags),
                "input_price": m.input_price, "output_price": m.output_price,
                "rpm": m.upstream.rpm, "tpm": m.upstream.tpm, "active": m.upstream.active,
                "in_flight": m.upstream.in_flight,
                "latency_ms": round(m.upstream.latency * 1000, 3) or None,
                "ttft_ms": round(m.upstream.ttft * 1000, 3) or None,
            }
            for m in group.members
        ],
    }
