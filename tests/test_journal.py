"""The change journal: `/changes?since=SERIAL` and `kdns changes`, against what DNS answers.

Over real sockets, kdns serves a zones/ directory whose manifests are rewritten (a headless
service scaled, a ClusterIP changed, an ExternalName's target changed, a service deleted). Before
and after each change every record set the change could touch is asked with dnspython; the
oracle is those answers: each entry's `before` and `after` must be them, every record set whose
answer moved must have its entry, and the entries' serial must be the SOA serial after the
change. `kdns changes` must print the same entries as lines, and `--follow` must print a change
as it happens. In process: the ring's bound (`complete: false`), the initial load as one entry,
the objects named as the cause, and the work per change bounded by what changed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import random
import signal
import socket
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.reversename
import pytest
from dnslib import QTYPE, DNSLabel

import kdns.ops.journal
from kdns.dns.resolution import Cluster, Engine
from kdns.ops.journal import LOAD, Journal, questions, record_diff
from kdns.state.store import Store
from tests.builders import (
    LAYER,
    clusterip,
    endpoint_slice,
    ep,
    eport,
    external,
    headless,
    headless_manifest,
    make_store,
    port,
)
from tests.kdns_process import KDNS, KDNS_AT_A_TERMINAL, KdnsProcess, start_kdns, until
from tests.test_bulk import ZONE_SETS, random_store

Question = tuple[str, str]
ZONE = "cluster.local"

WEB = """apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}
"""
ALIAS = """apiVersion: v1
kind: Service
metadata: {{name: alias, namespace: shop}}
spec: {{type: ExternalName, externalName: {target}}}
"""
GONE = """apiVersion: v1
kind: Service
metadata: {name: gone, namespace: shop}
spec: {clusterIP: 10.96.7.7, ports: [{name: grpc, port: 9090}]}
"""


def rdatas(port: int, name: str, rtype: str) -> list[str]:
    """The records of `rtype` owned by `name` in kdns's answer, as dnspython writes them."""
    query = dns.message.make_query(name, rtype)
    reply, _ = dns.query.udp_with_fallback(query, "127.0.0.1", port=port, timeout=5)
    owner = dns.name.from_text(name)
    wanted = dns.rdatatype.from_text(rtype)
    return sorted(
        rd.to_text()
        for rrset in reply.answer
        if rrset.name == owner and rrset.rdtype == wanted
        for rd in rrset
    )


def answers(port: int, asked: Iterable[Question]) -> dict[Question, list[str]]:
    return {q: rdatas(port, *q) for q in asked}


def changes(kp: KdnsProcess, query: str = "") -> dict[str, Any]:
    status, body = kp.http_get("/changes" + query)
    assert status == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


def soa_serial(port: int) -> int:
    reply = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=port, timeout=5)
    return int(reply.answer[0][0].serial)


def reverse(address: str) -> str:
    return dns.name.from_text(dns.reversename.from_address(address).to_text()).to_text()


def service_questions(
    svc: str, ports: Iterable[str] = (), endpoints: Iterable[str] = (), ptrs: Iterable[str] = ()
) -> set[Question]:
    """The record sets of service `svc` (shop namespace) that a change may touch."""
    fqdn = f"{svc}.shop.svc.{ZONE}."
    out = {(fqdn, t) for t in ("A", "AAAA", "CNAME")}
    out |= {(f"_{p}._tcp.{fqdn}", "SRV") for p in ports}
    out |= {(f"{e}.{fqdn}", t) for e in endpoints for t in ("A", "AAAA")}
    out |= {(reverse(a), "PTR") for a in ptrs}
    return out


def check_change(
    kp: KdnsProcess, asked: set[Question], change: Any, cause: str
) -> list[dict[str, Any]]:
    """Ask `asked`, make `change`, wait for its entries, ask again: the entries must be exactly
    the record sets whose answers moved, with those answers before and after."""
    serial = changes(kp)["serial"]
    before = answers(kp.port, asked)
    change()
    assert until(lambda: changes(kp, f"?since={serial}")["entries"], 15), kp.log()
    body = changes(kp, f"?since={serial}")
    # The journal lives where the sources write; with --workers the serving processes apply
    # the same write a moment later, under the same serial: the answers after it are the ones
    # given at that serial or later.
    newest = max(e["serial"] for e in body["entries"])
    assert until(lambda: soa_serial(kp.port) >= newest, 15), kp.log()
    after = answers(kp.port, asked)
    assert body["complete"] is True
    entries = body["entries"]
    seen = {(e["name"], e["type"]) for e in entries}
    assert seen <= asked, f"entries for record sets the test did not ask: {seen - asked}"
    moved = {q for q in asked if before[q] != after[q]}
    assert seen == moved, (seen, moved)
    for e in entries:
        q = (e["name"], e["type"])
        assert sorted(e["before"]) == before[q], q
        assert sorted(e["after"]) == after[q], q
        assert e["cause"] == cause
        assert e["time"].endswith("Z")
    # One change, one serial: the SOA serial after it.
    assert {e["serial"] for e in entries} == {soa_serial(kp.port)} == {body["serial"]}
    return list(entries)


def kdns_changes(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KDNS, "changes", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def zones(tmp_path: Path) -> Path:
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "db.yaml").write_text(
        headless_manifest("shop", "db", ("pg", 5432), ["10.1.0.1", "10.1.0.2"])
    )
    (zones / "web.yaml").write_text(WEB.format(ip="10.96.5.5"))
    (zones / "alias.yaml").write_text(ALIAS.format(target="old.example.com"))
    (zones / "gone.yaml").write_text(GONE)
    return zones


def test_each_change_is_journaled_as_dns_answers_it(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones)], http=True)
    try:
        body = changes(kp)
        # The initial load is one entry, whatever its size.
        assert [(e["name"], e["type"], e["cause"]) for e in body["entries"]] == [
            (f"{ZONE}.", LOAD, "initial load: 4 services")
        ]
        assert body["complete"] is True and body["oldest"] == body["serial"]
        first = body["serial"]

        # A headless service scaled from 2 endpoints to 3, then to 1.
        db = service_questions(
            "db",
            ports=["pg"],
            endpoints=["10-1-0-1", "10-1-0-2", "10-1-0-3"],
            ptrs=["10.1.0.1", "10.1.0.2", "10.1.0.3"],
        )
        scale = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
        entries = check_change(
            kp,
            db,
            lambda: (zones / "db.yaml").write_text(
                headless_manifest("shop", "db", ("pg", 5432), scale)
            ),
            "EndpointSlice shop/db-1",
        )
        # The service's A and SRV, the new endpoint's A and PTR, and nothing else.
        assert len(entries) == 4
        total = len(entries)
        entries = check_change(
            kp,
            db,
            lambda: (zones / "db.yaml").write_text(
                headless_manifest("shop", "db", ("pg", 5432), ["10.1.0.2"])
            ),
            "EndpointSlice shop/db-1",
        )
        assert len(entries) == 6  # A, SRV, and the two endpoints' A and PTR
        total += len(entries)

        # A ClusterIP changed: the service's A record and both addresses' PTR records.
        web = service_questions("web", ports=["http"], ptrs=["10.96.5.5", "10.96.5.6"])
        entries = check_change(
            kp,
            web,
            lambda: (zones / "web.yaml").write_text(WEB.format(ip="10.96.5.6")),
            "Service shop/web",
        )
        assert {(e["name"], e["type"]) for e in entries} == {
            (f"web.shop.svc.{ZONE}.", "A"),  # the SRV record names the service: unchanged
            (reverse("10.96.5.5"), "PTR"),
            (reverse("10.96.5.6"), "PTR"),
        }
        total += len(entries)

        # An ExternalName's target: its CNAME.
        entries = check_change(
            kp,
            service_questions("alias"),
            lambda: (zones / "alias.yaml").write_text(ALIAS.format(target="new.example.com")),
            "Service shop/alias",
        )
        assert [(e["type"], e["before"], e["after"]) for e in entries] == [
            ("CNAME", ["old.example.com."], ["new.example.com."])
        ]
        total += len(entries)

        # A service deleted: everything it had, to nothing.
        entries = check_change(
            kp,
            service_questions("gone", ports=["grpc"], ptrs=["10.96.7.7"]),
            lambda: (zones / "gone.yaml").unlink(),
            "Service shop/gone deleted",
        )
        assert all(e["after"] == [] for e in entries) and len(entries) == 3  # A, SRV, PTR
        total += len(entries)

        # The name filter, and the whole journal from the first serial on.
        body = changes(kp, f"?since={first}&name=WEB.shop")
        assert [e["name"] for e in body["entries"]] == [f"web.shop.svc.{ZONE}."]
        whole = changes(kp, f"?since={first}")
        assert whole["complete"] is True and len(whole["entries"]) == total

        # `kdns changes` prints the same entries, one line each.
        out = kdns_changes("--server", f"127.0.0.1:{kp.http_port}", "--since", str(first))
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == len(whole["entries"])
        for text, e in zip(lines, whole["entries"], strict=True):
            assert f"  serial {e['serial']}  {e['name']} {e['type']}  " in text, text
            assert text.endswith(f"  ({e['cause']})"), text
            for rdata in e["before"] + e["after"]:
                assert rdata in text
        web_a = next(line for line in lines if f" web.shop.svc.{ZONE}. A " in line)
        assert web_a.split("  ", 2)[2] == (
            f"web.shop.svc.{ZONE}. A  10.96.5.5 -> 10.96.5.6  (Service shop/web)"
        )
        assert web_a[:9].endswith("Z") and web_a[2] == ":"
        gone_ptr = next(line for line in lines if line.split()[3] == reverse("10.96.7.7"))
        assert gone_ptr.endswith(
            f"PTR  gone.shop.svc.{ZONE}. -> (none)  (Service shop/gone deleted)"
        )
        # Without --since: the latest entries; --name filters them.
        out = kdns_changes("--server", f"127.0.0.1:{kp.http_port}", "--name", "alias")
        assert out.returncode == 0 and len(out.stdout.splitlines()) == 1, out
        assert "old.example.com. -> new.example.com." in out.stdout
    finally:
        kp.stop()


def test_follow_prints_a_change_as_it_happens_and_ends_on_ctrl_c(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones)], http=True)
    try:
        follow = ["changes", "--server", f"127.0.0.1:{kp.http_port}", "--follow"]
        cmd = [*KDNS_AT_A_TERMINAL, *follow]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            lines.extend(line.rstrip("\n") for line in proc.stdout)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert until(lambda: any(" LOAD " in line for line in lines), 15), lines
            (zones / "web.yaml").write_text(WEB.format(ip="10.96.5.9"))
            assert until(lambda: any("10.96.5.5 -> 10.96.5.9" in line for line in lines), 15), lines
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        reader.join(10)
        assert proc.stderr is not None
        assert proc.stderr.read() == ""
        assert sum(" LOAD " in line for line in lines) == 1  # each entry once
    finally:
        kp.stop()


def test_with_workers_the_main_process_keeps_the_journal(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--workers", "1"], http=True)
    try:
        check_change(
            kp,
            service_questions("web", ports=["http"], ptrs=["10.96.5.5", "10.96.5.6"]),
            lambda: (zones / "web.yaml").write_text(WEB.format(ip="10.96.5.6")),
            "Service shop/web",
        )
    finally:
        kp.stop()


def test_a_long_journal_comes_in_pages_and_kdns_changes_reads_them_all(tmp_path: Path) -> None:
    zones = tmp_path / "zones"
    zones.mkdir()

    def services(group: int, third: int) -> str:
        return "---\n".join(
            WEB.replace("name: web", f"name: web{group}-{i}").format(
                ip=f"10.96.{10 * group + third}.{i}"
            )
            for i in range(1, 101)
        )

    for group in range(5):
        (zones / f"g{group}.yaml").write_text(services(group, 1))
    kp = start_kdns(["--zones", str(zones)], http=True)
    try:
        first = changes(kp)["serial"]
        for group in range(5):
            serial = changes(kp)["serial"]
            (zones / f"g{group}.yaml").write_text(services(group, 2))
            assert until(lambda s=serial: changes(kp)["serial"] > s, 15), kp.log()
        # 5 changes of 100 services: their A records and both PTR records each.
        page = changes(kp, f"?since={first}")
        # A page ends at the first change that takes it past 1,000 entries: whole changes only.
        assert page["more"] is True and 1000 <= len(page["entries"]) < 5 * 300
        last = page["entries"][-1]["serial"]
        rest = changes(kp, f"?since={last}")
        assert rest["more"] is False and all(e["serial"] > last for e in rest["entries"])
        assert len(page["entries"]) + len(rest["entries"]) == 5 * 300
        out = kdns_changes("--server", f"127.0.0.1:{kp.http_port}", "--since", str(first))
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == len(set(lines)) == 5 * 300
    finally:
        kp.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_errors_are_one_line(zones: Path) -> None:
    port = free_port()  # nothing listens there: kdns is not running, or runs without --http
    for args, message in [
        (
            ["--server", f"127.0.0.1:{port}"],
            f"kdns: error: cannot reach kdns at 127.0.0.1:{port} (its --http): ",
        ),
        (["--server", "nonsense"], "kdns: error: bad address 'nonsense': expected HOST:PORT"),
    ]:
        out = kdns_changes(*args)
        assert out.returncode == 1, out
        assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith(message), out.stderr
    kp = start_kdns(["--zones", str(zones)], http=True)
    try:
        assert kp.http_get("/changes?since=soon")[0] == 400
        assert kp.http_get("/changes?since=" + "9" * 11)[0] == 400
        # A serial from before this server (an earlier run, the initial load): not complete,
        # and the answer says from where on it is.
        body = changes(kp, "?since=5")
        assert body["complete"] is False and body["oldest"] == changes(kp)["serial"]
        out = kdns_changes("--server", f"127.0.0.1:{kp.http_port}", "--since", "5")
        assert out.returncode == 0
        assert out.stderr.startswith("kdns: the changes after serial 5 are not all kept;")
    finally:
        kp.stop()
    for flag, status, why in [
        # --allow-query keeps other sources from the journal, as from /explain.
        (["--allow-query", "10.0.0.0/8"], 403, "/changes: this address is not in --allow-query"),
        # --no-http-changes keeps no journal (its diffs are half the watching process's CPU per
        # endpoint change), and the page at / renders without it.
        (["--no-http-changes"], 404, "/changes is off; start kdns without --no-http-changes"),
    ]:
        kp = start_kdns(["--zones", str(zones), *flag], http=True)
        try:
            assert kp.http_get("/changes")[0] == status
            assert kp.http_get("/")[0] == (200 if status == 404 else 403)
            out = kdns_changes("--server", f"127.0.0.1:{kp.http_port}")
            assert out.returncode == 1
            assert out.stderr.strip() == (
                f"kdns: error: /changes at 127.0.0.1:{kp.http_port}: HTTP {status}: {why}"
            )
        finally:
            kp.stop()


# -- in process ---------------------------------------------------------------------------------


def scaled(n: int, name: str = "db-a") -> Any:
    return endpoint_slice(
        "shop",
        name,
        "db",
        [ep(f"10.1.{i // 250}.{i % 250 + 1}") for i in range(n)],
        [eport("pg", 5432)],
    )


def test_the_ring_keeps_the_last_entries_and_says_when_a_serial_is_too_old() -> None:
    store = Store()
    store.add_layer(LAYER)
    journal = Journal(capacity=4)
    journal.follow(ZONE, store)
    journal.open()
    assert journal.since(None) == ([], False) and journal.oldest is None
    store.apply(LAYER, [clusterip("shop", "web", "10.96.0.1")])
    store.set_synced(LAYER)
    load = store.serial
    assert [e.type for e in journal.latest(10)] == [LOAD] and journal.oldest == load
    serials = []
    for i in range(2, 6):
        store.apply(LAYER, [clusterip("shop", "web", f"10.96.0.{i}")])
        serials.append(store.serial)  # each: A, and two PTR entries
    kept = journal.latest(100)
    assert len(kept) == 4 and len(journal.since(None)[0]) == 4
    # 1 + 4 * 3 entries went through a ring of 4: the last change's three and one of the one
    # before it are kept; from the one before it on, the journal is not complete.
    assert [e.serial for e in kept] == [serials[2]] + [serials[3]] * 3
    assert journal.oldest == serials[2]
    entries, complete = journal.since(serials[1])
    assert not complete and len(entries) == 4
    entries, complete = journal.since(serials[2])
    assert complete and [e.serial for e in entries] == [serials[3]] * 3
    assert journal.since(serials[3]) == ([], True)
    # A serial this server has not given (a later one of an earlier run) is not complete.
    assert journal.since(serials[3] + 1) == ([], False)
    assert journal.since(None)[1] is False
    assert [e.name for e in journal.latest(1)] == ["5.0.96.10.in-addr.arpa."]


def test_on_the_loop_changes_are_journaled_a_slice_at_a_time_with_the_loop_running_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A relist can change thousands of services at once: the listener only notes them, and
    # the diffs are worked out between the loop's other callbacks (here one per turn), giving
    # the same entries as journaling at once does.
    monkeypatch.setattr(kdns.ops.journal, "DRAIN_BUDGET", 0.0)

    def build() -> tuple[Store, Journal]:
        store = Store()
        store.add_layer(LAYER)
        journal = Journal()
        journal.follow(ZONE, store)
        journal.open()
        store.apply(LAYER, [clusterip("shop", "web", "10.96.0.1")])
        store.set_synced(LAYER)
        return store, journal

    services = [clusterip("shop", f"s{i}", f"10.96.1.{i}") for i in range(40)]
    at_once_store, at_once = build()  # no loop running: journaled in the listener
    at_once_store.apply(LAYER, services)
    expected = [(e.name, e.type, e.before, e.after, e.cause) for e in at_once.latest(1000)]
    assert len(expected) == 1 + 40 * 2  # the load, and A and PTR of each service

    async def on_the_loop() -> tuple[int, list[int], list[Any]]:
        store, journal = build()
        store.apply(LAYER, services)
        noted = len(journal._ring)  # right after the change: only noted
        seen: list[int] = []

        def probe() -> None:  # another callback of the loop, as a query would be
            seen.append(len(journal._ring))
            if journal._pending:
                asyncio.get_running_loop().call_soon(probe)

        asyncio.get_running_loop().call_soon(probe)
        for _ in range(200):
            if not journal._pending:
                break
            await asyncio.sleep(0)
        entries = [(e.name, e.type, e.before, e.after, e.cause) for e in journal.latest(1000)]
        return noted, seen, entries

    noted, seen, entries = asyncio.run(on_the_loop())
    assert noted == 1  # the load entry only
    assert len(seen) > 10 and seen == sorted(seen) and seen[0] < seen[-1]
    assert [(n, t, b, a) for n, t, b, a, _ in entries] == [
        (n, t, b, a) for n, t, b, a, _ in expected
    ]
    assert [c for *_, c in entries] == [c for *_, c in expected]

    # A reader gets every change at once, even mid-way.
    async def read_at_once() -> int:
        store, journal = build()
        store.apply(LAYER, services)
        return len(journal.latest(1000))

    assert asyncio.run(read_at_once()) == len(expected)


class Ticks:
    """A clock that moves 1 ms each time it is read: every slice of diffing "takes" as long
    as the changes it worked out."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def synced_journal(clock: Ticks | None = None) -> tuple[Store, Journal]:
    store = Store()
    store.add_layer(LAYER)
    journal = Journal(clock=clock) if clock is not None else Journal()
    journal.follow(ZONE, store)
    journal.open()
    store.apply(LAYER, [clusterip("shop", "web", "10.96.0.1")])
    store.set_synced(LAYER)
    return store, journal


def test_the_background_diffing_takes_its_share_of_the_time_and_readers_catch_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With 5% of the time, a slice of 4 ms on this clock (three changes, and the clock read
    # once more at the end) is followed by a pause of 76 ms: a long churn costs the watching
    # process 5% for the journal, not as much again as the changes themselves. A reader then
    # works out the rest (a slice at a time).
    monkeypatch.setattr(kdns.ops.journal, "DRAIN_BUDGET", 0.0025)
    delays: list[float] = []

    async def run() -> tuple[int, int, int, int, int]:
        clock = Ticks()
        store, journal = synced_journal(clock)
        loop = asyncio.get_running_loop()
        real_call_later = loop.call_later

        def call_later(delay: float, callback: Any, *args: Any) -> Any:
            delays.append(delay)
            return real_call_later(3600, callback, *args)  # not within this test

        monkeypatch.setattr(loop, "call_later", call_later)
        for i in range(20):
            store.apply(LAYER, [clusterip("shop", f"s{i}", f"10.96.1.{i}")])
        waiting = journal.pending
        for _ in range(50):
            await asyncio.sleep(0)
        after_slice = journal.pending
        await journal.catch_up()
        # One change after the backlog is gone waits for the pause too: worked out at once,
        # one change at a time, the journal would take as much as the changes cost.
        clock.now = 10.0
        journal._draining = False  # the test's call_later never ran the drain
        journal._next = clock.now + 0.05  # 50 ms of pause left from an earlier slice
        store.apply(LAYER, [clusterip("shop", "late", "10.96.2.1")])
        for _ in range(50):
            await asyncio.sleep(0)
        late = journal.pending
        await journal.catch_up()
        return waiting, after_slice, late, len(journal.since(None)[0]), journal.skipped

    waiting, after_slice, late, entries, skipped = asyncio.run(run())
    assert waiting == 20
    assert after_slice == 20 - 3  # one slice, then the pause
    # The pause: 4 ms / 5% - 4 ms from the slice's end, asked for 1 ms (a clock read) later.
    assert delays[0] == pytest.approx(0.004 / 0.05 - 0.004 - 0.001)
    assert late == 1 and delays[1] == pytest.approx(0.05 - 0.001)
    assert entries == 1 + 21 * 2 and skipped == 0  # the load, A and PTR of each: none lost


def test_a_journal_that_falls_behind_keeps_the_newest_changes_and_says_from_where(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The changes waiting hold views alive: past MAX_PENDING endpoints of them, the oldest go
    # unjournaled, and `since` says the journal is complete only from the last of those on.
    # Five changes of a headless service (20 to 24 endpoints) wait at once, weighing 21 to 25:
    # the last three fit in 80, the last four do not.
    monkeypatch.setattr(kdns.ops.journal, "MAX_PENDING", 80)

    async def run() -> tuple[Journal, list[int]]:
        store, journal = synced_journal()
        store.apply(LAYER, [headless("shop", "db", ports=[port("pg", 5432)]), scaled(19)])
        await journal.catch_up()
        serials = []
        for i in range(5):
            store.apply(LAYER, [scaled(20 + i)])
            serials.append(store.serial)
        await journal.catch_up()
        return journal, serials

    journal, serials = asyncio.run(run())
    assert journal.skipped == 2
    assert journal.oldest == serials[1]
    entries, complete = journal.since(serials[0])
    assert not complete
    entries, complete = journal.since(serials[1])
    assert complete and sorted({e.serial for e in entries}) == serials[2:]
    # The newest change is journaled whole: 23 addresses before, 24 after.
    [a] = [
        e
        for e in entries
        if e.serial == serials[-1] and (e.name, e.type) == ("db.shop.svc.cluster.local.", "A")
    ]
    assert (len(a.before), len(a.after)) == (23, 24)
    [warning] = [r.getMessage() for r in caplog.records if "dropped unjournaled" in r.getMessage()]
    assert f"complete from serial {serials[0]} on" in warning  # logged at the first drop


def test_the_initial_load_is_one_entry_and_changes_before_it_are_not_journaled() -> None:
    # As the server starts: the files layer loads and syncs, the cluster layer is added, the
    # journal is opened, then the cluster's first list arrives.
    store = Store()
    store.add_layer("files")
    journal = Journal()
    journal.follow(ZONE, store)
    store.apply("files", [clusterip("shop", "local", "10.96.2.1")])
    store.set_synced("files")
    store.add_layer(LAYER)
    journal.open()
    for i in range(49):
        store.apply(LAYER, [clusterip("shop", f"s{i}", f"10.96.1.{i}")])
    store.apply(LAYER, [headless("shop", "db", ports=[port("pg", 5432)]), scaled(3)])
    assert journal.latest(100) == []
    store.set_synced(LAYER)
    (load,) = journal.latest(100)
    assert (load.name, load.type, load.cause) == (f"{ZONE}.", LOAD, "initial load: 51 services")
    assert journal.since(load.serial) == ([], True)
    # The first change after it diffs against what the load left.
    store.apply(LAYER, [scaled(4)])
    assert [(e.name, e.before, e.after) for e in journal.latest(100)[1:2]] == [
        (
            f"db.shop.svc.{ZONE}.",
            ("10.1.0.1", "10.1.0.2", "10.1.0.3"),
            tuple(f"10.1.0.{i}" for i in range(1, 5)),
        )
    ]


def test_the_cause_names_the_objects_that_changed() -> None:
    store = make_store(
        [
            headless("shop", "db", ports=[port("pg", 5432)]),
            scaled(2, "db-a"),
            endpoint_slice("shop", "db-b", "db", [ep("10.1.9.1")], [eport("pg", 5432)]),
            external("shop", "alias", "a.example.com"),
        ]
    )
    journal = Journal()
    journal.follow(ZONE, store)  # late: what the store holds is taken in at once
    journal.open()
    assert [(e.type, e.cause) for e in journal.latest(10)] == [(LOAD, "initial load: 2 services")]
    store.apply(
        LAYER, [endpoint_slice("shop", "db-b", "db", [ep("10.1.9.2")], [eport("pg", 5432)])]
    )
    assert {e.cause for e in journal.latest(10)[1:]} == {"EndpointSlice shop/db-b"}
    store.apply(LAYER, deletes=[("EndpointSlice", "shop", "db-a")])
    assert journal.latest(1)[0].cause == "EndpointSlice shop/db-a deleted"
    store.apply(LAYER, [external("shop", "alias", "b.example.com")])
    assert [(e.type, e.before, e.after, e.cause) for e in journal.latest(1)] == [
        ("CNAME", ("a.example.com.",), ("b.example.com.",), "Service shop/alias")
    ]
    store.apply(LAYER, deletes=[("Service", "shop", "db")])
    assert {e.cause for e in journal.latest(3)} == {"Service shop/db deleted"}


def test_a_change_asks_only_about_what_changed() -> None:
    # One endpoint of a thousand moves: the service's own names, its port, and the endpoint
    # names and addresses that came or went, not the other 999.
    store = make_store([headless("shop", "db", ports=[port("pg", 5432)]), scaled(1000)])
    old = store.service("shop", "db")
    moved = endpoint_slice(
        "shop",
        "db-a",
        "db",
        [ep(f"10.1.{i // 250}.{i % 250 + 1}") for i in range(999)] + [ep("10.1.99.1")],
        [eport("pg", 5432)],
    )
    store.apply(LAYER, [moved])
    new = store.service("shop", "db")
    asked = questions(ZONE, old, new)
    fqdn = f"db.shop.svc.{ZONE}."
    assert asked == [
        (fqdn, "A"),  # no AAAA: neither view has an IPv6 address
        (fqdn, "CNAME"),
        (f"_pg._tcp.{fqdn}", "SRV"),
        (f"10-1-3-250.{fqdn}", "A"),
        (f"10-1-99-1.{fqdn}", "A"),
        ("250.3.1.10.in-addr.arpa.", "PTR"),
        ("1.99.1.10.in-addr.arpa.", "PTR"),
    ]
    # An endpoint that starts not ready changes the view (its not-ready count), no record.
    store.apply(
        LAYER,
        [
            endpoint_slice(
                "shop",
                "db-a",
                "db",
                [*moved.subsets[0].endpoints, ep("10.1.99.2", ready=False)],
                [eport("pg", 5432)],
            )
        ],
    )
    assert store.service("shop", "db") != new
    assert record_diff(ZONE, new, store.service("shop", "db")) == []
    # Another service of the store changing asks nothing about this one.
    journal = Journal()
    journal.follow(ZONE, store)
    journal.open()
    store.apply(LAYER, [clusterip("shop", "web", "10.96.0.1")])
    assert {e.name for e in journal.latest(10)[1:]} == {
        f"web.shop.svc.{ZONE}.",
        "1.0.96.10.in-addr.arpa.",
    }


@pytest.mark.parametrize("seed", range(20))
def test_a_diff_from_remembered_answers_is_the_diff_worked_out_afresh(seed: int) -> None:
    # The journal remembers what each recent view answered (`Answered`) and spells only the
    # names of endpoints that differ (`_moved`). Over generated changes, with hostnames that
    # spell another endpoint's dashed address, both give what working everything out gives.
    rng = random.Random(seed)
    store = make_store([headless("shop", "db", ports=[port("pg", 5432)])])
    answered = kdns.ops.journal.Answered(ZONE, size=4)
    pool = [f"10.0.0.{i}" for i in range(1, 9)] + ["fd00::1", "fd00::"]

    def endpoint(address: str) -> Any:
        dashed = address.replace(".", "-").replace(":", "-")
        hostname = rng.choice(
            ["", "", "web-1", "web-2", dashed + ("0" if dashed[-1] == "-" else "")]
        )
        return ep(address, hostname=hostname, ready=rng.random() < 0.8)

    views = [store.service("shop", "db")]
    for _ in range(40):
        # Two slices may hold the same address (as they briefly do while a pod moves between
        # them), so one name can be spelled by an unchanged endpoint and a changed one.
        slices = [
            endpoint_slice(
                "shop",
                f"db-{s}",
                "db",
                [endpoint(a) for a in rng.sample(pool, rng.randrange(0, 4))],
                [eport("pg", 5432)],
            )
            for s in range(2)
        ]
        store.apply(LAYER, slices)
        views.append(store.service("shop", "db"))
    for old, new in itertools.pairwise(views):
        assert old is not None and new is not None
        names = {(e.name, e.address) for e in old.ready} ^ {(e.name, e.address) for e in new.ready}
        assert kdns.ops.journal._moved(old, new) == names
        assert record_diff(ZONE, old, new, answered) == record_diff(ZONE, old, new)


def test_a_record_set_that_changes_a_little_shares_its_texts_and_the_ring_bounds_them() -> None:
    store = make_store([headless("shop", "db", ports=[port("pg", 5432)]), scaled(100)])
    journal = Journal(max_records=1000)
    journal.follow(ZONE, store)
    journal.open()
    start = store.serial
    endpoints = list(scaled(100).subsets[0].endpoints)
    for i in range(20):
        endpoints[i] = ep(f"10.9.0.{i + 1}")
        store.apply(LAYER, [endpoint_slice("shop", "db-a", "db", endpoints, [eport("pg", 5432)])])
    kept = [e for e in journal.latest(1000) if (e.name, e.type) == (f"db.shop.svc.{ZONE}.", "A")]
    assert 1 < len(kept) < 20
    for older, newer in itertools.pairwise(kept):
        assert newer.before is older.after  # one tuple, not a copy
        # and its strings are the ones before, but for the one address that is new
        shared = {id(text) for text in newer.before}
        assert sum(id(text) not in shared for text in newer.after) == 1
    # 20 changes of 100 addresses and 100 SRV records, before and after: not all are kept.
    entries, complete = journal.since(start)
    assert not complete and entries[-1].serial == store.serial
    assert journal.since(journal.oldest)[1] is True


@pytest.mark.parametrize("seed", range(30))
def test_texts_are_the_records_build_makes(seed: int) -> None:
    # `Engine.texts` mirrors `Engine.build` for the journal: held equal here, over generated
    # stores (headless and ClusterIP, dual-stack, several slices, odd hostnames, mixed-case
    # ports, ExternalNames, nested zones), at every name the data implies and some it does not.
    rng = random.Random(seed)
    zones = ZONE_SETS[seed % len(ZONE_SETS)]
    engine = Engine([Cluster(zone, random_store(rng)) for zone in zones])
    names: set[str] = set()
    for cluster in engine.clusters:
        for view in cluster.store.views():
            svc = view.service
            fqdn = f"{svc.name}.{svc.namespace}.svc.{cluster.domain}."
            names |= {fqdn, f"nope.{fqdn}", f"_http._tcp.{fqdn}", f"_x._udp.{fqdn}"}
            ports = [*svc.ports, *(p for e in view.ready for p in e.ports)]
            names |= {f"_{p.name}._{p.protocol.lower()}.{fqdn}" for p in ports if p.name}
            names |= {f"{e.name}.{fqdn}" for e in view.ready}
            for address in (*svc.cluster_ips, *(e.address for e in view.ready)):
                names.add(dns.reversename.from_address(address).to_text())
    covered = 0
    for name in sorted(names):
        label = DNSLabel(name)
        res = engine.decide(engine.parse(label.label))
        for rtype in ("A", "AAAA", "SRV", "CNAME", "PTR"):
            qtype = getattr(QTYPE, rtype)
            texts = engine.texts(res, qtype)
            if texts is None:
                continue
            covered += 1
            built = [
                rr
                for rr in engine.build(res, label, qtype).answer
                if rr.rtype == qtype and rr.rname == label
            ]
            assert [_canonical(t, rtype) for t in texts] == [
                _canonical(str(rr.rdata), rtype) for rr in built
            ], (name, rtype)
    assert covered > 50


def _canonical(text: str, rtype: str) -> str:
    # dnslib writes some IPv6 addresses otherwise than RFC 5952 (and dig): compare the address.
    return str(ipaddress.ip_address(text)) if rtype in ("A", "AAAA") else text
