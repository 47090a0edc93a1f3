"""`--clusterset` on two real control planes at once: the suite's (east, with the project's MCS
CRDs installed, so services are exported by ServiceExports) and a second one started here
(west: its own etcd, kube-apiserver and controller-manager on other ports, without the CRDs, so
services are exported by the kdns.io/export annotation). Pods are run on both; the endpoint
controllers write the EndpointSlices; one kdns watches both through one kubeconfig with two
contexts and answers the clusterset zone from what they export, asked with dig over UDP and TCP
as exports, pods and a whole API server come and go.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.controlplane import ADMIN_TOKEN, ControlPlane
from testkit.exposure import create, install_crds
from tests.e2e.conftest import control_plane, start_kdns_for
from tests.e2e.test_clusterset import dig, until
from tests.kdns_process import KdnsProcess

ZONE = "clusterset.local"
NS = "union-e2e"
EXPORTS = "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/" + NS + "/serviceexports"
#: ClusterIPs given, not allocated: the two control planes share a service range.
WEB_IP = {"east": "10.96.70.1", "west": "10.96.71.1"}
DB_PODS = {"east": [("db-0", "10.11.0.1"), ("db-1", "10.11.0.2")], "west": [("db-0", "10.12.0.1")]}


@pytest.fixture(scope="module")
def west(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    yield from control_plane(tmp_path_factory.mktemp("west-controlplane"))


def two_contexts(east: ControlPlane, west: ControlPlane, path: Path) -> Path:
    """One kubeconfig, current context east, and west beside it."""
    clusters, users, contexts = [], [], []
    for name, cp in (("east", east), ("west", west)):
        server = f"https://127.0.0.1:{cp.api_port}"
        ca = str(cp.ca_file)
        clusters.append({"name": name, "cluster": {"server": server, "certificate-authority": ca}})
        users.append({"name": name, "user": {"token": ADMIN_TOKEN}})
        contexts.append({"name": name, "context": {"cluster": name, "user": name}})
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters,
        "users": users,
        "contexts": contexts,
        "current-context": "east",
    }
    path.write_text(json.dumps(doc, indent=2))
    return path


def annotate(cp: ControlPlane, name: str, exported: bool) -> None:
    value = "true" if exported else None  # null removes it (merge patch)
    cp.merge_patch(
        f"/api/v1/namespaces/{NS}/services/{name}",
        {"metadata": {"annotations": {"kdns.io/export": value}}},
    )


def export(cp: ControlPlane, name: str) -> None:
    create(
        cp,
        EXPORTS,
        {
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceExport",
            "metadata": {"name": name, "namespace": NS},
        },
    )


@pytest.fixture(scope="module")
def kdns(
    cluster: ControlPlane, west: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KdnsProcess]:
    install_crds(cluster)
    planes = {"east": cluster, "west": west}
    for cid, cp in planes.items():
        cp.create_namespace(NS)
        cp.create_node("node-1")
        cp.create_service(NS, "web", ports=[("http", 80, 8080)], cluster_ip=WEB_IP[cid])
        cp.create_service(
            NS, "db", selector={"app": "db"}, headless=True, ports=[("pg", 5432, 5432)]
        )
        cp.create_service(NS, "private", ports=[("http", 80, 8080)])
        for pod, ip in DB_PODS[cid]:
            cp.run_pod(NS, pod, "node-1", {"app": "db"}, ip, hostname=pod, subdomain="db")
    export(cluster, "web")
    export(cluster, "db")
    annotate(west, "web", True)
    annotate(west, "db", True)
    tmp = tmp_path_factory.mktemp("union")
    kcfg = two_contexts(cluster, west, tmp / "kubeconfig")
    kp = start_kdns_for(
        cluster, tmp, kcfg, "--cluster", "west=west.local", "--clusterset", ZONE, "--workers", "0"
    )
    try:
        yield kp
    finally:
        kp.stop()


def test_exports_of_two_control_planes_answer_as_one_clusterset(
    cluster: ControlPlane, west: ControlPlane, kdns: KdnsProcess
) -> None:
    web, db = f"web.{NS}.svc.{ZONE}", f"db.{NS}.svc.{ZONE}"
    all_db = {ip for pods in DB_PODS.values() for _, ip in pods}
    # The endpoint controllers of both planes write the slices in their own time.
    until(kdns, db, ("NOERROR", all_db))
    for tcp in (False, True):
        assert dig(kdns, web, tcp=tcp) == ("NOERROR", set(WEB_IP.values()))
        assert dig(kdns, db, tcp=tcp) == ("NOERROR", all_db)
        assert dig(kdns, f"db-0.east.{db}", tcp=tcp) == ("NOERROR", {"10.11.0.1"})
        assert dig(kdns, f"db-0.west.{db}", tcp=tcp) == ("NOERROR", {"10.12.0.1"})
        status, srv = dig(kdns, f"_pg._tcp.{db}", "SRV", tcp=tcp)
        assert status == "NOERROR"
        assert {" ".join(r.split()[2:]) for r in srv} == {
            f"5432 db-0.east.{db}.",
            f"5432 db-1.east.{db}.",
            f"5432 db-0.west.{db}.",
        }
        status, srv = dig(kdns, f"_http._tcp.{web}", "SRV", tcp=tcp)
        assert {" ".join(r.split()[2:]) for r in srv} == {f"80 {web}."}
    assert dig(kdns, f"private.{NS}.svc.{ZONE}")[0] == "NXDOMAIN"  # exported nowhere
    assert dig(kdns, f"db-1.west.{db}")[0] == "NXDOMAIN"
    assert dig(kdns, f"west.{db}") == ("NOERROR", set())  # above its endpoints' names
    # Each cluster's own zone is still its own.
    assert dig(kdns, f"web.{NS}.svc.cluster.local") == ("NOERROR", {WEB_IP["east"]})
    assert dig(kdns, f"web.{NS}.svc.west.local") == ("NOERROR", {WEB_IP["west"]})


def test_exports_pods_and_an_api_server_come_and_go(
    cluster: ControlPlane, west: ControlPlane, kdns: KdnsProcess
) -> None:
    web, db = f"web.{NS}.svc.{ZONE}", f"db.{NS}.svc.{ZONE}"
    until(kdns, web, ("NOERROR", set(WEB_IP.values())))
    # A pod turns ready in west: its endpoint joins the clusterset's.
    west.run_pod(NS, "db-2", "node-1", {"app": "db"}, "10.12.0.2", hostname="db-2", subdomain="db")
    until(kdns, f"db-2.west.{db}", ("NOERROR", {"10.12.0.2"}))
    # east's ServiceExport goes: only west's ClusterIP is left; then west's annotation goes.
    cluster.delete(f"{EXPORTS}/web")
    until(kdns, web, ("NOERROR", {WEB_IP["west"]}))
    annotate(west, "web", False)
    until(kdns, web, ("NXDOMAIN", set()))
    annotate(west, "web", True)
    until(kdns, web, ("NOERROR", {WEB_IP["west"]}))
    export(cluster, "web")
    until(kdns, web, ("NOERROR", set(WEB_IP.values())))
    # west's API server stops: its exports keep answering from the last data, and a change in
    # east still arrives.
    west.stop_apiserver()
    try:
        cluster.create_service(NS, "late", ports=[("http", 80, 8080)], cluster_ip="10.96.70.9")
        export(cluster, "late")
        until(kdns, f"late.{NS}.svc.{ZONE}", ("NOERROR", {"10.96.70.9"}))
        assert dig(kdns, web) == ("NOERROR", set(WEB_IP.values()))
        assert dig(kdns, f"db-2.west.{db}") == ("NOERROR", {"10.12.0.2"})
    finally:
        west.start_apiserver()
    until(kdns, web, ("NOERROR", set(WEB_IP.values())))
