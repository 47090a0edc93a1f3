"""Endpoints from Pod manifests, by the endpoints controller's rules."""

from __future__ import annotations

from typing import Any

import pytest

from kdns.sources.pods import ContainerPort, Pod, endpoints_for, service_targets, trim_pod
from kdns.sources.trim import TrimError
from kdns.sources.trim import service as trim_service
from kdns.state.model import Endpoint, EndpointPort, EndpointSet, Subset
from kdns.state.store import Store


def service_json(
    name: str = "web",
    namespace: str = "shop",
    selector: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selector": {"app": "web"} if selector is None else selector,
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}] if ports is None else ports,
    }
    body.update(spec)
    return {"metadata": {"name": name, "namespace": namespace}, "spec": body}


def pod_json(
    name: str,
    ip: str | list[str] | None = "10.2.0.1",
    *,
    namespace: str = "shop",
    labels: dict[str, str] | None = None,
    phase: str = "Running",
    ready: str | None = "True",
    deleting: bool = False,
    ports: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if isinstance(ip, list):
        status["podIP"] = ip[0]
        status["podIPs"] = [{"ip": a} for a in ip]
    elif ip is not None:
        status["podIP"] = ip
    if ready is not None:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": ready},
        ]
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app": "web"} if labels is None else labels,
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    container = {"name": "main", "ports": ports or []}
    return {"metadata": meta, "spec": {"containers": [container], **spec}, "status": status}


def compute(service: dict[str, Any], *pods: dict[str, Any]) -> EndpointSet:
    return endpoints_for(
        trim_service(service), service_targets(service), [trim_pod(p) for p in pods]
    )


def summary(eps: EndpointSet) -> list[tuple[str, str, bool, tuple[tuple[str, int], ...]]]:
    """(target, addresses, ready, ports) per endpoint: what a table row needs to say."""
    return [
        (ep.target, ",".join(ep.addresses), ep.ready, tuple((p.name, p.port) for p in sub.ports))
        for sub in eps.subsets
        for ep in sub.endpoints
    ]


HTTP = (("http", 8080),)


def test_shape_of_the_result() -> None:
    eps = compute(service_json(), pod_json("web-0", "10.2.0.10", nodeName="node-1"))
    assert eps == EndpointSet(
        kind="Pods",
        namespace="shop",
        name="web",
        service="web",
        subsets=(
            Subset(
                (Endpoint(("10.2.0.10",), "", True, "node-1", "Pod/web-0"),),
                (EndpointPort("http", 8080, "TCP"),),
            ),
        ),
    )


def test_selection_by_namespace_and_labels() -> None:
    svc = service_json(selector={"app": "web", "tier": "front"})
    eps = compute(
        svc,
        pod_json("match", labels={"app": "web", "tier": "front", "extra": "x"}),
        pod_json("partial", labels={"app": "web"}),
        pod_json("other-value", labels={"app": "web", "tier": "back"}),
        pod_json("other-ns", namespace="default", labels={"app": "web", "tier": "front"}),
    )
    assert [target for target, *_ in summary(eps)] == ["Pod/match"]


def test_service_without_selector_gets_no_pods() -> None:
    svc = service_json(selector={})  # an empty selector is no selector, as in the API
    assert compute(svc, pod_json("web-0")).subsets == ()


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (pod_json("p", phase="Running", ready="True"), [("Pod/p", "10.2.0.1", True, HTTP)]),
        (pod_json("p", phase="Running", ready="False"), [("Pod/p", "10.2.0.1", False, HTTP)]),
        (pod_json("p", phase="Running", ready=None), [("Pod/p", "10.2.0.1", False, HTTP)]),
        (pod_json("p", phase="Pending", ready="True"), [("Pod/p", "10.2.0.1", False, HTTP)]),
        (pod_json("p", deleting=True), [("Pod/p", "10.2.0.1", False, HTTP)]),
        (pod_json("p", phase="Succeeded", ready="False"), []),
        (pod_json("p", phase="Failed", ready="False"), []),
        (pod_json("p", ip=None, phase="Pending", ready=None), []),
    ],
    ids=[
        "ready",
        "not-ready",
        "no-condition",
        "pending",
        "terminating",
        "succeeded",
        "failed",
        "no-ip",
    ],
)
def test_readiness(pod: dict[str, Any], expected: list[Any]) -> None:
    assert summary(compute(service_json(), pod)) == expected


def test_hostname_only_when_subdomain_is_the_service() -> None:
    eps = compute(
        service_json(),
        pod_json("a", "10.2.0.1", hostname="web-a", subdomain="web"),
        pod_json("b", "10.2.0.2", hostname="web-b", subdomain="other"),
        pod_json("c", "10.2.0.3", hostname="web-c"),
    )
    assert [ep.hostname for sub in eps.subsets for ep in sub.endpoints] == ["web-a", "", ""]


def test_target_ports_numeric_named_and_absent() -> None:
    svc = service_json(
        ports=[
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "metrics", "port": 9000, "targetPort": 9100},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ]
    )
    pod = pod_json(
        "p",
        ports=[
            {"name": "web", "containerPort": 8080},
            {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
        ],
    )
    (sub,) = compute(svc, pod).subsets
    assert sub.ports == (
        EndpointPort("http", 8080, "TCP"),
        EndpointPort("metrics", 9100, "TCP"),
        EndpointPort("dns", 53, "UDP"),
    )


def test_named_port_must_match_protocol() -> None:
    svc = service_json(ports=[{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}])
    tcp_only = pod_json("p", ports=[{"name": "dns", "containerPort": 5353, "protocol": "TCP"}])
    assert compute(svc, tcp_only).subsets == ()


def test_sidecar_ports_count_but_plain_init_containers_do_not() -> None:
    svc = service_json(
        ports=[
            {"name": "a", "port": 1, "targetPort": "proxy"},
            {"name": "b", "port": 2, "targetPort": "setup"},
        ]
    )
    pod = pod_json("p")
    pod["spec"]["initContainers"] = [
        {
            "name": "proxy",
            "restartPolicy": "Always",
            "ports": [{"name": "proxy", "containerPort": 15001}],
        },
        {"name": "setup", "ports": [{"name": "setup", "containerPort": 9999}]},
    ]
    (sub,) = compute(svc, pod).subsets
    assert sub.ports == (EndpointPort("a", 15001, "TCP"),)


def test_unresolved_named_port_drops_the_port_then_the_pod() -> None:
    svc = service_json(
        ports=[
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "admin", "port": 81, "targetPort": "admin"},
        ]
    )
    both = pod_json(
        "both",
        "10.2.0.1",
        ports=[{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 8081}],
    )
    http_only = pod_json("http-only", "10.2.0.2", ports=[{"name": "http", "containerPort": 8080}])
    neither = pod_json("neither", "10.2.0.3")
    assert summary(compute(svc, both, http_only, neither)) == [
        ("Pod/both", "10.2.0.1", True, (("http", 8080), ("admin", 8081))),
        ("Pod/http-only", "10.2.0.2", True, (("http", 8080),)),
    ]


def test_pods_with_different_ports_land_in_different_subsets() -> None:
    svc = service_json(ports=[{"name": "http", "port": 80, "targetPort": "http"}])
    old = pod_json("old", "10.2.0.1", ports=[{"name": "http", "containerPort": 8080}])
    new = pod_json("new", "10.2.0.2", ports=[{"name": "http", "containerPort": 9090}])
    also_new = pod_json("also-new", "10.2.0.3", ports=[{"name": "http", "containerPort": 9090}])
    eps = compute(svc, old, new, also_new)
    assert [(sub.ports[0].port, [ep.target for ep in sub.endpoints]) for sub in eps.subsets] == [
        (9090, ["Pod/also-new", "Pod/new"]),
        (8080, ["Pod/old"]),
    ]


def test_headless_service_without_ports_takes_pods_clusterip_does_not() -> None:
    headless = service_json(ports=[], clusterIP="None")
    plain = service_json(ports=[], clusterIP="10.96.0.20")
    assert summary(compute(headless, pod_json("p"))) == [("Pod/p", "10.2.0.1", True, ())]
    assert compute(plain, pod_json("p")).subsets == ()


@pytest.mark.parametrize(
    ("spec", "addresses"),
    [
        ({"clusterIP": "10.96.0.20"}, "10.2.0.1"),
        ({"clusterIPs": ["fd00::20"]}, "fd00::1"),
        ({"clusterIPs": ["10.96.0.20", "fd00::20"]}, "10.2.0.1,fd00::1"),
        ({"clusterIP": "None", "ipFamilies": ["IPv6"]}, "fd00::1"),
        ({"clusterIP": "None", "ipFamilies": ["IPv6", "IPv4"]}, "fd00::1,10.2.0.1"),
        ({"clusterIP": "None"}, "10.2.0.1"),  # nothing said: the pod's primary family
    ],
)
def test_one_address_per_family_of_the_service(spec: dict[str, Any], addresses: str) -> None:
    pod = pod_json("p", ["10.2.0.1", "fd00::1"])
    assert [row[1] for row in summary(compute(service_json(**spec), pod))] == [addresses]


def test_pod_without_address_of_the_service_family_is_skipped() -> None:
    svc = service_json(clusterIPs=["fd00::20"])
    assert compute(svc, pod_json("v4-only", "10.2.0.1")).subsets == ()


def test_result_does_not_depend_on_pod_order() -> None:
    pods = [pod_json(f"p{i}", f"10.2.0.{i}") for i in range(1, 6)]
    assert compute(service_json(), *pods) == compute(service_json(), *reversed(pods))


def test_external_name_service_gets_nothing() -> None:
    svc = service_json(type="ExternalName", externalName="example.com")
    assert compute(svc, pod_json("p")).subsets == ()


def test_store_counts_not_ready_pods_only_with_publish_not_ready() -> None:
    pods = [pod_json("ready", "10.2.0.1"), pod_json("starting", "10.2.0.2", ready="False")]
    for publish, expected in ((False, ["10.2.0.1"]), (True, ["10.2.0.1", "10.2.0.2"])):
        svc_json = service_json(clusterIP="None", publishNotReadyAddresses=publish)
        store = Store()
        store.add_layer("files")
        store.replace("files", [trim_service(svc_json), compute(svc_json, *pods)])
        view = store.service("shop", "web")
        assert view is not None
        assert view.addresses() == expected


def test_trim_pod_reads_every_field() -> None:
    pod = trim_pod(
        pod_json(
            "web-0",
            ["10.2.0.1", "fd00::1"],
            labels={"b": "2", "a": "1"},
            ports=[
                {"name": "http", "containerPort": 8080, "protocol": "tcp"},
                {"containerPort": 1},
            ],
            hostname="web-0",
            subdomain="web",
            nodeName="node-1",
        )
    )
    assert pod == Pod(
        namespace="shop",
        name="web-0",
        labels=(("a", "1"), ("b", "2")),
        ips=("10.2.0.1", "fd00::1"),
        phase="Running",
        ready_condition=True,
        terminating=False,
        hostname="web-0",
        subdomain="web",
        node_name="node-1",
        ports=(ContainerPort("http", 8080, "TCP"),),  # unnamed ports cannot be targeted
    )
    assert pod.ready and pod.key == ("Pod", "shop", "web-0")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["status"].update(podIP="10.2.0.999"), r"^status.podIP is not an IP"),
        (
            lambda p: p["status"].update(podIPs=[{"ip": "x"}]),
            r"^status.podIPs\[0\].ip is not an IP",
        ),
        (
            lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": "http"}]),
            r"^spec.containers\[0\].ports\[0\].containerPort must be a port number",
        ),
        (lambda p: p["spec"].update(containers={}), r"^spec.containers must be a list"),
        (lambda p: p["metadata"].pop("name"), r"^metadata.name is missing"),
    ],
)
def test_trim_pod_errors_name_the_field(change: Any, message: str) -> None:
    pod = pod_json("p")
    change(pod)
    with pytest.raises(TrimError, match=message):
        trim_pod(pod)


@pytest.mark.parametrize(
    ("port", "message"),
    [
        (
            {"port": 80, "targetPort": "8080"},
            r"^spec.ports\[0\].targetPort must be a port number or",
        ),
        ({"port": 80, "targetPort": 70000}, r"^spec.ports\[0\].targetPort must be a port number"),
    ],
)
def test_service_target_errors_name_the_field(port: dict[str, Any], message: str) -> None:
    with pytest.raises(TrimError, match=message):
        service_targets(service_json(ports=[port]))


def test_bad_ip_family_is_an_error() -> None:
    with pytest.raises(TrimError, match=r"^spec.ipFamilies\[0\] must be IPv4 or IPv6"):
        service_targets(service_json(ipFamilies=["IPv5"]))
