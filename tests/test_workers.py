"""`kdns serve --workers N`: one process watches, N forked processes answer from its data.

Each test runs the real server as a subprocess and asks it over real sockets. Which serving
process gets a UDP query is the kernel's choice (steered by name on Linux, `steering.py`, or any
reader of one socket with `--no-steer`), so the tests that must reach every process check the
per-process request counters in /metrics.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from kdns.serve import steering
from kdns.sources.cluster import KINDS
from testkit.apiserver import FakeApiServer, namespace, service, write_kubeconfig
from tests.kdns_process import KdnsProcess, start_kdns, until

ZONE = """
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}
"""


@pytest.fixture
def zones(tmp_path: Path) -> Path:
    d = tmp_path / "zones"
    d.mkdir()
    (d / "web.yaml").write_text(ZONE.format(ip="10.96.0.80"))
    return d


def ask(
    port: int, name: str, rdtype: str = "A", tcp: bool = False, host: str = "127.0.0.1"
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    for attempt in range(3):
        try:
            if tcp:
                return dns.query.tcp(q, host, port=port, timeout=2)
            return dns.query.udp(q, host, port=port, timeout=5)
        except dns.exception.Timeout:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def address(port: int, name: str = "web.default.svc.cluster.local") -> str | None:
    r = ask(port, name)
    return r.answer[0][0].address if r.answer else None


def metric(kp: KdnsProcess, name: str) -> dict[str, float]:
    """Every sample of `name` in /metrics: labels text -> value."""
    status, text = kp.http_get("/metrics")
    assert status == 200
    out = {}
    for line in text.splitlines():
        m = re.match(rf"{name}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def worker_pids(parent: int) -> list[int]:
    """The children of `parent` (the serving processes it forked), from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent:
            pids.append(int(entry))
    return sorted(pids)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_answer_over_udp_and_tcp_and_metrics_add_them_up(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--workers", "2"], http=True)
    try:
        assert len(worker_pids(kp.proc.pid)) == 2
        assert kp.http_get("/ready")[0] == 200
        for _ in range(20):
            assert address(kp.port) == "10.96.0.80"
        assert ask(kp.port, "web.default.svc.cluster.local", tcp=True).answer[0][0].address == (
            "10.96.0.80"
        )
        nx = ask(kp.port, "nope.default.svc.cluster.local")
        assert nx.rcode() == dns.rcode.NXDOMAIN
        assert nx.authority[0][0].serial > 0
        srv = ask(kp.port, "_http._tcp.web.default.svc.cluster.local", "SRV")
        assert srv.answer[0][0].port == 80

        def total() -> float:
            return sum(metric(kp, "kdns_dns_requests_total").values())

        # every serving process reports its counters each second; the sum is exact
        assert until(lambda: total() == 23, 30), total()
        assert metric(kp, "kdns_workers_ready") == {"": 2.0}
        assert sum(metric(kp, "kdns_dns_responses_total").values()) == 23
    finally:
        kp.stop()
    assert until(lambda: not worker_pids(kp.proc.pid), 30)


@pytest.mark.parametrize("steer", ["--steer", "--no-steer"])
def test_every_worker_follows_a_change_and_gives_the_same_serial(zones: Path, steer: str) -> None:
    kp = start_kdns(["--zones", str(zones), "--workers", "2", steer], http=True)
    try:
        before = metric(kp, "kdns_worker_requests_total")
        (zones / "web.yaml").write_text(ZONE.format(ip="10.96.0.81"))
        assert until(lambda: address(kp.port) == "10.96.0.81", 30)
        # Ask until both processes have answered since the change; every answer must be new.
        # Steered, the two names of the change and the two missing names are owned by one
        # process each (`steering.choose`: web 0, 81.0.96.10 1, nope0 1, nope1 0).
        answers, pointers, serials = set(), set(), set()

        def both_answered() -> bool:
            for _ in range(25):
                answers.add(address(kp.port))
                ptr = ask(kp.port, "81.0.96.10.in-addr.arpa", "PTR").answer
                pointers.add(ptr[0][0].target.to_text() if ptr else None)
                for name in ("nope0", "nope1"):
                    reply = ask(kp.port, f"{name}.default.svc.cluster.local")
                    serials.add(reply.authority[0][0].serial)
            now = metric(kp, "kdns_worker_requests_total")
            return len(now) == 2 and all(now[k] > before.get(k, 0) + 10 for k in now)

        assert until(both_answered, 10), metric(kp, "kdns_worker_requests_total")
        assert answers == {"10.96.0.81"}
        assert pointers == {"web.default.svc.cluster.local."}
        assert len(serials) == 1
    finally:
        kp.stop()


def test_steered_each_name_is_answered_by_the_process_that_owns_it(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--workers", "3"], http=True)
    try:
        names = [
            (f"{label}.default.svc.cluster.local", "A")
            for label in ("web", "WeB", "nope0", "nope1", "nope2", "x", "kubernetes")
        ] + [
            ("_http._tcp.web.default.svc.cluster.local", "SRV"),
            ("80.0.96.10.in-addr.arpa", "PTR"),
        ]
        owners = set()
        for name, rdtype in names:
            owner = steering.choose(dns.message.make_query(name, rdtype).to_wire(), 3)
            owners.add(owner)
            before = metric(kp, "kdns_worker_requests_total")
            for _ in range(10):
                ask(kp.port, name, rdtype)
            label = f'{{worker="{owner}"}}'

            def counted(before: dict[str, float] = before, label: str = label) -> bool:
                now = metric(kp, "kdns_worker_requests_total")
                return now.get(label, 0) >= before.get(label, 0) + 10

            assert until(counted, 10), (name, owner, metric(kp, "kdns_worker_requests_total"))
            now = metric(kp, "kdns_worker_requests_total")
            others = {k: v - before.get(k, 0) for k, v in now.items() if k != label}
            assert not any(others.values()), (name, owner, others)
        assert owners == {0, 1, 2}, "the names chosen should reach every process"
    finally:
        kp.stop()


def test_a_killed_worker_is_started_again_with_current_data(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--workers", "2"], http=True)
    try:
        first = worker_pids(kp.proc.pid)
        os.kill(first[0], signal.SIGKILL)
        # the other one keeps answering meanwhile, and a change made now reaches the new one
        (zones / "web.yaml").write_text(ZONE.format(ip="10.96.0.82"))
        assert until(lambda: address(kp.port) == "10.96.0.82", 30)
        assert until(lambda: metric(kp, "kdns_worker_restarts_total") == {"": 1.0}, 30)
        assert until(lambda: metric(kp, "kdns_workers_ready") == {"": 2.0}, 10)
        now = worker_pids(kp.proc.pid)
        assert len(now) == 2 and first[0] not in now and first[1] in now
        for _ in range(100):
            assert address(kp.port) == "10.96.0.82"
        assert "exited with signal 9; restarting" in kp.log()
    finally:
        kp.stop()


def test_sigterm_lame_duck_then_workers_stop_with_the_main_process(zones: Path) -> None:
    # A lame-duck period long enough that the checks below run inside it on a loaded machine.
    kp = start_kdns(["--zones", str(zones), "--workers", "2", "--lameduck", "6"], http=True)
    try:
        pids = worker_pids(kp.proc.pid)
        t0 = time.monotonic()
        kp.proc.send_signal(signal.SIGTERM)
        assert until(lambda: kp.http_get("/ready")[0] == 503, 5)
        for _ in range(20):
            assert address(kp.port) == "10.96.0.80"
        assert time.monotonic() - t0 < 6, "the checks above ran inside the lame-duck period"
        assert kp.proc.wait(60) == 0
        elapsed = time.monotonic() - t0
        assert elapsed >= 6, "it served out the whole lame-duck period"
        print(f"--workers 2, lame duck of 6 s: stopped {elapsed:.2f} s after SIGTERM")
        assert until(lambda: not [p for p in pids if alive(p)], 10)
    finally:
        kp.stop()


def test_workers_ignore_a_signal_to_the_whole_group_until_the_main_process_decides(
    zones: Path,
) -> None:
    # systemd's stop, or `timeout`, signals every process of the group at once: the serving
    # processes must keep answering through the main process's lame-duck period.
    kp = start_kdns(["--zones", str(zones), "--workers", "2", "--lameduck", "1"], http=True)
    try:
        pids = worker_pids(kp.proc.pid)
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
        kp.proc.send_signal(signal.SIGTERM)
        for _ in range(20):
            assert address(kp.port) == "10.96.0.80"
        assert all(alive(p) for p in pids)
        assert "restarting" not in kp.log()
        assert kp.proc.wait(30) == 0
        assert until(lambda: not [p for p in pids if alive(p)], 10)
    finally:
        kp.stop()


def test_workers_stop_when_the_main_process_dies(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--workers", "2"])
    pids = worker_pids(kp.proc.pid)
    assert len(pids) == 2
    kp.proc.kill()
    kp.proc.wait(5)
    # the pipe from the main process closes: nothing is left answering stale data
    assert until(lambda: not [p for p in pids if alive(p)], 30)


def test_workers_share_one_watch_on_the_api_server(zones: Path, tmp_path: Path) -> None:
    api = FakeApiServer().start()
    try:
        api.apply_all([namespace("shop"), service("cart", "shop", cluster_ip="10.96.1.1")])
        kcfg = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        args = ["--zones", str(zones), "--kubeconfig", str(kcfg)]
        single = start_kdns(args)
        try:
            # Every kind has its watch open (waiting for "every kind that has started one"
            # raced: 2 of 4 kinds could be seen watching, and 2 counted as the whole).
            kinds = lambda: len({r.resource for r in api.requests(watch=True)})  # noqa: E731
            assert until(lambda: kinds() == len(KINDS) == api.open_watches(), 15)
            watches_single = api.open_watches()
        finally:
            single.stop()
        assert until(lambda: api.open_watches() == 0, 30)
        lists_before = len(api.requests(watch=False))
        kp = start_kdns([*args, "--workers", "3"], http=True)
        try:
            assert len(worker_pids(kp.proc.pid)) == 3
            assert address(kp.port, "cart.shop.svc.cluster.local") == "10.96.1.1"
            # Answering means every kind was listed; its watch may open a moment later.
            assert until(lambda: api.open_watches() == watches_single, 15)
            # one LIST per kind, as for one process
            assert len(api.requests(watch=False)) - lists_before == lists_before
            api.apply(service("new", "shop", cluster_ip="10.96.1.2"))
            assert until(lambda: address(kp.port, "new.shop.svc.cluster.local") == "10.96.1.2", 10)
            for _ in range(60):
                assert address(kp.port, "new.shop.svc.cluster.local") == "10.96.1.2"
            api.delete("Service", "cart", "shop")
            assert until(
                lambda: ask(kp.port, "cart.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN,
                10,
            )
            # Still one watch per kind: the serving processes opened none of their own.
            assert api.open_watches() == watches_single
        finally:
            kp.stop()
    finally:
        api.stop()


@pytest.fixture
def cart_api(tmp_path: Path) -> Iterator[tuple[FakeApiServer, Path]]:
    """An API double with the service shop/cart (10.96.1.1), and a kubeconfig for it."""
    api = FakeApiServer().start()
    try:
        api.apply_all([namespace("shop"), service("cart", "shop", cluster_ip="10.96.1.1")])
        yield api, write_kubeconfig(tmp_path / "kubeconfig", api.url)
    finally:
        api.stop()


def test_workers_forked_before_the_sync_are_forked_again_once_it_is_in(
    zones: Path, cart_api: tuple[FakeApiServer, Path]
) -> None:
    # Forked before the sync, a serving process holds the data it then receives as writes of its
    # own; forked again after it, it shares the main process's. Answers never go wrong between.
    api, kcfg = cart_api
    # Until the first answers are checked: the workers start unsynced (--startup-timeout).
    outage = api.outage(600.0)
    args = ["--zones", str(zones), "--kubeconfig", str(kcfg), "--workers", "2"]
    kp = start_kdns([*args, "--startup-timeout", "1"], http=True)
    try:
        first = worker_pids(kp.proc.pid)
        assert len(first) == 2
        cart = "cart.shop.svc.cluster.local"
        assert ask(kp.port, cart).rcode() == dns.rcode.SERVFAIL  # not synced: unknown
        assert address(kp.port) == "10.96.0.80"  # zones/ answers meanwhile
        api.remove(outage)
        assert until(lambda: address(kp.port, cart) == "10.96.1.1", 30)
        assert until(
            lambda: len(now := worker_pids(kp.proc.pid)) == 2 and not set(now) & set(first),
            30,
        )
        for _ in range(50):
            assert address(kp.port, cart) == "10.96.1.1"
        api.apply(service("new", "shop", cluster_ip="10.96.1.2"))
        assert until(lambda: address(kp.port, "new.shop.svc.cluster.local") == "10.96.1.2", 10)
        # Renewed, not restarted: nothing failed.
        assert metric(kp, "kdns_worker_restarts_total") == {"": 0.0}
    finally:
        kp.stop()


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds open."""
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                out.add(int(target[8:-1]))
    return out


def tcp_inodes(port: int, *, local: bool) -> set[int]:
    """Inodes of the TCP sockets (IPv4) whose local, or else remote, port is `port`."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address = fields[1] if local else fields[2]
        if int(address.split(":")[1], 16) == port:
            out.add(int(fields[9]))
    return out


def test_a_forked_worker_keeps_none_of_the_main_process_connections(
    zones: Path, cart_api: tuple[FakeApiServer, Path]
) -> None:
    # A fork copies every descriptor: a serving process that kept the API connections would
    # keep them open after the main process closed them, and one holding the HTTP socket would
    # keep its port.
    api, kcfg = cart_api
    kp = start_kdns(["--zones", str(zones), "--kubeconfig", str(kcfg), "--workers", "2"], http=True)
    try:
        assert address(kp.port, "cart.shop.svc.cluster.local") == "10.96.1.1"
        api_port = int(api.url.rsplit(":", 1)[1])
        main = socket_inodes(kp.proc.pid)
        to_api = tcp_inodes(api_port, local=False)
        http = tcp_inodes(kp.http_port, local=True)
        assert main & to_api and main & http  # what the check looks for is there
        for pid in worker_pids(kp.proc.pid):
            held = socket_inodes(pid)
            assert held, "a serving process holds its DNS sockets"
            assert not held & to_api
            assert not held & http
    finally:
        kp.stop()


def pid_of_worker(kp: KdnsProcess, index: int) -> int:
    """The pid the main process logged for serving process `index` (its first)."""
    m = re.search(rf"worker {index}: started, pid (\d+)", kp.log())
    assert m, kp.log()
    return int(m.group(1))


@pytest.mark.parametrize("steer", ["--steer", "--no-steer"])
def test_a_stuck_worker_is_killed_and_started_again(zones: Path, steer: str) -> None:
    kp = start_kdns(["--zones", str(zones), "--workers", "2", steer], http=True)
    try:
        # Steered, worker 0 owns web and worker 1 nope0 (`steering.choose`).
        stuck = pid_of_worker(kp, 0)
        os.kill(stuck, signal.SIGSTOP)  # alive, but answering nothing and saying nothing
        t0 = time.monotonic()
        if steer == "--steer":
            # The other one answers its names meanwhile; web's query waits in the stuck one's
            # socket, and the process forked in its place answers it: nothing is lost.
            for _ in range(30):
                nx = ask(kp.port, "nope0.default.svc.cluster.local")
                assert nx.rcode() == dns.rcode.NXDOMAIN
            query = dns.message.make_query("web.default.svc.cluster.local", "A")
            waited = dns.query.udp(query, "127.0.0.1", port=kp.port, timeout=30)
            assert waited.answer[0][0].address == "10.96.0.80"
            assert stuck not in worker_pids(kp.proc.pid)
        else:
            for _ in range(30):  # the other one answers every name meanwhile
                assert address(kp.port) == "10.96.0.80"
        assert until(lambda: stuck not in worker_pids(kp.proc.pid), 30)
        print(f"a stopped worker replaced after {time.monotonic() - t0:.1f} s")
        assert until(lambda: metric(kp, "kdns_workers_ready") == {"": 2.0}, 10)
        assert metric(kp, "kdns_worker_restarts_total") == {"": 1.0}
        assert "silent for" in kp.log()
        for _ in range(30):
            assert address(kp.port) == "10.96.0.80"
    finally:
        kp.stop()


def services(count: int, third: int) -> str:
    return "".join(
        f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n"
        f"spec: {{clusterIP: 10.97.{third}.{i % 250}, ports: [{{name: http, port: 80}}]}}\n"
        for i in range(count)
    )


def test_workers_are_forked_again_once_the_data_they_share_is_rewritten(zones: Path) -> None:
    # 1,200 services, then all of them changed (a relist does the same): each serving process
    # would hold a copy of its own of everything; it is forked again instead, one at a time,
    # and shares the main process's data as it is now.
    (zones / "many.yaml").write_text(services(1200, 1))
    kp = start_kdns(["--zones", str(zones), "--workers", "2"], http=True)
    try:
        assert address(kp.port, "s7.default.svc.cluster.local") == "10.97.1.7"
        first = worker_pids(kp.proc.pid)
        (zones / "many.yaml").write_text(services(1200, 2))
        assert until(lambda: address(kp.port, "s7.default.svc.cluster.local") == "10.97.2.7", 30)
        # Renewal waits for each process to have served RENEW_MIN_AGE (10 s).
        assert until(lambda: metric(kp, "kdns_worker_renewals_total") == {"": 2.0}, 40)
        assert until(lambda: metric(kp, "kdns_workers_ready") == {"": 2.0}, 10)
        now = worker_pids(kp.proc.pid)
        assert len(now) == 2 and not set(now) & set(first)
        assert metric(kp, "kdns_worker_restarts_total") == {"": 0.0}
        assert kp.log().count("forking it again to share the data as it is now") == 2
        for i in range(0, 1200, 7):
            assert address(kp.port, f"s{i}.default.svc.cluster.local") == f"10.97.2.{i % 250}"
        # Nothing more was written: no more renewals.
        time.sleep(3)
        assert metric(kp, "kdns_worker_renewals_total") == {"": 2.0}
    finally:
        kp.stop()


def test_worker_renew_0_never_forks_again(zones: Path) -> None:
    (zones / "many.yaml").write_text(services(1200, 1))
    kp = start_kdns(["--zones", str(zones), "--workers", "2", "--worker-renew", "0"], http=True)
    try:
        first = worker_pids(kp.proc.pid)
        (zones / "many.yaml").write_text(services(1200, 2))
        assert until(lambda: address(kp.port, "s7.default.svc.cluster.local") == "10.97.2.7", 30)
        time.sleep(12)  # past RENEW_MIN_AGE
        assert worker_pids(kp.proc.pid) == first
        assert metric(kp, "kdns_worker_renewals_total") == {"": 0.0}
    finally:
        kp.stop()


def test_steered_on_two_listen_addresses_each_has_its_own_group(zones: Path) -> None:
    kp = start_kdns(["--zones", str(zones), "--workers", "2", "--listen", "127.0.0.2:0"])
    try:
        # start_kdns returns at the first address's line; the second's follows it.
        line = r"on 127\.0\.0\.2 port (\d+) \(udp, tcp\) with 2 workers, each query to the one"
        assert until(lambda: re.search(line, kp.log()) is not None, 10), kp.log()
        m = re.search(line, kp.log())
        assert m
        second = int(m.group(1))
        for host, port in (("127.0.0.1", kp.port), ("127.0.0.2", second)):
            for name in ("web", "nope0", "nope1"):  # owned by 0, 1, 0
                reply = ask(port, f"{name}.default.svc.cluster.local", host=host)
                assert reply.rcode() == (dns.rcode.NOERROR if name == "web" else dns.rcode.NXDOMAIN)
            assert ask(port, "web.default.svc.cluster.local", tcp=True, host=host).answer
    finally:
        kp.stop()


def test_steered_names_of_a_dead_worker_go_to_the_others_until_it_is_back(zones: Path) -> None:
    # Worker 0 owns web (`steering.choose`). Killed young again and again, it is forked again
    # after a growing delay (0.5, 1, 2, 4, then 8 s); meanwhile its names are answered by
    # worker 1, not left waiting in its socket.
    kp = start_kdns(["--zones", str(zones), "--workers", "2"], http=True)
    try:
        for kills in range(1, 6):
            pids = re.findall(r"worker 0: started, pid (\d+)", kp.log())
            assert len(pids) == kills, kp.log()
            os.kill(int(pids[-1]), signal.SIGKILL)
            if kills < 5:
                assert until(
                    lambda k=kills: len(re.findall(r"worker 0: started, pid", kp.log())) > k, 30
                )
        assert until(lambda: "worker 0 (pid" in kp.log() and "restarting in 8.0s" in kp.log(), 30)
        assert "names of serving process(es) 0 go to the others" in kp.log()
        query = dns.message.make_query("web.default.svc.cluster.local", "A")
        t0 = time.monotonic()
        reply = dns.query.udp(query, "127.0.0.1", port=kp.port, timeout=5)
        waited = time.monotonic() - t0
        assert reply.answer[0][0].address == "10.96.0.80"
        assert len(worker_pids(kp.proc.pid)) == 1, "answered while worker 0 was still gone"
        print(f"answered in {waited * 1000:.1f} ms with worker 0 gone")
        # Back: it owns its names again.
        assert until(lambda: metric(kp, "kdns_workers_ready") == {"": 2.0}, 30)
        before = metric(kp, "kdns_worker_requests_total").get('{worker="0"}', 0)
        for _ in range(10):
            assert address(kp.port) == "10.96.0.80"
        assert until(
            lambda: metric(kp, "kdns_worker_requests_total").get('{worker="0"}', 0) >= before + 10,
            10,
        )
    finally:
        kp.stop()


def test_rrl_turns_steering_off_so_a_clients_queries_meet_every_share(zones: Path) -> None:
    # Each serving process limits a client to rrl / N: steered, a client asking one name would
    # meet one share alone. So with --rrl every process reads every query, as before.
    kp = start_kdns(["--zones", str(zones), "--workers", "2", "--rrl", "1000"], http=True)
    try:
        assert "--steer: off with --rrl" in kp.log()
        assert "each query to the one owning its name" not in kp.log()
        before = metric(kp, "kdns_worker_requests_total")

        def both_answered() -> bool:
            for _ in range(20):
                assert address(kp.port) == "10.96.0.80"  # one name only
            now = metric(kp, "kdns_worker_requests_total")
            return len(now) == 2 and all(now[k] > before.get(k, 0) for k in now)

        assert until(both_answered, 15), metric(kp, "kdns_worker_requests_total")
    finally:
        kp.stop()
