"""The dashboard's data over real HTTP: ``GET /summary``, the ``GET /events`` stream, and
the page's assets; a tenant's key sees only its own jobs through them."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from click.testing import CliRunner

from foreman.cli import main
from tests.running import Foreman, recorded, start_foreman, until
from tests.test_tenants import Team, team

__all__ = ["team"]  # the fixture, shared with test_tenants

CHAT = {
    "kind": "chat",
    "request": {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]},
}


async def frames(stream: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Each event the stream sends, decoded."""
    async for line in stream.aiter_lines():
        if line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))


async def test_the_summary_shows_the_queue_the_hosts_and_the_hour(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    committed = await foreman.running.journal.subscribe()
    sim = (await http.get("/healthz")).json()["backends"][0]["url"]
    await http.post(f"{sim}/_sim/faults", json={"kind": "stall", "seconds": 30, "times": 1})
    stalled = (await http.post("/jobs", json=CHAT)).json()["job_id"]
    await until(committed, recorded(stalled, "JobStarted"))
    summary = (await http.get("/summary")).json()
    assert {"model": "llama3", "priority": 0, "tenant": None, "queued": 0, "running": 1} in [
        {**row, "priority": 0} for row in summary["queue"]
    ]
    (host,) = summary["backends"]
    assert host["loaded"] == "llama3:latest" and host["running"] == 1
    assert [job["id"] for job in host["jobs"]] == [stalled]
    assert (await http.delete(f"/jobs/{stalled}")).status_code in (200, 202)
    done = (await http.post("/jobs", json=CHAT)).json()["job_id"]
    await until(committed, recorded(done, "JobSucceeded"))
    hour = (await http.get("/summary")).json()["hour"]
    assert len(hour["finished"]) == len(hour["busy"]) == len(hour["swaps"]) == 60
    assert sum(hour["finished"]) == 2 and sum(hour["busy"]) > 0


async def test_the_stream_sends_each_event_as_it_commits(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    async with http.stream("GET", "/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        job = (await http.post("/jobs", json=CHAT)).json()["job_id"]
        seen: list[str] = []
        with trio.fail_after(10):
            async for event in frames(stream):
                if event["stream"] == job:
                    seen.append(event["type"])
                    assert event["summary"] and event["seq"] > 0 and event["recorded_at"]
                if "JobSucceeded" in seen:
                    break
    assert seen == ["JobSubmitted", "JobStarted", "JobSucceeded"]


async def test_a_client_that_does_not_read_is_let_go_and_holds_no_commit_up(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    committed = await foreman.running.journal.subscribe(buffer=4096)
    small_window = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
    transport = httpx.AsyncHTTPTransport(socket_options=small_window)
    jobs: set[str] = set()

    async def submit(count: int) -> None:
        for _ in range(count):
            jobs.add((await http.post("/jobs", json=CHAT)).json()["job_id"])

    async with (
        httpx.AsyncClient(base_url=foreman.url, transport=transport, timeout=30) as slow,
        slow.stream("GET", "/events") as stream,  # not read while the jobs run
    ):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(submit, 50)
        waiting = set(jobs)
        with trio.fail_after(30):
            async for events in committed:
                waiting -= {event.stream for event in events if event.type == "JobSucceeded"}
                if not waiting:
                    break
        read = 0
        with trio.fail_after(10), pytest.raises(httpx.RemoteProtocolError):
            async for chunk in stream.aiter_bytes():  # what was in flight, then the end
                read += chunk.count(b"data: ")
    assert read < 3 * len(jobs)  # let go before the end: 1,024 events behind


async def test_a_tenant_sees_only_its_own_jobs_in_the_summary_and_the_stream(
    team: Team,
) -> None:
    committed = await team.foreman.running.journal.subscribe()
    async with (
        team.http(team.alpha) as alpha,
        team.http(team.beta) as beta,
        team.http(team.admin) as admin,
        beta.stream("GET", "/events") as betas,
        admin.stream("GET", "/events") as admins,
    ):
        sim = (await admin.get("/healthz")).json()["backends"][0]["url"]
        await admin.post(f"{sim}/_sim/faults", json={"kind": "stall", "seconds": 30, "times": 1})
        alphas = (await alpha.post("/jobs", json=CHAT)).json()["job_id"]
        await until(committed, recorded(alphas, "JobStarted"))
        seen_by_beta = (await beta.get("/summary")).json()
        assert seen_by_beta["queue"] == [] and seen_by_beta["backends"][0]["jobs"] == []
        assert seen_by_beta["backends"][0]["running"] == 1  # the host's load is the fleet's
        seen_by_alpha = (await alpha.get("/summary")).json()
        assert [job["id"] for job in seen_by_alpha["backends"][0]["jobs"]] == [alphas]
        assert (await admin.get("/summary")).json()["queue"][0]["tenant"] == "alpha"
        await alpha.delete(f"/jobs/{alphas}")
        betas_job = (await beta.post("/jobs", json=CHAT)).json()["job_id"]
        with trio.fail_after(10):
            async for event in frames(admins):
                if event["stream"] == betas_job and event["type"] == "JobSucceeded":
                    break
        with trio.fail_after(10):
            async for event in frames(betas):
                assert event["stream"] == betas_job, event  # nothing of alpha's
                if event["type"] == "JobSucceeded":
                    break


async def test_the_page_and_its_assets_need_no_key_but_its_data_does(team: Team) -> None:
    async with team.http(None) as anyone:
        page = await anyone.get("/ui")
        assert page.status_code == 200 and "/ui/app.js" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        for asset, media in (("app.js", "text/javascript"), ("style.css", "text/css")):
            served = await anyone.get(f"/ui/{asset}")
            assert served.status_code == 200 and served.headers["content-type"].startswith(media)
        assert (await anyone.get("/ui/index.html")).status_code == 401  # not an asset
        for data in ("/summary", "/events"):
            assert (await anyone.get(data)).status_code == 401


async def test_foreman_top_draws_the_summary_with_the_key(team: Team) -> None:
    committed = await team.foreman.running.journal.subscribe()
    async with team.http(team.alpha) as alpha:
        job = (await alpha.post("/jobs", json=CHAT)).json()["job_id"]
        await until(committed, recorded(job, "JobSucceeded"))
    online = ["top", "--once", "--url", team.foreman.url]
    refused = await trio.to_thread.run_sync(partial(CliRunner().invoke, main, online))
    assert refused.exit_code == 1 and "API key" in refused.output
    shown = await trio.to_thread.run_sync(
        partial(CliRunner().invoke, main, online, env={"FOREMAN_API_KEY": team.alpha})
    )
    assert shown.exit_code == 0, shown.output
    assert "sim" in shown.output and "finished" in shown.output
    assert " 1\n" in shown.output.split("finished", 1)[1]  # alpha's one job this hour


async def test_a_stream_left_open_does_not_hold_up_a_stop(
    db_path: Path, nursery: trio.Nursery
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        with trio.fail_after(10):  # the stop waits for Foreman to end: the stream ends
            async for foreman in start_foreman(nursery, db_path):
                request = client.build_request("GET", f"{foreman.url}/events")
                opened = await client.send(request, stream=True)
                assert opened.status_code == 200
        await opened.aclose()
