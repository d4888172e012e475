"""Real storage faults for tests: a small disk that fills up, files made immutable.

Nothing is mocked: SQLite and the artifact store meet the kernel's own ENOSPC
(a tmpfs of a few MiB, filled) or EPERM (``chattr +i``). Both need root's
privileges (mounting; CAP_LINUX_IMMUTABLE on a file system with the flag), and a
test that cannot have them is skipped, saying why.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class SmallDisk:
    """A tmpfs of its own: :meth:`fill` leaves no byte free, :meth:`free` undoes it.

    SQLite meets the full disk when its WAL must grow: a log whose WAL was
    checkpointed and rewound (after a thousand pages) writes on into the space it
    has, for a few commits more. The tests fill the disk well before that."""

    root: Path

    @property
    def _filler(self) -> Path:
        return self.root / "filler"

    def fill(self) -> None:
        """Write until the kernel says ENOSPC, down to the last byte."""
        with self._filler.open("ab", buffering=0) as filler:
            for chunk in (1 << 20, 4096, 1):
                try:
                    while True:
                        filler.write(b"\0" * chunk)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise

    def free(self) -> None:
        self._filler.unlink()


@contextmanager
def small_disk(where: Path, size: str = "8m") -> Iterator[SmallDisk]:
    """A tmpfs of ``size`` mounted at ``where`` for the block (skips the test when
    mounting is not allowed)."""
    where.mkdir(parents=True, exist_ok=True)
    _run_or_skip(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        "a full disk is a small tmpfs: run as root where mounting is allowed",
    )
    try:
        yield SmallDisk(where)
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=True)


@contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``paths`` cannot be written for the block, not even by root: ``chattr +i``
    (skips the test where the file system or the privileges do not allow it)."""
    flagged: list[Path] = []
    try:
        for path in paths:
            _run_or_skip(
                ["chattr", "+i", str(path)],
                "a read-only log is made with chattr +i: run as root on ext4, xfs or btrfs",
            )
            flagged.append(path)
        yield
    finally:
        for path in flagged:
            subprocess.run(["chattr", "-i", str(path)], check=True)


def _run_or_skip(command: list[str], why: str) -> None:
    """Run ``command``; skip the test, saying ``why`` it is needed, when it fails."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.skip(f"{command[0]} is not installed; {why}")
    if done.returncode != 0:
        pytest.skip(f"{' '.join(command[:2])} was refused ({done.stderr.strip()}); {why}")
