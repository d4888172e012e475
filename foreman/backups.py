"""Backups of a live log and its artifacts, and their restore (ADR-0045).

A backup is a directory: ``foreman.db`` (a copy of the log made by SQLite's online
backup API from one read snapshot), ``foreman.artifacts/`` (the artifacts, copied
after the snapshot) and ``manifest.json`` (the head it holds, the copy's digest),
written last, so a directory without one is a backup that did not finish.

Taking one writes nothing to the live log and takes no lock a writer needs: the
copy reads one WAL snapshot, which the journal's commits never wait for. A job's
outputs are in the log itself, made again from its response when asked (ADR-0048);
the artifacts directory holds uploaded files (and older Foremans' outputs), written
before the event naming them, so every file the snapshot names was on disk before
the snapshot was taken; copying afterwards finds it (unless the janitor pruned it
meanwhile: then it is past its TTL in the copy too, and is pruned again once
restored).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from foreman import __version__
from foreman.events import audit
from foreman.events.log import LogError, utc_now
from foreman.events.store import open_log
from foreman.events.writer_lock import LogInUse, sole_writer

BACKUP_FORMAT = 1
DB_NAME = "foreman.db"
ARTIFACTS_NAME = "foreman.artifacts"
MANIFEST_NAME = "manifest.json"
PAGES_PER_STEP = 1024
"""Pages copied per backup step (4 MiB of 4 KiB pages): progress between steps."""

Progress = Callable[[int, int], None]
"""Told (pages copied, pages in all) after each step."""


class BackupError(Exception):
    """A backup cannot be taken or restored as asked; nothing was overwritten."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a backup holds: the log's head when the snapshot was read, and its digest."""

    format: int
    created_at: str
    foreman_version: str
    head_seq: int
    head_hash: str
    db_sha256: str
    artifact_files: int

    def write(self, directory: Path) -> None:
        _write_durably(directory / MANIFEST_NAME, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
            manifest = cls(**fields)
        except FileNotFoundError:
            raise BackupError(f"{directory}: no {MANIFEST_NAME}: not a finished backup") from None
        except (ValueError, TypeError) as error:
            raise BackupError(f"{path}: not a backup manifest: {error}") from None
        if manifest.format != BACKUP_FORMAT:
            raise BackupError(
                f"{path}: backup format {manifest.format}, this Foreman reads {BACKUP_FORMAT}"
            )
        return manifest


def take(
    db: Path,
    artifacts: Path,
    dest: Path,
    progress: Progress | None = None,
    *,
    pages_per_step: int = PAGES_PER_STEP,
) -> Manifest:
    """Copy the log at ``db`` (live or not) and the artifacts under ``artifacts`` to
    the new directory ``dest``."""
    if not db.is_file():
        raise BackupError(f"no such event log: {db}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    copy = dest / DB_NAME
    _copy_snapshot(db, copy, progress, pages_per_step)
    files = _copy_tree(artifacts, dest / ARTIFACTS_NAME)
    head_seq, head_hash = _head(copy)
    manifest = Manifest(
        format=BACKUP_FORMAT,
        created_at=utc_now(),
        foreman_version=__version__,
        head_seq=head_seq,
        head_hash=head_hash,
        db_sha256=_sha256(copy),
        artifact_files=files,
    )
    _fsync_dir(dest)
    manifest.write(dest)
    return manifest


def _copy_snapshot(db: Path, copy: Path, progress: Progress | None, pages: int) -> None:
    """SQLite's online backup of ``db`` into ``copy``, every step inside one read
    transaction: one consistent snapshot, however long the copy takes, and the
    writer is never blocked (in WAL mode a reader does not hold it up)."""
    source = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None)
    target = sqlite3.connect(copy, isolation_level=None)
    try:
        source.execute("PRAGMA busy_timeout = 10000")
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot
        source.backup(
            target,
            pages=pages,
            progress=None
            if progress is None
            else lambda _s, left, total: progress(total - left, total),
        )
        source.execute("COMMIT")
        # A copy in rollback-journal mode is one self-contained file; Foreman turns WAL
        # back on when it opens it for writing.
        target.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.Error as error:
        raise BackupError(f"cannot copy {db}: {error}") from error
    finally:
        target.close()
        source.close()
    _fsync(copy)


def _copy_tree(source: Path, dest: Path) -> int:
    """Copy every finished file under ``source`` (none if it does not exist); files
    that vanish meanwhile (pruned) are passed over. Returns the files copied."""
    copied = 0
    dest.mkdir()
    if not source.is_dir():
        return copied
    for directory, _subdirs, names in os.walk(source):
        here = dest / Path(directory).relative_to(source)
        here.mkdir(exist_ok=True)
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):  # an output being written
                continue
            try:
                shutil.copyfile(Path(directory) / name, here / name)
            except FileNotFoundError:
                continue
            _fsync(here / name)
            copied += 1
        _fsync_dir(here)
    return copied


def _head(db: Path) -> tuple[int, str]:
    log = open_log(db, read_only=True)
    try:
        return log.head()
    finally:
        log.close()


def check(directory: Path) -> Manifest:
    """The backup's manifest, once its copy of the log is found intact and sound."""
    manifest = Manifest.read(directory)
    copy = directory / DB_NAME
    if not copy.is_file() or _sha256(copy) != manifest.db_sha256:
        raise BackupError(f"{copy} is missing or does not match the manifest's digest")
    if _head(copy) != (manifest.head_seq, manifest.head_hash):
        raise BackupError(f"{copy}: its head is not the one the manifest names")
    return manifest


def problems(db: Path) -> list[audit.Problem]:
    """What ``foreman events verify`` finds in the log at ``db``."""
    try:
        log = open_log(db, read_only=True)
    except (LogError, sqlite3.Error) as error:
        return [audit.Problem(None, str(error))]
    try:
        return audit.verify(log)
    finally:
        log.close()


def restore(source: Path, db: Path, artifacts: Path, *, force: bool = False) -> Manifest:
    """Bring the backup at ``source`` back as the log ``db`` and its ``artifacts``.

    Refuses a log a running Foreman holds, always, and an existing log or a non-empty
    artifacts directory unless ``force``. The old log's ``-wal`` and ``-shm`` files go
    with it: left behind, SQLite would apply the old log's pages to the new file."""
    manifest = check(source)
    if not force:
        if db.exists():
            raise BackupError(f"{db} exists: restoring would replace it (--force to do so)")
        if artifacts.exists() and any(artifacts.iterdir()):
            raise BackupError(f"{artifacts} is not empty (--force to replace it)")
    db.parent.mkdir(parents=True, exist_ok=True)
    existed = db.exists()
    try:
        with sole_writer(db):
            staged = db.with_name(f".{db.name}.restoring")
            shutil.copyfile(source / DB_NAME, staged)
            _fsync(staged)
            staged_artifacts = artifacts.with_name(f".{artifacts.name}.restoring")
            shutil.rmtree(staged_artifacts, ignore_errors=True)
            _copy_tree(source / ARTIFACTS_NAME, staged_artifacts)
            for leftover in (db.with_name(f"{db.name}-wal"), db.with_name(f"{db.name}-shm")):
                leftover.unlink(missing_ok=True)
            staged.replace(db)
            shutil.rmtree(artifacts, ignore_errors=True)
            staged_artifacts.replace(artifacts)
            _fsync_dir(db.parent)
            _fsync_dir(artifacts.parent)
    except LogInUse as error:
        raise BackupError(f"{error}: stop it before restoring") from None
    except OSError as error:
        if not existed:
            db.unlink(missing_ok=True)
        raise BackupError(f"cannot restore to {db}: {error}") from error
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_durably(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    _fsync(path)
    _fsync_dir(path.parent)


def _fsync(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
