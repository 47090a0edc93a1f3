"""Faults in the sources, seen through the real DNS path: the last good data keeps being served, and
no name that existed is answered NXDOMAIN because a source failed.

Each test runs `kdns serve` as a subprocess (the zones directory, or `--kubeconfig` against the
API server double of testkit/apiserver.py), queries it all along from a `Prober` thread, injects
one fault, checks every answer given meanwhile, then lifts the fault and checks that a change
made meanwhile arrives. What the other test files already cover, below the DNS layer:

| fault               | covered at the store level by                                         |
|---------------------|-----------------------------------------------------------------------|
| malformed manifest  | test_files.py::test_broken_file_keeps_last_good_content_and_logs_once, |
|                     | test_files.py::test_broken_file_at_startup_is_left_out_and_logged      |
| API errors (500)    | test_reflector.py::test_server_errors_back_off_keep_the_data_and_...   |
| 410 Expired         | test_reflector.py::test_expired_version_relists_and_unchanged_names... |
| outage (503)        | test_reflector.py::test_outage_before_the_first_list_delays_sync_only  |
|                     | (before the first list); test_operations.py::test_servfail_not_...     |
|                     | (SERVFAIL before sync, over DNS); connection refused after sync:       |
|                     | test_operations.py::test_serve_from_kubeconfig_..._survives_outages,   |
|                     | test_reflector.py::test_unreachable_api_keeps_data_and_reconnects      |
| slow API            | test_reflector.py::test_stop_is_prompt_in_every_state (stop only)     |
| apiserver restart   | none (go_down/come_up keeps the resourceVersions)                     |

None of them asks over DNS while the fault lasts; these tests do, for each fault.

The API tests start kdns through a launcher that shrinks the reflector's timings (read timeout,
backoff) the way testkit/apiserver.py's FAST does for the reflector tests; everything else is the
real `kdns serve`.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

import tests.kdns_process as kdns_process
from testkit.apiserver import (
    FakeApiServer,
    Fault,
    Obj,
    _Handler,
    endpoint_slice,
    namespace,
    service,
    status,
    write_kubeconfig,
)
from tests.kdns_process import KdnsProcess, start_kdns

ZONE = "cluster.local"
#: The bound of every wait for something that must happen: generous, because a loaded 2-core
#: machine can be slow, and a wait on a condition ends as soon as it holds.
WAIT = 30.0

#: `kdns serve` with the reflector's timings shrunk (read timeout 1 s, backoff from 50 ms up to
#: 0.5 s); `serve()` sets the idle timeout by flag. Passed as `python -c LAUNCHER serve ...`.
LAUNCHER = """
import functools, sys
import kdns.sources.cluster, kdns.sources.reflector
kdns.sources.cluster.WatchSettings = functools.partial(
    kdns.sources.reflector.WatchSettings, connect_timeout=1.0, read_timeout=1.0,
    backoff_base=0.05, backoff_cap=0.5, watch_timeout=(20, 30))
from kdns.cli import main
main()
"""


# -- probing over DNS ----------------------------------------------------------------------------


def answer(port: int, name: str) -> tuple[str, frozenset[str]]:
    """(rcode, addresses) of an A query over UDP; one retry if a datagram is lost."""
    q = dns.message.make_query(name, "A")
    for attempt in range(2):
        try:
            r = dns.query.udp(q, "127.0.0.1", port=port, timeout=2.5)
        except dns.exception.Timeout:
            if attempt:
                return "TIMEOUT", frozenset()
            continue
        addresses = frozenset(
            rd.to_text() for rrset in r.answer for rd in rrset if rrset.rdtype == 1
        )
        return dns.rcode.to_text(r.rcode()), addresses
    return "TIMEOUT", frozenset()


@dataclass
class Prober:
    """Asks every name again and again from a thread; keeps every answer not among those allowed.

    `allowed[name]` lists the address sets that are right for `name` (several while a change is
    on its way); any rcode but NOERROR is wrong. Stops by itself after `limit` seconds.
    """

    port: int
    allowed: dict[str, list[set[str]]]
    limit: float = 60.0
    probes: int = 0
    bad: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Prober:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def allow(self, name: str, addresses: set[str]) -> None:
        self.allowed[name] = [*self.allowed[name], addresses]

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.wait(0.01) and time.monotonic() < deadline:
            for name, sets in list(self.allowed.items()):
                rcode, addresses = answer(self.port, name)
                self.probes += 1
                if rcode != "NOERROR" or set(addresses) not in sets:
                    self.bad.append(f"{time.monotonic():.2f} {name}: {rcode} {sorted(addresses)}")

    def wait_probes(self, count: int, timeout: float = 10.0) -> None:
        """Block until `count` more probes were made (so a fault window was really probed)."""
        target = self.probes + count
        deadline = time.monotonic() + timeout
        while self.probes < target and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.probes >= target, f"only {self.probes} probes"


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def answers(port: int, name: str, addresses: set[str]) -> Callable[[], bool]:
    return lambda: answer(port, name) == ("NOERROR", frozenset(addresses))


# -- 1. malformed manifests (the zones directory) -----------------------------------------------

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {ip}
  ports: [{{name: http, port: 80}}]
"""


@pytest.mark.parametrize(
    "broken",
    [
        "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: default\nspec: [\n",
        SERVICE.format(name="a", ip="10.96.0.81").replace("port: 80", "port: eighty"),
        SERVICE.format(name="a", ip="10.96.0.81").replace("clusterIP: 10.96.0.81", "clusterIP: x"),
        "\xff\xfe\x00garbage\x00 that is not text",
        SERVICE.format(name="a", ip="10.96.0.81")[:-25] + "\n  ports: [{name: http, port:",
    ],
    ids=["yaml-syntax", "port-not-a-number", "bad-cluster-ip", "binary", "cut-mid-write"],
)
def test_malformed_manifest_keeps_the_last_good_data(tmp_path: Path, broken: str) -> None:
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "a.yaml").write_text(SERVICE.format(name="a", ip="10.96.0.80"))
    (zones / "b.yaml").write_text(SERVICE.format(name="b", ip="10.96.0.90"))
    kp = start_kdns(["--zones", str(zones)])
    try:
        allowed = {
            f"a.default.svc.{ZONE}": [{"10.96.0.80"}],
            f"b.default.svc.{ZONE}": [{"10.96.0.90"}],
        }
        with Prober(kp.port, allowed) as prober:
            prober.wait_probes(10)
            (zones / "a.yaml").write_bytes(broken.encode("latin-1"))
            until(lambda: "still serving its previous content" in kp.log(), WAIT, "the error")
            prober.wait_probes(40)  # more than a second of polls of the broken file
            assert not prober.bad, prober.bad
            # Fixed again: the new content is served (the watch did not give up on the file).
            (zones / "a.yaml").write_text(SERVICE.format(name="a", ip="10.96.0.82"))
            prober.allow(f"a.default.svc.{ZONE}", {"10.96.0.82"})
            until(answers(kp.port, f"a.default.svc.{ZONE}", {"10.96.0.82"}), WAIT, "the fix")
        assert not prober.bad, prober.bad
        assert kp.proc.poll() is None
    finally:
        kp.stop()


def test_a_file_truncated_and_written_seconds_later_keeps_its_names(tmp_path: Path) -> None:
    """`kubectl get svc -o yaml > a.yaml`: the shell truncates the file at once, kubectl writes it
    after its API round trip. For all that time the file is empty (valid YAML, no objects); kdns
    (inotify, the default on Linux) keeps serving the old content until the writer closes it."""
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "a.yaml").write_text(SERVICE.format(name="a", ip="10.96.0.80"))
    kp = start_kdns(["--zones", str(zones)])
    try:
        allowed = {f"a.default.svc.{ZONE}": [{"10.96.0.80"}]}
        with Prober(kp.port, allowed) as prober:
            prober.wait_probes(10)
            for version in range(3):
                with (zones / "a.yaml").open("w") as f:  # truncated
                    deadline = time.monotonic() + 1.5  # longer than any delay kdns applies
                    while time.monotonic() < deadline:
                        prober.wait_probes(5)
                    new = f"10.96.0.{90 + version}"
                    prober.allow(f"a.default.svc.{ZONE}", {new})
                    f.write(SERVICE.format(name="a", ip=new))
                until(answers(kp.port, f"a.default.svc.{ZONE}", {new}), WAIT, "the new content")
        assert not prober.bad, prober.bad
    finally:
        kp.stop()


# -- against the API server double -----------------------------------------------------------------


def cluster_objects() -> list[Obj]:
    return [
        namespace("default"),
        namespace("shop"),
        service("cart", "shop", cluster_ip="10.96.1.1"),
        service("db", "shop", cluster_ip="None", ports=[("pg", 5432, "TCP")]),
        endpoint_slice(
            "db-a", "db", "shop", endpoints=["10.1.0.1", "10.1.0.2"], ports=[("pg", 5432, "TCP")]
        ),
        service("web", "default", cluster_ip="10.96.9.9"),
    ]


CART = f"cart.shop.svc.{ZONE}"
ALLOWED = {
    CART: [{"10.96.1.1"}],
    f"db.shop.svc.{ZONE}": [{"10.1.0.1", "10.1.0.2"}],
    f"web.default.svc.{ZONE}": [{"10.96.9.9"}],
}


@pytest.fixture
def launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kdns_process, "KDNS", [sys.executable, "-c", LAUNCHER])


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    server.apply_all(cluster_objects())
    yield server
    server.stop()


def serve(api: FakeApiServer, tmp_path: Path, idle: float = 1.5) -> KdnsProcess:
    """kdns watching `api` (through the launcher), ready: every kind listed. A watch silent for
    `idle` seconds is given up (and the kind listed again)."""
    zones = tmp_path / "zones"
    zones.mkdir(exist_ok=True)
    kcfg = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    args = ["--zones", str(zones), "--kubeconfig", str(kcfg), "--watch-idle-timeout", str(idle)]
    kp = start_kdns(args, http=True)
    try:
        until(lambda: kp.http_get("/ready")[0] == 200, WAIT, "kdns to be ready")
        for name, sets in ALLOWED.items():
            until(answers(kp.port, name, sets[0]), WAIT, name)
    except BaseException:
        kp.stop()
        raise
    return kp


def statuses(api: FakeApiServer) -> list[int]:
    return [r.status for r in api.requests()]


@pytest.mark.usefixtures("launcher")
def test_api_errors_500_keep_every_name(api: FakeApiServer, tmp_path: Path) -> None:
    kp = serve(api, tmp_path)
    try:
        with Prober(kp.port, {k: list(v) for k, v in ALLOWED.items()}) as prober:
            fault = api.inject(Fault(500, times=None))
            api.cut_watches()
            api.apply(service("cart", "shop", cluster_ip="10.96.1.11"))  # while kdns is away
            prober.allow(CART, {"10.96.1.11"})
            until(lambda: statuses(api).count(500) >= 8, WAIT, "failed requests")
            prober.wait_probes(30)
            assert answer(kp.port, CART) == ("NOERROR", frozenset({"10.96.1.1"})), "last good"
            api.remove(fault)
            until(answers(kp.port, CART, {"10.96.1.11"}), WAIT, "the change after recovery")
        assert not prober.bad, prober.bad
        assert "500" in kp.log() and "keeping the last data" in kp.log()
    finally:
        kp.stop()


@pytest.mark.usefixtures("launcher")
@pytest.mark.parametrize("as_http", [False, True], ids=["error-event", "http-410"])
def test_410_expired_relists_without_losing_a_name(
    api: FakeApiServer, tmp_path: Path, as_http: bool
) -> None:
    api.expired_as_http = as_http
    api.bookmark_interval = 0.2
    api.apply(service("gone", "shop", cluster_ip="10.96.1.3"))
    # A quiet watch is not given up here (idle 30 s), and bookmarks keep every watch visibly
    # alive: the only way back in is the watch from the old resourceVersion.
    kp = serve(api, tmp_path, idle=30)
    try:
        with Prober(kp.port, {k: list(v) for k, v in ALLOWED.items()}) as prober:
            # The services watch ends cleanly (as at its timeoutSeconds) and kdns's next one is
            # held while the cluster changes and its history is compacted: kdns misses all of
            # it without an error, and comes back with a resourceVersion that is gone.
            gate = threading.Event()
            held = api.inject(Fault(None, times=1, resource="services", watch=True, gate=gate))
            api.end_watches()
            until(lambda: held.hits == 1, WAIT, "the next services watch, held")
            api.apply(service("cart", "shop", cluster_ip="10.96.1.11"))
            api.delete("Service", "gone", "shop")
            api.apply(service("new", "shop", cluster_ip="10.96.1.4"))
            prober.allow(CART, {"10.96.1.11"})
            api.compact()
            gate.set()
            until(answers(kp.port, f"new.shop.svc.{ZONE}", {"10.96.1.4"}), WAIT, "the relist")
            assert answer(kp.port, CART) == ("NOERROR", frozenset({"10.96.1.11"}))
            assert answer(kp.port, f"gone.shop.svc.{ZONE}")[0] == "NXDOMAIN"  # really deleted
            prober.wait_probes(20)
        assert not prober.bad, prober.bad
        expired = [r for r in api.requests() if r.watch and r.status == 410]
        assert len(expired) >= 1 if as_http else "expired, listing again" in kp.log()
    finally:
        kp.stop()


@pytest.mark.usefixtures("launcher")
def test_outage_503_keeps_every_name(api: FakeApiServer, tmp_path: Path) -> None:
    kp = serve(api, tmp_path)
    try:
        with Prober(kp.port, {k: list(v) for k, v in ALLOWED.items()}) as prober:
            api.outage(3.0)  # every request 503 for three seconds
            api.cut_watches()
            api.apply(endpoint_slice("db-a", "db", "shop", endpoints=["10.1.0.1", "10.1.0.3"]))
            prober.allow(f"db.shop.svc.{ZONE}", {"10.1.0.1", "10.1.0.3"})
            until(lambda: statuses(api).count(503) >= 8, WAIT, "503s")
            prober.wait_probes(30)
            db = f"db.shop.svc.{ZONE}"
            until(
                answers(kp.port, db, {"10.1.0.1", "10.1.0.3"}), WAIT, "the change after the outage"
            )
        assert not prober.bad, prober.bad
        assert "503" in kp.log()
    finally:
        kp.stop()


@pytest.mark.usefixtures("launcher")
def test_slow_api_beyond_the_read_timeout_keeps_every_name(
    api: FakeApiServer, tmp_path: Path
) -> None:
    kp = serve(api, tmp_path)
    try:
        with Prober(kp.port, {k: list(v) for k, v in ALLOWED.items()}) as prober:
            # Every answer comes 2.5 s late: past the read timeout of lists (1 s) and of
            # watches (1.5 s). The history is compacted too, so recovering takes a relist.
            slow = api.inject(Fault(None, times=None, delay=2.5))
            api.compact()
            api.cut_watches()
            api.apply(service("cart", "shop", cluster_ip="10.96.1.11"))
            prober.allow(CART, {"10.96.1.11"})
            time.sleep(4.0)
            prober.wait_probes(30)
            assert answer(kp.port, CART) == ("NOERROR", frozenset({"10.96.1.1"})), "last good"
            assert "read timeout" in kp.log()
            api.remove(slow)
            until(answers(kp.port, CART, {"10.96.1.11"}), WAIT, "the change once the API is fast")
        assert not prober.bad, prober.bad
    finally:
        kp.stop()


# -- the apiserver restarts, with its resourceVersions reset (etcd restored, say) ---------------


class _RealWatchHandler(_Handler):
    """The double's handler, with the one apiserver behaviour a restart with reset
    resourceVersions needs: a watch from a resourceVersion newer than the server's answers
    504 "Too large resource version" (a Status of reason Timeout with cause
    ResourceVersionTooLarge), as the apiserver's watch cache does."""

    def _watch(self, res: Any, ns: Any, selector: Any, query: dict[str, str], log: Any) -> None:
        rv = query.get("resourceVersion", "")
        current = self.api.resource_version
        if rv.isdigit() and int(rv) > current:
            time.sleep(0.2)  # the apiserver waits (up to 3 s) for the version to arrive
            body = status(504, "Timeout", f"Too large resource version: {rv}, current: {current}")
            body["details"] = {
                "causes": [
                    {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
                ],
                "retryAfterSeconds": 1,
            }
            log(504)
            self._send_json(504, body)
            return
        super()._watch(res, ns, selector, query, log)


class RestartedApiServer(FakeApiServer):
    """An apiserver come back on the same port with the same objects and fresh versions."""

    def _serve(self, port: int) -> None:
        from http.server import ThreadingHTTPServer

        handler = type("Handler", (_RealWatchHandler,), {"api": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=functools.partial(httpd.serve_forever, poll_interval=0.05), daemon=True
        )
        self._thread.start()


class RelistMissing(AssertionError):
    """kdns kept watching from a resourceVersion the restarted apiserver never reached."""


@pytest.mark.usefixtures("launcher")
def test_apiserver_restart_with_reset_versions_relists_and_loses_no_name(
    api: FakeApiServer, tmp_path: Path
) -> None:
    for i in range(30):  # history moves on: the old server's versions run far ahead
        api.apply(namespace(f"churn-{i % 3}"))
    kp = serve(api, tmp_path)
    restarted: FakeApiServer | None = None
    try:
        with Prober(kp.port, {k: list(v) for k, v in ALLOWED.items()}) as prober:
            old_version = api.resource_version
            port = api.port
            api.stop()  # down: connections dropped, connection refused
            prober.wait_probes(15)
            new = restarted = RestartedApiServer()
            new.port = port
            # Its objects are there when it answers, as etcd's are for a real apiserver (loaded
            # after the start, a relist could find half of them, and follow it).
            new.apply_all(cluster_objects())
            new.start()
            assert new.resource_version < old_version
            new.apply(service("fresh", "shop", cluster_ip="10.96.1.7"))
            until(lambda: len(new.requests()) >= 6, WAIT, "kdns to reconnect")
            prober.wait_probes(40)
        assert not prober.bad, prober.bad  # no name lost, whatever the reflector does
        assert kp.proc.poll() is None
        try:
            until(answers(kp.port, f"fresh.shop.svc.{ZONE}", {"10.96.1.7"}), WAIT, "a relist")
        except AssertionError as exc:
            codes = sorted({r.status for r in new.requests()})
            raise RelistMissing(f"{exc}; the restarted apiserver answered {codes}") from None
    finally:
        kp.stop()
        if restarted is not None:
            restarted.stop()
