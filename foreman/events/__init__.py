"""The event log and everything derived from it: event types, the log, projections,
replay, audit, and reads beside the journal.

Modules: :mod:`~foreman.events.types` (the events), :mod:`~foreman.events.log`
(the append-only SQLite log), :mod:`~foreman.events.projection` (pure folds) with
:mod:`~foreman.events.jobs` and :mod:`~foreman.events.deliveries`,
:mod:`~foreman.events.replay`, :mod:`~foreman.events.store` (the log with
Foreman's projections), :mod:`~foreman.events.queries`,
:mod:`~foreman.events.reader` and :mod:`~foreman.events.audit`.
"""

from foreman.events.log import (
    Append,
    ConcurrencyError,
    Durability,
    EventLog,
    LogError,
    UnstorableEvent,
)
from foreman.events.projection import IllegalTransition, Projection
from foreman.events.reader import Reader
from foreman.events.store import open_log
from foreman.events.types import Event, RecordedEvent

__all__ = [
    "Append",
    "ConcurrencyError",
    "Durability",
    "Event",
    "EventLog",
    "IllegalTransition",
    "LogError",
    "Projection",
    "Reader",
    "RecordedEvent",
    "UnstorableEvent",
    "open_log",
]
