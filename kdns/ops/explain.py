"""`kdns explain NAME [TYPE]`: which objects produce an answer, and why.

One job: a few lines of prose about one question, followed by the answer itself. Design:

- **The answer and its reason are the engine's.** The records printed are `engine.resolve()`'s
  own, and the prose renders the decision that answer carries (`Answer.resolution`: the rule
  and the objects it read, `answers.Engine.decide`), so the explanation cannot disagree with
  what queries get. The details around it describe those objects (`ServiceView.not_ready` and
  `sources`, `store.endpoint_sets()`, `store.owner()`); nothing here decides an answer.
- **Plain text, first line self-contained:** `NAME TYPE: reason`, e.g. `web.shop.svc.cluster.local
  A: headless service shop/web; 3 endpoints, 1 not ready; answered from EndpointSlices web-abc
  and web-def`, then details (the owning layer, endpoints left out and why, objects ignored),
  then the rcode and the records in zone-file order.
- **Pure:** no I/O. The CLI loads a zones directory into an engine (as `kdns records` does); a
  running kdns can serve the same text over its HTTP endpoint from its live engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dnslib import QTYPE, RCODE, RR, DNSLabel

from kdns.dns.names import REVERSE_ZONES, Shape, ZoneKind
from kdns.dns.resolution import (
    MCS_SCHEMA_VERSION,
    SCHEMA_VERSION,
    Answer,
    Engine,
    Resolution,
    Rule,
)
from kdns.state.model import EndpointSet, ObjectKey
from kdns.state.store import ServiceView, Store

if TYPE_CHECKING:
    from kdns.sources.scope import Scope

#: How the server's layers are described (other names are shown as they are).
LAYER_NAMES = {"files": "files (zones/)", "cluster": "cluster (the Kubernetes API)"}
_KIND_PLURAL = {
    "EndpointSlice": "EndpointSlices",
    "Endpoints": "Endpoints",
    "Pods": "Pods",
    "ImportSlice": "ImportSlices",
}
_ADDRESS_TYPES = ("A", "AAAA", "ANY")


class ExplainError(ValueError):
    """A question that cannot be asked (unknown type, malformed name)."""


@dataclass(frozen=True)
class Explanation:
    """An explanation and the answer it explains (the engine's own, as queries get it)."""

    text: str
    answer: Answer


def explain(engine: Engine, name: str, qtype: str = "A", scope: Scope | None = None) -> str:
    """The explanation of `name` `qtype` against `engine`, several lines ending in a newline.
    `scope` is what the engine's sources were limited to, named when it explains an NXDOMAIN."""
    return explanation(engine, name, qtype, scope).text


def explanation(
    engine: Engine, name: str, qtype: str = "A", scope: Scope | None = None
) -> Explanation:
    """`explain`, with the answer whose records it prints."""
    tname = qtype.strip().upper()
    number = QTYPE.reverse.get(tname)
    if number is None and tname.startswith("TYPE") and tname[4:].isdigit():
        number = int(tname[4:])  # RFC 3597's spelling of a type by number
    if number is None or not 0 <= number <= 0xFFFF:
        raise ExplainError(f"unknown record type {qtype!r}")
    shown = name.strip().rstrip(".")
    if not shown or any(not label or len(label) > 63 for label in shown.split(".")):
        raise ExplainError(f"bad name {name!r}")
    # Resolved as the server resolves it: the name folded to lower case (the server then puts
    # the asked spelling back into the question, which owners equal to it point to).
    qname = DNSLabel(shown.lower() + ".")
    answer = engine.resolve(qname, number)
    res = answer.resolution
    assert res is not None  # every answer the engine gives carries its decision
    reason, details = _why(engine, res, tname)
    if answer.followed:
        reason += " (inside kdns's zones: followed)"
    elif answer.outside:
        reason += (
            " (outside kdns's zones: with --upstream the server adds the records the upstream"
            " gives for it; without, the client's resolver follows the CNAME)"
        )
    for followed in answer.followed:
        if followed is not None:
            then, _ = _why(engine, followed, tname)
            details.append(f"followed: {then}")
    if scope is not None and not scope.everything and answer.rcode == RCODE.NXDOMAIN:
        # The store holds only what the scope admits: the object may well exist outside it.
        if res.rule is Rule.NO_NAMESPACE and not scope.serves(res.request.namespace):
            reason = f"NXDOMAIN: namespace {res.request.namespace!r} is not served"
        details.append(
            f"kdns serves {scope.describe()} (--namespace, --label-selector); "
            "names outside that are NXDOMAIN"
        )
    if answer.unsynced:
        reason = "SERVFAIL: the sources have not finished their first load yet; then: " + reason
    elif answer.rcode == RCODE.NOERROR and not answer.answer and not reason.startswith("NODATA"):
        reason += f"; no {tname} records for this name (NODATA)"
    lines = [f"{shown} {tname}: {reason}"]
    lines += [f"  {d}" for d in details]
    for code, text in answer.ede:
        lines.append(f"  extended DNS error (RFC 8914, to EDNS clients): {code} {text!r}")
    lines += _records(answer)
    return Explanation("\n".join(lines) + "\n", answer)


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


def _why(engine: Engine, res: Resolution, qtype: str) -> tuple[str, list[str]]:
    """The prose of the engine's decision: what the rule means, said with the objects it read."""
    rule = res.rule
    req = res.request
    view = res.view
    if rule is Rule.OUTSIDE:
        zones = [c.domain for c in engine.clusters] + [".".join(z) for z in REVERSE_ZONES]
        return (
            f"REFUSED: not in kdns's zones ({', '.join(zones)}); forwarded instead with --upstream",
            [],
        )
    zone = req.zone.domain if req.zone is not None else ".".join(req.reverse_zone or ())
    external = req.zone is not None and req.zone.kind is ZoneKind.EXTERNAL
    if rule in _EXTERNAL_ZONE_RULES or external:
        return _why_exposed(res, zone)
    clusterset = req.zone is not None and req.zone.kind is ZoneKind.CLUSTERSET
    if view is not None and clusterset:
        return _why_import(res, view, qtype)
    if view is not None:
        return _why_svc(engine, res, view, qtype)
    ns = req.namespace
    version = (
        f"the version of the Multi-Cluster Services DNS specification kdns implements in the "
        f"clusterset zone {zone}, {MCS_SCHEMA_VERSION}"
        if clusterset
        else f"the version of the Kubernetes DNS specification kdns implements, {SCHEMA_VERSION}"
    )
    simple = {
        Rule.APEX: f"the apex of zone {zone}: kdns's own SOA and NS records",
        Rule.DNS_VERSION: version,
        Rule.NO_IMPORT: (
            f"NXDOMAIN: no ServiceImport {req.service!r} in namespace {ns!r} "
            f"(clusterset zone {zone})"
        ),
        Rule.NAMESERVER: f"the address of kdns itself, the name server of {zone}",
        Rule.NAMESPACE: f"NODATA: namespace {ns} exists but has no records of its own",
        Rule.NO_SERVICE: f"NXDOMAIN: no service {req.service!r} in namespace {ns!r}",
        Rule.PODS_DISABLED: "NXDOMAIN: pod records are disabled (--pods disabled)",
        Rule.NOT_AN_ADDRESS: (
            f"NXDOMAIN: {req.pod!r} does not spell an IP address (a-b-c-d, or dashes for IPv6)"
        ),
        Rule.REVERSE_PREFIX: (
            f"NODATA: part of the reverse names in {zone} of addresses with PTR records"
        ),
    }
    if rule in simple:
        return simple[rule], []
    if rule is Rule.EMPTY:
        what = {
            Shape.NAMESERVER_PARENT: "an empty name above ns.dns",
            Shape.SVC_ROOT: "the svc subdomain holds no records of its own",
            Shape.POD_ROOT: "the pod subdomain holds no records of its own",
        }
        return f"NODATA: {what.get(req.shape, 'an empty name')}", []
    if rule is Rule.NO_NAMESPACE:
        if req.service:
            return f"NXDOMAIN: no namespace {ns!r} (so no service {req.service!r} in it)", []
        return f"NXDOMAIN: no namespace {ns!r}", []
    if rule is Rule.POD:
        if engine.pods == "verified":
            return (
                f"pod record: the address {res.values[0]} of a pod in namespace {ns} "
                "(--pods verified)",
                [],
            )
        return (
            f"pod record: the address {res.values[0]} spelled in the name, in namespace {ns} "
            "(--pods insecure answers any such name without checking that the pod exists)",
            [],
        )
    if rule is Rule.NO_POD:
        canonical = res.values[0].replace(".", "-").replace(":", "-")
        if req.pod != canonical:
            return f"NXDOMAIN: --pods verified answers {res.values[0]} only as {canonical}", []
        return (
            f"NXDOMAIN: no pod in namespace {ns} has the address {res.values[0]} (--pods verified)",
            [],
        )
    if rule in (Rule.PTR_SERVICE, Rule.PTR_ENDPOINT):
        owner, *others = res.owners
        if rule is Rule.PTR_SERVICE:
            named = "clusterset IP" if owner.startswith("ServiceImport") else "ClusterIP"
            also = f"also the {named} of {_join(others)} (the first one wins)"
            return f"PTR for {req.address}: the {named} of {owner}", [also] if others else []
        return f"PTR for {req.address}: {_join(res.owners)}", []
    if rule is Rule.NO_PTR:
        if req.shape is Shape.REVERSE:
            return f"NXDOMAIN: no service or ready endpoint has the address {req.address}", []
        return f"NXDOMAIN: not the full reverse name of an address in {zone}", []
    # Rule.UNKNOWN: a shape the specification has no name for.
    kind = req.rel[-1] if req.rel else ""
    if kind == "svc":
        return "NXDOMAIN: too many labels for a service name", []
    if kind == "pod" and clusterset:
        return f"NXDOMAIN: the clusterset zone {zone} has no pod names", []
    if kind == "pod":
        return "NXDOMAIN: a pod name is <a-b-c-d>.<namespace>.pod.<zone>", []
    return f"NXDOMAIN: {kind!r} is neither 'svc' nor 'pod', the two kinds of names under {zone}", []


_EXTERNAL_ZONE_RULES = frozenset(
    {
        Rule.EXPOSED_HOST,
        Rule.EXPOSED_SERVICE,
        Rule.EXPOSED_PORT,
        Rule.NO_ADDRESS_YET,
        Rule.NO_LISTENER,
        Rule.NOT_EXPOSED,
        Rule.NO_EXPOSED_NAME,
    }
)


def _why_exposed(res: Resolution, zone: str) -> tuple[str, list[str]]:
    """A name of an external zone (`--external-zone`)."""
    rule, req = res.rule, res.request
    owners = _join(res.owners)
    where = ", ".join(res.values) or f"CNAME {res.target}"
    if rule is Rule.EXPOSED_HOST:
        return f"host name of {owners}: {where}", []
    if rule is Rule.EXPOSED_SERVICE:
        return f"{owners} from outside (externalIPs, load balancer ingress): {where}", []
    if rule is Rule.EXPOSED_PORT:
        ports = ", ".join(str(port) for _, port in res.srv or {})
        return f"SRV for port {req.port}/{req.protocol.upper()} of {owners}: {ports}", []
    if rule is Rule.NO_ADDRESS_YET:
        return (
            f"NODATA: host name of {owners}, whose load balancer or Gateway has no address yet",
            [],
        )
    if rule is Rule.NO_LISTENER:
        return (
            f"NODATA: host name of {owners}, but no Gateway takes traffic for it: "
            f"{_join(list(res.values))}",
            [],
        )
    if rule is Rule.NOT_EXPOSED:
        return (
            f"NXDOMAIN: service {req.namespace}/{req.service} has no externalIPs and no "
            "load balancer ingress",
            [],
        )
    if rule is Rule.NO_EXPOSED_NAME:
        return (
            f"NXDOMAIN: no Ingress rule, Gateway API route or exposed service has this name "
            f"in {zone}",
            [],
        )
    if rule is Rule.EMPTY:
        return "NODATA: a namespace, or a name above a host name, with no records of its own", []
    if rule is Rule.PROTOCOL_LABEL:
        return (
            f"NODATA: {req.endpoint!r} is only the protocol part of SRV names of service "
            f"{req.namespace}/{req.service}",
            [],
        )
    if rule is Rule.APEX:
        return f"the apex of external zone {zone}: kdns's own SOA and NS records", []
    if rule is Rule.NAMESERVER:
        return f"the address of kdns itself, the name server of {zone}", []
    return f"NXDOMAIN: {zone} keeps dns.{zone} for its name server (ns1.dns.{zone})", []


def _no_port(desc: str, port: str, protocol: str, view: ServiceView) -> str:
    return (
        f"NXDOMAIN: {desc} has no port named {port!r} over {protocol.upper()}"
        f" (named ports: {', '.join(_ports(view)) or 'none'})"
    )


def _no_endpoint(desc: str, label: str, view: ServiceView) -> str:
    names = sorted({ep.name for ep in view.ready})
    return (
        f"NXDOMAIN: {desc} has no ready endpoint named {label!r}"
        f" (ready: {', '.join(names) or 'none'})"
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
    # An address not ready in one slice may be ready in another (a rollout, hand-written
    # slices): it is answered, so it is not "left out".
    unready, elsewhere = _unready(
        (s for s in sets if s.key in used), {ep.address for ep in view.ready}
    )
    if svc.publish_not_ready:
        if unready or elsewhere:
            out.append(f"not ready (answered all the same): {_join(unready + elsewhere)}")
    else:
        if unready:
            out.append(f"not ready (left out): {_join(unready)}")
        if elsewhere:
            out.append(f"not ready in one object, ready in another (answered): {_join(elsewhere)}")
    ignored = sorted(f"{s.kind} {s.name}" for s in sets if s.key not in used)
    if ignored:
        out.append(f"ignored: {_join(ignored)} (EndpointSlices win over Endpoints)")
    zone = store.rules.prefer_zone
    if zone and view.ready:
        if view.preferred:
            first = ", ".join(sorted({ep.address for ep in view.ready[: view.preferred]}))
            out.append(f"for zone {zone} (--prefer-zone), answered first: {first}")
        else:
            out.append(f"no endpoint is for zone {zone} (--prefer-zone): all answered alike")
    return out


def _unready(sets: Iterable[EndpointSet], served: set[str]) -> tuple[list[str], list[str]]:
    """The not-ready endpoints of `sets`: those left out, and those whose addresses are all
    `served` (answered as ready from another object)."""
    left_out: list[str] = []
    elsewhere: list[str] = []
    for eps in sets:
        for subset in eps.subsets:
            for ep in subset.endpoints:
                if not ep.ready:
                    what = "/".join(ep.addresses)
                    into = elsewhere if all(a in served for a in ep.addresses) else left_out
                    into.append(f"{ep.target} {what}" if ep.target else what)
    return left_out, elsewhere


def _why_svc(
    engine: Engine, res: Resolution, view: ServiceView, qtype: str
) -> tuple[str, list[str]]:
    req = res.request
    assert req.zone is not None
    store = req.zone.store
    rule = res.rule
    svc = view.service
    desc = _describe(view)
    details = _details(store, view)
    if rule is Rule.EXTERNAL_NAME_LEAF:
        return f"NXDOMAIN: {desc} has no endpoint or port names", details
    if rule is Rule.EXTERNAL_NAME_IP:
        return f"NXDOMAIN: {desc} has an IP address, {svc.external_name}, as externalName", details
    if rule is Rule.EXTERNAL_NAME:
        return _why_external(res, desc, qtype), details
    if rule is Rule.NO_READY_ENDPOINTS:
        return f"NXDOMAIN: {desc} has no ready endpoints ({_counts(view)})", details
    if rule is Rule.SERVICE:
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
    label = req.endpoint
    if rule is Rule.ENDPOINT:
        return f"endpoint {label!r} of {desc}: {', '.join(res.values)}", details
    if rule is Rule.PROTOCOL_LABEL:
        return f"NODATA: {label!r} is only the protocol part of SRV names of {desc}", details
    if rule is Rule.NO_ENDPOINT:
        return _no_endpoint(desc, label, view), details
    if rule is Rule.NOT_PORT_FORM:
        return "NXDOMAIN: an SRV name is _<port>._<proto>.<service>...", details
    wanted = f"{req.port}/{req.protocol.upper()}"
    if rule is Rule.NO_PORT:
        return _no_port(desc, req.port, req.protocol, view), details
    via = "its ready endpoints" if svc.headless else "the service itself"
    return f"SRV for port {wanted} of {desc}, pointing at {via}", details


def _why_import(res: Resolution, view: ServiceView, qtype: str) -> tuple[str, list[str]]:
    """A name at or under a ServiceImport, in a clusterset zone (`--clusterset-domain`)."""
    req = res.request
    assert req.zone is not None
    store = req.zone.store
    rule = res.rule
    svc = view.service
    kind = "Headless" if svc.headless else "ClusterSetIP"
    desc = f"{kind} ServiceImport {svc.namespace}/{svc.name}"
    slices = store.import_slices(svc.namespace, svc.name)
    details = []
    if slices:
        clusters = sorted({s.cluster for s in slices})
        details.append(
            f"EndpointSlices from cluster{'s' if len(clusters) > 1 else ''} {_join(clusters)}"
        )
    if not svc.headless and slices:
        details.append(
            "a ClusterSetIP import answers with its IPs only: no name singles out one "
            "cluster's endpoints (MCS DNS specification 2.3.4)"
        )
    if rule is Rule.IMPORT_NO_IPS:
        return f"NXDOMAIN: {desc} has no spec.ips (its controller has not given it any)", details
    if rule is Rule.NO_READY_ENDPOINTS:
        return f"NXDOMAIN: {desc} has no ready endpoints in any cluster ({_counts(view)})", details
    if rule is Rule.SERVICE:
        if svc.headless:
            reason = f"{desc}; {_counts(view)}; answered from {_sources(view.sources)}"
        else:
            reason = f"{desc}: {', '.join(svc.cluster_ips)}"
        if qtype in ("SRV", "ANY"):
            ports = _ports(view)
            reason += f"; SRV for ports {_join(ports)}" if ports else "; no ports for SRV"
        return reason, details
    label = req.endpoint
    if rule is Rule.ENDPOINT:
        return (
            f"endpoint {label!r} (<hostname>.<clusterid>) of {desc}: {', '.join(res.values)}",
            details,
        )
    if rule is Rule.PROTOCOL_LABEL:
        return f"NODATA: {label!r} is only the protocol part of SRV names of {desc}", details
    if rule is Rule.CLUSTER_LABEL:
        return f"NODATA: cluster {label!r} has endpoints of {desc}, named below this name", details
    if rule is Rule.NO_ENDPOINT:
        if not svc.headless:
            return f"NXDOMAIN: {desc} has no endpoint names (MCS DNS specification 2.3.4)", details
        return _no_endpoint(desc, label, view), details
    if rule is Rule.NOT_PORT_FORM:
        return "NXDOMAIN: an SRV name is _<port>._<proto>.<service>...", details
    if rule is Rule.NO_PORT:
        return _no_port(desc, req.port, req.protocol, view), details
    via = "its ready endpoints, <hostname>.<clusterid>" if svc.headless else "the import itself"
    return f"SRV for port {req.port}/{req.protocol.upper()} of {desc}, pointing at {via}", details


def _ports(view: ServiceView) -> list[str]:
    svc = view.service
    if svc.headless:
        found = {(p.name, p.protocol) for ep in view.ready for p in ep.ports if p.name}
    else:
        found = {(p.name, p.protocol) for p in svc.ports if p.name}
    return [f"{name}/{proto}" for name, proto in sorted(found)]


def _why_external(res: Resolution, desc: str, qtype: str) -> str:
    reason = f"{desc} -> {res.values[0]}"
    if qtype == "SRV":
        return reason + "; no SRV records for an ExternalName service (the specification's rule)"
    if qtype not in (*_ADDRESS_TYPES, "CNAME"):
        reason += f"; the CNAME answers {qtype} too (a CNAME owns its name: RFC 1034 3.6.2)"
    return reason
