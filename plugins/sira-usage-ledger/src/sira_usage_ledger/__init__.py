"""Sira's usage ledger (plugin id ``ledger``): every request's usage stored off the hot path, and reports.

The kernel publishes one :class:`~sira_kernel.UsageRecord` per request on ``usage.request``. This
plugin subscribes (a bounded queue that never blocks the request path), writes the records to the
``UsageStore`` service in batches, retries a failing store with backoff, and spills to a JSON-lines
file rather than lose a record; the spill file is replayed into the store at start and periodically.
Counters and health are in the :class:`LedgerStatus` service and at ``GET /api/v1/ledger``; usage
reports (JSON or CSV) at ``GET /api/v1/reports/summary`` and ``GET /api/v1/reports/detailed``, all
on the admin listener. README.md documents the configuration and the endpoints.

Public API: :class:`LedgerPlugin` (the entry point), :class:`LedgerConfig`, :class:`LedgerStatus`
(the service interface), :class:`LedgerCounters` / :class:`LedgerHealth`,
:class:`UsageLedger` (the queue, writer, spill and replay machinery), :class:`SpillFile`, and the
report helpers :func:`parse_query`, :func:`parse_time`, :class:`BadParameter`.
"""

from __future__ import annotations

from ._config import LedgerConfig
from ._ledger import LedgerCounters, LedgerHealth, LedgerStatus, UsageLedger
from ._plugin import LedgerPlugin
from ._reports import BadParameter, ReportQuery, parse_query, parse_time
from ._spill import SpillFile

__all__ = [
    "BadParameter",
    "LedgerConfig",
    "LedgerCounters",
    "LedgerHealth",
    "LedgerPlugin",
    "LedgerStatus",
    "ReportQuery",
    "SpillFile",
    "UsageLedger",
    "parse_query",
    "parse_time",
]
