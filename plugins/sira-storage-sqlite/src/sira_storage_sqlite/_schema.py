"""The schema and its migrations.

``schema_version`` holds one row per applied migration; the database's version is the highest.
:func:`migrate` runs inside the writer's ``BEGIN IMMEDIATE`` transaction (``Database.open``), so
when several ``sira serve`` workers start together on one file, one takes the write lock and
migrates while the others wait (``busy_timeout``), then find the current version and apply
nothing. SQLite's DDL is transactional: a migration that fails leaves the previous version intact.

To change the schema, append a migration (a tuple of statements) to ``MIGRATIONS``; never edit
one that has shipped. A database whose version is above ``SCHEMA_VERSION`` was written by a newer
release of this plugin: it is refused (:class:`SchemaVersionError`), never downgraded.

Tables (version 1):

* ``tenants``, ``teams`` (name unique per tenant), ``users`` (email unique per tenant) and
  ``api_keys`` (``key_hash`` unique: the index behind ``find_key_by_hash``). Deleting a tenant
  deletes its teams, users and keys; deleting a team or user deletes its keys; a user whose team is
  deleted keeps no team. JSON columns (msgspec) hold limits, metadata and model/route lists.
* ``key_change_counter`` (one row: the current version) and ``key_changes`` (per key id, the
  version of its last change, tombstones of deleted keys included): ``changes_since``.
* ``usage_records``: one row per ``UsageRecord``, ``request_id`` unique (idempotent writes),
  ``attempt_log`` as JSON; indexes by time and by (tenant | team | principal, time, cost).
* ``audit_log``: append-only (triggers refuse UPDATE and DELETE).
* ``sessions``: key, value, absolute expiry.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaVersionError", "migrate"]


class SchemaVersionError(RuntimeError):
    """The database was written by a newer release of sira-storage-sqlite (it is left untouched)."""


MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the initial schema
    (
        """CREATE TABLE tenants (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            limits TEXT NOT NULL,
            metadata TEXT NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE teams (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            created_at REAL NOT NULL,
            limits TEXT NOT NULL,
            metadata TEXT NOT NULL,
            UNIQUE (tenant_id, name)
        )""",
        """CREATE TABLE users (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            email TEXT NOT NULL,
            role TEXT NOT NULL,
            created_at REAL NOT NULL,
            team_id TEXT REFERENCES teams (id) ON DELETE SET NULL,
            disabled INTEGER NOT NULL DEFAULT 0,
            UNIQUE (tenant_id, email)
        )""",
        "CREATE INDEX users_team ON users (team_id)",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            name TEXT NOT NULL,
            tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            created_at REAL NOT NULL,
            created_by TEXT NOT NULL,
            team_id TEXT REFERENCES teams (id) ON DELETE CASCADE,
            user_id TEXT REFERENCES users (id) ON DELETE CASCADE,
            allowed_models TEXT,
            allowed_routes TEXT,
            limits TEXT NOT NULL,
            metadata TEXT NOT NULL,
            expires_at REAL,
            revoked_at REAL,
            rotated_to TEXT
        )""",
        "CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at)",
        "CREATE INDEX api_keys_team ON api_keys (team_id)",
        "CREATE INDEX api_keys_user ON api_keys (user_id)",
        """CREATE TABLE key_change_counter (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL
        )""",
        "INSERT INTO key_change_counter (id, version) VALUES (1, 0)",
        """CREATE TABLE key_changes (
            key_id TEXT PRIMARY KEY,
            version INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX key_changes_version ON key_changes (version)",
        """CREATE TABLE usage_records (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL UNIQUE,
            timestamp REAL NOT NULL,
            operation TEXT NOT NULL,
            principal TEXT NOT NULL,
            principal_kind TEXT NOT NULL,
            tenant TEXT,
            team TEXT,
            model TEXT,
            provider TEXT,
            upstream_model TEXT,
            stream INTEGER NOT NULL,
            status INTEGER NOT NULL,
            error_code TEXT,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            total_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL,
            usage_estimated INTEGER NOT NULL,
            cost_usd REAL,
            latency_ms REAL NOT NULL,
            ttft_ms REAL,
            attempts INTEGER NOT NULL,
            attempt_log TEXT NOT NULL
        )""",
        "CREATE INDEX usage_time ON usage_records (timestamp)",
        "CREATE INDEX usage_tenant ON usage_records (tenant, timestamp, cost_usd)",
        "CREATE INDEX usage_team ON usage_records (team, timestamp, cost_usd)",
        "CREATE INDEX usage_principal ON usage_records (principal, timestamp, cost_usd)",
        """CREATE TABLE audit_log (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target_type TEXT NOT NULL,
            target_id TEXT,
            tenant_id TEXT,
            client TEXT,
            request_id TEXT,
            outcome TEXT NOT NULL,
            details TEXT NOT NULL
        )""",
        "CREATE INDEX audit_at ON audit_log (at)",
        "CREATE INDEX audit_actor ON audit_log (actor, at)",
        "CREATE INDEX audit_tenant ON audit_log (tenant_id, at)",
        """CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        """CREATE TABLE sessions (
            key TEXT PRIMARY KEY,
            value BLOB NOT NULL,
            expires_at REAL NOT NULL
        )""",
        "CREATE INDEX sessions_expiry ON sessions (expires_at)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def current_version(connection: sqlite3.Connection) -> int:
    """The highest applied migration (0 when there is no ``schema_version`` table yet)."""
    exists = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchall()
    if not exists:
        return 0
    return int(connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchall()[0][0])


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; returns the version found. Call inside a write transaction."""
    connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    found = current_version(connection)
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database has schema version {found}, newer than the {SCHEMA_VERSION} this "
            "sira-storage-sqlite understands: upgrade the plugin (the database was left untouched)"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[version - 1]:
            connection.execute(statement)
        connection.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, time.time()))
    return found
