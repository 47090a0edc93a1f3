"""Explain and the server share one resolution: for random stores and names of every shape, the
records `kdns explain` prints are the served ones, byte for byte once encoded, and its prose says
NXDOMAIN or NODATA exactly when the served answer is one.

The served bytes come from the responder's full path (response cache, the large-answer encoder,
the engine); the explanation's from `explain.explanation(...).answer` encoded for the same
query. Both read `Engine.decide`, so a rule written in one place only cannot pass here.
"""

from __future__ import annotations

import random
import re

from dnslib import QTYPE, RCODE

from kdns.dns.names import ZoneKind
from kdns.dns.resolution import Cluster, Engine, Rule
from kdns.dns.wire import encode, parse_query
from kdns.ops.explain import explanation
from kdns.serve.responder import Responder
from kdns.state.model import (
    Endpoint,
    EndpointPort,
    Gateway,
    HostRoute,
    ImportSlice,
    KubeObject,
    PodAddresses,
    Service,
    ServiceImport,
    ServicePort,
    Subset,
)
from kdns.state.store import Store
from tests.test_bulk import NAMESPACES, SERVICES, ZONE_SETS, random_store, spell, wire

TYPES = ("A", "AAAA", "SRV", "PTR", "TXT", "CNAME", "NS", "SOA", "MX", "ANY", "TYPE65280")
LABELS = ("h0", "h1", "web-0", "svc", "db", "a", "_tcp", "_udp", "_http", "*", "x-y")
#: The external zone (`--external-zone`) every generated engine serves beside its clusters.
EXTERNAL = "ext.example"
#: Host names of the generated Ingresses and routes, in front of EXTERNAL.
HOSTS = ("www", "api", "*.apps", "*.preview", "deep.app", "pending")
#: A Gateway's listeners, (name, hostname): none (a manifest without spec), every host, the
#: zone's hosts, one host only, or a name elsewhere beside every host.
LISTENERS: tuple[tuple[tuple[str, str], ...], ...] = (
    (),
    (("a", ""),),
    (("a", f"*.{EXTERNAL}"),),
    (("a", f"www.{EXTERNAL}"),),
    (("a", "elsewhere.invalid"), ("b", "")),
)
#: The clusterset zone (`--clusterset-domain`), its imports and their clusters.
CLUSTERSET = "clusterset.test"
IMPORTS = ("web", "db", "empty", "missing")
CLUSTER_IDS = ("cluster-a", "Cluster-B")


def store_for(rng: random.Random, zones: tuple[str, ...]) -> Store:
    def external_names(ns: str) -> list[KubeObject]:
        # Pointing inside the zones: followed, to a name that may not exist, and to another
        # ExternalName (a chain).
        zone = rng.choice(zones)
        return [
            Service(ns, "to-web", type="ExternalName", external_name=f"web.{ns}.svc.{zone}"),
            Service(ns, "to-none", type="ExternalName", external_name=f"none.{ns}.svc.{zone}"),
            Service(ns, "chain", type="ExternalName", external_name=f"to-web.{ns}.svc.{zone}"),
            Service(ns, "by-ip", type="ExternalName", external_name="192.0.2.1"),
            *exposed(ns),
        ]

    def exposed(ns: str) -> list[KubeObject]:
        # What the external zone answers: services with external IPs or a load balancer host
        # name, Ingresses and routes (wildcards too) and Gateways with and without addresses.
        ports = (ServicePort("http", 80), ServicePort("", 8080, "UDP"))
        ips = tuple(rng.sample(("192.0.2.7", "198.51.100.7", "2001:db8::7"), rng.randrange(4)))
        hosts = ("lb.example.net",) if rng.random() < 0.5 else ()
        hosted = [f"{h}.{EXTERNAL}" for h in rng.sample(HOSTS, 3)]
        section = rng.choice(("", "", "a", "b"))
        return [
            Service(
                ns,
                "lb",
                type="LoadBalancer",
                cluster_ips=("10.9.0.1",),
                ports=ports,
                external_ips=ips,
                external_hosts=hosts,
            ),
            Service(
                ns,
                "by-name",
                type="LoadBalancer",
                cluster_ips=("10.9.0.2",),
                ports=ports,
                external_hosts=("lb.example.net",),
            ),
            HostRoute("Ingress", ns, "ing", tuple(hosted[:2]), ips=ips[:1], hostnames=hosts),
            HostRoute(
                "HTTPRoute",
                ns,
                "route",
                tuple(hosted[1:]),
                parents=((ns, "gw", section),),
                # Now and then refused by the Gateway's controller.
                refused=((ns, "gw", section, "NotAllowed"),) if rng.random() < 0.2 else (),
            ),
            # Listeners that take every host, the zone's, or only some other name.
            Gateway(ns, "gw", ips=ips[1:], listeners=rng.choice(LISTENERS)),
            *imports(ns),
        ]

    def imports(ns: str) -> list[KubeObject]:
        # The clusterset zone: a ClusterSetIP import with or without IPs, a Headless one with
        # slices from two clusters (some endpoints not ready, some without a hostname), and a
        # Headless one with none.
        ports = (ServicePort("http", 80), ServicePort("", 8080, "UDP"))
        ips = tuple(rng.sample(("10.42.0.1", "10.42.0.2", "fd42::1"), rng.randrange(3)))
        out: list[KubeObject] = [
            ServiceImport(ns, "web", "ClusterSetIP", ips, ports),
            ServiceImport(ns, "db", "Headless", (), ports),
            ServiceImport(ns, "empty", "Headless", (), ports),
        ]
        for i, cluster in enumerate(CLUSTER_IDS):
            endpoints = tuple(
                Endpoint(
                    (f"10.{i + 1}.0.{n}",) if n % 3 else (f"fd0{i + 1}::{n}",),
                    hostname=rng.choice(("", "h0", "h1", "web-0")),
                    ready=rng.random() < 0.8,
                )
                for n in range(1, rng.randrange(2, 5))
            )
            port = EndpointPort(rng.choice(("http", "pg", "")), 80)
            out.append(ImportSlice(ns, f"db-{i}", "db", cluster, (Subset(endpoints, (port,)),)))
        return out

    return random_store(rng, external_names)


def names(rng: random.Random, zones: tuple[str, ...]) -> list[str]:
    """Names of every shape the grammar knows, and some it does not."""
    out = []
    for zone in zones:
        out += [zone, f"dns-version.{zone}", f"ns.dns.{zone}", f"dns.{zone}", f"svc.{zone}"]
        out += [f"pod.{zone}", f"x.{zone}", f"a.b.svc.c.d.e.f.{zone}"]
        for ns in (*NAMESPACES, "nope"):
            out += [f"{ns}.svc.{zone}", f"{ns}.pod.{zone}", f"10-0-0-1.{ns}.pod.{zone}"]
            out += [f"fd00--1.{ns}.pod.{zone}", f"not-an-ip.{ns}.pod.{zone}"]
            for svc in (*SERVICES, "to-web", "to-none", "chain", "by-ip", "missing"):
                base = f"{svc}.{ns}.svc.{zone}"
                out.append(base)
                out += [f"{label}.{base}" for label in rng.sample(LABELS, 4)]
                out.append(f"10-{rng.randrange(2)}-0-{rng.randrange(1, 9)}.{base}")
                out.append(f"fd00--{rng.randrange(1, 9):x}.{base}")
                for port in ("http", "dns", "grpc", "metrics", "none"):
                    for proto in ("tcp", "udp", "sctp"):
                        if rng.random() < 0.2:
                            out.append(f"_{port}._{proto}.{base}")
                out += [f"http.tcp.{base}", f"a.b.c.{base}", f"_._tcp.{base}"]
    for third in range(2):
        for last in range(1, 9):
            out.append(f"{last}.0.{third}.10.in-addr.arpa")
        out += [f"0.{third}.10.in-addr.arpa", f"{third}.10.in-addr.arpa"]
    out += ["10.in-addr.arpa", "in-addr.arpa", "ip6.arpa", "300.0.0.10.in-addr.arpa"]
    for last in range(1, 9):
        nibbles = ".".join(reversed(f"fd00{0:028x}"[:31] + f"{last:x}"))
        out.append(f"{nibbles}.ip6.arpa")
    out += ["d.f.ip6.arpa", "0.0.d.f.ip6.arpa", "e.f.ip6.arpa", "example.org", "com"]
    out += [CLUSTERSET, f"dns-version.{CLUSTERSET}", f"ns.dns.{CLUSTERSET}", f"dns.{CLUSTERSET}"]
    out += [f"svc.{CLUSTERSET}", f"pod.{CLUSTERSET}", f"x.{CLUSTERSET}"]
    for ns in (*NAMESPACES, "nope"):
        out += [f"{ns}.svc.{CLUSTERSET}", f"10-0-0-1.{ns}.pod.{CLUSTERSET}"]
        for svc in IMPORTS:
            base = f"{svc}.{ns}.svc.{CLUSTERSET}"
            out += [base, f"_tcp.{base}", f"_udp.{base}", f"x.{base}", f"a.b.c.{base}"]
            out += [f"_._tcp.{base}", f"http.tcp.{base}"]
            for cluster in (*CLUSTER_IDS, "cluster-c"):
                out.append(f"{cluster}.{base}")
                for host in rng.sample(("h0", "h1", "web-0", "x"), 2):
                    out.append(f"{host}.{cluster}.{base}")
                out.append(f"10-1-0-{rng.randrange(1, 5)}.{cluster}.{base}")
                out.append(f"fd01--{rng.randrange(1, 5)}.{cluster}.{base}")
            for port in ("http", "pg", "none"):
                out += [f"_{port}._tcp.{base}", f"_{port}._udp.{base}"]
    out += [EXTERNAL, f"dns.{EXTERNAL}", f"ns1.dns.{EXTERNAL}", f"ns.dns.{EXTERNAL}"]
    for host in HOSTS:
        out += [f"{host.replace('*', 'x')}.{EXTERNAL}", f"a.{host.replace('*.', '')}.{EXTERNAL}"]
        out.append(f"b.c.{host.replace('*.', '')}.{EXTERNAL}")
    for ns in (*NAMESPACES, "nope"):
        out.append(f"{ns}.{EXTERNAL}")
        for svc in ("lb", "by-name", "web", "missing"):
            base = f"{svc}.{ns}.{EXTERNAL}"
            out += [base, f"x.{base}", f"_tcp.{base}", f"_http._tcp.{base}", f"_http._udp.{base}"]
    return out


def _prose(text: str) -> str:
    """The reason and the details of an explanation, without its records."""
    lines = text.splitlines()
    cut = next(
        i for i, line in enumerate(lines) if re.match(r"^[A-Z]+(, not authoritative)?,", line)
    )
    return "\n".join(lines[:cut])


def test_explain_prints_the_served_answer() -> None:
    seen: set[str] = set()
    for seed in range(10):
        check_seed(seed, seen)
    # The generated names reach every rule (pods-disabled needs --pods disabled).
    missing = {r.value for r in Rule} - seen - {"pods-disabled"}
    assert not missing, missing


def check_seed(seed: int, seen: set[str]) -> None:
    rng = random.Random(seed)
    zones = ZONE_SETS[seed % len(ZONE_SETS)]
    # Odd seeds check pod names against pods (--pods verified): the random stores hold none,
    # and one pod is added, so that both a pod's address and one nobody has are asked.
    pods = "verified" if seed % 2 else "insecure"
    stores = [store_for(rng, zones) for _ in zones]
    if pods == "verified":
        for store in stores:
            store.add_layer("pods")
            store.apply("pods", [PodAddresses(NAMESPACES[0], "p", ("10.0.0.1", "fd00::1"))])
            store.set_synced("pods")
    engine = Engine(
        [Cluster(zone, store) for zone, store in zip(zones, stores, strict=True)]
        + [Cluster(EXTERNAL, stores[0], ZoneKind.EXTERNAL)]
        + [Cluster(CLUSTERSET, stores[0], ZoneKind.CLUSTERSET)],
        pods=pods,
    )
    responder = Responder(engine)
    for name in names(rng, zones):
        for tname in rng.sample(TYPES, 5):
            asked = spell(rng, name)
            number = QTYPE.reverse.get(tname) or int(tname.removeprefix("TYPE"))
            data = wire(rng, asked, number, edns=rng.random() < 0.5)
            served = responder.respond(data, udp=False)
            assert served is not None
            ex = explanation(engine, asked, tname)
            query = parse_query(data)
            assert encode(query, ex.answer) == served, (asked, tname, ex.text)
            rcode = ex.answer.rcode
            prose = _prose(ex.text)
            if not ex.answer.unsynced:
                assert ("NXDOMAIN" in prose) == (rcode == RCODE.NXDOMAIN), ex.text
            nodata = rcode == RCODE.NOERROR and not ex.answer.answer
            assert ("NODATA" in prose) == nodata, ex.text
            assert ex.answer.resolution is not None
            seen.add(ex.answer.resolution.rule.value)
