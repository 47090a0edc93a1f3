"""`steering.py`: the kernel runs the program on real datagrams; `choose` must say what it does.

A group of UDP sockets with SO_REUSEPORT gets the program; generated questions (names of every
shape a resolver sends: SRV prefixes, mixed case, endpoint labels, search-path spellings, long
and empty labels, and malformed datagrams) are sent to it, and the socket each arrives on is
compared with `choose`.
"""

from __future__ import annotations

import random
import select
import socket
import string
from collections.abc import Iterator

import dns.message
import pytest

from kdns.serve import steering
from tests.kdns_process import ipv6_loopback

pytestmark = pytest.mark.skipif(not steering.supported(), reason="steering is Linux only")


@pytest.fixture(params=["127.0.0.1", "::1"])
def group(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[list[socket.socket], socket.socket, str]]:
    host: str = request.param
    if ":" in host and not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(4):
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, socks[0].getsockname()[1] if socks else 0))
            socks.append(s)
        steering.attach(socks[0], len(socks))
        client = socket.socket(family, socket.SOCK_DGRAM)
        yield socks, client, f"{host} {socks[0].getsockname()[1]}"
        client.close()
    finally:
        for s in socks:
            s.close()


def arrives_at(socks: list[socket.socket], client: socket.socket, to: str, data: bytes) -> int:
    host, port = to.split()
    client.sendto(data, (host, int(port)))
    ready, _, _ = select.select(socks, [], [], 2.0)
    assert len(ready) == 1, "one datagram, one socket"
    ready[0].recv(4096)
    return socks.index(ready[0])


def names(rng: random.Random, count: int) -> Iterator[tuple[str, str]]:
    chars = string.ascii_letters + string.digits + "-"

    def label(lo: int = 1, hi: int = 63) -> str:
        return "".join(rng.choice(chars) for _ in range(rng.randint(lo, hi)))

    for _ in range(count):
        svc, ns = label(1, 50), label(1, 20)
        yield rng.choice(
            [
                (f"{svc}.{ns}.svc.cluster.local", "A"),
                (f"{svc}.{ns}.svc.cluster.local.{ns}.svc.cluster.local", "AAAA"),
                (f"_{label(1, 10)}._tcp.{svc}.{ns}.svc.cluster.local", "SRV"),
                (f"_{label(1, 10)}.{svc}.{ns}.svc.cluster.local", "SRV"),
                (f"{label()}.{svc}.{ns}.svc.cluster.local", "A"),
                (f"{rng.randint(0, 255)}.{rng.randint(0, 255)}.0.10.in-addr.arpa", "PTR"),
                (f"{svc}", "A"),
                (f"_{svc}._udp.{label()}", "SRV"),
            ]
        )


def test_the_kernel_delivers_where_choose_says(
    group: tuple[list[socket.socket], socket.socket, str],
) -> None:
    socks, client, port = group
    rng = random.Random(7)
    counts = [0] * len(socks)
    for name, rdtype in names(rng, 600):
        wire = dns.message.make_query(name, rdtype).to_wire()
        expected = steering.choose(wire, len(socks))
        assert arrives_at(socks, client, port, wire) == expected, name
        counts[expected] += 1
    # Balanced: each of 4 sockets within 30% of its fair share of 600.
    assert all(105 <= n <= 195 for n in counts), counts


def test_the_owner_does_not_depend_on_case_type_srv_prefix_or_search_path() -> None:
    def owner(name: str, rdtype: str = "A") -> int:
        return steering.choose(dns.message.make_query(name, rdtype).to_wire(), 8)

    base = owner("my-service.default.svc.cluster.local")
    assert owner("My-SERVICE.default.svc.cluster.local", "AAAA") == base
    assert owner("_http._tcp.my-service.default.svc.cluster.local", "SRV") == base
    assert owner("my-service.default.svc.cluster.local.default.svc.cluster.local") == base
    assert owner("my-service.other.svc.cluster.local", "ANY") == base
    assert len({owner(f"svc-{i}.default.svc.cluster.local") for i in range(100)}) == 8


def test_short_and_malformed_datagrams_arrive_somewhere_and_choose_agrees(
    group: tuple[list[socket.socket], socket.socket, str],
) -> None:
    socks, client, port = group
    root = dns.message.make_query(".", "NS").to_wire()
    cases = [
        b"\x00",  # shorter than a header
        b"\x12\x34" + b"\x00" * 10,  # a header, no question
        root,
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc",  # a label cut short
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x5f",  # "_" then nothing
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer
    ]
    for data in cases:
        assert arrives_at(socks, client, port, data) == steering.choose(data, len(socks)), data


def test_the_names_of_sockets_down_go_to_the_next_one_up(
    group: tuple[list[socket.socket], socket.socket, str],
) -> None:
    socks, client, to = group
    rng = random.Random(11)
    questions = [dns.message.make_query(n, t).to_wire() for n, t in names(rng, 200)]
    for down in ({1}, {3}, {0, 1}, {1, 2, 3}, {0, 1, 2, 3}):
        steering.attach(socks[0], len(socks), down)
        seen = set()
        for wire in questions:
            where = arrives_at(socks, client, to, wire)
            assert where == steering.choose(wire, len(socks), down)
            if len(down) < len(socks):
                assert where not in down
            seen.add(where)
        # Each one up takes its own names and maybe others', none is left out.
        assert seen == (set(range(len(socks))) - down or set(range(len(socks))))
    assert steering.replacements(4, {1}) == {1: 2}
    assert steering.replacements(4, {3}) == {3: 0}
    assert steering.replacements(4, {1, 2, 3}) == {1: 0, 2: 0, 3: 0}
    assert steering.replacements(4, {0, 1, 2, 3}) == {}
    steering.attach(socks[0], len(socks))  # all up again: every socket its own names
    wire = dns.message.make_query("web.default.svc.cluster.local", "A").to_wire()
    assert arrives_at(socks, client, to, wire) == steering.choose(wire, len(socks))


def test_the_program_is_one_a_kernel_accepts() -> None:
    # The kernel's limit is 4096 instructions, its jumps 255 forward; the program ends in RET.
    for n, down in ((1, ()), (2, ()), (64, ()), (64, range(63))):
        code = steering.program(n, down)
        assert len(code) <= 4096
        assert all(jt <= 255 and jf <= 255 for _, jt, jf, _ in code)
        assert code[-1][0] == 0x16
    with pytest.raises(ValueError):
        steering.program(0)
