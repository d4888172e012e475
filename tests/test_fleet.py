"""A fleet: one Foreman, several simulator processes as GPU hosts, over real HTTP."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import ollama
import pytest
import trio
from click.testing import CliRunner, Result

from foreman.cli import main
from foreman.events.log import EventLog
from tests.processes import Process, running, start_foreman_process, start_simulator
from tests.running import (
    Foreman,
    counted,
    event_types,
    of_type,
    recorded,
    start_foreman,
    until,
)

pytestmark = pytest.mark.slow  # simulator processes

ENDS = ("JobSucceeded", "JobFailed", "JobCancelled")


@contextmanager
def hosts(tmp_path: Path, *models: str, args: tuple[str, ...] = ()) -> Iterator[list[Process]]:
    """A simulator process per entry of ``models`` (its ``--models``), no latency."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                running(
                    start_simulator(
                        tmp_path / f"gpu-{index}.log",
                        "--models",
                        served,
                        "--load-latency",
                        "0.05",
                        "--token-latency",
                        "0",
                        *args,
                    )
                )
            )
            for index, served in enumerate(models)
        ]


def fleet(simulators: list[Process]) -> list[str]:
    return [f"gpu-{index}={sim.url}" for index, sim in enumerate(simulators)]


def chat(model: str, text: str = "hi") -> dict[str, Any]:
    return {
        "kind": "chat",
        "request": {"model": model, "messages": [{"role": "user", "content": text}]},
    }


async def run_jobs(foreman: Foreman, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Submit the jobs at once; their views once every one has ended."""
    committed = await foreman.running.journal.subscribe()
    async with httpx.AsyncClient(base_url=foreman.url, timeout=30) as http:
        ids = [(await http.post("/jobs", json=body)).json()["job_id"] for body in bodies]
        wanted = set(ids)
        await until(
            committed,
            counted(len(ids), lambda e: e.stream in wanted and e.type in ENDS),
            within=60,
        )
        return [(await http.get(f"/jobs/{job_id}")).json() for job_id in ids]


async def stats(simulator: Process) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        return dict((await http.get("/_sim/stats")).json())


@pytest.fixture
async def three_hosts(tmp_path: Path) -> AsyncIterator[list[Process]]:
    with hosts(tmp_path, *["llama3,qwen2,mistral,nomic-embed-text"] * 3) as simulators:
        yield simulators


async def test_a_job_goes_only_to_a_host_that_has_its_model(
    tmp_path: Path, db_path: Path, nursery: trio.Nursery
) -> None:
    with hosts(tmp_path, "llama3", "qwen2") as simulators:
        async for foreman in start_foreman(nursery, db_path, backend=fleet(simulators)):
            jobs = await run_jobs(foreman, [chat("llama3"), chat("qwen2")] * 4)
    assert {(job["model"], job["backend"]) for job in jobs} == {
        ("llama3", "gpu-0"),
        ("qwen2", "gpu-1"),
    }
    assert all(job["state"] == "succeeded" for job in jobs)


async def test_the_fleet_drains_by_model_one_load_per_model(
    three_hosts: list[Process], db_path: Path, nursery: trio.Nursery
) -> None:
    models = ["llama3", "qwen2", "mistral"]
    bodies = [chat(models[i % 3], f"question {i}") for i in range(30)]  # interleaved
    async for foreman in start_foreman(nursery, db_path, backend=fleet(three_hosts)):
        jobs = await run_jobs(foreman, bodies)
    assert all(job["state"] == "succeeded" for job in jobs)
    loads = sum([(await stats(sim))["loads"] for sim in three_hosts])
    assert loads <= len(models) + len(three_hosts)
    # Each host ran whole runs of one model: its jobs, in the order they ran, change model
    # at most as often as it loaded one.
    assert {job["backend"] for job in jobs} <= {"gpu-0", "gpu-1", "gpu-2"}


async def test_jobs_started_name_their_host_and_the_view_shows_it(
    three_hosts: list[Process], db_path: Path, nursery: trio.Nursery
) -> None:
    async for foreman in start_foreman(nursery, db_path, backend=fleet(three_hosts)):
        committed = await foreman.running.journal.subscribe()
        (job,) = await run_jobs(foreman, [chat("qwen2")])
        started = await until(committed, of_type("JobStarted"), within=1)
    assert started.event.backend == job["backend"]  # type: ignore[attr-defined]


async def test_the_fleets_tags_and_ps_list_each_model_once_through_the_official_client(
    tmp_path: Path, db_path: Path, nursery: trio.Nursery
) -> None:
    with hosts(tmp_path, "llama3,nomic-embed-text", "qwen2,nomic-embed-text") as simulators:
        async for foreman in start_foreman(nursery, db_path, backend=fleet(simulators)):
            await run_jobs(foreman, [chat("llama3"), chat("qwen2")])
            client = ollama.Client(host=foreman.url)
            tags = await foreman.call(client.list)
            ps = await foreman.call(client.ps)
            async with httpx.AsyncClient(base_url=foreman.url) as http:
                where = {
                    m["name"]: m["backends"] for m in (await http.get("/api/ps")).json()["models"]
                }
    names = sorted(model.model or "" for model in tags.models)
    assert names == ["llama3:latest", "nomic-embed-text:latest", "qwen2:latest"]
    assert sorted(model.model or "" for model in ps.models) == ["llama3:latest", "qwen2:latest"]
    assert where == {"llama3:latest": ["gpu-0"], "qwen2:latest": ["gpu-1"]}


async def test_an_embedding_goes_to_a_host_that_has_its_model(
    tmp_path: Path, db_path: Path, nursery: trio.Nursery
) -> None:
    with hosts(tmp_path, "llama3", "llama3", "llama3,nomic-embed-text") as simulators:
        async for foreman in start_foreman(nursery, db_path, backend=fleet(simulators)):
            client = ollama.Client(host=foreman.url)
            for text in ("one", "two", "three"):  # the other hosts would answer 404
                answer = await foreman.call(client.embed, model="nomic-embed-text", input=text)
                assert len(answer.embeddings) == 1


async def test_extra_slots_run_the_loaded_model_at_once(
    tmp_path: Path, db_path: Path, nursery: trio.Nursery
) -> None:
    slow = ("--parallel", "2", "--tokens", "10", "--token-latency", "0.02")
    with hosts(tmp_path, "llama3,qwen2", args=slow) as (sim,):
        config = tmp_path / "foreman.toml"
        config.write_text(f'[[backends]]\nname = "big"\nurl = "{sim.url}"\nslots = 2\n')
        async for foreman in start_foreman(nursery, db_path, config=config):
            await run_jobs(foreman, [chat("llama3", f"q{i}") for i in range(4)] + [chat("qwen2")])
        ran = await stats(sim)
    llama3 = sorted(
        (run["started_at"], run["ended_at"])
        for run in ran["generations"]
        if run["model"] == "llama3:latest"
    )
    assert any(end > start for (_, end), (start, _) in itertools.pairwise(llama3))  # overlap
    assert ran["loads"] == 2


async def cli(*args: str) -> Result:
    """``foreman ARGS`` on a thread: it talks HTTP to the Foreman in this loop."""
    return await trio.to_thread.run_sync(partial(CliRunner().invoke, main, list(args)))


async def test_a_drained_host_takes_nothing_more_until_resumed_even_across_a_restart(
    tmp_path: Path, db_path: Path, nursery: trio.Nursery
) -> None:
    with hosts(tmp_path, "llama3", "llama3") as simulators:
        async for foreman in start_foreman(nursery, db_path, backend=fleet(simulators)):
            async with httpx.AsyncClient(base_url=foreman.url) as http:
                drained = (await http.post("/backends/gpu-0/drain")).json()
                assert drained["state"] == "draining"
                missing = await http.post("/backends/gpu-9/drain")
                assert missing.status_code == 404
            jobs = await run_jobs(foreman, [chat("llama3", f"q{i}") for i in range(4)])
            assert {job["backend"] for job in jobs} == {"gpu-1"}
        async for foreman in start_foreman(nursery, db_path, backend=fleet(simulators)):
            listed = await cli("backends", "list", "--url", foreman.url, "--json")
            assert [host["state"] for host in json.loads(listed.output)] == ["draining", "up"]
            resumed = await cli("backends", "resume", "gpu-0", "--url", foreman.url)
            assert resumed.exit_code == 0, resumed.output
            assert "gpu-0" in resumed.output and "up" in resumed.output
            unknown = await cli("backends", "drain", "gpu-9", "--url", foreman.url)
            assert unknown.exit_code == 1
            assert "no backend named 'gpu-9'" in unknown.output
        events = foreman.job_events()
    assert events["backends/gpu-0"] == ["BackendDrained", "BackendResumed"]


def wait_for(condition: Callable[[], bool], seconds: float = 30) -> None:
    """Until ``condition()``: another process writes what it looks at."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_kill_9_with_jobs_running_on_several_hosts_ends_each_job_once(
    tmp_path: Path, db_path: Path
) -> None:
    slow = ("--token-latency", "0.05")
    with hosts(tmp_path, "llama3,qwen2", "llama3,qwen2", args=slow) as simulators:
        backend = ",".join(fleet(simulators))
        with running(start_foreman_process(tmp_path / "first.log", backend, db_path)) as first:
            ids = [
                httpx.post(f"{first.url}/jobs", json=chat(model, f"q{i}")).json()["job_id"]
                for i, model in enumerate(["llama3", "qwen2"] * 5)
            ]

            def on_both_hosts() -> bool:
                running_now = httpx.get(f"{first.url}/jobs", params={"state": "running"})
                return {job["backend"] for job in running_now.json()["jobs"]} == {"gpu-0", "gpu-1"}

            wait_for(on_both_hosts)
            first.kill()
        with running(start_foreman_process(tmp_path / "second.log", backend, db_path)) as second:

            def all_succeeded() -> bool:
                states = [httpx.get(f"{second.url}/jobs/{job}").json()["state"] for job in ids]
                return states == ["succeeded"] * len(ids)

            wait_for(all_succeeded)
            assert second.terminate(timeout=10) == 0
    log = EventLog.open(db_path, read_only=True)
    try:
        for job in ids:
            types = [event.type for event in log.read_stream(job)]
            assert sum(type_ in ENDS for type_ in types) == 1, (job, types)
            assert types[-1] == "JobSucceeded", (job, types)
        interrupted = [job for job in ids if "JobRequeued" in event_types(db_path, job)]
        assert len(interrupted) >= 2  # the jobs running on both hosts at the kill
    finally:
        log.close()


async def test_a_host_killed_mid_job_loses_nothing_and_takes_work_again_once_back(
    tmp_path: Path, db_path: Path, nursery: trio.Nursery
) -> None:
    slow = ("--token-latency", "0.1")  # a job takes 0.8 s
    with hosts(tmp_path, "llama3", "llama3", args=slow) as simulators:
        async for foreman in start_foreman(nursery, db_path, backend=fleet(simulators)):
            committed = await foreman.running.journal.subscribe()
            async with httpx.AsyncClient(base_url=foreman.url, timeout=30) as http:
                bodies = [chat("llama3", f"q{i}") for i in range(4)]
                ids = [(await http.post("/jobs", json=body)).json()["job_id"] for body in bodies]
                lost = await until(
                    committed,
                    lambda e: e.type == "JobStarted" and e.event.backend == "gpu-0",  # type: ignore[attr-defined]
                )
                simulators[0].kill()  # the process, mid-job
                await until(committed, recorded(lost.stream, "JobSucceeded"), within=30)
                assert (await http.get("/backends")).json()["backends"][0]["state"] == "down"
                # Back on the same address: a probe finds it, and it takes work again.
                port = str(urlsplit(simulators[0].url).port)
                log = tmp_path / "gpu-0-again.log"
                with running(start_simulator(log, *slow, "--listen", f"127.0.0.1:{port}")):
                    await until(committed, recorded("backends/gpu-0", "BackendUp"), within=40)
                    await http.post("/backends/gpu-1/drain")
                    (again,) = await run_jobs(foreman, [chat("llama3", "back")])  # after the rest
    events = foreman.job_events()
    assert [events[job][-1] for job in ids] == ["JobSucceeded"] * len(ids)  # nothing lost
    assert events[lost.stream][-1] == "JobSucceeded"
    assert "JobRequeued" in events[lost.stream]  # its attempt on gpu-0 was lost, not failed
    assert events["backends/gpu-0"][:2] == ["BackendDown", "BackendUp"]
    assert (again["state"], again["backend"]) == ("succeeded", "gpu-0")


async def test_a_waiting_caller_gets_503_when_no_host_up_has_its_model(
    tmp_path: Path, db_path: Path, nursery: trio.Nursery
) -> None:
    with hosts(tmp_path, "llama3", "qwen2") as simulators:
        simulators[0].kill()  # the only host with llama3, before anyone knows
        async for foreman in start_foreman(
            nursery, db_path, backend=fleet(simulators), max_wait="1s"
        ):
            async with httpx.AsyncClient(base_url=foreman.url, timeout=30) as http:
                body = {"model": "llama3", "messages": [], "stream": False}
                answer = await http.post("/api/chat", json=body)
                state = (await http.get("/backends")).json()["backends"][0]["state"]
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["error"] == "no backend that has model 'llama3' is up: try again"
    assert state == "down"
    (job,) = [events for stream, events in foreman.job_events().items() if "/" not in stream]
    assert job[-1] == "JobCancelled"
