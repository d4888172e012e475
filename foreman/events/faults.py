"""Which failed commits are the storage's fault, and why, for a person to act on.

The disk is full, a file of the log cannot be written (read-only, immutable),
the disk reports an I/O error, or another process holds the write lock: none is
a bug in Foreman, each may pass, so the journal keeps the appends and tries
again (ADR-0041). Anything else a commit raises (a broken constraint, a misused
connection, a damaged file) is not the storage's: the journal stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path

_CAUSES = {
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_IOERR: "the disk failed to write it",
    sqlite3.SQLITE_READONLY: "it is read-only",
    sqlite3.SQLITE_CANTOPEN: "a file of it cannot be opened",
    sqlite3.SQLITE_BUSY: "another process holds its write lock",
}
"""SQLite's primary result codes (an extended code's low byte) that name the storage."""


def storage_fault(error: BaseException, path: Path) -> str | None:
    """Why a commit to the log at ``path`` failed with ``error``, when the storage is
    to blame; None when it is not. Looks at the disk (blocking): call it on the log's
    thread. Names the file, not the directory: the reason is shown to API clients."""
    code = getattr(error, "sqlite_errorcode", None)
    if not isinstance(error, sqlite3.Error) or code is None:
        return None
    cause = _CAUSES.get(code & 0xFF)
    if cause is None:
        return None
    sqlite = f"SQLite: {error}, {error.sqlite_errorname}"
    found = "".join(f"; {note}" for note in _what_the_disk_says(path))
    return f"{path.name} cannot be written: {cause} ({sqlite}){found}"


def _what_the_disk_says(path: Path) -> list[str]:
    """The log's files that cannot be written, and the space left beside them: SQLite's
    message names no file, and an I/O error no cause."""
    notes = [
        f"{file.name} is not writable"
        for file in (path, path.with_name(f"{path.name}-wal"))
        if file.exists() and not os.access(file, os.W_OK)
    ]
    with contextlib.suppress(OSError):  # the directory itself is gone: nothing to add
        notes.append(f"{shutil.disk_usage(path.parent).free:,} bytes free on its file system")
    return notes
