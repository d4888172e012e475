"""The webhook dispatcher's timing, exactly, on Trio's MockClock.

A real journal, reader, dispatcher and sender over a log on disk; the receiver
is a network of the test's own under the sender's httpcore, which answers at once
without I/O, so that the clock only moves when every task waits for a retry.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpcore
import pytest
import trio
import trio.testing

from foreman.actors.dispatcher import Dispatcher
from foreman.actors.journal import Journal, JournalClient
from foreman.events.log import format_timestamp
from foreman.events.reader import Reader
from foreman.events.types import JobSubmitted, WebhookAttemptFailed
from foreman.ids import new_ulid
from foreman.webhooks.policy import MAX_RETRY_AFTER, RetryPolicy
from foreman.webhooks.sender import Sender
from tests.running import of_type, until

EPOCH = datetime(2026, 11, 28, tzinfo=UTC)
HOOK = "http://receiver.test/hook"
OUTCOME = of_type("WebhookDelivered", "WebhookAbandoned")
"""For :func:`until`: the next delivered or abandoned outcome committed."""
UNBOUNDED = math.inf
"""No bound on a wait: the MockClock's seconds are the schedule under test."""


def response(status: int, **headers: str) -> bytes:
    """An answer as a receiver sends it."""
    named = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    return f"HTTP/1.1 {status} X\r\ncontent-length: 6\r\n{named}\r\nanswer".encode()


class Receiver(httpcore.AsyncNetworkStream):
    """A connection to the receiver: each read is the whole answer to the request just
    sent (httpcore reads again only for the next one)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        pass

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return self.rig.answer()

    async def aclose(self) -> None:
        pass


class Network(httpcore.AsyncNetworkBackend):
    """The sender's network: every connection reaches the receiver."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return Receiver(self.rig)


def trio_wall_clock() -> datetime:
    """Wall-clock time that moves with Trio's (mock) clock, so ``retry_at`` is exact."""
    return EPOCH + timedelta(seconds=trio.current_time())


class Rig:
    def __init__(self, db_path: Path, journal: JournalClient, reader: Reader) -> None:
        self.db_path = db_path
        self.journal = journal
        self.reader = reader
        self.answers: list[bytes] = []
        self.attempts: list[float] = []

    def answer(self) -> bytes:
        self.attempts.append(trio.current_time())
        return self.answers.pop(0) if self.answers else response(200)

    async def start(
        self, nursery: trio.Nursery, *, random: Callable[[], float] = lambda: 0.0
    ) -> trio.CancelScope:
        """A dispatcher in a scope of its own, so a test can stop it as a crash would."""
        sender = Sender(
            key=None,
            timeout=10,
            network=Network(self),
            connections=4,
        )
        dispatcher = Dispatcher(
            self.journal.clone(),
            self.reader,
            sender,
            policy=RetryPolicy(backoff=2.0, max_retries=5, jitter=0.2),
            concurrency=4,
            base_url="http://foreman.test",
            random=random,
            clock=trio_wall_clock,
        )
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await dispatcher.run(task_status=task_status)

        await nursery.start(run)
        return scope

    async def submit(self) -> str:
        job_id = new_ulid()
        submitted = JobSubmitted(
            kind="chat",
            model="llama3",
            request={"model": "llama3", "messages": [], "stream": False},
            origin="async",
            state_webhook_url=HOOK,
        )
        await self.journal.append(job_id, [submitted], expected_version=0)
        return job_id


@pytest.fixture
async def rig(db_path: Path, nursery: trio.Nursery) -> Rig:
    journal = await nursery.start(Journal(db_path).run)
    reader = await nursery.start(Reader(db_path).run)
    return Rig(db_path, journal, reader)


@pytest.mark.parametrize("random", [0.0, 0.999])
async def test_retries_follow_the_backoff_schedule_exactly_then_the_delivery_is_abandoned(
    rig: Rig, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, random: float
) -> None:
    rig.answers = [response(503) for _ in range(6)]
    committed = await rig.journal.subscribe()
    await rig.start(nursery, random=lambda: random)
    start = trio.current_time()
    await rig.submit()
    assert (await until(committed, OUTCOME, within=UNBOUNDED)).type == "WebhookAbandoned"

    waits = [later - earlier for earlier, later in itertools.pairwise(rig.attempts)]
    stretch = 1 + 0.2 * random
    assert waits == pytest.approx(
        [2 * stretch, 4 * stretch, 8 * stretch, 16 * stretch, 32 * stretch]
    )
    assert rig.attempts[0] == pytest.approx(start)


async def test_retry_after_is_honoured_when_longer_than_the_backoff_and_capped(
    rig: Rig, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    rig.answers = [
        response(429, retry_after="100"),
        response(503, retry_after="1"),
        response(503, retry_after="999999"),
    ]
    committed = await rig.journal.subscribe()
    await rig.start(nursery)
    await rig.submit()
    assert (await until(committed, OUTCOME, within=UNBOUNDED)).type == "WebhookDelivered"
    waits = [later - earlier for earlier, later in itertools.pairwise(rig.attempts)]
    assert waits == pytest.approx([100, 4, MAX_RETRY_AFTER])


async def test_after_a_restart_a_failed_delivery_waits_out_its_recorded_retry_at(
    rig: Rig, nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    # The clock moves only when the test moves it, so the first dispatcher is
    # stopped before its retry is due, as by a crash half-way through the backoff.
    rig.answers = [response(503)]
    committed = await rig.journal.subscribe()
    first = await rig.start(nursery)
    await rig.submit()
    failed = await until(committed, of_type("WebhookAttemptFailed"), within=UNBOUNDED)
    assert isinstance(failed.event, WebhookAttemptFailed)
    assert failed.event.retry_at == format_timestamp(EPOCH + timedelta(seconds=2))
    first.cancel()

    mock_clock.jump(0.5)
    await rig.start(nursery)
    mock_clock.jump(1.49)
    await trio.testing.wait_all_tasks_blocked()
    assert rig.attempts == [0.0]
    mock_clock.jump(0.01)
    assert (await until(committed, OUTCOME, within=UNBOUNDED)).type == "WebhookDelivered"
    assert rig.attempts == [0.0, pytest.approx(2.0)]
