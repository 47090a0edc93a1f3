"""trim(): Kubernetes API JSON, as the apiserver sends it, to the records of kdns.state.model."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kdns.sources.trim import TrimError, trim
from kdns.state.model import (
    Endpoint,
    EndpointPort,
    EndpointSet,
    Namespace,
    Service,
    ServicePort,
    Subset,
)

Json = dict[str, Any]

# -- Services ------------------------------------------------------------------------------------

KUBE_DNS: Json = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"},
        "creationTimestamp": "2024-05-02T10:11:12Z",
        "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
        "name": "kube-dns",
        "namespace": "kube-system",
        "resourceVersion": "231",
        "uid": "5a1d3c3e-7c1b-4bd4-9f52-3d2f5f1f2a10",
    },
    "spec": {
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10"],
        "internalTrafficPolicy": "Cluster",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
        ],
        "selector": {"k8s-app": "kube-dns"},
        "sessionAffinity": "None",
        "type": "ClusterIP",
    },
    "status": {"loadBalancer": {}},
}


def service_json(name: str = "web", namespace: str | None = "default", **spec: Any) -> Json:
    meta: Json = {"name": name, "resourceVersion": "1", "uid": "u-1"}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"metadata": meta, "spec": spec, "status": {"loadBalancer": {}}}


def test_clusterip_service() -> None:
    assert trim("Service", KUBE_DNS) == Service(
        namespace="kube-system",
        name="kube-dns",
        type="ClusterIP",
        cluster_ips=("10.96.0.10",),
        headless=False,
        external_name="",
        ports=(
            ServicePort("dns", 53, "UDP"),
            ServicePort("dns-tcp", 53, "TCP"),
            ServicePort("metrics", 9153, "TCP"),
        ),
        publish_not_ready=False,
        selector=(("k8s-app", "kube-dns"),),
    )


@pytest.mark.parametrize(
    ("spec", "ips", "headless"),
    [
        pytest.param(
            {
                "type": "ClusterIP",
                "clusterIP": "10.96.5.5",
                "clusterIPs": ["10.96.5.5", "fd00:10:96::5"],
                "ipFamilies": ["IPv4", "IPv6"],
                "ipFamilyPolicy": "RequireDualStack",
            },
            ("10.96.5.5", "fd00:10:96::5"),
            False,
            id="dual-stack",
        ),
        pytest.param(
            {"clusterIP": "fd00:10:96::5", "clusterIPs": ["fd00:10:96::5", "10.96.5.5"]},
            ("fd00:10:96::5", "10.96.5.5"),
            False,
            id="dual-stack IPv6 first",
        ),
        pytest.param({"clusterIP": "10.96.5.6"}, ("10.96.5.6",), False, id="clusterIP only"),
        pytest.param(
            {"clusterIP": "None", "clusterIPs": ["None"], "type": "ClusterIP"},
            (),
            True,
            id="headless",
        ),
        pytest.param({"clusterIP": "None"}, (), True, id="headless clusterIP only"),
        pytest.param({}, (), False, id="missing clusterIP"),
        pytest.param({"clusterIP": ""}, (), False, id="empty clusterIP"),
        pytest.param({"clusterIP": None, "clusterIPs": None}, (), False, id="null clusterIP"),
        pytest.param(
            {"type": "NodePort", "clusterIP": "10.96.7.7", "clusterIPs": ["10.96.7.7"]},
            ("10.96.7.7",),
            False,
            id="NodePort",
        ),
    ],
)
def test_service_addresses(spec: Json, ips: tuple[str, ...], headless: bool) -> None:
    svc = trim("Service", service_json(**spec))
    assert isinstance(svc, Service)
    assert svc.cluster_ips == ips
    assert svc.headless is headless


def test_headless_service_publishing_not_ready_addresses() -> None:
    svc = trim(
        "Service",
        service_json(
            "etcd",
            clusterIP="None",
            clusterIPs=["None"],
            publishNotReadyAddresses=True,
            ports=[{"name": "peer", "port": 2380, "targetPort": 2380}],
            selector={"app": "etcd"},
        ),
    )
    assert svc == Service(
        "default",
        "etcd",
        headless=True,
        ports=(ServicePort("peer", 2380, "TCP"),),
        publish_not_ready=True,
        selector=(("app", "etcd"),),
    )


def test_node_port_and_load_balancer_keep_their_cluster_ips() -> None:
    node_port = trim(
        "Service",
        service_json(
            type="NodePort",
            clusterIP="10.96.7.7",
            clusterIPs=["10.96.7.7"],
            ports=[{"name": "http", "nodePort": 30080, "port": 80, "protocol": "TCP"}],
        ),
    )
    assert node_port == Service(
        "default", "web", "NodePort", ("10.96.7.7",), ports=(ServicePort("http", 80),)
    )
    lb = trim(
        "Service",
        service_json(type="LoadBalancer", clusterIP="10.96.7.8", clusterIPs=["10.96.7.8"]),
    )
    assert isinstance(lb, Service)
    assert (lb.type, lb.cluster_ips) == ("LoadBalancer", ("10.96.7.8",))


@pytest.mark.parametrize(
    ("target", "want"),
    [
        ("my.database.example.com", "my.database.example.com"),
        ("My.Database.Example.COM.", "my.database.example.com"),
        ("web.default.svc.cluster.local", "web.default.svc.cluster.local"),
        ("1.2.3.4", "1.2.3.4"),
    ],
)
def test_external_name_service(target: str, want: str) -> None:
    svc = trim(
        "Service",
        service_json(
            "db", "prod", type="ExternalName", externalName=target, sessionAffinity="None"
        ),
    )
    assert svc == Service("prod", "db", "ExternalName", external_name=want)


def test_external_name_ignores_cluster_ips() -> None:
    svc = trim(
        "Service",
        service_json(type="ExternalName", externalName="example.com", clusterIP="None"),
    )
    assert isinstance(svc, Service)
    assert (svc.cluster_ips, svc.headless, svc.external_name) == ((), False, "example.com")


def test_external_name_field_ignored_for_other_types() -> None:
    svc = trim("Service", service_json(clusterIP="10.96.0.9", externalName="example.com"))
    assert isinstance(svc, Service)
    assert svc.external_name == ""


@pytest.mark.parametrize(
    ("ports", "want"),
    [
        ([{"port": 8080, "targetPort": 80}], (ServicePort("", 8080, "TCP"),)),
        ([{"name": "dns", "port": 53, "protocol": "UDP"}], (ServicePort("dns", 53, "UDP"),)),
        ([{"name": "sip", "port": 5060, "protocol": "sctp"}], (ServicePort("sip", 5060, "SCTP"),)),
        ([{"name": None, "port": 80, "protocol": None}], (ServicePort("", 80, "TCP"),)),
        (
            [{"name": "http", "port": 80, "targetPort": "http-web", "appProtocol": "http"}],
            (ServicePort("http", 80, "TCP"),),
        ),
        (None, ()),
        ([], ()),
    ],
)
def test_service_ports(ports: Any, want: tuple[ServicePort, ...]) -> None:
    svc = trim("Service", service_json(clusterIP="10.96.0.9", ports=ports))
    assert isinstance(svc, Service)
    assert svc.ports == want


def test_service_defaults() -> None:
    svc = trim("Service", {"metadata": {"name": "bare"}})
    assert svc == Service("default", "bare")
    assert trim("Service", service_json(selector={})) == Service("default", "web")
    assert trim("Service", {"metadata": {"name": "s"}, "spec": None}) == Service("default", "s")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (service_json(ports=[{"name": "web", "port": "http"}]), r"spec\.ports\[0\]\.port.*'http'"),
        (
            service_json(ports=[{"name": "a", "port": 80}, {"name": "b", "port": 70000}]),
            r"spec\.ports\[1\]\.port.*70000",
        ),
        (service_json(ports=[{"port": -1}]), r"spec\.ports\[0\]\.port"),
        (service_json(ports=[{"port": True}]), r"spec\.ports\[0\]\.port"),
        (service_json(ports=[{"port": 80.5}]), r"spec\.ports\[0\]\.port"),
        (service_json(ports=[{}]), r"spec\.ports\[0\]\.port.*None"),
        (service_json(ports=[{"port": 80, "protocol": "HTTP"}]), r"spec\.ports\[0\]\.protocol"),
        (service_json(ports={"port": 80}), r"spec\.ports must be a list"),
        (service_json(ports=["80"]), r"spec\.ports\[0\] must be a mapping"),
        (service_json(clusterIP="bogus"), r"not an IP address: 'bogus'"),
        (service_json(clusterIPs=["10.96.0.1", "bogus"]), r"spec\.clusterIPs\[1\].*'bogus'"),
        (service_json(clusterIP="10.96.0.300"), r"'10\.96\.0\.300'"),
        (service_json(clusterIP=10), r"spec\.clusterIP must be a string"),
        (service_json(type="Bogus"), r"spec\.type.*'Bogus'"),
        (service_json(type="ExternalName"), r"spec\.externalName is required"),
        ({"metadata": {"namespace": "default"}, "spec": {}}, r"metadata\.name is missing"),
        ({"metadata": {"name": ""}}, r"metadata\.name is missing"),
        ({"spec": {"clusterIP": "10.96.0.1"}}, r"metadata\.name is missing"),
        ({"metadata": {"name": 5}}, r"metadata\.name must be a string"),
        ({"metadata": []}, r"metadata must be a mapping"),
        ({"metadata": {"name": "web"}, "spec": []}, r"spec must be a mapping"),
    ],
)
def test_service_errors(obj: Json, message: str) -> None:
    with pytest.raises(TrimError, match=message):
        trim("Service", obj)


# -- EndpointSlices ------------------------------------------------------------------------------

KUBE_DNS_SLICE: Json = {
    "addressType": "IPv4",
    "apiVersion": "discovery.k8s.io/v1",
    "endpoints": [
        {
            "addresses": ["10.244.0.2"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": "node-1",
            "targetRef": {
                "kind": "Pod",
                "name": "coredns-5d78c9869d-7xk2p",
                "namespace": "kube-system",
                "uid": "0d4b0e7c-9c56-4d43-bf65-0b3a3c8d2b11",
            },
        },
        {
            "addresses": ["10.244.0.3"],
            "conditions": {"ready": False, "serving": False, "terminating": False},
            "nodeName": "node-2",
            "targetRef": {"kind": "Pod", "name": "coredns-5d78c9869d-q9wz8"},
        },
    ],
    "kind": "EndpointSlice",
    "metadata": {
        "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2024-05-02T10:11:40Z"},
        "generateName": "kube-dns-",
        "generation": 3,
        "labels": {
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            "k8s-app": "kube-dns",
            "kubernetes.io/service-name": "kube-dns",
        },
        "name": "kube-dns-m8vhq",
        "namespace": "kube-system",
        "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "kube-dns"}],
        "resourceVersion": "498",
        "uid": "e0e7f4a4-3c2d-4f6b-8d0a-41f0c9e2f1d3",
    },
    "ports": [
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "metrics", "port": 9153, "protocol": "TCP"},
    ],
}


def slice_json(
    endpoints: Any, *, address_type: str = "IPv4", service: str | None = "web", ports: Any = None
) -> Json:
    labels = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    if service is not None:
        labels["kubernetes.io/service-name"] = service
    return {
        "addressType": address_type,
        "endpoints": endpoints,
        "metadata": {"name": "web-abc12", "namespace": "default", "labels": labels},
        "ports": ports,
    }


def test_endpoint_slice() -> None:
    assert trim("EndpointSlice", KUBE_DNS_SLICE) == EndpointSet(
        kind="EndpointSlice",
        namespace="kube-system",
        name="kube-dns-m8vhq",
        service="kube-dns",
        subsets=(
            Subset(
                endpoints=(
                    Endpoint(
                        ("10.244.0.2",),
                        node_name="node-1",
                        target="Pod/coredns-5d78c9869d-7xk2p",
                    ),
                    Endpoint(
                        ("10.244.0.3",),
                        ready=False,
                        node_name="node-2",
                        target="Pod/coredns-5d78c9869d-q9wz8",
                    ),
                ),
                ports=(
                    EndpointPort("dns-tcp", 53, "TCP"),
                    EndpointPort("dns", 53, "UDP"),
                    EndpointPort("metrics", 9153, "TCP"),
                ),
            ),
        ),
    )


def test_without_targets_only_not_ready_endpoints_keep_their_target_ref() -> None:
    # The cluster source drops ready endpoints' targetRefs unless --endpoint-pod-names reads
    # them; `kdns explain` names not-ready endpoints by theirs, so those stay.
    trimmed = trim("EndpointSlice", KUBE_DNS_SLICE, targets=False)
    assert isinstance(trimmed, EndpointSet)
    assert [ep.target for ep in trimmed.subsets[0].endpoints] == [
        "",
        "Pod/coredns-5d78c9869d-q9wz8",
    ]
    endpoints: Json = {
        "metadata": {"name": "db", "namespace": "data"},
        "subsets": [
            {
                "addresses": [{"ip": "10.1.0.1", "targetRef": {"kind": "Pod", "name": "db-0"}}],
                "notReadyAddresses": [
                    {"ip": "10.1.0.2", "targetRef": {"kind": "Pod", "name": "db-1"}}
                ],
            }
        ],
    }
    trimmed = trim("Endpoints", endpoints, targets=False)
    assert isinstance(trimmed, EndpointSet)
    assert [ep.target for ep in trimmed.subsets[0].endpoints] == ["", "Pod/db-1"]
    kept = trim("Endpoints", endpoints)
    assert isinstance(kept, EndpointSet)
    assert [ep.target for ep in kept.subsets[0].endpoints] == ["Pod/db-0", "Pod/db-1"]


def test_endpoint_slice_with_null_endpoints_is_empty() -> None:
    # what the apiserver sends for a service without endpoints
    obj = copy.deepcopy(KUBE_DNS_SLICE)
    obj["endpoints"] = None
    obj["ports"] = None
    eps = trim("EndpointSlice", obj)
    assert isinstance(eps, EndpointSet)
    assert eps.subsets == (Subset((), ()),)
    assert eps.service == "kube-dns"


@pytest.mark.parametrize(
    ("conditions", "ready"),
    [
        pytest.param(None, True, id="conditions null"),
        pytest.param({}, True, id="ready absent"),
        pytest.param({"ready": None}, True, id="ready null"),
        pytest.param({"ready": True}, True, id="ready"),
        pytest.param({"ready": True, "serving": True, "terminating": False}, True, id="full"),
        pytest.param({"ready": False}, False, id="not ready"),
        pytest.param(
            {"ready": False, "serving": True, "terminating": True}, False, id="terminating"
        ),
        pytest.param({"terminating": True}, False, id="terminating, ready absent"),
        pytest.param({"ready": True, "terminating": True}, False, id="ready and terminating"),
    ],
)
def test_endpoint_slice_readiness(conditions: Json | None, ready: bool) -> None:
    endpoint: Json = {"addresses": ["10.0.0.1"]}
    if conditions is not None:
        endpoint["conditions"] = conditions
    eps = trim("EndpointSlice", slice_json([endpoint]))
    assert isinstance(eps, EndpointSet)
    assert eps.subsets[0].endpoints == (Endpoint(("10.0.0.1",), ready=ready),)


def test_endpoint_slice_ipv6_with_hostnames() -> None:
    eps = trim(
        "EndpointSlice",
        slice_json(
            [
                {
                    "addresses": ["fd00:10:244::5"],
                    "hostname": "web-0",
                    "conditions": {"ready": True},
                },
                {"addresses": ["2001:db8::1"], "zone": "a", "nodeName": "n1"},
            ],
            address_type="IPv6",
            ports=[{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}],
        ),
    )
    assert eps == EndpointSet(
        "EndpointSlice",
        "default",
        "web-abc12",
        "web",
        (
            Subset(
                (
                    Endpoint(("fd00:10:244::5",), hostname="web-0"),
                    Endpoint(("2001:db8::1",), node_name="n1", zone="a"),
                ),
                (EndpointPort("http", 8080, "TCP"),),
            ),
        ),
    )


def test_endpoint_slice_ignored_when_dns_has_no_use_for_it() -> None:
    fqdn = slice_json([{"addresses": ["db.example.com"]}], address_type="FQDN")
    assert trim("EndpointSlice", fqdn) is None
    # a slice nobody's service: a controller other than the endpointslice one
    orphan = slice_json([{"addresses": ["10.0.0.1"]}], service=None)
    assert trim("EndpointSlice", orphan) is None


def test_endpoint_slice_ports() -> None:
    eps = trim(
        "EndpointSlice",
        slice_json(
            [{"addresses": ["10.0.0.1"]}],
            ports=[
                {"name": "", "port": 5000, "protocol": "TCP"},
                {"name": "any", "port": None, "protocol": "TCP"},  # "all ports"
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"port": 9000},
            ],
        ),
    )
    assert isinstance(eps, EndpointSet)
    assert eps.subsets[0].ports == (
        EndpointPort("", 5000, "TCP"),
        EndpointPort("dns", 53, "UDP"),
        EndpointPort("", 9000, "TCP"),
    )


def test_endpoint_slice_drops_endpoints_without_an_address_of_its_family() -> None:
    eps = trim(
        "EndpointSlice",
        slice_json(
            [
                {"addresses": []},
                {"addresses": None},
                {"addresses": ["fd00::1"]},
                {"addresses": ["10.0.0.1", "fd00::2"]},
            ]
        ),
    )
    assert isinstance(eps, EndpointSet)
    assert eps.subsets[0].endpoints == (Endpoint(("10.0.0.1",)),)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (slice_json([{"addresses": ["10.0.0.1"]}], ports=[{"port": "http"}]), r"ports\[0\]\.port"),
        (slice_json({"addresses": ["10.0.0.1"]}), r"endpoints must be a list"),
        (slice_json(["10.0.0.1"]), r"endpoints\[0\] must be a mapping"),
        (slice_json([{"addresses": "10.0.0.1"}]), r"endpoints\[0\]\.addresses must be a list"),
        (slice_json([{"addresses": ["10.0.0.1"], "conditions": []}]), r"conditions"),
        ({"metadata": {"labels": {"kubernetes.io/service-name": "web"}}}, r"metadata\.name"),
    ],
)
def test_endpoint_slice_errors(obj: Json, message: str) -> None:
    with pytest.raises(TrimError, match=message):
        trim("EndpointSlice", obj)


# -- Endpoints -----------------------------------------------------------------------------------

SEED_ENDPOINTS: Json = {
    "apiVersion": "v1",
    "kind": "Endpoints",
    "metadata": {"name": "etcd-k8s", "namespace": "kube-system"},
    "subsets": [
        {
            "addresses": [
                {"ip": "178.104.163.38", "nodeName": "etc-master1"},
                {"ip": "178.104.163.187", "nodeName": "etc-master2"},
                {"ip": "178.104.163.243", "nodeName": "etc-master3"},
            ],
            "ports": [{"name": "port", "port": 2379, "protocol": "TCP"}],
        }
    ],
}


def test_endpoints_from_the_seed() -> None:
    assert trim("Endpoints", SEED_ENDPOINTS) == EndpointSet(
        "Endpoints",
        "kube-system",
        "etcd-k8s",
        "etcd-k8s",
        (
            Subset(
                (
                    Endpoint(("178.104.163.38",), node_name="etc-master1"),
                    Endpoint(("178.104.163.187",), node_name="etc-master2"),
                    Endpoint(("178.104.163.243",), node_name="etc-master3"),
                ),
                (EndpointPort("port", 2379, "TCP"),),
            ),
        ),
    )


def test_endpoints_ready_and_not_ready_in_several_subsets() -> None:
    obj: Json = {
        "metadata": {"name": "db", "namespace": "data", "labels": {"app": "db"}},
        "subsets": [
            {
                "addresses": [
                    {
                        "ip": "10.1.0.1",
                        "hostname": "db-0",
                        "nodeName": "n1",
                        "targetRef": {"kind": "Pod", "name": "db-0", "namespace": "data"},
                    }
                ],
                "notReadyAddresses": [{"ip": "10.1.0.2", "hostname": "db-1"}],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            },
            {
                "addresses": [{"ip": "fd00::3"}],
                "ports": [{"name": "metrics", "port": 9187}],
            },
            {"notReadyAddresses": [{"ip": "10.1.0.4"}]},
        ],
    }
    assert trim("Endpoints", obj) == EndpointSet(
        "Endpoints",
        "data",
        "db",
        "db",
        (
            Subset(
                (
                    Endpoint(("10.1.0.1",), hostname="db-0", node_name="n1", target="Pod/db-0"),
                    Endpoint(("10.1.0.2",), hostname="db-1", ready=False),
                ),
                (EndpointPort("pg", 5432, "TCP"),),
            ),
            Subset((Endpoint(("fd00::3",)),), (EndpointPort("metrics", 9187, "TCP"),)),
            Subset((Endpoint(("10.1.0.4",), ready=False),), ()),
        ),
    )


def test_endpoints_without_subsets() -> None:
    for obj in ({"metadata": {"name": "x"}}, {"metadata": {"name": "x"}, "subsets": None}):
        assert trim("Endpoints", obj) == EndpointSet("Endpoints", "default", "x", "x", ())


@pytest.mark.parametrize(
    ("subsets", "message"),
    [
        ([{"addresses": [{"ip": "bogus"}]}], r"subsets\[0\]\.addresses\[0\]\.ip.*'bogus'"),
        ([{"addresses": [{}]}], r"subsets\[0\]\.addresses\[0\]\.ip"),
        ([{}, {"notReadyAddresses": [{"ip": "x"}]}], r"subsets\[1\]\.notReadyAddresses\[0\]"),
        ([{"ports": [{"port": "http"}]}], r"subsets\[0\]\.ports\[0\]\.port.*'http'"),
        ({"addresses": []}, r"subsets must be a list"),
    ],
)
def test_endpoints_errors(subsets: Any, message: str) -> None:
    with pytest.raises(TrimError, match=message):
        trim("Endpoints", {"metadata": {"name": "x"}, "subsets": subsets})


# -- Namespaces and the dispatcher ---------------------------------------------------------------


def test_namespace() -> None:
    obj: Json = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "labels": {"kubernetes.io/metadata.name": "kube-system"},
            "name": "kube-system",
            "resourceVersion": "4",
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }
    assert trim("Namespace", obj) == Namespace("kube-system")
    # a terminating namespace still exists
    obj["status"] = {"phase": "Terminating"}
    assert trim("Namespace", obj) == Namespace("kube-system")
    # a namespace's own namespace field means nothing
    assert trim("Namespace", {"metadata": {"name": "a", "namespace": "b"}}) == Namespace("a")
    with pytest.raises(TrimError, match=r"metadata\.name is missing"):
        trim("Namespace", {"metadata": {}})


def test_trim_refuses_unknown_kinds_and_non_mappings() -> None:
    with pytest.raises(TrimError, match="'ConfigMap'"):
        trim("ConfigMap", {"metadata": {"name": "x"}})
    with pytest.raises(TrimError, match="must be a mapping"):
        trim("Service", [KUBE_DNS])  # type: ignore[arg-type]
    with pytest.raises(TrimError, match="must be a mapping"):
        trim("Endpoints", None)  # type: ignore[arg-type]


def test_trim_error_is_a_value_error() -> None:
    assert issubclass(TrimError, ValueError)


def test_bad_cluster_ip_error_names_the_field_written() -> None:
    with pytest.raises(TrimError, match=r"^spec\.clusterIP is not an IP address: 'bogus'$"):
        trim("Service", service_json(clusterIP="bogus"))


def test_addresses_are_kept_in_canonical_form() -> None:
    # PTR questions are looked up by the canonical form of the address
    svc = trim("Service", service_json(clusterIPs=["FD00:0:0::A", "10.96.0.1"]))
    assert isinstance(svc, Service)
    assert svc.cluster_ips == ("fd00::a", "10.96.0.1")
    eps = trim(
        "EndpointSlice",
        slice_json([{"addresses": ["2001:DB8:0::5"]}], address_type="IPv6"),
    )
    assert isinstance(eps, EndpointSet)
    assert eps.subsets[0].endpoints == (Endpoint(("2001:db8::5",)),)
    manual = trim(
        "Endpoints",
        {"metadata": {"name": "x"}, "subsets": [{"addresses": [{"ip": "FD00::0:1"}]}]},
    )
    assert isinstance(manual, EndpointSet)
    assert manual.subsets[0].endpoints == (Endpoint(("fd00::1",)),)
