"""The routing core: groups, rules and live state; ``route()`` makes a plan for each request.

:class:`Router` knows nothing about the kernel's lifecycle, so strategies and plans can be tested
(and benchmarked) by calling it directly with a :class:`~sira_kernel.RouteTable`. The plugin
(``sira_router._plugin``) wires it to the kernel: the scheduler's counter backend, the
TokenCounter and PriceBook services, the bus, the admin API.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from sira_kernel import (
    ConfigError,
    CounterBackend,
    Deployment,
    InProcessCounters,
    ModelInfo,
    Principal,
    RequestInfo,
    Route,
    RouteTable,
    UsageRecord,
)
from sira_kernel.accounting import PriceBook, estimate_chat_tokens
from sira_kernel.registrations import Health

from ._breaker import BreakerState, BreakerStore, LocalBreakers, RetryBudget
from ._config import RouterConfig, RuleConfig
from ._decisions import DecisionLog, RouteDecision
from ._groups import Group, Upstream, compile_groups, describe, implicit_group
from ._plan import RouterPlan
from ._rules import RuleSet
from ._strategies import usable

__all__ = ["Router", "RouterHealth", "RouterState"]

_MILLION = 1_000_000


@runtime_checkable
class RouterState(Protocol):
    """The router's state, registered as a service (``services.get(RouterState)``) with a health check."""

    def breaker_states(self) -> list[BreakerState]:
        """Every deployment's circuit breaker."""
        ...

    def decision_log(self, limit: int | None = None) -> list[RouteDecision]:
        """The latest routing decisions, newest first."""
        ...

    def group_info(self) -> list[dict[str, Any]]:
        """The configured groups with their members' live state."""
        ...

    def rule_configs(self) -> list[RuleConfig]:
        """The rules in force."""
        ...


RouterHealth = Health
"""The router's health answer (true when some deployment can take a request; ``detail`` names the
breakers that are not closed): the kernel's :class:`~sira_kernel.registrations.Health`."""


class Router:
    """Model groups, rules, strategies and the live state behind them."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        counters: CounterBackend | None = None,
        breakers: BreakerStore | None = None,
        count_tokens: Callable[[Any], int] = estimate_chat_tokens,
        price_book: Callable[[], PriceBook | None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.counters: CounterBackend = counters or InProcessCounters(clock)
        self.breakers: BreakerStore = breakers or LocalBreakers(config.breaker)
        self.count_tokens = count_tokens
        self.price_book = price_book
        self.publish: Callable[[RouterPlan], None] | None = None
        """Called with every finished plan (the plugin publishes ``plan.decision()`` when subscribed)."""
        self.decisions = DecisionLog(config.decision_log_size)
        self.upstreams: dict[str, Upstream] = {}
        self.groups: dict[str, Group] = compile_groups(config, self.upstreams, self.breakers, clock)
        """Groups by name and alias."""
        self.named: dict[str, Group] = {name: g for name, g in self.groups.items() if g.name == name}
        self._budgets: dict[str, RetryBudget] = {}
        self._implicit: dict[str, Group] = {}
        self._targets: dict[str, Group] = {}
        self._targets_next: dict[str, Group] = {}
        self._derived: list[Group] = []
        self._routes: RouteTable | None = None
        self.rules: RuleSet = self._compile_rules(config.rules)

    # -- listing ------------------------------------------------------------------------------------

    def listed_models(self, routes: RouteTable) -> list[ModelInfo]:
        """Every configured group under its name and each alias, as entries of a model listing.

        A group is an embedding model when every member is one by its provider's listing."""
        listed = []
        for name, group in self.groups.items():
            kinds = {_kind(routes, deployment) for deployment in group.deployments}
            kind: Literal["chat", "embedding"] = "embedding" if kinds == {"embedding"} else "chat"
            listed.append(ModelInfo(name, kind=kind, context_window=group.context_window))
        return listed

    # -- the request path --------------------------------------------------------------------------

    def route(
        self, request: Any, principal: Principal, routes: RouteTable, info: RequestInfo | None = None
    ) -> Route | None:
        """A :class:`~sira_kernel.Route` whose plan is a fresh :class:`RouterPlan`, or None when the
        model is neither in a group, nor matched by a rule, nor (with ``route_unlisted``) served."""
        if routes is not self._routes:
            self.refresh(routes)
        rules = self.rules
        if rules:
            plan = RouterPlan(self, request, principal, info)
            rule = rules.match(plan)
            if rule is not None:
                group = rule.choose(plan)
                plan.bind(group, rule)
                return Route(group.deployments, rule.reason, plan)
            found = self.groups.get(request.model) or self._unlisted(request.model, routes)
            if found is None:
                return None
            return Route(found.deployments, found.reason, plan.bind(found))
        found = self.groups.get(request.model) or self._unlisted(request.model, routes)
        if found is None:
            return None
        return Route(found.deployments, found.reason, RouterPlan(self, request, principal, info).bind(found))

    def _unlisted(self, model: str, routes: RouteTable | None) -> Group | None:
        if not self.config.route_unlisted or routes is None:
            return None
        group = self._implicit.get(model)
        if group is None:
            deployments = routes.lookup(model)
            if not deployments:
                return None
            budget = self._budgets.get(model)
            if budget is None:
                budget = self._budgets[model] = RetryBudget(self.config.budget, self.clock)
            group = implicit_group(model, deployments, self.config, self.upstreams, self.breakers, budget)
            for member in group.members:
                member.upstream.active = member.deployment.provider in routes.providers
            self._implicit[model] = group  # bounded: only models the providers serve get here
        return group

    def refresh(self, routes: RouteTable) -> None:
        """A new kernel snapshot: mark deployments whose provider is (in)active, re-read prices."""
        self._routes = routes
        self._implicit = {}
        providers = routes.providers
        for upstream in self.upstreams.values():
            upstream.active = upstream.deployment.provider in providers
        self.update_prices()

    def update_prices(self) -> None:
        """Fill prices the config leaves out from the PriceBook service, for ``cost`` groups."""
        book = self.price_book() if self.price_book is not None else None
        for group in self._all_groups():
            if group.strategy != "cost":
                continue
            changed = False
            for member in group.members:
                config = member.config
                if book is None or (config.input_price is not None and config.output_price is not None):
                    continue
                deployment = member.deployment
                probe = UsageRecord(
                    request_id="", timestamp=0.0, operation="chat", principal="", principal_kind="",
                    model=deployment.model, provider=deployment.provider, upstream_model=deployment.model,
                )
                try:
                    probe.prompt_tokens = probe.total_tokens = _MILLION
                    input_price = book.cost(probe)
                    probe.prompt_tokens, probe.completion_tokens = 0, _MILLION
                    output_price = book.cost(probe)
                except Exception:
                    continue
                if config.input_price is None and input_price is not None:
                    member.input_price, changed = input_price, True
                if config.output_price is None and output_price is not None:
                    member.output_price, changed = output_price, True
            if changed:
                for tier in group.tiers:
                    tier.update_costs()

    def _all_groups(self) -> list[Group]:
        return [*self.named.values(), *self._targets.values(), *self._derived]

    def record(self, plan: RouterPlan) -> None:
        """A plan finished: keep it in the decision log and publish its decision."""
        self.decisions.append(plan)
        if self.publish is not None:
            self.publish(plan)

    async def observe_usage(self, record: UsageRecord) -> None:
        """Charge a request's tokens to its deployment's tokens-per-minute bucket (off the hot path)."""
        if not record.total_tokens or record.provider is None:
            return
        upstream = self.upstreams.get(f"{record.provider}/{record.upstream_model}")
        if upstream is None or not upstream.tpm:
            return
        burst = self.config.usage_burst
        await self.counters.give(
            upstream.tpm_key, -float(record.total_tokens), upstream.tpm * burst, upstream.tpm * (1.0 - burst) / 60.0
        )

    # -- rules ---------------------------------------------------------------------------------------

    def _resolve(self, target: str, tags: list[str], where: str) -> Group:
        group = self.groups.get(target)
        if group is None:
            provider, sep, model = target.partition("/")
            if not (sep and provider and model):
                raise ConfigError(f"{where}: target {target!r} is neither a group nor provider/model")
            group = self._targets_next.get(target) or self._targets.get(target)
            if group is None:
                budget = RetryBudget(self.config.budget, self.clock)
                group = implicit_group(
                    target, [Deployment(provider, model)], self.config, self.upstreams, self.breakers, budget
                )
                group.implicit = False
                if self._routes is not None:
                    group.members[0].upstream.active = provider in self._routes.providers
            self._targets_next[target] = group
        if tags:
            group = group.subset(frozenset(tags), where)
            self._derived.append(group)
        return group

    def _compile_rules(self, configs: Sequence[RuleConfig]) -> RuleSet:
        """Compile ``configs``; the deployment targets and tag subsets of the rules they replace are
        dropped (a target kept by the new rules keeps its group, and so its retry budget)."""
        derived = self._derived
        self._derived = []
        self._targets_next = {}
        try:
            rules = RuleSet(configs, self._resolve)
        except BaseException:
            self._derived = derived
            raise
        self._targets = self._targets_next
        return rules

    def set_rules(self, configs: Sequence[RuleConfig]) -> None:
        """Replace every rule (validated first; on error nothing changes)."""
        self.rules = self._compile_rules(configs)
        self.update_prices()

    def rule_configs(self) -> list[RuleConfig]:
        return list(self.rules.configs)

    def find_rule(self, name: str) -> RuleConfig | None:
        return next((r for r in self.rules.configs if r.name == name), None)

    def put_rule(self, rule: RuleConfig) -> bool:
        """Add ``rule``, or replace the rule of the same name; True when it was added."""
        configs = list(self.rules.configs)
        for index, existing in enumerate(configs):
            if existing.name == rule.name:
                configs[index] = rule
                self.set_rules(configs)
                return False
        self.set_rules([*configs, rule])
        return True

    def delete_rule(self, name: str) -> bool:
        configs = [r for r in self.rules.configs if r.name != name]
        if len(configs) == len(self.rules.configs):
            return False
        self.set_rules(configs)
        return True

    def dry_run(self, request: Any, principal: Principal, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Where ``request`` would go, without sending it: the rule, group, score and candidates."""
        info = RequestInfo(method="POST", path="/v1/chat/completions", headers=headers or {})
        plan = RouterPlan(self, request, principal, info)
        rule = self.rules.match(plan) if self.rules else None
        group = rule.choose(plan) if rule is not None else (
            self.groups.get(request.model) or self._unlisted(request.model, self._routes)
        )
        now = self.clock()
        answer: dict[str, Any] = {
            "model": request.model,
            "rule": rule.name if rule is not None else None,
            "group": group.name if group is not None else None,
            "strategy": group.strategy if group is not None else None,
            "reason": (rule.reason if rule is not None else group.reason) if group is not None else
            "no rule or group: the kernel's default routing decides",
            "prompt_tokens": plan.prompt_tokens() if hasattr(request, "messages") else None,
            "complexity": plan.complexity() if hasattr(request, "messages") else None,
            "deployments": [],
        }
        if group is not None:
            answer["deployments"] = [
                {
                    "deployment": m.name, "priority": m.priority, "weight": m.weight, "usable": usable(m, now),
                    "breaker": m.upstream.breaker.state(now).state,
                }
                for m in group.members
            ]
            answer["fallbacks"] = {kind: [g.name for g in chain] for kind, chain in group.chains.items()}
        return answer

    # -- RouterState ---------------------------------------------------------------------------------

    def breaker_states(self) -> list[BreakerState]:
        return self.breakers.states(self.clock())

    def reset_breakers(self, deployment: str | None = None) -> int:
        """Close the breaker of ``deployment`` (or of every deployment); how many were reset."""
        count = 0
        for key, upstream in self.upstreams.items():
            if deployment is None or key == deployment:
                upstream.breaker.reset()
                count += 1
        return count

    def decision_log(self, limit: int | None = None) -> list[RouteDecision]:
        return self.decisions.latest(limit)

    def group_info(self) -> list[dict[str, Any]]:
        return [describe(group) for group in self.named.values()]

    def health(self) -> RouterHealth:
        now = self.clock()
        states = self.breakers.states(now)
        troubled = [s for s in states if s.state != "closed"]
        routable = not self.upstreams or any(
            u.active and u.breaker.allows(now) for u in self.upstreams.values()
        )
        detail = f"{len(states)} breakers, {len(troubled)} not closed"
        if troubled:
            detail += ": " + ", ".join(f"{s.deployment} {s.state}" for s in troubled[:20])
        return RouterHealth(routable, detail)


def _kind(routes: RouteTable, deployment: Deployment) -> str | None:
    provider = routes.providers.get(deployment.provider)
    if provider is None:
        return None
    for info in provider.models():
        if (info.upstream or info.id) == deployment.model or info.id == deployment.model:
            return info.kind
    return None
