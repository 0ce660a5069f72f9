"""Mapping Gemini's failures onto the kernel's ``ProviderError`` tree.

Google's errors look like ``{"error": {"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED",
"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}, ...]}}``
(wrapped in a one-element list by the non-SSE stream endpoint).

==============================================================  ==========================================
upstream                                                        kernel error
==============================================================  ==========================================
400 ``INVALID_ARGUMENT`` / ``FAILED_PRECONDITION``, 404, other  ``ProviderRejected`` (the upstream status)
4xx
401, 403 (``UNAUTHENTICATED``, ``PERMISSION_DENIED``) and 400   ``ProviderRejected`` (502: the gateway's own
with reason ``API_KEY_INVALID`` (how Google refuses a bad key)  credentials were refused)
429 ``RESOURCE_EXHAUSTED``                                      ``ProviderRateLimited`` (``retry_after``
                                                                from Retry-After or ``RetryInfo``)
408, 504 ``DEADLINE_EXCEEDED``; connect/first-token/total       ``ProviderTimeout`` (504)
deadline
500 ``INTERNAL``, 503 ``UNAVAILABLE``, other 5xx; connection    ``ProviderUnavailable`` (502)
refused/reset/closed, invalid JSON
a prompt refused by ``promptFeedback.blockReason``              ``ProviderRejected`` (400,
                                                                code ``content_filter``)
==============================================================  ==========================================

Messages quote Google's own message, truncated and with secrets redacted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from sira_kernel.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from sira_kernel.logs import redact
from sira_kernel.upstream import MAX_MESSAGE, parse_retry_after, sanitize

__all__ = ["GoogleError", "blocked_prompt", "google_error", "status_error"]

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)s")
_BAD_KEY_REASONS = frozenset(
    {
        "API_KEY_INVALID",
        "API_KEY_EXPIRED",
        "API_KEY_SERVICE_BLOCKED",
        "API_KEY_HTTP_REFERRER_BLOCKED",
        "API_KEY_IP_ADDRESS_BLOCKED",
    }
)


class GoogleError(msgspec.Struct, frozen=True):
    """The fields of a Google error object the adapter reads."""

    code: int | None = None
    message: str = ""
    status: str | None = None
    details: list[Any] = msgspec.field(default_factory=list)

    @property
    def retry_delay(self) -> float | None:
        """Seconds from a ``google.rpc.RetryInfo`` detail (``"12s"``, ``"0.5s"``), if there is one."""
        for detail in self.details:
            if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
                match = _DURATION.fullmatch(str(detail.get("retryDelay", "")))
                if match:
                    return float(match.group(1))
        return None

    @property
    def reasons(self) -> set[str]:
        """The ``reason`` of every ``google.rpc.ErrorInfo`` detail."""
        return {
            str(detail.get("reason"))
            for detail in self.details
            if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.ErrorInfo")
        }


_decode_error = msgspec.json.Decoder(GoogleError)


def google_error(body: bytes | Any) -> GoogleError:
    """The error object in ``body`` (raw bytes or already decoded); its text when it is not one."""
    data: Any = body
    if isinstance(body, bytes):
        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return GoogleError(message=body.decode("utf-8", "replace").strip())
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            try:
                return msgspec.convert(error, GoogleError, strict=False)
            except msgspec.ValidationError:
                return GoogleError(message=str(error.get("message", "")))
        if isinstance(error, str):
            return GoogleError(message=error)
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return GoogleError(message=text.strip())


def status_error(
    status: int, headers: Mapping[str, str], body: bytes | Any, *, provider: str, secrets: Iterable[str]
) -> ProviderError:
    """The kernel error for an upstream answer (or an in-stream error object) with ``status``."""
    error = google_error(body)
    if status in (401, 403) or (status == 400 and error.reasons & _BAD_KEY_REASONS):
        return ProviderRejected(
            f"the upstream rejected the gateway's credentials (HTTP {status} {error.status or ''}".rstrip()
            + "); check this provider's api_key",
            provider=provider,
            status=502,
            code="upstream_auth_failed",
        )
    label = f"{status} {error.status}" if error.status else str(status)
    text = sanitize(error.message, secrets)
    message = f"upstream answered {label}: {text}" if text else f"upstream answered {label}"
    retry_after = parse_retry_after(headers)
    if retry_after is None:
        retry_after = error.retry_delay
    if status == 429:
        return ProviderRateLimited(message, provider=provider, retry_after=retry_after)
    if status in (408, 504):
        return ProviderTimeout(message, provider=provider)
    if 400 <= status < 500 and status != 499:
        return ProviderRejected(message, provider=provider, status=status)
    return ProviderUnavailable(message, provider=provider, retry_after=retry_after)


def blocked_prompt(reason: str, detail: str | None, *, provider: str) -> ProviderRejected:
    """The error for a prompt Gemini refused to answer (``promptFeedback.blockReason``)."""
    message = f"Gemini blocked the prompt (blockReason {reason})"
    if detail:
        message += f": {redact(detail)[:MAX_MESSAGE]}"
    return ProviderRejected(message, provider=provider, status=400, code="content_filter")
