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
from sira_kernel.upstream import parse_retry_after, sanitize

__all__ = ["status_error", "upstream_message"]


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
