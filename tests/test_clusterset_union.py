"""`kdns serve --cluster CONTEXT=ZONE ... --clusterset clusterset.local`: a clusterset made by
kdns itself from what the served clusters export, with no MCS controller.

- The merge on stores (`kdns.state.clusterset.ExportUnion`): what exports a service, how the
  exports of several clusters combine, conflicts, and that every change is followed.
- The real `kdns serve` process against two API doubles (testkit/apiserver.py) at once, one with
  the MCS CRDs (ServiceExports) and one without (exports by annotation only): generated (seeded)
  services and exports, every name of them asked over UDP and TCP with dnspython and checked
  against a model of the merge written here, apart from kdns's code (`expected`); then changed
  through the watch, and checked again; with one serving process and with `--workers 2`.
- One cluster's API going away leaves the clusterset's last answers in place.

The same on two real control planes: tests/e2e/test_clusterset_union.py.
"""

from __future__ import annotations

import logging
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.rcode
import pytest

from kdns.state.clusterset import ExportUnion
from kdns.state.model import (
    Endpoint,
    EndpointPort,
    EndpointSet,
    Namespace,
    Service,
    ServiceExport,
    ServicePort,
    Subset,
)
from kdns.state.store import Store
from testkit.apiserver import (
    FakeApiServer,
    endpoint_slice,
    namespace,
    service,
    slice_endpoint,
    write_kubeconfig,
)
from tests.kdns_process import KDNS, KdnsProcess, start_kdns, until
from tests.test_clusterset import Import, Model, ask, dashed, ede_texts, launcher, texts

ZONE = "clusterset.local"
EXPORT_API = "multicluster.x-k8s.io/v1alpha1"
SERVICE_LABEL = "multicluster.kubernetes.io/service-name"
WAIT = 20.0

# -- the merge, on stores ----------------------------------------------------------------------


def member(*objs: Any, synced: bool = True) -> Store:
    store = Store()
    store.add_layer("c")
    if synced:
        store.set_synced("c")
    store.apply("c", [Namespace("shop"), *objs])
    return store


def svc(name: str, *ips: str, exported: bool = True, port: int = 80, **kw: Any) -> Service:
    ports = (ServicePort("http", port),)
    return Service("shop", name, cluster_ips=ips, ports=ports, exported=exported, **kw)


def headless(name: str, *endpoints: tuple[str, str], exported: bool = True) -> list[Any]:
    """A headless service and its slice: endpoints are (address, hostname)."""
    eps = tuple(Endpoint((ip,), host) for ip, host in endpoints)
    ports = (EndpointPort("http", 8080),)
    return [
        Service("shop", name, headless=True, ports=(ServicePort("http", 80),), exported=exported),
        EndpointSet("EndpointSlice", "shop", f"{name}-x", name, (Subset(eps, ports),)),
    ]


def answer(union: ExportUnion, name: str) -> tuple[str, tuple[str, ...], set[str]] | None:
    """(type, clusterset IPs, endpoint names with addresses) of the import, None when none."""
    view = union.store.service_import("shop", name)
    if view is None:
        return None
    kind = "Headless" if view.service.headless else "ClusterSetIP"
    return kind, view.service.cluster_ips, {f"{ep.name}={ep.address}" for ep in view.ready}


def test_a_cluster_ip_service_answers_with_every_exporting_clusters_ip() -> None:
    east = member(svc("web", "10.96.0.1"))
    west = member(svc("web", "10.97.0.1", "fd00::1"))
    north = member(svc("web", "10.98.0.1", exported=False))
    union = ExportUnion([("east", east), ("west", west), ("north", north)])
    assert answer(union, "web") == ("ClusterSetIP", ("10.96.0.1", "10.97.0.1", "fd00::1"), set())


def test_a_headless_service_answers_with_every_clusters_endpoints_named_by_cluster() -> None:
    east = member(*headless("db", ("10.1.0.1", "db-0"), ("10.1.0.2", "")))
    west = member(*headless("db", ("10.2.0.1", "db-0")))
    union = ExportUnion([("east", east), ("west", west)])
    assert answer(union, "db") == (
        "Headless",
        (),
        {"db-0.east=10.1.0.1", "10-1-0-2.east=10.1.0.2", "db-0.west=10.2.0.1"},
    )


def test_what_exports_a_service() -> None:
    store = member(
        svc("by-name", "10.96.0.1", exported=False),
        svc("by-label", "10.96.0.2", exported=False),
        svc("by-annotation", "10.96.0.3"),
        svc("not-exported", "10.96.0.4", exported=False),
        Service("shop", "ext", type="ExternalName", external_name="example.org", exported=True),
        ServiceExport("shop", "by-name", "by-name"),
        ServiceExport("shop", "some-export", "by-label"),
        ServiceExport("shop", "no-service", "no-service"),
    )
    union = ExportUnion([("east", store)])
    exported = {v.service.name for v in union.store.import_views()}
    assert exported == {"by-name", "by-label", "by-annotation"}


def test_conflicts_are_settled_by_the_order_of_the_clusters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    east = member(svc("web", "10.96.0.1", port=80), *headless("db", ("10.1.0.1", "db-0")))
    west = member(
        Service(
            "shop",
            "web",
            cluster_ips=("10.97.0.1",),
            ports=(ServicePort("http", 8000), ServicePort("admin", 9000)),
            exported=True,
        ),
        svc("db", "10.97.0.9"),  # a ClusterIP service where east's is headless
    )
    with caplog.at_level(logging.WARNING):
        union = ExportUnion([("east", east), ("west", west)])
    web = union.store.service_import("shop", "web")
    assert web is not None
    assert web.service.ports == (ServicePort("http", 80), ServicePort("admin", 9000))
    assert answer(union, "db") == ("Headless", (), {"db-0.east=10.1.0.1"})
    assert "service shop/db of cluster west is left out" in caplog.text


def test_every_change_of_a_member_is_followed() -> None:
    east = member(svc("web", "10.96.0.1"), *headless("db", ("10.1.0.1", "db-0")))
    west = member(ServiceExport("shop", "web", "web"), svc("web", "10.97.0.1", exported=False))
    union = ExportUnion([("east", east), ("west", west)])
    assert answer(union, "web") == ("ClusterSetIP", ("10.96.0.1", "10.97.0.1"), set())
    west.apply("c", deletes=[("ServiceExport", "shop", "web")])
    assert answer(union, "web") == ("ClusterSetIP", ("10.96.0.1",), set())
    east.apply("c", [svc("web", "10.96.0.1", exported=False)])
    assert answer(union, "web") is None
    west.apply("c", [ServiceExport("shop", "web-export", "web")])
    assert answer(union, "web") == ("ClusterSetIP", ("10.97.0.1",), set())
    east.apply("c", headless("db", ("10.1.0.7", "db-1")))
    assert answer(union, "db") == ("Headless", (), {"db-1.east=10.1.0.7"})
    east.apply("c", deletes=[("Service", "shop", "db")])
    assert answer(union, "db") is None
    assert [o for o in union.store.layer_objects("exports") if o.key[0] == "ImportSlice"] == []
    west.apply("c", [Namespace("team-b")])
    assert union.store.has_namespace("team-b")


def test_synced_and_unreachable_follow_every_member() -> None:
    east, west = member(), member(synced=False)
    union = ExportUnion([("east", east), ("west", west)])
    assert not union.store.synced
    west.set_synced("c")
    assert union.store.synced
    east.set_unreachable("c", 1000.0)
    west.set_unreachable("c", 900.0)
    assert union.store.unreachable_since == 900.0
    east.set_unreachable("c", None)
    west.set_unreachable("c", None)
    assert union.store.unreachable_since is None


# -- the real server, two API doubles ----------------------------------------------------------

CLUSTERS = ("east", "west")
NAMESPACES = ("shop", "team-b")
NAMES = ("web", "db", "api", "cache", "search", "auth", "queue")
PORT_NAMES = ("http", "grpc", "metrics")


@dataclass
class Exported:
    """One cluster's service in the generated world."""

    cluster: str
    ns: str
    name: str
    headless: bool
    ips: list[str] = field(default_factory=list)
    ports: list[tuple[str, int, str]] = field(default_factory=list)  # service ports
    target: dict[str, int] = field(default_factory=dict)  # port name -> endpoint port
    endpoints: list[tuple[str, str, bool]] = field(default_factory=list)  # ip, hostname, ready
    #: "export" (a ServiceExport of its name), "label" (one labelled with it), "annotation"
    how: str | None = None


def generate(rng: random.Random) -> list[Exported]:
    world = []
    addresses = iter(range(1, 10_000))
    for ns in NAMESPACES:
        for name in NAMES:
            kind = rng.random() < 0.45
            for ci, cluster in enumerate(CLUSTERS):
                if rng.random() < 0.25:
                    continue
                # Now and then a cluster that disagrees on the type (a conflict).
                is_headless = kind if rng.random() < 0.85 else not kind
                ports = [
                    (pn, rng.choice((80, 443, 8000, 9000)), rng.choice(("TCP", "TCP", "UDP")))
                    for pn in rng.sample(PORT_NAMES, rng.randint(0, 2))
                ]
                svc = Exported(cluster, ns, name, is_headless, ports=ports)
                svc.target = {pn: port + 1000 for pn, port, _ in ports}
                # Endpoints for every service, as on a cluster: a ClusterIP service's must
                # never reach the clusterset zone (a ClusterSetIP import names none).
                for _ in range(rng.randint(0, 3)):
                    n = next(addresses)
                    ip = f"10.{ci + 1}.{n // 250}.{n % 250 + 1}"
                    if rng.random() < 0.2:
                        ip = f"fd00:{ci + 1}::{n:x}"
                    host = rng.choice(("", "", f"{name}-{n % 4}"))
                    svc.endpoints.append((ip, host, rng.random() < 0.8))
                if not is_headless:
                    n = next(addresses)
                    svc.ips = [f"10.{96 + ci}.{n // 250}.{n % 250 + 1}"]
                # The cluster without the MCS CRDs can only export by annotation.
                choices = ["export", "label", "annotation", None] if ci == 0 else ["annotation"]
                svc.how = rng.choice([*choices, None])
                world.append(svc)
    return world


def objects(svc: Exported) -> list[dict[str, Any]]:
    """The API objects of one cluster's service (and its export)."""
    obj = service(
        svc.name,
        svc.ns,
        cluster_ip="None" if svc.headless else svc.ips[0],
        ports=[(pn, port, proto) for pn, port, proto in svc.ports],
    )
    if svc.how == "annotation":
        obj["metadata"]["annotations"] = {"kdns.io/export": "true"}
    out = [obj]
    if svc.endpoints:
        eps = [
            slice_endpoint(ip, ready=ready, hostname=host or None, namespace=svc.ns)
            for ip, host, ready in svc.endpoints
        ]
        by_family: dict[str, list[dict[str, Any]]] = {}
        for ep in eps:
            family = "IPv6" if ":" in ep["addresses"][0] else "IPv4"
            by_family.setdefault(family, []).append(ep)
        ports = [(pn, svc.target[pn], proto) for pn, _, proto in svc.ports]
        for family, group in sorted(by_family.items()):
            out.append(
                endpoint_slice(
                    f"{svc.name}-{family.lower()}",
                    svc.name,
                    svc.ns,
                    endpoints=group,
                    ports=ports,
                    address_type=family,
                )
            )
    if svc.how in ("export", "label"):
        out.append(export_object(svc.ns, svc.name, svc.how == "label"))
    return out


def annotated(name: str, ip: str) -> dict[str, Any]:
    """A ClusterIP service of namespace shop, exported by the kdns.io/export annotation."""
    obj = service(name, "shop", cluster_ip=ip)
    obj["metadata"]["annotations"] = {"kdns.io/export": "true"}
    return obj


def export_object(ns: str, name: str, labelled: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"export-of-{name}" if labelled else name, "namespace": ns}
    if labelled:
        meta["labels"] = {SERVICE_LABEL: name}
    return {"apiVersion": EXPORT_API, "kind": "ServiceExport", "metadata": meta}


Observed = tuple[str, set[str], set[str], set[str]]


def merged(world: list[Exported]) -> list[Import]:
    """The ServiceImports an MCS controller following kdns's merge rules would write for the
    world: the exporting clusters in order; the first one's type wins and the others are left
    out; ports the union by (name, protocol), the first one's number winning; a ClusterIP
    service's IPs are every exporter's, a headless one's endpoints every exporter's."""
    out = []
    for ns in NAMESPACES:
        for name in NAMES:
            exporters = [s for s in world if (s.ns, s.name) == (ns, name) and s.how]
            if not exporters:
                continue
            first = exporters[0]
            agree = [s for s in exporters if s.headless == first.headless]
            ports: dict[tuple[str, str], int] = {}
            for s in agree:
                for pn, port, proto in s.ports:
                    ports.setdefault((pn, proto), port)
            imp = Import(
                ns,
                name,
                "Headless" if first.headless else "ClusterSetIP",
                [] if first.headless else [ip for s in agree for ip in s.ips],
                [(pn, port, proto) for (pn, proto), port in ports.items()],
            )
            if first.headless:
                imp.endpoints = [
                    (s.cluster, host, ip, ok, [(pn, s.target[pn], pr) for pn, _, pr in s.ports])
                    for s in agree
                    for ip, host, ok in s.endpoints
                ]
            out.append(imp)
    return out


def expected(world: list[Exported]) -> dict[str, Observed]:
    """Every name the world makes (and some it does not), with (rcode, A, AAAA, SRV without
    weights), as the MCS DNS specification answers the merged imports (the model of
    tests/test_clusterset.py)."""
    model = Model(merged(world))
    names = set()
    for ns in NAMESPACES:
        for name in NAMES:
            base = f"{name}.{ns}.svc.{ZONE}"
            names |= {base, *(f"_{pn}._tcp.{base}" for pn in PORT_NAMES)}
            names |= {f"_{pn}._udp.{base}" for pn in PORT_NAMES}
            for cluster in CLUSTERS:
                names |= {f"{cluster}.{base}", f"{name}-0.{cluster}.{base}"}
    for s in world:
        for ip, host, _ in s.endpoints:
            names.add(f"{host or dashed(ip)}.{s.cluster}.{s.name}.{s.ns}.svc.{ZONE}")
    return {name: model.answer(name) for name in sorted(names)}


def observed(port: int, name: str, *, tcp: bool) -> Observed:
    a, aaaa, srv = (ask(port, name, t, tcp=tcp) for t in ("A", "AAAA", "SRV"))
    # One rcode for the three types, or all three (a change landed between the questions,
    # or a server that answers types apart): either way no model answer equals it.
    rcode = "/".join(dict.fromkeys(dns.rcode.to_text(m.rcode()) for m in (a, aaaa, srv)))
    srvs = {" ".join(t.split()[2:]) for t in texts(srv, "SRV")}
    return rcode, texts(a, "A"), texts(aaaa, "AAAA"), srvs


def mismatches(port: int, want: dict[str, Observed], *, tcp: bool) -> list[str]:
    out = []
    for name, answer in sorted(want.items()):
        got = observed(port, name, tcp=tcp)
        if got != answer:
            out.append(f"{name}: got {got}, want {answer}")
    return out


def serve_two(
    apis: tuple[FakeApiServer, FakeApiServer], tmp_path: Path, *extra: str
) -> KdnsProcess:
    kcfg = write_kubeconfig(
        tmp_path / "kubeconfig", apis[0].url, context="east", other_contexts={"west": apis[1].url}
    )
    kp = start_kdns(
        [
            "--kubeconfig",
            str(kcfg),
            "--cluster",
            "west=west.local",
            "--clusterset",
            ZONE,
            *extra,
        ],
        http=True,
    )
    if not until(lambda: kp.http_get("/ready")[0] == 200, WAIT):
        kp.stop()
        raise AssertionError(f"kdns not ready:\n{kp.log()}")
    return kp


@pytest.fixture
def apis() -> Iterator[tuple[FakeApiServer, FakeApiServer]]:
    # east has the MCS CRDs (ServiceExports are listed); west has not (404: annotations only).
    with FakeApiServer(crds={"serviceexports"}) as east, FakeApiServer() as west:
        yield east, west


def load(apis: tuple[FakeApiServer, FakeApiServer], world: list[Exported]) -> None:
    for api in apis:
        api.apply_all([namespace(ns) for ns in NAMESPACES])
    for svc in world:
        apis[CLUSTERS.index(svc.cluster)].apply_all(objects(svc))


def change(
    rng: random.Random, apis: tuple[FakeApiServer, FakeApiServer], world: list[Exported]
) -> list[Exported]:
    """Export, unexport, delete and move endpoints of some services, through the APIs."""
    out = []
    for svc in world:
        api = apis[CLUSTERS.index(svc.cluster)]
        roll = rng.random()
        if roll < 0.12:
            for obj in reversed(objects(svc)):
                api.delete(obj["kind"], obj["metadata"]["name"], svc.ns)
            continue
        if roll < 0.4:
            for obj in objects(svc):
                if obj["kind"] == "ServiceExport":
                    api.delete("ServiceExport", obj["metadata"]["name"], svc.ns)
            choices = ["export", "label", "annotation", None] if svc.cluster == "east" else None
            svc.how = rng.choice(choices or ["annotation", None])
            svc.endpoints = [(ip, host, not ok) for ip, host, ok in svc.endpoints]
            api.apply_all(objects(svc))
        out.append(svc)
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_generated_exports_of_two_clusters_answer_as_merged(
    apis: tuple[FakeApiServer, FakeApiServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
) -> None:
    launcher(monkeypatch)
    rng = random.Random(2149)
    world = generate(rng)
    assert {s.how for s in world} >= {"export", "label", "annotation", None}
    load(apis, world)
    kp = serve_two(apis, tmp_path, "--workers", str(workers))
    try:
        want = expected(world)
        served = [n for n, a in want.items() if a[0] == "NOERROR"]
        assert len(served) > 20, served
        for tcp in (False, True):
            bad = mismatches(kp.port, want, tcp=tcp)
            assert bad == [], "\n".join(bad)
        # Through the watch: exports come and go, services go, endpoints turn (not) ready.
        world = change(rng, apis, world)
        want = expected(world)
        left: list[str] = []

        def converged() -> bool:
            left[:] = mismatches(kp.port, want, tcp=False)
            return not left

        assert until(converged, WAIT, step=0.2), (left, kp.log()[-3000:])
    finally:
        kp.stop()


def test_one_cluster_away_leaves_the_last_answers(
    apis: tuple[FakeApiServer, FakeApiServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher(monkeypatch)
    east, west = apis
    east.apply_all([namespace("shop"), annotated("web", "10.96.0.10")])
    west.apply_all([namespace("shop"), annotated("web", "10.97.0.10")])
    kp = serve_two(apis, tmp_path)
    try:
        name = f"web.shop.svc.{ZONE}"
        assert texts(ask(kp.port, name, "A"), "A") == {"10.96.0.10", "10.97.0.10"}
        west.go_down()

        def stale() -> list[str]:
            return ede_texts(ask(kp.port, name, "A", edns=True))

        # Until kdns notices (its next request fails), and after: the same two addresses.
        assert until(lambda: any("unreachable" in t for t in stale()), WAIT), kp.log()[-2000:]
        assert texts(ask(kp.port, name, "A"), "A") == {"10.96.0.10", "10.97.0.10"}
        # A change in the cluster still reachable is served beside the other's last data.
        east.apply(export_object("shop", "web", False))
        east.apply(service("api", "shop", cluster_ip="10.96.0.11"))
        east.apply(export_object("shop", "api", False))
        assert until(lambda: texts(ask(kp.port, f"api.shop.svc.{ZONE}", "A"), "A") != set(), WAIT)
        west.come_up()
        assert until(lambda: not any("unreachable" in t for t in stale()), WAIT)
        assert texts(ask(kp.port, name, "A"), "A") == {"10.96.0.10", "10.97.0.10"}
    finally:
        kp.stop()


def test_clusterset_needs_usable_cluster_ids(tmp_path: Path) -> None:
    """A context that is no DNS label cannot name endpoints: kdns says so and does not start."""
    kcfg = write_kubeconfig(
        tmp_path / "kubeconfig", "http://127.0.0.1:9", context="arn:aws:eks:eu:1:cluster/a"
    )
    proc = subprocess.run(
        [
            *KDNS,
            "serve",
            "--kubeconfig",
            str(kcfg),
            "--clusterset",
            ZONE,
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "is no DNS label" in proc.stderr and "--cluster-id" in proc.stderr


def test_servfail_until_every_cluster_has_synced(
    apis: tuple[FakeApiServer, FakeApiServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher(monkeypatch)
    east, west = apis
    east.apply_all([namespace("shop"), annotated("web", "10.96.0.10")])
    west.apply_all([namespace("shop"), annotated("web", "10.97.0.10")])
    west.apply(annotated("api", "10.97.0.11"))
    west.go_down()
    kcfg = write_kubeconfig(
        tmp_path / "kubeconfig", east.url, context="east", other_contexts={"west": west.url}
    )
    args = ["--kubeconfig", str(kcfg), "--cluster", "west=west.local", "--clusterset", ZONE]
    kp = start_kdns([*args, "--startup-timeout", "0"])
    try:
        name, api = f"web.shop.svc.{ZONE}", f"api.shop.svc.{ZONE}"
        # east alone has synced: what the clusterset has answers (as a cluster zone answers
        # what it has before its sync), but no name is denied until west is in too.
        assert until(lambda: ask(kp.port, "web.shop.svc.cluster.local", "A").answer, WAIT)
        assert texts(ask(kp.port, name, "A"), "A") == {"10.96.0.10"}
        assert ask(kp.port, api, "A").rcode() == dns.rcode.SERVFAIL
        west.come_up()
        assert until(lambda: texts(ask(kp.port, name, "A"), "A") == {"10.96.0.10", "10.97.0.10"})
        assert texts(ask(kp.port, api, "A"), "A") == {"10.97.0.11"}
    finally:
        kp.stop()


def test_malformed_exports_are_reported_and_skipped(
    apis: tuple[FakeApiServer, FakeApiServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher(monkeypatch)
    east, _ = apis
    east.apply_all(
        [
            namespace("shop"),
            service("web", "shop", cluster_ip="10.96.0.10"),
            service("api", "shop", cluster_ip="10.96.0.11"),
            export_object("shop", "web", False),
        ]
    )
    bad = export_object("shop", "api", True)
    bad["metadata"]["labels"][SERVICE_LABEL] = "Not_A_Label"
    east.apply(bad)
    kp = serve_two(apis, tmp_path)
    try:
        assert texts(ask(kp.port, f"web.shop.svc.{ZONE}", "A"), "A") == {"10.96.0.10"}
        assert ask(kp.port, f"api.shop.svc.{ZONE}", "A").rcode() == dns.rcode.NXDOMAIN
        assert until(lambda: "shop/export-of-api" in kp.log(), WAIT), kp.log()
        assert "is no DNS label" in kp.log()
        # Mended by watch: it exports api now; web kept answering throughout.
        bad["metadata"]["labels"][SERVICE_LABEL] = "api"
        east.apply(bad)
        assert until(lambda: texts(ask(kp.port, f"api.shop.svc.{ZONE}", "A"), "A") != set(), WAIT)
        assert texts(ask(kp.port, f"web.shop.svc.{ZONE}", "A"), "A") == {"10.96.0.10"}
    finally:
        kp.stop()
