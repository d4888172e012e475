"""The async job API over real HTTP: submit, poll, list, audit, cancel, fetch outputs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from ulid import ULID

from foreman.events.audit import verify
from foreman.events.store import open_log
from tests.disks import immutable
from tests.running import ENDS, Foreman, counted, recorded, start_foreman, until

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "why is the sky blue?"}]}


BAD_WEBHOOK_URLS = [
    "ftp://x",
    "/hooks",
    "http://a..b/hook",  # an empty label
    "http://xn--a.com/",  # not IDNA
    "http://hooks.example:99999/",
    "http://hooks example/",
    "https://user:secret@hooks.example/hook",  # credentials: shown back, sent as Basic auth
    "https://token@hooks.example/hook",
]


def chat_job(**extra: Any) -> dict[str, Any]:
    return {"kind": "chat", "request": CHAT} | extra


async def stall_backend(http: httpx.AsyncClient, seconds: float = 30) -> str:
    sim = str((await http.get("/healthz")).json()["backends"][0]["url"])
    await http.post(f"{sim}/_sim/faults", json={"kind": "stall", "seconds": seconds, "times": 1})
    return sim


async def test_submit_then_poll_until_the_result_and_its_outputs(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    committed = await foreman.running.journal.subscribe()
    submitted = await http.post("/jobs", json=chat_job(metadata={"ticket": 42}))
    assert submitted.status_code == 202
    accepted = submitted.json()
    job_id = accepted["job_id"]
    ULID.from_str(job_id)
    assert submitted.headers["location"] == f"/jobs/{job_id}" == accepted["location"]
    assert accepted["state"] == "queued"
    assert accepted["queue_position"] == 0

    assert (await until(committed, recorded(job_id, "JobSucceeded"))).type == "JobSucceeded"
    job = (await http.get(f"/jobs/{job_id}")).json()
    assert (job["id"], job["kind"], job["model"], job["state"]) == (
        job_id,
        "chat",
        "llama3",
        "succeeded",
    )
    assert (job["attempts"], job["priority"], job["error"], job["queue_position"]) == (
        1,
        0,
        None,
        None,
    )
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["metadata"] == {"ticket": 42}
    assert job["result"]["done"] is True
    content = job["result"]["message"]["content"]
    artifacts = {artifact["name"]: artifact for artifact in job["artifacts"]}
    assert set(artifacts) == {"response.json", "content.txt"}
    text = artifacts["content.txt"]
    assert (text["inline"], text["inline_encoding"]) == (content, "utf-8")
    assert text["sha256"] == hashlib.sha256(content.encode()).hexdigest()
    assert json.loads(artifacts["response.json"]["inline"]) == job["result"]

    raw = await http.get(text["url"])
    assert raw.status_code == 200
    assert raw.content == content.encode()
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.headers["content-length"] == str(len(content.encode()))
    assert raw.headers["etag"] == f'"{text["sha256"]}"'


async def test_artifacts_honour_if_none_match_and_ranges_and_refuse_other_names(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    committed = await foreman.running.journal.subscribe()
    job_id = (await http.post("/jobs", json=chat_job())).json()["job_id"]
    await until(committed, recorded(job_id, "JobSucceeded"))
    url = f"/jobs/{job_id}/artifacts/content.txt"
    whole = await http.get(url)
    assert whole.headers["x-content-type-options"] == "nosniff"  # a browser runs nothing
    assert whole.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert "content-disposition" not in whole.headers  # plain text: shown, not downloaded
    unchanged = await http.get(url, headers={"If-None-Match": whole.headers["etag"]})
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    part = await http.get(url, headers={"Range": "bytes=2-5"})
    assert (part.status_code, part.content) == (206, whole.content[2:6])
    assert part.headers["content-range"] == f"bytes 2-5/{len(whole.content)}"
    for name in ("missing.txt", "%2e%2e", ".content.txt", "content.txt%2F..%2F..%2Fetc"):
        refused = await http.get(f"/jobs/{job_id}/artifacts/{name}")
        assert refused.status_code == 404, name
        assert "error" in refused.json()


async def test_an_output_is_made_from_the_logged_response_when_it_is_asked(
    foreman: Foreman, http: httpx.AsyncClient, db_path: Path
) -> None:
    committed = await foreman.running.journal.subscribe()
    job_id = (await http.post("/jobs", json=chat_job())).json()["job_id"]
    await until(committed, recorded(job_id, "JobSucceeded"))
    outputs = db_path.with_suffix(".artifacts")
    assert not (outputs / job_id).exists()  # the job's end wrote nothing (ADR-0048)
    url = f"/jobs/{job_id}/artifacts/response.json"
    first = await http.get(url)
    (cached,) = (outputs / job_id).iterdir()
    assert f'"{cached.name}"' == first.headers["etag"]
    assert hashlib.sha256(first.content).hexdigest() == cached.name
    cached.unlink()  # a cache: made again
    again = await http.get(url)
    assert (again.status_code, again.content) == (200, first.content)
    cached.unlink()
    with immutable(outputs / job_id):  # a disk that takes nothing: served whole
        whole = await http.get(url, headers={"Range": "bytes=0-3"})
        assert (whole.status_code, whole.content) == (200, first.content)
        assert whole.headers["etag"] == first.headers["etag"]
    assert not (outputs / job_id / cached.name).exists()


async def test_an_output_over_the_inline_limit_is_only_linked(
    db_path: Path, nursery: trio.Nursery
) -> None:
    async for foreman in start_foreman(nursery, db_path, artifact_inline_max=16):
        committed = await foreman.running.journal.subscribe()
        async with httpx.AsyncClient(base_url=foreman.url) as http:
            job_id = (await http.post("/jobs", json=chat_job())).json()["job_id"]
            await until(committed, recorded(job_id, "JobSucceeded"))
            job = (await http.get(f"/jobs/{job_id}")).json()
        by_name = {artifact["name"]: artifact for artifact in job["artifacts"]}
        assert by_name["response.json"]["size"] > 16
        assert by_name["response.json"]["inline"] is None
        assert by_name["response.json"]["inline_encoding"] is None


async def test_the_same_idempotency_key_returns_the_job_it_made(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    key = {"Idempotency-Key": "order-7"}
    async with trio.open_nursery() as callers:
        answers: list[httpx.Response] = []

        async def submit() -> None:
            answers.append(await http.post("/jobs", json=chat_job(), headers=key))

        for _ in range(3):
            callers.start_soon(submit)
    assert sorted(answer.status_code for answer in answers) == [200, 200, 202]
    assert len({answer.json()["job_id"] for answer in answers}) == 1
    other = await http.post("/jobs", json=chat_job(priority=5), headers=key)
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["error"]
    assert len(foreman.job_events()) == 1


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (json.dumps({"kind": "translate", "request": CHAT}).encode(), 422, "kind"),
        (json.dumps({"kind": "chat", "request": {"messages": []}}).encode(), 422, "request.model"),
        (json.dumps({"kind": "chat", "request": "llama3"}).encode(), 422, "request"),
        (json.dumps({"kind": "chat"}).encode(), 422, "request"),
        *[
            (json.dumps(chat_job(state_webhook_url=url)).encode(), 422, "state_webhook_url")
            for url in BAD_WEBHOOK_URLS
        ],
        (json.dumps(chat_job(priority="high")).encode(), 422, "priority"),
        (json.dumps(chat_job(colour="blue")).encode(), 422, "colour"),
    ],
)
async def test_invalid_submissions_are_refused_and_never_reach_the_log(
    foreman: Foreman, http: httpx.AsyncClient, body: bytes, status: int, field: str | None
) -> None:
    answer = await http.post("/jobs", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status
    error = answer.json()
    assert error["error"]
    if field is not None:
        assert field in {problem["field"] for problem in error["detail"]}
    assert foreman.job_events() == {}


async def chunked(body: bytes) -> AsyncIterator[bytes]:
    """A body sent without a Content-Length: the server counts it as it comes."""
    for start in range(0, len(body), 256):
        yield body[start : start + 256]


async def test_a_body_over_the_limit_gets_413(db_path: Path, nursery: trio.Nursery) -> None:
    async for foreman in start_foreman(nursery, db_path, max_body=1024):
        async with httpx.AsyncClient(base_url=foreman.url) as http:
            big = json.dumps(chat_job(metadata={"padding": "x" * 2048})).encode()
            declared = await http.post("/jobs", content=big)

            streamed = await http.post("/jobs", content=chunked(big))
        for answer in (declared, streamed):
            assert answer.status_code == 413
            assert "FOREMAN_MAX_BODY" in answer.json()["error"]
        assert foreman.job_events() == {}


@pytest.mark.parametrize("job_id", ["01M8HPJWTD8T1HVAQCC41FMVPN", "nope", "'; drop table jobs"])
async def test_an_unknown_or_malformed_id_is_404_json(http: httpx.AsyncClient, job_id: str) -> None:
    for method in ("GET", "DELETE"):
        answer = await http.request(method, f"/jobs/{job_id}")
        assert answer.status_code == 404
        assert "no job" in answer.json()["error"]


async def test_list_pages_newest_first_and_filters(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    committed = await foreman.running.journal.subscribe()
    ids = []
    for n in range(5):
        kind, request = (
            ("embed", {"model": "nomic-embed-text", "input": "hi"}) if n == 2 else ("chat", CHAT)
        )
        ids.append(
            (await http.post("/jobs", json={"kind": kind, "request": request})).json()["job_id"]
        )
    ended = counted(len(ids), lambda event: event.stream in ids and event.type in ENDS)
    await until(committed, ended)  # each job ends once
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await http.get("/jobs", params=params)).json()
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    embeds = (await http.get("/jobs", params={"kind": "embed"})).json()["jobs"]
    assert [job["id"] for job in embeds] == [ids[2]]
    chats = (await http.get("/jobs", params={"model": "llama3", "state": "succeeded"})).json()
    assert {job["id"] for job in chats["jobs"]} == set(ids) - {ids[2]}
    assert (await http.get("/jobs", params={"state": "sleeping"})).status_code == 422


async def test_an_embed_job_stores_its_embeddings(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    committed = await foreman.running.journal.subscribe()
    body = {"kind": "embed", "request": {"model": "nomic-embed-text", "input": ["a", "b"]}}
    job_id = (await http.post("/jobs", json=body)).json()["job_id"]
    await until(committed, recorded(job_id, "JobSucceeded"))
    job = (await http.get(f"/jobs/{job_id}")).json()
    (artifact,) = job["artifacts"]
    assert artifact["name"] == "embeddings.json"
    assert len(json.loads(artifact["inline"])["embeddings"]) == 2


async def test_the_events_endpoint_is_the_jobs_history(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    committed = await foreman.running.journal.subscribe()
    job_id = (await http.post("/jobs", json=chat_job())).json()["job_id"]
    await until(committed, recorded(job_id, "JobSucceeded"))
    events = (await http.get(f"/jobs/{job_id}/events")).json()["events"]
    assert [event["type"] for event in events] == ["JobSubmitted", "JobStarted", "JobSucceeded"]
    assert events[0]["data"]["request"] == CHAT | {"stream": False}  # async jobs never stream
    assert [event["seq"] for event in events] == sorted(event["seq"] for event in events)


async def test_cancel_a_queued_job_a_running_job_and_not_a_finished_one(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    committed = await foreman.running.journal.subscribe()
    await stall_backend(http)
    running = (await http.post("/jobs", json=chat_job())).json()["job_id"]
    await until(committed, recorded(running, "JobStarted"))
    other = {"kind": "chat", "request": CHAT | {"model": "qwen2"}}
    queued = (await http.post("/jobs", json=other)).json()["job_id"]
    assert (await http.get(f"/jobs/{queued}")).json()["queue_position"] == 1

    cancelled = await http.delete(f"/jobs/{queued}")
    assert (cancelled.status_code, cancelled.json()["state"]) == (200, "cancelled")
    stopping = await http.delete(f"/jobs/{running}")
    assert stopping.status_code == 202
    assert (await until(committed, recorded(running, "JobCancelled"))).type == "JobCancelled"
    assert (await http.get(f"/jobs/{running}")).json()["state"] == "cancelled"
    again = await http.delete(f"/jobs/{running}")
    assert again.status_code == 409
    assert "already cancelled" in again.json()["error"]
    assert foreman.job_events()[queued] == ["JobSubmitted", "JobCancelled"]


async def test_a_higher_priority_job_runs_first(foreman: Foreman, http: httpx.AsyncClient) -> None:
    committed = await foreman.running.journal.subscribe()
    sim = await stall_backend(http, seconds=1)
    holder = (await http.post("/jobs", json=chat_job())).json()["job_id"]
    await until(committed, recorded(holder, "JobStarted"))
    other = CHAT | {"model": "qwen2"}
    low = (await http.post("/jobs", json={"kind": "chat", "request": other})).json()["job_id"]
    high = (await http.post("/jobs", json=chat_job(priority=5))).json()["job_id"]
    assert (await http.get(f"/jobs/{high}")).json()["queue_position"] < (
        await http.get(f"/jobs/{low}")
    ).json()["queue_position"]
    await until(committed, recorded(low, "JobSucceeded"))
    runs = (await http.get(f"{sim}/_sim/stats")).json()["generations"]
    assert [run["model"] for run in runs] == ["llama3:latest", "llama3:latest", "qwen2:latest"]
    assert foreman.job_events()[high][-1] == "JobSucceeded"


async def test_sync_jobs_appear_in_the_job_api(foreman: Foreman, http: httpx.AsyncClient) -> None:
    committed = await foreman.running.journal.subscribe()
    answer = await http.post("/api/chat", json=CHAT | {"stream": False})
    assert answer.status_code == 200
    (job_id,) = foreman.job_events()
    await until(committed, recorded(job_id, "JobSucceeded"))
    job = (await http.get(f"/jobs/{job_id}")).json()
    assert job["result"]["message"] == answer.json()["message"]


async def test_a_pruned_job_is_gone_but_its_history_stays_and_verifies(
    db_path: Path, nursery: trio.Nursery
) -> None:
    async for foreman in start_foreman(nursery, db_path, job_ttl=0.001, janitor_interval=0.05):
        committed = await foreman.running.journal.subscribe()
        async with httpx.AsyncClient(base_url=foreman.url) as http:
            job_id = (await http.post("/jobs", json=chat_job())).json()["job_id"]
            await until(committed, recorded(job_id, "JobPruned"))
            gone = await http.get(f"/jobs/{job_id}")
            assert gone.status_code == 410
            assert "pruned" in gone.json()["error"]
            history = (await http.get(f"/jobs/{job_id}/events")).json()["events"]
            assert history[-1]["type"] == "JobPruned"
            artifact = await http.get(f"/jobs/{job_id}/artifacts/content.txt")
            assert artifact.status_code == 410
        log = open_log(db_path, read_only=True)
        try:
            assert verify(log) == []
        finally:
            log.close()


async def test_openapi_describes_the_job_api_and_docs_need_no_internet(
    http: httpx.AsyncClient,
) -> None:
    schema = (await http.get("/openapi.json")).json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events"} <= set(schema["paths"])
    assert "/jobs/{job_id}/artifacts/{name}" in schema["paths"]
    submit = schema["paths"]["/jobs"]["post"]
    assert set(submit["responses"]) >= {"202", "200", "400", "409", "413", "422", "503"}
    assert "SubmitJob" in schema["components"]["schemas"]
    page = (await http.get("/docs")).text
    assets = [part.split('"')[1] for part in page.split("=")[1:] if part.startswith('"/')]
    assert assets and all(not asset.startswith("http") for asset in assets)
    assert "https://" not in page.replace("https://fastapi.tiangolo.com", "")
    for asset in assets:
        if asset.endswith((".js", ".css")):
            assert (await http.get(asset)).status_code == 200, asset


async def test_a_job_for_a_model_no_backend_has_is_404_and_never_reaches_the_log(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    body = {"kind": "chat", "request": {"model": "no-such-model", "messages": []}}
    answer = await http.post("/jobs", json=body)
    assert answer.status_code == 404
    assert answer.json()["error"] == "no backend has the model 'no-such-model:latest'"
    assert foreman.job_events() == {}
