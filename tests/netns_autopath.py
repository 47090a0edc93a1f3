"""Run inside `unshare --net --mount`: a pod's view of kdns, asked with glibc's resolver.

kdns serves ZONES_DIR on 127.0.0.1:53 (its Pod manifests give 127.0.0.1 to a pod in namespace
`shop`, so the client is that pod) with `--pods verified` and the extra flags given, beside an
upstream for names outside the zones; resolv.conf is a pod's in `shop`: the cluster search path
and `ndots:5`. For each name, `getent ahosts NAME` runs and the questions kdns received for it
are counted from its query log. Prints one JSON object: name -> {"addresses", "questions"}.

    unshare --net --mount python -m tests.netns_autopath ZONES_DIR [KDNS FLAGS...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import dns.message
import dns.query

from testkit.upstream import Upstream
from tests.kdns_process import KdnsProcess, start_kdns, until

SEARCH = "search shop.svc.cluster.local svc.cluster.local cluster.local"
UPSTREAM = {
    ("api.example.com.", "A"): ["api.example.com. 300 IN A 192.0.2.20"],
    ("api.example.com.", "AAAA"): ["api.example.com. 300 IN AAAA 2001:db8::20"],
    ("www.example.org.", "A"): ["www.example.org. 300 IN A 192.0.2.30"],
    ("www.example.org.", "AAAA"): [],
}
#: What a pod looks up: an external name (with and without AAAA), a service of its own
#: namespace by short name, one of another namespace, and a name that exists nowhere.
NAMES = ["api.example.com", "www.example.org", "web", "db.data", "nowhere.example.net"]


def main(zones: str, flags: list[str]) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    subprocess.run(["mount", "--make-rprivate", "/"], check=True, timeout=10)
    conf = Path(tempfile.mkdtemp()) / "resolv.conf"
    conf.write_text(f"nameserver 127.0.0.1\n{SEARCH}\noptions ndots:5 timeout:2 attempts:1\n")
    subprocess.run(["mount", "--bind", str(conf), "/etc/resolv.conf"], check=True, timeout=10)
    upstream = Upstream(UPSTREAM, default=lambda name, qtype: "NXDOMAIN")
    kp = start_kdns(
        [
            "--zones",
            zones,
            "--listen",
            "127.0.0.1:53",
            "--upstream",
            f"127.0.0.1:{upstream.port}",
            "--pods",
            "verified",
            "--log-queries",
            *flags,
        ]
    )
    results: dict[str, dict[str, object]] = {}
    try:
        for i, name in enumerate(NAMES):
            start = _barrier(kp, f"before-{i}")
            out = subprocess.run(
                ["getent", "ahosts", name], capture_output=True, text=True, timeout=30
            )
            end = _barrier(kp, f"after-{i}")
            asked = [line for line in kp.lines[start + 1 : end] if "client=" in line]
            results[name] = {
                "addresses": sorted({line.split()[0] for line in out.stdout.splitlines()}),
                "questions": len(asked),
            }
        sys.stdout.write(json.dumps(results) + "\n")
        return 0
    finally:
        kp.stop()
        upstream.close()


def _barrier(kp: KdnsProcess, label: str) -> int:
    """Ask kdns a marker question and return the index of its query-log line: kdns logs
    questions in the order it answers them, so every question answered before the marker was
    sent (all of a finished getent's) is logged before that line."""
    marker = f"marker-{label}.shop.svc.cluster.local"
    dns.query.udp(dns.message.make_query(marker, "TXT"), "127.0.0.1", port=53, timeout=5)
    # 1-based, so that the first line is a true value for `until`.
    found = until(lambda: next((i + 1 for i, line in enumerate(kp.lines) if marker in line), 0), 10)
    assert found, f"no query-log line for {marker}: " + "\n".join(kp.lines[-10:])
    return found - 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
