"""`--external-zone`: what reaches the cluster from outside, over real sockets.

`<svc>.<ns>.<zone>` answers with a service's externalIPs and load balancer ingress (CoreDNS's
k8s_external), and the host names of Ingress rules and Gateway API routes answer with their
Ingress's or parent Gateway's status addresses. Asked of the real `kdns serve` with dig and
dnspython, from manifests in zones/ and from the API double through the real `kubernetes`
client (which has no Gateway API CRDs until a test installs them: a cluster without them is
served all the same).
"""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from testkit.apiserver import FakeApiServer, namespace, service, write_kubeconfig
from tests.kdns_process import KDNS, KdnsProcess, start_kdns, until

ZONE = "example.test"
Obj = dict[str, Any]


def ask(port: int, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=0)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=5)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=5)


def answer(port: int, name: str, rdtype: str = "A", tcp: bool = False) -> list[str] | str:
    """The answer records' data as text, sorted, or the rcode's name (NODATA: "NOERROR")."""
    r = ask(port, name, rdtype, tcp)
    if r.rcode() != dns.rcode.NOERROR or not r.answer:
        return dns.rcode.to_text(r.rcode())
    return sorted(rd.to_text() for rrset in r.answer for rd in rrset)


def lb_service(
    name: str,
    ns: str,
    *,
    external_ips: list[str] = (),  # type: ignore[assignment]
    ingress: list[Obj] = (),  # type: ignore[assignment]
    ports: list[Obj] | None = None,
    type: str = "LoadBalancer",
) -> Obj:
    spec: Obj = {"type": type, "ports": ports or [{"name": "http", "port": 80}]}
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    obj: Obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}}
    obj["spec"] = spec
    if ingress:
        obj["status"] = {"loadBalancer": {"ingress": list(ingress)}}
    return obj


def ingress(name: str, ns: str, hosts: list[str], lb: list[Obj]) -> Obj:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"rules": [{"host": h} for h in hosts]},
        "status": {"loadBalancer": {"ingress": lb}},
    }


def gateway(name: str, ns: str, addresses: list[Obj], listeners: list[Obj] | None = None) -> Obj:
    obj: Obj = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "gatewayClassName": "test",
            "listeners": listeners or [{"name": "h", "port": 80}],
        },
    }
    if addresses:
        obj["status"] = {"addresses": addresses}
    return obj


def route(kind: str, name: str, ns: str, hosts: list[str], parents: list[Obj]) -> Obj:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": {"hostnames": hosts, "parentRefs": parents},
    }


def refused_route(name: str, host: str, reason: str | None) -> Obj:
    """An HTTPRoute on Gateway infra/public whose status says it was refused for `reason`
    (None: accepted)."""
    parent = {"name": "public", "namespace": "infra"}
    obj = route("HTTPRoute", name, "web", [host], [parent])
    cond = {"type": "Accepted", "status": "False" if reason else "True"}
    cond["reason"] = reason or "Accepted"
    obj["status"] = {"parents": [{"parentRef": parent, "conditions": [cond]}]}
    return obj


def write(path: Path, objects: list[Obj]) -> None:
    path.write_text(yaml.safe_dump_all(objects))


# --------------------------------------------------------------------------- from zones/ files


def bundle() -> list[Obj]:
    return [
        lb_service("shop", "web", ingress=[{"ip": "203.0.113.10"}, {"ip": "2001:db8::10"}]),
        lb_service(
            "legacy",
            "web",
            type="ClusterIP",
            external_ips=["198.51.100.5"],
            ports=[{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        ),
        lb_service("elb", "web", ingress=[{"hostname": "lb-1.elb.example.net"}]),
        lb_service("internal", "web", type="ClusterIP"),
        ingress("shop", "web", ["shop.example.test", "*.apps.example.test"],
                [{"ip": "203.0.113.20"}]),
        ingress("off", "web", ["outside.example.org"], [{"ip": "203.0.113.21"}]),
        gateway("public", "infra", [{"type": "IPAddress", "value": "203.0.113.30"}]),
        gateway("waiting", "infra", []),
        route("HTTPRoute", "api", "web", ["api.example.test", "*.preview.example.test"],
              [{"name": "public", "namespace": "infra"}]),
        route("GRPCRoute", "rpc", "web", ["rpc.example.test"],
              [{"name": "public", "namespace": "infra"}]),
        route("TLSRoute", "later", "web", ["later.example.test"],
              [{"name": "waiting", "namespace": "infra"}]),
        # Listeners with hostnames: a route's host reaches this Gateway only through a
        # listener that takes it, and only through the one its sectionName names.
        gateway("edge", "infra", [{"type": "IPAddress", "value": "203.0.113.40"}], [
            {"name": "shop", "port": 443, "hostname": "*.shop.example.test"},
            {"name": "admin", "port": 443, "hostname": "admin.example.test"},
        ]),
        route("HTTPRoute", "edge", "web",
              ["cart.shop.example.test", "a.b.shop.example.test", "admin.example.test",
               "stray.example.test"],
              [{"name": "edge", "namespace": "infra"}]),
        route("HTTPRoute", "pinned", "web", ["pinned.shop.example.test", "pinned.example.test"],
              [{"name": "edge", "namespace": "infra", "sectionName": "admin"}]),
        # A route without hostnames takes its listeners' (the one of its sectionName).
        gateway("tenant", "infra", [{"type": "IPAddress", "value": "203.0.113.50"}], [
            {"name": "main", "port": 443, "hostname": "tenant.example.test"},
            {"name": "docs", "port": 443, "hostname": "*.docs.example.test"},
            {"name": "any", "port": 80},
        ]),
        route("HTTPRoute", "tenant", "web", [],
              [{"name": "tenant", "namespace": "infra"}]),
        route("GRPCRoute", "docs-only", "web", [],
              [{"name": "edge", "namespace": "infra", "sectionName": "admin"}]),
        # Refused by its Gateway's controller (status.parents: Accepted False), and one it
        # accepted; one without status (no controller looked yet) answers as before.
        refused_route("refused", "refused.example.test", "NotAllowedByListeners"),
        refused_route("welcome", "welcome.example.test", None),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KdnsProcess]:
    zones = tmp_path_factory.mktemp("zones")
    write(zones / "exposed.yaml", bundle())
    kp = start_kdns(["--zones", str(zones), "--external-zone", ZONE])
    try:
        yield kp
    finally:
        kp.stop()


CASES = [
    # k8s_external: <svc>.<ns>.<zone>
    ("shop.web.example.test", "A", ["203.0.113.10"]),
    ("shop.web.example.test", "AAAA", ["2001:db8::10"]),
    ("Shop.WEB.example.test", "A", ["203.0.113.10"]),
    ("legacy.web.example.test", "A", ["198.51.100.5"]),
    ("legacy.web.example.test", "AAAA", "NOERROR"),
    ("legacy.web.example.test", "SRV",
     ["0 50 53 legacy.web.example.test.", "0 50 80 legacy.web.example.test."]),
    ("_http._tcp.legacy.web.example.test", "SRV", ["0 100 80 legacy.web.example.test."]),
    ("_dns._udp.legacy.web.example.test", "SRV", ["0 100 53 legacy.web.example.test."]),
    ("_dns._tcp.legacy.web.example.test", "SRV", "NXDOMAIN"),
    ("_tcp.legacy.web.example.test", "A", "NOERROR"),  # above _http._tcp: exists, empty
    ("_sctp.legacy.web.example.test", "A", "NXDOMAIN"),
    ("elb.web.example.test", "A", ["lb-1.elb.example.net."]),
    ("internal.web.example.test", "A", "NXDOMAIN"),
    ("missing.web.example.test", "A", "NXDOMAIN"),
    ("x.shop.web.example.test", "A", "NXDOMAIN"),
    ("web.example.test", "A", "NOERROR"),
    ("nowhere.example.test", "A", "NXDOMAIN"),
    # Ingress rules
    ("shop.example.test", "A", ["203.0.113.20"]),
    ("shop.example.test", "TXT", "NOERROR"),
    ("a.apps.example.test", "A", ["203.0.113.20"]),
    ("b.a.apps.example.test", "A", "NXDOMAIN"),  # an Ingress wildcard covers one label
    ("apps.example.test", "A", "NOERROR"),  # above a host name: it exists, empty
    # Gateway API routes
    ("api.example.test", "A", ["203.0.113.30"]),
    ("rpc.example.test", "A", ["203.0.113.30"]),
    ("pr-7.preview.example.test", "A", ["203.0.113.30"]),
    ("b.pr-7.preview.example.test", "A", ["203.0.113.30"]),  # a route's wildcard: one or more
    ("later.example.test", "A", "NOERROR"),  # its Gateway has no address yet
    ("cart.shop.example.test", "A", ["203.0.113.40"]),  # through listener shop's wildcard
    ("a.b.shop.example.test", "A", ["203.0.113.40"]),  # a listener wildcard: one or more
    ("admin.example.test", "A", ["203.0.113.40"]),
    ("stray.example.test", "A", "NOERROR"),  # no listener takes it: written, not reached
    ("pinned.shop.example.test", "A", "NOERROR"),  # listener admin does not take it
    ("pinned.example.test", "A", "NOERROR"),
    ("tenant.example.test", "A", ["203.0.113.50"]),  # a hostless route: its listeners' names
    ("v1.docs.example.test", "A", ["203.0.113.50"]),
    ("docs.example.test", "A", "NOERROR"),  # above the wildcard
    ("refused.example.test", "A", "NOERROR"),
    ("welcome.example.test", "A", ["203.0.113.30"]),
    # the zone's own records
    ("example.test", "SOA", ["ns1.dns.example.test. hostmaster.dns.example.test."]),
    ("example.test", "NS", ["ns1.dns.example.test."]),
    ("ns1.dns.example.test", "A", ["127.0.0.1"]),
    ("dns.example.test", "A", "NOERROR"),
    ("x.dns.example.test", "A", "NXDOMAIN"),
    # a host outside every external zone is not served
    ("outside.example.org", "A", "REFUSED"),
]  # fmt: skip


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_external_zone_answers(served: KdnsProcess, tcp: bool) -> None:
    for name, rdtype, want in CASES:
        got = answer(served.port, name, rdtype, tcp)
        if rdtype == "SOA" and isinstance(got, list):
            got = [" ".join(got[0].split()[:2])]
        assert got == want, (name, rdtype)


def test_external_zone_with_dig(served: KdnsProcess) -> None:
    out = served.dig("shop.web.example.test", "A", "+noall", "+answer", "+authority")
    assert "203.0.113.10" in out
    # Glue: the SRV targets' addresses, in the additional section.
    out = served.dig("legacy.web.example.test", "SRV", "+noall", "+additional")
    assert "legacy.web.example.test. 5 IN A 198.51.100.5" in " ".join(out.split())
    out = served.dig("nowhere.example.test", "A", "+noall", "+comments", "+authority")
    assert "NXDOMAIN" in out and "ns1.dns.example.test. hostmaster.dns.example.test." in out
    assert "no Ingress rule, route or exposed service has this name" in out


def test_cluster_zone_is_unchanged(served: KdnsProcess) -> None:
    # The external zone adds names; the service keeps its ClusterIP in the cluster zone.
    got = answer(served.port, "shop.web.svc.cluster.local")
    assert isinstance(got, list) and len(got) == 1
    assert ipaddress.ip_address(got[0]) in ipaddress.ip_network("10.96.0.0/12")


def test_generated_services(tmp_path: Path) -> None:
    """Random services, each with random externalIPs and load balancer ingress: A and AAAA
    are exactly the addresses of the right family (spec.externalIPs first), NXDOMAIN without
    any, a CNAME to the first ingress host name when there is no address."""
    rng = random.Random(13)
    objects: list[Obj] = []
    expected: dict[str, tuple[list[str], list[str]]] = {}
    pool4 = [f"192.0.2.{i}" for i in range(1, 60)]
    pool6 = [f"2001:db8::{i:x}" for i in range(1, 60)]
    for i in range(40):
        ns = rng.choice(["a", "b", "c"])
        external = rng.sample(pool4 + pool6, rng.randrange(3))
        lb = [{"ip": ip} for ip in rng.sample(pool4 + pool6, rng.randrange(3))]
        if rng.random() < 0.3:
            lb.append({"hostname": f"lb{i}.example.net"})
        kind = rng.choice(["LoadBalancer", "ClusterIP", "NodePort"])
        objects.append(lb_service(f"s{i}", ns, external_ips=external, ingress=lb, type=kind))
        ips = list(dict.fromkeys(external + [e["ip"] for e in lb if "ip" in e]))
        hosts = [e["hostname"] for e in lb if "hostname" in e]
        expected[f"s{i}.{ns}.{ZONE}"] = (ips, hosts)
    write(tmp_path / "gen.yaml", objects)
    kp = start_kdns(["--zones", str(tmp_path), "--external-zone", ZONE])
    try:
        for name, (ips, hosts) in expected.items():
            for rdtype, version in (("A", 4), ("AAAA", 6)):
                got = answer(kp.port, name, rdtype)
                family = sorted(a for a in ips if ipaddress.ip_address(a).version == version)
                if family:
                    assert got == family, (name, rdtype)
                elif ips:
                    assert got == "NOERROR", (name, rdtype)  # NODATA: the other family only
                elif hosts:
                    assert got == [hosts[0] + "."], (name, rdtype)
                else:
                    assert got == "NXDOMAIN", (name, rdtype)
    finally:
        kp.stop()


def test_a_broken_manifest_keeps_the_other_names(tmp_path: Path) -> None:
    good = [ingress("ok", "web", ["ok.example.test"], [{"ip": "203.0.113.40"}])]
    bad = [ingress("bad", "web", ["not a host!"], [{"ip": "203.0.113.41"}])]
    write(tmp_path / "good.yaml", good)
    write(tmp_path / "bad.yaml", bad)
    check = subprocess.run(
        [*KDNS, "check", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 1
    assert "bad.yaml" in check.stdout and "spec.rules[0].host is not a host name" in check.stdout
    kp = start_kdns(["--zones", str(tmp_path), "--external-zone", ZONE])
    try:
        assert answer(kp.port, "ok.example.test") == ["203.0.113.40"]
        assert "spec.rules[0].host is not a host name" in kp.log()
    finally:
        kp.stop()


# --------------------------------------------------------------------------- from the API


def start(api: FakeApiServer, tmp_path: Path) -> KdnsProcess:
    kcfg = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    kp = start_kdns(["--kubeconfig", str(kcfg), "--external-zone", ZONE])
    ok = until(lambda: answer(kp.port, "kubernetes.default.svc.cluster.local") != "SERVFAIL", 20)
    assert ok, kp.log()
    return kp


def test_watch_without_gateway_api_crds(tmp_path: Path) -> None:
    """No Gateway API CRDs (404): kdns syncs at once and serves services and Ingresses; the
    Gateway API kinds are said to be absent, once each."""
    with FakeApiServer() as api:
        api.apply_all(
            [
                namespace("default"),
                namespace("web"),
                service("kubernetes", "default", cluster_ip="10.96.0.1"),
                lb_service("shop", "web", ingress=[{"ip": "203.0.113.10"}]),
                ingress("shop", "web", ["shop.example.test"], [{"ip": "203.0.113.20"}]),
            ]
        )
        kp = start(api, tmp_path)
        try:
            assert answer(kp.port, "shop.web.example.test") == ["203.0.113.10"]
            assert answer(kp.port, "shop.example.test") == ["203.0.113.20"]
            # A change through the watch: the load balancer gets a second address.
            api.apply(
                lb_service("shop", "web", ingress=[{"ip": "203.0.113.10"}, {"ip": "203.0.113.11"}])
            )
            want = ["203.0.113.10", "203.0.113.11"]
            assert until(lambda: answer(kp.port, "shop.web.example.test") == want, 10)
            api.delete("Ingress", "shop", "web")
            assert until(lambda: answer(kp.port, "shop.example.test") == "NXDOMAIN", 10)
            absent = [line for line in kp.lines if "not served by this API server" in line]
            assert len(absent) == 4, absent  # gateways, httproutes, grpcroutes, tlsroutes
        finally:
            kp.stop()


def test_watch_gateway_and_routes(tmp_path: Path) -> None:
    """With the Gateway API installed: routes answer with their Gateway's addresses, and a
    Gateway's new status, a route's new hostnames and a deleted route reach DNS; an answer
    asked before each change does not outlive it."""
    crds = {"gateways", "httproutes", "grpcroutes", "tlsroutes"}
    with FakeApiServer(crds=crds) as api:
        public = [{"name": "public", "namespace": "infra"}]
        api.apply_all(
            [
                namespace("default"),
                namespace("web"),
                namespace("infra"),
                service("kubernetes", "default", cluster_ip="10.96.0.1"),
                gateway("public", "infra", []),
                route("HTTPRoute", "api", "web", ["api.example.test"], public),
            ]
        )
        kp = start(api, tmp_path)
        try:
            assert answer(kp.port, "api.example.test") == "NOERROR"  # no address yet
            api.apply(gateway("public", "infra", [{"value": "203.0.113.30"}]))
            assert until(lambda: answer(kp.port, "api.example.test") == ["203.0.113.30"], 10)
            api.apply(route("HTTPRoute", "api", "web", ["v2.example.test"], public))
            assert until(lambda: answer(kp.port, "v2.example.test") == ["203.0.113.30"], 10)
            assert answer(kp.port, "api.example.test") == "NXDOMAIN"
            api.apply(route("TLSRoute", "tls", "web", ["*.tls.example.test"], public))
            assert until(lambda: answer(kp.port, "x.tls.example.test") == ["203.0.113.30"], 10)
            api.delete("HTTPRoute", "api", "web")
            assert until(lambda: answer(kp.port, "v2.example.test") == "NXDOMAIN", 10)
            # A route without hostnames follows its Gateway's listener hostnames.
            api.apply(route("HTTPRoute", "bare", "web", [], public))
            listener = {"name": "h", "port": 80, "hostname": "bare.example.test"}
            addr = [{"value": "203.0.113.30"}]
            api.apply(gateway("public", "infra", addr, [listener]))
            assert until(lambda: answer(kp.port, "bare.example.test") == ["203.0.113.30"], 10)
            listener["hostname"] = "moved.example.test"
            api.apply(gateway("public", "infra", addr, [listener]))
            assert until(lambda: answer(kp.port, "moved.example.test") == ["203.0.113.30"], 10)
            assert answer(kp.port, "bare.example.test") == "NXDOMAIN"
            api.apply(gateway("public", "infra", addr))  # a listener for every host again
            assert until(lambda: answer(kp.port, "moved.example.test") == "NXDOMAIN", 10)
            # A malformed route (the apiserver would refuse it; a double does not) is skipped
            # and reported; everything else keeps answering.
            api.apply(route("HTTPRoute", "odd", "web", ["bad_host!"], public))
            assert until(lambda: "bad_host" in kp.log(), 10)
            assert answer(kp.port, "x.tls.example.test") == ["203.0.113.30"]
        finally:
            kp.stop()


def test_explain_names_the_objects(tmp_path: Path) -> None:
    write(tmp_path / "exposed.yaml", bundle())
    out = subprocess.run(
        [*KDNS, "explain", "pr-7.preview.example.test", "A", "--zones", str(tmp_path),
         "--external-zone", ZONE],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "host name of HTTPRoute web/api: 203.0.113.30" in out
    assert json.dumps(out)  # printable


def test_no_zone_transfer_of_an_external_zone(tmp_path: Path) -> None:
    """AXFR is for the cluster zones: an external zone's names are not enumerated."""
    write(tmp_path / "exposed.yaml", bundle())
    kp = start_kdns(
        ["--zones", str(tmp_path), "--external-zone", ZONE, "--transfer-to", "127.0.0.1/32"]
    )
    try:
        external = dns.query.tcp(dns.message.make_query(ZONE, "AXFR"), "127.0.0.1", port=kp.port)
        assert external.rcode() == dns.rcode.NOTAUTH
        cluster = dns.query.tcp(
            dns.message.make_query("cluster.local", "AXFR"), "127.0.0.1", port=kp.port, timeout=5
        )
        assert cluster.rcode() == dns.rcode.NOERROR and cluster.answer
    finally:
        kp.stop()
