"""``GET /metrics`` over real HTTP: Prometheus' text format read back with its own
parser, after jobs that succeed, fail and wait; after a restart on the same log; and
who may read it once keys are in use."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from foreman.events.log import EventLog
from foreman.simulator import SimulatorConfig
from tests.receiver import RECEIVER_HOST, Answer, Receiver, serving
from tests.running import Foreman, jobs_succeeded, of_type, recorded, start_foreman, until
from tests.test_jobs_api import chat_job, stall_backend
from tests.test_tenants import Team, issue
from tests.test_webhooks import one_settled_job

Samples = dict[str, list[Sample]]
METRIC = re.compile(r"\bforeman_[a-z0-9_]+[a-z]\b")


async def scrape(http: httpx.AsyncClient) -> Samples:
    answer = await http.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        sample.value for sample in samples.get(name, []) if labels.items() <= sample.labels.items()
    )


async def run_jobs(foreman: Foreman, http: httpx.AsyncClient) -> list[str]:
    """One job failed (the backend answers 400), one succeeded, one stalled at the
    backend and one queued behind it at priority 5; their ids."""
    committed = await foreman.running.journal.subscribe()
    sim = str((await http.get("/healthz")).json()["backends"][0]["url"])
    fault = {"kind": "status", "status": 400, "error": "bad", "times": 1, "model": "llama3"}
    await http.post(f"{sim}/_sim/faults", json=fault)
    failed = (await http.post("/jobs", json=chat_job())).json()["job_id"]
    await until(committed, recorded(failed, "JobFailed"), within=30)
    succeeded = (await http.post("/jobs", json=chat_job())).json()["job_id"]
    await until(committed, recorded(succeeded, "JobSucceeded"), within=30)
    await stall_backend(http)
    running = (await http.post("/jobs", json=chat_job())).json()["job_id"]
    await until(committed, recorded(running, "JobStarted"), within=30)
    queued = (await http.post("/jobs", json=chat_job(priority=5))).json()["job_id"]
    await until(committed, recorded(queued, "JobSubmitted"))
    return [failed, succeeded, running, queued]


async def test_jobs_latencies_tokens_and_gauges_are_scraped(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    ids = await run_jobs(foreman, http)
    samples = await scrape(http)
    jobs = "foreman_jobs_total"
    assert value(samples, jobs, state="succeeded", backend="sim", tenant="") == 1
    assert value(samples, jobs, state="failed", backend="sim") == 1
    assert value(samples, "foreman_num_requests_waiting", priority="5") == 1
    assert value(samples, "foreman_num_requests_running") == 1
    assert value(samples, "foreman_request_queue_time_seconds_count") == 3
    assert value(samples, "foreman_request_inference_time_seconds_count") == 1
    assert value(samples, "foreman_time_to_first_token_seconds_count") == 1
    assert value(samples, "foreman_e2e_request_latency_seconds_count") == 2
    assert value(samples, "foreman_prompt_tokens_total") > 0
    assert value(samples, "foreman_generation_tokens_total") > 0
    assert value(samples, "foreman_backend_up", backend="sim") == 1
    assert value(samples, "foreman_backend_busy_ratio", backend="sim") == 1
    assert value(samples, "foreman_webhook_pending_deliveries") == 0
    assert value(samples, "foreman_event_log_size_bytes") > 0
    assert value(samples, "foreman_journal_commit_duration_seconds_count") > 0
    assert value(samples, "foreman_journal_commit_events_sum") >= 8
    labels = {v for found in samples.values() for sample in found for v in sample.labels.values()}
    assert not labels & set(ids), "a job id is a label"
    assert all(isinstance(v, str) and v != "hi" for v in labels)


async def test_a_sync_call_to_a_free_gpu_is_timed_from_its_one_commit(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    """Its submission and start share a commit (ADR-0048): it waited no time in the
    queue, and is counted, with its model and tenant, from the events themselves."""
    committed = await foreman.running.journal.subscribe()
    chat = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert (await http.post("/api/chat", json=chat)).status_code == 200
    await until(committed, of_type("JobSucceeded"))
    samples = await scrape(http)
    queued = "foreman_request_queue_time_seconds"
    assert value(samples, f"{queued}_count", model="llama3") == 1
    assert value(samples, f"{queued}_sum", model="llama3") == 0
    succeeded = value(samples, "foreman_jobs_total", state="succeeded", model="llama3", tenant="")
    assert succeeded == 1


async def test_gauges_and_totals_are_right_after_a_restart(
    db_path: Path, nursery: trio.Nursery
) -> None:
    async for foreman in start_foreman(nursery, db_path, shutdown_grace=0.1):
        async with httpx.AsyncClient(base_url=foreman.url, timeout=10) as http:
            await run_jobs(foreman, http)
            before = await scrape(http)
    loading = SimulatorConfig(load_latency=30)  # the jobs recovered wait for their model
    async for foreman in start_foreman(nursery, db_path, simulator=loading, shutdown_grace=0.1):
        async with httpx.AsyncClient(base_url=foreman.url, timeout=10) as http:
            after = await scrape(http)
    for state in ("succeeded", "failed"):
        totals = [value(s, "foreman_jobs_total", state=state) for s in (before, after)]
        assert totals == [1, 1], state
    both = [
        value(s, "foreman_num_requests_waiting") + value(s, "foreman_num_requests_running")
        for s in (before, after)
    ]
    assert both == [2, 2]


def recorded_at(db_path: Path, job_id: str) -> dict[str, float]:
    """When each of a job's events was recorded (its last of each type), in seconds."""
    log = EventLog.open(db_path, read_only=True)
    try:
        return {
            event.type: datetime.fromisoformat(event.recorded_at).timestamp()
            for event in log.read_stream(job_id)
        }
    finally:
        log.close()


async def test_jobs_queued_over_a_restart_are_timed_from_the_log(
    db_path: Path, nursery: trio.Nursery
) -> None:
    """Nothing is held of a queued job: its start and its end read what they need from
    the log, so a job queued across a restart is timed from its submission, one
    interrupted is not queued twice, and one cancelled in the queue is counted."""
    async for foreman in start_foreman(nursery, db_path, shutdown_grace=0.1):
        async with httpx.AsyncClient(base_url=foreman.url, timeout=10) as http:
            committed = await foreman.running.journal.subscribe()
            await stall_backend(http)
            interrupted = (await http.post("/jobs", json=chat_job())).json()["job_id"]
            await until(committed, recorded(interrupted, "JobStarted"), within=30)
            queued = (await http.post("/jobs", json=chat_job())).json()["job_id"]
            dropped = (await http.post("/jobs", json=chat_job())).json()["job_id"]
            assert (await http.delete(f"/jobs/{dropped}")).json()["state"] == "cancelled"
            before = await scrape(http)
    assert value(before, "foreman_jobs_total", state="cancelled", backend="") == 1
    assert value(before, "foreman_e2e_request_latency_seconds_count") == 1
    assert value(before, "foreman_request_queue_time_seconds_count") == 1
    async for foreman in start_foreman(nursery, db_path, shutdown_grace=0.1):
        async with httpx.AsyncClient(base_url=foreman.url, timeout=10) as http:
            committed = await foreman.running.journal.subscribe()
            both = jobs_succeeded(db_path, 2)
            if not both():
                await until(committed, both, within=30)
            after = await scrape(http)
    times = {job_id: recorded_at(db_path, job_id) for job_id in (interrupted, queued)}
    assert value(after, "foreman_jobs_total", state="succeeded", backend="sim") == 2
    assert value(after, "foreman_jobs_total", state="cancelled") == 1
    assert value(after, "foreman_request_queue_time_seconds_count") == 1
    waited = times[queued]["JobStarted"] - times[queued]["JobSubmitted"]
    assert value(after, "foreman_request_queue_time_seconds_sum") == pytest.approx(waited)
    assert value(after, "foreman_request_inference_time_seconds_count") == 2
    ran = sum(t["JobSucceeded"] - t["JobStarted"] for t in times.values())
    assert value(after, "foreman_request_inference_time_seconds_sum") == pytest.approx(ran)
    took = sum(t["JobSucceeded"] - t["JobSubmitted"] for t in times.values())
    assert value(after, "foreman_e2e_request_latency_seconds_sum") == pytest.approx(took)


async def test_a_tenant_key_is_refused_and_the_scrape_token_reads_only_metrics(
    db_path: Path, nursery: trio.Nursery
) -> None:
    token = "scrape-token-0123456789"
    async for foreman in start_foreman(nursery, db_path, metrics_token=token):
        async with httpx.AsyncClient(base_url=foreman.url, timeout=10) as open_http:
            admin, _ = await issue(open_http, "ops", admin=True)
        team = Team(foreman, admin, "", "", {})
        async with team.http(admin) as http:
            alpha, _ = await issue(http, "alpha")
            assert "foreman_jobs_total" in (await http.get("/metrics")).text
        async with team.http(None) as nobody:
            assert (await nobody.get("/metrics")).status_code == 401
        async with team.http(alpha) as tenant:
            refused = await tenant.get("/metrics")
            assert refused.status_code == 403 and "admin" in refused.json()["error"]
        async with team.http(token) as scraper:
            await scrape(scraper)
            assert (await scraper.get("/jobs")).status_code == 401
            assert (await scraper.get("/metrics/")).status_code == 401


DOCS = Path(__file__).resolve().parent.parent / "docs"
DOCUMENTED = (
    DOCS / "operations.md",
    DOCS / "operations" / "foreman-alerts.yml",
    DOCS / "operations" / "grafana-dashboard.json",
)
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum")


async def test_every_metric_the_rules_dashboard_and_docs_name_is_exposed(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    await run_jobs(foreman, http)
    answer = await http.get("/metrics")
    exposed = {
        family.name + suffix
        for family in text_string_to_metric_families(answer.text)
        for suffix in SUFFIXES
    }
    named = {name for path in DOCUMENTED for name in METRIC.findall(path.read_text())}
    assert len(named) >= 15
    assert named <= exposed, f"not exposed: {sorted(named - exposed)}"
    dashboard = json.loads(DOCUMENTED[2].read_text())
    assert all(panel["targets"] for panel in dashboard["panels"])


async def test_webhook_deliveries_are_counted_by_outcome(
    db_path: Path, nursery: trio.Nursery
) -> None:
    receiver = Receiver(Answer(503), Answer(503))
    async with serving(receiver), httpx.AsyncClient(timeout=10) as client:
        async for foreman in start_foreman(
            nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST, webhook_backoff="10ms"
        ):
            job_id = await one_settled_job(client, foreman, receiver.url)
            async with httpx.AsyncClient(base_url=foreman.url, timeout=10) as http:
                samples = await scrape(http)
    deliveries = "foreman_webhook_deliveries_total"
    assert value(samples, deliveries, outcome="failed") == 2
    assert value(samples, deliveries, outcome="delivered") == 3
    assert value(samples, deliveries, outcome="abandoned") == 0
    assert value(samples, "foreman_webhook_pending_deliveries") == 0
    assert job_id not in {v for found in samples.values() for s in found for v in s.labels.values()}
