"""The operator's page at `/`, read by a real browser: a known mix of queries in, the numbers
headless Chromium shows checked against `/metrics` and against what was asked.

The queries go over real sockets (dnspython; the search-path expansions through dnspython's own
resolver with a pod's search list and `ndots:5`, so kdns sees them as it would from a pod), the
page is loaded by `chromium --headless --dump-dom` and read back from the DOM it built, and a
screenshot is saved and its path printed. Without Chromium the browser tests are skipped, unless
KDNS_E2E_REQUIRE=1 or CI=1 (`.ci/run` installs it), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.resolver
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kdns.ops.journal import Entry
from kdns.ops.page import changes_section
from testkit.upstream import Upstream
from tests.kdns_process import KdnsProcess, start_kdns, until

ZONES = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.80, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: 10.96.0.90, ports: [{name: pg, port: 5432}]}
"""
NEW = """
apiVersion: v1
kind: Service
metadata: {name: new, namespace: default}
spec: {clusterIP: 10.96.0.99}
"""
#: A pod's search list in namespace default, as the kubelet writes it into resolv.conf.
SEARCH = ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]


def chromium() -> str:
    """The Chromium binary; a skip (a failure in CI) when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "chromium not installed (Debian: apt-get install chromium)"
    if os.environ.get("KDNS_E2E_REQUIRE") == "1" or os.environ.get("CI"):
        pytest.fail(f"{message}, and KDNS_E2E_REQUIRE=1 or CI is set")
    pytest.skip(message)


def browse(url: str, profile: Path, *args: str) -> str:
    """Run headless Chromium on `url` with `args`; its standard output."""
    cmd = [
        chromium(),
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


class Dom(HTMLParser):
    """What the tests read from a page: values by id, and tables' rows (cell texts)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.ids: set[str] = set()
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        ident = a.get("id")
        if ident:
            self.ids.add(ident)
            if a.get("data-value") is not None:
                self.values[ident] = str(a["data-value"])
        if tag == "table" and ident:
            self._table = ident
            self.tables[ident] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table is not None and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, table: str) -> list[list[str]]:
        """The rows of `table` under its heading row."""
        return self.tables[table][1:]


def metrics(kp: KdnsProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = kp.http_get("/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def ask(kp: KdnsProcess, name: str, rdtype: str = "A", tcp: bool = False) -> int:
    q = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, "127.0.0.1", port=kp.port, timeout=5).rcode()


def pod_resolver(kp: KdnsProcess) -> dns.resolver.Resolver:
    """A stub resolver configured like a pod's in namespace default."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = kp.port
    resolver.search = [dns.name.from_text(s) for s in SEARCH]
    resolver.ndots = 5
    resolver.lifetime = 5
    return resolver


@pytest.fixture
def zones(tmp_path: Path) -> Path:
    d = tmp_path / "zones"
    d.mkdir()
    (d / "services.yaml").write_text(ZONES)
    return d


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()  # every A question: 192.0.2.7
    yield up
    up.close()


def send_the_mix(kp: KdnsProcess) -> None:
    """The known mix the page is checked against."""
    pod = pod_resolver(kp)
    # api.example.com: three failed expansions, then the name itself, forwarded and answered.
    answer = pod.resolve(dns.name.from_text("api.example.com", origin=None), "A", search=True)
    assert [rd.address for rd in answer] == ["192.0.2.7"]
    # db.shop: one failed expansion (default's), then db.shop.svc.cluster.local answers.
    answer = pod.resolve(dns.name.from_text("db.shop", origin=None), "A", search=True)
    assert [rd.address for rd in answer] == ["10.96.0.90"]
    for _ in range(5):
        assert ask(kp, "web.default.svc.cluster.local") == dns.rcode.NOERROR
    for _ in range(7):
        assert ask(kp, "nope.default.svc.cluster.local") == dns.rcode.NXDOMAIN
    for _ in range(2):
        assert ask(kp, "missing.shop.svc.cluster.local") == dns.rcode.NXDOMAIN
    assert ask(kp, "missing.shop.svc.cluster.local", tcp=True) == dns.rcode.NXDOMAIN
    assert ask(kp, "web.default.svc.cluster.local", "AAAA") == dns.rcode.NOERROR


def test_the_page_in_a_browser_matches_the_metrics_and_the_queries(
    zones: Path, upstream: Upstream, tmp_path: Path
) -> None:
    browser = chromium()  # before kdns starts: a skip leaves nothing behind
    kp = start_kdns(
        ["--zones", str(zones), "--upstream", f"127.0.0.1:{upstream.port}", "--http-show-clients"],
        http=True,
    )
    try:
        # A change: a service added to zones/, in the journal once applied.
        (zones / "new.yaml").write_text(NEW)
        assert until(lambda: "new.default.svc" in kp.http_get("/changes")[1], 15)
        send_the_mix(kp)
        url = f"http://127.0.0.1:{kp.http_port}/"
        dom = Dom(browse(url, tmp_path / "profile", "--dump-dom"))
        shot = tmp_path / "page.png"
        browse(url, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,1600")
        assert shot.stat().st_size > 10_000
        print(f"screenshot of the page ({browser}): {shot}")
        m = metrics(kp)
    finally:
        kp.stop()

    # The counters, exactly as /metrics has them (no query was sent in between).
    responses = {
        dict(labels)["rcode"]: int(v)
        for (name, labels), v in m.items()
        if name == "kdns_dns_responses_total"
    }
    assert responses == {"NOERROR": 8, "NXDOMAIN": 14}
    for rcode, n in responses.items():
        assert int(dom.values[f"rcode-{rcode}"]) == n
    assert int(dom.values["responses-total"]) == sum(responses.values())
    (hits,) = [int(v) for (name, _), v in m.items() if name == "kdns_cache_hits_total"]
    (misses,) = [int(v) for (name, _), v in m.items() if name == "kdns_cache_misses_total"]
    assert (int(dom.values["cache-hits"]), int(dom.values["cache-misses"])) == (hits, misses)
    assert float(dom.values["cache-ratio"]) == round(hits / (hits + misses), 4)

    # The names answered NXDOMAIN, busiest first.
    nx = [(row[0], int(row[1])) for row in dom.rows("nxdomain-names")]
    assert nx[:2] == [("nope.default.svc.cluster.local", 7), ("missing.shop.svc.cluster.local", 3)]
    assert sorted(nx[2:]) == [
        ("api.example.com.cluster.local", 1),
        ("api.example.com.default.svc.cluster.local", 1),
        ("api.example.com.svc.cluster.local", 1),
        ("db.shop.default.svc.cluster.local", 1),
    ]
    # Every NXDOMAIN went to this test's address, over UDP and TCP alike.
    assert dom.rows("nxdomain-clients") == [["127.0.0.1", "14"]]

    # The search-path expansions: 4 failed ones of 22 responses.
    assert int(dom.values["expansion-failed"]) == 4
    assert float(dom.values["expansion-share"]) == round(4 / 22, 4)
    rows = [r for r in dom.rows("expansions-table") if len(r) == 4]
    assert [(r[0], int(r[1]), int(r[2])) for r in rows] == [
        ("api.example.com", 4, 1),
        ("db.shop", 2, 1),
    ]
    summaries = [r[0] for r in dom.rows("expansions-table") if len(r) == 1]
    assert summaries == [
        "api.example.com asked 4 times for 1 answer",
        "db.shop asked 2 times for 1 answer",
    ]

    # The zones/ source, with its objects: three services, in two namespaces.
    assert "source-1" not in dom.ids
    kinds = dict((row[0], int(row[1])) for row in dom.rows("source-0-kinds"))
    assert kinds == {"Namespace": 2, "Service": 3}

    # The journal's changes, newest first: the new service (its A and PTR records, one
    # serial), then the initial load.
    changes = dom.rows("changes-table")
    assert sorted(row[2:6] for row in changes[:2]) == [
        ["99.0.96.10.in-addr.arpa.", "PTR", "-", "new.default.svc.cluster.local."],
        ["new.default.svc.cluster.local.", "A", "-", "10.96.0.99"],
    ]
    assert changes[0][1] == changes[1][1]
    assert changes[-1][2:4] == ["cluster.local.", "LOAD"]
    assert changes[-1][6] == "initial load: 2 services"


def test_client_addresses_are_hidden_unless_asked_for(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones)], http=True)
    try:
        assert ask(kp, "nope.default.svc.cluster.local") == dns.rcode.NXDOMAIN
        status, text = kp.http_get("/")
    finally:
        kp.stop()
    assert status == 200
    dom = Dom(text)
    assert "clients-hidden" in dom.ids
    assert "nxdomain-clients" not in dom.tables
    assert "--http-show-clients" in text
    assert dom.rows("nxdomain-names") == [["nope.default.svc.cluster.local", "1"]]


@pytest.mark.parametrize("udp", ["--udp-batch", "--no-udp-batch"])
def test_clients_are_counted_on_either_udp_path(zones: Path, udp: str) -> None:
    # recvmmsg batches (kdns/serve/batch.py) and the datagram protocol count alike.
    kp = start_kdns(["--zones", str(zones), "--http-show-clients", udp], http=True)
    try:
        for _ in range(3):
            assert ask(kp, "nope.default.svc.cluster.local") == dns.rcode.NXDOMAIN
        assert ask(kp, "nope.default.svc.cluster.local", tcp=True) == dns.rcode.NXDOMAIN
        assert ask(kp, "web.default.svc.cluster.local") == dns.rcode.NOERROR
        dom = Dom(kp.http_get("/")[1])
    finally:
        kp.stop()
    assert dom.rows("nxdomain-clients") == [["127.0.0.1", "4"]]
    assert dom.rows("nxdomain-names") == [["nope.default.svc.cluster.local", "4"]]


def test_with_workers_the_serving_processes_counts_reach_the_page(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--workers", "1", "--http-show-clients"], http=True)
    try:
        for _ in range(3):
            assert ask(kp, "nope.default.svc.cluster.local") == dns.rcode.NXDOMAIN
        assert ask(kp, "web.default.svc.cluster.local") == dns.rcode.NOERROR

        # The serving process sums its tables when the page asks: the first look shows them.
        dom = Dom(kp.http_get("/")[1])
        assert dom.rows("nxdomain-names") == [["nope.default.svc.cluster.local", "3"]]
        assert dom.rows("nxdomain-clients") == [["127.0.0.1", "3"]]
        assert dom.values["rcode-NXDOMAIN"] == "3"
        assert dom.values["rcode-NOERROR"] == "1"
    finally:
        kp.stop()


def test_the_changes_section_shows_each_change() -> None:
    now = 1_800_000_000.0
    entries = [
        Entry(
            7,
            now - 3,
            "web.shop.svc.cluster.local",
            "A",
            ("10.1.0.1",),
            ("10.1.0.1", "10.1.0.2"),
            "EndpointSlice shop/web-x2x4k <ready>",
        ),
        Entry(
            6, now - 60, "old.shop.svc.cluster.local", "A", ("10.96.0.9",), (), "Service deleted"
        ),
    ]
    dom = Dom(changes_section(entries, now))
    assert dom.rows("changes-table") == [
        [
            "07:59:57Z (3 s ago)",
            "7",
            "web.shop.svc.cluster.local",
            "A",
            "10.1.0.1",
            "10.1.0.1, 10.1.0.2",
            "EndpointSlice shop/web-x2x4k <ready>",
        ],
        [
            "07:59:00Z (60 s ago)",
            "6",
            "old.shop.svc.cluster.local",
            "A",
            "10.96.0.9",
            "-",
            "Service deleted",
        ],
    ]
    assert "&lt;ready&gt;" in changes_section(entries, now)
    assert Dom(changes_section([], now)).rows("changes-table") == [["no change since kdns started"]]


def test_the_page_escapes_what_clients_ask(zones: Path) -> None:
    # A question is the client's to spell: it must not become markup on the operator's screen.
    kp = start_kdns(["--zones", str(zones)], http=True)
    try:
        evil = "<script>alert(1)</script>.default.svc.cluster.local"
        assert ask(kp, evil) == dns.rcode.NXDOMAIN
        status, text = kp.http_get("/")
    finally:
        kp.stop()
    assert status == 200
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.default.svc.cluster.local" in text


def test_the_page_follows_allow_query(zones: Path) -> None:
    # It lists the names clients asked: like /changes and /explain, only for allowed sources.
    kp = start_kdns(["--zones", str(zones), "--allow-query", "10.0.0.0/8"], http=True)
    try:
        status, text = kp.http_get("/")
        assert status == 403
        assert "--allow-query" in text
        assert kp.http_get("/metrics")[0] == 200
    finally:
        kp.stop()
