"""Reads of the log and its projections, beside the journal, never through it.

The journal is the only writer. Readers (the job API, the janitor, recovery,
the webhook dispatcher) get a read-only connection of their own, on a thread of its
own (:class:`~foreman.dbthread.DedicatedThread`): in WAL mode a read sees the
last commit and neither waits for the writer nor holds it up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from foreman.dbthread import DedicatedThread
from foreman.events.log import EventLog

T = TypeVar("T")


class Reader:
    def __init__(self, path: str | Path) -> None:
        self.path = path
        self._thread: DedicatedThread | None = None
        self._log: EventLog | None = None

    async def run(self, *, task_status: trio.TaskStatus[Reader] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the connection, report ready, and keep it until cancelled."""
        thread = DedicatedThread("foreman-reader")
        try:
            self._log = await thread.run(lambda: EventLog.open(self.path, read_only=True))
            self._thread = thread
            try:
                task_status.started(self)
                await trio.sleep_forever()
            finally:
                self._thread = None
                with trio.CancelScope(shield=True):
                    await thread.run(self._log.close)
        finally:
            thread.close()

    async def read(self, query: Callable[..., T], *args: Any) -> T:
        """``query(log, *args)`` on the reader's thread; one read transaction at a time."""
        if self._thread is None or self._log is None:
            await trio.lowlevel.checkpoint()  # shutting down: the caller is cancelled too
            raise RuntimeError("the reader is not running")
        return await self._thread.run(_in_snapshot, query, self._log, *args)


def _in_snapshot(query: Callable[..., T], log: EventLog, *args: Any) -> T:
    with log.snapshot():
        return query(log, *args)
