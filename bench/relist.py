"""Relist benchmark: what a relist of the 10,000-service, 100,000-endpoint cluster costs kdns, in
time, CPU and peak memory.

    .venv/bin/python bench/relist.py [--services 10000 --slices 1000 --endpoints-per-slice 100]
        [--rounds 2] [--append [FILE]]

The cluster and the API double are those of `bench/scale.py` (`scale_apiserver`, in a process of
its own on CPU 1); kdns runs as `python -m kdns serve --kubeconfig ...` on CPU 0, without query
load. After the sync and 3 s of rest (the steady state: VmRSS then), each round forces, in turn:

- "410 relist": the history compacted and the watches cut (`force_relist`): every kind lists
  again and finds every object unchanged (same resourceVersion and uid), the common case after
  any broken watch, which now always lists again (issue 15);
- "re-created": every object re-created with a new uid and resourceVersion (`recreate`, as an
  apiserver restarted on a wiped etcd refilled with the same content): the relist trims every
  object again and the store compares each with what it holds, the worst case.

For each: the time from the trigger until every kind's `kdns_kubernetes_relists_total` moved
(polled on /metrics every 50 ms), the CPU seconds kdns used meanwhile, and the peak VmRSS
(sampled every 5 ms, and VmHWM after resetting it through /proc/PID/clear_refs) compared with
the steady state. Target (issue 15): the peak at most 30% over the steady state.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from scale import Double, cpu_seconds, free_port, memory, write_kubeconfig  # noqa: E402
from scale_apiserver import Shape  # noqa: E402

RESULTS = HERE / "RESULTS.md"
KINDS = ("Service", "EndpointSlice", "Endpoints", "Namespace")
RELISTS = re.compile(r'^kdns_kubernetes_relists_total\{kind="(\w+)"\} ([0-9.e+]+)$', re.M)


def relists(http_port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {kind: float(n) for kind, n in RELISTS.findall(text)}


def rss(pid: int) -> float:
    return memory(pid)["VmRSS"]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def measure(double: Double, pid: int, http_port: int, cmd: str, timeout: float) -> dict[str, float]:
    """Trigger one relist with `cmd`; its duration, CPU and peak memory."""
    before = relists(http_port)
    steady = rss(pid)
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    cpu = cpu_seconds(pid)
    began = time.monotonic()
    double.call(cmd, timeout=120)
    peak = steady
    done: float | None = None
    next_poll = 0.0
    deadline = began + timeout
    while time.monotonic() < deadline:
        peak = max(peak, rss(pid))
        now = time.monotonic()
        if done is None and now >= next_poll:
            next_poll = now + 0.05
            after = relists(http_port)
            if all(after.get(k, 0) > before.get(k, 0) for k in KINDS):
                done = now
        if done is not None and now >= done + 2.0:  # memory may still be freed or grow
            break
        time.sleep(0.005)
    if done is None:
        raise RuntimeError(f"{cmd}: not every kind relisted within {timeout:g} s")
    return {
        "seconds": done - began,
        "cpu": cpu_seconds(pid) - cpu,
        "steady": steady,
        "peak": max(peak, memory(pid)["VmHWM"]),
        "after": rss(pid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--headless", type=int, default=1000)
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--endpoints-per-slice", type=int, default=100)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kdns-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--append", nargs="?", const=str(RESULTS), help="append to FILE")
    args = parser.parse_args()
    shape = Shape(
        args.services, args.headless, args.slices, args.endpoints_per_slice, args.namespaces
    )
    double = Double(shape, args.load_cpu, stock=False)
    kdns: subprocess.Popen[bytes] | None = None
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="kdns-relist-") as tmp:
        work = Path(tmp)
        try:
            info = double.call("populate", timeout=300)
            kubeconfig = write_kubeconfig(work / "kubeconfig", info["url"])
            zones = work / "zones"
            zones.mkdir()
            port, http_port = free_port(), free_port()
            cmd = [sys.executable, "-m", "kdns", "serve", "--kubeconfig", str(kubeconfig)]
            cmd += ["--zones", str(zones), "--listen", f"127.0.0.1:{port}"]
            cmd += ["--http", f"127.0.0.1:{http_port}", "--log-level", "warning"]
            with (work / "kdns.log").open("wb") as log:
                kdns = subprocess.Popen(
                    ["taskset", "-c", str(args.kdns_cpu), *cmd],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    cwd=REPO,
                )
            deadline = time.monotonic() + 120
            while True:
                if kdns.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "kdns did not become ready: " + (work / "kdns.log").read_text()
                    )
                with contextlib.suppress(OSError):
                    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=1)
                    conn.request("GET", "/ready")
                    if conn.getresponse().status == 200:
                        break
                time.sleep(0.1)
            time.sleep(3.0)  # the steady state: sync garbage collected, caches settled
            for round_ in range(args.rounds):
                for name, what in (("410 relist", "force_relist"), ("re-created", "recreate")):
                    result = measure(double, kdns.pid, http_port, what, timeout=120)
                    rows.append((name, result))
                    print(f"round {round_ + 1} {name}: {result}", flush=True)
                    time.sleep(3.0)
        finally:
            if kdns is not None:
                kdns.terminate()
                try:
                    kdns.wait(10)
                except subprocess.TimeoutExpired:
                    kdns.kill()
                    kdns.wait(10)
            double.stop()

    command = "python bench/relist.py" + (" --append" if args.append else "")
    if (args.services, args.slices, args.endpoints_per_slice) != (10000, 1000, 100):
        command += f" --services {args.services} --slices {args.slices}"
        command += f" --endpoints-per-slice {args.endpoints_per_slice}"
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    lines = [
        f"## {stamp} — relist — {cpu_name()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "",
        f"Command: `{command}`",
        "",
        f"Cluster: {shape.services:,} services, {shape.slices:,} EndpointSlices of "
        f"{shape.endpoints_per_slice} endpoints ({shape.endpoints:,}), {shape.namespaces} "
        "namespaces; kdns (one process, no query load) on CPU 0, the double on CPU 1. Time: "
        "trigger to every kind's relist counted; RSS: steady state before, peak during (5 ms "
        "samples and VmHWM), 2 s after.",
        "",
        "| relist | time | kdns CPU | RSS steady → peak (rise) → after | rise ≤ 30% |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows:
        rise = r["peak"] / r["steady"] - 1
        lines.append(
            f"| {name} | {r['seconds']:.2f} s | {r['cpu']:.2f} s | {r['steady']:.0f} → "
            f"{r['peak']:.0f} MB (+{rise * 100:.0f}%) → {r['after']:.0f} MB | "
            f"{'yes' if rise <= 0.30 else '**no**'} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.append:
        with open(args.append, "a") as out:
            out.write("\n" + report)


if __name__ == "__main__":
    main()
