"""Objects that expose services beyond cluster.local, written as their controllers would write them.

For the external zone (CoreDNS k8s_external's names, and Ingress / Gateway API host names) and for
clusterset.local (the Multi-Cluster Services API): LoadBalancer services whose
status.loadBalancer.ingress a cloud controller would fill, Ingresses with the status an ingress
controller writes, Gateways and routes with a Gateway controller's status, and ServiceImports with
the EndpointSlices an MCS controller writes. Every status goes through the status subresource, and
every write asks for strict field validation, so a field the schema does not know is an error
rather than silently pruned.

The MCS and Gateway API kinds need CRDs: `install_crds` installs deploy/crds/'s minimal ones.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testkit.controlplane import ApiError, ControlPlane, wait_for

Obj = dict[str, Any]

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "deploy" / "crds"
CRDS_API = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
STRICT = "fieldValidation=Strict&fieldManager=kdns-e2e"
GATEWAY_API = "/apis/gateway.networking.k8s.io/v1"
MCS_API = "/apis/multicluster.x-k8s.io/v1alpha1"
ROUTE_PLURALS = {"HTTPRoute": "httproutes", "GRPCRoute": "grpcroutes", "TLSRoute": "tlsroutes"}
#: The labels of an EndpointSlice an MCS controller imports (KEP-1645).
MCS_SERVICE_NAME = "multicluster.kubernetes.io/service-name"
MCS_SOURCE_CLUSTER = "multicluster.kubernetes.io/source-cluster"
GATEWAY_CONTROLLER = "kdns.e2e/gateway-controller"
MCS_CONTROLLER = "mcs-controller.kdns.e2e"  # a label value: no "/"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _condition(kind: str, reason: str, generation: int = 1) -> Obj:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": f"set by the e2e harness ({reason})",
        "lastTransitionTime": _now(),
        "observedGeneration": generation,
    }


def create(cp: ControlPlane, collection: str, obj: Obj) -> Obj:
    """POST `obj` to `collection` with strict field validation."""
    return cp.create(f"{collection}?{STRICT}", obj)


def write_status(cp: ControlPlane, path: str, status: Obj) -> Obj:
    """Merge-patch `status` into the object at `path` through its status subresource (strict)."""
    return cp.merge_patch(f"{path}/status?{STRICT}", {"status": status})


# --------------------------------------------------------------------------- CRDs


def crd_paths(folder: Path = CRD_DIR) -> list[Path]:
    """The CRD files `folder`'s kustomization.yaml lists, in its order."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return [folder / r for r in k["resources"]]


def _established_crd(cp: ControlPlane, name: str) -> Obj | None:
    """CRD `name` if its Established condition is True, else None."""
    crd = cp.get(f"{CRDS_API}/{name}")
    conditions = (crd.get("status") or {}).get("conditions") or []
    ok = any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
    return crd if ok else None


def install_crds(
    cp: ControlPlane, paths: Iterable[Path] | None = None, timeout: float = 30.0
) -> list[Obj]:
    """Create (or replace) each CRD of `paths` (default: deploy/crds/), wait until each is
    Established and its resource can be listed; the CRDs as the apiserver stored them."""
    docs = [
        doc
        for path in (crd_paths() if paths is None else paths)
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    for doc in docs:
        assert doc["kind"] == "CustomResourceDefinition", doc["kind"]
        try:
            create(cp, CRDS_API, doc)
        except ApiError as err:
            if err.status != 409:
                raise
            name = doc["metadata"]["name"]
            rv = cp.get(f"{CRDS_API}/{name}")["metadata"]["resourceVersion"]
            replaced = {**doc, "metadata": {**doc["metadata"], "resourceVersion": rv}}
            cp.request("PUT", f"{CRDS_API}/{name}?{STRICT}", replaced)
    stored = []
    for doc in docs:
        name = doc["metadata"]["name"]
        crd = wait_for(
            f"CRD {name} to be Established",
            functools.partial(_established_crd, cp, name),
            timeout,
            0.1,
        )
        spec = doc["spec"]
        version = next(v["name"] for v in spec["versions"] if v.get("storage"))
        collection = f"/apis/{spec['group']}/{version}/{spec['names']['plural']}"
        wait_for(f"{collection} to be served", functools.partial(cp.get, collection), timeout, 0.1)
        stored.append(crd)
    return stored


def delete_crds(cp: ControlPlane, paths: Iterable[Path] | None = None) -> None:
    for path in crd_paths() if paths is None else paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                cp.delete(f"{CRDS_API}/{doc['metadata']['name']}")


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class Port:
    name: str  # "" for an unnamed port (a service with a single port)
    port: int
    protocol: str = "TCP"
    app_protocol: str | None = None

    def service_port(self, target: bool = True) -> Obj:
        out: Obj = {"port": self.port, "protocol": self.protocol}
        if self.name:
            out["name"] = self.name
        if target:
            out["targetPort"] = self.port
        if self.app_protocol:
            out["appProtocol"] = self.app_protocol
        return out


def create_exposed_service(
    cp: ControlPlane,
    ns: str,
    name: str,
    *,
    svc_type: str = "ClusterIP",
    ports: Sequence[Port] = (),
    external_ips: Sequence[str] = (),
    headless: bool = False,
    selector: dict[str, str] | None = None,
    ip_family_policy: str | None = None,
) -> Obj:
    """A Service of `svc_type` (ClusterIP, NodePort, LoadBalancer; `headless`: clusterIP None) with
    `external_ips` in spec.externalIPs (either family)."""
    spec: Obj = {"type": svc_type, "ports": [p.service_port() for p in ports]}
    if headless:
        spec["clusterIP"] = "None"
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    if selector is not None:
        spec["selector"] = selector
    if ip_family_policy:
        spec["ipFamilyPolicy"] = ip_family_policy
    return create(
        cp,
        f"/api/v1/namespaces/{ns}/services",
        {"metadata": {"name": name, "namespace": ns}, "spec": spec},
    )


def lb_ingress(
    ips: Sequence[str] = (), hostnames: Sequence[str] = (), both: Sequence[tuple[str, str]] = ()
) -> list[Obj]:
    """status.loadBalancer.ingress entries: one per IP, one per hostname, one per (ip, hostname)."""
    return [
        *({"ip": ip} for ip in ips),
        *({"hostname": h} for h in hostnames),
        *({"ip": ip, "hostname": h} for ip, h in both),
    ]


def set_lb_ingress(
    cp: ControlPlane,
    ns: str,
    name: str,
    *,
    ips: Sequence[str] = (),
    hostnames: Sequence[str] = (),
    both: Sequence[tuple[str, str]] = (),
) -> Obj:
    """What a cloud's service controller writes for a LoadBalancer Service: its ingress points
    (an empty list clears them), through the Service's status subresource."""
    ingress = lb_ingress(ips, hostnames, both)
    return write_status(
        cp, f"/api/v1/namespaces/{ns}/services/{name}", {"loadBalancer": {"ingress": ingress}}
    )


# --------------------------------------------------------------------------- Ingress


def create_ingress(
    cp: ControlPlane,
    ns: str,
    name: str,
    hosts: Sequence[str],
    *,
    service: str,
    port: int = 80,
    ips: Sequence[str] = (),
    hostnames: Sequence[str] = (),
    ingress_class: str = "e2e",
) -> Obj:
    """A networking.k8s.io/v1 Ingress with one rule per host (path / to `service`:`port`), and,
    when `ips`/`hostnames` are given, the status.loadBalancer.ingress an ingress controller
    writes (through the status subresource)."""
    backend = {"service": {"name": service, "port": {"number": port}}}
    rules = [
        {
            "host": host,
            "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
        }
        for host in hosts
    ]
    path = f"/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses"
    obj = create(
        cp,
        path,
        {
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ingressClassName": ingress_class, "rules": rules},
        },
    )
    if ips or hostnames:
        obj = set_ingress_status(cp, ns, name, ips=ips, hostnames=hostnames)
    return obj


def set_ingress_status(
    cp: ControlPlane,
    ns: str,
    name: str,
    *,
    ips: Sequence[str] = (),
    hostnames: Sequence[str] = (),
) -> Obj:
    ingress = lb_ingress(ips, hostnames)
    return write_status(
        cp,
        f"/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses/{name}",
        {"loadBalancer": {"ingress": ingress}},
    )


# --------------------------------------------------------------------------- Gateway API


@dataclass(frozen=True)
class Listener:
    name: str
    port: int
    protocol: str = "HTTP"
    hostname: str | None = None

    def obj(self) -> Obj:
        out: Obj = {"name": self.name, "port": self.port, "protocol": self.protocol}
        if self.hostname:
            out["hostname"] = self.hostname
        return out


def gateway_path(ns: str, name: str = "") -> str:
    return f"{GATEWAY_API}/namespaces/{ns}/gateways" + (f"/{name}" if name else "")


def create_gateway(
    cp: ControlPlane,
    ns: str,
    name: str,
    listeners: Sequence[Listener],
    *,
    addresses: Sequence[tuple[str, str]] = (),
    gateway_class: str = "e2e",
) -> Obj:
    """A gateway.networking.k8s.io/v1 Gateway; `addresses` ((type, value): IPAddress, Hostname,
    ...) are written to status.addresses, with Accepted and Programmed conditions, as its
    controller would (through the status subresource)."""
    obj = create(
        cp,
        gateway_path(ns),
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "gatewayClassName": gateway_class,
                "listeners": [listener.obj() for listener in listeners],
            },
        },
    )
    if addresses:
        obj = set_gateway_addresses(cp, ns, name, addresses)
    return obj


def set_gateway_addresses(
    cp: ControlPlane, ns: str, name: str, addresses: Sequence[tuple[str, str]]
) -> Obj:
    status = {
        "addresses": [{"type": t, "value": v} for t, v in addresses],
        "conditions": [_condition("Accepted", "Accepted"), _condition("Programmed", "Programmed")],
    }
    return write_status(cp, gateway_path(ns, name), status)


@dataclass(frozen=True)
class ParentRef:
    name: str
    namespace: str | None = None
    section_name: str | None = None
    port: int | None = None
    kind: str = "Gateway"
    group: str = "gateway.networking.k8s.io"

    def obj(self) -> Obj:
        out: Obj = {"group": self.group, "kind": self.kind, "name": self.name}
        if self.namespace:
            out["namespace"] = self.namespace
        if self.section_name:
            out["sectionName"] = self.section_name
        if self.port:
            out["port"] = self.port
        return out


def route_path(kind: str, ns: str, name: str = "") -> str:
    return f"{GATEWAY_API}/namespaces/{ns}/{ROUTE_PLURALS[kind]}" + (f"/{name}" if name else "")


def create_route(
    cp: ControlPlane,
    kind: str,
    ns: str,
    name: str,
    *,
    parents: Sequence[ParentRef],
    hostnames: Sequence[str],
    backend: tuple[str, int] | None = None,
    accepted: bool = True,
) -> Obj:
    """An HTTPRoute, GRPCRoute or TLSRoute (v1) attached to `parents` with `hostnames`, one rule
    to `backend` (service, port) when given; `accepted`: its controller's status.parents (an
    Accepted condition per parent), written through the status subresource."""
    spec: Obj = {"parentRefs": [p.obj() for p in parents], "hostnames": list(hostnames)}
    if backend:
        spec["rules"] = [{"backendRefs": [{"name": backend[0], "port": backend[1]}]}]
    obj = create(
        cp,
        route_path(kind, ns),
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        },
    )
    if accepted:
        status = {
            "parents": [
                {
                    "parentRef": p.obj(),
                    "controllerName": GATEWAY_CONTROLLER,
                    "conditions": [_condition("Accepted", "Accepted")],
                }
                for p in parents
            ]
        }
        obj = write_status(cp, route_path(kind, ns, name), status)
    return obj


# --------------------------------------------------------------------------- MCS API


def service_import_path(ns: str, name: str = "") -> str:
    return f"{MCS_API}/namespaces/{ns}/serviceimports" + (f"/{name}" if name else "")


def create_service_import(
    cp: ControlPlane,
    ns: str,
    name: str,
    *,
    import_type: str = "ClusterSetIP",
    ips: Sequence[str] = (),
    ports: Sequence[Port] = (),
    clusters: Sequence[str] = (),
    session_affinity: str | None = None,
) -> Obj:
    """A ServiceImport as an MCS controller writes it: spec.type, spec.ips (ClusterSetIP), the
    ports; then `clusters` in status.clusters (through the status subresource)."""
    spec: Obj = {"type": import_type, "ports": [p.service_port(target=False) for p in ports]}
    if ips:
        spec["ips"] = list(ips)
    if session_affinity:
        spec["sessionAffinity"] = session_affinity
    obj = create(
        cp,
        service_import_path(ns),
        {
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceImport",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        },
    )
    if clusters:
        obj = write_status(
            cp, service_import_path(ns, name), {"clusters": [{"cluster": c} for c in clusters]}
        )
    return obj


def create_service_export(cp: ControlPlane, ns: str, name: str, *, valid: bool = True) -> Obj:
    """A ServiceExport of service ns/name, with the Valid condition its controller writes."""
    path = f"{MCS_API}/namespaces/{ns}/serviceexports"
    obj = create(
        cp,
        path,
        {
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceExport",
            "metadata": {"name": name, "namespace": ns},
            "spec": {},
        },
    )
    if valid:
        obj = write_status(cp, f"{path}/{name}", {"conditions": [_condition("Valid", "Exported")]})
    return obj


@dataclass(frozen=True)
class McsEndpoint:
    address: str
    hostname: str | None = None
    ready: bool = True


def create_mcs_slice(
    cp: ControlPlane,
    ns: str,
    service_import: str,
    cluster: str | None,
    endpoints: Sequence[McsEndpoint],
    *,
    ports: Sequence[Port] = (),
    address_type: str = "IPv4",
    name: str | None = None,
) -> Obj:
    """An EndpointSlice an MCS controller imports from `cluster` for ServiceImport ns/name:
    labelled multicluster.kubernetes.io/service-name and .../source-cluster (not
    kubernetes.io/service-name: it belongs to no Service of this cluster). `cluster` None: a
    faulty controller's slice without the source-cluster label."""
    labels = {
        MCS_SERVICE_NAME: service_import,
        MCS_SOURCE_CLUSTER: cluster,
        "endpointslice.kubernetes.io/managed-by": MCS_CONTROLLER,
    }
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service_import}-{cluster or 'unknown'}-{address_type.lower()}",
            "namespace": ns,
            "labels": {k: v for k, v in labels.items() if v is not None},
        },
        "addressType": address_type,
        "endpoints": [
            {
                "addresses": [ep.address],
                "conditions": {"ready": ep.ready},
                **({"hostname": ep.hostname} if ep.hostname else {}),
            }
            for ep in endpoints
        ],
        "ports": [
            {
                "name": p.name,
                "port": p.port,
                "protocol": p.protocol,
                **({"appProtocol": p.app_protocol} if p.app_protocol else {}),
            }
            for p in ports
        ],
    }
    return create(cp, f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", body)


def mcs_slices(cp: ControlPlane, ns: str, service_import: str) -> list[Obj]:
    """The imported slices of ServiceImport ns/name (by the MCS service-name label)."""
    sel = f"{MCS_SERVICE_NAME}%3D{service_import}"
    got = cp.get(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector={sel}")
    return list(got.get("items") or [])
