"""kdns against a real kube-apiserver and kube-controller-manager, and beside a real CoreDNS.

Order matters only for the last test, which restarts kube-apiserver.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import pytest
import yaml

from testkit.controlplane import (
    LIMITED_TOKEN,
    ApiError,
    ControlPlane,
    wait_for,
)
from tests.e2e.conftest import coredns_running, skip_or_fail, start_kdns_for, unavailable
from tests.e2e.dnsutil import Reply, ask, dig_reply, until_dig
from tests.kdns_process import KdnsProcess

pytestmark = pytest.mark.timeout(300)

ZONE = "cluster.local"
REPO = Path(__file__).resolve().parents[2]

#: What kdns needs, as issue 4 states it; replaced by deploy/'s ClusterRole once that exists.
KDNS_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": [""],
        "resources": ["services", "endpoints", "namespaces"],
        "verbs": ["list", "watch"],
    },
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["list", "watch"],
    },
]


def fqdn(name: str, ns: str, zone: str = ZONE) -> str:
    return f"{name}.{ns}.svc.{zone}"


def refusals(log: str) -> list[str]:
    """The lines of a kdns log that tell of a refusal by the API server (403, Forbidden). Only
    the message is searched, and 403 only as a number of its own: a timestamp's milliseconds
    (",403") or a port (40337) are not one."""
    out = []
    for line in log.splitlines():
        message = line.split(": ", 1)[-1]  # after "<time> <level> <logger>: "
        if "orbidden" in message or re.search(r"(?<![\d.:,])403(?![\d.])", message):
            out.append(line)
    return out


def dashed(ip: str) -> str:
    """An address as a DNS label: dots (IPv4) or colons (IPv6) as dashes, and a trailing `::`
    spelled `::0` so that the label does not end in a dash (CoreDNS's form)."""
    if ":" in ip:
        return (ip + "0" if ip.endswith("::") else ip).replace(":", "-")
    return ip.replace(".", "-")


def wait_slices(
    cp: ControlPlane, ns: str, svc: str, addresses: set[str], timeout: float = 20
) -> None:
    wait_for(
        f"slices of {ns}/{svc} = {sorted(addresses)}",
        lambda: cp.slice_addresses(ns, svc) == addresses,
        timeout,
    )


# --------------------------------------------------------------------------- 1. the seed's story


def test_seed_story(cluster: ControlPlane, kdns: KdnsProcess, node: str) -> None:
    """my-service (app=backend, 8080 -> 80): every change reaches dig (the delays are printed)."""
    ns, labels = "default", {"app": "backend"}
    timings: dict[str, float] = {}

    svc = cluster.create_service(ns, "my-service", selector=labels, ports=[("http", 8080, 80)])
    cip = svc["spec"]["clusterIP"]
    name = fqdn("my-service", ns)
    timings["service created"] = until_dig(kdns, name, "A", {cip})

    pods = {"backend-0": "10.1.0.10", "backend-1": "10.1.0.11"}
    for pod, ip in pods.items():
        cluster.run_pod(ns, pod, node, labels, ip)
    wait_slices(cluster, ns, "my-service", set(pods.values()))
    # A ClusterIP service answers with its ClusterIP whatever its endpoints do.
    assert dig_reply(kdns, name).answer == {cip}
    timings["endpoint name"] = until_dig(kdns, f"10-1-0-10.{name}", "A", {"10.1.0.10"})
    assert dig_reply(kdns, f"_http._tcp.{name}", "SRV").answer == {f"0 100 8080 {name}."}

    # The headless variant answers with the ready pods' addresses.
    cluster.create_service(
        ns, "my-service-hl", selector=labels, ports=[("http", 8080, 80)], headless=True
    )
    hl = fqdn("my-service-hl", ns)
    timings["headless created"] = until_dig(kdns, hl, "A", set(pods.values()))
    srv = {f"0 50 80 {dashed(ip)}.{hl}." for ip in pods.values()}
    assert dig_reply(kdns, f"_http._tcp.{hl}", "SRV").answer == srv

    # Scale up.
    cluster.create_pod(ns, "backend-2", node, labels)
    cluster.set_pod_ready(ns, "backend-2", "10.1.0.12", True)
    pods["backend-2"] = "10.1.0.12"
    timings["scale up"] = until_dig(kdns, hl, "A", set(pods.values()))

    # Scale down.
    cluster.delete_pod(ns, "backend-2")
    del pods["backend-2"]
    timings["scale down"] = until_dig(kdns, hl, "A", set(pods.values()))

    # A pod turns unready, then ready again.
    cluster.set_pod_ready(ns, "backend-1", "10.1.0.11", False)
    timings["unready"] = until_dig(kdns, hl, "A", {"10.1.0.10"})
    cluster.set_pod_ready(ns, "backend-1", "10.1.0.11", True)
    timings["ready again"] = until_dig(kdns, hl, "A", set(pods.values()))

    # Every pod unready: a headless service without ready endpoints is NXDOMAIN.
    for pod, ip in pods.items():
        cluster.set_pod_ready(ns, pod, ip, False)
    timings["all unready"] = until_dig(kdns, hl, "A", set(), "NXDOMAIN")
    assert dig_reply(kdns, name).answer == {cip}
    for pod, ip in pods.items():
        cluster.set_pod_ready(ns, pod, ip, True)
    until_dig(kdns, hl, "A", set(pods.values()))

    # Delete the services.
    cluster.delete_service(ns, "my-service-hl")
    timings["headless deleted"] = until_dig(kdns, hl, "A", set(), "NXDOMAIN")
    cluster.delete_service(ns, "my-service")
    timings["service deleted"] = until_dig(kdns, name, "A", set(), "NXDOMAIN")
    for pod in pods:
        cluster.delete_pod(ns, pod)
    print(
        "seed story, seconds from API write to dig:", {k: round(v, 3) for k, v in timings.items()}
    )


# --------------------------------------------------------------------------- 2. external etcd

ETCD_IPS = ("178.104.163.38", "178.104.163.187", "178.104.163.243")
ETCD_NODES = ("etc-master1", "etc-master2", "etc-master3")
SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"


def _etcd_endpoints(cp: ControlPlane, labels: dict[str, str] | None = None) -> None:
    cp.create_endpoints(
        "kube-system",
        "etcd-k8s",
        list(zip(ETCD_IPS, ETCD_NODES, strict=True)),
        [("port", 2379)],
        labels=labels,
    )


def _mirrored(cp: ControlPlane) -> set[str]:
    return {
        a
        for s in cp.slices("kube-system", "etcd-k8s")
        if s["metadata"].get("labels", {}).get("endpointslice.kubernetes.io/managed-by")
        == "endpointslicemirroring-controller.k8s.io"
        for ep in s.get("endpoints") or []
        for a in ep.get("addresses") or []
    }


def test_external_etcd(cluster: ControlPlane, kdns: KdnsProcess, node: str) -> None:
    """kube-system/etcd-k8s: no selector, hand-written Endpoints, mirrored or not."""
    ns, name = "kube-system", fqdn("etcd-k8s", "kube-system")
    srv_name = f"_port._tcp.{name}"

    # ClusterIP, Endpoints mirrored into slices.
    svc = cluster.create_service(ns, "etcd-k8s", ports=[("port", 2379, 2379)])
    _etcd_endpoints(cluster)
    wait_for("mirrored slices", lambda: _mirrored(cluster) == set(ETCD_IPS), 20)
    until_dig(kdns, name, "A", {svc["spec"]["clusterIP"]})
    assert dig_reply(kdns, srv_name, "SRV").answer == {f"0 100 2379 {name}."}
    for ip in ETCD_IPS:
        until_dig(kdns, f"{dashed(ip)}.{name}", "A", {ip})

    # Headless variant (clusterIP is immutable: recreate the service and its Endpoints).
    cluster.delete_service(ns, "etcd-k8s")
    until_dig(kdns, name, "A", set(), "NXDOMAIN")
    cluster.delete(f"/api/v1/namespaces/{ns}/endpoints/etcd-k8s")
    wait_for("old mirrored slices gone", lambda: not cluster.slices(ns, "etcd-k8s"), 20)
    cluster.create_service(ns, "etcd-k8s", ports=[("port", 2379, 2379)], headless=True)
    _etcd_endpoints(cluster)
    until_dig(kdns, name, "A", set(ETCD_IPS))
    srv = {f"0 33 2379 {dashed(ip)}.{name}." for ip in ETCD_IPS}
    until_dig(kdns, srv_name, "SRV", srv)
    wait_for("mirrored slices", lambda: _mirrored(cluster) == set(ETCD_IPS), 20)
    # Both forms exist now; no address may count twice.
    assert dig_reply(kdns, srv_name, "SRV").answer == srv
    assert dig_reply(kdns, name, "A").answer == set(ETCD_IPS)
    reply = ask(kdns.port, srv_name, "SRV")
    assert {r.split()[0] for r in reply.additional if " A " in r} == {
        f"{dashed(ip)}.{name}." for ip in ETCD_IPS
    }

    # skip-mirror: the mirroring controller removes its slices; Endpoints alone must serve.
    cluster.merge_patch(
        f"/api/v1/namespaces/{ns}/endpoints/etcd-k8s",
        {"metadata": {"labels": {SKIP_MIRROR: "true"}}},
    )
    wait_for("mirrored slices removed", lambda: not cluster.slices(ns, "etcd-k8s"), 20)
    assert dig_reply(kdns, name, "A").answer == set(ETCD_IPS)
    assert dig_reply(kdns, srv_name, "SRV").answer == srv
    # ...and changes to the Endpoints alone reach dig.
    cluster.merge_patch(
        f"/api/v1/namespaces/{ns}/endpoints/etcd-k8s",
        {
            "subsets": [
                {
                    "addresses": [
                        {"ip": ETCD_IPS[0], "nodeName": ETCD_NODES[0]},
                        {"ip": ETCD_IPS[1], "nodeName": ETCD_NODES[1]},
                    ],
                    "ports": [{"name": "port", "port": 2379, "protocol": "TCP"}],
                }
            ]
        },
    )
    until_dig(kdns, name, "A", set(ETCD_IPS[:2]))
    until_dig(kdns, srv_name, "SRV", {f"0 50 2379 {dashed(ip)}.{name}." for ip in ETCD_IPS[:2]})
    assert not cluster.slices(ns, "etcd-k8s")

    cluster.delete_service(ns, "etcd-k8s")
    cluster.delete(f"/api/v1/namespaces/{ns}/endpoints/etcd-k8s")
    until_dig(kdns, name, "A", set(), "NXDOMAIN")


# --------------------------------------------------------------------------- 3. least privilege


def deploy_documents() -> list[dict[str, Any]]:
    """The objects of deploy/: the resources its kustomization.yaml lists, in that namespace (the
    part of kustomize that matters here), or every manifest when there is no kustomization."""
    deploy = REPO / "deploy"
    if not deploy.is_dir():
        return []
    namespace = None
    kustomization = deploy / "kustomization.yaml"
    if kustomization.exists():
        k = yaml.safe_load(kustomization.read_text()) or {}
        namespace = k.get("namespace")
        paths = [deploy / r for r in k.get("resources") or []]
    else:
        paths = sorted([*deploy.rglob("*.yaml"), *deploy.rglob("*.yml")])
    docs: list[dict[str, Any]] = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or not doc.get("kind") or doc["kind"] == "Kustomization":
                continue
            docs.extend(doc.get("items") or [] if doc["kind"].endswith("List") else [doc])
    if namespace:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
            for subject in doc.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
    return docs


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "Node", "PriorityClass"}


def deploy_rbac() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
    """deploy/'s ServiceAccount, ClusterRole and the ClusterRoleBinding joining them, if any."""
    docs = deploy_documents()
    for binding in (d for d in docs if d["kind"] == "ClusterRoleBinding"):
        roles = [
            d
            for d in docs
            if d["kind"] == "ClusterRole" and d["metadata"]["name"] == binding["roleRef"]["name"]
        ]
        accounts = [
            d
            for d in docs
            if d["kind"] == "ServiceAccount"
            and any(
                s["kind"] == "ServiceAccount" and s["name"] == d["metadata"]["name"]
                for s in binding.get("subjects") or []
            )
        ]
        if roles and accounts:
            return accounts[0], roles[0], binding
    return None


def test_least_privilege(cluster: ControlPlane, node: str, tmp_path: Path) -> None:
    """A ServiceAccount token bound only to the ClusterRole kdns documents is enough to serve."""
    rbac = deploy_rbac()
    if rbac:
        # deploy/'s own ServiceAccount, ClusterRole and ClusterRoleBinding, applied for real.
        for obj in rbac:
            cluster.apply(_object_path(cluster, obj), obj)
        sa = rbac[0]["metadata"]
        kcfg = cluster.token_kubeconfig(sa["namespace"], sa["name"])
        print(f"RBAC from deploy/: ClusterRole {rbac[1]['metadata']['name']}")
    else:
        kcfg = cluster.service_account_kubeconfig("kdns-e2e", "kdns", KDNS_RULES, "kdns-e2e")
        print("RBAC: the rules of issue 4 (deploy/ has no ClusterRole yet)")
    token = json.loads(kcfg.read_text())["users"][0]["user"]["token"]

    # The token really is limited: no pods, no secrets, no writes.
    for path in ("/api/v1/pods", "/api/v1/secrets", "/api/v1/namespaces/default/configmaps"):
        with pytest.raises(ApiError) as err:
            cluster.request("GET", path, token=token)
        assert err.value.status == 403, path
    with pytest.raises(ApiError) as err:
        cluster.request(
            "POST",
            "/api/v1/namespaces/default/services",
            {"metadata": {"name": "x"}, "spec": {"ports": [{"port": 1}]}},
            token=token,
        )
    assert err.value.status == 403
    # The static user without any binding cannot even list services.
    with pytest.raises(ApiError) as err:
        cluster.request("GET", "/api/v1/services", token=LIMITED_TOKEN)
    assert err.value.status == 403

    ns = "rbac"
    cluster.create_namespace(ns)
    svc = cluster.create_service(ns, "web", selector={"app": "web"}, ports=[("http", 80, 80)])
    cluster.run_pod(ns, "web-0", node, {"app": "web"}, "10.5.0.1")
    cluster.create_service(ns, "manual", ports=[("port", 2379, 2379)], headless=True)
    cluster.create_endpoints(
        ns,
        "manual",
        [("10.5.1.1", ""), ("10.5.1.2", "")],
        [("port", 2379)],
        labels={SKIP_MIRROR: "true"},
    )
    wait_slices(cluster, ns, "web", {"10.5.0.1"})

    kp = start_kdns_for(cluster, tmp_path, kcfg)
    try:
        until_dig(kp, fqdn("web", ns), "A", {svc["spec"]["clusterIP"]})
        until_dig(kp, f"10-5-0-1.{fqdn('web', ns)}", "A", {"10.5.0.1"})
        until_dig(kp, fqdn("manual", ns), "A", {"10.5.1.1", "10.5.1.2"})
        # Namespaces are watched too: an existing one is NODATA, a missing one NXDOMAIN.
        assert dig_reply(kp, f"{ns}.svc.{ZONE}").rcode == "NOERROR"
        assert dig_reply(kp, f"no-such-ns.svc.{ZONE}").rcode == "NXDOMAIN"
        # A change after the start arrives through the watch.
        cluster.run_pod(ns, "web-1", node, {"app": "web"}, "10.5.0.2")
        until_dig(kp, f"10-5-0-2.{fqdn('web', ns)}", "A", {"10.5.0.2"})
        assert not refusals(kp.log())
    finally:
        kp.stop()
        for pod in ("web-0", "web-1"):
            cluster.delete_pod(ns, pod)


def _object_path(cp: ControlPlane, doc: dict[str, Any]) -> str:
    """The URL of a manifest's object, found through API discovery."""
    api_version = doc["apiVersion"]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    for res in cp.get(base)["resources"]:
        if res["kind"] == doc["kind"] and "/" not in res["name"]:
            name = doc["metadata"]["name"]
            if res["namespaced"]:
                ns = doc["metadata"].get("namespace", "default")
                return f"{base}/namespaces/{ns}/{res['name']}/{name}"
            return f"{base}/{res['name']}/{name}"
    raise AssertionError(f"the apiserver serves no {api_version} {doc['kind']}")


def test_deploy_manifests_dry_run(cluster: ControlPlane) -> None:
    """deploy/'s manifests pass a server-side dry run (apply, strict field validation)."""
    docs = deploy_documents()
    if not docs:
        pytest.skip("deploy/ has no manifests yet")
    for ns in {d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")}:
        cluster.create_namespace(ns)
    failures = []
    for doc in sorted(docs, key=lambda d: d["kind"] != "Namespace"):
        try:
            cluster.apply(_object_path(cluster, doc), doc, dry_run=True)
        except (ApiError, AssertionError) as err:
            failures.append(f"{doc['kind']} {doc['metadata'].get('name')}: {err}")
    print(f"deploy/: {len(docs)} objects dry-run: {sorted(d['kind'] for d in docs)}")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- 4. beside CoreDNS


@dataclass
class CoreDNS:
    port: int
    kdns_test: KdnsProcess  # kdns serving the stub domain kdns.test


@pytest.fixture(scope="module")
def coredns(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreDNS]:
    """CoreDNS's kubernetes plugin on the same apiserver, and a stub domain kdns.test -> kdns."""
    skip_or_fail(unavailable(("coredns",)))
    tmp = tmp_path_factory.mktemp("coredns")
    stub = start_kdns_for(cluster, tmp, cluster.admin_kubeconfig, "--domain", "kdns.test")

    def corefile(port: int, ready_port: int) -> str:
        return f"""\
{ZONE}:{port} in-addr.arpa:{port} ip6.arpa:{port} {{
    bind 127.0.0.1
    kubernetes {ZONE} in-addr.arpa ip6.arpa {{
        kubeconfig {cluster.admin_kubeconfig} admin
        pods insecure
        ttl 5
    }}
    ready 127.0.0.1:{ready_port}
}}
kdns.test:{port} {{
    bind 127.0.0.1
    forward . 127.0.0.1:{stub.port}
}}
"""

    try:
        with coredns_running(cluster, tmp, corefile) as port:
            yield CoreDNS(port, stub)
    finally:
        stub.stop()


Settle = list[tuple[str, str, int]]  # (ns, service, ready addresses) to wait for


@dataclass
class Workload:
    names: list[tuple[str, str]]  # (name, qtype) to ask both servers
    settle: Settle


def make_workload(
    cp: ControlPlane, node: str, served: Callable[[Settle], None] | None = None
) -> Workload:
    """ClusterIP and headless services, named and unnamed ports, ExternalName, manual endpoints,
    not-ready pods, hostnames, several namespaces; dual-stack and IPv6-only services, and two
    services whose families change once `served` (when given) has seen the servers answer
    about the workload as first created."""
    for ns in ("diff-a", "diff-b"):
        cp.create_namespace(ns)
    a, b = "diff-a", "diff-b"
    cips: list[str] = []
    ips: list[str] = []

    def svc(ns: str, name: str, **kw: Any) -> None:
        s = cp.create_service(ns, name, **kw)
        # Every ClusterIP: a dual-stack service has one per family, primary first.
        cips.extend(ip for ip in s["spec"].get("clusterIPs") or [] if ip not in ("None", ""))

    def pod(
        ns: str,
        name: str,
        labels: dict[str, str],
        ip: str | tuple[str, ...],
        ready: bool = True,
        **kw: Any,
    ) -> None:
        cp.run_pod(ns, name, node, labels, ip, ready, **kw)
        ips.extend((ip,) if isinstance(ip, str) else ip)

    svc(a, "web", selector={"app": "web"}, ports=[("http", 80, 8080), ("https", 443, 8443)])
    pod(a, "web-0", {"app": "web"}, "10.2.0.10")
    pod(a, "web-1", {"app": "web"}, "10.2.0.11")
    pod(a, "web-2", {"app": "web"}, "10.2.0.12", ready=False)
    svc(a, "unnamed", selector={"app": "unnamed"}, ports=[("", 9000, 9000)])
    pod(a, "unnamed-0", {"app": "unnamed"}, "10.2.0.20")
    svc(a, "hl", selector={"app": "hl"}, ports=[("db", 5432, 5432)], headless=True)
    pod(a, "hl-0", {"app": "hl"}, "10.2.0.30", hostname="hl-0", subdomain="hl")
    pod(a, "hl-1", {"app": "hl"}, "10.2.0.31", hostname="hl-1", subdomain="hl")
    pod(a, "hl-2", {"app": "hl"}, "10.2.0.32")
    pod(a, "hl-3", {"app": "hl"}, "10.2.0.33", ready=False, hostname="hl-3", subdomain="hl")
    svc(
        a,
        "hl-dns",
        selector={"app": "hldns"},
        headless=True,
        ports=[("dns", 53, 53), ("dns-tcp", 53, 53)],
        protocols={"dns": "UDP"},
    )
    pod(a, "hldns-0", {"app": "hldns"}, "10.2.0.40")
    svc(a, "hl-unnamed", selector={"app": "hlu"}, headless=True, ports=[("", 7000, 7001)])
    pod(a, "hlu-0", {"app": "hlu"}, "10.2.0.50")
    svc(a, "empty-hl", selector={"app": "nothing"}, headless=True, ports=[("x", 1, 1)])
    svc(a, "empty-cip", selector={"app": "nothing"}, ports=[("x", 1, 1)])
    svc(a, "ext", external_name="example.com")
    svc(a, "ext-in", external_name=f"web.{a}.svc.{ZONE}")
    # CNAMEs that lead nowhere: to themselves, round in two, to a name that does not exist.
    svc(a, "ext-self", external_name=f"ext-self.{a}.svc.{ZONE}")
    svc(a, "ext-loop1", external_name=f"ext-loop2.{a}.svc.{ZONE}")
    svc(a, "ext-loop2", external_name=f"ext-loop1.{a}.svc.{ZONE}")
    svc(a, "ext-gone", external_name=f"gone.{a}.svc.{ZONE}")
    svc(b, "manual", headless=True, ports=[("port", 2379, 2379)])
    cp.create_endpoints(
        b,
        "manual",
        [("10.3.0.1", ""), ("10.3.0.2", "")],
        [("port", 2379)],
        not_ready=[("10.3.0.3", "")],
    )
    ips += ["10.3.0.1", "10.3.0.2", "10.3.0.3"]
    svc(b, "manual-cip", ports=[("port", 2379, 2379)])
    cp.create_endpoints(b, "manual-cip", [("10.3.0.11", "")], [("port", 2379)])
    ips.append("10.3.0.11")
    svc(
        b,
        "pnr",
        selector={"app": "pnr"},
        headless=True,
        ports=[("p", 80, 80)],
        publish_not_ready=True,
    )
    pod(b, "pnr-0", {"app": "pnr"}, "10.3.0.20", ready=False)
    svc(b, "web", selector={"app": "web"}, ports=[("http", 80, 80)])
    pod(b, "web-0", {"app": "web"}, "10.3.0.30")
    # Manual Endpoints the control plane does not mirror: CoreDNS never sees them.
    svc(b, "skip", headless=True, ports=[("port", 2379, 2379)])
    cp.create_endpoints(b, "skip", [("10.3.0.40", "")], [("port", 2379)], labels={SKIP_MIRROR: "1"})
    ips.append("10.3.0.40")
    # A headless service with no ports at all (the web pods of diff-a).
    svc(a, "noports", selector={"app": "web"}, headless=True)
    # IPv6 endpoints from a hand-written slice, one with a hostname.
    svc(b, "v6", headless=True, ports=[("p", 80, 80)])
    cp.create(
        f"/apis/discovery.k8s.io/v1/namespaces/{b}/endpointslices",
        {
            "metadata": {
                "name": "v6-1",
                "labels": {
                    "kubernetes.io/service-name": "v6",
                    "endpointslice.kubernetes.io/managed-by": "e2e.kdns",
                },
            },
            "addressType": "IPv6",
            "endpoints": [
                {"addresses": [V6[0]], "hostname": "v6-0", "conditions": {"ready": True}},
                {"addresses": [V6[1]], "conditions": {"ready": True}},
            ],
            "ports": [{"name": "p", "port": 80, "protocol": "TCP"}],
        },
    )
    # Dual-stack (the control plane's service range has both families, IPv4 first): ClusterIP
    # services that require both families (IPv4 first, IPv6 first), prefer both, or want IPv6
    # alone, all selecting the same dual-stack pods (one IP per family; the endpointslice
    # controller writes one slice per family of the service); a headless dual-stack service of
    # those pods, with a hostname; and a selector-less dual-stack headless service whose
    # hand-written slices are one IPv4 and one IPv6.
    ds = {"app": "ds"}
    ds_ports = [("http", 80, 8080), ("https", 443, 8443)]
    svc(
        a,
        "ds",
        selector=ds,
        ports=ds_ports,
        ip_family_policy="RequireDualStack",
        ip_families=("IPv4", "IPv6"),
    )
    svc(
        a,
        "ds6",
        selector=ds,
        ports=ds_ports,
        ip_family_policy="RequireDualStack",
        ip_families=("IPv6", "IPv4"),
    )
    svc(a, "pds", selector=ds, ports=[("http", 80, 8080)], ip_family_policy="PreferDualStack")
    svc(
        a,
        "v6only",
        selector=ds,
        ports=[("http", 80, 8080)],
        ip_family_policy="SingleStack",
        ip_families=("IPv6",),
    )
    svc(
        a,
        "ds-hl",
        selector=ds,
        ports=[("http", 80, 8080)],
        headless=True,
        ip_family_policy="RequireDualStack",
        ip_families=("IPv4", "IPv6"),
    )
    pod(a, "ds-0", ds, DS_PODS[0], hostname="ds-0", subdomain="ds-hl")
    pod(a, "ds-1", ds, DS_PODS[1])
    pod(a, "ds-2", ds, DS_PODS[2], ready=False, hostname="ds-2", subdomain="ds-hl")
    svc(
        b,
        "ds-manual",
        headless=True,
        ports=[("port", 2379, 2379)],
        ip_family_policy="RequireDualStack",
        ip_families=("IPv4", "IPv6"),
    )
    for family, i in (("IPv4", 0), ("IPv6", 1)):
        cp.create(
            f"/apis/discovery.k8s.io/v1/namespaces/{b}/endpointslices",
            {
                "metadata": {
                    "name": f"ds-manual-{family.lower()}",
                    "labels": {
                        "kubernetes.io/service-name": "ds-manual",
                        "endpointslice.kubernetes.io/managed-by": "e2e.kdns",
                    },
                },
                "addressType": family,
                "endpoints": [
                    {
                        "addresses": [DS_MANUAL[0][i]],
                        "hostname": "m-0",
                        "conditions": {"ready": True},
                    },
                    {"addresses": [DS_MANUAL[1][i]], "conditions": {"ready": True}},
                    {"addresses": [DS_MANUAL[2][i]], "conditions": {"ready": False}},
                ],
                "ports": [{"name": "port", "port": 2379, "protocol": "TCP"}],
            },
        )
        ips.extend(pair[i] for pair in DS_MANUAL)
    # Changed after the servers have answered for them (below): ds-up, single-stack IPv4, turns
    # PreferDualStack (it gains an IPv6 ClusterIP); ds-down, dual-stack with IPv6 first, turns
    # SingleStack (its IPv4 ClusterIP goes, and is asked about as an address nobody has).
    svc(b, "ds-up", ports=[("http", 80, 8080)])
    svc(
        b,
        "ds-down",
        ports=[("http", 80, 8080)],
        ip_family_policy="PreferDualStack",
        ip_families=("IPv6", "IPv4"),
    )

    services = {
        a: [
            "web",
            "unnamed",
            "hl",
            "hl-dns",
            "hl-unnamed",
            "empty-hl",
            "empty-cip",
            "noports",
            "ext",
            "ext-in",
            "ext-self",
            "ext-loop1",
            "ext-loop2",
            "ext-gone",
            "ds",
            "ds6",
            "pds",
            "v6only",
            "ds-hl",
            "missing",
        ],
        b: [
            "manual",
            "manual-cip",
            "pnr",
            "web",
            "skip",
            "v6",
            "ds-manual",
            "ds-up",
            "ds-down",
            "missing",
        ],
    }
    settle = [
        (a, "web", 2),
        (a, "unnamed", 1),
        (a, "hl", 3),
        (a, "hl-dns", 1),
        (a, "hl-unnamed", 1),
        (b, "manual", 2),
        (b, "manual-cip", 1),
        (b, "pnr", 1),
        (b, "web", 1),
        (a, "noports", 2),
        (b, "v6", 2),
        # Two ready pods, an address in each family of the service.
        (a, "ds", 4),
        (a, "ds6", 4),
        (a, "pds", 4),
        (a, "v6only", 2),
        (a, "ds-hl", 4),
        (b, "ds-manual", 4),
    ]
    if served:
        served(settle)
    path = f"/api/v1/namespaces/{b}/services"
    up = cp.merge_patch(f"{path}/ds-up", {"spec": {"ipFamilyPolicy": "PreferDualStack"}})
    cips.extend(up["spec"]["clusterIPs"][1:])
    cp.merge_patch(f"{path}/ds-down", {"spec": {"ipFamilyPolicy": "SingleStack"}})
    return Workload(generated_questions(services, cips, ips), settle)


#: IPv6 endpoint addresses of the hand-written slice of diff-b/v6.
V6 = ("fd00:3::1", "fd00:3::2")
#: The dual-stack pods of diff-a's dual-stack services (IPv4, IPv6): ds-0 (hostname ds-0,
#: subdomain ds-hl), ds-1, ds-2 (not ready, hostname ds-2).
DS_PODS = (("10.2.0.60", "fd00:2::60"), ("10.2.0.61", "fd00:2::61"), ("10.2.0.62", "fd00:2::62"))
#: The endpoints of diff-b/ds-manual's hand-written IPv4 and IPv6 slices: m-0 (hostname), one
#: without a hostname, one not ready.
DS_MANUAL = (("10.3.0.60", "fd00:3::60"), ("10.3.0.61", "fd00:3::61"), ("10.3.0.62", "fd00:3::62"))
#: Dual-stack endpoint addresses asked by their dashed names under every service.
DS_ASKED = (DS_PODS[0][1], DS_PODS[1][0], DS_PODS[1][1], DS_PODS[2][1], DS_MANUAL[1][1])
#: Every type asked at every name: the common ones, ANY, and one no server knows.
QTYPES = ("A", "AAAA", "SRV", "PTR", "TXT", "CNAME", "NS", "SOA", "MX", "ANY", "TYPE65280")
#: (port, protocol) labels asked under every service: named over TCP and UDP, unnamed, unknown.
PORT_LABELS = (
    ("http", "tcp"),
    ("https", "tcp"),
    ("db", "tcp"),
    ("dns", "udp"),
    ("dns", "tcp"),
    ("dns-tcp", "tcp"),
    ("port", "tcp"),
    ("p", "tcp"),
    ("x", "tcp"),
    ("http", "udp"),
    ("nope", "tcp"),
    ("9000", "tcp"),
    ("", "tcp"),
)


def _reverse(address: str) -> str:
    """The reverse name of an IPv4 or IPv6 address (in-addr.arpa, ip6.arpa)."""
    return ipaddress.ip_address(address).reverse_pointer


def generated_questions(
    services: dict[str, list[str]], cips: list[str], ips: list[str]
) -> list[tuple[str, str]]:
    """Every name shape the specification has, and the shapes around it, each asked with every
    type in QTYPES; one name in three also in a random mix of letter case. Deterministic (a
    fixed seed), so a failure names questions that can be asked again. `cips`: every ClusterIP
    a service has or had (both families); `ips`: every endpoint address (both families)."""
    rng = random.Random(20261203)
    ips4 = [ip for ip in ips if ":" not in ip]
    shapes: list[str] = []
    zone_names = ["", "svc.", "pod.", "dns-version.", "ns.dns.", "dns.", "no-such."]
    shapes += [f"{n}{ZONE}" for n in zone_names]
    shapes += [f"x.y.z.{ZONE}", f"*.{ZONE}", f"*.svc.{ZONE}"]
    for ns, svcs in services.items():
        shapes += [f"{ns}.svc.{ZONE}", f"*.{ns}.svc.{ZONE}", f"any.{ns}.svc.{ZONE}"]
        shapes += [f"{ns}.pod.{ZONE}", f"not-an-ip.{ns}.pod.{ZONE}"]
        shapes += [f"{dashed(ip)}.{ns}.pod.{ZONE}" for ip in ips4[:2]]
        shapes += [f"fd00-3--1.{ns}.pod.{ZONE}", f"{dashed(DS_PODS[0][1])}.{ns}.pod.{ZONE}"]
        for svc in svcs:
            base = fqdn(svc, ns)
            shapes.append(base)
            for port, proto in PORT_LABELS:
                shapes.append(f"_{port}._{proto}.{base}" if port else f"_{proto}.{base}")
            shapes += [
                f"{h}.{base}" for h in ("hl-0", "hl-3", "v6-0", "ds-0", "ds-2", "m-0", "nope")
            ]
            shapes += [f"{dashed(ip)}.{base}" for ip in rng.sample(ips4, 3)]
            shapes += [f"{dashed(ip)}.{base}" for ip in (V6[1], *DS_ASKED)]
            shapes += [f"a.b.{base}", f"x.hl-0.{base}", f"*.{base}", f"_*._tcp.{base}"]
            shapes += [f"a.b.c.{base}", f"http.tcp.{base}"]
    shapes += [f"no-such-ns.svc.{ZONE}", f"10-2-0-10.nope.pod.{ZONE}"]
    # Every ClusterIP and endpoint address (IPv4 and IPv6), and addresses nothing has: in the
    # service ranges and outside them.
    for ip in [*cips, *ips, "10.96.250.250", "10.99.1.2", *V6, "fd00:3::99", "fd00:10:96::"]:
        shapes.append(_reverse(ip))
    # Partial reverse names: above a ClusterIP and an endpoint (empty non-terminals), above
    # nothing, and names no address spells.
    for address in (cips[0], ips[0]):
        octets = address.split(".")
        for keep in (1, 2, 3):
            shapes.append(".".join(reversed(octets[:keep])) + ".in-addr.arpa")
    full6 = _reverse(V6[0])
    shapes += [full6.split(".", 8)[-1], full6.split(".", 24)[-1], "f.f.ip6.arpa"]
    # ...and above an IPv6 ClusterIP (the service range's /112 is 4 nibbles short of it).
    cip6 = _reverse(next(ip for ip in cips if ":" in ip))
    shapes += [cip6.split(".", keep)[-1] for keep in (1, 2, 4, 5)]
    shapes += ["250.250.in-addr.arpa", "300.0.2.10.in-addr.arpa", "x.in-addr.arpa"]
    shapes += ["in-addr.arpa", "ip6.arpa"]
    questions = [(name, qtype) for name in dict.fromkeys(shapes) for qtype in QTYPES]
    mixed = [(_mixed_case(rng, n), t) for n, t in questions if rng.random() < 1 / 3]
    return questions + mixed


def _mixed_case(rng: random.Random, name: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


#: Differences from CoreDNS that are deliberate, with the reason; docs/coredns-differences.md
#: carries the same list. `classify` recognises each one narrowly, so anything else fails the test.
KNOWN_DIFFERENCES: dict[str, str] = {
    "srv-weight-after-dedup": (
        "Same SRV records, other weights: when two service ports give the same (target, port) "
        "(53/UDP and 53/TCP), or a dual-stack service gives the same record once per family (a "
        "ClusterIP service has two ClusterIPs, a headless endpoint's hostname has an address in "
        "each family), CoreDNS computes weight 100/N before dropping the duplicate and answers "
        "one record of weight 50; kdns deduplicates first and gives weight 100/N of the records "
        "it actually returns."
    ),
    "externalname-cname-every-type": (
        "ExternalName asked for a type other than A/SRV (TXT, MX, or AAAA when the in-zone target "
        "has no IPv6): CoreDNS answers NODATA without the CNAME; kdns answers the CNAME, as RFC "
        "1034 3.6.2 requires for every type but CNAME's own, so resolvers follow it."
    ),
    "externalname-chain-to-nothing": (
        "ExternalName whose chain inside the zone leads to no address (a service pointing at "
        "itself, two at each other, a target name that does not exist), asked A or AAAA: CoreDNS "
        "answers NODATA with no record; kdns answers the CNAMEs it followed, each once, with the "
        "last name's rcode (NXDOMAIN for a target that does not exist, RFC 6604), as a server "
        "following CNAMEs inside its own zone does (RFC 1034 4.3.2)."
    ),
    "nxdomain-means-no-name": (
        "svc.<zone> / pod.<zone> TXT and dns-version.<zone> A: CoreDNS says NXDOMAIN although it "
        "answers other types at these names; kdns says NODATA, since NXDOMAIN denies the name for "
        "every type (RFC 8020) and caches would then hide the existing records."
    ),
    "zone-ns-outside-cluster": (
        "<zone> NS: CoreDNS derives its NS record from the kube-dns service whose endpoints hold "
        "its own pod IP, which does not exist when it runs outside a cluster (here), so it answers "
        "NODATA; kdns always answers ns.dns.<zone>. as the specification describes."
    ),
    "reverse-empty-non-terminal": (
        "A partial reverse name above addresses that have PTR records (10.in-addr.arpa): CoreDNS "
        "parses only whole addresses and says NXDOMAIN; kdns says NODATA, since the name exists "
        "as an empty non-terminal (RFC 4592) and NXDOMAIN would deny every PTR below it (RFC 8020)."
    ),
    "soa-at-missing-name": (
        "SOA asked at a name that does not exist: CoreDNS answers NODATA without looking the "
        "name up; kdns answers NXDOMAIN, as for every other type there (RFC 8020: a name either "
        "exists or not, whatever the type)."
    ),
    "nxdomain-by-type": (
        "A name that exists (CoreDNS itself answers NOERROR there for another type), asked a "
        "type it has no records of: CoreDNS answers NXDOMAIN, kdns NODATA (RFC 2308 2.2; an "
        "NXDOMAIN would make caches hide the records the name has, RFC 8020)."
    ),
    "protocol-label-empty-non-terminal": (
        "_<proto>.<service> (e.g. _tcp.web.ns.svc.<zone>): CoreDNS answers NXDOMAIN; kdns NODATA, "
        "since _<port>._<proto>.<service> exists below it, so it is an empty non-terminal "
        "(RFC 4592), and an NXDOMAIN would deny the SRV names below it (RFC 8020)."
    ),
    "any-gets-records": (
        "ANY: CoreDNS's kubernetes plugin answers NODATA (NXDOMAIN where it does so for unknown "
        "types); kdns answers the records the name has (RFC 8482 lets a server answer ANY with "
        "some or all of them)."
    ),
    "pod-srv-port-0": (
        "SRV at a pod name: CoreDNS makes up an SRV record with port 0 pointing at the name; kdns "
        "answers NODATA, since the specification defines only A/AAAA records for pod names and a "
        "port-0 SRV tells a client nothing it can use."
    ),
    "reverse-zone-soa-names": (
        "SOA at in-addr.arpa / ip6.arpa: CoreDNS names ns.dns.in-addr.arpa. and "
        "hostmaster.in-addr.arpa., which do not resolve; kdns names ns.dns.<cluster domain>. and "
        "hostmaster.<cluster domain>."
    ),
    "srv-target-case": (
        "Same SRV records up to letter case of the target: CoreDNS copies the question's case into "
        "the target name, kdns writes the canonical (lower-case) name. Owner names keep the "
        "question's case in both; names compare case-insensitively."
    ),
}


def _srv_key(rr: str, weight: bool) -> str:
    owner, _, prio, w, port, target = rr.split()
    return f"{owner} {prio} {w if weight else '-'} {port} {target}"


def _nodata(r: Reply) -> bool:
    return r.rcode == "NOERROR" and not r.answer


def classify(
    name: str,
    qtype: str,
    k: Reply,
    c: Reply,
    coredns_noerror: frozenset[str] = frozenset(),
    zone: str = ZONE,
) -> str | None:
    """The KNOWN_DIFFERENCES key that explains a difference, or None. `coredns_noerror`: the
    (lower-case) names where CoreDNS answered NOERROR for some type. `zone`: the zone asked
    (the clusterset differential shares the classes that are not the cluster zone's own)."""
    lname = name.lower().rstrip(".")
    labels = lname.split(".")
    if qtype == "SRV" and k.rcode == c.rcode == "NOERROR":
        kl, cl = {r.lower() for r in k.answer}, {r.lower() for r in c.answer}
        if kl == cl:
            return "srv-target-case"
        if {_srv_key(r, False) for r in kl} == {_srv_key(r, False) for r in cl}:
            return "srv-weight-after-dedup"
    if (
        labels[0].startswith("ext")  # the workload's ExternalName services
        and qtype not in ("A", "CNAME", "SRV")
        and k.rcode == c.rcode == "NOERROR"
        and not c.answer
        and k.answer
        and all(" CNAME " in r for r in k.answer)
    ):
        return "externalname-cname-every-type"
    if (
        labels[0].startswith("ext")
        and qtype in ("A", "AAAA")
        and (k.rcode, c.rcode) in (("NOERROR", "NOERROR"), ("NXDOMAIN", "NOERROR"))
        and not c.answer
        and k.answer
        and all(" CNAME " in r for r in k.answer)
    ):
        return "externalname-chain-to-nothing"
    if (
        lname in (f"svc.{zone}", f"pod.{zone}", f"dns-version.{zone}")
        and (k.rcode, c.rcode) == ("NOERROR", "NXDOMAIN")
        and not k.answer
    ):
        return "nxdomain-means-no-name"
    if qtype == "ANY" and k.rcode == "NOERROR" and k.answer and not c.answer:
        return "any-gets-records"
    # Outside a cluster CoreDNS has no NS record: no ns.dns.<zone> name, no dns.<zone> above it.
    if lname in (f"ns.dns.{zone}", f"dns.{zone}") and k.rcode == "NOERROR" and not c.answer:
        return "zone-ns-outside-cluster"
    if lname in (zone, "in-addr.arpa", "ip6.arpa") and qtype == "NS" and k.answer and _nodata(c):
        return "zone-ns-outside-cluster"
    if (
        lname in ("in-addr.arpa", "ip6.arpa")
        and qtype == "SOA"
        and k.rcode == c.rcode == "NOERROR"
        and {r.split()[0] for r in k.answer} == {r.split()[0] for r in c.answer}
    ):
        return "reverse-zone-soa-names"
    if qtype == "SOA" and k.rcode == "NXDOMAIN" and _nodata(c):
        return "soa-at-missing-name"
    if (
        (
            (lname.endswith(".in-addr.arpa") and len(labels) < 6)
            or (lname.endswith(".ip6.arpa") and len(labels) < 34)
        )
        and (k.rcode, c.rcode) == ("NOERROR", "NXDOMAIN")
        and not k.answer
    ):
        return "reverse-empty-non-terminal"
    if (
        len(labels) == 4 + len(zone.split("."))
        and labels[0] in ("_tcp", "_udp", "_sctp")
        and labels[3] == "svc"
        and (k.rcode, c.rcode) == ("NOERROR", "NXDOMAIN")
        and not k.answer
    ):
        return "protocol-label-empty-non-terminal"
    if _nodata(k) and c.rcode == "NXDOMAIN" and lname in coredns_noerror:
        return "nxdomain-by-type"
    if (
        labels[2:3] == ["pod"]
        and qtype == "SRV"
        and _nodata(k)
        and c.rcode == "NOERROR"
        and all(r.split()[4] == "0" for r in c.answer)
    ):
        return "pod-srv-port-0"
    return None


def _has_ready(cp: ControlPlane, ns: str, svc: str, n: int) -> bool:
    return len(cp.slice_addresses(ns, svc)) == n


def _serves_api_state(cp: ControlPlane, port: int, namespaces: tuple[str, ...]) -> bool:
    """The server at `port` knows every service of `namespaces` and every ready endpoint of
    their slices, as the API has them now (a service's name exists; a headless service answers
    its ready addresses; a ClusterIP service answers its ClusterIPs (A and AAAA), the PTR of
    each names it, and it answers each ready endpoint's dashed name)."""
    for ns in namespaces:
        for svc in cp.get(f"/api/v1/namespaces/{ns}/services")["items"]:
            svc_name = svc["metadata"]["name"]
            name = fqdn(svc_name, ns)
            ready = cp.slice_addresses(ns, svc_name)
            if svc["spec"].get("clusterIP") == "None":
                got = {r.split()[-1] for t in ("A", "AAAA") for r in ask(port, name, t).answer}
                if ready and got != ready:
                    return False
                continue
            if ask(port, name, "TXT").rcode != "NOERROR":
                return False
            cluster_ips = set(svc["spec"].get("clusterIPs") or [])
            if cluster_ips:
                got = {r.split()[-1] for t in ("A", "AAAA") for r in ask(port, name, t).answer}
                if got != cluster_ips:
                    return False
                for ip in cluster_ips:
                    if f"{name}." not in {
                        r.split()[-1] for r in ask(port, _reverse(ip), "PTR").answer
                    }:
                        return False
            if not all(
                ask(port, f"{dashed(ip)}.{name}", "AAAA" if ":" in ip else "A").answer
                for ip in ready
            ):
                return False
    return True


def test_differential_against_coredns(
    cluster: ControlPlane, kdns: KdnsProcess, coredns: CoreDNS, node: str
) -> None:
    """Every name of a generated workload, asked of kdns and of CoreDNS: rcode and answers agree."""

    def served(settle: Settle) -> None:
        for ns, svc, n in settle:
            wait_for(
                f"{ns}/{svc} to have {n} ready endpoints",
                functools.partial(_has_ready, cluster, ns, svc, n),
                20,
            )
        # Both servers (same apiserver, separate watches) serve what the API holds now.
        for server, port in (("kdns", kdns.port), ("coredns", coredns.port)):
            wait_for(
                f"{server} to serve the workload as the API has it",
                functools.partial(_serves_api_state, cluster, port, ("diff-a", "diff-b")),
                20,
                0.1,
            )

    # Served once as created (the ClusterIPs' names and PTRs asked), and again after the changes.
    work = make_workload(cluster, node, served)
    served(work.settle)

    report: list[str] = []
    unexplained: list[str] = []
    info: list[str] = []
    explained: dict[str, int] = {}
    same = 0
    rng = random.Random(7)
    over_tcp = 0
    replies: list[tuple[str, str, Reply, Reply]] = []
    for name, qtype in work.names:
        k, c = ask(kdns.port, name, qtype), ask(coredns.port, name, qtype)
        replies.append((name, qtype, k, c))
        if rng.random() < 1 / 3:
            # The same question over TCP: each server answers it as it did over UDP.
            over_tcp += 1
            for server, port, udp in (("kdns", kdns.port, k), ("coredns", coredns.port, c)):
                tcp = ask(port, name, qtype, tcp=True)
                if (tcp.rcode, tcp.answer) != (udp.rcode, udp.answer):
                    unexplained.append(
                        f"{name} {qtype}: {server} over TCP {tcp.short()}, over UDP {udp.short()}"
                    )
    noerror = frozenset(n.lower().rstrip(".") for n, _, _, c in replies if c.rcode == "NOERROR")
    for name, qtype, k, c in replies:
        if (k.rcode, k.answer) == (c.rcode, c.answer):
            same += 1
            # Not asserted: authority (SOA serials masked) and additional sections, for the report.
            for section in ("authority", "additional"):
                ks, cs = getattr(k, section), getattr(c, section)
                if ks != cs:
                    info.append(
                        f"[info: {section}] {name} {qtype}\n    kdns:    {sorted(ks)}\n"
                        f"    coredns: {sorted(cs)}"
                    )
            continue
        line = f"{name} {qtype}\n    kdns:    {k.short()}\n    coredns: {c.short()}"
        key = classify(name, qtype, k, c, noerror)
        if key:
            explained[key] = explained.get(key, 0) + 1
            report.append(f"[known: {key}] {line}")
        else:
            unexplained.append(line)
            report.append(f"[UNEXPLAINED] {line}")
    summary = (
        f"differential: {len(work.names)} questions ({over_tcp} also over TCP), {same} identical, "
        f"{sum(explained.values())} known differences {explained}, {len(unexplained)} unexplained"
        f"; {len(info)} authority/additional differences (not asserted)"
    )
    out = Path(os.environ.get("KDNS_E2E_REPORT", cluster.workdir / "coredns-differences.txt"))
    out.write_text(summary + "\n\n" + "\n".join(report + info) + "\n")
    print(summary, f"(details in {out})")
    assert not unexplained, summary + "\n" + "\n".join(unexplained[:40])


def test_stub_domain_through_coredns(cluster: ControlPlane, coredns: CoreDNS, node: str) -> None:
    """CoreDNS forwards kdns.test to kdns: same answers, positive and negative, UDP and TCP."""
    ns = "stub"
    cluster.create_namespace(ns)
    svc = cluster.create_service(ns, "api", selector={"app": "api"}, ports=[("http", 80, 80)])
    cluster.run_pod(ns, "api-0", node, {"app": "api"}, "10.4.0.1")
    cluster.create_service(
        ns, "api-hl", selector={"app": "api"}, ports=[("http", 80, 80)], headless=True
    )
    wait_slices(cluster, ns, "api-hl", {"10.4.0.1"})
    z = "kdns.test"
    questions = [
        (fqdn("api", ns, z), "A", "NOERROR"),
        (fqdn("api-hl", ns, z), "A", "NOERROR"),
        (f"_http._tcp.{fqdn('api-hl', ns, z)}", "SRV", "NOERROR"),
        (f"10-4-0-1.{fqdn('api', ns, z)}", "A", "NOERROR"),
        (fqdn("api", ns, z), "AAAA", "NOERROR"),  # NODATA
        (fqdn("missing", ns, z), "A", "NXDOMAIN"),
        (f"no-such-ns.svc.{z}", "A", "NXDOMAIN"),
        (f"dns-version.{z}", "TXT", "NOERROR"),
    ]
    direct = coredns.kdns_test
    wait_for(
        "kdns.test to serve the stub service",
        lambda: ask(direct.port, f"10-4-0-1.{fqdn('api', ns, z)}").answer,
        20,
    )
    assert ask(direct.port, fqdn("api", ns, z)).answer == {
        f"{fqdn('api', ns, z)}. A {svc['spec']['clusterIP']}"
    }
    for name, qtype, rcode in questions:
        want = ask(direct.port, name, qtype)
        assert want.rcode == rcode, (name, qtype, want)
        for tcp in (False, True):
            got = ask(coredns.port, name, qtype, tcp=tcp)
            assert (got.rcode, got.answer) == (want.rcode, want.answer), (name, qtype, tcp, got)
            if rcode == "NXDOMAIN" or not want.answer:
                # Negative answers keep kdns's SOA, so caches downstream can cache them.
                assert got.authority == want.authority and got.authority, (name, qtype, got)
    # The same through dig over UDP and TCP.
    via = KdnsProcess(direct.proc, port=coredns.port)
    for tcp in (False, True):
        assert dig_reply(via, fqdn("api", ns, z), tcp=tcp).answer == {svc["spec"]["clusterIP"]}
        assert dig_reply(via, fqdn("missing", ns, z), tcp=tcp).rcode == "NXDOMAIN"


# --------------------------------------------------------------------------- 5. --workers


def _watches_now(cp: ControlPlane) -> dict[str, float]:
    text = cp.request("GET", "/metrics", raw=True)
    out: dict[str, float] = {}
    for line in str(text).splitlines():
        if line.startswith("apiserver_longrunning_requests{") and 'verb="WATCH"' in line:
            labels, value = line.rsplit(" ", 1)
            resource = labels.split('resource="', 1)[1].split('"', 1)[0]
            out[resource] = out.get(resource, 0.0) + float(value)
    return out


def _watches(cp: ControlPlane, timeout: float = 20.0) -> dict[str, float]:
    """Open WATCH requests by resource, from kube-apiserver's own /metrics, once they have held
    still for a second (other clients, the controllers among them, come and go)."""
    deadline = time.monotonic() + timeout
    last = _watches_now(cp)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = _watches_now(cp)
        if now == last:
            return now
        last = now
    raise AssertionError(f"kube-apiserver's watches never held still: {last}")


def test_workers_share_one_watch_of_the_real_apiserver(
    cluster: ControlPlane, node: str, tmp_path: Path
) -> None:
    """kdns --workers 2: one watch per kind on kube-apiserver, every process follows changes."""
    before = _watches(cluster)
    kp = start_kdns_for(cluster, tmp_path, cluster.admin_kubeconfig, "--workers", "2")
    try:
        ns = "workers"
        cluster.create_namespace(ns)
        svc = cluster.create_service(ns, "web", selector={"app": "web"}, ports=[("http", 80, 80)])
        cluster.create_service(
            ns, "web-hl", selector={"app": "web"}, ports=[("http", 80, 80)], headless=True
        )
        cluster.run_pod(ns, "web-0", node, {"app": "web"}, "10.7.0.1")
        wait_slices(cluster, ns, "web-hl", {"10.7.0.1"})
        until_dig(kp, fqdn("web-hl", ns), "A", {"10.7.0.1"})
        # Whichever process the kernel hands a query to answers the same.
        for _ in range(40):
            assert ask(kp.port, fqdn("web", ns)).answer == {
                f"{fqdn('web', ns)}. A {svc['spec']['clusterIP']}"
            }
            assert ask(kp.port, fqdn("web-hl", ns)).answer == {f"{fqdn('web-hl', ns)}. A 10.7.0.1"}
        after = _watches(cluster)
        added = {r: after.get(r, 0.0) - before.get(r, 0.0) for r in after}
        # services, endpointslices, endpoints, namespaces: one watch each, not one per process
        assert {r: n for r, n in added.items() if n} == {
            "services": 1.0,
            "endpointslices": 1.0,
            "endpoints": 1.0,
            "namespaces": 1.0,
        }, added
        status, metrics = kp.http_get("/metrics")
        assert status == 200 and "kdns_workers_ready 2.0" in metrics
        # A headless service without ready endpoints is NXDOMAIN, in every process at once.
        cluster.delete_pod(ns, "web-0")
        until_dig(kp, fqdn("web-hl", ns), "A", set(), "NXDOMAIN")
        for _ in range(20):
            assert ask(kp.port, fqdn("web-hl", ns)).rcode == "NXDOMAIN"
    finally:
        kp.stop()


# --------------------------------------------------------------------------- 6. apiserver restart


def test_watch_survives_apiserver_restart(
    cluster: ControlPlane, kdns: KdnsProcess, node: str
) -> None:
    """Answers continue while kube-apiserver is down; changes after its return arrive."""
    ns = "restart"
    cluster.create_namespace(ns)
    before = cluster.create_service(ns, "before", selector={"app": "x"}, ports=[("p", 80, 80)])
    name = fqdn("before", ns)
    until_dig(kdns, name, "A", {before["spec"]["clusterIP"]})

    t_stop = time.monotonic()
    cluster.stop_apiserver()
    t_down = time.monotonic()
    outage_end = time.monotonic() + 3
    seen: set[str] = set()
    while time.monotonic() < outage_end:
        r = dig_reply(kdns, name)
        seen.add(r.short())
        time.sleep(0.1)
    cluster.start_apiserver()
    t_up = time.monotonic()
    assert seen == {Reply("NOERROR", frozenset({before["spec"]["clusterIP"]})).short()}, seen

    t0 = time.monotonic()
    after = cluster.create_service(ns, "after", selector={"app": "x"}, ports=[("p", 80, 80)])
    elapsed = until_dig(kdns, fqdn("after", ns), "A", {after["spec"]["clusterIP"]}, timeout=60)
    print(
        f"apiserver stop {t_down - t_stop:.1f}s, down {t_up - t_down:.1f}s; "
        f"first change after the restart reached dig in {elapsed:.2f}s "
        f"({time.monotonic() - t0:.2f}s after the write)"
    )
    cluster.delete_service(ns, "before")
    until_dig(kdns, name, "A", set(), "NXDOMAIN")
    # The controllers come back too, on their own backoff (up to ~30 s): wait for them through the
    # API, then kdns must follow as usual.
    t_pod = time.monotonic()
    cluster.run_pod(ns, "x-0", node, {"app": "x"}, "10.6.0.1")
    wait_slices(cluster, ns, "after", {"10.6.0.1"}, timeout=90)
    t_slice = time.monotonic()
    until_dig(kdns, f"10-6-0-1.{fqdn('after', ns)}", "A", {"10.6.0.1"})
    print(
        f"after the restart the controllers wrote a slice in {t_slice - t_pod:.1f}s, "
        f"dig saw it {time.monotonic() - t_slice:.2f}s later"
    )
    cluster.delete_pod(ns, "x-0")


def test_truncated_answers_carry_the_records_that_fit_as_corednss_do(
    cluster: ControlPlane, kdns: KdnsProcess, coredns: CoreDNS
) -> None:
    """A headless service of 100 hand-written endpoints: its A answer (100 records) and SRV answer
    do not fit 512 bytes (no EDNS) nor 1232 (EDNS). Over UDP both servers send TC=1 with the
    whole records that fit, as many of them; CoreDNS shuffles them, so only the count and that
    they belong to the answer are compared. (kdns sent none before 2026-12-05.)"""
    ns, svc = "trunc", "many"
    cluster.create_namespace(ns)
    cluster.create_service(ns, svc, headless=True, ports=[("port", 80, 80)])
    addresses = [f"10.9.{i // 200}.{i % 200 + 1}" for i in range(100)]
    cluster.create_endpoints(ns, svc, [(a, "") for a in addresses], [("port", 80)])
    name = f"{svc}.{ns}.svc.{ZONE}"
    for port in (kdns.port, coredns.port):
        wait_for(
            f"{port} to serve the 100 addresses",
            lambda port=port: len(ask(port, name, tcp=True).answer) == 100,
            20,
        )
    for qname, qtype in ((name, "A"), (f"_port._tcp.{name}", "SRV")):
        whole = {r.lower() for r in ask(kdns.port, qname, qtype, tcp=True).answer}
        for payload in (None, 1232):
            counts = []
            for port in (kdns.port, coredns.port):
                q = dns.message.make_query(
                    qname, qtype, use_edns=payload is not None, payload=payload or 512
                )
                wire = dns.query.udp(q, "127.0.0.1", port=port, timeout=3).to_wire()
                r = dns.message.from_wire(wire)
                assert r.flags & dns.flags.TC and len(wire) <= (payload or 512), (port, len(wire))
                kept = {
                    f"{rrset.name.to_text()} {qtype} {rd.to_text()}".lower()
                    for rrset in r.answer
                    for rd in rrset
                }
                assert kept <= whole, (port, sorted(kept - whole))
                counts.append(len(kept))
            assert counts[0] == counts[1] > 0, (qname, qtype, payload, counts)
