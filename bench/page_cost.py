"""What the page's name tables cost a serving process of `--workers`, with the page closed and open.

    python bench/page_cost.py [--services 3000] [--endpoints 20] [--seconds 60]

kdns serves a zones/ directory of `--services` headless services of `--endpoints` ready
endpoints each with `--workers 1`. dnsperf asks, in one pass, ~22,000 distinct questions (each
service's A and SRV, three endpoint names, a name that does not exist, ten times over mixed
case), which fills the serving process's answer cache (20,000 entries) and its name table. Then
nothing is asked, and the CPU time of the serving process (utime + stime, /proc/PID/stat) is read
over `--seconds`, twice: with nobody loading the page, and with the page loaded every 5 s (what
an open page does). The difference is what summing the tables costs; before the tables were summed
on demand every serving process paid it every 5 s, page open or not. Also printed: how long each
page load took (it waits for the serving process's tables).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from renew_memory import manifests, write
from scale import children, cpu_seconds


def questions(services: int, endpoints: int) -> list[str]:
    rng = random.Random(1)
    lines = []
    for i in range(services):
        name = f"s{i}.default.svc.cluster.local"
        lines += [f"{name} A", f"_http._tcp.{name} SRV", f"nope-{i}.default.svc.cluster.local A"]
        for j in rng.sample(range(1, endpoints + 1), min(3, endpoints)):
            lines.append(f"10-1-{i // 250}-{j}.{name} A")
    for i in range(services // 10 * 10):
        name = "".join(c.upper() if rng.random() < 0.5 else c for c in f"s{i}.default")
        lines.append(f"{name}.svc.cluster.local A")
    return lines[:22000]


def page_port(log: Path) -> tuple[int, int] | None:
    text = log.read_text()
    http = re.search(r"http on \S+ port (\d+)", text)
    dns = re.search(r"serving cluster.local on \S+ port (\d+)", text)
    if http and dns:
        return int(http.group(1)), int(dns.group(1))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=3000)
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdns-page-") as tmp:
        zones = Path(tmp) / "zones"
        zones.mkdir()
        write(zones, manifests(args.services, args.endpoints, 1))
        query_file = Path(tmp) / "queries"
        query_file.write_text("\n".join(questions(args.services, args.endpoints)) + "\n")
        log = Path(tmp) / "kdns.log"
        cmd = [sys.executable, "-m", "kdns", "serve", "--zones", str(zones), "--workers", "1"]
        cmd += ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "info"]
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stderr=out, stdout=out)
        try:
            deadline = time.monotonic() + 120
            ports = None
            while time.monotonic() < deadline and proc.poll() is None and ports is None:
                ports = page_port(log)
                time.sleep(0.1)
            if ports is None:
                sys.exit(f"kdns did not start:\n{log.read_text()}")
            http, dns = ports
            time.sleep(2)
            perf = ["dnsperf", "-s", "127.0.0.1", "-p", str(dns), "-d", str(query_file)]
            subprocess.run(
                [*perf, "-n", "1", "-c", "4", "-q", "200"], capture_output=True, timeout=120
            )
            (worker,) = children(proc.pid)
            time.sleep(6)  # the reports of the fill are over

            def serving_cpu(page: bool) -> tuple[float, list[float]]:
                loads: list[float] = []
                start = cpu_seconds(worker)
                end = time.monotonic() + args.seconds
                while time.monotonic() < end:
                    if page:
                        t0 = time.monotonic()
                        with urllib.request.urlopen(f"http://127.0.0.1:{http}/", timeout=10) as r:
                            r.read()
                        loads.append(time.monotonic() - t0)
                    time.sleep(min(5.0, max(0.0, end - time.monotonic())))
                return cpu_seconds(worker) - start, loads

            closed, _ = serving_cpu(page=False)
            opened, loads = serving_cpu(page=True)
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
                metrics = r.read().decode()
            entries = re.search(r"^kdns_cache_entries\S* (\S+)$", metrics, re.M)
            print(
                f"{args.services} services x {args.endpoints} endpoints, --workers 1, "
                f"answer cache entries: {entries.group(1) if entries else '?'}, "
                f"python {sys.version.split()[0]}, {os.cpu_count()} cores"
            )
            per_min = 60 / args.seconds
            print(f"serving process CPU, page closed: {closed * 1000 * per_min:7.0f} ms/min")
            print(f"serving process CPU, page open:   {opened * 1000 * per_min:7.0f} ms/min")
            if loads:
                first, rest = loads[0], sorted(loads[1:]) or [loads[0]]
                print(
                    f"page loads: {len(loads)}, first {first * 1000:.0f} ms, then median "
                    f"{rest[len(rest) // 2] * 1000:.0f} ms, max {rest[-1] * 1000:.0f} ms"
                )
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
