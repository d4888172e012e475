from __future__ import annotations

import threading

import pytest
import trio

from foreman.dbthread import DedicatedThread


async def test_every_call_runs_on_the_same_thread_in_order() -> None:
    thread = DedicatedThread("test-thread")
    try:
        seen: list[tuple[int, int]] = []

        def record(n: int) -> int:
            seen.append((n, threading.get_ident()))
            return n * 2

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(thread.run, record, n)
        assert await thread.run(record, 99) == 198
        assert len({ident for _, ident in seen}) == 1
        assert seen[0][1] != threading.get_ident()
    finally:
        thread.close()


async def test_an_exception_is_raised_in_the_caller() -> None:
    thread = DedicatedThread("test-thread")
    try:

        def fail() -> None:
            raise LookupError("no such row")

        with pytest.raises(LookupError, match="no such row"):
            await thread.run(fail)
        assert await thread.run(lambda: "still serving") == "still serving"
    finally:
        thread.close()


async def test_a_call_runs_to_the_end_even_when_its_caller_is_cancelled() -> None:
    thread = DedicatedThread("test-thread")
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []
    scope = trio.CancelScope()

    def slow_write() -> None:
        started.set()
        release.wait(5)
        finished.append("written")

    async def caller() -> None:
        with scope:
            await thread.run(slow_write)
            finished.append("returned")
            await trio.lowlevel.checkpoint()
            finished.append("not reached: the cancellation lands here")

    async def canceller() -> None:
        await trio.to_thread.run_sync(started.wait)
        scope.cancel()  # while slow_write is blocked on its thread
        release.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            nursery.start_soon(canceller)
        assert finished == ["written", "returned"]
        assert scope.cancelled_caught
    finally:
        thread.close()
