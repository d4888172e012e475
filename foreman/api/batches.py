"""OpenAI's Files and Batch APIs: hand over a JSONL file of requests, come back for
the results.

``POST /v1/files`` checks every line before anything is stored
(:mod:`foreman.batching.lines`: a bad file is refused naming its bad lines) and
keeps the file with the artifacts (``FileStored``). ``POST /v1/batches`` hands the
batch to the batcher actor, which runs its lines as jobs below every other job
and writes the output and error files when it ends. Reads come from the log's
projections. Objects and errors have OpenAI's shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal

import trio
from fastapi import APIRouter, Query, Request, params
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response

from foreman.actors import BatcherClient, BatchNotFound, CannotCancel, JournalClient, store_file
from foreman.api.auth import Principal, principal
from foreman.api.stored import stored_headers
from foreman.api.writable import unstored
from foreman.artifacts import ArtifactStore
from foreman.batching import lines
from foreman.events.batches import ENDED, Batch, LineCounts, counted_batch, list_batches
from foreman.events.files import StoredFile, input_of_unended_batch, list_files, stored_file
from foreman.events.log import unix_time
from foreman.events.reader import Reader
from foreman.events.types import (
    BATCH_ID_PREFIX,
    BatchCreated,
    BatchEndpoint,
    BatchMetadata,
    FileDeleted,
    file_stream,
)
from foreman.ids import new_ulid
from foreman.openai_protocol import OpenAIError
from foreman.units import parse_duration

LONGEST_WINDOW = 24 * 3600.0
"""OpenAI's only completion window, ``24h``; Foreman also takes a shorter one."""
UPLOAD_OVERHEAD = 1024 * 1024
"""Bytes a multipart upload may carry beyond its file (headers, the other fields)."""
MAX_UPLOAD = lines.MAX_BYTES + UPLOAD_OVERHEAD
"""The request body limit of ``POST /v1/files`` (every other route has FOREMAN_MAX_BODY)."""
JSONL = "application/jsonl"


@dataclass(frozen=True, slots=True)
class BatchesApi:
    journal: JournalClient
    reader: Reader
    store: ArtifactStore
    batcher: BatcherClient


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: Annotated[str, Field(min_length=1, max_length=64)]
    endpoint: BatchEndpoint
    completion_window: Annotated[str, Field(min_length=1, max_length=16)]
    metadata: BatchMetadata | None = None


def batch_routes(api: BatchesApi, writes: params.Depends) -> APIRouter:
    """``writes``: the dependency of a route that appends (:mod:`foreman.api.writable`)."""
    router = APIRouter(prefix="/v1")

    @router.post("/files", dependencies=[writes])
    async def upload(request: Request, who: principal) -> Response:
        return JSONResponse(file_object(await _upload(api, request, who.tenant)))

    @router.get("/files")
    async def files(
        purpose: str | None = None,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
        order: Literal["asc", "desc"] = "desc",
        *,
        who: principal,
    ) -> Response:
        query = partial(
            list_files,
            purpose=purpose,
            after=after,
            limit=limit + 1,
            newest_first=order == "desc",
            tenant=who.sees,
        )
        found = await api.reader.read(query)
        return JSONResponse(_page([file_object(f) for f in found], limit))

    @router.get("/files/{file_id}")
    async def file(file_id: str, who: principal) -> Response:
        return JSONResponse(file_object(await _file(api, file_id, who)))

    @router.get("/files/{file_id}/content")
    async def content(file_id: str, who: principal) -> Response:
        found = await _file(api, file_id, who)
        path = api.store.file_path(found.id, found.sha256)
        try:
            data = await trio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:  # deleted meanwhile
            raise OpenAIError(404, f"no such file: {file_id}") from None
        return Response(data, media_type=JSONL, headers=stored_headers(found.filename, JSONL))

    @router.delete("/files/{file_id}", dependencies=[writes])
    async def delete(file_id: str, who: principal) -> Response:
        found = await _file(api, file_id, who)
        running = await api.reader.read(input_of_unended_batch, found.id)
        if running is not None:
            raise OpenAIError(409, f"{found.id} is the input of {running}, which has not ended")
        await api.journal.append(file_stream(found.id), [FileDeleted(reason="deleted")])
        await trio.to_thread.run_sync(api.store.remove, found.id.removeprefix("file-"))
        return JSONResponse({"id": found.id, "object": "file", "deleted": True})

    @router.post("/batches", dependencies=[writes])
    async def create(request: Request, who: principal) -> Response:
        body = _batch_request(await request.body())
        input_file = await api.reader.read(stored_file, body.input_file_id)
        if input_file is None or not who.owns(input_file.tenant):
            raise OpenAIError(
                400, f"no file {body.input_file_id!r}: upload it first", param="input_file_id"
            )
        if input_file.purpose != "batch" or input_file.requests is None:
            message = f"{input_file.id} has purpose {input_file.purpose!r}, not 'batch'"
            raise OpenAIError(400, message, param="input_file_id")
        batch_id = f"{BATCH_ID_PREFIX}{new_ulid()}"
        created = BatchCreated(
            input_file_id=input_file.id,
            endpoint=body.endpoint,
            completion_window=body.completion_window,
            window=_window(body.completion_window),
            requests=input_file.requests,
            metadata=body.metadata,
            tenant=who.tenant,
        )
        await api.batcher.create(batch_id, created, input_file)
        return JSONResponse(await _batch_object(api, batch_id, who))

    @router.get("/batches")
    async def batches(
        who: principal,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> Response:
        query = partial(list_batches, after=after, limit=limit + 1, tenant=who.sees)
        found = await api.reader.read(query)
        return JSONResponse(_page([batch_object(*counted) for counted in found], limit))

    @router.get("/batches/{batch_id}")
    async def get(batch_id: str, who: principal) -> Response:
        return JSONResponse(await _batch_object(api, batch_id, who))

    @router.post("/batches/{batch_id}/cancel", dependencies=[writes])
    async def cancel(batch_id: str, who: principal) -> Response:
        await _batch_object(api, batch_id, who)  # 404 unless it is the caller's
        try:
            await api.batcher.cancel(batch_id)
        except BatchNotFound:
            raise _no_batch(batch_id) from None
        except CannotCancel as error:
            raise OpenAIError(409, f"cannot cancel a batch with status {error}") from None
        return JSONResponse(await _batch_object(api, batch_id, who))

    return router


async def _upload(api: BatchesApi, request: Request, tenant: str | None) -> StoredFile:
    """Check and store ``tenant``'s uploaded batch input; OpenAIError (400) naming what
    is wrong."""
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as error:  # python-multipart's and Starlette's refusals alike
        raise OpenAIError(400, f"the body must be multipart/form-data: {error}") from None
    try:
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "batch":
            message = f"purpose must be 'batch' (Foreman keeps files for batches), not {purpose!r}"
            raise OpenAIError(400, message, param="purpose")
        if not isinstance(upload, UploadFile):
            raise OpenAIError(400, "a file is required: the form field 'file'", param="file")
        data = await upload.read()
        filename = upload.filename or "input.jsonl"
    finally:
        await form.close()
    try:
        checked = await trio.to_thread.run_sync(lines.check, data)
    except lines.BadInput as error:
        message = f"the file cannot be a batch's input: {error}"
        raise OpenAIError(400, message, param="file") from None
    try:
        file_id = await store_file(
            api.journal,
            api.store,
            data,
            filename=filename[:255],
            purpose="batch",
            tenant=tenant,
            checked=checked,
        )
    except ValidationError as error:
        message = error.errors()[0]["msg"]
        raise OpenAIError(400, f"filename: {message}", param="file") from None
    except OSError as error:  # the disk is full or read-only (ADR-0041)
        raise unstored("the file", error) from None
    found = await api.reader.read(stored_file, file_id)
    assert found is not None
    return found


def _batch_request(raw: bytes) -> BatchRequest:
    try:
        return BatchRequest.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise OpenAIError(
            400, f"{field}: {message}" if field else message, param=field or None
        ) from None


def _window(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= LONGEST_WINDOW:
        message = (
            f"completion_window must be '24h' (or, in Foreman, a shorter duration "
            f"such as '1h'), not {text!r}"
        )
        raise OpenAIError(400, message, param="completion_window")
    return seconds


async def _file(api: BatchesApi, file_id: str, who: Principal) -> StoredFile:
    """The file, if ``who`` may see it: another tenant's is as unknown as none (404)."""
    found = await api.reader.read(stored_file, file_id)
    if found is None or not who.owns(found.tenant):
        raise OpenAIError(404, f"no such file: {file_id}")
    return found


def _no_batch(batch_id: str) -> OpenAIError:
    return OpenAIError(404, f"no such batch: {batch_id}")


async def _batch_object(api: BatchesApi, batch_id: str, who: Principal) -> dict[str, Any]:
    found = await api.reader.read(counted_batch, batch_id)
    if found is None or not who.owns(found[0].tenant):
        raise _no_batch(batch_id)
    return batch_object(*found)


def _page(objects: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    shown = objects[:limit]
    return {
        "object": "list",
        "data": shown,
        "first_id": shown[0]["id"] if shown else None,
        "last_id": shown[-1]["id"] if shown else None,
        "has_more": len(objects) > limit,
    }


def _unix(stamp: str | None) -> int | None:
    return None if stamp is None else int(unix_time(stamp))


def file_object(file: StoredFile) -> dict[str, Any]:
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": _unix(file.created_at),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
    }


def batch_object(found: Batch, counts: LineCounts) -> dict[str, Any]:
    """A batch as OpenAI shows it."""
    ended = found.ended_at
    at = {status: _unix(ended) if found.status == status else None for status in ENDED}
    errors = json.loads(found.errors) if found.errors else None
    return {
        "id": found.id,
        "object": "batch",
        "endpoint": found.endpoint,
        "errors": None if errors is None else {"object": "list", "data": errors},
        "input_file_id": found.input_file_id,
        "completion_window": found.completion_window,
        "status": found.status,
        "output_file_id": found.output_file_id,
        "error_file_id": found.error_file_id,
        "created_at": _unix(found.created_at),
        "in_progress_at": _unix(found.in_progress_at),
        "expires_at": _unix(found.expires_at),
        "finalizing_at": _unix(found.finalizing_at),
        "completed_at": at["completed"],
        "failed_at": at["failed"],
        "expired_at": at["expired"],
        "cancelling_at": _unix(found.cancelling_at),
        "cancelled_at": at["cancelled"],
        "request_counts": {
            "total": counts.total,
            "completed": counts.completed,
            "failed": counts.failed,
        },
        "metadata": json.loads(found.metadata) if found.metadata else None,
    }
