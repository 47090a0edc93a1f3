"""What each kdns replica costs the API server: measured on the real control plane.

    python bench/replicas.py [--replicas 1,5,20] [--services 200] [--endpoints 10] [--window 60]

Starts etcd, kube-apiserver and kube-controller-manager built from Go modules
(`tests/e2e/build.sh`, `testkit.controlplane`), writes `--services` headless Services with one
hand-written EndpointSlice of `--endpoints` endpoints each, then, for each replica count N, starts
N `kdns serve` processes against it (the console script of this environment) and reports:

- `apiserver_longrunning_requests{verb="WATCH"}` (the API server's own gauge) before and with
  the replicas: the watches each replica holds;
- the API server's CPU (utime + stime of its process, from /proc) while the replicas start and
  sync (their lists), and over `--window` seconds of steady state with 2 EndpointSlice changes
  a second (every watch receives each one);
- per replica: those figures divided by N.

The figures are CPU seconds, not wall time: other work on the machine slows them only a little
(cache and scheduling), but run it on a quiet machine for figures to keep. The results go to
stdout as a table; bench/RESULTS.md keeps the runs, with their commands.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testkit.controlplane import ControlPlane, missing_binaries, wait_for

HTTP = re.compile(r"http on (\S+) port (\d+)")
WATCHES = re.compile(r"^apiserver_longrunning_requests\{([^}]*)\} (\S+)$", re.M)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--replicas", default="1,5,20")
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    missing = missing_binaries()
    if missing:
        sys.exit(f"missing control-plane binaries {missing}: run tests/e2e/build.sh")
    counts = [int(n) for n in args.replicas.split(",")]
    with tempfile.TemporaryDirectory(prefix="kdns-replicas-") as tmp:
        cp = ControlPlane(Path(tmp) / "cp")
        cp.workdir.mkdir()
        cp.start()
        try:
            populate(cp, args.services, args.endpoints)
            print(
                f"{args.services} services, {args.services * args.endpoints} endpoints; "
                f"window {args.window:.0f} s with 2 slice changes/s"
            )
            print(
                "| replicas | watches | +watches/replica | sync CPU s | sync CPU s/replica "
                "| steady CPU %/replica | steady CPU % total |"
            )
            print("|---|---|---|---|---|---|---|")
            idle = steady_cpu(cp, args.window, args.services)
            print(f"| 0 | {watches(cp)} | | | | | {idle:.2f} |")
            for n in counts:
                row = measure(cp, Path(tmp), n, args.window, args.services, idle)
                print(row, flush=True)
        finally:
            cp.stop()


def populate(cp: ControlPlane, services: int, endpoints: int) -> None:
    cp.create_namespace("bench")
    for i in range(services):
        name = f"svc-{i}"
        cp.create(
            "/api/v1/namespaces/bench/services",
            {
                "metadata": {"name": name},
                "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]},
            },
        )
        cp.create(
            "/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices", slice_of(i, endpoints, 0)
        )


def slice_of(i: int, endpoints: int, generation: int) -> dict[str, object]:
    return {
        "metadata": {
            "name": f"svc-{i}-manual",
            "labels": {"kubernetes.io/service-name": f"svc-{i}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [f"10.{100 + (i // 250)}.{i % 250}.{1 + (e + generation) % 250}"],
                "conditions": {"ready": True},
            }
            for e in range(endpoints)
        ],
    }


def watches(cp: ControlPlane) -> int:
    text = cp.request("GET", "/metrics", raw=True)
    return int(sum(float(v) for labels, v in WATCHES.findall(text) if 'verb="WATCH"' in labels))


def apiserver_cpu(cp: ControlPlane) -> float:
    pid = cp.procs["kube-apiserver"].proc.pid
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steady_cpu(cp: ControlPlane, window: float, services: int) -> float:
    """The API server's CPU over `window` seconds with 2 slice changes a second, in %."""
    before = apiserver_cpu(cp)
    start = time.monotonic()
    k = 0
    while time.monotonic() - start < window:
        i = k % services
        path = f"/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices/svc-{i}-manual"
        current = cp.get(path)
        body = slice_of(i, len(current.get("endpoints") or []), k + 1)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]  # type: ignore[index]
        cp.request("PUT", path, body)
        k += 1
        time.sleep(max(0.0, start + k * 0.5 - time.monotonic()))  # pacing, not synchronisation
    return 100 * (apiserver_cpu(cp) - before) / (time.monotonic() - start)


def measure(cp: ControlPlane, tmp: Path, n: int, window: float, services: int, idle: float) -> str:
    zones = tmp / "empty-zones"
    zones.mkdir(exist_ok=True)
    base = watches(cp)
    cpu0 = apiserver_cpu(cp)
    procs = []
    ports: list[int] = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "kdns"),
                        "serve",
                        "--kubeconfig",
                        str(cp.admin_kubeconfig),
                        "--zones",
                        str(zones),
                        "--listen",
                        "127.0.0.1:0",
                        "--http",
                        "127.0.0.1:0",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                )
            )
        for proc in procs:
            ports.append(http_port(proc))
        for port in ports:
            wait_for("kdns /ready", lambda p=port: ready(p), 120, 0.1)  # type: ignore[misc]
        sync = apiserver_cpu(cp) - cpu0
        wait_for("the watches", lambda: watches(cp) >= base + 4 * n or None, 60, 0.2)
        held = watches(cp) - base
        steady = steady_cpu(cp, window, services)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return (
        f"| {n} | {held + base} | {held / n:.1f} | {sync:.2f} | {sync / n:.3f} "
        f"| {(steady - idle) / n:.2f} | {steady:.2f} |"
    )


def http_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        m = HTTP.search(line)
        if m:
            # Keep draining its output in the background, or a full pipe would stall it.
            subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)
            return int(m.group(2))
        if time.monotonic() > deadline:
            break
    raise RuntimeError("kdns did not report its HTTP port")


def ready(port: int) -> bool | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
            return resp.status == 200 or None
    except OSError:
        return None


if __name__ == "__main__":
    main()
