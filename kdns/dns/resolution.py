"""The answer engine: (question, store) -> records and rcode. All of the DNS spec lives here.

Pure: no sockets, no clock, no threads. The reference is the Kubernetes DNS specification
(schema 1.1.0) and, where it is silent, CoreDNS's kubernetes plugin. The shape of a name decides
what it means, so the engine first splits the question into labels relative to the zone it falls
in, then dispatches on the label count, as CoreDNS's parse.go does:

    <zone>                                    apex: SOA, NS
    dns-version.<zone>                        TXT "1.1.0"
    <ns>.svc.<zone>                           namespace: NODATA or NXDOMAIN
    <svc>.<ns>.svc.<zone>                     service
    <endpoint>.<svc>.<ns>.svc.<zone>          one endpoint (hostname or dashed IP)
    _<port>._<proto>.<svc>.<ns>.svc.<zone>    SRV for a named port
    <a-b-c-d>.<ns>.pod.<zone>                 pod (any address; verified: a pod's, in <ns>)
    <reversed IP>.in-addr.arpa / ip6.arpa     PTR
    <reversed IP prefix>.<same zones>         NODATA when a PTR exists below, else NXDOMAIN

Negative answers carry the zone's SOA so that caches downstream keep them only as long as the
SOA minimum (RFC 2308). Answer owner names are the question's name object itself, so the case
the client asked with is what it gets back (and the encoder compresses them to the question).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSLabel

from kdns.config import PodsMode
from kdns.dns.names import NIBBLES, Grammar, Request, Shape, ZoneKind
from kdns.state.model import Gateway, HostRoute, ip_family
from kdns.state.reverse_index import ReverseIndex
from kdns.state.store import ServiceView, Store

#: The schema version of the Kubernetes DNS specification that kdns implements.
SCHEMA_VERSION = "1.1.0"
#: The schema version of the Multi-Cluster Services DNS specification (KEP-1645), which a
#: clusterset zone's `dns-version` gives.
MCS_SCHEMA_VERSION = "1.0.0"
SCHEMA_TTL = 28800
#: SOA timers, as CoreDNS sets them: refresh, retry, expire.
SOA_TIMERS = (7200, 1800, 86400)
#: How many in-zone CNAMEs (ExternalName services pointing at services) are followed.
MAX_CHASE = 8
#: The longest name DNS carries, in characters without the final dot (255 octets on the wire).
MAX_NAME = 253


def fits(name: str) -> bool:
    """Whether `name` (a final dot or not) is short enough to exist in DNS. Valid objects can
    make longer ones: an endpoint's hostname, its service's and namespace's names (63 each)
    and a long `--domain` add up to more. Such a name is not served: no SRV target, PTR target
    or record listed is ever longer (an answer holding one could not be encoded at all)."""
    return len(name) - name.endswith(".") <= MAX_NAME


#: The cache tag of answers that any change may alter: the response cache drops them on every
#: change (kdns/serve/responder.py spells it `_ANY`).
ANY_TAG = ("*",)

_ADDRESS_TYPES = {QTYPE.A: 4, QTYPE.AAAA: 6}
#: The types `Engine.texts` covers.
_TEXT_TYPES = frozenset((QTYPE.A, QTYPE.AAAA, QTYPE.SRV, QTYPE.CNAME, QTYPE.PTR))


@dataclass(frozen=True, slots=True)
class Cluster:
    """One served zone and the store whose objects answer for it.

    A CLUSTER zone answers as the Kubernetes DNS specification says; an EXTERNAL zone
    (`--external-zone`) answers for the same store's Services, Ingresses and Gateway API routes
    with the addresses that reach them from outside (see `Engine._decide_external`); a
    CLUSTERSET zone (`--clusterset-domain`) answers for the store's ServiceImports and their
    EndpointSlices as the MCS DNS specification says (`Store.service_import`)."""

    domain: str  # lower case, no trailing dot, e.g. "cluster.local"
    store: Store
    kind: ZoneKind = ZoneKind.CLUSTER

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.domain.split(".")) if self.domain else ()


@dataclass(slots=True)
class Answer:
    """The sections of a response, before encoding."""

    rcode: int = RCODE.NOERROR
    #: False for names outside every zone kdns serves (REFUSED, or forwarded upstream).
    authoritative: bool = True
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    #: The decision these records come from (None only for answers made outside the engine).
    resolution: Resolution | None = None
    #: The decisions of the in-zone CNAME targets followed, in order.
    followed: list[Resolution | None] = field(default_factory=list)
    #: SERVFAIL because a source has not finished its first load (the rule said NXDOMAIN).
    unsynced: bool = False
    #: Why the answer is empty or degraded (RFC 8914 Extended DNS Errors): (info-code, text)
    #: pairs, sent to clients that asked with EDNS.
    ede: tuple[tuple[int, str], ...] = ()
    #: An address question at an ExternalName stopped at this target outside kdns's zones (the
    #: server follows it upstream with --upstream, `kdns.ops.external`); "" otherwise.
    outside: str = ""


class Rule(Enum):
    """The rule that decided an answer: one per way a name can resolve (`Engine.decide`)."""

    OUTSIDE = "outside"  # REFUSED (or forwarded)
    APEX = "apex"  # SOA, NS (cluster and reverse zones)
    DNS_VERSION = "dns-version"  # TXT
    NAMESERVER = "nameserver"  # kdns's own addresses
    EMPTY = "empty"  # an empty non-terminal: dns., svc., pod.
    NAMESPACE = "namespace"  # NODATA
    NO_NAMESPACE = "no-namespace"
    NO_SERVICE = "no-service"
    UNKNOWN = "unknown"  # a shape the specification has no name for
    EXTERNAL_NAME = "external-name"  # CNAME
    EXTERNAL_NAME_LEAF = "external-name-leaf"  # a name below an ExternalName service
    EXTERNAL_NAME_IP = "external-name-ip"  # an IP address as externalName
    NO_READY_ENDPOINTS = "no-ready-endpoints"  # headless, nothing ready
    SERVICE = "service"
    ENDPOINT = "endpoint"
    PROTOCOL_LABEL = "protocol-label"  # `_tcp.<svc>`: NODATA above `_port._tcp.<svc>`
    NO_ENDPOINT = "no-endpoint"
    NOT_PORT_FORM = "not-port-form"
    NO_PORT = "no-port"
    PORT = "port"
    PODS_DISABLED = "pods-disabled"
    NOT_AN_ADDRESS = "not-an-address"  # a pod label that spells no address
    NO_POD = "no-pod"  # --pods verified: no pod in the namespace has the address
    POD = "pod"
    REVERSE_PREFIX = "reverse-prefix"  # NODATA: part of a reverse name that has a PTR
    PTR_SERVICE = "ptr-service"
    PTR_ENDPOINT = "ptr-endpoint"
    NO_PTR = "no-ptr"
    # external zones (--external-zone)
    EXPOSED_HOST = "exposed-host"  # an Ingress's or a route's host name
    EXPOSED_SERVICE = "exposed-service"  # `<svc>.<ns>`: external IPs, load balancer ingress
    EXPOSED_PORT = "exposed-port"  # `_<port>._<proto>.<svc>.<ns>`: SRV
    NO_ADDRESS_YET = "no-address-yet"  # NODATA: a host whose load balancer has no address
    NO_LISTENER = "no-listener"  # NODATA: a route's host that none of its Gateways takes
    NOT_EXPOSED = "not-exposed"  # a service with no external IP nor load balancer ingress
    NO_EXPOSED_NAME = "no-exposed-name"  # nothing in the cluster has this name
    # clusterset zones (--clusterset-domain)
    NO_IMPORT = "no-import"  # no ServiceImport of this name in the namespace
    IMPORT_NO_IPS = "import-no-ips"  # a ClusterSetIP import without spec.ips
    CLUSTER_LABEL = "cluster-label"  # NODATA: `<clusterid>.<svc>`, above a cluster's endpoints


#: The rules whose records are the addresses that reach a name from outside.
_EXPOSED_RULES = frozenset({Rule.EXPOSED_HOST, Rule.EXPOSED_SERVICE, Rule.EXPOSED_PORT})

#: RFC 8914 info-code 14, Not Ready: the server cannot answer yet (SERVFAIL before the first sync).
NOT_SYNCED = (14, "not synced with the API yet")


def _takes(gateway: Gateway, section: str, name: str) -> bool:
    """Whether `gateway` takes traffic for host `name` through the listener `section` (any
    listener when ""): one whose hostname is absent, is `name`, or is a wildcard `*.<suffix>`
    that `name` is under (one or more labels, as the Gateway API matches it). A Gateway read
    without listeners (a manifest that leaves its spec out) takes every name."""
    if not gateway.listeners:
        return True
    for listener, hostname in gateway.listeners:
        if section and listener != section:
            continue
        if not hostname or hostname == name:
            return True
        if hostname.startswith("*.") and name.endswith(hostname[1:]):
            return True
    return False


def stale(since: float) -> tuple[int, str]:
    """RFC 8914 info-code 3, Stale Answer: the data is the last the API gave before `since`."""
    at = time.strftime("%H:%M:%S", time.gmtime(since))
    return (3, f"API unreachable since {at}Z, answering from the last data")


#: Info-code 0 (Other): an ExternalName's address question answered by the CNAME alone.
OUTSIDE_NO_UPSTREAM = (0, "ExternalName target outside the zone, no --upstream")

#: The rules whose answer is NXDOMAIN, whatever the type asked.
NXDOMAIN_RULES = frozenset(
    {
        Rule.NO_NAMESPACE,
        Rule.NO_SERVICE,
        Rule.UNKNOWN,
        Rule.EXTERNAL_NAME_LEAF,
        Rule.EXTERNAL_NAME_IP,
        Rule.NO_READY_ENDPOINTS,
        Rule.NO_ENDPOINT,
        Rule.NOT_PORT_FORM,
        Rule.NO_PORT,
        Rule.PODS_DISABLED,
        Rule.NOT_AN_ADDRESS,
        Rule.NO_POD,
        Rule.NO_PTR,
        Rule.NOT_EXPOSED,
        Rule.NO_EXPOSED_NAME,
        Rule.NO_IMPORT,
        Rule.IMPORT_NO_IPS,
    }
)

#: The rules of names that exist and hold no record of any type (NODATA).
_NODATA_RULES = frozenset(
    {
        Rule.NAMESPACE,
        Rule.EMPTY,
        Rule.PROTOCOL_LABEL,
        Rule.REVERSE_PREFIX,
        Rule.NO_ADDRESS_YET,
        Rule.NO_LISTENER,
        Rule.CLUSTER_LABEL,
    }
)

#: The shapes whose rule the shape alone decides.
_SIMPLE_RULES = {
    Shape.APEX: Rule.APEX,
    Shape.DNS_VERSION: Rule.DNS_VERSION,
    Shape.NAMESERVER: Rule.NAMESERVER,
    Shape.NAMESERVER_PARENT: Rule.EMPTY,
    Shape.SVC_ROOT: Rule.EMPTY,
    Shape.POD_ROOT: Rule.EMPTY,
    Shape.UNKNOWN: Rule.UNKNOWN,
}


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a request resolves to before any record is made: the rule, and what it read."""

    rule: Rule
    request: Request[Cluster]
    #: The service the name is at or under.
    view: ServiceView | None = None
    #: ENDPOINT: its addresses; POD: the address; PTR_*: the names; EXTERNAL_NAME: the target.
    values: tuple[str, ...] = ()
    #: PORT: the SRV targets, as `srv_targets` gives them.
    srv: dict[tuple[str | None, int], list[str]] | None = None
    #: PTR_*: the objects that have the address, the one answered first; EXPOSED_*: the
    #: objects whose addresses answer ("Ingress shop/web").
    owners: tuple[str, ...] = ()
    #: EXPOSED_*: the load balancer's host name, when it has no address (a CNAME to it).
    target: str = ""


class Engine:
    """Answers questions for one or more cluster zones and the reverse zones."""

    def __init__(
        self,
        clusters: Sequence[Cluster],
        *,
        ttl: int = 5,
        pods: PodsMode = "insecure",
        ns_addresses: Sequence[str] = (),
        namespaces: frozenset[str] | None = None,
        forwarding: bool = False,
    ) -> None:
        #: Every served zone; `clusters` are those of kind CLUSTER (the reverse zones, AXFR
        #: and the zone listings read those), external zones answer from their stores too.
        self.zones = list(clusters)
        self.clusters = [c for c in self.zones if c.kind is ZoneKind.CLUSTER]
        if not self.clusters:
            raise ValueError("at least one cluster zone is needed")
        self.ttl = ttl
        self.pods = pods
        self.ns_addresses = [a for a in ns_addresses if ip_family(a)]
        #: The namespaces served (`--namespace`; None: all): for the reason of an NXDOMAIN.
        self.namespaces = namespaces
        #: Whether ExternalName targets outside the zones are followed upstream (--upstream).
        self.forwarding = forwarding
        #: The one parser of names for these zones (longest zone first, see `kdns.dns.names`).
        self.grammar: Grammar[Cluster] = Grammar([(c.labels, c, c.kind) for c in self.zones])
        #: The clusterset zones, whose names have PTR records where no cluster's do.
        self.clustersets = [c for c in self.zones if c.kind is ZoneKind.CLUSTERSET]
        self._ptrs = ReverseIndex(
            [c.store for c in self.clusters], [c.store for c in self.clustersets]
        )

    # -- entry point -------------------------------------------------------------------------

    def parse(self, raw: Sequence[bytes]) -> Request[Cluster]:
        """The request a name's labels make (`kdns.dns.names`), case folded."""
        return self.grammar.parse([_text(label).lower() for label in raw])

    def resolve(self, qname: DNSLabel, qtype: int) -> Answer:
        """Answer one question. `qname` is used as the owner of the answer records."""
        return self.answer(self.parse(qname.label), qname, qtype)

    def answer(self, req: Request[Cluster], qname: DNSLabel, qtype: int) -> Answer:
        """Answer the question `req` (parsed from `qname`) asks, for type `qtype`: the one
        resolution (`decide`), then its records (`build`). The answer carries the resolution,
        which is what `kdns explain` prints and the large-answer encoder encodes."""
        return self.respond(self.decide(req), qname, qtype)

    def respond(self, res: Resolution, qname: DNSLabel, qtype: int) -> Answer:
        """The answer to `qtype` at `qname` that the decision `res` (for that name) gives."""
        ans = self.build(res, qname, qtype)
        if ans.rcode == RCODE.NXDOMAIN:
            # A cache downstream would keep an NXDOMAIN given before the data arrived.
            zone = res.request.zone
            clusters = [zone] if zone is not None else self.clusters
            if not all(c.store.synced for c in clusters):
                return Answer(RCODE.SERVFAIL, resolution=res, unsynced=True, ede=(NOT_SYNCED,))
            reason = self.reason(res)
            if reason is not None:
                ans.ede += (reason,)
        since = self.unreachable_since(res)
        if since is not None:
            ans.ede += (stale(since),)
        return ans

    def unreachable_since(self, res: Resolution) -> float | None:
        """Since when the data behind `res` is cut off from its API (None: it is not): the
        zone's store, or any of them for the reverse zones, which hold every cluster's data."""
        zone = res.request.zone
        stores = [zone.store] if zone is not None else [c.store for c in self.clusters]
        times = [s.unreachable_since for s in stores]
        return min((t for t in times if t is not None), default=None)

    def reason(self, res: Resolution) -> tuple[int, str] | None:
        """The Extended DNS Error (RFC 8914) of an NXDOMAIN decided by `res`: info-code 0
        (Other, the only one that fits "the cluster has no such object") and the Kubernetes
        reason, short enough for any UDP answer. The same decision `kdns explain` words."""
        req, rule, view = res.request, res.rule, res.view
        ns, svc = req.namespace, req.service
        if rule is Rule.NO_NAMESPACE:
            if self.namespaces is not None and ns not in self.namespaces:
                return (0, f"namespace {ns} is not served (--namespace)")
            return (0, f"no namespace {ns}")
        if rule is Rule.NO_SERVICE:
            return (0, f"no service {svc} in namespace {ns}")
        if rule is Rule.NO_READY_ENDPOINTS and view is not None:
            return (0, f"service {ns}/{svc} has 0 ready endpoints ({view.not_ready} not ready)")
        if rule is Rule.NO_ENDPOINT:
            return (0, f"service {ns}/{svc} has no ready endpoint named {req.endpoint}")
        if rule is Rule.NO_PORT:
            return (0, f"service {ns}/{svc} has no port {req.port}/{req.protocol}")
        if rule is Rule.PODS_DISABLED:
            return (0, "pod records are off (--pods disabled)")
        if rule is Rule.NO_POD:
            address = res.values[0]
            canonical = address.replace(".", "-").replace(":", "-")
            if req.pod != canonical:
                return (0, f"pod names spell {address} as {canonical}")
            return (0, f"no pod has the address {address} in namespace {ns}")
        if rule is Rule.NO_PTR:
            if req.shape is not Shape.REVERSE:  # a partial or malformed name: no address
                return (0, "not the full reverse name of an address with a PTR record")
            return (0, f"no service or ready endpoint has the address {req.address}")
        if rule is Rule.NOT_EXPOSED:
            return (0, f"service {ns}/{svc} has no externalIPs and no load balancer ingress")
        if rule is Rule.NO_EXPOSED_NAME:
            return (0, "no Ingress rule, route or exposed service has this name")
        if rule is Rule.NO_IMPORT:
            return (0, f"no ServiceImport {svc} in namespace {ns}")
        if rule is Rule.IMPORT_NO_IPS:
            return (0, f"ServiceImport {ns}/{svc} (ClusterSetIP) has no spec.ips")
        return None

    def is_local(self, qname: DNSLabel) -> bool:
        """True when `qname` falls in a zone kdns answers for."""
        return self.parse(qname.label).is_local

    def is_local_labels(self, raw: Sequence[bytes]) -> bool:
        """True when the name of these labels is in a zone kdns answers for."""
        return self.parse(raw).is_local

    def cache_tag(self, raw: Sequence[bytes]) -> tuple[str, ...] | None:
        """What an answer for these labels depends on, besides namespaces and sync state:
        `(zone, namespace, service)` for names at or under a service, `pod_tag` for pod names,
        `("ip", address)` for full reverse names, `ANY_TAG` for partial reverse names (whether
        one is NODATA or NXDOMAIN depends on every address under it, which no narrower tag can
        name), None for the rest (the apex, namespaces, other zones).

        The response cache drops an answer when a change touches its tag.
        """
        return tag_of(self.parse(raw))

    def reverse_non_terminal(self, zone: tuple[str, str], rel: tuple[str, ...]) -> bool:
        """True when `rel` (lower-case labels under the reverse zone `zone`) is part of the
        reverse name of an address that has a PTR record: an empty non-terminal (RFC 4592), so
        NODATA rather than NXDOMAIN, which says nothing exists below (RFC 8020)."""
        span = _reverse_span(zone, rel)
        return span is not None and self._ptrs.any_within(*span)

    def serial_of(self, zone: str) -> Callable[[], int]:
        """The current SOA serial of `zone` (a cluster domain or a reverse zone), as a function."""
        for cluster in self.clusters:
            if cluster.domain == zone:
                store = cluster.store
                return lambda: store.serial
        return self._reverse_serial

    def _reverse_serial(self) -> int:
        # The reverse zones hold the data of every cluster: their serial moves with any of them.
        return sum(c.store.serial for c in self.clusters) % (1 << 32)

    def is_apex(self, raw: Sequence[bytes]) -> bool:
        """True when these labels name a cluster zone (what AXFR may ask for)."""
        return self.parse(raw).shape is Shape.APEX

    # -- helpers -------------------------------------------------------------------------------

    def _soa(self, zone: str, serial: int, mname: str) -> RR:
        refresh, retry, expire = SOA_TIMERS
        return RR(
            zone + ".",
            QTYPE.SOA,
            ttl=self.ttl,
            rdata=SOA(
                mname + ".",
                # hostmaster.<zone>, or hostmaster.dns.<zone> below k8s_external's ns1.dns.
                "hostmaster." + mname.split(".", 1 if mname.startswith("ns1.") else 2)[-1] + ".",
                (serial, refresh, retry, expire, self.ttl),
            ),
        )

    def _address_records(
        self, owner: DNSLabel | str, addresses: Sequence[str], qtype: int
    ) -> list[RR]:
        family = _ADDRESS_TYPES.get(qtype)
        out = []
        for address in addresses:
            fam = ip_family(address)
            if fam == 4 and family in (4, None):
                out.append(RR(owner, QTYPE.A, ttl=self.ttl, rdata=A(address)))
            elif fam == 6 and family in (6, None):
                out.append(RR(owner, QTYPE.AAAA, ttl=self.ttl, rdata=AAAA(address)))
        return out

    # -- the decision: a request and the store -> the rule that answers it ----------------------

    def decide(self, req: Request[Cluster]) -> Resolution:
        """The rule that answers `req`, and the objects it read. Looks up, builds no record:
        the record types asked for only matter to `build`."""
        cluster = req.zone
        shape = req.shape
        if cluster is None:
            if req.reverse_zone is None:
                return Resolution(Rule.OUTSIDE, req)
            return self._decide_reverse(req)
        store = cluster.store
        if shape in _SIMPLE_RULES:
            return Resolution(_SIMPLE_RULES[shape], req)
        if shape is Shape.EXTERNAL:
            return self._decide_external(req, store)
        if shape is Shape.NAMESPACE:
            rule = Rule.NAMESPACE if store.has_namespace(req.namespace) else Rule.NO_NAMESPACE
            return Resolution(rule, req)
        if shape in (Shape.POD_NAMESPACE, Shape.POD):
            if self.pods == "disabled":
                return Resolution(Rule.PODS_DISABLED, req)
            if not store.has_namespace(req.namespace):
                return Resolution(Rule.NO_NAMESPACE, req)
            if shape is Shape.POD_NAMESPACE:
                return Resolution(Rule.NAMESPACE, req)
            address = pod_address(req.pod)
            if address is None:
                return Resolution(Rule.NOT_AN_ADDRESS, req)
            if self.pods == "verified" and (
                # One name per address, as CoreDNS compares it with status.podIP: the dashed
                # canonical text (not `fd00-0041-0000-...`).
                req.pod != address.replace(".", "-").replace(":", "-")
                or not store.has_pod_ip(req.namespace, address)
            ):
                return Resolution(Rule.NO_POD, req, values=(address,))
            return Resolution(Rule.POD, req, values=(address,))
        if shape not in (Shape.SERVICE, Shape.ENDPOINT, Shape.PORT_SERVICE):
            return Resolution(Rule.UNKNOWN, req)
        clusterset = cluster.kind is ZoneKind.CLUSTERSET
        if clusterset:
            view = store.service_import(req.namespace, req.service)
            missing = Rule.NO_IMPORT
        else:
            view = store.service(req.namespace, req.service)
            missing = Rule.NO_SERVICE
        if view is None:
            rule = missing if store.has_namespace(req.namespace) else Rule.NO_NAMESPACE
            return Resolution(rule, req)
        svc = view.service
        if clusterset and not svc.headless and not svc.cluster_ips:
            return Resolution(Rule.IMPORT_NO_IPS, req, view)
        if svc.type == "ExternalName":
            if shape is not Shape.SERVICE:
                return Resolution(Rule.EXTERNAL_NAME_LEAF, req, view)
            if ip_family(svc.external_name):
                return Resolution(Rule.EXTERNAL_NAME_IP, req, view)
            return Resolution(Rule.EXTERNAL_NAME, req, view, values=(svc.external_name,))
        if svc.headless and not view.ready:
            return Resolution(Rule.NO_READY_ENDPOINTS, req, view)  # the spec's explicit negative
        if shape is Shape.SERVICE:
            return Resolution(Rule.SERVICE, req, view)
        if shape is Shape.ENDPOINT:
            label = req.endpoint
            addresses = view.named(label)
            if addresses:
                return Resolution(Rule.ENDPOINT, req, view, values=tuple(addresses))
            if label.startswith("_") and label[1:] in _protocols(view):
                return Resolution(Rule.PROTOCOL_LABEL, req, view)  # above _port._proto
            if clusterset and any(ep.hostname.lower().endswith("." + label) for ep in view.ready):
                return Resolution(Rule.CLUSTER_LABEL, req, view)  # above <host>.<clusterid>
            return Resolution(Rule.NO_ENDPOINT, req, view)
        if not req.port_form:
            return Resolution(Rule.NOT_PORT_FORM, req, view)
        found = srv_targets(view, req.port, req.protocol.upper())
        if not found:
            return Resolution(Rule.NO_PORT, req, view)
        return Resolution(Rule.PORT, req, view, srv=found)

    def _decide_external(self, req: Request[Cluster], store: Store) -> Resolution:
        """A name in an external zone. In this order, so that what a user wrote wins over
        what kdns derives, and a wildcard covers only names that do not exist (RFC 4592):
        the exact host name of an Ingress rule or a route; `<svc>.<ns>` and
        `_<port>._<proto>.<svc>.<ns>` as CoreDNS's k8s_external answers them; a name above a
        host name, or a namespace (NODATA); the closest wildcard host that covers the name."""
        assert req.zone is not None
        domain = req.zone.domain
        host = ".".join(req.rel) + "." + domain
        routes = store.routes_at(host)
        if routes:
            return self._exposed_host(req, store, routes)
        ns, name = req.namespace, req.service
        # A service at this name with no external address: NXDOMAIN, unless a host name
        #: below it or a wildcard over it makes the name exist.
        unexposed: ServiceView | None = None
        if name:
            view = store.service(ns, name)
            if view is not None and req.endpoint:
                svc = view.service
                label = req.endpoint
                if (svc.external_ips or svc.external_hosts) and label[1:] in {
                    p.protocol.lower() for p in svc.ports if p.name and label.startswith("_")
                }:
                    # Above `_<port>._<proto>.<svc>.<ns>`: exists, empty (RFC 8020).
                    return Resolution(Rule.PROTOCOL_LABEL, req, view)
            if view is not None and not req.endpoint:
                svc = view.service
                if not (svc.external_ips or svc.external_hosts):
                    unexposed = view
                elif not req.port:
                    return Resolution(
                        Rule.EXPOSED_SERVICE,
                        req,
                        view,
                        values=svc.external_ips,
                        target=svc.external_hosts[0] if svc.external_hosts else "",
                        owners=(f"Service {ns}/{name}",),
                    )
                else:
                    ports = tuple(
                        p.port
                        for p in svc.ports
                        if p.name
                        and p.name.lower() == req.port
                        and p.protocol.lower() == req.protocol
                    )
                    if ports:
                        srv: dict[tuple[str | None, int], list[str]] = {
                            (None, port): list(svc.external_ips) for port in ports
                        }
                        return Resolution(
                            Rule.EXPOSED_PORT,
                            req,
                            view,
                            values=svc.external_ips,
                            srv=srv,
                            target=svc.external_hosts[0] if svc.external_hosts else "",
                            owners=(f"Service {ns}/{name}",),
                        )
        if store.has_host_below(host) or (len(req.rel) == 1 and store.has_namespace(ns)):
            return Resolution(Rule.EMPTY, req)
        wildcard = self._wildcard(store, req.rel, domain)
        if wildcard:
            return self._exposed_host(req, store, wildcard)
        if unexposed is not None:
            return Resolution(Rule.NOT_EXPOSED, req, unexposed)
        return Resolution(Rule.NO_EXPOSED_NAME, req)

    @staticmethod
    def _wildcard(store: Store, rel: tuple[str, ...], domain: str) -> list[HostRoute]:
        """The routes of the closest wildcard host that covers `rel` in `domain`: an Ingress's
        `*.<rest>` covers one label in front of `<rest>` (the Ingress API's rule), a Gateway
        API route's covers one or more."""
        for i in range(1, len(rel) + 1):
            rest = ".".join((*rel[i:], domain))
            found = [r for r in store.routes_at("*." + rest) if i == 1 or r.kind != "Ingress"]
            if found:
                return found
        return []

    def _exposed_host(
        self, req: Request[Cluster], store: Store, routes: Sequence[HostRoute]
    ) -> Resolution:
        """A host name: the addresses of its Ingresses, and of the Gateways its routes are
        attached to, in that order and without repeats; a CNAME to a load balancer's host
        name only when none has an address."""
        assert req.zone is not None
        name = ".".join(req.rel) + "." + req.zone.domain
        ips: dict[str, None] = {}
        hosts: dict[str, None] = {}
        owners = []
        #: Gateways whose listeners take no traffic for this name: a route's hostname reaches
        #: a Gateway only through a listener whose hostname matches (Gateway API hostname
        #: intersection), and only the listener its parentRef's sectionName names, if any.
        refused = []
        taken = False
        for route in routes:
            owners.append(f"{route.kind} {route.namespace}/{route.name}")
            if route.kind == "Ingress":
                taken = True
                ips.update(dict.fromkeys(route.ips))
                hosts.update(dict.fromkeys(route.hostnames))
            not_accepted = {r[:3]: r[3] for r in route.refused}
            for ns, gw, section in route.parents:
                gateway = store.gateway(ns, gw)
                if gateway is None:
                    continue
                why = not_accepted.get((ns, gw, section))
                if why is not None:
                    refused.append(f"Gateway {ns}/{gw} (the route is not Accepted: {why})")
                    continue
                if not _takes(gateway, section, name):
                    refused.append(f"Gateway {ns}/{gw} (no listener takes this host)")
                    continue
                taken = True
                ips.update(dict.fromkeys(gateway.ips))
                hosts.update(dict.fromkeys(gateway.hostnames))
        if not ips and not hosts:
            rule = Rule.NO_LISTENER if refused and not taken else Rule.NO_ADDRESS_YET
            return Resolution(rule, req, owners=tuple(owners), values=tuple(refused))
        return Resolution(
            Rule.EXPOSED_HOST,
            req,
            values=tuple(ips),
            target=next(iter(hosts), ""),
            owners=tuple(owners),
        )

    def _decide_reverse(self, req: Request[Cluster]) -> Resolution:
        zone = req.reverse_zone
        assert zone is not None
        if req.shape is Shape.REVERSE_APEX:
            return Resolution(Rule.APEX, req)
        if req.shape is Shape.REVERSE_PARTIAL:
            if self.reverse_non_terminal(zone, req.rel):
                return Resolution(Rule.REVERSE_PREFIX, req)
            return Resolution(Rule.NO_PTR, req)
        address = req.address
        for cluster in self.clusters:
            keys = cluster.store.services_by_cluster_ip(address)
            if keys:
                # One name per address: the first service that has it (others are listed).
                owners = tuple(f"service {ns}/{name}" for ns, name in keys)
                ns, name = keys[0]
                target = f"{name}.{ns}.svc.{cluster.domain}."
                return Resolution(Rule.PTR_SERVICE, req, values=(target,), owners=owners)
        targets: list[str] = []
        owners_: list[str] = []
        for cluster in self.clusters:
            for ns, svc, ep in cluster.store.endpoints_by_ip(address):
                target = f"{ep}.{svc}.{ns}.svc.{cluster.domain}."
                if fits(target):
                    targets.append(target)
                    owners_.append(f"endpoint {ep!r} of service {ns}/{svc}")
        if targets:
            return Resolution(Rule.PTR_ENDPOINT, req, values=tuple(targets), owners=tuple(owners_))
        # An address no cluster names: the clusterset names (MCS DNS specification 2.3.3 and
        # 2.4.3 ask for PTR records only where no cluster-local one exists).
        for clusterset in self.clustersets:
            keys, endpoints = clusterset.store.imports_by_ip(address)
            if keys:
                owners = tuple(f"ServiceImport {ns}/{name}" for ns, name in keys)
                ns, name = keys[0]
                target = f"{name}.{ns}.svc.{clusterset.domain}."
                return Resolution(Rule.PTR_SERVICE, req, values=(target,), owners=owners)
            for ns, svc, ep in endpoints:
                target = f"{ep}.{svc}.{ns}.svc.{clusterset.domain}."
                if fits(target):
                    targets.append(target)
                    owners_.append(f"endpoint {ep!r} of ServiceImport {ns}/{svc}")
        if targets:
            return Resolution(Rule.PTR_ENDPOINT, req, values=tuple(targets), owners=tuple(owners_))
        return Resolution(Rule.NO_PTR, req)

    # -- the records: a decision and a type -> the sections ------------------------------------

    def build(
        self, res: Resolution, qname: DNSLabel, qtype: int, chain: tuple[str, ...] = ()
    ) -> Answer:
        """The sections that answer `qtype` at `qname` (the name `res` was decided for).
        `chain`: the names whose CNAMEs led here (lower case, no final dot), when following
        ExternalName targets inside kdns's zones."""
        rule = res.rule
        req = res.request
        if rule is Rule.OUTSIDE:
            return Answer(RCODE.REFUSED, authoritative=False, resolution=res)
        if req.zone is not None:
            zone = req.zone.domain
            serial = req.zone.store.serial
            # An external zone names its server as k8s_external does.
            mname = f"ns1.dns.{zone}" if req.zone.kind is ZoneKind.EXTERNAL else f"ns.dns.{zone}"
        else:
            assert req.reverse_zone is not None
            zone = ".".join(req.reverse_zone)
            serial = self._reverse_serial()
            mname = f"ns.dns.{self.clusters[0].domain}"
        ans = self._records(res, qname, qtype, chain, mname)
        if ans is None:  # NXDOMAIN or NODATA: the zone's SOA says how long to keep it
            rcode = RCODE.NXDOMAIN if rule in NXDOMAIN_RULES else RCODE.NOERROR
            ans = Answer(rcode, authority=[self._soa(zone, serial, mname)])
        elif rule is Rule.APEX and qtype in (QTYPE.SOA, QTYPE.ANY):
            soa = self._soa(zone, serial, mname)
            ans.answer.append(RR(qname, QTYPE.SOA, ttl=soa.ttl, rdata=soa.rdata))
        ans.resolution = res
        return ans

    def texts(self, res: Resolution, qtype: int) -> list[str] | None:
        """The answer `build` gives to `qtype` at the name `res` was decided for, as the rdata
        texts dig prints (addresses in RFC 5952 form), in answer order: only the records of
        that type owned by that name (not an ExternalName target's records, nor the other
        sections). For the types A, AAAA, SRV, CNAME and PTR at the names at and under services
        and at reverse names; None for what it does not cover (other types, the apex,
        dns-version, the nameserver and pod names, SRV at an endpoint's name).

        The same decision, without dnslib: 30 to 100 times cheaper than `build`, for callers that
        compare many answers (the change journal, `kdns.ops.journal`, on every change). It
        mirrors what `_records` makes of each rule, and nothing else; tests/test_journal.py
        holds it equal to `build` over generated stores.
        """
        if qtype not in _TEXT_TYPES:
            return None
        rule = res.rule
        if rule in NXDOMAIN_RULES or rule in _NODATA_RULES:
            return []
        view = res.view
        if rule is Rule.SERVICE:
            assert view is not None
            if qtype == QTYPE.SRV:
                return self._srv_texts(res, srv_targets(view, None, None))
            if qtype not in _ADDRESS_TYPES:
                return []
            svc = view.service
            return _address_texts(view.addresses() if svc.headless else svc.cluster_ips, qtype)
        if rule is Rule.ENDPOINT:
            return None if qtype == QTYPE.SRV else _address_texts(res.values, qtype)
        if rule is Rule.PORT:
            assert res.srv is not None
            if qtype == QTYPE.SRV:
                return self._srv_texts(res, res.srv)
            return _address_texts(dict.fromkeys(a for f in res.srv.values() for a in f), qtype)
        if rule in (Rule.PTR_SERVICE, Rule.PTR_ENDPOINT):
            return list(res.values) if qtype == QTYPE.PTR else []
        if rule is Rule.EXTERNAL_NAME:
            # The CNAME owns the name for every type; the target's records are not its own.
            return [res.values[0] + "."] if qtype == QTYPE.CNAME else []
        return None

    def _srv_texts(
        self, res: Resolution, found: dict[tuple[str | None, int], list[str]]
    ) -> list[str]:
        """`_srv`'s answer records as text."""
        if not found:
            return []
        assert res.view is not None and res.request.zone is not None
        svc = res.view.service
        fqdn = f"{svc.name}.{svc.namespace}.svc.{res.request.zone.domain}."
        found = _named(found, fqdn)
        weight = srv_weight(len(found))
        return [
            f"0 {weight} {port} {name}.{fqdn}" if name is not None else f"0 {weight} {port} {fqdn}"
            for name, port in found
        ]

    def _records(
        self, res: Resolution, qname: DNSLabel, qtype: int, chain: tuple[str, ...], mname: str
    ) -> Answer | None:
        """The positive answer, or None for a negative one (NXDOMAIN when the rule says so)."""
        rule = res.rule
        if rule in NXDOMAIN_RULES:
            return None
        if rule is Rule.APEX:
            if qtype in (QTYPE.SOA, QTYPE.ANY):
                return Answer()  # `build` adds the SOA, which it makes anyway
            if qtype == QTYPE.NS:
                glue = self._address_records(mname + ".", self.ns_addresses, QTYPE.ANY)
                ns = RR(qname, QTYPE.NS, ttl=self.ttl, rdata=NS(mname + "."))
                return Answer(answer=[ns], additional=glue)
            return None
        if rule is Rule.DNS_VERSION:
            if qtype in (QTYPE.TXT, QTYPE.ANY):
                zone = res.request.zone
                clusterset = zone is not None and zone.kind is ZoneKind.CLUSTERSET
                version = MCS_SCHEMA_VERSION if clusterset else SCHEMA_VERSION
                txt = RR(qname, QTYPE.TXT, ttl=SCHEMA_TTL, rdata=TXT(version))
                return Answer(answer=[txt])
            return None
        if rule is Rule.NAMESERVER:
            return self._addresses(qname, self.ns_addresses, qtype)
        if rule is Rule.POD:
            return self._addresses(qname, res.values, qtype)
        if rule is Rule.SERVICE:
            assert res.view is not None
            svc = res.view.service
            if qtype == QTYPE.SRV:
                return self._srv(res, qname, srv_targets(res.view, None, None))
            addresses = res.view.addresses() if svc.headless else svc.cluster_ips
            return self._addresses(qname, addresses, qtype)
        if rule is Rule.ENDPOINT:
            if qtype == QTYPE.SRV:
                return self._endpoint_srv(res, qname)
            return self._addresses(qname, res.values, qtype)
        if rule is Rule.PORT:
            assert res.srv is not None
            if qtype in (QTYPE.SRV, QTYPE.ANY):
                return self._srv(res, qname, res.srv)
            # The addresses the SRV records lead to (CoreDNS answers these; the spec is silent):
            # the ClusterIPs, or the ready endpoints that have the port.
            addresses = list(dict.fromkeys(a for found in res.srv.values() for a in found))
            if qtype in (QTYPE.A, QTYPE.AAAA):
                return self._addresses(qname, addresses, qtype)
            return None
        if rule in (Rule.PTR_SERVICE, Rule.PTR_ENDPOINT):
            if qtype not in (QTYPE.PTR, QTYPE.ANY):
                return None
            return Answer(
                answer=[RR(qname, QTYPE.PTR, ttl=self.ttl, rdata=PTR(t)) for t in res.values]
            )
        if rule is Rule.EXTERNAL_NAME:
            return self._external_name(res.values[0], qname, qtype, chain)
        if rule in _EXPOSED_RULES:
            if qtype in (QTYPE.SRV, QTYPE.ANY) and rule is not Rule.EXPOSED_HOST:
                return self._exposed_srv(res, qname)
            if res.values:
                return self._addresses(qname, res.values, qtype)
            # Known to the load balancer only by name: a CNAME to it, followed as an
            # ExternalName's is (upstream with --upstream).
            return self._external_name(res.target, qname, qtype, chain)
        return None  # the names that exist and hold nothing of this kind: NODATA

    def _exposed_srv(self, res: Resolution, qname: DNSLabel) -> Answer | None:
        """SRV at `<svc>.<ns>.<zone>` (every port) or `_<port>._<proto>.<svc>.<ns>.<zone>`, as
        k8s_external answers: one record per port, aimed at `<svc>.<ns>.<zone>` with the
        external IPs as glue, or at the load balancer's host name when it has no address.
        The weight is k8s_external's: 100 shared over every (address, port) pair."""
        view, zone = res.view, res.request.zone
        assert view is not None and zone is not None
        svc = view.service
        if res.srv is not None:
            ports = [port for _, port in res.srv]
        else:
            ports = list(dict.fromkeys(p.port for p in svc.ports))
        if not ports:
            return None
        entries = len(svc.external_ips) + len(svc.external_hosts)
        weight = srv_weight(entries * len(ports))
        if res.values:
            target = f"{svc.name}.{svc.namespace}.{zone.domain}."
            glue = self._address_records(target, res.values, QTYPE.ANY)
        else:
            target, glue = res.target + ".", []
        return Answer(
            answer=[
                RR(qname, QTYPE.SRV, ttl=self.ttl, rdata=SRV(0, weight, port, target))
                for port in ports
            ],
            additional=glue,
        )

    def _addresses(self, owner: DNSLabel, addresses: Sequence[str], qtype: int) -> Answer | None:
        if qtype not in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
            return None
        records = self._address_records(owner, addresses, qtype)
        return Answer(answer=records) if records else None

    def _endpoint_srv(self, res: Resolution, qname: DNSLabel) -> Answer | None:
        """SRV at an endpoint's own name: one record per port of the endpoints of that name,
        named or not, targeting that name, its addresses as glue (as CoreDNS answers)."""
        view = res.view
        assert view is not None and res.request.zone is not None
        label = res.request.endpoint
        endpoints = view.endpoints_named(label)
        ports = list(dict.fromkeys(p.port for ep in endpoints for p in ep.ports))
        if not ports:
            return None
        svc = view.service
        target = f"{endpoints[0].name}.{svc.name}.{svc.namespace}.svc.{res.request.zone.domain}."
        weight = srv_weight(len(ports))
        return Answer(
            answer=[
                RR(qname, QTYPE.SRV, ttl=self.ttl, rdata=SRV(0, weight, port, target))
                for port in ports
            ],
            additional=self._address_records(target, res.values, QTYPE.ANY),
        )

    def _srv(
        self, res: Resolution, qname: DNSLabel, found: dict[tuple[str | None, int], list[str]]
    ) -> Answer | None:
        """SRV records for the (name, port) pairs of `srv_targets`, with their glue."""
        if not found:
            return None
        view = res.view
        assert view is not None and res.request.zone is not None
        svc = view.service
        fqdn = f"{svc.name}.{svc.namespace}.svc.{res.request.zone.domain}."
        found = _named(found, fqdn)
        if not found:
            return None
        weight = srv_weight(len(found))
        ans = Answer()
        glued: set[str | None] = set()
        for (name, port), addresses in found.items():
            target = f"{name}.{fqdn}" if name is not None else fqdn
            ans.answer.append(
                RR(qname, QTYPE.SRV, ttl=self.ttl, rdata=SRV(0, weight, port, target))
            )
            if name not in glued:
                glued.add(name)
                ans.additional.extend(self._address_records(target, addresses, QTYPE.ANY))
        return ans

    def _external_name(
        self, target: str, qname: DNSLabel, qtype: int, chain: tuple[str, ...]
    ) -> Answer | None:
        # A CNAME owns its name for every type (RFC 1034 3.6.2), as CoreDNS answers; the spec
        # singles out SRV, which gets NODATA.
        if qtype == QTYPE.SRV:
            return None
        cname = RR(qname, QTYPE.CNAME, ttl=self.ttl, rdata=CNAME(target + "."))
        chain = (*chain, str(qname).rstrip(".").lower())
        # A target already in the chain is a loop (a service pointing at itself, or two at each
        # other): the chain ends with the CNAME that closes it, each record given once, as a
        # server following CNAMEs in its own zone does (RFC 1034 4.3.2). CoreDNS answers NODATA.
        if qtype not in (QTYPE.A, QTYPE.AAAA) or len(chain) > MAX_CHASE or target in chain:
            return Answer(answer=[cname])
        chase = self.grammar.parse(target.lower().split("."))
        if chase.zone is None:
            # With --upstream the server adds the target's records (kdns.ops.external).
            ede = () if self.forwarding else (OUTSIDE_NO_UPSTREAM,)
            return Answer(answer=[cname], ede=ede, outside=target)
        # Inside kdns's zones: followed, as a resolver would, with the target's own answer.
        followed = self.build(self.decide(chase), DNSLabel(target), qtype, chain)
        followed.answer.insert(0, cname)
        followed.followed = [followed.resolution, *followed.followed]
        return followed


def tag_of(req: Request[Cluster]) -> tuple[str, ...] | None:
    """The cache tag of a request's answers (see `Engine.cache_tag`)."""
    if req.zone is not None:
        if req.shape is Shape.EXTERNAL:
            # Its answers read routes, Gateways and services of any namespace: no narrower tag.
            return ANY_TAG
        if req.zone.kind is ZoneKind.EXTERNAL:
            return None
        if req.zone.kind is ZoneKind.CLUSTERSET:
            # ServiceImports change no service's tag (see `Store._refresh_import`).
            return ANY_TAG if req.service else None
        if len(req.rel) >= 3 and req.rel[-1] == "svc":
            return (req.zone.domain, req.rel[-2], req.rel[-3])
        if req.shape is Shape.POD:
            return pod_tag(req.zone.domain, req.namespace)
        return None
    if req.shape is Shape.REVERSE:
        return ("ip", req.address)
    if req.shape is Shape.REVERSE_PARTIAL and req.reverse_zone is not None:
        return ANY_TAG if _reverse_span(req.reverse_zone, req.rel) else None
    return None


def lead_of(res: Resolution | None, qtype: int) -> int:
    """How many answer records, from the first, are for the preferred zone (`--prefer-zone`):
    rotation turns them and the rest apart, so the preferred ones always come first. 0 when the
    answer is one group. Read from the decision, so that it holds for the large-answer encoder's
    bytes too (which list the same records in the same order)."""
    if res is None or res.view is None or not res.view.preferred:
        return 0
    view = res.view
    if res.rule is Rule.SERVICE and view.service.headless:
        if qtype == QTYPE.SRV:
            found = srv_targets(view, None, None)
        elif qtype in _ADDRESS_TYPES:
            family = _ADDRESS_TYPES[qtype]
            near = view.preferred_addresses()
            return sum(1 for a in view.addresses() if a in near and ip_family(a) == family)
        else:
            return 0
    elif res.rule is Rule.PORT and res.srv is not None and view.service.headless:
        found = res.srv
        if qtype in _ADDRESS_TYPES:
            family = _ADDRESS_TYPES[qtype]
            near = view.preferred_addresses()
            addresses = dict.fromkeys(a for f in found.values() for a in f)
            return sum(1 for a in addresses if a in near and ip_family(a) == family)
        if qtype != QTYPE.SRV:
            return 0
    else:
        return 0
    near = view.preferred_addresses()
    return sum(1 for addresses in found.values() if addresses and addresses[0] in near)


def pod_tag(domain: str, namespace: str) -> tuple[str, ...]:
    """The cache tag of the pod names of one namespace (`--pods verified` answers depend on
    its pods): four parts, so it cannot be mistaken for a service's or an address's tag."""
    return ("pod", domain, namespace, "")


def srv_weight(records: int) -> int:
    """The weight of each of `records` SRV records: equal shares of 100, at least 1 (as
    CoreDNS gives them; the specification leaves weights to the implementation)."""
    return max(1, 100 // records)


def srv_targets(
    view: ServiceView, port_name: str | None, proto: str | None
) -> dict[tuple[str | None, int], list[str]]:
    """The SRV records of a service, before they are records: (endpoint name, port) for a
    headless service, (None, port) for the service itself, each with the target's addresses, in
    answer order and deduplicated. `port_name` None means every port (the compatibility form);
    otherwise only named ports of that name and protocol match.
    """
    svc = view.service
    found: dict[tuple[str | None, int], list[str]] = {}
    if svc.headless:
        for ep in view.ready:
            for p in ep.ports:
                if port_name is not None and (
                    not p.name or p.name.lower() != port_name or p.protocol != proto
                ):
                    continue
                addrs = found.setdefault((ep.name, p.port), [])
                if ep.address not in addrs:
                    addrs.append(ep.address)
    else:
        for sp in svc.ports:
            if port_name is not None and (
                not sp.name or sp.name.lower() != port_name or sp.protocol != proto
            ):
                continue
            found.setdefault((None, sp.port), list(svc.cluster_ips))
    return found


def _named(
    found: dict[tuple[str | None, int], list[str]], fqdn: str
) -> dict[tuple[str | None, int], list[str]]:
    """`srv_targets`' pairs without the endpoints whose name under `fqdn` cannot exist (`fits`)."""
    if len(fqdn) + 64 <= MAX_NAME:  # no label (63 at most) makes it too long: the usual case
        return found
    return {
        (name, port): addresses
        for (name, port), addresses in found.items()
        if name is None or fits(f"{name}.{fqdn}")
    }


def _address_texts(addresses: Iterable[str], qtype: int) -> list[str]:
    """`Engine._address_records`' records of `qtype` (A or AAAA) as text: the addresses of
    that family (the store holds them in canonical form, which is how dig prints them)."""
    family = _ADDRESS_TYPES.get(qtype)
    if family is None:
        return []
    return [a for a in addresses if _family(a) == family]


def _family(address: str) -> int:
    """`ip_family`, fast for the canonical addresses the store holds: inet_pton takes exactly
    the dotted quads and IPv6 forms that `ipaddress` takes (ten times faster); anything else
    (a scope id, a typo) is left to `ip_family` itself."""
    try:
        if ":" in address:
            socket.inet_pton(socket.AF_INET6, address)
            return 6
        socket.inet_pton(socket.AF_INET, address)
        return 4
    except OSError:
        return ip_family(address)


def _text(label: bytes) -> str:
    # latin-1 maps every byte to one character, so odd bytes never raise and never collide.
    return label.decode("latin-1")


def _protocols(view: ServiceView) -> set[str]:
    svc = view.service
    if svc.headless:
        return {p.protocol.lower() for ep in view.ready for p in ep.ports if p.name}
    return {p.protocol.lower() for p in svc.ports if p.name}


def pod_address(label: str) -> str | None:
    """The address a pod label spells: `10-0-0-1`, or `2001-db8--1` for IPv6."""
    if not label or label.strip("0123456789abcdef-"):
        return None  # nothing but hex digits and dashes (no scope ids, no dots)
    candidates = [label.replace("-", ":")]
    if label.count("-") == 3 and "--" not in label:
        candidates.insert(0, label.replace("-", "."))
    for text in candidates:
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            continue
    return None


def _reverse_span(zone: tuple[str, str], rel: tuple[str, ...]) -> tuple[int, int, int] | None:
    """(IP version, lowest, highest address) under a partial reverse name: one to three octets
    in in-addr.arpa, one to 31 nibbles in ip6.arpa, spelled as `reverse_address` takes them.
    None for anything else, full names included."""
    if zone[0] == "in-addr":
        if not 0 < len(rel) < 4:
            return None
        value = 0
        for label in reversed(rel):
            if not (label.isascii() and label.isdigit()) or (label[0] == "0" and label != "0"):
                return None
            octet = int(label)
            if octet > 255:
                return None
            value = value << 8 | octet
        version, bits = 4, 8 * (4 - len(rel))
    else:
        if not 0 < len(rel) < 32 or not all(len(p) == 1 and p in NIBBLES for p in rel):
            return None
        value = int("".join(reversed(rel)), 16)
        version, bits = 6, 4 * (32 - len(rel))
    low = value << bits
    return version, low, low | ((1 << bits) - 1)
