"""The running server's operational behaviour: lame duck, limits, transfers, rate limiting, logs,
and `kdns serve --kubeconfig` end to end against the API server double."""

from __future__ import annotations

import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from testkit.apiserver import FakeApiServer, namespace, service, write_kubeconfig
from testkit.upstream import Upstream
from tests.builders import shop_api_objects
from tests.kdns_process import start_kdns, until

ZONE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.80, ports: [{name: http, port: 80}]}
"""


@pytest.fixture
def zones(tmp_path: Path) -> Path:
    d = tmp_path / "zones"
    d.mkdir()
    (d / "web.yaml").write_text(ZONE)
    return d


def query(port: int, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, "127.0.0.1", port=port, timeout=5)


def test_sigterm_lame_duck_reports_not_ready_but_keeps_answering(zones: Path) -> None:
    # A lame-duck period long enough that the checks below run inside it on a loaded machine.
    kp = start_kdns(["--zones", str(zones), "--lameduck", "6"], http=True)
    try:
        assert kp.http_get("/ready")[0] == 200
        t0 = time.monotonic()
        kp.proc.send_signal(signal.SIGTERM)
        assert until(lambda: kp.http_get("/ready")[0] == 503, 5.5)
        assert query(kp.port, "web.default.svc.cluster.local").answer[0][0].address == "10.96.0.80"
        assert time.monotonic() - t0 < 6, "the checks above ran inside the lame-duck period"
        assert kp.proc.wait(60) == 0
        elapsed = time.monotonic() - t0
        assert elapsed >= 6, "it served out the whole lame-duck period"
        print(f"lame duck of 6 s: stopped {elapsed:.2f} s after SIGTERM")
    finally:
        kp.stop()


def test_sigterm_without_lame_duck_stops_at_once(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--lameduck", "0"])
    t0 = time.monotonic()
    # Exits 0 by itself (stop() kills after its timeout, which gives -9); well before the default
    # lame-duck period of 5 s would have run out, so --lameduck 0 was honoured.
    assert kp.stop(timeout=4.5, sig=signal.SIGTERM) == 0
    print(f"--lameduck 0: stopped {time.monotonic() - t0:.2f} s after SIGTERM")


def test_axfr_refused_by_default_and_allowed_to_listed_networks(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones)])
    try:
        q = dns.message.make_query("cluster.local", "AXFR")
        r = dns.query.tcp(q, "127.0.0.1", port=kp.port, timeout=2)
        assert r.rcode() == dns.rcode.REFUSED
        r = dns.query.udp(q, "127.0.0.1", port=kp.port, timeout=2)
        assert r.rcode() == dns.rcode.REFUSED
    finally:
        kp.stop()
    kp = start_kdns(["--zones", str(zones), "--transfer-to", "127.0.0.0/8"])
    try:
        out = kp.dig("AXFR", "cluster.local", tcp=True)
        lines = [line.split() for line in out.splitlines() if line and not line.startswith(";")]
        assert lines[0][3] == "SOA" and lines[-1][3] == "SOA"
        assert ["web.default.svc.cluster.local.", "5", "IN", "A", "10.96.0.80"] in lines
        # IXFR (dig puts the client's SOA, serial 1, in the authority section): the whole zone
        out = kp.dig("IXFR=1", "cluster.local", tcp=True)
        assert [line.split() for line in out.splitlines() if line and line[0] != ";"] == lines
        # still refused over UDP, even to an allowed network
        q = dns.message.make_query("cluster.local", "AXFR")
        assert dns.query.udp(q, "127.0.0.1", port=kp.port, timeout=2).rcode() == dns.rcode.REFUSED
    finally:
        kp.stop()


def test_rrl_limits_a_flooding_prefix(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--rrl", "20"])
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(3)  # the quiet time that ends the replies: generous, so none is missed
        wire = dns.message.make_query("web.default.svc.cluster.local", "A").to_wire()
        began = time.monotonic()
        for _ in range(200):
            sock.sendto(wire, ("127.0.0.1", kp.port))
        full = truncated = 0
        try:
            while True:
                data, _ = sock.recvfrom(2048)
                msg = dns.message.from_wire(data)
                if msg.flags & dns.flags.TC:
                    truncated += 1
                else:
                    full += 1
        except TimeoutError:
            pass
        sock.close()
        # The burst of 20, plus what refilled at 20/s while the flood was answered (measured,
        # not assumed: a loaded machine answers slowly and refills more).
        refilled = 20 * (time.monotonic() - began - 3)
        assert 15 <= full <= 20 + refilled + 2, (full, truncated, refilled)
        assert truncated > 30  # every second limited answer slips, truncated
        assert full + truncated < 200  # the rest were dropped
    finally:
        kp.stop()


def test_log_queries(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--log-queries"])
    try:
        query(kp.port, "Web.default.svc.cluster.local", "A")
        query(kp.port, "nope.default.svc.cluster.local", "AAAA", tcp=True)
        line = until(lambda: next((x for x in kp.lines if "name=nope" in x), None), 30)
        assert line and "proto=tcp" in line and "type=AAAA" in line and "rcode=NXDOMAIN" in line
        line = next(x for x in kp.lines if "name=Web.default" in x)
        assert "client=127.0.0.1" in line and "proto=udp" in line and "rcode=NOERROR" in line
        assert "duration_us=" in line
    finally:
        kp.stop()


def test_slowloris_connections_are_dropped_and_good_clients_served(zones: Path) -> None:
    kp = start_kdns(
        ["--zones", str(zones), "--tcp-idle-timeout", "1", "--tcp-max-connections", "50"]
    )
    try:
        stalled = []
        for _ in range(80):  # more than the cap: the extra ones are closed at once
            s = socket.create_connection(("127.0.0.1", kp.port), timeout=2)
            s.sendall(b"\x00")  # half a length prefix, then nothing
            stalled.append(s)
        # A good client still gets answers over UDP while TCP is full...
        assert query(kp.port, "web.default.svc.cluster.local").rcode() == dns.rcode.NOERROR
        # ...and over TCP once the idle timeout has dropped the stalled ones (recv returns when
        # kdns closes; 10 s is a generous bound for an idle timeout of 1 s).
        closed = 0
        for s in stalled:
            s.settimeout(10)
            try:
                closed += s.recv(10) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass  # still open: counted as not closed
            s.close()
        assert closed == 80
        r = query(kp.port, "web.default.svc.cluster.local", tcp=True)
        assert r.rcode() == dns.rcode.NOERROR
    finally:
        kp.stop()


def test_client_that_never_reads_does_not_grow_memory_without_bound(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones)])
    try:
        wire = dns.message.make_query("web.default.svc.cluster.local", "A").to_wire()
        framed = struct.pack("!H", len(wire)) + wire
        s = socket.create_connection(("127.0.0.1", kp.port), timeout=2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                sent += s.send(framed * 100)
            except BlockingIOError:
                time.sleep(0.01)
        # kdns stopped reading once its write buffer filled: far less was accepted than the
        # answers would take, and the server is healthy.
        assert sent < 50_000_000
        assert query(kp.port, "web.default.svc.cluster.local").rcode() == dns.rcode.NOERROR
        rss = int(Path(f"/proc/{kp.proc.pid}/status").read_text().split("VmRSS:")[1].split()[0])
        assert rss < 200_000  # kB
        s.close()
    finally:
        kp.stop()


# -- against a cluster (the API server double), through the real CLI ------------------------


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    server.apply_all(
        [
            namespace("default"),
            *shop_api_objects(),
            service("web", "default", cluster_ip="10.96.9.9"),
        ]
    )
    yield server
    server.stop()


def test_serve_from_kubeconfig_follows_changes_and_survives_outages(
    api: FakeApiServer, zones: Path, tmp_path: Path
) -> None:
    kcfg = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    kp = start_kdns(["--zones", str(zones), "--kubeconfig", str(kcfg)], http=True)
    try:
        assert kp.http_get("/ready")[0] == 200
        r = query(kp.port, "cart.shop.svc.cluster.local")
        assert r.answer[0][0].address == "10.96.1.1"
        r = query(kp.port, "db.shop.svc.cluster.local")
        assert sorted(a.address for a in r.answer[0]) == ["10.1.0.1", "10.1.0.2"]
        # files win over the cluster for the same name
        assert query(kp.port, "web.default.svc.cluster.local").answer[0][0].address == "10.96.0.80"
        # a change reaches DNS (how fast: bench/propagation.py)
        t0 = time.monotonic()
        api.apply(service("new", "shop", cluster_ip="10.96.1.2"))
        assert until(
            lambda: query(kp.port, "new.shop.svc.cluster.local").rcode() == dns.rcode.NOERROR, 10
        )
        print(f"a new service answered {time.monotonic() - t0:.3f} s after the apply")
        # an outage: answers stay, once kdns has seen its watches break
        broken = kp.log().count("keeping the last data, retrying")
        api.go_down()
        assert until(lambda: kp.log().count("keeping the last data, retrying") > broken, 15)
        assert query(kp.port, "cart.shop.svc.cluster.local").answer[0][0].address == "10.96.1.1"
        assert query(kp.port, "new.shop.svc.cluster.local").rcode() == dns.rcode.NOERROR
        api.come_up()
        api.delete("Service", "cart", "shop")
        assert until(
            lambda: query(kp.port, "cart.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN, 10
        )
    finally:
        kp.stop()


def test_servfail_not_nxdomain_before_sync(zones: Path, tmp_path: Path) -> None:
    server = FakeApiServer().start()
    server.outage(60)  # every request fails: the cluster never syncs
    try:
        kcfg = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        kp = start_kdns(
            ["--zones", str(zones), "--kubeconfig", str(kcfg), "--startup-timeout", "0.5"],
            http=True,
        )
        try:
            assert kp.http_get("/ready")[0] == 503
            assert query(kp.port, "cart.shop.svc.cluster.local").rcode() == dns.rcode.SERVFAIL
            # names the files define answer already
            r = query(kp.port, "web.default.svc.cluster.local")
            assert r.answer[0][0].address == "10.96.0.80"
        finally:
            kp.stop()
    finally:
        server.stop()


# -- metrics, forwarding, explain, reload through the real CLI --------------------------------


def test_metrics_count_known_queries(zones: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    kp = start_kdns(["--zones", str(zones)], http=True)
    try:
        for _ in range(3):
            query(kp.port, "web.default.svc.cluster.local", "A")
        query(kp.port, "nope.default.svc.cluster.local", "AAAA", tcp=True)
        status, body = kp.http_get("/metrics")
        assert status == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body)
            for s in fam.samples
        }

        def value(name: str, **labels: str) -> float:
            return sum(
                v
                for (n, lab), v in samples.items()
                if n == name and all(dict(lab).get(k) == w for k, w in labels.items())
            )

        assert value("kdns_dns_requests_total", proto="udp", type="A") == 3
        assert value("kdns_dns_requests_total", proto="tcp", type="AAAA") == 1
        assert value("kdns_dns_responses_total", rcode="NXDOMAIN") == 1
        assert value("kdns_dns_responses_total", rcode="NOERROR") == 3
        assert value("kdns_cache_hits_total") == 2  # the 2nd and 3rd A
        assert value("kdns_dns_request_duration_seconds_count") == 4
        assert value("kdns_build_info") == 1
    finally:
        kp.stop()


def test_upstream_forwarding_and_caching(zones: Path) -> None:
    upstream = Upstream()
    kp = start_kdns(["--zones", str(zones), "--upstream", f"127.0.0.1:{upstream.port}"])
    try:
        for tcp in (False, True, False):
            r = query(kp.port, "www.Example.test", "A", tcp=tcp)
            assert r.rcode() == dns.rcode.NOERROR
            assert r.answer[0][0].address == "192.0.2.7"
            assert r.answer[0].name.to_text() == "www.Example.test."
        assert len(upstream.asked) == 1  # the others came from the cache
        # in-zone names never go upstream
        assert query(kp.port, "nope.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
        assert len(upstream.asked) == 1
    finally:
        kp.stop()
        upstream.close()


def test_upstream_that_is_kdns_itself_is_refused(zones: Path) -> None:
    import subprocess

    from tests.kdns_process import KDNS

    out = subprocess.run(
        [
            *KDNS,
            "serve",
            "--zones",
            str(zones),
            "--listen",
            "127.0.0.1:5399",
            "--upstream",
            "127.0.0.1:5399",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "kdns: error:" in out.stderr


def test_explain_against_a_running_server(zones: Path) -> None:
    import subprocess

    from tests.kdns_process import KDNS

    kp = start_kdns(["--zones", str(zones)], http=True)
    try:
        assert kp.http_get("/explain?name=web.default.svc.cluster.local")[0] == 404
    finally:
        kp.stop()
    kp = start_kdns(["--zones", str(zones), "--http-explain"], http=True)
    try:
        out = subprocess.run(
            [
                *KDNS,
                "explain",
                "web.default.svc.cluster.local",
                "--server",
                f"127.0.0.1:{kp.http_port}",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.returncode == 0, out.stderr
        assert "ClusterIP service default/web" in out.stdout
        assert "10.96.0.80" in out.stdout
    finally:
        kp.stop()


def test_sighup_reloads_zones(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones)])
    try:
        (zones / "web.yaml").write_text(ZONE.replace("10.96.0.80", "10.96.0.81"))
        kp.proc.send_signal(signal.SIGHUP)
        # The line is read from kdns's stderr by another thread: wait for it, do not peek.
        assert until(lambda: any("SIGHUP: reloading zones" in line for line in kp.lines), 30)
        assert until(
            lambda: (
                query(kp.port, "web.default.svc.cluster.local").answer[0][0].address == "10.96.0.81"
            ),
            30,
        )
    finally:
        kp.stop()


def test_several_clusters_side_by_side(tmp_path: Path) -> None:
    staging, production = FakeApiServer().start(), FakeApiServer().start()
    try:
        staging.apply_all([namespace("shop"), service("cart", "shop", cluster_ip="10.96.1.1")])
        production.apply_all([namespace("shop"), service("cart", "shop", cluster_ip="10.200.1.1")])
        kcfg = write_kubeconfig(
            tmp_path / "kubeconfig",
            staging.url,
            context="staging",
            other_contexts={"production": production.url},
        )
        empty = tmp_path / "empty"
        empty.mkdir()
        kp = start_kdns(
            [
                "--zones",
                str(empty),
                "--kubeconfig",
                str(kcfg),
                "--cluster",
                "production=prod.example",
            ],
            http=True,
        )
        try:
            assert kp.http_get("/ready")[0] == 200
            r = query(kp.port, "cart.shop.svc.cluster.local")
            assert r.answer[0][0].address == "10.96.1.1"
            r = query(kp.port, "cart.shop.svc.prod.example")
            assert r.answer[0][0].address == "10.200.1.1"
            r = query(kp.port, "1.1.200.10.in-addr.arpa", "PTR")
            assert r.answer[0][0].target.to_text() == "cart.shop.svc.prod.example."
            production.apply(service("only-prod", "shop", cluster_ip="10.200.1.2"))
            assert until(
                lambda: (
                    query(kp.port, "only-prod.shop.svc.prod.example").rcode() == dns.rcode.NOERROR
                ),
                30,
            )
            assert query(kp.port, "only-prod.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
        finally:
            kp.stop()
    finally:
        staging.stop()
        production.stop()


def test_kubeconfig_without_zones_directory_serves_the_cluster(
    api: FakeApiServer, tmp_path: Path
) -> None:
    kcfg = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    kp = start_kdns(["--kubeconfig", str(kcfg)], cwd=tmp_path)  # no ./zones here
    try:
        assert query(kp.port, "cart.shop.svc.cluster.local").answer[0][0].address == "10.96.1.1"
    finally:
        kp.stop()


CART_IN_FILES = """\
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.77.77
  ports: [{name: http, port: 80}]
"""


def test_a_checkout_s_zones_folder_is_not_mixed_into_a_cluster_unasked(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """`kdns serve --kubeconfig` started where a zones/ folder happens to be (the checkout
    itself) serves the cluster alone, and says so; --zones serves both, and says that too."""
    (tmp_path / "zones").mkdir()
    (tmp_path / "zones" / "cart.yaml").write_text(CART_IN_FILES)
    kcfg = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    kp = start_kdns(["--kubeconfig", str(kcfg)], cwd=tmp_path)
    try:
        assert query(kp.port, "cart.shop.svc.cluster.local").answer[0][0].address == "10.96.1.1"
        assert "./zones is not served alongside the cluster" in kp.log()
    finally:
        kp.stop()
    kp = start_kdns(["--kubeconfig", str(kcfg), "--zones", "zones"], cwd=tmp_path)
    try:
        # The files win for a service both define (a local override), and both are named.
        assert query(kp.port, "cart.shop.svc.cluster.local").answer[0][0].address == "10.96.77.77"
        assert until(lambda: "defined by both files and cluster; files wins" in kp.log())
        assert "cluster.local is served from two sources: the files in zones" in kp.log()
    finally:
        kp.stop()
