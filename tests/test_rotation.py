"""`--rotate`: multi-record A, AAAA and SRV answers turn, and every order is the same answer.

In-process, for random stores (tests/test_bulk.py's) and the large headless services of the
large-answer encoder: each of N queries gets a well-formed message (dnspython parses it, so no
compression pointer is broken or points forward) whose records equal the unrotated answer's,
with every glue record named exactly as an SRV target; round-robin puts each record first once
in N queries, over the memo's path, the cache's and TCP. Over real sockets: the first address's
share over 300 queries for each mode, and the flag's errors.
"""

from __future__ import annotations

import collections
import random
import subprocess

import dns.message
import dns.query
import dns.rdatatype
import pytest
from dnslib import QTYPE

from kdns.dns.resolution import Cluster, Engine
from kdns.serve.responder import Responder
from kdns.state.store import Store
from tests.builders import headless_manifest
from tests.kdns_process import KDNS, start_kdns
from tests.test_bulk import ZONE_SETS, big_headless, questions, random_store, wire

ROTATING = {"A": QTYPE.A, "AAAA": QTYPE.AAAA, "SRV": QTYPE.SRV}


def records(message: dns.message.Message, section: str) -> list[str]:
    return [
        f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {rd}"
        for rrset in getattr(message, section)
        for rd in rrset
    ]


def check_turns(
    rotating: Responder, still: Responder, data: bytes, udp: bool, turns: int = 0
) -> int:
    """Ask `data` N times (or `turns` times) of the rotating responder; returns N (0: not a
    multi-record answer)."""
    fixed = still.respond(data, udp=udp)
    assert isinstance(fixed, bytes)
    reference = dns.message.from_wire(fixed, one_rr_per_rrset=True)
    answer = records(reference, "answer")
    if len(answer) < 2 or reference.flags & dns.flags.TC:
        return 0
    firsts: collections.Counter[str] = collections.Counter()
    for _ in range(turns or len(answer)):
        got = rotating.respond(data, udp=udp)
        assert isinstance(got, bytes)
        message = dns.message.from_wire(
            got, one_rr_per_rrset=True
        )  # raises on a broken or forward pointer
        assert message.id == reference.id and message.rcode() == reference.rcode()
        assert sorted(records(message, "answer")) == sorted(answer)
        assert sorted(records(message, "additional")) == sorted(records(reference, "additional"))
        targets = {
            str(rd.target).lower()
            for rrset in message.answer
            for rd in rrset
            if rrset.rdtype == dns.rdatatype.SRV
        }
        for rrset in message.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                assert str(rrset.name).lower() in targets
        firsts[records(message, "answer")[0]] += 1
    if not turns and len(set(answer)) == len(answer):  # (a repeated record comes first twice)
        assert sorted(firsts) == sorted(answer) and set(firsts.values()) == {1}, firsts
    return len(answer)


@pytest.mark.parametrize("seed", range(8))
def test_every_order_is_the_same_answer_and_round_robin_visits_each(seed: int) -> None:
    rng = random.Random(seed)
    zones = rng.choice(ZONE_SETS)
    store = random_store(rng)
    rotating = Responder(Engine([Cluster(z, store) for z in zones]))
    still = Responder(Engine([Cluster(z, store) for z in zones]), rotate="off")
    turned = 0
    for name, _ in questions(rng, zones):
        for qtype in ROTATING.values():
            data = wire(rng, name, qtype, edns=rng.random() < 0.7)
            turned += check_turns(rotating, still, data, udp=rng.random() < 0.5)
    assert turned > 0, "no multi-record answer asked: the test tested nothing"


@pytest.mark.parametrize(
    ("count", "hostname", "dual", "name", "qtype"),
    [
        (40, "", False, "db.ns.svc.cluster.local", QTYPE.A),
        (40, "", True, "db.ns.svc.cluster.local", QTYPE.AAAA),
        (40, "web-", True, "db.ns.svc.cluster.local", QTYPE.SRV),  # glue for each target
        (40, "", False, "_http._tcp.db.ns.svc.cluster.local", QTYPE.SRV),
        # Past 16 KB with glue, and too many records to keep every order: one order, still
        # a well-formed answer every time.
        (600, "h" * 50 + "-", False, "db.ns.svc.cluster.local", QTYPE.SRV),
    ],
)
def test_large_answers_turn_too(
    count: int, hostname: str, dual: bool, name: str, qtype: int
) -> None:
    def responder(rotate: str) -> Responder:
        store = Store()
        store.add_layer("t", implicit_namespaces=True)
        store.apply("t", big_headless(count, hostname, dual))
        store.set_synced("t")
        return Responder(Engine([Cluster("cluster.local", store)]), rotate=rotate)  # type: ignore[arg-type]

    data = wire(random.Random(count), name, qtype, edns=True)
    # TCP: the whole answer, whatever its size.
    turns = 5 if count > 100 else 0
    check_turns(responder("round-robin"), responder("off"), data, udp=False, turns=turns)


def test_truncated_answers_leave_the_turn_alone() -> None:
    # A headless service of 40 addresses is too large for UDP without EDNS: those clients get
    # TC=1 and the records that fit in the first order, then ask again over TCP. The TC=1
    # answers do not move the turn: the TCP answers start with the first order and visit each.
    def responder(rotate: str) -> Responder:
        store = Store()
        store.add_layer("t", implicit_namespaces=True)
        store.apply("t", big_headless(40))
        store.set_synced("t")
        return Responder(Engine([Cluster("cluster.local", store)]), rotate=rotate)  # type: ignore[arg-type]

    rotating, still = responder("round-robin"), responder("off")
    data = wire(random.Random(2), "db.ns.svc.cluster.local", QTYPE.A)
    for _ in range(7):
        got = rotating.respond(data, udp=True)
        assert isinstance(got, bytes)
        message = dns.message.from_wire(got)
        assert message.flags & dns.flags.TC and 0 < len(message.answer[0]) < 40
        assert got == still.respond(data, udp=True)  # the first order's, every time
    assert rotating.respond(data, udp=False) == still.respond(data, udp=False)
    check_turns(rotating, still, data, udp=False, turns=39)  # the other 39 orders, once each


def test_the_memo_does_not_pin_an_order() -> None:
    # The same bytes over UDP, again and again: the memo's path serves fixed bytes, so a
    # rotating answer must never be memoized.
    store = Store()
    store.add_layer("t", implicit_namespaces=True)
    store.apply("t", big_headless(3))
    store.set_synced("t")
    responder = Responder(Engine([Cluster("cluster.local", store)]))
    data = wire(random.Random(1), "db.ns.svc.cluster.local", QTYPE.A)
    firsts = []
    for _ in range(9):
        got = responder.respond(data, udp=True)
        assert isinstance(got, bytes)
        firsts.append(records(dns.message.from_wire(got, one_rr_per_rrset=True), "answer")[0])
    assert collections.Counter(firsts) == {a: 3 for a in set(firsts)} and len(set(firsts)) == 3


ZONE = headless_manifest("default", "db", ("pg", 5432), ["10.1.0.1", "10.1.0.2", "10.1.0.3"])


def first_shares(port: int, queries: int, tcp: bool) -> dict[str, float]:
    counts: collections.Counter[str] = collections.Counter()
    for i in range(queries):
        q = dns.message.make_query("db.default.svc.cluster.local", "A")
        ask = dns.query.tcp if tcp and i % 2 else dns.query.udp
        reply = ask(q, "127.0.0.1", port=port, timeout=5)
        counts[reply.answer[0][0].address] += 1
        assert sorted(rd.address for rd in reply.answer[0]) == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
    return {address: n / queries for address, n in counts.items()}


@pytest.mark.parametrize(("mode", "queries"), [("round-robin", 300), ("random", 3000)])
def test_each_address_comes_first_a_third_of_the_time(tmp_path, mode: str, queries: int) -> None:
    # random: 3,000 queries, so that +-5 points is 5.8 standard deviations (300 would make a
    # test that fails now and then by chance, with nothing wrong).
    (tmp_path / "db.yaml").write_text(ZONE)
    kp = start_kdns(["--zones", str(tmp_path), "--rotate", mode])
    try:
        shares = first_shares(kp.port, queries, tcp=mode == "round-robin")
    finally:
        kp.stop()
    print(f"--rotate {mode}: first-address shares over {queries} queries: {shares}")
    assert len(shares) == 3
    assert all(abs(share - 1 / 3) <= 0.05 for share in shares.values()), shares


def test_rotate_off_keeps_one_order(tmp_path) -> None:
    (tmp_path / "db.yaml").write_text(ZONE)
    kp = start_kdns(["--zones", str(tmp_path), "--rotate", "off"])
    try:
        shares = first_shares(kp.port, 30, tcp=True)
    finally:
        kp.stop()
    assert len(shares) == 1


def test_a_bad_rotate_value_is_one_line() -> None:
    out = subprocess.run(
        [*KDNS, "serve", "--rotate", "sideways"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "kdns: error: --rotate must be one of round-robin, random, off, not 'sideways'"
    ]
