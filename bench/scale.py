"""Scale benchmark: kdns watching a 10,000-service, 100,000-endpoint cluster through the API double.

    .venv/bin/python bench/scale.py [--services 10000 --headless 1000 --slices 1000
        --endpoints-per-slice 100 --rate 200 --churn-seconds 20 --load 0.8] [--append [FILE]]

About 80 s in all; every wait has a deadline. Prints the results as a Markdown table, and appends
it to bench/RESULTS.md (or FILE) only with --append.

The cluster (`scale_apiserver.Shape`): 9,000 ClusterIP services without endpoints and 1,000
headless services with one EndpointSlice of 100 ready endpoints each (100,000 endpoints), spread
over 100 namespaces. The slices sit on headless services on purpose: there every endpoint change
changes DNS answers (a ClusterIP service's answers do not depend on its endpoints), so this is
the hard case. The API server double (`testkit/apiserver.py`: real HTTP, real list/watch,
resourceVersions, 410 after a compaction) runs in a process of its own (multiprocessing, spawn)
pinned to CPU 1 and is driven through pipes; kdns runs as `python -m kdns serve --kubeconfig ...
--zones EMPTY --listen 127.0.0.1:PORT --http 127.0.0.1:PORT --log-level warning` pinned to CPU 0
(free ports are picked here: kdns logs the ports it got only at info level); dnsperf and this
program (the probe) run on CPU 1.

Measured, in order:

1. initial sync: from starting kdns to /ready answering 200, and to the first correct DNS answer
   for the last ClusterIP service and the last endpoint created (kdns reads no query before it
   is synced). The double's request log splits it: process start to the first LIST (imports,
   client set-up), first to last LIST request, last LIST to ready (trimming, the store).
2. memory of the kdns process: VmRSS and VmHWM (/proc/PID/status) one second after the sync,
   again once the response cache is full (after the maximum-rate run), and at the end.
3. the maximum query rate (after one pass of the query file to fill the cache; dnsperf on CPU 1,
   names of this cluster: ClusterIP A and SRV, headless A and SRV, endpoint A, NXDOMAIN, PTR of
   services and endpoints, mixed case) and kdns's CPU per query; then dnsperf at 80% of it
   (-Q, niced so that the double and the probe on the same CPU come first) while the double
   changes 200 endpoints a second (half readiness flips, half an endpoint moving to a new address;
   each is a MODIFIED of a 100-endpoint slice) and, half-way, forces a relist of every kind
   (resourceVersion moved on, history compacted, watches cut: they come back to 410 Expired).
   The probe asks for the name each change makes appear or disappear
   (`<dashed-ip>.<svc>.<ns>.svc.cluster.local`) until the answer shows it (see `Probe`).
   Propagation is the time from the double writing the event to the watch stream to that answer;
   "applied" times from the double's write to its own state, which also covers the changes a
   relist's LIST delivers rather than an event. Between changes the probe times queries from the
   query file; its largest round trip around the relist says whether a relist stalls queries.
   Also reported: dnsperf's rate second by second, queries lost, datagrams the kernel dropped for
   a full socket buffer (/proc/net/snmp RcvbufErrors, all sockets), and the CPU each process used.

The probe polls at most every 0.5 ms, so propagation carries up to about 0.5 ms plus a round trip
of sampling delay. Everything on CPU 1 (dnsperf, the double, the probe) shares that core, so the
double's write-to-stream time and the probe's reading of answers can lag; those lags count
against kdns here.

For investigation: `--kdns-src DIR` runs the kdns package of a scratch copy (to try a change
without touching the work tree), `--sync-only` stops after the sync and memory, `--max-qps N`
skips the maximum-rate run, `--load 0` churns without dnsperf, `--rate 0` loads without churn,
`--no-relist`, `--profile FILE` records kdns with py-spy through the churn (collapsed stacks),
`--dump FILE` writes every sample as JSON, `--stock-double` uses the double's own deep copies,
`--kdns-args '...'` adds `kdns serve` arguments (`--no-http-changes`: no change journal).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import itertools
import json
import multiprocessing
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import scale_apiserver  # noqa: E402
from scale_apiserver import (  # noqa: E402
    ZONE,
    Shape,
    cluster_ip,
    dashed,
    endpoint_ip,
    reverse,
)

TICKS = os.sysconf("SC_CLK_TCK")
RESULTS = HERE / "RESULTS.md"
QTYPES = {"A": 1, "PTR": 12, "SRV": 33, "AAAA": 28}


# -- small tools ----------------------------------------------------------------------------------


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (kdns logs its ports only at info level)."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process; 0 once it is gone (a serving process that was restarted: its
    successor is not counted, and the run says so in its notes)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def serving_cpu(main_pid: int, workers: bool) -> float:
    """CPU time of the processes that answer: the main process alone, or with --workers its
    serving processes, those that exited (reaped: counted in the main process's children's
    time) and the ones alive."""
    if not workers:
        return cpu_seconds(main_pid)
    try:
        fields = Path(f"/proc/{main_pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    reaped = (int(fields[13]) + int(fields[14])) / TICKS
    return reaped + sum(cpu_seconds(p) for p in children(main_pid))


def keep_pinned(main_pid: int, cpu: int, stop: threading.Event) -> None:
    """Keep every serving process of `main_pid` on `cpu`, the ones forked later included."""
    pinned: set[int] = set()
    while not stop.wait(0.2):
        for pid in children(main_pid):
            if pid not in pinned:
                with contextlib.suppress(OSError):
                    pin_threads(pid, cpu)
                    pinned.add(pid)


def children(pid: int) -> list[int]:
    """The direct child processes of `pid` (the serving processes of --workers)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return sorted(out)


def pin_threads(pid: int, cpu: int) -> None:
    """Move every thread of `pid` (the watch threads too) to `cpu`."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {cpu})


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, and its proportional set size (Pss: each page divided by the
    number of processes sharing it, so that the Pss of processes add up), in MB."""
    out: dict[str, float] = {}
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # a serving process restarted meanwhile
        return out
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Pss":
                out["Pss"] = int(value.split()[0]) / 1024
            elif key in ("Private_Clean", "Private_Dirty"):
                out["Private"] = out.get("Private", 0.0) + int(value.split()[0]) / 1024
    return out


def udp_rcvbuf_errors() -> int:
    """The kernel's count of UDP datagrams dropped because a socket's receive buffer was full."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    udp = [line for line in lines if line and line[0] == "Udp:"]
    if len(udp) < 2 or "RcvbufErrors" not in udp[0]:
        return 0
    return int(udp[1][udp[0].index("RcvbufErrors")])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wire_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def question(name: str, qtype: str) -> bytes:
    """A query without its ID (two bytes are prepended when sent): RD, one question, no EDNS."""
    return (
        b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + wire_name(name)
        + QTYPES[qtype].to_bytes(2, "big")
        + b"\x00\x01"
    )


def answers_address(response: bytes | None, ip: str | None) -> bool:
    """True when `response` says what the change expects: `ip` as the one A record, or NXDOMAIN
    when `ip` is None."""
    if response is None or len(response) < 12:
        return False
    rcode = response[3] & 0x0F
    if ip is None:
        return rcode == 3
    ancount = int.from_bytes(response[6:8], "big")
    return rcode == 0 and ancount == 1 and response[-4:] == socket.inet_aton(ip)


# -- the data -------------------------------------------------------------------------------------


def query_lines(shape: Shape, count: int, seed: int = 1) -> list[str]:
    """dnsperf input over this cluster's names."""
    rng = random.Random(seed)
    lines = []
    eps = shape.endpoints_per_slice
    for _ in range(count):
        pick = rng.random()
        i = rng.randrange(max(1, shape.clusterip))
        h = rng.randrange(max(1, shape.headless))
        k = h + shape.headless * rng.randrange(max(1, shape.slices // max(1, shape.headless)))
        g = k * eps + rng.randrange(eps)
        ns, svc = shape.svc(i)
        hns, db = shape.db(h)
        if pick < 0.35:
            lines.append(f"{svc}.{ns}.svc.{ZONE} A")
        elif pick < 0.45:
            name = "".join(c.upper() if rng.random() < 0.5 else c for c in f"{svc}.{ns}.svc.{ZONE}")
            lines.append(f"{name} A")
        elif pick < 0.50:
            lines.append(f"_http._tcp.{svc}.{ns}.svc.{ZONE} SRV")
        elif pick < 0.60:
            lines.append(f"{db}.{hns}.svc.{ZONE} A")
        elif pick < 0.65:
            lines.append(f"_http._tcp.{db}.{hns}.svc.{ZONE} SRV")
        elif pick < 0.70:
            lines.append(f"{dashed(endpoint_ip(g))}.{db}.{hns}.svc.{ZONE} A")
        elif pick < 0.80:
            lines.append(f"missing-{i}.{ns}.svc.{ZONE} A")
        elif pick < 0.92:
            lines.append(f"{reverse(cluster_ip(i))} PTR")
        else:
            lines.append(f"{reverse(endpoint_ip(g))} PTR")
    return lines


# -- dnsperf --------------------------------------------------------------------------------------


def dnsperf_cmd(
    cpu: int, port: int, queries: Path, seconds: float, rate: float | None, nice: int = 0
) -> list[str]:
    """dnsperf pinned to `cpu`; `nice` lowers it below the double and the probe on that CPU.

    500 queries in flight at most, as bench/run.py. A burst of datagrams the kernel drops holds
    that many slots for the 2 s timeout, so under -Q such a burst shows as a dip in the rate
    (dnsperf misbehaves with many more in flight: it stops reporting and its latencies run away).
    """
    cmd = ["taskset", "-c", str(cpu)] + (["nice", "-n", str(nice)] if nice else [])
    cmd += ["dnsperf", "-s", "127.0.0.1", "-p", str(port)]
    cmd += ["-d", str(queries), "-l", str(seconds), "-c", "8", "-q", "500", "-t", "2"]
    if rate:
        cmd += ["-Q", str(int(rate))]
    return cmd


def dnsperf_stats(out: str) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for label, key in (
        ("Queries sent", "sent"),
        ("Queries completed", "completed"),
        ("Queries lost", "lost"),
        ("Queries per second", "qps"),
    ):
        m = re.search(rf"{label}:\s+([\d.]+)", out)
        stats[key] = float(m.group(1)) if m else 0.0
    series = [float(x) for x in re.findall(r"^\d+\.\d+: ([\d.]+)$", out, re.MULTILINE)]
    if series:
        stats["series"] = series
    m = re.search(r"Average Latency \(s\):\s+([\d.]+) \(min ([\d.]+), max ([\d.]+)\)", out)
    if m:
        stats["avg_latency"] = float(m.group(1))
        stats["max_latency"] = float(m.group(3))
    return stats


# -- results --------------------------------------------------------------------------------------


@dataclass
class Results:
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    populate: float = 0.0
    sync: dict[str, float] = field(default_factory=dict)
    mem: dict[str, dict[str, float]] = field(default_factory=dict)
    max_qps: float = 0.0
    cpu_us: float = 0.0
    load_qps_target: float = 0.0
    load: dict[str, Any] = field(default_factory=dict)
    kdns_busy: float = 0.0
    #: with --workers: CPU share of the main (watching) process during the churn
    watch_busy: float = 0.0
    workers: list[int] = field(default_factory=list)
    cpu1_busy: dict[str, float] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    max_lost: float = 0.0
    changes: int = 0
    churn_rate: float = 0.0
    late: int = 0
    written: list[float] = field(default_factory=list)
    applied: list[float] = field(default_factory=list)
    unseen: int = 0
    probe_rtt: list[float] = field(default_factory=list)
    probe_lost: int = 0
    probe_retransmits: int = 0
    probe_qps: float = 0.0
    relist: dict[str, float] = field(default_factory=dict)
    steady: list[float] = field(default_factory=list)  # propagation away from the relist
    notes: list[str] = field(default_factory=list)


class Double:
    """The API double in its own process (see `scale_apiserver.serve`)."""

    def __init__(self, shape: Shape, cpu: int, stock: bool) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.commands, child = ctx.Pipe()
        self.events, writer = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(
            target=scale_apiserver.serve,
            args=(child, writer, cpu, shape, stock),
            name="api-double",
            daemon=True,
        )
        self.proc.start()
        child.close()
        writer.close()

    def call(self, *cmd: Any, timeout: float = 30.0) -> Any:
        self.commands.send(cmd)
        if not self.commands.poll(timeout):
            raise RuntimeError(f"the API double did not answer {cmd[0]!r} within {timeout:g} s")
        return self.commands.recv()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call("stop", timeout=10)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def write_kubeconfig(path: Path, server: str) -> Path:
    from testkit.apiserver import write_kubeconfig as write

    return write(path, server)


# -- phases ---------------------------------------------------------------------------------------


def wait_synced(
    proc: subprocess.Popen[bytes],
    started: float,
    port: int,
    http_port: int,
    probes: list[tuple[bytes, str | None]],
    deadline: float,
) -> dict[str, float]:
    """Poll /ready and ask the probe names every 10 ms; times are seconds after `started`."""
    out: dict[str, float] = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    sent: dict[bytes, int] = {}  # query ID -> index in probes
    ident = 0
    answered: dict[int, float] = {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kdns exited with status {proc.returncode} before it synced")
        for index, (query, _) in enumerate(probes):
            if index in answered:
                continue
            ident = (ident + 1) & 0xFFFF
            head = ident.to_bytes(2, "big")
            sent[head] = index
            with contextlib.suppress(OSError):
                sock.send(head + query)
        while True:
            try:
                data = sock.recv(65535)
            except (BlockingIOError, ConnectionRefusedError):
                break
            index = sent.get(data[:2], -1)
            if index >= 0 and index not in answered and answers_address(data, probes[index][1]):
                answered[index] = time.monotonic() - started
        if "ready" not in out:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=0.5)
                conn.request("GET", "/ready")
                code = conn.getresponse().status
                conn.close()
                out.setdefault("http_up", time.monotonic() - started)
                if code == 200:
                    out["ready"] = time.monotonic() - started
            except OSError:
                pass
        if "ready" in out and len(answered) == len(probes):
            break
        time.sleep(0.01)
    sock.close()
    for index, at in answered.items():
        out[f"answer{index}"] = at
    return out


class Probe:
    """The UDP probe of the churn phase: polls the names of pending changes, times queries.

    Each round sends, back to back, a query for each of the oldest `batch` pending changes (or,
    with none pending, one query from the query file), then reads answers for up to 100 ms; the
    round trip of the round's first query is recorded (the others queue behind it). A
    query not answered by then is asked again next round under a new ID, but its first copy
    stays awaited for `timeout` seconds, so a stalled server shows as a long round trip and a
    datagram the kernel dropped does not hold up the polling. When a whole batch turns out to
    be visible (a relist applies hundreds of changes at once), the next batch is twice as
    large, so a backlog is swept in a few rounds instead of one name at a time.
    """

    SMALL = 16  # the batch size normally

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.timeout = timeout
        self.ident = random.randrange(65536)
        # ID -> (sent at, rv of the change or -1, expected address, record the round trip)
        self.inflight: dict[bytes, tuple[float, int, str | None, bool]] = {}
        self.rtts: list[tuple[float, float]] = []  # (sent at, round trip)
        self.lost: list[float] = []
        self.retransmits = 0
        self.sent = 0

    def send(self, query: bytes, rv: int, expect: str | None, record: bool) -> None:
        self.ident = (self.ident + 1) & 0xFFFF
        head = self.ident.to_bytes(2, "big")
        self.inflight[head] = (time.monotonic(), rv, expect, record)
        self.sent += 1
        with contextlib.suppress(OSError):
            self.sock.send(head + query)

    def collect(self, wait: float) -> list[tuple[int, float]]:
        """Read answers until every query of the round is answered or `wait` has passed;
        return (rv, answered at) of the changes found visible."""
        visible: list[tuple[int, float]] = []
        round_end = time.monotonic() + wait
        while True:
            now = time.monotonic()
            for head in [h for h, v in self.inflight.items() if now - v[0] > self.timeout]:
                self.lost.append(self.inflight.pop(head)[0])
            fresh = [v for v in self.inflight.values() if now - v[0] <= wait]
            if not fresh or now >= round_end:
                self.retransmits += len(fresh)
                return visible
            self.sock.settimeout(max(0.0001, round_end - now))
            try:
                data = self.sock.recv(65535)
            except (TimeoutError, ConnectionRefusedError):
                continue
            item = self.inflight.pop(data[:2], None)
            if item is None:
                continue
            at = time.monotonic()
            sent, rv, expect, record = item
            if record:
                self.rtts.append((sent, at - sent))
            if rv >= 0 and answers_address(data, expect):
                visible.append((rv, at))

    def close(self) -> None:
        self.sock.close()


def churn_phase(
    args: argparse.Namespace,
    double: Double,
    port: int,
    latency_queries: list[bytes],
    res: Results,
) -> dict[str, Any]:
    """Run the churn and probe until it is done; returns raw samples."""
    probe = Probe(port, args.probe_timeout)
    pending: OrderedDict[int, tuple[bytes, str | None, float]] = OrderedDict()
    seen: dict[int, tuple[float, float]] = {}  # rv -> (applied at, seen at)
    relist_at: float | None = None
    done_at: float | None = None
    started = time.monotonic()
    relist_after = None if args.no_relist else args.churn_seconds / 2
    double.call("churn", args.rate, args.churn_seconds, relist_after)
    hard_deadline = started + args.churn_seconds + 30
    last_round = 0.0
    gap_change, gap_latency = 0.0005, 0.001
    batch = Probe.SMALL
    turn = 0
    while True:
        now = time.monotonic()
        while double.events.poll():
            msg = double.events.recv()
            if msg[0] == "change":
                _, rv, qname, expect, at = msg
                pending[rv] = (question(qname, "A"), expect, at)
            elif msg[0] == "relist":
                relist_at = msg[1]
            elif msg[0] == "done":
                done_at = msg[1]
                res.changes, res.late = msg[2], msg[3]
                res.churn_rate = msg[2] / max(1e-9, msg[1] - started)
        if done_at is not None and (not pending or now > done_at + args.drain):
            break
        if now > hard_deadline:
            res.notes.append("churn phase hit its hard deadline")
            break
        if pending:
            wait = gap_change - (now - last_round)
            if wait > 0:
                time.sleep(wait)
            polled = list(itertools.islice(pending.items(), batch))
            for i, (rv, (query, expect, _)) in enumerate(polled):
                probe.send(query, rv, expect, i == 0)
        else:
            wait = gap_latency - (now - last_round)
            if wait > 0:
                double.events.poll(wait)
                continue
            probe.send(latency_queries[turn % len(latency_queries)], -1, None, True)
            turn += 1
            polled = []
        last_round = time.monotonic()
        visible = probe.collect(0.1)
        for rv, at in visible:
            change = pending.pop(rv, None)
            if change is not None:
                seen[rv] = (change[2], at)
        swept = polled and len(visible) >= len(polled)
        batch = min(1024, batch * 2) if swept else Probe.SMALL
    probe.close()
    res.unseen = len(pending)
    return {
        "seen": seen,
        "rtts": probe.rtts,
        "lost": probe.lost,
        "retransmits": probe.retransmits,
        "sent": probe.sent,
        "relist_at": relist_at,
        "started": started,
        "ended": time.monotonic(),
    }


def run(args: argparse.Namespace, res: Results) -> None:
    shape = Shape(
        services=args.services,
        headless=args.headless,
        slices=args.slices,
        endpoints_per_slice=args.endpoints_per_slice,
        namespaces=args.namespaces,
    )
    if not 0 < shape.headless <= shape.services:
        sys.exit("scale: --headless must be between 1 and --services")
    python = sys.executable
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {args.load_cpu})
    double = Double(shape, args.load_cpu, args.stock_double)
    kdns: subprocess.Popen[bytes] | None = None
    load: subprocess.Popen[str] | None = None
    with tempfile.TemporaryDirectory(prefix="kdns-scale-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        try:
            info = double.call("populate", timeout=300)
            res.populate = info["seconds"]
            print(
                f"double: {info['objects']:,} objects ({shape.services:,} services, "
                f"{shape.slices:,} slices, {shape.endpoints:,} endpoints) in "
                f"{info['seconds']:.1f} s at {info['url']}",
                flush=True,
            )
            kubeconfig = write_kubeconfig(work / "kubeconfig", info["url"])
            zones = work / "zones"
            zones.mkdir()
            queries = work / "queries.txt"
            lines = query_lines(shape, args.queries)
            queries.write_text("\n".join(lines) + "\n")
            port, http_port = free_port(), free_port()
            cmd = [python, "-m", "kdns", "serve", "--kubeconfig", str(kubeconfig)]
            cmd += ["--zones", str(zones), "--listen", f"127.0.0.1:{port}"]
            cmd += ["--http", f"127.0.0.1:{http_port}", "--log-level", "warning"]
            cmd += ["--startup-timeout", str(args.startup_timeout)]
            if args.workers:
                cmd += ["--workers", str(args.workers)]
            cmd += shlex.split(args.kdns_args)
            stderr = stack.enter_context((work / "kdns.log").open("wb"))
            since = time.monotonic()
            started = time.monotonic()
            kdns = subprocess.Popen(
                ["taskset", "-c", str(args.kdns_cpu), *cmd],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=args.kdns_src,
                env=dict(
                    os.environ,
                    PYTHONUNBUFFERED="1",
                    PYTHONPATH=os.pathsep.join(
                        p for p in (str(args.kdns_src), os.environ.get("PYTHONPATH")) if p
                    ),
                ),
            )
            last_svc = shape.svc(shape.clusterip - 1) if shape.clusterip else shape.db(0)
            last_ip = cluster_ip(shape.clusterip - 1) if shape.clusterip else None
            k = shape.slices - 1
            last_ep = endpoint_ip(k * shape.endpoints_per_slice + shape.endpoints_per_slice - 1)
            hns, db = shape.db(shape.slice_owner(k))
            probes = [
                (question(f"{last_svc[1]}.{last_svc[0]}.svc.{ZONE}", "A"), last_ip),
                (question(f"{dashed(last_ep)}.{db}.{hns}.svc.{ZONE}", "A"), last_ep),
            ]
            sync = wait_synced(
                kdns, started, port, http_port, probes, started + args.startup_timeout + 30
            )
            res.sync = sync
            reqs = double.call("requests", since)
            lists = [r for r in reqs if not r[1]]
            if lists:
                res.sync["first_list"] = min(r[3] for r in lists) - started
                res.sync["last_list"] = max(r[3] for r in lists) - started
                res.sync["list_requests"] = len(lists)
            print(
                "sync: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in res.sync.items() if k != "list_requests"),
                flush=True,
            )
            if "ready" not in sync:
                raise RuntimeError("kdns did not become ready")
            main_pid = kdns.pid
            if args.workers:
                # The serving processes stay on the kdns CPU; the watching one moves next to the
                # double, as it would sit on another core of a real node. Those it forks later
                # (--worker-renew) would start on its CPU: they are moved back as they come.
                res.workers = children(main_pid)
                pin_threads(main_pid, args.watch_cpu)
                stop_pinning = threading.Event()
                stack.callback(stop_pinning.set)
                threading.Thread(
                    target=keep_pinned, args=(main_pid, args.kdns_cpu, stop_pinning), daemon=True
                ).start()
            time.sleep(1.0)
            res.mem["after sync"] = memory(kdns.pid)
            for i, pid in enumerate(res.workers):
                res.mem[f"after sync, worker {i}"] = memory(pid)
            print(f"memory after sync: {res.mem['after sync']}", flush=True)
            if args.sync_only:
                return

            # -- maximum rate ---------------------------------------------------------------
            # One pass over the query file fills the response cache (a miss costs hundreds of
            # times a hit, so a partly warm cache would measure the warm-up, not the server).
            warm = [*dnsperf_cmd(args.load_cpu, port, queries, 60, None), "-n", "1"]
            subprocess.run(warm, capture_output=True, timeout=120)
            if args.max_qps:
                res.max_qps = args.max_qps
                res.notes.append(f"maximum rate given (--max-qps {args.max_qps:g}), not measured")
            else:
                before = serving_cpu(main_pid, bool(args.workers))
                drops = udp_rcvbuf_errors()
                out = subprocess.run(
                    dnsperf_cmd(args.load_cpu, port, queries, args.seconds, None),
                    capture_output=True,
                    text=True,
                    timeout=args.seconds + 60,
                ).stdout
                used = serving_cpu(main_pid, bool(args.workers)) - before
                res.drops["max rate"] = udp_rcvbuf_errors() - drops
                top = dnsperf_stats(out)
                res.max_lost = top["lost"]
                res.max_qps = top["qps"]
                res.cpu_us = used / top["completed"] * 1e6 if top["completed"] else 0.0
                print(
                    f"max rate: {res.max_qps:,.0f} q/s, kdns CPU {res.cpu_us:.1f} µs/query, "
                    f"lost {top['lost']:.0f}",
                    flush=True,
                )
            res.mem["cache full"] = memory(kdns.pid)
            for i, pid in enumerate(children(main_pid) if args.workers else []):
                res.mem[f"cache full, worker {i}"] = memory(pid)

            # -- churn at 80% -----------------------------------------------------------------
            res.load_qps_target = res.max_qps * args.load
            seconds = args.churn_seconds + args.drain + 3
            if res.load_qps_target >= 1:
                load = subprocess.Popen(
                    [
                        *dnsperf_cmd(
                            args.load_cpu, port, queries, seconds, res.load_qps_target, nice=19
                        ),
                        *("-S", "1"),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            time.sleep(1.5)
            others = {"double": double.proc.pid or 0, "probe": os.getpid()}
            if load is not None:
                others["dnsperf"] = load.pid
            cpu0, wall0 = serving_cpu(main_pid, bool(args.workers)), time.monotonic()
            watch0 = cpu_seconds(main_pid)
            drops = udp_rcvbuf_errors()
            cpu_before = {name: cpu_seconds(pid) for name, pid in others.items()}
            rng = random.Random(2)
            latency_queries = [
                question(*line.rsplit(" ", 1)) for line in rng.sample(lines, min(2000, len(lines)))
            ]
            profiler = None
            if args.profile:
                # py-spy (pip install py-spy) sampling kdns through the churn, as collapsed stacks.
                profiler = subprocess.Popen(
                    [
                        *(args.py_spy, "record", "-p", str(kdns.pid), "-r", "250", "-f", "raw"),
                        *("-d", str(int(args.churn_seconds)), "-o", str(args.profile)),
                        "--threads",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            raw = churn_phase(args, double, port, latency_queries, res)
            if profiler is not None:
                profiler.wait(30)
            wall = time.monotonic() - wall0
            res.drops["churn"] = udp_rcvbuf_errors() - drops
            res.kdns_busy = (serving_cpu(main_pid, bool(args.workers)) - cpu0) / wall
            if args.workers:
                res.watch_busy = (cpu_seconds(main_pid) - watch0) / wall
            for name, pid in others.items():
                with contextlib.suppress(OSError):
                    res.cpu1_busy[name] = (cpu_seconds(pid) - cpu_before[name]) / wall
            if load is not None:
                out, _ = load.communicate(timeout=seconds + 60)
                load = None
                res.load = dnsperf_stats(out)
            res.mem["end"] = memory(kdns.pid)
            now = children(main_pid) if args.workers else []
            for i, pid in enumerate(now):
                res.mem[f"end, worker {i}"] = memory(pid)
            if args.workers and now != res.workers:
                res.notes.append(
                    f"serving processes were forked again during the run: {res.workers} -> {now}"
                )
            if args.workers and args.settle:
                # Serving processes are forked again once writes calm down (--worker-renew).
                time.sleep(args.settle)
                res.mem[f"settled ({args.settle:g} s later)"] = memory(kdns.pid)
                for i, pid in enumerate(children(main_pid)):
                    res.mem[f"settled ({args.settle:g} s later), worker {i}"] = memory(pid)
            summarise(raw, double, res, args.dump)
        finally:
            if load is not None:
                load.kill()
                load.wait(5)
            if kdns is not None:
                if kdns.poll() is None:
                    kdns.send_signal(signal.SIGINT)
                    try:
                        kdns.wait(10)
                    except subprocess.TimeoutExpired:
                        kdns.kill()
                        kdns.wait(5)
                log = (work / "kdns.log").read_text(errors="replace").strip()
                if args.kdns_log:
                    Path(args.kdns_log).write_text(log + "\n")
                if log:
                    res.notes.append(
                        "kdns stderr (last lines): " + " | ".join(log.splitlines()[-5:])
                    )
            double.stop()


def summarise(raw: dict[str, Any], double: Double, res: Results, dump: Path | None = None) -> None:
    seen: dict[int, tuple[float, float]] = raw["seen"]
    written = double.call("written", list(seen), timeout=30)
    if dump is not None:
        # Every sample, in time.monotonic() seconds (one clock for all processes), to plot or
        # to find what happened when.
        dump.write_text(
            json.dumps(
                {
                    "started": raw["started"],
                    "relist_at": raw["relist_at"],
                    "changes": [[rv, a, written.get(rv), s] for rv, (a, s) in seen.items()],
                    "probe": raw["rtts"],
                    "requests": double.call("requests", raw["started"]),
                }
            )
        )
    for rv, (applied, at) in seen.items():
        res.applied.append(at - applied)
        w = written.get(rv)
        if w is not None:
            res.written.append(at - w)
    rtts: list[tuple[float, float]] = raw["rtts"]
    res.probe_rtt = [r for _, r in rtts]
    res.probe_lost = len(raw["lost"])
    res.probe_retransmits = raw["retransmits"]
    res.probe_qps = raw["sent"] / max(1e-9, raw["ended"] - raw["started"])
    relist_at = raw["relist_at"]
    if relist_at is not None:
        reqs = double.call("requests", relist_at)
        lists = [r for r in reqs if not r[1] and r[2] == 200]
        end = max((r[3] for r in lists), default=relist_at) + 3.0
        res.relist["lists"] = len(lists)
        res.relist["listed_after"] = (max(r[3] for r in lists) - relist_at) if lists else -1
        inside = [r for s, r in rtts if relist_at - 0.5 <= s <= end]
        outside = [r for s, r in rtts if not relist_at - 0.5 <= s <= end]
        res.relist["max_inside"] = max(inside, default=0.0)
        res.relist["p99_inside"] = pct(inside, 0.99)
        res.relist["max_outside"] = max(outside, default=0.0)
        res.relist["window"] = end - relist_at
        late = [at - applied for applied, at in seen.values() if relist_at - 0.5 <= applied <= end]
        res.relist["propagation_max_inside"] = max(late, default=0.0)
        steady = [
            at - written[rv]
            for rv, (applied, at) in seen.items()
            if written.get(rv) is not None and not relist_at - 0.5 <= applied <= end
        ]
        res.steady = steady


# -- report ---------------------------------------------------------------------------------------


def render(args: argparse.Namespace, res: Results) -> str:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def ms(v: float) -> str:
        return f"{v * 1000:.1f} ms"

    def ok(good: bool) -> str:
        return "yes" if good else "**no**"

    rows: list[tuple[str, str, str, str]] = []
    s = res.sync
    if "ready" in s:
        rows.append(
            (
                "initial sync: start → /ready 200",
                f"{s['ready']:.2f} s",
                "< 10 s",
                ok(s["ready"] < 10),
            )
        )
    for i, what in enumerate(("last ClusterIP service", "last endpoint")):
        if f"answer{i}" in s:
            rows.append(
                (
                    f"initial sync: start → answer for {what}",
                    f"{s[f'answer{i}']:.2f} s",
                    "< 10 s",
                    ok(s[f"answer{i}"] < 10),
                )
            )
    if "first_list" in s:
        rows.append(
            ("  of which start → first LIST (imports, client)", f"{s['first_list']:.2f} s", "", "")
        )
        rows.append(
            (
                "  of which first → last LIST request",
                f"{s['last_list'] - s['first_list']:.2f} s",
                "",
                "",
            )
        )
        if "ready" in s:
            rows.append(
                ("  of which last LIST → ready", f"{s['ready'] - s['last_list']:.2f} s", "", "")
            )
    for when, mem in res.mem.items():
        rss, hwm, pss = mem.get("VmRSS", 0.0), mem.get("VmHWM", 0.0), mem.get("Pss", 0.0)
        private = mem.get("Private", 0.0)
        alone = when == "after sync" and not args.workers
        target, good = ("≤ 110 MB", ok(rss <= 110)) if alone else ("", "")
        rows.append(
            (
                f"memory {when}: VmRSS (VmHWM), Pss, private",
                f"{rss:.0f} MB ({hwm:.0f} MB), {pss:.0f} MB, {private:.0f} MB",
                target,
                good,
            )
        )
    if args.workers:
        # Every process of the server, by phase: the main process's row has no comma.
        limit = 2 * args.one_process_rss
        settled = f"settled ({args.settle:g} s later)"
        for phase in ("after sync", "cache full", "end", settled):
            rows_of = [m for w, m in res.mem.items() if w == phase or w.startswith(f"{phase},")]
            if rows_of:
                total = sum(m.get("Pss", 0.0) for m in rows_of)
                rows.append(
                    (
                        f"total Pss, {phase}: main + {len(rows_of) - 1} serving processes",
                        f"{total:.0f} MB",
                        f"≤ 2 x {args.one_process_rss:g} MB",
                        ok(total <= limit),
                    )
                )
    rows.append(("max rate (dnsperf, 1 core each)", f"{res.max_qps:,.0f} q/s", "", ""))
    if res.cpu_us:
        rows.append(("kdns CPU per query at max rate", f"{res.cpu_us:.1f} µs", "", ""))
        rows.append(
            (
                "queries lost at max rate (dnsperf; kernel UDP buffer drops)",
                f"{res.max_lost:.0f}; {res.drops.get('max rate', 0)}",
                "",
                "",
            )
        )
    ld = res.load
    if ld:
        rows.append(
            (
                "load during churn (dnsperf -Q)",
                f"{ld.get('qps', 0):,.0f} q/s of {res.load_qps_target:,.0f} asked",
                f"{args.load:.0%} of max",
                "",
            )
        )
        rows.append(
            (
                "queries lost during churn (dnsperf; kernel UDP buffer drops)",
                f"{ld.get('lost', 0):.0f} of {ld.get('sent', 0):,.0f}; {res.drops.get('churn', 0)}",
                "0",
                ok(ld.get("lost", 1) == 0),
            )
        )
        if "max_latency" in ld:
            rows.append(
                (
                    "dnsperf latency during churn: avg (max)",
                    f"{ms(ld['avg_latency'])} ({ms(ld['max_latency'])})",
                    "",
                    "",
                )
            )
    if ld.get("series"):
        series = " ".join(f"{q / 1000:.0f}" for q in ld["series"])
        rows.append(("dnsperf q/s each second during churn (thousands)", series, "", ""))
    busy = "kdns serving processes' CPU" if args.workers else "kdns CPU busy"
    rows.append((f"{busy} during churn", f"{res.kdns_busy * 100:.0f}%", "", ""))
    if args.workers:
        rows.append(("kdns main (watching) process CPU", f"{res.watch_busy * 100:.0f}%", "", ""))
    if res.cpu1_busy:
        rows.append(
            (
                f"CPU {args.load_cpu} busy during churn",
                ", ".join(f"{name} {v * 100:.0f}%" for name, v in res.cpu1_busy.items()),
                "",
                "",
            )
        )
    rows.append(
        (
            "endpoint changes applied",
            f"{res.changes} at {res.churn_rate:.0f}/s ({res.late} late > 50 ms)",
            f"{args.rate:g}/s",
            "",
        )
    )
    for name, values in (("written → answered", res.written), ("applied → answered", res.applied)):
        if values:
            rows.append(
                (
                    f"propagation {name}: p50 / p99 / max",
                    f"{ms(pct(values, 0.5))} / {ms(pct(values, 0.99))} / {ms(max(values))}"
                    f" (n={len(values)})",
                    "p99 < 100 ms" if name.startswith("written") else "",
                    ok(pct(values, 0.99) < 0.1) if name.startswith("written") else "",
                )
            )
    if res.steady:
        v = res.steady
        rows.append(
            (
                "  of which changes away from the relist: p50 / p99 / max",
                f"{ms(pct(v, 0.5))} / {ms(pct(v, 0.99))} / {ms(max(v))} (n={len(v)})",
                "",
                "",
            )
        )
    rows.append(("changes never seen answered", str(res.unseen), "0", ok(res.unseen == 0)))
    if res.probe_rtt:
        rows.append(
            (
                "probe latency during churn: p50 / p99 / max",
                f"{ms(pct(res.probe_rtt, 0.5))} / {ms(pct(res.probe_rtt, 0.99))} / "
                f"{ms(max(res.probe_rtt))} ({res.probe_qps:,.0f} q/s, "
                f"{res.probe_retransmits} resent after 100 ms, {res.probe_lost} lost)",
                "",
                "",
            )
        )
    r = res.relist
    if r:
        rows.append(
            (
                "forced relist: LISTs, last LIST after trigger",
                f"{r['lists']:.0f}, {r['listed_after']:.2f} s",
                "",
                "",
            )
        )
        rows.append(
            (
                "probe latency around the relist: p99 / max",
                f"{ms(r['p99_inside'])} / {ms(r['max_inside'])} (elsewhere max "
                f"{ms(r['max_outside'])})",
                "no stall",
                "",
            )
        )
        rows.append(
            (
                "propagation max for changes around the relist",
                ms(r["propagation_max_inside"]),
                "",
                "",
            )
        )
    lines = [
        f"## {datetime.datetime.now().isoformat(timespec='seconds')} — scale — {cpu}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "",
        f"Command: `{command(args)}`",
        "",
        f"Cluster: {args.services:,} services ({args.services - args.headless:,} ClusterIP, "
        f"{args.headless:,} headless), {args.slices:,} EndpointSlices of "
        f"{args.endpoints_per_slice} endpoints ({args.slices * args.endpoints_per_slice:,} "
        f"endpoints), {args.namespaces} namespaces; API double in its own process"
        f"{' (stock copying)' if args.stock_double else ''}. "
        + (
            f"kdns --workers {args.workers}: serving processes on CPU {args.kdns_cpu}, the main "
            f"(watching) process moved to CPU {args.watch_cpu} after the sync; "
            if args.workers
            else f"kdns on CPU {args.kdns_cpu}; "
        )
        + f"double, dnsperf and probe on CPU {args.load_cpu}. Load average before "
        f"{' '.join(f'{x:.2f}' for x in res.load_before)}, after "
        f"{' '.join(f'{x:.2f}' for x in res.load_after)}.",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    if res.notes:
        lines.append("")
        lines += [f"- {note}" for note in res.notes]
    return "\n".join(lines)


def command(args: argparse.Namespace) -> str:
    return shlex.join([".venv/bin/python", "bench/scale.py", *args.argv])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--headless", type=int, default=1000, help="of the services, headless")
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--endpoints-per-slice", type=int, default=100)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0, help="endpoint changes a second")
    parser.add_argument("--churn-seconds", type=float, default=20.0)
    parser.add_argument("--sync-only", action="store_true", help="stop after sync and memory")
    parser.add_argument("--no-relist", action="store_true", help="no forced relist mid-churn")
    parser.add_argument("--load", type=float, default=0.8, help="fraction of max rate in churn")
    parser.add_argument("--seconds", type=float, default=10.0, help="max-rate dnsperf run")
    parser.add_argument("--profile", type=Path, help="py-spy kdns during the churn, to FILE")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy binary")
    parser.add_argument("--dump", type=Path, help="write the raw churn samples as JSON here")
    parser.add_argument("--max-qps", type=float, default=0.0, help="skip the max-rate run")
    parser.add_argument("--queries", type=int, default=20000, help="lines in the query file")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    parser.add_argument("--drain", type=float, default=5.0, help="wait for late changes")
    parser.add_argument("--kdns-log", help="keep kdns's log (stderr) in this file")
    parser.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="with --workers: measure memory again this long after the churn (0: not)",
    )
    parser.add_argument("--probe-timeout", type=float, default=2.0, help="a probe query is lost")
    parser.add_argument("--kdns-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="kdns serve --workers N")
    parser.add_argument(
        "--one-process-rss",
        type=float,
        default=110.0,
        help="with --workers: the RSS (MB) of kdns as one process, for the total Pss target",
    )
    parser.add_argument("--watch-cpu", type=int, default=1, help="with --workers: main's CPU")
    parser.add_argument("--stock-double", action="store_true", help="the double's own copying")
    parser.add_argument(
        "--kdns-args", default="", help="more `kdns serve` arguments, e.g. '--no-http-changes'"
    )
    parser.add_argument(
        "--kdns-src",
        type=Path,
        default=REPO,
        help="directory holding the kdns package to run (a scratch copy, to try a change)",
    )
    parser.add_argument(
        "--append",
        type=Path,
        nargs="?",
        const=RESULTS,
        default=None,
        help=f"append the results to this file (default {RESULTS.relative_to(REPO)})",
    )
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    for tool in ("dnsperf", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"scale: {tool} is not installed (apt-get install dnsperf util-linux)")
    res = Results(load_before=os.getloadavg())
    print(f"$ {command(args)}", flush=True)
    print(f"load average: {' '.join(f'{x:.2f}' for x in res.load_before)}", flush=True)
    failed: BaseException | None = None
    try:
        run(args, res)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        failed = exc
        res.notes.append(f"run failed: {exc}")
    res.load_after = os.getloadavg()
    report = render(args, res)
    print()
    print(report)
    if args.append:
        with args.append.open("a") as f:
            f.write("\n" + report + "\n")
    if failed is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
