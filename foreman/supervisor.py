"""The supervisor: one Trio nursery hosting Foreman's actors, wired by memory channels.

Start order: the simulator (with ``--backend sim``), the journal (it opens the
log and catches the projections up), the scheduler, the janitor, crash
recovery, the worker, the HTTP actor (nothing is accepted before it can be
kept), and the webhook dispatcher, whose links need the URL the HTTP actor got;
it delivers whatever became pending before it started.
An actor that fails cancels the nursery: Foreman stops loudly, never half-alive.

Stopping (SIGINT/SIGTERM): stop accepting, let the running job finish within
``shutdown_grace`` (else it is requeued as interrupted), then stop the rest;
every commit already sent to the journal completes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial

import trio

from foreman.actors.dispatcher import Dispatcher
from foreman.actors.http import serve_http
from foreman.actors.janitor import Janitor
from foreman.actors.journal import Journal, JournalClient
from foreman.actors.scheduler import Message, Scheduler
from foreman.actors.worker import Worker
from foreman.api.app import create_app
from foreman.api.bound import Bound
from foreman.api.jobs import JobDesk
from foreman.api.ollama import Gateway
from foreman.artifacts import ArtifactStore
from foreman.config import SIM, Settings, format_duration
from foreman.events.reader import Reader
from foreman.logs import log, log_transitions
from foreman.recovery import recover
from foreman.scheduling import model_key
from foreman.simulator import SimulatorConfig, serve_simulator
from foreman.upstream import Unavailable, Upstream
from foreman.webhooks.policy import RetryPolicy
from foreman.webhooks.sender import Sender

SCHEDULER_INBOX = 1024
STALLED_CONNECTION_CUT = 2
"""A connection taking no data for this many FOREMAN_STREAM_STALLs is cut by the kernel:
by then its job was cancelled as ``client_stalled`` (the worker is the first to know)."""


@dataclass(frozen=True, slots=True)
class Running:
    """A started Foreman: where it serves, and its journal (to follow its commits)."""

    url: str
    journal: JournalClient


DEMO_SIMULATOR = SimulatorConfig(listen="127.0.0.1:0", load_latency=2.0, token_latency=0.05)
"""``--backend sim``: model loads and tokens take time, so a demo shows the queue at work."""


async def run_foreman(
    settings: Settings,
    stop: trio.Event,
    *,
    simulator: SimulatorConfig = DEMO_SIMULATOR,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run Foreman until ``stop`` is set; reports :class:`Running` once ready."""
    async with trio.open_nursery() as nursery:
        backend = settings.backend
        if backend == SIM:
            backend = await nursery.start(serve_simulator, simulator)
            log.info("simulator: listening on %s", backend)
        journal = await nursery.start(Journal(settings.db, durability=settings.durability).run)
        log.info("journal: started on %s", settings.db)
        nursery.start_soon(log_transitions, await journal.subscribe())
        scheduler_send, scheduler_inbox = trio.open_memory_channel[Message](SCHEDULER_INBOX)
        scheduler = Scheduler(journal.clone(), settings.max_wait, settings.max_queue)
        await nursery.start(scheduler.run, scheduler_inbox)
        log.info("scheduler: started")
        reader = await nursery.start(Reader(settings.db).run)
        store = ArtifactStore(settings.artifact_root)
        janitor = Janitor(
            journal.clone(),
            reader,
            store,
            ttl=settings.job_ttl,
            interval=settings.janitor_interval,
        )
        await nursery.start(janitor.run)
        log.info(
            "janitor: started, pruning jobs finished over %s ago", format_duration(settings.job_ttl)
        )
        requeued = await recover(
            reader, journal, scheduler_send, max_attempts=settings.max_attempts
        )
        log.info("recovery: %d unfinished jobs queued again", requeued)
        upstream = Upstream(backend)
        worker = Worker(
            upstream,
            journal.clone(),
            scheduler_send.clone(),
            store,
            max_attempts=settings.max_attempts,
            job_timeout=settings.job_timeout,
            stream_stall=settings.stream_stall,
            loaded=await _loaded_model(upstream),
        )
        worker_scope, worker_done = trio.CancelScope(), trio.Event()
        nursery.start_soon(_run_worker, worker, worker_scope, worker_done)
        log.info("worker: started, backend %s", backend)
        gateway = Gateway(
            journal,
            scheduler_send,
            upstream,
            settings.max_body,
            passthrough=Bound(settings.max_passthrough),
            passthrough_timeout=settings.passthrough_timeout,
        )
        desk = JobDesk(
            journal,
            scheduler_send,
            reader,
            store,
            settings.artifact_inline_max,
            listings=Bound(settings.max_listings),
            listing_reader=await nursery.start(Reader(settings.db).run),
            allowed_hosts=settings.allowed_hosts,
        )
        app = create_app(gateway, desk, body_timeout=settings.body_timeout)
        stop_accepting = trio.Event()
        url = await nursery.start(
            partial(
                serve_http,
                app,
                settings.address,
                send_timeout=STALLED_CONNECTION_CUT * settings.stream_stall,
                header_timeout=settings.header_timeout,
                shutdown_trigger=stop_accepting.wait,
            )
        )
        log.info("http: listening on %s", url)
        sender = Sender(
            key=settings.webhook_key,
            timeout=settings.webhook_timeout,
            allowed_hosts=settings.allowed_hosts,
            connections=settings.webhook_concurrency,
        )
        dispatcher = Dispatcher(
            journal.clone(),
            reader,
            sender,
            policy=RetryPolicy(settings.webhook_backoff, settings.webhook_max_retries),
            concurrency=settings.webhook_concurrency,
            base_url=settings.public_url or url,
        )
        if settings.public_url is None and settings.address.host in ("0.0.0.0", "::"):
            log.warning(
                "webhook payloads link artifacts under %s; set FOREMAN_PUBLIC_URL to the "
                "address receivers reach Foreman at",
                url,
            )
        await nursery.start(dispatcher.run)
        log.info(
            "dispatcher: started, webhooks %s",
            "signed" if sender.signed else "unsigned (FOREMAN_WEBHOOK_SECRET is not set)",
        )
        task_status.started(Running(url, journal))

        await stop.wait()
        log.info("stopping: no new requests; the running job has %.1f s", settings.shutdown_grace)
        stop_accepting.set()
        worker.drain()
        with trio.move_on_after(settings.shutdown_grace):
            await worker_done.wait()
        # Past the grace the running job is requeued, while the journal still takes it.
        worker_scope.cancel()
        await worker_done.wait()
        nursery.cancel_scope.cancel()
    await upstream.aclose()
    await sender.aclose()
    log.info("stopped")


async def _run_worker(worker: Worker, scope: trio.CancelScope, done: trio.Event) -> None:
    try:
        with scope:
            await worker.run()
    finally:
        done.set()


async def _loaded_model(upstream: Upstream) -> str | None:
    """The model the backend has loaded now (``/api/ps``), so the first pick can use it."""
    try:
        status, content, _ = await upstream.probe("/api/ps")
    except Unavailable:
        return None
    models = json.loads(content).get("models") if status == 200 else None
    return model_key(models[0]["name"]) if models else None
