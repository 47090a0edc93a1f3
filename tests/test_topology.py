"""`--prefer-zone`: headless answers list the endpoints for one zone first, each group turning.

In process, for generated headless services (endpoints in several zones or none, hints on all,
some or no endpoints, ready or not, IPv4 and IPv6, named or dashed): every A, AAAA and SRV
answer, over a full round of orders, has the same records as the unrotated one, every record
for the zone before every other, and each record of a group first equally often. Which
endpoints are for the zone is computed here from the generated objects, by the rule the README
states (hints when every ready endpoint has them, else the endpoint's zone), not read from kdns.

Over real sockets: a slice in zones/ with endpoints in two zones, asked 300 times; what happens
when no endpoint is in the zone; the flag's errors.
"""

from __future__ import annotations

import collections
import math
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from kdns.dns.resolution import Cluster, Engine
from kdns.serve.responder import Responder
from kdns.state.model import Endpoint, EndpointPort, EndpointSet, Namespace, Service, Subset
from kdns.state.store import Store, ViewRules
from tests.kdns_process import KDNS, start_kdns

ZONES = ("zone-a", "zone-b", "zone-c", "")
PREFERRED = "zone-a"


@dataclass
class Generated:
    """One generated headless service and, by name, whether each ready endpoint is for the zone."""

    namespace: str
    name: str
    #: endpoint label -> (address, for the zone)
    ready: dict[str, tuple[str, bool]]


def generate(rng: random.Random, services: int) -> tuple[list[object], list[Generated]]:
    objects: list[object] = [Namespace("ns")]
    made: list[Generated] = []
    n = 0
    for s in range(services):
        name = f"svc{s}"
        objects.append(Service("ns", name, cluster_ips=(), headless=True, selector=None, ports=()))
        hint_mode = rng.choice(["all", "some", "none"])
        endpoints: list[tuple[Endpoint, bool]] = []  # (endpoint, v6)
        for _ in range(rng.randint(1, 6)):
            n += 1
            v6 = rng.random() < 0.3
            address = f"fd00::{n:x}" if v6 else f"10.{n // 250}.{n % 250}.1"
            zone = rng.choice(ZONES)
            hinted = hint_mode == "all" or (hint_mode == "some" and rng.random() < 0.5)
            for_zones = tuple(rng.sample(ZONES[:3], rng.randint(1, 2))) if hinted else ()
            endpoints.append(
                (
                    Endpoint(
                        (address,),
                        hostname=f"h{n}" if rng.random() < 0.4 else "",
                        ready=rng.random() < 0.85,
                        zone=zone,
                        for_zones=for_zones,
                    ),
                    v6,
                )
            )
        ports = (EndpointPort("http", 80), EndpointPort("grpc", 9000))[: rng.randint(1, 2)]
        for family in (False, True):
            eps = tuple(ep for ep, v6 in endpoints if v6 == family)
            if eps:
                objects.append(
                    EndpointSet(
                        "EndpointSlice", "ns", f"{name}-{int(family)}", name, (Subset(eps, ports),)
                    )
                )
        ready = [ep for ep, _ in endpoints if ep.ready]
        by_hints = bool(ready) and all(ep.for_zones for ep in ready)
        made.append(
            Generated(
                "ns",
                name,
                {
                    (ep.hostname or ep.addresses[0].replace(".", "-").replace(":", "-")): (
                        ep.addresses[0],
                        (PREFERRED in ep.for_zones) if by_hints else ep.zone == PREFERRED,
                    )
                    for ep in ready
                },
            )
        )
    return objects, made


def responder(objects: list[object], rotate: str) -> Responder:
    store = Store(rules=ViewRules(prefer_zone=PREFERRED))
    store.add_layer("files", implicit_namespaces=True)
    store.apply("files", objects)  # type: ignore[arg-type]
    store.set_synced("files")
    return Responder(Engine([Cluster("cluster.local", store)]), rotate=rotate)  # type: ignore[arg-type]


def answer_records(message: dns.message.Message) -> list[str]:
    return [
        f"{dns.rdatatype.to_text(rrset.rdtype)} {rd}" for rrset in message.answer for rd in rrset
    ]


def near(record: str, svc: Generated) -> bool:
    """Whether an answer record is for the preferred zone."""
    kind, *rest = record.split()
    if kind == "SRV":
        label = rest[3].split(".")[0]
        return svc.ready[label][1]
    return any(addr == rest[0] and is_near for addr, is_near in svc.ready.values())


@pytest.mark.parametrize("seed", range(6))
def test_every_order_puts_the_zone_first_and_turns_each_group(seed: int) -> None:
    rng = random.Random(seed)
    objects, made = generate(rng, 25)
    turning = responder(objects, "round-robin")
    still = responder(objects, "off")
    checked = 0
    for svc in made:
        base = f"{svc.name}.{svc.namespace}.svc.cluster.local"
        for qname, qtype in [
            (base, "A"),
            (base, "AAAA"),
            (base, "SRV"),
            (f"_http._tcp.{base}", "SRV"),
            (f"_http._tcp.{base}", "A"),
        ]:
            data = dns.message.make_query(qname, qtype, use_edns=0, payload=4096).to_wire()
            fixed = still.respond(data, udp=False)
            assert isinstance(fixed, bytes)
            reference = answer_records(dns.message.from_wire(fixed, one_rr_per_rrset=True))
            if len(reference) < 2:
                continue
            lead = sum(near(r, svc) for r in reference)
            # Unrotated, the records for the zone already come first.
            assert [near(r, svc) for r in reference] == [True] * lead + [False] * (
                len(reference) - lead
            ), (qname, qtype, reference)
            groups = [g for g in (lead, len(reference) - lead) if g]
            rounds = math.lcm(*groups)
            firsts: collections.Counter[str] = collections.Counter()
            for i in range(rounds):
                got = turning.respond(data, udp=bool(i % 2))
                assert isinstance(got, bytes)
                records = answer_records(dns.message.from_wire(got, one_rr_per_rrset=True))
                assert sorted(records) == sorted(reference)
                assert [near(r, svc) for r in records] == [near(r, svc) for r in reference]
                firsts[records[0]] += 1
            leaders = reference[:lead] if lead else reference
            assert sorted(firsts) == sorted(leaders), (qname, qtype)
            assert set(firsts.values()) == {rounds // len(leaders)}, (qname, qtype, firsts)
            checked += 1
    assert checked >= 40


ZONE_FILE = """apiVersion: v1
kind: Service
metadata: {{name: db, namespace: default}}
spec: {{clusterIP: None, ports: [{{name: pg, port: 5432}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: default
  labels: {{kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{{name: pg, port: 5432}}]
endpoints:
- {{addresses: [10.1.0.1], zone: {a}}}
- {{addresses: [10.1.0.2], zone: zone-b}}
- {{addresses: [10.1.0.3], zone: {a}}}
- {{addresses: [10.1.0.4], zone: zone-b}}
- {{addresses: [10.1.0.5], zone: {a}}}
"""


def ask(port: int, name: str, rdtype: str, tcp: bool = False) -> list[str]:
    q = dns.message.make_query(name, rdtype)
    ask_ = dns.query.tcp if tcp else dns.query.udp
    reply = ask_(q, "127.0.0.1", port=port, timeout=5)
    return [
        rd.address if rrset.rdtype == dns.rdatatype.A else str(rd.target)
        for rrset in reply.answer
        for rd in rrset
    ]


def test_the_zones_endpoints_come_first_and_each_leads_a_third_of_the_time(
    tmp_path: Path,
) -> None:
    (tmp_path / "db.yaml").write_text(ZONE_FILE.format(a="zone-a"))
    kp = start_kdns(["--zones", str(tmp_path), "--prefer-zone", "zone-a"])
    try:
        near_ = {"10.1.0.1", "10.1.0.3", "10.1.0.5"}
        counts: collections.Counter[str] = collections.Counter()
        for i in range(300):
            got = ask(kp.port, "db.default.svc.cluster.local", "A", tcp=i % 3 == 0)
            assert set(got[:3]) == near_ and len(got) == 5, got
            counts[got[0]] += 1
        shares = {a: n / 300 for a, n in counts.items()}
        print(f"--prefer-zone zone-a: first-address shares over 300 queries: {shares}")
        assert set(shares) == near_
        assert all(abs(share - 1 / 3) <= 0.05 for share in shares.values()), shares
        for _ in range(6):
            targets = ask(kp.port, "_pg._tcp.db.default.svc.cluster.local", "SRV")
            assert {t.split(".")[0] for t in targets[:3]} == {"10-1-0-1", "10-1-0-3", "10-1-0-5"}
        # No endpoint in the zone: every endpoint, one group, turning.
        (tmp_path / "db.yaml").write_text(ZONE_FILE.format(a="zone-c"))

        def all_turn() -> bool:
            firsts = {ask(kp.port, "db.default.svc.cluster.local", "A")[0] for _ in range(10)}
            return len(firsts) == 5

        assert until_true(all_turn)
    finally:
        kp.stop()


def until_true(check: object, timeout: float = 10.0) -> bool:
    from tests.kdns_process import until

    return bool(until(check, timeout))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prefer-zone", "-a"], "bad --prefer-zone '-a'"),
        (["--prefer-zone", "zone a"], "bad --prefer-zone 'zone a'"),
        (["--prefer-zone", "x" * 64], "bad --prefer-zone"),
        (["--prefer-zone", "a", "--prefer-zone-from-node", "n1"], "choose either"),
        (["--prefer-zone-from-node", "Node_1"], "bad --prefer-zone-from-node 'Node_1'"),
        (["--prefer-zone-from-node", "n1", "--zones", "zones"], "needs a cluster"),
    ],
)
def test_bad_zone_flags_are_one_line(args: list[str], message: str) -> None:
    out = subprocess.run([*KDNS, "serve", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr


def test_prefer_zone_from_node_reads_the_nodes_label_once(tmp_path: Path) -> None:
    from testkit.apiserver import (
        FakeApiServer,
        endpoint_slice,
        namespace,
        node,
        service,
        slice_endpoint,
        write_kubeconfig,
    )

    api = FakeApiServer().start()
    try:
        endpoints = []
        for i, zone in enumerate(["zone-b", "zone-a", "zone-b", "zone-a"], start=1):
            ep = slice_endpoint(f"10.6.0.{i}")
            ep["zone"] = zone
            endpoints.append(ep)
        api.apply_all(
            [
                namespace("default"),
                node("n1", {"topology.kubernetes.io/zone": "zone-a"}),
                node("n2"),
                service("db", cluster_ip="None"),
                endpoint_slice("db-abcde", "db", endpoints=endpoints),
            ]
        )
        kcfg = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        kp = start_kdns(["--kubeconfig", str(kcfg), "--prefer-zone-from-node", "n1"])
        try:
            assert any("preferring zone zone-a, of node n1" in line for line in kp.lines)
            from tests.kdns_process import until

            assert until(lambda: len(ask(kp.port, "db.default.svc.cluster.local", "A")) == 4, 20)
            for _ in range(8):
                got = ask(kp.port, "db.default.svc.cluster.local", "A")
                assert set(got[:2]) == {"10.6.0.2", "10.6.0.4"}, got
        finally:
            kp.stop()
        assert len(api.requests("nodes")) == 1  # read once, at start
        # A node without the label: a warning, and no preference.
        kp = start_kdns(["--kubeconfig", str(kcfg), "--prefer-zone-from-node", "n2"])
        try:
            assert any("node n2 has no topology.kubernetes.io/zone label" in x for x in kp.lines)
        finally:
            kp.stop()
        # A node that does not exist: one line, and no server.
        out = subprocess.run(
            [*KDNS, "serve", "--kubeconfig", str(kcfg), "--prefer-zone-from-node", "n9"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode != 0
        assert out.stderr.strip().splitlines() == [
            "kdns: error: --prefer-zone-from-node: no node 'n9'"
        ], out.stderr
    finally:
        api.stop()
