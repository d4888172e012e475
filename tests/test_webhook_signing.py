"""Signatures, the retry policy and the sender, part by part (destinations:
test_webhook_targets.py)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from foreman.webhooks.guard import GuardedNetwork
from foreman.webhooks.policy import (
    MAX_RETRY_AFTER,
    RetryPolicy,
    is_retryable,
    retry_after,
)
from foreman.webhooks.sender import Sender
from foreman.webhooks.signing import secret_key, signature_headers
from foreman.webhooks.targets import Targets

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_" + base64.b64encode(bytes(range(32))).decode(),
        "whsec_" + base64.b64encode(b"24 bytes of secret key!!").decode().rstrip("="),
        "a plain secret, keyed by its UTF-8 bytes: é",
    ],
)
def test_standard_webhooks_verifies_what_foreman_signs(secret: str) -> None:
    body = b'{"id": "01J", "type": "job.queued"}'
    timestamp = int(datetime.now(UTC).timestamp())
    headers = {"webhook-id": "01J", "webhook-timestamp": str(timestamp)}
    headers |= signature_headers(secret_key(secret), "01J", timestamp, body)
    receiver = Webhook(secret if secret.startswith("whsec_") else secret.encode())
    assert receiver.verify(body, headers) == {"id": "01J", "type": "job.queued"}
    with pytest.raises(WebhookVerificationError):
        receiver.verify(body + b" ", headers)


def test_the_foreman_signature_is_the_hex_hmac_of_the_body() -> None:
    headers = signature_headers(b"Jefe", "id", 1, b"what do ya want for nothing?")
    # RFC 4231, test case 2: HMAC-SHA256 of that body with that key.
    assert headers["X-Foreman-Signature"] == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


@pytest.mark.parametrize(("secret", "problem"), [("whsec_!!!", "base64"), ("", "empty")])
def test_unusable_secrets_are_refused(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        secret_key(secret)


def test_the_backoff_doubles_is_stretched_by_jitter_and_respects_retry_after() -> None:
    policy = RetryPolicy(backoff=2.0, jitter=0.2)
    assert [policy.delay(n, None, 0.0) for n in range(1, 6)] == [2, 4, 8, 16, 32]
    assert policy.delay(1, None, 0.5) == pytest.approx(2.2)
    assert policy.delay(2, 30.0, 0.0) == 30.0
    assert policy.delay(3, 1.0, 0.0) == 8.0
    assert policy.delay(1, 10**9, 0.0) == MAX_RETRY_AFTER


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Sat, 28 Nov 2026 12:01:30 GMT", 90.0),
        ("Sat, 28 Nov 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
    ],
)
def test_retry_after_reads_seconds_or_an_http_date(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after(header, NOW) == seconds


def test_which_statuses_are_worth_another_try() -> None:
    assert [s for s in (400, 404, 408, 409, 410, 422, 429, 500, 502, 503) if is_retryable(s)] == [
        408,
        429,
        500,
        502,
        503,
    ]


async def test_a_host_that_cannot_be_named_is_a_final_failure_not_a_crash() -> None:
    sender = Sender(key=None, timeout=5, network=GuardedNetwork(Targets()), connections=1)
    try:
        attempt = await sender.send("http://a..b/hook", "01J", b"{}")
    finally:
        await sender.aclose()
    assert attempt.status is None
    assert not attempt.retryable
    assert attempt.error is not None
    assert attempt.error.startswith("cannot send to this URL: UnicodeError")
