"""What two kinds of hostile query cost a kdns server: memory by query length, CPU by record count.

    python bench/hostile_queries.py [--kdns-src DIR] [--count 4000] [--size 30000]

kdns serves the bundled zones/ with `--log-queries` (which takes the per-datagram UDP path, where
a datagram may be up to 64 KiB). Then:

1. **Memory.** `--count` UDP queries for one cached name, each made distinct by its EDNS padding
   option and `--size` bytes long, one at a time; kdns's VmRSS before, after, and 2 s after.
2. **CPU.** A query whose additional section holds as many records as fit in 65,535 bytes, each
   owner a compression pointer at the end of a 62-pointer chain: sent 10 times down one TCP
   connection; the time to the 10 answers, and the round trip of an ordinary UDP query sent
   meanwhile.

`--kdns-src DIR` runs the kdns package of another checkout (to compare two commits in one
command; the same machine, the same zones/).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = b"".join(
    bytes([len(p)]) + p.encode() for p in ["my-service", "default", "svc", "cluster", "local"]
)
QUESTION = NAME + b"\x00" + struct.pack("!HH", 1, 1)


def header(id_: int = 0x1234, ar: int = 0) -> bytes:
    return struct.pack("!6H", id_, 0x0100, 1, 0, 0, ar)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def padded(i: int, size: int) -> bytes:
    pad = size - 12 - len(QUESTION) - 11 - 4
    option = struct.pack("!HH", 12, pad) + i.to_bytes(4, "big") + b"\0" * (pad - 4)
    opt = b"\x00" + struct.pack("!HHBBHH", 41, 1232, 0, 0, 0, len(option)) + option
    return header(i & 0xFFFF, ar=1) + QUESTION + opt


def pointer_chain(total: int) -> tuple[bytes, int]:
    base = 12 + len(QUESTION)
    start = base + 11  # the first record's rdata
    chain = b"".join(
        struct.pack("!H", 0xC000 | (12 if k == 0 else start + 2 * (k - 1))) for k in range(62)
    )
    first = b"\x00" + struct.pack("!HHIH", 16, 1, 0, len(chain)) + chain
    record = struct.pack("!H", 0xC000 | (start + 2 * 61)) + struct.pack("!HHIH", 16, 1, 0, 0)
    count = 1 + (total - base - len(first)) // len(record)
    return header(ar=count) + QUESTION + first + record * (count - 1), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kdns-src", type=Path, default=ROOT)
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--size", type=int, default=30000)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(args.kdns_src.resolve()))
    cmd = [sys.executable, "-m", "kdns", "serve", "--zones", str(ROOT / "zones")]
    cmd += ["--listen", "127.0.0.1:0", "--log-queries", "--log-level", "info"]
    log = Path(f"/tmp/kdns-hostile-{os.getpid()}.log")
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=out, env=env, cwd=args.kdns_src
        )
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"serving cluster.local on \S+ port (\d+)", log.read_text())
            port = int(found.group(1)) if found else None
            time.sleep(0.1)
        if port is None:
            sys.exit(f"kdns did not start: {log.read_text()}")
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(2)
        udp.sendto(header() + QUESTION, ("127.0.0.1", port))
        udp.recvfrom(65535)
        before = rss_mb(proc.pid)
        answered = 0
        for i in range(args.count):
            udp.sendto(padded(i, args.size), ("127.0.0.1", port))
            try:
                udp.recvfrom(65535)
                answered += 1
            except TimeoutError:
                pass
        after = rss_mb(proc.pid)
        time.sleep(2)
        later = rss_mb(proc.pid)
        print(f"kdns from {args.kdns_src}; python {sys.version.split()[0]}, {os.cpu_count()} cores")
        print(
            f"memory: {answered} of {args.count} padded queries of {args.size} bytes answered; "
            f"VmRSS {before:.0f} -> {after:.0f} MB ({later:.0f} MB 2 s later)"
        )
        message, records = pointer_chain(65535)
        tcp = socket.create_connection(("127.0.0.1", port), timeout=10)
        framed = struct.pack("!H", len(message)) + message
        began = time.monotonic()
        tcp.sendall(framed * 10)
        time.sleep(0.01)
        ordinary = time.monotonic()
        udp.sendto(header() + QUESTION, ("127.0.0.1", port))
        udp.recvfrom(65535)
        ordinary = time.monotonic() - ordinary
        got, rcodes = 0, set()
        buffer = b""
        while got < 10:
            chunk = tcp.recv(65536)
            if not chunk:
                break
            buffer += chunk
            while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack("!H", buffer[:2])[0]:
                n = struct.unpack("!H", buffer[:2])[0]
                rcodes.add(buffer[2 + 3] & 0xF)
                buffer = buffer[2 + n :]
                got += 1
        took = time.monotonic() - began
        tcp.close()
        print(
            f"cpu: 10 messages of {len(message)} bytes, {records} additional records each: "
            f"{got} answered (rcodes {sorted(rcodes)}) in {took * 1000:.1f} ms; an ordinary UDP "
            f"query meanwhile took {ordinary * 1000:.1f} ms"
        )
    finally:
        proc.terminate()
        proc.wait(10)
        log.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
