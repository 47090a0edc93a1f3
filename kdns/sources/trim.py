"""Turn Kubernetes JSON objects into the trimmed records of `kdns.state.model`.

Both sources use this: the cluster watch hands over what the apiserver sent, the zones/ source what
a manifest says. Both are plain dicts in the API's JSON shape, so one converter serves both and a
manifest means exactly what it would mean to `kubectl apply`.

Conversions never raise on the shape of real API data (nulls, missing fields); a value that cannot
be right (a port that is not a number) raises `TrimError`, which the file source reports with the
file and position and the watch counts as an error for that object.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from kdns.state.model import (
    EXPORT_ANNOTATION,
    MCS_SERVICE_NAME_LABEL,
    MCS_SOURCE_CLUSTER_LABEL,
    SERVICE_NAME_LABEL,
    Endpoint,
    EndpointPort,
    EndpointSet,
    Gateway,
    HostRoute,
    ImportSlice,
    ImportType,
    KubeObject,
    Namespace,
    PodAddresses,
    RouteKind,
    Service,
    ServiceExport,
    ServiceImport,
    ServicePort,
    ServiceType,
    Subset,
    is_label,
)

Json = Mapping[str, Any]

SERVICE_TYPES: tuple[ServiceType, ...] = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


class TrimError(ValueError):
    """An object whose content cannot be turned into DNS data."""


# Field readers shared with kdns.sources.pods: tolerant of nulls (the apiserver sends them), strict
# about wrong types, and every message starts with the field's path so a manifest error points at
# it.


def as_map(value: Any, what: str) -> Json:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TrimError(f"{what} must be a mapping")
    return value


def as_list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TrimError(f"{what} must be a list")
    return value


def as_str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TrimError(f"{what} must be a string")
    return value


def as_port(value: Any, what: str) -> int:
    """A port number, 1-65535 as the apiserver requires."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise TrimError(f"{what} must be a port number (1-65535), not {value!r}")
    return value


def as_protocol(value: Any, what: str) -> str:
    proto = as_str(value, what).upper() or "TCP"
    if proto not in ("TCP", "UDP", "SCTP"):
        raise TrimError(f"{what} must be TCP, UDP or SCTP, not {value!r}")
    return proto


def as_ip(value: Any, what: str) -> str:
    """An IP address in canonical form (PTR lookups compare canonical forms)."""
    canonical = canonical_ip(as_str(value, what))
    if canonical is None:
        raise TrimError(f"{what} is not an IP address: {value!r}")
    return canonical


def canonical_ip(text: str) -> str | None:
    """`text` as a canonical IP address, or None when it is not one."""
    if ":" not in text:
        # IPv4, nearly always already canonical: the C parser says so in a fraction of the time
        # ipaddress takes; anything else (leading zeros, odd forms) gets ipaddress's verdict.
        try:
            if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text)) == text:
                return text
        except OSError:
            return None
    try:
        canonical = str(ipaddress.ip_address(text))
    except ValueError:
        return None
    # Keep the string we were given when it is already canonical (nearly always): one string
    # per address rather than two.
    return text if canonical == text else canonical


def metadata(obj: Json) -> tuple[str, str]:
    """(namespace, name) of an object; namespace "default" when absent."""
    meta = as_map(obj.get("metadata"), "metadata")
    name = as_str(meta.get("name"), "metadata.name")
    if not name:
        raise TrimError("metadata.name is missing")
    return (as_str(meta.get("namespace"), "metadata.namespace") or "default", name)


def labels(obj: Json) -> dict[str, str]:
    """An object's labels (values coerced to strings)."""
    meta = as_map(obj.get("metadata"), "metadata")
    return {str(k): str(v) for k, v in as_map(meta.get("labels"), "metadata.labels").items()}


def exported(obj: Json) -> bool:
    """Whether a Service is annotated `kdns.io/export: "true"` (any case of true)."""
    meta = as_map(obj.get("metadata"), "metadata")
    value = as_map(meta.get("annotations"), "metadata.annotations").get(EXPORT_ANNOTATION)
    return str(value).lower() == "true"


def service(obj: Json) -> Service:
    """A v1 Service. A missing clusterIP stays empty: the file source allocates one."""
    ns, name = metadata(obj)
    spec = as_map(obj.get("spec"), "spec")
    kind = as_str(spec.get("type"), "spec.type") or "ClusterIP"
    if kind not in SERVICE_TYPES:
        raise TrimError(f"spec.type must be one of {', '.join(SERVICE_TYPES)}, not {kind!r}")
    ips = [
        as_str(ip, "spec.clusterIPs[]") for ip in as_list(spec.get("clusterIPs"), "spec.clusterIPs")
    ]
    fields = [f"spec.clusterIPs[{i}]" for i in range(len(ips))]
    if not ips and spec.get("clusterIP"):
        ips = [as_str(spec.get("clusterIP"), "spec.clusterIP")]
        fields = ["spec.clusterIP"]
    headless = kind != "ExternalName" and any(ip == "None" for ip in ips)
    if headless or kind == "ExternalName":
        ips, fields = [], []
    ips = [as_ip(ip, field) for ip, field in zip(ips, fields, strict=True)]
    ports = service_ports(spec)
    external = as_str(spec.get("externalName"), "spec.externalName").rstrip(".").lower()
    if kind == "ExternalName" and not external:
        raise TrimError("spec.externalName is required for an ExternalName service")
    external_ips = [
        as_ip(ip, f"spec.externalIPs[{i}]")
        for i, ip in enumerate(as_list(spec.get("externalIPs"), "spec.externalIPs"))
    ]
    lb_ips, lb_hosts = load_balancer(obj)
    selector_map = spec.get("selector")
    selector = (
        tuple(sorted((str(k), str(v)) for k, v in as_map(selector_map, "spec.selector").items()))
        if selector_map
        else None
    )
    return Service(
        namespace=ns,
        name=name,
        type=kind,  # checked against SERVICE_TYPES above
        cluster_ips=tuple(ips),
        headless=headless,
        external_name=external if kind == "ExternalName" else "",
        ports=tuple(ports),
        publish_not_ready=bool(spec.get("publishNotReadyAddresses")),
        selector=selector,
        external_ips=tuple(dict.fromkeys(external_ips + lb_ips)),
        external_hosts=lb_hosts,
        exported=exported(obj),
    )


def service_ports(spec: Json) -> list[ServicePort]:
    """`spec.ports` of a Service or a ServiceImport (the same fields)."""
    ports = []
    for i, port in enumerate(as_list(spec.get("ports"), "spec.ports")):
        port = as_map(port, f"spec.ports[{i}]")
        ports.append(
            ServicePort(
                name=as_str(port.get("name"), f"spec.ports[{i}].name"),
                port=as_port(port.get("port"), f"spec.ports[{i}].port"),
                protocol=as_protocol(port.get("protocol"), f"spec.ports[{i}].protocol"),
            )
        )
    return ports


def load_balancer(obj: Json) -> tuple[list[str], tuple[str, ...]]:
    """`status.loadBalancer.ingress` of a Service or an Ingress: (IPs, host names). An entry
    may carry both; CoreDNS takes the IP then, and so does kdns."""
    status = as_map(obj.get("status"), "status")
    lb = as_map(status.get("loadBalancer"), "status.loadBalancer")
    ips: list[str] = []
    hosts: list[str] = []
    for i, entry in enumerate(as_list(lb.get("ingress"), "status.loadBalancer.ingress")):
        what = f"status.loadBalancer.ingress[{i}]"
        entry = as_map(entry, what)
        if entry.get("ip"):
            ips.append(as_ip(entry.get("ip"), f"{what}.ip"))
        elif entry.get("hostname"):
            hosts.append(as_host(entry.get("hostname"), f"{what}.hostname", wildcard=False))
    return ips, tuple(dict.fromkeys(hosts))


def as_host(value: Any, what: str, *, wildcard: bool = True) -> str:
    """A DNS host name, lower case without a trailing dot; `*.` in front when `wildcard`
    allows it (Ingress rules and route hostnames may be wildcards, nothing else)."""
    text = as_str(value, what).rstrip(".").lower()
    rest = text[2:] if wildcard and text.startswith("*.") else text
    labels = rest.split(".")
    if (
        not rest
        or len(text) > 253
        or not all(is_label(label) for label in labels)
        or (rest is not text and len(labels) < 2)
    ):
        raise TrimError(f"{what} is not a host name: {value!r}")
    return text


def ingress(obj: Json) -> HostRoute:
    """A networking.k8s.io/v1 Ingress: its rules' hosts and its load balancer's addresses."""
    ns, name = metadata(obj)
    spec = as_map(obj.get("spec"), "spec")
    hosts: list[str] = []
    for i, rule in enumerate(as_list(spec.get("rules"), "spec.rules")):
        rule = as_map(rule, f"spec.rules[{i}]")
        if rule.get("host"):  # a rule without host is for every host: no name of its own
            hosts.append(as_host(rule.get("host"), f"spec.rules[{i}].host"))
    ips, hostnames = load_balancer(obj)
    return HostRoute(
        "Ingress", ns, name, tuple(dict.fromkeys(hosts)), tuple(dict.fromkeys(ips)), hostnames
    )


#: The group of the Gateway API.
GATEWAY_GROUP = "gateway.networking.k8s.io"


def route(kind: RouteKind, obj: Json) -> HostRoute:
    """A Gateway API route (HTTPRoute, GRPCRoute, TLSRoute): its hostnames and the Gateways
    of its parentRefs (other parents, such as a Service for a mesh, have no address)."""
    ns, name = metadata(obj)
    spec = as_map(obj.get("spec"), "spec")
    hosts = [
        as_host(host, f"spec.hostnames[{i}]")
        for i, host in enumerate(as_list(spec.get("hostnames"), "spec.hostnames"))
    ]
    parents: list[tuple[str, str, str]] = []
    for i, ref in enumerate(as_list(spec.get("parentRefs"), "spec.parentRefs")):
        what = f"spec.parentRefs[{i}]"
        ref = as_map(ref, what)
        group = as_str(ref.get("group"), f"{what}.group") if "group" in ref else GATEWAY_GROUP
        kind_ = as_str(ref.get("kind"), f"{what}.kind") or "Gateway"
        if group != GATEWAY_GROUP or kind_ != "Gateway":
            continue
        gateway = as_str(ref.get("name"), f"{what}.name")
        if not gateway:
            raise TrimError(f"{what}.name is missing")
        parent_ns = as_str(ref.get("namespace"), f"{what}.namespace") or ns
        section = as_str(ref.get("sectionName"), f"{what}.sectionName")
        parents.append((parent_ns, gateway, section))
    return HostRoute(
        kind,
        ns,
        name,
        tuple(dict.fromkeys(hosts)),
        parents=tuple(dict.fromkeys(parents)),
        refused=_refused(obj, ns),
    )


def _refused(obj: Json, ns: str) -> tuple[tuple[str, str, str, str], ...]:
    """(namespace, name, sectionName, reason) of each Gateway whose entry in the route's
    `status.parents` has the condition Accepted False."""
    status = as_map(obj.get("status"), "status")
    out = []
    for i, entry in enumerate(as_list(status.get("parents"), "status.parents")):
        what = f"status.parents[{i}]"
        entry = as_map(entry, what)
        ref = as_map(entry.get("parentRef"), f"{what}.parentRef")
        for j, cond in enumerate(as_list(entry.get("conditions"), f"{what}.conditions")):
            cond = as_map(cond, f"{what}.conditions[{j}]")
            if cond.get("type") == "Accepted" and cond.get("status") == "False":
                out.append(
                    (
                        as_str(ref.get("namespace"), f"{what}.parentRef.namespace") or ns,
                        as_str(ref.get("name"), f"{what}.parentRef.name"),
                        as_str(ref.get("sectionName"), f"{what}.parentRef.sectionName"),
                        as_str(cond.get("reason"), f"{what}.conditions[{j}].reason"),
                    )
                )
    return tuple(out)


def gateway(obj: Json) -> Gateway:
    """A Gateway API Gateway, trimmed to `status.addresses`: IPAddress entries (and those
    without a type, which the API reads as IPAddress) and Hostname entries; other types
    (NamedAddress, implementation-specific ones) name no DNS answer and are left out. And the
    name and hostname of each listener: which host names it takes traffic for."""
    ns, name = metadata(obj)
    status = as_map(obj.get("status"), "status")
    ips: list[str] = []
    hosts: list[str] = []
    for i, entry in enumerate(as_list(status.get("addresses"), "status.addresses")):
        what = f"status.addresses[{i}]"
        entry = as_map(entry, what)
        kind = as_str(entry.get("type"), f"{what}.type") or "IPAddress"
        if kind == "IPAddress":
            ips.append(as_ip(entry.get("value"), f"{what}.value"))
        elif kind == "Hostname":
            hosts.append(as_host(entry.get("value"), f"{what}.value", wildcard=False))
    spec = as_map(obj.get("spec"), "spec")
    listeners: list[tuple[str, str]] = []
    for i, entry in enumerate(as_list(spec.get("listeners"), "spec.listeners")):
        what = f"spec.listeners[{i}]"
        entry = as_map(entry, what)
        host = entry.get("hostname")
        hostname = as_host(host, f"{what}.hostname") if host else ""
        listeners.append((as_str(entry.get("name"), f"{what}.name"), hostname))
    return Gateway(
        ns, name, tuple(dict.fromkeys(ips)), tuple(dict.fromkeys(hosts)), tuple(listeners)
    )


def _target(ref: Any) -> str:
    ref = as_map(ref, "targetRef")
    if not ref:
        return ""
    return (
        f"{as_str(ref.get('kind'), 'targetRef.kind')}/{as_str(ref.get('name'), 'targetRef.name')}"
    )


def endpoint_slice(obj: Json, targets: bool = True) -> EndpointSet | None:
    """A discovery.k8s.io/v1 EndpointSlice; None for FQDN slices and slices of no service.

    `targets=False` keeps the targetRef of not-ready endpoints only (what `kdns explain` shows);
    the ready ones' are read only by `--endpoint-pod-names`, and at 100,000 endpoints their
    strings are 7 MB of the process."""
    ns, name = metadata(obj)
    svc = labels(obj).get(SERVICE_NAME_LABEL, "")
    family = as_str(obj.get("addressType"), "addressType") or "IPv4"
    if not svc or family not in ("IPv4", "IPv6"):
        return None
    return EndpointSet("EndpointSlice", ns, name, svc, (_slice_subset(obj, family, targets),))


def import_slice(obj: Json) -> ImportSlice | None:
    """An EndpointSlice of a ServiceImport (labelled `multicluster.kubernetes.io/service-name`,
    as an MCS controller makes them); None for FQDN slices and slices of no import. The cluster
    its endpoints are in is its `multicluster.kubernetes.io/source-cluster` label, which must
    be a DNS label: it is one in `<hostname>.<clusterid>.<svc>.<ns>.svc.<clusterset>`."""
    ns, name = metadata(obj)
    found = labels(obj)
    svc = found.get(MCS_SERVICE_NAME_LABEL, "")
    family = as_str(obj.get("addressType"), "addressType") or "IPv4"
    if not svc or family not in ("IPv4", "IPv6"):
        return None
    cluster = found.get(MCS_SOURCE_CLUSTER_LABEL, "")
    if not cluster:
        raise TrimError(f"metadata.labels: {MCS_SOURCE_CLUSTER_LABEL} is missing")
    if not is_label(cluster.lower()):
        raise TrimError(f"metadata.labels: {MCS_SOURCE_CLUSTER_LABEL} {cluster!r} is no DNS label")
    return ImportSlice(ns, name, svc, cluster, (_slice_subset(obj, family, False),))


def _slice_subset(obj: Json, family: str, targets: bool) -> Subset:
    """The endpoints and ports of an EndpointSlice of address type `family` (IPv4 or IPv6)."""
    v6 = family == "IPv6"
    endpoints = []
    # The hot loop of a sync (100,000 endpoints): field paths for error messages are built only
    # when there is an error, and each address is parsed once.
    for i, ep in enumerate(as_list(obj.get("endpoints"), "endpoints")):
        if not isinstance(ep, Mapping):
            ep = as_map(ep, f"endpoints[{i}]")
        cond = ep.get("conditions")
        if not isinstance(cond, Mapping):
            cond = as_map(cond, f"endpoints[{i}].conditions")
        ready = cond.get("ready") is not False and cond.get("terminating") is not True
        raw = ep.get("addresses")
        if not isinstance(raw, list):
            raw = as_list(raw, f"endpoints[{i}].addresses")
        addresses = []
        for a in raw:
            if not isinstance(a, str):
                as_str(a, f"endpoints[{i}].addresses[]")
            canonical = canonical_ip(a)
            if canonical is not None and (":" in canonical) == v6:
                addresses.append(canonical)
        if not addresses:
            continue
        hostname = ep.get("hostname")
        node = ep.get("nodeName")
        hostname = "" if hostname is None else hostname
        node = "" if node is None else node
        if not isinstance(hostname, str):
            as_str(hostname, f"endpoints[{i}].hostname")
        if not isinstance(node, str):
            as_str(node, f"endpoints[{i}].nodeName")
        zone = ep.get("zone")
        zone = "" if zone is None else as_str(zone, f"endpoints[{i}].zone")
        hints = ep.get("hints")
        endpoints.append(
            Endpoint(
                addresses=tuple(addresses),
                hostname=hostname,
                ready=ready,
                node_name=sys.intern(node),
                target=_target(ep.get("targetRef")) if targets or not ready else "",
                zone=sys.intern(zone),
                for_zones=_for_zones(hints, i) if hints is not None else (),
            )
        )
    ports = tuple(_endpoint_ports(obj.get("ports"), "ports"))
    return Subset(tuple(endpoints), ports)


def _for_zones(hints: Any, i: int) -> tuple[str, ...]:
    """`hints.forZones` as zone names (each entry is `{name: ...}`)."""
    where = f"endpoints[{i}].hints.forZones"
    out = []
    for j, entry in enumerate(
        as_list(as_map(hints, f"endpoints[{i}].hints").get("forZones"), where)
    ):
        out.append(
            sys.intern(as_str(as_map(entry, f"{where}[{j}]").get("name"), f"{where}[{j}].name"))
        )
    return tuple(out)


def pod(obj: Json) -> PodAddresses | None:
    """A v1 Pod for `--pods verified`: None while it has no IP or is terminating, once it has
    ended (its IP may already be reused), and while its node has lost touch with it (phase
    Unknown): the pods CoreDNS leaves out too (its list excludes those phases)."""
    ns, name = metadata(obj)
    meta = as_map(obj.get("metadata"), "metadata")
    if meta.get("deletionTimestamp"):
        return None
    status = as_map(obj.get("status"), "status")
    if as_str(status.get("phase"), "status.phase") in ("Succeeded", "Failed", "Unknown"):
        return None
    ips: list[str] = []
    for j, entry in enumerate(as_list(status.get("podIPs"), "status.podIPs")):
        ip = canonical_ip(
            as_str(as_map(entry, f"status.podIPs[{j}]").get("ip"), f"status.podIPs[{j}].ip")
        )
        if ip is not None and ip not in ips:
            ips.append(ip)
    if not ips:
        primary = canonical_ip(as_str(status.get("podIP"), "status.podIP"))
        if primary is not None:
            ips.append(primary)
    if not ips:
        return None
    return PodAddresses(ns, name, tuple(ips))


def _endpoint_ports(value: Any, what: str) -> list[EndpointPort]:
    out = []
    for i, port in enumerate(as_list(value, what)):
        port = as_map(port, f"{what}[{i}]")
        number = port.get("port")
        if number is None:  # a slice port without a number means "all ports": no SRV
            continue
        out.append(
            EndpointPort(
                name=as_str(port.get("name"), f"{what}[{i}].name"),
                port=as_port(number, f"{what}[{i}].port"),
                protocol=as_protocol(port.get("protocol"), f"{what}[{i}].protocol"),
            )
        )
    return out


def endpoints(obj: Json, targets: bool = True) -> EndpointSet:
    """A v1 Endpoints: `addresses` are ready, `notReadyAddresses` are not. `targets` as for
    `endpoint_slice`."""
    ns, name = metadata(obj)
    subsets = []
    for i, sub in enumerate(as_list(obj.get("subsets"), "subsets")):
        sub = as_map(sub, f"subsets[{i}]")
        eps = []
        for field, ready in (("addresses", True), ("notReadyAddresses", False)):
            for j, addr in enumerate(as_list(sub.get(field), f"subsets[{i}].{field}")):
                addr = as_map(addr, f"subsets[{i}].{field}[{j}]")
                eps.append(
                    Endpoint(
                        addresses=(as_ip(addr.get("ip"), f"subsets[{i}].{field}[{j}].ip"),),
                        hostname=as_str(
                            addr.get("hostname"), f"subsets[{i}].{field}[{j}].hostname"
                        ),
                        ready=ready,
                        node_name=sys.intern(
                            as_str(addr.get("nodeName"), f"subsets[{i}].{field}[{j}].nodeName")
                        ),
                        target=_target(addr.get("targetRef")) if targets or not ready else "",
                    )
                )
        ports = tuple(_endpoint_ports(sub.get("ports"), f"subsets[{i}].ports"))
        subsets.append(Subset(tuple(eps), ports))
    return EndpointSet("Endpoints", ns, name, name, tuple(subsets))


IMPORT_TYPES = ("ClusterSetIP", "Headless")


def service_import(obj: Json) -> ServiceImport:
    """A multicluster.x-k8s.io ServiceImport: `spec.type`, `spec.ips` (the clusterset IPs of
    a ClusterSetIP import) and `spec.ports`. An import without IPs is kept (its controller may
    not have allocated them yet); its names answer NXDOMAIN with the reason."""
    ns, name = metadata(obj)
    spec = as_map(obj.get("spec"), "spec")
    kind = as_str(spec.get("type"), "spec.type") or "ClusterSetIP"
    if kind == "ClusterSetIP":
        typed: ImportType = "ClusterSetIP"
    elif kind == "Headless":
        typed = "Headless"
    else:
        raise TrimError(f"spec.type must be one of {', '.join(IMPORT_TYPES)}, not {kind!r}")
    ips = [as_ip(ip, f"spec.ips[{i}]") for i, ip in enumerate(as_list(spec.get("ips"), "spec.ips"))]
    ports = service_ports(spec)
    return ServiceImport(
        ns, name, typed, tuple(dict.fromkeys(ips)) if typed == "ClusterSetIP" else (), tuple(ports)
    )


def service_export(obj: Json) -> ServiceExport:
    """A multicluster.x-k8s.io ServiceExport: the service it exports is the one of its name, or
    the one its `multicluster.kubernetes.io/service-name` label names."""
    ns, name = metadata(obj)
    svc = labels(obj).get(MCS_SERVICE_NAME_LABEL, "") or name
    if not is_label(svc.lower()):
        raise TrimError(f"metadata.labels: {MCS_SERVICE_NAME_LABEL} {svc!r} is no DNS label")
    return ServiceExport(ns, name, svc.lower())


def namespace(obj: Json) -> Namespace:
    """A v1 Namespace (its own namespace field is meaningless and ignored)."""
    meta = as_map(obj.get("metadata"), "metadata")
    name = as_str(meta.get("name"), "metadata.name")
    if not name:
        raise TrimError("metadata.name is missing")
    return Namespace(name)


_ENDPOINT_TRIMMERS: dict[str, Callable[[Json, bool], KubeObject | None]] = {
    "EndpointSlice": endpoint_slice,
    "Endpoints": endpoints,
}
_TRIMMERS: dict[str, Callable[[Json], KubeObject | None]] = {
    "Service": service,
    "EndpointSlice": endpoint_slice,
    "Endpoints": endpoints,
    "Namespace": namespace,
    "Pod": pod,
    "Ingress": ingress,
    "HTTPRoute": partial(route, "HTTPRoute"),
    "GRPCRoute": partial(route, "GRPCRoute"),
    "TLSRoute": partial(route, "TLSRoute"),
    "Gateway": gateway,
    "ServiceImport": service_import,
    "ImportSlice": import_slice,
    "ServiceExport": service_export,
}


def trim(kind: str, obj: Json, *, targets: bool = True) -> KubeObject | None:
    """Convert one API object of `kind` to its record; None when DNS has no use for it.
    `targets=False`: ready endpoints are kept without their targetRef (see `endpoint_slice`)."""
    try:
        convert = _TRIMMERS[kind]
    except KeyError:
        raise TrimError(f"kdns does not read objects of kind {kind!r}") from None
    if not isinstance(obj, Mapping):
        raise TrimError(f"a {kind} must be a mapping")
    if not targets and kind in ("EndpointSlice", "Endpoints"):
        return _ENDPOINT_TRIMMERS[kind](obj, False)
    return convert(obj)
