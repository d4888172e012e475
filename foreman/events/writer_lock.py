"""One writer per log: the journal of the running Foreman, or an offline tool, never both.

Two writers would each extend the hash chain from the head they last saw, and the
log would fork. The writer holds an exclusive ``flock`` on the database file for
as long as it writes; the kernel lets go of it when the process ends, however it
ends (``kill -9`` included), so a crash never leaves the log locked. (``flock``
and the POSIX locks SQLite takes on the same file do not interfere on Linux; the
descriptor is closed only after the writer's own connection is.)
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LogInUse(RuntimeError):
    """Another process writes this log (a running Foreman, most likely)."""


@contextmanager
def sole_writer(path: str | Path) -> Iterator[None]:
    """Hold the log at ``path`` for writing, or raise :class:`LogInUse`. A missing file is
    made empty (SQLite takes an empty file for a new database)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogInUse(
                f"{path} is being written by another process (a running Foreman?)"
            ) from None
        yield
    finally:
        os.close(descriptor)
