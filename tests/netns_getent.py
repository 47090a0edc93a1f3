"""Run inside `unshare --net --mount`: kdns on 127.0.0.1:53 and an upstream, resolv.conf naming
only kdns, then `getent ahosts remote.shop.svc.cluster.local`; prints getent's output.

    unshare --net --mount python -m tests.netns_getent ZONES_DIR
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from testkit.upstream import Upstream
from tests.kdns_process import start_kdns
from tests.test_external_name import TABLE


def main(zones: str) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    # Our mounts stay in this namespace.
    subprocess.run(["mount", "--make-rprivate", "/"], check=True, timeout=10)
    conf = Path(tempfile.mkdtemp()) / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
    subprocess.run(["mount", "--bind", str(conf), "/etc/resolv.conf"], check=True, timeout=10)
    upstream = Upstream(TABLE)
    kp = start_kdns(
        ["--zones", zones, "--listen", "127.0.0.1:53", "--upstream", f"127.0.0.1:{upstream.port}"]
    )
    try:
        out = subprocess.run(
            ["getent", "ahosts", "remote.shop.svc.cluster.local"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
        return out.returncode
    finally:
        kp.stop()
        upstream.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
