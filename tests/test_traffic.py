"""What the page counts and works out (kdns/serve/tally.py, kdns/ops/traffic.py): answers by
name through every path of the responder, search-path expansions, percentiles, the query rate."""

from __future__ import annotations

import asyncio
import math
import os
import struct
import time
from dataclasses import dataclass

import dns.message
import dns.rcode
import pytest

from kdns.ops.traffic import QueryRate, expansion, expansions, percentile
from kdns.serve.responder import Responder
from kdns.serve.stats import DURATION_BOUNDS
from kdns.serve.tally import (
    DIGEST_GAP,
    SLICE,
    WANTED_FOR,
    ClientTally,
    NameTally,
    PageClock,
    Rows,
    digest_due,
    merged,
    wire_name,
)
from tests.builders import LAYER, clusterip, make_engine, namespaces

NS = {"default", "shop"}


@pytest.mark.parametrize(
    ("name", "found"),
    [
        # a pod in default asking api.example.com with ndots:5
        (
            "api.example.com.default.svc.cluster.local",
            ("api.example.com", "default.svc.cluster.local"),
        ),
        ("api.example.com.svc.cluster.local", ("api.example.com", "svc.cluster.local")),
        ("api.example.com.cluster.local", ("api.example.com", "cluster.local")),
        # one label in front: a service, an endpoint's namespace, not an expansion
        ("web.default.svc.cluster.local", None),
        ("nope.shop.svc.cluster.local", None),
        ("shop.svc.cluster.local", None),
        ("web.cluster.local", None),
        # "com" is no namespace: .svc.<zone> was the suffix
        ("api.example.com.svc.cluster.local", ("api.example.com", "svc.cluster.local")),
        # a namespace kdns does not know: the same
        ("a.b.other.svc.cluster.local", ("a.b.other", "svc.cluster.local")),
        ("web.default.shop.svc.cluster.local", ("web.default", "shop.svc.cluster.local")),
        # pod names are names of their own
        ("10-1-0-1.shop.pod.cluster.local", None),
        ("api.example.com", None),
        ("api.example.com.cluster.localx", None),
    ],
)
def test_expansion(name: str, found: tuple[str, str] | None) -> None:
    assert expansion(name, "cluster.local", NS) == found


def test_expansions_gather_every_form_of_a_name() -> None:
    rows = {
        ("api.example.com.default.svc.cluster.local", 3): 2,
        ("api.example.com.svc.cluster.local", 3): 2,
        ("api.example.com.cluster.local", 3): 2,
        ("api.example.com", 0): 2,  # forwarded, answered
        ("kubernetes.default.shop.svc.cluster.local", 3): 5,
        ("kubernetes.default.svc.cluster.local", 0): 5,  # the form that answered
        ("nope.default.svc.cluster.local", 3): 9,  # not an expansion
        ("db-0.db.shop.svc.cluster.local", 0): 4,  # answered: not counted as one
    }
    found = expansions(rows, {"cluster.local": NS})
    assert found.failed == 11
    assert [(t.name, t.asked, t.answered) for t in found.tried] == [
        ("api.example.com", 8, 2),
        ("kubernetes.default", 10, 5),
    ]
    assert found.tried[0].suffixes == {
        "default.svc.cluster.local": 2,
        "svc.cluster.local": 2,
        "cluster.local": 2,
    }
    # Several zones: each name is read in the zone it ends in.
    found = expansions({("a.b.prod.example", 3): 1}, {"cluster.local": NS, "prod.example": NS})
    assert [(t.name, t.asked) for t in found.tried] == [("a.b", 1)]


def test_percentile_is_the_bucket_bound() -> None:
    bounds = DURATION_BOUNDS[:3]  # 0.25, 0.5, 1 ms
    assert percentile(bounds, [90, 99, 100], 100, 0.5) == bounds[0]
    assert percentile(bounds, [90, 99, 100], 100, 0.99) == bounds[1]
    assert percentile(bounds, [90, 99, 99], 100, 0.999) == float("inf")
    assert percentile(bounds, [0, 0, 0], 0, 0.5) != percentile(bounds, [0, 0, 0], 0, 0.5)  # nan


def test_query_rate_keeps_ten_minutes_of_intervals() -> None:
    total = [0]
    now = [1000.0]
    rate = QueryRate(lambda: total[0], interval=10, points=60, clock=lambda: now[0])
    for i in range(70):
        total[0] += 10 * i
        now[0] += 10
        rate.sample()
    assert len(rate.counts) == 60
    assert rate.counts[-1] == 690 and rate.counts[0] == 100
    # The current interval, over the part that has passed: 40 queries in 4 s.
    total[0] += 40
    now[0] += 4
    assert rate.per_second()[-1] == 10.0
    assert rate.per_second()[:-1] == [n / 10 for n in rate.counts]
    # Just after a sample, a burst is spread over at least a second.
    rate.sample()
    total[0] += 5
    now[0] += 0.01
    assert rate.per_second()[-1] == 5.0


def test_wire_name_spells_names_as_dig_does() -> None:
    assert wire_name(b"\x03api\x07example\x03com\x00") == "api.example.com"
    assert wire_name(b"\x03a.b\x02x\\\x04<a>\x00\x00") == "a\\046b.x\\092.<a>\\000"
    assert wire_name(b"\x00") == ""


@dataclass
class Cached:
    """A cache entry as a digest reads it."""

    rcode: int
    asked: int


def test_name_tally_prunes_to_the_busiest_half() -> None:
    tally = NameTally(limit=4)
    keys = [bytes([1, 97 + i, 0]) + b"\x00\x01\x00\x01\x00" for i in range(5)]
    for i, key in enumerate(keys[:4]):
        tally.add(key, 3, 10 * (i + 1))
    tally.add(keys[0], 3, 1)
    tally.add(keys[4], 3, 1)  # a fifth: the two busiest stay, and the new one
    assert asyncio.run(tally.digest()) == {("d", 3): 40, ("c", 3): 30, ("e", 3): 1}
    # With the counts of entries still cached: summed into the same rows.
    live = [(keys[4], Cached(3, 2)), (keys[4][:-1] + b"\x01", Cached(0, 5))]
    assert asyncio.run(tally.digest(live)) == {
        ("d", 3): 40,
        ("c", 3): 30,
        ("e", 3): 3,
        ("e", 0): 5,
    }


def test_clients_are_bounded_and_merged() -> None:
    clients = ClientTally(limit=2)
    for addr, n in (("10.0.0.1", 3), ("10.0.0.2", 1)):
        for _ in range(n):
            clients.nxdomain(addr)
    clients.nxdomain("10.0.0.3")
    assert clients.digest() == {"10.0.0.1": 3, "10.0.0.3": 1}
    assert merged([{"a": 1, "b": 2}, {"a": 5}], limit=1) == {"a": 6}


def query(name: str, qtype: str = "A", edns: bool = False, qid: int = 1) -> bytes:
    q = dns.message.make_query(name, qtype, use_edns=0 if edns else False)
    q.id = qid
    return q.to_wire()


def test_the_responder_counts_every_answer_by_name_on_every_path() -> None:
    engine = make_engine([*namespaces("shop"), clusterip("shop", "web", "10.96.0.1")])
    responder = Responder(engine)
    web, nope = "web.shop.svc.cluster.local", "nope.shop.svc.cluster.local"
    for i in range(5):
        # miss, then the fast path, then the memo; spelled in another case: the full path
        assert responder.respond(query(web, qid=i), True) is not None
        assert responder.respond(query(nope, qid=i), True) is not None
    responder.respond(query("WEB.shop.svc.cluster.local"), True)
    responder.respond(query(web, edns=True), False)
    responder.respond(query(web, "AAAA"), False)
    assert asyncio.run(responder.names_digest()) == {(web, 0): 8, (nope, 3): 5}
    # A change drops the cached answers; their counts stay, and go on.
    engine.clusters[0].store.apply(LAYER, [clusterip("shop", "nope", "10.96.0.2")])
    for i in range(2):
        responder.respond(query(nope, qid=i), True)
    assert asyncio.run(responder.names_digest()) == {(web, 0): 8, (nope, 3): 5, (nope, 0): 2}
    assert responder.hits + responder.misses == 15


def test_counts_survive_eviction_and_a_full_change() -> None:
    engine = make_engine([*namespaces("shop"), clusterip("shop", "web", "10.96.0.1")])
    responder = Responder(engine, cache_size=2)
    names = [f"{n}.shop.svc.cluster.local" for n in ("web", "a", "b")]
    for i in range(3):
        for name in names:  # three questions through a cache of two: each evicts another
            responder.respond(query(name, qid=i), True)
    assert len(responder) <= 2
    expected = {(names[0], 0): 3, (names[1], 3): 3, (names[2], 3): 3}
    assert asyncio.run(responder.names_digest()) == expected
    # A new namespace changes every answer's ground: the whole cache goes, the counts stay.
    engine.clusters[0].store.apply(LAYER, namespaces("data"))
    assert len(responder) == 0
    assert asyncio.run(responder.names_digest()) == expected
    responder.respond(query(names[0]), True)
    assert asyncio.run(responder.names_digest())[(names[0], 0)] == 4


def test_a_digest_lets_the_loop_run_between_slices() -> None:
    # Full tables are summed a slice at a time: queries are answered in between.
    def key(name: str) -> bytes:
        return bytes([len(name)]) + name.encode() + b"\x00\x00\x01\x00\x01\x00"

    tally = NameTally(limit=10 * SLICE)
    for i in range(3 * SLICE):
        tally.add(key(f"x{i}"), 3, 2)
    live = [(key(f"y{i}"), Cached(0, 1)) for i in range(2 * SLICE)]
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def run() -> Rows:
        task = asyncio.get_running_loop().create_task(other())
        await asyncio.sleep(0)
        before = turns
        rows = await tally.digest(live)
        task.cancel()
        assert turns - before >= 5  # 3 slices of the table, 2 of the cached entries
        return rows

    rows = asyncio.run(run())
    # The 2,000 busiest rows: every name of the table (2 answers each) before the others.
    assert len(rows) == 2000 and set(rows.values()) == {2}


@pytest.mark.parametrize(
    ("now", "asked", "sent", "due"),
    [
        (100.0, -math.inf, -math.inf, False),  # the page never asked: nothing summed
        (100.0, 99.0, -math.inf, True),  # asked, and none sent yet: at once
        (100.0, 97.0, 98.0, False),  # nothing asked since the last one
        (100.0, 99.0, 94.0, True),  # asked after the last, which is DIGEST_GAP old
        (100.0, 99.0, 96.0, False),  # asked again, but the last one is too recent
        (100.0, 100.0 - WANTED_FOR, 50.0, False),  # the page has been closed for a while
        (100.0, 100.0 - WANTED_FOR + 0.5, 50.0, True),
    ],
)
def test_digests_are_summed_only_while_the_page_asks(
    now: float, asked: float, sent: float, due: bool
) -> None:
    assert DIGEST_GAP == 5.0 and WANTED_FOR > DIGEST_GAP
    assert digest_due(now, asked, sent) is due


def test_the_page_clock_is_read_by_a_process_forked_before_it_was_set() -> None:
    clock = PageClock()
    assert clock.asked() == -math.inf
    read, write = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reads what the parent notes after the fork
        try:
            os.read(go_r, 1)
            os.write(write, struct.pack("d", clock.asked()))
        finally:
            os._exit(0)
    try:
        noted = clock.ask()
        os.write(go_w, b"x")
        seen = struct.unpack("d", os.read(read, 8))[0]
    finally:
        os.waitpid(pid, 0)
        for fd in (read, write, go_r, go_w):
            os.close(fd)
    assert seen == noted and noted <= time.monotonic()
