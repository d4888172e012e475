"""Which queued job runs next: priority, then drain-by-model, with a starvation bound.

The rule, applied by :meth:`JobQueue.pick`:

1. A job that has waited ``max_wait`` or longer goes first, the longest-waiting
   first, whatever its priority or model.
2. Otherwise, among the jobs of the highest priority queued: the oldest job for
   the model the backend has loaded, if there is one; else the oldest job.

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
of ``(arrival, job_id)`` (ADR-0028), not scans.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from sortedcontainers import SortedDict, SortedList

from foreman.events.types import JobSubmitted

LOAD_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
"""Options whose change makes Ollama reload a model; sampling options do not."""


BATCH_PRIORITY = -(2**31)
"""The priority of a batch's lines: below any ``POST /jobs`` accepts (within a million
either side of 0)."""


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
        return cls(job_id, arrival, priority, key, queued_at)


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


_Entries: TypeAlias = "SortedList[tuple[int, str]]"
"""``(arrival, job_id)`` of queued jobs, oldest first."""


@dataclass(slots=True)
class _Level:
    """The jobs of one priority: all, and by model key."""

    jobs: _Entries = field(default_factory=SortedList)
    groups: dict[str, _Entries] = field(default_factory=dict)

    def drained_last(self, loaded: str | None) -> str | None:
        """The model loaded once the rule has run this level, entered with ``loaded``:
        the loaded model's group goes first, then the others by their oldest job."""
        others = [(group[0], key) for key, group in self.groups.items() if key != loaded]
        return max(others)[1] if others else loaded


class JobQueue:
    def __init__(self, max_wait: float) -> None:
        self.max_wait = max_wait
        self._jobs: dict[str, QueuedJob] = {}
        self._all: _Entries = SortedList()  # the starvation check: the oldest (not batch)
        self._levels: SortedDict[int, _Level] = SortedDict()  # none empty
        self._backlog: Counter[str] = Counter()  # queued jobs per model key

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def interactive(self) -> int:
        """Jobs queued that are not a batch's lines (those count against max_queue)."""
        return len(self._all)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def get(self, job_id: str) -> QueuedJob | None:
        return self._jobs.get(job_id)

    def push(self, job: QueuedJob) -> None:
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id} is already queued")
        self._jobs[job.job_id] = job
        entry = (job.arrival, job.job_id)
        if not job.batch:
            self._all.add(entry)
        level = self._levels.setdefault(job.priority, _Level())
        level.jobs.add(entry)
        level.groups.setdefault(job.model_key, SortedList()).add(entry)
        self._backlog[job.model_key] += 1

    def remove(self, job_id: str) -> QueuedJob | None:
        """Take a job out (picked or cancelled), or None if it is not queued."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        entry = (job.arrival, job.job_id)
        if not job.batch:
            self._all.remove(entry)
        level: _Level = self._levels[job.priority]
        group = level.groups[job.model_key]
        group.remove(entry)
        if not group:
            del level.groups[job.model_key]
        level.jobs.remove(entry)
        if not level.jobs:
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
            self.remove(job.job_id)
        return job

    def peek(self, loaded: str | None, now: float) -> QueuedJob | None:
        """The job :meth:`pick` would take, left in the queue."""
        if not self._jobs:
            return None
        if self._all:
            oldest = self._jobs[self._all[0][1]]
            if now - oldest.queued_at >= self.max_wait:
                return oldest
        level: _Level = self._levels.peekitem(-1)[1]
        same_model = level.groups.get(loaded) if loaded is not None else None
        return self._jobs[(same_model or level.jobs)[0][1]]

    def peek_for(self, host: HostView, now: float) -> QueuedJob | None:
        """The job for one host of a fleet (the fleet rule, ADR-0035), left in the queue.

        Only jobs whose model the host can run count. A job that has waited
        ``max_wait`` goes first. Otherwise, at the highest priority with a job the
        host can run: its loaded model's oldest job; (for batch lines, else the
        model of the lines it ran last, ``host.resume``;) else the oldest job of a model
        no other host has loaded; else the oldest job of a model whose backlog is
        worth sharing (``host.worth_sharing``); else the same at the next priority
        down. With no other host this is :meth:`peek`'s rule. O(priorities x models)."""
        runnable = [
            (priority, key, group)
            for priority, level in self._levels.items()
            for key, group in level.groups.items()
            if host.can_run(model_of(key))
        ]
        if not runnable:
            return None
        waiting = [group[0] for priority, _, group in runnable if priority != BATCH_PRIORITY]
        if waiting and now - self._jobs[min(waiting)[1]].queued_at >= self.max_wait:
            return self._jobs[min(waiting)[1]]
        for priority in reversed(self._levels):
            groups = {key: group for p, key, group in runnable if p == priority}
            if host.loaded in groups:
                return self._jobs[groups[host.loaded][0][1]]
            resume = host.resume if priority == BATCH_PRIORITY else None
            if resume in groups and resume is not None and not host.elsewhere.get(resume):
                return self._jobs[groups[resume][0][1]]
            unserved = [g[0] for key, g in groups.items() if not host.elsewhere.get(key)]
            shared = [
                g[0]
                for key, g in groups.items()
                if host.elsewhere.get(key) and host.worth_sharing(key, host.elsewhere[key])
            ]
            if unserved or shared:
                return self._jobs[min(unserved or shared)[1]]
        return None

    def position(self, job: QueuedJob, loaded: str | None) -> int:
        """How many queued jobs :meth:`pick` would take before ``job``, starting with
        ``loaded``, if nothing new arrived and no job waited ``max_wait``.

        ``job`` is either queued (it does not count itself) or not (then: where it
        would stand if pushed now). The rule drains each priority from the highest
        down: the loaded model's jobs first, then each other model's in the order of
        their oldest job; the model drained last is the one loaded at the next level.
        """
        ahead = 0
        higher = self._levels.irange(job.priority, inclusive=(False, True), reverse=True)
        for priority in higher:
            level: _Level = self._levels[priority]
            ahead += len(level.jobs)
            loaded = level.drained_last(loaded)
        level = self._levels.get(job.priority, _Level())
        entry = (job.arrival, job.job_id)
        own = level.groups.get(job.model_key)
        ahead += own.bisect_left(entry) if own else 0
        if job.model_key == loaded:
            return ahead
        oldest = min(own[0], entry) if own else entry
        for key, group in level.groups.items():
            if key == loaded or (key != job.model_key and group[0] < oldest):
                ahead += len(group)
        return ahead
