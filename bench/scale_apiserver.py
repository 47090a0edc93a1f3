"""The API server side of `bench/scale.py`: the synthetic cluster, served by the API double in a
process of its own, and the churn that changes it.

`bench/scale.py` starts `serve()` in a child process (multiprocessing, spawn) pinned to a CPU other
than kdns's, and drives it through a pipe of commands; the churn thread reports every change it
makes through a second pipe, so the parent can watch DNS for it.

The double is `testkit.apiserver.FakeApiServer` (real HTTP, real list/watch protocol, real
resourceVersions, 410 after a compaction) with its copying made cheaper: the stock double
deep-copies every object on every write, list and watch event (a list of 1,000 slices of 100
endpoints costs it 1.1 s under its lock, which would be counted as kdns's sync time, and each
churned slice 2 ms of the CPU it shares with dnsperf). Here objects are never mutated once
stored (a write replaces the object), so sharing them is safe and the bytes on the wire are the
same. `scale.py --stock-double` runs the unmodified double instead.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import testkit.apiserver as apiserver
from testkit.apiserver import (
    KIND_TO_PLURAL,
    RESOURCES,
    FakeApiServer,
    endpoint_slice,
    namespace,
    service,
    slice_endpoint,
)

ZONE = "cluster.local"


@dataclass(frozen=True)
class Shape:
    """The synthetic cluster.

    `services` in all, of which `headless` are headless (`db-<h>`) and the rest ClusterIP
    (`svc-<i>`, no endpoints: the DNS answer of a ClusterIP service does not depend on them).
    `slices` EndpointSlices of `endpoints_per_slice` ready endpoints each, slice k belonging to
    headless service k % headless. Everything is spread over `namespaces` namespaces.
    """

    services: int = 10000
    headless: int = 1000
    slices: int = 1000
    endpoints_per_slice: int = 100
    namespaces: int = 100

    @property
    def clusterip(self) -> int:
        return self.services - self.headless

    @property
    def endpoints(self) -> int:
        return self.slices * self.endpoints_per_slice

    def svc(self, i: int) -> tuple[str, str]:
        """(namespace, name) of ClusterIP service i."""
        return f"ns-{i % self.namespaces}", f"svc-{i}"

    def db(self, h: int) -> tuple[str, str]:
        """(namespace, name) of headless service h."""
        return f"ns-{h % self.namespaces}", f"db-{h}"

    def slice_owner(self, k: int) -> int:
        return k % self.headless

    def slice_name(self, k: int) -> str:
        return f"db-{self.slice_owner(k)}-s{k // self.headless}"


def cluster_ip(i: int) -> str:
    n = i + 10
    return f"10.{96 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def endpoint_ip(g: int) -> str:
    """Address of endpoint g (slice k, position e: g = k * endpoints_per_slice + e)."""
    return f"10.{128 + (g >> 16)}.{(g >> 8) & 255}.{g & 255}"


def spare_ip(n: int) -> str:
    """The n-th address given to an endpoint by the churn."""
    return f"10.{192 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def dashed(ip: str) -> str:
    return ip.replace(".", "-")


def reverse(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


class ScaleApiServer(FakeApiServer):
    """The double, without the defensive deep copies (see the module docstring)."""

    def apply(self, obj: apiserver.Obj) -> apiserver.Obj:
        res = RESOURCES[KIND_TO_PLURAL[obj["kind"]]]
        new = dict(obj)
        meta = new["metadata"] = dict(new.get("metadata") or {})
        key = (meta.get("namespace", "") if res.namespaced else "", meta["name"])
        with self._cond:
            st = self._state
            old = st.objects[res.plural].get(key)
            st.rv += 1
            meta["resourceVersion"] = str(st.rv)
            meta["uid"] = old["metadata"]["uid"] if old else f"uid-{st.rv}"
            meta.setdefault("creationTimestamp", apiserver.CREATED)
            st.objects[res.plural][key] = new
            self._record(res.plural, "MODIFIED" if old else "ADDED", new, old)
            return new

    def recreate(self) -> int:
        """Every object re-created, as after a restart on a wiped etcd that was refilled with the
        same content: the watches are cut, and every object comes back with a new uid and
        resourceVersion (above every old one), so a relist finds none of them unchanged."""
        with self._cond:  # a reentrant lock: no list sees the cluster half re-created
            objects = [o for by_key in self._state.objects.values() for o in by_key.values()]
            self.wipe(self._state.rv + 1)
            for obj in objects:
                self.apply(obj)
            return self._state.rv

    def force_relist(self) -> int:
        """Make every watcher list again: move the resourceVersion past what anyone has seen,
        forget the history (as an etcd compaction does) and cut the open watches, which then
        come back from a resourceVersion that is gone and get 410 Expired."""
        with self._cond:
            self._state.rv += 1
        rv = self.compact()
        self.cut_watches()
        return rv


def _shallow_strip(obj: apiserver.Obj) -> apiserver.Obj:
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def _shared_filter(ev: Any, ns: str | None, selector: Any) -> apiserver.Obj | None:
    """The watch event as the double sends it, sharing the stored object instead of a copy."""
    if ns is None and selector is None:
        return {"type": ev.type, "object": ev.obj}
    return _stock_filter(ev, ns, selector)


_stock_filter = apiserver._filter


class Cluster:
    """The synthetic cluster inside the double, and the churn that changes it."""

    def __init__(self, api: FakeApiServer, shape: Shape) -> None:
        self.api = api
        self.shape = shape
        # Per slice: its endpoints as the double holds them, and (address, ready) per endpoint.
        self.slices: list[apiserver.Obj] = []
        self.state: list[list[tuple[str, bool]]] = []
        self.spares = 0
        self.changes = 0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.late = 0  # changes applied more than 50 ms after they were due
        # The name the last change made disappear when it moved a ready endpoint to a new
        # address (bench/soak.py checks every answer against the names' history), else None.
        self.gone: str | None = None

    def populate(self) -> dict[str, Any]:
        s = self.shape
        began = time.monotonic()
        for n in range(s.namespaces):
            self.api.apply(namespace(f"ns-{n}"))
        for i in range(s.clusterip):
            ns, name = s.svc(i)
            self.api.apply(service(name, ns, cluster_ip=cluster_ip(i)))
        for h in range(s.headless):
            ns, name = s.db(h)
            self.api.apply(service(name, ns, cluster_ip="None", ports=(("http", 8080, "TCP"),)))
        for k in range(s.slices):
            owner = s.slice_owner(k)
            ns, name = s.db(owner)
            base = k * s.endpoints_per_slice
            ips = [endpoint_ip(base + e) for e in range(s.endpoints_per_slice)]
            obj = endpoint_slice(
                s.slice_name(k),
                name,
                ns,
                endpoints=[
                    slice_endpoint(ip, namespace=ns, node_name=f"node-{(base + e) % 500}")
                    for e, ip in enumerate(ips)
                ],
            )
            self.slices.append(self.api.apply(obj))
            self.state.append([(ip, True) for ip in ips])
        return {
            "seconds": time.monotonic() - began,
            "rv": self.api.resource_version,
            "objects": s.namespaces + s.services + s.slices,
        }

    def change(self, n: int) -> tuple[int, str, str | None]:
        """Apply change n; return (resourceVersion, qname to ask, address expected or None)."""
        s = self.shape
        k = (n * 7919) % s.slices
        e = (n // s.slices * 37 + n) % s.endpoints_per_slice
        ns, svc = s.db(s.slice_owner(k))
        old_ip, ready = self.state[k][e]
        self.gone = f"{dashed(old_ip)}.{svc}.{ns}.svc.{ZONE}" if ready and n % 2 else None
        if n % 2 == 0:  # readiness flips: the endpoint's name appears or disappears
            ip, ready = old_ip, not ready
        else:  # the endpoint moves to a new address (a pod replaced): the new name appears
            ip, ready = spare_ip(self.spares), True
            self.spares += 1
        self.state[k][e] = (ip, ready)
        obj = self.slices[k]
        eps = list(obj["endpoints"])
        eps[e] = slice_endpoint(ip, ready=ready, namespace=ns, node_name=eps[e]["nodeName"])
        new = dict(obj)
        new["endpoints"] = eps
        new["metadata"] = dict(obj["metadata"])
        stored = self.api.apply(new)
        self.slices[k] = stored
        qname = f"{dashed(ip)}.{svc}.{ns}.svc.{ZONE}"
        return int(stored["metadata"]["resourceVersion"]), qname, ip if ready else None

    def start_churn(
        self, events: Connection, rate: float, seconds: float, relist_after: float | None
    ) -> None:
        def run() -> None:
            total = int(rate * seconds)
            start = time.monotonic()
            relisted = relist_after is None
            for n in range(total):
                if self.stop.is_set():
                    break
                due = start + n / rate
                if not relisted and due - start >= (relist_after or 0.0):
                    relisted = True
                    at = time.monotonic()
                    rv = self.api.force_relist()  # type: ignore[attr-defined]
                    events.send(("relist", at, rv))
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -0.05:
                    self.late += 1
                at = time.monotonic()
                rv, qname, expect = self.change(self.changes)
                self.changes += 1
                events.send(("change", rv, qname, expect, at))
                if self.gone is not None:
                    events.send(("gone", rv, self.gone, at))
            rest = start + seconds - time.monotonic()
            if rest > 0 and not self.stop.is_set():
                self.stop.wait(rest)  # with --rate 0, the probe still runs for `seconds`
            events.send(("done", time.monotonic(), self.changes, self.late))

        self.thread = threading.Thread(target=run, name="churn", daemon=True)
        self.thread.start()


def _quiet_handle_error(self: socketserver.BaseServer, request: Any, client_address: Any) -> None:
    if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
        return
    socketserver.BaseServer.handle_error(self, request, client_address)


def serve(commands: Connection, events: Connection, cpu: int, shape: Shape, stock: bool) -> None:
    """The child process: serve the cluster and obey `commands` until told to stop."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cpu})
    # A client that goes away mid-request (kdns stopped, a watch cut) is not worth a traceback.
    http.server.ThreadingHTTPServer.handle_error = _quiet_handle_error  # type: ignore[method-assign]
    cls: type[FakeApiServer] = FakeApiServer if stock else ScaleApiServer
    if not stock:
        apiserver._strip = _shallow_strip
        apiserver._filter = _shared_filter
    # Bookmarks every second keep idle watchers' cursors near the head of the history (the
    # double rescans its history from a watcher's cursor on every write); `retain` bounds it.
    api = cls(record_writes=True, bookmark_interval=1.0, retain=20000)
    if stock:
        api.force_relist = ScaleApiServer.force_relist.__get__(api)  # type: ignore[attr-defined]
        api.recreate = ScaleApiServer.recreate.__get__(api)  # type: ignore[attr-defined]
    api.start()
    cluster = Cluster(api, shape)
    try:
        while True:
            cmd, *args = commands.recv()
            if cmd == "populate":
                info = cluster.populate()
                info["url"] = api.url
                commands.send(info)
            elif cmd == "requests":
                since = args[0]
                commands.send(
                    [
                        (r.resource, r.watch, r.status, r.at, r.query.get("continue", ""))
                        for r in api.requests()
                        if r.at >= since
                    ]
                )
            elif cmd == "churn":
                rate, seconds, relist_after = args
                cluster.start_churn(events, rate, seconds, relist_after)
                commands.send("started")
            elif cmd in ("force_relist", "recreate"):
                commands.send(getattr(api, cmd)())
            elif cmd in ("go_down", "come_up"):
                # An API outage (bench/soak.py): the listening socket closed and every open
                # connection cut, then the same port again with the same objects and history.
                getattr(api, cmd)()
                commands.send(time.monotonic())
            elif cmd == "written":
                commands.send({rv: api.written.get(rv) for rv in args[0]})
            elif cmd == "stop":
                cluster.stop.set()
                if cluster.thread is not None:
                    cluster.thread.join(5)
                commands.send("stopped")
                break
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        api.stop()
