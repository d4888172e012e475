"""A flood of concurrent GETs, from a process of its own (flood.py, tests/test_floods.py).

``python benchmarks/_flood.py URL PATH COUNT`` opens COUNT connections at once, each
sending one ``GET PATH`` with ``Connection: close``; it prints ``flooding`` once
every request is on its way, then, when every answer is in, one JSON line
counting them by kind: ``ok`` (200), ``busy`` (503, JSON with ``error``, with
``Retry-After``) and anything else by its status line (``timeout`` for none).
Raw sockets, not an HTTP client: cheap enough that thousands fit on one core.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import trio

ANSWER_SECONDS = 60.0


def kind_of(answer: bytes) -> str:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *headers = head.decode(errors="replace").split("\r\n")
    if status.startswith("HTTP/1.1 200 "):
        return "ok"
    names = {header.partition(":")[0].strip().lower() for header in headers}
    if status.startswith("HTTP/1.1 503 ") and "retry-after" in names:
        try:
            if "error" in json.loads(body):
                return "busy"
        except ValueError:
            pass
    return status or "no answer"


class Flood:
    def __init__(self, url: str, path: str, count: int) -> None:
        host, _, port = url.removeprefix("http://").rpartition(":")
        self.address = (host, int(port))
        self.path = path
        self.count = count
        self.kinds: Counter[str] = Counter()
        self._opened = 0
        self.all_open = trio.Event()

    async def run(self) -> Counter[str]:
        async with trio.open_nursery() as nursery:
            for _ in range(self.count):
                nursery.start_soon(self._get)
            await self.all_open.wait()
            print("flooding", flush=True)
        return self.kinds

    async def _get(self) -> None:
        with trio.move_on_after(ANSWER_SECONDS):
            try:
                stream = await trio.open_tcp_stream(*self.address)
            finally:
                self._opened += 1
                if self._opened == self.count:
                    self.all_open.set()
            async with stream:
                request = (
                    f"GET {self.path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                )
                await stream.send_all(request.encode())
                answer = b""
                while chunk := await stream.receive_some(65536):
                    answer += chunk
            self.kinds[kind_of(answer)] += 1
            return
        self.kinds["timeout"] += 1


if __name__ == "__main__":
    url, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps(trio.run(Flood(url, path, count).run)), flush=True)
