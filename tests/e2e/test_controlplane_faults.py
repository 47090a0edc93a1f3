"""The real control plane's faults, with kdns watching it (issue 15: no name disappears unless
its definition did).

These tests break their control plane on purpose, so they get one of their own (module scope),
not the session's: the other e2e tests never see a frozen, killed or wiped component. They run in
file order; the wipe comes last because nothing of the old cluster survives it.

Each fault runs under a `Probe`, which asks kdns about a set of services over and over and
judges every answer against the API's own state (see tests/e2e/probe.py): no wrong answer at all,
stale ones only while kdns cannot reach the API (or shortly after, while it reconnects), and
everything current once the API is back. The counts and the time from recovery to the last stale
answer are printed (the product's target: 2 s); only wrong answers and a bounded wait fail.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from testkit.controlplane import ADMIN_TOKEN, ApiError, ControlPlane, free_port, wait_for
from tests.e2e.conftest import skip_or_fail, start_kdns_for, unavailable
from tests.e2e.probe import NXDOMAIN, Probe, api_state
from tests.kdns_process import KdnsProcess

pytestmark = pytest.mark.timeout(300)

NS = "faults"
NODE = "node-1"
#: The hang of kube-apiserver (SIGSTOP), and the idle timeout of the kdns that lives through it:
#: shorter, so kdns must notice the silence (abandon the watch) during the hang.
HANG = 30.0
IDLE = 8.0
#: A stale answer this long after a change or a recovery is wrong. The target is 2 s (printed);
#: 15 s leaves room for a loaded 2-core machine, and still fails a kind left waiting out its
#: backoff (capped at 30 s) after the API came back.
BOUND = 15.0


@pytest.fixture(scope="module")
def fault_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane for these tests alone, with `stable` (ClusterIP) and `hl` (headless)."""
    skip_or_fail(unavailable())
    cp = ControlPlane(tmp_path_factory.mktemp("faults-controlplane"))
    try:
        cp.start()
        _workload(cp)
    except BaseException:
        print(cp.logs())
        cp.stop()
        raise
    try:
        yield cp
    finally:
        cp.stop()


def _workload(cp: ControlPlane) -> None:
    cp.create_namespace(NS)
    cp.create_node(NODE)
    cp.create_service(NS, "stable", selector={"app": "stable"}, ports=[("p", 80, 80)])
    cp.create_service(NS, "hl", selector={"app": "hl"}, ports=[("p", 80, 80)], headless=True)
    cp.run_pod(NS, "stable-0", NODE, {"app": "stable"}, "10.9.0.1")
    cp.run_pod(NS, "hl-0", NODE, {"app": "hl"}, "10.9.1.1")
    wait_for("hl's slice", lambda: cp.slice_addresses(NS, "hl") == {"10.9.1.1"}, 30)


@pytest.fixture(scope="module")
def fault_kdns(
    fault_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KdnsProcess]:
    kp = start_kdns_for(
        fault_cp,
        tmp_path_factory.mktemp("faults-kdns"),
        fault_cp.admin_kubeconfig,
        "--watch-idle-timeout",
        str(IDLE),
    )
    try:
        yield kp
    finally:
        kp.stop()


def probe(cp: ControlPlane, kp: KdnsProcess, *names: str) -> Probe:
    """A probe of `names`, started once kdns answers what the API holds (a clean start)."""
    p = Probe(cp, kp, NS, list(names), bound=BOUND)
    truth = api_state(cp, NS, names, timeout=15)
    assert truth is not None
    wait_for(
        f"kdns to serve {truth}",
        lambda: all(p.answer(n) == truth[n] for n in names),
        20,
        0.1,
    )
    return p.start()


def finish(p: Probe, what: str, timeout: float = BOUND + 15) -> float:
    """Wait until every answer is current; stop the probe; print and assert its counts."""
    try:
        recovered = p.wait_current(timeout)
    finally:
        p.stop()
    print(f"{what}: all current {recovered:.2f}s after the recovery or last change; {p.report()}")
    assert p.counts.wrong == 0, f"{what}: {p.report()}\n" + "\n".join(p.wrong)
    return recovered


def kdns_errors(kp: KdnsProcess) -> dict[str, float]:
    """kdns_kubernetes_errors_total by kind, from kdns's /metrics."""
    status, text = kp.http_get("/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kdns_kubernetes_errors_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('kind="', 1)[1].split('"', 1)[0]] = float(value)
    return out


def svc_ip(cp: ControlPlane, name: str) -> str:
    return str(cp.get(f"/api/v1/namespaces/{NS}/services/{name}")["spec"]["clusterIP"])


# --------------------------------------------------------------------------- 1. hung apiserver


def test_hung_apiserver(fault_cp: ControlPlane, fault_kdns: KdnsProcess) -> None:
    """kube-apiserver frozen (SIGSTOP) for 30 s, then thawed: a connection that sends nothing.

    kdns must give up on its silent watches by its idle timeout (each kind then fails to reach
    the frozen server, which the error counters show), keep answering meanwhile, and follow the
    API again once it is back."""
    cp, kp = fault_cp, fault_kdns
    cp.create_service(NS, "hang-before", selector={"app": "none"}, ports=[("p", 80, 80)])
    p = probe(cp, kp, "stable", "hl", "hang-before", "hang-after")
    errors = kdns_errors(kp)
    # A change right before the hang: kdns may or may not have it when the server freezes.
    cp.run_pod(NS, "hl-1", NODE, {"app": "hl"}, "10.9.1.2")
    p.allow("hl", ("NOERROR", frozenset({"10.9.1.1", "10.9.1.2"})))
    cp.pause("kube-apiserver")
    t0 = time.monotonic()
    try:
        # The fault's length, not a wait for something: the probe judges answers meanwhile.
        time.sleep(HANG)
        during = kdns_errors(kp)
    finally:
        cp.resume("kube-apiserver")
    t_resume = time.monotonic()
    gave_up = {k: during.get(k, 0) - errors.get(k, 0) for k in during}
    assert errors and all(n >= 1 for n in gave_up.values()), (
        f"every kind should have left its silent watch and failed to reach the frozen apiserver "
        f"within {HANG}s (idle timeout {IDLE}s): new errors by kind {gave_up}\n{kp.log()[-3000:]}"
    )
    wait_for("kube-apiserver back", lambda: cp.request("GET", "/readyz", raw=True) == "ok", 60)
    cp.create_service(NS, "hang-after", selector={"app": "none"}, ports=[("p", 80, 80)])
    wait_for("hl's slice", lambda: cp.slice_addresses(NS, "hl") == {"10.9.1.1", "10.9.1.2"}, 60)
    finish(p, f"apiserver frozen {t_resume - t0:.1f}s (kdns errors by kind {gave_up})")


# --------------------------------------------------------------------------- 2. etcd killed


def test_etcd_killed_and_restarted(fault_cp: ControlPlane, fault_kdns: KdnsProcess) -> None:
    """etcd SIGKILLed and started again on the same data: the apiserver stays up but cannot
    answer; kdns keeps its data, and follows the changes made once etcd is back."""
    cp, kp = fault_cp, fault_kdns
    p = probe(cp, kp, "stable", "hl", "etcd-after")
    cp.kill("etcd")
    t0 = time.monotonic()
    wait_for("the API to fail without etcd", lambda: api_state(cp, NS, ["stable"]) is None, 30)
    # An outage of a few seconds, as the probe sees it (the apiserver's requests fail meanwhile).
    down_until = time.monotonic() + 5
    while time.monotonic() < down_until:
        time.sleep(0.1)
    cp.start_etcd()
    wait_for("kube-apiserver /readyz with etcd back", lambda: _readyz(cp), 90, 0.2)
    t_back = time.monotonic()
    cp.create_service(NS, "etcd-after", selector={"app": "none"}, ports=[("p", 80, 80)])
    cp.run_pod(NS, "hl-2", NODE, {"app": "hl"}, "10.9.1.3")
    want = {"10.9.1.1", "10.9.1.2", "10.9.1.3"}
    wait_for("hl's slice", lambda: cp.slice_addresses(NS, "hl") == want, 60)
    finish(p, f"etcd down {t_back - t0:.1f}s")


def _readyz(cp: ControlPlane) -> bool:
    try:
        return bool(cp.request("GET", "/readyz", raw=True, timeout=3) == "ok")
    except Exception:
        return False


# --------------------------------------------------------------------------- 3. controllers


def test_controller_manager_restart(fault_cp: ControlPlane, fault_kdns: KdnsProcess) -> None:
    """kube-controller-manager killed while endpoints change, then started again: the slices
    (and so kdns) catch up with the pods; nothing is lost meanwhile."""
    cp, kp = fault_cp, fault_kdns
    p = probe(cp, kp, "stable", "hl")
    before = cp.slice_addresses(NS, "hl")
    cp.kill("kube-controller-manager")
    # Endpoints change while no controller writes slices: the API's slices (and kdns) stay put.
    cp.run_pod(NS, "hl-3", NODE, {"app": "hl"}, "10.9.1.4")
    cp.run_pod(NS, "hl-4", NODE, {"app": "hl"}, "10.9.1.5", ready=False)
    cp.set_pod_ready(NS, "hl-1", "10.9.1.2", False)
    want = (before - {"10.9.1.2"}) | {"10.9.1.4"}
    p.allow("hl", ("NOERROR", frozenset(before | {"10.9.1.4"})))
    p.allow("hl", ("NOERROR", frozenset(before - {"10.9.1.2"})))
    # The caught-up state itself: the test waits for it below, but it may last too short (hl-4
    # is made ready right after) for the prober's own reading of the API to see it.
    p.allow("hl", ("NOERROR", frozenset(want)))
    cp.start_controller_manager()
    t0 = time.monotonic()
    wait_for("the restarted controllers' slices", lambda: cp.slice_addresses(NS, "hl") == want, 60)
    t_slices = time.monotonic() - t0
    cp.set_pod_ready(NS, "hl-4", "10.9.1.5", True)
    want.add("10.9.1.5")
    wait_for("hl-4 ready in the slices", lambda: cp.slice_addresses(NS, "hl") == want, 60)
    finish(p, f"controller manager restarted (slices caught up in {t_slices:.1f}s)")


# --------------------------------------------------------------------------- 4. restore


def _pad_to(cp: ControlPlane, revision: int) -> int:
    """Write (a ConfigMap, over and over) until the API's resourceVersion reaches `revision`."""
    path = "/api/v1/namespaces/padding/configmaps"
    cp.create_namespace("padding")
    with contextlib.suppress(ApiError):  # 409: it exists
        cp.create(path, {"metadata": {"name": "pad"}, "data": {"n": "0"}})
    rv, n = _revision(cp), 0
    deadline = time.monotonic() + 60
    while rv < revision and time.monotonic() < deadline:
        n += 1
        got = cp.merge_patch(f"{path}/pad", {"data": {"n": str(n)}})
        rv = int(got["metadata"]["resourceVersion"])
    return rv


def _revision(cp: ControlPlane) -> int:
    return int(cp.get("/api/v1/namespaces?limit=1")["metadata"]["resourceVersion"])


def test_restore_on_wiped_etcd(fault_cp: ControlPlane, fault_kdns: KdnsProcess) -> None:
    """The control plane restarted on a wiped etcd with the objects re-created, as after a
    restore from a backup: resourceVersions go back. One service is not re-created (`ghost`),
    one is new (`newcomer`); kdns must drop the ghost and serve the newcomer.

    The hazard: kdns resumes its watches from resourceVersions of the old history. When the new
    history has already passed them, the apiserver accepts such a watch and streams only what
    came after, so the ghost is never deleted and the newcomer never added, unless kdns lists
    again after a broken watch (as client-go does). To make sure that is what kdns meets, the
    objects are re-created through the apiserver on a port kdns does not know, the new history
    is brought just below kdns's Service resourceVersion, and, once the apiserver is back on its
    own port (its watch caches start there), pushed past it before kdns gets through.
    """
    cp, kp = fault_cp, fault_kdns
    # The last Service written before the outage: once kdns answers it, kdns's Service watch
    # is at or past its resourceVersion.
    ghost = cp.create_service(NS, "ghost", selector={"app": "none"}, ports=[("p", 80, 80)])
    ghost_rv = int(ghost["metadata"]["resourceVersion"])
    p = probe(cp, kp, "stable", "hl", "ghost", "newcomer")
    stable_ip = svc_ip(cp, "stable")
    hl_before = cp.slice_addresses(NS, "hl")
    old = _revision(cp)

    t0 = time.monotonic()
    for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
        cp.kill(name)
    cp.wipe_etcd()
    cp.start_etcd()
    aside = free_port()  # out of kdns's reach while the backup is restored
    cp.start_apiserver(port=aside)
    fresh = _revision(cp)
    _restore(cp, stable_ip, hl_before)
    cp.create_service(NS, "newcomer", selector={"app": "none"}, ports=[("p", 80, 80)])
    # The slices are part of what is restored: let the controllers write them now.
    cp.start_controller_manager(cp.write_kubeconfig("aside", ADMIN_TOKEN, aside))
    wait_for("hl's restored slice", lambda: cp.slice_addresses(NS, "hl") == hl_before, 60)
    cp.kill("kube-controller-manager")
    below = _pad_to(cp, ghost_rv - 30)
    cp.stop_apiserver()
    cp.start_apiserver()
    t_back = time.monotonic()
    at_start = _revision(cp)
    beyond = _pad_to(cp, old + 60)
    cp.start_controller_manager()
    print(
        f"restore: kdns's Service watch at >= {ghost_rv} (history at {old}); the wiped etcd at "
        f"{fresh} after start-up, {below} once restored, {at_start} when the apiserver was back "
        f"on its port ({'below' if at_start <= ghost_rv else 'ABOVE: hazard not set up,'} "
        f"kdns's), {beyond} right after"
    )
    finish(p, f"control plane restored on a wiped etcd (down {t_back - t0:.1f}s)")
    assert p.history["ghost"] >= {NXDOMAIN}, "the API never said the ghost was gone"


def _restore(cp: ControlPlane, stable_ip: str, hl: set[str]) -> None:
    """Re-create the objects of the backup: everything but `ghost`, same ClusterIP, same pods."""
    cp.create_namespace(NS)
    cp.create_node(NODE)
    cp.create_service(
        NS, "stable", selector={"app": "stable"}, ports=[("p", 80, 80)], cluster_ip=stable_ip
    )
    cp.create_service(NS, "hl", selector={"app": "hl"}, ports=[("p", 80, 80)], headless=True)
    cp.run_pod(NS, "stable-0", NODE, {"app": "stable"}, "10.9.0.1")
    for i, ip in enumerate(sorted(hl)):
        cp.run_pod(NS, f"hl-{i}", NODE, {"app": "hl"}, ip)
