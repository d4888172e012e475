"""Foreman's event store: the log together with the projections Foreman keeps.

:func:`open_log` is how Foreman (the journal) and its operator tools open the log
for writing: the jobs and the webhook outbox are folded in on every append, and
caught up on open with whatever was appended without them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from foreman.events.deliveries import DeliveriesProjection
from foreman.events.jobs import JobsProjection
from foreman.events.log import Durability, EventLog, LogError
from foreman.events.projection import Projection
from foreman.events.replay import catch_up


def projections() -> list[Projection[Any]]:
    """The projections Foreman keeps: the jobs, and the webhook outbox."""
    return [JobsProjection(), DeliveriesProjection()]


def open_log(path: str | Path, *, durability: Durability = Durability.FULL) -> EventLog:
    """Open (or create) the log at ``path`` with Foreman's projections, caught up."""
    log = EventLog.open(path, durability=durability, projections=projections())
    try:
        for projection in log.projections:
            catch_up(log, projection)
    except sqlite3.DatabaseError as error:
        log.close()
        raise LogError(f"{path}: not a usable Foreman event log: {error}") from error
    except BaseException:
        log.close()
        raise
    return log
