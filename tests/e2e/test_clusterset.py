"""`--clusterset-domain` on the real control plane: the project's MCS CRDs (deploy/crds/)
installed into the real kube-apiserver, ServiceImports and EndpointSlices created as an MCS
controller writes them (testkit/exposure.py), and kdns asked over UDP and TCP with dig as they
arrive and change.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from testkit.controlplane import ControlPlane
from testkit.exposure import (
    McsEndpoint,
    Port,
    create,
    create_mcs_slice,
    create_service_import,
    install_crds,
)
from tests.e2e.conftest import start_kdns_for
from tests.kdns_process import KdnsProcess

ZONE = "clusterset.local"
NS = "mcs-e2e"
WAIT = 20.0


@pytest.fixture(scope="module")
def kdns(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KdnsProcess]:
    install_crds(cluster)
    create(
        cluster,
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
    )
    ports = [Port("http", 80)]
    create_service_import(cluster, NS, "web", ips=["10.42.0.1"], ports=ports, clusters=["east"])
    create_service_import(cluster, NS, "db", import_type="Headless", ports=ports)
    create_mcs_slice(cluster, NS, "db", "east", [McsEndpoint("10.1.0.1", "db-0")], ports=ports)
    tmp = tmp_path_factory.mktemp("clusterset")
    kp = start_kdns_for(cluster, tmp, cluster.admin_kubeconfig, "--clusterset-domain", ZONE)
    try:
        yield kp
    finally:
        kp.stop()


def dig(kp: KdnsProcess, name: str, rdtype: str = "A", tcp: bool = False) -> tuple[str, set[str]]:
    out = kp.dig(name, rdtype, tcp=tcp)
    status = out.split("status: ", 1)[1].split(",", 1)[0] if "status: " in out else "?"
    short = kp.dig(name, rdtype, "+short", tcp=tcp)
    return status, set(short.split("\n")) - {""}


def until(kp: KdnsProcess, name: str, want: tuple[str, set[str]], rdtype: str = "A") -> None:
    deadline = time.monotonic() + WAIT
    while dig(kp, name, rdtype) != want:
        assert time.monotonic() < deadline, (name, dig(kp, name, rdtype), kp.log()[-2000:])
        time.sleep(0.2)


def test_imports_answer_from_the_real_api(cluster: ControlPlane, kdns: KdnsProcess) -> None:
    for tcp in (False, True):
        assert dig(kdns, f"web.{NS}.svc.{ZONE}", tcp=tcp) == ("NOERROR", {"10.42.0.1"})
        assert dig(kdns, f"db.{NS}.svc.{ZONE}", tcp=tcp) == ("NOERROR", {"10.1.0.1"})
        assert dig(kdns, f"db-0.east.db.{NS}.svc.{ZONE}", tcp=tcp) == ("NOERROR", {"10.1.0.1"})
        status, srv = dig(kdns, f"_http._tcp.db.{NS}.svc.{ZONE}", "SRV", tcp=tcp)
        assert status == "NOERROR"
        assert {" ".join(r.split()[2:]) for r in srv} == {f"80 db-0.east.db.{NS}.svc.{ZONE}."}
    assert dig(kdns, f"nope.{NS}.svc.{ZONE}")[0] == "NXDOMAIN"
    assert dig(kdns, f"{NS}.svc.{ZONE}")[0] == "NOERROR"
    # Through the watch: a second cluster's slice, then a new import.
    create_mcs_slice(cluster, NS, "db", "west", [McsEndpoint("10.2.0.1")], ports=[Port("http", 80)])
    until(kdns, f"db.{NS}.svc.{ZONE}", ("NOERROR", {"10.1.0.1", "10.2.0.1"}))
    assert dig(kdns, f"10-2-0-1.west.db.{NS}.svc.{ZONE}") == ("NOERROR", {"10.2.0.1"})
    create_service_import(cluster, NS, "api", ips=["10.42.0.2"])
    until(kdns, f"api.{NS}.svc.{ZONE}", ("NOERROR", {"10.42.0.2"}))


def test_dig_present() -> None:
    assert subprocess.run(["dig", "-v"], capture_output=True).returncode == 0
