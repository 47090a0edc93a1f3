"""Extended DNS Errors (RFC 8914): a negative or degraded answer says why, in Kubernetes terms.

Over real sockets with dnspython and dig (which prints `EDE:`), from the files source: each
reason, only to clients that sent EDNS, kept by cached answers and gone when a change removes
it; the SERVFAIL before the first sync carries info-code 14 (Not Ready). The reasons are the
resolution's (`Engine.reason`), so `kdns explain` prints the same ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from kdns.dns.resolution import Cluster, Engine
from kdns.serve.responder import Responder
from testkit.apiserver import (
    FakeApiServer,
    write_kubeconfig,
)
from tests.builders import clusterip, headless_manifest, make_store, shop_api_objects
from tests.kdns_process import start_kdns, until

SHOP = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.80, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: remote, namespace: shop}
spec: {type: ExternalName, externalName: payments.example.com}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: default}
spec: {clusterIP: 10.96.0.81}
"""


def api(ready: bool) -> str:
    return headless_manifest(
        "shop", "api", ("grpc", 9000), ["10.1.0.1", "10.1.0.2", "10.1.0.3"], ready
    )


def ask(port: int, name: str, rdtype: str = "A", edns: bool = True) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else None)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=5)


def ede(message: dns.message.Message) -> list[tuple[int, str]]:
    return [
        (int(o.code), o.text or "") for o in message.options if isinstance(o, dns.edns.EDEOption)
    ]


@pytest.fixture
def zones(tmp_path: Path) -> Path:
    (tmp_path / "shop.yaml").write_text(SHOP)
    (tmp_path / "api.yaml").write_text(api(False))
    return tmp_path


NOT_AN_ADDRESS = "not the full reverse name of an address with a PTR record"


def test_each_reason_reaches_an_edns_client_and_only_it(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones)])
    try:
        cases = {
            "nope.shop.svc.cluster.local": "no service nope in namespace shop",
            "api.shop.svc.cluster.local": "service shop/api has 0 ready endpoints (3 not ready)",
            "web.nowhere.svc.cluster.local": "no namespace nowhere",
            "x.web.shop.svc.cluster.local": "service shop/web has no ready endpoint named x",
            "_nope._tcp.web.shop.svc.cluster.local": "service shop/web has no port nope/tcp",
            "9.9.96.10.in-addr.arpa": "no service or ready endpoint has the address 10.96.9.9",
            # partial, and not an address (it used to end "has the address " and nothing)
            "11.in-addr.arpa": NOT_AN_ADDRESS,
            "256.0.100.10.in-addr.arpa": NOT_AN_ADDRESS,
        }
        for name, reason in cases.items():
            for _ in range(3):  # the miss, then the cache and the memo
                r = ask(kp.port, name, "PTR" if name.endswith("arpa") else "A")
                assert r.rcode() == dns.rcode.NXDOMAIN, name
                assert ede(r) == [(0, reason)], name
            plain = ask(kp.port, name, "PTR" if name.endswith("arpa") else "A", edns=False)
            assert plain.edns == -1 and plain.rcode() == dns.rcode.NXDOMAIN
        # Degraded rather than negative: the CNAME alone, and why.
        r = ask(kp.port, "remote.shop.svc.cluster.local")
        assert r.rcode() == dns.rcode.NOERROR and len(r.answer) == 1
        assert ede(r) == [(0, "ExternalName target outside the zone, no --upstream")]
        # An answer with records says nothing.
        assert ede(ask(kp.port, "web.shop.svc.cluster.local")) == []
        out = kp.dig("nope.shop.svc.cluster.local", "A")
        assert "EDE: 0 (Other): (no service nope in namespace shop)" in out, out
        out = kp.dig("nope.shop.svc.cluster.local", "A", tcp=True)
        assert "EDE: 0 (Other): (no service nope in namespace shop)" in out, out
    finally:
        kp.stop()


def test_a_change_that_removes_the_reason_drops_the_cached_answer(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones)])
    try:
        name = "api.shop.svc.cluster.local"
        assert ede(ask(kp.port, name)) == [
            (0, "service shop/api has 0 ready endpoints (3 not ready)")
        ]
        before = ask(kp.port, "nope.shop.svc.cluster.local")  # cached; the change is elsewhere
        (zones / "api.yaml").write_text(api(True))
        r = until(lambda: (m := ask(kp.port, name)).rcode() == dns.rcode.NOERROR and m, 15)
        assert r, "the endpoints never became ready"
        assert ede(r) == [] and len(r.answer[0]) == 3
        # The other answer stays cached with its reason; only its SOA serial is patched in,
        # at the right place whatever the EDE's length.
        after = ask(kp.port, "nope.shop.svc.cluster.local")
        assert ede(after) == ede(before) == [(0, "no service nope in namespace shop")]
        assert after.authority[0][0].serial != before.authority[0][0].serial
    finally:
        kp.stop()


def test_a_namespace_outside_the_scope_says_so(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--namespace", "shop"])
    try:
        r = ask(kp.port, "other.default.svc.cluster.local")
        assert r.rcode() == dns.rcode.NXDOMAIN
        assert ede(r) == [(0, "namespace default is not served (--namespace)")]
    finally:
        kp.stop()


def test_servfail_before_the_first_sync_is_not_ready() -> None:
    store = make_store([clusterip("shop", "web", "10.96.0.80")], synced=False)
    responder = Responder(Engine([Cluster("cluster.local", store)]))
    q = dns.message.make_query("nope.shop.svc.cluster.local", "A", use_edns=0)
    r = dns.message.from_wire(responder.respond(q.to_wire(), udp=True))  # type: ignore[arg-type]
    assert r.rcode() == dns.rcode.SERVFAIL
    assert ede(r) == [(14, "not synced with the API yet")]


def test_reasons_stay_within_the_smallest_udp_answer(zones: Path) -> None:
    # The longest names the reasons quote: 63-byte labels, a 512-byte EDNS client.
    kp = start_kdns(["--zones", str(zones)])
    try:
        ns, svc = "n" * 63, "s" * 63
        q = dns.message.make_query(f"{svc}.{ns}.svc.cluster.local", "A", use_edns=0, payload=512)
        wire = dns.query.udp(q, "127.0.0.1", port=kp.port, timeout=5, raise_on_truncation=False)
        assert wire.rcode() == dns.rcode.NXDOMAIN and not wire.flags & dns.flags.TC
        assert len(wire.to_wire()) <= 512
        assert ede(wire) == [(0, f"no namespace {ns}")]
    finally:
        kp.stop()


STALE = re.compile(r"API unreachable since \d\d:\d\d:\d\dZ, answering from the last data")


def test_answers_say_they_are_stale_while_the_api_is_unreachable(tmp_path: Path) -> None:
    api = FakeApiServer().start()
    api.apply_all(shop_api_objects())
    kcfg = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    kp = start_kdns(["--kubeconfig", str(kcfg)], http=True)

    def unreachable_seconds() -> float:
        # What an alert reads: the same state as the EDE, from /metrics.
        status, body = kp.http_get("/metrics")
        assert status == 200
        [line] = [
            line
            for line in body.splitlines()
            if line.startswith('kdns_kubernetes_api_unreachable_seconds{zone="cluster.local."}')
        ]
        return float(line.split()[-1])

    try:
        cart = "cart.shop.svc.cluster.local"
        assert ede(ask(kp.port, cart)) == []
        assert unreachable_seconds() == 0
        api.go_down()
        assert until(lambda: ede(ask(kp.port, cart)), 20), "no Stale Answer while the API is down"
        assert unreachable_seconds() > 0
        r = ask(kp.port, cart)
        assert r.answer[0][0].address == "10.96.1.1"  # the last data, still served
        [(code, text)] = ede(r)
        assert code == 3 and STALE.fullmatch(text), text
        # The large-answer encoder steps aside: headless and SRV answers say it too.
        db = ask(kp.port, "db.shop.svc.cluster.local")
        assert len(db.answer[0]) == 2 and [c for c, _ in ede(db)] == [3]
        assert [c for c, _ in ede(ask(kp.port, "_pg._tcp.db.shop.svc.cluster.local", "SRV"))] == [3]
        # A negative answer gives both reasons.
        assert ede(ask(kp.port, "nope.shop.svc.cluster.local")) == [
            (0, "no service nope in namespace shop"),
            (3, text),
        ]
        assert "EDE: 3 (Stale Answer)" in kp.dig(cart, "A")
        api.come_up()
        assert until(lambda: not ede(ask(kp.port, cart)), 20), "still stale after the API is back"
        assert unreachable_seconds() == 0
    finally:
        kp.stop()
        api.stop()
