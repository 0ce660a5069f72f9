"""``KeyStore`` on SQLite: tenants, teams, users, virtual keys and the key change log.

Every write runs in one ``BEGIN IMMEDIATE`` transaction, so the checks it makes (the id is free,
the name is not taken, the tenant exists) hold when it commits: the explicit checks give clear
errors, and the UNIQUE / FOREIGN KEY constraints stay as a backstop.

Change log: any transaction that changes what a cached key means bumps ``key_change_counter`` once
and stamps the new version on the ids of the keys concerned in ``key_changes``: a key created,
updated, revoked or deleted; every key of a tenant, team or user that is updated or deleted.
``changes_since(v)`` lists the ids stamped after ``v``, so a worker polling it every second drops
stale cache entries without re-reading the keys table.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from sira_kernel.storage import KeyRecord, Team, Tenant, User

from ._codec import dump, dump_optional, load_limits, load_object, load_strings, new_id, one
from ._database import Database

__all__ = ["KeyTables"]

_TENANT = "SELECT id, name, created_at, limits, metadata, disabled FROM tenants"
_TEAM = "SELECT id, tenant_id, name, created_at, limits, metadata FROM teams"
_USER = "SELECT id, tenant_id, email, role, created_at, team_id, disabled FROM users"
_KEY = (
    "SELECT id, key_hash, prefix, name, tenant_id, role, created_at, created_by, team_id, user_id,"
    " allowed_models, allowed_routes, limits, metadata, expires_at, revoked_at, rotated_to FROM api_keys"
)
_KEY_COLUMNS = (
    "key_hash = ?, prefix = ?, name = ?, tenant_id = ?, role = ?, created_at = ?, created_by = ?, team_id = ?,"
    " user_id = ?, allowed_models = ?, allowed_routes = ?, limits = ?, metadata = ?, expires_at = ?,"
    " revoked_at = ?, rotated_to = ?"
)

# Which keys a change concerns, by what changed (a condition on api_keys with one parameter).
_KEYS_OF = {
    "key": "id = ?",
    "tenant": "tenant_id = ?",
    "team": "team_id = ?",
    "user": "user_id = ?",
}


def _tenant(row: Any) -> Tenant:
    return Tenant(
        id=row[0], name=row[1], created_at=row[2], limits=load_limits(row[3]), metadata=load_object(row[4]),
        disabled=bool(row[5]),
    )


def _team(row: Any) -> Team:
    return Team(
        id=row[0], tenant_id=row[1], name=row[2], created_at=row[3], limits=load_limits(row[4]),
        metadata=load_object(row[5]),
    )


def _user(row: Any) -> User:
    return User(
        id=row[0], tenant_id=row[1], email=row[2], role=row[3], created_at=row[4], team_id=row[5],
        disabled=bool(row[6]),
    )


def _key(row: Any) -> KeyRecord:
    return KeyRecord(
        id=row[0], key_hash=row[1], prefix=row[2], name=row[3], tenant_id=row[4], role=row[5], created_at=row[6],
        created_by=row[7], team_id=row[8], user_id=row[9], allowed_models=load_strings(row[10]),
        allowed_routes=load_strings(row[11]), limits=load_limits(row[12]), metadata=load_object(row[13]),
        expires_at=row[14], revoked_at=row[15], rotated_to=row[16],
    )


def _key_values(key: KeyRecord) -> tuple[Any, ...]:
    """Every column but ``id``, in ``_KEY_COLUMNS`` order."""
    return (
        key.key_hash, key.prefix, key.name, key.tenant_id, key.role, key.created_at, key.created_by, key.team_id,
        key.user_id, dump_optional(key.allowed_models), dump_optional(key.allowed_routes), dump(key.limits),
        dump(key.metadata), key.expires_at, key.revoked_at, key.rotated_to,
    )


def _exists(connection: sqlite3.Connection, sql: str, *params: Any) -> bool:
    return one(connection, sql, params) is not None


def _require_tenant(connection: sqlite3.Connection, tenant_id: str) -> None:
    if not _exists(connection, "SELECT 1 FROM tenants WHERE id = ?", tenant_id):
        raise LookupError(f"tenant {tenant_id!r} does not exist")


def _require_member(connection: sqlite3.Connection, kind: str, member_id: str | None, tenant_id: str) -> None:
    """``member_id`` (a team or user id) exists and belongs to ``tenant_id``."""
    if member_id is None:
        return
    sql = "SELECT tenant_id FROM teams WHERE id = ?" if kind == "team" else "SELECT tenant_id FROM users WHERE id = ?"
    row = one(connection, sql, (member_id,))
    if row is None:
        raise LookupError(f"{kind} {member_id!r} does not exist")
    if row[0] != tenant_id:
        raise ValueError(f"{kind} {member_id!r} belongs to another tenant")


def _record_changes(connection: sqlite3.Connection, of: str, owner_id: str) -> None:
    """Stamp a new change version on every key the ``of`` (key, tenant, team, user) ``owner_id`` concerns."""
    version = connection.execute(
        "UPDATE key_change_counter SET version = version + 1 WHERE id = 1 RETURNING version"
    ).fetchall()[0][0]
    connection.execute(
        "INSERT INTO key_changes (key_id, version) SELECT id, ? FROM api_keys WHERE " + _KEYS_OF[of]
        + " ON CONFLICT (key_id) DO UPDATE SET version = excluded.version",
        (version, owner_id),
    )


class KeyTables:
    """The ``KeyStore`` methods of :class:`~sira_storage_sqlite.SQLiteStorage`."""

    _db: Database

    # -- tenants ----------------------------------------------------------------------------------

    async def create_tenant(self, tenant: Tenant) -> Tenant:
        record = tenant if tenant.id else msgspec.structs.replace(tenant, id=new_id("tenant"))

        def insert(connection: sqlite3.Connection) -> Tenant:
            if _exists(connection, "SELECT 1 FROM tenants WHERE id = ?", record.id):
                raise ValueError(f"tenant {record.id!r} already exists")
            if _exists(connection, "SELECT 1 FROM tenants WHERE name = ?", record.name):
                raise ValueError(f"a tenant named {record.name!r} already exists")
            connection.execute(
                "INSERT INTO tenants (id, name, created_at, limits, metadata, disabled) VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.name, record.created_at, dump(record.limits), dump(record.metadata),
                 int(record.disabled)),
            )
            return record

        return await self._db.write(insert)

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = await self._db.read(lambda c: one(c, _TENANT + " WHERE id = ?", (tenant_id,)))
        return None if row is None else _tenant(row)

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._db.read(lambda c: c.execute(_TENANT + " ORDER BY created_at, id").fetchall())
        return [_tenant(row) for row in rows]

    async def update_tenant(self, tenant: Tenant) -> Tenant:
        def update(connection: sqlite3.Connection) -> Tenant:
            if not _exists(connection, "SELECT 1 FROM tenants WHERE id = ?", tenant.id):
                raise LookupError(f"tenant {tenant.id!r} does not exist")
            if _exists(connection, "SELECT 1 FROM tenants WHERE name = ? AND id != ?", tenant.name, tenant.id):
                raise ValueError(f"a tenant named {tenant.name!r} already exists")
            connection.execute(
                "UPDATE tenants SET name = ?, created_at = ?, limits = ?, metadata = ?, disabled = ? WHERE id = ?",
                (tenant.name, tenant.created_at, dump(tenant.limits), dump(tenant.metadata), int(tenant.disabled),
                 tenant.id),
            )
            _record_changes(connection, "tenant", tenant.id)
            return tenant

        return await self._db.write(update)

    async def delete_tenant(self, tenant_id: str) -> None:
        def delete(connection: sqlite3.Connection) -> None:
            _require_tenant(connection, tenant_id)
            _record_changes(connection, "tenant", tenant_id)
            connection.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,))  # cascades

        await self._db.write(delete)

    # -- teams ------------------------------------------------------------------------------------

    async def create_team(self, team: Team) -> Team:
        record = team if team.id else msgspec.structs.replace(team, id=new_id("team"))

        def insert(connection: sqlite3.Connection) -> Team:
            if _exists(connection, "SELECT 1 FROM teams WHERE id = ?", record.id):
                raise ValueError(f"team {record.id!r} already exists")
            _require_tenant(connection, record.tenant_id)
            if _exists(connection, "SELECT 1 FROM teams WHERE tenant_id = ? AND name = ?", record.tenant_id,
                       record.name):
                raise ValueError(f"tenant {record.tenant_id!r} already has a team named {record.name!r}")
            connection.execute(
                "INSERT INTO teams (id, tenant_id, name, created_at, limits, metadata) VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.tenant_id, record.name, record.created_at, dump(record.limits),
                 dump(record.metadata)),
            )
            return record

        return await self._db.write(insert)

    async def get_team(self, team_id: str) -> Team | None:
        row = await self._db.read(lambda c: one(c, _TEAM + " WHERE id = ?", (team_id,)))
        return None if row is None else _team(row)

    async def list_teams(self, tenant_id: str | None = None) -> list[Team]:
        def select(connection: sqlite3.Connection) -> list[Any]:
            if tenant_id is None:
                return connection.execute(_TEAM + " ORDER BY created_at, id").fetchall()
            return connection.execute(_TEAM + " WHERE tenant_id = ? ORDER BY created_at, id", (tenant_id,)).fetchall()

        return [_team(row) for row in await self._db.read(select)]

    async def update_team(self, team: Team) -> Team:
        def update(connection: sqlite3.Connection) -> Team:
            if not _exists(connection, "SELECT 1 FROM teams WHERE id = ?", team.id):
                raise LookupError(f"team {team.id!r} does not exist")
            _require_tenant(connection, team.tenant_id)
            if _exists(connection, "SELECT 1 FROM teams WHERE tenant_id = ? AND name = ? AND id != ?",
                       team.tenant_id, team.name, team.id):
                raise ValueError(f"tenant {team.tenant_id!r} already has a team named {team.name!r}")
            connection.execute(
                "UPDATE teams SET tenant_id = ?, name = ?, created_at = ?, limits = ?, metadata = ? WHERE id = ?",
                (team.tenant_id, team.name, team.created_at, dump(team.limits), dump(team.metadata), team.id),
            )
            _record_changes(connection, "team", team.id)
            return team

        return await self._db.write(update)

    async def delete_team(self, team_id: str) -> None:
        def delete(connection: sqlite3.Connection) -> None:
            if not _exists(connection, "SELECT 1 FROM teams WHERE id = ?", team_id):
                raise LookupError(f"team {team_id!r} does not exist")
            _record_changes(connection, "team", team_id)
            connection.execute("DELETE FROM teams WHERE id = ?", (team_id,))  # its keys go, its users stay

        await self._db.write(delete)

    # -- users ------------------------------------------------------------------------------------

    async def create_user(self, user: User) -> User:
        record = user if user.id else msgspec.structs.replace(user, id=new_id("user"))

        def insert(connection: sqlite3.Connection) -> User:
            if _exists(connection, "SELECT 1 FROM users WHERE id = ?", record.id):
                raise ValueError(f"user {record.id!r} already exists")
            _check_user(connection, record)
            connection.execute(
                "INSERT INTO users (id, tenant_id, email, role, created_at, team_id, disabled)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.tenant_id, record.email, record.role, record.created_at, record.team_id,
                 int(record.disabled)),
            )
            return record

        return await self._db.write(insert)

    async def get_user(self, user_id: str) -> User | None:
        row = await self._db.read(lambda c: one(c, _USER + " WHERE id = ?", (user_id,)))
        return None if row is None else _user(row)

    async def list_users(self, tenant_id: str | None = None) -> list[User]:
        def select(connection: sqlite3.Connection) -> list[Any]:
            if tenant_id is None:
                return connection.execute(_USER + " ORDER BY created_at, id").fetchall()
            return connection.execute(_USER + " WHERE tenant_id = ? ORDER BY created_at, id", (tenant_id,)).fetchall()

        return [_user(row) for row in await self._db.read(select)]

    async def update_user(self, user: User) -> User:
        def update(connection: sqlite3.Connection) -> User:
            if not _exists(connection, "SELECT 1 FROM users WHERE id = ?", user.id):
                raise LookupError(f"user {user.id!r} does not exist")
            _check_user(connection, user)
            connection.execute(
                "UPDATE users SET tenant_id = ?, email = ?, role = ?, created_at = ?, team_id = ?, disabled = ?"
                " WHERE id = ?",
                (user.tenant_id, user.email, user.role, user.created_at, user.team_id, int(user.disabled), user.id),
            )
            _record_changes(connection, "user", user.id)
            return user

        return await self._db.write(update)

    async def delete_user(self, user_id: str) -> None:
        def delete(connection: sqlite3.Connection) -> None:
            if not _exists(connection, "SELECT 1 FROM users WHERE id = ?", user_id):
                raise LookupError(f"user {user_id!r} does not exist")
            _record_changes(connection, "user", user_id)
            connection.execute("DELETE FROM users WHERE id = ?", (user_id,))  # its keys go too

        await self._db.write(delete)

    # -- keys -------------------------------------------------------------------------------------

    async def create_key(self, key: KeyRecord) -> KeyRecord:
        record = key if key.id else msgspec.structs.replace(key, id=new_id("key"))

        def insert(connection: sqlite3.Connection) -> KeyRecord:
            if _exists(connection, "SELECT 1 FROM api_keys WHERE id = ?", record.id):
                raise ValueError(f"key {record.id!r} already exists")
            _check_key(connection, record)
            connection.execute(
                "INSERT INTO api_keys (id, key_hash, prefix, name, tenant_id, role, created_at, created_by, team_id,"
                " user_id, allowed_models, allowed_routes, limits, metadata, expires_at, revoked_at, rotated_to)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, *_key_values(record)),
            )
            _record_changes(connection, "key", record.id)
            return record

        return await self._db.write(insert)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        row = await self._db.read(lambda c: one(c, _KEY + " WHERE id = ?", (key_id,)))
        return None if row is None else _key(row)

    async def find_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        """The key with this hash, revoked or expired ones included (the caller judges validity)."""

        def find(connection: sqlite3.Connection) -> KeyRecord | None:
            row = one(connection, _KEY + " WHERE key_hash = ?", (key_hash,))  # the UNIQUE index
            return None if row is None else _key(row)

        return await self._db.read(find)

    async def list_keys(self, tenant_id: str | None = None, team_id: str | None = None) -> list[KeyRecord]:
        clauses: list[str] = []
        params: list[Any] = []
        if tenant_id is not None:
            clauses.append("tenant_id = ?")
            params.append(tenant_id)
        if team_id is not None:
            clauses.append("team_id = ?")
            params.append(team_id)
        sql = _KEY + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY created_at, id"
        rows = await self._db.read(lambda c: c.execute(sql, params).fetchall())
        return [_key(row) for row in rows]

    async def update_key(self, key: KeyRecord) -> KeyRecord:
        def update(connection: sqlite3.Connection) -> KeyRecord:
            if not _exists(connection, "SELECT 1 FROM api_keys WHERE id = ?", key.id):
                raise LookupError(f"key {key.id!r} does not exist")
            _check_key(connection, key)
            connection.execute("UPDATE api_keys SET " + _KEY_COLUMNS + " WHERE id = ?", (*_key_values(key), key.id))
            _record_changes(connection, "key", key.id)
            return key

        return await self._db.write(update)

    async def revoke_key(self, key_id: str, at: float) -> KeyRecord:
        """Revoke at ``at``; a key already revoked earlier keeps its earlier ``revoked_at``."""

        def revoke(connection: sqlite3.Connection) -> KeyRecord:
            cursor = connection.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND (revoked_at IS NULL OR revoked_at > ?)",
                (at, key_id, at),
            )
            if cursor.rowcount == 0 and not _exists(connection, "SELECT 1 FROM api_keys WHERE id = ?", key_id):
                raise LookupError(f"key {key_id!r} does not exist")
            _record_changes(connection, "key", key_id)
            return _key(one(connection, _KEY + " WHERE id = ?", (key_id,)))

        return await self._db.write(revoke)

    async def changes_since(self, version: int) -> tuple[int, list[str]]:
        """(current version, ids of keys changed after ``version``). A ``version`` above the current
        one (the database was replaced) lists every key ever changed, so callers drop everything."""

        def changes(connection: sqlite3.Connection) -> tuple[int, list[str]]:
            connection.execute("BEGIN")  # one snapshot for both statements
            try:
                current = int(one(connection, "SELECT version FROM key_change_counter WHERE id = 1")[0])
                since = version if version <= current else 0
                rows = connection.execute(
                    "SELECT key_id FROM key_changes WHERE version > ? ORDER BY version, key_id", (since,)
                ).fetchall()
            finally:
                connection.execute("COMMIT")
            return current, [row[0] for row in rows]

        return await self._db.read(changes)


def _check_user(connection: sqlite3.Connection, user: User) -> None:
    _require_tenant(connection, user.tenant_id)
    _require_member(connection, "team", user.team_id, user.tenant_id)
    if _exists(connection, "SELECT 1 FROM users WHERE tenant_id = ? AND email = ? AND id != ?", user.tenant_id,
               user.email, user.id):
        raise ValueError(f"tenant {user.tenant_id!r} already has a user with email {user.email!r}")


def _check_key(connection: sqlite3.Connection, key: KeyRecord) -> None:
    _require_tenant(connection, key.tenant_id)
    _require_member(connection, "team", key.team_id, key.tenant_id)
    _require_member(connection, "user", key.user_id, key.tenant_id)
    if _exists(connection, "SELECT 1 FROM api_keys WHERE key_hash = ? AND id != ?", key.key_hash, key.id):
        raise ValueError("another key has the same hash")  # never the hash itself
