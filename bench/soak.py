"""Soak: kdns serving the 10,000-service, 100,000-endpoint cluster of bench/scale.py for 20 minutes
under load, churn, forced relists and API outages, every answer of its probe checked.

    .venv/bin/python bench/soak.py [--minutes 20] [--workers N] [--scale 1.0]
        [--relist-every 120] [--outage-every 300 --outage-seconds 20] [--append [FILE]]

Set-up (all of it from `bench/scale.py`, imported): the API double (`scale_apiserver`) in a
process of its own pinned to CPU 1, populated with the cluster (`--scale 0.1` shrinks it to 1,000
services and 10,000 endpoints for quick tries); `python -m kdns serve --kubeconfig ...` pinned to
CPU 0 (with `--workers N`, the watching process moves to CPU 1 after the sync); dnsperf and this
program on CPU 1. After the sync, one pass of the query file warms the cache and a 10 s dnsperf
run finds the maximum rate (or `--max-qps`). Then, for `--minutes`:

- load: dnsperf at `--load` (50%) of the maximum rate (-Q, niced below the double and the probe),
  run as one process per segment: segments end at every minute and at each outage's start and
  end, so its sent/lost counts fall into minutes and into inside/outside the outages;
- churn: the double changes `--rate` (100) endpoints a second, half readiness flips, half an
  endpoint moving to a new address (`scale_apiserver.Cluster.change`), through the whole soak,
  outages included (writes keep landing in the store as through another apiserver replica);
- a forced relist every `--relist-every` (120) seconds: history compacted, watches cut, every
  kind lists again (`force_relist`);
- an API outage of `--outage-seconds` (20) every `--outage-every` (300) seconds, the first at
  `--outage-at` (default: half a period in, so that it does not meet a relist): the double closes
  its listening socket and cuts every open connection (`go_down`: kdns gets connection refused),
  then listens again on the same port with the same objects and history (`come_up`);
- the probe (this process): `--probe-rate` (500) queries a second over one UDP socket, half
  of them polling the names changed by one change in `--track` (10), round robin, until the
  answer shows the change (the propagation time; coarse when many are pending, as each then
  waits its turn), half sampled: ClusterIP services (constant), NXDOMAIN names, random
  endpoints and recently changed names. Every answer is checked (below); a query unanswered
  after `--timeout` (2 s) is lost. Its round trips give the latency percentiles per minute (they
  include this Python client's own delays on a shared CPU, so they are an upper bound).
- every second: VmRSS of every kdns process and PSS (/proc/PID/smaps_rollup); every minute its
  CPU.

Wrong answers. The source of truth is the double's state: the churn reports every change (the
name that appears or disappears, its address or NXDOMAIN, the time the double applied it, its
resourceVersion), so each name probed has a history of states. A state stays acceptable until
its successor's deadline: the moment the successor reached kdns plus `--budget` (1 s). It
reached kdns when the double first wrote its event to a watch stream (`FakeApiServer.written`);
a change no watch carried (made while kdns had no EndpointSlice watch: in an outage, or during
a relist between the trigger and kdns's new LIST) reached kdns when it opened its first
EndpointSlice watch after its last LIST of the window (the double's request log; a window kdns
had not closed when the next began ends with that next one), and failing that when it was
applied. An answer to a query sent at t0 and received at t1 is right when it
matches a state whose acceptable interval [applied, successor's deadline) meets [t0, t1]. So kdns
may answer from its last data through an outage, must show what changed in it within the
budget of watching again, and a stale answer past the budget is wrong ("stale"), as is an
answer the name never had ("never": another address, SERVFAIL, an empty NOERROR, ...).

Goals (issue 14, part 6): no wrong answers; no query lost outside the outages (dnsperf's and
the probe's); total RSS per minute flat within 5% after the first relist (the per-minute
medians of the 1 s samples, from the first minute that starts after it: a relist's transient
peak and the allocator's first growth are not a leak).

Every wait has a deadline. Prints a Markdown section; `--append [FILE]` adds it to
bench/RESULTS.md (or FILE). `--dump FILE` writes the per-minute rows and events as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import itertools
import json
import math
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from scale import (  # noqa: E402
    Double,
    children,
    cpu_seconds,
    dnsperf_cmd,
    dnsperf_stats,
    free_port,
    memory,
    pct,
    pin_threads,
    query_lines,
    question,
    udp_rcvbuf_errors,
    wait_synced,
    write_kubeconfig,
)
from scale_apiserver import ZONE, Shape, cluster_ip, dashed, endpoint_ip  # noqa: E402

RESULTS = HERE / "RESULTS.md"
NX = "NXDOMAIN"
INF = math.inf


# -- answers --------------------------------------------------------------------------------------


def _skip_name(data: bytes, pos: int) -> int:
    while pos < len(data):
        length = data[pos]
        if length >= 0xC0:  # a compression pointer ends the name
            return pos + 2
        pos += 1 + length
        if length == 0:
            return pos
    return pos


def answer_value(data: bytes) -> str:
    """What an A answer says, as the truth is written: the address, NXDOMAIN, or a description
    of anything else (which no name's history holds, so it counts as wrong)."""
    rcode = data[3] & 0x0F
    if rcode == 3:
        return NX
    if rcode != 0:
        return f"rcode {rcode}"
    ancount = int.from_bytes(data[6:8], "big")
    pos = _skip_name(data, 12) + 4
    found = []
    for _ in range(ancount):
        pos = _skip_name(data, pos)
        rtype = int.from_bytes(data[pos : pos + 2], "big")
        rdlen = int.from_bytes(data[pos + 8 : pos + 10], "big")
        rdata = data[pos + 10 : pos + 10 + rdlen]
        pos += 10 + rdlen
        if rtype == 1 and rdlen == 4:
            found.append(socket.inet_ntoa(rdata))
    if len(found) == 1 and ancount == 1:
        return found[0]
    return f"NOERROR [{', '.join(found)}] ({ancount} records)"


# -- the schedule ---------------------------------------------------------------------------------


@dataclass
class Schedule:
    """When things happen, in seconds after the soak's start."""

    seconds: float
    relists: list[float]
    outages: list[tuple[float, float]]

    @classmethod
    def build(cls, args: argparse.Namespace) -> Schedule:
        seconds = args.minutes * 60
        relists = []
        t = args.relist_every
        while args.relist_every > 0 and t < seconds - 1:
            relists.append(t)
            t += args.relist_every
        outages = []
        t = args.outage_every / 2 if args.outage_at is None else args.outage_at
        while (
            args.outage_every > 0 and args.outage_seconds > 0 and t + args.outage_seconds < seconds
        ):
            outages.append((t, t + args.outage_seconds))
            t += args.outage_every
        return cls(seconds, relists, outages)

    def segments(self) -> list[tuple[float, float, bool]]:
        """dnsperf's runs: (start, end, inside an outage), cut at minutes and at outages."""
        cuts = {0.0, self.seconds}
        cuts.update(float(m * 60) for m in range(1, math.ceil(self.seconds / 60)))
        for start, end in self.outages:
            cuts.update((start, end))
        ordered = sorted(cuts)
        return [
            (a, b, any(s <= a < e for s, e in self.outages)) for a, b in itertools.pairwise(ordered)
        ]


# -- the truth ------------------------------------------------------------------------------------


@dataclass
class Window:
    """A stretch in which kdns had no EndpointSlice watch the double could write changes to: from
    an outage's start (or a relist's trigger) until kdns's first watch after its last LIST
    (`watching`, once found in the double's request log)."""

    kind: str  # "outage" or "relist"
    start: float
    resumed: float  # the API back (outages) or the trigger (relists): kdns can list from here
    watching: float | None = None
    lists: int = 0


@dataclass
class Truth:
    """Every probed name's states, from the churn's reports, and when each reached kdns."""

    budget: float
    #: name -> [(applied at, resourceVersion, value)], oldest first; the first is the state
    #: before the soak (applied at -inf)
    history: dict[str, list[tuple[float, int, str]]] = field(default_factory=dict)
    written: dict[int, float | None] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)

    def change(self, name: str, rv: int, value: str, at: float, before: str) -> None:
        states = self.history.setdefault(name, [(-INF, 0, before)])
        states.append((at, rv, value))

    def reached(self, at: float, rv: int) -> float:
        """When the change applied at `at` reached kdns (see the module docstring)."""
        w = self.written.get(rv)
        if w is not None:
            return w
        for window in self.windows:
            if window.start <= at and (window.watching is None or at < window.watching):
                return INF if window.watching is None else window.watching
        return at

    def verdict(self, name: str, initial: str, sent: float, got: float, value: str) -> str:
        """ "" when right, else "stale" (a state the name had, past its deadline) or "never"."""
        states = self.history.get(name)
        if states is None:
            return "" if value == initial else "never"
        known = False
        for i, (at, _, v) in enumerate(states):
            if v != value:
                continue
            known = True
            if i + 1 < len(states):
                nat, nrv, _ = states[i + 1]
                until = self.reached(nat, nrv) + self.budget
            else:
                until = INF
            if at <= got and until > sent:
                return ""
        return "stale" if known else "never"


# -- the probe ------------------------------------------------------------------------------------


@dataclass
class Minute:
    asked: int = 0
    answered: int = 0
    lost: int = 0
    lost_in_outage: int = 0
    rtts: list[float] = field(default_factory=list)
    stale: int = 0
    never: int = 0
    rss: list[float] = field(default_factory=list)
    pss: list[float] = field(default_factory=list)
    cpu: float = 0.0
    load: float = 0.0  # the machine's 1-minute load average at the minute's end
    hits: float = 0.0  # kdns's response cache, from /metrics
    misses: float = 0.0
    perf: dict[str, float] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


@dataclass
class Raw:
    """Everything measured, shared by the probe (main thread) and the conductor thread."""

    started: float = 0.0
    minutes: list[Minute] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)  # actual, monotonic
    relists: list[float] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    changes: int = 0
    propagation: list[float] = field(default_factory=list)
    unseen: int = 0
    superseded: int = 0
    wrong: list[tuple[float, str, str, str]] = field(default_factory=list)  # at, name, got, why
    checked: int = 0
    lost_outside: list[float] = field(default_factory=list)  # sent at, s after the start
    lost_inside: list[float] = field(default_factory=list)
    drops: int = 0
    cpu1: dict[str, float] = field(default_factory=dict)  # share of a core over the soak
    notes: list[str] = field(default_factory=list)

    def minute(self, at: float) -> Minute | None:
        index = int((at - self.started) // 60)
        return self.minutes[index] if 0 <= index < len(self.minutes) else None

    def in_outage(self, at: float) -> bool:
        return any(a <= at < b for a, b in self.outages)


class Probe:
    """Asks, receives and (60 s later, once the double has told when each change reached kdns)
    checks. Runs in the main thread; `step()` asks one query and reads answers until the next
    one is due."""

    LAG = 60.0  # answers are checked this long after they came

    def __init__(self, port: int, shape: Shape, truth: Truth, raw: Raw, args: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.truth = truth
        self.raw = raw
        self.timeout = args.timeout
        self.interval = 1 / args.probe_rate
        self.track = max(1, args.track)
        self.sends = 0
        self.ident = random.randrange(65536)
        self.rng = random.Random(3)
        self.shape = shape
        # ID -> (sent at, name, truth before any change, rv awaited or 0, value awaited)
        self.inflight: dict[int, tuple[float, str, str, int, str]] = {}
        # name -> (rv, value, applied at) of the latest change not yet seen answered
        self.pending: OrderedDict[str, tuple[int, str, float]] = OrderedDict()
        # (rv, name) -> first answered with it. A move is one write (one resourceVersion) that
        # changes two names, the new one and the one gone: keyed by rv alone, the second name to
        # be answered was never taken off `pending`, and those names, polled round robin for the
        # rest of the soak, stretched every other change's polling turn to tens of seconds.
        self.seen: dict[tuple[int, str], float] = {}
        self.applied: dict[int, float] = {}
        self.recent: deque[str] = deque(maxlen=1000)  # names changed lately
        self.answers: deque[tuple[float, float, str, str, str]] = deque()
        self.turn = 0

    def sample(self) -> tuple[str, str]:
        """A name to check and its value before the soak."""
        s = self.shape
        self.turn += 1
        pick = self.turn % 4
        if pick == 0 and self.recent:
            name = self.recent[self.rng.randrange(len(self.recent))]
            return name, self.truth.history[name][0][2]
        if pick == 1:
            i = self.rng.randrange(s.clusterip)
            ns, svc = s.svc(i)
            return f"{svc}.{ns}.svc.{ZONE}", cluster_ip(i)
        if pick == 2:
            i = self.rng.randrange(s.clusterip)
            return f"missing-{i}.{s.svc(i)[0]}.svc.{ZONE}", NX
        g = self.rng.randrange(s.endpoints)
        ns, db = s.db(s.slice_owner(g // s.endpoints_per_slice))
        ip = endpoint_ip(g)
        return f"{dashed(ip)}.{db}.{ns}.svc.{ZONE}", ip

    def on_change(self, rv: int, name: str, value: str, at: float) -> None:
        before = value if name in self.truth.history else (NX if value != NX else name_ip(name))
        self.truth.change(name, rv, value, at, before)
        self.applied[rv] = at
        self.recent.append(name)
        if name in self.pending:
            self.raw.superseded += 1
            del self.pending[name]
        # Only one change in `track` is polled: all of them would outgrow the probe's polling
        # whenever kdns falls behind (150 names a second against 250 polls), and the backlog,
        # not kdns, would then set the times measured.
        if rv % self.track == 0:
            self.pending[name] = (rv, value, at)

    def send(self, name: str, initial: str, rv: int, value: str) -> None:
        self.ident = (self.ident + 1) & 0xFFFF
        now = time.monotonic()
        self.inflight[self.ident] = (now, name, initial, rv, value)
        m = self.raw.minute(now)
        if m is not None:
            m.asked += 1
        with contextlib.suppress(OSError):
            self.sock.send(self.ident.to_bytes(2, "big") + question(name, "A"))

    def step(self, until: float) -> None:
        self.sends += 1
        if self.pending and self.sends % 2:
            name, (rv, value, at) = self.pending.popitem(last=False)
            self.pending[name] = (rv, value, at)  # to the back of the round
            self.send(name, self.truth.history[name][0][2], rv, value)
        else:
            self.send(*self.sample(), 0, "")
        while True:
            wait = until - time.monotonic()
            try:
                if wait > 0:
                    self.sock.settimeout(wait)
                    data = self.sock.recv(4096)
                else:
                    self.sock.setblocking(False)
                    data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError, ConnectionRefusedError):
                break
            got = time.monotonic()
            item = self.inflight.pop(int.from_bytes(data[:2], "big"), None)
            if item is None:
                continue  # answered after it was counted lost
            sent, name, initial, rv, awaited = item
            m = self.raw.minute(sent)
            if m is not None:
                m.answered += 1
                m.rtts.append(got - sent)
            value = answer_value(data)
            self.answers.append((sent, got, name, initial, value))
            if rv and value == awaited and (rv, name) not in self.seen:
                self.seen[rv, name] = got
                current = self.pending.get(name)
                if current is not None and current[0] == rv:
                    del self.pending[name]
        now = time.monotonic()
        for ident in [i for i, v in self.inflight.items() if now - v[0] > self.timeout]:
            sent = self.inflight.pop(ident)[0]
            m = self.raw.minute(sent)
            inside = self.raw.in_outage(sent)
            if m is not None:
                m.lost += 1
                m.lost_in_outage += inside
            (self.raw.lost_inside if inside else self.raw.lost_outside).append(
                sent - self.raw.started
            )

    def check(self, before: float, limit: int = 300) -> None:
        """Check up to `limit` answers received before `before`."""
        for _ in range(limit):
            if not self.answers or self.answers[0][1] >= before:
                return
            sent, got, name, initial, value = self.answers.popleft()
            why = self.truth.verdict(name, initial, sent, got, value)
            self.raw.checked += 1
            if why:
                m = self.raw.minute(sent)
                if m is not None:
                    if why == "stale":
                        m.stale += 1
                    else:
                        m.never += 1
                self.raw.wrong.append((sent - self.raw.started, name, value, why))

    def close(self) -> None:
        self.sock.close()


def name_ip(name: str) -> str:
    """The address an endpoint's name spells (`10-128-0-1.db-0.ns-0.svc...`)."""
    return name.split(".", 1)[0].replace("-", ".")


# -- the conductor --------------------------------------------------------------------------------


class Conductor(threading.Thread):
    """Runs the schedule beside the probe: relists, outages, dnsperf's segments, samples of
    memory and CPU, and the double's answers the checks need (write times, request log). Only
    this thread talks to the double's command pipe."""

    def __init__(
        self,
        args: argparse.Namespace,
        schedule: Schedule,
        double: Double,
        pids: list[int],
        port: int,
        http_port: int,
        queries: Path,
        rate: float,
        work: Path,
        probe: Probe,
        raw: Raw,
    ) -> None:
        super().__init__(name="conductor", daemon=True)
        self.args, self.schedule, self.double = args, schedule, double
        self.pids, self.port, self.queries, self.rate, self.work = pids, port, queries, rate, work
        self.http_port = http_port
        self.cpu_seen: dict[int, float] = {}
        self.known = set(pids)
        self.probe, self.raw, self.truth = probe, raw, probe.truth
        self.stop = threading.Event()
        self.perf: list[tuple[subprocess.Popen[bytes], Path, float, float, bool]] = []
        self.failed: BaseException | None = None
        self.asked_written = 0  # rvs (by applied order) whose write time was fetched

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the main thread
            self.failed = exc

    def _run(self) -> None:
        t0 = self.raw.started
        todo: list[tuple[float, int, str, Any]] = []
        for n, at in enumerate(self.schedule.relists):
            todo.append((at, 1, "relist", n))
        for start, end in self.schedule.outages:
            todo.append((start, 2, "down", None))
            todo.append((end, 0, "up", None))
        for seg in self.schedule.segments():
            todo.append((seg[0], 3, "segment", seg))
        todo.sort()
        last = (self.cpu(), *self.cache())
        next_sample = 0.0
        next_fetch = 10.0
        minute = 0
        while not self.stop.is_set():
            now = time.monotonic() - t0
            if now >= self.schedule.seconds:
                break
            while todo and todo[0][0] <= now:
                _, _, what, arg = todo.pop(0)
                self.act(what, arg)
            if now >= next_sample:
                self.sample_memory()
                next_sample += 1.0
            if now >= (minute + 1) * 60:
                last = self.close_minute(minute, 60.0, last)
                minute += 1
            if now >= next_fetch:
                self.fetch(time.monotonic() - 30)
                next_fetch += 10.0
            nxt = min([next_sample, next_fetch, (minute + 1) * 60] + [t[0] for t in todo[:1]])
            self.stop.wait(max(0.0, min(1.0, nxt - (time.monotonic() - t0))))
        if minute < len(self.raw.minutes):
            part = time.monotonic() - t0 - minute * 60
            if part > 1:
                self.close_minute(minute, part, last)

    def close_minute(
        self, minute: int, seconds: float, last: tuple[float, float, float]
    ) -> tuple[float, float, float]:
        """Record kdns's CPU share and cache counts over the minute; the counters now (the
        cache's last known ones when /metrics did not answer: that minute shows none)."""
        now = (self.cpu(), *self.cache())
        m = self.raw.minutes[minute]
        m.cpu = (now[0] - last[0]) / seconds
        m.load = os.getloadavg()[0]  # other runs on this shared machine show here
        m.hits, m.misses = now[1] - last[1], now[2] - last[2]
        if math.isnan(now[1]):
            return (now[0], last[1], last[2])
        return now

    def act(self, what: str, arg: Any) -> None:
        if what == "relist":
            at = time.monotonic()
            self.double.call("force_relist", timeout=30)
            self.raw.relists.append(at)
            self.truth.windows.append(Window("relist", at, at))
            self.event(at, "relist")
        elif what == "down":
            at = time.monotonic()
            window = Window("outage", at, INF)
            self.truth.windows.append(window)  # before the outage starts: checks see it
            self.raw.outages.append((at, INF))
            self.double.call("go_down", timeout=30)
            self.event(at, "outage")
        elif what == "up":
            up = self.double.call("come_up", timeout=30)
            start = self.raw.outages[-1][0]
            self.raw.outages[-1] = (start, up)
            self.truth.windows[-1].resumed = up
        elif what == "segment":
            start, end, inside = arg
            out = self.work / f"dnsperf-{len(self.perf)}.txt"
            cmd = dnsperf_cmd(
                self.args.load_cpu, self.port, self.queries, end - start, self.rate, nice=19
            )
            cmd += ["-S", "1"]  # its rate each second: the slowest second of each minute
            with out.open("wb") as f:
                proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
            self.perf.append((proc, out, start, end, inside))

    def event(self, at: float, what: str) -> None:
        m = self.raw.minute(at)
        if m is not None:
            m.events.append(f"{what} at {at - self.raw.started:.0f} s")

    def processes(self) -> list[int]:
        """kdns's processes now: with --workers, a serving process kdns restarted has a new pid
        (its main process kills one silent for 5 s), and a restart shows in the notes."""
        if not self.args.workers:
            return self.pids
        now = [self.pids[0], *children(self.pids[0])]
        for pid in now:
            if pid not in self.known:
                self.event(time.monotonic(), f"new kdns process {pid}")
                self.known.add(pid)
        return now

    def cpu(self) -> float:
        """CPU seconds of every kdns process seen so far (a process gone keeps its last)."""
        for pid in self.processes():
            with contextlib.suppress(OSError):
                self.cpu_seen[pid] = cpu_seconds(pid)
        return sum(self.cpu_seen.values())

    def cache(self) -> tuple[float, float]:
        """kdns's response cache hits and misses so far (all serving processes), or NaN when
        /metrics does not answer within 2 s (kdns's loop serves it, so an overloaded kdns may
        not)."""
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=2)
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            conn.close()
        except OSError:
            return (math.nan, math.nan)
        counts = [0.0, 0.0]
        for line in text.splitlines():
            for i, name in enumerate(("kdns_cache_hits_total", "kdns_cache_misses_total")):
                if line.startswith(name):
                    counts[i] += float(line.rsplit(" ", 1)[1])
        return (counts[0], counts[1])

    def sample_memory(self) -> None:
        rss = pss = 0.0
        for pid in self.processes():
            with contextlib.suppress(OSError):
                rss += memory(pid)["VmRSS"]
                pss += smaps_pss(pid)
        m = self.raw.minute(time.monotonic())
        if m is not None:
            m.rss.append(rss)
            m.pss.append(pss)

    def fetch(self, before: float) -> None:
        """Ask the double when the changes applied before `before` were first written to a
        watch, and find when kdns watched again after each window."""
        rvs = [rv for rv, at in list(self.probe.applied.items()) if at < before]
        new = [rv for rv in rvs if rv not in self.truth.written]
        if new:
            written = self.double.call("written", new, timeout=60)
            self.truth.written.update(written)
        open_windows = [w for w in self.truth.windows if w.watching is None and w.resumed < INF]
        if not open_windows:
            return
        since = min(w.start for w in open_windows) - 1
        requests = self.double.call("requests", since, timeout=60)
        slices = sorted((r[3], r[1], r[2]) for r in requests if r[0] == "endpointslices")
        windows = sorted(self.truth.windows, key=lambda w: w.start)
        # Latest first: a window kdns had not closed when the next began (its relist still
        # running at an outage, say) ends when that next one does.
        for i in reversed(range(len(windows))):
            w = windows[i]
            if w.watching is not None or w.resumed == INF:
                continue
            later = [n for n in windows[i + 1 :] if n.start > w.resumed]
            stop = later[0].start if later else INF
            lists = [at for at, watch, code in slices if not watch and w.resumed <= at < stop]
            after = max(lists, default=w.resumed)
            watches = [at for at, watch, code in slices if watch and code == 200 and at > after]
            w.lists = len(lists)
            if watches and watches[0] < stop:
                w.watching = watches[0]
            elif later:
                w.watching = later[0].watching

    def finish(self) -> None:
        """Wait for dnsperf's last segment and read every segment's counts."""
        for proc, out, start, end, inside in self.perf:
            try:
                proc.wait(timeout=max(5.0, end - start + 30))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                self.raw.notes.append(f"dnsperf segment {start:.0f}-{end:.0f} s killed")
            stats = dnsperf_stats(out.read_text(errors="replace"))
            stats.update(start=start, end=end, inside=inside)
            self.raw.segments.append(stats)
            m = self.raw.minute(self.raw.started + start)
            if m is None:
                continue
            for key in ("sent", "completed", "lost"):
                m.perf[key] = m.perf.get(key, 0.0) + stats[key]
            if stats.get("completed"):
                m.perf["latency_sum"] = (
                    m.perf.get("latency_sum", 0.0)
                    + stats.get("avg_latency", 0.0) * stats["completed"]
                )
                m.perf["max_latency"] = max(
                    m.perf.get("max_latency", 0.0), stats.get("max_latency", 0.0)
                )
            m.perf["seconds"] = m.perf.get("seconds", 0.0) + end - start
            series = stats.get("series") or []
            if len(series) > 2:  # the first and last seconds of a segment are partial
                low = min(series[1:-1])
                m.perf["slowest"] = min(m.perf.get("slowest", low), low)


def cpu1_seconds(double: Double) -> dict[str, float]:
    """CPU seconds so far of what shares the load CPU: the double, this process (the probe and
    the conductor) and the dnsperf runs waited for (RUSAGE_CHILDREN: kdns is waited for last)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "double": cpu_seconds(double.proc.pid or 0),
        "probe": cpu_seconds(os.getpid()),
        "dnsperf": children.ru_utime + children.ru_stime,
    }


def smaps_pss(pid: int) -> float:
    """Proportional set size of a process in MB (/proc/PID/smaps_rollup)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Setup:
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shape: Shape = field(default_factory=Shape)
    sync: float = 0.0
    max_qps: float = 0.0
    rate: float = 0.0
    workers: list[int] = field(default_factory=list)
    mem_sync: float = 0.0


def start_kdns(
    args: argparse.Namespace, kubeconfig: Path, zones: Path, port: int, http_port: int, log: Any
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "kdns", "serve", "--kubeconfig", str(kubeconfig)]
    cmd += ["--zones", str(zones), "--listen", f"127.0.0.1:{port}", "--log-level", "warning"]
    cmd += ["--http", f"127.0.0.1:{http_port}", "--startup-timeout", "120"]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        ["taskset", "-c", str(args.kdns_cpu), *cmd],
        stdout=subprocess.DEVNULL,
        stderr=log,
        cwd=REPO,
        env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path),
    )


def run(args: argparse.Namespace, setup: Setup, raw: Raw) -> None:
    shape = setup.shape
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {args.load_cpu})
    double = Double(shape, args.load_cpu, False)
    kdns: subprocess.Popen[bytes] | None = None
    conductor: Conductor | None = None
    with tempfile.TemporaryDirectory(prefix="kdns-soak-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        try:
            info = double.call("populate", timeout=300)
            print(f"double: {info['objects']:,} objects in {info['seconds']:.1f} s", flush=True)
            kubeconfig = write_kubeconfig(work / "kubeconfig", info["url"])
            (work / "zones").mkdir()
            queries = work / "queries.txt"
            queries.write_text("\n".join(query_lines(shape, 20000)) + "\n")
            port, http_port = free_port(), free_port()
            log = stack.enter_context((work / "kdns.log").open("wb"))
            started = time.monotonic()
            kdns = start_kdns(args, kubeconfig, work / "zones", port, http_port, log)
            ns, svc = shape.svc(shape.clusterip - 1)
            last: str | None = cluster_ip(shape.clusterip - 1)
            probes = [(question(f"{svc}.{ns}.svc.{ZONE}", "A"), last)]
            sync = wait_synced(kdns, started, port, http_port, probes, started + 150)
            if "ready" not in sync or "answer0" not in sync:
                raise RuntimeError(f"kdns did not sync: {sync}")
            setup.sync = sync["answer0"]
            pids = [kdns.pid]
            if args.workers:
                setup.workers = children(kdns.pid)
                pids += setup.workers
                pin_threads(kdns.pid, args.load_cpu)  # the watcher beside the double
            time.sleep(1.0)
            setup.mem_sync = sum(memory(p)["VmRSS"] for p in pids)
            print(
                f"kdns pid {kdns.pid} synced in {setup.sync:.1f} s, RSS {setup.mem_sync:.0f} MB",
                flush=True,
            )

            warm = [*dnsperf_cmd(args.load_cpu, port, queries, 60, None), "-n", "1"]
            subprocess.run(warm, capture_output=True, timeout=120)
            if args.max_qps:
                setup.max_qps = args.max_qps
            else:
                out = subprocess.run(
                    dnsperf_cmd(args.load_cpu, port, queries, 10, None),
                    capture_output=True,
                    text=True,
                    timeout=90,
                ).stdout
                setup.max_qps = dnsperf_stats(out)["qps"]
            setup.rate = setup.max_qps * args.load
            print(f"max rate {setup.max_qps:,.0f} q/s; load {setup.rate:,.0f} q/s", flush=True)

            schedule = Schedule.build(args)
            truth = Truth(args.budget)
            probe = Probe(port, shape, truth, raw, args)
            raw.minutes = [Minute() for _ in range(math.ceil(schedule.seconds / 60))]
            double.call("churn", args.rate, schedule.seconds, None, timeout=30)
            raw.started = time.monotonic()
            drops = udp_rcvbuf_errors()
            cpu1 = cpu1_seconds(double)
            conductor = Conductor(
                args, schedule, double, pids, port, http_port, queries, setup.rate, work, probe, raw
            )
            conductor.start()
            soak(args, schedule, double, kdns, probe, conductor, raw)
            raw.drops = udp_rcvbuf_errors() - drops
            conductor.join(30)
            conductor.finish()
            wall = time.monotonic() - raw.started
            for name, used in cpu1_seconds(double).items():
                raw.cpu1[name] = (used - cpu1[name]) / wall
            if conductor.failed is not None:
                raise RuntimeError(f"the conductor failed: {conductor.failed!r}")
            # The last answers: once the double has said when the last changes reached kdns.
            conductor.fetch(INF)
            probe.check(INF, limit=10**9)
            probe.close()
            # Names whose last change came in the last 10 s may simply not have been polled yet.
            raw.unseen = sum(
                1 for _, _, at in probe.pending.values() if at < raw.started + schedule.seconds - 10
            )
            for (rv, _), got in probe.seen.items():
                raw.propagation.append(got - truth.reached(probe.applied[rv], rv))
            raw.changes = len(probe.applied)
            for w in truth.windows:
                watching = "never" if w.watching is None else f"{w.watching - w.resumed:.1f} s"
                raw.notes.append(
                    f"{w.kind} at {w.start - raw.started:.0f} s: {w.lists} EndpointSlice LIST "
                    f"requests, watching again {watching} after the "
                    + ("API came back" if w.kind == "outage" else "trigger")
                )
        finally:
            if conductor is not None:
                conductor.stop.set()
                for proc, *_ in conductor.perf:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(5)
            if kdns is not None:
                stop_kdns(kdns)
                if args.log is not None:
                    shutil.copy(work / "kdns.log", args.log)
                text = (work / "kdns.log").read_text(errors="replace").strip().splitlines()
                if text:
                    raw.notes.append(
                        f"kdns stderr: {len(text)} lines; last: " + " | ".join(text[-3:])
                    )
            double.stop()


def stop_kdns(kdns: subprocess.Popen[bytes]) -> None:
    """SIGINT (its clean shutdown), and SIGKILL if it is still there 10 s later."""
    if kdns.poll() is None:
        kdns.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        kdns.wait(10)
    if kdns.poll() is None:
        kdns.kill()
        kdns.wait(5)


def soak(
    args: argparse.Namespace,
    schedule: Schedule,
    double: Double,
    kdns: subprocess.Popen[bytes],
    probe: Probe,
    conductor: Conductor,
    raw: Raw,
) -> None:
    """The probe's loop, until the schedule's end plus the time to see the last changes."""
    end = raw.started + schedule.seconds
    last_print = raw.started
    while True:
        now = time.monotonic()
        if now >= end + args.timeout:
            break
        if kdns.poll() is not None:
            raise RuntimeError(f"kdns exited with status {kdns.returncode} during the soak")
        if conductor.failed is not None:
            raise RuntimeError(f"the conductor failed: {conductor.failed!r}")
        while double.events.poll():
            msg = double.events.recv()
            if msg[0] == "change":
                _, rv, name, expect, at = msg
                probe.on_change(rv, name, expect or NX, at)
            elif msg[0] == "gone":
                _, rv, name, at = msg
                probe.on_change(rv, name, NX, at)
        if now < end:
            probe.step(now + probe.interval)
        else:
            probe.step(now + 0.01)  # no new queries after the end: wait for the last answers
        probe.check(now - Probe.LAG)
        if now - last_print >= 60:
            last_print = now
            m = raw.minute(now - 1)
            if m is not None:
                print(
                    f"{(now - raw.started) / 60:.0f} min: probe {m.answered}/{m.asked}, "
                    f"p99 {pct(m.rtts, 0.99) * 1000:.1f} ms, RSS "
                    f"{statistics.median(m.rss) if m.rss else 0:.0f} MB, wrong so far "
                    f"{len(raw.wrong)}, {' '.join(m.events)}",
                    flush=True,
                )


# -- the report -----------------------------------------------------------------------------------


def render(args: argparse.Namespace, setup: Setup, raw: Raw, schedule: Schedule) -> str:
    def ms(v: float) -> str:
        return "-" if math.isnan(v) else f"{v * 1000:.1f}"

    def ok(good: bool) -> str:
        return "yes" if good else "**no**"

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    shape = setup.shape
    inside = [s for s in raw.segments if s["inside"]]
    outside = [s for s in raw.segments if not s["inside"]]
    lost_in = sum(s["lost"] for s in inside)
    lost_out = sum(s["lost"] for s in outside)
    sent_in = sum(s["sent"] for s in inside)
    sent_out = sum(s["sent"] for s in outside)
    probe_lost_in = sum(m.lost_in_outage for m in raw.minutes)
    probe_lost_out = sum(m.lost - m.lost_in_outage for m in raw.minutes)
    asked = sum(m.asked for m in raw.minutes)
    stale = sum(1 for w in raw.wrong if w[3] == "stale")
    never = len(raw.wrong) - stale
    first_relist = (raw.relists[0] - raw.started) if raw.relists else 0.0
    flat_minutes = [
        (i, statistics.median(m.rss))
        for i, m in enumerate(raw.minutes)
        if i * 60 >= first_relist and m.rss and len(m.rss) >= 30
    ]
    if flat_minutes:
        low, high = min(v for _, v in flat_minutes), max(v for _, v in flat_minutes)
        spread = high / low - 1
        flat = f"{low:.0f} → {high:.0f} MB (+{spread:.1%}) over minutes {flat_minutes[0][0] + 1}-"
        flat += f"{flat_minutes[-1][0] + 1}"
    else:
        spread, flat = INF, "no minute after the first relist"
    prop = raw.propagation
    rows = [
        ("maximum rate (dnsperf, cache warm)", f"{setup.max_qps:,.0f} q/s", "", ""),
        (
            "load (dnsperf -Q)",
            f"{setup.rate:,.0f} q/s asked; {sent_in + sent_out:,.0f} sent",
            f"{args.load:.0%} of max",
            "",
        ),
        (
            "dnsperf queries lost outside the outages",
            f"{lost_out:,.0f} of {sent_out:,.0f}",
            "0",
            ok(lost_out == 0),
        ),
        ("dnsperf queries lost inside the outages", f"{lost_in:,.0f} of {sent_in:,.0f}", "", ""),
        (
            "probe queries lost outside the outages",
            f"{probe_lost_out:,} of {asked:,}",
            "0",
            ok(probe_lost_out == 0),
        ),
        ("probe queries lost inside the outages", f"{probe_lost_in:,}", "", ""),
        (
            "wrong answers: stale past the budget / never true",
            f"{stale:,} / {never:,} of {raw.checked:,} checked",
            "0",
            ok(not raw.wrong),
        ),
        ("RSS (all kdns processes) after the sync", f"{setup.mem_sync:.0f} MB", "", ""),
        ("RSS per-minute median after the first relist", flat, "within 5%", ok(spread <= 0.05)),
        (
            "endpoint changes made; propagation (reached kdns → answered) p50 / p99 / max",
            f"{raw.changes:,}; {ms(pct(prop, 0.5))} / {ms(pct(prop, 0.99))} / "
            f"{ms(max(prop, default=math.nan))} ms (n={len(prop):,})",
            "",
            "",
        ),
        (
            "names whose last change was not seen answered by the end (changed again first)",
            f"{raw.unseen} ({raw.superseded})",
            "",
            "",
        ),
        ("kernel UDP receive-buffer drops (all sockets)", str(raw.drops), "", ""),
        (
            f"CPU {args.load_cpu} (load CPU) over the soak",
            ", ".join(f"{k} {v:.0%}" for k, v in raw.cpu1.items()),
            "",
            "",
        ),
    ]
    lines = [
        f"## {datetime.datetime.now().isoformat(timespec='seconds')} — soak — {cpu}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "",
        f"Command: `{shlex.join(['.venv/bin/python', 'bench/soak.py', *args.argv])}`",
        "",
        f"Cluster: {shape.services:,} services ({shape.headless:,} headless), "
        f"{shape.endpoints:,} endpoints in {shape.slices:,} EndpointSlices. "
        f"kdns{f' --workers {args.workers}' if args.workers else ''} on CPU {args.kdns_cpu}; "
        f"the double, dnsperf and the probe on CPU {args.load_cpu}. {schedule.seconds / 60:g} "
        f"minutes: {args.rate:g} endpoint changes/s, relists at "
        f"{', '.join(f'{t:.0f} s' for t in schedule.relists) or 'none'}, outages "
        f"{', '.join(f'{a:.0f}-{b:.0f} s' for a, b in schedule.outages) or 'none'}; probe "
        f"{args.probe_rate:g} q/s, budget {args.budget:g} s. Load average before "
        f"{' '.join(f'{x:.2f}' for x in setup.load_before)}, after "
        f"{' '.join(f'{x:.2f}' for x in setup.load_after)}.",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += [
        "",
        "Per minute (dnsperf: answers a second over the minute and in its slowest whole second, "
        "lost, average and max latency; probe: lost of asked, round trip percentiles; wrong: "
        "stale/never; kdns: response cache misses (/metrics), RSS and PSS (medians of 1 s "
        "samples, all processes), CPU (all processes, share of one core); the machine's 1-minute "
        "load average at the minute's end):",
        "",
        "| min | events | dnsperf q/s (slowest s) | lost | avg / max ms | probe lost | p50 / p99 / "
        "p99.9 / max ms | wrong | misses | RSS MB | PSS MB | CPU | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, m in enumerate(raw.minutes):
        p = m.perf
        seconds = p.get("seconds", 0.0) or 1.0
        avg = p.get("latency_sum", 0.0) / p["completed"] if p.get("completed") else math.nan
        rtt = m.rtts
        lines.append(
            f"| {i + 1} | {'; '.join(m.events)} | {p.get('completed', 0) / seconds:,.0f} "
            f"({p.get('slowest', math.nan):,.0f}) | "
            f"{p.get('lost', 0):,.0f} | {ms(avg)} / {ms(p.get('max_latency', math.nan))} | "
            f"{m.lost} of {m.asked:,}{f' ({m.lost_in_outage} in outage)' * bool(m.lost_in_outage)}"
            f" | {ms(pct(rtt, 0.5))} / {ms(pct(rtt, 0.99))} / {ms(pct(rtt, 0.999))} / "
            f"{ms(max(rtt, default=math.nan))} | {m.stale}/{m.never} | "
            f"{percent(m.misses, m.hits + m.misses)} | "
            f"{statistics.median(m.rss) if m.rss else 0:.0f} | "
            f"{statistics.median(m.pss) if m.pss else 0:.0f} | {m.cpu:.0%} | {m.load:.1f} |"
        )
    notes = list(raw.notes)
    if raw.wrong:
        shown = "; ".join(
            f"{at:.1f} s {name} → {got} ({why})" for at, name, got, why in raw.wrong[:5]
        )
        notes.append(f"first wrong answers (time sent): {shown}")
    if raw.lost_outside:
        times = sorted(raw.lost_outside)
        notes.append(
            "probe queries lost outside outages, sent at (s): "
            + ", ".join(f"{t:.1f}" for t in times[:10])
            + (" ..." if len(times) > 10 else "")
        )
    for s in raw.segments:
        if s["lost"]:
            notes.append(
                f"dnsperf segment {s['start']:.0f}-{s['end']:.0f} s"
                f"{' (outage)' if s['inside'] else ''}: lost {s['lost']:.0f} of {s['sent']:.0f}"
            )
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def percent(part: float, whole: float) -> str:
    return "-" if math.isnan(part) or math.isnan(whole) else f"{part / max(1.0, whole):.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=0, help="kdns serve --workers N")
    parser.add_argument("--scale", type=float, default=1.0, help="cluster size, 1 = 10k/100k")
    parser.add_argument("--load", type=float, default=0.5, help="fraction of the maximum rate")
    parser.add_argument("--max-qps", type=float, default=0.0, help="skip the max-rate run")
    parser.add_argument("--rate", type=float, default=100.0, help="endpoint changes a second")
    parser.add_argument("--relist-every", type=float, default=120.0, help="seconds; 0: none")
    parser.add_argument("--outage-every", type=float, default=300.0, help="seconds; 0: none")
    parser.add_argument("--outage-seconds", type=float, default=20.0)
    parser.add_argument("--outage-at", type=float, help="the first outage (default: period/2)")
    parser.add_argument("--budget", type=float, default=1.0, help="propagation budget, s")
    parser.add_argument("--probe-rate", type=float, default=500.0, help="probe queries/s")
    parser.add_argument("--timeout", type=float, default=2.0, help="a query is lost after")
    parser.add_argument("--track", type=int, default=10, help="poll one change in N")
    parser.add_argument("--kdns-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--dump", type=Path, help="write the per-minute rows as JSON here")
    parser.add_argument("--log", type=Path, help="keep kdns's stderr in this file")
    parser.add_argument(
        "--append", type=Path, nargs="?", const=RESULTS, default=None, help="append the report"
    )
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    for tool in ("dnsperf", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"soak: {tool} is not installed")
    sys.setswitchinterval(0.0005)  # the conductor thread must not hold up the probe's reads
    base = Shape()
    shape = Shape(
        services=max(10, round(base.services * args.scale)),
        headless=max(1, round(base.headless * args.scale)),
        slices=max(1, round(base.slices * args.scale)),
        endpoints_per_slice=base.endpoints_per_slice,
        namespaces=max(1, round(base.namespaces * args.scale)),
    )
    setup = Setup(load_before=os.getloadavg(), shape=shape)
    raw = Raw()
    schedule = Schedule.build(args)
    print(f"$ {shlex.join(['bench/soak.py', *args.argv])}", flush=True)
    failed: BaseException | None = None
    try:
        run(args, setup, raw)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        failed = exc
        raw.notes.append(f"run failed: {exc}")
    setup.load_after = os.getloadavg()
    report = render(args, setup, raw, schedule)
    print()
    print(report)
    if args.append:
        with args.append.open("a") as f:
            f.write("\n" + report + "\n")
    if args.dump:
        args.dump.write_text(
            json.dumps(
                {
                    "minutes": [
                        {k: v for k, v in vars(m).items() if k != "rtts"} for m in raw.minutes
                    ],
                    "segments": raw.segments,
                    "wrong": raw.wrong,
                    "lost_outside": raw.lost_outside,
                    "lost_inside": raw.lost_inside,
                    "outages": [(a - raw.started, b - raw.started) for a, b in raw.outages],
                    "relists": [a - raw.started for a in raw.relists],
                    "propagation": raw.propagation,
                }
            )
        )
    if failed is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
