"""Keep one kind of Kubernetes object in the store: list, then watch, forever.

A `Reflector` does what client-go's reflector does, for one kind (in one namespace or in all):

1. LIST in pages (`limit`/`continue`), trim every item to its `kdns.model` record, and hand the
   store the whole result at once.
2. WATCH from the list's resourceVersion with `allowWatchBookmarks=true` and a randomised
   `timeoutSeconds`, applying each event as it arrives and remembering the newest
   resourceVersion seen, bookmarks included.
3. When the server ends the watch (its timeout, a clean close, a broken connection), watch again
   from that resourceVersion: nothing is missed and nothing is listed again.
4. When the server says that resourceVersion is gone (410 Expired, as an ERROR event in the
   stream or as the HTTP status), list again and hand the store the new content as a whole.

Why raw HTTP. The client's `watch.Watch` helper cannot be trusted with a 410 (it retries with the
same resourceVersion, then raises; with `deserialize=False` it fails with a KeyError and resumes
from the *starting* resourceVersion), follows bookmarks only from client 36 on, and deserialising
lists into model objects is slow and large at 100k endpoints. So the reflector calls the official
client's generated list functions with `_preload_content=False`, which gives the urllib3 response
(same call in clients 36 and 37; authentication, TLS and token refresh stay the client's), and
reads the JSON itself: list pages with `json.loads`, watch streams line by line. No model object
is ever built; the JSON of a page is dropped as soon as its items are trimmed.

Why a relist is a diff. After a 410 the reflector has missed an unknown number of events, so it
must replace what it holds. Clearing and refilling would make every name answer NXDOMAIN for a
moment (and caches keep NXDOMAIN); instead the new content goes to the store as one `replace`
(whole kind, cluster-wide reflector) or one `apply` with the keys that vanished (a reflector for
one namespace must not touch other namespaces' objects of the same kind). The store compares
object by object, so names that did not change never stop answering, and the generation only
moves if something DNS can see moved.

Failures. Any error (API unreachable, 5xx, 403, a broken stream, bad JSON) keeps the store as it
is, is counted, and is retried after an exponential backoff with full jitter (a random wait
between 0 and min(cap, base * 2**n)) so that many replicas restarting together do not hammer a
recovering apiserver. The first error of a streak is logged as one warning line saying what to
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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from kubernetes.client import ApiClient, ApiException, CoreV1Api, DiscoveryV1Api
from urllib3.exceptions import HTTPError, MaxRetryError, ProtocolError, ReadTimeoutError

from .model import KubeObject, ObjectKey
from .store import Sink
from .trim import TrimError, trim

log = logging.getLogger(__name__)

#: A watch that delivered nothing and ended sooner than this counts as a failure (backoff), so a
#: server that closes every watch at once is not asked again in a tight loop.
MIN_HEALTHY_WATCH = 1.0


@dataclass(frozen=True, slots=True)
class Resource:
    """How to list and watch one kind with the official client."""

    kind: str  # the record kind: "Service", "EndpointSlice", "Endpoints", "Namespace"
    plural: str  # the API resource, for logs and metrics
    api: Callable[[Any], Any]  # CoreV1Api or DiscoveryV1Api
    list_all: str  # the generated function listing every namespace (or a cluster-scoped kind)
    list_namespaced: str | None  # the one listing a single namespace; None if cluster-scoped


RESOURCES: dict[str, Resource] = {
    r.kind: r
    for r in (
        Resource(
            "Service",
            "services",
            CoreV1Api,
            "list_service_for_all_namespaces",
            "list_namespaced_service",
        ),
        Resource(
            "EndpointSlice",
            "endpointslices",
            DiscoveryV1Api,
            "list_endpoint_slice_for_all_namespaces",
            "list_namespaced_endpoint_slice",
        ),
        Resource(
            "Endpoints",
            "endpoints",
            CoreV1Api,
            "list_endpoints_for_all_namespaces",
            "list_namespaced_endpoints",
        ),
        Resource("Namespace", "namespaces", CoreV1Api, "list_namespace", None),
    )
}


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """Knobs of list/watch; the defaults are for production, tests shrink them."""

    #: Items per list page.
    page_size: int = 500
    #: `timeoutSeconds` of each watch, drawn uniformly from this range (client-go's 5-10 min), so
    #: the watches of many replicas do not all end at once.
    watch_timeout: tuple[int, int] = (300, 600)
    #: First backoff ceiling and the cap, in seconds (full jitter: wait is uniform in [0, ceiling]).
    backoff_base: float = 0.8
    backoff_cap: float = 30.0
    connect_timeout: float = 10.0
    #: Read timeout of a list page.
    read_timeout: float = 60.0
    #: A watch with no byte (not even a bookmark, which the apiserver sends about every minute)
    #: for this long is presumed dead (a half-open connection) and is reopened from the last
    #: resourceVersion. Cheap if wrong: nothing is listed again.
    idle_timeout: float = 120.0
    #: How often the listed namespaces are checked again when namespaces are not watched.
    namespace_recheck: float = 300.0


def backoff_delay(failures: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(failures-1))]."""
    if failures <= 0:
        return 0.0
    ceiling = min(cap, base * 2 ** min(failures - 1, 30))
    return rng.uniform(0, ceiling)


@dataclass(slots=True)
class ReflectorStats:
    """Counters of one reflector, for metrics and `kdns explain`. Read with `snapshot()`."""

    kind: str
    namespace: str  # "" when cluster-wide
    #: Watch events applied, by type (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR).
    events: dict[str, int] = field(default_factory=dict)
    lists: int = 0  # completed lists, the first one included
    relists: int = 0  # completed lists after the first (410 Expired)
    watches: int = 0  # watch requests that got a stream
    errors: int = 0  # failed requests and broken streams
    invalid: int = 0  # objects trim refused (TrimError)
    objects: int = 0  # records this reflector currently holds in the store
    resource_version: str = ""
    last_sync: float | None = None  # time.time() of the last completed list
    last_event: float | None = None  # time.time() of the last watch event (bookmarks included)
    last_error: str = ""

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


class Reflector:
    """Lists and watches one kind into a store layer, in a daemon thread.

    `namespace`: watch only that namespace (None: all namespaces, or a cluster-scoped kind).
    `label_selector`: passed to the API as is. `on_synced(reflector)` is called once, from the
    reflector's thread, right after the first complete list has been handed to the sink.
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
        api = self.resource.api(api_client)
        if namespace is None:
            self._call: Callable[..., Any] = getattr(api, self.resource.list_all)
        else:
            if self.resource.list_namespaced is None:
                raise ValueError(f"{self.resource.plural} are not namespaced")
            list_one = getattr(api, self.resource.list_namespaced)
            self._call = lambda **kw: list_one(namespace, **kw)
        self.name = self.resource.plural + (f" in {namespace}" if namespace else "")
        self.stats = ReflectorStats(kind, namespace or "")
        self._rv = ""
        self._keys: set[ObjectKey] = set()
        self._failures = 0
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
                if self._watch() is _End.EXPIRED:
                    log.info("%s: resourceVersion %s expired, listing again", self.name, self._rv)
                    need_list = True
                    continue
            except _Stopped:
                break
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._failed(exc)
            self._pause()
        log.debug("%s: stopped", self.name)

    def _pause(self) -> None:
        delay = backoff_delay(
            self._failures, self.settings.backoff_base, self.settings.backoff_cap, self._rng
        )
        if delay:
            self._stop.wait(delay)  # returns early on stop(); the loop condition then ends it

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
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

    def _healthy(self) -> None:
        if self._complaint:
            log.info("%s: working again after %d failures", self.name, self._failures)
            self._complaint = ""
        self._failures = 0

    # -- requests --------------------------------------------------------------------------------

    def _open(self, read_timeout: float, **params: Any) -> Any:
        """Send a list or watch request; return the urllib3 response, registered for `stop()`."""
        if self._stop.is_set():
            raise _Stopped
        if self.label_selector:
            params["label_selector"] = self.label_selector
        response = self._call(
            _preload_content=False,
            _request_timeout=(self.settings.connect_timeout, read_timeout),
            **params,
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
        records: dict[ObjectKey, KubeObject] = {}
        cont: str | None = None
        rv = ""
        while True:
            params: dict[str, Any] = {"limit": self.settings.page_size}
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
                record = self._trim(item)
                if record is not None:
                    records[record.key] = record
            meta = page.get("metadata") or {}
            rv = meta.get("resourceVersion") or rv
            cont = meta.get("continue") or None
            if not cont:
                break
        received_at = time.monotonic()
        if self._stop.is_set():
            raise _Stopped
        if self.namespace is None:
            self._sink.replace(self.layer, records.values(), [self.kind], received_at)
        else:
            gone = [key for key in self._keys if key not in records]
            self._sink.apply(self.layer, records.values(), gone, received_at)
        self._keys = set(records)
        self._rv = rv
        stats = self.stats
        if stats.lists:
            stats.relists += 1
        stats.lists += 1
        stats.objects = len(self._keys)
        stats.resource_version = rv
        stats.last_sync = time.time()
        self._healthy()
        log.debug("%s: listed %d objects at resourceVersion %s", self.name, len(records), rv)
        if not self._synced.is_set():
            self._synced.set()
            if self._on_synced is not None:
                self._on_synced(self)

    # -- watch -----------------------------------------------------------------------------------

    def _watch(self) -> _End:
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
                "%s: watch idle for %ss, watching again", self.name, self.settings.idle_timeout
            )
            return _End.CLOSED
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
        stats.last_event = time.time()
        if kind == "ERROR":
            if obj.get("code") in (410, 504):
                return _End.EXPIRED
            raise _WatchError(f"watch error {obj.get('code')}: {obj.get('message')}")
        rv = (obj.get("metadata") or {}).get("resourceVersion") or ""
        if kind in ("ADDED", "MODIFIED"):
            record = self._trim(obj)
            if record is not None:
                self._keys.add(record.key)
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
        stats.objects = len(self._keys)
        return None

    def _delete(self, key: ObjectKey | None, received_at: float) -> None:
        if key is not None and key in self._keys:
            self._keys.discard(key)
            self._sink.apply(self.layer, (), (key,), received_at)

    # -- objects -------------------------------------------------------------------------------

    def _trim(self, obj: Any) -> KubeObject | None:
        try:
            return trim(self.kind, obj)
        except TrimError as exc:
            self.stats.invalid += 1
            log.warning("%s: ignoring %s: %s", self.name, _name(obj), exc)
            return None

    def _key(self, obj: dict[str, Any]) -> ObjectKey | None:
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            return None
        if self.kind == "Namespace":
            return ("Namespace", "", name)
        return (self.kind, meta.get("namespace") or "default", name)


def _lines(response: Any) -> Iterator[tuple[bytes, float]]:
    """The lines of a watch stream, each with the time.monotonic() at which it arrived."""
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
            return f"not allowed to list/watch {what} {scope} (403): grant it to kdns's account"
        if status == 410:
            return "the list's continue token expired (410)"
        return f"the API answered {status} {exc.reason or ''}".rstrip()
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
