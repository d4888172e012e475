"""Content-addressed storage for job outputs and stored files.

A job's outputs (``response.json``, ``content.txt``, images, ``embeddings.json``) are
functions of its final response, which its ``JobSucceeded`` holds in the log: the
event names them (:func:`output_refs`: name, media type, size, sha256) and nothing is
written when the job ends. Their bytes are made again from the response when asked
(:func:`output_bytes`); a download writes them once to ``root/<job id>/<sha256>``
(:meth:`ArtifactStore.output`), a cache that is never fsynced, since the log can
always make it again (ADR-0048). Outputs written by an older Foreman, and uploaded
files, are the files themselves, written durably (:meth:`ArtifactStore.put`).

Each job's (or file's) directory is removed with it when the janitor prunes it; a
crash between pruning and removing leaves a directory the janitor removes when it
starts. Blocking file I/O: callers run it on a thread.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foreman.events.types import FILE_ID_PREFIX, ArtifactRef
from foreman.ids import new_ulid

ARTIFACT_NAME = re.compile(r"(?!\.)(?!.*\.\.)[A-Za-z0-9._-]{1,128}")
"""Artifact names are safe as a URL segment and a file name: no separators, no dot-dot."""


def new_file_id() -> str:
    return f"{FILE_ID_PREFIX}{new_ulid()}"


_SHA256 = re.compile(r"[0-9a-f]{64}")
_JOB_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
_JSON = "application/json"


def valid_name(name: str) -> bool:
    """Whether ``name`` may name an artifact (the HTTP layer rejects traversal with it)."""
    return ARTIFACT_NAME.fullmatch(name) is not None


def is_text(media_type: str) -> bool:
    """Whether a media type is text, which the HTTP layer inlines as a string, not base64."""
    essence = media_type.partition(";")[0].strip().lower()
    return essence.startswith("text/") or essence == _JSON or essence.endswith("+json")


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new or removed child) survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing each parent that gains an entry."""
    if path.is_dir():
        return
    _make_dirs(path.parent)
    with contextlib.suppress(FileExistsError):  # another thread won the race
        path.mkdir()
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class ArtifactStore:
    """Blobs at ``root/<job id>/<sha256>``; the name and media type live in the ref."""

    root: Path

    def path(self, job_id: str, sha256: str) -> Path:
        """Where a job's blob lives; refuses anything but a ULID and a digest, so never
        escapes ``root``."""
        if _JOB_ID.fullmatch(job_id) is None or _SHA256.fullmatch(sha256) is None:
            raise ValueError(f"not a job id and a lowercase hex sha256: {job_id!r}, {sha256!r}")
        return self.root / job_id / sha256

    def put(self, job_id: str, name: str, media_type: str, data: bytes) -> ArtifactRef:
        """Store ``data`` durably (write, fsync, rename, fsync dir) and return its ref."""
        if not valid_name(name):
            raise ValueError(f"invalid artifact name: {name!r}")
        digest = _sha256(data)
        final = self.path(job_id, digest)
        if not final.is_file():
            self._write(final, data)
        return ArtifactRef(name=name, media_type=media_type, size=len(data), sha256=digest)

    def _write(self, final: Path, data: bytes, *, durable: bool = True) -> None:
        """Write ``final`` whole or not at all (a temporary file renamed); ``durable``:
        fsync the file and every directory that gained an entry."""
        if durable:
            _make_dirs(final.parent)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if durable:
            _fsync_dir(final.parent)

    def output(self, job_id: str, kind: str, result: dict[str, Any], ref: ArtifactRef) -> Path:
        """The file of one of a job's outputs: written from the job's final response
        (``result``) the first time it is asked, not fsynced (a cache of what the log
        holds). Raises LookupError when the response does not make it."""
        final = self.path(job_id, ref.sha256)
        if not final.is_file():
            self._write(final, output_bytes(kind, result, ref), durable=False)
        return final

    def file_path(self, file_id: str, sha256: str) -> Path:
        """Where a stored file's bytes are: files live beside the jobs' outputs, under
        the ULID of their id (``file-<ULID>``), and are pruned alike."""
        return self.path(file_id.removeprefix(FILE_ID_PREFIX), sha256)

    def put_file(self, file_id: str, name: str, media_type: str, data: bytes) -> ArtifactRef:
        return self.put(file_id.removeprefix(FILE_ID_PREFIX), name, media_type, data)

    def remove(self, job_id: str) -> bool:
        """Delete a job's outputs; False if it had none."""
        directory = self.path(job_id, "0" * 64).parent
        if not directory.is_dir():
            return False
        shutil.rmtree(directory)
        _fsync_dir(self.root)
        return True

    def jobs(self) -> list[str]:
        """The ids of the jobs that have outputs stored, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(entry.name for entry in self.root.iterdir() if _JOB_ID.fullmatch(entry.name))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _decode_images(images: Any) -> list[bytes]:
    """Decode base64 images, skipping bad or empty entries: one must not fail a good job."""
    decoded = []
    for encoded in images if isinstance(images, list) else []:
        try:
            data = base64.b64decode(encoded, validate=True)
        except (TypeError, ValueError):  # not a string, or not base64
            continue
        if data:
            decoded.append(data)
    return decoded


def outputs(kind: str, result: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """The named artifacts ``(name, media_type, data)`` of a job's final backend response."""
    if kind == "embed":
        return [("embeddings.json", _JSON, _json_bytes(result))]
    if kind == "chat":
        message = result.get("message")
        source: dict[str, Any] = message if isinstance(message, dict) else {}
        text = source.get("content")
    elif kind == "generate":
        source, text = result, result.get("response")
    else:
        raise ValueError(f"unknown job kind: {kind!r}")
    content = text if isinstance(text, str) else ""
    images = _decode_images(source.get("images"))
    return [
        ("response.json", _JSON, _json_bytes(result)),
        ("content.txt", "text/plain; charset=utf-8", content.encode()),
        *((f"image-{i}.png", "image/png", data) for i, data in enumerate(images, start=1)),
    ]


def output_refs(kind: str, result: dict[str, Any]) -> tuple[ArtifactRef, ...]:
    """The references a job's ``JobSucceeded`` carries to its outputs: nothing written."""
    return tuple(
        ArtifactRef(name=name, media_type=media, size=len(data), sha256=_sha256(data))
        for name, media, data in outputs(kind, result)
    )


def output_bytes(kind: str, result: dict[str, Any], ref: ArtifactRef) -> bytes:
    """The bytes of the output ``ref`` names, made again from the job's final response;
    LookupError when that response does not make it (not this name, or other bytes)."""
    return picked(outputs(kind, result), ref)


def picked(made: Iterable[tuple[str, str, bytes]], ref: ArtifactRef) -> bytes:
    """The bytes among a job's outputs (``made`` by :func:`outputs`) that ``ref`` names;
    LookupError when none is those bytes."""
    for name, _, data in made:
        if name == ref.name and _sha256(data) == ref.sha256:
            return data
    raise LookupError(f"the job's response does not make {ref.name!r} ({ref.sha256})")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
