"""A bare pass-through proxy on Foreman's own stack: the floor Foreman's latency is set
against (issue 16).

Foreman's HTTP actor (:func:`foreman.actors.http.serve_http`: Hypercorn on trio, the
same configuration) hosting a raw ASGI app that sends each request, as it came, to the
backend through one ``httpx.AsyncClient`` and answers with the backend's status, body
and content type. No routing, no validation, no log: what any proxy in Python on this
stack must spend. Run as a process; it prints ``proxy: listening on URL`` and stops on
SIGTERM or SIGINT.

    python benchmarks/_proxy.py --backend http://127.0.0.1:11434 [--listen 127.0.0.1:0]
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import trio
from _servers import serve_until_signalled

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def create_app(backend: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    client = httpx.AsyncClient(base_url=backend, timeout=None)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = await client.request(
            scope["method"],
            scope["path"],
            content=body,
            headers={"content-type": "application/json"},
        )
        headers = [(b"content-type", answer.headers.get("content-type", "").encode())]
        await send(
            {"type": "http.response.start", "status": answer.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": answer.content})

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    trio.run(serve_until_signalled, "proxy", create_app(args.backend), args.listen)
