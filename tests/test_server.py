"""The real server as a subprocess, queried over real sockets with dig and dnspython."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.kdns_process import KDNS, KdnsProcess, start_kdns, until

ZONE = """
apiVersion: v1
kind: Service
metadata: {name: my-service, namespace: default}
spec:
  clusterIP: 10.96.0.50
  selector: {app: backend}
  ports: [{name: http, port: 8080, targetPort: 80, protocol: TCP}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: my-service, namespace: default}
subsets:
- addresses: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: data}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: data
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
endpoints:
- addresses: [10.2.0.1]
  hostname: db-0
- addresses: [10.2.0.2]
  hostname: db-1
- addresses: [10.2.0.3]
  hostname: db-2
  conditions: {ready: false}
ports: [{name: pg, port: 5432, protocol: TCP}]
"""


def big_zone(n: int) -> str:
    addresses = "\n".join(f"- addresses: [10.3.{i // 200}.{i % 200 + 1}]" for i in range(n))
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: big, namespace: default}}
spec: {{clusterIP: None}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: big-1, namespace: default, labels: {{kubernetes.io/service-name: big}}}}
addressType: IPv4
endpoints:
{addresses}
"""


@pytest.fixture(scope="module")
def zones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("zones")
    (d / "main.yaml").write_text(ZONE)
    (d / "big.yaml").write_text(big_zone(120))
    return d


@pytest.fixture(scope="module")
def server(zones: Path) -> Iterator[KdnsProcess]:
    kp = start_kdns(["--zones", str(zones)], http=True)
    yield kp
    kp.stop()


def flat(out: str) -> str:
    """dig output with runs of blanks made single spaces."""
    return "\n".join(" ".join(line.split()) for line in out.splitlines())


def answers(out: str) -> list[str]:
    """The answer lines of `dig +short`-less output, normalised."""
    return sorted(line.split()[-1] for line in out.strip().splitlines() if line)


def test_dig_a_udp_and_tcp(server: KdnsProcess) -> None:
    for tcp in (False, True):
        out = server.dig("+short", "my-service.default.svc.cluster.local", tcp=tcp)
        assert answers(out) == ["10.96.0.50"]


def test_dig_mixed_case_keeps_case(server: KdnsProcess) -> None:
    out = server.dig("+noall", "+answer", "My-SeRvIcE.DEFAULT.svc.Cluster.Local")
    assert out.split()[0] == "My-SeRvIcE.DEFAULT.svc.Cluster.Local."
    assert out.split()[-1] == "10.96.0.50"


def test_dig_headless_and_srv(server: KdnsProcess) -> None:
    assert answers(server.dig("+short", "db.data.svc.cluster.local")) == ["10.2.0.1", "10.2.0.2"]
    out = flat(
        server.dig("+noall", "+answer", "+additional", "_pg._tcp.db.data.svc.cluster.local", "SRV")
    )
    assert "0 50 5432 db-0.db.data.svc.cluster.local." in out
    assert "0 50 5432 db-1.db.data.svc.cluster.local." in out
    assert "db-2" not in out
    assert "db-0.db.data.svc.cluster.local. 5 IN A 10.2.0.1" in out


@pytest.mark.parametrize(
    "name",
    [
        "_PG._Tcp.DB.data.svc.cluster.local",
        "DB.Data.SVC.cluster.local",
        "dB-0.db.DATA.svc.cluster.local",
        "_Http._TCP.My-Service.default.SVC.cluster.LOCAL",
        "MY-SERVICE.default.svc.cluster.local",
    ],
)
def test_glue_is_spelled_as_the_target_it_supports(server: KdnsProcess, name: str) -> None:
    # The answer owners take the question's spelling; an SRV target is the service's own
    # (lower-case) name, and its glue must spell exactly that, whatever case was asked.
    query = dns.message.make_query(name, "SRV")
    reply = dns.query.udp(query, "127.0.0.1", port=server.port, timeout=5)
    targets = {rd.target.to_text() for rrset in reply.answer for rd in rrset}
    assert targets and all(rrset.name.to_text() == name + "." for rrset in reply.answer)
    glue = {rrset.name.to_text() for rrset in reply.additional}
    assert glue and glue <= targets, (targets, glue)


def test_dig_nxdomain_has_soa_and_aa(server: KdnsProcess) -> None:
    out = flat(server.dig("nope.default.svc.cluster.local"))
    assert "status: NXDOMAIN" in out
    assert " aa" in out.split("flags:")[1].split(";")[0]
    assert "IN SOA ns.dns.cluster.local. hostmaster.cluster.local." in out


def test_dig_refused_outside_zone(server: KdnsProcess) -> None:
    assert "status: REFUSED" in server.dig("example.com")


def test_dig_ptr(server: KdnsProcess) -> None:
    assert answers(server.dig("+short", "-x", "10.96.0.50")) == [
        "my-service.default.svc.cluster.local."
    ]
    assert answers(server.dig("+short", "-x", "10.2.0.1")) == ["db-0.db.data.svc.cluster.local."]


def test_truncation_then_tcp_gets_everything(server: KdnsProcess) -> None:
    out = server.dig("+ignore", "+noedns", "big.default.svc.cluster.local")
    assert " tc" in out.split("flags:")[1].split(";")[0]
    out = server.dig("+short", "big.default.svc.cluster.local")  # dig retries over TCP itself
    assert len(answers(out)) == 120
    out = server.dig("+short", "+tcp", "big.default.svc.cluster.local")
    assert len(answers(out)) == 120


def test_bufsize(server: KdnsProcess) -> None:
    small = server.dig("+ignore", "+bufsize=512", "big.default.svc.cluster.local")
    assert " tc" in small.split("flags:")[1].split(";")[0]
    # 20 records fit in 512 bytes with EDNS.
    out = server.dig("+ignore", "+bufsize=1232", "db.data.svc.cluster.local")
    assert " tc" not in out.split("flags:")[1].split(";")[0]
    assert "udp: 1232" in out


def test_dnspython_udp_tcp_and_edns(server: KdnsProcess) -> None:
    q = dns.message.make_query("_http._tcp.my-service.default.svc.cluster.local", "SRV", use_edns=0)
    for send in (dns.query.udp, dns.query.tcp):
        r = send(q, "127.0.0.1", port=server.port, timeout=2)
        assert r.rcode() == dns.rcode.NOERROR
        assert r.edns == 0
        srv = r.answer[0][0]
        assert (srv.priority, srv.weight, srv.port) == (0, 100, 8080)
        assert srv.target.to_text() == "my-service.default.svc.cluster.local."


def test_tcp_pipelined_queries_on_one_connection(server: KdnsProcess) -> None:
    names = ["my-service.default.svc.cluster.local", "db.data.svc.cluster.local", "x.example"]
    msgs = [dns.message.make_query(n, "A") for n in names]
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (m.to_wire() for m in msgs)))
        got = {}
        buf = b""
        while len(got) < len(msgs):
            chunk = sock.recv(65535)
            assert chunk, "connection closed early"
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                size = struct.unpack("!H", buf[:2])[0]
                r = dns.message.from_wire(buf[2 : 2 + size])
                buf = buf[2 + size :]
                got[r.id] = r
    for m in msgs:
        assert got[m.id].question[0].name == m.question[0].name
    assert got[msgs[2].id].rcode() == dns.rcode.REFUSED


def test_garbage_does_not_stop_the_server(server: KdnsProcess) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)
    # FORMERR when the header can be read
    sock.sendto(b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00", ("127.0.0.1", server.port))
    data, _ = sock.recvfrom(512)
    assert data[:2] == b"\x12\x34" and data[3] & 0xF == dns.rcode.FORMERR
    # NOTIMP for other opcodes
    notify = dns.message.make_query("cluster.local", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    sock.sendto(notify.to_wire(), ("127.0.0.1", server.port))
    data, _ = sock.recvfrom(512)
    assert dns.message.from_wire(data).rcode() == dns.rcode.NOTIMP
    for junk in (b"", b"\x00", b"\xff" * 11, b"\xff" * 600):
        sock.sendto(junk, ("127.0.0.1", server.port))
    sock.close()
    # A TCP client that sends garbage framing is dropped; others keep being served.
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as tcp:
        tcp.sendall(b"\x00\x05hello")
        assert tcp.recv(100) == b""  # closed: the framing can no longer be trusted
    assert answers(server.dig("+short", "my-service.default.svc.cluster.local")) == ["10.96.0.50"]


def test_health_and_ready(server: KdnsProcess) -> None:
    assert server.http_get("/health") == (200, "OK\n")
    assert server.http_get("/ready") == (200, "OK\n")
    assert server.http_get("/nothing")[0] == 404


def test_reload_on_edit(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ZONE)
    kp = start_kdns(["--zones", str(tmp_path)])
    try:
        assert answers(kp.dig("+short", "my-service.default.svc.cluster.local")) == ["10.96.0.50"]
        (tmp_path / "a.yaml").write_text(ZONE.replace("10.96.0.50", "10.96.0.51"))
        name = "my-service.default.svc.cluster.local"
        assert until(lambda: answers(kp.dig("+short", name)) == ["10.96.0.51"], 30), kp.log()
        (tmp_path / "a.yaml").write_text("kind: Service\nmetadata: [broken")
        # Only a reload that read the broken file writes this line (startup logs "loaded N
        # objects"); waiting for it proves the reload ran before the answer is checked.
        assert until(lambda: "a.yaml: not reloaded because of the errors" in kp.log(), 30), kp.log()
        assert answers(kp.dig("+short", "my-service.default.svc.cluster.local")) == ["10.96.0.51"]
    finally:
        kp.stop()


def test_sigint_stops_at_once(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones)])
    t0 = time.monotonic()
    # Exits 0 by itself (stop() kills after its timeout, which gives -9), before the default
    # lame-duck period of 5 s would have ended: SIGINT skips it.
    assert kp.stop(timeout=4.5) == 0
    print(f"SIGINT: stopped {time.monotonic() - t0:.2f} s after the signal")


def test_port_in_use_is_one_clear_line(zones: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        out = subprocess.run(
            [*KDNS, "serve", "--zones", str(zones), "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(
        rf"kdns: error: cannot listen on 127\.0\.0\.1:{port}/(udp|tcp): Address already in use",
        lines[0],
    )


def test_the_startup_log_names_the_event_loop_and_the_udp_path(tmp_path: Path) -> None:
    """What a query costs depends on both: a user must be able to see them."""
    (tmp_path / "z.yaml").write_text(ZONE)
    kp = start_kdns(["--zones", str(tmp_path)])
    try:
        assert "event loop: uvloop" in kp.log() and "UDP fast path on" in kp.log(), kp.log()
    finally:
        kp.stop()
    kp = start_kdns(["--zones", str(tmp_path), "--log-queries"])
    try:
        assert "UDP fast path off (--log-queries)" in kp.log(), kp.log()
    finally:
        kp.stop()
