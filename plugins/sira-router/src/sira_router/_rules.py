"""Routing rules: conditions on the request and the caller that send it to a group or deployment.

Rules are compiled into a :class:`RuleSet` when the config loads and whenever the admin API changes
them; the set is swapped in with one assignment, so the request path never sees half an update.
Rules are indexed by the model names they mention: a request only runs the rules that can match
its model, in priority order (higher first; ties keep their order of definition). The first rule
whose conditions all hold decides.

A ``complexity`` rule scores the request (:func:`complexity_score`) and picks the first tier whose
``max_score`` is at least that score. The score is a weighted mean, in [0, 1], of five features:

=========== =====================================================================================
feature     value in [0, 1]
=========== =====================================================================================
length      prompt tokens / ``long_prompt_tokens`` (capped at 1)
reasoning   reasoning keywords found in the user's text (``step by step``, ``prove``…): 0, 0.5, 1 for
            none, one, two or more
code        1 for a fenced code block (```), 0.5 for code-looking lines (``def``, ``class``,
            ``function(``, ``#include``, ``=>``, ``SELECT … FROM``), else 0
tools       1 when the request offers tools
turns       (messages − 1) / (``many_turns`` − 1), capped at 1
=========== =====================================================================================
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sira_kernel import ConfigError

from ._config import ComplexityConfig, RuleConfig, RuleWhen

if TYPE_CHECKING:
    from ._groups import Group
    from ._plan import RouterPlan

__all__ = ["CompiledRule", "RuleSet", "complexity_score", "has_images", "user_text"]

Matcher = Callable[[str], bool]
_GLOB = re.compile(r"[*?\[]")
_CODE_LINE = re.compile(
    r"^\s*(def |class |function\b|#include|import |from \S+ import|public |private |fn |let |const )"
    r"|=>|\bSELECT\b.+\bFROM\b|[;{]\s*$",
    re.MULTILINE | re.IGNORECASE,
)
_IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})


def _matcher(patterns: Sequence[str]) -> Matcher:
    """One callable testing a string against glob patterns (a set lookup when none has wildcards)."""
    if not any(_GLOB.search(p) for p in patterns):
        return frozenset(patterns).__contains__
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return lambda value: regex.match(value) is not None


def _value_matcher(pattern: str) -> Matcher:
    return _matcher([pattern])


def user_text(request: Any) -> str:
    """The text of the user messages, lower-cased (what the keyword features look at)."""
    pieces: list[str] = []
    for message in getattr(request, "messages", ()):
        if message.role != "user":
            continue
        content = message.content
        if isinstance(content, str):
            pieces.append(content)
        elif content:
            pieces.extend(part["text"] for part in content if isinstance(part.get("text"), str))
    return "\n".join(pieces).lower()


def has_images(request: Any) -> bool:
    for message in getattr(request, "messages", ()):
        content = message.content
        if isinstance(content, list) and any(part.get("type") in _IMAGE_PARTS for part in content):
            return True
    return False


def complexity_score(request: Any, prompt_tokens: int, config: ComplexityConfig) -> float:
    """The request-complexity score in [0, 1] (features in the module docstring)."""
    text = user_text(request)
    length = min(1.0, prompt_tokens / config.long_prompt_tokens)
    hits = 0
    for keyword in config.keywords:
        if keyword in text:
            hits += 1
            if hits == 2:
                break
    reasoning = hits / 2
    code = 1.0 if "```" in text else (0.5 if _CODE_LINE.search(text) else 0.0)
    tools = 1.0 if getattr(request, "tools", None) else 0.0
    messages = len(getattr(request, "messages", ()))
    turns = min(1.0, max(0, messages - 1) / max(1, config.many_turns - 1))
    weights = (config.length_weight, config.reasoning_weight, config.code_weight, config.tools_weight,
               config.turns_weight)
    total = sum(weights)
    if total <= 0:
        return 0.0
    features = (length, reasoning, code, tools, turns)
    return round(sum(w * f for w, f in zip(weights, features, strict=True)) / total, 4)


class CompiledRule:
    """A rule ready to test: its conditions as matchers, its target(s) as groups."""

    __slots__ = (
        "config", "exact_models", "headers", "images", "keys", "max_tokens", "metadata", "min_tokens",
        "model_matcher", "name", "order", "priority", "reason", "stream", "target", "tenants", "tiers", "tools",
    )

    def __init__(self, config: RuleConfig, order: int, resolve: Callable[[str, list[str], str], Group]) -> None:
        where = f"rule {config.name!r}"
        when: RuleWhen = config.when
        self.config = config
        self.name = config.name
        self.priority = config.priority
        self.order = order
        self.exact_models = frozenset(m for m in when.models if not _GLOB.search(m))
        self.model_matcher = _matcher(when.models) if when.models else None
        self.tenants = _matcher(when.tenants) if when.tenants else None
        self.keys = _matcher(when.keys) if when.keys else None
        self.metadata = tuple((k, _value_matcher(v)) for k, v in when.metadata.items())
        self.headers = tuple((k.lower(), _value_matcher(v)) for k, v in when.headers.items())
        self.min_tokens = when.min_prompt_tokens
        self.max_tokens = when.max_prompt_tokens
        self.tools = when.tools
        self.images = when.images
        self.stream = when.stream
        self.target: Group | None = None
        self.tiers: tuple[tuple[float, Group], ...] = ()
        if config.type == "match":
            if not config.target:
                raise ConfigError(f"{where}: a match rule needs a target")
            self.target = resolve(config.target, config.tags, where)
            self.reason = f"rule {config.name!r} -> {self.target.reason}"
        else:
            if not config.tiers:
                raise ConfigError(f"{where}: a complexity rule needs tiers")
            tiers = sorted(config.tiers, key=lambda t: 2.0 if t.max_score is None else t.max_score)
            self.tiers = tuple(
                (2.0 if t.max_score is None else t.max_score, resolve(t.target, config.tags, where)) for t in tiers
            )
            self.reason = f"rule {config.name!r} (complexity)"

    @property
    def needs_tokens(self) -> bool:
        return self.min_tokens is not None or self.max_tokens is not None or bool(self.tiers)

    def matches(self, plan: RouterPlan) -> bool:
        if self.model_matcher is not None and not self.model_matcher(plan.model):
            return False
        principal = plan.principal
        if self.tenants is not None and not (principal.tenant and self.tenants(principal.tenant)):
            return False
        if self.keys is not None and not self.keys(principal.id):
            return False
        if self.stream is not None and self.stream != plan.streaming:
            return False
        if self.tools is not None and self.tools != bool(getattr(plan.request, "tools", None)):
            return False
        if self.headers:
            headers = plan.headers
            for name, match in self.headers:
                value = headers.get(name)
                if value is None or not match(value):
                    return False
        if self.metadata:
            extra = getattr(plan.request, "extra", None) or {}
            request_meta = extra.get("metadata")
            if not isinstance(request_meta, Mapping):
                request_meta = {}
            for key, match in self.metadata:
                value = principal.metadata.get(key, request_meta.get(key))
                if value is None or not match(str(value)):
                    return False
        if self.images is not None and self.images != has_images(plan.request):
            return False
        if self.min_tokens is not None or self.max_tokens is not None:
            tokens = plan.prompt_tokens()
            if self.min_tokens is not None and tokens < self.min_tokens:
                return False
            if self.max_tokens is not None and tokens > self.max_tokens:
                return False
        return True

    def choose(self, plan: RouterPlan) -> Group:
        """The group this (matching) rule sends the request to."""
        if self.target is not None:
            return self.target
        score = plan.complexity()
        for ceiling, group in self.tiers:
            if score <= ceiling:
                return group
        return self.tiers[-1][1]


class RuleSet:
    """Compiled rules, indexed by the exact model names they mention."""

    __slots__ = ("by_model", "configs", "needs_headers", "rules", "wildcard")

    def __init__(self, configs: Sequence[RuleConfig], resolve: Callable[[str, list[str], str], Group]) -> None:
        names: set[str] = set()
        for config in configs:
            if config.name in names:
                raise ConfigError(f"rule {config.name!r}: two rules have this name")
            names.add(config.name)
        self.configs = tuple(configs)
        rules = [CompiledRule(c, i, resolve) for i, c in enumerate(configs) if c.enabled]
        rules.sort(key=lambda r: (-r.priority, r.order))
        self.rules = tuple(rules)
        # Rules naming only exact models are indexed by them; the rest (no model condition, or a
        # glob among the models) are tried for every model.
        self.wildcard = tuple(
            r for r in rules if r.model_matcher is None or any(_GLOB.search(m) for m in r.config.when.models)
        )
        by_model: dict[str, tuple[CompiledRule, ...]] = {}
        for model in {m for r in rules for m in r.exact_models}:
            by_model[model] = tuple(r for r in rules if model in r.exact_models or r in self.wildcard)
        self.by_model = by_model
        self.needs_headers = any(r.headers for r in rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def match(self, plan: RouterPlan) -> CompiledRule | None:
        for rule in self.by_model.get(plan.model, self.wildcard):
            if rule.matches(plan):
                return rule
        return None
