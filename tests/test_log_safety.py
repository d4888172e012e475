"""The log only ever holds what it can read back, and a log that holds an unreadable
event still starts: the job is quarantined (ADR-0032)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from foreman.actors.journal import Journal
from foreman.events.audit import verify
from foreman.events.chain import chain_hash
from foreman.events.log import Append, Durability, EventLog, UnstorableEvent
from foreman.events.replay import rebuild
from foreman.events.store import open_log
from foreman.events.types import (
    JobSubmitted,
    decode,
    encode,
)
from foreman.events.values import MAX_DEPTH, MAX_METADATA_BYTES
from foreman.ids import new_ulid
from tests.processes import foreman_command
from tests.receiver import RECEIVER_HOST, Receiver, serving
from tests.running import Foreman, event_types, recorded, start_foreman, until

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def nested(levels: int) -> Any:
    """A value of ``levels`` arrays inside one another."""
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


def submitted(**request: Any) -> JobSubmitted:
    return JobSubmitted(kind="chat", model="llama3", request=CHAT | request, origin="sync")


# -- the limits, in the event type -------------------------------------------------


def test_nesting_up_to_the_limit_reads_back() -> None:
    event = submitted(tools=nested(MAX_DEPTH - 1))  # the request object is one level
    assert decode("JobSubmitted", 1, encode(event)) == event


@pytest.mark.parametrize("levels", [MAX_DEPTH, 220, 256, 2000])
def test_deeper_nesting_is_refused_naming_the_field(levels: int) -> None:
    with pytest.raises(ValidationError, match=r"request\n.*tools\[0\].*nested deeper than"):
        submitted(tools=nested(levels))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("\ud800", "lone surrogate"),
        ({"k\udfff": 1}, "lone surrogate"),
        (2**64, "outside 64 bits"),
        (-(2**63) - 1, "outside 64 bits"),
        (10**5000, "of about 5001 digits"),
        (float("nan"), "not a JSON number"),
        (float("inf"), "not a JSON number"),
    ],
    ids=["surrogate", "surrogate-key", "2**64", "-2**63-1", "5001-digits", "nan", "inf"],
)
def test_values_json_cannot_carry_are_refused(value: Any, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        submitted(options={"seed": value})
    with pytest.raises(ValidationError, match=problem):
        JobSubmitted(kind="chat", model="m", request=CHAT, origin="async", metadata={"x": value})


def test_an_event_an_older_build_stored_beyond_the_limits_still_reads_back() -> None:
    """The limits admit values; they do not refuse what the log already holds and can
    read (nesting 150 decodes; only the parser's own limit, near 200, cannot)."""
    event = decode("JobSubmitted", 1, deep_submission(150))
    assert isinstance(event, JobSubmitted)
    with pytest.raises(ValidationError, match="nested deeper than"):
        JobSubmitted.model_validate(event.model_dump())


def test_a_lone_surrogate_in_the_model_name_is_refused() -> None:
    with pytest.raises(ValidationError, match="lone surrogate"):
        JobSubmitted(kind="chat", model="llama\ud800", request=CHAT, origin="sync")


def test_metadata_is_bounded() -> None:
    big = {"notes": "x" * MAX_METADATA_BYTES}
    with pytest.raises(ValidationError, match="at most 65,536 are kept"):
        JobSubmitted(kind="chat", model="m", request=CHAT, origin="async", metadata=big)


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(st.characters(codec=None)),
    st.sampled_from(["\ud800", "a\udc00b", "\U0001f600", "\x00"]),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(codec=None), max_size=5), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON_VALUES, depth=st.integers(0, 300))
def test_whatever_an_event_accepts_reads_back_as_it_was(value: Any, depth: int) -> None:
    """The property behind the door: an event either refuses a value when it is made,
    or the log's encoding of it decodes to the same event."""
    try:
        event = JobSubmitted(
            kind="chat",
            model="m",
            request={"model": "m", "x": value, "deep": nested(depth)},
            origin="async",
            metadata={"value": value},
        )
    except ValidationError:
        return
    assert decode("JobSubmitted", 1, encode(event)) == event


# -- the log and the journal: one bad append fails alone ----------------------------


def unstorable() -> JobSubmitted:
    """An event as no validated code can make it: it bypasses the type's checks."""
    return JobSubmitted.model_construct(
        kind="chat", model="m", request={"x": "\ud800"}, origin="sync", priority=0
    )


def test_an_event_that_cannot_be_encoded_fails_its_append_alone(log: EventLog) -> None:
    good, bad, also_good = new_ulid(), new_ulid(), new_ulid()
    results = log.append_many(
        [
            Append(good, [submitted()], 0),
            Append(bad, [unstorable()], 0),
            Append(also_good, [submitted()], 0),
        ]
    )
    assert isinstance(results[1], UnstorableEvent)
    assert [event.stream for event in log.read()] == [good, also_good]
    assert verify(log) == []


async def test_the_journal_outlives_an_event_it_cannot_store(db_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        journal = await nursery.start(Journal(db_path, durability=Durability.OFF).run)
        with pytest.raises(UnstorableEvent, match="surrogate"):
            await journal.append(new_ulid(), [unstorable()], expected_version=0)
        (event,) = await journal.append(new_ulid(), [submitted()], expected_version=0)
        assert event.seq == 1
        await journal.aclose()


# -- the front door refuses what the log could not hold -----------------------------


def raw_json(value: Any) -> bytes:
    """JSON as a hostile client writes it: surrogates escaped, no depth limit."""
    text = json.dumps(value)  # ensure_ascii: "\ud800" stays an escape
    return text.encode()


def deep_json(levels: int, inner: str = "1") -> str:
    return "[" * levels + inner + "]" * levels


HOSTILE_OLLAMA_BODIES = [
    ("/api/chat", raw_json(CHAT | {"messages": [{"role": "user", "content": nested(256)}]})),
    ("/api/chat", raw_json(CHAT | {"messages": [{"role": "user", "content": nested(220)}]})),
    ("/api/chat", raw_json(CHAT | {"messages": [{"role": "user", "content": "\ud800"}]})),
    ("/api/chat", raw_json(CHAT | {"model": "llama3\ud800"})),
    ("/api/generate", raw_json({"model": "llama3", "prompt": "\ud800", "stream": False})),
    ("/api/generate", raw_json({"model": "llama3", "prompt": "x", "options": nested(230)})),
    ("/api/chat", f'{{"model": "llama3", "options": {{"seed": {"9" * 5000}}}}}'.encode()),
    ("/api/chat", f'{{"model": "llama3", "messages": {deep_json(1000)}}}'.encode()),
    ("/api/generate", b'{"model": "llama3", "prompt": "x", "options": {"temperature": NaN}}'),
]


@pytest.mark.parametrize(("path", "body"), HOSTILE_OLLAMA_BODIES)
async def test_the_ollama_routes_refuse_what_the_log_cannot_hold(
    foreman: Foreman, http: httpx.AsyncClient, path: str, body: bytes
) -> None:
    answer = await http.post(path, content=body)
    assert answer.status_code == 400, answer.text
    assert set(answer.json()) == {"error"}
    assert (await http.get("/healthz")).status_code == 200
    assert foreman.job_events() == {}  # nothing reached the log


HOSTILE_JOBS = [
    ({"request": CHAT | {"messages": [{"role": "user", "content": nested(256)}]}}, "request"),
    ({"request": CHAT | {"messages": [{"role": "user", "content": nested(210)}]}}, "request"),
    ({"request": CHAT | {"messages": [{"role": "user", "content": "\ud800"}]}}, "request"),
    ({"request": CHAT | {"model": "\udfffllama"}}, "request"),
    ({"request": CHAT, "metadata": {"deep": nested(240)}}, "metadata"),
    ({"request": CHAT, "metadata": {"who": "\ud800"}}, "metadata"),
    ({"request": CHAT, "metadata": {"big": 2**70}}, "metadata"),
]


@pytest.mark.parametrize(
    "body",
    [
        '{"kind": "chat", "request": {"model": "m", "x": %s}}' % ("[" * 1000 + "]" * 1000),
        '{"kind": "chat", "request": {"model": "m", "x": %s}}' % ("9" * 5000),
    ],
    ids=["1000-levels", "5000-digits"],
)
async def test_post_jobs_refuses_json_python_cannot_read_saying_why(
    http: httpx.AsyncClient, body: str
) -> None:
    answer = await http.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert "nested too deeply, or an integer of thousands of digits" in answer.json()["error"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/embed", raw_json({"model": "nomic-embed-text", "input": "\ud800"})),
        ("/api/embeddings", raw_json({"model": "nomic-embed-text", "prompt": nested(300)})),
        ("/api/show", raw_json({"model": "llama3", "x": 2**64})),
        ("/api/embed", b'{"model": "nomic-embed-text", "input": [NaN]}'),
    ],
)
async def test_pass_through_bodies_are_held_to_the_same_limits(
    http: httpx.AsyncClient, path: str, body: bytes
) -> None:
    answer = await http.post(path, content=body)
    assert answer.status_code == 400, answer.text
    assert set(answer.json()) == {"error"}


async def test_a_backend_error_that_is_not_json_is_answered_as_json(
    http: httpx.AsyncClient,
) -> None:
    sim = str((await http.get("/healthz")).json()["backends"][0]["url"])
    fault = {"kind": "answer", "status": 500, "body": "Internal Server Error"}
    await http.post(f"{sim}/_sim/faults", json=fault | {"content_type": "text/plain"})
    answer = await http.get("/api/tags")
    assert answer.status_code == 500
    assert answer.json() == {"error": "the backend answered 500: Internal Server Error"}


@pytest.mark.parametrize(("job", "field"), HOSTILE_JOBS)
async def test_post_jobs_refuses_what_the_log_cannot_hold_naming_the_field(
    foreman: Foreman, http: httpx.AsyncClient, job: dict[str, Any], field: str
) -> None:
    body = raw_json({"kind": "chat"} | job)
    answer = await http.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert [problem["field"] for problem in answer.json()["detail"]] == [field]
    assert (await http.get("/healthz")).status_code == 200
    assert foreman.job_events() == {}


async def test_after_hostile_bodies_the_log_verifies_and_replays(
    foreman: Foreman, http: httpx.AsyncClient, db_path: Path
) -> None:
    for path, body in HOSTILE_OLLAMA_BODIES:
        await http.post(path, content=body)
    ok = await http.post("/api/chat", json=CHAT)
    assert ok.status_code == 200
    log = open_log(db_path, read_only=True)
    try:
        assert verify(log) == []
    finally:
        log.close()


_UNSTORABLE = "the backend's answer cannot be stored"
_NOT_AN_OBJECT = "the backend answered a line that is not"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (
            json.dumps(
                {"model": "llama3", "done": True, "message": {"role": "assistant", "content": "hi"}}
                | {"context": nested(150)}
            ),
            _UNSTORABLE,
        ),
        (
            json.dumps(
                {
                    "model": "llama3",
                    "done": True,
                    "message": {"role": "assistant", "content": "\ud800"},
                }
            ),
            _UNSTORABLE,
        ),
        ("not JSON at all", _NOT_AN_OBJECT),
        ("[1, 2]", _NOT_AN_OBJECT),
    ],
    ids=["deep", "surrogate", "text", "array"],
)
async def test_a_backend_answer_the_log_cannot_hold_fails_the_job_not_foreman(
    foreman: Foreman, http: httpx.AsyncClient, body: str, why: str
) -> None:
    sim = str((await http.get("/healthz")).json()["backends"][0]["url"])
    fault = {"kind": "answer", "body": body, "path": "/api/chat"}
    (await http.post(f"{sim}/_sim/faults", json=fault)).raise_for_status()
    committed = await foreman.running.journal.subscribe()
    accepted = (await http.post("/jobs", json={"kind": "chat", "request": CHAT})).json()
    failed = await until(committed, recorded(accepted["job_id"], "JobSucceeded", "JobFailed"))
    assert failed.type == "JobFailed"
    assert why in failed.data
    assert (await http.post("/api/chat", json=CHAT)).status_code == 200  # the worker goes on


# -- a log that already holds an unreadable event still starts ----------------------


def plant(db_path: Path, stream: str, version: int, type_: str, data: str) -> int:
    """Append a row straight into SQLite, chained correctly: only its data is bad.
    Returns its seq."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        seq, head, recorded_at = conn.execute(
            "SELECT seq, hash, recorded_at FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        row = (seq + 1, new_ulid(), stream, version, type_, 1, data, recorded_at)
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, chain_hash(head, *row))
        )
    finally:
        conn.close()
    return seq + 1


def deep_submission(levels: int) -> str:
    """A ``JobSubmitted`` as an older Foreman let through: nested too deep to decode."""
    request = {"model": "llama3", "messages": [{"role": "user", "content": nested(levels)}]}
    data = {"kind": "chat", "model": "llama3", "request": request, "origin": "sync"}
    return json.dumps(data)


@pytest.fixture
def planted(db_path: Path) -> dict[str, Any]:
    """A log with a good job, a job whose submission cannot be decoded, one with garbage
    for data, and a running job whose JobStarted cannot be decoded."""
    log = open_log(db_path, durability=Durability.OFF)
    good, deep, garbage, running = new_ulid(), new_ulid(), new_ulid(), new_ulid()
    try:
        log.append(good, [submitted()], 0)
        log.append(running, [submitted()], 0)
    finally:
        log.close()
    seqs = {
        deep: plant(db_path, deep, 1, "JobSubmitted", deep_submission(230)),
        garbage: plant(db_path, garbage, 1, "JobSubmitted", "not json at all"),
        running: plant(db_path, running, 2, "JobStarted", '{"attempt": "one", "backend": 5}'),
    }
    return {"good": good, "unreadable": seqs}


async def test_a_log_with_unreadable_events_starts_and_quarantines_their_jobs(
    db_path: Path, planted: dict[str, Any], nursery: trio.Nursery
) -> None:
    async for foreman in start_foreman(nursery, db_path):
        committed = await foreman.running.journal.subscribe()
        async with httpx.AsyncClient(base_url=foreman.url, timeout=10) as http:
            good = (await http.get(f"/jobs/{planted['good']}")).json()
            if good["state"] != "succeeded":  # the queue goes on past the quarantined jobs
                await until(committed, recorded(planted["good"], "JobSucceeded"))
            for job_id, seq in planted["unreadable"].items():
                job = (await http.get(f"/jobs/{job_id}")).json()
                assert job["state"] == "failed"
                assert job["error"]["message"].startswith(f"quarantined: event {seq} ")
                assert event_types(db_path, job_id)[-1] == "JobQuarantined"
                events = (await http.get(f"/jobs/{job_id}/events")).json()["events"]
                assert events[-1]["data"]["event_seq"] == seq
            assert (await http.post("/api/chat", json=CHAT)).status_code == 200
    log = open_log(db_path, read_only=True)
    try:
        found = {problem.seq for problem in verify(log)}
    finally:
        log.close()
    assert found == set(planted["unreadable"].values())


async def test_a_quarantined_jobs_webhook_receiver_is_told_it_failed(
    db_path: Path, nursery: trio.Nursery
) -> None:
    async with serving(Receiver()) as receiver:
        job = new_ulid()
        log = open_log(db_path, durability=Durability.OFF)
        try:
            hooked = JobSubmitted(
                kind="chat",
                model="llama3",
                request=CHAT,
                origin="async",
                state_webhook_url=receiver.url,
            )
            log.append(job, [hooked], 0)
        finally:
            log.close()
        seq = plant(db_path, job, 2, "JobStarted", '{"attempt": 0}')
        async for _ in start_foreman(nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST):
            queued, failed = [request.payload for request in await receiver.until(2)]
        assert (queued["type"], failed["type"]) == ("job.queued", "job.failed")
        assert failed["job"]["state"] == "failed"
        assert failed["job"]["error"]["message"].startswith(f"quarantined: event {seq} ")


def test_replay_rebuilds_a_log_with_unreadable_events_and_names_them(
    db_path: Path, planted: dict[str, Any]
) -> None:
    log = open_log(db_path, durability=Durability.OFF)
    try:
        for projection in log.projections:
            rebuild(log, projection)
        jobs = log.conn.execute("SELECT id, unreadable FROM jobs WHERE unreadable IS NOT NULL")
        assert dict(jobs.fetchall()) == planted["unreadable"]
    finally:
        log.close()


@pytest.mark.slow
def test_the_replay_and_verify_commands_report_unreadable_events_by_seq(
    db_path: Path, planted: dict[str, Any]
) -> None:
    seqs = sorted(planted["unreadable"].values())
    replayed = foreman_command("events", "replay", "--db", str(db_path))
    assert replayed.returncode == 0, replayed.stderr
    assert f"3 jobs quarantined: events {', '.join(map(str, seqs))} cannot be read back" in (
        replayed.stdout
    )
    verified = foreman_command("events", "verify", "--db", str(db_path), "--json")
    assert verified.returncode == 1
    report = json.loads(verified.stdout)
    assert report["first_bad_seq"] == seqs[0]
    assert {problem["seq"] for problem in report["problems"]} == set(seqs)
