"""Small builders for the trimmed records of `kdns.state.model`, and helpers to read answers.

Tests build the objects a source would hand to the store, so that a table row says only what
matters to it (`clusterip("default", "web", "10.96.0.10", ports=[port("http", 80)])`).
Records are rendered as `"owner ttl TYPE rdata"` strings, so a whole answer compares in one
assertion and a failure shows exactly which record is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dnslib import QTYPE, RCODE, RR, DNSLabel

from kdns.dns.resolution import Answer, Cluster, Engine, PodsMode
from kdns.state.model import (
    Endpoint,
    EndpointPort,
    EndpointSet,
    KubeObject,
    Namespace,
    Service,
    ServicePort,
    Subset,
)
from kdns.state.store import Store

LAYER = "cluster"


# -- objects ------------------------------------------------------------------------------------


def port(name: str, number: int, protocol: str = "TCP") -> ServicePort:
    return ServicePort(name, number, protocol)


def eport(name: str, number: int, protocol: str = "TCP") -> EndpointPort:
    return EndpointPort(name, number, protocol)


def clusterip(
    namespace: str,
    name: str,
    *ips: str,
    ports: Sequence[ServicePort] = (),
    type: str = "ClusterIP",
    publish_not_ready: bool = False,
) -> Service:
    return Service(
        namespace,
        name,
        type=type,  # type: ignore[arg-type]
        cluster_ips=tuple(ips),
        ports=tuple(ports),
        publish_not_ready=publish_not_ready,
    )


def headless(
    namespace: str,
    name: str,
    *,
    ports: Sequence[ServicePort] = (),
    publish_not_ready: bool = False,
) -> Service:
    return Service(
        namespace,
        name,
        headless=True,
        ports=tuple(ports),
        publish_not_ready=publish_not_ready,
    )


def external(namespace: str, name: str, target: str) -> Service:
    return Service(namespace, name, type="ExternalName", external_name=target)


def ep(*addresses: str, hostname: str = "", ready: bool = True, node_name: str = "") -> Endpoint:
    return Endpoint(tuple(addresses), hostname=hostname, ready=ready, node_name=node_name)


def endpoint_slice(
    namespace: str,
    name: str,
    service: str,
    endpoints: Sequence[Endpoint],
    ports: Sequence[EndpointPort] = (),
) -> EndpointSet:
    """An EndpointSlice (one subset) joined to `service`."""
    return EndpointSet(
        "EndpointSlice", namespace, name, service, (Subset(tuple(endpoints), tuple(ports)),)
    )


def subset(endpoints: Sequence[Endpoint], ports: Sequence[EndpointPort] = ()) -> Subset:
    return Subset(tuple(endpoints), tuple(ports))


def endpoints(namespace: str, name: str, *subsets: Subset) -> EndpointSet:
    """A v1 Endpoints object (joined to the service of the same name)."""
    return EndpointSet("Endpoints", namespace, name, name, tuple(subsets))


def namespaces(*names: str) -> list[Namespace]:
    return [Namespace(n) for n in names]


# -- store and engine ---------------------------------------------------------------------------


def make_store(
    objects: Iterable[KubeObject] = (), *, synced: bool = True, layer: str = LAYER
) -> Store:
    store = Store()
    store.add_layer(layer)
    store.apply(layer, list(objects))
    if synced:
        store.set_synced(layer)
    return store


def make_engine(
    objects: Iterable[KubeObject] = (),
    *,
    domain: str = "cluster.local",
    ttl: int = 5,
    pods: PodsMode = "insecure",
    ns_addresses: Sequence[str] = (),
    synced: bool = True,
) -> Engine:
    store = make_store(objects, synced=synced)
    return Engine([Cluster(domain, store)], ttl=ttl, pods=pods, ns_addresses=ns_addresses)


def ask(engine: Engine, name: str, qtype: str) -> Answer:
    return engine.resolve(DNSLabel(name), getattr(QTYPE, qtype))


# -- reading answers ----------------------------------------------------------------------------


def text(rr: RR) -> str:
    """`owner ttl TYPE rdata`, e.g. `web.default.svc.cluster.local. 5 A 10.96.0.10`."""
    return f"{rr.rname} {rr.ttl} {QTYPE[rr.rtype]} {rr.rdata}"


def texts(rrs: Iterable[RR]) -> list[str]:
    """The records as sorted strings (a multiset: a duplicate record shows twice)."""
    return sorted(text(rr) for rr in rrs)


def rcode(answer: Answer) -> str:
    return str(RCODE[answer.rcode])


def soa_text(zone: str, serial: int, ttl: int = 5, server_zone: str | None = None) -> str:
    """The SOA record kdns gives for `zone` (`server_zone` names the server, default `zone`)."""
    home = server_zone or zone
    return f"{zone}. {ttl} SOA ns.dns.{home}. hostmaster.{home}. {serial} 7200 1800 86400 {ttl}"


# -- manifests (what a zones/ directory holds) -------------------------------------------------


def headless_manifest(
    namespace: str, name: str, port: tuple[str, int], addresses: Sequence[str], ready: bool = True
) -> str:
    """A headless Service and one EndpointSlice of `addresses` (all ready or all not), as YAML."""
    port_name, number = port
    flag = "true" if ready else "false"
    endpoints = "".join(
        f"- {{addresses: [{a}], conditions: {{ready: {flag}}}}}\n" for a in addresses
    )
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec: {{clusterIP: None, ports: [{{name: {port_name}, port: {number}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: {port_name}, port: {number}}}]
endpoints:
{endpoints}"""


def shop_api_objects() -> list[dict[str, Any]]:
    """The API double's objects of the shop namespace: a ClusterIP service `cart` (10.96.1.1)
    and a headless `db` with two ready endpoints (10.1.0.1, 10.1.0.2) on port pg/5432."""
    from testkit.apiserver import endpoint_slice, namespace, service

    return [
        namespace("shop"),
        service("cart", "shop", cluster_ip="10.96.1.1"),
        service("db", "shop", cluster_ip="None", ports=[("pg", 5432, "TCP")]),
        endpoint_slice(
            "db-a", "db", "shop", endpoints=["10.1.0.1", "10.1.0.2"], ports=[("pg", 5432, "TCP")]
        ),
    ]
