"""Slowloris against a live kdns: connections held by a slow attacker vs answers to a good client.

    python bench/slowloris.py                         # kdns defaults, 2,000 attacking sockets, 30 s
    python bench/slowloris.py --duration 10 --connections 1500 --kdns-arg=--tcp-idle-timeout=2

The attacker opens up to `--connections` TCP connections (at most `--reconnect-rate` new ones a
second), sends one byte of a length prefix on each, then trickles one more byte a second, never
completing a message; whenever kdns closes one, it opens another. Meanwhile a good client asks
`my-service.default.svc.cluster.local A` in a loop: over UDP, over a new TCP connection each time,
and over one persistent TCP connection (reopened if it is closed). Every second it prints the
connections kdns holds open for the attacker (opened and not yet closed by kdns) and the good
client's answers; at the end, a summary and a `SLOWLORIS-SUMMARY {json}` line.

kdns's defaults: 1000 TCP connections, 10 s idle timeout (a connection that completes no message
for that long is closed, however many bytes it trickles). Every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode

ROOT = Path(__file__).resolve().parent.parent
SERVING = re.compile(r"serving \S+ on (\S+) port (\d+)")
NAME = "my-service.default.svc.cluster.local"


def start_kdns(zones: Path, extra: Sequence[str]) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "kdns", "serve", "--zones", str(zones)]
    cmd += ["--listen", "127.0.0.1:0", "--lameduck", "0", *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    found = threading.Event()
    port = [0]

    def reader() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:  # drained to the end, so kdns never blocks on its log
            m = SERVING.search(line)
            if m and not port[0]:
                port[0] = int(m.group(2))
                found.set()
        found.set()

    threading.Thread(target=reader, daemon=True).start()
    if not found.wait(20) or not port[0]:
        proc.kill()
        proc.wait(5)
        raise RuntimeError("kdns did not start")
    return proc, port[0]


@dataclass
class Attacker:
    port: int
    connections: int
    reconnect_rate: float
    opened: int = 0
    closed_by_server: int = 0
    refused: int = 0
    held: int = 0
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self, until: float) -> None:
        sel = selectors.DefaultSelector()
        socks: dict[socket.socket, float] = {}  # socket -> when it last trickled
        budget = 0.0
        last = time.monotonic()
        try:
            while not self._stop.is_set() and time.monotonic() < until:
                now = time.monotonic()
                budget = min(self.reconnect_rate, budget + (now - last) * self.reconnect_rate)
                last = now
                while len(socks) < self.connections and budget >= 1:
                    budget -= 1
                    try:
                        s = socket.create_connection(("127.0.0.1", self.port), timeout=1)
                        s.sendall(b"\x01")  # half a length prefix: a 256+ byte message, later
                    except OSError:
                        self.refused += 1
                        continue
                    s.setblocking(False)
                    sel.register(s, selectors.EVENT_READ, s)
                    socks[s] = now
                    self.opened += 1
                for key, _ in sel.select(timeout=0.05):
                    s = key.data
                    try:
                        data = s.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:  # kdns closed it: over the cap at once, or at the idle timeout
                        sel.unregister(s)
                        socks.pop(s, None)
                        s.close()
                        self.closed_by_server += 1
                for s, at in list(socks.items()):
                    if now - at >= 1.0:  # trickle: one more byte a second, never a whole message
                        socks[s] = now
                        with contextlib.suppress(OSError):
                            s.send(b"\x00")
                self.held = len(socks)
        finally:
            for s in list(socks):
                sel.unregister(s)
                s.close()
            sel.close()

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)

    def record(self, ok: bool, started: float) -> None:
        if ok:
            self.ok += 1
            self.latencies.append(time.monotonic() - started)
        else:
            self.failed += 1

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1000 if lat else None
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000 if len(lat) >= 100 else None
        return {"ok": self.ok, "failed": self.failed, "p50_ms": p50, "p99_ms": p99}


def _tcp_ask(sock: socket.socket, wire: bytes) -> bool:
    sock.sendall(struct.pack("!H", len(wire)) + wire)
    buf = b""
    while len(buf) < 2 or len(buf) < 2 + struct.unpack_from("!H", buf)[0]:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        buf += chunk
    reply = dns.message.from_wire(buf[2:])
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


@dataclass
class GoodClient:
    port: int
    udp: Tally = field(default_factory=Tally)
    tcp_new: Tally = field(default_factory=Tally)
    tcp_kept: Tally = field(default_factory=Tally)

    def run(self, until: float) -> None:
        q = dns.message.make_query(NAME, "A")
        wire = q.to_wire()
        kept: socket.socket | None = None
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                r = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=1)
                self.udp.record(r.rcode() == dns.rcode.NOERROR and bool(r.answer), started)
            except Exception:
                self.udp.record(False, started)
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    self.tcp_new.record(_tcp_ask(s, wire), started)
            except Exception:
                self.tcp_new.record(False, started)
            started = time.monotonic()
            try:
                if kept is None:
                    kept = socket.create_connection(("127.0.0.1", self.port), timeout=1)
                ok = _tcp_ask(kept, wire)
            except Exception:
                ok = False
            self.tcp_kept.record(ok, started)
            if not ok and kept is not None:
                kept.close()
                kept = None
            time.sleep(0.02)
        if kept is not None:
            kept.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Slowloris against a live kdns.")
    ap.add_argument("--connections", type=int, default=2000, help="attacking sockets (2000)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of attack (30)")
    ap.add_argument("--reconnect-rate", type=float, default=500.0, help="new attacking conns/s")
    ap.add_argument("--zones", type=Path, default=ROOT / "zones")
    ap.add_argument("--kdns-arg", action="append", default=[], help="extra kdns serve argument")
    args = ap.parse_args(argv)

    proc, port = start_kdns(args.zones, args.kdns_arg)
    began = time.monotonic()
    until = began + args.duration
    attacker = Attacker(port, args.connections, args.reconnect_rate)
    good = GoodClient(port)
    threads = [
        threading.Thread(target=attacker.run, args=(until,), daemon=True),
        threading.Thread(target=good.run, args=(until + 0.5,), daemon=True),
    ]
    try:
        for t in threads:
            t.start()
        print(
            f"slowloris: kdns on port {port}, {args.connections} attacking sockets, {args.kdns_arg}"
        )
        print("   t  held  udp ok/fail  tcp-new ok/fail  tcp-kept ok/fail")
        while time.monotonic() < until:
            time.sleep(1.0)
            attacker.samples.append(attacker.held)
            print(
                f"{time.monotonic() - began:4.0f} {attacker.held:5d}"
                f"  {good.udp.ok:6d}/{good.udp.failed:<4d}"
                f"  {good.tcp_new.ok:8d}/{good.tcp_new.failed:<6d}"
                f"  {good.tcp_kept.ok:8d}/{good.tcp_kept.failed:<6d}",
                flush=True,
            )
        for t in threads:
            t.join(5)
        alive = proc.poll() is None
    finally:
        attacker.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    samples = attacker.samples or [0]
    summary = {
        "duration_s": args.duration,
        "attacking_sockets": args.connections,
        "kdns_args": args.kdns_arg,
        "held_max": max(samples),
        "held_mean": round(statistics.mean(samples), 1),
        "attacker_opened": attacker.opened,
        "attacker_closed_by_kdns": attacker.closed_by_server,
        "attacker_connect_failures": attacker.refused,
        "good_udp": good.udp.summary(),
        "good_tcp_new_connection": good.tcp_new.summary(),
        "good_tcp_persistent": good.tcp_kept.summary(),
        "kdns_alive": alive,
    }
    print(
        f"slowloris: kdns held up to {summary['held_max']} attacking connections"
        f" (mean {summary['held_mean']}); good client answered: UDP {good.udp.ok}/"
        f"{good.udp.ok + good.udp.failed}, TCP new connection {good.tcp_new.ok}/"
        f"{good.tcp_new.ok + good.tcp_new.failed}, TCP persistent {good.tcp_kept.ok}/"
        f"{good.tcp_kept.ok + good.tcp_kept.failed}; kdns alive: {alive}"
    )
    print("SLOWLORIS-SUMMARY " + json.dumps(summary, sort_keys=True), flush=True)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
