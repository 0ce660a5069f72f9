"""Deadlines on single awaits, with one event-loop timer instead of a cancel scope.

An anyio cancel scope with a deadline costs 6–9 µs to enter and leave (a timer, the scope
stack, the backend lookup), which is a visible share of a request that costs ~120 µs in Sira's own
code. Where the guarded region is one await of code that holds no anyio shield of its own (an
HTTP read, the upstream's answer, a request body), a plain timer that cancels the task while it is
inside that await does the same job for a third of the cost: :class:`TaskDeadline` (used across
several awaits, e.g. every read of a stream) and :func:`within` (one await).

Only asyncio is supported (the kernel runs on uvloop or asyncio). A cancellation that does not come
from the timer (the client left, a plugin unloads, an enclosing cancel scope) always passes through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import TypeVar

__all__ = ["TaskDeadline", "within"]

T = TypeVar("T")


class TaskDeadline:
    """A deadline for the awaits of the current task made inside ``with deadline:``, in :meth:`run`
    or between ``reading = True`` and ``reading = False``, with one timer however many awaits there are.

    The timer cancels the task only while it is inside a guarded await; a deadline that passes
    between them sets :attr:`expired`, for the caller to check before its next await. :meth:`caught`
    turns the timer's own cancellation into "timed out" and lets any other cancellation through.
    Times are ``loop.time()`` (``anyio.current_time()`` on asyncio). Call :meth:`disarm` when done.
    """

    __slots__ = ("_cancelled", "_handle", "_loop", "_task", "expired", "reading", "timed_out")

    def __init__(self, deadline: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
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

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``; ``TimeoutError`` if the deadline passes first (or already has)."""
        if self.expired:
            if isinstance(awaitable, Coroutine):
                awaitable.close()  # never started: say so, instead of "never awaited"
            raise TimeoutError
        self.reading = True
        try:
            return await awaitable
        except asyncio.CancelledError as exc:
            if self.caught(exc):
                raise TimeoutError from None
            raise
        finally:
            self.reading = False


async def within(deadline: float, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` before ``deadline`` (``loop.time()``), else cancel it and raise ``TimeoutError``.

    For one await whose code holds no anyio shield; see the module documentation.
    """
    with TaskDeadline(deadline):
        return await awaitable
    raise TimeoutError
