"""Small helpers shared by the tables: JSON columns, fresh ids, one-row queries."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec

from sira_kernel.events import Attempt
from sira_kernel.storage import Limits

_encoder = msgspec.json.Encoder()
_limits = msgspec.json.Decoder(Limits)
_object = msgspec.json.Decoder(dict[str, Any])
_strings = msgspec.json.Decoder(list[str])
_attempts = msgspec.json.Decoder(list[Attempt])


def dump(value: Any) -> str:
    """A JSON column's text."""
    return _encoder.encode(value).decode()


def dump_optional(value: Any) -> str | None:
    return None if value is None else dump(value)


def load_limits(text: str) -> Limits:
    return _limits.decode(text)


def load_object(text: str) -> dict[str, Any]:
    return _object.decode(text)


def load_strings(text: str | None) -> list[str] | None:
    return None if text is None else _strings.decode(text)


def load_attempts(text: str) -> list[Attempt]:
    return _attempts.decode(text)


def new_id(kind: str) -> str:
    """An opaque, URL-safe id for a row created without one (``key_3f2a…``)."""
    return f"{kind}_{uuid.uuid4().hex}"


def one(connection: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    """The first row, or None. Fetches every row so the statement is reset (no open read snapshot)."""
    rows = connection.execute(sql, params).fetchall()
    return rows[0] if rows else None


def check_limit(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0")
