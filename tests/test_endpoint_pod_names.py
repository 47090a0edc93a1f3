"""`--endpoint-pod-names`: an endpoint without hostname is named by its pod, when that is a label.

Over real sockets, from manifests: EndpointSlices whose targetRefs name pods (valid labels, names
with dots, upper case, 63 and 64 characters, a targetRef that is not a Pod), endpoints with a
hostname (which always wins), and endpoints the file source computes from Pod manifests. Every
name form is asked for A, the PTR of every address, and the SRV targets, with and without the
flag.
"""

from __future__ import annotations

from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.reversename
import pytest

from tests.kdns_process import start_kdns

LONG63 = "p" * 63
LONG64 = "q" * 64

#: (address, targetRef kind, targetRef name, hostname) and the label expected with the flag.
ENDPOINTS = [
    ("10.4.0.1", "Pod", "web-0", "", "web-0"),
    ("10.4.0.2", "Pod", "web.1", "", "10-4-0-2"),
    ("10.4.0.3", "Pod", "Web-2", "", "10-4-0-3"),
    ("10.4.0.4", "Pod", LONG63, "", LONG63),
    ("10.4.0.5", "Pod", LONG64, "", "10-4-0-5"),
    ("10.4.0.6", "Node", "node-1", "", "10-4-0-6"),
    ("10.4.0.7", "Pod", "web-7", "db-7", "db-7"),
    ("10.4.0.8", "", "", "", "10-4-0-8"),
]


def manifest() -> str:
    lines = []
    for address, kind, name, hostname, _ in ENDPOINTS:
        entry = f"- addresses: [{address}]\n"
        if hostname:
            entry += f"  hostname: {hostname}\n"
        if kind:
            entry += f"  targetRef: {{kind: {kind}, name: '{name}', namespace: shop}}\n"
        lines.append(entry)
    return (
        """apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: None, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
"""
        + "".join(lines)
        + """---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {clusterIP: None, selector: {app: api}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-7f9c-x2x4k, namespace: shop, labels: {app: api}}
status:
  phase: Running
  podIP: 10.5.0.1
  conditions: [{type: Ready, status: 'True'}]
"""
    )


def ask(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    # TCP: eight SRV records with 63-character targets and their glue pass 512 bytes.
    return dns.query.tcp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=5)


def addresses(port: int, name: str) -> list[str] | str:
    r = ask(port, name)
    if r.rcode() != dns.rcode.NOERROR or not r.answer:
        return dns.rcode.to_text(r.rcode())
    return sorted(rd.address for rrset in r.answer for rd in rrset)


@pytest.mark.parametrize("flag", [True, False])
def test_endpoints_are_named_by_their_pod_when_it_is_a_label(tmp_path: Path, flag: bool) -> None:
    (tmp_path / "web.yaml").write_text(manifest())
    kp = start_kdns(["--zones", str(tmp_path), *(["--endpoint-pod-names"] if flag else [])])
    try:
        zone = "shop.svc.cluster.local"
        expected: dict[str, str] = {}
        for address, kind, name, hostname, with_flag in ENDPOINTS:
            dashed = address.replace(".", "-")
            label = with_flag if flag else (hostname or dashed)
            expected[address] = label
            assert addresses(kp.port, f"{label}.web.{zone}") == [address], (address, label)
            if label != dashed:  # the dashed form is no name of this endpoint any more
                assert addresses(kp.port, f"{dashed}.web.{zone}") == "NXDOMAIN", address
            if kind == "Pod" and name and name != label and "." not in name and len(name) < 64:
                assert addresses(kp.port, f"{name.lower()}.web.{zone}") in ("NXDOMAIN",), name
            ptr = ask(kp.port, str(dns.reversename.from_address(address)), "PTR")
            assert [str(rd.target) for rrset in ptr.answer for rd in rrset] == [
                f"{label}.web.{zone}."
            ], address
        srv = ask(kp.port, f"_http._tcp.web.{zone}", "SRV")
        targets = sorted(str(rd.target).split(".")[0] for rrset in srv.answer for rd in rrset)
        assert targets == sorted(expected.values())
        # Endpoints the file source makes from Pod manifests carry their pod too.
        api = "api-7f9c-x2x4k" if flag else "10-5-0-1"
        assert addresses(kp.port, f"{api}.api.{zone}") == ["10.5.0.1"]
    finally:
        kp.stop()
