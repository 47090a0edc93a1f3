"""Keep one kind of Kubernetes object in the store: list, then watch, forever.

A `Reflector` does what client-go's reflector does, for one kind (in one namespace or in all):

1. LIST in pages (`limit`/`continue`; 50 EndpointSlices or Endpoints a page, 500 Services or
   Namespaces), trim each item to its `kdns.state.model` record, and hand the store what changed.
2. WATCH from the list's resourceVersion with `allowWatchBookmarks=true` and a randomised
   `timeoutSeconds`, applying each event as it arrives and remembering the newest
   resourceVersion seen, bookmarks included.
3. When the server ends the watch cleanly (its `timeoutSeconds`, the empty last chunk), watch
   again from that resourceVersion: nothing is missed and nothing is listed again.
4. When the server says that resourceVersion is gone (410 Expired, as an ERROR event in the
   stream or as the HTTP status), and after any failure (a broken stream, an unreachable or
   failing API, a watch silent for `idle_timeout`), list again and hand the store the
   difference.

Why list again after any failure, as client-go does. A resourceVersion only means something in
the history of the etcd that issued it. An apiserver restarted on a wiped etcd, or on a restored
older backup, has another history: our resourceVersion may be in its future (once its own
overtake it, a watch from there "works" and misses everything before) or name a different state
in its past. Watching from it again would keep removed objects answering and never show new
ones, with no error ever. A failure is where such a restart hides, and nothing cheaper than a
list proves the resourceVersion still means what it did (comparing it with a fresh list's fails
once the new history has overtaken the old). The relist is a diff, so it costs the list's
transfer and parsing but no store churn; a clean end of the watch needs no proof.

Why raw HTTP. The client's `watch.Watch` helper cannot be trusted with a 410 (it retries with the
same resourceVersion, then raises; with `deserialize=False` it fails with a KeyError and resumes
from the *starting* resourceVersion), follows bookmarks only from client 36 on, and deserialising
lists into model objects is slow and large at 100k endpoints. So the reflector sends its requests
through the official client's generic request path (`kdns.sources.apicall`: the calls the generated
list functions end in, without importing their models), which gives the urllib3 response
(authentication, TLS and token refresh stay the client's), and reads the JSON itself: list pages
with `json.loads`, watch streams line by line. No model object is ever built; the JSON of a page is
dropped as soon as its items are trimmed. Pages of endpoint objects are small because each item is
large (a slice of 100 endpoints is ~25 kB of JSON, a page of 500 a 12 MB body plus its parsed form):
50 a page keeps the peak memory of a list low, and the extra requests cost little.

Why the watch stream is decoded here. The apiserver sends a watch as chunked transfer-encoding,
one chunk per event. urllib3's chunked reader makes several blocking reads per chunk (the size
line, the data, the CRLF after it), and a thread returning from a blocking read must get the GIL
back, which under query load on the event loop takes up to the interpreter's switch interval
(5 ms) each time: at 200 changes a second the watch fell seconds behind. So when the response is
chunked and urllib3's internals are the ones we know (`response._fp.fp`, the buffered socket
file, nothing read from the body yet), `_lines` reads the socket itself in large reads (`read1`,
up to `READ_SIZE`: one system call returns whatever has arrived, often many events) and undoes
the chunked framing in memory (`_Dechunker`). Every complete line is handed on before the next
read blocks, stamped with the time its last bytes arrived. Errors look as they do from urllib3:
a socket timeout is `ReadTimeoutError`, a stream that ends inside a chunk (or before the last,
empty, chunk) or bad framing is `ProtocolError`; the empty chunk ends the stream cleanly and
leaves the connection reusable. Any other response (not chunked, compressed, another urllib3)
is read through urllib3's `stream()` as before.

Why a relist is a diff. After a 410 the reflector has missed an unknown number of events, so it
must replace what it holds. Clearing and refilling would make every name answer NXDOMAIN for a
moment (and caches keep NXDOMAIN); instead the reflector remembers the resourceVersion of every
object it handed to the store. Listed items with the same resourceVersion are unchanged (a
resourceVersion changes with every write of the object): they are neither trimmed nor sent again
(the uid is compared too: a re-created object can reuse an old resourceVersion after a restore).
New and changed items are trimmed and sent as each page arrives (the pages are one snapshot, newer
than anything held), keys no longer listed are deleted with the last page's changes, and all of it
goes to the sink in `apply` calls of at most `batch_size` objects each, because each call is one
callback on the event loop and diffing 100k endpoints in one callback stalls every query behind it.
Deletes touch only keys this reflector handed over, so a reflector for one namespace never touches
other namespaces' objects of the same kind. The store compares object by object as well, so names
that did not change never stop answering, and the generation only moves if something DNS can see
moved; once the last batch is in, the layer's content for the kind is the list. The first list goes
the same way (everything is new).

Failures. Any error (API unreachable, 5xx, 403, a broken stream, bad JSON) keeps the store as it
is, is counted, and is retried after an exponential backoff with full jitter (a random wait
between 0 and min(cap, base * 2**n)) so that many replicas restarting together do not hammer a
recovering apiserver. But a backoff alone keeps a kind away long after the API is back (each
kind drawing its own wait, up to the cap): so when the failure says the API was away (refused,
reset, 502/503/504), the wait is a `Recovery` wait, shared by the kinds of one cluster, which
sends a one-item list every second or so and ends every kind's wait as soon as one answers (or
any kind recovers). Refusals a retry would not change (401, 403, 429, 500, read timeouts) keep
their whole backoff. The first error of a streak is logged as one warning line saying what to
do; the recovery is logged too; the rest go to debug.

Threads. Each reflector runs in its own daemon thread because the client blocks. It never touches
the store directly: it writes through a `Sink` (the server's `LoopSink` turns every call into one
callback on the event loop). `stop()` wakes the thread from any wait: it sets a flag and shuts
down the socket of the response being read; requests carry connect and read timeouts, so even a
thread blocked waiting for response headers ends within its read timeout, and it never writes
after `stop()`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import partial
from typing import Any

from kubernetes.client import ApiClient, ApiException
from urllib3.exceptions import HTTPError, MaxRetryError, ProtocolError, ReadTimeoutError

from kdns.sources import apicall
from kdns.sources.apicall import collection_path
from kdns.sources.trim import TrimError, trim
from kdns.state.model import EndpointSet, KubeObject, ObjectKey
from kdns.state.store import Sink

log = logging.getLogger(__name__)

#: A watch that delivered nothing and ended sooner than this counts as a failure (backoff), so a
#: server that closes every watch at once is not asked again in a tight loop.
MIN_HEALTHY_WATCH = 1.0

#: Most bytes asked of the socket in one read of a watch stream. A read returns what has arrived,
#: so this only bounds how much a backlog is taken in at once; but the buffer is allocated at
#: this size while the read waits, in every watching thread (at 1 MiB: 4 MB of a process).
READ_SIZE = 1 << 16

#: Kinds whose objects are large (up to hundreds of endpoints each; a Pod's spec and status run
#: to several kilobytes): listed in smaller pages.
LARGE_KINDS = frozenset({"EndpointSlice", "Endpoints", "Pod", "ImportSlice"})


@dataclass(frozen=True, slots=True)
class Resource:
    """Where one kind is listed and watched."""

    kind: str  # the record kind: "Service", "EndpointSlice", "Endpoints", "Namespace"
    plural: str  # the API resource, in paths, logs and metrics
    group_version: str  # "v1" for the core group, else "group/version"
    namespaced: bool = True
    #: Served only where a CRD is installed (the Gateway API): a 404 on the list means the
    #: API server does not know the kind, which is no failure: nothing of it exists, the
    #: reflector counts as synced, and it asks again every `WatchSettings.absent_recheck`.
    optional: bool = False


RESOURCES: dict[str, Resource] = {
    r.kind: r
    for r in (
        Resource("Service", "services", "v1"),
        Resource("EndpointSlice", "endpointslices", "discovery.k8s.io/v1"),
        Resource("Endpoints", "endpoints", "v1"),
        Resource("Namespace", "namespaces", "v1", namespaced=False),
        Resource("Pod", "pods", "v1"),
        Resource("Ingress", "ingresses", "networking.k8s.io/v1"),
        Resource("Gateway", "gateways", "gateway.networking.k8s.io/v1", optional=True),
        Resource("HTTPRoute", "httproutes", "gateway.networking.k8s.io/v1", optional=True),
        Resource("GRPCRoute", "grpcroutes", "gateway.networking.k8s.io/v1", optional=True),
        Resource("TLSRoute", "tlsroutes", "gateway.networking.k8s.io/v1", optional=True),
        Resource(
            "ServiceImport", "serviceimports", "multicluster.x-k8s.io/v1alpha1", optional=True
        ),
        # The EndpointSlices of ServiceImports: the same resource, listed by the MCS label.
        Resource("ImportSlice", "endpointslices", "discovery.k8s.io/v1"),
        Resource(
            "ServiceExport", "serviceexports", "multicluster.x-k8s.io/v1alpha1", optional=True
        ),
    )
}


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """Knobs of list/watch; the defaults are for production, tests shrink them."""

    #: Items per list page of Services and Namespaces.
    page_size: int = 500
    #: Items per list page of EndpointSlices and Endpoints (large objects: see the module doc).
    endpoint_page_size: int = 50
    #: Most objects (upserts plus deletes) handed to the sink in one call when a list is applied.
    batch_size: int = 200
    #: ...and at most about this many endpoints a call (see `_hand_over`).
    batch_endpoints: int = 1000
    #: `timeoutSeconds` of each watch, drawn uniformly from this range (client-go's 5-10 min), so
    #: the watches of many replicas do not all end at once.
    watch_timeout: tuple[int, int] = (300, 600)
    #: First backoff ceiling and the cap, in seconds (full jitter: wait is uniform in [0, ceiling]).
    backoff_base: float = 0.8
    backoff_cap: float = 30.0
    #: While backing off because the API was away, a one-item list is tried every
    #: [probe_interval / 2, probe_interval] seconds (one prober per cluster); when it answers,
    #: every waiting reflector retries at once (see `Recovery`).
    probe_interval: float = 1.0
    connect_timeout: float = 10.0
    #: Read timeout of a list page.
    read_timeout: float = 60.0
    #: A watch with no byte (not even a bookmark, which the apiserver sends about every minute)
    #: for this long is presumed dead (a half-open connection, a frozen apiserver) and is given
    #: up; what follows is a list, as after any broken watch (`kdns serve --watch-idle-timeout`).
    idle_timeout: float = 120.0
    #: How often the listed namespaces are checked again when namespaces are not watched.
    namespace_recheck: float = 300.0
    #: How often an optional kind the API server does not serve (no CRD) is asked for again.
    absent_recheck: float = 60.0


def backoff_delay(failures: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(failures-1))]."""
    if failures <= 0:
        return 0.0
    ceiling = min(cap, base * 2 ** min(failures - 1, 30))
    return rng.uniform(0, ceiling)


class Recovery:
    """Ends the backoff waits of one cluster's reflectors as soon as the API answers again.

    Backoff protects a struggling apiserver from the expensive calls (full lists, new watches),
    but with each kind drawing its own jittered wait, a kind could sit out up to the cap long
    after the API was back. So a reflector whose failure says the API was away waits here: one
    waiter at a time (one per cluster, whichever kinds are waiting) sends the cheap probe it is
    given, every [interval / 2, interval] seconds, and the first answer, or any reflector of the
    cluster recovering (`success`), ends every wait at once. Share one instance per cluster.
    """

    def __init__(self, interval: float = 1.0, rng: random.Random | None = None) -> None:
        self.interval = interval
        self._rng = rng or random.Random()
        self._cond = threading.Condition()
        self._epoch = 0  # moves on every sign of life; a wait that saw it move ends
        self._probing = False
        self._next_probe = 0.0

    def success(self) -> None:
        """The API answered: end every wait."""
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()

    def interrupt(self) -> None:
        """Wake every waiter to look at its stop flag."""
        with self._cond:
            self._cond.notify_all()

    def wait(self, delay: float, probe: Callable[[], bool], stop: threading.Event) -> bool:
        """Wait up to `delay` seconds, probing meanwhile; True if it ended because the API
        answered, False at the end of `delay` or on `stop`."""
        deadline = time.monotonic() + delay
        with self._cond:
            epoch = self._epoch
            if not self._probing and self._next_probe < time.monotonic():
                # None planned: the first comes one jittered interval from now. One planned
                # stays planned, or waiters coming and going would keep pushing it away.
                self._next_probe = time.monotonic() + self._gap()
            while True:
                if self._epoch != epoch:
                    return True
                now = time.monotonic()
                if stop.is_set() or now >= deadline:
                    return False
                if self._probing or now < self._next_probe:
                    until = deadline if self._probing else min(deadline, self._next_probe)
                    self._cond.wait(until - now)
                    continue
                self._probing = True
                self._cond.release()
                answered = False
                try:
                    answered = probe()
                finally:
                    self._cond.acquire()
                    self._probing = False
                    self._next_probe = time.monotonic() + self._gap()
                    if answered:
                        self._epoch += 1
                    self._cond.notify_all()  # the others end too, or one takes the next probe

    def _gap(self) -> float:
        return self._rng.uniform(self.interval / 2, self.interval)


@dataclass(slots=True)
class ReflectorStats:
    """Counters of one reflector, for metrics and `kdns explain`. Read with `snapshot()`."""

    kind: str
    namespace: str  # "" when cluster-wide
    #: Watch events applied, by type (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR).
    events: dict[str, int] = field(default_factory=dict)
    lists: int = 0  # completed lists, the first one included
    relists: int = 0  # completed lists after the first (410, a broken or idle watch)
    watches: int = 0  # watch requests that got a stream
    errors: int = 0  # failed requests and broken streams
    invalid: int = 0  # objects trim refused (TrimError)
    objects: int = 0  # records this reflector currently holds in the store
    resource_version: str = ""
    last_error: str = ""
    #: Wall-clock time of the last ADDED, MODIFIED or DELETED event (0: none yet), for the page.
    last_event: float = 0.0

    def snapshot(self) -> ReflectorStats:
        """A copy that will not change under the reader."""
        return replace(self, events=dict(self.events))


class _Stopped(Exception):
    """Raised inside the thread to unwind when `stop()` was called."""


class _WatchError(Exception):
    """An ERROR event other than 410, or a stream the reflector cannot read."""


class _End(Enum):
    EXPIRED = "expired"  # 410: the resourceVersion is gone, list again
    CLOSED = "closed"  # the server ended the stream cleanly
    IDLE = "idle"  # nothing for `idle_timeout`: perhaps a dead connection, so list again


class Reflector:
    """Lists and watches one kind into a store layer, in a daemon thread.

    `namespace`: watch only that namespace (None: all namespaces, or a cluster-scoped kind).
    `label_selector`: passed to the API as is. `targets`: as `trim(targets=...)`.
    `on_synced(reflector)` is called once, from the reflector's thread, right after the first
    complete list has been handed to the sink.
    `recovery`: shared by the reflectors of one cluster (see `Recovery`); by default its own.
    """

    def __init__(
        self,
        kind: str,
        sink: Sink,
        layer: str,
        api_client: ApiClient,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        settings: WatchSettings | None = None,
        on_synced: Callable[[Reflector], None] | None = None,
        recovery: Recovery | None = None,
        targets: bool = True,
    ) -> None:
        if kind not in RESOURCES:
            raise ValueError(f"cannot watch kind {kind!r}; one of {', '.join(RESOURCES)}")
        self.resource = RESOURCES[kind]
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector or None
        self.settings = settings or WatchSettings()
        self.layer = layer
        self._sink = sink
        self._on_synced = on_synced
        self._targets = targets
        if namespace is not None and not self.resource.namespaced:
            raise ValueError(f"{self.resource.plural} are not namespaced")
        path = collection_path(self.resource.group_version, self.resource.plural, namespace)
        self._call: Callable[..., Any] = partial(apicall.get, api_client, path)
        plural = self.resource.plural
        if kind == "ImportSlice":  # told apart from the cluster's own slices in logs
            plural = "multicluster endpointslices"
        self.name = plural + (f" in {namespace}" if namespace else "")
        self.stats = ReflectorStats(kind, namespace or "")
        self._rv = ""
        #: key -> `_version` (resourceVersion and uid) of every object handed to the sink and
        #: not deleted since.
        self._versions: dict[ObjectKey, str] = {}
        #: Failures since a watch last worked: the backoff's step.
        self._failures = 0
        #: Failures since the API last answered anything (a list counts): the outage's length.
        self._misses = 0
        self._away = False  # the last failure said the API was unreachable or unavailable
        #: The request being made ("list" or "watch"), for the error messages.
        self.verb = "list"
        #: Wall-clock time of the first failure of the current streak, and whether the store
        #: was told the API is unreachable (after a retry failed too: one dropped stream that
        #: the next request cures is not an outage worth a word to clients).
        self._failing_since = 0.0
        self._said_unreachable = False
        self._recovery = recovery or Recovery(self.settings.probe_interval)
        self._rng = random.Random()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self._complaint = ""  # the kind of error already warned about in this streak

    # -- public API ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread. A reflector runs once: make a new one to start again."""
        if self._thread is not None:
            raise RuntimeError(f"reflector for {self.name} already started")
        self._thread = threading.Thread(
            target=self._run, name=f"kdns-watch-{self.name.replace(' in ', '-')}", daemon=True
        )
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to end, without waiting: wakes it from any wait or read."""
        self._stop.set()
        self._recovery.interrupt()
        # Under the lock, so the response cannot be closed by the thread in between. Failing to
        # shut it down means it was already closed or released: nobody is reading it.
        with self._lock, contextlib.suppress(Exception):
            if self._response is not None:
                self._response.shutdown()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True if it has (or never started)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop and wait up to `timeout` seconds; True if the thread has ended.

        A thread blocked in connect or waiting for response headers ends at its timeout; it
        writes nothing after this call either way.
        """
        self.request_stop()
        return self.join(timeout)

    @property
    def synced(self) -> bool:
        """True once the first complete list has been handed to the sink."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    @property
    def resource_version(self) -> str:
        """The newest resourceVersion seen (list, event or bookmark)."""
        return self._rv

    # -- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                end = self._watch()
                if end is _End.EXPIRED:
                    log.info("%s: resourceVersion %s expired, listing again", self.name, self._rv)
                    need_list = True
                    continue
                if end is _End.IDLE:
                    need_list = True  # a silent, perhaps dead, connection: see the module doc
            except _Stopped:
                break
            except ApiException as exc:
                if self._stop.is_set():
                    break
                if exc.status == 404 and self.resource.optional:
                    self._absent()
                    self._stop.wait(self.settings.absent_recheck)
                    need_list = True
                    continue
                self._failed(exc)
                need_list = True
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._failed(exc)
                # Whatever broke, the apiserver behind it may have been replaced by one with
                # another history (a restore, a wiped etcd) in which our resourceVersion names
                # a different state: only a list proves what holds (see the module doc).
                need_list = True
            self._pause()
        log.debug("%s: stopped", self.name)

    def _pause(self) -> None:
        delay = backoff_delay(
            self._failures, self.settings.backoff_base, self.settings.backoff_cap, self._rng
        )
        if not delay:
            return
        # Both return early on stop(); the loop condition then ends it.
        if self._away:
            self._recovery.wait(delay, self._probe, self._stop)
        else:  # the API answered, with a refusal a quick retry would not change (403, 429...)
            self._stop.wait(delay)

    def _probe(self) -> bool:
        """The cheap question of `Recovery`: does a one-item list of our kind succeed?"""
        if self._stop.is_set():
            return False
        params: dict[str, Any] = {"limit": 1}
        if self.label_selector:
            params["label_selector"] = self.label_selector
        timeout = min(self.settings.connect_timeout, 2.0), min(self.settings.read_timeout, 5.0)
        try:
            response = self._call(request_timeout=timeout, **params)
            response.read()
            response.release_conn()
        except Exception:
            return False
        return True

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        self._misses += 1
        self._away = _api_away(exc)
        if self._misses == 1:
            self._failing_since = time.time()
        elif self._away and not self._said_unreachable:
            self._said_unreachable = True
            self._sink.set_unreachable(self.layer, self._failing_since)
        self.stats.errors += 1
        message = _describe(exc, self)
        self.stats.last_error = message
        # One warning per kind of trouble, not per retry: the first failure of a streak (unless
        # it is a stream that broke once, which load balancers and apiserver restarts do all the
        # time and the next watch cures) and any change of cause. The rest goes to debug.
        key = f"{type(exc).__name__} {getattr(exc, 'status', '')}"
        if key == self._complaint:
            level = logging.DEBUG
        elif self._failures == 1 and isinstance(exc, ProtocolError):
            level = logging.INFO
        else:
            level = logging.WARNING
            self._complaint = key
        log.log(level, "%s: %s; keeping the last data, retrying", self.name, message)

    def _absent(self) -> None:
        """The API server does not serve this optional kind (404: its CRD is not installed,
        or was removed): none of it exists. What was held of it goes, and the kind counts as
        synced, so that a cluster without the Gateway API is served at once."""
        if self._complaint != "absent":
            log.warning(
                "%s: not served by this API server (%s not installed?); none assumed, asking "
                "again every %.0f s",
                self.name,
                self.resource.group_version,
                self.settings.absent_recheck,
            )
            self._complaint = "absent"
        self._healthy_api()
        if self._versions:
            gone = list(self._versions)
            self._versions = {}
            self._sink.apply(self.layer, (), gone, time.monotonic())
        self.stats.objects = 0
        if not self._synced.is_set():
            self._synced.set()
            if self._on_synced is not None:
                self._on_synced(self)

    def _healthy_api(self) -> None:
        """The API answered (if only with a 404): no outage to report, and the streak ends."""
        self._reachable()
        self._failures = 0

    def _reachable(self) -> None:
        """A list answered: the API is reachable, so answers stop saying they are stale. The
        streak of failures (its backoff, its one warning) ends only once a watch works too:
        with list allowed and watch refused (RBAC), each list would otherwise reset the backoff,
        and the watch's 403 would come back at once, a full list a second, warned each time."""
        if self._failures:
            self._recovery.success()  # the other kinds need not wait out their backoff
        if self._said_unreachable:
            self._said_unreachable = False
            self._sink.set_unreachable(self.layer, None)
        self._away = False
        self._misses = 0

    def _healthy(self) -> None:
        if self._complaint == "absent":
            log.info("%s: served by the API server now", self.name)
            self._complaint = ""
        elif self._complaint:
            log.info("%s: working again after %d failures", self.name, self._failures)
            self._complaint = ""
        self._healthy_api()

    # -- requests --------------------------------------------------------------------------------

    def _open(self, read_timeout: float, **params: Any) -> Any:
        """Send a list or watch request; return the urllib3 response, registered for `stop()`."""
        if self._stop.is_set():
            raise _Stopped
        if self.label_selector:
            params["label_selector"] = self.label_selector
        response = self._call(
            request_timeout=(self.settings.connect_timeout, read_timeout), **params
        )
        with self._lock:
            if self._stop.is_set():
                response.close()
                raise _Stopped
            self._response = response
        return response

    def _close(self, response: Any, *, consumed: bool) -> None:
        with self._lock:
            self._response = None
        if consumed:
            response.release_conn()  # back to the pool for the next request
        else:
            response.close()  # unread data: the connection cannot be reused

    # -- list --------------------------------------------------------------------------------------

    def _list(self) -> None:
        self.verb = "list"
        held = self._versions
        versions: dict[ObjectKey, str] = {}  # what will be held once the list is handed over
        changed: list[KubeObject] = []
        page_size = (
            self.settings.endpoint_page_size
            if self.kind in LARGE_KINDS
            else self.settings.page_size
        )
        cont: str | None = None
        rv = ""
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cont:
                params["_continue"] = cont
            response = self._open(self.settings.read_timeout, **params)
            consumed = False
            try:
                body = response.read()
                consumed = True
            finally:
                self._close(response, consumed=consumed)
            page = json.loads(body)
            del body
            for item in page.get("items") or ():
                self._listed(item, held, versions, changed)
            meta = page.get("metadata") or {}
            rv = meta.get("resourceVersion") or rv
            cont = meta.get("continue") or None
            del page
            if not cont:
                break
            if changed:
                # What changed is handed over page by page: every page comes from the list's
                # one snapshot, newer than anything held, so it may answer at once; a relist
                # of 100,000 endpoints under load took seconds during which changes made
                # while the watch was down stayed unanswered. Only what is gone must wait for
                # the last page (and goes with its changes).
                self._hand_over(changed, [], versions, time.monotonic())
                changed = []
        received_at = time.monotonic()
        if self._stop.is_set():
            raise _Stopped
        gone = [key for key in held if key not in versions]
        self._hand_over(changed, gone, versions, received_at)
        self._rv = rv
        stats = self.stats
        if stats.lists:
            stats.relists += 1
        stats.lists += 1
        stats.objects = len(versions)
        stats.resource_version = rv
        self._reachable()
        log.debug(
            "%s: listed %d objects at resourceVersion %s: %d new or changed, %d gone",
            self.name,
            len(versions),
            rv,
            len(changed),
            len(gone),
        )
        if not self._synced.is_set():
            self._synced.set()
            if self._on_synced is not None:
                self._on_synced(self)

    def _listed(
        self,
        item: Any,
        held: dict[ObjectKey, str],
        versions: dict[ObjectKey, str],
        changed: list[KubeObject],
    ) -> None:
        """Note one listed item: unchanged since handed over (same resourceVersion), or trimmed
        into `changed`. Either way it lands in `versions` unless trim refuses it."""
        key = self._key(item) if isinstance(item, dict) else None
        version = _version(item)
        if key is not None and version and held.get(key) == version:
            versions[key] = version
            return
        record = self._trim(item)
        if record is not None:
            versions[record.key] = version
            changed.append(record)

    def _hand_over(
        self,
        upserts: list[KubeObject],
        deletes: list[ObjectKey],
        versions: dict[ObjectKey, str],
        received_at: float,
    ) -> None:
        """Send a list's changes to the sink, at most `batch_size` objects a call.

        `self._versions` follows batch by batch, so it always says what the sink was given (and
        ends equal to `versions`), even if a stop cuts the hand-over short.
        """
        size = max(1, self.settings.batch_size)
        weight_cap = max(1, self.settings.batch_endpoints)
        held = self._versions
        u = d = 0
        while u < len(upserts) or d < len(deletes):
            if self._stop.is_set():
                raise _Stopped
            # A batch ends at `batch_size` objects or `batch_endpoints` endpoints, whichever
            # comes first: the loop rebuilds a view per touched service, and 200 slices of 100
            # endpoints in one callback held queries for tens of milliseconds.
            end, weight = u, 0
            while end < len(upserts) and end - u < size and weight < weight_cap:
                weight += _weight(upserts[end])
                end += 1
            batch = upserts[u:end]
            u = end
            gone = deletes[d : d + size - len(batch)]
            d += len(gone)
            self._sink.apply(self.layer, batch, gone, received_at)
            for record in batch:
                held[record.key] = versions[record.key]
            for key in gone:
                held.pop(key, None)

    # -- watch -----------------------------------------------------------------------------------

    def _watch(self) -> _End:
        self.verb = "watch"
        low, high = self.settings.watch_timeout
        started = time.monotonic()
        try:
            response = self._open(
                self.settings.idle_timeout,
                watch=True,
                resource_version=self._rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self._rng.randint(low, high),
            )
        except ApiException as exc:
            # 410: expired, said with the HTTP status rather than an ERROR event. 504 "Too large
            # resource version": the apiserver's history restarted below ours (a new etcd, a
            # restored backup); only a list can catch up, as client-go does.
            if exc.status in (410, 504):
                return _End.EXPIRED
            raise
        self.stats.watches += 1
        seen = 0
        consumed = False
        try:
            for line, received_at in _lines(response):
                if self._stop.is_set():
                    raise _Stopped
                if self._event(line, received_at) is _End.EXPIRED:
                    return _End.EXPIRED
                if not seen:
                    self._healthy()  # the stream works: a later break starts a fresh backoff
                seen += 1
            consumed = True
        except ReadTimeoutError:
            # Quiet for `idle_timeout`: perhaps a dead connection, perhaps only a quiet cluster
            # whose apiserver sends no bookmarks. Either way watching again is the cure, and it
            # is not an error worth a warning.
            if self._stop.is_set():
                raise _Stopped from None
            log.debug(
                "%s: watch idle for %ss, listing again", self.name, self.settings.idle_timeout
            )
            return _End.IDLE
        finally:
            self._close(response, consumed=consumed)
        if not seen and time.monotonic() - started < MIN_HEALTHY_WATCH:
            raise _WatchError("the server closed the watch at once")
        self._healthy()
        return _End.CLOSED

    def _event(self, line: bytes, received_at: float) -> _End | None:
        try:
            event = json.loads(line)
            kind = event["type"]
            obj = event["object"]
            if not isinstance(obj, dict):
                raise TypeError("object is not a mapping")
        except (ValueError, KeyError, TypeError) as exc:
            raise _WatchError(f"unreadable watch event ({exc})") from None
        stats = self.stats
        stats.events[kind] = stats.events.get(kind, 0) + 1
        if kind == "ERROR":
            if obj.get("code") in (410, 504):
                return _End.EXPIRED
            raise _WatchError(f"watch error {obj.get('code')}: {obj.get('message')}")
        rv = _resource_version(obj)
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            stats.last_event = time.time()
        if kind in ("ADDED", "MODIFIED"):
            record = self._trim(obj)
            if record is not None:
                self._versions[record.key] = _version(obj)
                self._sink.apply(self.layer, (record,), (), received_at)
            else:  # no longer of use to DNS (a slice turned FQDN, say): drop what we had
                self._delete(self._key(obj), received_at)
        elif kind == "DELETED":
            self._delete(self._key(obj), received_at)
        elif kind != "BOOKMARK":
            raise _WatchError(f"unknown watch event type {kind!r}")
        if rv:
            self._rv = rv
            stats.resource_version = rv
        stats.objects = len(self._versions)
        return None

    def _delete(self, key: ObjectKey | None, received_at: float) -> None:
        if key is not None and self._versions.pop(key, None) is not None:
            self._sink.apply(self.layer, (), (key,), received_at)

    # -- objects -------------------------------------------------------------------------------

    def _trim(self, obj: Any) -> KubeObject | None:
        try:
            return trim(self.kind, obj, targets=self._targets)
        except TrimError as exc:
            self.stats.invalid += 1
            log.warning("%s: ignoring %s: %s", self.name, _name(obj), exc)
            return None

    def _key(self, obj: dict[str, Any]) -> ObjectKey | None:
        """The key trim would give `obj`, without trimming it (None without a usable name)."""
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            return None
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            return None
        if self.kind == "Namespace":
            return ("Namespace", "", name)
        return (self.kind, meta.get("namespace") or "default", name)


def _weight(record: KubeObject) -> int:
    """How much work a record is for the store: its endpoints, at least 1."""
    if isinstance(record, EndpointSet):
        return max(1, sum(len(subset.endpoints) for subset in record.subsets))
    return 1


def _lines(response: Any) -> Iterator[tuple[bytes, float]]:
    """The lines of a watch stream, each with the time.monotonic() at which it arrived.

    Raises `ReadTimeoutError` when no byte came within the read timeout and `ProtocolError` when
    the stream broke; returns when it ended cleanly.
    """
    fp = _raw_body(response)
    if fp is not None:
        return _chunked_lines(response, fp)
    return _urllib3_lines(response)


def _raw_body(response: Any) -> Any:
    """The buffered socket file under a chunked urllib3 response whose body nobody has read yet,
    or None when the stream must be left to urllib3 (not chunked, compressed, unknown internals).
    """
    if not getattr(response, "chunked", False):
        return None
    headers = getattr(response, "headers", None)
    encoding = headers.get("content-encoding", "") if headers is not None else None
    if encoding is None or encoding.strip().lower() not in ("", "identity"):
        return None
    # urllib3 1.26 and 2.x: `_fp` is the http.client response, whose `fp` is the socket file;
    # `chunk_left` is None until urllib3 reads a chunk header.
    if getattr(response, "chunk_left", 0) is not None:
        return None
    fp = getattr(getattr(response, "_fp", None), "fp", None)
    if fp is None or not callable(getattr(fp, "read1", None)):
        return None
    return fp


def _chunked_lines(response: Any, fp: Any) -> Iterator[tuple[bytes, float]]:
    """Lines of a chunked body read from `fp` (see the module doc for why not through urllib3)."""
    chunks = _Dechunker()
    body = chunks.body
    while not chunks.done:
        try:
            data = fp.read1(READ_SIZE)
        except TimeoutError as exc:  # socket.timeout
            pool: Any = getattr(response, "_pool", None)
            raise ReadTimeoutError(pool, None, "Read timed out.") from exc
        except (OSError, ValueError) as exc:  # ValueError: the file was closed under us
            raise ProtocolError(f"Connection broken: {exc!r}", exc) from exc
        received_at = time.monotonic()
        if not data:
            if chunks.ended:  # the last chunk came, only the final CRLF is missing: tolerated
                break
            where = "inside a chunk" if chunks.in_chunk else "before its last chunk"
            raise ProtocolError(f"Connection broken: the watch stream ended {where}")
        chunks.feed(data)
        # Neither the read nor its lines are kept while this waits for the next event.
        data = b""
        end = body.rfind(b"\n")
        if end < 0:
            continue
        lines = bytes(body[:end]).split(b"\n")
        del body[: end + 1]
        for line in lines:
            if line.strip():
                yield line, received_at
        lines.clear()
    if body.strip():
        yield bytes(body), time.monotonic()
    # Read to the end: close the http.client response as urllib3 does, so that the connection
    # (still open) can go back to the pool and carry the next request. (The urllib3 response's
    # finaliser would close it too, but only once the response is collected.)
    with contextlib.suppress(Exception):
        response._fp.close()


def _urllib3_lines(response: Any) -> Iterator[tuple[bytes, float]]:
    """Lines of a stream read through urllib3's own readers (the slower, general path)."""
    if response.chunked:
        chunks: Iterator[bytes] = response.stream(None)  # one chunk per event from the apiserver
    else:
        chunks = iter(lambda: response.read1(65536), b"")
    tail = b""
    for chunk in chunks:
        received_at = time.monotonic()
        if b"\n" not in chunk:
            tail += chunk
            continue
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        for line in lines:
            if line.strip():
                yield line, received_at
    if tail.strip():
        yield tail, time.monotonic()


_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
#: Longest chunk-size or trailer line accepted (urllib3's limit).
_MAX_LINE = 1 << 16


class _Dechunker:
    """Undoes HTTP/1.1 chunked transfer-coding incrementally: `feed` it bytes as they come off
    the socket, take the decoded body from `body` (a bytearray the caller may consume from the
    front). `done` once the last (empty) chunk and the trailer section have been read.

    Bad framing raises `ProtocolError`, as a broken connection does: the watch is opened again.
    """

    __slots__ = ("_left", "_state", "_wire", "body")

    _SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)

    def __init__(self) -> None:
        self.body = bytearray()
        self._wire = b""  # received bytes not decoded yet (an incomplete line)
        self._state = self._SIZE
        self._left = 0  # bytes of the current chunk still to come

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    @property
    def ended(self) -> bool:
        """The last chunk has been read (trailers or the final CRLF may be missing)."""
        return self._state >= self._TRAILER

    @property
    def in_chunk(self) -> bool:
        return self._state in (self._DATA, self._DATA_END)

    def feed(self, data: bytes) -> None:
        wire = self._wire + data if self._wire else data
        size = len(wire)
        pos = 0
        state = self._state
        while pos < size and state != self._DONE:
            if state == self._DATA:
                take = min(self._left, size - pos)
                self.body += memoryview(wire)[pos : pos + take]
                pos += take
                self._left -= take
                if not self._left:
                    state = self._DATA_END
                continue
            eol = wire.find(b"\n", pos)
            if eol < 0:
                if size - pos > (2 if state == self._DATA_END else _MAX_LINE):
                    self._state = self._DONE
                    raise ProtocolError(
                        f"Connection broken: bad chunked framing {wire[pos : pos + 20]!r}"
                    )
                break
            line = wire[pos:eol].rstrip(b"\r")
            pos = eol + 1
            if state == self._SIZE:
                digits = line.split(b";", 1)[0].strip()
                if not _HEX.fullmatch(digits):
                    self._state = self._DONE
                    raise ProtocolError(f"Connection broken: invalid chunk length {line[:20]!r}")
                self._left = int(digits, 16)
                state = self._DATA if self._left else self._TRAILER
            elif state == self._DATA_END:
                if line:
                    self._state = self._DONE
                    raise ProtocolError("Connection broken: a chunk is longer than it said")
                state = self._SIZE
            elif not line:  # _TRAILER: an empty line ends the trailer section and the body
                state = self._DONE
        self._state = state
        self._wire = wire[pos:] if pos < size else b""


def _version(obj: Any) -> str:
    """What says an object is the one handed over before: its resourceVersion and its uid
    ("" without a resourceVersion: never taken as unchanged). The uid matters after a restore or
    a wiped etcd, where re-created objects can get the resourceVersions old ones had."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return ""
    rv = meta.get("resourceVersion")
    if not isinstance(rv, str) or not rv:
        return ""
    uid = meta.get("uid")
    return f"{rv} {uid}" if isinstance(uid, str) and uid else rv


def _api_away(exc: BaseException) -> bool:
    """Whether a failure says the API was unreachable or unavailable, so that a cheap probe
    answering means it is back. Not so for answers a quick retry would not change (401, 403,
    429, 500: an apiserver that fails big lists may well answer a one-item one) nor for a read
    timeout (an overloaded apiserver): those keep their whole backoff."""
    if isinstance(exc, ApiException):
        return exc.status in (502, 503, 504)
    return not isinstance(exc, _WatchError | ValueError | ReadTimeoutError)


def _resource_version(obj: Any) -> str:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return rv if isinstance(rv, str) else ""


def _name(obj: Any) -> str:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return "an object without metadata"
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def _describe(exc: BaseException, reflector: Reflector) -> str:
    """One line saying what went wrong, and what to do when the fix is on the operator's side."""
    what = reflector.resource.plural
    if isinstance(exc, ApiException):
        status = exc.status
        if status == 401:
            return "the API refused our credentials (401): check the token or kubeconfig user"
        if status == 403:
            scope = f"in namespace {reflector.namespace}" if reflector.namespace else "cluster-wide"
            verb = reflector.verb
            return f"not allowed to {verb} {what} {scope} (403): grant {verb} to kdns's account"
        if status == 410:
            return "the list's continue token expired (410)"
        if status == 0:  # no answer at all: the client's own failure (TLS, connection)
            reason = _one_line(exc.reason)
            if "CERTIFICATE_VERIFY_FAILED" in reason:
                return (
                    f"API unreachable: {reason}: check the kubeconfig's certificate-authority "
                    "(or certificate-authority-data) for this server"
                )
            return f"API unreachable: {reason}"
        return f"the API answered {status} {_one_line(exc.reason or '')}".rstrip()
    if isinstance(exc, MaxRetryError):
        return f"API unreachable: {_one_line(exc.reason)}"
    if isinstance(exc, ReadTimeoutError):
        return "no data from the API within the read timeout"
    if isinstance(exc, ProtocolError):
        return f"connection to the API broke: {_one_line(exc.args[0] if exc.args else exc)}"
    if isinstance(exc, HTTPError | OSError):
        return f"API unreachable: {_one_line(exc)}"
    if isinstance(exc, _WatchError):
        return str(exc)
    if isinstance(exc, ValueError):
        return f"unreadable answer from the API: {_one_line(exc)}"
    return f"unexpected {type(exc).__name__}: {_one_line(exc)}"


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 200 else text[:197] + "..."
