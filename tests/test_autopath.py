"""`--autopath`: one question instead of a pod's whole search path, measured with glibc.

In a network namespace of its own (unshare), kdns listens on 127.0.0.1:53 and a Pod manifest
gives 127.0.0.1 to a pod in namespace `shop`, so glibc's resolver there, with a pod's resolv.conf
(the cluster search path, ndots:5), is that pod. `getent ahosts` looks up external names, a
service of its own namespace, one of another, and a name that exists nowhere; kdns's query log
says how many questions each lookup cost. Without --autopath an external name costs the whole
path (A and AAAA under three search domains, then as itself); with it, the first question's
answer is final. The addresses must be the same either way.

Over plain sockets: the answer's shape (a CNAME from the name asked to the name found, then its
records), who gets it (only a pod of that namespace), and the errors of the flag.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.kdns_process import KDNS, start_kdns
from tests.test_external_name import _namespaces_work

ROOT = Path(__file__).resolve().parent.parent

ZONE = """apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.5.1, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: data}
spec: {clusterIP: 10.96.5.2, ports: [{name: pg, port: 5432}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client-1, namespace: shop}
status: {phase: Running, podIP: 127.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client-2, namespace: data}
status: {phase: Running, podIP: 127.0.0.2}
"""


@pytest.fixture
def zones(tmp_path: Path) -> Path:
    (tmp_path / "shop.yaml").write_text(ZONE)
    return tmp_path


def lookups(zones: Path, *flags: str) -> dict[str, dict[str, object]]:
    script = [sys.executable, "-m", "tests.netns_autopath", str(zones), *flags]
    out = subprocess.run(
        ["unshare", "--net", "--mount", *script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result: dict[str, dict[str, object]] = json.loads(out.stdout.splitlines()[-1])
    return result


@pytest.mark.skipif(not _namespaces_work(), reason="needs root and unshare (network namespaces)")
def test_getaddrinfo_asks_once_with_autopath(zones: Path) -> None:
    without = lookups(zones)
    with_ = lookups(zones, "--autopath")
    for name in without:
        print(
            f"{name}: {without[name]['questions']} questions without --autopath, "
            f"{with_[name]['questions']} with; addresses {with_[name]['addresses']}"
        )
    expected = {
        "api.example.com": ["192.0.2.20", "2001:db8::20"],
        "www.example.org": ["192.0.2.30"],
        "web": ["10.96.5.1"],
        "db.data": ["10.96.5.2"],
        "nowhere.example.net": [],
    }
    for name, addresses in expected.items():
        assert without[name]["addresses"] == addresses, (name, without[name])
        assert with_[name]["addresses"] == addresses, (name, with_[name])
    # A and AAAA, each under three search domains and then alone: 8 questions.
    assert without["api.example.com"]["questions"] == 8
    assert with_["api.example.com"]["questions"] == 2
    assert with_["www.example.org"]["questions"] == 2
    assert with_["db.data"]["questions"] == 2
    # Its own service: found under the first search domain either way.
    assert without["web"]["questions"] == with_["web"]["questions"] == 2
    # A name that exists nowhere: the walk ends in the first NXDOMAIN, the client goes on.
    assert with_["nowhere.example.net"]["questions"] == without["nowhere.example.net"]["questions"]


def ask(port: int, name: str, rdtype: str = "A", source: str = "127.0.0.1") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=5, source=source)


def records(message: dns.message.Message) -> list[str]:
    return [f"{rrset.name} {rrset.rdtype.name} {rd}" for rrset in message.answer for rd in rrset]


def test_the_answer_is_a_cname_to_the_name_found_and_only_for_that_namespaces_pods(
    zones: Path,
) -> None:
    kp = start_kdns(["--zones", str(zones), "--pods", "verified", "--autopath"])
    try:
        name = "db.data.shop.svc.cluster.local."
        # 127.0.0.1 is the pod of shop: its search path leads to db.data.svc.cluster.local.
        r = ask(kp.port, name)
        assert r.rcode() == dns.rcode.NOERROR
        assert records(r) == [
            f"{name} CNAME db.data.svc.cluster.local.",
            "db.data.svc.cluster.local. A 10.96.5.2",
        ]
        r = dns.query.tcp(dns.message.make_query(name, "A"), "127.0.0.1", port=kp.port, timeout=5)
        assert len(records(r)) == 2
        # NODATA where the name found has no record of the type, as CoreDNS answers.
        r = ask(kp.port, name, "AAAA")
        assert r.rcode() == dns.rcode.NOERROR and not r.answer
        # 127.0.0.2 is the pod of data: the name is not under its first search domain.
        assert ask(kp.port, name, source="127.0.0.2").rcode() == dns.rcode.NXDOMAIN
        # 127.0.0.3 is nobody's: no walk.
        assert ask(kp.port, name, source="127.0.0.3").rcode() == dns.rcode.NXDOMAIN
        # The first search domain itself, and a name that is found there: as without autopath.
        assert ask(kp.port, "shop.svc.cluster.local.").rcode() == dns.rcode.NOERROR
        assert records(ask(kp.port, "web.shop.svc.cluster.local.")) == [
            "web.shop.svc.cluster.local. A 10.96.5.1"
        ]
        # Nothing found anywhere (no --upstream: the walk stops at the zones): the NXDOMAIN.
        assert ask(kp.port, "nope.shop.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    finally:
        kp.stop()


def test_autopath_needs_pods_verified() -> None:
    out = subprocess.run([*KDNS, "serve", "--autopath"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "kdns: error: --autopath needs --pods verified (it finds a client's namespace by its pod)"
    ]
