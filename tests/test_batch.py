"""UDP in batches (kdns/serve/batch.py) over real sockets: the same answers as the datagram
protocol, truncation, rotation, changes of zones/ respected, malformed packets, and the features
that turn it off."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rdatatype
import pytest

from kdns.config import Config
from kdns.serve import batch
from kdns.serve.server import DnsServer
from tests.kdns_process import ipv6_loopback

pytestmark = pytest.mark.skipif(not batch.available(), reason="no recvmmsg/sendmmsg here")


def services(n: int, headless_size: int = 4) -> str:
    docs = []
    for i in range(n):
        docs.append(
            f"""apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: ns-{i % 3}}}
spec:
  clusterIP: 10.96.{i // 200}.{i % 200 + 1}
  ports: [{{name: http, port: 80, protocol: TCP}}]
"""
        )
    addresses = "\n".join(f"- addresses: [10.7.0.{k + 1}]" for k in range(headless_size))
    docs.append(
        f"""apiVersion: v1
kind: Service
metadata: {{name: db, namespace: ns-0}}
spec: {{clusterIP: None, ports: [{{name: pg, port: 5432}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: db-1, namespace: ns-0, labels: {{kubernetes.io/service-name: db}}}}
addressType: IPv4
endpoints:
{addresses}
ports: [{{name: pg, port: 5432, protocol: TCP}}]
"""
    )
    big = "\n".join(f"- addresses: [10.8.{k // 200}.{k % 200 + 1}]" for k in range(60))
    docs.append(
        f"""apiVersion: v1
kind: Service
metadata: {{name: big, namespace: ns-1}}
spec: {{clusterIP: None}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: big-1, namespace: ns-1, labels: {{kubernetes.io/service-name: big}}}}
addressType: IPv4
endpoints:
{big}
"""
    )
    return "---\n".join(docs)


@contextmanager
def serving(
    zones: Path, host: str = "127.0.0.1", **options: Any
) -> Iterator[tuple[DnsServer, int]]:
    """A DnsServer on `host` in its own thread and event loop (uvloop when installed, as
    `kdns serve`); yields it and its port."""
    config = Config(zones=[zones], listen=[(host, 0)], **options)
    server = DnsServer(config)
    ready = threading.Event()
    failed: list[BaseException] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        try:
            await server.startup()
        except BaseException as err:
            failed.append(err)
            ready.set()
            raise
        ready.set()
        try:
            await server._stop.wait()
        finally:
            await server.shutdown()

    def run() -> None:
        try:
            import uvloop
        except ImportError:
            asyncio.run(main())
        else:
            uvloop.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30), "the server did not start"
    if failed:
        raise failed[0]
    try:
        yield server, server.addresses[0][1]
    finally:
        loops[0].call_soon_threadsafe(server.request_stop, True)
        thread.join(10)


def burst(port: int, packets: list[bytes], timeout: float = 3.0) -> dict[int, bytes]:
    """Send every packet at once (so that the server reads them in batches), then collect the
    answers by the query's position (each packet carries its index as its ID)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect(("127.0.0.1", port))
    got: dict[int, bytes] = {}
    try:
        for start in range(0, len(packets), 200):
            for packet in packets[start : start + 200]:
                sock.send(packet)
            deadline = time.monotonic() + timeout
            want = {int.from_bytes(p[:2], "big") for p in packets[start : start + 200]}
            sock.settimeout(0.3)
            while not want <= got.keys() and time.monotonic() < deadline:
                try:
                    data = sock.recv(65535)
                except TimeoutError:
                    continue
                got[int.from_bytes(data[:2], "big")] = data
    finally:
        sock.close()
    return got


def ask(port: int, name: str, qtype: str = "A", **kw: Any) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, **kw)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        sock.sendto(query.to_wire(), ("127.0.0.1", port))
        while True:
            data, _ = sock.recvfrom(65535)
            if data[:2] == query.to_wire()[:2]:
                return dns.message.from_wire(data)
    finally:
        sock.close()


def without_serial(response: bytes) -> tuple[int, str]:
    """`response`'s length and text, the SOA serial of a negative answer left out."""
    message = dns.message.from_wire(response)
    for rrset in message.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            rrset.update_ttl(rrset.ttl)
            soa = rrset[0]
            rrset.clear()
            rrset.add(soa.replace(serial=0))
    return len(response), message.to_text()


def mix(rng: random.Random, n: int) -> list[bytes]:
    """`n` queries of a mix like bench/run.py's: ClusterIP A (some in mixed case), headless A,
    SRV, AAAA, NXDOMAIN, PTR, names outside the zone, with and without EDNS, each with its
    index as its ID."""
    out = []
    for i in range(n):
        k = rng.randrange(9)
        edns = 0 if rng.random() < 0.5 else -1
        s = rng.randrange(40)
        name, qtype = {
            0: (f"svc-{s}.ns-{s % 3}.svc.cluster.local", "A"),
            1: (f"SVC-{s}.Ns-{s % 3}.svc.Cluster.Local", "A"),
            2: ("db.ns-0.svc.cluster.local", "A"),
            3: (f"_http._tcp.svc-{s}.ns-{s % 3}.svc.cluster.local", "SRV"),
            4: (f"svc-{s}.ns-{s % 3}.svc.cluster.local", "AAAA"),
            5: (f"missing-{s}.ns-0.svc.cluster.local", "A"),
            6: (f"{s % 200 + 1}.0.96.10.in-addr.arpa", "PTR"),
            7: ("example.com", "A"),
            8: ("big.ns-1.svc.cluster.local", "A"),
        }[k]
        query = dns.message.make_query(name, qtype, use_edns=edns)
        query.id = i
        out.append(query.to_wire())
    return out


@pytest.fixture
def zones(tmp_path: Path) -> Path:
    d = tmp_path / "zones"
    d.mkdir()
    (d / "services.yaml").write_text(services(40))
    return d


def test_the_batch_path_is_on_by_default_and_off_when_asked(zones: Path) -> None:
    with serving(zones) as (server, _):
        assert server.udp_batch
    with serving(zones, udp_batch=False) as (server, _):
        assert not server.udp_batch


@pytest.mark.parametrize(
    "option",
    [
        {"rrl": 100.0},
        {"log_queries": True},
        {"allow_query": ["127.0.0.0/8"]},
    ],
    ids=["rrl", "log-queries", "allow-query"],
)
def test_features_that_need_each_address_keep_the_datagram_protocol(
    zones: Path, option: dict[str, Any]
) -> None:
    with serving(zones, **option) as (server, port):
        assert not server.udp_batch
        assert ask(port, "svc-1.ns-1.svc.cluster.local").answer


def test_same_answers_as_the_datagram_protocol(zones: Path) -> None:
    # Without rotation every answer is a function of the query: the bytes must be identical.
    packets = mix(random.Random(7), 3000)
    answers = []
    for udp_batch in (True, False):
        with serving(zones, udp_batch=udp_batch, rotate="off") as (server, port):
            assert server.udp_batch == udp_batch
            burst(port, packets)  # fill the caches and the memo
            answers.append(burst(port, packets))
    batched, plain = answers
    assert len(batched) == len(packets)
    # The SOA serial of negative answers is the time each server loaded its zones: set aside.
    assert {i: without_serial(a) for i, a in batched.items()} == {
        i: without_serial(a) for i, a in plain.items()
    }
    # ... and the mix did cover what it means to: truncation, NXDOMAIN, REFUSED, big answers.
    messages = [dns.message.from_wire(batched[i]) for i in range(len(packets))]
    rcodes = {m.rcode() for m in messages}
    assert {0, 3, 5} <= rcodes
    assert any(m.flags & dns.flags.TC for m in messages)
    assert any(len(m.answer) and len(m.answer[0]) == 60 for m in messages)


def test_truncation(zones: Path) -> None:
    with serving(zones) as (_, port):
        for _ in range(3):  # the second and third from the memo
            small = ask(port, "big.ns-1.svc.cluster.local", use_edns=-1)
            assert small.flags & dns.flags.TC
            large = ask(port, "big.ns-1.svc.cluster.local", use_edns=0, payload=1232)
            assert not large.flags & dns.flags.TC and len(large.answer[0]) == 60


def test_rotation_still_turns(zones: Path) -> None:
    with serving(zones) as (_, port):
        query = dns.message.make_query("db.ns-0.svc.cluster.local", "A")
        packets = []
        for i in range(400):
            query.id = i
            packets.append(query.to_wire())
        got = burst(port, packets)
    firsts = [dns.message.from_wire(got[i]).answer[0][0].address for i in range(400)]
    counts = {a: firsts.count(a) for a in set(firsts)}
    assert set(counts) == {f"10.7.0.{k}" for k in range(1, 5)}
    assert all(n == 100 for n in counts.values()), counts


def test_a_change_in_zones_is_served_at_once(zones: Path) -> None:
    name = "svc-5.ns-2.svc.cluster.local"
    with serving(zones) as (_, port):
        for _ in range(3):  # in the memo now
            assert ask(port, name).answer[0][0].address == "10.96.0.6"
        text = (zones / "services.yaml").read_text()
        (zones / "services.yaml").write_text(
            text.replace("clusterIP: 10.96.0.6", "clusterIP: 10.96.9.9")
        )
        deadline = time.monotonic() + 10
        while ask(port, name).answer[0][0].address != "10.96.9.9":
            assert time.monotonic() < deadline, "the change was never served"
            time.sleep(0.05)
        # Never the old answer again, from either cache or the memo.
        seen = {ask(port, name).answer[0][0].address for _ in range(20)}
        assert seen == {"10.96.9.9"}
        (zones / "services.yaml").write_text(text.replace("name: svc-5,", "name: gone,"))
        deadline = time.monotonic() + 10
        while ask(port, name).rcode() != 3:
            assert time.monotonic() < deadline, "the removal was never served"
            time.sleep(0.05)
        assert {ask(port, name).rcode() for _ in range(20)} == {3}


def test_malformed_packets(zones: Path) -> None:
    rng = random.Random(11)
    good = mix(rng, 50)
    bad = [b"", b"\x00", b"\x12\x34", bytes(11), bytes(12), rng.randbytes(40)]
    bad += [g[:-3] for g in good[:10]]  # the question cut short
    bad += [g[:2] + b"\x80" + g[3:] for g in good[10:20]]  # a response, not a query
    bad.append(good[0][:12] + b"\x3f" + bytes(200))  # a label running off the end
    bad.append(bytes(5000))  # longer than a batch slot
    answers = []
    for udp_batch in (True, False):
        with serving(zones, udp_batch=udp_batch, rotate="off") as (_, port):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(0.5)
            got = []
            for packet in bad:
                sock.sendto(packet, ("127.0.0.1", port))
                try:
                    got.append(sock.recv(65535))
                except TimeoutError:
                    got.append(None)
            sock.close()
            answers.append(got)
            # Still answering, and right.
            assert ask(port, "svc-1.ns-1.svc.cluster.local").answer[0][0].address == "10.96.0.2"
    batched, plain = answers
    # Identical, but for the datagram longer than a slot: the batch path drops it.
    assert batched[:-1] == plain[:-1]
    assert batched[-1] is None


def test_a_failing_responder_answers_servfail(zones: Path, monkeypatch: Any) -> None:
    with serving(zones) as (server, port):
        assert ask(port, "svc-1.ns-1.svc.cluster.local").answer

        def broken(data: bytes, udp: bool) -> Any:
            raise RuntimeError("boom")

        monkeypatch.setattr(server.transports.responder, "respond", broken)
        assert ask(port, "svc-1.ns-1.svc.cluster.local").rcode() == 2


def test_each_answer_goes_to_its_sender(zones: Path) -> None:
    # Several clients' queries in the same batches, with packets that get no answer between
    # them: every answer must still go to the socket that asked, with its own ID.
    with serving(zones) as (server, port):
        assert server.udp_batch
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
        for _round in range(3):
            for k in range(300):
                client = clients[k % 5]
                if k % 7 == 3:
                    client.sendto(b"\x00", ("127.0.0.1", port))  # dropped: nothing comes back
                query = dns.message.make_query(
                    f"svc-{k % 40}.ns-{k % 40 % 3}.svc.cluster.local", "A"
                )
                query.id = k * 5 + k % 5
                client.sendto(query.to_wire(), ("127.0.0.1", port))
            for c, client in enumerate(clients):
                client.settimeout(2)
                ids = set()
                while len(ids) < 60:
                    message = dns.message.from_wire(client.recv(65535))
                    ids.add(message.id)
                    k = message.id // 5
                    assert message.id % 5 == c == k % 5
                    assert message.answer[0][0].address == f"10.96.0.{k % 40 + 1}"
                assert ids == {k * 5 + c for k in range(c, 300, 5)}
        for client in clients:
            client.close()


def test_shutdown_closes_the_socket(zones: Path) -> None:
    with serving(zones) as (server, port):
        assert server.udp_batch
    # The port is free again: nothing holds the UDP socket.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", port))
    finally:
        sock.close()


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6(zones: Path) -> None:
    # sockaddr_in6 taken from recvmmsg and handed back to sendmmsg, for two clients at once.
    with serving(zones, host="::1") as (server, port):
        assert server.udp_batch
        clients = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(2)]
        for k in range(100):
            query = dns.message.make_query(f"svc-{k % 40}.ns-{k % 40 % 3}.svc.cluster.local", "A")
            query.id = k
            clients[k % 2].sendto(query.to_wire(), ("::1", port))
        for c, client in enumerate(clients):
            client.settimeout(2)
            for _ in range(50):
                message = dns.message.from_wire(client.recv(65535))
                assert message.id % 2 == c
                assert message.answer[0][0].address == f"10.96.0.{message.id % 40 + 1}"
            client.close()
