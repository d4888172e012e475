"""State webhooks over real HTTP: a Foreman with the simulator, a receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from click.testing import CliRunner, Result
from standardwebhooks import Webhook

from foreman.api.jobs import REDELIVERIES, REDELIVERY_WINDOW
from foreman.cli import main
from foreman.events.audit import verify
from foreman.events.log import EventLog
from foreman.events.types import (
    RecordedEvent,
    WebhookAttemptFailed,
    delivery_stream,
)
from tests.receiver import RECEIVER_HOST, Answer, Receiver, free_port, serving
from tests.running import Foreman, counted, of_type, start_foreman, until

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hello"}]}
LIFE = ["job.queued", "job.running", "job.succeeded"]
OUTCOMES = {"WebhookDelivered", "WebhookAbandoned"}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


async def submit(http: httpx.AsyncClient, foreman: Foreman, url: str, **extra: Any) -> str:
    body = {"kind": "chat", "request": CHAT, "state_webhook_url": url} | extra
    response = await http.post(f"{foreman.url}/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


async def cli(*args: str) -> Result:
    """``foreman webhooks ARGS``, on a thread: it talks HTTP to the Foreman in this loop."""
    return await trio.to_thread.run_sync(partial(CliRunner().invoke, main, ["webhooks", *args]))


@dataclass
class Settled:
    """For :func:`until`: true once ``count`` more of the job's notifications are
    delivered or abandoned; ``events`` keeps the job's delivery events seen till then."""

    job_id: str
    count: int
    events: list[RecordedEvent] = field(default_factory=list)

    def __call__(self, event: RecordedEvent) -> bool:
        if event.stream == delivery_stream(self.job_id):
            self.events.append(event)
        return sum(event.type in OUTCOMES for event in self.events) >= self.count


async def one_settled_job(http: httpx.AsyncClient, foreman: Foreman, url: str, **extra: Any) -> str:
    """Submit a job whose webhook goes to ``url``; its id, once its three
    notifications are delivered or abandoned."""
    committed = await foreman.running.journal.subscribe()
    job_id = await submit(http, foreman, url, **extra)
    await until(committed, Settled(job_id, 3), within=20)
    return job_id


async def test_each_state_is_posted_in_order_signed_for_standard_webhooks_receivers(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    async with serving(Receiver()) as receiver:
        async for foreman in start_foreman(
            nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST, webhook_secret=SECRET
        ):
            job_id = await one_settled_job(client, foreman, receiver.url, metadata={"ticket": 7})

            received = receiver.received
            assert [r.payload["type"] for r in received] == LIFE
            for request in received:
                # Exactly as a receiver checks it, with the reference implementation:
                payload = Webhook(SECRET).verify(request.body, request.headers)
                assert payload["id"] == request.id
                key = Webhook(SECRET)._whsecret
                expected = hmac.new(key, request.body, hashlib.sha256).hexdigest()
                assert request.headers["x-foreman-signature"] == f"sha256={expected}"
                assert request.headers["content-type"] == "application/json"
                assert payload["job"]["id"] == job_id
                assert payload["job"]["metadata"] == {"ticket": 7}
                assert payload["job"]["webhooks"] is None
            states = [r.payload["job"]["state"] for r in received]
            assert states == ["queued", "running", "succeeded"]
            done = received[-1].payload["job"]
            assert done["result"]["message"]["role"] == "assistant"
            assert done["artifacts"]
            for artifact in done["artifacts"]:
                assert artifact["inline"] is None
                assert artifact["url"].startswith(f"{foreman.url}/jobs/{job_id}/artifacts/")
                fetched = await client.get(artifact["url"])
                assert hashlib.sha256(fetched.content).hexdigest() == artifact["sha256"]

            view = (await client.get(f"{foreman.url}/jobs/{job_id}")).json()
            assert view["state_webhook_url"] == receiver.url
            assert [(w["type"], w["state"], w["attempts"]) for w in view["webhooks"]] == [
                (kind, "delivered", 1) for kind in LIFE
            ]
            assert [w["id"] for w in view["webhooks"]] == [r.id for r in received]


async def test_a_plain_secret_keys_the_hmac_with_its_utf8_bytes(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    secret = "correct horse battery staple"
    async with serving(Receiver()) as receiver:
        async for foreman in start_foreman(
            nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST, webhook_secret=secret
        ):
            await one_settled_job(client, foreman, receiver.url)
            assert [request.payload["type"] for request in receiver.received] == LIFE
            for request in receiver.received:
                Webhook(secret.encode()).verify(request.body, request.headers)


async def test_without_a_secret_webhooks_carry_their_id_but_no_signature(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    async with serving(Receiver()) as receiver:
        async for foreman in start_foreman(nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST):
            await one_settled_job(client, foreman, receiver.url)
            first = receiver.received[0]
            assert first.headers["webhook-id"] == first.payload["id"]
            assert first.headers["webhook-timestamp"].isdigit()
            assert "webhook-signature" not in first.headers
            assert "x-foreman-signature" not in first.headers


async def test_503_three_times_then_200_is_retried_with_the_same_id_and_order_held(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    receiver = Receiver(Answer(503), Answer(503), Answer(503))
    async with serving(receiver):
        async for foreman in start_foreman(
            nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST, webhook_backoff="10ms"
        ):
            committed = await foreman.running.journal.subscribe()
            job_id = await submit(client, foreman, receiver.url)
            settled = Settled(job_id, 3)
            await until(committed, settled, within=20)
            events = settled.events

            types = [r.payload["type"] for r in receiver.received]
            assert types == ["job.queued"] * 4 + LIFE[1:]
            assert len({r.id for r in receiver.received[:4]}) == 1
            assert len({r.body for r in receiver.received[:4]}) == 1
            assert [e.type for e in events][:4] == ["WebhookAttemptFailed"] * 3 + [
                "WebhookDelivered"
            ]
            view = (await client.get(f"{foreman.url}/jobs/{job_id}")).json()
            queued = view["webhooks"][0]
            assert (queued["state"], queued["attempts"], queued["last_status"]) == (
                "delivered",
                4,
                200,
            )
            assert queued["last_error"] is None
            assert all(e.event.error.startswith("HTTP 503") for e in events[:3])  # type: ignore[attr-defined]


async def test_a_garbled_retry_after_is_ignored_and_the_delivery_retried(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    # The byte 0xB2 reads as "²", a digit to str.isdigit() but not to float().
    receiver = Receiver(Answer(503, {"retry-after": "\xb2"}))
    async with serving(receiver):
        async for foreman in start_foreman(
            nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST, webhook_backoff="10ms"
        ):
            job_id = await one_settled_job(client, foreman, receiver.url)
            assert receiver.by_job() == {job_id: LIFE}
            assert len(receiver.received) == 4


async def test_a_receiver_down_then_up_gets_every_notification_in_order(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    port = free_port()
    url = f"http://{RECEIVER_HOST}:{port}/hook"
    async for foreman in start_foreman(
        nursery,
        db_path,
        webhook_allowed_hosts=RECEIVER_HOST,
        webhook_backoff="20ms",
        webhook_max_retries=30,
    ):
        committed = await foreman.running.journal.subscribe()
        job_id = await submit(client, foreman, url)
        await until(committed, of_type("WebhookAttemptFailed"))
        view = (await client.get(f"{foreman.url}/jobs/{job_id}")).json()
        first = view["webhooks"][0]
        assert first["state"] == "pending"
        assert first["next_attempt_at"] is not None
        assert "ConnectError" in first["last_error"]

        async with serving(Receiver(), port) as receiver:
            await until(committed, Settled(job_id, 3), within=20)
            assert receiver.by_job() == {job_id: LIFE}


async def test_a_receiver_stalling_past_the_timeout_is_cut_off_and_tried_again(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    receiver = Receiver(Answer(stall=30))
    async with serving(receiver):
        async for foreman in start_foreman(
            nursery,
            db_path,
            webhook_allowed_hosts=RECEIVER_HOST,
            webhook_timeout="200ms",
            webhook_backoff="10ms",
        ):
            committed = await foreman.running.journal.subscribe()
            job_id = await submit(client, foreman, receiver.url)
            settled = Settled(job_id, 3)
            await until(committed, settled, within=20)
            failed = settled.events[0].event
            assert failed.type == "WebhookAttemptFailed"
            assert failed.error == "no answer within 0.2s"  # type: ignore[attr-defined]
            assert receiver.by_job() == {job_id: LIFE}


async def test_a_receiver_trickling_an_endless_answer_is_read_only_so_far(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    # 600 chunks of 16 KiB take 6 s to send: reading them all would outlast the timeout.
    receiver = Receiver(Answer(trickle=600))
    async with serving(receiver):
        async for foreman in start_foreman(
            nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST, webhook_timeout="2s"
        ):
            job_id = await one_settled_job(client, foreman, receiver.url)
            view = (await client.get(f"{foreman.url}/jobs/{job_id}")).json()
            assert [(w["state"], w["attempts"]) for w in view["webhooks"]] == [("delivered", 1)] * 3


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (Answer(400), "HTTP 400: no"),
        (Answer(410), "HTTP 410: no"),
        (
            Answer(302, {"location": "http://elsewhere.example/"}),
            "HTTP 302: redirects are not followed (http://elsewhere.example/)",
        ),
    ],
)
async def test_a_4xx_or_a_redirect_is_final_and_the_job_goes_on(
    db_path: Path,
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    answer: Answer,
    error: str,
) -> None:
    async with serving(Receiver(answer)) as receiver:
        async for foreman in start_foreman(nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST):
            job_id = await one_settled_job(client, foreman, receiver.url)
            view = (await client.get(f"{foreman.url}/jobs/{job_id}")).json()
            queued, *rest = view["webhooks"]
            assert (queued["state"], queued["attempts"], queued["last_error"]) == (
                "abandoned",
                1,
                error,
            )
            assert [w["state"] for w in rest] == ["delivered", "delivered"]


async def test_abandoned_after_the_last_retry_then_redelivered_by_api_and_cli(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    receiver = Receiver(*[Answer(503)] * 3)
    async with serving(receiver):
        async for foreman in start_foreman(
            nursery,
            db_path,
            webhook_allowed_hosts=RECEIVER_HOST,
            webhook_backoff="10ms",
            webhook_max_retries=2,
        ):
            job_id = await one_settled_job(client, foreman, receiver.url)
            committed = await foreman.running.journal.subscribe()
            jobs_url = f"{foreman.url}/jobs/{job_id}"
            queued = (await client.get(jobs_url)).json()["webhooks"][0]
            assert (queued["state"], queued["attempts"]) == ("abandoned", 3)

            redelivered = await client.post(f"{jobs_url}/webhooks/redeliver")
            assert redelivered.status_code == 202, redelivered.text
            again = redelivered.json()["redelivered"]
            assert [(w["id"], w["state"], w["attempts"]) for w in again] == [
                (queued["id"], "pending", 0)
            ]
            await until(committed, Settled(job_id, 1), within=20)
            assert receiver.received[-1].id == queued["id"]
            assert (await client.get(jobs_url)).json()["webhooks"][0]["state"] == "delivered"

            nothing = await client.post(f"{jobs_url}/webhooks/redeliver")
            assert nothing.status_code == 409
            assert "nothing to send" in nothing.json()["error"]

            # An operator sends a delivered one again, from the command line.
            result = await cli("redeliver", job_id, "--id", queued["id"], "--url", foreman.url)
            assert result.exit_code == 0, result.output
            assert f"{queued['id']}  job.queued  pending again" in result.output
            await until(committed, Settled(job_id, 1), within=20)
            assert [r.id for r in receiver.received].count(queued["id"]) == 5

            log = EventLog.open(db_path, read_only=True)
            try:
                assert verify(log) == []
            finally:
                log.close()


async def test_redeliver_refuses_what_cannot_be_sent_again(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    async with serving(Receiver()) as receiver:
        async for foreman in start_foreman(nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST):
            job_id = await one_settled_job(client, foreman, receiver.url)
            base = f"{foreman.url}/jobs"

            plain = await client.post(base, json={"kind": "chat", "request": CHAT})
            plain_id = plain.json()["job_id"]
            answer = await client.post(f"{base}/{plain_id}/webhooks/redeliver")
            assert answer.status_code == 409
            assert "without a state_webhook_url" in answer.json()["error"]

            unknown = await client.post(
                f"{base}/{job_id}/webhooks/redeliver", json={"ids": ["01NOPE"]}
            )
            assert unknown.status_code == 404
            assert "01NOPE" in unknown.json()["error"]
            missing = await client.post(f"{base}/01JZZZZZZZZZZZZZZZZZZZZZZZ/webhooks/redeliver")
            assert missing.status_code == 404
            empty = await client.post(f"{base}/{job_id}/webhooks/redeliver", json={"ids": []})
            assert empty.status_code == 422

            result = await cli("redeliver", plain_id, "--url", foreman.url)
            assert result.exit_code == 1
            assert "without a state_webhook_url" in result.output


async def test_each_jobs_notifications_keep_their_order_while_jobs_deliver_concurrently(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    pace = random.Random(5)
    # Every third answer is a 503: retries must not let a later state overtake.
    answers = [Answer(503) if n % 3 == 0 else Answer() for n in range(60)]
    receiver = Receiver(*answers, stall_between=lambda: pace.uniform(0, 0.02))
    async with serving(receiver):
        async for foreman in start_foreman(
            nursery,
            db_path,
            webhook_allowed_hosts=RECEIVER_HOST,
            webhook_backoff="5ms",
            webhook_concurrency=8,
        ):
            committed = await foreman.running.journal.subscribe()
            job_ids = [await submit(client, foreman, receiver.url) for _ in range(30)]
            # Each notification is delivered or abandoned once: all 90 of them.
            await until(committed, counted(3 * len(job_ids), of_type(*OUTCOMES)), within=30)
            assert receiver.by_job() == dict.fromkeys(job_ids, LIFE)
            assert receiver.most_in_flight > 1


async def test_allowed_hosts_are_exceptions_to_the_public_addresses_rule_not_a_list_of_all(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """FOREMAN_WEBHOOK_ALLOWED_HOSTS names hosts that may be internal (ADR-0040): a
    host it does not name is still accepted, and judged by its addresses."""
    async for foreman in start_foreman(
        nursery, db_path, webhook_allowed_hosts="hooks.example, *.internal.example, 192.0.2.10"
    ):
        body = {"kind": "chat", "request": CHAT}
        for url in (
            "http://hooks.example/x",
            "https://a.internal.example/y",
            "https://elsewhere.example/z",  # not named: judged when sent
            "http://192.0.2.10:8000/x",  # documentation's: nothing answers there
            "http://0xc000020a:8000/x",  # the same address, spelled otherwise
        ):
            ok = await client.post(f"{foreman.url}/jobs", json=body | {"state_webhook_url": url})
            assert ok.status_code == 202, url
        refused = await client.post(
            f"{foreman.url}/jobs", json=body | {"state_webhook_url": "http://10.1.2.4:8000/x"}
        )
        assert refused.status_code == 422
        assert refused.json()["detail"] == [
            {
                "field": "state_webhook_url",
                "message": "10.1.2.4 is a private address: webhooks go only to public "
                "addresses unless FOREMAN_WEBHOOK_ALLOWED_HOSTS names the host",
            }
        ]


def test_the_cli_finds_foreman_by_foreman_listen_and_says_when_it_is_not_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    monkeypatch.delenv("FOREMAN_URL", raising=False)
    monkeypatch.setenv("FOREMAN_LISTEN", f"0.0.0.0:{port}")
    result = CliRunner().invoke(main, ["webhooks", "redeliver", "01JOB"])
    assert result.exit_code == 1
    assert f"no answer from Foreman at http://127.0.0.1:{port}" in result.output
    assert "is it running?" in result.output


async def test_a_job_carried_over_a_restart_keeps_notifying_in_order(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    async with serving(Receiver()) as receiver:
        # The job is running, held by the backend, when Foreman stops: it is requeued.
        async for foreman in start_foreman(
            nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST, shutdown_grace="0"
        ):
            committed = await foreman.running.journal.subscribe()
            sim = str((await client.get(f"{foreman.url}/healthz")).json()["backends"][0]["url"])
            stall = {"kind": "stall", "seconds": 30, "times": 1}
            await client.post(f"{sim}/_sim/faults", json=stall)
            job_id = await submit(client, foreman, receiver.url)
            await until(committed, of_type("JobStarted"))
        # A new Foreman runs it; its dispatcher follows a job it did not see submitted.
        async for _ in start_foreman(nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST):
            # The receiver, not the journal: the job may be done before a subscription.
            # (A notification the first Foreman sent may come again: at least once.)
            while "job.succeeded" not in receiver.by_job().get(job_id, []):
                await receiver.until(len(receiver.received) + 1)
        assert receiver.by_job() == {
            job_id: ["job.queued", "job.running", "job.queued", "job.running", "job.succeeded"]
        }


async def test_a_notification_still_pending_is_not_redelivered(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    url = f"http://{RECEIVER_HOST}:{free_port()}/hook"  # nothing listens: it stays pending
    async for foreman in start_foreman(
        nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST, webhook_backoff="1h"
    ):
        committed = await foreman.running.journal.subscribe()
        job_id = await submit(client, foreman, url)
        failed = (await until(committed, of_type("WebhookAttemptFailed"))).event
        assert isinstance(failed, WebhookAttemptFailed)
        answer = await client.post(
            f"{foreman.url}/jobs/{job_id}/webhooks/redeliver", json={"ids": [failed.delivery]}
        )
        assert answer.status_code == 409
        assert "it is still being delivered" in answer.json()["error"]


async def test_redelivery_is_rate_limited_per_job_by_the_log(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    async with serving(Receiver()) as receiver:
        async for foreman in start_foreman(nursery, db_path, webhook_allowed_hosts=RECEIVER_HOST):
            job_id = await one_settled_job(client, foreman, receiver.url)
            committed = await foreman.running.journal.subscribe()
            url = f"{foreman.url}/jobs/{job_id}/webhooks/redeliver"
            first = (await client.get(f"{foreman.url}/jobs/{job_id}")).json()["webhooks"][0]
            for _ in range(REDELIVERIES):
                again = await client.post(url, json={"ids": [first["id"]]})
                assert again.status_code == 202, again.text
                await until(committed, Settled(job_id, 1), within=20)
            refused = await client.post(url, json={"ids": [first["id"]]})
            assert refused.status_code == 429
            assert f"sent again {REDELIVERIES} times in the last 1h" in refused.json()["error"]
            assert 0 < int(refused.headers["retry-after"]) <= REDELIVERY_WINDOW
            sent = [r.id for r in receiver.received].count(first["id"])
            assert sent == 1 + REDELIVERIES  # the refused one sent nothing
