"""A batch survives its Foreman: a ``kill -9`` mid-batch, or a stop half-way through
making its lines jobs, and it resumes with no line run twice or lost."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from foreman.artifacts import ArtifactStore, new_file_id
from foreman.batching.lines import job_for, read
from foreman.events.log import EventLog
from foreman.events.store import open_log
from foreman.events.types import BatchCreated, FileStored, batch_stream, file_stream
from foreman.ids import new_ulid
from tests.processes import running, start_foreman_process, start_simulator
from tests.running import Foreman, recorded, start_foreman, until
from tests.test_batches import SIMULATOR, chat_line, jsonl

ENDS = ("JobSucceeded", "JobFailed", "JobCancelled")


def wait_for(condition: Callable[[], bool], seconds: float = 60) -> None:
    """Until ``condition()``: another process writes what it looks at."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def line_jobs(db_path: Path, batch_id: str) -> dict[int, list[str]]:
    """Each line's jobs, and every event of each job."""
    log = EventLog.open(db_path, read_only=True)
    try:
        rows = log.conn.execute("SELECT id, batch_line FROM jobs WHERE batch_id = ?", (batch_id,))
        jobs: dict[int, list[str]] = {}
        for job_id, line in rows:
            jobs.setdefault(line, []).extend(e.type for e in log.read_stream(job_id))
        return jobs
    finally:
        log.close()


def output_ids(url: str, batch: dict[str, object]) -> list[str]:
    ids = []
    for key in ("output_file_id", "error_file_id"):
        if batch[key]:
            text = httpx.get(f"{url}/v1/files/{batch[key]}/content").text
            ids += [json.loads(line)["custom_id"] for line in text.splitlines()]
    return ids


@pytest.mark.slow
def test_kill_9_mid_batch_resumes_it_and_no_line_ends_twice(tmp_path: Path, db_path: Path) -> None:
    lines = [chat_line(n) for n in range(300)]
    models = ("--models", "llama3,qwen2,mistral", "--token-latency", "0.005")
    with running(start_simulator(tmp_path / "gpu.log", *models)) as gpu:
        with running(start_foreman_process(tmp_path / "first.log", gpu.url, db_path)) as first:
            files = {"file": ("in.jsonl", jsonl(lines))}
            uploaded = httpx.post(f"{first.url}/v1/files", files=files, data={"purpose": "batch"})
            body = {
                "input_file_id": uploaded.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }
            batch_id = httpx.post(f"{first.url}/v1/batches", json=body).json()["id"]

            def some_done() -> bool:
                batch = httpx.get(f"{first.url}/v1/batches/{batch_id}").json()
                return batch["request_counts"]["completed"] >= 30

            wait_for(some_done)
            first.kill()
        with running(start_foreman_process(tmp_path / "second.log", gpu.url, db_path)) as second:

            def ended() -> bool:
                batch = httpx.get(f"{second.url}/v1/batches/{batch_id}").json()
                return batch["status"] == "completed"

            wait_for(ended)
            batch = httpx.get(f"{second.url}/v1/batches/{batch_id}").json()
            assert batch["request_counts"] == {"total": 300, "completed": 300, "failed": 0}
            assert sorted(output_ids(second.url, batch)) == sorted(f"req-{n}" for n in range(300))
            assert second.terminate(timeout=10) == 0
    jobs = line_jobs(db_path, batch_id)
    assert sorted(jobs) == list(range(1, 301))  # one job per line
    for line, types in jobs.items():
        assert sum(t in ENDS for t in types) == 1 and types[-1] == "JobSucceeded", (line, types)
    assert any("JobRequeued" in types for types in jobs.values())  # the one the kill hit


def seed_batch(db_path: Path, count: int, made: int, *, keep_input: bool = True) -> str:
    """A batch as a crash leaves it: created, ``made`` of its ``count`` lines jobs
    already; its input file's bytes kept or lost. Its id."""
    data = jsonl([chat_line(n) for n in range(count)])
    store = ArtifactStore(db_path.with_suffix(".artifacts"))
    file_id, batch_id = new_file_id(), f"batch_{new_ulid()}"
    ref = store.put_file(file_id, "in.jsonl", "application/jsonl", data)
    if not keep_input:
        store.remove(file_id.removeprefix("file-"))
    log = open_log(db_path)
    try:
        stored = FileStored(
            filename="in.jsonl",
            purpose="batch",
            bytes=ref.size,
            sha256=ref.sha256,
            requests=count,
            endpoint="/v1/chat/completions",
        )
        log.append(file_stream(file_id), [stored])
        created = BatchCreated(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            window=86400,
            requests=count,
        )
        log.append(batch_stream(batch_id), [created])
        for line in read(data)[:made]:
            log.append(new_ulid(), [job_for(line, batch_id, None)])
    finally:
        log.close()
    return batch_id


async def ended_batch(foreman: Foreman, batch_id: str) -> dict[str, Any]:
    """The batch once it has ended (at once, if it had when Foreman started)."""
    committed = await foreman.running.journal.subscribe()
    async with httpx.AsyncClient(base_url=foreman.url) as http:
        batch: dict[str, Any] = (await http.get(f"/v1/batches/{batch_id}")).json()
        if batch["status"] not in ("completed", "failed"):
            await until(committed, recorded(batch_stream(batch_id), "BatchEnded"))
            batch = (await http.get(f"/v1/batches/{batch_id}")).json()
    return batch


async def test_a_batch_stopped_while_its_lines_became_jobs_makes_the_rest(
    db_path: Path, nursery: trio.Nursery
) -> None:
    batch_id = seed_batch(db_path, 10, made=4)
    async for foreman in start_foreman(nursery, db_path, simulator=SIMULATOR):
        batch = await ended_batch(foreman, batch_id)
        assert batch["status"] == "completed"
        assert batch["request_counts"] == {"total": 10, "completed": 10, "failed": 0}
    jobs = line_jobs(db_path, batch_id)
    assert sorted(jobs) == list(range(1, 11))
    assert all(types[-1] == "JobSucceeded" for types in jobs.values())


async def test_a_batch_whose_input_is_gone_fails_and_foreman_carries_on(
    db_path: Path, nursery: trio.Nursery
) -> None:
    batch_id = seed_batch(db_path, 10, made=4, keep_input=False)
    async for foreman in start_foreman(nursery, db_path, simulator=SIMULATOR):
        batch = await ended_batch(foreman, batch_id)
        assert batch["status"] == "failed"
        assert batch["errors"]["data"][0]["code"] == "missing_input_file"
        client = openai.OpenAI(base_url=f"{foreman.url}/v1", api_key="-", max_retries=0)
        hello = [{"role": "user", "content": "hi"}]
        chat = partial(client.chat.completions.create, model="llama3", messages=hello)
        answer = await trio.to_thread.run_sync(chat)
        assert answer.choices[0].message.content
    jobs = line_jobs(db_path, batch_id)
    assert len(jobs) == 4 and all(types[-1] == "JobCancelled" for types in jobs.values())
