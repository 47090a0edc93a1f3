"""The small immutable objects every source produces and the store keeps.

Full Kubernetes API objects cost kilobytes each; at 100,000 endpoints that is the classic way a
cluster DNS server runs out of memory. Sources trim what they receive to these records, which hold
only what DNS answers need, and nothing downstream ever sees an API object.

All records are frozen and compare by value, so a source can hand the store a whole new state and
the store can tell, object by object, what actually changed (and skip bumping the generation for
an update that changes nothing DNS can see).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]
EndpointKind = Literal["EndpointSlice", "Endpoints", "Pods"]

#: The label that joins an EndpointSlice to its Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One entry of a Service's `spec.ports`."""

    name: str  # "" when the port is unnamed
    port: int
    protocol: str = "TCP"  # upper case: TCP, UDP or SCTP


@dataclass(frozen=True, slots=True)
class Service:
    """A v1 Service, trimmed to what DNS needs."""

    namespace: str
    name: str
    type: ServiceType = "ClusterIP"
    #: `spec.clusterIPs` (or `[spec.clusterIP]`); empty for headless and ExternalName services.
    cluster_ips: tuple[str, ...] = ()
    headless: bool = False
    external_name: str = ""
    ports: tuple[ServicePort, ...] = ()
    publish_not_ready: bool = False
    #: `spec.selector` as sorted pairs; None when the service has no selector (hand-written
    #: endpoints). Only the file source uses it, to build endpoints from Pod manifests.
    selector: tuple[tuple[str, str], ...] | None = None

    @property
    def key(self) -> ObjectKey:
        return ("Service", self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class EndpointPort:
    """A port of an EndpointSlice or of an Endpoints subset (the target port)."""

    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint: the addresses of one backend (usually one pod)."""

    addresses: tuple[str, ...]
    hostname: str = ""
    #: ready as the controllers define it: `conditions.ready` (absent means ready) and not
    #: terminating; for v1 Endpoints, listed under `addresses` rather than `notReadyAddresses`.
    ready: bool = True
    node_name: str = ""
    #: `targetRef` as "Kind/name" (for `kdns explain`), "" when absent.
    target: str = ""


@dataclass(frozen=True, slots=True)
class Subset:
    """Endpoints sharing one port list: an EndpointSlice, or one subset of a v1 Endpoints."""

    endpoints: tuple[Endpoint, ...]
    ports: tuple[EndpointPort, ...] = ()


@dataclass(frozen=True, slots=True)
class EndpointSet:
    """The endpoints one object contributes to one service.

    `kind` says where they came from: an EndpointSlice (joined by the service-name label), a v1
    Endpoints (joined by name), or "Pods" when the file source computed them from Pod manifests
    the way the endpoints controller would.
    """

    kind: EndpointKind
    namespace: str
    name: str
    service: str
    subsets: tuple[Subset, ...] = ()

    @property
    def key(self) -> ObjectKey:
        return (self.kind, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Namespace:
    """A namespace that exists (decides NODATA versus NXDOMAIN for `<ns>.svc.<zone>`)."""

    name: str

    @property
    def key(self) -> ObjectKey:
        return ("Namespace", "", self.name)


#: (kind, namespace, name): identifies one object within one source.
ObjectKey = tuple[str, str, str]

#: What sources hand to the store.
KubeObject = Service | EndpointSet | Namespace


def endpoint_name(hostname: str, address: str) -> str:
    """The DNS label of an endpoint: its hostname, else its address with dashes.

    IPv6 follows CoreDNS: `2001:db8::1` becomes `2001-db8--1`, and a trailing `::` gives `--0` so
    the label never ends with a dash.
    """
    if hostname:
        return hostname
    if ":" in address:
        text = address
        if text.endswith("::"):
            text += "0"
        return text.replace(":", "-")
    return address.replace(".", "-")


def ip_family(address: str) -> int:
    """4 or 6 for a valid IP literal, 0 otherwise."""
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return 0
