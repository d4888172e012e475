"""Where webhooks may go (ADR-0040): public addresses, and the hosts
FOREMAN_WEBHOOK_ALLOWED_HOSTS names.

The rule, as pure functions.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.webhooks.targets import (
    ADVICE,
    Targets,
    internal,
    ip_literal,
    reached,
)

REFUSED = {
    # A URL's host, and why webhooks may not go there.
    "127.0.0.1": "127.0.0.1 is a loopback address",
    "10.0.0.1": "10.0.0.1 is a private address",
    "172.16.0.1": "172.16.0.1 is a private address",
    "192.168.1.1": "192.168.1.1 is a private address",
    "169.254.169.254": "169.254.169.254 is a link-local address",
    "100.64.0.1": "100.64.0.1 is a shared address (carrier-grade NAT, 100.64.0.0/10)",
    "0.0.0.0": "0.0.0.0 is an unspecified address",
    "224.0.0.1": "224.0.0.1 is a multicast address",
    "[::1]": "::1 is a loopback address",
    "[::]": ":: is an unspecified address",
    "[fe80::1]": "fe80::1 is a link-local address",
    "[fc00::1]": "fc00::1 is a private address",
    "[::ffff:127.0.0.1]": "::ffff:127.0.0.1 is 127.0.0.1, a loopback address",
    "[::ffff:7f00:1]": "::ffff:7f00:1 is 127.0.0.1, a loopback address",
    "2130706433": "2130706433 is 127.0.0.1, a loopback address",
    "0x7f000001": "0x7f000001 is 127.0.0.1, a loopback address",
    "0177.0.0.1": "0177.0.0.1 is 127.0.0.1, a loopback address",
    "127.1": "127.1 is 127.0.0.1, a loopback address",
}
PUBLIC = ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"]


def unbracketed(host: str) -> str:
    """A host as the URL's parser gives it: an IPv6 address without its brackets."""
    return host.strip("[]")


def refusal(host: str) -> str:
    return f"{REFUSED[host]}: {ADVICE}"


# -- the rule ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", REFUSED)
def test_each_internal_form_is_refused_with_a_reason_a_person_can_act_on(host: str) -> None:
    assert Targets().literal_refusal(unbracketed(host)) == refusal(host)


@pytest.mark.parametrize("host", REFUSED)
def test_each_internal_form_is_allowed_when_named(host: str) -> None:
    assert Targets(frozenset({unbracketed(host)})).literal_refusal(unbracketed(host)) is None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert Targets().literal_refusal(address) is None


def test_names_are_not_judged_until_they_resolve() -> None:
    assert Targets().literal_refusal("localhost") is None
    assert Targets().literal_refusal("hooks.example") is None


def test_exceptions_name_hosts_their_subdomains_and_addresses_in_any_spelling() -> None:
    targets = Targets(frozenset({"hooks.example", "*.corp.example", "127.0.0.1", "::1"}))
    assert targets.excepted("HOOKS.example")
    assert targets.excepted("a.b.corp.example")
    assert not targets.excepted("corp.example")
    assert not targets.excepted("evilcorp.example")
    assert not targets.excepted("hooks.example.evil")
    for spelling in ("127.0.0.1", "2130706433", "0x7f000001", "127.1", "::ffff:127.0.0.1"):
        assert targets.excepted(spelling), spelling
    assert targets.excepted("0:0:0:0:0:0:0:1")
    assert not targets.excepted("127.0.0.2")
    assert not targets.excepted("localhost")  # a name, not the address it resolves to
    assert not Targets(frozenset({"*.0.0.1"})).excepted("127.0.0.1")  # addresses are exact


@st.composite
def ipv4_spellings(draw: st.DrawFn) -> tuple[IPv4Address, str]:
    """An address, and one of its ``inet_aton`` spellings: one to four parts (the last
    taking the bytes left), each decimal, hex or octal."""
    address = IPv4Address(draw(st.integers(0, 2**32 - 1)))
    count = draw(st.integers(1, 4))
    sizes = [1] * (count - 1) + [5 - count]
    values, shift = [], 32
    for size in sizes:
        shift -= 8 * size
        values.append((int(address) >> shift) & ((1 << (8 * size)) - 1))
    radices = st.sampled_from(["{:d}", "0x{:x}", "0X{:X}", "0{:o}"])
    return address, ".".join(draw(radices).format(value) for value in values)


@given(ipv4_spellings())
def test_every_spelling_of_an_ipv4_address_is_read_as_the_system_resolver_reads_it(
    spelled: tuple[IPv4Address, str],
) -> None:
    address, text = spelled
    assert socket.inet_aton(text) == address.packed
    assert ip_literal(text) == address


@given(st.text(alphabet="0123456789abcdefxX.", max_size=24))
def test_text_is_an_ipv4_address_exactly_when_inet_aton_takes_it(text: str) -> None:
    try:
        expected: IPv4Address | None = IPv4Address(socket.inet_aton(text))
    except OSError:
        expected = None
    assert ip_literal(text) == expected


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_inside_an_ipv6_one_is_judged_as_itself(address: IPv4Address) -> None:
    number = int(address)
    kind = internal(address)
    mapped = IPv6Address(0xFFFF << 32 | number)
    six_to_four = IPv6Address(0x2002 << 112 | number << 80)
    nat64 = IPv6Address(int(IPv6Address("64:ff9b::")) | number)
    for inside in (mapped, six_to_four, nat64):
        assert reached(inside) == address
        assert internal(inside) == kind, inside
    compatible = IPv6Address(number)  # ::0.0.0.1 is ::1, loopback: refused all the same
    assert (internal(compatible) is None) == (kind is None)


@given(st.ip_addresses())
def test_an_address_passes_only_if_it_is_globally_routable_and_not_multicast(
    address: IPv4Address | IPv6Address,
) -> None:
    if internal(address) is None:
        inside = reached(address)
        assert inside.is_global
        assert not inside.is_multicast


INTERNAL_NETWORKS = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::1/128",
    "::/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
    "::ffff:127.0.0.0/104",
    "::ffff:10.0.0.0/104",
    "::ffff:169.254.0.0/112",
    "64:ff9b::a00:0/104",
    "64:ff9b:1::/48",
    "2002:7f00::/24",
    "2002:c0a8::/32",
]


@given(st.sampled_from(INTERNAL_NETWORKS).flatmap(lambda net: st.ip_addresses(network=net)))
def test_every_address_of_an_internal_network_is_refused(
    address: IPv4Address | IPv6Address,
) -> None:
    assert internal(address) is not None
