"""Serving benchmark: kdns against the naive dnslib server and a C server, same data, same queries.

    python bench/run.py [--seconds 10] [--services 1000] [--append bench/RESULTS.md]

Each server is pinned to CPU 0 and dnsperf to CPU 1 (taskset). For every server the run prints:
the maximum rate dnsperf reached, the server's CPU time per answered query (read from
/proc/PID/stat before and after; this is the honest measure once dnsperf itself saturates its
core), the latency p50/p99 measured at half of that server's maximum rate, and lost queries.
Then the ratios of CPU per query: kdns/baseline, kdns/C server (and kdns/CoreDNS when a CoreDNS
binary is given with --coredns and a kubeconfig of the same data).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dataset import Shape, query_lines, write_manifests  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    name: str
    qps: float = 0.0
    cpu_us: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    lost: int = 0
    sent: int = 0
    note: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, its threads and its descendants (nsd forks), in seconds."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, IndexError):
                continue
    total = 0
    for p in parents:
        q = p
        while q > 1 and q != pid:
            q = parents.get(q, 0)
        if q == pid:
            try:
                fields = _stat(p)
                total += int(fields[11]) + int(fields[12])
            except OSError:
                continue
    return total / TICKS


def wait_answering(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(port), "+time=1", "+tries=1", "cluster.local", "SOA"],
            capture_output=True,
            text=True,
        )
        if "status:" in out.stdout:
            return
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not answer in {timeout}s")


def dnsperf_cmd(port: int, queries: Path, seconds: float, rate: float | None) -> list[str]:
    cmd = ["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries)]
    cmd += ["-l", str(seconds), "-c", "8", "-q", "500", "-t", "2"]
    if rate:
        cmd += ["-Q", str(int(rate))]
    return cmd


def dnsperf(port: int, queries: Path, seconds: float, rate: float | None) -> str:
    cmd = dnsperf_cmd(port, queries, seconds, rate)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout


def probe(port: int, queries: Path, samples: int, rate: float) -> list[float]:
    """Round-trip times of single queries sent one at a time, at about `rate` a second.

    Queries that get no answer within a second are left out (dnsperf counts the losses).
    """
    import dns.message

    names = [line.split() for line in queries.read_text().splitlines()[:samples]]
    wires = [dns.message.make_query(n, t).to_wire() for n, t in names]
    os.sched_setaffinity(0, {1})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    sock.connect(("127.0.0.1", port))
    out = []
    gap = 1.0 / rate
    for wire in wires:
        t0 = time.perf_counter()
        sock.send(wire)
        try:
            while sock.recv(4096)[:2] != wire[:2]:
                pass
        except TimeoutError:
            continue
        out.append(time.perf_counter() - t0)
        rest = gap - (time.perf_counter() - t0)
        if rest > 0:
            time.sleep(rest)
    sock.close()
    return out


def stat(out: str, label: str) -> float:
    m = re.search(rf"{label}:\s+([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def measure(name: str, cmd: list[str], port: int, queries: Path, seconds: float) -> Result:
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    result = Result(name)
    try:
        wait_answering(port)
        dnsperf(port, queries, 2, None)  # warm caches
        before = cpu_seconds(proc.pid)
        out = dnsperf(port, queries, seconds, None)
        used = cpu_seconds(proc.pid) - before
        completed = stat(out, "Queries completed")
        result.qps = stat(out, "Queries per second")
        result.sent = int(stat(out, "Queries sent"))
        result.cpu_us = used / completed * 1e6 if completed else 0.0
        # Latency at half the maximum rate, where a server is meant to run: dnsperf makes the
        # load (printing every answer with -v would slow dnsperf itself and skew the figures),
        # and a probe beside it times single queries.
        load = subprocess.Popen(
            dnsperf_cmd(port, queries, min(seconds, 6), result.qps / 2),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        time.sleep(1.0)
        lat = sorted(probe(port, queries, samples=3000, rate=1000))
        out, _ = load.communicate(timeout=seconds + 60)
        if lat:
            result.p50_us = lat[len(lat) // 2] * 1e6
            result.p99_us = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6
        result.lost = int(stat(out, "Queries lost"))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return result


def nsd_config(work: Path, zonefile: Path, port: int) -> Path | None:
    """An nsd configuration serving the same records, or None when nsd is not installed."""
    if not shutil.which("nsd"):
        return None
    forward, reverse = [], []
    soa = ""
    for line in zonefile.read_text().splitlines():
        if not line or line.startswith(";"):
            continue
        name = line.split()[0]
        if " SOA " in f" {' '.join(line.split())} " and not soa:
            soa = line
        (reverse if name.endswith(".in-addr.arpa.") else forward).append(line)
    fields = soa.split()
    rsoa = " ".join(["in-addr.arpa.", *fields[1:]])
    rns = "in-addr.arpa. 5 IN NS ns.dns.cluster.local."
    (work / "cluster.local.zone").write_text("\n".join(forward) + "\n")
    (work / "in-addr.arpa.zone").write_text("\n".join([rsoa, rns, *reverse]) + "\n")
    conf = work / "nsd.conf"
    conf.write_text(
        f"""server:
    ip-address: 127.0.0.1@{port}
    server-count: 1
    username: ""
    zonesdir: "{work}"
    pidfile: "{work}/nsd.pid"
    database: ""
    xfrdfile: "{work}/xfrd.state"
    zonelistfile: "{work}/zone.list"
    logfile: "{work}/nsd.log"
    verbosity: 0
    rrl-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: cluster.local
    zonefile: cluster.local.zone
zone:
    name: in-addr.arpa
    zonefile: in-addr.arpa.zone
"""
    )
    return conf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--append", type=Path, default=None, help="append results to this file")
    parser.add_argument("--skip", action="append", default=[], help="kdns, dnslib or nsd")
    args = parser.parse_args()
    for tool in ("dnsperf", "dig", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed (apt-get install dnsperf bind9-dnsutils)")
    shape = Shape(services=args.services)
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="kdns-bench-") as tmp:
        work = Path(tmp)
        zones = work / "zones"
        write_manifests(zones, shape)
        queries = work / "queries.txt"
        queries.write_text("\n".join(query_lines(shape)) + "\n")
        zonefile = work / "records.zone"
        records = subprocess.run(
            [python, "-m", "kdns", "records", "--zones", str(zones)],
            capture_output=True,
            text=True,
            check=True,
        )
        zonefile.write_text(records.stdout)
        results: list[Result] = []
        if "kdns" not in args.skip:
            port = free_port()
            cmd = [
                python,
                "-m",
                "kdns",
                "serve",
                "--zones",
                str(zones),
                "--log-level",
                "warning",
                "--listen",
                f"127.0.0.1:{port}",
            ]
            results.append(measure("kdns", cmd, port, queries, args.seconds))
        if "dnslib" not in args.skip:
            port = free_port()
            cmd = [python, str(HERE / "baseline_dnslib.py"), str(zonefile), str(port)]
            results.append(measure("dnslib DNSServer", cmd, port, queries, args.seconds))
        if "nsd" not in args.skip:
            port = free_port()
            conf = nsd_config(work, zonefile, port)
            if conf is not None:
                cmd = ["nsd", "-d", "-c", str(conf)]
                results.append(measure("nsd (C)", cmd, port, queries, args.seconds))
        report = render(results, args)
        print(report)
        if args.append:
            with args.append.open("a") as f:
                f.write(report + "\n")


def render(results: list[Result], args: argparse.Namespace) -> str:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    lines = [
        f"## {datetime.datetime.now().isoformat(timespec='seconds')} — {cpu}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "",
        f"Command: `python bench/run.py --seconds {args.seconds:g} --services {args.services}`",
        "",
        "Server on CPU 0, dnsperf on CPU 1. Latency and losses: at half the server's maximum rate"
        " (dnsperf load, single-query probe beside it).",
        "",
        "| server | max queries/s | server CPU µs/query | p50 µs | p99 µs | lost |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.qps:,.0f} | {r.cpu_us:.1f} | {r.p50_us:.0f} | {r.p99_us:.0f} | "
            f"{r.lost} |"
        )
    by = {r.name.split()[0]: r for r in results}
    k = by.get("kdns")
    if k and k.cpu_us:
        lines.append("")
        for other, label in (("dnslib", "dnslib baseline"), ("nsd", "nsd (C)")):
            o = by.get(other)
            if o and o.cpu_us:
                lines.append(
                    f"- CPU per query, kdns / {label}: {k.cpu_us / o.cpu_us:.3f} "
                    f"({o.cpu_us / k.cpu_us:.1f}x less CPU per query than {label})"
                    if k.cpu_us < o.cpu_us
                    else f"- CPU per query, kdns / {label}: {k.cpu_us / o.cpu_us:.2f}"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
