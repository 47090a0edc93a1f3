"""`--namespace` and `--label-selector`: the label-selector syntax, parsed as the API server
parses it (k8s.io/apimachinery/pkg/labels), which objects a scope admits, and what a real server
and the one-shot commands then answer from zones/ files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from kdns.config import Config, ConfigError
from kdns.sources.scope import Scope, ScopeError, parse_selector
from kdns.state.model import EndpointSet, Namespace, Service
from testkit.apiserver import FakeApiServer, namespace, service, write_kubeconfig
from tests.kdns_process import KDNS, KdnsProcess, start_kdns, until


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("", {}, True),
        ("app=web", {"app": "web"}, True),
        ("app=web", {"app": "db"}, False),
        ("app=web", {}, False),
        ("app==web", {"app": "web"}, True),
        ("app!=web", {"app": "db"}, True),
        ("app!=web", {}, True),  # absent: not equal, as in Kubernetes
        ("app!=web", {"app": "web"}, False),
        ("tier in (front, back)", {"tier": "back"}, True),
        ("tier in (front,back)", {"tier": "db"}, False),
        ("tier in (front,back)", {}, False),
        ("tier notin (front,back)", {"tier": "db"}, True),
        ("tier notin (front,back)", {}, True),
        ("tier notin (front,back)", {"tier": "front"}, False),
        ("dns", {"dns": ""}, True),
        ("dns", {}, False),
        ("!dns", {}, True),
        ("!dns", {"dns": "yes"}, False),
        ("app=", {"app": ""}, True),
        ("app=", {"app": "x"}, False),
        ("tier in ()", {"tier": ""}, True),
        ("tier in (a,)", {"tier": ""}, True),
        ("gen>2", {"gen": "3"}, True),
        ("gen>2", {"gen": "2"}, False),
        ("gen>2", {"gen": "x"}, False),
        ("gen>2", {}, False),
        ("gen<2", {"gen": "1"}, True),
        ("gen<2", {"gen": "1_0"}, False),  # strconv.ParseInt has no underscores
        ("example.com/team=a,app.kubernetes.io/name=b", {"example.com/team": "a"}, False),
        (
            " example.com/team = a , app.kubernetes.io/name in (b) ",
            {"example.com/team": "a", "app.kubernetes.io/name": "b"},
            True,
        ),
        ("in=notin", {"in": "notin"}, True),  # keywords are words where a key or value goes
        ("app=web,!canary,tier notin (db)", {"app": "web", "tier": "front"}, True),
        ("app=web,!canary,tier notin (db)", {"app": "web", "canary": "1"}, False),
    ],
)
def test_selector_matches_as_kubernetes_does(
    text: str, labels: dict[str, str], expected: bool
) -> None:
    assert parse_selector(text).matches(labels) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("app in web", "found 'web', expected: '('"),
        ("app in (web", "expected: ',' or ')'"),
        ("app in (a b)", "found 'b', expected: ',' or ')'"),
        ("app web", "found 'web', expected: =, !=, ==, in, notin, >, < after key 'app'"),
        ("app=web=x", "found '=', expected: ',' or 'end of string'"),
        ("app=web,", "expected: identifier after ','"),
        (",app", "found ',', expected: !, identifier, or 'end of string'"),
        ("!", "expected: identifier"),
        ("app=(", "found '(', expected: identifier"),
        ("-app=web", "invalid label key '-app'"),
        ("Example.com/app=web", "invalid label key 'Example.com/app'"),
        ("a/b/c=web", "invalid label key 'a/b/c'"),
        ("/app=web", "invalid label key '/app'"),
        ("app=-web", "invalid value '-web' for label 'app'"),
        ("app=" + "x" * 64, "invalid value"),
        ("gen>two", "for '>', the value must be an integer, not 'two'"),
    ],
)
def test_malformed_selectors_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(ScopeError) as err:
        parse_selector(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_scope_of_the_flags() -> None:
    assert Scope.of().everything
    assert Scope.of([], "  ").everything  # an empty selector selects everything
    scope = Scope.of(["shop", "web", "shop"], "app=web")
    assert scope.namespaces == frozenset({"shop", "web"})
    assert scope.describe() == "namespaces shop, web; services matching app=web"
    assert Scope.of([], "app=web").describe() == "all namespaces; services matching app=web"
    with pytest.raises(ScopeError, match=r"^bad --label-selector 'app in web': found 'web'"):
        Scope.of([], "app in web")
    with pytest.raises(ScopeError, match=r"^bad --namespace 'Shop': a namespace name is"):
        Scope.of(["Shop"])
    # The server and the one-shot commands build it from their Config, as a ConfigError.
    with pytest.raises(ConfigError, match="bad --label-selector"):
        Config(label_selector="!").scope()
    assert Config(namespaces=["shop"]).scope() == Scope(frozenset({"shop"}))


def test_scope_admits_by_namespace_and_service_labels() -> None:
    scope = Scope.of(["shop"], "dns=on")
    svc = Service("shop", "cart")
    assert scope.admits(svc, {"dns": "on"})
    assert not scope.admits(svc, {"dns": "off"})
    assert not scope.admits(svc)
    assert not scope.admits(Service("default", "cart"), {"dns": "on"})
    assert scope.admits(Namespace("shop")) and not scope.admits(Namespace("default"))
    # The selector reads Services only: endpoints stay, and join only a selected service.
    assert scope.admits(EndpointSet("EndpointSlice", "shop", "cart-1", "cart"))
    assert not scope.admits(EndpointSet("EndpointSlice", "default", "cart-1", "cart"))
    assert Scope().admits(Service("default", "cart"))


# -- a real server, the one-shot commands ----------------------------------------------------------

#: Two namespaces; in each, services the selector `dns=on` selects and one it does not.
ZONES = """
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop, labels: {dns: "on"}}
spec: {clusterIP: 10.96.1.1, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: hidden, namespace: shop, labels: {dns: "off"}}
spec: {clusterIP: 10.96.1.2, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: allocated, namespace: shop, labels: {dns: "on"}}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop, labels: {dns: "on"}}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: db, namespace: shop}
subsets: [{addresses: [{ip: 10.1.0.1, hostname: db-0}], ports: [{name: pg, port: 5432}]}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: legacy, namespace: shop}
subsets: [{addresses: [{ip: 10.1.0.9, hostname: old-0}], ports: [{name: pg, port: 5432}]}]
---
apiVersion: v1
kind: Service
metadata: {name: my-service, namespace: default, labels: {dns: "on"}}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: pool, namespace: default, labels: {dns: "on"}}
spec: {clusterIP: None, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: pool, namespace: default}
subsets: [{addresses: [{ip: 10.2.0.5}], ports: [{name: http, port: 80}]}]
"""
CLUSTER = "svc.cluster.local"


@pytest.fixture
def zones(tmp_path: Path) -> Path:
    d = tmp_path / "zones"
    d.mkdir()
    (d / "all.yaml").write_text(ZONES)
    return d


def ask(kp: KdnsProcess, name: str, rdtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return dns.query.udp(q, "127.0.0.1", port=kp.port, timeout=5)


def addresses(r: dns.message.Message) -> list[str]:
    assert r.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(r.rcode())
    return sorted(rr.to_text() for rrset in r.answer for rr in rrset)


def rcode(r: dns.message.Message) -> str:
    return dns.rcode.to_text(r.rcode())


def test_namespace_scopes_the_files(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--namespace", "shop", "--transfer-to", "127.0.0.1"])
    try:
        assert addresses(ask(kp, f"cart.shop.{CLUSTER}")) == ["10.96.1.1"]
        assert rcode(ask(kp, f"shop.{CLUSTER}")) == "NOERROR"
        # The other namespace, as if it did not exist: CoreDNS's `namespaces` answers the same.
        assert rcode(ask(kp, f"my-service.default.{CLUSTER}")) == "NXDOMAIN"
        assert rcode(ask(kp, f"my-service.default.{CLUSTER}", "SRV")) == "NXDOMAIN"
        assert rcode(ask(kp, f"pool.default.{CLUSTER}")) == "NXDOMAIN"
        assert rcode(ask(kp, f"default.{CLUSTER}")) == "NXDOMAIN"
        assert rcode(ask(kp, "10-0-0-1.default.pod.cluster.local")) == "NXDOMAIN"
        assert addresses(ask(kp, "10-0-0-1.shop.pod.cluster.local")) == ["10.0.0.1"]
        # Its reverse names too: the ClusterIP and the endpoint address.
        assert rcode(ask(kp, "10.0.96.10.in-addr.arpa", "PTR")) == "NXDOMAIN"
        assert rcode(ask(kp, "5.0.2.10.in-addr.arpa", "PTR")) == "NXDOMAIN"
        assert addresses(ask(kp, "1.1.96.10.in-addr.arpa", "PTR")) == [f"cart.shop.{CLUSTER}."]
        # A zone transfer holds the served namespace only.
        out = kp.dig("AXFR", "cluster.local", tcp=True)
        names = {line.split()[0] for line in out.splitlines() if line and line[0] != ";"}
        assert f"cart.shop.{CLUSTER}." in names and f"db-0.db.shop.{CLUSTER}." in names
        assert not [n for n in names if ".default." in n or n.endswith("2.10.in-addr.arpa.")]
        assert "10.0.96.10.in-addr.arpa." not in names
        assert "scope: serving namespaces shop, of every source" in kp.log()
    finally:
        kp.stop()


def test_label_selector_scopes_the_files(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--label-selector", "dns=on"])
    try:
        assert addresses(ask(kp, f"cart.shop.{CLUSTER}")) == ["10.96.1.1"]
        assert addresses(ask(kp, f"my-service.default.{CLUSTER}")) == ["10.96.0.10"]
        assert addresses(ask(kp, f"db-0.db.shop.{CLUSTER}")) == ["10.1.0.1"]
        # Not selected: the service, its endpoints and its reverse names are gone, as on the
        # watch; its namespace still exists (the selector reads Services, not Namespaces).
        assert rcode(ask(kp, f"hidden.shop.{CLUSTER}")) == "NXDOMAIN"
        assert rcode(ask(kp, "2.1.96.10.in-addr.arpa", "PTR")) == "NXDOMAIN"
        assert rcode(ask(kp, f"legacy.shop.{CLUSTER}")) == "NXDOMAIN"
        assert rcode(ask(kp, f"old-0.legacy.shop.{CLUSTER}")) == "NXDOMAIN"
        assert rcode(ask(kp, "9.0.1.10.in-addr.arpa", "PTR")) == "NXDOMAIN"
        assert rcode(ask(kp, f"shop.{CLUSTER}")) == "NOERROR"
        assert "scope: serving all namespaces; services matching dns=on" in kp.log()
    finally:
        kp.stop()


def test_the_scope_follows_edits_of_the_files(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--namespace", "shop", "--label-selector", "dns=on"])
    try:
        assert rcode(ask(kp, f"hidden.shop.{CLUSTER}")) == "NXDOMAIN"
        (zones / "more.yaml").write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: shop, labels: "
            "{dns: 'on'}}\nspec: {clusterIP: 10.96.1.3}\n---\n"
            "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: default, labels: "
            "{dns: 'on'}}\nspec: {clusterIP: 10.96.0.3}\n"
        )
        (zones / "all.yaml").write_text(ZONES.replace('dns: "off"', 'dns: "on"'))
        assert until(lambda: rcode(ask(kp, f"late.shop.{CLUSTER}")) == "NOERROR", 30)
        assert until(lambda: rcode(ask(kp, f"hidden.shop.{CLUSTER}")) == "NOERROR", 30)
        assert rcode(ask(kp, f"late.default.{CLUSTER}")) == "NXDOMAIN"
    finally:
        kp.stop()


def kdns(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KDNS, *args], capture_output=True, text=True, timeout=30)


def records(*args: str) -> dict[str, list[str]]:
    out = kdns("records", *args)
    assert out.returncode == 0, out.stderr
    rows: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        if line and not line.startswith(";"):
            name, _, _, rtype, *data = line.split()
            rows.setdefault(name, []).append(f"{rtype} {' '.join(data)}")
    return rows


def test_records_in_a_scope(zones: Path) -> None:
    everything = records("--zones", str(zones))
    scoped = records("--zones", str(zones), "--namespace", "shop", "--label-selector", "dns=on")
    services = {n for n in scoped if n.endswith(f".{CLUSTER}.")}
    selected = ("cart", "_http._tcp.cart", "allocated", "_http._tcp.allocated")
    selected += ("db", "_pg._tcp.db", "db-0.db")
    assert services == {f"{name}.shop.{CLUSTER}." for name in selected}
    ptrs = {data for name, rows in scoped.items() if "arpa" in name for data in rows}
    assert ptrs == {
        f"PTR cart.shop.{CLUSTER}.",
        f"PTR allocated.shop.{CLUSTER}.",
        f"PTR db-0.db.shop.{CLUSTER}.",
    }
    # Allocated ClusterIPs are the same in every scope: the manifests are joined whole first.
    name = f"allocated.shop.{CLUSTER}."
    assert scoped[name] == everything[name]
    assert f"my-service.default.{CLUSTER}." in everything
    assert f"hidden.shop.{CLUSTER}." in everything


def test_explain_names_the_scope(zones: Path) -> None:
    out = kdns(
        "explain", f"my-service.default.{CLUSTER}", "--zones", str(zones), "--namespace", "shop"
    )
    assert out.returncode == 0, out.stderr
    first, *rest = out.stdout.splitlines()
    assert first == f"my-service.default.{CLUSTER} A: NXDOMAIN: namespace 'default' is not served"
    assert "  kdns serves namespaces shop (--namespace, --label-selector); names outside" in rest[0]
    out = kdns(
        "explain", f"hidden.shop.{CLUSTER}", "--zones", str(zones), "--label-selector", "dns=on"
    )
    assert out.stdout.startswith(f"hidden.shop.{CLUSTER} A: NXDOMAIN: no service 'hidden'")
    assert "kdns serves all namespaces; services matching dns=on" in out.stdout


@pytest.mark.parametrize("command", ["serve", "records", "explain"])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--label-selector", "app in web"], "bad --label-selector 'app in web': found 'web'"),
        (["--label-selector", "app=web,"], "bad --label-selector 'app=web,': found"),
        (["--namespace", "Shop"], "bad --namespace 'Shop': a namespace name is"),
    ],
)
def test_a_malformed_scope_is_one_line_at_startup(
    zones: Path, command: str, flags: list[str], message: str
) -> None:
    args = {
        "serve": ["serve", "--listen", "127.0.0.1:0", "--zones", str(zones)],
        "records": ["records", "--zones", str(zones)],
        "explain": ["explain", f"cart.shop.{CLUSTER}", "--zones", str(zones)],
    }[command]
    out = kdns(*args, *flags)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kdns: error: {message}"), out.stderr
    assert out.stdout == ""


def test_one_scope_for_the_files_and_the_cluster(zones: Path, tmp_path: Path) -> None:
    api = FakeApiServer().start()
    try:
        api.apply_all(
            [
                namespace("default"),
                namespace("shop"),
                service("web", "default", cluster_ip="10.96.9.9", labels={"dns": "on"}),
                service("pay", "shop", cluster_ip="10.96.2.1", labels={"dns": "on"}),
                service("internal", "shop", cluster_ip="10.96.2.2", labels={"dns": "off"}),
            ]
        )
        kcfg = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        args = ["--zones", str(zones), "--kubeconfig", str(kcfg)]
        kp = start_kdns([*args, "--namespace", "shop", "--label-selector", "dns=on"])
        try:
            assert addresses(ask(kp, f"pay.shop.{CLUSTER}")) == ["10.96.2.1"]
            assert addresses(ask(kp, f"cart.shop.{CLUSTER}")) == ["10.96.1.1"]
            for name in ("internal.shop", "hidden.shop", "web.default", "my-service.default"):
                assert rcode(ask(kp, f"{name}.{CLUSTER}")) == "NXDOMAIN", name
            assert rcode(ask(kp, f"default.{CLUSTER}")) == "NXDOMAIN"
        finally:
            kp.stop()
    finally:
        api.stop()
