"""The ``[plugins.router]`` section: model groups, defaults, breaker, retry budget, rules.

Every key is documented in docs/routing.md. The structs are validated by the kernel before the
plugin is constructed; cross-references (fallback groups, rule targets, aliases) are checked when
the router compiles them (:func:`sira_router._groups.compile_groups`), which raises ``ConfigError``
naming the key.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = [
    "ERROR_KINDS",
    "STRATEGIES",
    "BreakerConfig",
    "BudgetConfig",
    "ComplexityConfig",
    "DeploymentConfig",
    "ErrorKind",
    "GroupConfig",
    "RouterConfig",
    "RuleConfig",
    "RuleTier",
    "RuleWhen",
    "Strategy",
]

Strategy = Literal["weighted", "round_robin", "least_busy", "latency", "cost", "usage"]
STRATEGIES: tuple[str, ...] = ("weighted", "round_robin", "least_busy", "latency", "cost", "usage")

ErrorKind = Literal["rate_limit", "server", "timeout", "context_window", "content_policy"]
ERROR_KINDS: tuple[str, ...] = ("rate_limit", "server", "timeout", "context_window", "content_policy")
"""The error classes fallbacks can be chosen by (see ``sira_router._errors.classify``)."""

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class DeploymentConfig(_Section):
    """One member of a model group: where to send the request and how to weigh it."""

    provider: str
    """The provider's name: the ``[plugins.<id>]`` instance id that registered it (``openai-a``)."""
    model: str
    """The model name sent upstream."""
    weight: NonNegative = 1.0
    """Share of traffic under the ``weighted`` strategy (relative to the other members)."""
    priority: int = 0
    """Lower is preferred: strategies choose among the usable members of the best priority."""
    input_price: NonNegative | None = None
    """USD per million prompt tokens (``cost`` strategy). None: ask the PriceBook service."""
    output_price: NonNegative | None = None
    """USD per million completion tokens (``cost`` strategy). None: ask the PriceBook service."""
    rpm: PositiveInt | None = None
    """Requests per minute this deployment may receive (``usage`` strategy)."""
    tpm: PositiveInt | None = None
    """Tokens per minute this deployment may receive (``usage`` strategy)."""
    tags: list[str] = msgspec.field(default_factory=list)
    """Free-form labels; a rule with ``tags`` sends traffic only to members carrying all of them."""


class GroupConfig(_Section):
    """A public model name served by several deployments, with its own routing settings."""

    deployments: list[DeploymentConfig]
    aliases: list[str] = msgspec.field(default_factory=list)
    """Other public names for this group."""
    strategy: Strategy | None = None
    """How a member is chosen; None: the router's ``strategy``."""
    retries: Count | None = None
    """Extra attempts inside this group after a retryable failure; None: the router's ``retries``."""
    backoff_base: Positive | None = None
    """Seconds: the first retry of the same deployment waits up to this (full jitter)."""
    backoff_max: Positive | None = None
    """Seconds: the longest backoff wait."""
    timeout: Positive | None = None
    """Seconds after this group's first attempt past which no new attempt starts in it (it falls
    back instead). The request's own deadline (``limits.total_timeout``) always applies."""
    fallbacks: list[str] = msgspec.field(default_factory=list)
    """Groups to try, in order, when this one is exhausted by a rate limit, a 5xx or a timeout."""
    fallbacks_on: dict[ErrorKind, list[str]] = msgspec.field(default_factory=dict)
    """Per error class fallbacks, replacing ``fallbacks`` for that class. ``context_window`` and
    ``content_policy`` fall back only through this table."""
    context_window: PositiveInt | None = None
    """Prompt tokens this group accepts; a longer prompt goes straight to its ``context_window``
    fallbacks without an attempt."""
    expected_output_tokens: PositiveInt = 256
    """Completion tokens assumed by the ``cost`` strategy when the request sets no ``max_tokens``."""


class BreakerConfig(_Section):
    """Per-deployment circuit breaker."""

    consecutive_failures: PositiveInt = 5
    """Open after this many failures in a row."""
    error_ratio: Ratio = 0.5
    """…or when at least this share of the attempts in ``window`` failed…"""
    min_requests: PositiveInt = 20
    """…and the window holds at least this many attempts."""
    window: Positive = 30.0
    """Seconds of history for ``error_ratio``."""
    cooldown: Positive = 10.0
    """Seconds an opened breaker stays open before it lets one probe through (half-open)."""
    max_cooldown: Positive = 300.0
    """A failed probe doubles the cooldown up to this. A Retry-After longer than this is capped."""
    probe_timeout: Positive = 60.0
    """Seconds after which an unanswered probe no longer blocks another one."""


class BudgetConfig(_Section):
    """Retry budget, one token bucket per group: retries add at most ``ratio`` on top of first attempts."""

    ratio: Ratio = 0.2
    """Each first attempt deposits this much; each retry takes 1."""
    burst: Positive = 10.0
    """Bucket capacity (and initial level): retries allowed before first attempts have paid for them."""
    min_per_second: NonNegative = 0.5
    """Refill independent of traffic, so a quiet group can still retry."""


DEFAULT_KEYWORDS: tuple[str, ...] = (
    "step by step", "prove", "proof", "derive", "analyze", "analyse", "reason", "explain why",
    "compare", "trade-off", "tradeoff", "optimize", "optimise", "algorithm", "debug", "refactor",
    "architecture", "evaluate", "plan ", "strategy", "theorem", "calculate",
)


class ComplexityConfig(_Section):
    """The request-complexity score used by ``type = "complexity"`` rules (0 = trivial, 1 = hard)."""

    long_prompt_tokens: PositiveInt = 2000
    """Prompt tokens at which the length feature reaches 1."""
    many_turns: PositiveInt = 10
    """Messages at which the conversation feature reaches 1."""
    length_weight: NonNegative = 0.30
    reasoning_weight: NonNegative = 0.25
    code_weight: NonNegative = 0.20
    tools_weight: NonNegative = 0.15
    turns_weight: NonNegative = 0.10
    keywords: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_KEYWORDS))
    """Reasoning keywords (lower case, substring match in the user's text); two or more hits score 1."""


class RuleWhen(_Section):
    """Conditions of a rule; all given conditions must hold. Strings are glob patterns (``gpt-4*``)."""

    models: list[str] = msgspec.field(default_factory=list)
    """Requested model name (any of)."""
    tenants: list[str] = msgspec.field(default_factory=list)
    """Principal's tenant (any of)."""
    keys: list[str] = msgspec.field(default_factory=list)
    """Principal id, i.e. the API key's id (any of)."""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    """Each key must match, in the principal's metadata or the request's ``metadata`` field."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Each (lower-case) request header must be present and match."""
    min_prompt_tokens: Count | None = None
    max_prompt_tokens: Count | None = None
    tools: bool | None = None
    """True: the request offers tools; False: it does not."""
    images: bool | None = None
    """True: a message carries an image part; False: none does."""
    stream: bool | None = None
    """True: streamed requests only; False: non-streamed only."""


class RuleTier(_Section):
    """One tier of a complexity rule: scores up to ``max_score`` go to ``target``."""

    target: str
    max_score: Ratio | None = None
    """None: every remaining score (the last tier)."""


class RuleConfig(_Section):
    """A routing rule: when its conditions hold, the request goes to ``target`` (or a tier)."""

    name: str
    target: str | None = None
    """A group name or alias, or ``provider/model`` for one deployment. Required for ``match`` rules."""
    type: Literal["match", "complexity"] = "match"
    priority: int = 0
    """Higher priorities are evaluated first; the first matching rule wins. Ties keep config order."""
    enabled: bool = True
    when: RuleWhen = msgspec.field(default_factory=RuleWhen)
    tags: list[str] = msgspec.field(default_factory=list)
    """Only members of the target carrying all these tags."""
    tiers: list[RuleTier] = msgspec.field(default_factory=list)
    """Complexity rules: tiers by ascending ``max_score``."""
    description: str = ""


class RouterConfig(_Section):
    """``[plugins.router]``."""

    groups: dict[str, GroupConfig] = msgspec.field(default_factory=dict)
    rules: list[RuleConfig] = msgspec.field(default_factory=list)
    strategy: Strategy = "weighted"
    """Default strategy of groups that set none."""
    retries: Count = 2
    """Default ``retries`` of groups."""
    backoff_base: Positive = 0.2
    backoff_max: Positive = 5.0
    max_retry_after: NonNegative = 30.0
    """A Retry-After up to this many seconds may be waited for (when nothing else can answer)."""
    max_attempts: PositiveInt = 6
    """Attempts per request, all groups together."""
    route_unlisted: bool = True
    """Models that are in no group but served by providers get an implicit group (their providers,
    the default settings), so they also get retries and breakers. False: the kernel routes them."""
    usage_burst: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.1
    """``usage`` strategy: the share of a deployment's rpm/tpm that may be used in one burst. Its
    buckets hold ``usage_burst × limit`` and refill at ``(1 − usage_burst) × limit`` per minute, so
    no 60-second window ever exceeds the limit (the sustained rate is ``1 − usage_burst`` of it)."""
    latency_alpha: Ratio = 0.3
    """EWMA smoothing of the ``latency`` strategy (weight of the newest sample)."""
    failure_penalty: NonNegative = 5.0
    """Seconds counted as a failed attempt's latency by the ``latency`` strategy."""
    decision_log_size: PositiveInt = 1000
    """Decisions kept for ``GET /api/v1/route/decision-log``."""
    admin_prefix: str = "/api/v1"
    """Prefix of the admin API routes."""
    admin_listener: Literal["admin", "public", "none"] = "admin"
    """Listener the admin API is registered on: the kernel's ``admin`` listener; ``public`` (guarded
    by the master key here) when the kernel runs without one; ``none`` disables it."""
    rules_file: str | None = None
    """A JSON file holding the rules: read at start (it replaces ``rules`` when it exists) and
    rewritten by every change made through the admin API. None: admin changes last until restart."""
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    budget: BudgetConfig = msgspec.field(default_factory=BudgetConfig)
    complexity: ComplexityConfig = msgspec.field(default_factory=ComplexityConfig)
