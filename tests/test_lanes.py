"""The dispatcher's lanes on their own: each job's notifications in order, one lane
in one place at a time, waits on the caller's clock."""

from __future__ import annotations

import math

from foreman.events.deliveries import Delivery
from foreman.webhooks import Lanes


def delivery(job: str, seq: int, retry_at: str | None = None) -> Delivery:
    return Delivery(
        id=f"{job}-{seq}",
        job_id=job,
        seq=seq,
        type="job.queued",
        url="http://hooks.example/",
        occurred_at="2026-01-01T00:00:00.000000Z",
        state="pending",
        attempts=0,
        pending_since=seq,
        updated_at="2026-01-01T00:00:00.000000Z",
        retry_at=retry_at,
    )


def at_once_or_later(head: Delivery) -> float:
    """A head with a ``retry_at`` may go at time 10; any other at once."""
    return 10.0 if head.retry_at else -math.inf


def test_a_jobs_notifications_go_one_at_a_time_in_order_and_jobs_take_turns() -> None:
    lanes = Lanes(at_once_or_later)
    for item in (delivery("a", 3), delivery("b", 2), delivery("a", 1), delivery("a", 5)):
        lanes.add(item)
    assert lanes.release(now=0) == 2  # one lane per job, whatever it holds
    sent = []
    for _ in range(4):
        head = lanes.take()
        sent.append(head.id)
        lanes.done(head.job_id)
        lanes.release(now=0)
    # a's head came first; what was added behind it follows in seq order, after b's turn
    assert sent == ["a-3", "b-2", "a-1", "a-5"]
    assert len(lanes) == 0


def test_a_failed_head_holds_its_lane_until_its_time_and_later_ones_wait_behind_it() -> None:
    lanes = Lanes(at_once_or_later)
    lanes.add(delivery("a", 1))
    lanes.release(now=0)
    head = lanes.take()
    lanes.retry(head._replace(attempts=1), due=5.0)
    lanes.add(delivery("a", 2))  # joins the waiting lane, behind its head
    assert lanes.next_due == 5.0
    assert lanes.release(now=4.9) == 0
    assert lanes.release(now=5.0) == 1
    assert lanes.take() == head._replace(attempts=1)


def test_a_lane_whose_next_head_has_a_retry_time_waits_for_it() -> None:
    lanes = Lanes(at_once_or_later)
    lanes.add(delivery("a", 1))
    lanes.add(delivery("a", 2, retry_at="2026-01-01T00:00:10Z"))
    lanes.release(now=0)
    lanes.done(lanes.take().job_id)
    assert lanes.release(now=0) == 0
    assert lanes.next_due == 10.0
    assert lanes.release(now=10) == 1
    assert lanes.take().id == "a-2"
