"""The webhook sender's network: resolve a host once, judge every address, and
connect to one of those addresses, never to the name.

Were the name handed on to be resolved again when connecting, a receiver's DNS
could answer a public address to the check and a loopback one to the connection
(DNS rebinding). So httpcore is given this network backend: it resolves the host
itself, refuses it if any address is one webhooks may not reach (unless
``FOREMAN_WEBHOOK_ALLOWED_HOSTS`` names the host), and connects Trio's backend to
the checked addresses, in the resolver's order. TLS still names the URL's host:
httpcore starts it on the stream returned, with the host it asked for.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable

import httpcore
import trio

from foreman.webhooks.targets import TargetRefused, Targets

Resolve = Callable[[str, int], Awaitable[list[str]]]
"""A host's addresses, as text, for connecting to ``port``."""


async def resolve(host: str, port: int) -> list[str]:
    """The system's resolver, on a thread (Trio's ``getaddrinfo``)."""
    found = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))


class GuardedNetwork(httpcore.AsyncNetworkBackend):
    """Connections only to addresses ``targets`` allows, each resolved once."""

    def __init__(
        self,
        targets: Targets,
        *,
        resolver: Resolve = resolve,
        network: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._targets = targets
        self._resolve = resolver
        self._network = network or httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        failure: Exception | None = None
        for address in await self.addresses(host, port):
            try:
                return await self._network.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        assert failure is not None  # addresses() returns at least one
        raise failure

    async def addresses(self, host: str, port: int) -> list[str]:
        """``host``'s addresses, every one allowed; raises :class:`TargetRefused` if
        one is not, and httpcore's ``ConnectError`` (worth another try) if there are
        none."""
        try:
            found = await self._resolve(host, port)
        except OSError as error:
            raise httpcore.ConnectError(f"cannot resolve {host}: {error}") from error
        if not found:
            raise httpcore.ConnectError(f"cannot resolve {host}: no address")
        for address in found:
            refusal = self._targets.refusal(host, ipaddress.ip_address(address))
            if refusal is not None:
                raise TargetRefused(refusal)
        return found

    async def sleep(self, seconds: float) -> None:
        await self._network.sleep(seconds)
