"""A receiver for Foreman's state webhooks: verify, deduplicate, acknowledge.

    WEBHOOK_SECRET=whsec_... python webhook_receiver.py [--listen 127.0.0.1:8000]

WEBHOOK_SECRET is Foreman's FOREMAN_WEBHOOK_SECRET (``whsec_`` + base64, or any
other text). Needs ``pip install standardwebhooks``; see docs/webhooks.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from standardwebhooks import Webhook, WebhookVerificationError

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key: a ``whsec_`` secret's base64-decoded bytes, else its UTF-8 bytes."""
    if secret.startswith(PREFIX):
        encoded = secret.removeprefix(PREFIX)
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    return secret.encode()


def foreman_signature_ok(key: bytes, body: bytes, header: str | None) -> bool:
    """``X-Foreman-Signature: sha256=<hex HMAC-SHA256 of the raw body>``, for receivers
    without a Standard Webhooks library. It signs no timestamp: it cannot tell a
    replayed request from a retry, so prefer ``webhook-signature``."""
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return header is not None and hmac.compare_digest(header.encode(), expected.encode())


class Receiver(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], secret: str) -> None:
        super().__init__(address, Handler)
        # Webhook(str) base64-decodes a whsec_ secret; a plain one is keyed by its bytes.
        self.webhook = Webhook(secret) if secret.startswith(PREFIX) else Webhook(secret.encode())
        # In memory for the example: a real receiver keeps the ids it has handled
        # durably (e.g. a unique column, written with the notification's effects).
        self.seen: set[str] = set()
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        receiver = cast(Receiver, self.server)
        body = self.rfile.read(max(0, int(self.headers.get("content-length") or 0)))
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:  # over the exact bytes received, before parsing anything
            payload = receiver.webhook.verify(body, headers)
        except (WebhookVerificationError, ValueError):
            self.answer(401)
            return
        with receiver.lock:
            new = payload["id"] not in receiver.seen
            receiver.seen.add(payload["id"])
        if new:  # a real receiver queues slow work and acknowledges at once
            print(f"job {payload['job']['id']} {payload['type']}", flush=True)
        self.answer(204)  # any 2xx acknowledges, duplicates included

    def answer(self, status: int) -> None:
        self.send_response(status)  # no body; HTTP/1.0: the connection closes after it
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: stdout has one line per notification."""


def main() -> None:
    parser = argparse.ArgumentParser(description="Receive Foreman's state webhooks.")
    parser.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT (port 0: any)")
    args = parser.parse_args()
    secret = os.environ.get("WEBHOOK_SECRET")
    if not secret:
        sys.exit("set WEBHOOK_SECRET to Foreman's FOREMAN_WEBHOOK_SECRET")
    host, _, port = args.listen.rpartition(":")
    server = Receiver((host, int(port)), secret)
    bound_host, bound_port = server.socket.getsockname()[:2]  # port 0: the one chosen
    print(f"listening on http://{bound_host}:{bound_port}/hook", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
