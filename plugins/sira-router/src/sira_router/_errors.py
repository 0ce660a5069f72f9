"""Which class of failure a provider error is, for retries, fallbacks and breakers.

=================  =================================================================  =========  =======
kind               raised as                                                          retried    breaker
=================  =================================================================  =========  =======
``rate_limit``     ``ProviderRateLimited`` (upstream 429; ``retry_after`` honoured)   yes        cooldown
``timeout``        ``ProviderTimeout`` (connect, first token, total)                  yes        counts
``server``         any other retryable ``ProviderError`` (5xx, reset, bad stream)     yes        counts
``context_window`` ``ProviderRejected`` whose code/message says the prompt is too long  no         no
``content_policy`` ``ProviderRejected`` whose code/message names a content filter      no         no
``auth``           ``ProviderRejected`` with code ``upstream_auth_failed``: the upstream   no         counts
                   refused the gateway's own credentials, so the deployment is broken
``rejected``       any other non-retryable error (the request itself is wrong)        no         no
=================  =================================================================  =========  =======

Only ``rate_limit``, ``timeout`` and ``server`` are retried (the kernel's ``retryable`` flag) and fall
back through a group's ``fallbacks``; ``context_window`` and ``content_policy`` fall back only through
``fallbacks_on``; ``auth`` and ``rejected`` go straight to the client.
"""

from __future__ import annotations

from sira_kernel import ProviderError, ProviderRateLimited, ProviderTimeout

__all__ = ["BREAKER_KINDS", "classify"]

_CONTEXT_MARKERS = (
    "context_length", "context length", "context window", "context_window", "maximum context",
    "too many tokens", "prompt is too long", "input is too long", "maximum input length",
    "reduce the length", "string_above_max_length",
)
_POLICY_MARKERS = ("content_policy", "content policy", "content_filter", "content filter", "responsibleai",
                   "safety system", "flagged")

BREAKER_KINDS = frozenset({"rate_limit", "timeout", "server", "auth"})
"""Kinds that say something about the deployment's health (and so feed its circuit breaker)."""


def classify(error: ProviderError) -> str:
    """The failure class of ``error`` (see the module docstring)."""
    if isinstance(error, ProviderRateLimited) or error.status == 429:
        return "rate_limit"
    if isinstance(error, ProviderTimeout):
        return "timeout"
    if error.retryable:
        return "server"
    if error.code == "upstream_auth_failed":
        return "auth"
    text = f"{error.code} {error.message}".lower()
    if any(marker in text for marker in _CONTEXT_MARKERS):
        return "context_window"
    if any(marker in text for marker in _POLICY_MARKERS):
        return "content_policy"
    return "rejected"
