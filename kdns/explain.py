"""`kdns explain NAME [TYPE]`: which objects produce an answer, and why.

One job: a few lines of prose about one question, followed by the answer itself. Design:

- **The answer is the engine's.** The records printed are `engine.resolve()`'s own, so the
  explanation can never show something queries do not get. The prose is derived separately,
  from the store's views (`store.service()`, `ServiceView.not_ready`/`sources`,
  `store.endpoint_sets()`, `store.owner()`), dispatched on the same parsed request
  (`kdns.names`) as the engine's. Where the two could disagree in principle, the rcode printed
  is always the engine's.
- **Plain text, first line self-contained:** `NAME TYPE: reason`, e.g. `web.shop.svc.cluster.local
  A: headless service shop/web; 3 endpoints, 1 not ready; answered from EndpointSlices web-abc
  and web-def`, then details (the owning layer, endpoints left out and why, objects ignored),
  then the rcode and the records in zone-file order.
- **Pure:** no I/O. The CLI loads a zones directory into an engine (as `kdns records` does); a
  running kdns can serve the same text over its HTTP endpoint from its live engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dnslib import QTYPE, RCODE, RR, DNSLabel

from .answers import SCHEMA_VERSION, Answer, Cluster, Engine, pod_address
from .model import EndpointSet, ObjectKey, ip_family
from .names import REVERSE_ZONES, Request, Shape
from .store import ServiceView, Store

#: How the server's layers are described (other names are shown as they are).
LAYER_NAMES = {"files": "files (zones/)", "cluster": "cluster (the Kubernetes API)"}
_KIND_PLURAL = {"EndpointSlice": "EndpointSlices", "Endpoints": "Endpoints", "Pods": "Pods"}
_ADDRESS_TYPES = ("A", "AAAA", "ANY")


class ExplainError(ValueError):
    """A question that cannot be asked (unknown type, malformed name)."""


def explain(engine: Engine, name: str, qtype: str = "A") -> str:
    """The explanation of `name` `qtype` against `engine`, several lines ending in a newline."""
    tname = qtype.strip().upper()
    number = QTYPE.reverse.get(tname)
    if number is None:
        raise ExplainError(f"unknown record type {qtype!r}")
    shown = name.strip().rstrip(".")
    if not shown or any(not label or len(label) > 63 for label in shown.split(".")):
        raise ExplainError(f"bad name {name!r}")
    qname = DNSLabel(shown + ".")
    req = engine.parse(qname.label)
    answer = engine.answer(req, qname, number)
    reason, details = _why(engine, req, tname)
    if answer.rcode == RCODE.SERVFAIL:
        reason = "SERVFAIL: the sources have not finished their first load yet; then: " + reason
    elif answer.rcode == RCODE.NOERROR and not answer.answer and not reason.startswith("NODATA"):
        reason += f"; no {tname} records for this name (NODATA)"
    lines = [f"{shown} {tname}: {reason}"]
    lines += [f"  {d}" for d in details]
    lines += _records(answer)
    return "\n".join(lines) + "\n"


# -- the records -----------------------------------------------------------------------------------


def _text(rr: RR) -> str:
    return f"{rr.rname} {rr.ttl} {QTYPE.get(rr.rtype, rr.rtype)} {rr.rdata}"


def _records(answer: Answer) -> list[str]:
    rcode = RCODE.get(answer.rcode, str(answer.rcode))
    flags = "" if answer.authoritative else ", not authoritative"
    lines = [f"{rcode}{flags}, {len(answer.answer)} answer record(s)"]
    for title, section in (
        ("answer", answer.answer),
        ("authority", answer.authority),
        ("additional", answer.additional),
    ):
        if section:
            lines.append(f"{title}:")
            lines += [f"  {_text(rr)}" for rr in section]
    return lines


# -- the reasons -----------------------------------------------------------------------------------


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _why(engine: Engine, req: Request[Cluster], qtype: str) -> tuple[str, list[str]]:
    if req.zone is not None:
        return _why_zone(engine, req, qtype)
    if req.reverse_zone is not None:
        return _why_reverse(engine, req)
    zones = [c.domain for c in engine.clusters] + [".".join(z) for z in REVERSE_ZONES]
    return (
        f"REFUSED: not in kdns's zones ({', '.join(zones)}); forwarded instead with --upstream",
        [],
    )


def _why_zone(engine: Engine, req: Request[Cluster], qtype: str) -> tuple[str, list[str]]:
    assert req.zone is not None
    zone = req.zone.domain
    store = req.zone.store
    shape = req.shape
    if shape is Shape.APEX:
        return f"the apex of zone {zone}: kdns's own SOA and NS records", []
    if shape is Shape.DNS_VERSION:
        return (
            f"the version of the Kubernetes DNS specification kdns implements, {SCHEMA_VERSION}",
            [],
        )
    if shape is Shape.NAMESERVER:
        return f"the address of kdns itself, the name server of {zone}", []
    if shape is Shape.NAMESERVER_PARENT:
        return "NODATA: an empty name above ns.dns", []
    if shape is Shape.SVC_ROOT:
        return "NODATA: the svc subdomain holds no records of its own", []
    if shape is Shape.NAMESPACE:
        if store.has_namespace(req.namespace):
            return f"NODATA: namespace {req.namespace} exists but has no records of its own", []
        return f"NXDOMAIN: no namespace {req.namespace!r}", []
    if shape in (Shape.SERVICE, Shape.ENDPOINT, Shape.PORT_SERVICE):
        return _why_svc(engine, req, qtype)
    if shape in (Shape.POD_ROOT, Shape.POD_NAMESPACE, Shape.POD):
        return _why_pod(engine, store, req), []
    kind = req.rel[-1]
    if kind == "svc":
        return "NXDOMAIN: too many labels for a service name", []
    if kind == "pod":
        return "NXDOMAIN: a pod name is <a-b-c-d>.<namespace>.pod.<zone>", []
    return f"NXDOMAIN: {kind!r} is neither 'svc' nor 'pod', the two kinds of names under {zone}", []


def _why_pod(engine: Engine, store: Store, req: Request[Cluster]) -> str:
    if req.shape is Shape.POD_ROOT:
        return "NODATA: the pod subdomain holds no records of its own"
    if engine.pods == "disabled":
        return "NXDOMAIN: pod records are disabled (--pods disabled)"
    ns = req.namespace
    if not store.has_namespace(ns):
        return f"NXDOMAIN: no namespace {ns!r}"
    if req.shape is Shape.POD_NAMESPACE:
        return f"NODATA: namespace {ns} exists but has no records of its own"
    address = pod_address(req.pod)
    if address is None:
        return f"NXDOMAIN: {req.pod!r} does not spell an IP address (a-b-c-d, or dashes for IPv6)"
    return (
        f"pod record: the address {address} spelled in the name, in namespace {ns} "
        "(--pods insecure answers any such name without checking that the pod exists)"
    )


def _describe(view: ServiceView) -> str:
    svc = view.service
    who = f"{svc.namespace}/{svc.name}"
    if svc.type == "ExternalName":
        return f"ExternalName service {who}"
    if svc.headless:
        return f"headless service {who}"
    kind = "ClusterIP" if svc.type == "ClusterIP" else f"{svc.type} (ClusterIP)"
    return f"{kind} service {who}"


def _counts(view: ServiceView) -> str:
    ready = len({(ep.name, ep.address) for ep in view.ready})
    total = ready + view.not_ready
    text = f"{total} endpoint{'s' if total != 1 else ''}"
    if view.not_ready:
        text += f", {view.not_ready} not ready"
    return text


def _sources(keys: Iterable[ObjectKey]) -> str:
    by_kind: dict[str, list[str]] = {}
    for kind, _ns, name in keys:
        by_kind.setdefault(kind, []).append(name)
    parts = []
    for kind, names in by_kind.items():
        label = _KIND_PLURAL.get(kind, kind) if len(names) > 1 else kind
        if kind == "Pods":
            label = "endpoints computed from Pod manifests for"
        parts.append(f"{label} {_join(names)}")
    return _join(parts) if parts else "no endpoint objects"


def _details(store: Store, view: ServiceView) -> list[str]:
    svc = view.service
    out: list[str] = []
    owner = store.owner(svc.namespace, svc.name)
    if owner is not None:
        out.append(f"owned by layer {LAYER_NAMES.get(owner, owner)}")
    if svc.type == "ExternalName":
        return out
    if svc.publish_not_ready:
        out.append("publishNotReadyAddresses: endpoints are answered whether ready or not")
    sets = store.endpoint_sets(svc.namespace, svc.name)
    used = set(view.sources)
    unready = _unready(s for s in sets if s.key in used)
    if unready:
        out.append(f"not ready (left out): {_join(unready)}")
    ignored = sorted(f"{s.kind} {s.name}" for s in sets if s.key not in used)
    if ignored:
        out.append(f"ignored: {_join(ignored)} (EndpointSlices win over Endpoints)")
    return out


def _unready(sets: Iterable[EndpointSet]) -> list[str]:
    out = []
    for eps in sets:
        for subset in eps.subsets:
            for ep in subset.endpoints:
                if not ep.ready:
                    what = "/".join(ep.addresses)
                    out.append(f"{ep.target} {what}" if ep.target else what)
    return out


def _why_svc(engine: Engine, req: Request[Cluster], qtype: str) -> tuple[str, list[str]]:
    assert req.zone is not None
    store = req.zone.store
    ns, name = req.namespace, req.service
    view = store.service(ns, name)
    if view is None:
        if not store.has_namespace(ns):
            return f"NXDOMAIN: no namespace {ns!r} (so no service {name!r} in it)", []
        return f"NXDOMAIN: no service {name!r} in namespace {ns!r}", []
    svc = view.service
    desc = _describe(view)
    details = _details(store, view)
    if svc.type == "ExternalName":
        return _why_external(engine, view, req, qtype), details
    if svc.headless and not view.ready:
        return f"NXDOMAIN: {desc} has no ready endpoints ({_counts(view)})", details
    if req.shape is Shape.SERVICE:
        if svc.headless:
            reason = f"{desc}; {_counts(view)}; answered from {_sources(view.sources)}"
        else:
            ips = ", ".join(svc.cluster_ips) or "no ClusterIP"
            reason = f"{desc}: {ips}"
            if view.sources:
                details.append(
                    f"endpoints ({_counts(view)}, from {_sources(view.sources)}) answer only "
                    "<endpoint>.<service> names"
                )
        if qtype in ("SRV", "ANY"):
            ports = _ports(view)
            reason += f"; SRV for ports {_join(ports)}" if ports else "; no ports for SRV"
        return reason, details
    if req.shape is Shape.ENDPOINT:
        label = req.endpoint
        addresses = view.named(label)
        if addresses:
            return f"endpoint {label!r} of {desc}: {', '.join(addresses)}", details
        names = sorted({ep.name for ep in view.ready})
        protocols = {p.split("/")[1].lower() for p in _ports(view)}
        if label.startswith("_") and label[1:] in protocols:
            return f"NODATA: {label!r} is only the protocol part of SRV names of {desc}", details
        return (
            f"NXDOMAIN: {desc} has no ready endpoint named {label!r}"
            f" (ready: {', '.join(names) or 'none'})",
            details,
        )
    ports = _ports(view)
    wanted = f"{req.port}/{req.protocol.upper()}"
    if not req.port_form:
        return "NXDOMAIN: an SRV name is _<port>._<proto>.<service>...", details
    if wanted not in ports:
        return (
            f"NXDOMAIN: {desc} has no port named {req.port!r} over {req.protocol.upper()}"
            f" (named ports: {', '.join(ports) or 'none'})",
            details,
        )
    via = "its ready endpoints" if svc.headless else "the service itself"
    return f"SRV for port {wanted} of {desc}, pointing at {via}", details


def _ports(view: ServiceView) -> list[str]:
    svc = view.service
    if svc.headless:
        found = {(p.name, p.protocol) for ep in view.ready for p in ep.ports if p.name}
    else:
        found = {(p.name, p.protocol) for p in svc.ports if p.name}
    return [f"{name}/{proto}" for name, proto in sorted(found)]


def _why_external(engine: Engine, view: ServiceView, req: Request[Cluster], qtype: str) -> str:
    svc = view.service
    desc = _describe(view)
    target = svc.external_name
    if req.shape is not Shape.SERVICE:
        return f"NXDOMAIN: {desc} has no endpoint or port names"
    if ip_family(target):
        return f"NXDOMAIN: {desc} has an IP address, {target}, as externalName"
    reason = f"{desc} -> {target}"
    if qtype not in (*_ADDRESS_TYPES, "CNAME"):
        return reason + f"; a CNAME answers only A, AAAA and CNAME questions (NODATA for {qtype})"
    if qtype in _ADDRESS_TYPES and engine.grammar.zone_of(target.lower().split(".")):
        reason += " (inside kdns's zones: followed)"
    return reason


def _why_reverse(engine: Engine, req: Request[Cluster]) -> tuple[str, list[str]]:
    zone = req.reverse_zone
    assert zone is not None
    zone_name = ".".join(zone)
    if req.shape is Shape.REVERSE_APEX:
        return f"the apex of zone {zone_name}: kdns's own SOA and NS records", []
    address = req.address
    if req.shape is Shape.REVERSE_PARTIAL:
        if engine.reverse_non_terminal(zone, req.rel):
            return (
                f"NODATA: part of the reverse names in {zone_name} of addresses with PTR records",
                [],
            )
        return f"NXDOMAIN: not the full reverse name of an address in {zone_name}", []
    for cluster in engine.clusters:
        keys = cluster.store.services_by_cluster_ip(address)
        if keys:
            ns, name = keys[0]
            details = []
            if len(keys) > 1:
                others = [f"{n}/{s}" for n, s in keys[1:]]
                details.append(f"also the ClusterIP of {_join(others)} (the first one wins)")
            return f"PTR for {address}: the ClusterIP of service {ns}/{name}", details
    found = [
        f"endpoint {ep!r} of service {ns}/{svc}"
        for cluster in engine.clusters
        for ns, svc, ep in cluster.store.endpoints_by_ip(address)
    ]
    if found:
        return f"PTR for {address}: {_join(found)}", []
    return f"NXDOMAIN: no service or ready endpoint has the address {address}", []
