"""Where webhooks may go (ADR-0040): public addresses, and the hosts
FOREMAN_WEBHOOK_ALLOWED_HOSTS names.

The rule as pure functions; the sender's network, which resolves a host once and
connects to what it checked, with DNS the test controls; then, over real HTTP, real
receivers on loopback that get nothing unless their host is named.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import httpcore
import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook

from foreman.events.types import delivery_stream
from foreman.webhooks.guard import GuardedNetwork
from foreman.webhooks.sender import Sender
from foreman.webhooks.signing import secret_key
from foreman.webhooks.targets import (
    ADVICE,
    TargetRefused,
    Targets,
    internal,
    ip_literal,
    reached,
)
from tests.receiver import Receiver, free_port, serving
from tests.running import counted, of_type, recorded, start_foreman, until

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hello"}]}
LIFE = ["job.queued", "job.running", "job.succeeded"]

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
UNSENDABLE = "0177.0.0.1"
"""httpx, which reads every webhook URL, refuses this spelling (leading zeros): it is
refused at submission even when named, and never sent."""
ON_THIS_MACHINE = {
    # A host that reaches a receiver on this machine, and whether over IPv6.
    "127.0.0.1": False,
    "0.0.0.0": False,
    "[::ffff:127.0.0.1]": False,
    "[::ffff:7f00:1]": False,
    "2130706433": False,
    "0x7f000001": False,
    "127.1": False,
    "localhost": False,
    "[::1]": True,
    "[::]": True,
}
PUBLIC = ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"]


def _binds_ipv6_loopback() -> bool:
    try:
        free_port("[::1]")
    except OSError:
        return False
    return True


IPV6 = _binds_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not IPV6, reason="no IPv6 loopback here")


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
    "fec0::/10",
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


# -- the network: resolve once, judge, connect to what was checked --------------------


class Dns:
    """A resolver the test answers: each lookup gets the next answer."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return self.answers.pop(0)


class Stream(httpcore.AsyncMockStream):
    """A connection that records the name TLS is started with, then breaks."""

    def __init__(self) -> None:
        super().__init__([])
        self.tls_names: list[str | None] = []

    async def start_tls(
        self, *args: object, server_hostname: str | None = None, **_: object
    ) -> Stream:
        self.tls_names.append(server_hostname)
        raise httpcore.ConnectError("the test's connection ends here")


class Network(httpcore.AsyncNetworkBackend):
    """The network under the guard: it records where it is asked to connect (an
    address, or a name it would resolve again), and refuses connections to ``down``."""

    def __init__(self, *down: str) -> None:
        self.down = set(down)
        self.connected: list[str] = []
        self.streams: list[Stream] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append(host)
        if host in self.down:
            raise httpcore.ConnectError(f"{host}: connection refused")
        self.streams.append(Stream())
        return self.streams[-1]


async def test_a_name_is_connected_at_the_address_checked_and_not_resolved_again() -> None:
    # DNS rebinding: the first answer is public, the next loopback.
    dns = Dns(["93.184.215.14"], ["127.0.0.1"])
    network = Network()
    guard = GuardedNetwork(Targets(), resolver=dns, network=network)

    await guard.connect_tcp("rebind.example", 80)
    assert dns.asked == ["rebind.example"]
    assert network.connected == ["93.184.215.14"]  # the address checked, not the name

    with pytest.raises(TargetRefused) as refused:
        await guard.connect_tcp("rebind.example", 80)
    assert (
        str(refused.value) == f"rebind.example resolves to 127.0.0.1, a loopback address: {ADVICE}"
    )
    assert network.connected == ["93.184.215.14"]  # nothing more


async def test_a_name_with_one_internal_address_among_public_ones_is_refused() -> None:
    network = Network()
    guard = GuardedNetwork(
        Targets(), resolver=Dns(["93.184.215.14", "::ffff:10.0.0.1"]), network=network
    )
    with pytest.raises(TargetRefused, match=r"resolves to ::ffff:a00:1 \(10.0.0.1\), a private"):
        await guard.connect_tcp("mixed.example", 80)
    assert network.connected == []


@pytest.mark.parametrize("host", [host for host in REFUSED if host != UNSENDABLE])
async def test_a_name_resolving_to_an_internal_address_is_refused_unless_named(
    host: str,
) -> None:
    address = str(ip_literal(unbracketed(host)))
    network = Network()
    guard = GuardedNetwork(Targets(), resolver=Dns([address]), network=network)
    with pytest.raises(TargetRefused, match=r"^hooks\.example resolves to "):
        await guard.connect_tcp("hooks.example", 80)
    assert network.connected == []

    for named in ("hooks.example", "*.example"):
        guard = GuardedNetwork(
            Targets(frozenset({named})), resolver=Dns([address]), network=network
        )
        await guard.connect_tcp("hooks.example", 80)
    assert network.connected == [address, address]


async def test_the_next_checked_address_is_tried_when_one_refuses_the_connection() -> None:
    network = Network("2606:4700:4700::1111")
    dns = Dns(["2606:4700:4700::1111", "93.184.215.14"])
    await GuardedNetwork(Targets(), resolver=dns, network=network).connect_tcp("two.example", 80)
    assert network.connected == ["2606:4700:4700::1111", "93.184.215.14"]


async def test_a_name_that_does_not_resolve_is_worth_another_try() -> None:
    unknown = socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def nowhere(host: str, port: int) -> list[str]:
        raise unknown

    sender = Sender(
        key=None,
        timeout=5,
        network=GuardedNetwork(Targets(), resolver=nowhere, network=Network()),
        connections=1,
    )
    try:
        attempt = await sender.send("http://nowhere.example/hook", "01J", b"{}")
    finally:
        await sender.aclose()
    assert attempt.retryable
    assert attempt.error == f"ConnectError: cannot resolve nowhere.example: {unknown}"


async def test_tls_names_the_urls_host_while_connecting_to_the_address_checked() -> None:
    network = Network()
    guard = GuardedNetwork(Targets(), resolver=Dns(["93.184.215.14"]), network=network)
    sender = Sender(key=None, timeout=5, network=guard, connections=1)
    try:
        attempt = await sender.send("https://hooks.example/hook", "01J", b"{}")
    finally:
        await sender.aclose()
    assert attempt.retryable  # the test's connection broke: another try would do
    assert network.connected == ["93.184.215.14"]
    assert [stream.tls_names for stream in network.streams] == [["hooks.example"]]


# -- the sender, over real HTTP to receivers on this machine --------------------------


@dataclass
class Receivers:
    """A receiver on 127.0.0.1 and, where there is IPv6, one on ::1."""

    v4: Receiver
    v6: Receiver | None

    def url(self, host: str) -> str:
        """The URL of the receiver ``host`` reaches (the IPv4 one for an address
        elsewhere: it must get nothing either way)."""
        receiver = self.v6 if ON_THIS_MACHINE.get(host) else self.v4
        assert receiver is not None
        port = httpx.URL(receiver.url).port
        return f"http://{host}:{port}/hook"

    @property
    def received(self) -> int:
        return len(self.v4.received) + (len(self.v6.received) if self.v6 else 0)


@pytest.fixture
async def receivers() -> AsyncIterator[Receivers]:
    async with serving(Receiver()) as v4:
        if not IPV6:
            yield Receivers(v4, None)
            return
        async with serving(Receiver(), host="[::1]") as v6:
            yield Receivers(v4, v6)


def guarded_sender(*named: str) -> Sender:
    targets = Targets(frozenset(unbracketed(host) for host in named))
    return Sender(key=secret_key(SECRET), timeout=5, network=GuardedNetwork(targets), connections=1)


def ipv6_marked(hosts: Iterable[str]) -> list[object]:
    return [
        pytest.param(host, marks=needs_ipv6) if ON_THIS_MACHINE.get(host) else host
        for host in hosts
    ]


@pytest.mark.parametrize("host", ipv6_marked([*REFUSED, "localhost"]))
async def test_each_internal_form_is_refused_at_delivery_and_the_receiver_gets_nothing(
    receivers: Receivers, host: str
) -> None:
    sender = guarded_sender()
    try:
        attempt = await sender.send(receivers.url(host), "01J", b"{}")
    finally:
        await sender.aclose()
    assert not attempt.retryable
    if host == "localhost":
        assert attempt.error is not None
        assert attempt.error.startswith("localhost resolves to ")
        assert attempt.error.endswith(f", a loopback address: {ADVICE}")
    elif host == UNSENDABLE:
        assert (
            attempt.error
            == "cannot send to this URL: InvalidURL: Invalid IPv4 address: '0177.0.0.1'"
        )
    else:
        assert attempt.error == refusal(host)
    assert receivers.received == 0


@pytest.mark.parametrize("host", ipv6_marked(ON_THIS_MACHINE))
async def test_each_form_named_reaches_the_receiver_signed(receivers: Receivers, host: str) -> None:
    sender = guarded_sender(host)
    try:
        attempt = await sender.send(receivers.url(host), "01J", b'{"a": 1}')
    finally:
        await sender.aclose()
    assert attempt.status == 200, attempt.error
    receiver = receivers.v6 if ON_THIS_MACHINE[host] else receivers.v4
    assert receiver is not None
    (request,) = receiver.received
    assert Webhook(SECRET).verify(request.body, request.headers) == {"a": 1}


async def test_a_named_host_is_reached_at_the_address_foreman_resolved(
    receivers: Receivers,
) -> None:
    """The name is resolved by the guard alone: the system's resolver has never heard
    of it, and the receiver sees the URL's host."""
    port = httpx.URL(receivers.v4.url).port
    dns = Dns(["127.0.0.1"])
    network = GuardedNetwork(Targets(frozenset({"hooks.test"})), resolver=dns)
    sender = Sender(key=None, timeout=5, network=network, connections=1)
    try:
        attempt = await sender.send(f"http://hooks.test:{port}/hook", "01J", b"{}")
    finally:
        await sender.aclose()
    assert attempt.status == 200, attempt.error
    assert dns.asked == ["hooks.test"]
    assert receivers.v4.received[0].headers["host"] == f"hooks.test:{port}"


# -- a whole Foreman -------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


async def test_an_internal_address_is_refused_at_submission_unless_named(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    body = {"kind": "chat", "request": CHAT}
    async for foreman in start_foreman(nursery, db_path):
        for host in REFUSED:
            url = f"http://{host}:9/hook"
            answer = await client.post(
                f"{foreman.url}/jobs", json=body | {"state_webhook_url": url}
            )
            assert answer.status_code == 422, host
            (problem,) = answer.json()["detail"]
            assert problem["field"] == "state_webhook_url"
            if host == UNSENDABLE:
                assert problem["message"].startswith("cannot be sent to: Invalid IPv4 address")
            else:
                assert problem["message"] == refusal(host)


@pytest.mark.parametrize("host", ipv6_marked(ON_THIS_MACHINE))
async def test_a_receiver_on_this_machine_named_gets_every_notification_signed(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient, receivers: Receivers, host: str
) -> None:
    async for foreman in start_foreman(
        nursery, db_path, webhook_secret=SECRET, webhook_allowed_hosts=host
    ):
        committed = await foreman.running.journal.subscribe()
        body = {"kind": "chat", "request": CHAT, "state_webhook_url": receivers.url(host)}
        submitted = await client.post(f"{foreman.url}/jobs", json=body)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        await until(committed, counted(3, recorded(delivery_stream(job_id), "WebhookDelivered")))
    receiver = receivers.v6 if ON_THIS_MACHINE[host] else receivers.v4
    assert receiver is not None
    assert [request.payload["type"] for request in receiver.received] == LIFE
    for request in receiver.received:
        Webhook(SECRET).verify(request.body, request.headers)


async def abandoned_views(
    client: httpx.AsyncClient, foreman_url: str, job_id: str
) -> list[tuple[str, int, str | None]]:
    view = (await client.get(f"{foreman_url}/jobs/{job_id}")).json()
    return [(w["state"], w["attempts"], w["last_error"]) for w in view["webhooks"]]


async def test_localhost_is_refused_at_delivery_and_the_job_shows_why(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient, receivers: Receivers
) -> None:
    async for foreman in start_foreman(nursery, db_path):
        committed = await foreman.running.journal.subscribe()
        body = {"kind": "chat", "request": CHAT, "state_webhook_url": receivers.url("localhost")}
        submitted = await client.post(f"{foreman.url}/jobs", json=body)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        await until(committed, counted(3, recorded(delivery_stream(job_id), "WebhookAbandoned")))
        webhooks = await abandoned_views(client, foreman.url, job_id)
    assert [(state, attempts) for state, attempts, _ in webhooks] == [("abandoned", 1)] * 3
    for _, _, error in webhooks:
        assert error is not None
        assert error.startswith("localhost resolves to ")
        assert error.endswith(f", a loopback address: {ADVICE}")
    assert receivers.received == 0


async def test_a_host_no_longer_named_is_refused_when_its_notifications_are_sent_again(
    db_path: Path, nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    """Each address spelling, named when its job was submitted, then not: sent again
    by request, every notification is refused, and the receivers get nothing."""
    hosts = [host for host in ON_THIS_MACHINE if host != "localhost"]
    if not IPV6:
        hosts = [host for host in hosts if not ON_THIS_MACHINE[host]]
    ports = {False: free_port(), True: free_port("[::1]") if IPV6 else 0}
    jobs: dict[str, str] = {}
    # Named, with the receivers down: each notification fails once and is abandoned.
    async for foreman in start_foreman(
        nursery,
        db_path,
        webhook_allowed_hosts=",".join(hosts),
        webhook_max_retries=0,
    ):
        committed = await foreman.running.journal.subscribe()
        for host in hosts:
            url = f"http://{host}:{ports[ON_THIS_MACHINE[host]]}/hook"
            body = {"kind": "chat", "request": CHAT, "state_webhook_url": url}
            submitted = await client.post(f"{foreman.url}/jobs", json=body)
            assert submitted.status_code == 202, submitted.text
            jobs[host] = submitted.json()["job_id"]
        await until(committed, counted(3 * len(hosts), of_type("WebhookAbandoned")))
    # Not named any more, the receivers up: asked again, each is refused, not sent.
    async with contextlib.AsyncExitStack() as stack:
        v4 = await stack.enter_async_context(serving(Receiver(), ports[False]))
        v6 = (
            await stack.enter_async_context(serving(Receiver(), ports[True], "[::1]"))
            if IPV6
            else None
        )
        async for foreman in start_foreman(nursery, db_path):
            committed = await foreman.running.journal.subscribe()
            for job_id in jobs.values():
                redeliver = f"{foreman.url}/jobs/{job_id}/webhooks/redeliver"
                assert (await client.post(redeliver)).status_code == 202
            await until(committed, counted(3 * len(hosts), of_type("WebhookAbandoned")))
            for host, job_id in jobs.items():
                webhooks = await abandoned_views(client, foreman.url, job_id)
                assert [(state, error) for state, _, error in webhooks] == [
                    ("abandoned", refusal(host))
                ] * 3, host
        assert v4.received == []
        assert v6 is None or v6.received == []
