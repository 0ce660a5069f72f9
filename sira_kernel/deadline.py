"""Deadlines on single awaits, with one event-loop timer instead of a cancel scope.

An anyio cancel scope with a deadline costs 6–9 µs to enter and leave (a timer, the scope
stack, the backend lookup), which is a visible share of a request that costs ~120 µs in Sira's own
code. Where the guarded region is one await of code that holds no anyio shield of its own (an
HTTP read, the upstream's answer, a request body), a plain timer that cancels the task while it is
inside that await does the same job for half the cost: :class:`TaskDeadline`, as a ``with`` block
around one await, or across several (every read of a stream) with its ``reading`` flag.

Only asyncio is supported (the kernel runs on uvloop or asyncio). A cancellation that does not come
from the timer (the client left, a plugin unloads, an enclosing cancel scope) always passes through.
"""

from __future__ import annotations

import asyncio

__all__ = ["TaskDeadline"]


class TaskDeadline:
    """A deadline for the awaits of the current task made inside ``with deadline:`` or between
    ``reading = True`` and ``reading = False``, with one timer however many awaits there are.

    The timer cancels the task only while it is inside a guarded await; a deadline that passes
    between them sets :attr:`expired`, for the caller to check before its next await. :meth:`caught`
    turns the timer's own cancellation into "timed out" and lets any other cancellation through.
    Times are ``loop.time()`` (``anyio.current_time()`` on asyncio). Call :meth:`disarm` when done.
    """

    __slots__ = ("_cancelled", "_handle", "_loop", "_task", "expired", "reading", "timed_out")

    def __init__(self, deadline: float) -> None:
        self._task = task = asyncio.current_task()
        self._loop = task.get_loop() if task is not None else asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._cancelled = False
        self.expired = False
        self.reading = False
        self.timed_out = False
        self.rearm(deadline)

    def rearm(self, deadline: float) -> None:
        """Move the deadline."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(deadline, self._fire)

    def disarm(self) -> None:
        """Drop the timer (idempotent)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self.expired = True
        if self.reading and self._task is not None:
            self._cancelled = True
            self._task.cancel()

    def caught(self, exc: BaseException) -> bool:
        """True when ``exc`` is this deadline's own cancellation (now absorbed)."""
        if not (self._cancelled and isinstance(exc, asyncio.CancelledError)):
            return False
        self._cancelled = False
        assert self._task is not None
        # Another cancellation arrived too (the client left, the plugin unloads): let it through.
        return self._task.uncancel() == 0

    def __enter__(self) -> TaskDeadline:
        """Guard the awaits of the ``with`` block (one timer for all of them).

        If the deadline passes inside, the block is cancelled and the exception absorbed: execution
        continues after the block with :attr:`timed_out` set, as with an anyio cancel scope's
        ``cancelled_caught``. The timer is dropped on the way out.
        """
        self.reading = True
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        self.reading = False
        self.disarm()
        if exc is not None and self.caught(exc):
            self.timed_out = True
            return True
        return False
