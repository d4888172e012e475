"""The outbox as the dispatcher holds it: a lane of notifications per job, and where
each lane is.

A job's notifications go out one at a time, in order, so each job has a *lane*:
its pending deliveries, oldest first. A lane is in exactly one place:

- **waiting** until its head may go: at once for a new notification, later for
  one that failed (its ``retry_at``);
- **ready**: its time has come (:meth:`Lanes.release`), and it waits for a sender;
- **taken** by a sender (:meth:`Lanes.take`), until :meth:`Lanes.retry` or
  :meth:`Lanes.done`.

A delivery added to a lane that exists queues behind its head, wherever the lane
is. Like :class:`~foreman.scheduling.JobQueue` for the scheduler, this is plain
state, without I/O or a clock of its own: the dispatcher's tasks move lanes
between these places, at times on Trio's clock.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from collections.abc import Callable

from foreman.events.deliveries import Delivery


class Lanes:
    def __init__(self, due: Callable[[Delivery], float]) -> None:
        """``due(head)``: when a lane whose head is ``head`` may go."""
        self._due = due
        self._lanes: dict[str, list[Delivery]] = {}
        self._waiting: list[tuple[float, int, str]] = []  # heap of (due, order, job id)
        self._order = itertools.count()
        self._ready: deque[str] = deque()

    def __len__(self) -> int:
        """Open lanes: jobs with a notification neither delivered nor abandoned."""
        return len(self._lanes)

    @property
    def next_due(self) -> float | None:
        """When the first waiting lane may go (None: none waits)."""
        return self._waiting[0][0] if self._waiting else None

    def add(self, delivery: Delivery) -> None:
        """Queue a delivery behind its job's earlier ones, in a new lane if need be."""
        lane = self._lanes.get(delivery.job_id)
        if lane is None:
            self._lanes[delivery.job_id] = [delivery]
            self._wait(delivery.job_id, self._due(delivery))
        else:  # behind the head, which may be on its way already
            bisect.insort(lane, delivery, lo=1, key=lambda d: d.seq)

    def release(self, now: float) -> int:
        """Make ready the waiting lanes whose time has come; returns how many."""
        released = 0
        while self._waiting and self._waiting[0][0] <= now:
            _, _, job_id = heapq.heappop(self._waiting)
            self._ready.append(job_id)
            released += 1
        return released

    def take(self) -> Delivery:
        """Take the first ready lane (there must be one): its head is to be sent."""
        return self._lanes[self._ready.popleft()][0]

    def retry(self, head: Delivery, due: float) -> None:
        """The taken lane's head failed: it is now ``head`` (with its attempts and
        ``retry_at``), and the lane waits until ``due``."""
        self._lanes[head.job_id][0] = head
        self._wait(head.job_id, due)

    def done(self, job_id: str) -> None:
        """The taken lane's head was delivered or abandoned: the lane waits for its
        next delivery's time, or closes."""
        lane = self._lanes[job_id]
        lane.pop(0)
        if lane:
            self._wait(job_id, self._due(lane[0]))
        else:
            del self._lanes[job_id]

    def _wait(self, job_id: str, due: float) -> None:
        heapq.heappush(self._waiting, (due, next(self._order), job_id))
