"""The supervisor: one Trio nursery hosting Foreman's actors, wired by memory channels.

Start order: the simulators (``sim`` backends), the journal (it opens the log
and catches the projections up), the Reader, the scheduler, the prober (every
host probed before any worker asks for a job), the janitor, the metrics (they
follow the commits from before recovery's on), crash recovery, the
workers (one per host slot), the HTTP actor (nothing is accepted before it can
be kept), and the webhook dispatcher, whose links need the URL the HTTP actor got;
it delivers whatever became pending before it started.
An actor that fails cancels the nursery: Foreman stops loudly, never half-alive.

Stopping (SIGINT/SIGTERM): stop accepting, let the running jobs finish within
``shutdown_grace`` (else they are requeued as interrupted), then stop the rest;
every commit already sent to the journal completes, unless the log cannot be
written (ADR-0041): then Foreman stops without them, says so, and recovery runs
those jobs again at the next start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio
from fastapi import FastAPI

from foreman.actors import (
    Batcher,
    Dispatcher,
    Instruments,
    Janitor,
    Journal,
    JournalClient,
    JournalFailed,
    JournalStatus,
    Metrics,
    Prober,
    Scheduler,
    Worker,
    serve_http,
)
from foreman.api import BatchesApi, Bound, FrontDoor, JobsApi, Keychain, KeysApi, create_app
from foreman.artifacts import ArtifactStore
from foreman.backend import Backend
from foreman.config import SIM, ConfigError, Settings
from foreman.events import EventLog, Reader
from foreman.events.queries import drained_backends
from foreman.events.tenants import Keyring, read_keyring
from foreman.logs import log_transitions
from foreman.recovery import recover
from foreman.simulator import SimulatorConfig, serve_simulator
from foreman.units import format_duration
from foreman.webhooks import GuardedNetwork, RetryPolicy, Sender, Targets

logger = logging.getLogger(__name__)

STALLED_CONNECTION_CUT = 2
"""A connection taking no data for this many FOREMAN_STREAM_STALLs is cut by the kernel:
by then its job was cancelled as ``client_stalled`` (the worker is the first to know)."""


@dataclass(frozen=True, slots=True)
class Running:
    """A started Foreman: where it serves, its journal (to follow its commits), and the
    app it serves (its routes)."""

    url: str
    journal: JournalClient
    app: FastAPI


class Unprotected(ConfigError):
    """Foreman would listen beyond loopback with nobody's key asked for."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            [
                f"Foreman would listen on {settings.address}, beyond loopback, with no API "
                "key issued: anyone who can reach it could use it",
                f"create an admin key first: foreman keys create --db {settings.db} "
                "--tenant NAME --admin",
                "or, if something in front of Foreman authenticates, set FOREMAN_AUTH=off",
            ]
        )


def protected_keyring(settings: Settings) -> Keyring:
    """The keys issued in the log (none if there is no log yet); raises
    :class:`Unprotected` when Foreman would listen beyond loopback with none of them
    live and ``FOREMAN_AUTH`` is not ``off``."""
    db = settings.db
    keyring = Keyring()
    if db.is_file() and db.stat().st_size > 0:
        log = EventLog.open(db, read_only=True)
        try:
            keyring = read_keyring(log)
        finally:
            log.close()
    if settings.auth == "keys" and not settings.on_loopback and not keyring.in_use:
        raise Unprotected(settings)
    return keyring


DEMO_SIMULATOR = SimulatorConfig(listen="127.0.0.1:0", load_latency=2.0, token_latency=0.05)
"""``--backend sim``: model loads and tokens take time, so a demo shows the queue at work."""


async def run_foreman(
    settings: Settings,
    stop: trio.Event,
    *,
    simulator: SimulatorConfig = DEMO_SIMULATOR,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run Foreman until ``stop`` is set; reports :class:`Running` once ready.

    Raises :class:`Unprotected`, before anything starts, when it would listen beyond
    loopback with no key issued and ``FOREMAN_AUTH`` is not ``off``."""
    keychain = Keychain(
        await trio.to_thread.run_sync(protected_keyring, settings),
        required=settings.auth == "keys",
        loopback=settings.on_loopback,
    )
    async with trio.open_nursery() as nursery:
        backends = await _start_backends(nursery, settings, simulator)
        instruments = Instruments()
        journal = await nursery.start(
            Journal(settings.db, durability=settings.durability, observe=instruments.committed).run
        )
        logger.info("journal: started on %s", settings.db)
        nursery.start_soon(log_transitions, await journal.subscribe())
        reader = await nursery.start(Reader(settings.db).run)
        hosts = {spec.name: spec.models for spec in settings.backends}
        drained = await reader.read(drained_backends, list(hosts))
        scheduler = await nursery.start(
            Scheduler(
                journal.clone(),
                settings.max_wait,
                settings.max_queue,
                hosts,
                drained,
                limits=keychain.limits,
            ).run
        )
        logger.info(
            "scheduler: started; drained backends: %s", ", ".join(sorted(drained)) or "none"
        )
        prober = Prober(backends, scheduler.clone(), interval=settings.probe_interval)
        await nursery.start(prober.run)
        logger.info("prober: started, %d backend hosts", len(backends))
        store = ArtifactStore(settings.artifact_root)
        janitor = Janitor(
            journal.clone(),
            reader,
            store,
            ttl=settings.job_ttl,
            interval=settings.janitor_interval,
        )
        await nursery.start(janitor.run)
        logger.info(
            "janitor: started, pruning jobs finished over %s ago", format_duration(settings.job_ttl)
        )
        slots = {spec.name: spec.slots for spec in settings.backends}
        metrics = await nursery.start(
            Metrics(journal, scheduler.clone(), reader, instruments, slots).run
        )
        logger.info("metrics: started")
        requeued = await recover(reader, journal, scheduler, max_attempts=settings.max_attempts)
        logger.info("recovery: %d unfinished jobs queued again", requeued)
        batcher = await nursery.start(Batcher(journal.clone(), reader, scheduler, store).run)
        workers = [
            Worker(
                backends[spec.name],
                journal.clone(),
                scheduler.clone(),
                host=spec.name,
                max_attempts=settings.max_attempts,
                job_timeout=settings.job_timeout,
                stream_stall=settings.stream_stall,
            )
            for spec in settings.backends
            for _slot in range(spec.slots)
        ]
        workers_scope, workers_done = trio.CancelScope(), trio.Event()
        nursery.start_soon(_run_workers, workers, workers_scope, workers_done)
        logger.info("workers: %d started, one per backend slot", len(workers))
        door = FrontDoor(
            scheduler,
            backends,
            passthrough=Bound(settings.max_passthrough),
            passthrough_timeout=settings.passthrough_timeout,
            max_wait=settings.max_wait,
        )
        jobs = JobsApi(
            journal,
            scheduler,
            reader,
            store,
            settings.artifact_inline_max,
            listings=Bound(settings.max_listings),
            listing_reader=await nursery.start(Reader(settings.db).run),
            webhook_targets=Targets(settings.allowed_hosts),
        )
        app = create_app(
            door,
            jobs,
            BatchesApi(journal, reader, store, batcher),
            KeysApi(journal, keychain),
            metrics,
            max_body=settings.max_body,
            body_timeout=settings.body_timeout,
            origins=settings.origins.split(",") if settings.origins else (),
            loopback=settings.on_loopback,
            scrape_token=token.get_secret_value() if (token := settings.metrics_token) else None,
        )
        stop_accepting = trio.Event()
        url = await nursery.start(_serve, app, settings, stop_accepting)
        logger.info("http: listening on %s", url)
        sender = await _start_dispatcher(nursery, settings, journal, reader, url)
        task_status.started(Running(url, journal, app))

        await stop.wait()
        logger.info("stopping: no new requests; running jobs have %.1f s", settings.shutdown_grace)
        stop_accepting.set()
        for worker in workers:
            worker.drain()
        with trio.move_on_after(settings.shutdown_grace):
            await workers_done.wait()
        # Past the grace running jobs are requeued, while the journal still takes it.
        workers_scope.cancel()
        await _settled(workers_done, journal.status)
        nursery.cancel_scope.cancel()
    for backend in backends.values():
        await backend.aclose()
    await sender.aclose()
    logger.info("stopped")


async def _serve(
    app: FastAPI,
    settings: Settings,
    stop_accepting: trio.Event,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The HTTP actor, until ``stop_accepting`` is set; reports its URL."""
    await serve_http(
        app,
        str(settings.address),
        send_timeout=STALLED_CONNECTION_CUT * settings.stream_stall,
        header_timeout=settings.header_timeout,
        shutdown_trigger=stop_accepting.wait,
        task_status=task_status,
    )


async def _start_dispatcher(
    nursery: trio.Nursery, settings: Settings, journal: JournalClient, reader: Reader, url: str
) -> Sender:
    """Start the webhook dispatcher; its sender, for closing when Foreman stops."""
    sender = Sender(
        key=settings.webhook_key,
        timeout=settings.webhook_timeout,
        network=GuardedNetwork(Targets(settings.allowed_hosts)),
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
        logger.warning(
            "webhook payloads link artifacts under %s; set FOREMAN_PUBLIC_URL to the "
            "address receivers reach Foreman at",
            url,
        )
    await nursery.start(dispatcher.run)
    logger.info(
        "dispatcher: started, webhooks %s",
        "signed" if sender.signed else "unsigned (FOREMAN_WEBHOOK_SECRET is not set)",
    )
    return sender


async def _start_backends(
    nursery: trio.Nursery, settings: Settings, simulator: SimulatorConfig
) -> dict[str, Backend]:
    """A client for each backend host, by name; a simulator started for each ``sim``."""
    backends: dict[str, Backend] = {}
    for spec in settings.backends:
        url = spec.url
        if url == SIM:
            url = await nursery.start(serve_simulator, simulator)
        backends[spec.name] = Backend(url, slots=spec.slots)
        logger.info("backend %s: %s, %d slot(s)", spec.name, url, spec.slots)
    return backends


async def _settled(workers_done: trio.Event, log: JournalStatus) -> None:
    """Until the workers have recorded what they hold, or, the log being unwritable,
    until it is clear they cannot: stopping must not wait for the disk."""
    async with trio.open_nursery() as nursery:

        async def give_up_when_unwritable() -> None:
            while (fault := log.fault) is None:
                await log.changed()
            logger.error(
                "stopping while the event log cannot be written: what was not recorded is "
                "lost, and the jobs it belongs to run again at the next start (%s)",
                fault.reason,
            )
            nursery.cancel_scope.cancel()

        nursery.start_soon(give_up_when_unwritable)
        await workers_done.wait()
        nursery.cancel_scope.cancel()


async def _run_workers(workers: list[Worker], scope: trio.CancelScope, done: trio.Event) -> None:
    try:
        with scope:
            async with trio.open_nursery() as nursery:
                for worker in workers:
                    nursery.start_soon(worker.run)
    except* JournalFailed:
        # The journal stopped under them: Foreman stops while the log cannot be
        # written (_settled), or for the journal's own failure, which it reports.
        logger.warning("workers: stopped with outcomes the log did not take")
    finally:
        done.set()
