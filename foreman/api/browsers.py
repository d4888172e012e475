"""What a web browser may do with Foreman: Ollama's rules for origins and hosts.

A page open in someone's browser can send requests to any address, Foreman on
localhost included. Two checks keep it out, as Ollama's own server does:

- **Origins.** A request that names an ``Origin`` (every cross-site request a
  browser sends does) is refused with 403 unless the origin is allowed: the
  loopback ones and the app schemes by default, plus ``FOREMAN_ORIGINS``
  (``*`` matches anything). CORS headers are answered for the allowed ones only
  (Starlette's ``CORSMiddleware``, inside this guard). Refusing outright, not just
  leaving CORS headers out, matters: a simple cross-site ``POST`` would otherwise
  run, its answer merely hidden from the page.
- **Hosts** (DNS rebinding). Listening on loopback, a request whose ``Host`` is not a
  name of this machine is refused with 403: a page that made its own domain resolve
  to 127.0.0.1 still sends its domain as the ``Host``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from foreman.api.errors import error_response

DEFAULT_ORIGINS = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "[::1]", "0.0.0.0")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)
"""Ollama's defaults (``OLLAMA_ORIGINS`` adds to them), with IPv6's loopback."""
LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def origins_pattern(extra: Iterable[str] = ()) -> str:
    """One regular expression matching the default origins and ``extra``."""
    patterns = (re.escape(origin).replace(r"\*", ".*") for origin in (*DEFAULT_ORIGINS, *extra))
    return "|".join(f"(?:{pattern})" for pattern in patterns)


@functools.lru_cache(maxsize=256)
def local_host(host: str) -> bool:
    """Whether a ``Host`` header's name is one of this machine's, as Ollama judges it:
    a loopback, private or unspecified address, ``localhost``, the machine's own
    name, or a name under ``.localhost``, ``.local`` or ``.internal``. Remembered for
    the last 256 names: every request asks, nearly always for the same one, and an
    address's ``is_private`` tries a dozen networks."""
    name = host.lower()
    if name.startswith("["):  # [::1]:11435
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name in ("", "localhost") or name.endswith(LOCAL_SUFFIXES) or name == _hostname()
    return address.is_loopback or address.is_private or address.is_unspecified


@functools.cache
def _hostname() -> str:
    """The machine's name, asked once: not a system call on every request."""
    return socket.gethostname().lower()


class BrowserGuard:
    """Refuses foreign origins, and foreign hosts when listening on loopback."""

    def __init__(self, app: ASGIApp, *, origins: str, loopback: bool) -> None:
        self.app = app
        self._origins = re.compile(origins)
        self._loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            host, origin = headers.get("host", ""), headers.get("origin")
            problem = None
            if self._loopback and not local_host(host):
                problem = (
                    f"Host {host!r} is not a name of this machine: Foreman listens on "
                    "loopback and answers only its own names (a guard against DNS rebinding)"
                )
            elif origin is not None and self._origins.fullmatch(origin) is None:
                problem = f"origin {origin!r} is not allowed: add it to FOREMAN_ORIGINS"
            if problem is not None:
                await error_response(scope["path"], 403, problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)
