"""ExternalName targets outside the zone, followed through the forwarder (`--upstream`).

A real stub client is the judge: dnspython's `Resolver` pointed only at kdns, and glibc's
`getaddrinfo` (`getent ahosts`) in a network and mount namespace whose resolv.conf names only
kdns. Without `--upstream` the CNAME comes alone, as before.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from testkit.upstream import Upstream
from tests.kdns_process import start_kdns

ROOT = Path(__file__).resolve().parent.parent

ZONE = """
apiVersion: v1
kind: Service
metadata: {name: remote, namespace: shop}
spec: {type: ExternalName, externalName: payments.example.com}
---
apiVersion: v1
kind: Service
metadata: {name: gone, namespace: shop}
spec: {type: ExternalName, externalName: missing.example.com}
---
apiVersion: v1
kind: Service
metadata: {name: chain, namespace: shop}
spec: {type: ExternalName, externalName: remote.shop.svc.cluster.local}
"""

TABLE = {
    ("payments.example.com.", "A"): [
        "payments.example.com. 300 IN CNAME edge.example.net.",
        "edge.example.net. 300 IN A 192.0.2.10",
        "edge.example.net. 300 IN A 192.0.2.11",
    ],
    ("payments.example.com.", "AAAA"): ["payments.example.com. 2 IN AAAA 2001:db8::10"],
    ("missing.example.com.", "A"): "NXDOMAIN",
}


@pytest.fixture
def zones(tmp_path: Path) -> Path:
    (tmp_path / "shop.yaml").write_text(ZONE)
    return tmp_path


def stub(port: int) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.lifetime = 5
    return resolver


def test_a_stub_resolver_gets_the_targets_addresses_through_the_upstream(zones: Path) -> None:
    upstream = Upstream(TABLE)
    kp = start_kdns(["--zones", str(zones), "--upstream", f"127.0.0.1:{upstream.port}"])
    try:
        answer = stub(kp.port).resolve("remote.shop.svc.cluster.local", "A")
        assert sorted(rd.address for rd in answer) == ["192.0.2.10", "192.0.2.11"]
        chain = [(str(r.name), dns.rdatatype.to_text(r.rdtype)) for r in answer.response.answer]
        assert chain == [
            ("remote.shop.svc.cluster.local.", "CNAME"),
            ("payments.example.com.", "CNAME"),
            ("edge.example.net.", "A"),
        ]
        # Capped by kdns's --ttl (5) and by the upstream's (300 here, 2 for the AAAA).
        assert max(r.ttl for r in answer.response.answer) <= 5
        aaaa = stub(kp.port).resolve("remote.shop.svc.cluster.local", "AAAA")
        assert [rd.address for rd in aaaa] == ["2001:db8::10"]
        assert aaaa.response.answer[-1].ttl <= 2
        # Over TCP, in the client's spelling.
        q = dns.message.make_query("Remote.Shop.svc.cluster.local", "A")
        r = dns.query.tcp(q, "127.0.0.1", port=kp.port, timeout=5)
        assert r.answer[0].name.to_text() == "Remote.Shop.svc.cluster.local."
        assert {rd.address for rs in r.answer if rs.rdtype == 1 for rd in rs} == {
            "192.0.2.10",
            "192.0.2.11",
        }
        assert ("payments.example.com.", "A") in upstream.questions
        # Through an ExternalName inside the zone first: the chain ends at the same target.
        chained = stub(kp.port).resolve("chain.shop.svc.cluster.local", "A")
        assert sorted(rd.address for rd in chained) == ["192.0.2.10", "192.0.2.11"]
        assert [str(r.name) for r in chained.response.answer][:2] == [
            "chain.shop.svc.cluster.local.",
            "remote.shop.svc.cluster.local.",
        ]
    finally:
        kp.stop()
        upstream.close()


def test_a_target_the_upstream_denies_leaves_the_cname_alone(zones: Path) -> None:
    upstream = Upstream(TABLE)
    kp = start_kdns(["--zones", str(zones), "--upstream", f"127.0.0.1:{upstream.port}"])
    try:
        q = dns.message.make_query("gone.shop.svc.cluster.local", "A")
        r = dns.query.udp(q, "127.0.0.1", port=kp.port, timeout=5)
        assert r.rcode() == dns.rcode.NOERROR
        assert [dns.rdatatype.to_text(rs.rdtype) for rs in r.answer] == ["CNAME"]
        assert ("missing.example.com.", "A") in upstream.questions
    finally:
        kp.stop()
        upstream.close()


def test_without_upstream_the_cname_comes_alone(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones)])
    try:
        q = dns.message.make_query("remote.shop.svc.cluster.local", "A")
        r = dns.query.udp(q, "127.0.0.1", port=kp.port, timeout=5)
        assert [str(rd.target) for rs in r.answer for rd in rs] == ["payments.example.com."]
    finally:
        kp.stop()


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "--net", "--mount", "true"], timeout=10).returncode == 0


@pytest.mark.skipif(not _namespaces_work(), reason="needs root and unshare (network namespaces)")
def test_getaddrinfo_resolves_an_external_name_through_kdns(zones: Path) -> None:
    # In a network namespace of its own, kdns can listen on 127.0.0.1:53, the only port glibc's
    # resolv.conf can name; a mount namespace gives that namespace its own resolv.conf.
    out = subprocess.run(
        ["unshare", "--net", "--mount", sys.executable, "-m", "tests.netns_getent", str(zones)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    addresses = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
    assert addresses == {"192.0.2.10", "192.0.2.11", "2001:db8::10"}, out.stdout
