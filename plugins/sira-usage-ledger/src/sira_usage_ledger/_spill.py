"""The spill file: usage records the store could not take yet, one JSON object per line.

Records land here when the bus queue overflows, when a batch still fails after its retries, and
when the plugin stops with records not yet written. The ledger replays the file into the store at
start and every ``replay_interval``; the store ignores request ids it already has, so a record
replayed twice is stored once. Lines that do not decode as a ``UsageRecord`` are moved to
``<spill file>.rejected`` for a person to look at, never dropped.

Every method is synchronous file I/O, meant to run in a worker thread. Appends and the rewrite
that removes replayed lines take an exclusive ``flock`` on ``<spill file>.lock``, and a replay holds
``<spill file>.replay.lock`` for its whole run (others skip their turn), so two generations of the
plugin during a reload, or several worker processes sharing a data directory, never lose a line.
A replay reads only up to the size the file had when it began: appends go to the end meanwhile,
and the rewrite keeps everything from the first line not yet replayed.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import msgspec

from sira_kernel import UsageRecord

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the process-wide lock below still serialises
    fcntl = None  # type: ignore[assignment]

__all__ = ["SpillFile", "encode_line"]

_decoder = msgspec.json.Decoder(UsageRecord)
_encoder = msgspec.json.Encoder()
_COPY_CHUNK = 1 << 20
_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def encode_line(record: UsageRecord) -> bytes:
    """One spill-file line (with its newline)."""
    return _encoder.encode(record) + b"\n"


def _process_lock(path: Path) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault(str(path), threading.Lock())


@contextlib.contextmanager
def _locked(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock named by ``path`` (a thread lock, plus ``flock`` across processes).

    Yields False, holding nothing, when ``blocking`` is false and someone else holds it.
    """
    inner = _process_lock(path)
    if not inner.acquire(blocking=blocking):
        yield False
        return
    try:
        if fcntl is None:
            yield True
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a+b") as handle:
            flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(handle.fileno(), flags)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        inner.release()


def _sync(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())


class SpillFile:
    """A JSON-lines file of ``UsageRecord``s: appended to, replayed from its start, trimmed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rejected_path = path.with_name(path.name + ".rejected")
        self._lock_path = path.with_name(path.name + ".lock")
        self._replay_lock_path = path.with_name(path.name + ".replay.lock")
        self._replay_handle: IO[bytes] | None = None
        self.records = 0
        """Lines in the file as far as this process knows (recounted by :meth:`recount`)."""

    def size(self) -> int:
        """The file's size in bytes (0 when it does not exist)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def recount(self) -> int:
        """Count the lines in the file, and end a torn last line so the next append starts afresh."""
        with _locked(self._lock_path):
            count = 0
            last = b"\n"
            try:
                with self.path.open("rb") as handle:
                    for line in handle:
                        if line.strip():
                            count += 1
                        last = line
            except FileNotFoundError:
                pass
            if not last.endswith(b"\n"):
                with self.path.open("ab") as handle:
                    handle.write(b"\n")
                    _sync(handle)
            self.records = count
            return count

    def append(self, lines: list[bytes]) -> None:
        """Append encoded lines and make them durable (fsync) before returning."""
        if not lines:
            return
        with _locked(self._lock_path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as handle:
                handle.write(b"".join(lines))
                _sync(handle)
            self.records += len(lines)

    def begin_replay(self) -> int | None:
        """Take the replay lock: the size to replay up to, or None when another replay is running.

        Release it with :meth:`end_replay` (from any thread).
        """
        inner = _process_lock(self._replay_lock_path)
        if not inner.acquire(blocking=False):
            return None
        try:
            if fcntl is not None:
                self._replay_lock_path.parent.mkdir(parents=True, exist_ok=True)
                handle = self._replay_lock_path.open("a+b")
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    inner.release()
                    return None
                self._replay_handle = handle
            with _locked(self._lock_path):
                return self.size()
        except BaseException:
            self.end_replay()
            raise

    def end_replay(self) -> None:
        """Release the replay lock taken by :meth:`begin_replay`."""
        handle, self._replay_handle = self._replay_handle, None
        if handle is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()
        _process_lock(self._replay_lock_path).release()

    def read(self, offset: int, end: int, count: int) -> tuple[list[UsageRecord], list[bytes], int]:
        """Up to ``count`` records from byte ``offset`` (not past ``end``): (records, undecodable
        lines, offset after the last line read)."""
        records: list[UsageRecord] = []
        bad: list[bytes] = []
        try:
            with self.path.open("rb") as handle:
                handle.seek(offset)
                while offset < end and len(records) < count:
                    line = handle.readline()
                    if not line:
                        break
                    offset += len(line)
                    if not line.strip():
                        continue
                    try:
                        records.append(_decoder.decode(line))
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        bad.append(line if line.endswith(b"\n") else line + b"\n")
        except FileNotFoundError:
            pass
        return records, bad, offset

    def reject(self, lines: list[bytes]) -> None:
        """Keep undecodable lines aside, in ``<spill file>.rejected``."""
        if lines:
            with self.rejected_path.open("ab") as handle:
                handle.write(b"".join(lines))
                _sync(handle)

    def drop_prefix(self, offset: int, lines: int) -> None:
        """Remove the first ``offset`` bytes (``lines`` lines, already replayed or rejected).

        Atomic: the rest is copied to a new file that replaces the old one, so a crash leaves one or
        the other, and appends wait for the lock meanwhile.
        """
        if offset <= 0:
            return
        with _locked(self._lock_path):
            if offset >= self.size():
                self.path.unlink(missing_ok=True)
                self.records = 0
                return
            temporary = self.path.with_name(self.path.name + ".tmp")
            with self.path.open("rb") as source, temporary.open("wb") as target:
                source.seek(offset)
                while chunk := source.read(_COPY_CHUNK):
                    target.write(chunk)
                _sync(target)
            os.replace(temporary, self.path)
            self.records = max(0, self.records - lines)
