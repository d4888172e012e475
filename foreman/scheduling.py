"""Which queued job runs next: priority, then drain-by-model, with a starvation bound.

The rule, applied by :meth:`JobQueue.pick`:

1. A job that has waited ``max_wait`` or longer goes first, the longest-waiting
   first, whatever its priority or model.
2. Otherwise, among the jobs of the highest priority queued: the oldest job for
   the model the backend has loaded, if there is one; else the oldest job.

"The model" is its :func:`model_key`: the model *and* the options that make
Ollama load it again when they change. :meth:`JobQueue.position` tells how many
jobs the rule would run before a given one if nothing new arrived and none
waited ``max_wait``. Every operation is O(log n) in queued jobs: sorted lists
of ``(arrival, job_id)`` (ADR-0028), not scans.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from sortedcontainers import SortedDict, SortedList

from foreman.events.types import JobSubmitted

LOAD_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
"""Options whose change makes Ollama reload a model; sampling options do not."""


def model_name(name: str) -> str:
    """Ollama's canonical model name: ``llama3`` is ``llama3:latest`` (a registry's
    ``host:port/`` is not a tag)."""
    return name if ":" in name.rpartition("/")[2] else f"{name}:latest"


def model_key(model: str, options: Mapping[str, Any] | None = None) -> str:
    """What must match for the backend to reuse a loaded model."""
    load = {k: options[k] for k in LOAD_OPTIONS if options and k in options}
    name = model_name(model)
    return name if not load else f"{name} {json.dumps(load, sort_keys=True)}"


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

    @classmethod
    def of(cls, job_id: str, arrival: int, submitted: JobSubmitted, queued_at: float) -> QueuedJob:
        """The queue entry of a submitted job: its model key read from its request."""
        options = submitted.request.get("options")
        key = model_key(submitted.model, options if isinstance(options, dict) else None)
        return cls(job_id, arrival, submitted.priority, key, queued_at)


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
        self._all: _Entries = SortedList()  # the starvation check needs the oldest of all
        self._levels: SortedDict[int, _Level] = SortedDict()  # none empty

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def get(self, job_id: str) -> QueuedJob | None:
        return self._jobs.get(job_id)

    def push(self, job: QueuedJob) -> None:
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id} is already queued")
        self._jobs[job.job_id] = job
        entry = (job.arrival, job.job_id)
        self._all.add(entry)
        level = self._levels.setdefault(job.priority, _Level())
        level.jobs.add(entry)
        level.groups.setdefault(job.model_key, SortedList()).add(entry)

    def remove(self, job_id: str) -> QueuedJob | None:
        """Take a job out (picked or cancelled), or None if it is not queued."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        entry = (job.arrival, job.job_id)
        self._all.remove(entry)
        level: _Level = self._levels[job.priority]
        group = level.groups[job.model_key]
        group.remove(entry)
        if not group:
            del level.groups[job.model_key]
        level.jobs.remove(entry)
        if not level.jobs:
            del self._levels[job.priority]
        return job

    def pick(self, loaded: str | None, now: float) -> QueuedJob | None:
        """Remove and return the job to run next (see the module's rule), or None."""
        job = self.peek(loaded, now)
        if job is not None:
            self.remove(job.job_id)
        return job

    def peek(self, loaded: str | None, now: float) -> QueuedJob | None:
        """The job :meth:`pick` would take, left in the queue."""
        if not self._all:
            return None
        oldest = self._jobs[self._all[0][1]]
        if now - oldest.queued_at >= self.max_wait:
            return oldest
        level: _Level = self._levels.peekitem(-1)[1]
        same_model = level.groups.get(loaded) if loaded is not None else None
        return self._jobs[(same_model or level.jobs)[0][1]]

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
