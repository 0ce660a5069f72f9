"""TaskDeadline: one-timer deadlines on awaits, and what they let through."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from sira_kernel.deadline import TaskDeadline

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def now() -> float:
    return asyncio.get_running_loop().time()


async def test_an_await_in_time_is_untouched_and_leaves_no_timer() -> None:
    with TaskDeadline(now() + 5) as guard:
        await asyncio.sleep(0)
    assert not guard.timed_out and guard._handle is None
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_late_await_is_cancelled_and_the_cancellation_absorbed() -> None:
    cancelled = []

    async def slow() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    started = now()
    with TaskDeadline(now() + 0.05) as guard:
        await slow()
    assert guard.timed_out and cancelled == [True] and now() - started < 1
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the timer's cancellation was absorbed
    await asyncio.sleep(0.01)  # and the task is not cancelled again later


async def test_another_cancellation_passes_through() -> None:
    with anyio.CancelScope() as outer:
        outer.cancel()
        with TaskDeadline(now() + 5) as guard:
            await asyncio.sleep(5)
        pytest.fail("the outer scope's cancellation was swallowed")  # pragma: no cover
    assert outer.cancelled_caught and not guard.timed_out


async def test_both_at_once_the_other_cancellation_is_not_lost() -> None:
    reached = []
    task = asyncio.current_task()
    assert task is not None
    with anyio.CancelScope() as outer:
        with TaskDeadline(now() + 0.02):
            # the outer scope is cancelled in the same loop iteration as the timer fires
            asyncio.get_running_loop().call_at(now() + 0.02, outer.cancel)
            await asyncio.sleep(5)
        # whichever way the race went, the outer cancellation lands at the next await at the latest
        await asyncio.sleep(5)
        reached.append(True)  # pragma: no cover
    assert outer.cancelled_caught and reached == []
    assert task.cancelling() == 0


async def test_a_deadline_between_reads_only_marks_expired() -> None:
    guard = TaskDeadline(now() + 0.01)
    try:
        await asyncio.sleep(0.05)  # not inside a guarded read: nothing is cancelled
        assert guard.expired
        guard.rearm(now() + 0.02)
        guard.reading, timed_out = True, False
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError as exc:
            timed_out = guard.caught(exc)  # the timer's own: the reader turns it into a timeout
        finally:
            guard.reading = False
        assert timed_out
    finally:
        guard.disarm()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
