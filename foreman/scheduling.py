"""Which queued job runs next: priority, then drain-by-model, with a starvation bound.

The rule, applied by :meth:`JobQueue.pick`:

1. A job that has waited ``max_wait`` or longer goes first, the longest-waiting
   first, whatever its priority or model.
2. Otherwise, among the jobs of the highest priority queued: the oldest job for
   the model the backend has loaded, if there is one; else the oldest job.

"The model" is its :func:`model_key`: the model *and* the options that make
Ollama load it again when they change. Every operation is O(log n) in queued
jobs: heaps with lazy deletion, not scans.
"""

from __future__ import annotations

import heapq
import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from foreman.events.types import JobSubmitted
from foreman.wire import model_name

LOAD_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
"""Options whose change makes Ollama reload a model; sampling options do not."""


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


_Heap = list[tuple[int, str]]


class JobQueue:
    def __init__(self, max_wait: float) -> None:
        self.max_wait = max_wait
        self._live: dict[str, QueuedJob] = {}
        self._oldest: _Heap = []
        self._by_priority: defaultdict[int, _Heap] = defaultdict(list)
        self._by_model: defaultdict[tuple[int, str], _Heap] = defaultdict(list)
        self._priorities: list[int] = []  # negated: a max-heap
        # Live jobs per heap: a heap whose jobs are all gone is dropped whole.
        self._count: defaultdict[int, int] = defaultdict(int)
        self._model_count: defaultdict[tuple[int, str], int] = defaultdict(int)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._live

    def push(self, job: QueuedJob) -> None:
        if job.job_id in self._live:
            raise ValueError(f"job {job.job_id} is already queued")
        self._live[job.job_id] = job
        entry = (job.arrival, job.job_id)
        heapq.heappush(self._oldest, entry)
        heapq.heappush(self._by_priority[job.priority], entry)
        heapq.heappush(self._by_model[job.priority, job.model_key], entry)
        if job.priority not in self._count:
            heapq.heappush(self._priorities, -job.priority)
        self._count[job.priority] += 1
        self._model_count[job.priority, job.model_key] += 1

    def remove(self, job_id: str) -> QueuedJob | None:
        """Take a job out (cancelled); its heap entries are dropped lazily."""
        job = self._live.pop(job_id, None)
        if job is None:
            return None
        self._count[job.priority] -= 1
        if self._count[job.priority] == 0:
            del self._count[job.priority], self._by_priority[job.priority]
        model = (job.priority, job.model_key)
        self._model_count[model] -= 1
        if self._model_count[model] == 0:
            del self._model_count[model], self._by_model[model]
        return job

    def pick(self, loaded: str | None, now: float) -> QueuedJob | None:
        """Remove and return the job to run next (see the module's rule), or None."""
        job = self.peek(loaded, now)
        if job is not None:
            self.remove(job.job_id)
        return job

    def peek(self, loaded: str | None, now: float) -> QueuedJob | None:
        """The job :meth:`pick` would take, left in the queue."""
        oldest = self._peek(self._oldest)
        if oldest is None:
            return None
        if now - oldest.queued_at >= self.max_wait:
            return oldest
        priority = self._top_priority()
        if loaded is not None:
            same_model = self._peek(self._by_model.get((priority, loaded)))
            if same_model is not None:
                return same_model
        return self._peek(self._by_priority[priority])

    def _peek(self, heap: _Heap | None) -> QueuedJob | None:
        """The heap's oldest live job; entries of jobs no longer queued are dropped.

        An entry is live only if its job is queued with that same arrival: a job
        taken and queued again (a retry) has older entries that must not count.
        """
        while heap:
            arrival, job_id = heap[0]
            job = self._live.get(job_id)
            if job is not None and job.arrival == arrival:
                return job
            heapq.heappop(heap)
        return None

    def _top_priority(self) -> int:
        while -self._priorities[0] not in self._count:
            heapq.heappop(self._priorities)
        return -self._priorities[0]
