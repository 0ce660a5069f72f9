"""Failure and pacing directives embedded in message text: ``[mock:status=503]``, ``[mock:hang]``…

Directives travel inside the last user message so that any client (an ``openai`` SDK, curl, a
kernel test) can trigger them without a side channel. Callers check for the ``[mock:`` marker
before calling :func:`parse_directives`, so ordinary requests never touch a regex.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import msgspec
from sira_kernel.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)

__all__ = [
    "MARKER",
    "NO_DIRECTIVES",
    "DirectiveError",
    "Directives",
    "error_for_status",
    "parse_directives",
]

MARKER = "[mock:"

#: Bound on ``[mock:tokens=N]`` so a directive cannot make the provider build a huge reply.
MAX_TOKENS_DIRECTIVE = 100_000

_DIRECTIVE = re.compile(r"\[mock:([A-Za-z_]+)(?:=([^\]\s]*))?\]")


class DirectiveError(ValueError):
    """A ``[mock:...]`` directive is unknown or has a malformed value."""


class Directives(msgspec.Struct, frozen=True, kw_only=True):
    """The directives found in one message; ``None`` means "not given"."""

    status: int | None = None
    retry_after: float | None = None
    hang: bool = False
    drop: int | None = None
    pace_ms: float | None = None
    first_token_ms: float | None = None
    tokens: int | None = None


NO_DIRECTIVES = Directives()


def _status(value: str) -> int:
    status = int(value)
    if not 400 <= status <= 599:
        raise ValueError("expected an HTTP error status from 400 to 599")
    return status


def _count(value: str) -> int:
    count = int(value)
    if count < 0:
        raise ValueError("expected a non-negative integer")
    return count


def _tokens(value: str) -> int:
    count = _count(value)
    if count > MAX_TOKENS_DIRECTIVE:
        raise ValueError(f"at most {MAX_TOKENS_DIRECTIVE}")
    return count


def _seconds_or_ms(value: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):  # also rejects NaN
        raise ValueError("expected a finite non-negative number")
    return number


_PARSERS: dict[str, Callable[[str], object]] = {
    "status": _status,
    "retry_after": _seconds_or_ms,
    "drop": _count,
    "pace_ms": _seconds_or_ms,
    "first_token_ms": _seconds_or_ms,
    "tokens": _tokens,
}


def parse_directives(text: str) -> tuple[Directives, str]:
    """Return the directives in ``text`` and the text with them removed.

    Raises :class:`DirectiveError` for an unknown directive or a malformed value, so a typo in a
    test shows up as an error instead of a silently normal answer.
    """
    found: dict[str, object] = {}
    for match in _DIRECTIVE.finditer(text):
        key, value = match.group(1).lower(), match.group(2)
        if key == "hang":
            if value is not None:
                raise DirectiveError("[mock:hang] takes no value")
            found["hang"] = True
            continue
        parser = _PARSERS.get(key)
        if parser is None:
            raise DirectiveError(f"unknown directive [mock:{key}]")
        if value is None:
            raise DirectiveError(f"[mock:{key}=...] needs a value")
        try:
            found[key] = parser(value)
        except ValueError as err:
            raise DirectiveError(f"[mock:{key}={value}]: {err}") from None
    if not found:
        return NO_DIRECTIVES, text
    return Directives(**found), _DIRECTIVE.sub("", text)  # type: ignore[arg-type]


def error_for_status(
    status: int, *, provider: str, reason: str, retry_after: float | None = None
) -> ProviderError:
    """The kernel error an adapter raises when its upstream answers ``status``.

    429 is rate limiting (``retry_after`` defaults to 1 s), 401/403 mean the gateway's own provider
    key is bad, so the client sees 502; 504 is a timeout, other 5xx are unavailability and other
    4xx are the upstream rejecting the request, with its own status.
    """
    message = f"mock: upstream answered {status} ({reason})"
    if status == 429:
        retry_after = 1.0 if retry_after is None else retry_after
        return ProviderRateLimited(message, provider=provider, retry_after=retry_after)
    if status in (401, 403):
        return ProviderRejected(message, provider=provider, status=502, code="upstream_auth_failed")
    if status == 504:
        return ProviderTimeout(message, provider=provider)
    if status >= 500:
        return ProviderUnavailable(message, provider=provider)
    return ProviderRejected(message, provider=provider, status=status)
