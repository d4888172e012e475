"""Run blocking calls on one dedicated thread, awaited from Trio.

A ``sqlite3`` connection belongs to the thread that opened it, and
``trio.to_thread.run_sync`` may pick a different thread on every call, so each
connection gets a ``DedicatedThread`` and every call on it goes there.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

_Job = Callable[[], None]


class DedicatedThread:
    """One daemon thread that runs the calls it is sent, one at a time, in order."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the thread. Not cancellable once sent: a write either
        happens and is reported, or fails and raises, never half-waits."""
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def job() -> None:
            result = outcome.capture(fn, *args)
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self._jobs.put(job)
        value: T = await trio.lowlevel.wait_task_rescheduled(
            lambda _raise_cancel: trio.lowlevel.Abort.FAILED
        )
        return value

    def close(self) -> None:
        """Finish the calls already sent, then stop the thread."""
        self._jobs.put(None)
        self._thread.join()
