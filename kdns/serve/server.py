"""The server's lifecycle: startup, serving, reload, lame duck, shutdown.

As in uvicorn: `startup()` binds every socket first (so a port in use fails at once, with one
clear line), loads the sources, waits up to `startup_timeout` for them to sync, and only then
starts reading queries (packets that arrived meanwhile wait in the kernel's buffers). `serve()`
runs until SIGINT or SIGTERM. SIGTERM first reports not ready and keeps answering for the
lame-duck period, so that endpoints and kube-proxy stop sending traffic before the sockets close;
SIGINT (a person at a terminal) stops at once. SIGHUP reloads the zones directories.

Everything that touches the store runs on the event loop thread; sources in threads hand their
writes over through `LoopSink`.

With `--workers N` the same class plays two parts: in the main process it binds, watches, serves
HTTP and runs a `WorkerPool` instead of answering; in each serving process (`worker.py`) it
inherits the sockets and fills its stores from the main process's pipe (`replica.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdns.config import Config, ConfigError
from kdns.dns.names import ZoneKind
from kdns.dns.resolution import Cluster, Engine
from kdns.dns.wire import servfail_for
from kdns.ops.external import follow
from kdns.ops.journal import Journal
from kdns.ops.metrics import KdnsCollector, LatencyHistogram, store_listener
from kdns.ops.traffic import QueryRate
from kdns.ops.transfer import parse_networks, transfer
from kdns.serve import heap, steering
from kdns.serve.acl import acl_from
from kdns.serve.autopath import AutoPath
from kdns.serve.batch import BatchUdp, available
from kdns.serve.publish import Publisher
from kdns.serve.ratelimit import RateLimiter
from kdns.serve.responder import Chase, Responder
from kdns.serve.stats import QueryCounters
from kdns.serve.tally import ClientTally, PageClock, Rows, digest_due
from kdns.serve.transport import TcpProtocol, TransportState, UdpProtocol
from kdns.state.clusterset import ExportUnion
from kdns.state.store import LoopSink, Sink, Store, ViewRules

log = logging.getLogger(__name__)

#: Bytes of receive buffer asked for on each UDP socket.
UDP_RECEIVE_BUFFER = 4 << 20
FILES_LAYER = "files"
CLUSTER_LAYER = "cluster"


@dataclass(frozen=True, slots=True)
class Inherited:
    """What a serving process gets from the main process (see `workers.py`)."""

    index: int
    feed: int  # fd: frames from the main process
    status: int  # fd: frames to it
    sockets: tuple[int, ...]  # fds: (udp, tcp) for each listen address
    page_clock: PageClock  # when the page last asked for the digests


def _bind(host: str, port: int, kind: socket.SocketKind, reuseport: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_DGRAM:
            # Room for bursts: with the default 208 KiB, a burst of a few thousand queries
            # overflows while the loop is busy, and the kernel drops them (the kernel caps this
            # at net.core.rmem_max).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
        raise ConfigError(f"cannot listen on {host}:{port}/{proto}: {err.strerror}") from None
    sock.setblocking(False)
    return sock


def build_engine(config: Config, zones: list[Cluster]) -> Engine:
    """The answer engine for these zones as `config` sets it: the server's, and the one-shot
    commands' (`kdns records`, `kdns explain`), so that they answer as the server would."""
    ns_addresses = [h for h, _ in config.listen if h not in ("0.0.0.0", "::")]
    return Engine(
        zones,
        ttl=config.ttl,
        pods=config.pods,
        ns_addresses=ns_addresses,
        namespaces=config.scope().namespaces,
        forwarding=bool(config.upstreams),
    )


def view_rules(config: Config) -> ViewRules:
    """How endpoints are named and ordered (--endpoint-pod-names, --prefer-zone)."""
    return ViewRules(pod_names=config.endpoint_pod_names, prefer_zone=config.prefer_zone)


def engine_from_files(config: Config) -> Engine:
    """The engine a server started with `config` answers from once its zones/ files are loaded,
    without serving or watching anything (no cluster), in the same scope (--namespace,
    --label-selector). Raises `SourceError` for unreadable manifests and `ConfigError` for a bad
    --service-cidr or scope."""
    from kdns.sources.files import FileSource

    scope = config.scope()
    store = Store(rules=view_rules(config))
    store.add_layer(FILES_LAYER, implicit_namespaces=True)
    FileSource(store, FILES_LAYER, config.zone_dirs(), config.service_cidr, scope=scope).load()
    return build_engine(config, zones_of(config, [store]))


def zones_of(config: Config, stores: Sequence[Store]) -> list[Cluster]:
    """The zones served: `--domain` and each `--cluster` zone with its store (in that order),
    then each `--external-zone` and the `--clusterset-domain`, answering from the first store,
    and the `--clusterset` zone, answering from the merge of what every store exports.
    Raises `ConfigError` when two zones are the same."""
    domains = [config.domain, *(zone for _, zone in config.clusters)]
    zones = [Cluster(domain, store) for domain, store in zip(domains, stores, strict=False)]
    zones += [Cluster(zone, stores[0], ZoneKind.EXTERNAL) for zone in config.external_zones]
    if config.clusterset_domain:
        zones.append(Cluster(config.clusterset_domain, stores[0], ZoneKind.CLUSTERSET))
    if config.clusterset:
        # The union listens to the stores from now on: it lives as long as they do.
        union = ExportUnion(list(zip(config.cluster_ids(), stores, strict=False)))
        zones.append(Cluster(config.clusterset, union.store, ZoneKind.CLUSTERSET))
    seen = [c.domain for c in zones]
    if len(set(seen)) != len(seen):
        raise ConfigError(
            "every --cluster, --external-zone, --clusterset-domain and --clusterset needs a zone "
            "of its own, other than --domain"
        )
    return zones


class DnsServer:
    """A kdns server built from a `Config`."""

    def __init__(
        self,
        config: Config,
        inherited: Inherited | None = None,
        stores: Sequence[Store] | None = None,
    ) -> None:
        """`stores`: the stores to serve (a forked serving process's, inherited; in the order
        of `DnsServer.stores`); by default new, empty ones."""
        self.config = config
        #: What is served of every source (--namespace, --label-selector).
        self.scope = config.scope()
        self.inherited = inherited
        self.pool: Any = None  # WorkerPool, with --workers
        self.replica: Any = None  # Replica, in a serving process
        self._status: asyncio.WriteTransport | None = None  # pipe to the main process
        rules = view_rules(config)
        given = list(stores) if stores is not None else []
        if given and len(given) != 1 + len(config.clusters):
            raise ValueError(f"{len(given)} stores for {1 + len(config.clusters)} zones")
        self.store = (
            given[0] if given else Store(serial_base=int(time.time()), rules=rules, clock=time.time)
        )
        # --cluster CONTEXT=ZONE: one more store, and zone, per further cluster.
        self.extra = [
            (
                ctx,
                given[i + 1]
                if given
                else Store(serial_base=int(time.time()), rules=rules, clock=time.time),
            )
            for i, (ctx, _) in enumerate(config.clusters)
        ]
        zones = zones_of(config, [self.store, *(store for _, store in self.extra)])
        self.stores = [c.store for c in zones if c.kind is ZoneKind.CLUSTER]
        self.engine = build_engine(config, zones)
        self.forwarder: Any = None
        self.responder = Responder(
            self.engine, forwarding=bool(config.upstreams), rotate=config.rotate
        )
        self.stats = QueryCounters()
        self.programming = LatencyHistogram()
        for store in self.stores:
            store.subscribe(store_listener(self.programming))
        #: Every DNS-visible change, as record sets before and after (`/changes`). Kept where
        #: the sources write (here, or the main process with --workers), and only with --http,
        #: its one reader, unless --no-http-changes: otherwise it stays empty and costs nothing
        #: per change.
        self.journal = Journal()
        if inherited is None and config.http is not None and config.http_changes:
            # Subscribed last, after the answer cache's invalidation, and before the sources
            # start, so it sees their initial load.
            for cluster in self.engine.clusters:
                self.journal.follow(cluster.domain, cluster.store)
        listen_host, listen_port = config.listen[0]
        self.metrics = KdnsCollector(
            self.stats,
            self.responder,
            server=f"dns://{listen_host}:{listen_port}",
            zone=config.domain + ".",
            programming=self.programming,
        )
        self.limiter = RateLimiter(config.rrl) if config.rrl else None
        #: None when everyone may query: the transports then check nothing.
        self.acl = acl_from(config.allow_query, config.allow_query_drop)
        self.metrics.acl = self.acl
        try:
            self.transfer_networks = parse_networks(config.transfer_to)
        except ValueError as err:
            raise ConfigError(f"bad --transfer-to: {err}") from None
        self.sources: list[Any] = []
        #: NXDOMAIN answers by client, for the page: only with --http-show-clients.
        self.clients = ClientTally() if config.http_show_clients else None
        #: Queries a second over the last ten minutes, for the page (with --http).
        self.rate: QueryRate | None = None
        #: When this server started (wall clock), for the page.
        self.started_at = time.time()
        self.transports = TransportState(
            self.responder,
            self.stats,
            forward=self.forward,
            transfer=self.transfer,
            limiter=self.limiter,
            acl=self.acl,
            log_queries=config.log_queries,
            clients=self.clients,
            autopath=AutoPath(
                self.engine, forwarding=bool(config.upstreams), max_udp=self.responder.max_udp
            )
            if config.autopath
            else None,
            tcp_max_connections=config.tcp_max_connections,
            tcp_idle_timeout=config.tcp_idle_timeout,
        )
        self.serving = False
        #: True once UDP is answered in batches (`batch.py`) rather than by `UdpProtocol`.
        self.udp_batch = False
        self.addresses: list[tuple[str, int]] = []
        #: With --steer: for each listen address, its UDP sockets, one per serving process.
        self.steered: list[list[socket.socket]] = []
        self._stop = asyncio.Event()
        self._immediate = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closers: list[Callable[[], object]] = []
        #: The zones/ source (a `FileSource`), once started; None in a serving process.
        self.file_source: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    def _bind_all(self) -> list[tuple[socket.socket, socket.socket]]:
        sockets: list[tuple[socket.socket, socket.socket]] = []
        steer = self._steered_count()
        try:
            for host, port in self.config.listen:
                tcp = _bind(host, port, socket.SOCK_STREAM)
                # Port 0: let TCP pick, then take the same number for UDP.
                port = tcp.getsockname()[1]
                udp = _bind(host, port, socket.SOCK_DGRAM, reuseport=steer > 0)
                sockets.append((udp, tcp))
                self.addresses.append((host, port))
                if steer:
                    try:
                        steering.attach(udp, steer)
                    except OSError as err:  # a kernel before 4.5, a seccomp filter
                        if self.steered:
                            raise ConfigError(f"--steer on {host}:{port}: {err}") from None
                        log.warning("--steer: %s; every serving process reads every query", err)
                        steer = 0
                if steer:
                    # One UDP socket per serving process, in the order the program numbers them.
                    group = [udp]
                    self.steered.append(group)
                    for _ in range(steer - 1):
                        group.append(_bind(host, port, socket.SOCK_DGRAM, True))
        except ConfigError:
            for pair in sockets:
                for s in pair:
                    s.close()
            for group in self.steered:
                for s in group[1:]:
                    s.close()
            raise
        return sockets

    def _steer_around(self, down: frozenset[int]) -> None:
        """Attach the steering program again, the names of the serving processes in `down`
        going to the others meanwhile."""
        for group in self.steered:
            try:
                steering.attach(group[0], len(group), down)
            except OSError as err:  # attached once already: not expected
                log.error("--steer: could not attach the program again: %s", err)
        if down and self.serving:  # not while they start
            log.info("steering: the names of serving process(es) %s go to the others meanwhile",
                     ", ".join(map(str, sorted(down))))  # fmt: skip

    def _steered_count(self) -> int:
        """Sockets per steered UDP group (one per serving process); 0: no steering."""
        workers = self.config.workers
        if self.inherited is not None or workers < 2 or not self.config.steer:
            return 0
        if not steering.supported():
            log.info("--steer: not on this platform; every serving process reads every query")
            return 0
        if self.config.rrl:
            # Each serving process limits a client to its share of --rrl, which is right only
            # when a client's queries spread over them all: steered, a client asking one name
            # (a reflection flood) would meet one share alone.
            log.info("--steer: off with --rrl; every serving process reads every query")
            return 0
        return workers

    def _worker_sockets(
        self, sockets: list[tuple[socket.socket, socket.socket]]
    ) -> list[list[socket.socket]]:
        """The sockets each serving process is given: (udp, tcp) for each listen address, the
        UDP one its own when steered."""
        return [
            [
                s
                for n, (udp, tcp) in enumerate(sockets)
                for s in ((self.steered[n][i] if self.steered else udp), tcp)
            ]
            for i in range(self.config.workers)
        ]

    def _adopt(self, inherited: Inherited) -> list[tuple[socket.socket, socket.socket]]:
        fds = inherited.sockets
        sockets = [
            (socket.socket(fileno=fds[i]), socket.socket(fileno=fds[i + 1]))
            for i in range(0, len(fds), 2)
        ]
        for udp, tcp in sockets:
            udp.setblocking(False)
            tcp.setblocking(False)
            self.addresses.append(udp.getsockname()[:2])
        return sockets

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        inherited = self.inherited
        sockets = self._adopt(inherited) if inherited is not None else self._bind_all()
        if self.config.workers:
            from kdns.serve.workers import WorkerPool

            given = self._worker_sockets(sockets)
            self.pool = WorkerPool(
                self.config.workers,
                self.config,
                self.stores,
                given,
                busy=lambda: self.journal.pending > 0,
                steer=self._steer_around if self.steered else None,
            )
            self._closers.extend(s.close for s in {s for group in given for s in group})
            self.metrics.workers = self.pool.status
        elif self.config.upstreams:
            from kdns.ops.forward import Forwarder

            self.forwarder = Forwarder(
                self.config.upstreams, timeout=self.config.upstream_timeout, own=self.addresses
            )
            self.metrics.forward = self.forwarder
        if self.inherited is not None:
            await self._start_feed(loop, self.inherited)
        else:
            await self._start_sources(loop)
            # Every source is added: the journal starts with each zone's first sync.
            self.journal.open()
        if self.config.http is not None:
            from kdns.ops.http import start_http

            http = await start_http(self, *self.config.http)
            self._closers.append(http.close)
            self.rate = QueryRate(lambda: self.collector().queries.duration_count)
            self.rate.start(loop)
            self._closers.append(self.rate.stop)
            for sock in http.sockets:
                host, port = sock.getsockname()[:2]
                paths = "/, /health, /ready, /metrics, /changes" + (
                    ", /explain" if self.config.http_explain else ""
                )
                log.info("http on %s port %d (%s)", host, port, paths)
        await self._wait_synced()
        # What is loaded now lives as long as the server; what changes later must not pile up
        # in the collector's young generation (heap.py).
        heap.after_sync(self.stores)
        if self.inherited is None:
            log.info("%s", _runtime(loop, self.config))
        if self.pool is not None:
            await self.pool.start(self._stop)
            if not self.synced:
                self._spawn(self._renew_when_synced())
            self.serving = True
            for host, port in self.addresses:
                log.info(
                    "serving %s on %s port %d (udp, tcp) with %d workers%s",
                    self.config.domain,
                    host,
                    port,
                    self.pool.ready_count,
                    ", each query to the one owning its name" if self.steered else "",
                )
            return
        batched = _batched(self.config) and BatchUdp.applies(self.transports)
        self.udp_batch = batched
        for udp, tcp in sockets:
            if batched:
                batch = BatchUdp(udp, self.transports)
                batch.start(loop)
                self._closers.append(batch.close)
            else:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: UdpProtocol(self.transports), sock=udp
                )
                self._closers.append(transport.close)
            tcp.listen(128)
            server = await loop.create_server(lambda: TcpProtocol(self.transports), sock=tcp)
            self._closers.append(server.close)
        self.serving = True
        if self.inherited is not None:
            self._report("ready")
            self._spawn(self._report_stats(self.inherited.page_clock))
            return
        for host, port in self.addresses:
            log.info("serving %s on %s port %d (udp, tcp)", self.config.domain, host, port)

    async def _start_sources(self, loop: asyncio.AbstractEventLoop) -> None:
        from kdns.sources.files import FileSource

        cfg = self.config
        scope = self.scope
        clients: list[tuple[int, str, Any]] = []
        if cfg.uses_cluster or cfg.clusters:
            from kdns.sources.cluster import load_api_client

            # Before anything starts, so a bad kubeconfig is the only thing the user sees.
            if cfg.uses_cluster:
                client = load_api_client(cfg.kubeconfig, cfg.context, cfg.in_cluster)
                clients.append((0, CLUSTER_LAYER, client))
            for i, (context, _) in enumerate(self.extra, start=1):
                client = load_api_client(cfg.kubeconfig, context, False)
                clients.append((i, f"{CLUSTER_LAYER}:{context}", client))
        self._log_sources()
        if not scope.everything:
            log.info("scope: serving %s, of every source", scope.describe())
        # The files layer first: it wins over the cluster for a name both define.
        self.store.add_layer(FILES_LAYER, implicit_namespaces=True)
        files = FileSource(
            self._sink(0),
            FILES_LAYER,
            cfg.zone_dirs(),
            cfg.service_cidr,
            watch_mode=cfg.zones_watch,
            scope=scope,
        )
        files.load()
        if files.dirs:  # none when a cluster is served and --zones names none
            self.file_source = files
            self._spawn(files.watch())
        if clients:
            from kdns.sources.cluster import ClusterSource

            for index, layer, client in clients:
                self.stores[index].add_layer(layer)
                source = ClusterSource(
                    LoopSink(self._sink(index), loop),
                    layer,
                    client,
                    # The API server applies the scope: only what it admits is sent.
                    namespaces=sorted(scope.namespaces) if scope.namespaces else None,
                    label_selector=scope.selector.text if scope.selector else None,
                    idle_timeout=cfg.watch_idle_timeout,
                    pods=cfg.pods == "verified",
                    # Ready endpoints' targetRefs are read only to name endpoints by their pods.
                    targets=cfg.endpoint_pod_names,
                    # The external zones answer from the first cluster's store.
                    exposure=bool(cfg.external_zones) and index == 0,
                    # So does the clusterset zone.
                    clusterset=bool(cfg.clusterset_domain) and index == 0,
                    # --clusterset merges the exports of every cluster.
                    exports=bool(cfg.clusterset),
                )
                source.start()
                self.sources.append(source)
                self._closers.append(source.stop)
                self._closers.append(client.close)
            self.metrics.watch = self._watch_stats
            self.metrics.unreachable = self._unreachable

    def _log_sources(self) -> None:
        """Say where the answers for the cluster domain come from, when it is not obvious."""
        cfg = self.config
        dirs = cfg.zone_dirs()
        if not cfg.uses_cluster:
            return
        if cfg.in_cluster:
            cluster = "the cluster (in-cluster service account)"
        else:
            cluster = f"the cluster of {cfg.kubeconfig or 'the default kubeconfig'}"
            cluster += f" (context {cfg.context})" if cfg.context else ""
        if dirs:
            log.info(
                "%s is served from two sources: the files in %s, and %s; a service both define "
                "is answered from the files (a warning names each one)",
                cfg.domain,
                ", ".join(str(d) for d in dirs),
                cluster,
            )
        elif Path("zones").is_dir():
            log.info(
                "./zones is not served alongside %s; name it with --zones to serve both", cluster
            )

    def _sink(self, index: int) -> Sink:
        """Where sources write into store `index`: the store, or with --workers a publisher."""
        if self.pool is None:
            return self.stores[index]
        return Publisher(self.stores[index], index, self.pool)

    async def _start_feed(self, loop: asyncio.AbstractEventLoop, inherited: Inherited) -> None:
        from kdns.serve.replica import FeedProtocol, Replica

        stop = lambda: self.request_stop(True)  # noqa: E731
        self.replica = Replica(self.stores, stop)
        feed = os.fdopen(inherited.feed, "rb", buffering=0)
        await loop.connect_read_pipe(lambda: FeedProtocol(self.replica, stop), feed)
        status = os.fdopen(inherited.status, "wb", buffering=0)
        self._status, _ = await loop.connect_write_pipe(asyncio.Protocol, status)
        self._closers.append(self._status.close)

    def _report(self, *message: Any) -> None:
        from kdns.serve.frames import pack

        if self._status is not None and not self._status.is_closing():
            self._status.write(pack(message))

    def worker_stats(self) -> Any:
        """This serving process's counters, for the main process's /metrics."""
        from kdns.serve.workers import WorkerStats

        r, fwd = self.responder, self.forwarder
        stats = WorkerStats(self.stats.snapshot(), dict(r.rcodes), r.hits, r.misses, len(r))
        if self.acl is not None:
            stats.acl_refused, stats.acl_dropped = dict(self.acl.refused), dict(self.acl.dropped)
        if fwd is not None:
            stats.upstreams = {
                str(up): (up.requests, up.failures, dict(up.responses), up.looping)
                for up in fwd.upstreams
            }
            stats.forward_hits, stats.forward_misses = fwd.hits, fwd.misses
            stats.forward_entries = fwd.cache_entries
        return stats

    async def _report_stats(self, page_clock: PageClock) -> None:
        from kdns.serve.workers import STATS_INTERVAL

        sent = -math.inf
        while True:
            stats = self.worker_stats()
            # The digests cost a pass over the tables: sent only while the page asks for them.
            now = time.monotonic()
            if digest_due(now, page_clock.asked(), sent):
                await self._add_tallies(stats)
                sent = now
            self._report("stats", stats)
            await asyncio.sleep(STATS_INTERVAL)

    async def _add_tallies(self, stats: Any) -> None:
        """Put this serving process's digests for the page into `stats` (`WorkerStats`)."""
        stats.names = await self.responder.names_digest()
        stats.clients = self.clients.digest() if self.clients is not None else None

    def collector(self) -> KdnsCollector:
        """The metrics, with the serving processes' counters summed in when there are some."""
        if self.pool is not None:
            queries, responses, forward = self.pool.totals()
            self.metrics.queries, self.metrics.responses = queries, responses
            if self.config.upstreams:
                self.metrics.forward = forward
            if self.acl is not None:
                # This process refuses only /explain; the serving processes refuse DNS.
                self.metrics.acl = self.pool.acl_totals(self.acl)
        return self.metrics

    async def tallies(self) -> tuple[Rows, dict[str, int] | None]:
        """For the page: answers by (name, rcode), and NXDOMAIN answers by client address
        (None unless --http-show-clients), the serving processes' summed with --workers."""
        if self.pool is not None:
            names, clients = await self.pool.tallies()
        else:
            names = await self.responder.names_digest()
            clients = self.clients.digest() if self.clients is not None else {}
        return names, clients if self.config.http_show_clients else None

    def _watch_stats(self) -> list[Any]:
        return [stat for source in self.sources for stat in source.stats()]

    def _unreachable(self) -> list[tuple[str, float | None]]:
        """(zone, unreachable since) of every cluster source, for the metrics."""
        cfg = self.config
        zones = [cfg.domain, *(zone for _, zone in cfg.clusters)]
        layers = {source.layer for source in self.sources}
        return [
            (zones[index] + ".", since)
            for index, store in enumerate(self.stores)
            for layer, _implicit, _synced, since in store.layer_states()
            if layer in layers
        ]

    @property
    def synced(self) -> bool:
        """Every source of every zone has loaded once."""
        return all(store.synced for store in self.stores)

    async def _wait_synced(self) -> None:
        if self.replica is not None:
            from kdns.serve.workers import READY_TIMEOUT

            # The main process waited for the sources; the stores came with the fork, and its
            # "ready" comes first on the pipe (or a stop).
            waits = [self._spawn(self.replica.ready.wait()), self._spawn(self._stop.wait())]
            await asyncio.wait(waits, timeout=READY_TIMEOUT, return_when="FIRST_COMPLETED")
            for task in waits:
                task.cancel()
            if not self.replica.ready.is_set() and not self._stop.is_set():
                raise ConfigError(f"nothing from the main process in {READY_TIMEOUT:.0f}s")
            return
        deadline = time.monotonic() + self.config.startup_timeout
        while not self.synced and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if not self.synced:
            log.warning(
                "sources not synced after %.1fs; answering anyway (SERVFAIL for unknown names)",
                self.config.startup_timeout,
            )

    async def _renew_when_synced(self) -> None:
        """Serving processes forked before the sync got the data as writes of their own: fork
        them again once it is in, so that they share it with this process (`worker.py`)."""
        while not self.synced:
            if self._stop.is_set():
                return
            await asyncio.sleep(0.1)
        gc.freeze()
        await self.pool.renew()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- what the transports ask for -------------------------------------------------------

    def forward(
        self,
        query: bytes,
        reply: Callable[[bytes | None], None],
        *,
        udp: bool,
        family: int = 4,
        chase: Chase | None = None,
    ) -> None:
        """Forward `query` upstream; `reply` gets the answer (SERVFAIL when none comes). With
        `chase`, ask the forwarder for an ExternalName's target instead and reply with the
        CNAME plus what it finds (`kdns.ops.external`)."""
        if self.forwarder is None:
            reply(servfail_for(query) if chase is None else chase.response)
            return
        started = time.perf_counter()
        qtype = self.responder.qtype
        asked = self.responder.forwarded

        async def run() -> None:
            try:
                if chase is not None:
                    answer = await follow(
                        self.forwarder,
                        chase.response,
                        chase.target,
                        chase.qtype,
                        ttl=self.config.ttl,
                        limit=chase.limit,
                        qlen=chase.qlen,
                        edns=chase.edns,
                        fallback=chase.fallback,
                    )
                else:
                    answer = await self.forwarder.forward(query, udp=udp)
            except Exception:
                log.exception("forwarding failed")
                answer = None
            if answer is None:
                answer = servfail_for(query)
            if answer is not None and chase is None:  # a chased answer is counted already
                self.responder.count(answer[3] & 0xF)
                self.responder.names.add(asked, answer[3] & 0xF, 1)
            self.stats.record(self.stats.counter("udp" if udp else "tcp", family), qtype, started)
            reply(answer)

        self._spawn(run())

    def transfer(self, query: bytes, client: str) -> list[bytes]:
        """The messages of a zone transfer (REFUSED unless `client` is in --transfer-to)."""
        return transfer(self.engine, query, client, self.transfer_networks)

    # -- control ---------------------------------------------------------------------------

    def reload(self) -> None:
        """Reload the zones/ files now (SIGHUP)."""
        if self.file_source is not None:
            log.info("SIGHUP: reloading zones")
            self.file_source.reload()

    def request_stop(self, immediate: bool = False) -> None:
        """Stop: after the lame-duck period, or at once (SIGINT, or a second signal)."""
        self._immediate = self._immediate or immediate or self._stop.is_set()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def ready(self) -> bool:
        """What /ready says: serving, synced and not shutting down."""
        if self.pool is not None and not self.pool.ready_count:
            return False
        return self.serving and self.synced and not self._stop.is_set()

    async def shutdown(self) -> None:
        self.serving = False
        if self.pool is not None:
            await self.pool.stop()
        if self._status is not None:
            # The last counts, so the main process's totals lose nothing at a restart.
            stats = self.worker_stats()
            await self._add_tallies(stats)
            self._report("stats", stats)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for close in reversed(self._closers):
            try:
                close()
            except Exception:
                log.exception("error while shutting down")
        for conn in list(self.transports.connections):
            if conn.transport is not None:
                conn.transport.close()

    async def serve(self) -> None:
        """Start, run until SIGINT/SIGTERM (or `request_stop()`), then stop cleanly."""
        loop = asyncio.get_running_loop()
        # A serving process ignores signals (`worker.py`): a terminal's Ctrl-C, or systemd's
        # SIGTERM, reaches every process of the group, and the main process decides for all.
        if self.inherited is None:
            loop.add_signal_handler(signal.SIGINT, self.request_stop, True)
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        started = False
        try:
            await self.startup()
            started = True
            await self._stop.wait()
            if not self._immediate and self.config.lameduck > 0:
                log.info("lame duck: not ready, still answering for %.1fs", self.config.lameduck)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._interrupted(), self.config.lameduck)
        finally:
            await self.shutdown()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if started:
                log.info("stopped")

    async def _interrupted(self) -> None:
        # A second signal during the lame-duck period ends it.
        while not self._immediate:
            await asyncio.sleep(0.05)


def _batched(config: Config) -> bool:
    """Whether UDP is answered in batches (`batch.py`): asked for (the default), possible here,
    and nothing on that path needs what only the datagram protocol does (a client's address as a
    string for every query: the rate limiter, the ACL, the query log, autopath)."""
    if not config.udp_batch or config.rrl or config.log_queries or config.autopath:
        return False
    if config.allow_query:
        return False
    return available()


def _runtime(loop: asyncio.AbstractEventLoop, config: Config) -> str:
    """One line on what decides the cost of a query: the event loop and the UDP path."""
    module = type(loop).__module__.split(".")[0]
    if module == "uvloop":
        from importlib.metadata import version

        where = f"event loop: uvloop {version('uvloop')}"
    else:
        where = "event loop: asyncio (uvloop is not installed: about 5x the CPU per query)"
    slow = [
        flag for flag, on in (("--rrl", config.rrl), ("--log-queries", config.log_queries)) if on
    ]
    path = f"off ({' and '.join(slow)})" if slow else "on"
    batches = "on" if _batched(config) else "off"
    return f"{where}; UDP fast path {path}; UDP batches (recvmmsg/sendmmsg) {batches}"


def run(
    config: Config, inherited: Inherited | None = None, stores: Sequence[Store] | None = None
) -> None:
    """Run a server until it is told to stop (uvloop when installed)."""
    server = DnsServer(config, inherited, stores)
    try:
        import uvloop
    except ImportError:
        asyncio.run(server.serve())
    else:
        uvloop.run(server.serve())
