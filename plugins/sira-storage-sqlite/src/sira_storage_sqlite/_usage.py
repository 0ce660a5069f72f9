"""``UsageStore`` on SQLite: the usage ledger, one row per ``UsageRecord``.

Filters are built from fixed SQL fragments chosen by which ``UsageFilter`` fields are set; every
value is a bound parameter. ``since`` is inclusive and ``until`` exclusive. Grouping keys come from
an allowlist (:data:`GROUPS`) mapped to fixed expressions; ``day`` is the UTC date (``2026-01-31``)
and ``status`` the status code as text, since group values are strings.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from sira_kernel.events import UsageRecord
from sira_kernel.storage import UsageFilter, UsageSummaryRow

from ._codec import check_limit, dump, load_attempts
from ._database import Database

__all__ = ["GROUPS", "SCOPES", "UsageTables"]

_COLUMNS = (
    "request_id, timestamp, operation, principal, principal_kind, tenant, team, model, provider, upstream_model,"
    " stream, status, error_code, prompt_tokens, completion_tokens, total_tokens, cached_tokens, usage_estimated,"
    " cost_usd, latency_ms, ttft_ms, attempts, attempt_log"
)
STORED_FIELDS = frozenset(name.strip() for name in _COLUMNS.split(","))
"""The ``UsageRecord`` fields stored, one column each (a test checks none is missing)."""

_INSERT = (
    "INSERT OR IGNORE INTO usage_records (" + _COLUMNS + ") VALUES"
    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = "SELECT " + _COLUMNS + " FROM usage_records"

_FILTERS = {
    "since": "timestamp >= ?",
    "until": "timestamp < ?",
    "tenant": "tenant = ?",
    "team": "team = ?",
    "principal": "principal = ?",
    "model": "model = ?",
    "provider": "provider = ?",
}

GROUPS = {
    "tenant": "tenant",
    "team": "team",
    "principal": "principal",
    "model": "model",
    "provider": "provider",
    "status": "CAST(status AS TEXT)",
    "day": "date(timestamp, 'unixepoch')",
}
"""What ``summarize_usage`` groups by: name → SQL expression (never caller text)."""

_TOTALS = (
    "COUNT(*), COALESCE(SUM(status >= 400), 0), COALESCE(SUM(prompt_tokens), 0),"
    " COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(total_tokens), 0), TOTAL(cost_usd),"
    " COALESCE(AVG(latency_ms), 0.0)"
)

SCOPES = {
    "tenant": "SELECT TOTAL(cost_usd) FROM usage_records WHERE tenant = ? AND timestamp >= ?",
    "team": "SELECT TOTAL(cost_usd) FROM usage_records WHERE team = ? AND timestamp >= ?",
    "principal": "SELECT TOTAL(cost_usd) FROM usage_records WHERE principal = ? AND timestamp >= ?",
}
"""``spend`` scopes: each an index range scan over (scope, timestamp, cost_usd)."""


def _values(record: UsageRecord) -> tuple[Any, ...]:
    r = record
    return (
        r.request_id, r.timestamp, r.operation, r.principal, r.principal_kind, r.tenant, r.team, r.model, r.provider,
        r.upstream_model, int(r.stream), r.status, r.error_code, r.prompt_tokens, r.completion_tokens,
        r.total_tokens, r.cached_tokens, int(r.usage_estimated), r.cost_usd, r.latency_ms, r.ttft_ms, r.attempts,
        dump(r.attempt_log),
    )


def _record(row: Any) -> UsageRecord:
    return UsageRecord(
        request_id=row[0], timestamp=row[1], operation=row[2], principal=row[3], principal_kind=row[4],
        tenant=row[5], team=row[6], model=row[7], provider=row[8], upstream_model=row[9], stream=bool(row[10]),
        status=row[11], error_code=row[12], prompt_tokens=row[13], completion_tokens=row[14], total_tokens=row[15],
        cached_tokens=row[16], usage_estimated=bool(row[17]), cost_usd=row[18], latency_ms=row[19], ttft_ms=row[20],
        attempts=row[21], attempt_log=load_attempts(row[22]),
    )


def _where(where: UsageFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for name, clause in _FILTERS.items():
        value = getattr(where, name)
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


class UsageTables:
    """The ``UsageStore`` methods of :class:`~sira_storage_sqlite.SQLiteStorage`."""

    _db: Database

    async def write_usage(self, records: Sequence[UsageRecord]) -> None:
        """Insert a batch in one transaction; a ``request_id`` already stored (or repeated) is skipped."""
        if not records:
            return
        rows = [_values(record) for record in records]

        def insert(connection: sqlite3.Connection) -> None:
            connection.executemany(_INSERT, rows)

        await self._db.write(insert)

    async def query_usage(self, where: UsageFilter) -> list[UsageRecord]:
        """Matching records, newest first (``limit``/``offset`` page through them)."""
        check_limit("limit", where.limit)
        check_limit("offset", where.offset)
        clause, params = _where(where)
        sql = _SELECT + clause + " ORDER BY timestamp DESC, id DESC LIMIT ? OFFSET ?"
        params += [where.limit, where.offset]
        rows = await self._db.read(lambda c: c.execute(sql, params).fetchall())
        return [_record(row) for row in rows]

    async def summarize_usage(self, where: UsageFilter, group_by: Sequence[str]) -> list[UsageSummaryRow]:
        """Totals per group of matching records (``limit``/``offset`` do not apply), ordered by group."""
        names = list(dict.fromkeys(group_by))
        unknown = [name for name in names if name not in GROUPS]
        if unknown:
            raise ValueError(f"cannot group usage by {unknown[0]!r}: choose from {', '.join(GROUPS)}")
        clause, params = _where(where)
        expressions = [GROUPS[name] for name in names]
        positions = ", ".join(str(i + 1) for i in range(len(names)))  # GROUP BY 1, 2: column positions
        sql = "SELECT " + ", ".join([*expressions, _TOTALS]) + " FROM usage_records" + clause
        if names:
            sql += " GROUP BY " + positions + " ORDER BY " + positions
        rows = await self._db.read(lambda c: c.execute(sql, params).fetchall())
        summary = []
        for row in rows:
            requests, errors, prompt, completion, total, cost, latency = row[len(names):]
            if requests == 0:  # no GROUP BY over no rows still yields one row
                continue
            summary.append(
                UsageSummaryRow(
                    group=dict(zip(names, row[: len(names)], strict=True)), requests=requests, errors=errors,
                    prompt_tokens=prompt, completion_tokens=completion, total_tokens=total, cost_usd=cost,
                    avg_latency_ms=latency,
                )
            )
        return summary

    async def spend(self, scope: str, scope_id: str, since: float) -> float:
        """USD spent since ``since`` (inclusive) by a tenant, team or principal; unpriced requests count 0."""
        sql = SCOPES.get(scope)
        if sql is None:
            raise ValueError(f"cannot sum spend by {scope!r}: choose from {', '.join(SCOPES)}")
        rows = await self._db.read(lambda c: c.execute(sql, (scope_id, since)).fetchall())
        return float(rows[0][0])

