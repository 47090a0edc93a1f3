"""Publisher, frames and replica, in one process: a replica started at any point of a history of
writes, from a copy of the store there (what a forked serving process has) plus the frames after
it, holds what the main store holds and gives the same answers and SOA serial."""

from __future__ import annotations

import asyncio
import copy
import random

import pytest
from dnslib import QTYPE, DNSLabel

from kdns.dns.resolution import Cluster, Engine
from kdns.serve.frames import FrameReader, pack
from kdns.serve.publish import Publisher
from kdns.serve.replica import Replica
from kdns.state.model import KubeObject, ObjectKey
from kdns.state.store import Store
from tests.builders import clusterip, endpoint_slice, ep, eport, headless, namespaces, port, texts


class Collect:
    """Subscribers that keep every frame, for a replica to read later."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.objects = 0
        self.on = False

    def send(self, frame: bytes, records: int = 0) -> None:
        self.frames.append(frame)
        self.objects += records

    def __bool__(self) -> bool:
        return self.on


def test_frames_survive_any_split_of_the_byte_stream() -> None:
    messages = [("a", i, "x" * (i * 37 % 5000)) for i in range(200)]
    stream = b"".join(pack(m) for m in messages)
    rng = random.Random(3)
    reader, got, at = FrameReader(), [], 0
    while at < len(stream):
        step = rng.choice([1, 3, 50, 4096, 70000])
        reader.feed(stream[at : at + step])
        at += step
        while (m := reader.next()) is not None:
            got.append(m)
    assert got == messages
    assert reader.pending == 0


def random_write(rng: random.Random) -> tuple[str, list[KubeObject], list[ObjectKey]]:
    ns = rng.choice(["a", "b"])
    name = f"s{rng.randrange(12)}"
    kind = rng.random()
    if kind < 0.15:
        return "apply", [], [("Service", ns, name)]
    if kind < 0.4:
        ip = f"10.96.{rng.randrange(4)}.{rng.randrange(1, 250)}"
        return "apply", [clusterip(ns, name, ip, ports=[port("http", 80)])], []
    if kind < 0.55:
        return "apply", [headless(ns, name, ports=[port("pg", 5432)])], []
    if kind < 0.65:
        return "apply", [], [("EndpointSlice", ns, f"{name}-x")]
    eps = [
        ep(f"10.1.{rng.randrange(3)}.{rng.randrange(1, 250)}", ready=rng.random() < 0.8)
        for _ in range(rng.randrange(1, 5))
    ]
    return "apply", [endpoint_slice(ns, f"{name}-x", name, eps, [eport("pg", 5432)])], []


def answers(store: Store) -> list[tuple[str, list[str]]]:
    engine = Engine([Cluster("cluster.local", store)])
    out = []
    for ns in ("a", "b"):
        for i in range(12):
            for qtype in ("A", "SRV"):
                name = f"s{i}.{ns}.svc.cluster.local"
                if qtype == "SRV":
                    name = "_pg._tcp." + name
                answer = engine.resolve(DNSLabel(name), getattr(QTYPE, qtype))
                out.append((name, texts(answer.answer + answer.authority)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_a_replica_started_anywhere_ends_equal_to_the_main_store(seed: int) -> None:
    rng = random.Random(seed)
    main = Store(serial_base=1000 + seed)
    subs = Collect()
    publisher = Publisher(main, 0, subs)
    main.add_layer("files", implicit_namespaces=True)
    main.add_layer("cluster")
    publisher.apply("cluster", namespaces("a", "b"))
    publisher.set_synced("files")
    start = rng.randrange(1, 150)
    forked = Store()
    for step in range(200):
        if step == start:
            # A serving process is forked here: the store as it is, then what follows.
            subs.on = True
            forked = copy.deepcopy(main)
            subs.frames = []
        _, ups, dels = random_write(rng)
        layer = "cluster" if rng.random() < 0.8 else "files"
        if rng.random() < 0.1:
            publisher.replace(layer, ups)
        else:
            publisher.apply(layer, ups, dels)
        if step == 40:
            publisher.set_synced("cluster")

    async def run() -> Store:
        replica_store = forked
        stopped = []
        replica = Replica([replica_store], lambda: stopped.append(True))
        reader = FrameReader()
        reader.feed(b"".join([pack(("ready",)), *subs.frames]))
        while (m := reader.next()) is not None:
            replica.handle(m)
        assert replica.ready.is_set() and not stopped
        return replica_store

    replica = asyncio.run(run())
    assert replica is not main
    assert replica.layer_states() == main.layer_states()
    for layer, _, _, _ in main.layer_states():
        assert sorted(map(repr, replica.layer_objects(layer))) == sorted(
            map(repr, main.layer_objects(layer))
        )
    assert replica.serial == main.serial
    assert replica.synced == main.synced
    assert answers(replica) == answers(main)


def publishing() -> tuple[Store, Collect, Publisher]:
    """A main store with a "cluster" layer, and its publisher to subscribers that listen."""
    main = Store()
    main.add_layer("cluster")
    subs = Collect()
    subs.on = True
    return main, subs, Publisher(main, 0, subs)


def test_unchanged_writes_publish_nothing() -> None:
    _, subs, publisher = publishing()
    web = clusterip("a", "web", "10.96.0.1")
    assert publisher.apply("cluster", [web])
    assert not publisher.apply("cluster", [web])
    assert not publisher.replace("cluster", [web])
    assert len(subs.frames) == 1
    assert subs.objects == 1


def test_each_frame_counts_the_records_it_writes_and_the_store_counts_what_it_holds() -> None:
    # What `WorkerPool` compares to decide that a serving process's data has been rewritten:
    # one record per object, and one more per endpoint.
    main, subs, publisher = publishing()
    objects = [*namespaces("a"), *(clusterip("a", f"s{i}", f"10.96.0.{i}") for i in range(1, 6))]
    publisher.apply("cluster", objects)
    assert (subs.objects, main.records()) == (6, 6)
    publisher.apply("cluster", [clusterip("a", "s1", "10.96.1.1")], [("Service", "a", "s2")])
    assert (subs.objects, main.records()) == (8, 5)
    eps = [ep(f"10.1.0.{i}") for i in range(1, 4)] + [ep("10.1.0.9", ready=False)]
    publisher.apply("cluster", [headless("a", "db"), endpoint_slice("a", "db-x", "db", eps)])
    assert (subs.objects, main.records()) == (8 + 1 + 5, 5 + 1 + 5)
    renamed = [*namespaces("a"), *(clusterip("a", f"t{i}", f"10.96.2.{i}") for i in range(1, 4))]
    publisher.replace("cluster", renamed)
    assert (subs.objects, main.records()) == (18, 4)
    publisher.set_synced("cluster")
    assert subs.objects == 18


def test_a_replica_stops_on_a_stop_frame_and_on_an_unknown_one() -> None:
    stops: list[bool] = []
    replica = Replica([Store()], lambda: stops.append(True))
    replica.handle(("stop",))
    assert stops == [True]
    with pytest.raises(ValueError):
        replica.handle(("frobnicate", 0, "cluster"))
