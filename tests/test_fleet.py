"""A fleet: one Foreman, several simulator processes as GPU hosts, over real HTTP."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import trio

from tests.processes import Process, running, start_simulator
from tests.running import Foreman, counted, of_type, start_foreman, until

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
