"""`--workers N`: the serving processes, seen from the main process that watches.

The main process binds the sockets, runs the sources and keeps the store; once synced, it forks N
serving processes (`worker.py`) that inherit the sockets, the stores as they are at the fork (their
memory shared with the main process until written), and two pipes. Through one each gets every
write after the fork (`publish.py`); through the other it reports when it serves and, every second,
its counters. The API server sees one watch however many cores answer. On Linux each process
has a UDP socket of its own and the kernel gives it the queries for its share of the names
(`steering.py`); elsewhere, or with `--no-steer`, the processes all read one socket.

A serving process that dies is forked again (after a growing delay when it dies young), from the
current data; the others keep answering meanwhile. When the main process dies, the pipes close
and the serving processes stop.
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
from dataclasses import dataclass, field, replace
from itertools import zip_longest
from typing import Any

from kdns.config import Config
from kdns.ops.forward import Upstream
from kdns.serve.acl import QueryAcl
from kdns.serve.frames import FrameReader, pack
from kdns.serve.stats import QueryCounters, Snapshot
from kdns.serve.tally import DIGEST_GAP, PageClock, Rows, merged
from kdns.serve.worker import run_forked
from kdns.state.store import Store

log = logging.getLogger(__name__)

#: Seconds between two counter reports of a serving process.
STATS_INTERVAL = 1.0
#: A serving process this far behind (bytes of writes it has not read) is restarted instead.
MAX_FEED_BACKLOG = 256 << 20
#: Seconds a serving process gets to start answering.
READY_TIMEOUT = 60.0
#: Seconds a serving process gets to stop before it is killed.
STOP_TIMEOUT = 5.0
#: A serving process that has said nothing (it reports every STATS_INTERVAL) for this long is
#: stuck (stopped, deadlocked, swapping): it is killed and started again.
SILENCE_TIMEOUT = 5.0
#: A serving process is forked again (`Config.worker_renew`) only once it has served this long,
#: and only once this many records at least were written since its fork: renewing costs a fork
#: and the answers it cached, and a small store costs little memory twice.
RENEW_MIN_AGE = 10.0
RENEW_MIN_RECORDS = 1000
#: ...and only once writes have calmed down: for RENEW_QUIET seconds, each second wrote fewer
#: records than this fraction of the stores' records. Under heavy churn a process forked again
#: would be rewritten again at once, and lose its cache for nothing; after a relist or a burst
#: of changes, the writes stop and every serving process is forked again, one a second.
RENEW_QUIET = 5.0
RENEW_QUIET_SHARE = 0.01


@dataclass(slots=True)
class WorkerStats:
    """The counters of one serving process, as it last reported them."""

    queries: Snapshot
    rcodes: dict[int, int]
    hits: int
    misses: int
    entries: int
    #: upstream address -> (requests, failures, replies by rcode, looping)
    upstreams: dict[str, tuple[int, int, dict[int, int], bool]] = field(default_factory=dict)
    forward_hits: int = 0
    forward_misses: int = 0
    forward_entries: int = 0
    #: --allow-query: queries refused and dropped, by transport
    acl_refused: dict[str, int] = field(default_factory=dict)
    acl_dropped: dict[str, int] = field(default_factory=dict)
    #: For the page, in the reports made while it asks (`tally.digest_due`): answers by
    #: (name, rcode), and NXDOMAIN answers by client (None without --http-show-clients).
    names: Rows | None = None
    clients: dict[str, int] | None = None


@dataclass(slots=True)
class AclTotals:
    """`AclStats` summed over the serving processes and the main process (/explain)."""

    refused: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ResponseTotals:
    """`ResponseStats` summed over the serving processes."""

    rcodes: dict[int, int] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    entries: int = 0

    def __len__(self) -> int:
        return self.entries


@dataclass(slots=True)
class ForwardTotals:
    """`ForwardStats` summed over the serving processes."""

    upstreams: list[Upstream] = field(default_factory=list)
    hits: int = 0
    misses: int = 0
    cache_entries: int = 0


class _Child:
    """A forked serving process, with the parts of `subprocess.Popen` the pool uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped already
                self.returncode = -1
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


@dataclass(slots=True)
class _Worker:
    index: int
    proc: _Child
    started: float
    #: frames written before the pipe's transport was ready, in order
    pending: list[bytes] | None = field(default_factory=list)
    feed: asyncio.WriteTransport | None = None
    ready: bool = False
    stats: WorkerStats | None = None
    #: time.monotonic() of its last frame
    heard: float = 0.0
    #: its last digests for the page (see WorkerStats), and time.monotonic() when they came
    names: Rows = field(default_factory=dict)
    clients: dict[str, int] = field(default_factory=dict)
    names_at: float = -math.inf
    #: told to stop by `renew()`: forked again at once, not counted as a failure
    renewing: bool = False
    #: `WorkerPool.written` and the stores' records (`Store.records`) when it was forked
    written_at_fork: int = 0
    records_at_fork: int = 0


class _StatusProtocol(asyncio.Protocol):
    def __init__(self, pool: WorkerPool, worker: _Worker) -> None:
        self.pool = pool
        self.worker = worker
        self.reader = FrameReader()

    def data_received(self, data: bytes) -> None:
        self.worker.heard = time.monotonic()
        self.reader.feed(data)
        while (message := self.reader.next()) is not None:
            if message[0] == "ready":
                self.worker.ready = True
                self.pool.steer()
            elif message[0] == "stats":
                stats = self.worker.stats = message[1]
                if stats.names is not None:
                    self.worker.names = stats.names
                    self.worker.clients = stats.clients or {}
                    self.worker.names_at = self.worker.heard

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.exited(self.worker)


class WorkerPool:
    """N serving processes fed from `stores`, answering on the inherited `sockets`."""

    def __init__(
        self,
        count: int,
        config: Config,
        stores: Sequence[Store],
        sockets: Sequence[Sequence[socket.socket]],
        busy: Callable[[], bool] = lambda: False,
        steer: Callable[[frozenset[int]], None] | None = None,
    ) -> None:
        """`sockets[i]`: what serving process i inherits, (udp, tcp) for each listen address.
        The main process keeps them open: a process forked again takes up its sockets with
        the queries that waited in them. `busy`: whether the main process still has work of
        its own to do after the writes (the change journal's backlog): it rewrites memory.
        `steer`: told the indexes of the serving processes not answering (gone, starting)
        whenever they change, so that their names go to the others (`steering.py`)."""
        self.count = count
        # The main process handles the lame-duck period; serving processes stop when told. A
        # client's queries spread over the processes, so each limits it to its share of --rrl.
        self.config = replace(config, workers=0, lameduck=0.0, http=None, rrl=config.rrl / count)
        self.stores = stores
        self.sockets = sockets
        self.restarts = 0
        self.stopping = False
        self._workers: dict[int, _Worker] = {}
        self._retired = WorkerStats(({}, [], 0.0), {}, 0, 0, 0)
        #: the page's digests of the serving processes that exited
        self._retired_names: Rows = {}
        self._retired_clients: dict[str, int] = {}
        #: when the page last asked for the digests: the serving processes sum their tables
        #: only then (`kdns.serve.tally.PageClock`)
        self.page_clock = PageClock()
        self._failures: dict[int, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Records written to the stores since the start: `record_count` of each upsert, 1 for
        #: each delete.
        self.written = 0
        #: Serving processes forked again because the data they shared had been rewritten.
        self.renewals = 0
        self._renewing: asyncio.Task[Any] | None = None
        #: `written` at the last look, and since when each second's writes were few
        self._written_seen = 0
        self._quiet_since = time.monotonic()
        self._busy = busy
        self._steer = steer
        self._down: frozenset[int] = frozenset()

    # -- what the publisher sees ----------------------------------------------------------------

    def __bool__(self) -> bool:
        return bool(self._workers)

    def send(self, frame: bytes, records: int = 0) -> None:
        """Send one write, of `records` records, to every serving process."""
        self.written += records
        for worker in list(self._workers.values()):
            if worker.feed is None:
                assert worker.pending is not None
                worker.pending.append(frame)
                continue
            if worker.feed.is_closing():
                continue  # it exited: `exited()` is about to run
            worker.feed.write(frame)
            if worker.feed.get_write_buffer_size() > MAX_FEED_BACKLOG:
                log.error(
                    "worker %d: %d MB of updates unread; restarting it",
                    worker.index,
                    MAX_FEED_BACKLOG >> 20,
                )
                self._kill(worker)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, stop: asyncio.Event) -> None:
        """Start every serving process; return once all answer, READY_TIMEOUT passed or `stop`."""
        for index in range(self.count):
            self._spawn(index)
        self._spawn_task(self._watchdog())
        deadline = time.monotonic() + READY_TIMEOUT
        while self.ready_count < self.count and time.monotonic() < deadline:
            if stop.is_set():
                return
            await asyncio.sleep(0.02)
        if self.ready_count < self.count:
            log.warning("%d of %d workers serving after %.0fs", self.ready_count, self.count,
                        READY_TIMEOUT)  # fmt: skip

    async def _watchdog(self) -> None:
        last = time.monotonic()
        while not self.stopping:
            await asyncio.sleep(1.0)
            now, late = time.monotonic(), time.monotonic() - last > 2.0
            last = now
            if late:
                # This process was busy: what the pipes hold may not have been read yet (uvloop
                # runs timers before it polls), so silence now proves nothing.
                continue
            self._renew_rewritten(now)
            for worker in list(self._workers.values()):
                if worker.ready and now - worker.heard > SILENCE_TIMEOUT:
                    why = f"silent for {now - worker.heard:.0f}s"
                elif not worker.ready and now - worker.started > READY_TIMEOUT:
                    why = f"not serving after {READY_TIMEOUT:.0f}s"
                else:
                    continue
                log.error("worker %d (pid %d) %s; killing it", worker.index, worker.proc.pid, why)
                worker.ready = False
                self._kill(worker)

    async def renew(self) -> None:
        """Replace the serving processes one at a time by ones forked from the data as it is now.

        For serving processes forked before the sources had synced (`--startup-timeout`
        passed): they hold everything that came after as writes of their own, not shared with
        the main process or with each other. The others answer meanwhile; the queries of the
        one being replaced wait in its socket's buffer for the few milliseconds it takes.
        """
        for index in sorted(self._workers):
            worker = self._workers.get(index)
            if worker is not None and not self.stopping:
                await self._replace(worker)
        log.info("serving processes forked again from the synced data")

    async def _replace(self, worker: _Worker) -> None:
        """Stop `worker` and return once the process forked in its place answers."""
        worker.renewing = True
        if worker.feed is not None:
            worker.feed.write(pack(("stop",)))
        else:
            self._kill(worker)
        deadline = time.monotonic() + STOP_TIMEOUT + READY_TIMEOUT
        while not self.stopping and time.monotonic() < deadline:
            new = self._workers.get(worker.index)
            if new is not None and new is not worker and new.ready:
                break
            await asyncio.sleep(0.02)

    def _renew_rewritten(self, now: float) -> None:
        """Fork again, one at a time, each serving process whose data has mostly been rewritten
        since its fork (`Config.worker_renew`).

        Why: a process shares the main process's pages only until either writes to them, and
        both apply every change. Once changes (or a relist, which replaces every object) have
        rewritten the store, each serving process holds a copy of its own; forked again, it
        shares the main process's current one. Counted in records written (an endpoint is
        one), not in memory: what a process reads to answer also stops being shared (CPython
        writes a count into every object read), and forking again would not keep that."""
        share = self.config.worker_renew
        if not share or self.stopping:
            return
        records = max((w.records_at_fork for w in self._workers.values()), default=0)
        # Quiet also means the main process is done with the writes: what it allocates and
        # frees rewrites pages, and a page it rewrites after a fork stays, unshared, with the
        # serving process forked just before (seen: ~40 MB more in each process forked again
        # while the journal worked out a rewrite of 66,000 records, bench/renew_memory.py).
        written = self.written - self._written_seen
        if written >= RENEW_QUIET_SHARE * max(records, RENEW_MIN_RECORDS) or self._busy():
            self._quiet_since = now
        self._written_seen = self.written
        if now - self._quiet_since < RENEW_QUIET:
            return
        if self._renewing is not None and not self._renewing.done():
            return
        for worker in self._workers.values():
            if not worker.ready or now - worker.started < RENEW_MIN_AGE:
                continue
            rewritten = self.written - worker.written_at_fork
            if rewritten >= share * max(worker.records_at_fork, RENEW_MIN_RECORDS):
                log.info(
                    "worker %d: %d records written since it was forked, with %d; forking it "
                    "again to share the data as it is now",
                    worker.index,
                    rewritten,
                    worker.records_at_fork,
                )
                self.renewals += 1
                self._renewing = asyncio.get_running_loop().create_task(self._replace(worker))
                self._tasks.add(self._renewing)
                self._renewing.add_done_callback(self._tasks.discard)
                return

    @property
    def ready_count(self) -> int:
        """Serving processes answering: ready, and heard from lately."""
        now = time.monotonic()
        return sum(
            1 for w in self._workers.values() if w.ready and now - w.heard <= SILENCE_TIMEOUT
        )

    def status(self) -> tuple[int, int, int, dict[int, int]]:
        """(processes answering, restarts, renewals, requests answered by each), for the
        metrics."""
        answered = {
            w.index: sum(w.stats.queries[1]) for w in self._workers.values() if w.stats is not None
        }
        return self.ready_count, self.restarts, self.renewals, answered

    def _spawn(self, index: int) -> None:
        feed_r, feed_w = os.pipe()
        status_r, status_w = os.pipe()
        fds = [s.fileno() for s in self.sockets[index]]
        level = logging.getLogger().getEffectiveLevel()
        # Everything alive now moves out of the cyclic collector's reach, in this process and so
        # in the child: a collection would otherwise write to every object it walks, and each
        # page written is a page the two processes no longer share.
        gc.freeze()
        # Kept by the stores as writes land: counting reads nothing (CPython writes a reference
        # count into every object read, and each page written is a page no longer shared).
        records = sum(store.records() for store in self.stores)
        pid = os.fork()
        if pid == 0:  # the serving process: never returns
            run_forked(
                index, feed_r, status_w, fds, self.config, level, self.stores, self.page_clock
            )
        os.close(feed_r)
        os.close(status_w)
        worker = _Worker(index, _Child(pid), time.monotonic())
        worker.written_at_fork = self.written
        worker.records_at_fork = records
        # The fork and the subscription happen in this one callback: the child has every write
        # before it, and gets every write after it. Writes published meanwhile wait in `pending`.
        self._workers[index] = worker
        self._spawn_task(self._connect(worker, feed_w, status_r))
        log.info("worker %d: started, pid %d", index, pid)

    async def _connect(self, worker: _Worker, feed_w: int, status_r: int) -> None:
        loop = asyncio.get_running_loop()
        status = os.fdopen(status_r, "rb", buffering=0)
        feed = os.fdopen(feed_w, "wb", buffering=0)
        await loop.connect_read_pipe(lambda: _StatusProtocol(self, worker), status)
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, feed)
        # The stores came with the fork: "ready" says so, then the writes since.
        transport.write(pack(("ready",)))
        pending, worker.pending = worker.pending or [], None
        worker.feed = transport
        transport.writelines(pending)

    def steer(self) -> None:
        """Send the names of the serving processes not answering to the others, and give
        theirs back to those answering again (`steering.py`)."""
        if self._steer is None or self.stopping:
            return
        down = frozenset(
            i for i in range(self.count) if not (i in self._workers and self._workers[i].ready)
        )
        if down != self._down:
            self._down = down
            self._steer(down)

    def exited(self, worker: _Worker) -> None:
        """The status pipe of `worker` closed: it is gone, or going."""
        if self._workers.get(worker.index) is worker:
            del self._workers[worker.index]
            self.steer()
        if worker.stats is not None:
            _add(self._retired, worker.stats)
        self._retired_names = merged([self._retired_names, worker.names])
        self._retired_clients = merged([self._retired_clients, worker.clients])
        if worker.feed is not None:
            worker.feed.close()
        self._spawn_task(self._reap(worker))

    async def _reap(self, worker: _Worker) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT
        while worker.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(1.0)
        if self.stopping:
            return
        if worker.renewing:
            self._spawn(worker.index)
            return
        code = worker.proc.returncode
        how = f"signal {-code}" if code is not None and code < 0 else f"status {code}"
        lived = time.monotonic() - worker.started
        # Dying young again and again (a bug, memory): back off, up to 30 s, instead of spinning.
        failures = self._failures.get(worker.index, 0) + 1 if lived < 10 else 0
        self._failures[worker.index] = failures
        delay = min(30.0, 0.25 * 2**failures) if failures else 0.0
        log.error("worker %d (pid %d) exited with %s; restarting in %.1fs", worker.index,
                  worker.proc.pid, how, delay)  # fmt: skip
        await asyncio.sleep(delay)
        if not self.stopping and worker.index not in self._workers:
            self.restarts += 1
            self._spawn(worker.index)

    def _kill(self, worker: _Worker) -> None:
        worker.proc.kill()

    async def stop(self) -> None:
        """Stop every serving process ("stop" through the pipe, SIGKILL after STOP_TIMEOUT)."""
        self.stopping = True
        workers = list(self._workers.values())
        for worker in workers:
            if worker.feed is not None:
                worker.feed.write(pack(("stop",)))
            else:
                self._kill(worker)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(w.proc.poll() is None for w in workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for worker in workers:
            if worker.proc.poll() is None:
                log.error("worker %d did not stop in %.0fs; killing it", worker.index, STOP_TIMEOUT)
                self._kill(worker)
                worker.proc.wait(1.0)
            if worker.feed is not None:
                worker.feed.close()
        for task in list(self._tasks):
            task.cancel()

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- counters -------------------------------------------------------------------------------

    def acl_totals(self, own: QueryAcl) -> AclTotals:
        """The --allow-query counters of every serving process, plus `own` (the main process's)."""
        total = AclTotals(dict(own.refused), dict(own.dropped))
        for stats in [self._retired, *(w.stats for w in self._workers.values())]:
            if stats is not None:
                _merge(total.refused, stats.acl_refused)
                _merge(total.dropped, stats.acl_dropped)
        return total

    async def tallies(self) -> tuple[Rows, dict[str, int]]:
        """The page's digests (answers by name and rcode, NXDOMAIN answers by client) summed
        over every serving process, the ones that exited included.

        Asking is what makes the serving processes send them (`tally.digest_due`). A page
        that stays open asks every 5 s and reads the digests its last question brought. One just
        opened, or asking after a pause, finds none that recent: it waits for each answering
        process's next report (every STATS_INTERVAL), for at most SILENCE_TIMEOUT, after which a
        silent process is killed as stuck anyway; whatever came by then is summed."""
        asked = self.page_clock.ask()
        stale = asked - DIGEST_GAP - 2 * STATS_INTERVAL
        deadline = asked + SILENCE_TIMEOUT
        while time.monotonic() < deadline and any(
            w.ready and w.names_at < stale for w in self._workers.values()
        ):
            await asyncio.sleep(0.02)
        workers = list(self._workers.values())
        names = merged([self._retired_names, *(w.names for w in workers)])
        clients = merged([self._retired_clients, *(w.clients for w in workers)])
        return names, clients

    def totals(self) -> tuple[QueryCounters, ResponseTotals, ForwardTotals]:
        """Counters of every serving process, the ones that exited included."""
        total = WorkerStats(({}, [], 0.0), {}, 0, 0, 0)
        _add(total, self._retired)
        for worker in self._workers.values():
            if worker.stats is not None:
                _add(total, worker.stats)
        queries = QueryCounters()
        queries.add(total.queries)
        responses = ResponseTotals(total.rcodes, total.hits, total.misses, total.entries)
        upstreams = []
        for name, (requests, failures, replies, looping) in total.upstreams.items():
            host, _, port = name.rpartition(":")
            up = Upstream(host.strip("[]"), int(port), requests, failures, replies)
            up.looping = looping
            upstreams.append(up)
        forward = ForwardTotals(
            upstreams, total.forward_hits, total.forward_misses, total.forward_entries
        )
        return queries, responses, forward


def _add(into: WorkerStats, stats: WorkerStats) -> None:
    requests, buckets, dsum = into.queries
    more_requests, more_buckets, more_sum = stats.queries
    requests = dict(requests)
    for key, n in more_requests.items():
        requests[key] = requests.get(key, 0) + n
    summed = [a + b for a, b in zip_longest(buckets, more_buckets, fillvalue=0)]
    into.queries = (requests, summed, dsum + more_sum)
    for rcode, n in stats.rcodes.items():
        into.rcodes[rcode] = into.rcodes.get(rcode, 0) + n
    into.hits += stats.hits
    into.misses += stats.misses
    into.entries += stats.entries
    for name, (sent, failures, replies, looping) in stats.upstreams.items():
        sent0, failures0, replies0, looping0 = into.upstreams.get(name, (0, 0, {}, False))
        merged = dict(replies0)
        for rcode, n in replies.items():
            merged[rcode] = merged.get(rcode, 0) + n
        into.upstreams[name] = (sent0 + sent, failures0 + failures, merged, looping0 or looping)
    _merge(into.acl_refused, stats.acl_refused)
    _merge(into.acl_dropped, stats.acl_dropped)
    into.forward_hits += stats.forward_hits
    into.forward_misses += stats.forward_misses
    into.forward_entries += stats.forward_entries


def _merge(into: dict[str, int], counts: dict[str, int]) -> None:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n
