"""One SQLite database reached from async code: each connection lives in a thread of its own.

sqlite3 calls block, so async callers hand a connection's thread a whole operation and await its
result: ``await db.write(fn)`` runs ``fn(connection)`` between ``BEGIN IMMEDIATE`` and ``COMMIT``
(``ROLLBACK`` if it raises) in the writer's thread; ``await db.read(fn)`` runs ``fn(connection)`` in
the reader's thread. A transaction is one function run in one thread, so coroutines never
interleave inside a transaction, no lock is needed, and an operation costs one thread hop however
many statements it runs. (An async driver such as aiosqlite hops once per statement and would need
a lock around every multi-statement transaction on the shared writer: not worth a dependency.)

Connections:

* **the writer** serializes every write of this process. ``BEGIN IMMEDIATE`` takes the file's write
  lock before the first statement, so a writer in another process waits up to ``busy_timeout``
  instead of failing when a read transaction would need upgrading (the one way WAL deadlocks).
* **the reader** is ``query_only``. In WAL mode it sees the last committed state and never waits for
  writers. Every read fetches all rows, so no statement keeps a read transaction (and an old
  snapshot) open between operations.
* ``":memory:"`` has one connection for both: each connection would be a database of its own.

Both use ``synchronous=NORMAL`` (durable at checkpoints, never corrupt) and ``foreign_keys=ON``;
the writer switches the file to WAL. Values only ever travel as bound parameters.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from ._schema import migrate

__all__ = ["MEMORY", "Database"]

T = TypeVar("T")
MEMORY = ":memory:"

Operation = Callable[[sqlite3.Connection], Any]
_Job = tuple[Operation | None, "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def connect(path: str, busy_timeout_ms: int, *, reader: bool) -> sqlite3.Connection:
    """Open one connection with the pragmas every connection of the store uses."""
    # isolation_level=None: no implicit transactions; the store says BEGIN itself.
    # timeout= sets SQLite's busy timeout (no PRAGMA text to build).
    connection = sqlite3.connect(
        path, timeout=busy_timeout_ms / 1000, isolation_level=None, cached_statements=256
    )
    try:
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA synchronous = NORMAL")
        if reader:
            connection.execute("PRAGMA query_only = ON")
        elif path != MEMORY:
            _when_not_busy(lambda: connection.execute("PRAGMA journal_mode = WAL").fetchall(), busy_timeout_ms)
    except BaseException:
        connection.close()
        raise
    return connection


def _when_not_busy(statement: Callable[[], T], busy_timeout_ms: int) -> T:
    """Run ``statement``, retrying while the file is locked, for up to ``busy_timeout_ms``.

    Switching a new file to WAL while another process does the same can fail at once with
    "database is locked": SQLite does not call the busy handler there.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.001
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _settle(future: asyncio.Future[Any], error: BaseException | None, result: Any) -> None:
    if future.cancelled():  # the caller stopped waiting; the operation ran (or was rolled back)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _post(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], error: BaseException | None, result: Any
) -> None:
    try:
        loop.call_soon_threadsafe(_settle, future, error, result)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


class ConnectionThread:
    """One sqlite3 connection and the thread that owns it, running operations in submission order."""

    def __init__(self, name: str, open_connection: Callable[[], sqlite3.Connection]) -> None:
        self.name = name
        self._open_connection = open_connection
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closing = False

    async def start(self) -> None:
        """Start the thread and open the connection there (raising what opening it raised)."""
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._serve, args=(loop, opened), name=self.name, daemon=True)
        self._thread.start()
        await opened

    def _serve(self, loop: asyncio.AbstractEventLoop, opened: asyncio.Future[None]) -> None:
        try:
            connection = self._open_connection()
        except BaseException as exc:
            self._closing = True
            _post(loop, opened, exc, None)
            return
        _post(loop, opened, None, None)
        try:
            while True:
                operation, future, job_loop = self._jobs.get()
                if operation is None:  # close(): everything queued before it has run
                    connection.close()
                    _post(job_loop, future, None, None)
                    return
                try:
                    result = operation(connection)
                except BaseException as exc:
                    _post(job_loop, future, exc, None)
                else:
                    _post(job_loop, future, None, result)
        finally:
            connection.close()  # a no-op when already closed

    async def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation(connection)`` in the thread. If the caller is cancelled, it still runs."""
        if self._closing or self._thread is None:
            raise RuntimeError("the SQLite store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((operation, future, loop))
        return await future

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closing

    async def close(self) -> None:
        """Run what is queued, close the connection, end the thread."""
        thread = self._thread
        if thread is None or self._closing:
            if thread is not None:
                thread.join()
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()
        self._jobs.put((None, closed, loop))
        try:
            await asyncio.shield(closed)
        finally:
            thread.join()


def _in_transaction(operation: Callable[[sqlite3.Connection], T], connection: sqlite3.Connection) -> T:
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = operation(connection)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result


class Database:
    """The writer and reader threads of one SQLite database, migrated to the current schema."""

    def __init__(self, path: str, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.migrated_from: int | None = None
        """The schema version found when opening (0 for a new database)."""
        self._writer: ConnectionThread | None = None
        self._reader: ConnectionThread | None = None

    async def open(self) -> None:
        """Connect, migrate (in one ``BEGIN IMMEDIATE`` transaction), then open the reader."""
        if self._writer is not None:
            raise RuntimeError("the SQLite store is already open")
        self._writer = ConnectionThread(
            "sira-sqlite-writer", partial(connect, self.path, self.busy_timeout_ms, reader=False)
        )
        try:
            await self._writer.start()
            self.migrated_from = await self._writer.run(partial(_in_transaction, migrate))
            if self.path == MEMORY:
                self._reader = self._writer
            else:
                self._reader = ConnectionThread(
                    "sira-sqlite-reader", partial(connect, self.path, self.busy_timeout_ms, reader=True)
                )
                await self._reader.start()
        except BaseException:
            await self.close()
            raise

    async def write(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation(connection)`` in one write transaction: all of it commits, or none."""
        if self._writer is None:
            raise RuntimeError("the SQLite store is not open")
        return await self._writer.run(partial(_in_transaction, operation))

    async def read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation(connection)`` on the reader (autocommit: each statement sees the latest commit)."""
        if self._reader is None:
            raise RuntimeError("the SQLite store is not open")
        return await self._reader.run(operation)

    @property
    def alive(self) -> bool:
        return all(t is not None and t.alive for t in (self._writer, self._reader))

    async def close(self) -> None:
        for thread in {id(t): t for t in (self._reader, self._writer) if t is not None}.values():
            await thread.close()
