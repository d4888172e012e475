"""Foreman's event store: the log together with the projections Foreman keeps.

:func:`open_log` is how Foreman (the journal) and its operator tools open the log
for writing: the jobs and the webhook outbox are folded in on every append, and
caught up on open with whatever was appended without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from foreman.events.batches import BatchesProjection
from foreman.events.deliveries import DeliveriesProjection
from foreman.events.files import FilesProjection
from foreman.events.jobs import JobsProjection
from foreman.events.log import Durability, EventLog, closed_unless_usable
from foreman.events.projection import Projection
from foreman.events.replay import catch_up


def projections() -> list[Projection[Any]]:
    """The projections Foreman keeps: the jobs, the webhook outbox, the files and the
    batches."""
    return [JobsProjection(), DeliveriesProjection(), FilesProjection(), BatchesProjection()]


def open_log(
    path: str | Path, *, durability: Durability = Durability.FULL, read_only: bool = False
) -> EventLog:
    """Open (or create) the log at ``path`` with Foreman's projections, caught up.

    ``read_only`` (the audit tools): the log must exist, and is neither changed nor
    caught up; its projections are known, so ``verify`` checks them."""
    log = EventLog.open(path, durability=durability, projections=projections(), read_only=read_only)
    if not read_only:
        with closed_unless_usable(path, log.conn):
            for projection in log.projections:
                catch_up(log, projection)
    return log
