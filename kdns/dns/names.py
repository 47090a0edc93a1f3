"""The name grammar: a question's name, turned once into a typed request.

Every consumer of a name (the answer engine, the large-answer encoder, `kdns explain`, the cache
tags of the response cache, AXFR) reads the `Request` that `Grammar.parse` makes, so that the
grammar is written once. It is CoreDNS's `parse.go` and `recordRequest` in spirit: the zone is
found first (the longest served zone the name falls in), then the labels in front of it decide
the shape, by count and by the `svc`/`pod` label, before anything is looked up:

    <zone>                                    APEX
    dns-version.<zone>                        DNS_VERSION
    ns.dns.<zone>, dns.<zone>                 NAMESERVER, NAMESERVER_PARENT
    svc.<zone>, pod.<zone>                    SVC_ROOT, POD_ROOT
    <ns>.svc.<zone>                           NAMESPACE
    <svc>.<ns>.svc.<zone>                     SERVICE
    <label>.<svc>.<ns>.svc.<zone>             ENDPOINT (a hostname, a dashed IP, or `_<proto>`)
    <a>.<b>.<svc>.<ns>.svc.<zone>             PORT_SERVICE (`_<port>._<proto>`; the "_" is
                                              optional, as in CoreDNS)
    <ns>.pod.<zone>, <a-b-c-d>.<ns>.pod.<zone>  POD_NAMESPACE, POD
    <reverse zone>                            REVERSE_APEX (in-addr.arpa, ip6.arpa)
    <reversed IP>.<reverse zone>              REVERSE (a whole address)
    <reversed prefix>.<reverse zone>          REVERSE_PARTIAL
    anything else in a zone                   UNKNOWN (NXDOMAIN)
    anything outside every zone               OUTSIDE (REFUSED, or forwarded)

An external zone (`--external-zone`, CoreDNS's k8s_external) has a grammar of its own, since its
names are what is reachable from outside: any name in it may be a host name of an Ingress or a
Gateway API route, and the labels in front of the zone are read as k8s_external reads them:

    <zone>                                    APEX
    dns.<zone>, ns1.dns.<zone>                NAMESERVER_PARENT, NAMESERVER
    <anything else>.dns.<zone>                UNKNOWN (k8s_external keeps `dns.` for itself)
    <ns>.<zone>                               EXTERNAL, namespace set
    <svc>.<ns>.<zone>                         EXTERNAL, service set
    <label>.<svc>.<ns>.<zone>                 EXTERNAL, endpoint set
    _<port>._<proto>.<svc>.<ns>.<zone>        EXTERNAL, port and protocol set
    longer names                              EXTERNAL (a host name only)

A clusterset zone (`--clusterset-domain`, the Multi-Cluster Services API's `clusterset.local`)
reads `svc.` names as the MCS DNS specification and CoreDNS's multicluster plugin do; it has no
pod names, and its four-label names are either a named port or a cluster's endpoint, told apart
by the second label (CoreDNS's rule: a protocol label starts with "_"):

    <zone>, dns-version., ns.dns., dns., svc.  as in a cluster zone
    <ns>.svc.<zone>                           NAMESPACE
    <svc>.<ns>.svc.<zone>                     SERVICE (a ServiceImport)
    <label>.<svc>.<ns>.svc.<zone>             ENDPOINT, endpoint = the label (`_<proto>`, or a
                                              cluster id: both have names below them)
    <a>._<b>.<svc>.<ns>.svc.<zone>            PORT_SERVICE (`_<port>._<proto>`)
    <host>.<clusterid>.<svc>.<ns>.svc.<zone>  ENDPOINT, endpoint = "<host>.<clusterid>"
    anything else                             UNKNOWN (NXDOMAIN)

The parser looks nothing up: whether a namespace, service or endpoint exists is the resolver's
business. Labels are compared in lower case; the question's own spelling stays with the caller.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

REVERSE_ZONES = (("in-addr", "arpa"), ("ip6", "arpa"))

Z = TypeVar("Z")


class ZoneKind(Enum):
    """What a served zone holds, which decides how its names are read."""

    CLUSTER = "cluster"  # the Kubernetes DNS specification: `svc.`, `pod.`
    EXTERNAL = "external"  # what is reachable from outside (`--external-zone`)
    CLUSTERSET = "clusterset"  # the Multi-Cluster Services API (`--clusterset-domain`)


class Shape(Enum):
    APEX = "apex"
    DNS_VERSION = "dns-version"
    NAMESERVER = "nameserver"
    NAMESERVER_PARENT = "nameserver-parent"
    SVC_ROOT = "svc-root"
    NAMESPACE = "namespace"
    SERVICE = "service"
    ENDPOINT = "endpoint"
    PORT_SERVICE = "port-service"
    POD_ROOT = "pod-root"
    POD_NAMESPACE = "pod-namespace"
    POD = "pod"
    REVERSE_APEX = "reverse-apex"
    REVERSE = "reverse"
    REVERSE_PARTIAL = "reverse-partial"
    EXTERNAL = "external"  # a name in an external zone below its apex (see the module doc)
    UNKNOWN = "unknown"
    OUTSIDE = "outside"


@dataclass(frozen=True, slots=True)
class Request(Generic[Z]):
    """What a name asks for, before any lookup.

    `zone` is the served zone the name falls in (None for the reverse zones and outside);
    `rel` the lower-case labels in front of the zone (or of the reverse zone). The other fields
    are set for the shapes that have them.
    """

    shape: Shape
    zone: Z | None = None
    rel: tuple[str, ...] = ()
    namespace: str = ""
    service: str = ""
    #: ENDPOINT: the first label; PORT_SERVICE: the two labels in front of the service.
    endpoint: str = ""
    port: str = ""
    protocol: str = ""
    #: POD: the dashed address label.
    pod: str = ""
    #: REVERSE, REVERSE_PARTIAL, REVERSE_APEX: which reverse zone.
    reverse_zone: tuple[str, str] | None = None
    #: REVERSE: the address the name spells.
    address: str = ""

    @property
    def is_local(self) -> bool:
        """True when the name falls in a zone kdns answers for."""
        return self.shape is not Shape.OUTSIDE

    @property
    def under_service(self) -> bool:
        """True for names at or under `<svc>.<ns>.svc.<zone>` (their answers depend on it)."""
        return bool(self.service)

    @property
    def port_form(self) -> bool:
        """PORT_SERVICE with a port and a protocol label that are not empty (`_` alone is)."""
        return bool(self.port) and bool(self.protocol)


class Grammar(Generic[Z]):
    """Parses names for a set of zones. `zones` pairs each zone's labels with its value, and
    optionally its kind (CLUSTER when left out)."""

    def __init__(
        self,
        zones: Sequence[tuple[tuple[str, ...], Z] | tuple[tuple[str, ...], Z, ZoneKind]],
    ) -> None:
        # Longest zone first, so that a zone nested in another one wins its names; on a tie
        # the first given.
        full = [(z[0], z[1], z[2] if len(z) == 3 else ZoneKind.CLUSTER) for z in zones]
        self._zones = sorted(full, key=lambda z: -len(z[0]))

    def parse(self, labels: Sequence[str]) -> Request[Z]:
        """The request of a name given as its lower-case labels (no trailing empty label)."""
        labels = tuple(labels)
        for zone_labels, zone, kind in self._zones:
            if labels[len(labels) - len(zone_labels) :] == zone_labels:
                rel = labels[: len(labels) - len(zone_labels)]
                if kind is ZoneKind.EXTERNAL:
                    return _external(zone, rel)
                if kind is ZoneKind.CLUSTERSET:
                    return _clusterset(zone, rel)
                return _forward(zone, rel)
        for reverse in REVERSE_ZONES:
            if labels[-2:] == reverse:
                return _reverse(reverse, labels[:-2])
        return Request(Shape.OUTSIDE, rel=labels)

    def zone_of(self, labels: Sequence[str]) -> Z | None:
        """The served zone `labels` falls in, if any (the reverse zones are not served zones)."""
        return self.parse(labels).zone


def _forward(zone: Z, rel: tuple[str, ...]) -> Request[Z]:
    if not rel:
        return Request(Shape.APEX, zone)
    if rel == ("dns-version",):
        return Request(Shape.DNS_VERSION, zone, rel)
    if rel == ("ns", "dns"):
        return Request(Shape.NAMESERVER, zone, rel)
    if rel == ("dns",):
        return Request(Shape.NAMESERVER_PARENT, zone, rel)
    kind, parts = rel[-1], rel[:-1]
    if kind == "svc":
        if not parts:
            return Request(Shape.SVC_ROOT, zone, rel)
        ns = parts[-1]
        if len(parts) == 1:
            return Request(Shape.NAMESPACE, zone, rel, namespace=ns)
        if len(parts) > 4:
            return Request(Shape.UNKNOWN, zone, rel)
        svc = parts[-2]
        if len(parts) == 2:
            return Request(Shape.SERVICE, zone, rel, namespace=ns, service=svc)
        if len(parts) == 3:
            return Request(Shape.ENDPOINT, zone, rel, namespace=ns, service=svc, endpoint=parts[0])
        # `_<port>._<proto>`; as CoreDNS's parse.go does, one leading "_" is optional on each
        # (`http.tcp.<svc>` is the same question), so clients that drop it are answered too.
        return _port_form(Shape.PORT_SERVICE, zone, rel, ns, svc, parts[0], parts[1])
    if kind == "pod":
        if not parts:
            return Request(Shape.POD_ROOT, zone, rel)
        if len(parts) > 2:
            return Request(Shape.UNKNOWN, zone, rel)
        if len(parts) == 1:
            return Request(Shape.POD_NAMESPACE, zone, rel, namespace=parts[0])
        return Request(Shape.POD, zone, rel, namespace=parts[1], pod=parts[0])
    return Request(Shape.UNKNOWN, zone, rel)


def _external(zone: Z, rel: tuple[str, ...]) -> Request[Z]:
    if not rel:
        return Request(Shape.APEX, zone)
    if rel[-1] == "dns":
        if len(rel) == 1:
            return Request(Shape.NAMESERVER_PARENT, zone, rel)
        if rel == ("ns1", "dns"):
            return Request(Shape.NAMESERVER, zone, rel)
        return Request(Shape.UNKNOWN, zone, rel)
    ns = rel[-1]
    if len(rel) == 1:
        return Request(Shape.EXTERNAL, zone, rel, namespace=ns)
    svc = rel[-2]
    if len(rel) == 2:
        return Request(Shape.EXTERNAL, zone, rel, namespace=ns, service=svc)
    if len(rel) == 3:
        return Request(Shape.EXTERNAL, zone, rel, namespace=ns, service=svc, endpoint=rel[0])
    if len(rel) == 4:
        return _port_form(Shape.EXTERNAL, zone, rel, ns, svc, rel[0], rel[1])
    return Request(Shape.EXTERNAL, zone, rel)


def _clusterset(zone: Z, rel: tuple[str, ...]) -> Request[Z]:
    if not rel or rel[-1] != "svc" or len(rel) != 5:
        if rel and rel[-1] == "pod":
            return Request(Shape.UNKNOWN, zone, rel)  # the MCS API names no pods
        return _forward(zone, rel)
    # `<a>.<b>.<svc>.<ns>.svc`: a port when <b> starts with "_", else a cluster's endpoint.
    a, b, svc, ns = rel[:4]
    if b.startswith("_"):
        return _port_form(Shape.PORT_SERVICE, zone, rel, ns, svc, a, b)
    return Request(Shape.ENDPOINT, zone, rel, namespace=ns, service=svc, endpoint=f"{a}.{b}")


def _port_form(
    shape: Shape, zone: Z, rel: tuple[str, ...], ns: str, svc: str, port: str, proto: str
) -> Request[Z]:
    """`_<port>._<proto>.<svc>.<ns>...`; as CoreDNS's parse.go does, one leading "_" is
    optional on each label (`http.tcp.<svc>` is the same question)."""
    return Request(
        shape,
        zone,
        rel,
        namespace=ns,
        service=svc,
        port=_strip_underscore(port),
        protocol=_strip_underscore(proto),
    )


def _strip_underscore(label: str) -> str:
    return label[1:] if label.startswith("_") else label


def _reverse(reverse: tuple[str, str], rel: tuple[str, ...]) -> Request[Z]:
    if not rel:
        return Request(Shape.REVERSE_APEX, rel=rel, reverse_zone=reverse)
    address = reverse_address(reverse, rel)
    if address is not None:
        return Request(Shape.REVERSE, rel=rel, reverse_zone=reverse, address=address)
    return Request(Shape.REVERSE_PARTIAL, rel=rel, reverse_zone=reverse)


def reverse_address(zone: tuple[str, str], rel: tuple[str, ...]) -> str | None:
    """The address a full reverse name stands for, in canonical form; None otherwise."""
    try:
        if zone[0] == "in-addr":
            if len(rel) != 4 or not all(p.isdigit() and str(int(p)) == p for p in rel):
                return None
            return str(ipaddress.IPv4Address(".".join(reversed(rel))))
        if len(rel) != 32 or not all(len(p) == 1 and p in NIBBLES for p in rel):
            return None
        nibbles = "".join(reversed(rel))
        return str(ipaddress.IPv6Address(int(nibbles, 16)))
    except ValueError:
        return None


NIBBLES = frozenset("0123456789abcdef")
