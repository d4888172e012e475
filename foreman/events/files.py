"""The files projection: the files Foreman keeps (batch inputs and outputs).

A file's bytes live with the artifacts (:mod:`foreman.artifacts`, under the
ULID of its id); its record is folded from its stream::

    (none) --FileStored--> stored --FileDeleted--> (row removed)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, NamedTuple, cast

from foreman.events.rows import RowsProjection, Transition, owned_by, refuse
from foreman.events.types import (
    FILE_ID_PREFIX,
    FILE_STREAM_PREFIX,
    FileStored,
    RecordedEvent,
    file_stream,
)

if TYPE_CHECKING:
    from foreman.events.log import EventLog


class StoredFile(NamedTuple):
    id: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    requests: int | None
    endpoint: str | None
    created_at: str
    version: int
    tenant: str | None = None


def _stored(file: StoredFile | None, recorded: RecordedEvent) -> StoredFile:
    if file is not None or recorded.version != 1:
        raise refuse(file, recorded, "a file is stored once: its stream starts with it")
    event = cast(FileStored, recorded.event)
    return StoredFile(
        id=recorded.stream.removeprefix(FILE_STREAM_PREFIX),
        filename=event.filename,
        purpose=event.purpose,
        bytes=event.bytes,
        sha256=event.sha256,
        requests=event.requests,
        endpoint=event.endpoint,
        created_at=recorded.recorded_at,
        version=recorded.version,
        tenant=event.tenant,
    )


def _deleted(file: StoredFile | None, recorded: RecordedEvent) -> None:
    if file is None:
        raise refuse(file, recorded, "no such file is stored")


class FilesProjection(RowsProjection[StoredFile]):
    name: ClassVar[str] = "files"
    version: ClassVar[int] = 2
    prefix: ClassVar[str] = FILE_STREAM_PREFIX
    row = StoredFile
    columns: ClassVar[str] = (
        "id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL, "
        "bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, requests INTEGER, endpoint TEXT, "
        "created_at TEXT NOT NULL, version INTEGER NOT NULL, tenant TEXT"
    )
    indexes: ClassVar[tuple[str, ...]] = (
        "CREATE INDEX IF NOT EXISTS files_by_created_at ON files (created_at)",
    )
    transitions: ClassVar[dict[str, Transition]] = {
        "FileStored": _stored,
        "FileDeleted": _deleted,
    }


def stored_file(log: EventLog, file_id: str) -> StoredFile | None:
    return FilesProjection().get(log.conn, file_id)


def list_files(
    log: EventLog,
    *,
    purpose: str | None,
    after: str | None,
    limit: int,
    newest_first: bool,
    tenant: str | None = None,
) -> list[StoredFile]:
    """Files by id (ids are ULIDs: time order), from after ``after``; only
    ``tenant``'s when given."""
    where, args = owned_by(tenant)
    if purpose is not None:
        where.append("purpose = ?")
        args.append(purpose)
    if after is not None:
        where.append("id < ?" if newest_first else "id > ?")
        args.append(after)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    order = "DESC" if newest_first else "ASC"
    rows = log.conn.execute(
        f"{FilesProjection().select()}{clause} ORDER BY id {order} LIMIT ?", (*args, limit)
    )
    return [StoredFile._make(row) for row in rows]


def files_stored_before(log: EventLog, cutoff: str, limit: int) -> list[StoredFile]:
    """Files stored before ``cutoff`` (FOREMAN_JOB_TTL), leaving out the inputs of
    batches not ended yet: they are still being read."""
    rows = log.conn.execute(
        f"{FilesProjection().select()} WHERE created_at < ? AND NOT EXISTS "
        "(SELECT 1 FROM batches WHERE batches.input_file_id = files.id "
        "AND batches.ended_at IS NULL) ORDER BY created_at LIMIT ?",
        (cutoff, limit),
    )
    return [StoredFile._make(row) for row in rows]


def existing_files(log: EventLog, ulids: list[str]) -> set[str]:
    """Which of these ULIDs are the ids of stored files (``file-<ULID>``)."""
    streams = [file_stream(f"{FILE_ID_PREFIX}{ulid}") for ulid in ulids]
    return {
        file.id.removeprefix(FILE_ID_PREFIX)
        for file in FilesProjection().load(log.conn, streams).values()
    }


def input_of_unended_batch(log: EventLog, file_id: str) -> str | None:
    """The batch not ended yet that reads this file, if any."""
    row = log.conn.execute(
        "SELECT id FROM batches WHERE input_file_id = ? AND ended_at IS NULL LIMIT 1", (file_id,)
    ).fetchone()
    return None if row is None else str(row[0])
