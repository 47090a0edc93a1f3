"""Which pages a forked kdns process still shares with its parent, read from the kernel's page map.

    .venv/bin/python bench/cow_pages.py PID [--parent PPID]
    .venv/bin/python bench/cow_pages.py PID --watch 30 --every 0.5

A serving process of `kdns serve --workers N` shares the main process's pages until either
writes one (CPython writes a reference count into every object it reads). Pss and Private
(`/proc/PID/smaps_rollup`, printed by `bench/scale.py`) say how much is no longer shared; this
says which pages, and when they stopped being shared.

- Compare (default): every present page of PID's writable mappings against the same address in
  its parent (`--parent`, default its PPID): shared (same physical frame), copied (both present,
  different frames: one of the two wrote it since the fork), only in PID (allocated since), per
  mapping (the heap, anonymous memory, each library's data).
- `--watch SECONDS --every S`: how many of PID's pages moved to another frame in each interval:
  copy-on-write as it happens (a burst at a moment says what did it; a process that owns its
  pages alone moves none).

Reading physical frame numbers needs root (CAP_SYS_ADMIN); without it the kernel gives zeros and
this says so.
"""

from __future__ import annotations

import argparse
import collections
import struct
import sys
import time
from pathlib import Path

PAGE = 4096
PRESENT = 1 << 63
FRAME = (1 << 55) - 1
ENTRY = struct.Struct("<Q")


def frames(pid: int) -> dict[int, tuple[int, str]]:
    """Address -> (physical frame, mapping name) of every present page of `pid`'s writable
    mappings."""
    out: dict[int, tuple[int, str]] = {}
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            parts = line.split(maxsplit=5)
            if "w" not in parts[1]:
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            name = parts[5].strip() if len(parts) > 5 else "[anonymous]"
            pagemap.seek(start // PAGE * ENTRY.size)
            raw = pagemap.read((end - start) // PAGE * ENTRY.size)
            for i, (entry,) in enumerate(ENTRY.iter_unpack(raw)):
                if entry & PRESENT:
                    out[start + i * PAGE] = (entry & FRAME, name)
    return out


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise SystemExit(f"no parent for {pid}")


def compare(pid: int, parent: int) -> None:
    child, par = frames(pid), frames(parent)
    if child and not any(frame for frame, _ in child.values()):
        raise SystemExit("the kernel hid the frame numbers: run as root")
    rows: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for address, (frame, name) in child.items():
        theirs = par.get(address)
        kind = "only here" if theirs is None else "shared" if theirs[0] == frame else "copied"
        rows[name][kind] += 1
        rows["all"][kind] += 1
    print(f"pid {pid} against its parent {parent}: MB of present pages")
    print(f"{'mapping':<60} {'shared':>8} {'copied':>8} {'only here':>10}")
    order = sorted(rows, key=lambda n: (n != "all", -sum(rows[n].values())))
    for name in order[:15]:
        c = rows[name]
        mb = [c[k] * PAGE / 2**20 for k in ("shared", "copied", "only here")]
        if max(mb) < 0.05:
            continue
        print(f"{name[-60:]:<60} {mb[0]:8.1f} {mb[1]:8.1f} {mb[2]:10.1f}")


def watch(pid: int, seconds: float, every: float) -> None:
    before = frames(pid)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        time.sleep(every)
        now = frames(pid)
        moved = sum(1 for a, (f, _) in now.items() if a in before and before[a][0] != f)
        print(
            f"{time.monotonic() - start:6.1f} s  present {len(now) * PAGE / 2**20:7.1f} MB  "
            f"moved {moved * PAGE / 2**20:6.1f} MB ({moved} pages)",
            flush=True,
        )
        before = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("--parent", type=int, help="compare with this process [its parent]")
    parser.add_argument("--watch", type=float, help="report pages moved for this many seconds")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between reports")
    args = parser.parse_args()
    try:
        if args.watch:
            watch(args.pid, args.watch, args.every)
        else:
            compare(args.pid, args.parent or parent_of(args.pid))
    except (FileNotFoundError, ProcessLookupError, PermissionError) as err:
        sys.exit(f"cow_pages: {err}")


if __name__ == "__main__":
    main()
