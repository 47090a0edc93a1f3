"""UDP in batches (recvmmsg/sendmmsg, kdns/serve/batch.py) against the datagram protocol and
nsd: bench/run.py's measurement, the three servers alternated in each round.

    python bench/mmsg.py [--rounds 3] [--seconds 10] [--services 1000]

Each round measures, one after the other, kdns with uvloop's datagram transport
(`--no-udp-batch`), kdns with the batch path (the default) and nsd, with bench/run.py's
`measure` (server on CPU 0, dnsperf on CPU 1, server CPU µs per answered query from /proc, p99 at
half the maximum rate); the order within a round turns each round, so that a change in the
machine's load does not always fall on the same server. Prints a Markdown table per round, the
load average after each round, and the means.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dataset import Shape  # noqa: E402
from run import Result, free_port, measure, nsd_config, prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--services", type=int, default=1000)
    args = parser.parse_args()
    shape = Shape(services=args.services)
    python = sys.executable
    runs: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="kdns-mmsg-") as tmp:
        work = Path(tmp)
        zones, queries, sample, zonefile = prepare(work, shape)

        def kdns(batch: str) -> Result:
            port = free_port()
            cmd = [python, "-m", "kdns", "serve", "--zones", str(zones), "--log-level", "warning"]
            cmd += [] if batch == "1" else ["--no-udp-batch"]
            name = "kdns, recvmmsg/sendmmsg" if batch == "1" else "kdns, datagram protocol"
            return measure(
                name,
                [*cmd, "--listen", f"127.0.0.1:{port}"],
                port,
                queries,
                args.seconds,
                key=name,
                log=work / "kdns.log",
                sample=sample,
            )

        def nsd() -> Result:
            port = free_port()
            conf = nsd_config(work, zonefile, port)
            if conf is None:
                return Result("nsd (C)", "nsd")
            cmd = ["nsd", "-d", "-c", str(conf)]
            return measure(
                "nsd (C)",
                cmd,
                port,
                queries,
                args.seconds,
                key="nsd",
                log=work / "nsd.log",
                sample=sample,
            )

        servers = [lambda: kdns("0"), lambda: kdns("1"), nsd]
        for r in range(args.rounds):
            order = servers[r % 3 :] + servers[: r % 3]
            results = [run() for run in order]
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            print(f"\nround {r + 1}, load average after it: {load}\n")
            print("| server | max queries/s | server CPU µs/query | p50 µs | p99 µs | lost |")
            print("|---|---|---|---|---|---|")
            for res in results:
                runs.setdefault(res.name, []).append(res)
                print(
                    f"| {res.name} | {res.qps:,.0f} | {res.cpu_us:.2f} | {res.p50_us:.0f} "
                    f"| {res.p99_us:.0f} | {res.lost} |"
                )
            ref = next(x for x in results if x.name.endswith("protocol"))
            for res in results:
                if res is not ref and res.answers and res.answers != ref.answers:
                    diff = [q for q, a in res.answers.items() if ref.answers.get(q) != a]
                    print(f"- {res.name}: {len(diff)} answers differ, e.g. {diff[:3]}")
            sys.stdout.flush()
    print("\nmeans over the rounds:\n")
    print("| server | CPU µs/query, each round | mean | max queries/s, mean | p99 µs, mean |")
    print("|---|---|---|---|---|")
    for name, rs in runs.items():
        cpu = [x.cpu_us for x in rs]
        print(
            f"| {name} | {', '.join(f'{c:.2f}' for c in cpu)} | {statistics.mean(cpu):.2f} "
            f"| {statistics.mean(x.qps for x in rs):,.0f} "
            f"| {statistics.mean(x.p99_us for x in rs):.0f} |"
        )


if __name__ == "__main__":
    main()
