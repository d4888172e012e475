"""The example receiver of docs/webhooks.md (docs/examples/webhook_receiver.py), run
as a user runs it, against a Foreman with the simulator: it verifies each
notification, prints each new one once, and refuses forgeries."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
import trio

from foreman.events.deliveries import job_deliveries
from foreman.events.log import EventLog
from foreman.events.types import RecordedEvent, delivery_stream
from foreman.webhooks.payload import job_as_of, render
from foreman.webhooks.signing import secret_key, signature_headers
from tests.processes import ROOT, START_SECONDS, Process, running
from tests.running import Done, counted, recorded, start_foreman, until

pytestmark = pytest.mark.slow  # the example receiver as a process

EXAMPLE = ROOT / "docs" / "examples" / "webhook_receiver.py"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PLAIN = "correct horse battery staple"
CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hello"}]}
LIFE = ["job.queued", "job.running", "job.succeeded"]
LISTENING = re.compile(r"listening on (http://\S+)")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


@pytest.fixture(params=[WHSEC, PLAIN], ids=["whsec", "plain"])
def secret(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def receiver(tmp_path: Path, secret: str) -> Iterator[Process]:
    """``python webhook_receiver.py --listen 127.0.0.1:0``, its output in a file (a pipe
    nobody reads could fill up and block it), killed however the test ends."""
    output = tmp_path / "receiver.out"
    with output.open("ab") as sink:
        popen = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--listen", "127.0.0.1:0"],
            cwd=tmp_path,
            env=os.environ | {"WEBHOOK_SECRET": secret},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    with running(Process(popen, output)) as process:
        yield process


async def listening(process: Process) -> str:
    """The URL the receiver printed once it was bound (it listens from then on)."""
    with trio.fail_after(START_SECONDS):
        while not (found := LISTENING.search(process.text())):
            if process.popen.poll() is not None:
                raise AssertionError(f"the receiver exited:\n{process.text()}")
            await trio.sleep(0.02)
    return found[1]


def printed(process: Process) -> list[str]:
    """The notifications the receiver reported. It prints (and flushes) before it
    answers, so once Foreman has its answer, the line is in the file."""
    return [line for line in process.text().splitlines() if line.startswith("job ")]


def delivered(job_id: str, count: int, process: Process) -> Done:
    """For :func:`until`: true once ``count`` more of the job's notifications are
    recorded delivered; one abandoned fails the test, with the receiver's output."""
    stream = delivery_stream(job_id)
    deliveries = counted(count, recorded(stream, "WebhookDelivered"))

    def done(event: RecordedEvent) -> bool:
        if event.stream == stream and event.type == "WebhookAbandoned":
            raise AssertionError(f"abandoned: {event.event}\n{process.text()}")
        return deliveries(event)

    return done


def sent(db_path: Path, job_id: str, base_url: str) -> list[tuple[str, bytes]]:
    """Each notification's id and the exact body Foreman sends for it, every time."""
    log = EventLog.open(db_path, read_only=True)
    try:
        return [
            (delivery.id, render(delivery, job_as_of(log, job_id, delivery.seq), base_url))
            for delivery in job_deliveries(log, job_id)
        ]
    finally:
        log.close()


def signed(
    key: bytes, webhook_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The headers Foreman sends with ``body``, signed with ``key``."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
    } | signature_headers(key, webhook_id, timestamp, body)


async def test_the_example_receiver_prints_each_notification_once_and_refuses_forgeries(
    db_path: Path,
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    receiver: Process,
    secret: str,
) -> None:
    url = await listening(receiver)
    async for foreman in start_foreman(
        nursery, db_path, webhook_secret=secret, webhook_allowed_hosts="127.0.0.1"
    ):
        committed = await foreman.running.journal.subscribe()
        body = {"kind": "chat", "request": CHAT, "state_webhook_url": url}
        submitted = await client.post(f"{foreman.url}/jobs", json=body)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        await until(committed, delivered(job_id, 3, receiver), within=20)

        lines = [f"job {job_id} {kind}" for kind in LIFE]
        assert printed(receiver) == lines
        job_url = f"{foreman.url}/jobs/{job_id}"
        webhooks = (await client.get(job_url)).json()["webhooks"]
        assert [(w["state"], w["attempts"], w["last_status"]) for w in webhooks] == [
            ("delivered", 1, 204)
        ] * 3

        notifications = sent(db_path, job_id, foreman.url)
        last_id, last_body = notifications[-1]
        assert json.loads(last_body)["id"] == last_id == webhooks[-1]["id"]
        key = secret_key(secret)
        # A notification never seen, so that only verification keeps it from being printed.
        forged_id = "01FORGEDFORGEDFORGEDFORGED"
        forged = last_body.replace(last_id.encode(), forged_id.encode())
        forgeries = {
            "wrong key": signed(b"not the secret", forged_id, forged),
            "unsigned": {"content-type": "application/json", "webhook-id": forged_id},
            "malformed signature": signed(key, forged_id, forged) | {"webhook-signature": "x"},
            "replayed after 10 min": signed(key, forged_id, forged, int(time.time()) - 600),
        }
        for name, headers in forgeries.items():
            answer = await client.post(url, content=forged, headers=headers)
            assert answer.status_code == 401, name
        tampered = last_body.replace(b'"succeeded"', b'"failed"')
        assert tampered != last_body
        answer = await client.post(url, content=tampered, headers=signed(key, last_id, last_body))
        assert answer.status_code == 401

        # The same notification again, validly signed: acknowledged, not reported again.
        again = await client.post(url, content=last_body, headers=signed(key, last_id, last_body))
        assert again.status_code == 204
        # And sent again by Foreman itself, with the same id and bytes.
        first_id = webhooks[0]["id"]
        redeliver = await client.post(f"{job_url}/webhooks/redeliver", json={"ids": [first_id]})
        assert redeliver.status_code == 202, redeliver.text
        await until(committed, delivered(job_id, 1, receiver), within=20)
        assert (await client.get(job_url)).json()["webhooks"][0]["last_status"] == 204

        assert printed(receiver) == lines
        assert receiver.popen.poll() is None


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("webhook_receiver", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("secret", [WHSEC, PLAIN])
def test_the_examples_x_foreman_signature_check_matches_foremans_signing(secret: str) -> None:
    example = load_example()
    key = example.secret_key(secret)
    assert key == secret_key(secret)
    body = b'{"id":"01J","type":"job.queued"}'
    header = signature_headers(key, "01J", 1_700_000_000, body)["X-Foreman-Signature"]
    assert example.foreman_signature_ok(key, body, header)
    assert not example.foreman_signature_ok(key, body + b" ", header)
    assert not example.foreman_signature_ok(b"another key", body, header)
    assert not example.foreman_signature_ok(key, body, None)
    assert not example.foreman_signature_ok(key, body, "sha256=ü")
