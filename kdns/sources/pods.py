"""Pods from manifests, and the endpoints a Service gets from them.

In a cluster, the endpoints controllers turn a Service's selector plus the running Pods into
Endpoints and EndpointSlices, and kdns only reads the result. A directory of manifests has no
controller, so for a Service with a selector and no Endpoints or EndpointSlice in the files, the
file source runs the controller's rules itself, here. They follow the v1 endpoints controller
(`pkg/controller/endpoint`) and the EndpointSlice controller where the two agree:

- candidates are the pods in the service's namespace whose labels include every selector pair;
- a pod in a terminal phase (Succeeded, Failed) or without an IP is left out;
- an included pod is ready when its phase is Running, its `Ready` condition is True and it is not
  terminating (`metadata.deletionTimestamp` set). The controllers read only the condition, which
  the kubelet sets only on running pods; a hand-written manifest can say anything, so the phase is
  checked too. Not-ready pods are kept as not-ready endpoints:
  the store counts them when the service has `publishNotReadyAddresses`, as the controllers do
  (which also keep terminating pods only in that case, so the answers are the same);
- one address per IP family of the service: the families of its ClusterIPs, else
  `spec.ipFamilies`, else (headless, nothing said) the family of the pod's primary IP, which is
  what a single-stack cluster's apiserver would have defaulted `ipFamilies` to;
- the endpoint hostname is `spec.hostname` only when `spec.subdomain` is the service's name;
- each service port becomes an endpoint port with the service port's name and protocol and the
  resolved target port: a number as is, a name looked up among the pod's container ports of the
  same protocol (sidecar init containers included), no target port meaning the service port. A
  name the pod does not define drops that port for that pod; a pod with no port left is dropped,
  except that a headless service without ports takes pods without ports.

`Pod` is not a store record: DNS never answers from pods directly (pods mode `insecure` needs no
pod objects), so pods never reach the store: they stay inside the file source, which needs
them again whenever a Service or Pod manifest changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kdns.sources.trim import (
    TrimError,
    as_ip,
    as_list,
    as_map,
    as_port,
    as_protocol,
    as_str,
    labels,
    metadata,
)
from kdns.state.model import (
    Endpoint,
    EndpointPort,
    EndpointSet,
    ObjectKey,
    Service,
    Subset,
    ip_family,
)

Json = Mapping[str, Any]

_FAMILIES = {"IPv4": 4, "IPv6": 6}


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """A named port a pod's container declares (unnamed ones cannot be targeted by name)."""

    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Pod:
    """A v1 Pod, trimmed to what the endpoints controller looks at."""

    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    #: `status.podIPs` (or `[status.podIP]`), primary first.
    ips: tuple[str, ...] = ()
    phase: str = ""
    #: The `Ready` condition is True.
    ready_condition: bool = False
    #: `metadata.deletionTimestamp` is set.
    terminating: bool = False
    hostname: str = ""
    subdomain: str = ""
    node_name: str = ""
    ports: tuple[ContainerPort, ...] = ()

    @property
    def key(self) -> ObjectKey:
        return ("Pod", self.namespace, self.name)

    @property
    def ready(self) -> bool:
        """Ready as the endpoint controllers would publish it (without publishNotReady)."""
        return self.phase == "Running" and self.ready_condition and not self.terminating

    @property
    def terminal(self) -> bool:
        """Succeeded or Failed: never an endpoint, whatever the service says."""
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class TargetPort:
    """One service port with the `targetPort` the trimmed `ServicePort` leaves out."""

    name: str
    port: int
    protocol: str
    #: A port number, or the name of a container port.
    target: int | str


@dataclass(frozen=True, slots=True)
class ServiceTargets:
    """What a Service says about its backends beyond the trimmed `Service` record."""

    ports: tuple[TargetPort, ...] = ()
    #: `spec.ipFamilies` as 4/6, empty when absent.
    families: tuple[int, ...] = ()


def trim_pod(obj: Json) -> Pod:
    """Convert a v1 Pod (API JSON shape) to a `Pod`; raises `TrimError` on impossible values."""
    ns, name = metadata(obj)
    meta = as_map(obj.get("metadata"), "metadata")
    spec = as_map(obj.get("spec"), "spec")
    status = as_map(obj.get("status"), "status")

    ips = [
        as_ip(as_map(entry, f"status.podIPs[{i}]").get("ip"), f"status.podIPs[{i}].ip")
        for i, entry in enumerate(as_list(status.get("podIPs"), "status.podIPs"))
    ]
    if not ips and status.get("podIP"):
        ips = [as_ip(status.get("podIP"), "status.podIP")]

    ready = False
    for i, cond in enumerate(as_list(status.get("conditions"), "status.conditions")):
        cond = as_map(cond, f"status.conditions[{i}]")
        if cond.get("type") == "Ready":
            ready = cond.get("status") == "True"

    ports: list[ContainerPort] = []
    for field in ("containers", "initContainers"):
        for i, container in enumerate(as_list(spec.get(field), f"spec.{field}")):
            where = f"spec.{field}[{i}]"
            container = as_map(container, where)
            # Sidecars (init containers that keep running) count for named ports since 1.29.
            if field == "initContainers" and container.get("restartPolicy") != "Always":
                continue
            for j, port in enumerate(as_list(container.get("ports"), f"{where}.ports")):
                port = as_map(port, f"{where}.ports[{j}]")
                number = as_port(port.get("containerPort"), f"{where}.ports[{j}].containerPort")
                port_name = as_str(port.get("name"), f"{where}.ports[{j}].name")
                protocol = as_protocol(port.get("protocol"), f"{where}.ports[{j}].protocol")
                if port_name:
                    ports.append(ContainerPort(port_name, number, protocol))

    return Pod(
        namespace=ns,
        name=name,
        labels=tuple(sorted(labels(obj).items())),
        ips=tuple(ips),
        phase=as_str(status.get("phase"), "status.phase"),
        ready_condition=ready,
        terminating=meta.get("deletionTimestamp") is not None,
        hostname=as_str(spec.get("hostname"), "spec.hostname"),
        subdomain=as_str(spec.get("subdomain"), "spec.subdomain"),
        node_name=as_str(spec.get("nodeName"), "spec.nodeName"),
        ports=tuple(ports),
    )


def service_targets(obj: Json) -> ServiceTargets:
    """The target ports and IP families of a v1 Service (API JSON shape)."""
    spec = as_map(obj.get("spec"), "spec")
    ports = []
    for i, port in enumerate(as_list(spec.get("ports"), "spec.ports")):
        port = as_map(port, f"spec.ports[{i}]")
        number = port.get("port")
        if isinstance(number, bool) or not isinstance(number, int):
            continue  # kdns.sources.trim reports a bad port; nothing to resolve here
        raw = port.get("targetPort")
        target: int | str
        if raw is None or raw == 0:
            target = number  # what the apiserver defaults an absent targetPort to
        elif isinstance(raw, str):
            if not raw or raw.isdigit():
                raise TrimError(
                    f"spec.ports[{i}].targetPort must be a port number or a port name, not {raw!r}"
                )
            target = raw
        else:
            target = as_port(raw, f"spec.ports[{i}].targetPort")
        ports.append(
            TargetPort(
                name=as_str(port.get("name"), f"spec.ports[{i}].name"),
                port=number,
                protocol=as_protocol(port.get("protocol"), f"spec.ports[{i}].protocol"),
                target=target,
            )
        )
    families = []
    for i, family in enumerate(as_list(spec.get("ipFamilies"), "spec.ipFamilies")):
        if family not in _FAMILIES:
            raise TrimError(f"spec.ipFamilies[{i}] must be IPv4 or IPv6, not {family!r}")
        families.append(_FAMILIES[family])
    return ServiceTargets(tuple(ports), tuple(families))


def selects(service: Service, pod: Pod) -> bool:
    """Whether the service's selector picks the pod (a service without selector picks none)."""
    if service.selector is None or pod.namespace != service.namespace:
        return False
    have = dict(pod.labels)
    return all(have.get(key) == value for key, value in service.selector)


def resolve_port(pod: Pod, target: TargetPort) -> int | None:
    """The pod's port for one service port, or None when a named target is not on the pod."""
    if isinstance(target.target, int):
        return target.target
    for port in pod.ports:
        if port.name == target.target and port.protocol == target.protocol:
            return port.port
    return None


def _addresses(service: Service, targets: ServiceTargets, pod: Pod) -> tuple[str, ...]:
    families: Iterable[int]
    if service.cluster_ips:
        families = dict.fromkeys(ip_family(ip) for ip in service.cluster_ips)
    elif targets.families:
        families = targets.families
    else:
        families = (ip_family(pod.ips[0]),)
    out = []
    for family in families:
        first = next((ip for ip in pod.ips if ip_family(ip) == family), None)
        if first is not None:
            out.append(first)
    return tuple(out)


def endpoints_for(service: Service, targets: ServiceTargets, pods: Iterable[Pod]) -> EndpointSet:
    """The endpoints the controllers would publish for `service`, given the pods that exist.

    Endpoints with the same resolved ports share a subset (as the controller's RepackSubsets
    does); pods are taken in name order so the result does not depend on file order.
    """
    groups: dict[tuple[EndpointPort, ...], list[Endpoint]] = {}
    if service.type != "ExternalName":
        for pod in sorted((p for p in pods if selects(service, p)), key=lambda p: p.name):
            if pod.terminal or not pod.ips:
                continue
            addresses = _addresses(service, targets, pod)
            if not addresses:
                continue
            ports: list[EndpointPort] = []
            for target in targets.ports:
                number = resolve_port(pod, target)
                if number is not None:
                    ports.append(EndpointPort(target.name, number, target.protocol))
            if not ports and (targets.ports or not service.headless):
                continue
            endpoint = Endpoint(
                addresses=addresses,
                hostname=pod.hostname if pod.subdomain == service.name else "",
                ready=pod.ready,
                node_name=pod.node_name,
                target=f"Pod/{pod.name}",
            )
            groups.setdefault(tuple(ports), []).append(endpoint)
    subsets = tuple(Subset(tuple(eps), ports) for ports, eps in groups.items())
    return EndpointSet("Pods", service.namespace, service.name, service.name, subsets)
