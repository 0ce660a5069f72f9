"""Usage reports over the ``UsageStore``: query parsing, the two endpoints, JSON and CSV rendering.

``GET /api/v1/reports/summary`` totals per group; ``GET /api/v1/reports/detailed`` one row per
request. Both are served on the kernel's admin listener, whose guard has already required a
principal with the ``admin`` role. Every query parameter is checked strictly: an unknown or
repeated parameter, a malformed value or one out of bounds is a 400 whose ``param`` names it.

Rows never carry a secret: a ``UsageRecord`` holds none by contract, and every text cell is passed
through the kernel's redaction (registered secrets, ``sk-…`` and ``Bearer …`` shapes) besides,
since the model name is whatever the client sent. CSV cells starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return get a leading ``'`` so a spreadsheet shows them as text instead
of running them as formulas.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from sira_kernel import UsageRecord
from sira_kernel.logs import redact
from sira_kernel.storage import UsageFilter, UsageStore, UsageSummaryRow

__all__ = [
    "DETAILED_COLUMNS",
    "GROUP_BY",
    "MAX_LIMIT",
    "SUMMARY_METRICS",
    "BadParameter",
    "ReportQuery",
    "Reports",
    "parse_query",
    "parse_time",
    "to_csv",
]

GROUP_BY: Mapping[str, str] = {
    "tenant": "tenant", "team": "team", "key": "principal", "model": "model", "provider": "provider",
    "status": "status", "day": "day",
}
"""``group_by`` names accepted in a query → the store's grouping keys (``key`` is the principal)."""
FILTERS: Mapping[str, str] = {
    "tenant": "tenant", "team": "team", "key": "principal", "model": "model", "provider": "provider",
}
"""Text filters in a query → ``UsageFilter`` fields."""
SUMMARY_METRICS = (
    "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "avg_latency_ms",
)
DETAILED_COLUMNS = (
    "request_id", "time", "timestamp", "operation", "tenant", "team", "key", "key_kind", "model",
    "deployment", "provider", "upstream_model", "stream", "status", "error_code", "prompt_tokens",
    "completion_tokens", "total_tokens", "cached_tokens", "usage_estimated", "cost_usd", "latency_ms",
    "ttft_ms", "attempts",
)
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
MAX_OFFSET = 1_000_000_000
MAX_SUMMARY_GROUPS = 10_000
MAX_TEXT = 256
MAX_TIMESTAMP = 253_402_300_799.0  # 9999-12-31T23:59:59Z

_COMMON = frozenset({"since", "until", "format", *FILTERS})
SUMMARY_PARAMS = _COMMON | {"group_by"}
DETAILED_PARAMS = _COMMON | {"limit", "offset"}
_UNIX = re.compile(r"\d{1,12}(\.\d{1,9})?")
_INTEGER = re.compile(r"\d{1,10}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class BadParameter(ValueError):
    """A query parameter that is unknown, repeated, malformed or out of bounds (a 400)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = f"{param}: {message}"


class ReportQuery(msgspec.Struct, kw_only=True):
    """A validated report query."""

    where: UsageFilter
    group_by: tuple[str, ...] = ()
    """Names as the client gave them (``key``, not ``principal``)."""
    format: str = "json"


def parse_time(param: str, value: str) -> float:
    """UNIX seconds (``1735689600``, ``1735689600.5``) or ISO 8601 (``2025-01-01``,
    ``2025-01-01T00:00:00Z``, ``…+02:00``; no offset means UTC) → UNIX seconds."""
    if _UNIX.fullmatch(value):
        seconds = float(value)
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise BadParameter(param, "expected UNIX seconds or an ISO 8601 date-time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_TIMESTAMP:
        raise BadParameter(param, "must lie between 1970-01-01 and 9999-12-31")
    return seconds


def _integer(param: str, value: str, low: int, high: int) -> int:
    if not _INTEGER.fullmatch(value):
        raise BadParameter(param, f"expected an integer from {low} to {high}")
    number = int(value)
    if not low <= number <= high:
        raise BadParameter(param, f"must be from {low} to {high}")
    return number


def _text(param: str, value: str) -> str:
    if not value:
        raise BadParameter(param, "must not be empty")
    if len(value) > MAX_TEXT:
        raise BadParameter(param, f"must be at most {MAX_TEXT} characters")
    if _CONTROL.search(value):
        raise BadParameter(param, "must not contain control characters")
    return value


def _group_by(value: str) -> tuple[str, ...]:
    if not value:
        return ()
    names = tuple(part.strip() for part in value.split(","))
    for name in names:
        if name not in GROUP_BY:
            shown = name if len(name) <= 40 and not _CONTROL.search(name) else "that value"
            raise BadParameter("group_by", f"cannot group by {shown!r}; use any of {', '.join(GROUP_BY)}")
    if len(set(names)) != len(names):
        raise BadParameter("group_by", "names a field twice")
    return names


def parse_query(items: Iterable[tuple[str, str]], allowed: frozenset[str]) -> ReportQuery:
    """Validate a report's query string (``request.query_params.multi_items()``)."""
    values: dict[str, str] = {}
    for name, value in items:
        if name not in allowed:
            shown = name if len(name) <= 40 and not _CONTROL.search(name) else name[:40].encode().hex()
            raise BadParameter(shown, f"unknown parameter; this report takes {', '.join(sorted(allowed))}")
        if name in values:
            raise BadParameter(name, "given more than once")
        values[name] = value
    fields: dict[str, Any] = {}
    for name in ("since", "until"):
        if name in values:
            fields[name] = parse_time(name, values[name])
    if "since" in fields and "until" in fields and fields["until"] < fields["since"]:
        raise BadParameter("until", "must not be before since")
    for name, field in FILTERS.items():
        if name in values:
            fields[field] = _text(name, values[name])
    if "group_by" in allowed:
        fields["limit"] = MAX_SUMMARY_GROUPS
    else:
        fields["limit"] = _integer("limit", values["limit"], 1, MAX_LIMIT) if "limit" in values else DEFAULT_LIMIT
        fields["offset"] = _integer("offset", values["offset"], 0, MAX_OFFSET) if "offset" in values else 0
    output = values.get("format", "json")
    if output not in ("json", "csv"):
        raise BadParameter("format", "must be json or csv")
    return ReportQuery(
        where=UsageFilter(**fields), group_by=_group_by(values.get("group_by", "")), format=output
    )


# -- rows ----------------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def detailed_row(record: UsageRecord) -> dict[str, Any]:
    """One request, as both the JSON and the CSV report show it."""
    deployment = None
    if record.provider is not None:
        deployment = f"{record.provider}/{record.upstream_model}" if record.upstream_model else record.provider
    row = {
        "request_id": record.request_id, "time": _iso(record.timestamp), "timestamp": record.timestamp,
        "operation": record.operation, "tenant": record.tenant, "team": record.team, "key": record.principal,
        "key_kind": record.principal_kind, "model": record.model, "deployment": deployment,
        "provider": record.provider, "upstream_model": record.upstream_model, "stream": record.stream,
        "status": record.status, "error_code": record.error_code, "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens, "total_tokens": record.total_tokens,
        "cached_tokens": record.cached_tokens, "usage_estimated": record.usage_estimated,
        "cost_usd": record.cost_usd, "latency_ms": record.latency_ms, "ttft_ms": record.ttft_ms,
        "attempts": record.attempts,
    }
    return {name: _clean(value) for name, value in row.items()}


def summary_row(row: UsageSummaryRow, group_by: Sequence[str]) -> dict[str, Any]:
    """One group: its grouping fields (as the client named them), then the metrics."""
    out: dict[str, Any] = {}
    for name in group_by:
        value = row.group.get(GROUP_BY[name], row.group.get(name))
        out[name] = _clean(value if value is None else str(value))
    out.update(
        requests=row.requests, errors=row.errors, prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens, total_tokens=row.total_tokens, cost_usd=row.cost_usd,
        avg_latency_ms=row.avg_latency_ms,
    )
    return out


def totals(rows: Sequence[UsageSummaryRow]) -> dict[str, Any]:
    """Every group added up (the average latency weighted by requests)."""
    requests = sum(r.requests for r in rows)
    return {
        "requests": requests,
        "errors": sum(r.errors for r in rows),
        "prompt_tokens": sum(r.prompt_tokens for r in rows),
        "completion_tokens": sum(r.completion_tokens for r in rows),
        "total_tokens": sum(r.total_tokens for r in rows),
        "cost_usd": sum(r.cost_usd for r in rows),
        "avg_latency_ms": sum(r.avg_latency_ms * r.requests for r in rows) / requests if requests else 0.0,
    }


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def to_csv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """RFC 4180 CSV: a header row, then one line per row (quoted where needed, CRLF line ends)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(name)) for name in columns])
    return buffer.getvalue()


# -- endpoints -----------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json")


def _error(status: int, message: str, code: str, param: str | None = None,
           error_type: str = "invalid_request_error") -> Response:
    return _json({"error": {"message": message, "type": error_type, "param": param, "code": code}}, status)


def _csv_response(text: str, report: str) -> Response:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Response(
        text.encode(), media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="sira-usage-{report}-{stamp}.csv"'},
    )


def _filters(query: ReportQuery) -> dict[str, Any]:
    where = query.where
    shown: dict[str, Any] = {"since": where.since, "until": where.until}
    for name, field in FILTERS.items():
        shown[name] = getattr(where, field)
    return {k: _clean(v) for k, v in shown.items() if v is not None}


class Reports:
    """The report endpoints, reading from the ``UsageStore`` that ``store()`` looks up."""

    def __init__(self, store: Callable[[], UsageStore], log: Any) -> None:
        self._store = store
        self._log = log

    async def _run(self, request: Request, allowed: frozenset[str], build: Callable[..., Any]) -> Response:
        try:
            query = parse_query(request.query_params.multi_items(), allowed)
        except BadParameter as exc:
            return _error(400, exc.message, "invalid_parameter", exc.param)
        try:
            store = self._store()
        except LookupError:
            return _error(503, "no usage store is available", "store_unavailable", error_type="server_error")
        try:
            return await build(store, query)  # type: ignore[no-any-return]
        except Exception as exc:
            self._log.exception("ledger.report_failed", path=request.url.path)
            return _error(503, f"the usage store failed: {type(exc).__name__}", "store_failed",
                          error_type="server_error")

    async def summary(self, request: Request) -> Response:
        """``GET /api/v1/reports/summary``: totals per group, and over everything."""

        async def build(store: UsageStore, query: ReportQuery) -> Response:
            grouping = [GROUP_BY[name] for name in query.group_by]
            found = await store.summarize_usage(query.where, grouping)
            rows = [summary_row(r, query.group_by) for r in found]
            if query.format == "csv":
                return _csv_response(to_csv([*query.group_by, *SUMMARY_METRICS], rows), "summary")
            return _json({
                "group_by": list(query.group_by), "filters": _filters(query), "rows": rows,
                "totals": totals(found), "truncated": len(found) >= MAX_SUMMARY_GROUPS,
            })

        return await self._run(request, SUMMARY_PARAMS, build)

    async def detailed(self, request: Request) -> Response:
        """``GET /api/v1/reports/detailed``: one row per request, a page at a time."""

        async def build(store: UsageStore, query: ReportQuery) -> Response:
            where = query.where
            # One row more than asked tells whether another page follows.
            found = await store.query_usage(msgspec.structs.replace(where, limit=where.limit + 1))
            more = len(found) > where.limit
            rows = [detailed_row(r) for r in found[: where.limit]]
            if query.format == "csv":
                return _csv_response(to_csv(DETAILED_COLUMNS, rows), "detailed")
            for row, record in zip(rows, found, strict=False):
                row["attempt_log"] = [
                    {k: _clean(v) for k, v in msgspec.structs.asdict(a).items()} for a in record.attempt_log
                ]
            return _json({
                "filters": _filters(query), "limit": where.limit, "offset": where.offset, "count": len(rows),
                "next_offset": where.offset + where.limit if more else None, "rows": rows,
            })

        return await self._run(request, DETAILED_PARAMS, build)
