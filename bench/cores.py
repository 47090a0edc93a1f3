"""What `kdns serve --workers N` gives on this machine's cores, and what it would give on more.

    .venv/bin/python bench/cores.py [--seconds 10] [--services 1000] [--append bench/RESULTS.md]

The same data and query file as bench/run.py. Each configuration runs one after the other:

- kdns, one process, on CPU 0; dnsperf on CPU 1 (bench/run.py's setup);
- kdns --workers 1 (one serving process, the main process only watching), on CPU 0; dnsperf on 1;
- kdns --workers N (N = the number of cores), everything unpinned: the serving processes and
  dnsperf share every core, so the server's CPU per answered query shows what several processes
  cost, and queries/s what the machine gives when dnsperf also needs a core; then the same with
  --no-steer (every serving process reading one shared socket instead of its own).

CPU per query counts every process of the server (main and serving processes). From those
figures, the estimate for 8 cores: CPU per query at N workers, times the queries a second 8 cores
would then answer with one core left to the kernel's network work and the watch.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402
from dataset import Shape, query_lines, write_manifests  # noqa: E402


def measure(
    label: str, cmd: list[str], port: int, queries: Path, seconds: float, pin: bool, log: Path
) -> dict[str, float]:
    """Start `cmd`, load it with dnsperf at its maximum rate; q/s and server CPU per query."""
    server_cpus = "0" if pin else ",".join(str(c) for c in range(os.cpu_count() or 1))
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            ["taskset", "-c", server_cpus, *cmd], stdout=fh, stderr=subprocess.STDOUT
        )
    try:
        run.wait_answering(port)
        time.sleep(0.5)  # every serving process up (the main process logs when they are)
        load = run.dnsperf_cmd(port, queries, 2, None)
        if not pin:
            load[2] = server_cpus  # taskset -c <cpus>: dnsperf shares every core too
        subprocess.run(load, capture_output=True, timeout=60)  # warm every process's cache
        load[load.index("-l") + 1] = str(seconds)
        before = run.cpu_seconds(proc.pid)
        out = subprocess.run(load, capture_output=True, text=True, timeout=seconds + 60).stdout
        used = run.cpu_seconds(proc.pid) - before
        completed = run.stat(out, "Queries completed")
        return {
            "qps": run.stat(out, "Queries per second"),
            "cpu_us": used / completed * 1e6 if completed else 0.0,
            "cores": used / seconds,
            "lost": run.stat(out, "Queries lost"),
            "processes": float(len(run.process_tree(proc.pid))),
        }
    finally:
        run.stop(proc, 15)
        print(f"{label}: done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--append", type=Path, default=None)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    shape = Shape(services=args.services)
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="kdns-cores-") as tmp:
        work = Path(tmp)
        zones = work / "zones"
        write_manifests(zones, shape)
        queries = work / "queries.txt"
        queries.write_text("\n".join(query_lines(shape)) + "\n")
        base = [sys.executable, "-m", "kdns", "serve", "--zones", str(zones)]
        base += ["--log-level", "warning", "--lameduck", "0"]
        configs = [
            ("kdns, one process (CPU 0; dnsperf CPU 1)", [], True),
            ("kdns --workers 1 (CPU 0; dnsperf CPU 1)", ["--workers", "1"], True),
            (
                f"kdns --workers {cores} (all {cores} cores, shared with dnsperf)",
                ["--workers", str(cores)],
                False,
            ),
            (
                f"kdns --workers {cores} --no-steer (one shared socket; as above)",
                ["--workers", str(cores), "--no-steer"],
                False,
            ),
        ]
        for label, extra, pin in configs:
            port = run.free_port()
            cmd = [*base, *extra, "--listen", f"127.0.0.1:{port}"]
            result = measure(label, cmd, port, queries, args.seconds, pin, work / "log")
            rows.append((label, result))
    report = render(rows, args, cores)
    print(report)
    if args.append:
        with args.append.open("a") as f:
            f.write("\n" + report + "\n")


def render(rows: list[tuple[str, dict[str, float]]], args: argparse.Namespace, cores: int) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    argv = " ".join(sys.argv[1:])
    lines = [
        f"## {datetime.datetime.now().isoformat(timespec='seconds')} — cores — {cpu}, "
        f"{cores} cores, Python {platform.python_version()}",
        "",
        f"Command: `python bench/cores.py {argv}`",
        "",
        "| configuration | queries/s | server CPU µs/query | server CPU (cores) | lost |",
        "|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['qps']:,.0f} | {r['cpu_us']:.2f} | {r['cores']:.2f} | "
            f"{r['lost']:.0f} |"
        )
    single, one, many, shared = (r for _, r in rows)
    lines.append("")
    lines.append(
        f"- one serving process behind a watching one costs {one['cpu_us'] / single['cpu_us']:.2f}"
        f"x the CPU per query of a single process; {cores} serving processes, each query "
        f"steered to the one owning its name, cost {many['cpu_us'] / one['cpu_us']:.2f}x, and "
        f"on one shared socket (--no-steer) {shared['cpu_us'] / one['cpu_us']:.2f}x."
    )
    per_core = 1e6 / many["cpu_us"]
    lines.append(
        f"- estimate for 8 cores, at {many['cpu_us']:.2f} µs per query: 7 serving processes "
        f"(a core left to the watch and the kernel's network work) answer about "
        f"{7 * per_core:,.0f} queries/s, if the CPU per query stays what {cores} processes cost "
        "here; the load generator must then run elsewhere."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
