"""A webhook receiver that keeps nothing but what it was sent: the webhooks benchmark's sink.

A raw ASGI app (no framework) on Foreman's HTTP actor (:func:`foreman.actors.http.serve_http`,
the same Hypercorn server and configuration as ``_ceiling.py``). Every ``POST`` to a path
not starting with ``/_`` is answered 200 with an empty body at once; the receiver notes
its wall-clock arrival (``time.time()`` when the request reaches the app), its headers
and its body, and decodes nothing until asked. Control paths, for the benchmark:

    GET  /_count     {"requests": N, "distinct": D}: requests and distinct ``webhook-id``\\s
    GET  /_results   every request in arrival order: ``at``, ``webhook_id``, the payload's
                     ``type``, ``occurred_at`` and job id, and the ``headers`` and ``body``
                     (so that the same requests can be sent again)
    POST /_reset     forget them all

Run as a process (it does not share a GIL with Foreman or the client); it prints
``receiver: listening on URL`` and stops on SIGTERM or SIGINT.

    python benchmarks/_receiver.py [--listen 127.0.0.1:0]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, cast

import trio
from _servers import serve_until_signalled
from fastapi import FastAPI

Scope = dict[str, Any]
Receive = Any
Send = Any
JSON_HEADERS = [(b"content-type", b"application/json")]


class Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[float, list[tuple[bytes, bytes]], bytes]] = []
        self.ids: set[bytes] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        arrived = time.time()
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path, method = scope["path"], scope["method"]
        if method == "POST" and not path.startswith("/_"):
            headers = scope["headers"]
            self.requests.append((arrived, headers, body))
            self.ids.add(next((value for name, value in headers if name == b"webhook-id"), b""))
            await _answer(send, 200, b"", [])
        elif path == "/_count":
            count = {"requests": len(self.requests), "distinct": len(self.ids)}
            await _answer(send, 200, json.dumps(count).encode(), JSON_HEADERS)
        elif path == "/_results":
            await _answer(send, 200, json.dumps(self.results()).encode(), JSON_HEADERS)
        elif path == "/_reset" and method == "POST":
            self.requests, self.ids = [], set()
            await _answer(send, 204, b"", [])
        else:
            await _answer(send, 404, b"", [])

    def results(self) -> list[dict[str, Any]]:
        out = []
        for arrived, raw_headers, body in self.requests:
            headers = {name.decode(): value.decode() for name, value in raw_headers}
            try:
                payload = json.loads(body)
            except ValueError:
                payload = {}
            out.append(
                {
                    "at": arrived,
                    "webhook_id": headers.get("webhook-id"),
                    "type": payload.get("type"),
                    "occurred_at": payload.get("occurred_at"),
                    "job_id": (payload.get("job") or {}).get("id"),
                    "headers": headers,
                    "body": body.decode(),
                }
            )
        return out


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    length = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + length})
    await send({"type": "http.response.body", "body": body})


async def main(listen: str) -> None:
    # serve_http only hands the app to Hypercorn, which takes any ASGI app.
    await serve_until_signalled("receiver", cast(FastAPI, Receiver()), listen)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    trio.run(main, parser.parse_args().listen)
