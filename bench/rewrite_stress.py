"""Rewrite zones/ files in place while every name is probed: does any answer go wrong?

The writer does what `kubectl get svc -o yaml > f` does: it truncates the file, pauses (kubectl's
API round trip; here a random 0-500 ms), writes the new content and closes it. Each rewrite
changes every service's ClusterIP in that file, so the right answer for a name is its old address
or its new one, and nothing else: an NXDOMAIN, a SERVFAIL, a timeout or any other address is a
wrong answer. Meanwhile one busy-looping process per core loads the machine, because the race
this checks for (a file read between truncate and write) is one a busy machine makes likely.

After each rewrite the writer waits until the name answers its new address, and records that
time (close -> served): how long the watch takes to apply a finished file.

Run it for both ways the zones/ source learns that a writer is done:

    .venv/bin/python bench/rewrite_stress.py --mode inotify --rewrites 1000
    .venv/bin/python bench/rewrite_stress.py --mode poll --rewrites 1000

It starts the installed `kdns` console script (next to this Python, or --kdns PATH) on a free
port of 127.0.0.1, prints one line of figures per mode, and exits 1 if any answer was wrong.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

SERVING = re.compile(r"serving \S+ on \S+ port (\d+)")
FILES = 4
SERVICES_PER_FILE = 3


def manifest(file: int, version: int) -> str:
    docs = []
    for s in range(SERVICES_PER_FILE):
        docs.append(
            "apiVersion: v1\nkind: Service\n"
            f"metadata: {{name: svc-{file}-{s}, namespace: default}}\n"
            f"spec:\n  clusterIP: {address(file, s, version)}\n"
            "  ports: [{name: http, port: 80}]\n"
        )
    return "---\n".join(docs)


def address(file: int, s: int, version: int) -> str:
    return f"10.96.{file * 16 + s}.{version % 250 + 1}"


def name(file: int, s: int) -> str:
    return f"svc-{file}-{s}.default.svc.cluster.local"


def busy(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    while not stop.is_set():
        for _ in range(100_000):
            pass


@dataclass
class Probe:
    port: int
    allowed: dict[str, set[str]]
    lock: threading.Lock = field(default_factory=threading.Lock)
    probes: int = 0
    wrong: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def ask(self, qname: str) -> tuple[str, set[str]]:
        query = dns.message.make_query(qname, "A")
        try:
            reply = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=2.0)
        except dns.exception.Timeout:
            return "TIMEOUT", set()
        got = {rd.to_text() for rrset in reply.answer for rd in rrset if rrset.rdtype == 1}
        return dns.rcode.to_text(reply.rcode()), got

    def run(self, deadline: float) -> None:
        while not self.stop.is_set() and time.monotonic() < deadline:
            for qname in list(self.allowed):
                # What is allowed is read before the question is sent, so a change between the
                # two only widens the set (the writer adds the new address before writing).
                with self.lock:
                    allowed = set(self.allowed[qname])
                rcode, got = self.ask(qname)
                self.probes += 1
                if rcode != "NOERROR" or len(got) != 1 or not got <= allowed:
                    self.wrong.append(f"{time.monotonic():.3f} {qname} {rcode} {sorted(got)}")


def start_kdns(kdns: str, zones: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [kdns, "serve", "--zones", str(zones), "--listen", "127.0.0.1:0", "--zones-watch", mode],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        match = SERVING.search(line)
        if match:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain the log
            return proc, int(match.group(1))
    proc.kill()
    raise SystemExit("kdns did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["inotify", "poll"], required=True)
    parser.add_argument("--rewrites", type=int, default=1000)
    parser.add_argument("--max-pause", type=float, default=0.5)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--kdns", default=str(Path(sys.executable).with_name("kdns")))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    stop_busy = multiprocessing.Event()
    loaders = [multiprocessing.Process(target=busy, args=(stop_busy,)) for _ in range(args.busy)]
    with tempfile.TemporaryDirectory() as tmp:
        zones = Path(tmp)
        versions = [0] * FILES
        for f in range(FILES):
            (zones / f"f{f}.yaml").write_text(manifest(f, 0))
        proc, port = start_kdns(args.kdns, zones, args.mode)
        probe = Probe(
            port, {name(f, s): {address(f, s, 0)} for f in range(FILES) for s in range(3)}
        )
        for loader in loaders:
            loader.start()
        budget = args.rewrites * (args.max_pause + 10) + 60
        prober = threading.Thread(target=probe.run, args=(time.monotonic() + budget,), daemon=True)
        prober.start()
        latencies: list[float] = []
        slow: list[str] = []
        started = time.monotonic()
        try:
            for _ in range(args.rewrites):
                f = rng.randrange(FILES)
                old, new = versions[f], versions[f] + 1
                with probe.lock:
                    for s in range(SERVICES_PER_FILE):
                        probe.allowed[name(f, s)] = {address(f, s, old), address(f, s, new)}
                with (zones / f"f{f}.yaml").open("w") as out:  # truncated now
                    time.sleep(rng.uniform(0, args.max_pause))
                    out.write(manifest(f, new))
                closed = time.monotonic()
                want = {address(f, 0, new)}
                deadline = closed + 10
                while probe.ask(name(f, 0)) != ("NOERROR", want):
                    if time.monotonic() > deadline:
                        slow.append(f"f{f} v{new}")
                        break
                    time.sleep(0.005)
                latencies.append(time.monotonic() - closed)
                versions[f] = new
                with probe.lock:
                    for s in range(SERVICES_PER_FILE):
                        probe.allowed[name(f, s)] = {address(f, s, new)}
        finally:
            probe.stop.set()
            prober.join(10)
            stop_busy.set()
            for loader in loaders:
                loader.join(5)
            proc.kill()  # SIGTERM would wait out the lame-duck period
            proc.wait(10)
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    print(
        f"rewrite stress, --zones-watch {args.mode}: {args.rewrites} rewrites in "
        f"{time.monotonic() - started:.0f} s, pause 0-{args.max_pause * 1000:.0f} ms between "
        f"truncate and write, {args.busy} busy processes; {probe.probes} probes, "
        f"{len(probe.wrong)} wrong answers; close -> served p50 {p(0.5):.0f} ms, "
        f"p99 {p(0.99):.0f} ms, max {p(1.0):.0f} ms, mean {statistics.mean(latencies) * 1000:.0f}"
        f" ms; {len(slow)} not served within 10 s"
    )
    for line in probe.wrong[:20]:
        print("  wrong:", line)
    return 1 if probe.wrong or slow else 0


if __name__ == "__main__":
    sys.exit(main())
