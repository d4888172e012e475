"""Replay properties: incremental projection == full replay == replay in chunks, for
the jobs and the webhook deliveries."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foreman.events.deliveries import DeliveriesProjection, Delivery
from foreman.events.jobs import TERMINAL_STATES, JobsProjection
from foreman.events.log import Append, Durability, EventLog
from foreman.events.projection import IllegalTransition
from foreman.events.replay import rebuild, state_at
from foreman.events.store import open_log
from foreman.events.types import (
    Event,
    JobAttemptFailed,
    JobCancelled,
    JobFailed,
    JobPruned,
    JobRequeued,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    WebhookAbandoned,
    WebhookAttemptFailed,
    WebhookDelivered,
    WebhookRedeliveryRequested,
    delivery_stream,
)
from foreman.ids import new_ulid

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
MODELS = st.sampled_from(["llama3", "qwen2", "mistral"])


@contextmanager
def fresh_log() -> Iterator[EventLog]:
    with tempfile.TemporaryDirectory() as directory:
        log = open_log(Path(directory) / "foreman.db", durability=Durability.OFF)
        try:
            yield log
        finally:
            log.close()


# The reference model: job id -> (state, attempts); "pruned" once pruned.
Model = dict[str, tuple[str, int]]


def valid_append(
    data: st.DataObject, model: Model, log: EventLog, batch: list[Append]
) -> tuple[Append, tuple[str, int]]:
    """A legal next append for a new or existing job (or its webhook deliveries), and
    the job's state after it; a job already in ``batch`` is left alone, as the
    deliveries its appends will make are not in the log yet."""
    taken = {append.stream.removeprefix("webhooks/") for append in batch}
    live = sorted(
        job for job, (state, _) in model.items() if state != "pruned" and job not in taken
    )
    if not live or data.draw(st.integers(0, 3)) == 0:
        job = new_ulid()
        origin = data.draw(st.sampled_from(["sync", "async"]))
        event = JobSubmitted(
            kind=data.draw(st.sampled_from(["chat", "generate", "embed"])),
            model=data.draw(MODELS),
            request={"prompt": data.draw(st.text(max_size=20))},
            priority=data.draw(st.integers(-2, 2)),
            origin=origin,
            state_webhook_url="http://hook.example/" if origin == "async" else None,
        )
        return Append(job, [event], expected_version=0), ("queued", 0)
    job = data.draw(st.sampled_from(live))
    state, attempts = model[job]
    deliveries = DeliveriesProjection().load(log.conn, [job]).get(job, ())
    owed = any(delivery.state == "pending" for delivery in deliveries)
    # A finished job that owes a notification cannot be pruned: it is delivered first.
    if deliveries and ((owed and state in TERMINAL_STATES) or data.draw(st.booleans())):
        return Append(delivery_stream(job), [data.draw(delivery_event(deliveries))]), model[job]
    choices: list[tuple[list[Event], tuple[str, int]]]
    if state == "queued":
        choices = [
            ([JobStarted(attempt=attempts + 1, backend="b")], ("running", attempts + 1)),
            ([JobCancelled(reason="user")], ("cancelled", attempts)),
        ]
    elif state == "running":
        choices = [
            ([JobSucceeded(result={"n": attempts})], ("succeeded", attempts)),
            ([JobFailed(error="boom", status=500)], ("failed", attempts)),
            (
                [
                    JobAttemptFailed(attempt=attempts, error="reset", retryable=True),
                    JobRequeued(reason="retry"),
                ],
                ("queued", attempts),
            ),
            ([JobRequeued(reason="interrupted")], ("queued", attempts)),
            ([JobCancelled(reason="client_disconnected")], ("cancelled", attempts)),
        ]
    else:
        choices = [([JobPruned()], ("pruned", attempts))]
    events, after = data.draw(st.sampled_from(choices))
    return Append(job, events), after


def delivery_event(deliveries: tuple[Delivery, ...]) -> st.SearchStrategy[Event]:
    """A legal outcome for a pending delivery, or a redelivery of finished ones."""
    pending = [d for d in deliveries if d.state == "pending"]
    finished = [d.id for d in deliveries if d.state != "pending"]
    choices: list[Event] = []
    for delivery in pending[:1]:
        attempt = delivery.attempts + 1
        choices += [
            WebhookDelivered(delivery=delivery.id, attempt=attempt, status=204),
            WebhookAttemptFailed(
                delivery=delivery.id, attempt=attempt, error="HTTP 503", status=503, retry_at="t"
            ),
            WebhookAbandoned(delivery=delivery.id, attempt=attempt, error="HTTP 400", status=400),
        ]
    if finished:
        choices.append(WebhookRedeliveryRequested(deliveries=tuple(finished)))
    return st.sampled_from(choices)


@PROPERTY_SETTINGS
@given(st.data())
def test_incremental_projection_equals_full_and_chunked_replay(data: st.DataObject) -> None:
    with fresh_log() as log:
        model: Model = {}
        snapshots = []
        for batch_size in data.draw(st.lists(st.integers(1, 8), min_size=1, max_size=10)):
            appends = []
            for _ in range(batch_size):
                append, after = valid_append(data, model, log, appends)
                appends.append(append)
                model[append.stream.removeprefix("webhooks/")] = after
            assert all(isinstance(r, list) for r in log.append_many(appends))
            snapshots.append((log.head()[0], [p.load_all(log.conn) for p in log.projections]))

        jobs = JobsProjection().load_all(log.conn)
        assert {job: (j.state, j.attempts) for job, j in jobs.items()} == {
            job: value for job, value in model.items() if value[0] != "pruned"
        }
        for index, projection in enumerate(log.projections):
            incremental = projection.load_all(log.conn)
            assert state_at(log, projection) == incremental
            rebuild(
                log,
                projection,
                chunk=data.draw(st.integers(1, 7), label="chunk"),
                cache=data.draw(st.integers(0, 6), label="cache"),
            )
            assert projection.load_all(log.conn) == incremental
            rebuild(log, projection)
            assert projection.load_all(log.conn) == incremental
            for seq, snapshot in snapshots:
                assert state_at(log, projection, until=seq) == snapshot[index]


ANY_EVENT = st.sampled_from(
    [
        JobSubmitted(kind="chat", model="m", request={}, origin="async"),
        JobStarted(attempt=1, backend="b"),
        JobStarted(attempt=2, backend="b"),
        JobAttemptFailed(attempt=1, error="e", retryable=True),
        JobRequeued(reason="retry"),
        JobSucceeded(result={}),
        JobFailed(error="e"),
        JobCancelled(reason="user"),
        JobPruned(),
    ]
)


def legal(state: str | None, attempts: int, event: Event) -> bool:
    if isinstance(event, JobSubmitted):
        return state is None
    if isinstance(event, JobStarted):
        return state == "queued" and event.attempt == attempts + 1
    if isinstance(event, JobAttemptFailed):
        return state == "running" and event.attempt == attempts
    if isinstance(event, JobCancelled):
        return state in ("queued", "running")
    if isinstance(event, JobPruned):
        return state in TERMINAL_STATES
    return state == "running"


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(st.integers(0, 2), ANY_EVENT), min_size=1, max_size=40))
def test_the_log_accepts_exactly_the_legal_transitions(steps: list[tuple[int, Event]]) -> None:
    jobs = [new_ulid() for _ in range(3)]
    model: dict[str, tuple[str | None, int]] = {job: (None, 0) for job in jobs}
    with fresh_log() as log:
        for index, event in steps:
            job = jobs[index]
            state, attempts = model[job]
            (result,) = log.append_many([Append(job, [event])])
            assert isinstance(result, list) == legal(state, attempts, event), (state, event)
            if isinstance(result, IllegalTransition):
                continue
            stored = JobsProjection().load(log.conn, [job]).get(job)
            model[job] = (stored.state, stored.attempts) if stored else ("pruned", attempts)
        assert state_at(log, JobsProjection()) == JobsProjection().load_all(log.conn)
