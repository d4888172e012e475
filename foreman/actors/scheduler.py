"""The scheduler: owns the queue of jobs waiting for the GPU, hands the next one out.

Everything else talks to it through a :class:`SchedulerClient`, which
:meth:`Scheduler.run` reports once started: the front doors and recovery
``submit`` (``submit_waiting``), ``requeue``, ``cancel`` and ask a job's ``position``; a worker asks
for its ``next_job``, says when a call is ``done``, and queues a ``retry``.
The messages behind those calls are private to this module.

It answers a worker only when it has a job, and picks that job at that
moment, so the drain-by-model choice always sees the current queue and the
model loaded now (:mod:`foreman.scheduling`). Each worker runs one slot of a
backend host; the scheduler knows every host (what it may run and has
installed, what it has loaded, whether an operator drained it: the prober and
the operator tell it) and picks for the asking worker's host by the fleet rule
(``JobQueue.peek_for``, ADR-0035), learning how long jobs and loads take from
what the workers report.

A worker keeps one job waiting at the backend behind the one running, so the
GPU goes from one to the next without waiting for Foreman (ADR-0026). While a
worker's call is in flight, it is given only a job the rule would pick next
*and* that needs no model swap: a swap waits until the backend is free, so a
job for the loaded model arriving meanwhile still goes first.

``submit`` (and ``submit_waiting``, for a caller waiting on its answer) keeps the
queue within ``max_queue``, and each tenant's jobs within its ``max_queued``: it
reserves a place before the job is committed, so a job refused as
:class:`QueueFull` or :class:`TenantQueueFull` leaves no trace. A waiting caller's
job is offered with its admission: with nothing queued, a free worker takes it at
once, before its ``JobSubmitted`` is committed (ADR-0048). A cancelled
job still queued never runs: the scheduler records ``JobCancelled``; one already
at the backend is the worker's to stop, so the stop goes on to it.

Tenants share each model's queue by weight (``JobQueue``'s fair order, ADR-0042),
and a tenant's batch lines hold at most its ``batch_share`` of the worker slots of
the hosts that take work; its limits come from ``limits``, asked as they are needed,
so a change of them counts from then on.

What the scheduler records itself (a cancel, a host going down or drained) it
hands to the journal in order and goes on serving: an answer that needs the
commit waits for it beside the loop, so while the log cannot be written
(ADR-0041) queue positions and hosts are still answered.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Literal

import trio

from foreman.actors._reply import Reply, deliver
from foreman.actors.journal import JournalClient
from foreman.actors.worker import Answer, Stop, Took, Work
from foreman.events.tenants import NO_LIMITS, Limits
from foreman.events.types import (
    BackendDown,
    BackendDrained,
    BackendResumed,
    BackendUp,
    Event,
    JobCancelled,
    JobStarted,
    JobSubmitted,
    RecordedEvent,
    backend_stream,
)
from foreman.ids import new_ulid
from foreman.scheduling import Costs, HostView, JobQueue, QueuedJob, model_name

INBOX = 1024
"""Requests the scheduler's inbox holds before its clients wait."""
OFFERED = 0
"""The arrival of a job sent at once (:class:`_Admit`'s offer): it arrived before any job queued
since, and keeps that place should it be queued again for a retry."""

CancelOutcome = Literal["cancelled", "stopping", "not_found"]
"""``cancelled``: it was queued and ``JobCancelled`` is committed; ``stopping``: it
is at the backend and its worker stops it; ``not_found``: neither (finished)."""


class QueueFull(Exception):
    """FOREMAN_MAX_QUEUE jobs wait already: the job was not submitted."""


class TenantQueueFull(Exception):
    """The tenant has as many jobs queued as its ``max_queued`` (batch lines aside):
    the job was not submitted."""

    def __init__(self, tenant: str | None, limit: int) -> None:
        super().__init__(f"tenant {tenant} has {limit} jobs queued, its limit")
        self.tenant = tenant
        self.limit = limit


class ModelNotFound(Exception):
    """No backend host has the job's model (as far as the probes know), nor may get it
    by configuration: the job was not submitted."""


@dataclass(frozen=True, slots=True)
class HostStatus:
    """One backend host as the scheduler knows it."""

    name: str
    loaded: str | None
    """The model key it has loaded, or is loading for the job it was given."""
    installed: frozenset[str] | None
    """The models it has (``/api/tags``), None until known."""
    allowed: frozenset[str] | None
    """The models it may run (configured), None: any it has."""
    running: int
    """Jobs at its backend now."""
    done: int
    """Jobs it finished since Foreman started."""
    loads: int
    """Jobs it was given that needed another model loaded, since Foreman started."""
    draining: bool
    """An operator drained it: it finishes what it runs and takes nothing more."""
    up: bool
    """It answers; a down host is given nothing until a probe finds it answering."""

    def can_run(self, model: str) -> bool:
        """Whether a job for ``model`` (a canonical name) may go to this host."""
        return _can_run(model, self.allowed, self.installed)

    @property
    def takes_work(self) -> bool:
        """Up, and not drained."""
        return self.up and not self.draining


def _can_run(model: str, allowed: frozenset[str] | None, installed: frozenset[str] | None) -> bool:
    return (allowed is None or model in allowed) and (installed is None or model in installed)


@dataclass(frozen=True, slots=True)
class Queued:
    """A submitted job: ``JobSubmitted`` is committed and the job is in the queue."""

    job_id: str
    created_at: str
    """When ``JobSubmitted`` was recorded."""
    position: int | None
    """Jobs that run before it (None: it already left the queue)."""


class SchedulerClient:
    """A handle on the scheduler, as :class:`~foreman.actors.journal.JournalClient` is
    on the journal; cheap to copy with :meth:`clone`."""

    def __init__(self, requests: trio.MemorySendChannel[_Message], journal: JournalClient) -> None:
        self._requests = requests
        self._journal = journal

    def clone(self) -> SchedulerClient:
        return SchedulerClient(self._requests.clone(), self._journal.clone())

    async def submit(self, submitted: JobSubmitted) -> Queued:
        """Admit a new job (raises :class:`QueueFull` beyond ``max_queue``,
        :class:`TenantQueueFull` beyond its tenant's ``max_queued``,
        :class:`ModelNotFound` when no host has its model), commit its
        ``JobSubmitted``, and queue it."""
        job_id = new_ulid()
        async with self._admitted(submitted):
            (event,) = await self._journal.append(job_id, [submitted], expected_version=0)
            position: Reply[int | None] = Reply()
            work = Work(_queued_job(job_id, event, submitted), submitted.kind, _body(submitted), 0)
            await deliver(self._requests, _Queue(work, admitted=True, position=position))
        return Queued(job_id, event.recorded_at, await position.wait())

    async def submit_waiting(
        self, submitted: JobSubmitted, body: bytes, answers: trio.MemorySendChannel[Answer]
    ) -> str:
        """Admit a new job whose caller waits for its answer on ``answers`` (``body``:
        the backend request as the caller sent it); raises as :meth:`submit` does.

        When nothing waits in the queue and a worker that can run it is free, it goes
        to that worker at once, before its ``JobSubmitted`` is committed, and its answer
        waits for that commit; with nothing at that worker's backend it starts at once,
        and its ``JobStarted`` shares the commit (ADR-0048). Otherwise it is queued
        once committed."""
        job_id = new_ulid()
        logged: Reply[list[RecordedEvent]] = Reply()
        queued = QueuedJob.of(job_id, OFFERED, submitted, trio.current_time())
        work = Work(queued, submitted.kind, body, 0, answers=answers, logged=logged)
        async with self._admitted(submitted, offer=work) as taken:
            events: list[Event] = [submitted]
            if taken is not None and taken.starts:
                events.append(JobStarted(attempt=1, backend=taken.host))
            try:
                recorded = await self._journal.append(job_id, events, expected_version=0)
            except Exception as error:
                logged.put(error)  # for the worker that has it, if one does
                raise
            logged.put(recorded)
            if taken is None:
                work = replace(work, job=_queued_job(job_id, recorded[0], submitted), logged=None)
                await deliver(self._requests, _Queue(work, admitted=True))
        return job_id

    @asynccontextmanager
    async def _admitted(
        self, submitted: JobSubmitted, *, offer: Work | None = None
    ) -> AsyncIterator[_Taken | None]:
        """A place in the queue reserved for a new job, or the job (``offer``) taken at
        once by a free worker, which it yields (see :class:`_Admit`). Shielded: the
        place is taken, or given back when the block fails."""
        admitted: Reply[bool | _Taken] = Reply()
        tenant = submitted.tenant
        model = model_name(submitted.model)
        await deliver(self._requests, _Admit(model, tenant, admitted, offer))
        answer = await admitted.wait()
        if answer is False:
            raise QueueFull
        taken = answer if isinstance(answer, _Taken) else None
        with trio.CancelScope(shield=True):
            try:
                yield taken
            except BaseException:
                if taken is None:
                    await deliver(self._requests, _Release(tenant))
                raise

    async def submit_lines(self, lines: Sequence[JobSubmitted]) -> list[str]:
        """Commit and queue a batch's lines; their ids, in order. Lines are outside
        ``max_queue`` (a batch input's own limits bound them). Their appends are handed
        to the journal together, so they are committed a few thousand at a time, and
        they join the queue at once, when all are committed: a host draining one
        model never runs dry while more of its lines are still on their way."""
        ids = [new_ulid() for _ in lines]
        replies = [
            await self._journal.enqueue(job_id, [line], expected_version=0)
            for job_id, line in zip(ids, lines, strict=True)
        ]
        works = []
        for job_id, line, reply in zip(ids, lines, replies, strict=True):
            (event,) = await reply.wait()
            queued = QueuedJob.of(job_id, event.seq, line, trio.current_time())
            works.append(Work(queued, line.kind, _body(line), attempts=0))
        await deliver(self._requests, _QueueMany(works))
        return ids

    async def withdraw(self, job_ids: Collection[str], reason: str) -> int:
        """Cancel those of ``job_ids`` that wait in the queue (``JobCancelled``, committed
        together); the ones at a backend run on. Returns how many were cancelled."""
        reply: Reply[list[str]] = Reply()
        await deliver(self._requests, _Withdraw(frozenset(job_ids), reply))
        withdrawn = await reply.wait()
        cancelled = [JobCancelled(reason=reason)]
        replies = [await self._journal.enqueue(job_id, cancelled) for job_id in withdrawn]
        for committed in replies:
            await committed.wait()
        return len(withdrawn)

    async def requeue(
        self, job_id: str, submitted: JobSubmitted, *, arrival: int, attempts: int, waited: float
    ) -> None:
        """Queue a job the log holds as queued (recovery), in its place of ``arrival``
        (the seq of its ``JobSubmitted``), as if it had waited ``waited`` seconds."""
        queued = QueuedJob.of(job_id, arrival, submitted, trio.current_time() - waited)
        work = Work(queued, submitted.kind, _body(submitted), attempts)
        await deliver(self._requests, _Queue(work))

    async def cancel(self, job_id: str, reason: str) -> CancelOutcome:
        outcome: Reply[CancelOutcome] = Reply()
        await deliver(self._requests, _Cancel(job_id, reason, outcome))
        return await outcome.wait()

    async def cancel_soon(self, job_id: str, reason: str) -> None:
        """Hand a cancel over without waiting for its outcome: for a caller leaving."""
        await deliver(self._requests, _Cancel(job_id, reason, None))

    async def position(self, job_id: str) -> int | None:
        """How many jobs run before this queued one (None: it is not queued)."""
        reply: Reply[int | None] = Reply()
        await deliver(self._requests, _Position(job_id, reply))
        return await reply.wait()

    async def next_job(self, host: str, stops: trio.MemorySendChannel[Stop]) -> Work:
        """The next job for a worker of ``host``; waits until there is one. Stops for
        the jobs it is given come on ``stops``."""
        reply: Reply[Work] = Reply()
        await deliver(self._requests, _Ready(host, reply, stops))
        return await reply.wait()

    async def host_seen(
        self, host: str, *, loaded: str | None, installed: frozenset[str] | None
    ) -> None:
        """What a host has loaded (a model key, from ``/api/ps``) and installed (model
        names, ``/api/tags``), as a probe found it. While the host runs jobs, the
        scheduler knows better what it has loaded, and keeps its own."""
        await deliver(self._requests, _HostSeen(host, loaded, installed))

    async def host_down(self, host: str, reason: str, *, model: str | None = None) -> bool:
        """``host`` stopped answering: record ``BackendDown`` (once) and give it no
        work. True when another host that is up can run ``model``: a job of it that
        the host lost runs there, without counting the attempt."""
        reply: Reply[bool] = Reply()
        await deliver(self._requests, _Health(host, False, reason, model, reply))
        return await reply.wait()

    async def host_up(self, host: str) -> None:
        """A probe found ``host`` answering: record ``BackendUp`` if it was down."""
        reply: Reply[bool] = Reply()
        await deliver(self._requests, _Health(host, True, "", None, reply))
        await reply.wait()

    async def drain(self, host: str) -> HostStatus:
        """Let ``host`` finish the jobs it runs and give it no more (``BackendDrained``);
        raises LookupError for a host not in the fleet."""
        return await self._set_draining(host, draining=True)

    async def resume(self, host: str) -> HostStatus:
        """Give ``host`` work again (``BackendResumed``)."""
        return await self._set_draining(host, draining=False)

    async def _set_draining(self, host: str, *, draining: bool) -> HostStatus:
        reply: Reply[HostStatus] = Reply()
        await deliver(self._requests, _Drain(host, draining, reply))
        return await reply.wait()

    async def hosts(self) -> list[HostStatus]:
        """Every host, in the order they were made known."""
        reply: Reply[list[HostStatus]] = Reply()
        await deliver(self._requests, _Hosts(reply))
        return await reply.wait()

    async def done(self, job_id: str, took: Took | None = None) -> None:
        """The worker's backend call for this job ended: the job left the GPU, after
        ``took`` at the backend (as the backend reports it, if it does)."""
        await deliver(self._requests, _Done(job_id, took))

    async def retry(self, work: Work, delay: float) -> None:
        """Queue a job again after a failed attempt, to run ``delay`` seconds from now.
        The scheduler holds it meanwhile, so a cancel still finds it."""
        await deliver(self._requests, _Queue(work, not_before=trio.current_time() + delay))


@dataclass(frozen=True, slots=True)
class _Queue:
    """A job to queue: just submitted, recovered, or back for a retry."""

    work: Work
    admitted: bool = False
    """It holds a place :class:`_Admit` reserved for it."""
    not_before: float = -math.inf
    """Trio time before which it may not run: a retry's backoff."""
    position: Reply[int | None] | None = None
    """Where to answer its queue position once it is queued."""


@dataclass(frozen=True, slots=True)
class _Taken:
    """An offered job a free worker took at once: its host's name."""

    host: str
    starts: bool
    """Nothing else is at that worker's backend: it starts now."""


@dataclass(frozen=True, slots=True)
class _Cancel:
    job_id: str
    reason: str
    outcome: Reply[CancelOutcome] | None


@dataclass(frozen=True, slots=True)
class _QueueMany:
    """Jobs to queue together (a batch's lines)."""

    works: list[Work]


@dataclass(frozen=True, slots=True)
class _Withdraw:
    """Take these jobs out of the queue if they wait there; the reply names those taken
    (their ``JobCancelled`` is the caller's to record)."""

    job_ids: frozenset[str]
    reply: Reply[list[str]]


@dataclass(frozen=True, slots=True)
class _Position:
    job_id: str
    reply: Reply[int | None]


@dataclass(frozen=True, slots=True)
class _Ready:
    """A worker of ``host`` asks for its next job."""

    host: str
    reply: Reply[Work]
    stops: trio.MemorySendChannel[Stop]


@dataclass(frozen=True, slots=True)
class _HostSeen:
    host: str
    loaded: str | None
    installed: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class _Hosts:
    reply: Reply[list[HostStatus]]


@dataclass(frozen=True, slots=True)
class _Health:
    host: str
    up: bool
    reason: str
    model: str | None
    reply: Reply[bool]


@dataclass(frozen=True, slots=True)
class _Drain:
    host: str
    draining: bool
    reply: Reply[HostStatus]


@dataclass(frozen=True, slots=True)
class _Done:
    job_id: str
    took: Took | None


@dataclass(frozen=True, slots=True)
class _Admit:
    """May one more job of ``tenant`` for ``model`` queue? True reserves its place
    (``max_queue``, and its tenant's ``max_queued``) until its :class:`_Queue` comes,
    or a :class:`_Release` gives the place back; :class:`TenantQueueFull` when the
    tenant has its limit queued, :class:`ModelNotFound` when no host has the model.

    ``offer``: the job itself, its ``JobSubmitted`` not committed yet, for a free
    worker to take at once when nothing waits in the queue (ADR-0048): then the answer
    is :class:`_Taken` and no place is held."""

    model: str
    tenant: str | None
    reply: Reply[bool | _Taken]
    offer: Work | None = None


@dataclass(frozen=True, slots=True)
class _Release:
    """A job admitted for ``tenant`` will not come after all."""

    tenant: str | None


_Message = (
    _Queue
    | _QueueMany
    | _Ready
    | _Done
    | _Cancel
    | _Withdraw
    | _Position
    | _Admit
    | _Release
    | _HostSeen
    | _Hosts
    | _Drain
    | _Health
)


@dataclass(frozen=True, slots=True)
class _AtBackend:
    """A job a worker has sent to its host's backend."""

    stops: trio.MemorySendChannel[Stop]
    model_key: str
    tenant: str | None
    batch: bool
    host: str
    sent_at: float
    """Trio time it was handed to the worker."""
    swapped: bool
    """It needed its host to load another model."""


@dataclass(slots=True)
class _Host:
    name: str
    allowed: frozenset[str] | None = None
    installed: frozenset[str] | None = None
    loaded: str | None = None
    done: int = 0
    loads: int = 0
    draining: bool = False
    up: bool = True
    last_done: float = -math.inf
    """Trio time its last call ended: a call sent behind it starts then."""
    batch_model: str | None = None
    """The model key of the last batch line it was given."""

    def can_run(self, model: str) -> bool:
        return _can_run(model, self.allowed, self.installed)

    @property
    def takes_work(self) -> bool:
        return self.up and not self.draining


class Scheduler:
    def __init__(
        self,
        journal: JournalClient,
        max_wait: float,
        max_queue: int,
        hosts: dict[str, frozenset[str] | None] | None = None,
        drained: set[str] | frozenset[str] = frozenset(),
        limits: Callable[[str | None], Limits] = lambda _tenant: NO_LIMITS,
    ) -> None:
        """``hosts``: each host's name and the models it may run (None: any it has);
        a host not named here is added, allowed anything, when its first worker asks.
        ``drained``: hosts an operator drained (the log says so), which take no work.
        ``limits``: each tenant's weight and limits as they stand now."""
        self._journal = journal
        self.max_queue = max_queue
        self._limits = limits
        self._queue = JobQueue(max_wait, lambda tenant: limits(tenant).weight)
        self._hosts = {
            name: _Host(name, allowed, draining=name in drained)
            for name, allowed in (hosts or {}).items()
        }
        self._costs = Costs()
        self._work: dict[str, Work] = {}
        self._delayed: dict[str, Work] = {}
        self._due: list[tuple[float, str]] = []  # heap of (not_before, job) for _delayed
        self._reserved: Counter[str | None] = Counter()  # admitted, being committed
        self._ready: list[_Ready] = []
        self._slots: dict[trio.MemorySendChannel[Stop], str] = {}  # worker -> its host
        self._at_backend: dict[str, _AtBackend] = {}  # in the order they were sent
        self._lines_out: Counter[str | None] = Counter()  # batch lines at a backend
        self._loaded: str | None = None
        self._commits: trio.Nursery | None = None  # where answers wait for their commit

    async def run(
        self, *, task_status: trio.TaskStatus[SchedulerClient] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Report a client, then serve requests until every client is closed."""
        send, inbox = trio.open_memory_channel[_Message](INBOX)
        async with inbox, trio.open_nursery() as self._commits:
            task_status.started(SchedulerClient(send, self._journal))
            while True:
                try:
                    message = await self._next_message(inbox)
                except trio.EndOfChannel:
                    return
                if message is not None:  # else: a delayed job is due
                    await self._handle(message)
                self._release_due()
                if self._ready and self._queue:
                    self._dispatch()

    async def _next_message(self, inbox: trio.MemoryReceiveChannel[_Message]) -> _Message | None:
        """The next request; None when a delayed job comes due first."""
        if not self._due:
            return await inbox.receive()
        with trio.move_on_at(self._due[0][0]):
            return await inbox.receive()
        return None

    async def _handle(self, message: _Message) -> None:
        match message:
            case _Queue(work=work):
                job_id = work.job.job_id
                if message.admitted:
                    self._reserved[work.job.tenant] -= 1
                if message.not_before > trio.current_time():
                    self._delayed[job_id] = work
                    heapq.heappush(self._due, (message.not_before, job_id))
                else:
                    self._enqueue(work)
                if message.position is not None:
                    message.position.put(self._position(job_id))
            case _QueueMany():
                for work in message.works:
                    self._enqueue(work)
            case _Ready():
                self._host(message.host)
                self._slots[message.stops] = message.host
                self._ready.append(message)
            case _Done():
                self._done(self._at_backend.pop(message.job_id), message.took)
            case _HostSeen():
                host = self._host(message.host)
                host.installed = message.installed
                if not any(job.host == host.name for job in self._at_backend.values()):
                    host.loaded = message.loaded  # idle: someone may have used it directly
            case _Hosts():
                message.reply.put([self._status(host) for host in self._hosts.values()])
            case _Drain():
                await self._drain(message)
            case _Health():
                await self._health(message)
            case _Cancel():
                await self._cancel(message)
            case _Withdraw():
                message.reply.put(self._withdraw(message.job_ids))
            case _Position():
                message.reply.put(self._position(message.job_id))
            case _Admit():
                admitted = self._admit(message)
                if admitted is True and message.offer is not None:
                    message.reply.put(self._offer(message.offer) or True)
                else:
                    message.reply.put(admitted)
            case _Release():
                self._reserved[message.tenant] -= 1

    def _admit(self, admit: _Admit) -> bool | Exception:
        if self._hosts and not any(h.can_run(admit.model) for h in self._hosts.values()):
            return ModelNotFound(admit.model)
        limit = self._limits(admit.tenant).max_queued
        if limit is not None and self._queued_of(admit.tenant) >= limit:
            return TenantQueueFull(admit.tenant, limit)
        admitted = self._queued() + self._reserved.total() < self.max_queue
        if admitted:
            self._reserved[admit.tenant] += 1
        return admitted

    def _offer(self, work: Work) -> _Taken | None:
        """Which host's free worker takes the offered job now, if one does: only when
        nothing waits in the queue, so it goes ahead of no one; the fleet rule decides
        which worker."""
        if self._queue or not self._ready:
            return None
        job_id = work.job.job_id
        self._enqueue(work)
        self._dispatch()
        taken = self._at_backend.get(job_id)
        if taken is None:
            self._queue.remove(job_id)
            del self._work[job_id]
            return None
        self._reserved[work.job.tenant] -= 1
        return _Taken(taken.host, starts=self._alone(taken))

    def _alone(self, job: _AtBackend) -> bool:
        """Whether ``job`` is the only one at its worker's backend."""
        return sum(at.stops is job.stops for at in self._at_backend.values()) == 1

    def _host(self, name: str) -> _Host:
        return self._hosts.setdefault(name, _Host(name))

    def _status(self, host: _Host) -> HostStatus:
        running = sum(job.host == host.name for job in self._at_backend.values())
        return HostStatus(
            host.name,
            host.loaded,
            host.installed,
            host.allowed,
            running,
            host.done,
            host.loads,
            host.draining,
            host.up,
        )

    async def _record(
        self, stream: str, events: list[Event], then: Callable[[], None] | None = None
    ) -> None:
        """Hand ``events`` to the journal, behind whatever was handed to it before, and
        go on; ``then`` runs once they are committed."""
        committed = await self._journal.enqueue(stream, events)
        assert self._commits is not None  # set while running
        self._commits.start_soon(_after, committed, then)

    async def _health(self, health: _Health) -> None:
        """A host went down or came back, answered once recorded (once per change):
        whether another host that takes work can run the model."""
        host = self._host(health.host)
        model = health.model
        elsewhere = model is not None and any(
            other.takes_work and other.can_run(model)
            for other in self._hosts.values()
            if other is not host
        )
        if len(self._hosts) == 1 or host.up == health.up:  # alone, it is never passed over
            health.reply.put(elsewhere)
            return
        change = BackendUp() if health.up else BackendDown(reason=health.reason)
        host.up = health.up
        await self._record(backend_stream(host.name), [change], lambda: health.reply.put(elsewhere))

    async def _drain(self, drain: _Drain) -> None:
        """Drain or resume a host, answered once recorded; a change that is no change
        is not recorded."""
        host = self._hosts.get(drain.host)
        if host is None:
            drain.reply.put(LookupError(drain.host))
            return
        if host.draining == drain.draining:
            drain.reply.put(self._status(host))
            return
        change = BackendDrained() if drain.draining else BackendResumed()
        host.draining = drain.draining
        status = self._status(host)
        await self._record(backend_stream(host.name), [change], lambda: drain.reply.put(status))

    def _done(self, job: _AtBackend, took: Took | None) -> None:
        """A call ended: count it, and learn how long jobs and loads take."""
        host = self._hosts[job.host]
        if job.batch:
            self._lines_out[job.tenant] -= 1
        now = trio.current_time()
        started = max(job.sent_at, host.last_done)  # it waited behind the one before
        host.last_done = now
        host.done += 1
        if took is not None:
            self._costs.observe(job.model_key, took.run, took.load)
        elif not job.swapped:  # its wall time is the job's alone
            self._costs.observe(job.model_key, now - started)

    def _enqueue(self, work: Work) -> None:
        self._queue.push(work.job)
        self._work[work.job.job_id] = work

    def _release_due(self) -> None:
        """Queue the delayed jobs whose time has come."""
        now = trio.current_time()
        while self._due and self._due[0][0] <= now:
            _, job_id = heapq.heappop(self._due)
            work = self._delayed.pop(job_id, None)  # None: cancelled meanwhile
            if work is not None:
                self._enqueue(work)

    def _dispatch(self) -> None:
        now = trio.current_time()
        waiting = []
        for ready in self._ready:
            job = self._next_for(ready, now)
            if job is None:
                waiting.append(ready)
                continue
            self._queue.take(job.job_id)
            host = self._hosts[ready.host]
            swapped = host.loaded != job.model_key
            host.loads += swapped
            self._at_backend[job.job_id] = _AtBackend(
                ready.stops, job.model_key, job.tenant, job.batch, host.name, now, swapped
            )
            host.loaded = self._loaded = job.model_key
            if job.batch:
                host.batch_model = job.model_key
                self._lines_out[job.tenant] += 1
            work = self._work.pop(job.job_id)
            if work.logged is not None and self._alone(self._at_backend[job.job_id]):
                work = replace(work, start_logged=True)  # offered, and starts now
            ready.reply.put(work)
        self._ready = waiting

    def _queued(self) -> int:
        """Jobs not started yet: in the queue, or waiting behind another at the backend."""
        workers_busy = len({id(job.stops) for job in self._at_backend.values()})
        return self._queue.interactive + len(self._delayed) + len(self._at_backend) - workers_busy

    def _queued_of(self, tenant: str | None) -> int:
        """A tenant's jobs not started yet, batch lines aside: queued, held for a retry,
        waiting behind another at a backend, or admitted and being committed."""
        delayed = sum(w.job.tenant == tenant and not w.job.batch for w in self._delayed.values())
        running: set[int] = set()
        behind = 0
        for job in self._at_backend.values():  # in the order sent: each worker's first runs
            behind += id(job.stops) in running and job.tenant == tenant and not job.batch
            running.add(id(job.stops))
        return self._queue.waiting(tenant) + delayed + behind + self._reserved[tenant]

    def _held_back(self) -> set[str | None]:
        """Tenants whose batch lines hold their ``batch_share`` of the worker slots of the
        hosts that take work (at least one slot: a share never shuts a batch out)."""
        out = [(tenant, lines) for tenant, lines in self._lines_out.items() if lines]
        if not out:
            return set()
        slots = sum(self._hosts[host].takes_work for host in self._slots.values())
        held = set()
        for tenant, lines in out:
            share = self._limits(tenant).batch_share
            if share is not None and lines >= max(1, math.ceil(round(share * slots, 9))):
                held.add(tenant)
        return held

    def _next_for(self, ready: _Ready, now: float) -> QueuedJob | None:
        """The job for this worker now: the fleet rule's pick for its host, unless the
        host is busy and the pick would swap its model (a host's other slots, and a
        job sent behind the running one, only run the model it has loaded), or the
        pick is a batch's line and the worker has a call in flight, or a job was
        admitted and is being committed: a line is never sent to wait behind
        another, nor ahead of a job already submitted, so a job arriving meanwhile
        waits for one running job at most."""
        host = self._hosts[ready.host]
        if not host.takes_work:
            return None
        busy = [a.model_key for a in self._at_backend.values() if a.host == host.name]
        loaded = busy[-1] if busy else host.loaded
        elsewhere = Counter(
            other.loaded
            for other in self._hosts.values()
            if other is not host and other.loaded is not None and other.takes_work
        )
        view = HostView(
            loaded,
            host.can_run,
            elsewhere,
            self._worth_sharing,
            host.batch_model,
            self._held_back(),
        )
        job = self._queue.peek_for(view, now)
        if busy and job is not None and job.model_key != loaded:
            return None
        if job is not None and job.batch and (self._reserved.total() or self._sent_to(ready)):
            return None
        return job

    def _sent_to(self, ready: _Ready) -> bool:
        """Whether the worker has a call at the backend."""
        return any(at.stops is ready.stops for at in self._at_backend.values())

    def _worth_sharing(self, key: str, hosts: int) -> bool:
        return self._costs.worth_sharing(self._queue.backlog(key), key, hosts)

    def _position(self, job_id: str) -> int | None:
        """Jobs that run before ``job_id``: those at the backend, then the queue's order."""
        if job_id in self._at_backend:
            return list(self._at_backend).index(job_id)  # behind the running one
        work = self._work.get(job_id) or self._delayed.get(job_id)
        if work is None:
            return None
        return len(self._at_backend) + self._queue.position(work.job, self._loaded)

    async def _cancel(self, cancel: _Cancel) -> None:
        outcome: CancelOutcome = "not_found"
        if self._queue.remove(cancel.job_id) is not None:
            await self._cancel_queued(self._work.pop(cancel.job_id), cancel)
            return
        if cancel.job_id in self._delayed:
            await self._cancel_queued(self._delayed.pop(cancel.job_id), cancel)
            return
        if cancel.job_id in self._at_backend:
            await self._at_backend[cancel.job_id].stops.send(Stop(cancel.job_id, cancel.reason))
            outcome = "stopping"
        if cancel.outcome is not None:
            cancel.outcome.put(outcome)

    def _withdraw(self, job_ids: frozenset[str]) -> list[str]:
        withdrawn = []
        for job_id in job_ids:
            if self._queue.remove(job_id) is not None:
                del self._work[job_id]
            elif self._delayed.pop(job_id, None) is None:
                continue
            withdrawn.append(job_id)
        return withdrawn

    async def _cancel_queued(self, work: Work, cancel: _Cancel) -> None:
        """A job taken out of the queue is cancelled: once that is committed, its caller
        (if waiting) is let go and the canceller told."""

        def cancelled() -> None:
            if work.answers is not None:
                work.answers.close()
            if cancel.outcome is not None:
                cancel.outcome.put("cancelled")

        await self._record(work.job.job_id, [JobCancelled(reason=cancel.reason)], cancelled)


def _queued_job(job_id: str, event: RecordedEvent, submitted: JobSubmitted) -> QueuedJob:
    """A job queued once its ``JobSubmitted`` (``event``) is committed: it arrived then."""
    return QueuedJob.of(job_id, event.seq, submitted, trio.current_time())


def _body(submitted: JobSubmitted) -> bytes:
    """The backend request of a job submitted without the caller's own bytes."""
    return json.dumps(submitted.request).encode()


async def _after(committed: Reply[list[RecordedEvent]], then: Callable[[], None] | None) -> None:
    """Wait for a commit, then run ``then``; a refused append fails the scheduler."""
    await committed.wait()
    if then is not None:
        then()
