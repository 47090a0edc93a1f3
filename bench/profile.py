"""Where a DNS server's CPU goes, per answered query: kdns against nsd, same data, same load.

    .venv/bin/python bench/profile.py [--seconds 10] [--profile-seconds 4] [--services 1000]
                                      [--rate QPS] [--skip kdns|nsd] [--wait-idle 300]
                                      [--keep DIR]

Run it from the repository's root (the kdns it measures is the one `python -m kdns` finds
there), as root, on an otherwise idle machine (it waits up to `--wait-idle` seconds for both CPUs
to be idle). It needs taskset, dig, dnsperf, perf (Debian: `apt-get install linux-perf`; software
events are enough, no PMU is needed) and nsd for the C server. The data are bench/run.py's:
bench/dataset.py's manifests for kdns, `kdns records` of them as nsd zone files.

Each server runs pinned to CPU 0, dnsperf to CPU 1 at its maximum rate (bench/run.py's settings;
`--rate` asks for a fixed rate instead), in three separate dnsperf runs, so that no tool skews the
figures of another:

1. plain, `--seconds` long: user and system CPU of the server's processes from /proc/PID/stat,
   divided by the queries answered (the figure bench/run.py reports), and how busy CPU 0 was
   besides the server (another benchmark on the machine shows there);
2. `perf stat -e 'syscalls:sys_enter_*' -e sched:sched_waking` on the server's threads: system
   calls per query, and how often the server wakes another task (dnsperf waiting for answers:
   on loopback the sender's system call delivers the packet into the client's socket and
   wakes the client);
3. `perf record -e cpu-clock -F 1000 --call-graph dwarf`: every sample is put in one bucket by
   its stack: kernel time by system call (a send on loopback also runs the delivery into the
   client's socket, in softirq, and that part is shown apart), user time by what runs it
   (uvloop/libuv and the libpython calls it makes; the interpreter running Python code; nsd);
   shares of samples, turned into µs per query with run 1's total; plus the top DSOs and symbols
   by self time, and the event loop's samples by uvloop/libuv function.

Runs 2 and 3 last `--profile-seconds` each. Then kdns's Python per query is split in parts,
timed in this process on CPU 0 with no server running: the objects `kdns serve` builds from the
same zones, a `UdpProtocol` whose transport sends nothing, fed the query file's packets (as
dnsperf sends them) over and over. (py-spy was tried for this and dropped: on this VM, with
3.11, its samples land next to system calls and miss the short functions that run between.)

`--keep DIR` keeps the perf data and the servers' logs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402
from dataset import Shape, query_lines, write_manifests  # noqa: E402

KERNEL = "[kernel.kallsyms]"
PERF_HZ = 1000
WAKEUPS = "(tasks woken)"


@dataclass
class Profile:
    name: str
    qps: float = 0.0
    queries: int = 0
    user_us: float = 0.0  # per answered query
    sys_us: float = 0.0
    cpu0_others: float = 0.0  # CPU 0 busy with anything but the server, share of the run
    syscalls: Counter[str] = field(default_factory=Counter)  # per query
    wakeups: float = 0.0  # tasks woken by the server, per query
    buckets: Counter[str] = field(default_factory=Counter)  # perf samples
    dsos: Counter[str] = field(default_factory=Counter)
    symbols: Counter[str] = field(default_factory=Counter)
    loop_parts: Counter[str] = field(default_factory=Counter)  # event loop samples by function
    python: list[tuple[str, float]] = field(default_factory=list)  # µs per query, in-process
    notes: list[str] = field(default_factory=list)

    @property
    def total_us(self) -> float:
        return self.user_us + self.sys_us


# -- load and measures ---------------------------------------------------------------------


def cpu_busy() -> dict[str, tuple[int, int]]:
    """Per CPU (`cpu0`, `cpu1`, ...): (busy ticks, all ticks) since boot, from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if re.fullmatch(r"cpu\d+", name):
            values = [int(t) for t in ticks[:8]]
            idle = values[3] + values[4]  # idle, iowait
            out[name] = (sum(values) - idle, sum(values))
    return out


def busy_share(before: dict[str, tuple[int, int]], cpu: str) -> float:
    after = cpu_busy()
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return busy / total if total else 0.0


def wait_quiet(limit: float) -> bool:
    """Wait (up to `limit` seconds) until both CPUs are below 10% busy for a second."""
    deadline = time.monotonic() + limit
    while True:
        before = cpu_busy()
        time.sleep(1.0)
        if busy_share(before, "cpu0") < 0.1 and busy_share(before, "cpu1") < 0.1:
            return True
        if time.monotonic() > deadline:
            return False
        print("profile: waiting for the machine to be idle", file=sys.stderr)


def dnsperf_run(
    port: int, queries: Path, seconds: float, rate: float | None = None
) -> tuple[int, float]:
    """One dnsperf run (at maximum rate by default): queries completed, queries per second."""
    out = run.dnsperf(port, queries, seconds, rate)
    return int(run.stat(out, "Queries completed")), run.stat(out, "Queries per second")


@contextmanager
def attached(cmd: list[str], log: Path) -> Iterator[None]:
    """A tool attached to the server for the duration of the block, stopped with SIGINT."""
    with log.open("wb") as fh:
        tool = subprocess.Popen(["taskset", "-c", "1", *cmd], stdout=fh, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # perf opens its events (700 tracepoints take a moment)
    try:
        yield
    finally:
        tool.send_signal(signal.SIGINT)
        try:
            tool.wait(60)
        except subprocess.TimeoutExpired:
            tool.kill()
            tool.wait()


def count_syscalls(
    pids: list[int], port: int, queries: Path, seconds: float, rate: float | None, work: Path
) -> tuple[Counter[str], int]:
    """System calls of the server's threads by name (and `WAKEUPS`), and the queries answered
    meanwhile."""
    log = work / "syscalls.txt"
    pid_list = ",".join(map(str, pids))
    cmd = ["perf", "stat", "-x", ",", "-e", "syscalls:sys_enter_*", "-e", "sched:sched_waking"]
    cmd += ["-p", pid_list]
    with attached(cmd, log):
        completed, _ = dnsperf_run(port, queries, seconds, rate)
    counts: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit() and "sys_enter_" in fields[2]:
            counts[fields[2].split("sys_enter_", 1)[1]] += int(fields[0])
        elif len(fields) > 2 and fields[0].isdigit() and fields[2] == "sched:sched_waking":
            counts[WAKEUPS] += int(fields[0])
    return counts, completed


# -- perf samples ----------------------------------------------------------------------------

Frame = tuple[str, str]  # symbol, DSO (basename, or [kernel.kallsyms])


def perf_samples(data: Path) -> Iterator[tuple[str, int, list[Frame]]]:
    """(command, thread id, frames leaf first) of each sample of a perf.data file."""
    cmd = ["perf", "script", "-i", str(data), "--no-inline", "-F", "comm,tid,ip,sym,dso"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    head: tuple[str, int] | None = None
    frames: list[Frame] = []
    frame = re.compile(r"^\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)$")
    for line in proc.stdout:
        if not line.strip():
            continue
        if not line[0].isspace():
            if head is not None:
                yield head[0], head[1], frames
            parts = line.split()
            head, frames = (parts[0], int(parts[1]) if parts[1].isdigit() else 0), []
            continue
        m = frame.match(line.rstrip())
        if m:
            sym, dso = m.group(1), m.group(2)
            frames.append((sym, dso if dso == KERNEL else os.path.basename(dso)))
    if head is not None:
        yield head[0], head[1], frames
    proc.wait()


_SYSCALL = re.compile(r"^_*(?:x64_)?sys_(\w+)$")


def kernel_bucket(syms: list[str]) -> str:
    """What a kernel sample (its kernel frames, leaf first) was doing."""
    name = ""
    for sym in reversed(syms):  # nearest to the system call entry first
        m = _SYSCALL.match(sym)
        if m and sym != "x64_sys_call":  # the dispatcher, not a system call
            name = m.group(1)
            break
    if not name and "do_epoll_wait" in syms:
        name = "epoll_wait"
    if not name:
        return "kernel: interrupts, softirq, faults, scheduler"
    if "send" in name:
        if "net_rx_action" in syms or "process_backlog" in syms:
            return f"kernel: {name}: loopback delivery into the client's socket (softirq)"
        return f"kernel: {name}: UDP/IP output"
    if "recv" in name:
        return f"kernel: {name}: receive"
    return f"kernel: {name}"


def user_bucket(frames: list[Frame]) -> str:
    """What a user-space sample was doing: the nearest caller that says it."""
    for sym, dso in frames:
        if "uvloop" in dso or dso.startswith("loop.cpython"):
            return "user: event loop (uvloop/libuv, incl. the libpython calls it makes)"
        if sym.startswith("_PyEval_EvalFrame"):
            return "user: Python code (interpreter running kdns, and C it calls)"
    for _, dso in frames:
        if not dso.startswith(("libc.so", "[")):
            return f"user: {dso}"
    return f"user: {frames[0][1] if frames else '?'}"


def loop_function(frames: list[Frame]) -> str:
    """The innermost uvloop/libuv function of a sample (Cython's name mangling taken off)."""
    for sym, dso in frames:
        if "uvloop" in dso or dso.startswith("loop.cpython"):
            return re.sub(r"^__pyx_[a-z]+_6uvloop_4loop_\d*", "", sym)
    return "?"


def classify(profile: Profile, data: Path, main_tids: set[int]) -> None:
    for _comm, tid, frames in perf_samples(data):
        if not frames:
            continue
        sym, dso = frames[0]
        profile.dsos[dso] += 1
        profile.symbols[f"{sym} ({dso})"] += 1
        if main_tids and tid not in main_tids:
            profile.buckets["other threads (zone-file watcher)"] += 1
        elif dso == KERNEL:
            profile.buckets[kernel_bucket([s for s, d in frames if d == KERNEL])] += 1
        else:
            user = [f for f in frames if f[1] != KERNEL]
            bucket = user_bucket(user)
            profile.buckets[bucket] += 1
            if bucket.startswith("user: event loop"):
                profile.loop_parts[loop_function(user)] += 1


def time_python(zones: Path, lines: list[str], passes: int = 10) -> list[tuple[str, float]]:
    """kdns's Python per query, by part, timed in this process (see the module's docstring)."""
    sys.path.insert(0, os.getcwd())  # the kdns that `python -m kdns` runs here
    import asyncio

    import dns.message

    from kdns.config import Config
    from kdns.serve.server import DnsServer
    from kdns.serve.transport import UdpProtocol

    class Discard(asyncio.DatagramTransport):
        def sendto(self, data: Any, addr: Any = None) -> None:
            pass

    questions = [line.split() for line in lines]
    wires = [dns.message.make_query(name, qtype).to_wire() for name, qtype in questions]
    addr = ("127.0.0.1", 40000)

    def best(step: Callable[[bytes], object]) -> float:
        for wire in wires:  # the first pass fills the caches
            step(wire)
        out = float("inf")
        for _ in range(passes):
            t0 = time.perf_counter()
            for wire in wires:
                step(wire)
            out = min(out, (time.perf_counter() - t0) / len(wires))
        return out * 1e6

    async def measure() -> list[tuple[str, float]]:
        server = DnsServer(Config(zones=[zones], listen=[("127.0.0.1", 0)]))
        await server.startup()
        try:
            proto = UdpProtocol(server.transports)
            proto.connection_made(Discard())
            respond, record, clock = (
                server.responder.respond,
                server.stats.record,
                time.perf_counter,
            )
            empty = best(lambda w: None)
            total = best(lambda w: proto.datagram_received(w, addr)) - empty
            answer = best(lambda w: respond(w, udp=True)) - empty
            counts = server.stats.counter("udp", 4)
            count = best(lambda w: record(counts, 1, clock())) - empty
        finally:
            await server.shutdown()
        return [
            ("UdpProtocol.datagram_received, all of it", total),
            ("  of which Responder.respond (the answer, from the caches)", answer),
            ("  of which QueryCounters.record (and the clock reading it is given)", count),
            (
                "  of which the rest (clock, checks, the calls, sendto's call)",
                total - answer - count,
            ),
        ]

    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        return asyncio.run(measure())
    finally:
        os.sched_setaffinity(0, cpus)


# -- one server ------------------------------------------------------------------------------


def profile_server(
    name: str,
    cmd: list[str],
    port: int,
    queries: Path,
    work: Path,
    args: argparse.Namespace,
    *,
    python: bool,
) -> Profile:
    prof = Profile(name)
    if not wait_quiet(args.wait_idle):
        prof.notes.append(
            f"the machine was still busy after {args.wait_idle:g} s: figures disturbed"
        )
    log = work / f"{name}.log"
    with log.open("ab") as fh:
        proc = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=fh, stderr=subprocess.STDOUT)
    try:
        run.wait_answering(port)
        dnsperf_run(port, queries, 2)  # warm caches
        # 1. plain: CPU per query, user and system
        idle = cpu_busy()
        u0, s0 = run.cpu_times(proc.pid)
        completed, prof.qps = dnsperf_run(port, queries, args.seconds, args.rate)
        u1, s1 = run.cpu_times(proc.pid)
        cpu0 = busy_share(idle, "cpu0")
        prof.queries = completed
        if completed:
            prof.user_us = (u1 - u0) / completed * 1e6
            prof.sys_us = (s1 - s0) / completed * 1e6
        wall = args.seconds
        prof.cpu0_others = max(0.0, cpu0 - (u1 - u0 + s1 - s0) / wall)
        pids = run.process_tree(proc.pid)
        # Threads that answer: kdns's main thread; nsd's processes are all counted as one.
        main_tids = {proc.pid} if python else set()
        # 2. system calls
        counts, completed = count_syscalls(
            pids, port, queries, args.profile_seconds, args.rate, work
        )
        if completed:
            prof.wakeups = counts.pop(WAKEUPS, 0) / completed
            prof.syscalls = Counter({k: v / completed for k, v in counts.items()})
        # 3. perf record
        data = work / f"{name}.perf.data"
        record = ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(PERF_HZ)]
        record += ["--call-graph", "dwarf,16384", "-p", ",".join(map(str, pids)), "-o", str(data)]
        with attached(record, work / f"{name}.perf-record.log"):
            dnsperf_run(port, queries, args.profile_seconds, args.rate)
        classify(prof, data, main_tids)
    finally:
        run.stop(proc)
    return prof


# -- report ----------------------------------------------------------------------------------


def top(counter: Counter[str], n: int) -> list[tuple[str, float]]:
    total = sum(counter.values())
    return [(k, v / total) for k, v in counter.most_common(n)] if total else []


def render(profiles: list[Profile], args: argparse.Namespace, load: tuple[str, str]) -> str:
    lines = [
        f"Command: `{' '.join(['python bench/profile.py', *sys.argv[1:]])}` (--seconds "
        f"{args.seconds:g}, --profile-seconds {args.profile_seconds:g}, --services "
        f"{args.services}, --rate {args.rate or 'maximum'}); "
        f"load average before: {load[0]}, after: {load[1]}",
        "",
        "| server | q/s | CPU µs/query | user µs | sys µs | syscalls/query "
        "| main syscalls per query | tasks woken/query | CPU 0 busy besides the server |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in profiles:
        calls = ", ".join(f"{k} {v:.3f}" for k, v in p.syscalls.most_common(4))
        lines.append(
            f"| {p.name} | {p.qps:,.0f} | {p.total_us:.2f} | {p.user_us:.2f} | {p.sys_us:.2f} | "
            f"{sum(p.syscalls.values()):.3f} | {calls} | {p.wakeups:.3f} | {p.cpu0_others:.0%} |"
        )
    lines += [
        "",
        "Where the CPU goes (perf cpu-clock samples with dwarf call stacks; µs/query = share "
        "times the CPU µs/query above):",
        "",
    ]
    buckets = sorted({b for p in profiles for b in p.buckets})
    buckets.sort(key=lambda b: (not b.startswith("kernel"), b))
    header = " | ".join(f"{p.name} share | {p.name} µs/query" for p in profiles)
    lines += [f"| bucket | {header} |", "|---" * (1 + 2 * len(profiles)) + "|"]
    for b in buckets:
        cells = []
        for p in profiles:
            total = sum(p.buckets.values())
            share = p.buckets[b] / total if total else 0.0
            cells += [f"{share:.1%}" if p.buckets[b] else "", f"{share * p.total_us:.2f}"]
        lines.append(f"| {b} | {' | '.join(cells)} |")
    cells = []
    for p in profiles:
        cells += [f"{sum(p.buckets.values())} samples", f"{p.total_us:.2f}"]
    lines.append(f"| total | {' | '.join(cells)} |")
    for p in profiles:
        lines += [
            "",
            f"{p.name}: top DSOs by self time: "
            + ", ".join(f"{k} {v:.1%}" for k, v in top(p.dsos, 6)),
        ]
        lines += [
            f"{p.name}: top symbols by self time: "
            + ", ".join(f"{k} {v:.1%}" for k, v in top(p.symbols, 12))
        ]
        if p.loop_parts:
            lines += [
                f"{p.name}: event loop samples by innermost uvloop/libuv function: "
                + ", ".join(f"{k} {v:.0%}" for k, v in top(p.loop_parts, 10))
            ]
        if p.python:
            lines += [
                "",
                f"{p.name}: its Python per query, timed in-process (best of 10 passes over the "
                "query file; a transport that sends nothing):",
                "",
                "| part | µs/query |",
                "|---|---|",
            ]
            lines += [f"| {k} | {v:.2f} |" for k, v in p.python]
        lines += [f"- {n}" for n in p.notes]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="the plain run, for CPU/query")
    parser.add_argument("--profile-seconds", type=float, default=4, help="each profiling run")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument(
        "--rate", type=float, default=None, help="queries/s dnsperf asks for (default: maximum)"
    )
    parser.add_argument("--skip", action="append", default=[], choices=("kdns", "nsd"))
    parser.add_argument(
        "--wait-idle", type=float, default=300, help="wait this long for an idle machine"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep perf data and logs here")
    args = parser.parse_args()
    for tool in ("dnsperf", "dig", "taskset", "perf"):
        if not shutil.which(tool):
            sys.exit(f"profile: {tool} is not installed (apt-get install dnsperf linux-perf)")
    if os.geteuid() != 0:
        sys.exit("profile: run as root (perf attaches to the servers)")
    shape = Shape(services=args.services)
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    profiles: list[Profile] = []
    with tempfile.TemporaryDirectory(prefix="kdns-profile-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        zones = work / "zones"
        write_manifests(zones, shape)
        queries = work / "queries.txt"
        lines = query_lines(shape)
        queries.write_text("\n".join(lines) + "\n")
        python = sys.executable
        servers: list[tuple[str, Callable[[int], list[str] | None], bool]] = []
        if "kdns" not in args.skip:
            kdns = [python, "-m", "kdns", "serve", "--zones", str(zones), "--log-level", "warning"]
            servers.append(("kdns", lambda port: [*kdns, "--listen", f"127.0.0.1:{port}"], True))
        if "nsd" not in args.skip:
            zonefile = run.write_zonefile(zones, work / "records.zone")

            def nsd(port: int) -> list[str] | None:
                conf = run.nsd_config(work, zonefile, port)
                return None if conf is None else ["nsd", "-d", "-c", str(conf)]

            servers.append(("nsd", nsd, False))
        for name, command, is_python in servers:
            port = run.free_port()
            cmd = command(port)
            if cmd is None:
                print(f"profile: {name} skipped, not installed", file=sys.stderr)
                continue
            print(f"profile: {name} ...", file=sys.stderr)
            profiles.append(profile_server(name, cmd, port, queries, work, args, python=is_python))
        for prof in profiles:
            if prof.name == "kdns":
                print("profile: kdns's Python, in-process ...", file=sys.stderr)
                try:
                    prof.python = time_python(zones, lines)
                except Exception as err:  # another version of kdns's internals
                    prof.notes.append(f"in-process timing failed: {err!r}")
        load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        print(render(profiles, args, (load_before, load_after)))


if __name__ == "__main__":
    main()
