"""Where a webhook may go: public addresses, and the hosts named as exceptions.

A job's submitter chooses the URL, so without a rule Foreman would POST, from
inside the network it runs in, to whatever that URL names: the machine's own
services, a cloud's metadata address, the office's private ranges. So an address
is refused unless it is globally routable; ``FOREMAN_WEBHOOK_ALLOWED_HOSTS`` names
the hosts that may be reached anyway (a receiver on this machine, in development).

The rule judges addresses, not how they are spelled: ``127.1``, ``2130706433``,
``0x7f000001`` and ``0177.0.0.1`` are all 127.0.0.1 to the system's resolver, and
an IPv6 address carrying an IPv4 one (``::ffff:127.0.0.1``, 6to4, NAT64) is
judged by the IPv4 address it reaches (ADR-0040).
"""

from __future__ import annotations

import ipaddress
import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address

ADVICE = "webhooks go only to public addresses unless FOREMAN_WEBHOOK_ALLOWED_HOSTS names the host"
PRIVATE = (
    IPv4Network("10.0.0.0/8"),
    IPv4Network("172.16.0.0/12"),
    IPv4Network("192.168.0.0/16"),
    IPv6Network("fc00::/7"),
    IPv6Network("fec0::/10"),
)
"""RFC 1918, unique local IPv6, and site-local IPv6 (deprecated, which ``ipaddress``
counts as global, but a site's own all the same)."""
SHARED = IPv4Network("100.64.0.0/10")
"""Carrier-grade NAT's address space (RFC 6598): a provider's internal network."""
LOCAL_NAT64 = IPv6Network("64:ff9b:1::/48")
"""NAT64 for local use (RFC 8215): where it leads is the network's own choice."""
NAT64 = IPv6Network("64:ff9b::/96")
COMPATIBLE = IPv6Network("::/96")
"""IPv4-compatible IPv6 addresses (deprecated), ``::a.b.c.d``."""
_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


class TargetRefused(Exception):
    """A webhook's host is, or resolves to, an address webhooks may not go to."""


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, or None for a name. IPv4 in any form the system's
    resolver reads without asking DNS (``inet_aton``'s: one to four parts, each
    decimal, ``0x`` hex or ``0`` octal, the last filling the remaining bytes); IPv6
    with or without brackets."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    parts = text.split(".")
    if len(parts) > 4 or not all(_PART.fullmatch(part) for part in parts):
        return None
    *leading, last = map(_inet_number, parts)
    if any(value > 255 for value in leading) or last >= 256 ** (5 - len(parts)):
        return None
    number = last
    for index, value in enumerate(leading):
        number += value << (8 * (3 - index))
    return IPv4Address(number)


def _inet_number(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part, 16)
    return int(part, 8 if part.startswith("0") else 10)


def reached(address: IPAddress) -> IPAddress:
    """The address a connection to ``address`` reaches: the IPv4 one inside an
    IPv4-mapped, IPv4-compatible, 6to4 or NAT64 address; else ``address`` itself."""
    if isinstance(address, IPv4Address) or address.is_loopback or address.is_unspecified:
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64 or address in COMPATIBLE:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def internal(address: IPAddress) -> str | None:
    """What kind of address webhooks may not go to ``address`` is, such as ``a
    loopback address``; None when it is public (globally routable, not multicast)."""
    address = reached(address)
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if any(address in network for network in PRIVATE):
        return "a private address"
    if address in SHARED:
        return "a shared address (carrier-grade NAT, 100.64.0.0/10)"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global or address in LOCAL_NAT64:
        return "a special-purpose address"
    return None


class Targets:
    """The rule for one Foreman: public addresses, and ``exceptions``
    (``FOREMAN_WEBHOOK_ALLOWED_HOSTS``: names, ``*.domain`` for its subdomains, or
    addresses, each of which excepts itself in any spelling)."""

    def __init__(self, exceptions: frozenset[str] = frozenset()) -> None:
        self._names = frozenset(host for host in exceptions if ip_literal(host) is None)
        self._addresses = frozenset(
            reached(address) for address in map(ip_literal, exceptions) if address is not None
        )

    def excepted(self, host: str) -> bool:
        """Whether ``FOREMAN_WEBHOOK_ALLOWED_HOSTS`` names ``host``: it may be reached at
        whatever address it has."""
        literal = ip_literal(host)
        if literal is not None:
            return reached(literal) in self._addresses
        name = host.lower()
        return name in self._names or any(
            entry.startswith("*.") and name.endswith(entry[1:]) for entry in self._names
        )

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why ``host`` may not be reached at ``address`` (one it is, or resolves to),
        in words a person can act on; None when it may."""
        kind = internal(address)
        if kind is None or self.excepted(host):
            return None
        inside = reached(address)
        shown = str(address) if inside == address else f"{address} ({inside})"
        literal = ip_literal(host)
        if literal is None:
            return f"{host} resolves to {shown}, {kind}: {ADVICE}"
        if str(inside) == host.strip("[]").lower():
            return f"{host} is {kind}: {ADVICE}"
        return f"{host} is {inside}, {kind}: {ADVICE}"

    def literal_refusal(self, host: str) -> str | None:
        """Why a URL whose host is ``host`` is refused before anything is sent: when
        ``host`` is an address; a name is judged by what it resolves to, when sent."""
        literal = ip_literal(host)
        return None if literal is None else self.refusal(host, literal)
