"""`--pods verified`: `<a-b-c-d>.<ns>.pod.<zone>` answers only for the address of a pod in <ns>.

Over real sockets, with the real `kubernetes` client watching pods on the API double (which
speaks the list/watch wire protocol), and from Pod manifests in zones/. Every change is asked
about before and after it, so an answer cached before the change must not outlive it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from testkit.apiserver import FakeApiServer, namespace, pod, write_kubeconfig
from tests.kdns_process import KDNS, KdnsProcess, start_kdns, until


def ask(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=0)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=5)


def answer(port: int, name: str, rdtype: str = "A") -> list[str] | str:
    """The addresses answered, or the rcode's name when there are none."""
    r = ask(port, name, rdtype)
    if r.rcode() != dns.rcode.NOERROR or not r.answer:
        return dns.rcode.to_text(r.rcode())
    return sorted(rd.address for rrset in r.answer for rd in rrset)


def reasons(port: int, name: str) -> list[str]:
    r = ask(port, name)
    return [o.text or "" for o in r.options if isinstance(o, dns.edns.EDEOption)]


def pod_name(address: str, ns: str) -> str:
    return f"{address.replace('.', '-').replace(':', '-')}.{ns}.pod.cluster.local"


@pytest.fixture
def api(tmp_path: Path) -> FakeApiServer:
    server = FakeApiServer().start()
    server.apply_all(
        [
            namespace("shop"),
            namespace("other"),
            pod("web-1", ["10.2.0.1"], "shop"),
            pod("dual-1", ["10.2.0.2", "fd00::2"], "shop"),
            pod("leaving-1", ["10.2.0.3"], "shop", deleting=True),
            pod("done-1", ["10.2.0.4"], "shop", phase="Succeeded"),
            pod("pending-1", [], "shop", phase="Pending"),
            pod("lost-1", ["10.2.0.5"], "shop", phase="Unknown"),
        ]
    )
    return server


def start(api: FakeApiServer, tmp_path: Path, *extra: str) -> KdnsProcess:
    kcfg = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    kp = start_kdns(["--kubeconfig", str(kcfg), *extra])
    assert until(lambda: answer(kp.port, "kubernetes.default.svc.cluster.local") != "SERVFAIL", 20)
    return kp


def test_verified_answers_a_pods_address_in_its_own_namespace_only(
    api: FakeApiServer, tmp_path: Path
) -> None:
    kp = start(api, tmp_path, "--pods", "verified")
    try:
        assert until(lambda: answer(kp.port, pod_name("10.2.0.1", "shop")) == ["10.2.0.1"], 20)
        # Every address of a dual-stack pod, the secondary one too.
        assert answer(kp.port, pod_name("10.2.0.2", "shop")) == ["10.2.0.2"]
        assert answer(kp.port, "fd00--2.shop.pod.cluster.local", "AAAA") == ["fd00::2"]
        # Another namespace, a terminating pod, a finished one, an address no pod has.
        for address, ns in [
            ("10.2.0.1", "other"),
            ("10.2.0.3", "shop"),
            ("10.2.0.4", "shop"),
            ("10.2.0.5", "shop"),
            ("10.2.0.9", "shop"),
        ]:
            assert answer(kp.port, pod_name(address, ns)) == "NXDOMAIN", (address, ns)
        assert reasons(kp.port, pod_name("10.2.0.1", "other")) == [
            "no pod has the address 10.2.0.1 in namespace other"
        ]
        # One spelling per address, the canonical one (as CoreDNS compares with podIP).
        full = "fd00-0000-0000-0000-0000-0000-0000-0002.shop.pod.cluster.local"
        assert answer(kp.port, full, "AAAA") == "NXDOMAIN"
        assert reasons(kp.port, full) == ["pod names spell fd00::2 as fd00--2"]
        # A namespace that does not exist stays NXDOMAIN for its own reason.
        assert reasons(kp.port, pod_name("10.2.0.1", "nowhere")) == ["no namespace nowhere"]

        # Changes: each name was just answered (and cached) in its old state.
        api.apply(pod("new-1", ["10.2.0.9"], "shop"))
        assert until(lambda: answer(kp.port, pod_name("10.2.0.9", "shop")) == ["10.2.0.9"], 10)
        api.delete("Pod", "web-1", "shop")
        assert until(lambda: answer(kp.port, pod_name("10.2.0.1", "shop")) == "NXDOMAIN", 10)
        api.apply(pod("dual-1", ["10.2.0.2", "fd00::2"], "shop", deleting=True))
        assert until(lambda: answer(kp.port, pod_name("10.2.0.2", "shop")) == "NXDOMAIN", 10)
        # The address moved to a pod of another namespace: it answers there, not here.
        api.apply(pod("moved-1", ["10.2.0.9"], "other"))
        api.delete("Pod", "new-1", "shop")
        assert until(lambda: answer(kp.port, pod_name("10.2.0.9", "other")) == ["10.2.0.9"], 10)
        assert until(lambda: answer(kp.port, pod_name("10.2.0.9", "shop")) == "NXDOMAIN", 10)
        assert api.requests("pods", watch=True), "kdns did not watch pods"
    finally:
        kp.stop()
        api.stop()


def test_insecure_and_disabled_never_ask_for_pods(api: FakeApiServer, tmp_path: Path) -> None:
    kp = start(api, tmp_path)  # insecure, the default: the name alone decides
    try:
        assert answer(kp.port, pod_name("10.2.0.1", "other")) == ["10.2.0.1"]
        assert answer(kp.port, pod_name("10.9.9.9", "shop")) == ["10.9.9.9"]
    finally:
        kp.stop()
    kp = start(api, tmp_path, "--pods", "disabled")
    try:
        assert answer(kp.port, pod_name("10.2.0.1", "shop")) == "NXDOMAIN"
    finally:
        kp.stop()
        api.stop()
    # Pods are read only in verified mode: nothing else needs the RBAC rule.
    assert api.requests("pods") == []


PODS = """apiVersion: v1
kind: Pod
metadata: {{name: web-1, namespace: shop}}
status: {{phase: Running, podIP: 10.3.0.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-2, namespace: shop{deleting}}}
status: {{phase: Running, podIP: 10.3.0.2}}
"""


def test_verified_reads_pod_manifests_in_zones(tmp_path: Path) -> None:
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "pods.yaml").write_text(PODS.format(deleting=""))
    kp = start_kdns(["--zones", str(zones), "--pods", "verified"])
    try:
        assert answer(kp.port, pod_name("10.3.0.1", "shop")) == ["10.3.0.1"]
        assert answer(kp.port, pod_name("10.3.0.2", "shop")) == ["10.3.0.2"]
        assert answer(kp.port, pod_name("10.3.0.3", "shop")) == "NXDOMAIN"
        (zones / "pods.yaml").write_text(
            PODS.format(deleting=", deletionTimestamp: '2026-01-01T00:00:00Z'")
        )
        assert until(lambda: answer(kp.port, pod_name("10.3.0.2", "shop")) == "NXDOMAIN", 10)
        assert answer(kp.port, pod_name("10.3.0.1", "shop")) == ["10.3.0.1"]
    finally:
        kp.stop()


def test_a_bad_pods_mode_is_one_line() -> None:
    out = subprocess.run(
        [*KDNS, "serve", "--pods", "trusted"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "kdns: error: --pods must be one of insecure, verified, disabled, not 'trusted'"
    ], out.stderr
