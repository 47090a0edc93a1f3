"""`kdns serve --clusterset-domain clusterset.local`: the Multi-Cluster Services API's names.

The real `kdns serve` process, queried over real sockets with dnspython and dig, UDP and TCP:

- from zones/ manifests holding ServiceImports and EndpointSlices labelled
  `multicluster.kubernetes.io/service-name`: generated (seeded) imports and slices, every name of
  them checked against a small model of the MCS DNS specification written here, independently
  of kdns's code (`Model`);
- against the API double (testkit/apiserver.py): imports and slices arrive through list and
  watch and their changes reach dig; a cluster without the MCS CRDs (404) syncs and serves its
  cluster zone, and picks the imports up once the CRD is installed; malformed imports and
  slices are reported in the log and skipped while every other name keeps answering.
"""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

import tests.kdns_process as kdns_process
from testkit.apiserver import (
    FakeApiServer,
    endpoint_slice,
    namespace,
    service,
    slice_endpoint,
    write_kubeconfig,
)
from tests.kdns_process import KdnsProcess, start_kdns, until

ZONE = "clusterset.local"
SERVICE_LABEL = "multicluster.kubernetes.io/service-name"
CLUSTER_LABEL = "multicluster.kubernetes.io/source-cluster"
NAMESPACES = ("shop", "team-b")
CLUSTERS = ("cluster-a", "cluster-b", "east-1")
WAIT = 20.0

#: The watch's knobs shrunk (as tests/test_faults.py does), and a kind whose CRD is missing
#: asked for again every half second rather than every minute.
LAUNCHER = """
import functools
import kdns.sources.cluster, kdns.sources.reflector
kdns.sources.cluster.WatchSettings = functools.partial(
    kdns.sources.reflector.WatchSettings, connect_timeout=1.0, read_timeout=1.0,
    backoff_base=0.05, backoff_cap=0.5, absent_recheck=0.5)
from kdns.cli import main
main()
"""


# -- objects ---------------------------------------------------------------------------------


def service_import(
    name: str,
    ns: str,
    kind: str = "ClusterSetIP",
    ips: list[str] | None = None,
    ports: list[tuple[str, int, str]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": kind}
    if ips is not None:
        spec["ips"] = ips
    spec["ports"] = [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports or []]
    return {
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def mcs_slice(
    name: str,
    ns: str,
    svc: str,
    cluster: str | None,
    endpoints: list[dict[str, Any]],
    ports: list[tuple[str, int, str]],
    family: str = "IPv4",
) -> dict[str, Any]:
    """An EndpointSlice as an MCS controller writes it for an import: the multicluster labels,
    not kubernetes.io/service-name (so no cluster-local service takes it)."""
    obj = endpoint_slice(name, svc, ns, endpoints=endpoints, ports=ports, address_type=family)
    labels = {SERVICE_LABEL: svc}
    if cluster is not None:
        labels[CLUSTER_LABEL] = cluster
    obj["metadata"]["labels"] = labels
    obj["metadata"].pop("ownerReferences", None)
    return obj


# -- the model: what the MCS DNS specification says these objects answer --------------------


@dataclass
class Import:
    ns: str
    name: str
    kind: str
    ips: list[str]
    ports: list[tuple[str, int, str]]
    #: (cluster, hostname or "", address, ready, slice ports)
    endpoints: list[tuple[str, str, str, bool, list[tuple[str, int, str]]]] = field(
        default_factory=list
    )


def dashed(address: str) -> str:
    if ":" in address:
        text = address + "0" if address.endswith("::") else address
        return text.replace(":", "-")
    return address.replace(".", "-")


class Model:
    """The answers of the clusterset zone, from the objects: (rcode, A, AAAA, SRV texts)."""

    def __init__(self, imports: list[Import]) -> None:
        self.imports = {(i.ns, i.name): i for i in imports}

    def ready(self, imp: Import) -> list[tuple[str, str, list[tuple[str, int, str]]]]:
        out = []
        for cluster, host, address, ready, ports in imp.endpoints:
            if ready:
                out.append((f"{host or dashed(address)}.{cluster}", address, ports))
        return out

    def answer(self, name: str) -> tuple[str, set[str], set[str], set[str]]:
        rel = name.removesuffix("." + ZONE).split(".")
        assert rel[-1] == "svc"
        ns, svc = rel[-2], rel[-3]
        imp = self.imports.get((ns, svc))
        if imp is None:
            return ("NXDOMAIN", set(), set(), set())
        fqdn = f"{svc}.{ns}.svc.{ZONE}."
        ready = self.ready(imp)
        if imp.kind == "ClusterSetIP" and not imp.ips:
            return ("NXDOMAIN", set(), set(), set())
        if imp.kind == "Headless" and not ready:
            return ("NXDOMAIN", set(), set(), set())
        front = rel[:-3]
        if not front:  # <svc>.<ns>.svc
            addresses = imp.ips if imp.kind == "ClusterSetIP" else [a for _, a, _ in ready]
            if imp.kind == "ClusterSetIP":
                srv = {f"{p}" for _, p, _ in imp.ports}
                srv = {f"{port} {fqdn}" for port in srv}
            else:
                srv = {f"{p} {label}.{fqdn}" for label, _, ports in ready for _, p, _ in ports}
            return ("NOERROR", *split(addresses), srv)
        if len(front) == 2 and front[1].startswith("_"):  # _<port>._<proto>
            port, proto = front[0].removeprefix("_"), front[1][1:].upper()
            if imp.kind == "ClusterSetIP":
                found = {f"{p} {fqdn}" for n, p, pr in imp.ports if n == port and pr == proto}
                addresses = imp.ips
            else:
                found = {
                    f"{p} {label}.{fqdn}"
                    for label, _, ports in ready
                    for n, p, pr in ports
                    if n == port and pr == proto
                }
                addresses = [
                    a
                    for label, a, ports in ready
                    if any(n == port and pr == proto for n, _, pr in ports)
                ]
            if not found:
                return ("NXDOMAIN", set(), set(), set())
            return ("NOERROR", *split(addresses), found)
        if len(front) == 2 and imp.kind == "Headless":  # <hostname>.<clusterid>
            label = ".".join(front)
            named = [(lab, a, ports) for lab, a, ports in ready if lab.lower() == label]
            if named:
                # SRV at an endpoint's own name: its ports, aimed at itself (as in the cluster
                # zone and CoreDNS's multicluster plugin; the specification is silent).
                srv = {f"{p} {label}.{fqdn}" for _, _, ports in named for _, p, _ in ports}
                return ("NOERROR", *split([a for _, a, _ in named]), srv)
        if (
            len(front) == 1  # <clusterid>: above its endpoints' names
            and imp.kind == "Headless"
            and any(lab.lower().endswith("." + front[0]) for lab, _, _ in ready)
        ):
            return ("NOERROR", set(), set(), set())
        return ("NXDOMAIN", set(), set(), set())


def split(addresses: list[str]) -> tuple[set[str], set[str]]:
    v4 = {a for a in addresses if ipaddress.ip_address(a).version == 4}
    return v4, set(addresses) - v4


def generate(rng: random.Random) -> tuple[list[Import], list[dict[str, Any]]]:
    """Random imports in NAMESPACES and their slices, as the model and as manifests."""
    imports: list[Import] = []
    docs: list[dict[str, Any]] = [namespace(ns) for ns in NAMESPACES]
    address = 0
    for ns in NAMESPACES:
        for n in range(6):
            kind = rng.choice(("ClusterSetIP", "Headless"))
            ports = rng.sample([("http", 80, "TCP"), ("dns", 53, "UDP"), ("", 8080, "TCP")], 2)
            ips: list[str] = []
            if kind == "ClusterSetIP":
                ips = rng.sample(
                    [f"10.42.{n}.1", f"fd42::{n + 1}", f"10.43.{n}.1"], rng.randrange(3)
                )
            imp = Import(ns, f"svc-{n}", kind, ips, ports)
            docs.append(service_import(imp.name, ns, kind, ips or None, ports))
            for c, cluster in enumerate(rng.sample(CLUSTERS, rng.randrange(3))):
                eps = []
                six = rng.random() < 0.3
                for _ in range(rng.randrange(1, 4)):
                    address += 1
                    ip = (
                        f"fd10::{address:x}"
                        if six
                        else f"10.10.{address // 250}.{address % 250 + 1}"
                    )
                    host = rng.choice(("", "", "web-0", "web-1"))
                    ready = rng.random() < 0.8
                    imp.endpoints.append((cluster, host, ip, ready, ports))
                    eps.append(slice_endpoint(ip, ready=ready, hostname=host or None, namespace=ns))
                family = "IPv6" if six else "IPv4"
                docs.append(mcs_slice(f"{imp.name}-{c}", ns, imp.name, cluster, eps, ports, family))
            imports.append(imp)
    return imports, docs


def names(rng: random.Random, imports: list[Import]) -> list[str]:
    out = []
    for imp in imports:
        base = f"{imp.name}.{imp.ns}.svc.{ZONE}"
        out += [base, f"_http._tcp.{base}", f"_dns._udp.{base}", f"_dns._tcp.{base}"]
        out += [f"{c}.{base}" for c in CLUSTERS]
        for cluster, host, address, _, _ in imp.endpoints:
            out.append(f"{host or dashed(address)}.{cluster}.{base}")
        out.append(f"web-0.{rng.choice(CLUSTERS)}.{base}")
    out += [f"missing.{ns}.svc.{ZONE}" for ns in NAMESPACES]
    return out


# -- asking ------------------------------------------------------------------------------------


def ask(
    port: int, name: str, rdtype: str, *, tcp: bool = False, edns: bool = False
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0 if edns else None)
    if tcp:
        return dns.query.tcp(query, "127.0.0.1", port=port, timeout=3)
    for attempt in range(3):
        try:
            msg = dns.query.udp(query, "127.0.0.1", port=port, timeout=2)
            if msg.flags & dns.flags.TC:  # too large for 512 bytes: again over TCP, as stubs do
                return dns.query.tcp(query, "127.0.0.1", port=port, timeout=3)
            return msg
        except dns.exception.Timeout:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def texts(msg: dns.message.Message, rdtype: str) -> set[str]:
    kind = dns.rdatatype.from_text(rdtype)
    out: set[str] = set()
    for rrset in msg.answer:
        if rrset.rdtype == kind:
            out |= {rd.to_text() for rd in rrset}
    return out


def observed(port: int, name: str, *, tcp: bool) -> tuple[str, set[str], set[str], set[str]]:
    a = ask(port, name, "A", tcp=tcp)
    aaaa = ask(port, name, "AAAA", tcp=tcp)
    srv = ask(port, name, "SRV", tcp=tcp)
    # The weight is the server's choice (the specification leaves it open): compared without.
    srvs = {" ".join(t.split()[2:]) for t in texts(srv, "SRV")}
    rcodes = {dns.rcode.to_text(m.rcode()) for m in (a, aaaa, srv)}
    assert len(rcodes) == 1, (name, rcodes)
    return (rcodes.pop(), texts(a, "A"), texts(aaaa, "AAAA"), srvs)


def dig(kp: KdnsProcess, name: str, rdtype: str, *, tcp: bool = False) -> tuple[str, set[str]]:
    """(status, answer rdata) as dig prints them."""
    out = kp.dig(name, rdtype, tcp=tcp)
    status = out.split("status: ", 1)[1].split(",", 1)[0] if "status: " in out else "?"
    short = kp.dig(name, rdtype, "+short", tcp=tcp)
    return status, {line for line in short.splitlines() if line}


def ede_texts(msg: dns.message.Message) -> list[str]:
    return [
        opt.text or ""
        for opt in msg.options
        if isinstance(opt, dns.edns.EDEOption)  # type: ignore[attr-defined]
    ]


# -- zones/ manifests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def from_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KdnsProcess, Model]]:
    rng = random.Random(1645)
    imports, docs = generate(rng)
    zones = tmp_path_factory.mktemp("zones")
    fixed = [
        service("web", "shop", cluster_ip="10.96.0.10"),
        # A cluster service with the clusterset IP of `mixed`: the cluster-local PTR stays.
        service("mixed-local", "shop", cluster_ip="10.42.9.9"),
        service_import("pending", "shop"),
        service_import("mixed", "shop", "ClusterSetIP", ["10.42.9.9"], [("http", 80, "TCP")]),
    ]
    imports.append(Import("shop", "pending", "ClusterSetIP", [], []))
    imports.append(Import("shop", "mixed", "ClusterSetIP", ["10.42.9.9"], [("http", 80, "TCP")]))
    # A slice of a ClusterSetIP import: its endpoints name nothing (MCS DNS spec 2.3.4).
    fixed.append(
        mcs_slice(
            "mixed-a",
            "shop",
            "mixed",
            "cluster-a",
            [slice_endpoint("10.11.0.1", hostname="m-0")],
            [("http", 80, "TCP")],
        )
    )
    (zones / "mcs.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    (zones / "fixed.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": fixed})
    )
    kp = start_kdns(["--zones", str(zones), "--clusterset-domain", ZONE])
    try:
        yield kp, Model(imports)
    finally:
        kp.stop()


def test_generated_imports_answer_as_the_specification_says(
    from_files: tuple[KdnsProcess, Model],
) -> None:
    kp, model = from_files
    rng = random.Random(2149)
    asked = names(rng, list(model.imports.values()))
    assert len(asked) > 60
    for i, name in enumerate(asked):
        want = model.answer(name)
        assert observed(kp.port, name, tcp=i % 2 == 1) == want, name


def test_dig_over_udp_and_tcp(from_files: tuple[KdnsProcess, Model]) -> None:
    kp, model = from_files
    rng = random.Random(7)
    asked = rng.sample(names(rng, list(model.imports.values())), 16)
    for name in asked:
        rcode, a, aaaa, srv = model.answer(name)
        for tcp in (False, True):
            status, got = dig(kp, name, "A", tcp=tcp)
            assert (status, got) == (rcode, a), (name, tcp)
            assert dig(kp, name, "AAAA", tcp=tcp) == (rcode, aaaa), (name, tcp)
            status, got = dig(kp, name, "SRV", tcp=tcp)
            assert status == rcode
            assert {" ".join(t.split()[2:]) for t in got} == srv, (name, tcp)
    assert dig(kp, f"mixed.shop.svc.{ZONE}", "A") == ("NOERROR", {"10.42.9.9"})


def test_apex_namespaces_and_the_cluster_zone(from_files: tuple[KdnsProcess, Model]) -> None:
    kp, _ = from_files
    soa = ask(kp.port, ZONE, "SOA", tcp=True)
    assert texts(soa, "SOA") and dns.flags.AA in soa.flags
    assert texts(ask(kp.port, ZONE, "NS"), "NS") == {f"ns.dns.{ZONE}."}
    assert texts(ask(kp.port, f"dns-version.{ZONE}", "TXT"), "TXT") == {'"1.0.0"'}
    ns = ask(kp.port, f"shop.svc.{ZONE}", "A")
    assert ns.rcode() == dns.rcode.NOERROR and not ns.answer and ns.authority
    assert ask(kp.port, f"nope.svc.{ZONE}", "A").rcode() == dns.rcode.NXDOMAIN
    assert ask(kp.port, f"10-0-0-1.shop.pod.{ZONE}", "A").rcode() == dns.rcode.NXDOMAIN
    assert dig(kp, f"svc.{ZONE}", "A")[0] == "NOERROR"
    # The cluster zone is served beside it, from the same manifests; imports are not services.
    assert dig(kp, "web.shop.svc.cluster.local", "A") == ("NOERROR", {"10.96.0.10"})
    assert dig(kp, "svc-0.shop.svc.cluster.local", "A")[0] == "NXDOMAIN"
    # A ClusterSetIP import names no cluster's endpoints, even with slices.
    assert dig(kp, f"m-0.cluster-a.mixed.shop.svc.{ZONE}", "A")[0] == "NXDOMAIN"
    assert dig(kp, f"cluster-a.mixed.shop.svc.{ZONE}", "A")[0] == "NXDOMAIN"


def test_an_import_without_ips_says_why(from_files: tuple[KdnsProcess, Model]) -> None:
    kp, _ = from_files
    msg = ask(kp.port, f"pending.shop.svc.{ZONE}", "A", edns=True)
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert ede_texts(msg) == ["ServiceImport shop/pending (ClusterSetIP) has no spec.ips"]
    assert "ServiceImport shop/pending (ClusterSetIP) has no spec.ips" in kp.log()
    missing = ask(kp.port, f"missing.shop.svc.{ZONE}", "A", edns=True)
    assert ede_texts(missing) == ["no ServiceImport missing in namespace shop"]


def test_ptr_records_of_clusterset_names(from_files: tuple[KdnsProcess, Model]) -> None:
    """MCS DNS specification 2.3.3 and 2.4.3: a clusterset IP's PTR names its import (the
    first, by namespace and name, when several share it), a ready imported endpoint's names
    `<hostname>.<clusterid>.<svc>` (each import it is in); an address that has a cluster-local
    PTR keeps that one (the specification's Limitations)."""
    kp, model = from_files
    want: dict[str, set[str]] = {}
    first: dict[str, tuple[str, str]] = {}
    for imp in model.imports.values():
        base = f"{imp.name}.{imp.ns}.svc.{ZONE}."
        if imp.kind == "ClusterSetIP":
            for ip in imp.ips:
                if ip not in first or (imp.ns, imp.name) < first[ip]:
                    first[ip] = (imp.ns, imp.name)
                    want[ip] = {base}
        else:
            for label, address, _ in model.ready(imp):
                want.setdefault(address, set()).add(f"{label}.{base}")
    want["10.42.9.9"] = {"mixed-local.shop.svc.cluster.local."}
    assert len(want) > 20
    for i, (address, names) in enumerate(sorted(want.items())):
        reverse = dns.reversename.from_address(address).to_text()
        msg = ask(kp.port, reverse, "PTR", tcp=i % 2 == 1)
        assert (dns.rcode.to_text(msg.rcode()), texts(msg, "PTR")) == ("NOERROR", names), address
    # Not-ready and ClusterSetIP-import endpoints have none; the names above a clusterset IP
    # exist (NODATA), as above any address with a PTR record.
    not_ready = [a for imp in model.imports.values() for _, _, a, ok, _ in imp.endpoints if not ok]
    for address in [*not_ready, "10.11.0.1"]:
        if address not in want:
            reverse = dns.reversename.from_address(address).to_text()
            assert ask(kp.port, reverse, "PTR").rcode() == dns.rcode.NXDOMAIN, address
    above = ask(kp.port, "42.10.in-addr.arpa.", "PTR")
    assert (above.rcode(), above.answer) == (dns.rcode.NOERROR, [])
    assert ask(kp.port, "44.10.in-addr.arpa.", "PTR").rcode() == dns.rcode.NXDOMAIN


def test_off_by_default(tmp_path: Path) -> None:
    (tmp_path / "i.json").write_text(json.dumps(service_import("a", "shop", ips=["10.42.0.1"])))
    kp = start_kdns(["--zones", str(tmp_path)])
    try:
        assert dig(kp, f"a.shop.svc.{ZONE}", "A")[0] == "REFUSED"
    finally:
        kp.stop()


# -- the API double: list, watch, 404 --------------------------------------------------------


def launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kdns_process, "KDNS", [sys.executable, "-c", LAUNCHER])


def serve_api(api: FakeApiServer, tmp_path: Path) -> KdnsProcess:
    kcfg = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    kp = start_kdns(["--kubeconfig", str(kcfg), "--clusterset-domain", ZONE], http=True)
    ok = until(lambda: kp.http_get("/ready")[0] == 200, WAIT)
    if not ok:
        kp.stop()
        raise AssertionError(f"kdns not ready:\n{kp.log()}")
    return kp


def until_dig(kp: KdnsProcess, name: str, want: tuple[str, set[str]]) -> None:
    got = until(lambda: dig(kp, name, "A") == want, WAIT)
    assert got, (name, dig(kp, name, "A"), kp.log()[-3000:])


def cluster_objects() -> list[dict[str, Any]]:
    return [
        namespace("shop"),
        service("web", "shop", cluster_ip="10.96.0.10"),
        endpoint_slice("web-x", "web", "shop", endpoints=["10.0.0.5"]),
    ]


def test_imports_and_slices_through_list_and_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher(monkeypatch)
    with FakeApiServer(crds={"serviceimports"}) as api:
        api.apply_all(cluster_objects())
        api.apply(service_import("web", "shop", ips=["10.42.0.1"], ports=[("http", 80, "TCP")]))
        ports = [("pg", 5432, "TCP")]
        api.apply(service_import("db", "shop", "Headless", ports=ports))
        api.apply(
            mcs_slice(
                "db-a",
                "shop",
                "db",
                "cluster-a",
                [slice_endpoint("10.1.0.1", hostname="db-0")],
                ports,
            )
        )
        kp = serve_api(api, tmp_path)
        try:
            # From the list.
            assert dig(kp, f"web.shop.svc.{ZONE}", "A") == ("NOERROR", {"10.42.0.1"})
            assert dig(kp, f"db-0.cluster-a.db.shop.svc.{ZONE}", "A", tcp=True) == (
                "NOERROR",
                {"10.1.0.1"},
            )
            # The cluster-local service is not taken for the import, nor the other way round.
            assert dig(kp, "web.shop.svc.cluster.local", "A") == ("NOERROR", {"10.96.0.10"})
            assert dig(kp, "db.shop.svc.cluster.local", "A")[0] == "NXDOMAIN"
            assert any(
                r.path.startswith("/apis/multicluster.x-k8s.io/v1alpha1/serviceimports")
                for r in api.requests()
            )
            # Through the watch: a second cluster's slice, a new import, a changed IP, a delete.
            api.apply(
                mcs_slice("db-b", "shop", "db", "cluster-b", [slice_endpoint("10.2.0.1")], ports)
            )
            until_dig(kp, f"db.shop.svc.{ZONE}", ("NOERROR", {"10.1.0.1", "10.2.0.1"}))
            assert dig(kp, f"10-2-0-1.cluster-b.db.shop.svc.{ZONE}", "A") == (
                "NOERROR",
                {"10.2.0.1"},
            )
            status, srv = dig(kp, f"_pg._tcp.db.shop.svc.{ZONE}", "SRV", tcp=True)
            assert status == "NOERROR"
            assert {" ".join(t.split()[2:]) for t in srv} == {
                f"5432 db-0.cluster-a.db.shop.svc.{ZONE}.",
                f"5432 10-2-0-1.cluster-b.db.shop.svc.{ZONE}.",
            }
            api.apply(service_import("api", "shop", ips=["10.42.0.2"]))
            until_dig(kp, f"api.shop.svc.{ZONE}", ("NOERROR", {"10.42.0.2"}))
            api.apply(service_import("web", "shop", ips=["10.42.0.3"]))
            until_dig(kp, f"web.shop.svc.{ZONE}", ("NOERROR", {"10.42.0.3"}))
            api.delete("EndpointSlice", "db-a", "shop")
            until_dig(kp, f"db.shop.svc.{ZONE}", ("NOERROR", {"10.2.0.1"}))
            assert dig(kp, f"db-0.cluster-a.db.shop.svc.{ZONE}", "A")[0] == "NXDOMAIN"
            api.delete("ServiceImport", "api", "shop")
            until_dig(kp, f"api.shop.svc.{ZONE}", ("NXDOMAIN", set()))
        finally:
            kp.stop()


def test_without_the_crd_the_cluster_zone_serves_and_imports_come_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher(monkeypatch)
    with FakeApiServer() as api:  # no CRDs: serviceimports answer 404
        api.apply_all(cluster_objects())
        kp = serve_api(api, tmp_path)
        try:
            assert dig(kp, "web.shop.svc.cluster.local", "A") == ("NOERROR", {"10.96.0.10"})
            # Synced with none: NXDOMAIN, not SERVFAIL; the namespace exists.
            assert dig(kp, f"web.shop.svc.{ZONE}", "A")[0] == "NXDOMAIN"
            assert dig(kp, f"shop.svc.{ZONE}", "A")[0] == "NOERROR"
            assert any(r.status == 404 for r in api.requests())
            # The CRD installed, an import created: asked again, found.
            api.crds.add("serviceimports")
            api.apply(service_import("web", "shop", ips=["10.42.0.7"]))
            until_dig(kp, f"web.shop.svc.{ZONE}", ("NOERROR", {"10.42.0.7"}))
            assert dig(kp, "web.shop.svc.cluster.local", "A") == ("NOERROR", {"10.96.0.10"})
        finally:
            kp.stop()


def test_malformed_imports_and_slices_are_reported_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher(monkeypatch)
    with FakeApiServer(crds={"serviceimports"}) as api:
        api.apply_all(cluster_objects())
        api.apply(service_import("good", "shop", ips=["10.42.0.1"]))
        api.apply(service_import("bad-type", "shop", "Bogus", ips=["10.42.0.2"]))
        api.apply(service_import("bad-ip", "shop", ips=["not-an-ip"]))
        api.apply(service_import("no-ips", "shop"))
        api.apply(service_import("hl", "shop", "Headless"))
        api.apply(mcs_slice("hl-x", "shop", "hl", None, [slice_endpoint("10.3.0.1")], []))
        api.apply(mcs_slice("hl-y", "shop", "hl", "Not_A_Label", [slice_endpoint("10.3.0.2")], []))
        api.apply(mcs_slice("hl-z", "shop", "hl", "cluster-z", [slice_endpoint("10.3.0.3")], []))
        kp = serve_api(api, tmp_path)
        try:
            assert dig(kp, f"good.shop.svc.{ZONE}", "A") == ("NOERROR", {"10.42.0.1"})
            assert dig(kp, f"bad-type.shop.svc.{ZONE}", "A")[0] == "NXDOMAIN"
            assert dig(kp, f"bad-ip.shop.svc.{ZONE}", "A")[0] == "NXDOMAIN"
            assert dig(kp, f"no-ips.shop.svc.{ZONE}", "A")[0] == "NXDOMAIN"
            # Only the slice with a usable cluster id answers.
            assert dig(kp, f"hl.shop.svc.{ZONE}", "A") == ("NOERROR", {"10.3.0.3"})
            assert dig(kp, "web.shop.svc.cluster.local", "A") == ("NOERROR", {"10.96.0.10"})
            log = until(
                lambda: all(
                    w in kp.log()
                    for w in ("shop/bad-type", "shop/bad-ip", "shop/hl-x", "shop/hl-y", "no-ips")
                ),
                WAIT,
            )
            assert log, kp.log()
            assert "spec.type must be one of ClusterSetIP, Headless" in kp.log()
            assert f"{CLUSTER_LABEL} is missing" in kp.log()
            # A malformed change arriving by watch is reported, and the import dropped (as the
            # reflector drops any object that turns unusable); the other names keep answering.
            api.apply(service_import("good", "shop", ips=["bogus"]))
            until_dig(kp, f"good.shop.svc.{ZONE}", ("NXDOMAIN", set()))
            assert "shop/good" in kp.log()
            api.apply(service_import("later", "shop", ips=["10.42.0.9"]))
            until_dig(kp, f"later.shop.svc.{ZONE}", ("NOERROR", {"10.42.0.9"}))
            assert dig(kp, f"hl.shop.svc.{ZONE}", "A") == ("NOERROR", {"10.3.0.3"})
        finally:
            kp.stop()


def test_servfail_before_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launcher(monkeypatch)
    with FakeApiServer(crds={"serviceimports"}) as api:
        api.apply_all(cluster_objects())
        api.go_down()
        kcfg = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        kp = start_kdns(
            ["--kubeconfig", str(kcfg), "--clusterset-domain", ZONE, "--startup-timeout", "0"]
        )
        try:
            assert dig(kp, f"web.shop.svc.{ZONE}", "A")[0] == "SERVFAIL"
            api.apply(service_import("web", "shop", ips=["10.42.0.1"]))
            api.come_up()
            until_dig(kp, f"web.shop.svc.{ZONE}", ("NOERROR", {"10.42.0.1"}))
        finally:
            kp.stop()


def test_dig_is_installed() -> None:
    assert subprocess.run(["dig", "-v"], capture_output=True).returncode == 0
