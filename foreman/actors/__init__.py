"""Foreman's actors: long-lived Trio tasks that share no state and talk over memory
channels. Each reports a client (or is handed its collaborators) when started by
the supervisor; nothing outside this package builds an actor's messages."""

from foreman.actors.batcher import (
    Batcher,
    BatcherClient,
    BatchNotFound,
    CannotCancel,
    store_file,
)
from foreman.actors.dispatcher import Dispatcher
from foreman.actors.http import serve_http
from foreman.actors.janitor import Janitor
from foreman.actors.journal import (
    Journal,
    JournalClient,
    JournalFailed,
    JournalStatus,
    StorageFault,
)
from foreman.actors.metrics import CONTENT_TYPE, Instruments, Metrics, MetricsClient
from foreman.actors.prober import Prober
from foreman.actors.scheduler import (
    CancelOutcome,
    HostStatus,
    ModelNotFound,
    Queued,
    QueueFull,
    Scheduler,
    SchedulerClient,
    TenantQueueFull,
)
from foreman.actors.worker import Answer, AnswerError, AnswerLine, Worker

__all__ = [
    "CONTENT_TYPE",
    "Answer",
    "AnswerError",
    "AnswerLine",
    "BatchNotFound",
    "Batcher",
    "BatcherClient",
    "CancelOutcome",
    "CannotCancel",
    "Dispatcher",
    "HostStatus",
    "Instruments",
    "Janitor",
    "Journal",
    "JournalClient",
    "JournalFailed",
    "JournalStatus",
    "Metrics",
    "MetricsClient",
    "ModelNotFound",
    "Prober",
    "QueueFull",
    "Queued",
    "Scheduler",
    "SchedulerClient",
    "StorageFault",
    "TenantQueueFull",
    "Worker",
    "serve_http",
    "store_file",
]
