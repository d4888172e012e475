"""The metrics actor: follows the journal's commits and answers scrapes (ADR-0044).

Counters and histograms are folded from the committed events as they arrive; the
jobs' final-state totals are seeded from the jobs projection at start, so they are
right after a restart. Gauges (queue depth, backends, webhook backlog, log size)
are read afresh at every scrape from the projections and the scheduler, never kept.
A scrape first folds every commit already queued to it, and the fold loop runs as
soon as a commit is handed to it (the subscription is the journal's first after the
transition log's), so a scrape sees every commit a client saw before asking.
Nothing is kept of a queued job, so a deep queue costs the actor no memory: it holds
a record of each job from its start to its end (the running jobs, and the few sent
back to the queue after a start), made at the start from the jobs projection (model,
tenant, submission time), one read for all the jobs started in the commits it folds
at once (none for a job whose submission is among them); a job that ends without
having started (cancelled in the queue) is read the same way at its end. Job events
the seed already saw (up to the log's head when it was read) are not folded again, so
no job is counted twice.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from foreman.actors._reply import Reply, deliver
from foreman.actors.journal import JournalClient
from foreman.actors.scheduler import HostStatus, SchedulerClient
from foreman.events.log import EventLog
from foreman.events.reader import Reader
from foreman.events.types import (
    JOB_ENDS,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    RecordedEvent,
    WebhookAbandoned,
    WebhookAttemptFailed,
    WebhookDelivered,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
"""Seconds, from a cached answer to a job that waited an hour behind others."""
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(slots=True)
class _Job:
    """What the folds need of a job: held from its start to its end, else read from
    the jobs projection for the one event that needs it."""

    model: str
    tenant: str
    """'' for a job submitted with no key (Foreman open on loopback)."""
    submitted: float
    started: float | None
    """Its last start (None: it never started)."""
    backend: str
    """The backend of its last start ('' if none)."""

    @classmethod
    def submitted_by(cls, recorded: RecordedEvent) -> _Job:
        """A job as its ``JobSubmitted`` (``recorded``) makes it, not started yet."""
        submitted = recorded.event
        assert isinstance(submitted, JobSubmitted)
        tenant = submitted.tenant or ""
        return cls(submitted.model, tenant, _seconds(recorded.recorded_at), None, "")


@dataclass(frozen=True, slots=True)
class _Scrape:
    reply: Reply[bytes]
    gauges: list[Metric]


class Instruments:
    """The counters and histograms, registered nowhere: a scrape collects them."""

    def __init__(self) -> None:
        self.jobs = Counter(
            "foreman_jobs",
            "Jobs that reached a final state.",
            ["state", "model", "backend", "tenant"],
            registry=None,
        )
        self.queue_time = _histogram(
            "foreman_request_queue_time_seconds", "From submission to the first start."
        )
        self.first_token = _histogram(
            "foreman_time_to_first_token_seconds",
            "From submission to the first token: time queued, model load and prompt "
            "evaluation (Ollama's load_duration + prompt_eval_duration).",
        )
        self.run_time = _histogram(
            "foreman_request_inference_time_seconds", "From the last start to success."
        )
        self.end_to_end = _histogram(
            "foreman_e2e_request_latency_seconds", "From submission to a final state."
        )
        self.prompt_tokens = Counter(
            "foreman_prompt_tokens", "Prompt tokens evaluated.", ["model", "tenant"], registry=None
        )
        self.generation_tokens = Counter(
            "foreman_generation_tokens", "Tokens generated.", ["model", "tenant"], registry=None
        )
        self.load_time = Histogram(
            "foreman_model_load_duration_seconds",
            "Model loads a job waited for, by backend (its count is the number of loads).",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.deliveries = Counter(
            "foreman_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered, failed (retried), abandoned.",
            ["outcome"],
            registry=None,
        )
        self.commit_time = Histogram(
            "foreman_journal_commit_duration_seconds",
            "One group commit to the event log, fsync included.",
            buckets=COMMIT_BUCKETS,
            registry=None,
        )
        self.commit_size = Histogram(
            "foreman_journal_commit_events",
            "Events in one group commit.",
            buckets=BATCH_BUCKETS,
            registry=None,
        )

    def committed(self, seconds: float, events: int) -> None:
        """The journal's observer: one commit took ``seconds`` for ``events`` events."""
        self.commit_time.observe(seconds)
        self.commit_size.observe(events)

    def collectors(self) -> Iterator[Collector]:
        yield from vars(self).values()


def _histogram(name: str, documentation: str) -> Histogram:
    return Histogram(name, documentation, ["model"], buckets=LATENCY_BUCKETS, registry=None)


class MetricsClient:
    """How the HTTP route asks for a scrape."""

    def __init__(
        self,
        requests: trio.MemorySendChannel[_Scrape],
        scheduler: SchedulerClient,
        reader: Reader,
        slots: Mapping[str, int],
    ) -> None:
        self._requests = requests
        self._scheduler = scheduler
        self._reader = reader
        self._slots = slots

    async def scrape(self) -> bytes:
        """The exposition: every metric, in Prometheus' text format."""
        gauges, running = await self._reader.read(_projected_gauges)
        gauges += _backend_gauges(await self._scheduler.hosts(), running, self._slots)
        scrape = _Scrape(Reply(), gauges)
        await deliver(self._requests, scrape)
        return await scrape.reply.wait()


class Metrics:
    def __init__(
        self,
        journal: JournalClient,
        scheduler: SchedulerClient,
        reader: Reader,
        instruments: Instruments,
        slots: Mapping[str, int],
    ) -> None:
        self._journal = journal
        self._scheduler = scheduler
        self._reader = reader
        self._instruments = instruments
        self._slots = slots
        self._started: dict[str, _Job] = {}
        """The jobs started and not yet ended: the running ones (at most the slots)
        and any requeued after a start (recovery's, a lost backend's)."""
        self._seen = 0
        """The log's head when the seed was read: job events up to it are in the seed."""
        self._backlog: deque[list[RecordedEvent]] = deque()
        """Commits taken from the subscription and not yet folded, in order."""
        self._folding = trio.Lock()

    async def run(
        self, *, task_status: trio.TaskStatus[MetricsClient] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Subscribe, seed from the projections, report a client, then fold and answer."""
        committed = await self._journal.subscribe()
        self._seen, totals, started = await self._reader.read(_seed)
        for labels, count in totals:
            self._instruments.jobs.labels(*labels).inc(count)
        self._started.update(started)
        send, requests = trio.open_memory_channel[_Scrape](16)
        task_status.started(MetricsClient(send, self._scheduler, self._reader, self._slots))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._answer, requests, committed)
            async for events in committed:
                self._backlog.append(events)
                await self._fold_backlog()

    async def _answer(
        self,
        requests: trio.MemoryReceiveChannel[_Scrape],
        committed: trio.MemoryReceiveChannel[list[RecordedEvent]],
    ) -> None:
        async for scrape in requests:
            while True:
                try:
                    self._backlog.append(committed.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await self._fold_backlog()
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Families(scrape.gauges, self._instruments.collectors()))
            scrape.reply.put(generate_latest(registry))

    async def _fold_backlog(self) -> None:
        """Fold every commit taken so far, in order, one fold at a time (a fold may wait
        for a read, and a scrape may take commits meanwhile): all those waiting at once,
        with one read. A free lock is taken without a turn of Trio's loop, as every
        commit comes here."""
        try:
            self._folding.acquire_nowait()
        except trio.WouldBlock:
            await self._folding.acquire()
        try:
            while self._backlog:
                events = list(itertools.chain.from_iterable(self._backlog))
                self._backlog.clear()
                await self._fold(events)
        finally:
            self._folding.release()

    async def _fold(self, events: list[RecordedEvent]) -> None:
        """Fold ``events``; what they need of a job submitted in another commit is read
        from the jobs projection, all of it in one read (a sync call to a free GPU
        commits its submission and start together: ADR-0048)."""
        needed = {
            recorded.stream
            for recorded in events
            if recorded.type in _JOB_FOLDED
            and recorded.seq > self._seen
            and recorded.stream not in self._started
        }
        jobs = {
            recorded.stream: _Job.submitted_by(recorded)
            for recorded in events
            if recorded.type == "JobSubmitted" and recorded.stream in needed
        }
        if unknown := needed - jobs.keys():
            jobs.update(await self._reader.read(_jobs, sorted(unknown)))
        for recorded in events:
            if recorded.type in _JOB_FOLDED:
                if recorded.seq > self._seen and recorded.readable:
                    self._job_event(recorded, jobs)
            elif recorded.type in _DELIVERY_OUTCOMES:
                self._instruments.deliveries.labels(_DELIVERY_OUTCOMES[recorded.type]).inc()

    def _job_event(self, recorded: RecordedEvent, read: Mapping[str, _Job]) -> None:
        event, job_id, at = recorded.event, recorded.stream, _seconds(recorded.recorded_at)
        job = self._started.get(job_id) or read.get(job_id)
        if job is None:  # pruned before it was read: gone from every figure
            return
        tools = self._instruments
        if isinstance(event, JobStarted):
            if event.attempt == 1:  # its first start: attempts count every start
                tools.queue_time.labels(job.model).observe(at - job.submitted)
            job.started, job.backend = at, event.backend
            self._started[job_id] = job
            return
        self._started.pop(job_id, None)
        if isinstance(event, JobSucceeded):
            self._succeeded(job, event.result, at)
        state = {"JobSucceeded": "succeeded", "JobCancelled": "cancelled"}.get(
            recorded.type, "failed"
        )
        tools.jobs.labels(state, job.model, job.backend, job.tenant).inc()
        tools.end_to_end.labels(job.model).observe(at - job.submitted)

    def _succeeded(self, job: _Job, result: Mapping[str, Any], at: float) -> None:
        tools = self._instruments
        started = job.started if job.started is not None else at
        tools.run_time.labels(job.model).observe(at - started)
        prompt, generated = result.get("prompt_eval_count"), result.get("eval_count")
        if isinstance(prompt, int):
            tools.prompt_tokens.labels(job.model, job.tenant).inc(prompt)
        if isinstance(generated, int):
            tools.generation_tokens.labels(job.model, job.tenant).inc(generated)
        load, evaluation = result.get("load_duration"), result.get("prompt_eval_duration")
        ahead = (load if isinstance(load, int) else 0) + (
            evaluation if isinstance(evaluation, int) else 0
        )
        tools.first_token.labels(job.model).observe(started - job.submitted + ahead / 1e9)
        if isinstance(load, int) and load > 0:
            tools.load_time.labels(job.backend).observe(load / 1e9)


_JOB_FOLDED = JOB_ENDS | {"JobStarted"}


_DELIVERY_OUTCOMES = {
    WebhookDelivered.model_fields["type"].default: "delivered",
    WebhookAttemptFailed.model_fields["type"].default: "failed",
    WebhookAbandoned.model_fields["type"].default: "abandoned",
}


class _Families(Collector):
    """One scrape's families: the gauges read for it, then the live instruments."""

    def __init__(self, gauges: list[Metric], instruments: Iterable[Collector]) -> None:
        self._gauges = gauges
        self._instruments = list(instruments)

    def collect(self) -> Iterable[Metric]:
        yield from self._gauges
        for instrument in self._instruments:
            yield from instrument.collect()


def _seconds(recorded_at: str) -> float:
    return datetime.fromisoformat(recorded_at).timestamp()


_Totals = list[tuple[tuple[str, str, str, str], int]]
_JOB_COLUMNS = (
    "SELECT id, model, coalesce(tenant, ''), created_at, started_at, coalesce(backend, '') "
    "FROM jobs"
)
_READ_CHUNK = 500
"""Job ids per read (SQLite's bound on a statement's parameters is far above it)."""


def _seed(log: EventLog) -> tuple[int, _Totals, dict[str, _Job]]:
    """The log's head, the final-state totals of the jobs in the log and its running
    jobs, in one snapshot at start (the running jobs are at most the slots; nothing is
    read of the queued ones)."""
    head, _ = log.head()
    totals = [
        ((state, model, backend, tenant), count)
        for state, model, backend, tenant, count in log.conn.execute(
            "SELECT state, model, coalesce(backend, ''), coalesce(tenant, ''), count(*) "
            "FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2, 3, 4"
        )
    ]
    running = dict(_job_rows(log.conn.execute(f"{_JOB_COLUMNS} WHERE state = 'running'")))
    return head, totals, running


def _jobs(log: EventLog, job_ids: Sequence[str]) -> dict[str, _Job]:
    """What the jobs projection holds of these jobs (those it still holds)."""
    found: dict[str, _Job] = {}
    unique = list(dict.fromkeys(job_ids))
    for at in range(0, len(unique), _READ_CHUNK):
        chunk = unique[at : at + _READ_CHUNK]
        marks = ", ".join("?" * len(chunk))
        found.update(_job_rows(log.conn.execute(f"{_JOB_COLUMNS} WHERE id IN ({marks})", chunk)))
    return found


def _job_rows(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[str, _Job]]:
    for job_id, model, tenant, created, started, backend in rows:
        yield (
            job_id,
            _Job(
                model,
                tenant,
                _seconds(created),
                None if started is None else _seconds(started),
                backend,
            ),
        )


def _projected_gauges(log: EventLog) -> tuple[list[Metric], dict[str, int]]:
    """The gauges the projections hold, each read through an index (ADR-0044), and
    the jobs running on each backend."""
    waiting = GaugeMetricFamily(
        "foreman_num_requests_waiting",
        "Jobs queued, by model and priority.",
        labels=["model", "priority"],
    )
    running = GaugeMetricFamily(
        "foreman_num_requests_running", "Jobs running, by model.", labels=["model"]
    )
    rows = log.conn.execute(
        "SELECT state, model, priority, coalesce(backend, ''), count(*) FROM jobs "
        "WHERE state IN ('queued', 'running') GROUP BY 1, 2, 3, 4"
    )
    by_model: dict[str, int] = {}
    by_backend: dict[str, int] = {}
    for state, model, priority, backend, count in rows:
        if state == "queued":
            waiting.add_metric([model, str(priority)], count)
        else:
            by_model[model] = by_model.get(model, 0) + count
            by_backend[backend] = by_backend.get(backend, 0) + count
    for model, count in by_model.items():
        running.add_metric([model], count)
    pending = log.conn.execute(
        "SELECT count(*) FROM deliveries INDEXED BY deliveries_pending WHERE state = 'pending'"
    ).fetchone()[0]
    return [
        waiting,
        running,
        GaugeMetricFamily(
            "foreman_webhook_pending_deliveries",
            "Webhook deliveries not yet made nor abandoned.",
            value=pending,
        ),
        GaugeMetricFamily(
            "foreman_event_log_size_bytes",
            "The event log's database file (page count times page size).",
            value=_size(log.conn),
        ),
    ], by_backend


def _size(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int(pages) * int(page_size)


def _backend_gauges(
    hosts: Iterable[HostStatus], running: Mapping[str, int], slots: Mapping[str, int]
) -> list[Metric]:
    up = GaugeMetricFamily(
        "foreman_backend_up", "1: the backend answers; 0: it is down.", labels=["backend"]
    )
    busy = GaugeMetricFamily(
        "foreman_backend_busy_ratio",
        "Jobs running on the backend over its slots (FOREMAN_BACKEND's slots).",
        labels=["backend"],
    )
    for host in hosts:
        up.add_metric([host.name], 1 if host.up else 0)
        busy.add_metric([host.name], running.get(host.name, 0) / max(slots.get(host.name, 1), 1))
    return [up, busy]
