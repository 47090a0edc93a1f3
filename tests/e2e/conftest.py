"""Session fixtures of the end-to-end suite: the control plane, and kdns watching it.

The binaries come from tests/e2e/build.sh (`make e2e` runs it). When they are missing the suite is
skipped with the reason, unless KDNS_E2E_REQUIRE=1 (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from testkit.controlplane import (
    CONTROL_PLANE,
    ControlPlane,
    bin_dir,
    free_port,
    missing_binaries,
    start_process,
    wait_for,
)
from tests.kdns_process import KdnsProcess, start_kdns

REQUIRED = os.environ.get("KDNS_E2E_REQUIRE") == "1"
REPO = Path(__file__).resolve().parents[2]


def unavailable(binaries: tuple[str, ...] = CONTROL_PLANE) -> str | None:
    """Why the e2e tests cannot run here (None: they can)."""
    missing = missing_binaries(binaries)
    if missing:
        return (
            f"e2e binaries not built ({', '.join(missing)} missing in {bin_dir()}); "
            "run `make e2e` or tests/e2e/build.sh (needs Go >= 1.25)"
        )
    for tool in ("dig", "openssl"):
        if not shutil.which(tool):
            return f"{tool} not found"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the e2e tests up front, with the reason (under KDNS_E2E_REQUIRE=1 they fail)."""
    reason = unavailable()
    if reason is None or REQUIRED:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=reason))


def skip_or_fail(reason: str | None) -> None:
    if reason:
        if REQUIRED:
            pytest.fail(f"KDNS_E2E_REQUIRE=1 but {reason}")
        pytest.skip(reason)


def control_plane(workdir: Path) -> Iterator[ControlPlane]:
    """A started control plane in `workdir` (its logs printed if it fails to start), stopped
    when the generator is closed: the suite's, and any further one a test needs beside it."""
    skip_or_fail(unavailable())
    cp = ControlPlane(workdir)
    try:
        cp.start()
    except BaseException:
        print(cp.logs())
        raise
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    yield from control_plane(tmp_path_factory.mktemp("controlplane"))


def start_kdns_for(
    cp: ControlPlane,
    tmp: Path,
    kubeconfig: Path,
    *extra: str,
    ready_timeout: float = 30,
    command: Sequence[str] | None = None,
) -> KdnsProcess:
    """kdns watching the control plane (empty --zones folder), once /ready says 200."""
    zones = tmp / "empty-zones"
    zones.mkdir(exist_ok=True)
    kp = start_kdns(
        ["--kubeconfig", str(kubeconfig), "--zones", str(zones), *extra],
        http=True,
        timeout=30,
        command=command,
        cwd=REPO,
    )
    try:
        wait_for("kdns /ready", lambda: kp.http_get("/ready")[0] == 200, ready_timeout, 0.1)
    except BaseException:
        kp.stop()
        raise RuntimeError(f"kdns never became ready:\n{kp.log()}") from None
    return kp


@pytest.fixture(scope="session")
def kdns(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KdnsProcess]:
    """kdns with the admin kubeconfig, shared by the suite."""
    kp = start_kdns_for(cluster, tmp_path_factory.mktemp("kdns"), cluster.admin_kubeconfig)
    try:
        yield kp
    finally:
        kp.stop()


@pytest.fixture(scope="session")
def node(cluster: ControlPlane) -> str:
    """The Node the test pods run on (the endpointslice controller skips pods without one), and
    the nodes named by the external etcd's Endpoints."""
    for name in ("node-1", "etc-master1", "etc-master2", "etc-master3"):
        cluster.create_node(name)
    return "node-1"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The API-write-to-dig delays over the product's target, measured rather than asserted."""
    from tests.e2e.dnsutil import SLOW, TARGET

    if SLOW:
        terminalreporter.write_line(
            f"e2e: {len(SLOW)} changes reached dig later than the {TARGET:.1f}s target: "
            + ", ".join(f"{what} {secs:.2f}s" for what, secs in SLOW)
        )


@contextlib.contextmanager
def coredns_running(
    cp: ControlPlane, tmp: Path, corefile: Callable[[int, int], str], binary: str = "coredns"
) -> Iterator[int]:
    """CoreDNS (`binary` of the e2e build) serving `corefile(port, ready_port)` from `tmp`, once
    its /ready says 200; yields its port, and stops it (printing its log's tail) at the end."""
    skip_or_fail(unavailable((binary,)))
    tmp.mkdir(parents=True, exist_ok=True)
    port, ready_port = free_port(), free_port()
    (tmp / "Corefile").write_text(corefile(port, ready_port))
    proc = start_process(binary, [str(cp.bins / binary), "-conf", "Corefile"], tmp)

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{binary} exited:\n{proc.tail()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{ready_port}/ready", timeout=2) as r:
            return bool(r.status == 200)

    try:
        wait_for("coredns /ready", ready, 30, 0.1)
        yield port
    finally:
        proc.stop()
        print(f"--- {binary} log ---\n" + proc.tail(20))
