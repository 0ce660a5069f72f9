"""Mapping Anthropic's failures onto the kernel's ``ProviderError`` tree.

Anthropic answers errors as ``{"type": "error", "error": {"type": ..., "message": ...}}``, with the
same body in an ``event: error`` mid-stream. The error ``type`` decides; the HTTP status is the
fallback for bodies without one (a proxy's HTML page, a truncated answer):

=========================================  ====================================================
Anthropic                                  kernel error
=========================================  ====================================================
``invalid_request_error`` (400)            ``ProviderRejected`` (400)
``authentication_error`` (401),            ``ProviderRejected`` (502, ``upstream_auth_failed``):
``permission_error`` (403)                 the gateway's own key was refused
``billing_error`` (402)                    ``ProviderRejected`` (502, ``upstream_billing``)
``not_found_error`` (404)                  ``ProviderRejected`` (404)
``request_too_large`` (413)                ``ProviderRejected`` (413)
other 4xx                                  ``ProviderRejected`` (the upstream's status)
``rate_limit_error`` (429)                 ``ProviderRateLimited`` (429, ``retry_after``)
``timeout_error`` (504), 408               ``ProviderTimeout`` (504)
``overloaded_error`` (529)                 ``ProviderUnavailable`` (503, ``upstream_overloaded``)
``api_error`` (500), other 5xx             ``ProviderUnavailable`` (502)
connection refused / reset / closed        ``ProviderUnavailable`` (502)
connect / first-token / total deadline     ``ProviderTimeout`` (504)
=========================================  ====================================================

Messages quote Anthropic's own message (and its ``request-id`` when it sent one), truncated and
with secrets redacted; an authentication failure never quotes anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec
from sira_kernel.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from sira_kernel.upstream import parse_retry_after, sanitize

__all__ = ["ERROR_STATUS", "error_for", "status_error", "upstream_error"]

#: The HTTP status Anthropic documents for each error type (used for errors sent mid-stream).
ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class _ErrorDetail(msgspec.Struct):
    type: str | None = None
    message: str | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail | str | None = None
    message: str | None = None


_decode_error = msgspec.json.Decoder(_ErrorBody).decode


def upstream_error(body: bytes) -> tuple[str | None, str]:
    """The error ``type`` and message of an Anthropic error body (or the text of any other body)."""
    try:
        decoded = _decode_error(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None, body.decode("utf-8", "replace").strip()
    error = decoded.error
    if isinstance(error, _ErrorDetail):
        return error.type, error.message or ""
    if isinstance(error, str):
        return None, error
    return None, decoded.message or body.decode("utf-8", "replace").strip()


def error_for(
    error_type: str | None,
    status: int,
    message: str,
    *,
    provider: str,
    retry_after: float | None = None,
) -> ProviderError:
    """The kernel error for an Anthropic error of ``error_type`` (or, without one, of ``status``).

    ``message`` must already be sanitized.
    """
    if error_type is None or error_type not in ERROR_STATUS:
        error_type = _type_for(status)
    if error_type in ("authentication_error", "permission_error"):
        return ProviderRejected(
            f"Anthropic rejected the gateway's credentials ({error_type}); check this provider's api_key",
            provider=provider,
            status=502,
            code="upstream_auth_failed",
        )
    if error_type == "billing_error":
        return ProviderRejected(
            f"Anthropic refused the gateway's account (billing_error): {message}",
            provider=provider,
            status=502,
            code="upstream_billing",
        )
    text = f"Anthropic {error_type}: {message}" if message else f"Anthropic {error_type}"
    if error_type == "rate_limit_error":
        return ProviderRateLimited(text, provider=provider, retry_after=retry_after)
    if error_type == "timeout_error":
        return ProviderTimeout(text, provider=provider)
    if error_type == "overloaded_error":
        return ProviderUnavailable(
            text, provider=provider, status=503, code="upstream_overloaded", retry_after=retry_after
        )
    if error_type == "api_error":
        return ProviderUnavailable(text, provider=provider, retry_after=retry_after)
    # invalid_request_error, not_found_error, request_too_large and unknown 4xx: the request's fault.
    client_status = status if 400 <= status < 500 else ERROR_STATUS[error_type]
    return ProviderRejected(text, provider=provider, status=client_status)


def _type_for(status: int) -> str:
    for error_type, documented in ERROR_STATUS.items():
        if documented == status:
            return error_type
    if status == 408:
        return "timeout_error"
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def status_error(
    status: int, headers: Mapping[str, str], body: bytes, *, provider: str, secrets: Iterable[str]
) -> ProviderError:
    """The kernel error for an upstream answer with a non-2xx ``status``."""
    error_type, text = upstream_error(body)
    message = sanitize(text, secrets)
    request_id = headers.get("request-id")
    if request_id and message:
        message = f"{message} (request-id {sanitize(request_id, secrets)[:100]})"
    return error_for(error_type, status, message, provider=provider, retry_after=parse_retry_after(headers))
