"""Structured logging: structlog, JSON or console, request id bound per request, secrets redacted.

Every :class:`~sira_kernel.config.Secret` registers its value here when created; the redaction
processor replaces any registered value, bearer token or ``sk-`` style key in every log line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging", "get_logger", "redact", "register_secret"]

_SECRETS: set[str] = set()
_SECRET_RE: re.Pattern[str] | None = None
_KEYLIKE = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9._\-]{8,})")
REDACTED = "[REDACTED]"


def register_secret(value: str) -> None:
    """Never log ``value``. Values shorter than 6 characters are ignored (they would redact words)."""
    global _SECRET_RE
    if len(value) >= 6 and value not in _SECRETS:
        _SECRETS.add(value)
        _SECRET_RE = re.compile("|".join(re.escape(s) for s in sorted(_SECRETS, key=len, reverse=True)))


def redact(text: str) -> str:
    """Replace registered secrets and key-like tokens in ``text``."""
    if _SECRET_RE is not None:
        text = _SECRET_RE.sub(REDACTED, text)
    return _KEYLIKE.sub(REDACTED, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    if isinstance(value, tuple):  # a plain tuple: subclasses (namedtuples) take other constructor args
        return tuple(_redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(repr(value))
    return value


def _redaction_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        event_dict[key] = _redact_value(value)
    return event_dict


def _redact_rendered(_: Any, __: str, event: Any) -> Any:
    # After rendering (tracebacks are formatted here), redact the final line once more.
    return redact(event) if isinstance(event, str) else event


def configure_logging(format: str = "console", level: str = "info") -> None:
    """Configure structlog (and stdlib logging through it) for the whole process."""
    renderer: Any
    if format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redaction_processor,
            renderer,
            _redact_rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "sira") -> Any:
    """A structlog logger bound with ``component=name``."""
    return structlog.get_logger(component=name)
