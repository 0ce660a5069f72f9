"""Mapping upstream failures onto the kernel's ``ProviderError`` tree.

=====================================================  =============================================
upstream                                               kernel error
=====================================================  =============================================
connection refused / reset / closed, invalid JSON, 5xx  ``ProviderUnavailable`` (502)
429                                                    ``ProviderRateLimited`` (429, ``retry_after``)
connect, first-token or total deadline; 408            ``ProviderTimeout`` (504)
401, 403                                               ``ProviderRejected`` (502: the gateway's own
                                                       credentials were refused)
other 4xx (400, 404, 422…)                             ``ProviderRejected`` (the upstream's status)
=====================================================  =============================================

Messages quote the upstream's own error message, truncated and with secrets redacted.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import msgspec
from sira_kernel.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from sira_kernel.logs import REDACTED, redact

__all__ = ["parse_retry_after", "sanitize", "status_error", "transport_error", "upstream_message"]

MAX_MESSAGE = 500


def sanitize(text: str, secrets: Iterable[str]) -> str:
    """``text`` truncated to a readable length with every secret (and key-like token) redacted."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = redact(text)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + "…"
    return text


def upstream_message(body: bytes) -> tuple[str, str | None]:
    """The message and ``param`` of an OpenAI-style error body (or of a plain-text one)."""
    try:
        data: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.decode("utf-8", "replace").strip(), None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or error.get("msg")
            param = error.get("param")
            if message is not None:
                return str(message), param if isinstance(param, str) else None
        elif isinstance(error, str):
            return error, None
        if "detail" in data:
            return str(data["detail"]), None
    return body.decode("utf-8", "replace").strip(), None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_error(
    status: int, headers: Mapping[str, str], body: bytes, *, provider: str, secrets: Iterable[str]
) -> ProviderError:
    """The kernel error for an upstream answer with a non-2xx ``status``."""
    if status in (401, 403):
        return ProviderRejected(
            f"the upstream rejected the gateway's credentials (HTTP {status}); check this provider's api_key",
            provider=provider,
            status=502,
            code="upstream_auth_failed",
        )
    text, param = upstream_message(body)
    message = (
        f"upstream answered {status}: {sanitize(text, secrets)}" if text else f"upstream answered {status}"
    )
    if status == 429:
        return ProviderRateLimited(message, provider=provider, retry_after=parse_retry_after(headers))
    if status == 408:
        return ProviderTimeout(message, provider=provider)
    if 400 <= status < 500:
        return ProviderRejected(message, provider=provider, status=status, param=param)
    return ProviderUnavailable(message, provider=provider, retry_after=parse_retry_after(headers))


def transport_error(exc: BaseException, *, provider: str, secrets: Iterable[str]) -> ProviderError:
    """The kernel error for a failure to talk to the upstream at all.

    httpx-aiohttp maps most aiohttp errors (even a refused connection) to ``httpx.ConnectTimeout``,
    so the class is judged from the original exception it chains: only a real timeout is a timeout.
    """
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if exc.__cause__ is not None:
        timed_out = isinstance(cause, TimeoutError)
    else:
        timed_out = isinstance(exc, (TimeoutError, httpx.TimeoutException))
    detail = sanitize(str(cause) or type(cause).__name__, secrets)
    if timed_out:
        return ProviderTimeout(f"upstream timed out: {detail}", provider=provider)
    return ProviderUnavailable(f"upstream connection failed: {detail}", provider=provider)
