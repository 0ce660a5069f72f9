"""The ledger: usage records from the bus, batched into the ``UsageStore``, spilled rather than lost.

The path of a record::

    pipeline ──publish_nowait──▶ bus subscription (bounded, drop_newest) ──▶ accept() ──▶ pending
                                        │ full: on_drop = overflow()                       │
                                        ▼                                                  ▼
                                   spill buffer ──spiller task──▶ spill file ◀── writer task: batches
                                                                      │          (retries, then spill)
                                                                      └── replayer task ──▶ store

* ``accept`` is the subscription's handler. It holds at most ``batch_size`` records while the
  writer is busy; past that it waits, so the backlog stays in the bus queue, where the kernel counts
  it (``queued``, ``lagged``, ``high_water``) and where the overflow policy applies.
* ``overflow`` is the subscription's ``on_drop``: called in the publisher's context, it only encodes
  the record into the spill buffer. The request path never waits and never loses a record.
* The writer takes a batch when ``batch_size`` records are pending or ``flush_interval`` has passed
  since the first one, and writes it with retries (exponential backoff). A batch that still fails
  is spilled, and the store is then considered failing: later batches go straight to the spill file
  until a replay gets through (the replay is the probe), so a dead store costs no timeouts per batch.
* The replayer writes the spill file into the store at start and every ``replay_interval``.
* :meth:`UsageLedger.close` (the lifespan's exit, after the kernel delivered what was queued and
  cancelled the tasks) writes what is left, once, and spills anything it could not write.

Counters: ``received = written + spilled + pending`` at all times (``lost`` only grows if the spill
file itself cannot be written when the plugin stops, and is logged loudly).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread
import msgspec
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from sira_kernel import UsageRecord
from sira_kernel.bus import MessageBus, Subscription, SubscriptionStats
from sira_kernel.logs import redact
from sira_kernel.registrations import Health
from sira_kernel.storage import UsageStore

from ._config import LedgerConfig
from ._spill import SpillFile, encode_line

__all__ = ["LedgerCounters", "LedgerHealth", "LedgerStatus", "UsageLedger"]

_ROOM_POLL = 0.1  # how often a waiting handler re-checks whether its subscription was closed
_MAX_BACKOFF = 5.0
_SPILL_RETRY = 1.0


class LedgerCounters(msgspec.Struct, kw_only=True):
    """Everything the ledger counted since this activation started."""

    received: int
    """Records taken from the bus: through the queue, or spilled by the overflow policy."""
    written: int
    """Records written to the store by the writer (replays are counted in ``replayed``)."""
    batches: int
    """Successful ``write_usage`` calls of the writer."""
    spilled: int
    """Records appended to the spill file."""
    replayed: int
    """Records written from the spill file into the store."""
    store_errors: int
    """Failed ``write_usage`` calls (every attempt, replays included)."""
    dropped: int
    """Records the full bus queue turned away (each one spilled, so also in ``spilled``)."""
    pending: int
    """Received records neither written nor spilled yet (buffered, in flight, or being spilled)."""
    rejected: int
    """Spill-file lines that did not decode, moved to ``<spill file>.rejected``."""
    lost: int
    """Records neither written nor spilled when the plugin stopped (the spill file was unwritable)."""
    spill_records: int
    """Lines in the spill file, as far as this process knows."""
    spill_bytes: int
    """Size of the spill file."""
    store_failing: bool
    """The last write (or replay) failed; batches go to the spill file until a replay succeeds."""
    last_error: str | None
    queue: SubscriptionStats | None
    """The bus subscription, as the kernel counts it (None before it is attached): ``queued``,
    ``high_water``, ``lagged`` (records that found the queue at least half full: the writer is
    falling behind), ``dropped``…"""


LedgerHealth = Health
"""The ledger's health answer: the kernel's :class:`~sira_kernel.registrations.Health`."""


@runtime_checkable
class LedgerStatus(Protocol):
    """The ledger's service (``services.get(LedgerStatus)``): its counters and health."""

    def counters(self) -> LedgerCounters: ...

    def health(self) -> LedgerHealth: ...


class UsageLedger:
    """Takes usage records from the bus and gets each one into the store, or the spill file."""

    def __init__(
        self, config: LedgerConfig, spill: SpillFile, store: Callable[[], UsageStore], log: Any, *,
        bus: MessageBus | None = None, stop_timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.spill = spill
        self._store = store
        self._log = log
        self._stop_timeout = stop_timeout
        self._pending: list[UsageRecord] = []
        self._inflight: list[UsageRecord] = []
        self._spill_buffer: list[bytes] = []
        self._batch_ready: anyio.Event | None = None
        self._room: anyio.Event | None = None
        self._spill_wakeup: anyio.Event | None = None
        self._writer_running = False
        self._first_pending_at = 0.0
        self._bus = bus
        self.subscription: Subscription | None = None
        """The bus subscription delivering to :meth:`accept` (found once the kernel committed it)."""
        self.received = self.written = self.batches = self.spilled = self.replayed = 0
        self.store_errors = self.dropped = self.rejected = self.lost = 0
        self.store_failing = False
        self.last_error: str | None = None

    # -- intake -------------------------------------------------------------------------------------

    async def accept(self, record: UsageRecord) -> None:
        """The subscription's handler: buffer one record for the writer (waiting while it is busy)."""
        if self.subscription is None:
            self.attach()
        size = self.config.batch_size
        while len(self._pending) >= size and self._writer_running and not self._closing():
            if self._room is None:
                self._room = anyio.Event()
            with anyio.move_on_after(_ROOM_POLL):
                await self._room.wait()
        if not self._pending:
            self._first_pending_at = time.monotonic()
        self._pending.append(record)
        self.received += 1
        if len(self._pending) == 1 or len(self._pending) >= size:
            self._wake_writer()

    def overflow(self, record: UsageRecord) -> None:
        """The subscription's ``on_drop``: the queue is full, so the record goes to the spill file.

        Runs in the publisher's context (the request path): it only encodes and buffers.
        """
        self.received += 1
        self.dropped += 1
        self._spill_buffer.append(encode_line(record))
        self._wake_spiller()

    def attach(self) -> Subscription | None:
        """Find the subscription whose handler is :meth:`accept` (a replaced generation has its own)."""
        if self.subscription is None and self._bus is not None:
            handler = self.accept
            for sub in self._bus.subscriptions:
                if sub.handler == handler:
                    self.subscription = sub
        return self.subscription

    def _closing(self) -> bool:
        # While the plugin unloads its subscription is closed: the kernel delivers what is queued,
        # and the handler must then not wait for a writer that is about to be cancelled.
        return self.subscription is not None and self.subscription.closed

    def _wake_writer(self) -> None:
        if self._batch_ready is not None:
            self._batch_ready.set()
            self._batch_ready = None

    def _wake_spiller(self) -> None:
        if self._spill_wakeup is not None:
            self._spill_wakeup.set()
            self._spill_wakeup = None

    # -- the writer ---------------------------------------------------------------------------------

    async def run_writer(self) -> None:
        """Write batches until cancelled."""
        self._writer_running = True
        try:
            while True:
                await self._wait_for_batch()
                size = self.config.batch_size
                self._inflight = self._pending[:size]
                del self._pending[:size]
                if self._pending:
                    self._first_pending_at = time.monotonic()
                if self._room is not None:
                    self._room.set()
                    self._room = None
                await self._write_or_spill(self._inflight)
                self._inflight = []
        finally:
            self._writer_running = False

    async def _wait_for_batch(self) -> None:
        while not self._pending:
            self._batch_ready = anyio.Event()
            await self._batch_ready.wait()
        deadline = self._first_pending_at + self.config.flush_interval
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            while len(self._pending) < self.config.batch_size:
                self._batch_ready = anyio.Event()
                await self._batch_ready.wait()

    async def _write_or_spill(self, batch: list[UsageRecord]) -> None:
        if self.store_failing:
            self._spill_records(batch)  # the replayer probes the store; no timeouts per batch meanwhile
            return
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=wait_random_exponential(multiplier=self.config.retry_backoff, max=_MAX_BACKOFF),
            retry=retry_if_exception_type(Exception),
            sleep=anyio.sleep,
            reraise=True,
        )
        try:
            await retrying(self._write_once, batch)
        except Exception:
            self.store_failing = True
            self._log.warning("ledger.batch_spilled", records=len(batch), error=self.last_error)
            self._spill_records(batch)
        else:
            self.written += len(batch)
            self.batches += 1

    async def _write_once(self, batch: Sequence[UsageRecord]) -> None:
        try:
            store = self._store()
            with anyio.fail_after(self.config.write_timeout):
                await store.write_usage(batch)
        except Exception as exc:
            self.store_errors += 1
            self.last_error = _describe(exc)
            raise

    # -- the spill file -----------------------------------------------------------------------------

    def _spill_records(self, records: Sequence[UsageRecord]) -> None:
        self._spill_buffer.extend(encode_line(r) for r in records)
        self._wake_spiller()

    async def run_spiller(self) -> None:
        """Append the spill buffer to the spill file until cancelled."""
        while True:
            while not self._spill_buffer:
                self._spill_wakeup = anyio.Event()
                await self._spill_wakeup.wait()
            if not await self._flush_spill_buffer():
                await anyio.sleep(_SPILL_RETRY)

    async def _flush_spill_buffer(self) -> bool:
        # The lines stay in the buffer until the append returned: a cancellation before the thread
        # started leaves them there for close(). Lines only leave from the front, here.
        lines = self._spill_buffer[:]
        try:
            # Not cancellable once started (anyio's default): the append finishes, then this
            # function finishes its bookkeeping before the cancellation is delivered.
            await anyio.to_thread.run_sync(self.spill.append, lines)
        except OSError as exc:
            self.last_error = f"spill file: {_describe(exc)}"
            self._log.error("ledger.spill_failed", path=str(self.spill.path), records=len(lines),
                            error=self.last_error)
            return False
        del self._spill_buffer[: len(lines)]
        self.spilled += len(lines)
        return True

    # -- replay -------------------------------------------------------------------------------------

    async def run_replayer(self) -> None:
        """Replay the spill file at start and every ``replay_interval`` until cancelled."""
        await anyio.to_thread.run_sync(self.spill.recount)
        while True:
            await self.replay()
            await anyio.sleep(self.config.replay_interval)

    async def replay(self) -> int:
        """Write the spill file into the store, removing what was written; the number of records.

        Stops at the first failed write (what is left stays in the file for the next replay). With
        an empty file and a failing store, an empty ``write_usage`` probes whether it is back.
        """
        spill = self.spill
        end = await anyio.to_thread.run_sync(spill.begin_replay)
        if end is None:
            return 0  # another generation (or worker process) is replaying this file
        try:
            if end == 0:
                if self.store_failing:
                    await self._probe()
                return 0
            return await self._replay_until(end)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(spill.end_replay)

    async def _probe(self) -> None:
        try:
            await self._write_once([])
        except Exception:
            return
        self._recovered()

    def _recovered(self) -> None:
        if self.store_failing:
            self._log.info("ledger.store_recovered")
        self.store_failing = False

    async def _replay_until(self, end: int) -> int:
        spill = self.spill
        offset = done_offset = 0
        done_lines = replayed = 0
        try:
            while offset < end:
                records, bad, next_offset = await anyio.to_thread.run_sync(
                    spill.read, offset, end, self.config.batch_size
                )
                if next_offset == offset:
                    break
                if bad:
                    await anyio.to_thread.run_sync(spill.reject, bad)
                    self.rejected += len(bad)
                    self._log.error("ledger.spill_lines_rejected", lines=len(bad), path=str(spill.rejected_path))
                if records:
                    await self._write_once(records)
                offset = done_offset = next_offset
                done_lines += len(records) + len(bad)
                replayed += len(records)
                self.replayed += len(records)
        except Exception:
            self.store_failing = True
            self._log.warning("ledger.replay_failed", replayed=replayed, error=self.last_error)
        else:
            self._recovered()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(spill.drop_prefix, done_offset, done_lines)
        if replayed:
            self._log.info("ledger.replayed", records=replayed)
        return replayed

    # -- stop ---------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Write what is still buffered (one attempt each batch), spill the rest, flush the spill buffer.

        Called from the lifespan's exit, after the kernel delivered the queued records and cancelled
        the tasks; bounded so the spill always gets its turn within ``kernel.stop_timeout``.
        """
        left = self._inflight + self._pending
        self._inflight, self._pending = [], []
        budget = max(0.5, self._stop_timeout / 2)
        size = self.config.batch_size
        with anyio.move_on_after(budget):
            while left and not self.store_failing:
                batch = left[:size]
                try:
                    await self._write_once(batch)
                except Exception:
                    break
                del left[:size]
                self.written += len(batch)
                self.batches += 1
        if left:
            self._log.warning("ledger.spilled_at_stop", records=len(left))
            self._spill_records(left)
        if self._spill_buffer and not await self._flush_spill_buffer():
            self.lost += len(self._spill_buffer)
            self._log.error("ledger.records_lost", records=len(self._spill_buffer), path=str(self.spill.path))
            self._spill_buffer = []

    # -- status -------------------------------------------------------------------------------------

    def counters(self) -> LedgerCounters:
        sub = self.attach()
        return LedgerCounters(
            received=self.received, written=self.written, batches=self.batches, spilled=self.spilled,
            replayed=self.replayed, store_errors=self.store_errors, dropped=self.dropped,
            pending=len(self._pending) + len(self._inflight) + len(self._spill_buffer),
            rejected=self.rejected, lost=self.lost, spill_records=self.spill.records,
            spill_bytes=self.spill.size(), store_failing=self.store_failing, last_error=self.last_error,
            queue=None if sub is None else sub.stats(),
        )

    def health(self) -> LedgerHealth:
        """Unhealthy while the store is failing or the spill file holds records."""
        c = self.counters()
        parts = [
            f"received={c.received}", f"written={c.written}", f"batches={c.batches}", f"spilled={c.spilled}",
            f"replayed={c.replayed}", f"store_errors={c.store_errors}", f"dropped={c.dropped}",
            f"pending={c.pending}",
        ]
        if c.queue is not None:
            parts += [f"queued={c.queue.queued}", f"lagged={c.queue.lagged}"]
        problems = []
        if c.store_failing:
            problems.append(f"store failing ({c.last_error})")
        if c.spill_bytes:
            problems.append(f"spill file holds {c.spill_records} records")
        if c.lost:
            problems.append(f"{c.lost} records lost")
        detail = " ".join(parts)
        if problems:
            detail = "; ".join(problems) + ": " + detail
        return LedgerHealth(not problems, detail)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "TimeoutError: the store did not answer in time"
    message = redact(str(exc))[:200]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
