"""Storage faults with a whole Foreman over real HTTP (ADR-0041): the event log or the
artifacts on a real tmpfs of a few MiB, filled to the last byte, then freed.

While the log cannot be written Foreman takes no new work (503 with the reason and
Retry-After, in each route's dialect), answers reads and health, keeps the work in
hand, and goes on once the disk has room, its log sound. A full artifacts disk
fails a job saying so, refuses an upload, and holds a batch in ``finalizing``.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import trio

from foreman.actors import StorageFault
from foreman.events.types import batch_stream
from tests.disks import SmallDisk, small_disk
from tests.processes import foreman_command
from tests.running import (
    ENDS,
    Done,
    Foreman,
    counted,
    event_types,
    recorded,
    start_foreman,
    until,
)

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "why is the sky blue?"}]}
JOB = {"kind": "chat", "request": CHAT}
HELD_SECONDS = 3.0
"""How long the backend holds the job running when the disk fills: the fault begins
well within it."""


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with small_disk(tmp_path / "disk", size="16m") as mounted:
        yield mounted


class Logged(logging.Handler):
    """``seen`` is set when a line holding ``text`` is logged: a test waits on it."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


def ended(*jobs: str) -> Done:
    """True on the last of the ``jobs`` to end: after a fault their ends may share a
    commit."""
    return counted(len(jobs), lambda event: event.stream in jobs and event.type in ENDS)


async def faulted(foreman: Foreman) -> StorageFault:
    status = foreman.running.journal.status
    with trio.fail_after(10):
        while status.fault is None:
            await status.changed()
    return status.fault


def assert_refused(answer: httpx.Response, reason: str) -> str:
    """A 503 with Retry-After whose message names ``reason``; the message."""
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    error = answer.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert "Foreman takes no new work until its event log can be written again" in message
    assert reason in message
    return str(message)


async def test_a_full_log_disk_stops_intake_keeps_reads_and_the_work_in_hand_then_resumes(
    disk: SmallDisk, tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    db = disk.root / "foreman.db"
    caplog.set_level(logging.INFO, logger="foreman.actors.journal")
    async for foreman in start_foreman(nursery, db, artifacts_dir=tmp_path / "artifacts"):
        async with httpx.AsyncClient(base_url=foreman.url, timeout=30) as http:
            committed = await foreman.running.journal.subscribe()
            sim = (await http.get("/healthz")).json()["backends"][0]["url"]
            stall = {"kind": "stall", "seconds": HELD_SECONDS, "after_tokens": 1}
            await http.post(f"{sim}/_sim/faults", json=stall)
            running = (await http.post("/jobs", json=JOB)).json()["job_id"]
            await until(committed, recorded(running, "JobStarted"))
            other_model = {"kind": "chat", "request": {**CHAT, "model": "qwen2"}}
            queued = (await http.post("/jobs", json=other_model)).json()["job_id"]

            disk.fill()
            caught: list[httpx.Response] = []  # a submission that passed the door just before
            async with trio.open_nursery() as submitting:
                submitting.start_soon(_submit, http, caught)
                fault = await faulted(foreman)
                full = "foreman.db cannot be written: the disk is full"
                assert fault.reason.startswith(full)
                await _submissions_are_refused_in_every_dialect(foreman, http, full, queued)
                await _reads_and_health_are_answered(http, running, queued, full)
                await http.get(f"{sim}/_sim/stats", params={"until_generations": 1})
                assert caught == []  # it waits with the work in hand
                disk.free()
            assert caught[0].status_code == 202
            late = caught[0].json()["job_id"]
            assert foreman.running.journal.status.fault is None

            await until(committed, ended(running, queued))
            succeeded = (await http.get(f"/jobs/{running}/events")).json()["events"][-1]
            assert succeeded["type"] == "JobSucceeded"
            assert succeeded["recorded_at"] > fault.since
            submitted = (await http.get(f"/jobs/{late}/events")).json()["events"][0]
            assert submitted["seq"] < succeeded["seq"]  # its outcome was held through the fault
            assert (await http.get(f"/jobs/{queued}")).json()["state"] == "succeeded"

            assert (await http.get("/healthz")).json()["log"] == {"writable": True}
            after = await http.post("/jobs", json=JOB)
            assert after.status_code == 202
            await until(committed, recorded(after.json()["job_id"], "JobSucceeded"))
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.endswith("journal")]
    assert [level for level, _ in lines] == ["WARNING", "INFO"]
    assert full in lines[0][1]
    assert "can be written again" in lines[1][1]
    verified = foreman_command("events", "verify", "--db", str(db))
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_stopping_while_the_log_cannot_be_written_loses_only_what_recovery_redoes(
    disk: SmallDisk, tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM while the disk is full: Foreman does not wait for the disk (within its
    grace), says what is lost, and at the next start, with room, runs the job whose
    outcome it could not record again: only unacknowledged work was lost."""
    db, artifacts = disk.root / "foreman.db", tmp_path / "artifacts"
    caplog.set_level(logging.ERROR, logger="foreman.supervisor")
    with trio.fail_after(20):
        async for foreman in start_foreman(
            nursery, db, artifacts_dir=artifacts, shutdown_grace="0.5s"
        ):
            committed = await foreman.running.journal.subscribe()
            async with httpx.AsyncClient(base_url=foreman.url) as http:
                sim = (await http.get("/healthz")).json()["backends"][0]["url"]
                stall = {"kind": "stall", "seconds": 1, "after_tokens": 1}
                await http.post(f"{sim}/_sim/faults", json=stall)
                job = (await http.post("/jobs", json=JOB)).json()["job_id"]
                await until(committed, recorded(job, "JobStarted"))
                disk.fill()
                await faulted(foreman)  # its outcome is refused
    (stopping,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert stopping.startswith("stopping while the event log cannot be written")
    assert event_types(db, job) == ["JobSubmitted", "JobStarted"]

    disk.free()
    async for foreman in start_foreman(nursery, db, artifacts_dir=artifacts):
        committed = await foreman.running.journal.subscribe()
        if event_types(db, job)[-1] != "JobSucceeded":
            await until(committed, recorded(job, "JobSucceeded"))
    assert event_types(db, job) == [
        "JobSubmitted",
        "JobStarted",
        "JobRequeued",
        "JobStarted",
        "JobSucceeded",
    ]
    verified = foreman_command("events", "verify", "--db", str(db))
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_a_waiting_callers_job_runs_while_it_commits_and_is_answered_only_after(
    disk: SmallDisk, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Nothing queued and the GPU free: a sync call is sent to the backend while its
    ``JobSubmitted`` commits (ADR-0048). Here that commit waits for the disk: the
    backend runs the job meanwhile, and the caller is answered only once the job is
    in the log."""
    db = disk.root / "foreman.db"
    async for foreman in start_foreman(nursery, db, artifacts_dir=tmp_path / "artifacts"):
        committed = await foreman.running.journal.subscribe()
        async with httpx.AsyncClient(base_url=foreman.url, timeout=30) as http:
            sim = (await http.get("/healthz")).json()["backends"][0]["url"]
            disk.fill()
            answers: list[httpx.Response] = []
            async with trio.open_nursery() as calling:
                calling.start_soon(_chat, http, answers)
                await faulted(foreman)
                await http.get(f"{sim}/_sim/stats", params={"until_generations": 1})
                assert answers == []  # run, but not answered: its submission is not logged
                disk.free()
            (answer,) = answers
            assert answer.status_code == 200, answer.text
            assert answer.json()["done"] is True
            (job,) = [j["id"] for j in (await http.get("/jobs")).json()["jobs"]]
            await until(committed, recorded(job, "JobSucceeded"))  # may follow the answer
            assert event_types(db, job) == ["JobSubmitted", "JobStarted", "JobSucceeded"]


async def _chat(http: httpx.AsyncClient, answers: list[httpx.Response]) -> None:
    answers.append(await http.post("/api/chat", json={**CHAT, "stream": False}))


async def _submit(http: httpx.AsyncClient, answers: list[httpx.Response]) -> None:
    answers.append(await http.post("/jobs", json=JOB))


async def _submissions_are_refused_in_every_dialect(
    foreman: Foreman, http: httpx.AsyncClient, reason: str, queued: str
) -> None:
    """Every route that would append answers 503 at once, in its dialect; nothing waits."""
    with trio.fail_after(5):
        with pytest.raises(ollama.ResponseError) as refused:
            await foreman.call(foreman.client().chat, model="llama3", messages=CHAT["messages"])
        assert refused.value.status_code == 503
        assert reason in refused.value.error

        client = openai.OpenAI(base_url=f"{foreman.url}/v1", api_key="-", max_retries=0)
        with pytest.raises(openai.APIStatusError) as openai_refused:
            await trio.to_thread.run_sync(
                lambda: client.chat.completions.create(model="llama3", messages=CHAT["messages"])
            )
        assert openai_refused.value.status_code == 503
        assert reason in openai_refused.value.message

        answer = await http.post("/v1/chat/completions", json=CHAT)
        assert_refused(answer, reason)
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
        assert_refused(await http.post("/v1/completions", json={"model": "llama3"}), reason)
        generate = await http.post("/api/generate", json={"model": "llama3", "prompt": "hi"})
        assert list(generate.json()) == ["error"]
        assert_refused(generate, reason)
        submitted = await http.post("/jobs", json=JOB)
        assert list(submitted.json()) == ["error"]
        assert_refused(submitted, reason)
        upload = {"file": ("in.jsonl", io.BytesIO(b"{}\n")), "purpose": (None, "batch")}
        for method, path, body in [
            ("DELETE", f"/jobs/{queued}", None),
            ("POST", f"/jobs/{queued}/webhooks/redeliver", None),
            ("POST", "/v1/batches", {"input_file_id": "file-x"}),
            ("POST", "/v1/batches/batch_x/cancel", None),
            ("DELETE", "/v1/files/file-x", None),
            ("POST", "/backends/default/drain", None),
        ]:
            assert_refused(await http.request(method, path, json=body), reason)
        assert_refused(await http.post("/v1/files", files=upload), reason)


async def _reads_and_health_are_answered(
    http: httpx.AsyncClient, running: str, queued: str, reason: str
) -> None:
    with trio.fail_after(5):
        assert (await http.get(f"/jobs/{running}")).json()["state"] == "running"
        waiting = (await http.get(f"/jobs/{queued}")).json()
        assert (waiting["state"], waiting["queue_position"]) == ("queued", 1)  # behind one
        assert {job["id"] for job in (await http.get("/jobs")).json()["jobs"]} >= {running}
        assert (await http.get(f"/jobs/{running}/events")).status_code == 200
        tags = (await http.get("/api/tags")).json()["models"]
        assert "llama3:latest" in {model["name"] for model in tags}
        assert (await http.get("/v1/models")).status_code == 200
        assert (await http.get("/v1/batches")).status_code == 200
        health = await http.get("/healthz")
        assert health.status_code == 503
        assert int(health.headers["retry-after"]) >= 1
        body = health.json()
        assert body["log"]["writable"] is False
        assert body["log"]["reason"].startswith(reason)
        assert body["log"]["failed_attempts"] >= 1
        assert body["actors"]["journal"] == "waiting for the storage"
        assert body["backends"][0]["reachable"] is True


async def test_a_full_artifacts_disk_fails_the_job_refuses_uploads_and_holds_a_batch(
    disk: SmallDisk, db_path: Path, nursery: trio.Nursery
) -> None:
    """The log has room; the artifacts do not. A job succeeds (its outputs are made
    from its logged response, ADR-0048) and its outputs are served whole, an upload is
    refused (503, OpenAI's shape), and a batch's output file waits, the batch
    ``finalizing``, until there is room: no actor stops."""
    artifacts = disk.root / "artifacts"
    logged = Logged("its output file cannot be stored (No space left on device)")
    logging.getLogger("foreman.actors.batcher").addHandler(logged)
    try:
        async for foreman in start_foreman(nursery, db_path, artifacts_dir=artifacts):
            await _with_full_artifacts(foreman, disk, logged)
    finally:
        logging.getLogger("foreman.actors.batcher").removeHandler(logged)


async def _with_full_artifacts(foreman: Foreman, disk: SmallDisk, logged: Logged) -> None:
    client = openai.OpenAI(base_url=f"{foreman.url}/v1", api_key="-", max_retries=0)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": CHAT}
    jsonl = json.dumps(line).encode() + b"\n"
    uploaded = await trio.to_thread.run_sync(
        lambda: client.files.create(file=("in.jsonl", io.BytesIO(jsonl)), purpose="batch")
    )
    committed = await foreman.running.journal.subscribe()
    async with httpx.AsyncClient(base_url=foreman.url, timeout=30) as http:
        disk.fill()
        job = (await http.post("/jobs", json=JOB)).json()["job_id"]
        await until(committed, recorded(job, "JobSucceeded"))
        view: dict[str, Any] = (await http.get(f"/jobs/{job}")).json()
        content = next(a for a in view["artifacts"] if a["name"] == "content.txt")
        output = await http.get(content["url"], headers={"Range": "bytes=0-1"})
        assert (output.status_code, output.text) == (200, content["inline"])

        refused = await http.post(
            "/v1/files", files={"file": ("in.jsonl", io.BytesIO(jsonl))}, data={"purpose": "batch"}
        )
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        message = refused.json()["error"]["message"]
        assert message == "the file could not be stored: No space left on device"

        batch = await trio.to_thread.run_sync(
            lambda: client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
        )
        with trio.fail_after(10):
            await logged.seen.wait()
        assert (await http.get(f"/v1/batches/{batch.id}")).json()["status"] == "finalizing"
        assert (await http.get("/healthz")).status_code == 200  # the log itself is fine
        disk.free()
        await until(committed, recorded(batch_stream(batch.id), "BatchEnded"), within=20)
        ended = (await http.get(f"/v1/batches/{batch.id}")).json()
        assert (ended["status"], ended["request_counts"]["completed"]) == ("completed", 1)
        output = await http.get(f"/v1/files/{ended['output_file_id']}/content")
        assert json.loads(output.text)["custom_id"] == "a"
