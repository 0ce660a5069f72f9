"""Sira's router (plugin id ``router``): model groups, strategies, retries, fallbacks, breakers, rules.

The kernel runs each request's attempt loop; this plugin decides it. ``sira_route`` returns a
:class:`~sira_kernel.Route` whose ``plan`` is a :class:`RouterPlan`: the kernel asks it which
deployment each attempt goes to and tells it how each attempt went. The whole picture (config,
strategies, retries and budgets, fallbacks by error class, circuit breakers, rules and complexity
routing, the admin API, the decision log) is in docs/routing.md.

Public API: :class:`RouterPlugin` (the entry point), :class:`RouterConfig` and the config structs,
:class:`Router` (the routing core, usable without a kernel), :class:`RouterPlan`,
:class:`RouterState` (the service interface), :class:`RouteDecision` / :class:`RouteAttempt`
(``route.decision`` events), :class:`Breaker` / :class:`BreakerStore` / :class:`BreakerState` (the
interface a shared breaker backend implements), :class:`RetryBudget`, :func:`classify` and
:func:`complexity_score`.
"""

from __future__ import annotations

from ._breaker import Breaker, BreakerState, BreakerStore, LocalBreakers, RetryBudget
from ._config import (
    BreakerConfig,
    BudgetConfig,
    ComplexityConfig,
    DeploymentConfig,
    GroupConfig,
    RouterConfig,
    RuleConfig,
    RuleTier,
    RuleWhen,
)
from ._decisions import RouteAttempt, RouteDecision
from ._errors import classify
from ._plan import RouterPlan
from ._plugin import RouterPlugin
from ._router import Router, RouterHealth, RouterState
from ._rules import complexity_score

__all__ = [
    "Breaker",
    "BreakerConfig",
    "BreakerState",
    "BreakerStore",
    "BudgetConfig",
    "ComplexityConfig",
    "DeploymentConfig",
    "GroupConfig",
    "LocalBreakers",
    "RetryBudget",
    "RouteAttempt",
    "RouteDecision",
    "Router",
    "RouterConfig",
    "RouterHealth",
    "RouterPlan",
    "RouterPlugin",
    "RouterState",
    "RuleConfig",
    "RuleTier",
    "RuleWhen",
    "classify",
    "complexity_score",
]
