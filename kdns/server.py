"""Sockets and lifecycle: UDP and TCP listeners, the health endpoint, signals, shutdown.

The life of a server, as in uvicorn: `startup()` binds every socket first (so a port in use fails
at once, with one clear line), loads the sources, waits up to `startup_timeout` for them to sync,
and only then starts reading queries (packets that arrived meanwhile wait in the kernel's
buffers); `serve()` runs until SIGINT or SIGTERM; `shutdown()` closes listeners and stops the
sources. Everything that touches the store runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import struct
import time
from collections.abc import Callable

from .answers import Cluster, Engine
from .config import Config, ConfigError
from .responder import Responder
from .store import LoopSink, Store

log = logging.getLogger(__name__)

FILES_LAYER = "files"
CLUSTER_LAYER = "cluster"


class UdpProtocol(asyncio.DatagramProtocol):
    """Answers each datagram as it arrives; never raises into the loop."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            response = self.responder.respond(data, udp=True)
        except Exception:
            log.exception("failed to answer a query from %s", addr[0])
            return
        if response is not None and self.transport is not None:
            self.transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: nothing to do.
        log.debug("udp error: %s", exc)


class TcpProtocol(asyncio.Protocol):
    """Length-prefixed messages (RFC 1035 4.2.2, RFC 7766); several queries per connection.

    A connection that completes no message within the idle timeout is closed, which also drops a
    client that sends half a length prefix and stalls.
    """

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server.connections) >= self.server.config.tcp_max_connections:
            transport.close()
            return
        self.server.connections.add(self)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.server.config.tcp_idle_timeout, self._idle)

    def _idle(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        done = False
        while len(self.buffer) >= 2:
            (size,) = struct.unpack_from("!H", self.buffer)
            if len(self.buffer) < 2 + size:
                break
            message = bytes(self.buffer[2 : 2 + size])
            del self.buffer[: 2 + size]
            done = True
            try:
                response = self.server.responder.respond(message, udp=False)
            except Exception:
                log.exception("failed to answer a TCP query")
                response = None
            if response is None:
                # Undecodable on a stream: the framing can no longer be trusted.
                if self.transport is not None:
                    self.transport.close()
                return
            if self.transport is not None:
                self.transport.write(struct.pack("!H", len(response)) + response)
        if done:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.server.connections.discard(self)


def _bind(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
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
        ns_addresses = [h for h, _ in config.listen if h not in ("0.0.0.0", "::")]
        self.engine = Engine(
            [Cluster(config.domain, self.store)],
            ttl=config.ttl,
            pods=config.pods,
            ns_addresses=ns_addresses,
        )
        self.responder = Responder(
            self.engine, max_udp=config.max_udp, cache_size=config.cache_size
        )
        self.connections: set[TcpProtocol] = set()
        self.serving = False
        self.addresses: list[tuple[str, int]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: list[Callable[[], object]] = []
        self._file_source: object | None = None
        self._cluster_source: object | None = None

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
        await self._start_sources(loop)
        if self.config.http is not None:
            from .http import start_http

            http = await start_http(self, *self.config.http)
            self._closers.append(http.close)
            for sock in http.sockets:
                host, port = sock.getsockname()[:2]
                log.info("http on %s port %d (/health, /ready)", host, port)
        await self._wait_synced()
        for udp, tcp in sockets:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: UdpProtocol(self.responder), sock=udp
            )
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
        client = None
        if cfg.uses_cluster:
            from .cluster import load_api_client

            # Before anything starts, so a bad kubeconfig is the only thing the user sees.
            client = load_api_client(cfg.kubeconfig, cfg.context, cfg.in_cluster)
        # The files layer first: it wins over the cluster for a name both define.
        self.store.add_layer(FILES_LAYER, implicit_namespaces=True)
        files = FileSource(
            self.store, FILES_LAYER, cfg.zones, cfg.service_cidr, poll_interval=cfg.poll_interval
        )
        files.load()
        self._file_source = files
        self._tasks.append(asyncio.create_task(files.watch()))
        if client is not None:
            from .cluster import ClusterSource

            self.store.add_layer(CLUSTER_LAYER)
            source = ClusterSource(
                LoopSink(self.store, loop),
                CLUSTER_LAYER,
                client,
                namespaces=cfg.namespaces or None,
                label_selector=cfg.label_selector,
            )
            source.start()
            self._cluster_source = source
            self._closers.append(source.stop)

    async def _wait_synced(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout
        while not self.store.synced and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if not self.store.synced:
            log.warning(
                "sources not synced after %.1fs; answering anyway (SERVFAIL for unknown names)",
                self.config.startup_timeout,
            )

    def reload(self) -> None:
        """Reload the zones/ files now (SIGHUP)."""
        reload = getattr(self._file_source, "reload", None)
        if reload is not None:
            reload()

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def shutdown(self) -> None:
        self.serving = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
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
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.startup()
            await self._stop.wait()
        finally:
            await self.shutdown()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)


def run(config: Config) -> None:
    """Run a server until it is told to stop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(DnsServer(config).serve())
    else:
        uvloop.run(DnsServer(config).serve())
