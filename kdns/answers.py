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
    <a-b-c-d>.<ns>.pod.<zone>                 pod (mode insecure)
    <reversed IP>.in-addr.arpa / ip6.arpa     PTR
    <reversed IP prefix>.<same zones>         NODATA when a PTR exists below, else NXDOMAIN

Negative answers carry the zone's SOA so that caches downstream keep them only as long as the
SOA minimum (RFC 2308). Answer owner names are the question's name object itself, so the case
the client asked with is what it gets back (and the encoder compresses them to the question).
"""

from __future__ import annotations

import ipaddress
import socket
import weakref
from bisect import bisect_left
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSLabel

from .model import ip_family
from .names import NIBBLES, Grammar, Request, Shape
from .store import ServiceView, Store

PodsMode = Literal["insecure", "disabled"]

#: The schema version of the Kubernetes DNS specification that kdns implements.
SCHEMA_VERSION = "1.1.0"
SCHEMA_TTL = 28800
#: SOA timers, as CoreDNS sets them: refresh, retry, expire.
SOA_TIMERS = (7200, 1800, 86400)
#: How many in-zone CNAMEs (ExternalName services pointing at services) are followed.
MAX_CHASE = 8

#: The cache tag of answers that any change may alter: the response cache drops them on every
#: change (kdns/responder.py spells it `_ANY`).
ANY_TAG = ("*",)

_ADDRESS_TYPES = {QTYPE.A: 4, QTYPE.AAAA: 6}


@dataclass(frozen=True, slots=True)
class Cluster:
    """One served zone and the store whose objects answer for it."""

    domain: str  # lower case, no trailing dot, e.g. "cluster.local"
    store: Store

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


class Engine:
    """Answers questions for one or more cluster zones and the reverse zones."""

    def __init__(
        self,
        clusters: Sequence[Cluster],
        *,
        ttl: int = 5,
        pods: PodsMode = "insecure",
        ns_addresses: Sequence[str] = (),
    ) -> None:
        if not clusters:
            raise ValueError("at least one cluster zone is needed")
        self.clusters = list(clusters)
        self.ttl = ttl
        self.pods = pods
        self.ns_addresses = [a for a in ns_addresses if ip_family(a)]
        #: The one parser of names for these zones (longest zone first, see `kdns.names`).
        self.grammar: Grammar[Cluster] = Grammar([(c.labels, c) for c in self.clusters])
        self._ptrs = _PtrIndex([c.store for c in self.clusters])

    # -- entry point -------------------------------------------------------------------------

    def parse(self, raw: Sequence[bytes]) -> Request[Cluster]:
        """The request a name's labels make (`kdns.names`), case folded."""
        return self.grammar.parse([_text(label).lower() for label in raw])

    def resolve(self, qname: DNSLabel, qtype: int) -> Answer:
        """Answer one question. `qname` is used as the owner of the answer records."""
        return self.answer(self.parse(qname.label), qname, qtype)

    def answer(self, req: Request[Cluster], qname: DNSLabel, qtype: int) -> Answer:
        """Answer the question `req` (parsed from `qname`) asks, for type `qtype`."""
        if req.zone is not None:
            return self._unsynced(self._forward(req, qname, qtype, 0), [req.zone])
        if req.reverse_zone is not None:
            return self._unsynced(self._reverse(req, qname, qtype), self.clusters)
        return Answer(RCODE.REFUSED, authoritative=False)

    def is_local(self, qname: DNSLabel) -> bool:
        """True when `qname` falls in a zone kdns answers for."""
        return self.parse(qname.label).is_local

    def is_local_labels(self, raw: Sequence[bytes]) -> bool:
        """True when the name of these labels is in a zone kdns answers for."""
        return self.parse(raw).is_local

    def cache_tag(self, raw: Sequence[bytes]) -> tuple[str, ...] | None:
        """What an answer for these labels depends on, besides namespaces and sync state:
        `(zone, namespace, service)` for names at or under a service, `("ip", address)` for
        full reverse names, `ANY_TAG` for partial reverse names (whether one is NODATA or
        NXDOMAIN depends on every address under it, which no narrower tag can name), None for
        the rest (the apex, namespaces, pods, other zones).

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

    @staticmethod
    def _unsynced(ans: Answer, clusters: Sequence[Cluster]) -> Answer:
        # A cache downstream would keep an NXDOMAIN given before the data arrived.
        if ans.rcode == RCODE.NXDOMAIN and not all(c.store.synced for c in clusters):
            return Answer(RCODE.SERVFAIL)
        return ans

    # -- helpers -------------------------------------------------------------------------------

    def _soa(self, zone: str, serial: int, mname: str) -> RR:
        refresh, retry, expire = SOA_TIMERS
        return RR(
            zone + ".",
            QTYPE.SOA,
            ttl=self.ttl,
            rdata=SOA(
                mname + ".",
                "hostmaster." + mname.split(".", 2)[-1] + ".",
                (serial, refresh, retry, expire, self.ttl),
            ),
        )

    def _negative(self, rcode: int, soa: RR) -> Answer:
        return Answer(rcode, authority=[soa])

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

    # -- forward zone ----------------------------------------------------------------------

    def _forward(self, req: Request[Cluster], qname: DNSLabel, qtype: int, depth: int) -> Answer:
        cluster = req.zone
        assert cluster is not None
        zone = cluster.domain
        store = cluster.store
        mname = f"ns.dns.{zone}"
        soa = self._soa(zone, store.serial, mname)
        nodata = self._negative(RCODE.NOERROR, soa)
        nxdomain = self._negative(RCODE.NXDOMAIN, soa)
        shape = req.shape
        if shape is Shape.APEX:
            return self._apex(zone, soa, mname, qname, qtype)
        if shape is Shape.DNS_VERSION:
            if qtype in (QTYPE.TXT, QTYPE.ANY):
                return Answer(
                    answer=[RR(qname, QTYPE.TXT, ttl=SCHEMA_TTL, rdata=TXT(SCHEMA_VERSION))]
                )
            return nodata
        if shape is Shape.NAMESERVER:
            if qtype not in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
                return nodata
            records = self._address_records(qname, self.ns_addresses, qtype)
            return Answer(answer=records) if records else nodata
        if shape in (Shape.NAMESERVER_PARENT, Shape.SVC_ROOT, Shape.POD_ROOT):
            return nodata  # empty non-terminals
        if shape is Shape.NAMESPACE:
            return nodata if store.has_namespace(req.namespace) else nxdomain
        if shape in (Shape.SERVICE, Shape.ENDPOINT, Shape.PORT_SERVICE):
            return self._svc(req, qname, qtype, nodata, nxdomain, depth)
        if shape in (Shape.POD_NAMESPACE, Shape.POD):
            if self.pods == "disabled" or not store.has_namespace(req.namespace):
                return nxdomain
            if shape is Shape.POD_NAMESPACE:
                return nodata
            address = pod_address(req.pod)
            if address is None:
                return nxdomain
            records = self._address_records(qname, [address], qtype)
            if records and qtype in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
                return Answer(answer=records)
            return nodata
        return nxdomain

    def _apex(self, zone: str, soa: RR, mname: str, qname: DNSLabel, qtype: int) -> Answer:
        if qtype in (QTYPE.SOA, QTYPE.ANY):
            return Answer(answer=[RR(qname, QTYPE.SOA, ttl=soa.ttl, rdata=soa.rdata)])
        if qtype == QTYPE.NS:
            glue = self._address_records(mname + ".", self.ns_addresses, QTYPE.ANY)
            return Answer(
                answer=[RR(qname, QTYPE.NS, ttl=self.ttl, rdata=NS(mname + "."))],
                additional=glue,
            )
        return self._negative(RCODE.NOERROR, soa)

    def _svc(
        self,
        req: Request[Cluster],
        qname: DNSLabel,
        qtype: int,
        nodata: Answer,
        nxdomain: Answer,
        depth: int,
    ) -> Answer:
        cluster = req.zone
        assert cluster is not None
        view = cluster.store.service(req.namespace, req.service)
        if view is None:
            return nxdomain
        svc = view.service
        fqdn = f"{svc.name}.{svc.namespace}.svc.{cluster.domain}."
        if svc.type == "ExternalName":
            if req.shape is not Shape.SERVICE or ip_family(svc.external_name):
                return nxdomain
            return self._external_name(svc.external_name, qname, qtype, nodata, depth)
        if svc.headless and not view.ready:
            return nxdomain  # the spec's one explicit negative rule
        if req.shape is Shape.SERVICE:
            return self._service(view, fqdn, qname, qtype, nodata, cluster.domain)
        if req.shape is Shape.ENDPOINT:
            label = req.endpoint
            addresses = view.named(label)
            if addresses:
                if qtype == QTYPE.SRV:
                    return self._endpoint_srv(view, label, fqdn, qname) or nodata
                records = self._address_records(qname, addresses, qtype)
                if records and qtype in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
                    return Answer(answer=records)
                return nodata
            if label.startswith("_") and label[1:] in _protocols(view):
                return nodata  # empty non-terminal above _port._proto
            return nxdomain
        if not req.port_form:
            return nxdomain
        found = srv_targets(view, req.port, req.protocol.upper())
        if not found:
            return nxdomain
        if qtype in (QTYPE.SRV, QTYPE.ANY):
            srv = self._srv(view, fqdn, qname, cluster.domain, req.port, req.protocol.upper())
            return srv or nodata
        if qtype in (QTYPE.A, QTYPE.AAAA):
            # The addresses the SRV records lead to (CoreDNS answers these; the spec is silent):
            # the ClusterIPs, or the ready endpoints that have the port.
            addresses = list(dict.fromkeys(a for found_ in found.values() for a in found_))
            records = self._address_records(qname, addresses, qtype)
            return Answer(answer=records) if records else nodata
        return nodata

    def _endpoint_srv(
        self, view: ServiceView, label: str, fqdn: str, qname: DNSLabel
    ) -> Answer | None:
        """SRV at an endpoint's own name: one record per port of the endpoints of that name,
        named or not, targeting that name, its addresses as glue (as CoreDNS answers)."""
        endpoints = [ep for ep in view.ready if ep.name.lower() == label]
        ports = list(dict.fromkeys(p.port for ep in endpoints for p in ep.ports))
        if not ports:
            return None
        target = f"{endpoints[0].name}.{fqdn}"
        weight = max(1, 100 // len(ports))
        addresses = list(dict.fromkeys(ep.address for ep in endpoints))
        return Answer(
            answer=[
                RR(qname, QTYPE.SRV, ttl=self.ttl, rdata=SRV(0, weight, port, target))
                for port in ports
            ],
            additional=self._address_records(target, addresses, QTYPE.ANY),
        )

    def _service(
        self,
        view: ServiceView,
        fqdn: str,
        qname: DNSLabel,
        qtype: int,
        nodata: Answer,
        domain: str,
    ) -> Answer:
        svc = view.service
        if qtype in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
            addresses = view.addresses() if svc.headless else list(svc.cluster_ips)
            records = self._address_records(qname, addresses, qtype)
            return Answer(answer=records) if records else nodata
        if qtype == QTYPE.SRV:
            srv = self._srv(view, fqdn, qname, domain, None, None)
            return srv if srv is not None else nodata
        return nodata

    def _srv(
        self,
        view: ServiceView,
        fqdn: str,
        qname: DNSLabel,
        domain: str,
        port_name: str | None,
        proto: str | None,
    ) -> Answer | None:
        """SRV records for the named port (every port when `port_name` is None).

        None when nothing matches: for the `_port._proto` form that means NXDOMAIN.
        """
        found = {
            (f"{name}.{fqdn}" if name is not None else fqdn, port): addresses
            for (name, port), addresses in srv_targets(view, port_name, proto).items()
        }
        if not found:
            return None
        weight = max(1, 100 // len(found))
        ans = Answer()
        glued: set[str] = set()
        for (target, port), addresses in found.items():
            ans.answer.append(
                RR(qname, QTYPE.SRV, ttl=self.ttl, rdata=SRV(0, weight, port, target))
            )
            if target not in glued:
                glued.add(target)
                ans.additional.extend(self._address_records(target, addresses, QTYPE.ANY))
        return ans

    def _external_name(
        self,
        target: str,
        qname: DNSLabel,
        qtype: int,
        nodata: Answer,
        depth: int,
    ) -> Answer:
        # A CNAME owns its name for every type (RFC 1034 3.6.2), as CoreDNS answers; the spec
        # singles out SRV, which gets NODATA.
        if qtype == QTYPE.SRV:
            return nodata
        cname = RR(qname, QTYPE.CNAME, ttl=self.ttl, rdata=CNAME(target + "."))
        if qtype not in (QTYPE.A, QTYPE.AAAA) or depth >= MAX_CHASE:
            return Answer(answer=[cname])
        chase = self.grammar.parse(target.lower().split("."))
        if chase.zone is not None:
            chased = self._forward(chase, DNSLabel(target), qtype, depth + 1)
            chased.answer.insert(0, cname)
            return chased
        return Answer(answer=[cname])

    # -- reverse zones -----------------------------------------------------------------------

    def _reverse(self, req: Request[Cluster], qname: DNSLabel, qtype: int) -> Answer:
        zone = req.reverse_zone
        assert zone is not None
        first = self.clusters[0]
        zone_name = ".".join(zone)
        mname = f"ns.dns.{first.domain}"
        soa = self._soa(zone_name, self._reverse_serial(), mname)
        if req.shape is Shape.REVERSE_APEX:
            return self._apex(zone_name, soa, mname, qname, qtype)
        address = req.address
        if req.shape is Shape.REVERSE_PARTIAL:
            if self.reverse_non_terminal(zone, req.rel):
                return self._negative(RCODE.NOERROR, soa)
            return self._negative(RCODE.NXDOMAIN, soa)
        targets: list[str] = []
        for cluster in self.clusters:
            keys = cluster.store.services_by_cluster_ip(address)
            if keys:
                ns, name = keys[0]
                targets = [f"{name}.{ns}.svc.{cluster.domain}."]
                break
        if not targets:
            for cluster in self.clusters:
                for ns, svc, ep in cluster.store.endpoints_by_ip(address):
                    targets.append(f"{ep}.{svc}.{ns}.svc.{cluster.domain}.")
        if not targets:
            return self._negative(RCODE.NXDOMAIN, soa)
        if qtype not in (QTYPE.PTR, QTYPE.ANY):
            return self._negative(RCODE.NOERROR, soa)
        return Answer(answer=[RR(qname, QTYPE.PTR, ttl=self.ttl, rdata=PTR(t)) for t in targets])


def tag_of(req: Request[Cluster]) -> tuple[str, ...] | None:
    """The cache tag of a request's answers (see `Engine.cache_tag`)."""
    if req.zone is not None:
        if len(req.rel) >= 3 and req.rel[-1] == "svc":
            return (req.zone.domain, req.rel[-2], req.rel[-3])
        return None
    if req.shape is Shape.REVERSE:
        return ("ip", req.address)
    if req.shape is Shape.REVERSE_PARTIAL and req.reverse_zone is not None:
        return ANY_TAG if _reverse_span(req.reverse_zone, req.rel) else None
    return None


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


def _ip_value(address: str) -> tuple[int, int] | None:
    """(version, integer value) of an address, None when no reverse name reaches it (a scoped
    IPv6 address: `reverse_address` never spells the scope)."""
    family, version = (socket.AF_INET6, 6) if ":" in address else (socket.AF_INET, 4)
    try:
        return version, int.from_bytes(socket.inet_pton(family, address))
    except OSError:
        return None


class _PtrIndex:
    """The addresses that have a PTR record in any of `stores`, as sorted integers per IP
    version: whether anything exists under a partial reverse name is then one bisection.

    Built on the first partial reverse name asked, so a server never asked one pays nothing.
    From then on it follows the stores: each change only records the addresses it touched (a set
    union, on the write path), and the next partial name applies them. A few are inserted or
    removed one by one; many (a relist) are merged in one pass. When changes pile up unread the
    index is dropped and built again when next needed, so that an index nobody asks keeps no
    growing backlog.
    """

    #: Up to this many pending addresses are applied one by one (a list insert each).
    ONE_BY_ONE = 64
    #: More pending addresses than this, and more than the index holds: drop it.
    BACKLOG = 4096

    def __init__(self, stores: Sequence[Store]) -> None:
        self._stores = list({id(s): s for s in stores}.values())
        self._values: dict[int, list[int]] | None = None
        self._pending: set[str] = set()
        self._subscribed = False

    def any_within(self, version: int, low: int, high: int) -> bool:
        values = self._current()[version]
        i = bisect_left(values, low)
        return i < len(values) and values[i] <= high

    def _current(self) -> dict[int, list[int]]:
        if not self._subscribed:
            self._subscribed = True
            # A weak reference: an engine that is dropped leaves a listener that does nothing.
            ref = weakref.ref(self)
            for store in self._stores:
                store.subscribe(_ptr_listener(ref, store))
        values = self._values
        if values is None:
            self._pending.clear()
            values = self._values = self._build()
        elif self._pending:
            self._apply(values)
        return values

    def _has_ptr(self, address: str) -> bool:
        return any(
            s.services_by_cluster_ip(address) or s.endpoints_by_ip(address) for s in self._stores
        )

    def _build(self) -> dict[int, list[int]]:
        # The same addresses the store's PTR indexes hold: ClusterIPs and ready endpoints.
        found: dict[int, set[int]] = {4: set(), 6: set()}
        for store in self._stores:
            for view in store.views():
                for address in view.service.cluster_ips:
                    parsed = _ip_value(address)
                    if parsed is not None:
                        found[parsed[0]].add(parsed[1])
                for ep in view.ready:
                    parsed = _ip_value(ep.address)
                    if parsed is not None:
                        found[parsed[0]].add(parsed[1])
        return {version: sorted(values) for version, values in found.items()}

    def _apply(self, values: dict[int, list[int]]) -> None:
        pending = self._pending
        changed: dict[int, dict[int, bool]] = {4: {}, 6: {}}
        for address in pending:
            parsed = _ip_value(address)
            if parsed is not None:
                changed[parsed[0]][parsed[1]] = self._has_ptr(address)
        pending.clear()
        for version, now in changed.items():
            if not now:
                continue
            current = values[version]
            if len(now) <= self.ONE_BY_ONE:
                for value, present in now.items():
                    i = bisect_left(current, value)
                    there = i < len(current) and current[i] == value
                    if present and not there:
                        current.insert(i, value)
                    elif there and not present:
                        del current[i]
            else:
                merged = [v for v in current if v not in now]
                merged.extend(v for v, present in now.items() if present)
                merged.sort()
                values[version] = merged

    def changed(self, addresses: Collection[str]) -> None:
        """Note the addresses a change touched (called by the stores' listeners)."""
        if self._values is None or not addresses:
            return
        self._pending.update(addresses)
        if len(self._pending) > max(self.BACKLOG, len(self._values[4]) + len(self._values[6])):
            self._values = None
            self._pending.clear()


def _ptr_listener(ref: weakref.ref[_PtrIndex], store: Store) -> Callable[[int, float | None], None]:
    def listener(generation: int, received_at: float | None) -> None:
        index = ref()
        if index is not None:
            index.changed(store.last_change.addresses)

    return listener
