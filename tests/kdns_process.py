"""Run `kdns serve` as a real subprocess on free ports, and query it with dig.

Port 0 is passed to --listen so the kernel picks a free port; kdns logs the port it got, and this
helper reads it from stderr, so parallel tests never fight over a port.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

SERVING = re.compile(r"serving \S+ on (\S+) port (\d+)")
HTTP = re.compile(r"http on (\S+) port (\d+)")
KDNS = [sys.executable, "-m", "kdns"]
#: `kdns` as a terminal's foreground job runs it: Ctrl-C (SIGINT) raises KeyboardInterrupt. A
#: test runner started in the background by a script inherits SIGINT ignored, and Python keeps an
#: inherited SIG_IGN, so a test that sends SIGINT to a plain KDNS child would wait forever.
KDNS_AT_A_TERMINAL = [
    sys.executable,
    "-c",
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('kdns', run_name='__main__', alter_sys=True)",
]
_T = TypeVar("_T")


def until(check: Callable[[], _T], timeout: float = 15.0, step: float = 0.02) -> _T:
    """Call `check` until it returns something true or `timeout` passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


@dataclass
class KdnsProcess:
    proc: subprocess.Popen[str]
    port: int = 0
    http_port: int = 0
    lines: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "\n".join(self.lines)

    def dig(self, *args: str, tcp: bool = False, timeout: float = 2.0) -> str:
        """Run dig against this server; returns stdout."""
        cmd = ["dig", "@127.0.0.1", "-p", str(self.port), f"+time={int(timeout)}", "+tries=1"]
        if tcp:
            cmd.append("+tcp")
        out = subprocess.run(
            cmd + list(args), capture_output=True, text=True, timeout=timeout * 3 + 5
        )
        return out.stdout

    def http_get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGINT) -> int:
        """Stop kdns (SIGINT: at once; SIGTERM: after the lame-duck period)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode


def start_kdns(
    args: Sequence[str],
    *,
    http: bool = False,
    timeout: float = 15.0,
    cwd: Path | None = None,
    command: Sequence[str] | None = None,
) -> KdnsProcess:
    """Start `kdns serve ARGS` on a free port and wait until it serves (or raise).

    `command` replaces `python -m kdns` (a launcher that adjusts a knob kdns has no flag for)."""
    # KDNS is read at each call, not bound as a default: tests replace it (a launcher).
    cmd = [*(command or KDNS), "serve", "--listen", "127.0.0.1:0", *args]
    if http:
        cmd += ["--http", "127.0.0.1:0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
    )
    kp = KdnsProcess(proc)
    ready = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            kp.lines.append(line.rstrip("\n"))
            m = SERVING.search(line)
            if m and not kp.port:
                kp.port = int(m.group(2))
                ready.set()
            m = HTTP.search(line)
            if m:
                kp.http_port = int(m.group(2))
        ready.set()

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.05):
        if time.monotonic() > deadline:
            kp.stop()
            raise RuntimeError(f"kdns did not start in {timeout}s:\n{kp.log()}")
    if not kp.port:
        kp.stop()
        raise RuntimeError(f"kdns exited before serving:\n{kp.log()}")
    return kp


def ipv6_loopback() -> bool:
    """Whether this machine has an IPv6 loopback (::1) to listen on."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True
