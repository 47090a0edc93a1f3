"""The server's lifecycle: startup, serving, reload, lame duck, shutdown.

As in uvicorn: `startup()` binds every socket first (so a port in use fails at once, with one
clear line), loads the sources, waits up to `startup_timeout` for them to sync, and only then
starts reading queries (packets that arrived meanwhile wait in the kernel's buffers). `serve()`
runs until SIGINT or SIGTERM. SIGTERM first reports not ready and keeps answering for the
lame-duck period, so that endpoints and kube-proxy stop sending traffic before the sockets close;
SIGINT (a person at a terminal) stops at once. SIGHUP reloads the zones directories.

Everything that touches the store runs on the event loop thread; sources in threads hand their
writes over through `LoopSink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from .answers import Cluster, Engine
from .config import Config, ConfigError
from .metrics import KdnsCollector, LatencyHistogram, store_listener
from .ratelimit import RateLimiter
from .responder import Responder
from .stats import QueryCounters
from .store import LoopSink, Store
from .transfer import parse_networks, transfer
from .transport import MAX_FORWARDS, TcpProtocol, UdpProtocol
from .wire import servfail_for

log = logging.getLogger(__name__)

#: Bytes of receive buffer asked for on each UDP socket.
UDP_RECEIVE_BUFFER = 4 << 20
FILES_LAYER = "files"
CLUSTER_LAYER = "cluster"


def _bind(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
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


class DnsServer:
    """A kdns server built from a `Config`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(serial_base=int(time.time()))
        # --cluster CONTEXT=ZONE: one more store, and zone, per further cluster.
        self.extra = [(ctx, Store(serial_base=int(time.time()))) for ctx, _ in config.clusters]
        zones = [Cluster(config.domain, self.store)]
        zones += [
            Cluster(zone, store)
            for (_, zone), (_, store) in zip(config.clusters, self.extra, strict=True)
        ]
        if len({c.domain for c in zones}) != len(zones):
            raise ConfigError("every --cluster needs a zone of its own, other than --domain")
        self.stores = [c.store for c in zones]
        ns_addresses = [h for h, _ in config.listen if h not in ("0.0.0.0", "::")]
        self.engine = Engine(
            zones,
            ttl=config.ttl,
            pods=config.pods,
            ns_addresses=ns_addresses,
        )
        self.forwarder: Any = None
        self.responder = Responder(
            self.engine,
            max_udp=config.max_udp,
            cache_size=config.cache_size,
            forwarding=bool(config.upstreams),
        )
        self.stats = QueryCounters()
        self.programming = LatencyHistogram()
        for store in self.stores:
            store.subscribe(store_listener(self.programming))
        listen_host, listen_port = config.listen[0]
        self.metrics = KdnsCollector(
            self.stats,
            self.responder,
            server=f"dns://{listen_host}:{listen_port}",
            zone=config.domain + ".",
            programming=self.programming,
        )
        self.limiter = RateLimiter(config.rrl) if config.rrl else None
        try:
            self.transfer_networks = parse_networks(config.transfer_to)
        except ValueError as err:
            raise ConfigError(f"bad --transfer-to: {err}") from None
        self.sources: list[Any] = []
        #: open TCP connections, least recently active first
        self.connections: dict[TcpProtocol, None] = {}
        self.evicted_connections = 0
        self.serving = False
        self.addresses: list[tuple[str, int]] = []
        self._stop = asyncio.Event()
        self._immediate = False
        self._forwards = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closers: list[Callable[[], object]] = []
        self._file_source: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        sockets: list[tuple[socket.socket, socket.socket]] = []
        try:
            for host, port in self.config.listen:
                tcp = _bind(host, port, socket.SOCK_STREAM)
                # Port 0: let TCP pick, then take the same number for UDP.
                port = tcp.getsockname()[1]
                udp = _bind(host, port, socket.SOCK_DGRAM)
                sockets.append((udp, tcp))
                self.addresses.append((host, port))
        except ConfigError:
            for pair in sockets:
                for s in pair:
                    s.close()
            raise
        if self.config.upstreams:
            from .forward import Forwarder

            self.forwarder = Forwarder(self.config.upstreams, own=self.addresses)
            self.metrics.forward = self.forwarder
        await self._start_sources(loop)
        if self.config.http is not None:
            from .http import start_http

            http = await start_http(self, *self.config.http)
            self._closers.append(http.close)
            for sock in http.sockets:
                host, port = sock.getsockname()[:2]
                log.info("http on %s port %d (/health, /ready, /metrics)", host, port)
        await self._wait_synced()
        # What is loaded now lives as long as the server: take it out of the cyclic collector's
        # view, so full collections (which at 100,000 endpoints took 100-300 ms, freeing
        # nothing) only walk what changed since. And collect far less often: kdns makes almost
        # no reference cycles, while a relist allocates millions of short-lived containers
        # whose collections stalled queries (scale bench: relist stall 405 -> 291 ms, change
        # propagation p99 away from it 91 -> 17 ms; memory at the end unchanged).
        gc.freeze()
        gc.set_threshold(50_000, 1000, 1000)
        for udp, tcp in sockets:
            transport, _ = await loop.create_datagram_endpoint(lambda: UdpProtocol(self), sock=udp)
            self._closers.append(transport.close)
            tcp.listen(128)
            server = await loop.create_server(lambda: TcpProtocol(self), sock=tcp)
            self._closers.append(server.close)
        self.serving = True
        for host, port in self.addresses:
            log.info("serving %s on %s port %d (udp, tcp)", self.config.domain, host, port)

    async def _start_sources(self, loop: asyncio.AbstractEventLoop) -> None:
        from .files import FileSource

        cfg = self.config
        clients: list[tuple[Store, str, Any]] = []
        if cfg.uses_cluster or cfg.clusters:
            from .cluster import load_api_client

            # Before anything starts, so a bad kubeconfig is the only thing the user sees.
            if cfg.uses_cluster:
                client = load_api_client(cfg.kubeconfig, cfg.context, cfg.in_cluster)
                clients.append((self.store, CLUSTER_LAYER, client))
            for context, store in self.extra:
                client = load_api_client(cfg.kubeconfig, context, False)
                clients.append((store, f"{CLUSTER_LAYER}:{context}", client))
        # The files layer first: it wins over the cluster for a name both define.
        self.store.add_layer(FILES_LAYER, implicit_namespaces=True)
        files = FileSource(
            self.store,
            FILES_LAYER,
            cfg.zone_dirs(),
            cfg.service_cidr,
            poll_interval=cfg.poll_interval,
        )
        files.load()
        self._file_source = files
        self._spawn(files.watch())
        if clients:
            from .cluster import ClusterSource

            for store, layer, client in clients:
                store.add_layer(layer)
                source = ClusterSource(
                    LoopSink(store, loop),
                    layer,
                    client,
                    namespaces=cfg.namespaces or None,
                    label_selector=cfg.label_selector,
                )
                source.start()
                self.sources.append(source)
                self._closers.append(source.stop)
                self._closers.append(client.close)
            self.metrics.watch = self._watch_stats

    def _watch_stats(self) -> list[Any]:
        return [stat for source in self.sources for stat in source.stats()]

    @property
    def synced(self) -> bool:
        """Every source of every zone has loaded once."""
        return all(store.synced for store in self.stores)

    async def _wait_synced(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout
        while not self.synced and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if not self.synced:
            log.warning(
                "sources not synced after %.1fs; answering anyway (SERVFAIL for unknown names)",
                self.config.startup_timeout,
            )

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- what the transports ask for -------------------------------------------------------

    def forward(
        self, query: bytes, reply: Callable[[bytes | None], None], *, udp: bool, family: int = 4
    ) -> None:
        """Forward `query` upstream; `reply` gets the answer (SERVFAIL when none comes)."""
        if self.forwarder is None or self._forwards >= MAX_FORWARDS:
            reply(servfail_for(query))
            return
        self._forwards += 1
        started = time.perf_counter()
        qtype = self.responder.qtype

        async def run() -> None:
            try:
                answer = await self.forwarder.forward(query, udp=udp)
            except Exception:
                log.exception("forwarding failed")
                answer = None
            finally:
                self._forwards -= 1
            if answer is None:
                answer = servfail_for(query)
            if answer is not None:
                self.responder.count(answer[3] & 0xF)
            self.stats.record("udp" if udp else "tcp", family, qtype, started)
            reply(answer)

        self._spawn(run())

    def transfer(self, query: bytes, client: str) -> list[bytes]:
        """The messages of a zone transfer (REFUSED unless `client` is in --transfer-to)."""
        return transfer(self.engine, query, client, self.transfer_networks)

    # -- control ---------------------------------------------------------------------------

    def reload(self) -> None:
        """Reload the zones/ files now (SIGHUP)."""
        if self._file_source is not None:
            log.info("SIGHUP: reloading zones")
            self._file_source.reload()

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
        return self.serving and self.synced and not self._stop.is_set()

    async def shutdown(self) -> None:
        self.serving = False
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
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()

    async def serve(self) -> None:
        """Start, run until SIGINT/SIGTERM (or `request_stop()`), then stop cleanly."""
        loop = asyncio.get_running_loop()
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


def run(config: Config) -> None:
    """Run a server until it is told to stop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(DnsServer(config).serve())
    else:
        uvloop.run(DnsServer(config).serve())
