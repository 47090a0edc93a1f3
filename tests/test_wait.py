"""`kdns wait NAME [TYPE]` against a real server: exit 0 once the name has enough records (and
print them), exit 1 at the timeout with the last rcode and kdns's reason (its EDE)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.builders import headless_manifest
from tests.kdns_process import KDNS, start_kdns


def shop(ready: bool) -> str:
    return headless_manifest("shop", "db", ("pg", 5432), ["10.1.0.1", "10.1.0.2"], ready)


def wait(port: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [*KDNS, "wait", *args, "--server", f"127.0.0.1:{port}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_wait_ends_as_the_name_gets_its_records_or_says_why_not(tmp_path: Path) -> None:
    (tmp_path / "db.yaml").write_text(shop(True))
    kp = start_kdns(["--zones", str(tmp_path)])
    try:
        out = wait(kp.port, "db.shop.svc.cluster.local", "--min", "2")
        assert out.returncode == 0, out.stderr
        assert sorted(line.split()[-1] for line in out.stdout.splitlines()) == [
            "10.1.0.1",
            "10.1.0.2",
        ]
        out = wait(kp.port, "_pg._tcp.db.shop.svc.cluster.local", "SRV")
        assert out.returncode == 0 and out.stdout.count(" SRV ") == 2
        out = wait(kp.port, "db.shop.svc.cluster.local", "--min", "3", "--timeout", "1")
        assert out.returncode == 1
        assert out.stderr.strip() == (
            "kdns: error: db.shop.svc.cluster.local A: not 3 record(s) after 1 s: "
            "NOERROR, 2 record(s)"
        )
        out = wait(kp.port, "nope.shop.svc.cluster.local", "--timeout", "1")
        assert out.returncode == 1
        assert out.stderr.strip().endswith("NXDOMAIN (EDE 0: no service nope in namespace shop)"), (
            out.stderr
        )
    finally:
        kp.stop()


def test_wait_returns_when_the_endpoints_become_ready(tmp_path: Path) -> None:
    (tmp_path / "db.yaml").write_text(shop(False))
    kp = start_kdns(["--zones", str(tmp_path)])
    try:
        cmd = [*KDNS, "wait", "db.shop.svc.cluster.local", "--server", f"127.0.0.1:{kp.port}"]
        began = time.monotonic()
        proc = subprocess.Popen([*cmd, "--timeout", "30"], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1)  # it is waiting: the name is NXDOMAIN (0 ready endpoints)
            assert proc.poll() is None
            (tmp_path / "db.yaml").write_text(shop(True))
            assert proc.wait(30) == 0
        finally:
            proc.kill()
            proc.wait()
        assert time.monotonic() - began < 30, "it returned because the name changed"
    finally:
        kp.stop()


def test_wait_errors_are_one_line() -> None:
    for args, message in [
        (["x", "--server", "nonsense"], "kdns: error: bad address 'nonsense': expected HOST:PORT"),
        (["x", "MX", "--server", "127.0.0.1:1"], "kdns: error: unknown record type 'MX'"),
    ]:
        out = subprocess.run(
            [*KDNS, "wait", *args, "--timeout", "1"], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 1 and out.stderr.strip() == message, out.stderr
