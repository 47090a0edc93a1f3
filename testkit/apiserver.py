"""An API server double that speaks the Kubernetes list/watch wire protocol over real HTTP.

The cluster source is tested with the real `kubernetes` client, configured from a real kubeconfig
file, against this server; nothing in the client is patched. So the double has to behave like the
apiserver where the watch depends on it, and it does:

- One resourceVersion counter for every kind (etcd's revision). Every write bumps it and stamps
  the object; a DELETED event carries the deleted object with the deletion's resourceVersion.
- LIST returns `metadata.resourceVersion`; its items carry no `kind`/`apiVersion`. `limit` and
  `continue` page through a snapshot taken by the first page, with `remainingItemCount`, and an
  expired continue token gets 410 Expired, as the apiserver does after a compaction.
- WATCH (`watch=true`, or `watch=True` as client 36 sends it) answers 200 with a chunked stream of
  newline-delimited JSON events after the given resourceVersion, each event in its own chunk.
  A resourceVersion older than the retained history gets an ERROR event whose object is a Status
  with code 410 inside the 200 stream (or an HTTP 410, if `expired_as_http`). `timeoutSeconds`
  ends the stream cleanly; `allowWatchBookmarks=true` enables BOOKMARK events (periodic and on
  demand). A label selector filters like the watch cache: an object that stops matching arrives
  as DELETED, one that starts matching as ADDED.
- Objects are built by `service()`, `endpoint_slice()`, `endpoints()` and `namespace()` in the
  shape the apiserver returns, down to `"endpoints": null` in a slice of a service without
  endpoints.

Faults are injected by `inject(Fault(...))` (a status for some requests, a delay, a dropped
connection, a request held until released), `outage()`, `cut_watches()` (connections closed
mid-stream), `end_watches()` (a clean end, as at `timeoutSeconds`), `truncate_next_event()`
(half an event, then the connection dies), `compact()` (history lost: old resourceVersions get
410), `wipe()` (a new etcd: objects and history gone, resourceVersions start again lower),
`go_down()`/`come_up()` (connection refused). `requests()` tells what clients asked for.

The module also holds `LoopStore`, the harness on the other side: a real `kdns.state.store.Store`
owned by an asyncio loop in a thread and fed through the real `LoopSink`, as the server runs it.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import concurrent.futures
import contextlib
import copy
import itertools
import json
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import yaml

from kdns.sources.reflector import WatchSettings
from kdns.state.store import LoopSink, Store

Obj = dict[str, Any]
T = TypeVar("T")

TOKEN = "kdns-test-token"

#: Watch settings for tests: small pages (so lists take several), backoff in tens of ms.
FAST = WatchSettings(
    page_size=2,
    watch_timeout=(30, 30),
    backoff_base=0.02,
    backoff_cap=0.2,
    connect_timeout=1.0,
    read_timeout=3.0,
    # A quiet watch is listed again after this: long, so that on a loaded machine no test's
    # events arrive through an unplanned relist instead (tests of the idle path set their own).
    idle_timeout=60.0,
)
CREATED = "2024-05-01T10:00:00Z"


GATEWAY_PREFIX = "/apis/gateway.networking.k8s.io/v1"
MCS_PREFIX = "/apis/multicluster.x-k8s.io/v1alpha1"


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    api_version: str
    prefix: str  # "/api/v1" or "/apis/<group>/<version>"
    namespaced: bool = True


RESOURCES = {
    r.plural: r
    for r in (
        Resource("services", "Service", "v1", "/api/v1"),
        Resource("endpoints", "Endpoints", "v1", "/api/v1"),
        Resource("namespaces", "Namespace", "v1", "/api/v1", namespaced=False),
        Resource("pods", "Pod", "v1", "/api/v1"),
        Resource("nodes", "Node", "v1", "/api/v1", namespaced=False),
        Resource(
            "endpointslices", "EndpointSlice", "discovery.k8s.io/v1", "/apis/discovery.k8s.io/v1"
        ),
        Resource("ingresses", "Ingress", "networking.k8s.io/v1", "/apis/networking.k8s.io/v1"),
        *(
            Resource(plural, kind, "gateway.networking.k8s.io/v1", GATEWAY_PREFIX)
            for plural, kind in (
                ("gateways", "Gateway"),
                ("httproutes", "HTTPRoute"),
                ("grpcroutes", "GRPCRoute"),
                ("tlsroutes", "TLSRoute"),
            )
        ),
        *(
            Resource(plural, kind, "multicluster.x-k8s.io/v1alpha1", MCS_PREFIX)
            for plural, kind in (
                ("serviceimports", "ServiceImport"),
                ("serviceexports", "ServiceExport"),
            )
        ),
    )
}
KIND_TO_PLURAL = {r.kind: r.plural for r in RESOURCES.values()}
#: The kinds a CustomResourceDefinition serves: absent (404) unless the double is told they
#: are installed (`FakeApiServer(crds=...)`), as on a real cluster without those CRDs.
CRD_PLURALS = frozenset(
    r.plural for r in RESOURCES.values() if r.prefix in (GATEWAY_PREFIX, MCS_PREFIX)
)

_ROUTES = [
    (re.compile(r"^/api/v1/(services|endpoints|namespaces|pods)$"), ("plural",)),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/(services|endpoints|pods)$"), ("ns", "plural")),
    (re.compile(r"^/api/v1/namespaces/([^/]+)$"), ("name",)),
    (re.compile(r"^/api/v1/nodes/([^/]+)$"), ("node",)),
    (re.compile(r"^/apis/discovery\.k8s\.io/v1/(endpointslices)$"), ("plural",)),
    (
        re.compile(r"^/apis/discovery\.k8s\.io/v1/namespaces/([^/]+)/(endpointslices)$"),
        ("ns", "plural"),
    ),
]
for _prefix in sorted({r.prefix for r in RESOURCES.values()} - {"/api/v1"}):
    if _prefix == "/apis/discovery.k8s.io/v1":
        continue
    _plurals = "|".join(r.plural for r in RESOURCES.values() if r.prefix == _prefix)
    _ROUTES.append((re.compile(f"^{re.escape(_prefix)}/({_plurals})$"), ("plural",)))
    _ROUTES.append(
        (re.compile(f"^{re.escape(_prefix)}/namespaces/([^/]+)/({_plurals})$"), ("ns", "plural"))
    )


# -- objects as the apiserver sends them ----------------------------------------------------------


def _meta(name: str, namespace: str | None, labels: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta.update({"uid": "", "resourceVersion": "", "creationTimestamp": CREATED})
    if labels:
        meta["labels"] = dict(labels)
    # Real objects carry these (kilobytes of them, at times): a reader has to skip them.
    meta["managedFields"] = [
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "v1",
            "time": CREATED,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}},
        }
    ]
    return meta


def service(
    name: str,
    namespace: str = "default",
    *,
    cluster_ip: str | None = "10.96.0.10",
    ports: Sequence[tuple[str, int, str]] = (("http", 80, "TCP"),),
    type: str = "ClusterIP",
    external_name: str | None = None,
    labels: dict[str, str] | None = None,
    selector: dict[str, str] | None = None,
    publish_not_ready: bool = False,
) -> Obj:
    """A v1 Service; `cluster_ip="None"` makes it headless."""
    spec: Obj = {}
    if ports:
        spec["ports"] = [
            {"name": n, "protocol": proto, "port": port, "targetPort": port}
            if n
            else {"protocol": proto, "port": port, "targetPort": port}
            for n, port, proto in ports
        ]
    if selector:
        spec["selector"] = dict(selector)
    if type == "ExternalName":
        spec.update({"type": "ExternalName", "externalName": external_name or "example.com"})
    else:
        ip = cluster_ip or "10.96.0.10"
        family = "IPv6" if ":" in ip else "IPv4"
        spec.update(
            {
                "clusterIP": ip,
                "clusterIPs": [ip],
                "type": type,
                "ipFamilies": [family],
                "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster",
            }
        )
    spec["sessionAffinity"] = "None"
    if publish_not_ready:
        spec["publishNotReadyAddresses"] = True
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": _meta(name, namespace, labels),
        "spec": spec,
        "status": {"loadBalancer": {}},
    }


def slice_endpoint(
    ip: str,
    *,
    ready: bool = True,
    terminating: bool = False,
    hostname: str | None = None,
    node_name: str = "node-1",
    pod: str | None = None,
    namespace: str = "default",
) -> Obj:
    """One entry of an EndpointSlice's `endpoints`."""
    ep: Obj = {
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": ready or terminating, "terminating": terminating},
    }
    if hostname:
        ep["hostname"] = hostname
    ep["nodeName"] = node_name
    ep["targetRef"] = {
        "kind": "Pod",
        "namespace": namespace,
        "name": pod or f"pod-{ip.replace('.', '-').replace(':', '-')}",
        "uid": str(uuid.uuid4()),
    }
    return ep


def endpoint_slice(
    name: str,
    service_name: str,
    namespace: str = "default",
    *,
    endpoints: Sequence[str | Obj] | None = (),
    ports: Sequence[tuple[str, int, str]] | None = (("http", 8080, "TCP"),),
    address_type: str = "IPv4",
) -> Obj:
    """A discovery.k8s.io/v1 EndpointSlice. `endpoints=None` gives `"endpoints": null` (and
    `"ports": null`), as the controller writes for a service without endpoints; strings in
    `endpoints` are ready endpoints with that address."""
    eps: list[Obj] | None = None
    if endpoints is not None:
        eps = [
            slice_endpoint(e, namespace=namespace) if isinstance(e, str) else dict(e)
            for e in endpoints
        ]
    port_list: list[Obj] | None = None
    if endpoints is not None and ports is not None:
        port_list = [{"name": n, "protocol": proto, "port": port} for n, port, proto in ports]
    meta = _meta(
        name,
        namespace,
        {
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            "kubernetes.io/service-name": service_name,
        },
    )
    meta["generateName"] = f"{service_name}-"
    meta["generation"] = 1
    meta["ownerReferences"] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "name": service_name,
            "uid": str(uuid.uuid4()),
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": meta,
        "addressType": address_type,
        "endpoints": eps,
        "ports": port_list,
    }


def endpoints(
    name: str,
    namespace: str = "default",
    *,
    ready: Sequence[str] = (),
    not_ready: Sequence[str] = (),
    ports: Sequence[tuple[str, int, str]] = (("client", 2379, "TCP"),),
    labels: dict[str, str] | None = None,
) -> Obj:
    """A v1 Endpoints, as written by hand for a selector-less service."""
    obj: Obj = {"kind": "Endpoints", "apiVersion": "v1", "metadata": _meta(name, namespace, labels)}
    if ready or not_ready:
        subset: Obj = {}
        if ready:
            subset["addresses"] = [{"ip": ip} for ip in ready]
        if not_ready:
            subset["notReadyAddresses"] = [{"ip": ip} for ip in not_ready]
        subset["ports"] = [
            {"name": n, "port": port, "protocol": proto} if n else {"port": port, "protocol": proto}
            for n, port, proto in ports
        ]
        obj["subsets"] = [subset]
    return obj


def pod(
    name: str,
    ips: Sequence[str],
    namespace: str = "default",
    *,
    phase: str = "Running",
    deleting: bool = False,
    node_name: str = "node-1",
) -> Obj:
    """A v1 Pod as the kubelet reports it once it has addresses (the fields DNS may read, and
    a spec and conditions to weigh like a real one)."""
    meta = _meta(name, namespace, {"app": name.rsplit("-", 1)[0]})
    if deleting:
        meta["deletionTimestamp"] = CREATED
        meta["deletionGracePeriodSeconds"] = 30
    status: Obj = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if phase == "Running" else "False"}],
        "hostIP": "192.168.0.10",
    }
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": meta,
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "app", "image": "app:1", "ports": []}],
        },
        "status": status,
    }


def node(name: str, labels: dict[str, str] | None = None) -> Obj:
    """A v1 Node (what `--prefer-zone-from-node` reads: its labels)."""
    return {"kind": "Node", "apiVersion": "v1", "metadata": _meta(name, None, labels)}


def namespace(name: str) -> Obj:
    """A v1 Namespace."""
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": _meta(name, None, {"kubernetes.io/metadata.name": name}),
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def status(code: int, reason: str, message: str) -> Obj:
    """A v1 Status, the body of every error the apiserver returns."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


# -- label selectors ------------------------------------------------------------------------------

_SELECTOR_TERM = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<nkey>[\w./-]+)"
    r"|(?P<key>[\w./-]+)\s*(?:(?P<op>==|!=|=)\s*(?P<val>[\w./-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<vals>[^)]*)\))?)\s*(?:,|$)"
)


def parse_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """A label selector (`a=b,c!=d,e in (f,g),!h,i`) as a predicate on a label map."""
    reqs: list[tuple[str, str, frozenset[str]]] = []  # (key, operator, values)
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _SELECTOR_TERM.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"unable to parse requirement: {text[pos:]!r}")
        pos = m.end()
        if m["not"]:
            reqs.append((m["nkey"], "!", frozenset()))
        elif m["op"]:
            reqs.append((m["key"], "!=" if m["op"] == "!=" else "=", frozenset([m["val"]])))
        elif m["setop"]:
            vals = frozenset(v.strip() for v in m["vals"].split(",") if v.strip())
            reqs.append((m["key"], "=" if m["setop"] == "in" else "!=", vals))
        else:
            reqs.append((m["key"], "exists", frozenset()))

    def matches(labels: dict[str, str]) -> bool:
        for key, op, vals in reqs:
            value = labels.get(key)
            ok = {
                "!": value is None,
                "exists": value is not None,
                "=": value in vals,
                "!=": value not in vals,  # true for a missing label, as in Kubernetes
            }[op]
            if not ok:
                return False
        return True

    return matches


def _labels(obj: Obj) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("labels") or {})


# -- server state ---------------------------------------------------------------------------------


@dataclass
class Fault:
    """A misbehaviour for matching requests.

    `status`: the HTTP status to answer with (a Status body); None answers normally (after
    `delay`, and after `gate` is set, if given: a request held until the test lets it go, at
    most 60 s); 0 closes the connection without answering. `times`: how many requests it hits
    (None: until removed or until `until`, a time.monotonic() deadline).
    """

    status: int | None = 500
    times: int | None = 1
    resource: str | None = None  # plural: "services", "endpointslices", ...
    watch: bool | None = None  # True: watches only; False: everything but watches
    path: str | None = None  # exact request path
    #: A query parameter the request must carry ("continue": a list's later pages only).
    query: str | None = None
    delay: float = 0.0
    until: float | None = None
    gate: threading.Event | None = None
    hits: int = 0

    def matches(
        self, path: str, plural: str | None, watch: bool, now: float, query: Iterable[str] = ()
    ) -> bool:
        if self.query is not None and self.query not in query:
            return False
        if self.until is not None and now >= self.until:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        if self.resource is not None and self.resource != plural:
            return False
        if self.watch is not None and self.watch != watch:
            return False
        return self.path is None or self.path == path


@dataclass(frozen=True)
class Request:
    """One request the double received."""

    method: str
    path: str
    query: dict[str, str]
    resource: str | None
    namespace: str | None
    watch: bool
    status: int
    at: float  # time.monotonic()


@dataclass
class _Event:
    rv: int
    plural: str
    type: str
    obj: Obj
    prev: Obj | None


@dataclass
class _State:
    rv: int = 1
    objects: dict[str, dict[tuple[str, str], Obj]] = field(
        default_factory=lambda: {p: {} for p in RESOURCES}
    )
    history: list[_Event] = field(default_factory=list)
    history_rvs: list[int] = field(default_factory=list)
    compacted: int = 0  # a watch from a resourceVersion below this gets 410
    snapshots: dict[int, list[Obj]] = field(default_factory=dict)
    cut_gen: int = 0
    end_gen: int = 0
    truncate_gen: int = 0
    bookmark_gen: int = 0
    stopping: bool = False


class FakeApiServer:
    """The apiserver double. Use as a context manager, or call `start()` and `stop()`.

    `retain`: keep only the last N events (older resourceVersions expire automatically);
    `bookmark_interval`: seconds between periodic bookmarks on watches that allow them;
    `max_watch_seconds`: end every watch after this long, whatever the client asked for;
    `crds`: the plurals of `CRD_PLURALS` that are installed (the others are not found, 404);
    `expired_as_http`: answer a watch from an expired resourceVersion with an HTTP 410 instead
    of an ERROR event in a 200 stream; `record_writes`: remember when each event was first written
    to a client (`written[rv]`, time.monotonic()), for the propagation benchmark.
    """

    def __init__(
        self,
        *,
        token: str = TOKEN,
        retain: int | None = None,
        bookmark_interval: float | None = None,
        max_watch_seconds: float | None = None,
        expired_as_http: bool = False,
        record_writes: bool = False,
        crds: Iterable[str] = (),
    ) -> None:
        self.token = token
        #: The CRD-served plurals that are installed (the others answer 404); `install()`.
        self.crds = set(crds)
        self.retain = retain
        self.bookmark_interval = bookmark_interval
        self.max_watch_seconds = max_watch_seconds
        self.expired_as_http = expired_as_http
        self.record_writes = record_writes
        self.written: dict[int, float] = {}
        self._cond = threading.Condition()
        self._state = _State()
        self._faults: list[Fault] = []
        self._log: list[Request] = []
        self._snapshot_ids = itertools.count(1)
        self._conns: set[socket.socket] = set()
        self._open_watches = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeApiServer:
        self._serve(self.port)
        return self

    def _serve(self, port: int) -> None:
        handler = type("Handler", (_Handler,), {"api": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def go_down(self) -> None:
        """Stop listening and drop every connection: clients get connection refused."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        self._drop_connections()

    def come_up(self) -> None:
        """Listen again on the same port, with the same objects and history."""
        if self._httpd is None:
            self._serve(self.port)

    def stop(self) -> None:
        with self._cond:
            self._state.stopping = True
            self._cond.notify_all()
        self.go_down()

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _drop_connections(self) -> None:
        with self._cond:
            conns = list(self._conns)
            self._cond.notify_all()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # -- objects ----------------------------------------------------------------------------------

    def apply(self, obj: Obj) -> Obj:
        """Create or replace an object (its kind says which resource); returns what is stored."""
        res = RESOURCES[KIND_TO_PLURAL[obj["kind"]]]
        new = copy.deepcopy(obj)
        meta = new.setdefault("metadata", {})
        key = (meta.get("namespace", "") if res.namespaced else "", meta["name"])
        with self._cond:
            st = self._state
            old = st.objects[res.plural].get(key)
            st.rv += 1
            meta["resourceVersion"] = str(st.rv)
            meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
            meta.setdefault("creationTimestamp", CREATED)
            st.objects[res.plural][key] = new
            self._record(res.plural, "MODIFIED" if old else "ADDED", new, old)
            return copy.deepcopy(new)

    def apply_all(self, objs: Iterable[Obj]) -> None:
        for obj in objs:
            self.apply(obj)

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        res = RESOURCES[KIND_TO_PLURAL[kind]]
        key = (namespace if res.namespaced else "", name)
        with self._cond:
            st = self._state
            old = st.objects[res.plural].pop(key)
            st.rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(st.rv)
            self._record(res.plural, "DELETED", gone, old)

    def get(self, kind: str, name: str, namespace: str = "default") -> Obj | None:
        res = RESOURCES[KIND_TO_PLURAL[kind]]
        with self._cond:
            obj = self._state.objects[res.plural].get((namespace if res.namespaced else "", name))
            return copy.deepcopy(obj) if obj else None

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._state.rv

    def _record(self, plural: str, type: str, obj: Obj, prev: Obj | None) -> None:
        st = self._state
        st.history.append(_Event(st.rv, plural, type, obj, prev))
        st.history_rvs.append(st.rv)
        if self.retain is not None and len(st.history) > self.retain:
            drop = len(st.history) - self.retain
            st.compacted = st.history[drop - 1].rv
            del st.history[:drop]
            del st.history_rvs[:drop]
        self._cond.notify_all()

    # -- controls ---------------------------------------------------------------------------------

    def compact(self) -> int:
        """Forget all history (and continue tokens): watches from any older resourceVersion
        get 410 Expired. Returns the current resourceVersion, which stays watchable."""
        with self._cond:
            st = self._state
            st.compacted = st.rv
            st.history.clear()
            st.history_rvs.clear()
            st.snapshots.clear()
            return st.rv

    def wipe(self, rv: int = 1) -> None:
        """Forget every object, all history and continue tokens, as an apiserver restarted on a
        wiped etcd does: resourceVersions count again from `rv`, which may be below what clients
        have seen. Open watches are cut. (Re-create objects with `apply` afterwards.)"""
        with self._cond:
            st = self._state
            st.rv = rv
            for objects in st.objects.values():
                objects.clear()
            st.history.clear()
            st.history_rvs.clear()
            st.snapshots.clear()
            st.compacted = 0
            st.cut_gen += 1
            self._cond.notify_all()

    def send_bookmarks(self) -> None:
        """Make every watch that allows bookmarks send one now."""
        with self._cond:
            self._state.bookmark_gen += 1
            self._cond.notify_all()

    def cut_watches(self) -> None:
        """Close every open watch mid-stream (half a chunk, then the connection dies)."""
        with self._cond:
            self._state.cut_gen += 1
            self._cond.notify_all()

    def end_watches(self) -> None:
        """End every open watch cleanly (the empty last chunk), as `timeoutSeconds` does."""
        with self._cond:
            self._state.end_gen += 1
            self._cond.notify_all()

    def truncate_next_event(self) -> None:
        """Open watches send only half of their next event, then the connection dies."""
        with self._cond:
            self._state.truncate_gen += 1
            self._cond.notify_all()

    def inject(self, fault: Fault) -> Fault:
        with self._cond:
            self._faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        with self._cond:
            if fault in self._faults:
                self._faults.remove(fault)

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()

    def outage(self, seconds: float, status: int = 503) -> Fault:
        """Answer every request with `status` for the next `seconds`."""
        return self.inject(Fault(status, times=None, until=time.monotonic() + seconds))

    def requests(
        self, resource: str | None = None, *, watch: bool | None = None, method: str = "GET"
    ) -> list[Request]:
        """The requests received so far (oldest first), filtered."""
        with self._cond:
            return [
                r
                for r in self._log
                if (resource is None or r.resource == resource)
                and (watch is None or r.watch == watch)
                and r.method == method
            ]

    def open_watches(self) -> int:
        """How many watch streams are open right now."""
        with self._cond:
            return self._open_watches

    # -- request handling (called from handler threads) -------------------------------------------

    def _fault_for(
        self, path: str, plural: str | None, watch: bool, query: Iterable[str] = ()
    ) -> Fault | None:
        now = time.monotonic()
        with self._cond:
            for fault in self._faults:
                if fault.matches(path, plural, watch, now, query):
                    fault.hits += 1
                    return fault
        return None

    def _log_request(self, req: Request) -> None:
        with self._cond:
            self._log.append(req)

    def _list(
        self,
        res: Resource,
        ns: str | None,
        selector: Callable[[dict[str, str]], bool] | None,
        limit: int,
        cont: str,
    ) -> tuple[int, Obj]:
        with self._cond:
            st = self._state
            if cont:
                try:
                    token = json.loads(base64.urlsafe_b64decode(cont))
                    snap_id, offset, rv = int(token["s"]), int(token["o"]), int(token["rv"])
                except (ValueError, KeyError, TypeError):
                    return 400, status(400, "BadRequest", "invalid continue token")
                items = st.snapshots.get(snap_id)
                if items is None:
                    return 410, status(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list"
                        " result. You can start a new list without the continue parameter.",
                    )
            else:
                items = [
                    obj
                    for (ons, _), obj in sorted(st.objects[res.plural].items())
                    if (ns is None or ons == ns) and (selector is None or selector(_labels(obj)))
                ]
                items = [_strip(obj) for obj in items]
                snap_id, offset, rv = 0, 0, st.rv
            meta: Obj = {"resourceVersion": str(rv)}
            page = items[offset:] if limit <= 0 else items[offset : offset + limit]
            rest = len(items) - offset - len(page)
            if rest > 0:
                if not snap_id:
                    snap_id = next(self._snapshot_ids)
                    st.snapshots[snap_id] = items
                token = {"s": snap_id, "o": offset + len(page), "rv": rv}
                meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
                meta["remainingItemCount"] = rest
            elif snap_id:
                st.snapshots.pop(snap_id, None)
        kind = f"{res.kind}List"
        return 200, {"kind": kind, "apiVersion": res.api_version, "metadata": meta, "items": page}


def _strip(obj: Obj) -> Obj:
    """A list item: the apiserver leaves out kind and apiVersion."""
    item = copy.deepcopy(obj)
    item.pop("kind", None)
    item.pop("apiVersion", None)
    return item


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: FakeApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # As Go's net/http does: without it, Nagle's algorithm and delayed ACKs hold small
        # writes (a watch event, a body after its headers) for 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.api._cond:
            self.api._conns.add(self.connection)

    def finish(self) -> None:
        with self.api._cond:
            self.api._conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # -- plumbing ---------------------------------------------------------------------------------

    def _send_json(self, code: int, body: Obj) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_status(self, code: int, message: str) -> None:
        self._send_json(code, status(code, _REASONS.get(code, "Unknown"), message))

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _abort(self, partial: bytes = b"") -> None:
        """Kill the connection mid-stream: a chunk header promising more than what follows."""
        try:
            if partial:
                self.wfile.write(b"%x\r\n%s" % (len(partial) * 2, partial))
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # -- dispatch ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        api = self.api
        parts = urlsplit(self.path)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        watch = query.get("watch", "").lower() in ("true", "1")
        params: dict[str, str] = {}
        for pattern, names in _ROUTES:
            m = pattern.match(path)
            if m:
                params = dict(zip(names, m.groups(), strict=True))
                break
        plural = params.get("plural") or (
            "namespaces" if "name" in params else "nodes" if "node" in params else None
        )
        ns = params.get("ns")

        def log(code: int) -> None:
            api._log_request(Request("GET", path, query, plural, ns, watch, code, time.monotonic()))

        fault = api._fault_for(path, plural, watch, query)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.gate is not None:
                fault.gate.wait(60)
            if fault.status == 0:
                log(0)
                self._abort()
                return
            if fault.status is not None:
                log(fault.status)
                self._send_status(fault.status, "injected fault")
                return
        if self.headers.get("Authorization", "") != f"Bearer {api.token}":
            log(401)
            self._send_status(401, "Unauthorized")
            return
        if not params or (params.get("plural") in CRD_PLURALS and params["plural"] not in api.crds):
            log(404)
            self._send_status(404, f"the server could not find the requested resource ({path})")
            return
        if "node" in params:
            obj = api.get("Node", params["node"])
            log(200 if obj else 404)
            if obj is None:
                self._send_status(404, f'nodes "{params["node"]}" not found')
            else:
                self._send_json(200, obj)
            return
        if "name" in params:
            obj = api.get("Namespace", params["name"])
            log(200 if obj else 404)
            if obj is None:
                self._send_status(404, f'namespaces "{params["name"]}" not found')
            else:
                self._send_json(200, obj)
            return
        res = RESOURCES[plural or ""]
        selector = None
        if query.get("labelSelector"):
            try:
                selector = parse_selector(query["labelSelector"])
            except ValueError as exc:
                log(400)
                self._send_status(400, str(exc))
                return
        if watch:
            self._watch(res, ns, selector, query, log)
            return
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            limit = 0
        code, body = api._list(res, ns, selector, limit, query.get("continue", ""))
        log(code)
        self._send_json(code, body)

    # -- watch ------------------------------------------------------------------------------------

    def _watch(
        self,
        res: Resource,
        ns: str | None,
        selector: Callable[[dict[str, str]], bool] | None,
        query: dict[str, str],
        log: Callable[[int], None],
    ) -> None:
        api = self.api
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        try:
            timeout = float(query.get("timeoutSeconds") or 1800)
        except ValueError:
            timeout = 1800.0
        if api.max_watch_seconds is not None:
            timeout = min(timeout, api.max_watch_seconds)
        rv_param = query.get("resourceVersion", "")
        initial: list[Obj] = []
        with api._cond:
            st = api._state
            if rv_param in ("", "0"):
                cursor = st.rv
                initial = [
                    copy.deepcopy(o)
                    for (ons, _), o in sorted(st.objects[res.plural].items())
                    if (ns is None or ons == ns) and (selector is None or selector(_labels(o)))
                ]
                expired = False
            else:
                try:
                    cursor = int(rv_param)
                except ValueError:
                    cursor = -1
                expired = cursor < st.compacted
            compacted = st.compacted
            cut_gen, truncate_gen, bookmark_gen = st.cut_gen, st.truncate_gen, st.bookmark_gen
            end_gen = st.end_gen
        if cursor < 0:
            log(400)
            self._send_status(400, f"invalid resource version: {rv_param!r}")
            return
        gone = f"too old resource version: {cursor} ({compacted})"
        if expired and api.expired_as_http:
            log(410)
            self._send_json(410, status(410, "Expired", gone))
            return
        log(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        with api._cond:
            api._open_watches += 1
        try:
            if expired:
                self._write_event({"type": "ERROR", "object": status(410, "Expired", gone)})
                self._chunk(b"")
                return
            for obj in initial:
                self._write_event({"type": "ADDED", "object": obj})
            self._stream(
                res,
                ns,
                selector,
                cursor,
                timeout,
                bookmarks,
                (cut_gen, end_gen, truncate_gen, bookmark_gen),
            )
        except OSError:
            self.close_connection = True
        finally:
            with api._cond:
                api._open_watches -= 1

    def _write_event(self, event: Obj, rv: int | None = None, truncate: bool = False) -> None:
        data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        if rv is not None and self.api.record_writes:
            self.api.written.setdefault(rv, time.monotonic())
        if truncate:
            self._abort(data[: len(data) // 2])
            raise ConnectionAbortedError("truncated on purpose")
        self._chunk(data)

    def _stream(
        self,
        res: Resource,
        ns: str | None,
        selector: Callable[[dict[str, str]], bool] | None,
        cursor: int,
        timeout: float,
        bookmarks: bool,
        gens: tuple[int, int, int, int],
    ) -> None:
        api = self.api
        cut_gen, end_gen, truncate_gen, bookmark_gen = gens
        deadline = time.monotonic() + timeout
        interval = api.bookmark_interval
        next_bookmark = time.monotonic() + interval if interval else float("inf")
        while True:
            events: list[tuple[int, Obj]] = []
            with api._cond:
                st = api._state
                while True:
                    now = time.monotonic()
                    if st.stopping:
                        self._abort()
                        return
                    if st.cut_gen != cut_gen:
                        self._abort(b'{"type":"MODIFIED","object":{"kind":')
                        return
                    if st.end_gen != end_gen:
                        self._chunk(b"")
                        return
                    start = bisect.bisect_right(st.history_rvs, cursor)
                    pending = any(e.plural == res.plural for e in st.history[start:])
                    want_bookmark = bookmarks and (
                        st.bookmark_gen != bookmark_gen or now >= next_bookmark
                    )
                    if pending or want_bookmark or now >= deadline:
                        break
                    api._cond.wait(min(0.1, deadline - now, max(next_bookmark - now, 0.001)))
                    if self._client_gone():
                        self.close_connection = True
                        return
                for ev in st.history[start:]:
                    if ev.plural == res.plural:
                        out = _filter(ev, ns, selector)
                        if out is not None:
                            events.append((ev.rv, out))
                cursor = max(cursor, st.rv)
                truncate = st.truncate_gen != truncate_gen
                bookmark_gen = st.bookmark_gen
            for i, (rv, event) in enumerate(events):
                self._write_event(event, rv, truncate=truncate and i == 0)
            if want_bookmark:
                next_bookmark = time.monotonic() + interval if interval else float("inf")
                self._write_event(
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": res.kind,
                            "apiVersion": res.api_version,
                            "metadata": {"resourceVersion": str(cursor), "creationTimestamp": None},
                        },
                    }
                )
            if time.monotonic() >= deadline:
                self._chunk(b"")
                return


def _filter(
    ev: _Event, ns: str | None, selector: Callable[[dict[str, str]], bool] | None
) -> Obj | None:
    """The event a watcher with this namespace and selector sees, if any (the watch cache's rule:
    an object leaving the selection is DELETED, one entering it is ADDED)."""
    meta = ev.obj.get("metadata", {})
    if ns is not None and meta.get("namespace") != ns:
        return None
    if selector is None:
        return {"type": ev.type, "object": copy.deepcopy(ev.obj)}
    now = ev.type != "DELETED" and selector(_labels(ev.obj))
    before = ev.prev is not None and selector(_labels(ev.prev))
    if ev.type == "DELETED":
        return {"type": "DELETED", "object": copy.deepcopy(ev.obj)} if before else None
    if now and before:
        return {"type": "MODIFIED", "object": copy.deepcopy(ev.obj)}
    if now:
        return {"type": "ADDED", "object": copy.deepcopy(ev.obj)}
    if before:
        assert ev.prev is not None
        old = copy.deepcopy(ev.prev)
        old["metadata"]["resourceVersion"] = str(ev.rv)
        return {"type": "DELETED", "object": old}
    return None


# -- kubeconfig -----------------------------------------------------------------------------------


def write_kubeconfig(
    path: Path,
    server: str,
    *,
    token: str = TOKEN,
    context: str = "kdns-test",
    other_contexts: dict[str, str] | None = None,
) -> Path:
    """Write a kubeconfig whose current context `context` reaches `server` with a bearer token.

    `other_contexts` maps further context names to server URLs (to test context selection).
    """
    servers = {context: server, **(other_contexts or {})}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {"name": f"{n}-cluster", "cluster": {"server": s}} for n, s in servers.items()
        ],
        "users": [{"name": f"{n}-user", "user": {"token": token}} for n in servers],
        "contexts": [
            {
                "name": n,
                "context": {"cluster": f"{n}-cluster", "user": f"{n}-user", "namespace": "default"},
            }
            for n in servers
        ],
        "current-context": context,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -- the store side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """What the store held right after one change (recorded on the store's own loop)."""

    generation: int
    received_at: float | None
    applied_at: float
    services: dict[tuple[str, str], tuple[str, ...]]  # (ns, name) -> IPs that answer


class LoopStore:
    """A real `Store` owned by an asyncio loop in its own thread, written through `LoopSink`.

    This is how the server runs the store: watches write from worker threads, every write is one
    callback on the loop. `changes` records the store's content after every change, so a test
    can check that a name was never missing at any point (not only at the end).
    """

    def __init__(self, layer: str = "cluster", *, record: bool = True) -> None:
        self.layer = layer
        self.loop = asyncio.new_event_loop()
        self.store = Store()
        self.store.add_layer(layer)
        self.sink = LoopSink(self.store, self.loop)
        self.changes: list[Change] = []
        if record:
            self.store.subscribe(self._record)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def _record(self, generation: int, received_at: float | None) -> None:
        services = {
            (v.service.namespace, v.service.name): tuple(v.service.cluster_ips)
            + tuple(v.addresses())
            for v in self.store.views()
        }
        self.changes.append(Change(generation, received_at, time.monotonic(), services))

    def read(self, fn: Callable[[Store], T], timeout: float = 30.0) -> T:
        """Run `fn(store)` on the loop, after every write queued so far, and return its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(self.store))
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def addresses(self, name: str, ns: str = "default") -> list[str] | None:
        """ClusterIPs, or ready endpoint addresses of a headless service; None when unknown."""

        def get(store: Store) -> list[str] | None:
            view = store.service(ns, name)
            if view is None:
                return None
            return list(view.service.cluster_ips) or view.addresses()

        return self.read(get)

    def endpoint_addresses(self, name: str, ns: str = "default") -> list[str] | None:
        def get(store: Store) -> list[str] | None:
            view = store.service(ns, name)
            return None if view is None else view.addresses()

        return self.read(get)

    def service_names(self, ns: str | None = None) -> set[str]:
        return self.read(
            lambda s: {v.service.name for v in s.views() if ns is None or v.service.namespace == ns}
        )

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(2)
        self.loop.close()


def wait_for(
    predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll `predicate` until it is true; fail after `timeout` seconds (generous by default:
    only a failing test waits that long, and a loaded 2-core machine is slow)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
