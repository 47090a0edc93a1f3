"""The clusterset zone against CoreDNS: `kdns serve --clusterset-domain clusterset.local` and
CoreDNS on the same apiserver, asked the same generated questions over UDP; rcode and answers
compared, and every difference must be a known one of that CoreDNS.

Two CoreDNS answer the MCS DNS names:
- the stock build's `kubernetes` plugin with `multicluster clusterset.local` (CoreDNS took the
  external plugin's code into its kubernetes plugin; always built, so always compared);
- CoreDNS with the external plugin `github.com/coredns/multicluster` (coredns-mc/, built by
  build.sh where the module proxy serves that module; skipped with build.sh's reason otherwise,
  even under KDNS_E2E_REQUIRE=1: its absence is the proxy's, not the build's).

The workload is varied by hand (ClusterSetIP with one and several IPs incl. IPv6, none, with
slices; Headless with slices from three clusters, with and without hostnames, not-ready
endpoints, an IPv6 address ending in `::`, a slice without source-cluster label; named and unnamed
TCP/UDP ports; the same names in two namespaces) and the questions are generated from it: every
name shape of the zone and the shapes around it, with every type of QTYPES, one in three again in
mixed case, and the reverse names of every address.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.name
import dns.reversename
import pytest

from testkit.controlplane import ControlPlane, bin_dir, wait_for
from testkit.exposure import (
    McsEndpoint,
    Port,
    create_mcs_slice,
    create_service_import,
    install_crds,
)
from tests.e2e.conftest import coredns_running, start_kdns_for
from tests.e2e.dnsutil import Reply, Tally, ask, ask_both, differential, noerror_names
from tests.e2e.test_e2e import ZONE, classify
from tests.kdns_process import KdnsProcess

pytestmark = pytest.mark.timeout(300)

CLUSTERSET = "clusterset.local"
NAMESPACES = ("mcs-diff-a", "mcs-diff-b", "mcs-diff-c")  # the last holds no import
QTYPES = ("A", "AAAA", "SRV", "TXT", "ANY", "PTR", "SOA", "NS")
SEED = 20261203
PLUGIN_BINARY = "coredns-multicluster"
#: Where build.sh writes why it could not build PLUGIN_BINARY (first line: its stamp).
PLUGIN_UNAVAILABLE = ".coredns-multicluster-unavailable"


# --------------------------------------------------------------------------- the workload


@dataclass(frozen=True)
class Slice:
    cluster: str | None  # None: without the source-cluster label (a faulty controller's)
    endpoints: tuple[McsEndpoint, ...]
    address_type: str = "IPv4"


@dataclass
class Import:
    ns: str
    name: str
    headless: bool
    ports: tuple[Port, ...] = ()
    ips: tuple[str, ...] = ()
    slices: tuple[Slice, ...] = ()
    clusters: tuple[str, ...] = field(default=())

    @property
    def base(self) -> str:
        return f"{self.name}.{self.ns}.svc.{CLUSTERSET}"

    def addresses(self, family: int) -> set[str]:
        """The A (4) or AAAA (6) records of `base`: the import's IPs, or its ready endpoints'."""
        if self.headless:
            ips = [ep.address for s in self.slices if s.cluster for ep in s.endpoints if ep.ready]
        else:
            ips = list(self.ips)
        return {ip for ip in ips if ipaddress.ip_address(ip).version == family}

    def describe(self) -> str:
        kind = "Headless" if self.headless else "ClusterSetIP"
        ports = [(p.name, p.port, p.protocol) for p in self.ports]
        slices = [
            (s.cluster, [(e.address, e.hostname, e.ready) for e in s.endpoints])
            for s in self.slices
        ]
        return f"{self.ns}/{self.name} {kind} ips={list(self.ips)} ports={ports} slices={slices}"


def _ep(address: str, hostname: str | None = None, ready: bool = True) -> McsEndpoint:
    return McsEndpoint(address, hostname, ready)


HTTP, METRICS, DNS_UDP, DNS_TCP = (
    Port("http", 80),
    Port("metrics", 9090),
    Port("dns", 53, "UDP"),
    Port("dns-tcp", 53),
)
A, B, C = NAMESPACES

WORKLOAD: tuple[Import, ...] = (
    Import(A, "web", False, (HTTP,), ("10.200.0.1",), clusters=("east",)),
    Import(
        A,
        "dual",
        False,
        (DNS_UDP, DNS_TCP),
        ("10.200.0.2", "fd00:200::2"),
        clusters=("east", "west"),
    ),
    Import(A, "v6", False, (Port("", 443),), ("fd00:200::3",)),
    Import(A, "pending", False, (HTTP,)),  # the controller has not allocated an IP yet
    Import(A, "bare", False),  # no IP and no port
    Import(
        A,
        "sliced",
        False,
        (HTTP,),
        ("10.200.0.4",),
        (Slice("east", (_ep("10.201.1.1", "a-0"), _ep("10.201.1.2"))),),
    ),
    Import(
        A,
        "db",
        True,
        (HTTP, METRICS, DNS_UDP),
        slices=(
            Slice(
                "east",
                (
                    _ep("10.201.1.10", "db-0"),
                    _ep("10.201.1.11", "db-1"),
                    _ep("10.201.1.12", "db-2", False),
                ),
            ),
            Slice(
                "west", (_ep("10.201.2.10"), _ep("10.201.2.11"), _ep("10.201.2.12", ready=False))
            ),
            Slice("west", (_ep("fd00:201:2::10"),), "IPv6"),
            Slice("south", (_ep("fd00:201:3::"), _ep("fd00:201:3::1", "db-9")), "IPv6"),
        ),
    ),
    Import(
        A,
        "cache",
        True,
        (Port("", 6379),),
        slices=(
            Slice("east", (_ep("10.201.1.20", "cache-0"),)),
            Slice("west", (_ep("10.201.2.20"),)),
        ),
    ),
    Import(A, "empty", True, (HTTP,)),
    Import(
        A, "sleepy", True, (HTTP,), slices=(Slice("east", (_ep("10.201.1.30", "s-0", False),)),)
    ),
    Import(
        B,
        "stray",
        True,
        (HTTP,),
        slices=(
            Slice("east", (_ep("10.201.1.40", "st-0"),)),
            Slice(None, (_ep("10.201.9.1", "st-9"), _ep("10.201.9.2"))),
        ),
    ),
    Import(B, "web", False, (Port("", 5353, "UDP"),), ("10.200.1.1",)),
    Import(B, "db", True, (HTTP,), slices=(Slice("north", (_ep("10.201.4.1", "db-0"),)),)),
)


def create_workload(cp: ControlPlane) -> None:
    for ns in NAMESPACES:
        cp.create_namespace(ns)
    for imp in WORKLOAD:
        create_service_import(
            cp,
            imp.ns,
            imp.name,
            import_type="Headless" if imp.headless else "ClusterSetIP",
            ips=imp.ips,
            ports=imp.ports,
            clusters=imp.clusters
            or tuple(dict.fromkeys(s.cluster for s in imp.slices if s.cluster)),
        )
        for s in imp.slices:
            create_mcs_slice(
                cp,
                imp.ns,
                imp.name,
                s.cluster,
                s.endpoints,
                ports=imp.ports,
                address_type=s.address_type,
            )


def endpoint_labels(ep: McsEndpoint) -> list[str]:
    """The names an endpoint may be asked by: its hostname, or its address dashed (both the
    spellings with and without the `0` after a trailing `::`)."""
    if ep.hostname:
        return [ep.hostname]
    dashed = ep.address.replace(".", "-").replace(":", "-")
    return [dashed, dashed + "0"] if dashed.endswith("-") else [dashed]


def _mixed_case(rng: random.Random, name: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def generated_questions(rng: random.Random) -> list[tuple[str, str]]:
    """Every name shape of the clusterset zone and the shapes around it, each with QTYPES, one
    question in three also in mixed case; the reverse names of every address with PTR and A."""
    z = CLUSTERSET
    shapes = [z, f"svc.{z}", f"dns-version.{z}", f"ns.dns.{z}", f"dns.{z}", f"nope.{z}"]
    shapes += [f"nope.svc.{z}", f"pod.{z}", f"10-201-1-10.{A}.pod.{z}", f"no-such-ns.svc.{z}"]
    for ns in NAMESPACES:
        shapes += [f"{ns}.svc.{z}", f"nope.{ns}.svc.{z}", f"{ns}.{z}"]
    reverse: list[str] = []
    for imp in WORKLOAD:
        base = imp.base
        shapes += [base, f"x.{base}", f"a.b.c.d.{base}", f"{imp.name}.{imp.ns}.{z}"]
        shapes += [f"_tcp.{base}", f"_udp.{base}", f"_nope._tcp.{base}", f"_http._udp.{base}"]
        for p in imp.ports:
            if p.name:
                proto = p.protocol.lower()
                shapes += [f"_{p.name}._{proto}.{base}", f"{p.name}.{proto}.{base}"]
        for s in imp.slices:
            if s.cluster:
                shapes += [f"{s.cluster}.{base}", f"nope.{s.cluster}.{base}"]
            for ep in s.endpoints:
                for label in endpoint_labels(ep):
                    shapes += [f"{label}.{base}", f"{label}.nope.{base}"]
                    if s.cluster:
                        shapes.append(f"{label}.{s.cluster}.{base}")
                reverse.append(ep.address)
        for c in imp.clusters:
            shapes.append(f"{c}.{base}")
        reverse += imp.ips
    questions = [(n, t) for n in dict.fromkeys(shapes) for t in QTYPES]
    mixed = [(_mixed_case(rng, n), t) for n, t in questions if rng.random() < 1 / 3]
    # Reverse names only once: they are digits, and CoreDNS never answers the PTR of an
    # imported endpoint (each such question waits out the timeout).
    for ip in dict.fromkeys(reverse):
        rev = dns.reversename.from_address(ip).to_text()
        questions += [(rev, "PTR"), (rev, "A")]
    return questions + mixed


# --------------------------------------------------------------------------- the servers


@pytest.fixture(scope="module")
def kdns(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KdnsProcess]:
    """kdns with the clusterset zone, the project's MCS CRDs installed and the workload created."""
    install_crds(cluster)
    create_workload(cluster)
    tmp = tmp_path_factory.mktemp("clusterset-diff")
    kp = start_kdns_for(cluster, tmp, cluster.admin_kubeconfig, "--clusterset-domain", CLUSTERSET)
    try:
        yield kp
    finally:
        kp.stop()


def _answers(port: int, name: str, qtype: str) -> set[str]:
    return {r.split()[-1] for r in ask(port, name, qtype).answer if f" {qtype} " in r}


def _serves(port: int) -> bool:
    """The server at `port` answers every import's addresses as the API has them (but those
    with a slice without cluster, which the servers answer differently)."""
    for imp in WORKLOAD:
        if any(s.cluster is None for s in imp.slices):
            continue
        for family, qtype in ((4, "A"), (6, "AAAA")):
            want = imp.addresses(family)
            if want and _answers(port, imp.base, qtype) != want:
                return False
    return True


def run_differential(
    cluster: ControlPlane, kp: KdnsProcess, port: int, server: str, known: frozenset[str]
) -> Tally:
    """Wait for both servers to hold the workload, ask, print the tally, write the report; the
    classes of difference outside `known` count as unexplained."""
    for name, p in (("kdns", kp.port), (server, port)):
        wait_for(f"{name} to answer the imports", functools.partial(_serves, p), 20, 0.2)
    questions = generated_questions(random.Random(SEED))

    replies = ask_both((kp.port, port), questions)
    # Not from SOA questions: CoreDNS answers those NODATA at any name, without looking it up.
    noerror = noerror_names([r for r in replies if r[1] != "SOA"])

    def explain(name: str, qtype: str, k: Reply, c: Reply) -> str | None:
        key = classify_clusterset(name, qtype, k, c, noerror)
        return key if key in known else None

    tally = differential(replies, explain, ("kdns", server))
    summary = f"clusterset zone vs {server}: {len(WORKLOAD)} imports, {tally.summary()}"
    reports = Path(os.environ.get("KDNS_E2E_CLUSTERSET_REPORTS") or cluster.workdir)
    out = reports / f"{server}-differences.txt"
    tally.write(out, f"{summary}\n\n" + "\n".join(imp.describe() for imp in WORKLOAD))
    print(summary, f"(details in {out})")
    tally.check(known, summary)
    return tally


def test_clusterset_against_kubernetes_multicluster(
    cluster: ControlPlane, kdns: KdnsProcess, tmp_path: Path
) -> None:
    def corefile(port: int, ready_port: int) -> str:
        zones = f"{ZONE} {CLUSTERSET} in-addr.arpa ip6.arpa"
        return f"""\
{" ".join(f"{z}:{port}" for z in zones.split())} {{
    bind 127.0.0.1
    kubernetes {zones} {{
        kubeconfig {cluster.admin_kubeconfig} admin
        multicluster {CLUSTERSET}
        ttl 5
    }}
    ready 127.0.0.1:{ready_port}
}}
"""

    with coredns_running(cluster, tmp_path / "coredns", corefile) as port:
        run_differential(cluster, kdns, port, "coredns-kubernetes", KUBERNETES_DIFFERENCES)


def _plugin_unavailable() -> str | None:
    """Why the external plugin's build is not there, as build.sh recorded it (None: no record)."""
    marker = bin_dir() / PLUGIN_UNAVAILABLE
    if (bin_dir() / PLUGIN_BINARY).exists() or not marker.exists():
        return None
    lines = marker.read_text().splitlines()
    return lines[1] if len(lines) > 1 else "build.sh could not build it"


def test_clusterset_against_multicluster_plugin(
    cluster: ControlPlane, kdns: KdnsProcess, tmp_path: Path
) -> None:
    reason = _plugin_unavailable()
    if reason:
        pytest.skip(f"{PLUGIN_BINARY}: {reason}")

    def corefile(port: int, ready_port: int) -> str:
        zones = f"{ZONE} in-addr.arpa ip6.arpa"
        return f"""\
{" ".join(f"{z}:{port}" for z in (CLUSTERSET, *zones.split()))} {{
    bind 127.0.0.1
    kubernetes {zones} {{
        kubeconfig {cluster.admin_kubeconfig} admin
        ttl 5
    }}
    multicluster {CLUSTERSET} {{
        kubeconfig {cluster.admin_kubeconfig} admin
    }}
    ready 127.0.0.1:{ready_port}
}}
"""

    with coredns_running(cluster, tmp_path / "coredns-mc", corefile, PLUGIN_BINARY) as port:
        run_differential(cluster, kdns, port, PLUGIN_BINARY, PLUGIN_DIFFERENCES)


# --------------------------------------------------------------------------- the differences

#: Differences from CoreDNS (either build) that are the clusterset zone's own, with the reason
#: (docs/coredns-differences.md carries the same list). The classes the cluster zone's
#: differential knows (test_e2e.KNOWN_DIFFERENCES) apply here too; `classify_clusterset` tries
#: those first, then recognises each of these narrowly.
CLUSTERSET_DIFFERENCES: dict[str, str] = {
    "dns-version-mcs-schema": (
        'dns-version.<clusterset> TXT: CoreDNS answers "1.1.0", the version of the cluster-local '
        'specification; kdns "1.0.0", the schema version the MCS DNS specification (2.2) gives '
        "the clusterset zone."
    ),
    "clusterset-ip-no-endpoint-names": (
        "<hostname>.<clusterid>.<svc> of a ClusterSetIP import that has slices: CoreDNS answers "
        "the endpoint's records; kdns NXDOMAIN, since the MCS DNS specification (2.3.4) gives "
        "ClusterSetIP services no record singling out one cluster's backends."
    ),
    "cluster-label-empty-non-terminal": (
        "<clusterid>.<svc> of a Headless import with ready endpoints in that cluster: CoreDNS says "
        "NXDOMAIN (its parser wants a hostname in front); kdns NODATA, since the name is an empty "
        "non-terminal above <hostname>.<clusterid>.<svc> (RFC 4592) and NXDOMAIN would deny the "
        "names below it (RFC 8020)."
    ),
    "import-without-ips": (
        "A ClusterSetIP import without spec.ips (the controller has not allocated one yet) but "
        "with ports, at <svc> and _<port>._<proto>.<svc>: CoreDNS answers NODATA; kdns NXDOMAIN "
        "(with the EDE reason, and one warning in its log): the name has no record of any type "
        "until the IP exists."
    ),
    "no-pod-names": (
        "pod.<clusterset>: CoreDNS answers NODATA (its kubernetes zones all have a pod subtree); "
        "kdns NXDOMAIN, since the MCS DNS specification defines no pod names in the clusterset "
        "zone (both say NXDOMAIN below it)."
    ),
    "ptr-of-imported-endpoint-no-reply": (
        "PTR of an address of an imported (MCS) EndpointSlice: CoreDNS's kubernetes plugin finds "
        "the slice in its reverse index, builds a name from its service-name label, which MCS "
        "slices do not carry (an empty label), cannot pack the reply and sends none (the client "
        "times out); kdns answers <hostname>.<clusterid>.<svc>.<ns>.svc.<clusterset> for a ready "
        "endpoint of a Headless import (the MCS DNS specification, 2.4.3), NXDOMAIN for the "
        "others (not ready, of a ClusterSetIP import, of a slice without cluster id)."
    ),
    "ptr-of-clusterset-ip": (
        "PTR of a clusterset IP (no cluster-local PTR exists for it): CoreDNS NXDOMAIN; kdns "
        "<svc>.<ns>.svc.<clusterset>, as the MCS DNS specification (2.3.3) asks. Its A question "
        "is NODATA in kdns (the reverse name exists) and NXDOMAIN in CoreDNS."
    ),
    "ipv6-trailing-dash": (
        "An endpoint without hostname whose IPv6 address ends in '::': the multicluster plugin "
        "dashes the colons and names it with a label ending in '-' (fd00-201-3--), not a valid "
        "host name; kdns spells it fd00-201-3--0, as the cluster zone and CoreDNS's kubernetes "
        "plugin (also in its multicluster zones) do."
    ),
    "slice-without-cluster": (
        "An MCS EndpointSlice without the multicluster.kubernetes.io/source-cluster label: "
        "CoreDNS counts its endpoints among the service's addresses, names them "
        "<hostname>.<svc> (the kubernetes plugin; the cluster label left empty) and aims SRV "
        "records at names with an empty label, so that no reply to those SRV questions comes "
        "(the client times out); kdns reports the slice in its log and skips it, since the "
        "cluster id is part of every endpoint name."
    ),
    "apex-ns-nxdomain": (
        "<clusterset> NS: the multicluster plugin answers NXDOMAIN at its own apex (where it "
        "answers the SOA); kdns answers ns.dns.<clusterset>. as in the cluster zone."
    ),
}

#: The classes each CoreDNS shows on this workload (each must occur: the workload is fixed).
_SHARED = (
    "soa-at-missing-name",
    "any-gets-records",
    "nxdomain-means-no-name",
    "nxdomain-by-type",
    "protocol-label-empty-non-terminal",
    "zone-ns-outside-cluster",
    "srv-weight-after-dedup",
    "srv-target-case",
)
_BOTH = (
    "dns-version-mcs-schema",
    "clusterset-ip-no-endpoint-names",
    "cluster-label-empty-non-terminal",
    "import-without-ips",
    "no-pod-names",
    "ptr-of-imported-endpoint-no-reply",
    "ptr-of-clusterset-ip",
    "slice-without-cluster",
)
KUBERNETES_DIFFERENCES = frozenset((*_SHARED, *_BOTH))
PLUGIN_DIFFERENCES = frozenset((*_SHARED, *_BOTH, "ipv6-trailing-dash", "apex-ns-nxdomain"))

_BY_BASE = {imp.base: imp for imp in WORKLOAD}


def _import_below(lname: str) -> tuple[Import, list[str]] | None:
    """The import whose name `lname` is or lies below, and the labels in front of it."""
    labels = lname.split(".")
    for i in range(len(labels)):
        imp = _BY_BASE.get(".".join(labels[i:]))
        if imp:
            return imp, labels[:i]
    return None


def _nodata(r: Reply) -> bool:
    return r.rcode == "NOERROR" and not r.answer


def _ptr_targets(address: str) -> set[str]:
    """What the MCS DNS specification's PTR records (2.3.3, 2.4.3) give `address` in the
    workload: its import's name for a clusterset IP, `<label>.<clusterid>.<svc>` for a ready
    endpoint of a Headless import in a slice with a cluster id."""
    out = set()
    for imp in WORKLOAD:
        if not imp.headless and address in imp.ips:
            out.add(f"{imp.base}.")
        for sl in imp.slices if imp.headless else ():
            for ep in sl.endpoints:
                if sl.cluster and ep.ready and ep.address == address:
                    out.add(f"{endpoint_labels(ep)[-1]}.{sl.cluster}.{imp.base}.")
    return out


def _reverse_class(lname: str, qtype: str, k: Reply, c: Reply) -> str | None:
    """The class of a difference at a full reverse name of a workload address."""
    address = dns.reversename.to_address(dns.name.from_text(lname))
    want = _ptr_targets(address)
    imported = {ep.address for imp in WORKLOAD for s in imp.slices for ep in s.endpoints}
    if qtype == "PTR":
        got = {r.split(" ", 2)[2] for r in k.answer}
        right = got == want if want else k.rcode == "NXDOMAIN"
        if right and address in imported and c.rcode == "TIMEOUT":
            return "ptr-of-imported-endpoint-no-reply"
        if right and want and c.rcode == "NXDOMAIN":
            return "ptr-of-clusterset-ip"
        return None
    if want and _nodata(k) and c.rcode in ("NXDOMAIN", "TIMEOUT"):
        if address in imported:
            return "ptr-of-imported-endpoint-no-reply"
        return "ptr-of-clusterset-ip"
    return None


def classify_clusterset(
    name: str, qtype: str, k: Reply, c: Reply, noerror: frozenset[str]
) -> str | None:
    """The key of test_e2e.KNOWN_DIFFERENCES or CLUSTERSET_DIFFERENCES that explains a
    difference, or None. `noerror`: the names CoreDNS answered NOERROR for some type."""
    shared = classify(name, qtype, k, c, noerror, zone=CLUSTERSET)
    if shared:
        return shared
    lname = name.lower().rstrip(".")
    z = CLUSTERSET
    if (
        lname == f"dns-version.{z}"
        and qtype == "TXT"
        and {r.split(" ", 1)[1] for r in k.answer} == {'TXT "1.0.0"'}
        and {r.split(" ", 1)[1] for r in c.answer} == {'TXT "1.1.0"'}
    ):
        return "dns-version-mcs-schema"
    if lname == f"pod.{z}" and k.rcode == "NXDOMAIN" and _nodata(c):
        return "no-pod-names"
    if lname == z and qtype == "NS" and k.answer and c.rcode == "NXDOMAIN":
        return "apex-ns-nxdomain"
    if lname.endswith((".in-addr.arpa", ".ip6.arpa")):
        return _reverse_class(lname, qtype, k, c)
    found = _import_below(lname)
    if found is None:
        return None
    imp, front = found
    clusters = {s.cluster for s in imp.slices if s.cluster}
    endpoint_name = len(front) == 2 and front[1] in clusters
    port_name = len(front) == 2 and all(f.startswith("_") for f in front)
    if _stray(imp, front, port_name, qtype, k, c):
        return "slice-without-cluster"
    if not imp.headless:
        if endpoint_name and k.rcode == "NXDOMAIN" and c.rcode == "NOERROR":
            return "clusterset-ip-no-endpoint-names"
        no_ips = not imp.ips and imp.ports and (not front or port_name)
        if no_ips and k.rcode == "NXDOMAIN" and _nodata(c):
            return "import-without-ips"
        return None
    if len(front) == 1 and front[0] in clusters and _nodata(k) and c.rcode == "NXDOMAIN":
        ready = any(ep.ready for s in imp.slices if s.cluster == front[0] for ep in s.endpoints)
        return "cluster-label-empty-non-terminal" if ready else None
    if endpoint_name and _trailing_dash(front[0], k, c):
        return "ipv6-trailing-dash"
    # SRV at <svc> or _<port>._<proto>.<svc>: the same targets, one spelt with a trailing dash.
    srv_same = (
        qtype == "SRV"
        and (not front or port_name)
        and k.rcode == c.rcode == "NOERROR"
        and {_undash(r.lower()) for r in c.answer} == {r.lower() for r in k.answer}
    )
    if srv_same and any("--." in r for r in c.answer):
        return "ipv6-trailing-dash"
    return None


def _stray(imp: Import, front: list[str], port_name: bool, qtype: str, k: Reply, c: Reply) -> bool:
    """CoreDNS counts the endpoints of a slice without source-cluster label that kdns skips:
    among the service's addresses, as SRV targets with an empty label (the reply cannot be
    packed: none comes), or by the name <hostname>.<svc> (the empty cluster label dropped)."""
    unlabelled = [ep for s in imp.slices if s.cluster is None for ep in s.endpoints]
    if not unlabelled:
        return False
    if (not front or port_name) and k.rcode == "NOERROR":
        extra = {r for r in c.answer if r.split()[-1] in {ep.address for ep in unlabelled}}
        return (qtype == "SRV" and c.rcode == "TIMEOUT") or bool(
            extra and c.answer - extra == k.answer
        )
    labels = {label for ep in unlabelled for label in endpoint_labels(ep)}
    return (
        len(front) == 1
        and front[0] in labels
        and k.rcode == "NXDOMAIN"
        and c.rcode in ("NOERROR", "TIMEOUT")
    )


def _undash(rr: str) -> str:
    """An SRV record with the multicluster plugin's trailing-dash label spelt as kdns does."""
    return rr.replace("--.", "--0.")


def _trailing_dash(label: str, k: Reply, c: Reply) -> bool:
    """The question names an endpoint by a dashed IPv6 label that one server spells with a
    trailing dash and the other with `--0`, and only that server knows it."""
    if label.endswith("--"):
        return k.rcode == "NXDOMAIN" and c.rcode == "NOERROR"
    if label.endswith("--0"):
        return k.rcode == "NOERROR" and c.rcode == "NXDOMAIN"
    return False
