"""Appends to a log in a loop until it is killed: the victim of tests/test_crash.py.

Usage: python -m tests.crash_child DB SEED

After every commit it prints ``ACK <seq> <id> [<seq> <id> ...]`` for the events
that commit made durable, and flushes: a line on stdout is an acknowledgement.
"""

from __future__ import annotations

import random
import sys

from foreman.events.jobs import JobsProjection
from foreman.events.log import Append, Durability
from foreman.events.store import open_log
from foreman.events.types import Event, JobRequeued, JobStarted, JobSucceeded
from foreman.ids import new_ulid
from tests.factories import attempt_failed, failed, submitted


def next_events(state: str, attempts: int, rng: random.Random) -> list[Event]:
    if state == "queued":
        return [JobStarted(attempt=attempts + 1, backend="http://sim")]
    roll = rng.random()
    if roll < 0.6:
        return [JobSucceeded(result={"message": {"content": "x" * rng.randrange(200)}})]
    if roll < 0.8:
        return [attempt_failed(attempts), JobRequeued(reason="retry")]
    return [failed()]


def main(path: str, seed: int) -> None:
    rng = random.Random(seed)
    log = open_log(path, durability=Durability.FULL)
    active = {
        job.id: (job.state, job.attempts)
        for job in JobsProjection().load_all(log.conn).values()
        if job.state in ("queued", "running")
    }
    while True:
        appends = [Append(new_ulid(), [submitted()], 0) for _ in range(rng.randrange(1, 20))]
        for job in rng.sample(sorted(active), min(len(active), rng.randrange(0, 30))):
            appends.append(Append(job, next_events(*active[job], rng)))
        acknowledged: list[str] = []
        for result in log.append_many(appends):
            assert isinstance(result, list), result
            for event in result:
                acknowledged += [str(event.seq), event.id]
            job = JobsProjection().load(log.conn, [result[0].stream]).get(result[0].stream)
            if job is not None and job.state in ("queued", "running"):
                active[job.id] = (job.state, job.attempts)
            else:
                active.pop(result[0].stream, None)
        sys.stdout.write(f"ACK {' '.join(acknowledged)}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
