"""``AuditStore`` on SQLite: an append-only table (triggers refuse UPDATE and DELETE)."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from sira_kernel.storage import AuditEntry

from ._codec import check_limit, dump, load_object, new_id, one
from ._database import Database

__all__ = ["AuditTables"]

_COLUMNS = "id, at, actor, action, target_type, target_id, tenant_id, client, request_id, outcome, details"
_FILTERS = {"since": "at >= ?", "actor": "actor = ?", "tenant_id": "tenant_id = ?"}


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        id=row[0], at=row[1], actor=row[2], action=row[3], target_type=row[4], target_id=row[5], tenant_id=row[6],
        client=row[7], request_id=row[8], outcome=row[9], details=load_object(row[10]),
    )


class AuditTables:
    """The ``AuditStore`` methods of :class:`~sira_storage_sqlite.SQLiteStorage`."""

    _db: Database

    async def write_audit(self, entry: AuditEntry) -> None:
        """Append one entry (an empty ``id`` gets a fresh one); an id already written is a ValueError."""
        e = entry if entry.id else msgspec.structs.replace(entry, id=new_id("audit"))

        def insert(connection: sqlite3.Connection) -> None:
            if one(connection, "SELECT 1 FROM audit_log WHERE id = ?", (e.id,)) is not None:
                raise ValueError(f"audit entry {e.id!r} already exists")
            connection.execute(
                "INSERT INTO audit_log (" + _COLUMNS + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (e.id, e.at, e.actor, e.action, e.target_type, e.target_id, e.tenant_id, e.client, e.request_id,
                 e.outcome, dump(e.details)),
            )

        await self._db.write(insert)

    async def query_audit(
        self, since: float | None = None, actor: str | None = None, tenant_id: str | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        """Entries at or after ``since``, by ``actor``, about ``tenant_id`` (None: any), newest first."""
        check_limit("limit", limit)
        clauses: list[str] = []
        params: list[Any] = []
        for name, value in (("since", since), ("actor", actor), ("tenant_id", tenant_id)):
            if value is not None:
                clauses.append(_FILTERS[name])
                params.append(value)
        sql = (
            "SELECT " + _COLUMNS + " FROM audit_log" + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + " ORDER BY at DESC, seq DESC LIMIT ?"
        )
        params.append(limit)
        rows = await self._db.read(lambda c: c.execute(sql, params).fetchall())
        return [_entry(row) for row in rows]
