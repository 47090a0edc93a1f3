"""deploy/crds/ on the real control plane: the minimal MCS and Gateway API CRDs install and become
Established, and the objects their controllers would write (with status through the status
subresource), plus LoadBalancer services and Ingresses with their status, are stored as written
under strict field validation. The helpers live in testkit/exposure.py for the DNS tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from testkit.controlplane import ApiError, ControlPlane
from testkit.exposure import (
    CRD_DIR,
    CRDS_API,
    MCS_API,
    MCS_SERVICE_NAME,
    MCS_SOURCE_CLUSTER,
    STRICT,
    Listener,
    McsEndpoint,
    ParentRef,
    Port,
    crd_paths,
    create,
    create_exposed_service,
    create_gateway,
    create_ingress,
    create_mcs_slice,
    create_route,
    create_service_export,
    create_service_import,
    gateway_path,
    install_crds,
    mcs_slices,
    route_path,
    service_import_path,
    set_lb_ingress,
)

pytestmark = pytest.mark.timeout(120)

Obj = dict[str, Any]
NS = "crd-a"
OTHER_NS = "crd-b"
#: The only fields kept unvalidated (x-kubernetes-preserve-unknown-fields): none of them is read by
#: DNS; they are there so that manifests written for the upstream APIs pass strict validation.
OPAQUE_FIELDS = {"rules[]", "tls", "allowedRoutes", "infrastructure", "listeners[]"}
#: Every kind deploy/crds/ defines: (group, version, kind, namespaced, has a status).
KINDS = {
    ("multicluster.x-k8s.io", "v1alpha1", "ServiceImport", True, True),
    ("multicluster.x-k8s.io", "v1alpha1", "ServiceExport", True, True),
    ("gateway.networking.k8s.io", "v1", "Gateway", True, True),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute", True, True),
    ("gateway.networking.k8s.io", "v1", "GRPCRoute", True, True),
    ("gateway.networking.k8s.io", "v1", "TLSRoute", True, True),
}


def _docs() -> list[Obj]:
    return [d for p in crd_paths() for d in yaml.safe_load_all(p.read_text()) if d]


def _opaque(schema: Obj, path: str = "") -> Iterator[str]:
    """The paths in `schema` that keep unknown fields."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        yield path
    for name, sub in (schema.get("properties") or {}).items():
        yield from _opaque(sub, f"{path}.{name}" if path else name)
    if "items" in schema:
        yield from _opaque(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _opaque(schema["additionalProperties"], f"{path}{{}}")


def test_crd_files_are_minimal_and_structural() -> None:
    """Without a cluster: the kustomization lists every file; each CRD is v1, of the expected
    kinds, typed (no preserve-unknown-fields but on fields DNS does not read), with the status
    subresource wherever its schema has a status."""
    listed = {p.name for p in crd_paths()}
    assert listed == {p.name for p in CRD_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    kinds = set()
    for doc in _docs():
        assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
        spec = doc["spec"]
        assert doc["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
        if spec["group"].endswith(".k8s.io"):  # a protected group: the apiserver insists
            assert doc["metadata"]["annotations"]["api-approved.kubernetes.io"]
        for v in spec["versions"]:
            schema = v["schema"]["openAPIV3Schema"]
            props = schema["properties"]
            has_status = "status" in props
            kinds.add((spec["group"], v["name"], spec["names"]["kind"], True, has_status))
            assert spec["scope"] == "Namespaced"
            assert ("status" in (v.get("subresources") or {})) == has_status
            opaque = {p.rsplit(".", 1)[-1] for p in _opaque(schema)}
            assert opaque <= OPAQUE_FIELDS, (spec["names"]["kind"], opaque)
            assert "spec" in props and props["spec"]["type"] == "object"
    assert kinds == KINDS


@pytest.fixture(scope="module")
def crds(cluster: ControlPlane) -> list[Obj]:
    """deploy/crds/ installed (Established, served) on the session's control plane. They stay for
    the rest of the session: later tests (the external zone, clusterset.local) use them."""
    stored = install_crds(cluster)
    for ns in (NS, OTHER_NS):
        cluster.create_namespace(ns)
    return stored


def test_crds_are_established(cluster: ControlPlane, crds: list[Obj]) -> None:
    assert {c["metadata"]["name"] for c in crds} == {d["metadata"]["name"] for d in _docs()}
    for crd in crds:
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", crd["metadata"]["name"]
        assert conditions.get("NamesAccepted") == "True", crd["metadata"]["name"]
        assert "NonStructuralSchema" not in conditions, crd["metadata"]["name"]
        if "KubernetesAPIApprovalPolicyConformant" in conditions:
            assert conditions["KubernetesAPIApprovalPolicyConformant"] == "True"
    # Discovery lists each kind, with its status subresource.
    for group, version, kind, _, has_status in KINDS:
        resources = cluster.get(f"/apis/{group}/{version}")["resources"]
        names = {r["name"] for r in resources if r["kind"] == kind}
        plural = next(n for n in names if "/" not in n)
        assert (f"{plural}/status" in names) == has_status, (kind, names)
    # Installing again (as a second test module would) replaces them in place.
    again = install_crds(cluster)
    assert [c["metadata"]["uid"] for c in again] == [c["metadata"]["uid"] for c in crds]


def _rejected(call: Any, status: int, *words: str) -> None:
    with pytest.raises(ApiError) as err:
        call()
    assert err.value.status == status, err.value
    message = json.loads(err.value.body)["message"]
    for word in words:
        assert word in message, message


def test_mcs_objects(cluster: ControlPlane, crds: list[Obj]) -> None:
    """A ServiceImport per type, with status.clusters through /status; a ServiceExport; the
    imported EndpointSlices of two clusters, found by the MCS labels only."""
    ports = (Port("tcp", 5432), Port("dns", 53, "UDP"), Port("grpc", 9090, "TCP", "grpc"))
    imp = create_service_import(
        cluster,
        NS,
        "db",
        ips=("10.200.0.10", "fd00:200::10"),
        ports=ports,
        clusters=("east", "west"),
        session_affinity="None",
    )
    assert imp["spec"]["type"] == "ClusterSetIP"
    assert imp["spec"]["ips"] == ["10.200.0.10", "fd00:200::10"]
    assert imp["spec"]["ports"] == [
        {"name": "tcp", "port": 5432, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "grpc", "port": 9090, "protocol": "TCP", "appProtocol": "grpc"},
    ]
    stored = cluster.get(service_import_path(NS, "db"))
    assert stored["status"] == {"clusters": [{"cluster": "east"}, {"cluster": "west"}]}
    assert stored["spec"] == imp["spec"]

    # The status subresource is the only way to status: a status in a spec write is dropped...
    cluster.merge_patch(
        f"{service_import_path(NS, 'db')}?{STRICT}",
        {"status": {"clusters": [{"cluster": "north"}]}},
    )
    assert cluster.get(service_import_path(NS, "db"))["status"] == stored["status"]
    # ...and /status leaves the spec alone.
    cluster.merge_patch(
        f"{service_import_path(NS, 'db')}/status?{STRICT}", {"spec": {"type": "Headless"}}
    )
    assert cluster.get(service_import_path(NS, "db"))["spec"]["type"] == "ClusterSetIP"

    hl = create_service_import(
        cluster, NS, "cache", import_type="Headless", ports=(Port("", 6379),), clusters=("east",)
    )
    assert "ips" not in hl["spec"]
    create_service_export(cluster, NS, "cache")
    export = cluster.get(f"{MCS_API}/namespaces/{NS}/serviceexports/cache")
    assert [c["type"] for c in export["status"]["conditions"]] == ["Valid"]

    create_mcs_slice(
        cluster,
        NS,
        "cache",
        "east",
        [McsEndpoint("10.10.1.1", "cache-0"), McsEndpoint("10.10.1.2", "cache-1", ready=False)],
        ports=(Port("", 6379),),
    )
    create_mcs_slice(
        cluster,
        NS,
        "cache",
        "west",
        [McsEndpoint("fd00:20::1", "cache-0"), McsEndpoint("fd00:20::2")],
        ports=(Port("", 6379),),
        address_type="IPv6",
    )
    slices = {
        s["metadata"]["labels"][MCS_SOURCE_CLUSTER]: s for s in mcs_slices(cluster, NS, "cache")
    }
    assert set(slices) == {"east", "west"}
    assert slices["east"]["addressType"] == "IPv4"
    assert [
        (e["addresses"], e.get("hostname"), e["conditions"]["ready"])
        for e in slices["east"]["endpoints"]
    ] == [
        (["10.10.1.1"], "cache-0", True),
        (["10.10.1.2"], "cache-1", False),
    ]
    assert slices["west"]["addressType"] == "IPv6"
    assert slices["west"]["endpoints"][1].get("hostname") is None
    for s in slices.values():
        assert s["metadata"]["labels"][MCS_SERVICE_NAME] == "cache"
        assert "kubernetes.io/service-name" not in s["metadata"]["labels"]
    assert cluster.slices(NS, "cache") == []  # no Service of this cluster owns them

    # Strict validation: the types and enums hold, unknown fields are errors.
    _rejected(
        lambda: create_service_import(cluster, NS, "bad", import_type="Bogus"),
        422,
        "spec.type",
    )
    _rejected(
        lambda: create(
            cluster,
            service_import_path(NS),
            {
                "apiVersion": "multicluster.x-k8s.io/v1alpha1",
                "kind": "ServiceImport",
                "metadata": {"name": "bad"},
                "spec": {"type": "ClusterSetIP", "ports": [], "ip": ["10.0.0.1"]},
            },
        ),
        400,
        'unknown field "spec.ip"',
    )
    _rejected(
        lambda: create_service_import(cluster, NS, "bad", ips=("1.1.1.1", "2.2.2.2", "3.3.3.3")),
        422,
        "spec.ips",
    )


def test_gateway_api_objects(cluster: ControlPlane, crds: list[Obj]) -> None:
    """A Gateway with status.addresses through /status; an HTTPRoute, a GRPCRoute and a TLSRoute
    attached to it (one from another namespace, one to a listener), with their status.parents."""
    gw = create_gateway(
        cluster,
        NS,
        "edge",
        [
            Listener("http", 80),
            Listener("https", 443, "HTTPS", "*.shop.crd.test"),
            Listener("tls", 8443, "TLS", "secure.crd.test"),
        ],
        addresses=(
            ("IPAddress", "192.0.2.10"),
            ("IPAddress", "2001:db8::10"),
            ("Hostname", "lb-1.cloud.example.net"),
        ),
    )
    assert gw["status"]["addresses"] == [
        {"type": "IPAddress", "value": "192.0.2.10"},
        {"type": "IPAddress", "value": "2001:db8::10"},
        {"type": "Hostname", "value": "lb-1.cloud.example.net"},
    ]
    assert [c["type"] for c in gw["status"]["conditions"]] == ["Accepted", "Programmed"]
    assert [lst["name"] for lst in gw["spec"]["listeners"]] == ["http", "https", "tls"]
    assert gw["spec"]["listeners"][1]["hostname"] == "*.shop.crd.test"

    http = create_route(
        cluster,
        "HTTPRoute",
        NS,
        "web",
        parents=(ParentRef("edge"),),
        hostnames=("www.crd.test", "www2.crd.test"),
        backend=("web", 80),
    )
    # The apiserver defaults a parentRef's group and kind as upstream does; ours are explicit.
    assert http["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}
    ]
    assert http["spec"]["hostnames"] == ["www.crd.test", "www2.crd.test"]
    assert http["status"]["parents"][0]["parentRef"]["name"] == "edge"
    assert http["spec"]["rules"] == [{"backendRefs": [{"name": "web", "port": 80}]}]

    grpc = create_route(
        cluster,
        "GRPCRoute",
        OTHER_NS,
        "api",
        parents=(ParentRef("edge", namespace=NS, section_name="https", port=443),),
        hostnames=("api.shop.crd.test",),
    )
    assert grpc["spec"]["parentRefs"][0] == {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": "edge",
        "namespace": NS,
        "sectionName": "https",
        "port": 443,
    }
    tls = create_route(
        cluster,
        "TLSRoute",
        NS,
        "secure",
        parents=(ParentRef("edge", section_name="tls"),),
        hostnames=("secure.crd.test",),
        backend=("secure", 8443),
    )
    assert tls["status"]["parents"][0]["conditions"][0]["type"] == "Accepted"
    for kind, ns, name in (("HTTPRoute", NS, "web"), ("GRPCRoute", OTHER_NS, "api")):
        assert cluster.get(route_path(kind, ns, name))["status"]["parents"]

    # A parentRef written without group/kind gets upstream's defaults.
    bare = create(
        cluster,
        route_path("HTTPRoute", NS),
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "bare"},
            "spec": {"parentRefs": [{"name": "edge"}], "hostnames": ["bare.crd.test"]},
        },
    )
    assert bare["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}
    ]
    # A route as upstream's examples write it (matches, filters...) passes strict validation.
    create(
        cluster,
        route_path("HTTPRoute", NS),
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "upstream-shape"},
            "spec": {
                "parentRefs": [{"name": "edge", "sectionName": "http"}],
                "hostnames": ["shape.crd.test"],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                        "filters": [
                            {
                                "type": "RequestHeaderModifier",
                                "requestHeaderModifier": {"add": [{"name": "x", "value": "1"}]},
                            }
                        ],
                        "backendRefs": [{"name": "web", "port": 80, "weight": 1}],
                    }
                ],
            },
        },
    )

    # Strict validation on what DNS reads.
    _rejected(
        lambda: create_route(
            cluster, "HTTPRoute", NS, "bad", parents=(ParentRef("edge"),), hostnames=("Bad_Host",)
        ),
        422,
        "spec.hostnames",
    )
    _rejected(
        lambda: create_route(cluster, "TLSRoute", NS, "bad", parents=(), hostnames=()),
        422,
        "spec.hostnames",
    )
    _rejected(
        lambda: create(
            cluster,
            gateway_path(NS),
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {"name": "bad"},
                "spec": {
                    "gatewayClassName": "e2e",
                    "listeners": [{"name": "l", "port": 80, "protocol": "HTTP", "hostnames": []}],
                },
            },
        ),
        400,
        'unknown field "spec.listeners[0].hostnames"',
    )
    _rejected(
        lambda: create_gateway(cluster, NS, "bad", []),
        422,
        "spec.listeners",
    )
    _rejected(
        lambda: cluster.merge_patch(
            f"{gateway_path(NS, 'edge')}/status?{STRICT}",
            {"status": {"addresses": [{"type": "IPAddress"}]}},
        ),
        422,
        "value",
    )


def test_load_balancer_services_and_ingress(cluster: ControlPlane, crds: list[Obj]) -> None:
    """LoadBalancer services with status.loadBalancer.ingress (ip, hostname, both) through the
    Service /status; an Ingress (built in) with rules' hosts and its status through /status."""
    create_exposed_service(
        cluster,
        NS,
        "lb",
        svc_type="LoadBalancer",
        ports=(Port("http", 80), Port("dns", 53, "UDP")),
        external_ips=("198.51.100.7",),
    )
    got = set_lb_ingress(
        cluster,
        NS,
        "lb",
        ips=("203.0.113.5",),
        hostnames=("lb.cloud.example.net",),
        both=(("203.0.113.6", "lb-2.cloud.example.net"),),
    )
    # The apiserver defaults ipMode (VIP) where there is an IP.
    ingress = got["status"]["loadBalancer"]["ingress"]
    assert [e.pop("ipMode", None) for e in ingress] == ["VIP", None, "VIP"]
    assert ingress == [
        {"ip": "203.0.113.5"},
        {"hostname": "lb.cloud.example.net"},
        {"ip": "203.0.113.6", "hostname": "lb-2.cloud.example.net"},
    ]
    svc = cluster.get(f"/api/v1/namespaces/{NS}/services/lb")
    assert svc["spec"]["externalIPs"] == ["198.51.100.7"]
    assert all(p.get("nodePort") for p in svc["spec"]["ports"])
    assert set_lb_ingress(cluster, NS, "lb")["status"]["loadBalancer"] == {}

    create_exposed_service(cluster, NS, "web", ports=(Port("", 80),))
    ing = create_ingress(
        cluster,
        NS,
        "web",
        ("shop.crd.test", "*.wild.crd.test"),
        service="web",
        ips=("192.0.2.20", "2001:db8::20"),
        hostnames=("ing.cloud.example.net",),
    )
    assert [r["host"] for r in ing["spec"]["rules"]] == ["shop.crd.test", "*.wild.crd.test"]
    assert ing["status"]["loadBalancer"]["ingress"] == [
        {"ip": "192.0.2.20"},
        {"ip": "2001:db8::20"},
        {"hostname": "ing.cloud.example.net"},
    ]
    # The apiserver checks what it can: an ingress IP must be an IP.
    _rejected(lambda: set_lb_ingress(cluster, NS, "lb", ips=("not-an-ip",)), 422, "ip")
    # A status in a write of the Ingress itself is ignored.
    cluster.merge_patch(
        f"/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses/web",
        {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.99"}]}}},
    )
    again = cluster.get(f"/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses/web")
    assert again["status"] == ing["status"]


def test_crds_listed_by_the_apiserver(cluster: ControlPlane, crds: list[Obj]) -> None:
    """The CRDs carry kdns's part-of label, so `kubectl get crd -l` finds what deploy/crds/ put."""
    got = cluster.get(f"{CRDS_API}?labelSelector=app.kubernetes.io%2Fpart-of%3Dkdns")
    assert {c["metadata"]["name"] for c in got["items"]} >= {d["metadata"]["name"] for d in _docs()}
