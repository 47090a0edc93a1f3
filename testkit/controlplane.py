"""A real Kubernetes control plane for the end-to-end suite, run as plain processes.

etcd, kube-apiserver and kube-controller-manager (built by tests/e2e/build.sh into a cache outside
the clone) are started on free ports of 127.0.0.1, with their state in a temporary folder, and
stopped by PID at the end. There is no kubelet and no scheduler: a Pod gets `spec.nodeName` at
creation and its status is patched through the status subresource, so the endpoints, endpointslice
and endpointslice-mirroring controllers write Endpoints and EndpointSlices exactly as in a cluster.

The API is spoken with urllib (JSON in, JSON out), so the harness shares nothing with kdns's own
client code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

Obj = dict[str, Any]
T = TypeVar("T")

HERE = Path(__file__).resolve().parent
BUILD_SH = HERE.parent / "tests" / "e2e" / "build.sh"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager")
#: The service ranges, IPv4 first (the primary family: single-stack services are IPv4, as is the
#: `kubernetes` service); the IPv6 range lets services ask for dual-stack or IPv6 ClusterIPs.
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_CIDR_V6 = "fd00:10:96::/112"
ADMIN_TOKEN = "kdns-e2e-admin-token"
LIMITED_TOKEN = "kdns-e2e-limited-token"  # static user "kdns-limited", no groups
CONTROLLERS = "endpoints-controller,endpointslice-controller,endpointslice-mirroring-controller"


def bin_dir() -> Path:
    """Where build.sh puts the binaries (KDNS_E2E_BIN overrides, KDNS_E2E_CACHE moves the cache)."""
    if os.environ.get("KDNS_E2E_BIN"):
        return Path(os.environ["KDNS_E2E_BIN"])
    cache = os.environ.get("KDNS_E2E_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdns-e2e"
    )
    return Path(cache) / "bin"


def missing_binaries(names: tuple[str, ...] = CONTROL_PLANE) -> list[str]:
    d = bin_dir()
    return [b for b in names if not os.access(d / b, os.X_OK)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    """Call `check` until it returns something other than None/False; raise after `timeout`."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result is not None and result is not False:
                return result
        except Exception as err:  # reported if the wait times out
            last = err
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last})")
        time.sleep(interval)


class ApiError(Exception):
    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process (by PID), SIGKILL it after `timeout`."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
                os.kill(self.proc.pid, signal.SIGCONT)  # a paused process acts on it only now
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)

    def signal(self, sig: int) -> None:
        """Send `sig` to the process, by PID (SIGSTOP/SIGCONT freeze and thaw it)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL, by PID, and reap it: no chance to flush or to say goodbye to clients."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def start_process(name: str, argv: list[str], workdir: Path) -> Proc:
    log = workdir / f"{name}.log"
    fh = open(log, "ab")  # noqa: SIM115 - the child owns it
    try:
        proc = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir
        )
    finally:
        fh.close()
    return Proc(name, proc, log)


@dataclass
class ControlPlane:
    workdir: Path
    bins: Path = field(default_factory=bin_dir)
    procs: dict[str, Proc] = field(default_factory=dict)
    etcd_port: int = 0
    etcd_peer_port: int = 0
    api_port: int = 0
    ca_file: Path = Path()
    admin_kubeconfig: Path = Path()
    limited_kubeconfig: Path = Path()
    _ssl: ssl.SSLContext | None = None
    _port: int = 0  # where the harness's requests go: api_port, or start_apiserver's `port`

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        try:
            self.start_etcd()
            self._write_auth()
            self.api_port = free_port()
            self.start_apiserver()
            self.start_controller_manager()
            self._wait_controllers()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self.procs.pop(name, None)
            if proc:
                proc.stop()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ({p.proc.pid}) ---\n{p.tail()}" for p in self.procs.values()
        )

    def pause(self, name: str) -> None:
        """SIGSTOP `name`: its sockets stay open and the kernel still accepts connections, but
        nothing is answered (a hung peer, not a dead one)."""
        self.procs[name].signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        """SIGCONT `name` after `pause`."""
        self.procs[name].signal(signal.SIGCONT)

    def kill(self, name: str) -> None:
        """SIGKILL `name` (by PID) and forget it; `start_etcd`, `start_apiserver` or
        `start_controller_manager` bring it back."""
        proc = self.procs.pop(name, None)
        if proc:
            proc.kill()

    def wipe_etcd(self) -> None:
        """Delete etcd's data folder (etcd must be stopped): the next `start_etcd` starts empty,
        its revisions (the resourceVersions) counting from 1 again."""
        assert "etcd" not in self.procs, "stop etcd before wiping it"
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)

    def start_etcd(self) -> None:
        """Start etcd, or start it again on the same ports and data folder."""
        if not self.etcd_port:
            self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        argv = [
            str(self.bins / "etcd"),
            "--name=e2e",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=e2e={peer_url}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        self.procs["etcd"] = p = start_process("etcd", argv, self.workdir)

        def healthy() -> bool:
            if not p.alive():
                raise RuntimeError(f"etcd exited:\n{p.tail()}")
            with urllib.request.urlopen(f"{client}/health", timeout=2) as resp:
                return bool(json.load(resp).get("health") == "true")

        wait_for("etcd /health", healthy, 30, 0.1)

    def _write_auth(self) -> None:
        (self.workdir / "tokens.csv").write_text(
            f'{ADMIN_TOKEN},kdns-e2e-admin,admin-uid,"system:masters"\n'
            f"{LIMITED_TOKEN},kdns-limited,limited-uid\n"
        )
        key = self.workdir / "sa.key"
        if not key.exists():
            subprocess.run(
                ["openssl", "genrsa", "-out", str(key), "2048"],
                check=True,
                capture_output=True,
                timeout=60,
            )

    def start_apiserver(self, port: int | None = None) -> None:
        """Start (or restart, on the same port, certificate and etcd) kube-apiserver.

        `port`: serve on another port for a while (clients configured with `api_port` cannot
        reach it); the harness's own requests follow it until the next start."""
        cert_dir = self.workdir / "certs"
        self._port = port or self.api_port
        argv = [
            str(self.bins / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self._port}",
            f"--cert-dir={cert_dir}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR},{SERVICE_CIDR_V6}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.workdir / 'sa.key'}",
            f"--service-account-signing-key-file={self.workdir / 'sa.key'}",
            "--endpoint-reconciler-type=none",
            "--disable-admission-plugins=ServiceAccount",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--v=1",
        ]
        self.procs["kube-apiserver"] = p = start_process("kube-apiserver", argv, self.workdir)
        self.ca_file = cert_dir / "apiserver.crt"

        def ready() -> bool:
            if not p.alive():
                raise RuntimeError(f"kube-apiserver exited:\n{p.tail()}")
            if not self.ca_file.exists():
                return False
            self._ssl = None
            return bool(self.request("GET", "/readyz", raw=True) == "ok")

        wait_for("kube-apiserver /readyz", ready, 90, 0.2)
        if not self.admin_kubeconfig.name:
            self.admin_kubeconfig = self.write_kubeconfig("admin", ADMIN_TOKEN)
            self.limited_kubeconfig = self.write_kubeconfig("limited", LIMITED_TOKEN)

    def stop_apiserver(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `grace` s: with watches open (the controllers', kdns's) it
        stops listening at once but takes over 10 s to exit."""
        proc = self.procs.pop("kube-apiserver", None)
        if proc:
            proc.stop(grace)

    def start_controller_manager(self, kubeconfig: Path | None = None) -> None:
        """Start kube-controller-manager (with the admin kubeconfig unless told otherwise)."""
        argv = [
            str(self.bins / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
            f"--controllers={CONTROLLERS}",
            "--leader-elect=false",
            "--secure-port=0",
            "--profiling=false",
            "--v=1",
        ]
        self.procs["kube-controller-manager"] = start_process(
            "kube-controller-manager", argv, self.workdir
        )

    def _wait_controllers(self) -> None:
        """Prove the controllers run: a probe service gets its Endpoints and EndpointSlice."""
        ns = "kdns-e2e-probe"
        self.create_namespace(ns)
        self.create_node("probe-node")
        self.create_service(ns, "probe", selector={"app": "probe"}, ports=[("p", 80, 80)])
        self.create_pod(ns, "probe-0", "probe-node", {"app": "probe"})
        self.set_pod_ready(ns, "probe-0", "10.244.255.1", True)
        kcm = self.procs["kube-controller-manager"]

        def written() -> bool:
            if not kcm.alive():
                raise RuntimeError(f"kube-controller-manager exited:\n{kcm.tail()}")
            return bool(self.slice_addresses(ns, "probe")) and bool(
                self.get(f"/api/v1/namespaces/{ns}/endpoints/probe").get("subsets")
            )

        wait_for("the controllers to write the probe's endpoints", written, 60, 0.2)

    # ---------------------------------------------------------------- kubeconfig

    def write_kubeconfig(self, name: str, token: str, port: int | None = None) -> Path:
        """A kubeconfig for the apiserver on `port` (default: `api_port`) with `token`."""
        path = self.workdir / f"{name}.kubeconfig"
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {
                        "server": f"https://127.0.0.1:{port or self.api_port}",
                        "certificate-authority": str(self.ca_file),
                    },
                }
            ],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "e2e", "user": name}}],
            "current-context": name,
        }
        path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        return path

    # ---------------------------------------------------------------- REST

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        token: str = ADMIN_TOKEN,
        content_type: str = "application/json",
        raw: bool = False,
        timeout: float = 15.0,
        port: int | None = None,
    ) -> Any:
        """One API request (JSON); `port`: ask that apiserver port rather than the current one."""
        url = f"https://127.0.0.1:{port or self._port or self.api_port}{path}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._context()) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, err.read().decode(errors="replace"), method, path) from None
        if raw:
            return text
        return json.loads(text) if text else {}

    def get(self, path: str, **kw: Any) -> Obj:
        return dict(self.request("GET", path, **kw))

    def create(self, path: str, obj: Obj, **kw: Any) -> Obj:
        return dict(self.request("POST", path, obj, **kw))

    def merge_patch(self, path: str, patch: Obj, **kw: Any) -> Obj:
        return dict(
            self.request("PATCH", path, patch, content_type="application/merge-patch+json", **kw)
        )

    def apply(self, path: str, obj: Obj, *, dry_run: bool = False) -> Obj:
        """Server-side apply of `obj` at `path` (the object's own URL)."""
        query = "fieldManager=kdns-e2e&fieldValidation=Strict&force=true"
        if dry_run:
            query += "&dryRun=All"
        return dict(
            self.request(
                "PATCH", f"{path}?{query}", obj, content_type="application/apply-patch+yaml"
            )
        )

    def delete(self, path: str, *, grace: int | None = None, missing_ok: bool = True) -> None:
        body = {"gracePeriodSeconds": grace} if grace is not None else None
        try:
            self.request("DELETE", path, body)
        except ApiError as err:
            if not (missing_ok and err.status == 404):
                raise

    # ---------------------------------------------------------------- objects

    def create_namespace(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.create("/api/v1/namespaces", {"metadata": {"name": name}})

    def create_node(self, name: str) -> None:
        try:
            self.create("/api/v1/nodes", {"metadata": {"name": name}})
        except ApiError as err:
            if err.status != 409:
                raise

    def create_service(
        self,
        ns: str,
        name: str,
        *,
        selector: dict[str, str] | None = None,
        ports: list[tuple[str, int, int]] | None = None,
        headless: bool = False,
        external_name: str | None = None,
        labels: dict[str, str] | None = None,
        publish_not_ready: bool = False,
        protocols: dict[str, str] | None = None,
        cluster_ip: str | None = None,
        ip_family_policy: str | None = None,
        ip_families: tuple[str, ...] = (),
    ) -> Obj:
        """ports: (name, port, targetPort); an empty name makes an unnamed port. `cluster_ip`:
        that address rather than an allocated one (as a restore from backup does).
        `ip_family_policy` (SingleStack, PreferDualStack, RequireDualStack) and `ip_families`
        ("IPv4", "IPv6", primary first): left to the apiserver's defaults when not given."""
        spec: Obj = {}
        if cluster_ip:
            spec["clusterIP"] = cluster_ip
        if ip_family_policy:
            spec["ipFamilyPolicy"] = ip_family_policy
        if ip_families:
            spec["ipFamilies"] = list(ip_families)
        if external_name:
            spec = {"type": "ExternalName", "externalName": external_name}
        if selector is not None:
            spec["selector"] = selector
        if headless:
            spec["clusterIP"] = "None"
        if publish_not_ready:
            spec["publishNotReadyAddresses"] = True
        if ports:
            spec["ports"] = [
                {
                    **({"name": pn} if pn else {}),
                    "port": port,
                    "targetPort": target,
                    "protocol": (protocols or {}).get(pn, "TCP"),
                }
                for pn, port, target in ports
            ]
        meta: Obj = {"name": name, "namespace": ns}
        if labels:
            meta["labels"] = labels
        return self.create(f"/api/v1/namespaces/{ns}/services", {"metadata": meta, "spec": spec})

    def delete_service(self, ns: str, name: str) -> None:
        self.delete(f"/api/v1/namespaces/{ns}/services/{name}")

    def create_endpoints(
        self,
        ns: str,
        name: str,
        addresses: list[tuple[str, str]],
        ports: list[tuple[str, int]],
        *,
        labels: dict[str, str] | None = None,
        not_ready: list[tuple[str, str]] | None = None,
    ) -> Obj:
        """A hand-written Endpoints: addresses are (ip, nodeName); ports (name, port)."""
        subset: Obj = {
            "addresses": [{"ip": ip, **({"nodeName": n} if n else {})} for ip, n in addresses],
            "ports": [{"name": pn, "port": p, "protocol": "TCP"} for pn, p in ports],
        }
        if not_ready:
            subset["notReadyAddresses"] = [
                {"ip": ip, **({"nodeName": n} if n else {})} for ip, n in not_ready
            ]
        meta: Obj = {"name": name, "namespace": ns}
        if labels:
            meta["labels"] = labels
        return self.create(
            f"/api/v1/namespaces/{ns}/endpoints", {"metadata": meta, "subsets": [subset]}
        )

    def create_pod(
        self,
        ns: str,
        name: str,
        node: str,
        labels: dict[str, str],
        *,
        hostname: str | None = None,
        subdomain: str | None = None,
        container_ports: list[tuple[str, int]] | None = None,
    ) -> Obj:
        spec: Obj = {
            "nodeName": node,
            "containers": [
                {
                    "name": "c",
                    "image": "registry.invalid/pause:e2e",
                    **(
                        {"ports": [{"name": n, "containerPort": p} for n, p in container_ports]}
                        if container_ports
                        else {}
                    ),
                }
            ],
        }
        if hostname:
            spec["hostname"] = hostname
        if subdomain:
            spec["subdomain"] = subdomain
        return self.create(
            f"/api/v1/namespaces/{ns}/pods",
            {"metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": spec},
        )

    def set_pod_ready(self, ns: str, name: str, ip: str | tuple[str, ...], ready: bool) -> Obj:
        """Do the kubelet's part: Running, with an IP (or a tuple of one IP per family, primary
        first, for a dual-stack pod), Ready true or false."""
        status = "True" if ready else "False"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ips = (ip,) if isinstance(ip, str) else ip
        patch = {
            "status": {
                "phase": "Running",
                "podIP": ips[0],
                "podIPs": [{"ip": a} for a in ips],
                "hostIP": "10.250.0.1",
                "hostIPs": [{"ip": "10.250.0.1"}],
                "conditions": [
                    {"type": "Ready", "status": status, "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                ],
            }
        }
        return self.merge_patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", patch)

    def delete_pod(self, ns: str, name: str) -> None:
        """Force delete: without a kubelet a graceful delete never completes."""
        self.delete(f"/api/v1/namespaces/{ns}/pods/{name}", grace=0)

    def run_pod(
        self,
        ns: str,
        name: str,
        node: str,
        labels: dict[str, str],
        ip: str | tuple[str, ...],
        ready: bool = True,
        **kw: Any,
    ) -> None:
        self.create_pod(ns, name, node, labels, **kw)
        self.set_pod_ready(ns, name, ip, ready)

    def slices(self, ns: str, service: str) -> list[Obj]:
        sel = urllib.parse.quote(f"kubernetes.io/service-name={service}")
        path = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector={sel}"
        got = self.get(path)
        return list(got.get("items") or [])

    def slice_addresses(self, ns: str, service: str, ready_only: bool = True) -> set[str]:
        out: set[str] = set()
        for s in self.slices(ns, service):
            for ep in s.get("endpoints") or []:
                if ready_only and (ep.get("conditions") or {}).get("ready") is False:
                    continue
                out.update(ep.get("addresses") or [])
        return out

    # ---------------------------------------------------------------- RBAC

    def service_account_kubeconfig(
        self, ns: str, name: str, rules: list[Obj], role_name: str
    ) -> Path:
        """A ServiceAccount bound only to a ClusterRole of `rules`; a kubeconfig with its token."""
        self.create_namespace(ns)
        self._create_or_replace(
            f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": name}}
        )
        self._create_or_replace(
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            {"metadata": {"name": role_name}, "rules": rules},
        )
        self._create_or_replace(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "metadata": {"name": role_name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role_name,
                },
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
            },
        )
        return self.token_kubeconfig(ns, name)

    def token_kubeconfig(self, ns: str, name: str) -> Path:
        """A kubeconfig holding a fresh token of ServiceAccount ns/name (TokenRequest API)."""
        tr = self.create(
            f"/api/v1/namespaces/{ns}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 7200},
            },
        )
        return self.write_kubeconfig(f"sa-{ns}-{name}", tr["status"]["token"])

    def _create_or_replace(self, collection: str, obj: Obj) -> None:
        try:
            self.create(collection, obj)
        except ApiError as err:
            if err.status != 409:
                raise
            name = obj["metadata"]["name"]
            current = self.get(f"{collection}/{name}")
            rv = current["metadata"]["resourceVersion"]
            obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": rv}}
            self.request("PUT", f"{collection}/{name}", obj)


@contextlib.contextmanager
def running_control_plane(workdir: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane(workdir)
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()
