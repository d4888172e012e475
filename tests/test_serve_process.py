"""``foreman serve`` as a process: kill -9 it, or SIGTERM it, with jobs in flight.

The backend is ``foreman simulate``, a process of its own that outlives every
Foreman here. The tests read the event log read-only, as a second process may.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from foreman.artifacts import output_bytes
from foreman.events.jobs import JobsProjection
from foreman.events.log import EventLog
from foreman.events.types import (
    JobRequeued,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    RecordedEvent,
)
from tests.processes import (
    Process,
    foreman_command,
    running,
    start_foreman_process,
    start_simulator,
)

pytestmark = pytest.mark.slow  # Foreman and the simulator as processes, kill -9

TERMINAL = frozenset({"JobSucceeded", "JobFailed", "JobCancelled"})
SIMULATOR = ("--load-latency", "0.05", "--token-latency", "0.01", "--tokens", "8")
MODELS = ("llama3", "qwen2")
MAX_ATTEMPTS = 3  # Foreman's default
JOBS_PER_RUN = 16
KILLS = 3
ANSWERS_BEFORE_KILL = 3
STALL_SECONDS = 2.0
"""How long the job running at a kill is held by the backend: the kill comes first."""
SETTLE_SECONDS = 30.0
GRACE = 1.0

Streams = dict[str, list[RecordedEvent]]


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Process]:
    with running(start_simulator(tmp_path / "simulator.log", *SIMULATOR)) as process:
        yield process


def read_streams(db: Path) -> Streams:
    """Every job's events, in order, from one read-only snapshot of the log."""
    log = EventLog.open(db, read_only=True)
    try:
        with log.snapshot():
            streams: Streams = {}
            for event in log.read():
                streams.setdefault(event.stream, []).append(event)
            return streams
    finally:
        log.close()


def job_states(db: Path) -> dict[str, str]:
    log = EventLog.open(db, read_only=True)
    try:
        return {job.id: job.state for job in JobsProjection().load_all(log.conn).values()}
    finally:
        log.close()


def settle(db: Path, foreman: Process) -> Streams:
    """The log once every job in it has ended (within SETTLE_SECONDS)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        streams = read_streams(db)
        unfinished = [job for job, events in streams.items() if events[-1].type not in TERMINAL]
        if not unfinished:
            return streams
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(unfinished)} jobs unfinished after {SETTLE_SECONDS} s:\n{foreman.text()}"
            )
        time.sleep(0.05)


def arm_stall(simulator: Process, seconds: float) -> None:
    """The next chat request stalls after its first token, holding the GPU."""
    stall = {"kind": "stall", "seconds": seconds, "after_tokens": 1, "path": "/api/chat"}
    httpx.post(f"{simulator.url}/_sim/faults", json=stall).raise_for_status()


def wait_until_stalled(simulator: Process) -> None:
    """Until the armed stall has been taken by a request (the job holding the GPU)."""
    deadline = time.monotonic() + 10
    while httpx.get(f"{simulator.url}/_sim/faults").json()["faults"]:
        assert time.monotonic() < deadline, "no job took the stall"
        time.sleep(0.01)


def prompt_of(submitted: RecordedEvent) -> str:
    event = submitted.event
    assert isinstance(event, JobSubmitted)
    return str(event.request["messages"][0]["content"])


def chat(url: str, model: str, prompt: str) -> httpx.Response | httpx.TransportError:
    """A non-streaming chat; the transport error when Foreman dies under it."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": False}
    try:
        return httpx.post(f"{url}/api/chat", json=body, timeout=30)
    except httpx.TransportError as error:
        return error


@dataclass
class Kill:
    """What the log held right after a kill -9: each of those events was committed."""

    streams: Streams
    head: int

    def jobs_in(self, *types: str) -> list[str]:
        return [job for job, events in self.streams.items() if events[-1].type in types]


def submit_then_kill(
    foreman: Process, simulator: Process, db: Path, run: int
) -> tuple[Kill, dict[str, dict[str, Any]]]:
    """Submit JOBS_PER_RUN chats at once; once some are answered and one is running
    (held by a stall), kill -9 Foreman. Returns the log after the kill and the answers
    that came back, by prompt."""
    answers: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(JOBS_PER_RUN) as pool:
        calls: dict[Future[httpx.Response | httpx.TransportError], str] = {}
        for number in range(JOBS_PER_RUN):
            prompt = f"run {run} job {number}: why is the sky blue?"
            calls[pool.submit(chat, foreman.url, MODELS[number % 2], prompt)] = prompt
        answered = 0
        try:
            for call in as_completed(calls, timeout=SETTLE_SECONDS):
                response = call.result()
                assert isinstance(response, httpx.Response), f"{response!r}\n{foreman.text()}"
                answered += 1
                if answered == ANSWERS_BEFORE_KILL:
                    break
            arm_stall(simulator, STALL_SECONDS)
            wait_until_stalled(simulator)
        finally:
            foreman.kill()
        for call, prompt in calls.items():
            response = call.result()
            if isinstance(response, httpx.Response):
                assert response.status_code == 200, response.text
                answers[prompt] = response.json()
    streams = read_streams(db)
    head = max(event.seq for events in streams.values() for event in events)
    return Kill(streams, head), answers


def test_kill_9_with_jobs_queued_and_running_loses_none_and_ends_each_once(
    tmp_path: Path, simulator: Process
) -> None:
    db = tmp_path / "foreman.db"
    kills: list[Kill] = []
    answers: dict[str, dict[str, Any]] = {}
    for run in range(KILLS):
        foreman = start_foreman_process(tmp_path / f"foreman-{run}.log", simulator.url, db)
        with running(foreman):
            kill, answered = submit_then_kill(foreman, simulator, db, run)
        assert foreman.popen.returncode == -9
        kills.append(kill)
        answers |= answered
        assert kill.jobs_in("JobStarted"), "the stalled job was running at the kill"
        assert kill.jobs_in("JobSubmitted", "JobRequeued"), "some jobs were queued at the kill"
        assert len(answered) >= ANSWERS_BEFORE_KILL
        # An answer precedes its durable JobSucceeded (ADR-0025): a job answered just
        # before the kill may still be running in the log, and runs again.
        ended = {prompt_of(events[0]): events[-1].type for events in kill.streams.values()}
        assert {ended.get(prompt) for prompt in answered} <= {"JobSucceeded", "JobStarted"}

    with running(
        start_foreman_process(tmp_path / "foreman-last.log", simulator.url, db)
    ) as foreman:
        final = settle(db, foreman)
        assert foreman.terminate(timeout=10) == 0, foreman.text()

    # Each job ends exactly once, with its last event; none was submitted twice.
    prompts = [prompt_of(events[0]) for events in final.values()]
    assert len(prompts) == len(set(prompts))
    for job, events in final.items():
        types = [event.type for event in events]
        assert types[0] == "JobSubmitted", (job, types)
        assert sum(type_ in TERMINAL for type_ in types) == 1, (job, types)
        assert types[-1] == "JobSucceeded", (job, types)
        attempts = [event.event.attempt for event in events if isinstance(event.event, JobStarted)]
        assert attempts == list(range(1, len(attempts) + 1)), (job, attempts)

    # What a kill found committed is all still there, unchanged, and was carried on.
    for number, kill in enumerate(kills):
        for job, before in kill.streams.items():
            after = final[job]
            assert after[: len(before)] == before, f"kill {number}: job {job} changed"
        for job in kill.jobs_in("JobStarted"):
            interrupted = kill.streams[job][-1].event
            assert isinstance(interrupted, JobStarted)
            assert interrupted.attempt < MAX_ATTEMPTS
            requeued, restarted = final[job][len(kill.streams[job]) :][:2]
            assert requeued.seq > kill.head
            assert requeued.event == JobRequeued(reason="interrupted"), (number, job)
            assert restarted.event == JobStarted(
                attempt=interrupted.attempt + 1, backend=simulator.url.removeprefix("http://")
            )
        for job in kill.jobs_in("JobSubmitted", "JobRequeued"):
            (following, *_) = final[job][len(kill.streams[job]) :]
            assert following.type == "JobStarted"
            assert following.seq > kill.head, f"kill {number}: {job} ran in a later process"

    # Every answer a caller got is the result the log holds for its job.
    by_prompt = {prompt_of(events[0]): events[-1] for events in final.values()}
    assert len(answers) >= KILLS * ANSWERS_BEFORE_KILL
    for prompt, answer in answers.items():
        result = json.loads(by_prompt[prompt].data)["result"]
        assert answer["message"] == result["message"], prompt

    # No success, committed before a kill or after, names an output its response does
    # not make (ADR-0048).
    for events in final.values():
        succeeded = events[-1].event
        assert isinstance(succeeded, JobSucceeded)
        assert {ref.name for ref in succeeded.artifacts} == {"response.json", "content.txt"}
        for ref in succeeded.artifacts:
            assert len(output_bytes("chat", succeeded.result, ref)) == ref.size

    verified = foreman_command("events", "verify", "--db", str(db))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_sigterm_requeues_the_job_still_running_after_the_grace(
    tmp_path: Path, simulator: Process
) -> None:
    db = tmp_path / "foreman.db"
    arm_stall(simulator, 3 * GRACE)
    body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    foreman = start_foreman_process(
        tmp_path / "foreman-1.log", simulator.url, db, shutdown_grace=str(GRACE)
    )
    request = httpx.stream("POST", f"{foreman.url}/api/chat", json=body, timeout=30)
    with running(foreman), request as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept: a dropped iterator would close the stream
        next(lines)  # it runs, and the backend has stalled
        signalled = time.monotonic()
        status = foreman.terminate(timeout=10)
        stopped_after = time.monotonic() - signalled
    assert status == 0, foreman.text()
    assert GRACE <= stopped_after < GRACE + 2, foreman.text()
    ((job, stopped),) = read_streams(db).items()
    state = job_states(db)[job]

    with running(start_foreman_process(tmp_path / "foreman-2.log", simulator.url, db)) as foreman:
        events = settle(db, foreman)[job]
        assert foreman.terminate(timeout=10) == 0, foreman.text()
    assert [event.event for event in events[1:]] == [
        JobStarted(attempt=1, backend=simulator.url.removeprefix("http://")),
        JobRequeued(reason="interrupted"),
        JobStarted(attempt=2, backend=simulator.url.removeprefix("http://")),
        events[-1].event,
    ]
    assert events[-1].type == "JobSucceeded"

    # The first Foreman requeued the job itself before it exited.
    assert stopped == events[:3]
    assert state == "queued"


def test_sigterm_lets_the_running_job_finish_within_the_grace(tmp_path: Path) -> None:
    db = tmp_path / "foreman.db"
    # 40 tokens at 10 ms: the job runs for 0.4 s after its first line, within the grace.
    simulator = start_simulator(
        tmp_path / "simulator.log", "--token-latency", "0.01", "--tokens", "40"
    )
    body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with running(simulator):
        foreman = start_foreman_process(
            tmp_path / "foreman.log", simulator.url, db, shutdown_grace=str(GRACE)
        )
        with running(foreman), httpx.Client(base_url=foreman.url, timeout=30) as http:
            with http.stream("POST", "/api/chat", json=body) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                first = next(lines)  # it runs
                signalled = time.monotonic()
                foreman.popen.send_signal(signal.SIGTERM)
                rest = list(lines)
            status = foreman.popen.wait(timeout=10)
            stopped_after = time.monotonic() - signalled
    assert status == 0, foreman.text()
    assert stopped_after < GRACE, foreman.text()

    ((job, events),) = read_streams(db).items()
    assert [event.type for event in events] == ["JobSubmitted", "JobStarted", "JobSucceeded"]
    assert job_states(db) == {job: "succeeded"}
    # The caller got the whole answer, as the log holds it.
    chunks = [json.loads(line) for line in [first, *rest]]
    assert chunks[-1]["done"] is True
    content = "".join(chunk["message"]["content"] for chunk in chunks)
    assert content == json.loads(events[-1].data)["result"]["message"]["content"]
