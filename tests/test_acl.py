"""`--allow-query`: the real `kdns serve`, asked over real sockets from an allowed and a refused
source address.

All of 127.0.0.0/8 is local on Linux, so a client socket bound to 127.0.0.2 reaches the server
on 127.0.0.1 from a second address: the server allows 127.0.0.2 and nobody else, and the tests'
usual source, 127.0.0.1, is the outsider.
"""

from __future__ import annotations

import http.client
import re
import select
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from kdns.dns.wire import refused_for
from kdns.serve.acl import QueryAcl
from tests.kdns_process import KdnsProcess, start_kdns, until

ZONE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.80, ports: [{name: http, port: 80}]}
"""
NAME = "web.default.svc.cluster.local"
INSIDE = "127.0.0.2"
OUTSIDE = "127.0.0.1"
#: What the server is started with: the inside address and an unrelated IPv6 network.
ALLOW = ["--allow-query", f"{INSIDE}", "--allow-query", "fd00::/8"]


@pytest.fixture
def zones(tmp_path: Path) -> Path:
    d = tmp_path / "zones"
    d.mkdir()
    (d / "web.yaml").write_text(ZONE)
    return d


def ask(port: int, source: str, tcp: bool = False, timeout: float = 2.0) -> dns.message.Message:
    q = dns.message.make_query(NAME, "A")
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, source=source, timeout=timeout)
    return dns.query.udp(q, "127.0.0.1", port=port, source=source, timeout=timeout)


def acl_metrics(kp: KdnsProcess) -> dict[str, float]:
    """`kdns_acl_*_total` samples: "refused/udp" -> value."""
    status, text = kp.http_get("/metrics")
    assert status == 200
    out = {}
    for m in re.finditer(r'^kdns_acl_(\w+)_total\{proto="(\w+)"\} (\S+)$', text, re.M):
        out[f"{m.group(1)}/{m.group(2)}"] = float(m.group(3))
    return out


def http_from(kp: KdnsProcess, source: str, path: str) -> int:
    conn = http.client.HTTPConnection(
        "127.0.0.1", kp.http_port, timeout=5, source_address=(source, 0)
    )
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture(params=[0, 2], ids=["one-process", "workers-2"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def refusing(zones: Path, workers: int) -> Iterator[KdnsProcess]:
    args = ["--zones", str(zones), "--http-explain", "--workers", str(workers), *ALLOW]
    kp = start_kdns(args, http=True, timeout=60)
    try:
        yield kp
    finally:
        kp.stop()


def test_refused_outside_answered_inside(refusing: KdnsProcess, workers: int) -> None:
    kp = refusing
    for tcp in (False, True):
        inside = ask(kp.port, INSIDE, tcp=tcp)
        assert inside.rcode() == dns.rcode.NOERROR
        assert inside.answer[0][0].address == "10.96.0.80"
        outside = ask(kp.port, OUTSIDE, tcp=tcp)
        assert outside.rcode() == dns.rcode.REFUSED
        assert not outside.answer
        assert outside.question[0].name.to_text() == NAME + "."
    assert http_from(kp, INSIDE, f"/explain?name={NAME}") == 200
    assert http_from(kp, OUTSIDE, f"/explain?name={NAME}") == 403
    # The probes and /metrics stay open to all (the kubelet and Prometheus ask from elsewhere).
    assert http_from(kp, OUTSIDE, "/ready") == 200
    # With --workers the serving processes report their counts every second.
    want = {"refused/udp": 1, "refused/tcp": 1, "refused/http": 1, "dropped/udp": 0}
    got = until(lambda: (m := acl_metrics(kp)) and all(m.get(k) == v for k, v in want.items()), 10)
    assert got, acl_metrics(kp)


def test_tcp_connection_from_outside_is_closed_after_refused(refusing: KdnsProcess) -> None:
    with socket.create_connection(("127.0.0.1", refusing.port), 5, (OUTSIDE, 0)) as sock:
        wire = dns.message.make_query(NAME, "A").to_wire()
        # Two queries at once: the first gets REFUSED, then the server closes the connection.
        sock.sendall((struct.pack("!H", len(wire)) + wire) * 2)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    (size,) = struct.unpack_from("!H", data)
    assert len(data) == 2 + size, "exactly one message before the close"
    assert dns.message.from_wire(data[2:]).rcode() == dns.rcode.REFUSED


def test_drop_sends_nothing(zones: Path, workers: int) -> None:
    args = ["--zones", str(zones), "--workers", str(workers), "--allow-query-drop", *ALLOW]
    kp = start_kdns(args, http=True, timeout=60)
    try:
        wire = dns.message.make_query(NAME, "A").to_wire()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((OUTSIDE, 0))
            sock.sendto(wire, ("127.0.0.1", kp.port))
            # The query reached the server and was dropped: counted, and nothing came back.
            assert until(lambda: acl_metrics(kp).get("dropped/udp") == 1, 10), acl_metrics(kp)
            readable, _, _ = select.select([sock], [], [], 0.5)
            assert not readable, sock.recv(4096)
        # Over TCP the connection is closed before anything is read.
        with pytest.raises((EOFError, ConnectionError)):
            ask(kp.port, OUTSIDE, tcp=True, timeout=5)
        assert until(lambda: acl_metrics(kp).get("dropped/tcp") == 1, 10), acl_metrics(kp)
        # The allowed source still gets its answers.
        assert ask(kp.port, INSIDE).answer[0][0].address == "10.96.0.80"
        assert ask(kp.port, INSIDE, tcp=True).answer[0][0].address == "10.96.0.80"
        assert acl_metrics(kp).get("refused/udp") == 0
    finally:
        kp.stop()


def test_no_acl_answers_everyone_and_exports_no_acl_metrics(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones)], http=True)
    try:
        for source in (OUTSIDE, INSIDE):
            assert ask(kp.port, source).answer[0][0].address == "10.96.0.80"
        assert acl_metrics(kp) == {}
    finally:
        kp.stop()


def test_acl_matches_cidrs_addresses_and_ipv6() -> None:
    acl = QueryAcl(["10.0.0.0/8", "192.168.1.7", "fd00::/8", "2001:db8::1"])
    assert acl.allows("10.1.2.3")
    assert acl.allows("192.168.1.7")
    assert not acl.allows("192.168.1.8")
    assert not acl.allows("11.0.0.1")
    assert acl.allows("fd12::1")
    assert acl.allows("2001:db8::1")
    assert not acl.allows("2001:db8::2")
    assert acl.allows("fd00::1%eth0")  # a scope id from a link-local socket address
    assert acl.allows("::ffff:10.9.9.9")  # an IPv4 client of a dual-stack socket
    assert not acl.allows("::ffff:11.9.9.9")
    assert not acl.allows("?")
    # the memo gives the same verdicts the second time
    assert acl.allows("10.1.2.3") and not acl.allows("11.0.0.1")


def test_a_response_from_outside_is_never_answered() -> None:
    query = dns.message.make_query(NAME, "A")
    refused = refused_for(query.to_wire())
    assert refused is not None
    reply = dns.message.from_wire(refused)
    assert reply.rcode() == dns.rcode.REFUSED and reply.id == query.id
    response = dns.message.make_response(query).to_wire()
    assert refused_for(response) is None
    assert refused_for(b"\x00\x01") is None


def test_refused_on_the_logging_path_too(zones: Path) -> None:
    # --log-queries (like --rrl) takes UDP's general path, which checks the ACL on its own.
    kp = start_kdns(["--zones", str(zones), "--log-queries", *ALLOW], http=True)
    try:
        assert ask(kp.port, OUTSIDE).rcode() == dns.rcode.REFUSED
        assert ask(kp.port, INSIDE).answer[0][0].address == "10.96.0.80"
        assert until(lambda: any("client=127.0.0.1" in line for line in kp.lines), 5), kp.log()
        logged = next(line for line in kp.lines if "client=127.0.0.1" in line)
        assert "proto=udp" in logged and "rcode=REFUSED" in logged
        assert acl_metrics(kp)["refused/udp"] == 1
    finally:
        kp.stop()
