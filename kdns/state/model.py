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
from dataclasses import MISSING, dataclass, fields
from operator import attrgetter
from typing import Any, Literal, TypeVar

ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]
EndpointKind = Literal["EndpointSlice", "Endpoints", "Pods"]

#: The label that joins an EndpointSlice to its Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: The labels that join an EndpointSlice to a ServiceImport (the Multi-Cluster Services API,
#: KEP-1645), and name the cluster its endpoints are in.
MCS_SERVICE_NAME_LABEL = "multicluster.kubernetes.io/service-name"
MCS_SOURCE_CLUSTER_LABEL = "multicluster.kubernetes.io/source-cluster"
#: The annotation that exports a Service to `--clusterset` where no ServiceExport can (a cluster
#: without the MCS CRDs, or a manifest file): `kdns.io/export: "true"`.
EXPORT_ANNOTATION = "kdns.io/export"

_R = TypeVar("_R")


def fast_record(cls: type[_R]) -> type[_R]:
    """Make a frozen slots dataclass cheap to build and to pickle; its behaviour is unchanged.

    - `__init__`: a frozen dataclass's sets each field through `object.__setattr__`, looked up
      by name at every call, 1.8 µs for an `Endpoint`; this one calls the slots' own setters,
      bound once, 0.65 µs. Trimming a 100-endpoint EndpointSlice builds a hundred, and every
      store rebuilds a hundred `ReadyEndpoint`s when one of them changes.
    - pickling (every write `--workers` publishes is one): as the class and its field values,
      rebuilt by that `__init__`. What dataclasses gives a frozen slots class calls `fields()`
      and sets each attribute from Python, per record: for a 100-endpoint slice that was half
      a millisecond on each side of the pipe, more than decoding and trimming it.

    Only for plain fields: a default factory, an init-only or keyword-only field, or a
    `__post_init__` would need the dataclass's own `__init__`, so they are refused.
    """
    found = fields(cls)  # type: ignore[arg-type]
    if hasattr(cls, "__post_init__") or any(
        f.default_factory is not MISSING or not f.init or f.kw_only for f in found
    ):
        raise TypeError(f"{cls.__name__}: fast_record takes plain fields only")
    names = [f.name for f in found]
    env: dict[str, Any] = {f"_set_{n}": getattr(cls, n).__set__ for n in names}
    env.update({f"_default_{f.name}": f.default for f in found if f.default is not MISSING})
    params = ", ".join(
        f.name if f.default is MISSING else f"{f.name}=_default_{f.name}" for f in found
    )
    body = "".join(f"        _set_{n}(self, {n})\n" for n in names) or "        pass\n"
    source = (
        f"def _make({', '.join(env)}):\n"
        f"    def __init__(self, {params}) -> None:\n{body}"
        "    return __init__\n"
    )
    scope: dict[str, Any] = {}
    exec(source, {}, scope)  # the text is made above from field names, nothing else
    init = scope["_make"](**env)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    values = attrgetter(*names)

    def __reduce__(self: Any) -> tuple[type[_R], tuple[Any, ...]]:
        got = values(self)
        return cls, (got if len(names) > 1 else (got,))

    cls.__init__ = init  # type: ignore[method-assign]
    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return cls


@fast_record
@dataclass(frozen=True, slots=True)
class ServicePort:
    """One entry of a Service's `spec.ports`."""

    name: str  # "" when the port is unnamed
    port: int
    protocol: str = "TCP"  # upper case: TCP, UDP or SCTP


@fast_record
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
    #: What reaches the service from outside the cluster (`--external-zone`): `spec.externalIPs`
    #: then `status.loadBalancer.ingress[].ip`, canonical, in that order (CoreDNS's order).
    external_ips: tuple[str, ...] = ()
    #: `status.loadBalancer.ingress[].hostname`: a load balancer known by name (a CNAME).
    external_hosts: tuple[str, ...] = ()
    #: Annotated `kdns.io/export: "true"`: in the `--clusterset` union like a ServiceExport.
    exported: bool = False

    @property
    def key(self) -> ObjectKey:
        return ("Service", self.namespace, self.name)


@fast_record
@dataclass(frozen=True, slots=True)
class EndpointPort:
    """A port of an EndpointSlice or of an Endpoints subset (the target port)."""

    name: str
    port: int
    protocol: str = "TCP"


@fast_record
@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint: the addresses of one backend (usually one pod)."""

    addresses: tuple[str, ...]
    hostname: str = ""
    #: ready as the controllers define it: `conditions.ready` (absent means ready) and not
    #: terminating; for v1 Endpoints, listed under `addresses` rather than `notReadyAddresses`.
    ready: bool = True
    node_name: str = ""
    #: `targetRef` as "Kind/name" (for `kdns explain`, and `--endpoint-pod-names`), "" when absent.
    target: str = ""
    #: The EndpointSlice's `zone` (the node's topology.kubernetes.io/zone), "" when unknown.
    zone: str = ""
    #: The EndpointSlice's `hints.forZones`: the zones the controller meant this endpoint for
    #: (topology-aware routing); empty when the slice carries no hints.
    for_zones: tuple[str, ...] = ()

    @property
    def pod_name(self) -> str:
        """The name of the Pod this endpoint is for (`targetRef`), "" when it is not a pod's."""
        kind, _, name = self.target.partition("/")
        return name if kind == "Pod" else ""


@fast_record
@dataclass(frozen=True, slots=True)
class Subset:
    """Endpoints sharing one port list: an EndpointSlice, or one subset of a v1 Endpoints."""

    endpoints: tuple[Endpoint, ...]
    ports: tuple[EndpointPort, ...] = ()


@fast_record
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


@fast_record
@dataclass(frozen=True, slots=True)
class PodAddresses:
    """A Pod that is not terminating, trimmed to its IPs (`--pods verified` answers from these)."""

    namespace: str
    name: str
    #: `status.podIPs` (or `[status.podIP]`), canonical text.
    ips: tuple[str, ...] = ()

    @property
    def key(self) -> ObjectKey:
        return ("Pod", self.namespace, self.name)


@fast_record
@dataclass(frozen=True, slots=True)
class Namespace:
    """A namespace that exists (decides NODATA versus NXDOMAIN for `<ns>.svc.<zone>`)."""

    name: str

    @property
    def key(self) -> ObjectKey:
        return ("Namespace", "", self.name)


RouteKind = Literal["Ingress", "HTTPRoute", "GRPCRoute", "TLSRoute"]
#: The kinds whose host names `--external-zone` answers.
ROUTE_KINDS: tuple[RouteKind, ...] = ("Ingress", "HTTPRoute", "GRPCRoute", "TLSRoute")


@fast_record
@dataclass(frozen=True, slots=True)
class HostRoute:
    """Host names that reach the cluster through a load balancer: the rules of an Ingress
    (networking.k8s.io/v1), or the hostnames of a Gateway API route (gateway.networking.k8s.io).

    An Ingress carries its own addresses (its `status.loadBalancer.ingress`); a route answers
    with the addresses of the Gateways it is attached to (`parents`).
    """

    kind: RouteKind
    namespace: str
    name: str
    #: Lower case, no trailing dot; a wildcard host keeps its leading `*.`.
    hosts: tuple[str, ...] = ()
    #: Ingress: `status.loadBalancer.ingress[].ip`, canonical.
    ips: tuple[str, ...] = ()
    #: Ingress: `status.loadBalancer.ingress[].hostname`.
    hostnames: tuple[str, ...] = ()
    #: Routes: the Gateways of `spec.parentRefs`, as (namespace, name, sectionName): the
    #: section "" when the route attaches to every listener.
    parents: tuple[tuple[str, str, str], ...] = ()
    #: The parents whose controller refused the route: `status.parents[]` with the condition
    #: Accepted False (its reason after the parent). A parent without status is not refused:
    #: no controller has looked yet, or none runs (manifests on a laptop).
    refused: tuple[tuple[str, str, str, str], ...] = ()

    @property
    def key(self) -> ObjectKey:
        return (self.kind, self.namespace, self.name)


@fast_record
@dataclass(frozen=True, slots=True)
class Gateway:
    """A Gateway API Gateway, trimmed to the addresses its controller published."""

    namespace: str
    name: str
    #: `status.addresses[]` of type IPAddress (or without type), canonical.
    ips: tuple[str, ...] = ()
    #: `status.addresses[]` of type Hostname.
    hostnames: tuple[str, ...] = ()
    #: `spec.listeners[]` as (name, hostname): the hostname lower case, "" when the listener
    #: takes every host, a wildcard keeping its leading `*.`.
    listeners: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> ObjectKey:
        return ("Gateway", self.namespace, self.name)


ImportType = Literal["ClusterSetIP", "Headless"]


@fast_record
@dataclass(frozen=True, slots=True)
class ServiceImport:
    """A ServiceImport of the Multi-Cluster Services API (multicluster.x-k8s.io/v1alpha1):
    a service exported by the clusters of a clusterset, as it is reachable from this one
    (`--clusterset-domain`)."""

    namespace: str
    name: str
    type: ImportType = "ClusterSetIP"
    #: `spec.ips`, canonical: the clusterset IPs (a ClusterSetIP import's answers).
    ips: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()

    @property
    def key(self) -> ObjectKey:
        return ("ServiceImport", self.namespace, self.name)


@fast_record
@dataclass(frozen=True, slots=True)
class ImportSlice:
    """An EndpointSlice labelled `multicluster.kubernetes.io/service-name`: endpoints of a
    ServiceImport in one cluster of the clusterset (`cluster`, from
    `multicluster.kubernetes.io/source-cluster`). Kept apart from the cluster's own slices
    (kind "ImportSlice"), so that they never answer for a cluster-local service."""

    namespace: str
    name: str
    service: str
    cluster: str
    subsets: tuple[Subset, ...] = ()

    @property
    def key(self) -> ObjectKey:
        return ("ImportSlice", self.namespace, self.name)


@fast_record
@dataclass(frozen=True, slots=True)
class ServiceExport:
    """A ServiceExport of the Multi-Cluster Services API (multicluster.x-k8s.io/v1alpha1): the
    Service `service` of its namespace is exported to the clusterset (`--clusterset`). Its name
    is the service's, unless it carries the label `multicluster.kubernetes.io/service-name`."""

    namespace: str
    name: str
    service: str

    @property
    def key(self) -> ObjectKey:
        return ("ServiceExport", self.namespace, self.name)


#: (kind, namespace, name): identifies one object within one source.
ObjectKey = tuple[str, str, str]

#: What sources hand to the store.
KubeObject = (
    Service
    | EndpointSet
    | Namespace
    | PodAddresses
    | HostRoute
    | Gateway
    | ServiceImport
    | ImportSlice
    | ServiceExport
)


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


def address_of_label(label: str) -> str | None:
    """The canonical address whose dashed form (`endpoint_name("", address)`) `label` could be,
    or None when it spells no address. (The caller compares the dashed form to be exact: this
    also accepts spellings such as leading zeros that `endpoint_name` never makes.)"""
    if "-" not in label:
        return None
    for text in (label.replace("-", "."), label.replace("-", ":")):
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            continue
    return None


def is_label(text: str) -> bool:
    """True when `text` is a DNS-1123 label: 1-63 of a-z, 0-9 and '-', alphanumeric at both
    ends (what Kubernetes allows as a label-shaped name)."""
    return (
        0 < len(text) <= 63
        and text.isascii()
        and text.replace("-", "").isalnum()
        and text == text.lower()
        and text[0] != "-"
        and text[-1] != "-"
    )


def ip_family(address: str) -> int:
    """4 or 6 for a valid IP literal, 0 otherwise."""
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return 0


def record_count(obj: KubeObject) -> int:
    """How many records `obj` makes in a store: 1, and 1 more for each endpoint it lists. A
    measure of the memory its write replaces (`WorkerPool`), where objects differ a
    hundredfold."""
    if isinstance(obj, EndpointSet | ImportSlice):
        return 1 + sum(len(subset.endpoints) for subset in obj.subsets)
    return 1
