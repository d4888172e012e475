"""The scheduler and the worker, running jobs on the simulator over real HTTP."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from foreman.actors.journal import Journal, JournalClient
from foreman.actors.scheduler import Scheduler, SchedulerClient
from foreman.actors.worker import Answer, AnswerError, AnswerLine, Worker
from foreman.artifacts import output_bytes
from foreman.backend import Backend
from foreman.events.jobs import Job, JobsProjection
from foreman.events.log import EventLog
from foreman.events.types import (
    JOB_ENDS,
    JobCancelled,
    JobSubmitted,
    JobSucceeded,
)
from foreman.simulator import SimulatorConfig, serve_simulator
from tests.running import event_types, recorded, until


@dataclass
class Rig:
    db_path: Path
    journal: JournalClient
    scheduler: SchedulerClient
    simulator: str
    nursery: trio.Nursery
    waiting: dict[int, str] = field(default_factory=dict)
    """A waiting job's id, by its answers' id()."""

    async def submit(
        self, body: dict[str, Any], kind: str = "chat", *, wait: bool = True
    ) -> tuple[str, trio.MemoryReceiveChannel[Answer] | None]:
        """Submit a job, as the front door does; returns its id and its answers."""
        if not wait:
            async_job = JobSubmitted(kind=kind, model=body["model"], request=body)
            return (await self.scheduler.submit(async_job)).job_id, None
        submitted = JobSubmitted(kind=kind, model=body["model"], request=body, origin="sync")
        send, receive = trio.open_memory_channel[Answer](16)
        job_id = await self.scheduler.submit_waiting(submitted, json.dumps(body).encode(), send)
        self.waiting[id(receive)] = job_id
        return job_id, receive

    async def answer(self, output: trio.MemoryReceiveChannel[Answer] | None) -> list[Answer]:
        """The job's answers, once its end is in the log: its caller is let go first,
        and the end may wait a few milliseconds to share a commit (ADR-0050)."""
        assert output is not None
        job_id = self.waiting.pop(id(output))
        with trio.fail_after(10):
            answers = [message async for message in output]
        async with await self.journal.subscribe() as committed:
            if not JOB_ENDS.intersection(self.events(job_id)):  # not yet in the log
                await until(committed, recorded(job_id, *JOB_ENDS))
        return answers

    def start_worker(self, backend: str | None = None, **options: Any) -> None:
        worker = Worker(
            Backend(backend or self.simulator),
            self.journal,
            self.scheduler.clone(),
            max_attempts=options.pop("max_attempts", 3),
            **options,
        )
        self.nursery.start_soon(worker.run)

    def job(self, job_id: str) -> Job:
        log = EventLog.open(self.db_path, read_only=True)
        try:
            return JobsProjection().load(log.conn, [job_id])[job_id]
        finally:
            log.close()

    def events(self, job_id: str) -> list[str]:
        return event_types(self.db_path, job_id)

    async def sim(self, method: str, path: str, body: Any = None) -> Any:
        async with httpx.AsyncClient(base_url=self.simulator) as client:
            response = await client.request(method, path, json=body)
            response.raise_for_status()
            return response.json()


@pytest.fixture
async def rig(db_path: Path, nursery: trio.Nursery) -> AsyncIterator[Rig]:
    journal: JournalClient = await nursery.start(Journal(db_path).run)
    url: str = await nursery.start(serve_simulator, SimulatorConfig(listen="127.0.0.1:0"))
    scheduler = await nursery.start(Scheduler(journal, max_wait=60, max_queue=512).run)
    yield Rig(db_path, journal, scheduler, url, nursery)


def chat(model: str = "llama3", *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "why is the sky blue?"}]
    return {"model": model, "messages": messages, "stream": stream, **extra}


async def test_a_chat_job_runs_and_its_answer_reaches_the_caller(rig: Rig) -> None:
    rig.start_worker()
    job_id, output = await rig.submit(chat())
    (line,) = await rig.answer(output)
    assert isinstance(line, AnswerLine)
    response = json.loads(line.data)
    assert response["done"] is True
    assert response["message"]["content"]
    job = rig.job(job_id)
    assert (job.state, job.attempts) == ("succeeded", 1)
    assert rig.events(job_id) == ["JobSubmitted", "JobStarted", "JobSucceeded"]


async def test_a_call_back_to_back_shares_its_commit_with_the_last_calls_end(rig: Rig) -> None:
    """An answered caller is let go once its job's end is handed to the journal, where
    it waits for company (ADR-0050): the caller's next call commits it."""
    rig.start_worker()
    committed = await rig.journal.subscribe()
    ids = []
    for _ in range(2):  # as the front door calls, subscribing to nothing
        body = chat()
        send, answers = trio.open_memory_channel[Answer](16)
        submitted = JobSubmitted(kind="chat", model="llama3", request=body, origin="sync")
        ids.append(await rig.scheduler.submit_waiting(submitted, json.dumps(body).encode(), send))
        async with answers:
            assert [type(line) async for line in answers] == [AnswerLine]
    first, second = ids
    submission = await until(committed, recorded(second, "JobSubmitted"))
    log = EventLog.open(rig.db_path, read_only=True)
    try:
        (ended,) = [e for e in log.read_stream(first) if e.type == "JobSucceeded"]
    finally:
        log.close()
    assert ended.recorded_at == submission.recorded_at  # one commit
    assert ended.seq < submission.seq  # handed over first
    await until(committed, recorded(second, "JobSucceeded"))  # alone, 5 ms later


async def test_a_stream_is_relayed_line_by_line_and_stored_whole(rig: Rig) -> None:
    rig.start_worker()
    job_id, output = await rig.submit({"model": "llama3", "prompt": "hi"}, kind="generate")
    lines = await rig.answer(output)
    chunks = [json.loads(line.data) for line in lines if isinstance(line, AnswerLine)]
    assert len(chunks) > 2
    assert [chunk["done"] for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    log = EventLog.open(rig.db_path, read_only=True)
    result = log.read_stream(job_id)[-1].event.model_dump()["result"]
    assert result["response"] == "".join(chunk["response"] for chunk in chunks)


async def test_an_unknown_model_fails_at_once_with_the_backends_404(rig: Rig) -> None:
    rig.start_worker()
    job_id, output = await rig.submit(chat("no-such-model"))
    assert await rig.answer(output) == [AnswerError(404, "model 'no-such-model' not found")]
    job = rig.job(job_id)
    assert (job.state, job.attempts, job.error.status if job.error else None) == (
        "failed",
        1,
        404,
    )


async def test_a_backend_error_status_is_final_not_retried(rig: Rig) -> None:
    await rig.sim("POST", "/_sim/faults", {"kind": "status", "status": 500, "error": "oom"})
    rig.start_worker()
    job_id, output = await rig.submit(chat())
    assert await rig.answer(output) == [AnswerError(500, "oom")]
    assert rig.events(job_id) == ["JobSubmitted", "JobStarted", "JobFailed"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def signalling(event: trio.Event, seconds: float = 0.01) -> Callable[[int], float]:
    def backoff(_attempt: int) -> float:
        event.set()
        return seconds

    return backoff


async def test_jobs_are_retried_while_the_backend_is_down_then_run(rig: Rig) -> None:
    port = free_port()
    first_failure = trio.Event()
    rig.start_worker(f"http://127.0.0.1:{port}", backoff=signalling(first_failure, 0.2))
    job_id, output = await rig.submit(chat())
    await first_failure.wait()  # refused: nothing listens there yet
    config = SimulatorConfig(listen=f"127.0.0.1:{port}")
    await rig.nursery.start(serve_simulator, config)
    (line,) = await rig.answer(output)
    assert isinstance(line, AnswerLine)
    job = rig.job(job_id)
    assert job.state == "succeeded"
    assert job.attempts >= 2
    assert rig.events(job_id)[:5] == [
        "JobSubmitted",
        "JobStarted",
        "JobAttemptFailed",
        "JobRequeued",
        "JobStarted",
    ]


async def test_a_job_fails_once_every_attempt_found_the_backend_down(rig: Rig) -> None:
    rig.start_worker(f"http://127.0.0.1:{free_port()}", max_attempts=3, backoff=lambda _: 0)
    job_id, output = await rig.submit(chat())
    (failed,) = await rig.answer(output)
    assert isinstance(failed, AnswerError)
    assert failed.status == 503
    assert "unreachable 3 times" in failed.message
    assert rig.events(job_id) == ["JobSubmitted"] + [
        "JobStarted",
        "JobAttemptFailed",
        "JobRequeued",
    ] * 2 + ["JobStarted", "JobAttemptFailed", "JobFailed"]


async def test_a_caller_that_hangs_up_mid_stream_cancels_the_running_job(rig: Rig) -> None:
    await rig.sim("POST", "/_sim/faults", {"kind": "stall", "seconds": 30, "after_tokens": 1})
    rig.start_worker()
    job_id, output = await rig.submit(chat(stream=True))
    assert output is not None
    with trio.fail_after(10):
        first = await output.receive()
    assert isinstance(first, AnswerLine)
    # The backend stalls: the worker learns of the hang-up from the cancel, not a send.
    committed = await rig.journal.subscribe()
    await rig.scheduler.cancel(job_id, "client_disconnected")
    cancelled = await until(committed, recorded(job_id, "JobCancelled"))
    assert cancelled.event == JobCancelled(reason="client_disconnected")
    assert await rig.answer(output) == []  # the stream just ends


async def test_a_caller_that_stops_reading_cancels_the_job(rig: Rig) -> None:
    committed = await rig.journal.subscribe()
    rig.start_worker()
    job_id, output = await rig.submit({"model": "llama3", "prompt": "hi"}, kind="generate")
    assert output is not None
    await output.aclose()
    cancelled = await until(committed, recorded(job_id, "JobCancelled"))
    assert cancelled.event == JobCancelled(reason="client_disconnected")


async def test_a_cancelled_queued_job_never_runs(rig: Rig) -> None:
    job_id, output = await rig.submit(chat())
    await rig.scheduler.cancel(job_id, "client_disconnected")
    assert await rig.answer(output) == []
    _, other = await rig.submit(chat())
    rig.start_worker()
    await rig.answer(other)
    assert rig.events(job_id) == ["JobSubmitted", "JobCancelled"]
    assert len((await rig.sim("GET", "/_sim/stats"))["generations"]) == 1


async def test_queued_jobs_drain_by_model(rig: Rig) -> None:
    models = ["llama3", "qwen2", "llama3", "qwen2", "llama3", "qwen2"]
    submitted = [await rig.submit(chat(model)) for model in models]
    rig.start_worker()  # the queue is full before the worker asks
    for _, output in submitted:
        await rig.answer(output)
    stats = await rig.sim("GET", "/_sim/stats")
    run_order = [generation["model"] for generation in stats["generations"]]
    assert run_order == ["llama3:latest"] * 3 + ["qwen2:latest"] * 3
    assert stats["loads"] == 2


async def test_an_attempt_over_the_job_timeout_before_answering_is_retried(rig: Rig) -> None:
    await rig.sim("POST", "/_sim/faults", {"kind": "stall", "seconds": 5, "times": 1})
    rig.start_worker(job_timeout=0.3, backoff=lambda _: 0)
    job_id, output = await rig.submit(chat())
    (line,) = await rig.answer(output)
    assert isinstance(line, AnswerLine)
    assert rig.events(job_id) == [
        "JobSubmitted",
        "JobStarted",
        "JobAttemptFailed",
        "JobRequeued",
        "JobStarted",
        "JobSucceeded",
    ]


async def test_an_attempt_over_the_job_timeout_mid_answer_fails(rig: Rig) -> None:
    stall = {"kind": "stall", "seconds": 5, "after_tokens": 2, "times": 1}
    await rig.sim("POST", "/_sim/faults", stall)
    # Long enough for the first two tokens on a loaded machine: a timeout before any
    # answer is retried instead (and the retry, without the fault, succeeds).
    rig.start_worker(job_timeout=2)
    job_id, output = await rig.submit(chat(stream=True))
    messages = await rig.answer(output)
    assert isinstance(messages[-1], AnswerError)
    assert "job timeout" in messages[-1].message
    assert rig.events(job_id) == ["JobSubmitted", "JobStarted", "JobFailed"]


async def waiting_at_backend(rig: Rig, count: int) -> None:
    """Until ``count`` requests wait for the simulator's GPU."""
    with trio.fail_after(10):
        await rig.sim("GET", f"/_sim/stats?until_waiting={count}")


async def test_the_next_job_for_the_loaded_model_waits_at_the_backend(rig: Rig) -> None:
    await rig.sim("POST", "/_sim/faults", {"kind": "stall", "seconds": 30, "after_tokens": 1})
    rig.start_worker()
    running, running_output = await rig.submit(chat(stream=True))
    assert running_output is not None
    with trio.fail_after(10):
        await running_output.receive()  # it holds the GPU, stalled
    behind, behind_output = await rig.submit(chat())
    other_model, other_output = await rig.submit(chat("qwen2"))
    await waiting_at_backend(rig, 1)
    # Sent, but not started: it has not got the GPU. The other model waits in Foreman.
    assert rig.events(behind) == rig.events(other_model) == ["JobSubmitted"]
    await rig.scheduler.cancel(running, "client_disconnected")
    await rig.answer(behind_output)
    await rig.answer(other_output)
    assert rig.events(behind) == ["JobSubmitted", "JobStarted", "JobSucceeded"]
    stats = await rig.sim("GET", "/_sim/stats")
    assert [run["model"] for run in stats["generations"]] == ["llama3:latest", "qwen2:latest"]


async def test_a_job_cancelled_while_waiting_at_the_backend_never_starts(rig: Rig) -> None:
    await rig.sim("POST", "/_sim/faults", {"kind": "stall", "seconds": 30, "after_tokens": 1})
    rig.start_worker()
    running, running_output = await rig.submit(chat(stream=True))
    assert running_output is not None
    with trio.fail_after(10):
        await running_output.receive()
    behind, behind_output = await rig.submit(chat())
    await waiting_at_backend(rig, 1)
    await rig.scheduler.cancel(behind, "client_disconnected")
    assert await rig.answer(behind_output) == []
    await waiting_at_backend(rig, 0)  # the backend was told: its request is gone
    assert rig.events(behind) == ["JobSubmitted", "JobCancelled"]
    _, last_output = await rig.submit(chat())
    await rig.scheduler.cancel(running, "client_disconnected")
    await rig.answer(last_output)
    assert len((await rig.sim("GET", "/_sim/stats"))["generations"]) == 1  # only the last


async def test_the_job_timeout_counts_from_the_start_not_from_waiting_behind(rig: Rig) -> None:
    # Each job holds the GPU for 1 s; the second waits 1 s behind the first, then runs
    # 1 s: over the 1.5 s timeout counted from when it was sent, within it from its start.
    stall = {"kind": "stall", "seconds": 1.0, "after_tokens": 0, "times": 2}
    await rig.sim("POST", "/_sim/faults", stall)
    first, first_output = await rig.submit(chat())
    second, second_output = await rig.submit(chat())
    rig.start_worker(job_timeout=1.5)
    await rig.answer(first_output)
    await rig.answer(second_output)
    assert rig.events(first) == rig.events(second) == ["JobSubmitted", "JobStarted", "JobSucceeded"]


async def test_a_succeeded_job_names_the_outputs_its_response_makes_writing_none(
    rig: Rig,
) -> None:
    committed = await rig.journal.subscribe()
    rig.start_worker()
    job_id, output = await rig.submit(chat())
    await rig.answer(output)
    succeeded = await until(committed, recorded(job_id, "JobSucceeded"))
    event = succeeded.event
    assert isinstance(event, JobSucceeded)
    names = {ref.name: ref for ref in event.artifacts}
    assert set(names) == {"response.json", "content.txt"}
    response = output_bytes("chat", event.result, names["response.json"])
    assert json.loads(response) == event.result
    text = output_bytes("chat", event.result, names["content.txt"]).decode()
    assert text == event.result["message"]["content"]
    assert not rig.db_path.with_suffix(".artifacts").exists()  # made again when asked
