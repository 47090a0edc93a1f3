"""CoreDNS with its kubernetes plugin as a peer of the serving benchmark (`bench/run.py`).

CoreDNS cannot read manifests: it watches an API server. So the e2e harness
(`testkit/controlplane.py`: etcd, kube-apiserver and kube-controller-manager run as plain
processes from the binaries `tests/e2e/build.sh` puts in `${KDNS_E2E_CACHE:-~/.cache/kdns-e2e}/bin`)
starts a real control plane, the benchmark's own manifests (`bench/dataset.py`) are created in it
over HTTPS with the admin token, and CoreDNS (built into the same cache) serves them. The same API
server can feed kdns (`--kubeconfig`), so both watchers are measured on identical API data.

ClusterIPs: the dataset's services hold fixed addresses in 10.96.0.0/16, starting at 10.96.0.1,
which an API server whose `--service-cluster-ip-range` starts there gives to `default/kubernetes`.
So the API server gets a small range of its own (`APISERVER_RANGE`: `default/kubernetes` and the
harness's probe service live there) and a ServiceCIDR object (networking.k8s.io/v1) adds the
dataset's range; every dataset ClusterIP is then accepted as given.

Headless services have no selector, and their EndpointSlices are created directly, labelled with
`kubernetes.io/service-name` and a `endpointslice.kubernetes.io/managed-by` of ours, so the
endpointslice controllers leave them alone.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

import testkit.controlplane as controlplane
from testkit.controlplane import ControlPlane, wait_for

Obj = dict[str, Any]

APISERVER_RANGE = "10.95.0.0/24"  # --service-cluster-ip-range; default/kubernetes is 10.95.0.1
SERVICE_CIDR_NAME = "kdns-bench"
MANAGED_BY = "kdns-bench"  # endpointslice.kubernetes.io/managed-by of the hand-made slices
ZONE = "cluster.local"
PARALLEL = 16  # concurrent API requests while loading


def unavailable() -> str | None:
    """Why CoreDNS cannot be benchmarked here (None: it can)."""
    missing = controlplane.missing_binaries((*controlplane.CONTROL_PLANE, "coredns"))
    if missing:
        return (
            f"not built ({', '.join(missing)} missing in {controlplane.bin_dir()}; "
            "tests/e2e/build.sh builds them)"
        )
    if not shutil.which("openssl"):
        return "openssl not found (the control plane needs it)"
    return None


def coredns_version() -> str:
    out = subprocess.run(
        [str(controlplane.bin_dir() / "coredns"), "-version"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    first = out.split()[0] if out.split() else "CoreDNS"
    return first.replace("CoreDNS-", "CoreDNS ")


# ---------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Expect:
    """A name the server must answer once it has the whole data set."""

    name: str
    qtype: str
    answers: int


@dataclass
class Loaded:
    cp: ControlPlane
    objects: int
    start_seconds: float
    load_seconds: float
    expect: list[Expect]


def read_items(manifests: Path) -> list[Obj]:
    items: list[Obj] = []
    for path in sorted(manifests.glob("*.json")):
        doc = json.loads(path.read_text())
        items.extend(doc.get("items") or [doc])
    return items


def expectations(items: list[Obj]) -> list[Expect]:
    """The last ClusterIP service (A) and the last headless service (SRV, one per endpoint)."""
    out: list[Expect] = []
    last_ip = last_headless = None
    endpoints: dict[tuple[str, str], int] = {}
    ports: dict[tuple[str, str], str] = {}
    for obj in items:
        meta = obj["metadata"]
        if obj["kind"] == "Service":
            key = (meta["namespace"], meta["name"])
            if obj["spec"].get("clusterIP") == "None":
                last_headless = key
                ports[key] = obj["spec"]["ports"][0]["name"]
            else:
                last_ip = key
        elif obj["kind"] == "EndpointSlice":
            key = (meta["namespace"], meta["labels"]["kubernetes.io/service-name"])
            endpoints[key] = endpoints.get(key, 0) + len(obj.get("endpoints") or [])
    if last_ip:
        out.append(Expect(f"{last_ip[1]}.{last_ip[0]}.svc.{ZONE}.", "A", 1))
    if last_headless:
        ns, name = last_headless
        srv = f"_{ports[last_headless]}._tcp.{name}.{ns}.svc.{ZONE}."
        out.append(Expect(srv, "SRV", endpoints.get(last_headless, 0)))
    return out


def cluster_ip_range(items: list[Obj]) -> str:
    """The /16 holding every fixed ClusterIP of the data (bench/dataset.py uses 10.96.0.0/16)."""
    ips = [
        ipaddress.ip_address(o["spec"]["clusterIP"])
        for o in items
        if o["kind"] == "Service" and o["spec"].get("clusterIP") not in (None, "", "None")
    ]
    if not ips:
        return "10.96.0.0/16"
    net = ipaddress.ip_network(f"{ips[0]}/16", strict=False)
    outside = [ip for ip in ips if ip not in net]
    if outside:
        raise ValueError(f"ClusterIPs outside {net}: {outside[:3]}")
    if net.overlaps(ipaddress.ip_network(APISERVER_RANGE)):
        raise ValueError(f"the data's {net} overlaps the API server's {APISERVER_RANGE}")
    return str(net)


class Api:
    """Raw HTTPS to the API server with the admin token: one kept-alive connection per thread."""

    def __init__(self, cp: ControlPlane) -> None:
        self.port = cp.api_port
        self.context = ssl.create_default_context(cafile=str(cp.ca_file))
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=self.context, timeout=30
            )
            self.local.conn = conn
        return conn

    def post(self, path: str, obj: Obj) -> None:
        body = json.dumps(obj).encode()
        headers = {
            "Authorization": f"Bearer {controlplane.ADMIN_TOKEN}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        for attempt in range(3):
            conn = self._conn()
            try:
                conn.request("POST", path, body, headers)
                resp = conn.getresponse()
                text = resp.read().decode(errors="replace")
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
                continue
            if resp.status in (200, 201, 409):  # 409: already there (a retried create)
                return
            raise controlplane.ApiError(resp.status, text, "POST", path)


def collection(obj: Obj) -> str:
    ns = obj["metadata"]["namespace"]
    if obj["kind"] == "Service":
        return f"/api/v1/namespaces/{ns}/services"
    if obj["kind"] == "EndpointSlice":
        return f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
    raise ValueError(f"bench data has an unexpected kind: {obj['kind']}")


def for_api(obj: Obj) -> Obj:
    """The manifest as it is created: hand-made slices get a managed-by label of ours."""
    if obj["kind"] != "EndpointSlice":
        return obj
    meta = dict(obj["metadata"])
    meta["labels"] = {
        **(meta.get("labels") or {}),
        "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
    }
    return {**obj, "metadata": meta}


def load(cp: ControlPlane, items: list[Obj], data_range: str) -> int:
    """Create the namespaces, the ServiceCIDR of the data, then every object, PARALLEL at a time."""
    api = Api(cp)
    namespaces = sorted({o["metadata"]["namespace"] for o in items})
    cp.create(
        "/apis/networking.k8s.io/v1/servicecidrs",
        {"metadata": {"name": SERVICE_CIDR_NAME}, "spec": {"cidrs": [data_range]}},
    )
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(
            pool.map(
                lambda ns: api.post("/api/v1/namespaces", {"metadata": {"name": ns}}), namespaces
            )
        )
        # The allocator takes the new range once its informer has it (under a second; without
        # the controller manager's service-cidr controller the object keeps an empty status,
        # which the allocator takes as ready): a dry-run create of a data service proves it.
        first = next(
            (o for o in items if o["kind"] == "Service" and o["spec"].get("clusterIP") != "None"),
            None,
        )
        if first is not None:
            wait_for(
                f"the API server to allocate ClusterIPs of {data_range}",
                lambda: cp.create(f"{collection(first)}?dryRun=All", first),
                30,
                0.1,
            )
        list(pool.map(lambda o: api.post(collection(o), for_api(o)), items))
    return len(namespaces) + len(items)


def pin(cp: ControlPlane, cpu: int) -> None:
    """Move every thread of the control plane's processes to `cpu` (the load generator's)."""
    for proc in cp.procs.values():
        for task in Path(f"/proc/{proc.proc.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), {cpu})


@contextlib.contextmanager
def loaded_control_plane(workdir: Path, manifests: Path, cpu: int = 1) -> Iterator[Loaded]:
    """A real control plane holding the manifests of `manifests`, then pinned to `cpu`."""
    items = read_items(manifests)
    data_range = cluster_ip_range(items)
    # The harness passes its module's SERVICE_CIDR to --service-cluster-ip-range.
    controlplane.SERVICE_CIDR = APISERVER_RANGE
    workdir.mkdir(parents=True, exist_ok=True)
    cp = ControlPlane(workdir)
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))  # start and load on every core
    try:
        t0 = time.monotonic()
        try:
            cp.start()  # stops what it started if it fails
        except BaseException:
            print(cp.logs(), file=sys.stderr)
            raise
        t1 = time.monotonic()
        try:
            objects = load(cp, items, data_range)
            t2 = time.monotonic()
            pin(cp, cpu)
        except BaseException:
            print(cp.logs(), file=sys.stderr)
            cp.stop()
            raise
    finally:
        os.sched_setaffinity(0, mine)
    try:
        yield Loaded(cp, objects, t1 - t0, t2 - t1, expectations(items))
    finally:
        cp.stop()


# ---------------------------------------------------------------------- the servers


def corefile(port: int, kubeconfig: Path) -> str:
    """kubeadm's kubernetes block with the cache on; nothing else on the query path."""
    return f"""\
.:{port} {{
    bind 127.0.0.1
    kubernetes {ZONE} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        ttl 5
    }}
    cache 30
}}
"""


def coredns_command(cp: ControlPlane, workdir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """argv and environment of CoreDNS on `port`: one Go P (GOMAXPROCS=1), like the others."""
    conf = workdir / "Corefile"
    conf.write_text(corefile(port, cp.admin_kubeconfig))
    env = {**os.environ, "GOMAXPROCS": "1"}
    return [str(cp.bins / "coredns"), "-conf", str(conf)], env


def kdns_command(python: str, cp: ControlPlane, workdir: Path, port: int) -> list[str]:
    """kdns watching the same API server (its --zones folder empty)."""
    empty = workdir / "empty-zones"
    empty.mkdir(exist_ok=True)
    return [
        python,
        "-m",
        "kdns",
        "serve",
        "--kubeconfig",
        str(cp.admin_kubeconfig),
        "--zones",
        str(empty),
        "--log-level",
        "warning",
        "--listen",
        f"127.0.0.1:{port}",
    ]


def has_everything(port: int, expect: list[Expect]) -> bool:
    """Whether the server on `port` answers every expectation in full."""
    for e in expect:
        query = dns.message.make_query(e.name, dns.rdatatype.from_text(e.qtype))
        try:
            reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=1.0)
        except dns.exception.Timeout:
            return False
        if reply.rcode() != dns.rcode.NOERROR:
            return False
        if sum(len(r) for r in reply.answer if r.rdtype == query.question[0].rdtype) < e.answers:
            return False
    return True


def wait_everything(port: int, expect: list[Expect], timeout: float = 60.0) -> None:
    """Until the server answers the last service of the data (its watch has the whole set)."""
    names = ", ".join(f"{e.name} {e.qtype}" for e in expect)
    wait_for(f"port {port} to answer {names}", lambda: has_everything(port, expect), timeout, 0.2)
