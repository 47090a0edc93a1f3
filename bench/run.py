"""Serving benchmark: kdns against the naive dnslib server, a C server and CoreDNS, same data.

    python bench/run.py [--seconds 10] [--services 1000] [--append bench/RESULTS.md]
                        [--skip kdns|kdns-pip|dnslib|nsd|coredns|kdns-api ...]

`kdns-pip` is kdns installed the way the README tells users to, `pip install .` into a fresh
virtualenv, and run from that virtualenv's `kdns` console script: what users get, beside the
development environment's `python -m kdns`.

Each server is pinned to CPU 0 and dnsperf to CPU 1 (taskset). For every server the run prints:
the maximum rate dnsperf reached, the server's CPU time per answered query (read from
/proc/PID/stat before and after; this is the honest measure once dnsperf itself saturates its
core), the latency p50/p99 measured at half of that server's maximum rate, lost queries, and the
response codes dnsperf counted. Then the ratios of CPU per query: kdns/baseline, kdns/C server,
kdns/CoreDNS (and of queries/s for CoreDNS).

CoreDNS (with its kubernetes plugin and `cache`) runs when the e2e binaries are built
(tests/e2e/build.sh, `${KDNS_E2E_CACHE:-~/.cache/kdns-e2e}/bin`): the e2e harness starts a real
etcd + kube-apiserver + kube-controller-manager, the same manifests are created in it, and CoreDNS
(GOMAXPROCS=1) watches it; kdns is measured a second time fed by that API server (`kdns-api`).
The control plane is pinned to CPU 1 once loaded and its CPU is not counted: CPU per query is the
DNS server's process alone. See bench/coredns_peer.py.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import coredns_peer  # noqa: E402
from dataset import Shape, query_lines, write_manifests  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


Answer = tuple[str, tuple[str, ...]]  # rcode, sorted answer records (TTLs left out)


@dataclass
class Result:
    name: str
    key: str = ""  # kdns, dnslib, nsd, coredns, kdns-api: what the ratios look up
    qps: float = 0.0
    cpu_us: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    lost: int = 0
    sent: int = 0
    rcodes: dict[str, int] = field(default_factory=dict)  # of the maximum-rate run
    answers: dict[str, Answer] = field(default_factory=dict)  # of the sample of the query file
    note: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (nsd forks its server processes)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, IndexError):
                continue
    tree = []
    for p in parents:
        q = p
        while q > 1 and q != pid:
            q = parents.get(q, 0)
        if q == pid:
            tree.append(p)
    return tree


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU of a process, its threads and its descendants, in seconds."""
    user = system = 0
    for p in process_tree(pid):
        try:
            fields = _stat(p)
            user += int(fields[11])
            system += int(fields[12])
        except OSError:
            continue
    return user / TICKS, system / TICKS


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, its threads and its descendants (nsd forks), in seconds."""
    return sum(cpu_times(pid))


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


def rcodes(out: str) -> dict[str, int]:
    """dnsperf's `Response codes:  NOERROR 181207 (90.07%), NXDOMAIN 19980 (9.93%)`."""
    m = re.search(r"Response codes:\s+(.*)", out)
    return {code: int(n) for code, n in re.findall(r"(\w+) (\d+) \(", m.group(1))} if m else {}


def ask_all(port: int, lines: list[str]) -> dict[str, Answer]:
    """Each query line asked once: rcode and answer records, lowercased, TTLs left out."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    out: dict[str, Answer] = {}
    for line in lines:
        name, qtype = line.split()
        try:
            reply = dns.query.udp(
                dns.message.make_query(name, qtype), "127.0.0.1", port=port, timeout=2.0
            )
        except dns.exception.Timeout:
            out[line] = ("TIMEOUT", ())
            continue
        records = []
        for rrset in reply.answer:
            for text in rrset.to_text().splitlines():
                fields = text.lower().split()
                records.append(" ".join([fields[0], *fields[2:]]))  # without the TTL
        out[line] = (dns.rcode.to_text(reply.rcode()), tuple(sorted(records)))
    return out


def kind(line: str) -> str:
    """The part of the query mix a query line belongs to (bench/dataset.py's query_lines)."""
    name, qtype = line.split()
    if qtype != "A":
        return qtype
    if name.startswith("missing-"):
        return "NXDOMAIN A"
    if name.startswith("db-"):
        return "headless A"
    return "mixed-case A" if name != name.lower() else "ClusterIP A"


def measure(
    name: str,
    cmd: list[str],
    port: int,
    queries: Path,
    seconds: float,
    *,
    key: str,
    log: Path,
    sample: list[str],
    env: dict[str, str] | None = None,
    ready: Callable[[int], None] | None = None,
) -> Result:
    """Start `cmd` on CPU 0, wait for it (and for `ready`), ask it `sample`, then load it."""
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            ["taskset", "-c", "0", *cmd], stdout=fh, stderr=subprocess.STDOUT, env=env
        )
    result = Result(name, key)
    try:
        try:
            wait_answering(port)
            if ready:
                ready(port)
        except (RuntimeError, TimeoutError) as err:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"{name}: {err}\n{tail}") from None
        result.answers = ask_all(port, sample)
        dnsperf(port, queries, 2, None)  # warm caches
        before = cpu_seconds(proc.pid)
        out = dnsperf(port, queries, seconds, None)
        used = cpu_seconds(proc.pid) - before
        completed = stat(out, "Queries completed")
        result.qps = stat(out, "Queries per second")
        result.sent = int(stat(out, "Queries sent"))
        result.cpu_us = used / completed * 1e6 if completed else 0.0
        result.rcodes = rcodes(out)
        # Latency at half the maximum rate, where a server is meant to run: dnsperf makes the
        # load (printing every answer with -v would slow dnsperf itself and skew the figures),
        # and a probe beside it times single queries.
        load = subprocess.Popen(
            dnsperf_cmd(port, queries, min(seconds, 6), result.qps / 2),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        time.sleep(1.0)
        lat = sorted(probe(port, queries, samples=3000, rate=1000))
        out, _ = load.communicate(timeout=seconds + 60)
        if lat:
            result.p50_us = lat[len(lat) // 2] * 1e6
            result.p99_us = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6
        result.lost = int(stat(out, "Queries lost"))
    finally:
        stop(proc)
    return result


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def write_zonefile(zones: Path, path: Path) -> Path:
    """`kdns records` of `zones`, as the zone file nsd serves."""
    records = subprocess.run(
        [sys.executable, "-m", "kdns", "records", "--zones", str(zones)],
        capture_output=True,
        text=True,
        check=True,
    )
    path.write_text(records.stdout)
    return path


def nsd_config(work: Path, zonefile: Path, port: int) -> Path | None:
    """An nsd configuration serving the same records, or None when nsd is not installed."""
    if not shutil.which("nsd"):
        return None
    forward: list[str] = []
    reverse: list[str] = []
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


SKIPPABLE = ("kdns", "kdns-pip", "dnslib", "nsd", "coredns", "kdns-api")
SAMPLE = 400  # distinct query lines every server is asked once, to compare the answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--append", type=Path, default=None, help="append results to this file")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=SKIPPABLE,
        help="leave a server out (repeatable); kdns-api is kdns fed by CoreDNS's API server",
    )
    args = parser.parse_args()
    for tool in ("dnsperf", "dig", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed (apt-get install dnsperf bind9-dnsutils)")
    shape = Shape(services=args.services)
    python = sys.executable
    notes: list[str] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="kdns-bench-") as tmp:
        work = Path(tmp)
        zones, queries, sample, zonefile = prepare(work, shape)
        results: list[Result] = []

        def run(name: str, key: str, cmd: list[str], port: int, **kw: Any) -> None:
            log = work / f"{key}.log"
            results.append(
                measure(
                    name, cmd, port, queries, args.seconds, key=key, log=log, sample=sample, **kw
                )
            )

        if "kdns" not in args.skip:
            port = free_port()
            cmd = [python, "-m", "kdns", "serve", "--zones", str(zones), "--log-level", "warning"]
            run("kdns", "kdns", [*cmd, "--listen", f"127.0.0.1:{port}"], port)
        if "kdns-pip" not in args.skip:
            # What users install: the README's `pip install .` into a fresh virtualenv, and its
            # console script, beside the development environment's kdns above.
            script = fresh_install(work, notes)
            if script is not None:
                port = free_port()
                cmd = [str(script), "serve", "--zones", str(zones), "--log-level", "warning"]
                run(
                    "kdns (fresh `pip install .`)",
                    "kdns-pip",
                    [*cmd, "--listen", f"127.0.0.1:{port}"],
                    port,
                )
        if "dnslib" not in args.skip:
            port = free_port()
            cmd = [python, str(HERE / "baseline_dnslib.py"), str(zonefile), str(port)]
            run("dnslib DNSServer", "dnslib", cmd, port)
        if "nsd" not in args.skip:
            port = free_port()
            conf = nsd_config(work, zonefile, port)
            if conf is not None:
                run("nsd (C)", "nsd", ["nsd", "-d", "-c", str(conf)], port)
            else:
                notes.append("nsd: skipped, not installed (apt-get install nsd).")
        peers = [p for p in ("coredns", "kdns-api") if p not in args.skip]
        reason = coredns_peer.unavailable() if peers else None
        if reason:
            names = {"coredns": "CoreDNS", "kdns-api": "kdns --kubeconfig"}
            notes.append(f"{' and '.join(names[p] for p in peers)}: skipped, {reason}.")
        elif peers:
            try:
                run_api_peers(peers, work, python, run, notes)
            except Exception as err:
                failed = True
                notes.append(f"CoreDNS / API server peers: FAILED: {err}")
        report = render(results, args, notes)
        print(report)
        if args.append:
            with args.append.open("a") as f:
                f.write(report + "\n")
    if failed:
        sys.exit(1)


def prepare(work: Path, shape: Shape) -> tuple[Path, Path, list[str], Path]:
    """The benchmark's data in `work`: the zones/ manifests, dnsperf's query file, the sample
    of distinct questions whose answers are compared, and the zone file nsd serves."""
    zones = work / "zones"
    write_manifests(zones, shape)
    lines = query_lines(shape)
    queries = work / "queries.txt"
    queries.write_text("\n".join(lines) + "\n")
    sample = list(dict.fromkeys(lines))[:SAMPLE]
    return zones, queries, sample, write_zonefile(zones, work / "records.zone")


def fresh_install(work: Path, notes: list[str]) -> Path | None:
    """The `kdns` console script of a new virtualenv into which the checkout was installed the
    way the README tells users (`pip install .`); None (with a note) when that fails."""
    venv = work / "fresh-venv"
    started = time.monotonic()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", str(HERE.parent)],
            check=True,
            timeout=900,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        tail = getattr(err, "stderr", b"") or b""
        notes.append(
            f"kdns-pip: skipped, `pip install .` failed: {tail.decode(errors='replace')[-300:]}"
        )
        return None
    loop = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import uvloop; print(uvloop.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    notes.append(
        f"kdns-pip: a fresh virtualenv, `pip install .` ({time.monotonic() - started:.0f} s); "
        f"uvloop {loop.stdout.strip() or 'NOT INSTALLED'}"
    )
    return venv / "bin" / "kdns"


def run_api_peers(
    peers: list[str],
    work: Path,
    python: str,
    run: Callable[..., None],
    notes: list[str],
) -> None:
    """CoreDNS, and kdns --kubeconfig, each watching a real API server holding the same data."""
    with coredns_peer.loaded_control_plane(work / "controlplane", work / "zones", cpu=1) as loaded:
        cp = loaded.cp
        notes.append(
            f"API server peers: etcd + kube-apiserver + kube-controller-manager "
            f"(the e2e harness) started in {loaded.start_seconds:.1f} s, "
            f"{loaded.objects} objects created in {loaded.load_seconds:.1f} s "
            f"({coredns_peer.PARALLEL} parallel requests); then pinned to CPU 1. Their CPU is "
            "not counted: CPU per query is the DNS server's process alone."
        )

        def ready(port: int) -> None:
            coredns_peer.wait_everything(port, loaded.expect)

        if "coredns" in peers:
            port = free_port()
            cmd, env = coredns_peer.coredns_command(cp, work, port)
            name = f"{coredns_peer.coredns_version()} (kubernetes, cache)"
            run(name, "coredns", cmd, port, env=env, ready=ready)
            notes.append(
                "CoreDNS: Corefile `.:PORT { bind 127.0.0.1; kubernetes cluster.local "
                "in-addr.arpa ip6.arpa { kubeconfig …; pods insecure; ttl 5 }; cache 30 }`, "
                "GOMAXPROCS=1, pinned to CPU 0 like the others."
            )
        if "kdns-api" in peers:
            port = free_port()
            cmd = coredns_peer.kdns_command(python, cp, work, port)
            run("kdns --kubeconfig", "kdns-api", cmd, port, ready=ready)


def ratio_lines(k: Result, o: Result, label: str, qps: bool = False) -> list[str]:
    """`kdns / label` in CPU per query (and in queries/s)."""
    out: list[str] = []
    if k.cpu_us and o.cpu_us:
        r = k.cpu_us / o.cpu_us
        out.append(
            f"- CPU per query, {k.name} / {label}: {r:.3f} "
            f"({o.cpu_us / k.cpu_us:.1f}x less CPU per query than {label})"
            if k.cpu_us < o.cpu_us
            else f"- CPU per query, {k.name} / {label}: {r:.2f}"
        )
    if qps and k.qps and o.qps:
        out.append(f"- queries/s, {k.name} / {label}: {k.qps / o.qps:.2f}")
    return out


def rcode_text(codes: dict[str, int]) -> str:
    total = sum(codes.values())
    if not total:
        return "-"
    return ", ".join(f"{c} {n / total:.1%}" for c, n in sorted(codes.items(), key=lambda x: -x[1]))


def answer_differences(results: list[Result]) -> list[str]:
    """Per server, the sampled query lines whose rcode or answer differ from the first server's."""
    if len(results) < 2 or not results[0].answers:
        return []
    ref = results[0]
    out = [
        f"Answers compared on {len(ref.answers)} distinct query lines of the mix (rcode and answer"
        f" records, lowercased, TTLs left out), against {ref.name}:"
    ]
    for r in results[1:]:
        diffs = [q for q, a in r.answers.items() if ref.answers.get(q) != a]
        if not diffs:
            out.append(f"- {r.name}: all the same")
            continue
        by_kind: dict[str, int] = {}
        for q in diffs:
            by_kind[kind(q)] = by_kind.get(kind(q), 0) + 1
        summary = ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items()))
        q = diffs[0]
        out.append(
            f"- {r.name}: {len(diffs)} differ ({summary}); e.g. `{q}`: "
            f"{ref.name} {ref.answers[q]}, {r.name} {r.answers[q]}"
        )
    return out


def render(results: list[Result], args: argparse.Namespace, notes: list[str]) -> str:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    command = " ".join(["python bench/run.py", *sys.argv[1:]])
    lines = [
        f"## {datetime.datetime.now().isoformat(timespec='seconds')} — {cpu}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "",
        f"Command: `{command}` (--seconds {args.seconds:g}, --services {args.services}); "
        f"load average at the end: {load}",
        "",
        "Server on CPU 0, dnsperf on CPU 1. Latency and losses: at half the server's maximum rate"
        " (dnsperf load, single-query probe beside it). Response codes: of the maximum-rate run.",
        "",
        "| server | max queries/s | server CPU µs/query | p50 µs | p99 µs | lost "
        "| response codes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.qps:,.0f} | {r.cpu_us:.1f} | {r.p50_us:.0f} | {r.p99_us:.0f} | "
            f"{r.lost} | {rcode_text(r.rcodes)} |"
        )
    by = {r.key: r for r in results}
    ratios: list[str] = []
    for mine in ("kdns", "kdns-api"):
        k = by.get(mine)
        if not k:
            continue
        others: tuple[tuple[str, str], ...] = (("coredns", "CoreDNS"),)
        if mine == "kdns":
            others = (
                ("kdns-pip", "kdns from a fresh `pip install .`"),
                ("dnslib", "dnslib baseline"),
                ("nsd", "nsd (C)"),
                *others,
            )
        for other, label in others:
            o = by.get(other)
            if o:
                ratios += ratio_lines(k, o, label, qps=other == "coredns")
    if ratios:
        lines += ["", *ratios]
    differences = answer_differences(results)
    if differences:
        lines += ["", *differences]
    if notes:
        lines += ["", *(f"- {n}" if not n.startswith("- ") else n for n in notes)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
