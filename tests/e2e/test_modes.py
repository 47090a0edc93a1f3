"""kdns's optional modes on the real control plane: `--pods verified` and `--endpoint-pod-names`
beside CoreDNS's `pods verified` and `endpoint_pod_names`, and `--prefer-zone` /
`--prefer-zone-from-node` with the zones and hints kube-controller-manager writes into
EndpointSlices. RBAC comes from deploy/components (rendered by tests/deploy_render.py).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from testkit.controlplane import ApiError, ControlPlane, wait_for
from tests import deploy_render
from tests.e2e.conftest import coredns_running, start_kdns_for
from tests.e2e.dnsutil import Reply, ask, dig_reply, until_dig
from tests.e2e.test_e2e import ZONE, _object_path, classify, dashed, fqdn, refusals
from tests.kdns_process import KdnsProcess

pytestmark = pytest.mark.timeout(300)

Obj = dict[str, Any]
ZONE_LABEL = "topology.kubernetes.io/zone"
BINDINGS = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
HOLD = "kdns.e2e/hold"  # a finalizer nothing removes but the test: the pod stays terminating


# --------------------------------------------------------------------------- shared helpers


@contextlib.contextmanager
def coredns_with(cp: ControlPlane, tmp: Path, options: Sequence[str]) -> Iterator[int]:
    """CoreDNS's kubernetes plugin on `cp` with extra `options` in its kubernetes block (as the
    `coredns` fixture of test_e2e.py runs it, without the stub domain); yields its port."""
    block = "\n".join(f"        {o}" for o in options)

    def corefile(port: int, ready_port: int) -> str:
        return f"""\
{ZONE}:{port} in-addr.arpa:{port} ip6.arpa:{port} {{
    bind 127.0.0.1
    kubernetes {ZONE} in-addr.arpa ip6.arpa {{
        kubeconfig {cp.admin_kubeconfig} admin
{block}
        ttl 5
    }}
    ready 127.0.0.1:{ready_port}
}}
"""

    with coredns_running(cp, tmp, corefile) as port:
        yield port


def component_kubeconfig(
    cp: ControlPlane, components: Sequence[str], name: str
) -> tuple[Path, str, list[Obj]]:
    """deploy/'s ServiceAccount, ClusterRole and ClusterRoleBinding, with `components` rendered
    in, applied for real under `name` (so the session's `kdns` objects, which
    test_least_privilege applies, are left alone); a kubeconfig with the account's token, the
    token, and the role's rules."""
    account, role, binding = (dict(d) for d in deploy_render.rbac(deploy_render.render(components)))
    ns = account["metadata"]["namespace"]
    account["metadata"] = {**account["metadata"], "name": name}
    role["metadata"] = {**role["metadata"], "name": name}
    binding["metadata"] = {**binding["metadata"], "name": name}
    binding["roleRef"] = {**binding["roleRef"], "name": name}
    binding["subjects"] = [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
    cp.create_namespace(ns)
    rbac_api = "/apis/rbac.authorization.k8s.io/v1"
    cp.apply(f"/api/v1/namespaces/{ns}/serviceaccounts/{name}", account)
    cp.apply(f"{rbac_api}/clusterroles/{name}", role)
    cp.apply(f"{rbac_api}/clusterrolebindings/{name}", binding)
    kcfg = cp.token_kubeconfig(ns, name)
    token = json.loads(kcfg.read_text())["users"][0]["user"]["token"]
    return kcfg, str(token), list(role["rules"])


def status_patch(
    cp: ControlPlane, ns: str, name: str, ips: tuple[str, ...], phase: str, ready: bool
) -> None:
    """The kubelet's part for phases set_pod_ready does not write (Pending, Succeeded, ...)."""
    flag = "True" if ready else "False"
    cp.merge_patch(
        f"/api/v1/namespaces/{ns}/pods/{name}/status",
        {
            "status": {
                "phase": phase,
                "podIP": ips[0],
                "podIPs": [{"ip": a} for a in ips],
                "hostIP": "10.250.0.1",
                "hostIPs": [{"ip": "10.250.0.1"}],
                "conditions": [{"type": "Ready", "status": flag}],
            }
        },
    )


def release(cp: ControlPlane, ns: str, name: str) -> None:
    """Drop the HOLD finalizer (if the pod is still there) and force-delete the pod."""
    with contextlib.suppress(ApiError):
        cp.merge_patch(f"/api/v1/namespaces/{ns}/pods/{name}", {"metadata": {"finalizers": None}})
    cp.delete_pod(ns, name)


def reverse(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


def exploded(ip: str) -> str:
    """Another spelling of an IPv6 address as a pod-name label: every group, no `::`."""
    return ipaddress.IPv6Address(ip).exploded.replace(":", "-")


def label_ip(label: str) -> str | None:
    """The address a pod-name label spells, CoreDNS's way (three dashes and no `--`: IPv4;
    otherwise dashes are colons), in canonical text; None if it spells none."""
    label = label.lower()
    text = (
        label.replace("-", ".")
        if label.count("-") == 3 and "--" not in label
        else label.replace("-", ":")
    )
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def mixed_case(rng: random.Random, name: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def askable(name: str) -> bool:
    """Whether a name can be put in a question at all (no empty label, none over 63 octets)."""
    return all(0 < len(label) <= 63 for label in name.rstrip(".").split("."))


# --------------------------------------------------------------------------- 1. pods verified

#: A DNS-1123 label, as --endpoint-pod-names requires of a pod name (spelled out here rather
#: than imported from kdns, so the test does not share the rule it checks).
LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
LONG63 = "l" + "o" * 61 + "g"
LONG64 = "l" + "o" * 62 + "g"
DOTTED_LONG = "d" * 30 + "." + "e" * 40  # 71 characters, two labels a question can carry
UNKNOWN_IPS = ("10.41.9.9", "10.41.0.200", "fd00:41::9999", "10.96.0.1")


@dataclass
class PodRec:
    ns: str
    name: str
    ips: tuple[str, ...]
    #: live (a Running/Pending pod, not terminating), deleted, terminating (before or after the
    #: servers started), ended (Succeeded/Failed), or "unknown" (phase Unknown)
    state: str = "live"
    labels: dict[str, str] = field(default_factory=dict)
    ready: bool = True


@dataclass(frozen=True)
class Ep:
    """One address of an EndpointSlice endpoint, with the names each server gives it."""

    ns: str
    svc: str
    ip: str
    ready: bool
    hostname: str
    ref_kind: str
    ref_name: str

    @property
    def kdns_label(self) -> str:
        if self.hostname:
            return self.hostname
        if self.ref_kind == "Pod" and LABEL.fullmatch(self.ref_name):
            return self.ref_name
        return dashed(self.ip)

    @property
    def coredns_label(self) -> str:
        if self.hostname:
            return self.hostname
        if self.ref_name and len(self.ref_name) < 64:
            return self.ref_name
        return dashed(self.ip)

    @property
    def renamed(self) -> str:
        """Why the two servers name it differently ("" when they do not)."""
        if self.kdns_label.lower() == self.coredns_label.lower():
            return ""
        if self.ref_kind != "Pod":
            return "endpoint-targetref-not-a-pod"
        return "endpoint-pod-name-not-a-label"


#: The deliberate differences of these modes (see docs/coredns-differences.md), each recognised
#: narrowly by `classify_modes`; any other difference fails the test.
MODE_DIFFERENCES = {
    "secondary-pod-ip": (
        "--pods verified answers every address of status.podIPs (the second family of a "
        "dual-stack pod too); CoreDNS's `pods verified` only status.podIP, the primary one."
    ),
    "endpoint-pod-name-not-a-label": (
        "--endpoint-pod-names names an endpoint by its pod only when the pod's name is a DNS "
        "label (dots, upper case, '_', a leading or trailing '-' are not), else by its dashed IP; "
        "CoreDNS takes any targetRef name shorter than 64 characters."
    ),
    "endpoint-targetref-not-a-pod": (
        "--endpoint-pod-names takes the targetRef's name only when targetRef.kind is Pod; "
        "CoreDNS takes it whatever the kind."
    ),
}


def _records(ep_set: Sequence[Ep], owner: str, qtype: str) -> frozenset[str]:
    want = 6 if qtype == "AAAA" else 4
    return frozenset(
        f"{owner.lower()}. {qtype} {e.ip}"
        for e in ep_set
        if ipaddress.ip_address(e.ip).version == want
    )


def _lower(r: Reply) -> tuple[str, frozenset[str]]:
    """rcode and answer, owner names in lower case (the servers keep the question's case)."""
    return r.rcode, frozenset(
        f"{owner.lower()} {rest}" for owner, rest in (a.split(" ", 1) for a in r.answer)
    )


@dataclass
class World:
    """What the API holds once the workload has settled: pods and endpoint addresses."""

    pods: list[PodRec]
    eps: list[Ep]
    services: dict[str, list[str]]  # namespace -> service names

    def live_ips(self, ns: str) -> tuple[set[str], set[str]]:
        """(primary, every) address of the live pods of `ns`."""
        live = [p for p in self.pods if p.ns == ns and p.state == "live"]
        return {p.ips[0] for p in live}, {ip for p in live for ip in p.ips}

    def named(self, ns: str, svc: str, label: str, naming: str) -> list[Ep]:
        return [
            e
            for e in self.eps
            if (e.ns, e.svc) == (ns, svc)
            and e.ready
            and getattr(e, naming).lower() == label.lower()
        ]

    def rename(self, text: str) -> str:
        """CoreDNS's names of the renamed endpoints in `text` turned into kdns's."""
        out = text.lower()
        for e in self.eps:
            if e.renamed:
                tail = f".{e.svc}.{e.ns}.svc.{ZONE}."
                out = out.replace(f" {e.coredns_label.lower()}{tail}", f" {e.kdns_label}{tail}")
        return out


def classify_modes(world: World, name: str, qtype: str, k: Reply, c: Reply) -> str | None:
    """The MODE_DIFFERENCES key (keys joined by '+' when several endpoints differ for different
    reasons) that explains a difference, or None."""
    labels = name.lower().rstrip(".").split(".")
    zone_len = len(ZONE.split("."))
    # <ip>.<ns>.pod.<zone>: an address only kdns finds (a secondary one), answered exactly.
    if len(labels) == 3 + zone_len and labels[2] == "pod" and qtype in ("A", "AAAA"):
        ip = label_ip(labels[0])
        primary, every = world.live_ips(labels[1])
        # Only CoreDNS's spelling of the address (another spelling is another question).
        if ip and labels[0] == dashed(ip) and ip in every - primary and c.rcode == "NXDOMAIN":
            fake = [Ep(labels[1], "", ip, True, "", "", "")]
            if _lower(k) == ("NOERROR", _records(fake, name, qtype)):
                return "secondary-pod-ip"
        return None
    # <endpoint>.<svc>.<ns>.svc.<zone>: each server answers the endpoints its rule names so.
    if len(labels) == 4 + zone_len and labels[3] == "svc" and qtype in ("A", "AAAA"):
        label, svc, ns = labels[0], labels[1], labels[2]
        named_k = world.named(ns, svc, label, "kdns_label")
        named_c = world.named(ns, svc, label, "coredns_label")
        reasons = {e.renamed for e in [*named_k, *named_c] if e.renamed}
        want_k = ("NOERROR", _records(named_k, name, qtype)) if named_k else ("NXDOMAIN", None)
        want_c = ("NOERROR", _records(named_c, name, qtype)) if named_c else ("NXDOMAIN", None)
        got_k, got_c = _lower(k), _lower(c)
        if reasons and _matches(got_k, want_k) and _matches(got_c, want_c):
            return "+".join(sorted(reasons))
        return None
    # PTR and SRV: the same records once CoreDNS's names are made kdns's (with, for SRV, the
    # base suite's known differences on top: weights after deduplication, the target's case).
    if qtype in ("PTR", "SRV") and k.rcode == c.rcode:
        theirs = {r.lower() for r in c.answer}
        renamed = {world.rename(r) for r in theirs}
        ours = {r.lower() for r in k.answer}
        reasons = {
            e.renamed
            for e in world.eps
            if e.renamed and any(f" {e.coredns_label.lower()}.{e.svc}.{e.ns}." in r for r in theirs)
        }
        if renamed == theirs or not reasons:
            return None
        if (
            qtype == "SRV"
            and renamed != ours
            and {_no_weight(r) for r in renamed} == {_no_weight(r) for r in ours}
        ):
            reasons.add("srv-weight-after-dedup")
        elif renamed != ours:
            return None
        if qtype == "SRV" and any(r.split()[-1] != r.split()[-1].lower() for r in c.answer):
            reasons.add("srv-target-case")  # CoreDNS's targets in the question's case
        return "+".join(sorted(reasons))
    return None


def _no_weight(srv: str) -> str:
    owner, rtype, prio, _, port, target = srv.split()
    return f"{owner} {rtype} {prio} - {port} {target}"


def _matches(got: tuple[str, frozenset[str]], want: tuple[str, frozenset[str] | None]) -> bool:
    return got[0] == want[0] and (want[1] is None or got[1] == want[1])


def build_pods_workload(cp: ControlPlane, node: str) -> tuple[list[PodRec], list[str]]:
    """Pods in pv-a and pv-b before the servers start: live ones of every name shape, dual-stack
    (either family first), two sharing an IP, one terminating, ended ones, one Pending with an
    IP; headless and ClusterIP services over them (with and without hostname/subdomain), and
    hand-written slices and Endpoints with targetRefs of every shape. Returns the pods and the
    services' (ns/name) list."""
    a, b = "pv-a", "pv-b"
    for ns in (a, b):
        cp.create_namespace(ns)
    pods: list[PodRec] = []
    web = {"app": "web"}

    def pod(
        ns: str,
        name: str,
        ips: tuple[str, ...],
        *,
        labels: dict[str, str] | None = None,
        phase: str = "Running",
        ready: bool = True,
        hold: bool = False,
        **kw: Any,
    ) -> PodRec:
        labels = dict(web if labels is None else labels)
        cp.create_pod(ns, name, node, labels, **kw)
        if hold:
            cp.merge_patch(
                f"/api/v1/namespaces/{ns}/pods/{name}", {"metadata": {"finalizers": [HOLD]}}
            )
        if phase == "Running":
            cp.set_pod_ready(ns, name, ips, ready)
        else:
            status_patch(cp, ns, name, ips, phase, ready)
        state = {"Succeeded": "ended", "Failed": "ended", "Unknown": "unknown"}.get(phase, "live")
        rec = PodRec(ns, name, ips, state, labels, ready)
        pods.append(rec)
        return rec

    # Names: valid labels, a dot, 63 and 64 characters, a long dotted one.
    pod(a, "web-0", ("10.41.0.10",))
    pod(a, "web-1", ("10.41.0.11", "fd00:41::11"))
    pod(a, "web-2", ("fd00:41::12", "10.41.0.12"))  # IPv6 first
    pod(a, "web.dotted", ("10.41.0.13",))
    pod(a, LONG63, ("10.41.0.14", "fd00:41::14"))
    pod(a, LONG64, ("10.41.0.15",))
    pod(a, DOTTED_LONG, ("10.41.0.16",))
    # A hostname that names the endpoint (subdomain = the service), and one that does not.
    pod(a, "web-host", ("10.41.0.17",), hostname="custom-host", subdomain="web-hl")
    pod(a, "web-host-other", ("10.41.0.18",), hostname="other", subdomain="nope")
    pod(a, "web-unready", ("10.41.0.19",), ready=False)
    # Deleted once the servers run.
    pod(a, "gone-0", ("10.41.0.20",))
    pod(a, "gone-1", ("10.41.0.21", "fd00:41::21"))
    # Terminating before the servers start (CoreDNS never adds it), and after (kdns checked).
    pod(a, "term-0", ("10.41.0.22", "fd00:41::22"), hold=True)
    cp.delete(f"/api/v1/namespaces/{a}/pods/term-0")
    pods[-1].state = "terminating"
    pod(a, "term-1", ("10.41.0.23", "fd00:41::23"), hold=True)
    # Ended, unknown and pending pods.
    pod(a, "done-0", ("10.41.0.24",), phase="Succeeded", ready=False)
    pod(a, "failed-0", ("10.41.0.25",), phase="Failed", ready=False)
    pod(a, "unknown-0", ("10.41.0.26",), phase="Unknown", ready=False)
    pod(a, "pending-0", ("10.41.0.27", "fd00:41::27"), phase="Pending", ready=False)
    # Two pods with one IP (host network), one deleted later.
    shared = {"app": "shared"}
    pod(a, "shared-a", ("10.41.0.28",), labels=shared)
    pod(a, "shared-b", ("10.41.0.28",), labels=shared)
    # pv-b: a pod named like one of pv-a, and one with pv-a/web-0's address.
    pod(b, "web-0", ("10.41.2.10", "fd00:41:2::10"))
    pod(b, "dup-ip", ("10.41.0.10",))

    svcs: list[str] = []

    def svc(ns: str, name: str, **kw: Any) -> None:
        cp.create_service(ns, name, **kw)
        svcs.append(f"{ns}/{name}")

    ports = [("http", 80, 8080)]
    svc(
        a,
        "web-hl",
        selector=web,
        ports=ports,
        headless=True,
        ip_family_policy="RequireDualStack",
        ip_families=("IPv4", "IPv6"),
    )
    svc(a, "web-hl4", selector=web, ports=ports, headless=True)
    svc(a, "web-cip", selector=web, ports=ports)
    svc(a, "shared", selector=shared, ports=ports, headless=True)
    svc(b, "web-hl", selector=web, ports=ports, headless=True, ip_family_policy="PreferDualStack")
    # Hand-written slice: targetRefs of other kinds, no kind, names that are not labels.
    svc(a, "manual", headless=True, ports=[("p", 80, 80)])
    refs: list[tuple[str, Obj]] = [
        ("10.41.1.1", {"targetRef": {"kind": "Pod", "name": "manual-pod"}}),
        ("10.41.1.2", {"targetRef": {"kind": "Node", "name": "node-x"}}),
        ("10.41.1.3", {"targetRef": {"kind": "Pod", "name": "Upper-Case"}}),
        ("10.41.1.4", {"targetRef": {"kind": "Pod", "name": "under_score"}}),
        ("10.41.1.5", {"targetRef": {"kind": "Pod", "name": "trail-"}}),
        ("10.41.1.6", {"targetRef": {"name": "no-kind"}}),
        ("10.41.1.7", {"hostname": "manual-host", "targetRef": {"kind": "Pod", "name": "mp-h"}}),
        ("10.41.1.8", {}),
        ("10.41.1.9", {"targetRef": {"kind": "Pod", "name": "pod.dotted.manual"}}),
        ("10.41.1.10", {"targetRef": {"kind": "pod", "name": "lower-kind"}}),
        ("10.41.1.11", {"targetRef": {"kind": "Pod", "name": LONG64}}),
    ]
    cp.create(
        f"/apis/discovery.k8s.io/v1/namespaces/{a}/endpointslices",
        {
            "metadata": {
                "name": "manual-1",
                "labels": {
                    "kubernetes.io/service-name": "manual",
                    "endpointslice.kubernetes.io/managed-by": "e2e.kdns",
                },
            },
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": [ip], "conditions": {"ready": True}, **extra} for ip, extra in refs
            ],
            "ports": [{"name": "p", "port": 80, "protocol": "TCP"}],
        },
    )
    # Hand-written Endpoints, mirrored into a slice by the control plane (targetRefs kept).
    svc(b, "mirrored", headless=True, ports=[("p", 80, 80)])
    cp.create(
        f"/api/v1/namespaces/{b}/endpoints",
        {
            "metadata": {"name": "mirrored"},
            "subsets": [
                {
                    "addresses": [
                        {"ip": "10.41.3.1", "targetRef": {"kind": "Pod", "name": "mirror-a"}},
                        {"ip": "10.41.3.2", "targetRef": {"kind": "Pod", "name": "mirror.b"}},
                    ],
                    "ports": [{"name": "p", "port": 80, "protocol": "TCP"}],
                }
            ],
        },
    )
    return pods, svcs


def read_world(cp: ControlPlane, pods: list[PodRec], svcs: list[str]) -> World:
    eps: list[Ep] = []
    services: dict[str, list[str]] = {}
    for key in svcs:
        ns, svc = key.split("/")
        services.setdefault(ns, []).append(svc)
        for s in cp.slices(ns, svc):
            for ep in s.get("endpoints") or []:
                ref = ep.get("targetRef") or {}
                for ip in ep.get("addresses") or []:
                    eps.append(
                        Ep(
                            ns,
                            svc,
                            ip,
                            (ep.get("conditions") or {}).get("ready") is not False,
                            ep.get("hostname") or "",
                            ref.get("kind") or "",
                            ref.get("name") or "",
                        )
                    )
    return World(pods, eps, services)


def pod_questions(world: World, rng: random.Random) -> list[tuple[str, str]]:
    """Every address any pod had (and a few nobody has), as pod names in its own namespace, the
    other one and one that does not exist; IPv6 also spelled out in full."""
    ips = [ip for p in world.pods for ip in p.ips]
    ips += [e.ip for e in world.eps] + list(UNKNOWN_IPS)
    names: list[str] = []
    for ip in dict.fromkeys(ips):
        spellings = [dashed(ip)] + ([exploded(ip)] if ":" in ip else [])
        for label in spellings:
            for ns in ("pv-a", "pv-b", "pv-none"):
                names.append(f"{label}.{ns}.pod.{ZONE}")
    return _with_types_and_case(names, ("A", "AAAA"), rng)


def endpoint_questions(world: World, rng: random.Random) -> list[tuple[str, str]]:
    """Every endpoint of every service by its pod (targetRef) name, hostname and dashed IP,
    asked under every service of its namespace; the services' own names and SRV names; the PTR
    of every address."""
    names: list[str] = []
    for ns, svcs in world.services.items():
        labels: list[str] = []
        for e in (e for e in world.eps if e.ns == ns):
            labels += [x for x in (e.ref_name, e.hostname, dashed(e.ip)) if x]
        for svc in svcs:
            names += [f"{label}.{fqdn(svc, ns)}" for label in dict.fromkeys(labels)]
    names = [n for n in names if askable(n)]
    questions = _with_types_and_case(names, ("A", "AAAA"), rng)
    services = [fqdn(svc, ns) for ns, svcs in world.services.items() for svc in svcs]
    questions += _with_types_and_case(services, ("A", "AAAA"), rng)
    srv = [f"_{p}._tcp.{s}" for s in services for p in ("http", "p")]
    questions += _with_types_and_case(srv + services, ("SRV",), rng)
    ips = {ip for p in world.pods for ip in p.ips} | {e.ip for e in world.eps}
    questions += _with_types_and_case([reverse(ip) for ip in sorted(ips)], ("PTR",), rng)
    return questions


def _with_types_and_case(
    names: Sequence[str], qtypes: Sequence[str], rng: random.Random
) -> list[tuple[str, str]]:
    out = []
    for name in dict.fromkeys(names):
        for spelling in (name, mixed_case(rng, name)):
            out += [(spelling, t) for t in qtypes]
    return out


def _caught_up(world: World, port: int, naming: str, gone: Sequence[str]) -> bool:
    """The server at `port` answers what the API holds now: each live pod's primary address in
    its namespace, NXDOMAIN for the addresses in `gone`, each headless service's ready
    addresses, and each ready endpoint by the name `naming` gives it."""
    for p in world.pods:
        if p.state == "live":
            qtype = "AAAA" if ":" in p.ips[0] else "A"
            if not ask(port, f"{dashed(p.ips[0])}.{p.ns}.pod.{ZONE}", qtype).answer:
                return False
    for ip in gone:
        if ask(port, f"{dashed(ip)}.pv-a.pod.{ZONE}", "AAAA" if ":" in ip else "A").rcode != (
            "NXDOMAIN"
        ):
            return False
    for e in world.eps:
        if not e.ready or "." in getattr(e, naming):
            continue  # a dotted name is no single label (CoreDNS cannot be asked for it)
        got = ask(port, f"{getattr(e, naming)}.{fqdn(e.svc, e.ns)}", "AAAA" if ":" in e.ip else "A")
        if not any(r.endswith(f" {e.ip}") for r in got.answer):
            return False
    return True


def _settled(cp: ControlPlane, ns: str, svc: str, want: set[str]) -> bool:
    return cp.slice_addresses(ns, svc) == want


def ready_addresses(pods: Sequence[PodRec], ns: str, app: str, family: int = 4) -> set[str]:
    """The addresses of one family the endpointslice controller lists as ready for a selector
    app=`app` in `ns`: live ready pods' (an ended, unknown or terminating pod is never ready)."""
    return {
        ip
        for p in pods
        if p.ns == ns and p.state == "live" and p.ready and p.labels.get("app") == app
        for ip in p.ips
        if ipaddress.ip_address(ip).version == family
    }


def wait_workload(cp: ControlPlane, pods: Sequence[PodRec]) -> None:
    """The controllers have written the slices of the selector services as `pods` are now."""
    a, b = "pv-a", "pv-b"
    want = {
        (a, "web-hl4"): ready_addresses(pods, a, "web"),
        (a, "web-hl"): ready_addresses(pods, a, "web") | ready_addresses(pods, a, "web", 6),
        (a, "shared"): ready_addresses(pods, a, "shared"),
        (b, "web-hl"): ready_addresses(pods, b, "web") | ready_addresses(pods, b, "web", 6),
        (b, "mirrored"): {"10.41.3.1", "10.41.3.2"},
    }
    for (ns, svc), addresses in want.items():
        wait_for(
            f"{ns}/{svc}'s slices = {sorted(addresses)}",
            functools.partial(_settled, cp, ns, svc, addresses),
            20,
        )


def test_pods_verified_and_endpoint_pod_names_against_coredns(
    cluster: ControlPlane, node: str, tmp_path: Path
) -> None:
    """--pods verified and --endpoint-pod-names, asked beside CoreDNS's `pods verified` and
    `endpoint_pod_names`: every difference is one of MODE_DIFFERENCES (or of the base suite's
    documented ones), checked exactly; then the same with deploy/components/pods-verified's RBAC."""
    cp, a = cluster, "pv-a"
    pods, svcs = build_pods_workload(cp, node)
    try:
        wait_workload(cp, pods)
        before = read_world(cp, pods, svcs)
        term1 = _differential(cp, node, tmp_path, pods, svcs, before)
        _rbac_with_component(cp, node, tmp_path, term1)
    finally:
        for p in [*pods, PodRec(a, "late-1", ())]:
            release(cp, p.ns, p.name)
        for name in ("kdns-e2e-base", "kdns-e2e-pods-verified"):
            cp.delete(f"{BINDINGS}/{name}")


def _differential(
    cp: ControlPlane,
    node: str,
    tmp_path: Path,
    pods: list[PodRec],
    svcs: list[str],
    before: World,
) -> PodRec:
    a = "pv-a"
    with contextlib.ExitStack() as stack:
        coredns = stack.enter_context(
            coredns_with(cp, tmp_path / "coredns", ["pods verified", "endpoint_pod_names"])
        )
        kp = start_kdns_for(
            cp, tmp_path, cp.admin_kubeconfig, "--pods", "verified", "--endpoint-pod-names"
        )
        stack.callback(kp.stop)

        # Changes while both watch: deletions (one of two pods sharing an IP among them), a pod
        # that starts terminating, a new pod.
        for p in pods:
            if p.ns == a and p.name in ("gone-0", "gone-1", "shared-a"):
                cp.delete_pod(a, p.name)
                p.state = "deleted"
        term1 = next(p for p in pods if p.name == "term-1")
        cp.delete(f"/api/v1/namespaces/{a}/pods/term-1")
        term1.state = "terminating"
        late = PodRec(a, "late-0", ("10.41.0.29", "fd00:41::29"), labels={"app": "web"})
        cp.run_pod(a, late.name, node, late.labels, late.ips)
        pods.append(late)
        wait_workload(cp, pods)
        world = read_world(cp, pods, svcs)
        gone = [ip for p in pods if p.state == "deleted" and p.name != "shared-a" for ip in p.ips]
        for server, port, naming, extra in (
            ("kdns", kp.port, "kdns_label", list(term1.ips)),
            ("coredns", coredns, "coredns_label", []),
        ):
            wait_for(
                f"{server} to serve the workload as the API has it",
                functools.partial(_caught_up, world, port, naming, gone + extra),
                20,
                0.1,
            )

        rng = random.Random(4141)
        # Names of endpoints as they were before the changes too (deleted ones are asked).
        asked = World(world.pods, [*before.eps, *world.eps], world.services)
        questions = pod_questions(asked, rng) + endpoint_questions(asked, rng)
        # term-1 started terminating after CoreDNS had it: CoreDNS keeps answering for it (its
        # pod informer drops the updates of terminating pods), so its names are checked against
        # the specification below instead of compared.
        term1_names = {f"{dashed(ip)}.{a}.pod.{ZONE}" for ip in term1.ips}
        compared = [(n, t) for n, t in questions if n.lower() not in term1_names]
        replies = [(n, t, ask(kp.port, n, t), ask(coredns, n, t)) for n, t in compared]
        noerror = frozenset(n.lower().rstrip(".") for n, _, _, c in replies if c.rcode == "NOERROR")
        explained: Counter[str] = Counter()
        report: list[str] = []
        unexplained: list[str] = []
        same = 0
        for name, qtype, k, c in replies:
            if (k.rcode, k.answer) == (c.rcode, c.answer):
                same += 1
                continue
            line = f"{name} {qtype}\n    kdns:    {k.short()}\n    coredns: {c.short()}"
            key = classify_modes(world, name, qtype, k, c) or classify(name, qtype, k, c, noerror)
            if key:
                explained[key] += 1
                report.append(f"[known: {key}] {line}")
            else:
                unexplained.append(line)
                report.append(f"[UNEXPLAINED] {line}")
        summary = (
            f"modes differential: {len(compared)} questions, {same} identical, "
            f"{sum(explained.values())} known differences {dict(explained)}, "
            f"{len(unexplained)} unexplained"
        )
        out = Path(
            os.environ.get("KDNS_E2E_MODES_REPORT", cp.workdir / "coredns-modes-differences.txt")
        )
        out.write_text(summary + "\n\n" + "\n".join(report) + "\n")
        print(summary, f"(details in {out})")
        assert not unexplained, summary + "\n" + "\n".join(unexplained[:40])
        # The workload really exercised each deliberate difference.
        exercised = {part for key in explained for part in key.split("+")}
        assert set(MODE_DIFFERENCES) <= exercised, summary

        # The pod that started terminating under both servers: NXDOMAIN from kdns for each of
        # its addresses (CoreDNS's answer is printed).
        for ip in term1.ips:
            name, qtype = f"{dashed(ip)}.{a}.pod.{ZONE}", "AAAA" if ":" in ip else "A"
            assert ask(kp.port, name, qtype).rcode == "NXDOMAIN", name
            theirs = ask(coredns, name, qtype).short()
            print(f"terminating since the servers started: {name} {qtype}: coredns {theirs}")
    return term1


def _rbac_with_component(cp: ControlPlane, node: str, tmp_path: Path, term1: PodRec) -> None:
    """deploy/'s ClusterRole with the pods-verified component is what kdns needs, and enough."""
    a = "pv-a"
    _, base_token, _ = component_kubeconfig(cp, (), "kdns-e2e-base")
    kcfg, token, rules = component_kubeconfig(cp, ("pods-verified",), "kdns-e2e-pods-verified")
    assert any("pods" in r["resources"] for r in rules)
    with pytest.raises(ApiError) as err:
        cp.request("GET", "/api/v1/pods?limit=1", token=base_token)
    assert err.value.status == 403  # the base alone cannot list pods...
    cp.request("GET", "/api/v1/pods?limit=1", token=token)  # ...with the component's rule it can
    for method, path in (
        ("GET", f"/api/v1/namespaces/{a}/pods/web-0"),  # list and watch, no get
        ("GET", "/api/v1/secrets"),
        ("GET", "/api/v1/nodes"),
        ("DELETE", f"/api/v1/namespaces/{a}/pods/web-0"),
    ):
        with pytest.raises(ApiError) as err:
            cp.request(method, path, token=token)
        assert err.value.status == 403, (method, path)
    (tmp_path / "rbac").mkdir()
    kp = start_kdns_for(cp, tmp_path / "rbac", kcfg, "--pods", "verified", "--endpoint-pod-names")
    try:
        until_dig(kp, f"10-41-0-10.{a}.pod.{ZONE}", "A", {"10.41.0.10"})
        until_dig(kp, f"fd00-41--11.{a}.pod.{ZONE}", "AAAA", {"fd00:41::11"})
        until_dig(kp, f"web-0.{fqdn('web-hl', a)}", "A", {"10.41.0.10"})
        assert dig_reply(kp, f"10-41-0-10.pv-none.pod.{ZONE}").rcode == "NXDOMAIN"
        assert dig_reply(kp, f"10-41-9-9.{a}.pod.{ZONE}").rcode == "NXDOMAIN"
        assert dig_reply(kp, f"{dashed(term1.ips[0])}.{a}.pod.{ZONE}").rcode == "NXDOMAIN"
        # A pod created now arrives through the watch.
        cp.run_pod(a, "late-1", node, {"app": "other"}, "10.41.0.30")
        until_dig(kp, f"10-41-0-30.{a}.pod.{ZONE}", "A", {"10.41.0.30"})
        assert not refusals(kp.log())
    finally:
        kp.stop()


# --------------------------------------------------------------------------- 2. prefer zone

QUERIES = 300
TOLERANCE = 0.05
ZONE_NODES = {"zone-a": "pz-node-a", "zone-b": "pz-node-b"}
PZ = "pz"
A_PODS = {"a-0": ("10.42.1.1", "fd00:42:1::1"), "a-1": ("10.42.1.2", "fd00:42:1::2")}
A_PODS["a-2"] = ("10.42.1.3", "fd00:42:1::3")
B_PODS = {"b-0": ("10.42.2.1", "fd00:42:2::1"), "b-1": ("10.42.2.2", "fd00:42:2::2")}


def labelled_node(cp: ControlPlane, name: str, zone: str) -> None:
    labels = {ZONE_LABEL: zone, "kubernetes.io/hostname": name}
    try:
        cp.create("/api/v1/nodes", {"metadata": {"name": name, "labels": labels}})
    except ApiError as err:
        if err.status != 409:
            raise
        cp.merge_patch(f"/api/v1/nodes/{name}", {"metadata": {"labels": labels}})


def ordered(port: int, name: str, qtype: str) -> list[str]:
    """One question over a real UDP socket (EDNS, 1232 bytes): the answer's records in the
    order they came, as addresses (A/AAAA) or SRV target names."""
    q = dns.message.make_query(name, qtype, use_edns=0, payload=1232)
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
    assert r.rcode() == 0 and not r.flags & dns.flags.TC, (name, qtype, r)
    out: list[str] = []
    for rrset in r.answer:
        if rrset.rdtype != dns.rdatatype.from_text(qtype):
            continue
        for rd in rrset:
            out.append(str(rd.target).lower() if qtype == "SRV" else rd.address)
    return out


def check_order(
    port: int, name: str, qtype: str, preferred: set[str], rest: set[str], n: int = QUERIES
) -> dict[str, float]:
    """`n` answers: each holds exactly preferred | rest, every preferred one before any other;
    within each group each record comes first 1/len(group) of the time, +-TOLERANCE."""
    first: Counter[str] = Counter()
    first_rest: Counter[str] = Counter()
    for i in range(n):
        got = ordered(port, name, qtype)
        assert len(got) == len(preferred | rest) and set(got) == preferred | rest, (
            f"{name} {qtype} answer {i}: {got}, wanted {sorted(preferred)} then {sorted(rest)}"
        )
        assert set(got[: len(preferred)]) == preferred, (
            f"{name} {qtype} answer {i}: {got}: {sorted(preferred)} must come first"
        )
        if preferred:
            first[got[0]] += 1
        if rest:
            first_rest[got[len(preferred)]] += 1
    shares: dict[str, float] = {}
    for group, counts in ((preferred, first), (rest, first_rest)):
        for rr in group:
            share = counts[rr] / n
            shares[rr] = share
            assert abs(share - 1 / len(group)) <= TOLERANCE, (
                f"{name} {qtype}: {rr} first of its group {share:.1%} of {n} answers, "
                f"wanted {1 / len(group):.1%} +-{TOLERANCE:.0%} ({dict(counts)})"
            )
    return shares


def _targets(ns: str, svc: str, ips: set[str]) -> set[str]:
    return {f"{dashed(ip)}.{fqdn(svc, ns)}." for ip in ips}


def hinted_slice(cp: ControlPlane, svc: str, endpoints: list[Obj]) -> None:
    cp.create_service(PZ, svc, headless=True, ports=[("p", 80, 80)])
    cp.create(
        f"/apis/discovery.k8s.io/v1/namespaces/{PZ}/endpointslices",
        {
            "metadata": {
                "name": f"{svc}-1",
                "labels": {
                    "kubernetes.io/service-name": svc,
                    "endpointslice.kubernetes.io/managed-by": "e2e.kdns",
                },
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "p", "port": 80, "protocol": "TCP"}],
        },
    )


def _ep(ip: str, zone: str | None, hints: Sequence[str] | None, ready: bool = True) -> Obj:
    ep: Obj = {"addresses": [ip], "conditions": {"ready": ready}}
    if zone:
        ep["zone"] = zone
    if hints is not None:
        ep["hints"] = {"forZones": [{"name": z} for z in hints]}
    return ep


#: Hand-written slices for the preference rule itself. hinted: every ready endpoint has hints, so
#: the hints decide (zone-a's are .2 and .3 although their zone is zone-b; the unready .4 has no
#: hints and does not count). mixed: one ready endpoint has no hints, so the zones decide.
#: nozone: neither: no endpoint is preferred.
HAND_WRITTEN: dict[str, tuple[list[Obj], set[str], set[str]]] = {
    "hinted": (
        [
            _ep("10.42.3.1", "zone-a", ["zone-b"]),
            _ep("10.42.3.2", "zone-b", ["zone-a"]),
            _ep("10.42.3.3", "zone-b", ["zone-a", "zone-b"]),
            _ep("10.42.3.4", "zone-a", None, ready=False),
        ],
        {"10.42.3.2", "10.42.3.3"},
        {"10.42.3.1"},
    ),
    "mixed": (
        [
            _ep("10.42.4.1", "zone-a", ["zone-b"]),
            _ep("10.42.4.2", "zone-b", None),
            _ep("10.42.4.3", "zone-a", None),
        ],
        {"10.42.4.1", "10.42.4.3"},
        {"10.42.4.2"},
    ),
    "nozone": (
        [_ep("10.42.5.1", None, None), _ep("10.42.5.2", None, None)],
        set(),
        {"10.42.5.1", "10.42.5.2"},
    ),
}


def _zones_written(cp: ControlPlane, svc: str, pods: dict[str, str], hints: bool) -> bool:
    """Every slice endpoint of `svc` is one of `pods` (ip -> zone) and carries that zone (and,
    with `hints`, hints.forZones naming it), and every pod's address is there."""
    seen: set[str] = set()
    for s in cp.slices(PZ, svc):
        for ep in s.get("endpoints") or []:
            for ip in ep.get("addresses") or []:
                if ip not in pods or ep.get("zone") != pods[ip]:
                    return False
                if ep.get("nodeName") != ZONE_NODES[pods[ip]]:
                    return False
                if hints and (ep.get("hints") or {}).get("forZones") != [{"name": pods[ip]}]:
                    return False
                seen.add(ip)
    return seen == set(pods)


def check_services(
    port: int, zone_a: set[str], zone_b: set[str], fam6: dict[str, str], when: str
) -> None:
    """Every service's answers in order: zone_a's addresses first (when there are any); the
    first-place shares are printed, one line per question."""
    checks: list[tuple[str, str, set[str], set[str]]] = []
    for svc in ("web", "web-close"):
        name = fqdn(svc, PZ)
        checks.append((name, "A", zone_a, zone_b))
        # _port._proto A: the addresses its SRV records lead to, in the same order.
        checks.append((f"_http._tcp.{name}", "A", zone_a, zone_b))
        checks.append(
            (f"_http._tcp.{name}", "SRV", _targets(PZ, svc, zone_a), _targets(PZ, svc, zone_b))
        )
    near6, far6 = {fam6[ip] for ip in zone_a}, {fam6[ip] for ip in zone_b}
    checks.append((fqdn("web-ds", PZ), "AAAA", near6, far6))
    for svc, (_, near, far) in HAND_WRITTEN.items():
        checks.append((fqdn(svc, PZ), "A", near, far))
        checks.append(
            (f"_p._tcp.{fqdn(svc, PZ)}", "SRV", _targets(PZ, svc, near), _targets(PZ, svc, far))
        )
    for name, qtype, near, far in checks:
        shares = check_order(port, name, qtype, near, far)
        first = ", ".join(
            f"{rr.split('.')[0] if qtype == 'SRV' else rr} {share:.0%}"
            for rr, share in sorted(shares.items())
        )
        print(
            f"{when}: {name} {qtype}: {len(near)} preferred, {len(far)} others; first of its "
            f"group {first}"
        )


def test_prefer_zone_with_controller_written_slices(cluster: ControlPlane, tmp_path: Path) -> None:
    """--prefer-zone zone-a and --prefer-zone-from-node <zone-a's node>: zone-a's endpoints
    first in headless A/AAAA and SRV answers, rotating within each group, from the zones (and,
    with trafficDistribution PreferClose, the hints) kube-controller-manager writes."""
    cp = cluster
    for zone, node_name in ZONE_NODES.items():
        labelled_node(cp, node_name, zone)
    cp.create_namespace(PZ)
    web = {"app": "pz-web"}
    ports = [("http", 80, 8080)]
    cp.create_service(PZ, "web", selector=web, ports=ports, headless=True)
    cp.create_service(
        PZ,
        "web-ds",
        selector=web,
        ports=ports,
        headless=True,
        ip_family_policy="RequireDualStack",
        ip_families=("IPv4", "IPv6"),
    )
    cp.create_service(PZ, "web-close", selector=web, ports=ports, headless=True)
    cp.merge_patch(
        f"/api/v1/namespaces/{PZ}/services/web-close",
        {"spec": {"trafficDistribution": "PreferClose"}},
    )
    for svc, (endpoints, _, _) in HAND_WRITTEN.items():
        hinted_slice(cp, svc, endpoints)
    for pods, zone in ((A_PODS, "zone-a"), (B_PODS, "zone-b")):
        for name, ips in pods.items():
            cp.run_pod(PZ, name, ZONE_NODES[zone], web, ips)
    zone_of = {ip: "zone-a" for ips in A_PODS.values() for ip in ips}
    zone_of |= {ip: "zone-b" for ips in B_PODS.values() for ip in ips}
    v4 = {ip: z for ip, z in zone_of.items() if ":" not in ip}
    fam6 = {ips[0]: ips[1] for ips in [*A_PODS.values(), *B_PODS.values()]}
    # The point of the test: the controller writes each endpoint's zone (and, for PreferClose,
    # hints naming it) from its node's label.
    for svc, pods_zones, hints in (("web", v4, False), ("web-ds", zone_of, False)):
        wait_for(
            f"{svc}'s slices with zones",
            functools.partial(_zones_written, cp, svc, pods_zones, hints),
            30,
        )
    wait_for(
        "web-close's slices with zones and hints",
        functools.partial(_zones_written, cp, "web-close", v4, True),
        30,
    )
    zone_a = {ips[0] for ips in A_PODS.values()}
    zone_b = {ips[0] for ips in B_PODS.values()}

    # deploy/components/prefer-zone-from-node's RBAC: get on nodes, nothing more.
    _, base_token, _ = component_kubeconfig(cp, (), "kdns-e2e-base")
    node_kcfg, token, rules = component_kubeconfig(
        cp, ("prefer-zone-from-node",), "kdns-e2e-prefer-zone"
    )
    assert any("nodes" in r["resources"] for r in rules)
    node_path = f"/api/v1/nodes/{ZONE_NODES['zone-a']}"
    cp.request("GET", node_path, token=token)
    for path, who in ((node_path, base_token), ("/api/v1/nodes", token), ("/api/v1/pods", token)):
        with pytest.raises(ApiError) as err:
            cp.request("GET", path, token=who)
        assert err.value.status == 403, path
    with contextlib.ExitStack() as stack:
        for name in [*A_PODS, *B_PODS]:
            stack.callback(cp.delete_pod, PZ, name)
        for name in ("kdns-e2e-base", "kdns-e2e-prefer-zone"):
            stack.callback(cp.delete, f"{BINDINGS}/{name}")
        servers: dict[str, KdnsProcess] = {}
        for flag, value, kcfg in (
            ("--prefer-zone", "zone-a", cp.admin_kubeconfig),
            ("--prefer-zone-from-node", ZONE_NODES["zone-a"], node_kcfg),
        ):
            (tmp_path / flag).mkdir()
            servers[flag] = kp = start_kdns_for(cp, tmp_path / flag, kcfg, flag, value)
            stack.callback(kp.stop)
        for flag, kp in servers.items():
            until_dig(kp, fqdn("web", PZ), "A", zone_a | zone_b)
            until_dig(kp, fqdn("web-ds", PZ), "AAAA", {fam6[ip] for ip in zone_a | zone_b})
            until_dig(kp, fqdn("web-close", PZ), "A", zone_a | zone_b)
            check_services(kp.port, zone_a, zone_b, fam6, f"{flag}, both zones")
        assert not refusals(servers["--prefer-zone-from-node"].log())

        # zone-a's pods go: the rest, all of zone-b, is answered as one rotating group (for
        # web-close, every endpoint still has hints, none for zone-a).
        for name in A_PODS:
            cp.delete_pod(PZ, name)
        only_b = {ip: z for ip, z in zone_of.items() if z == "zone-b"}
        for svc, pods_zones, hints in (
            ("web", {ip: z for ip, z in only_b.items() if ":" not in ip}, False),
            ("web-close", {ip: z for ip, z in only_b.items() if ":" not in ip}, True),
            ("web-ds", only_b, False),
        ):
            wait_for(
                f"{svc}'s slices with zone-b's endpoints only",
                functools.partial(_zones_written, cp, svc, pods_zones, hints),
                30,
            )
        for flag, kp in servers.items():
            until_dig(kp, fqdn("web", PZ), "A", zone_b)
            until_dig(kp, fqdn("web-ds", PZ), "AAAA", {fam6[ip] for ip in zone_b})
            until_dig(kp, fqdn("web-close", PZ), "A", zone_b)
            check_services(kp.port, set(), zone_b, fam6, f"{flag}, zone-b left")


# --------------------------------------------------------------------------- 3. the components


@pytest.mark.parametrize(
    "components",
    [
        ("pods-verified",),
        ("prefer-zone-from-node",),
        ("pods-verified", "prefer-zone-from-node"),
        ("autoscale-hpa",),
        ("autoscale-proportional",),
    ],
    ids="+".join,
)
def test_deploy_components_dry_run(cluster: ControlPlane, components: tuple[str, ...]) -> None:
    """deploy/ with its components, as tests/deploy_render.py renders it, passes a server-side
    apply dry run with strict field validation (the env and args the components add included)."""
    docs = deploy_render.render(components)
    for ns in {d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")}:
        cluster.create_namespace(ns)
    failures = []
    for doc in docs:
        try:
            cluster.apply(_object_path(cluster, doc), doc, dry_run=True)
        except (ApiError, AssertionError) as err:
            failures.append(f"{doc['kind']} {doc['metadata'].get('name')}: {err}")
    assert not failures, "\n".join(failures)
