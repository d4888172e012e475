"""Which queued job runs next: priority, then drain-by-model, with a starvation bound,
and tenants sharing each model's queue by weight.

The rule, applied by :meth:`JobQueue.pick`:

1. When a job has waited ``max_wait`` or longer, the longest-waiting one's model at
   its priority goes next, whatever the loaded model and the priorities queued.
2. Otherwise, at the highest priority queued: the loaded model, if it has jobs
   there; else the model of the oldest job there.

Within the chosen model (at that priority), jobs go in *fair order* between
tenants (ADR-0042): start-time fair queueing. A tenant's jobs there form its line,
oldest first: the k-th (from 0) has the tag ``start + k * share``, where ``share``
is :data:`SHARE_SCALE` / the tenant's weight (read from ``weight`` when one of its
jobs is queued). The next job is the one with the smallest tag, the older of two
with the same. The model's queue keeps a clock, the tag of the job it gave out
last; taking a job moves its tenant's ``start`` on by one share; a tenant with no
job queued there starts at the clock, or where its line stood when it last
emptied, if that is later. So a tenant that arrives behind another's thousand jobs
runs after at most one more of them, rule 1 or not; with one tenant, jobs go
oldest first, as the rule always had them.

A batch's lines (:data:`BATCH_PRIORITY`) are below every other priority and
outside rule 1: a batch has its completion window, not ``max_wait``, and a line
that waited long must not jump ahead of a person waiting for an answer.

With a fleet of hosts, :meth:`JobQueue.peek_for` applies the same rule to the
jobs one host can run, and lets a host whose model has no jobs left take a model
no other host drains, or share a backlog when that saves more than a load costs
(:class:`Costs`; ADR-0035).

"The model" is its :func:`model_key`: the model *and* the options that make
Ollama load it again when they change. :meth:`JobQueue.position` tells how many
jobs the rule would run before a given one if nothing new arrived and none
waited ``max_wait``. Every operation is O(log n) in queued jobs: sorted lists
of ``(arrival, job_id)`` (ADR-0028), not scans; finding a model's next job is
linear in the tenants with jobs queued for it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from sortedcontainers import SortedDict, SortedList

from foreman.events.types import JobSubmitted

LOAD_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
"""Options whose change makes Ollama reload a model; sampling options do not."""


BATCH_PRIORITY = -(2**31)
"""The priority of a batch's lines: below any ``POST /jobs`` accepts (within a million
either side of 0)."""

SHARE_SCALE = 10**9
"""A job's share of its model's queue, in virtual time, at weight 1. Shares are whole
numbers (``SHARE_SCALE / weight``, rounded), so tags add up and compare exactly."""


def model_name(name: str) -> str:
    """Ollama's canonical model name: ``llama3`` is ``llama3:latest`` (a registry's
    ``host:port/`` is not a tag)."""
    return name if ":" in name.rpartition("/")[2] else f"{name}:latest"


def model_key(model: str, options: Mapping[str, Any] | None = None) -> str:
    """What must match for the backend to reuse a loaded model."""
    load = {k: options[k] for k in LOAD_OPTIONS if options and k in options}
    name = model_name(model)
    return name if not load else f"{name} {json.dumps(load, sort_keys=True)}"


def model_of(key: str) -> str:
    """The model name a :func:`model_key` is for (names hold no spaces)."""
    return key.partition(" ")[0]


def share_of(weight: float) -> int:
    """A job's share of virtual time for a tenant of this weight (> 0)."""
    return max(1, round(SHARE_SCALE / weight))


Tenant: TypeAlias = "str | None"
"""Who a job is for (None: no tenant: Foreman without keys)."""


@dataclass(frozen=True, slots=True)
class QueuedJob:
    job_id: str
    arrival: int
    """Order of arrival (e.g. the seq of its JobSubmitted): older is smaller."""
    priority: int
    model_key: str
    queued_at: float
    """When it was submitted, on the clock ``pick`` is given; it must grow with
    ``arrival`` (a retried job keeps both, and so its place)."""
    tenant: Tenant = None

    @property
    def model(self) -> str:
        """The model's canonical name, without the load options of its key."""
        return model_of(self.model_key)

    @property
    def batch(self) -> bool:
        """A batch's line: it runs when no other job can."""
        return self.priority == BATCH_PRIORITY

    @classmethod
    def of(cls, job_id: str, arrival: int, submitted: JobSubmitted, queued_at: float) -> QueuedJob:
        """The queue entry of a submitted job: its model key read from its request."""
        options = submitted.request.get("options")
        key = model_key(submitted.model, options if isinstance(options, dict) else None)
        priority = BATCH_PRIORITY if submitted.batch is not None else submitted.priority
        return cls(job_id, arrival, priority, key, queued_at, submitted.tenant)


@dataclass(frozen=True, slots=True)
class HostView:
    """One host of a fleet as :meth:`JobQueue.peek_for` sees it when it asks for work."""

    loaded: str | None
    """The model key it has loaded (or is loading)."""
    can_run: Callable[[str], bool] = lambda _model: True
    """Whether it can run a model (by name): installed there, and allowed."""
    elsewhere: Mapping[str, int] = field(default_factory=dict)
    """Model key -> how many other hosts have it loaded (they drain it)."""
    worth_sharing: Callable[[str, int], bool] = lambda _key, _hosts: False
    """Whether joining the ``hosts`` that drain a model's backlog shortens the makespan
    by more than a load costs (:class:`Costs`)."""
    resume: str | None = None
    """The model key of the batch lines it ran last: when a job from above interrupts
    a batch's model, the host goes back to it, or it would cost a second load later."""
    held_back: Collection[Tenant] = frozenset()
    """Tenants whose batch lines may not start now: they hold their ``batch_share``."""


class Costs:
    """Running estimates, in seconds, of a job's time at the backend per model key and
    of a model load (exponentially weighted; the first measurement replaces the
    default). Ollama reports both in its answer (``prompt_eval_duration`` plus
    ``eval_duration``, and ``load_duration``); without them, a call's wall time
    measures its job time when it needed no load."""

    def __init__(self, job: float = 1.0, load: float = 2.0, weight: float = 0.2) -> None:
        self._default_job = job
        self.load = load
        self._weight = weight
        self._loads_seen = False
        self._jobs: dict[str, float] = {}

    def job(self, key: str) -> float:
        return self._jobs.get(key, self._default_job)

    def observe(self, key: str, run: float, load: float | None = None) -> None:
        """A call for ``key`` ran ``run`` seconds, after a ``load`` (None: none)."""
        self._jobs[key] = self._blend(self._jobs.get(key), run)
        if load is not None:
            self.load = self._blend(self.load if self._loads_seen else None, load)
            self._loads_seen = True

    def _blend(self, before: float | None, seen: float) -> float:
        return seen if before is None else (1 - self._weight) * before + self._weight * seen

    def worth_sharing(self, backlog: int, key: str, hosts: int) -> bool:
        """Whether one more host on a backlog drained by ``hosts`` saves more than a
        load: the work's time falls from W/h to W/(h+1), a saving of W/(h(h+1))."""
        work = backlog * self.job(key)
        return work / (hosts * (hosts + 1)) > self.load


_Entry: TypeAlias = tuple[int, str]
"""``(arrival, job_id)``: older first."""
_Entries: TypeAlias = "SortedList[_Entry]"


@dataclass(slots=True)
class _Line:
    """One tenant's jobs for one model at one priority, oldest first: the k-th has the
    tag ``start + k * share``."""

    start: int
    share: int
    jobs: _Entries = field(default_factory=SortedList)


@dataclass(slots=True)
class _Group:
    """The jobs for one model key at one priority, in fair order between tenants."""

    clock: int = 0
    """The tag of the job taken last: where a tenant coming back starts, at the least."""
    lines: dict[Tenant, _Line] = field(default_factory=dict)
    """The tenants with jobs queued here."""
    resume: dict[Tenant, int] = field(default_factory=dict)
    """Where a tenant whose line emptied starts again, if later than the clock: a
    tenant served just now, or one that gave up its jobs, gains nothing by
    leaving and coming back."""
    size: int = 0
    first: _Entry = (0, "")
    """The oldest job here (while there is one)."""

    def add(self, tenant: Tenant, entry: _Entry, share: int) -> None:
        line = self.lines.get(tenant)
        if line is None:
            line = self.lines[tenant] = _Line(self._start(tenant), share)
            self.resume.pop(tenant, None)
        line.share = share
        line.jobs.add(entry)
        if not self.size or entry < self.first:
            self.first = entry
        self.size += 1

    def discard(self, tenant: Tenant, entry: _Entry, *, served: bool) -> None:
        """Take a job out; ``served``: it is to run, so its tenant's line moves on."""
        line = self.lines[tenant]
        line.jobs.remove(entry)
        self.size -= 1
        if served:
            self.clock = max(self.clock, line.start)
            line.start += line.share
        if not line.jobs:
            del self.lines[tenant]
            self.resume[tenant] = line.start
        if entry == self.first and self.size:
            self.first = min(line.jobs[0] for line in self.lines.values())

    def _start(self, tenant: Tenant) -> int:
        """Where a tenant with no job queued here would start."""
        return max(self.clock, self.resume.get(tenant, self.clock))

    def head(self, held_back: Collection[Tenant] = ()) -> _Entry | None:
        """The job to take next (None: every tenant here is held back)."""
        lines = self._lines(held_back)
        if len(lines) == 1:
            return lines[0].jobs[0]
        tags = [(line.start, line.jobs[0]) for line in lines]
        return min(tags)[1] if tags else None

    def oldest(self, held_back: Collection[Tenant]) -> _Entry | None:
        """The oldest job of the tenants not held back."""
        if not held_back:
            return self.first
        return min((line.jobs[0] for line in self._lines(held_back)), default=None)

    def _lines(self, held_back: Collection[Tenant]) -> list[_Line]:
        if not held_back:
            return list(self.lines.values())
        return [line for tenant, line in self.lines.items() if tenant not in held_back]

    def rank(self, tenant: Tenant, entry: _Entry, share: int | None) -> int:
        """How many jobs here come before ``entry`` in fair order; ``share``: that of
        its tenant if it is not queued (where it would stand if queued now), or None."""
        own = self.lines.get(tenant)
        if own is None:
            index, tag = 0, self._start(tenant)
        else:
            index = own.jobs.bisect_left(entry)
            tag = own.start + index * (own.share if share is None else share)
        ahead = index
        for other, line in self.lines.items():
            if other == tenant or tag < line.start:
                continue
            below, rest = divmod(tag - line.start, line.share)
            count = below + (rest > 0)  # the k-th tag is below ``tag`` for k < count
            if count < len(line.jobs) and not rest and line.jobs[count] < entry:
                count += 1  # the same tag, and older
            ahead += min(count, len(line.jobs))
        return ahead


@dataclass(slots=True)
class _Level:
    """The jobs of one priority, by model key."""

    groups: dict[str, _Group] = field(default_factory=dict)
    size: int = 0

    def oldest_group(self) -> _Group:
        """The group of the oldest job here."""
        return min(self.groups.values(), key=lambda group: group.first)

    def drained_last(self, loaded: str | None) -> str | None:
        """The model loaded once the rule has run this level, entered with ``loaded``:
        the loaded model's group goes first, then the others by their oldest job."""
        others = [(group.first, key) for key, group in self.groups.items() if key != loaded]
        return max(others)[1] if others else loaded


class JobQueue:
    def __init__(
        self, max_wait: float, weight: Callable[[Tenant], float] = lambda _tenant: 1.0
    ) -> None:
        """``weight``: each tenant's weight (> 0) against the others, read when one of
        its jobs is queued."""
        self.max_wait = max_wait
        self._weight = weight
        self._jobs: dict[str, QueuedJob] = {}
        self._all: _Entries = SortedList()  # the starvation check: the oldest (not batch)
        self._waiting: Counter[Tenant] = Counter()  # jobs queued (not batch) per tenant
        self._levels: SortedDict[int, _Level] = SortedDict()  # none empty
        self._backlog: Counter[str] = Counter()  # queued jobs per model key

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def interactive(self) -> int:
        """Jobs queued that are not a batch's lines (those count against max_queue)."""
        return len(self._all)

    def waiting(self, tenant: Tenant) -> int:
        """A tenant's jobs queued that are not a batch's lines."""
        return self._waiting[tenant]

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def get(self, job_id: str) -> QueuedJob | None:
        return self._jobs.get(job_id)

    def push(self, job: QueuedJob) -> None:
        """Queue a job: a new one, or one back for another attempt, which keeps its
        place among its tenant's jobs by its arrival."""
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id} is already queued")
        self._jobs[job.job_id] = job
        entry = (job.arrival, job.job_id)
        if not job.batch:
            self._all.add(entry)
            self._waiting[job.tenant] += 1
        level = self._levels.setdefault(job.priority, _Level())
        group = level.groups.setdefault(job.model_key, _Group())
        group.add(job.tenant, entry, share_of(self._weight(job.tenant)))
        level.size += 1
        self._backlog[job.model_key] += 1

    def remove(self, job_id: str) -> QueuedJob | None:
        """Take a job out that will not run (cancelled), or None if it is not queued."""
        return self._discard(job_id, served=False)

    def take(self, job_id: str) -> QueuedJob | None:
        """Take out a job the rule picked, to run: its tenant's line moves on."""
        return self._discard(job_id, served=True)

    def _discard(self, job_id: str, *, served: bool) -> QueuedJob | None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        entry = (job.arrival, job.job_id)
        if not job.batch:
            self._all.remove(entry)
            self._waiting[job.tenant] -= 1
            if not self._waiting[job.tenant]:
                del self._waiting[job.tenant]
        level: _Level = self._levels[job.priority]
        group = level.groups[job.model_key]
        group.discard(job.tenant, entry, served=served)
        if not group.size:
            del level.groups[job.model_key]
        level.size -= 1
        if not level.size:
            del self._levels[job.priority]
        self._backlog[job.model_key] -= 1
        if not self._backlog[job.model_key]:
            del self._backlog[job.model_key]
        return job

    def backlog(self, key: str) -> int:
        """Jobs queued for this model key, whatever their priority."""
        return self._backlog[key]

    def pick(self, loaded: str | None, now: float) -> QueuedJob | None:
        """Remove and return the job to run next (see the module's rule), or None."""
        job = self.peek(loaded, now)
        if job is not None:
            self.take(job.job_id)
        return job

    def peek(self, loaded: str | None, now: float) -> QueuedJob | None:
        """The job :meth:`pick` would take, left in the queue."""
        if not self._jobs:
            return None
        if self._all:
            oldest = self._jobs[self._all[0][1]]
            if now - oldest.queued_at >= self.max_wait:
                return self._head(self._levels[oldest.priority].groups[oldest.model_key])
        level: _Level = self._levels.peekitem(-1)[1]
        group = level.groups.get(loaded) if loaded is not None else None
        return self._head(group if group is not None else level.oldest_group())

    def _head(self, group: _Group, held_back: Collection[Tenant] = ()) -> QueuedJob:
        head = group.head(held_back)
        assert head is not None  # the caller saw a job there
        return self._jobs[head[1]]

    def peek_for(self, host: HostView, now: float) -> QueuedJob | None:
        """The job for one host of a fleet (the fleet rule, ADR-0035), left in the queue.

        Only jobs whose model the host can run count. A job that has waited
        ``max_wait`` makes its model (at its priority) go first. Otherwise, at the
        highest priority with a job the host can run: its loaded model; (for batch
        lines, else the model of the lines it ran last, ``host.resume``;) else the
        model of the oldest job among those no other host has loaded; else the same
        among models whose backlog is worth sharing (``host.worth_sharing``); else the
        same at the next priority down. Within the model, the fair order; the batch
        lines of tenants ``host.held_back`` do not count. With no other host this is
        :meth:`peek`'s rule. O(priorities x models x tenants)."""
        runnable = [
            (priority, key, group)
            for priority, level in self._levels.items()
            for key, group in level.groups.items()
            if host.can_run(model_of(key))
        ]
        if not runnable:
            return None
        waiting = [g for priority, _, g in runnable if priority != BATCH_PRIORITY]
        if waiting:
            starving = min(waiting, key=lambda group: group.first)
            if now - self._jobs[starving.first[1]].queued_at >= self.max_wait:
                return self._head(starving)
        for priority in reversed(self._levels):
            held_back = host.held_back if priority == BATCH_PRIORITY else ()
            groups = {
                key: group
                for p, key, group in runnable
                if p == priority and (not held_back or group.head(held_back) is not None)
            }
            chosen = groups.get(host.loaded) if host.loaded is not None else None
            resume = host.resume if priority == BATCH_PRIORITY else None
            if chosen is None and resume is not None and not host.elsewhere.get(resume):
                chosen = groups.get(resume)
            if chosen is None:
                unserved = [g for key, g in groups.items() if not host.elsewhere.get(key)]
                shared = [
                    g
                    for key, g in groups.items()
                    if host.elsewhere.get(key) and host.worth_sharing(key, host.elsewhere[key])
                ]
                candidates = unserved or shared
                if candidates:
                    chosen = min(candidates, key=lambda g: g.oldest(held_back) or ())
            if chosen is not None:
                return self._head(chosen, held_back)
        return None

    def position(self, job: QueuedJob, loaded: str | None) -> int:
        """How many queued jobs :meth:`pick` would take before ``job``, starting with
        ``loaded``, if nothing new arrived and no job waited ``max_wait``.

        ``job`` is either queued (it does not count itself) or not (then: where it
        would stand if pushed now). The rule drains each priority from the highest
        down: the loaded model's jobs first, then each other model's in the order of
        their oldest job, each in fair order; the model drained last is the one
        loaded at the next level.
        """
        ahead = 0
        higher = self._levels.irange(job.priority, inclusive=(False, True), reverse=True)
        for priority in higher:
            level: _Level = self._levels[priority]
            ahead += level.size
            loaded = level.drained_last(loaded)
        level = self._levels.get(job.priority, _Level())
        entry = (job.arrival, job.job_id)
        own = level.groups.get(job.model_key)
        if own is not None:
            share = None if job.job_id in self._jobs else share_of(self._weight(job.tenant))
            ahead += own.rank(job.tenant, entry, share)
        if job.model_key == loaded:
            return ahead
        oldest = min(own.first, entry) if own else entry
        for key, group in level.groups.items():
            if key == loaded or (key != job.model_key and group.first < oldest):
                ahead += group.size
        return ahead
