"""kill -9 Foreman with webhook deliveries owed: after a restart every one arrives."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from standardwebhooks import Webhook

from foreman.events.deliveries import DeliveriesProjection
from foreman.events.log import EventLog
from tests.processes import Process, running, start_foreman_process, start_simulator
from tests.receiver import RECEIVER_HOST, Receiver, free_port, serving

pytestmark = pytest.mark.slow  # Foreman killed with kill -9 while deliveries are owed

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SIMULATOR = ("--load-latency", "0", "--token-latency", "0.005", "--tokens", "4")
LIFE = ["job.queued", "job.running", "job.succeeded"]
JOBS = 6
WEBHOOKS = {
    "webhook_secret": SECRET,
    "webhook_backoff": "50ms",
    "webhook_max_retries": "1000",
    "webhook_concurrency": "2",
    "webhook_allowed_hosts": RECEIVER_HOST,
}


def owed(db: Path) -> dict[str, str]:
    """Every delivery the log holds, and its state."""
    log = EventLog.open(db, read_only=True)
    try:
        return {
            delivery.id: delivery.state
            for deliveries in DeliveriesProjection().load_all(log.conn).values()
            for delivery in deliveries
        }
    finally:
        log.close()


async def until_owed(db: Path, done: Callable[[dict[str, str]], bool]) -> None:
    """Until the deliveries in the log satisfy ``done``: another process writes it, so
    there is nothing to wait on but the file."""
    with trio.fail_after(30):
        while not done(owed(db)):  # noqa: ASYNC110
            await trio.sleep(0.05)


async def start(tmp_path: Path, simulator: Process, db: Path, run: int) -> Process:
    return await trio.to_thread.run_sync(
        partial(
            start_foreman_process, tmp_path / f"foreman-{run}.log", simulator.url, db, **WEBHOOKS
        )
    )


async def test_kill_9_with_deliveries_pending_then_every_one_is_delivered_after_restart(
    tmp_path: Path,
) -> None:
    db = tmp_path / "foreman.db"
    port = free_port()
    hook = f"http://{RECEIVER_HOST}:{port}/hook"
    simulator = await trio.to_thread.run_sync(
        partial(start_simulator, tmp_path / "simulator.log", *SIMULATOR)
    )
    with running(simulator):
        # The receiver is down: every job runs to its end while its notifications wait.
        with running(await start(tmp_path, simulator, db, 1)) as foreman:
            async with httpx.AsyncClient(base_url=foreman.url, timeout=10) as http:
                body = {"kind": "chat", "request": {"model": "llama3", "messages": []}}
                for _ in range(JOBS):
                    submitted = await http.post("/jobs", json=body | {"state_webhook_url": hook})
                    assert submitted.status_code == 202
                await until_owed(db, lambda states: len(states) == JOBS * len(LIFE))
            foreman.kill()
        before = owed(db)
        assert set(before.values()) == {"pending"}

        # Up again, slowly: the second kill lands while some deliveries are on their way.
        receiver = Receiver(stall_between=lambda: 0.05)
        async with serving(receiver, port):
            with running(await start(tmp_path, simulator, db, 2)) as foreman:
                await receiver.until(4)
                foreman.kill()
            partly = owed(db)
            assert "pending" in partly.values()
            with running(await start(tmp_path, simulator, db, 3)):
                await until_owed(db, lambda states: set(states.values()) == {"delivered"})

    assert owed(db).keys() == before.keys()
    assert {request.id for request in receiver.received} == before.keys()
    assert sorted(receiver.by_job().values()) == [LIFE] * JOBS
    bodies: dict[str, bytes] = {}
    for request in receiver.received:
        Webhook(SECRET).verify(request.body, request.headers)
        # A notification sent again is the same bytes, whichever process sent it.
        assert bodies.setdefault(request.id, request.body) == request.body
