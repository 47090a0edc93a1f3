"""What `--worker-renew` does to memory after every record is rewritten, with no queries.

    python bench/renew_memory.py [--services 3000] [--endpoints 20] [--workers 2] [--seconds 40]
        [--kdns-args '--worker-renew 0']

kdns serves a zones/ directory of `--services` headless services with `--endpoints` ready
endpoints each, with `--workers`; the file is then rewritten with every address changed (what a
relist or heavy churn does to the serving processes' memory), and each second the private
memory (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup: pages no other process maps)
of the main process and of each serving process is printed, with the total Pss, and at the
end the renewals counted in /metrics. No query is asked: what a process holds after a renewal
is then only what it rewrote, not what answering wrote.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import children, memory


def manifests(services: int, endpoints: int, second: int) -> str:
    parts = []
    for i in range(services):
        parts.append(
            f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n"
            "spec: {clusterIP: None, ports: [{name: http, port: 80}]}\n"
        )
        eps = ", ".join(
            f"{{addresses: [10.{second}.{i // 250}.{j}], conditions: {{ready: true}}}}"
            for j in range(1, endpoints + 1)
        )
        parts.append(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata: {{name: s{i}-x, namespace: default, "
            f"labels: {{kubernetes.io/service-name: s{i}}}}}\n"
            f"addressType: IPv4\nports: [{{name: http, port: 80}}]\nendpoints: [{eps}]\n"
        )
    return "".join(parts)


def write(zones: Path, text: str) -> None:
    tmp = zones / ".many.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, zones / "many.yaml")  # whole, at once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=3000)
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--kdns-args", default="", help="more `kdns serve` arguments")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdns-renew-") as tmp:
        zones = Path(tmp) / "zones"
        zones.mkdir()
        write(zones, manifests(args.services, args.endpoints, 1))
        log = Path(tmp) / "kdns.log"
        cmd = [sys.executable, "-m", "kdns", "serve", "--zones", str(zones)]
        cmd += ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "info"]
        cmd += ["--workers", str(args.workers), *shlex.split(args.kdns_args)]
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stderr=out, stdout=out)
        try:
            deadline = time.monotonic() + 120
            http = None
            while time.monotonic() < deadline and proc.poll() is None:
                text = log.read_text()
                m = re.search(r"http on \S+ port (\d+)", text)
                if m and "serving cluster.local" in text:
                    http = int(m.group(1))
                    break
                time.sleep(0.1)
            if http is None:
                sys.exit(f"kdns did not start:\n{log.read_text()}")
            time.sleep(2)
            print("second  main private  serving processes' private (MB)  total Pss")

            def row(label: str) -> None:
                mem = [memory(p) for p in (proc.pid, *children(proc.pid))]
                private = [m.get("Private", 0.0) for m in mem]
                pss = sum(m.get("Pss", 0.0) for m in mem)
                workers = " ".join(f"{p:5.0f}" for p in private[1:])
                print(f"{label:>6}  {private[0]:12.0f}  {workers:32}  {pss:9.0f}")

            row("start")
            write(zones, manifests(args.services, args.endpoints, 2))
            for second in range(args.seconds):
                time.sleep(1)
                row(str(second + 1))
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
                metrics = r.read().decode()
            renewals = re.search(r"^kdns_worker_renewals_total (\S+)$", metrics, re.M)
            print(f"renewals: {renewals.group(1) if renewals else '?'}")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
