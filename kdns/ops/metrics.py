"""Prometheus metrics, named like CoreDNS's with `kdns_` for `coredns_`, exported at scrape time.

One job: turn the counters the server already keeps into the Prometheus text format. Design:

- **Nothing per query.** The query path keeps plain ints, dicts and lists: the request counters
  of `kdns.serve.stats.QueryCounters` (the `QueryStats` protocol) and the responder's rcode, hit and
  miss counters (`ResponseStats`); a `prometheus_client` metric object updated per query would
  cost a lock and several calls each time. This module reads those counters only when
  Prometheus scrapes, through a custom collector that yields `CounterMetricFamily`,
  `GaugeMetricFamily` and `HistogramMetricFamily`, on a private `CollectorRegistry` (the global
  one would add process metrics kdns did not ask for and break a second server in one process).
- **Histograms are read as cumulative counts**, one per bound, the `+Inf` bucket being the
  total count: that is what `QueryCounters.duration_buckets` gives, and what
  `LatencyHistogram.cumulative` gives for the programming latency. `LatencyHistogram` itself
  keeps per-bucket counts, so `observe()` is one `bisect` and three additions; the sums are made
  at scrape time.
- **Names as in CoreDNS** so dashboards translate by replacing the prefix:
  `kdns_dns_requests_total{server,zone,proto,family,type}`, `kdns_dns_responses_total
  {server,zone,rcode}`, `kdns_dns_request_duration_seconds{server,zone}`, `kdns_cache_entries`,
  `kdns_cache_hits_total`, `kdns_cache_misses_total`, `kdns_kubernetes_dns_programming_duration_
  seconds` (from the moment kdns received an API event to the moment the store applied it, the
  point from which queries see it; CoreDNS measures from the EndpointSlice's trigger time
  annotation instead, which kdns does not keep), `kdns_build_info{version,python}`; query types
  outside CoreDNS's list are counted as `type="other"`, as CoreDNS does, to bound cardinality.
  `family` is "1" (IPv4) or "2" (IPv6) when the request keys carry the listener's family,
  `(proto, family, qtype)`; with `(proto, qtype)` keys it is empty, which Prometheus reads as
  no label. Plus what CoreDNS has no equivalent for: per-kind watch counters from
  `ReflectorStats` (`kdns_kubernetes_watch_events_total{kind,type}`,
  `kdns_kubernetes_relists_total{kind}`, `kdns_kubernetes_errors_total{kind}`,
  `kdns_kubernetes_synced{kind}`, `kdns_kubernetes_objects{kind}`), per cluster zone how long
  its API has not answered (`kdns_kubernetes_api_unreachable_seconds{zone}`), and the forwarder's
  (`kdns_forward_*`, as CoreDNS's `forward` plugin names them, labelled `to`), and with
  `--allow-query` the queries it turned away, `kdns_acl_refused_total{proto}` and
  `kdns_acl_dropped_total{proto}` (proto "udp", "tcp", or "http" for /explain; CoreDNS's `acl`
  counts `coredns_acl_blocked_requests_total` per server and zone instead).
- The collector is read on the event loop thread (the HTTP handler runs there), so it sees the
  counters between two queries; the watch statistics come from `ClusterSource.stats()`, which
  returns copies, so a scrape never reads a reflector's counters half-updated by its thread.
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from kdns import __version__
from kdns.serve.stats import DURATION_BOUNDS

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BOUNDS",
    "PROGRAMMING_BOUNDS",
    "AclStats",
    "ForwardStats",
    "HistogramSource",
    "KdnsCollector",
    "LatencyHistogram",
    "QueryStats",
    "ResponseStats",
    "WatchStats",
    "render_metrics",
    "store_listener",
]

#: Upper bounds of the programming-latency buckets: 1 ms doubling to 524 s, as CoreDNS's.
PROGRAMMING_BOUNDS = tuple(0.001 * 2**i for i in range(20))
#: The Content-Type of `render_metrics()`'s output.
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Query types CoreDNS counts by name; every other type is "other".
MONITORED_TYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    35: "NAPTR",
    43: "DS",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    50: "NSEC3",
    64: "SVCB",
    65: "HTTPS",
    251: "IXFR",
    252: "AXFR",
    255: "ANY",
}
RCODE_NAMES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    16: "BADVERS",
}


class QueryStats(Protocol):
    """Request counters (`kdns.serve.stats.QueryCounters`), read at scrape time."""

    @property
    def requests(self) -> Mapping[tuple[str, int], int] | Mapping[tuple[str, int, int], int]:
        """(proto "udp"/"tcp", qtype) -> requests; or (proto, family 4/6, qtype) -> requests."""

    @property
    def duration_buckets(self) -> Sequence[int]:
        """Cumulative counts, one per bound of `DURATION_BOUNDS` (+Inf is `duration_count`)."""

    @property
    def duration_sum(self) -> float:
        """Seconds spent answering, in all."""

    @property
    def duration_count(self) -> int:
        """Requests timed."""


class ResponseStats(Protocol):
    """Response counters (`kdns.serve.responder.Responder`), read at scrape time."""

    @property
    def rcodes(self) -> Mapping[int, int]:
        """rcode -> responses sent."""

    @property
    def hits(self) -> int:
        """Responses served from the response cache."""

    @property
    def misses(self) -> int:
        """Responses the engine had to compute."""

    def __len__(self) -> int:
        """Responses in the cache now."""


class HistogramSource(Protocol):
    """A histogram read as cumulative counts: `LatencyHistogram`, or anything shaped like it."""

    @property
    def bounds(self) -> Sequence[float]: ...

    @property
    def cumulative(self) -> Sequence[int]:
        """One count per bound: observations at or below it."""

    @property
    def sum(self) -> float: ...

    @property
    def count(self) -> int: ...


class WatchStats(Protocol):
    """One watch's counters: `kdns.sources.reflector.ReflectorStats` (not imported: it pulls in the
    Kubernetes client, which a files-only server never loads)."""

    @property
    def kind(self) -> str: ...

    @property
    def events(self) -> Mapping[str, int]: ...

    @property
    def lists(self) -> int: ...

    @property
    def relists(self) -> int: ...

    @property
    def errors(self) -> int: ...

    @property
    def objects(self) -> int: ...


class UpstreamStats(Protocol):
    """One upstream of the forwarder (`kdns.ops.forward.Upstream`); `str()` gives its address."""

    @property
    def requests(self) -> int: ...

    @property
    def failures(self) -> int: ...

    @property
    def responses(self) -> Mapping[int, int]: ...

    @property
    def looping(self) -> bool: ...


class ForwardStats(Protocol):
    """The forwarder's counters (`kdns.ops.forward.Forwarder`)."""

    @property
    def hits(self) -> int: ...

    @property
    def misses(self) -> int: ...

    @property
    def cache_entries(self) -> int: ...

    @property
    def upstreams(self) -> Sequence[UpstreamStats]: ...


class AclStats(Protocol):
    """The `--allow-query` counters (`kdns.serve.acl.QueryAcl`), by proto."""

    @property
    def refused(self) -> Mapping[str, int]: ...

    @property
    def dropped(self) -> Mapping[str, int]: ...


class LatencyHistogram:
    """A histogram that costs one bisect and three additions per observation."""

    __slots__ = ("_counts", "bounds", "count", "sum")

    def __init__(self, bounds: Sequence[float] = PROGRAMMING_BOUNDS) -> None:
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError("bounds must be a non-empty increasing sequence")
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    @property
    def cumulative(self) -> list[int]:
        """Observations at or below each bound (Prometheus's `le` buckets without +Inf)."""
        out, total = [], 0
        for n in self._counts[:-1]:
            total += n
            out.append(total)
        return out


def store_listener(
    histogram: LatencyHistogram, clock: Callable[[], float] = time.monotonic
) -> Callable[[int, float | None], None]:
    """A `Store.subscribe()` listener observing, per change, the time since its API event."""

    def listener(generation: int, received_at: float | None) -> None:
        if received_at is not None:
            histogram.observe(max(0.0, clock() - received_at))

    return listener


def _buckets(
    bounds: Sequence[float], cumulative: Sequence[int], count: int
) -> list[tuple[str, float]]:
    out = [(_le(bound), float(n)) for bound, n in zip(bounds, cumulative, strict=True)]
    out.append(("+Inf", float(count)))
    return out


#: What `kdns_kubernetes_api_unreachable_seconds` shows while unreachable, at least.
_TICK = 0.001


def _le(bound: float) -> str:
    return repr(float(bound))


class KdnsCollector:
    """Reads kdns's counters when Prometheus scrapes (a `prometheus_client` Collector)."""

    def __init__(
        self,
        queries: QueryStats,
        responses: ResponseStats,
        *,
        server: str = "dns://:1053",
        zone: str = ".",
        watch: Callable[[], Iterable[WatchStats]] | None = None,
        programming: HistogramSource | None = None,
        forward: ForwardStats | None = None,
        workers: Callable[[], tuple[int, int, int, Mapping[int, int]]] | None = None,
        acl: AclStats | None = None,
        unreachable: Callable[[], Iterable[tuple[str, float | None]]] | None = None,
        version: str = __version__,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queries = queries
        self.responses = responses
        self.server = server
        self.zone = zone
        self.watch = watch
        self.programming = programming
        self.forward = forward
        #: with --workers: (serving processes answering, restarts so far, renewals so far,
        #: requests answered by each running serving process)
        self.workers = workers
        self.acl = acl
        #: (zone, wall-clock time its cluster's API stopped answering, or None) of each cluster
        #: source: what makes answers carry the Stale Answer EDE, for an alert to read.
        self.unreachable = unreachable
        self.version = version
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        yield from self._dns()
        if self.programming is not None:
            yield self._programming(self.programming)
        if self.watch is not None:
            yield from self._watch(list(self.watch()))
        if self.unreachable is not None:
            yield self._unreachable(self.unreachable())
        if self.forward is not None:
            yield from self._forward(self.forward)
        if self.workers is not None:
            ready, restarts, renewals, answered = self.workers()
            yield GaugeMetricFamily(
                "kdns_workers_ready", "Serving processes answering (--workers).", value=ready
            )
            per_worker = CounterMetricFamily(
                "kdns_worker_requests",
                "Requests answered by each running serving process (it restarts from 0).",
                labels=["worker"],
            )
            for index, n in sorted(answered.items()):
                per_worker.add_metric([str(index)], n)
            yield per_worker
            yield CounterMetricFamily(
                "kdns_worker_restarts", "Serving processes started again after exiting.",
                value=restarts,
            )  # fmt: skip
            yield CounterMetricFamily(
                "kdns_worker_renewals",
                "Serving processes forked again to share data rewritten since their fork "
                "(--worker-renew).",
                value=renewals,
            )
        if self.acl is not None:
            yield from self._acl(self.acl)
        info = GaugeMetricFamily(
            "kdns_build_info", "A metric with a constant '1' value.", labels=["version", "python"]
        )
        info.add_metric([self.version, platform.python_version()], 1)
        yield info

    # -- queries ------------------------------------------------------------------------------

    def _dns(self) -> Iterator[Metric]:
        q = self.queries
        base = [self.server, self.zone]
        requests = CounterMetricFamily(
            "kdns_dns_requests",
            "Counter of DNS requests made per zone, protocol and family.",
            labels=["server", "zone", "proto", "family", "type"],
        )
        merged: dict[tuple[str, str, str], int] = {}
        for key, n in list(q.requests.items()):
            proto, family, qtype = str(key[0]), "", int(key[-1])
            if len(key) == 3:
                family = {4: "1", 6: "2"}.get(int(key[1]), "")
            label = (proto, family, MONITORED_TYPES.get(qtype, "other"))
            merged[label] = merged.get(label, 0) + n
        for (proto, family, tname), n in sorted(merged.items()):
            requests.add_metric([*base, proto, family, tname], n)
        yield requests
        responses = CounterMetricFamily(
            "kdns_dns_responses",
            "Counter of response status codes.",
            labels=["server", "zone", "rcode"],
        )
        r = self.responses
        for rcode, n in sorted(list(r.rcodes.items())):
            responses.add_metric([*base, RCODE_NAMES.get(rcode, str(rcode))], n)
        yield responses
        duration = HistogramMetricFamily(
            "kdns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took.",
            labels=["server", "zone"],
        )
        buckets = _buckets(DURATION_BOUNDS, list(q.duration_buckets), q.duration_count)
        duration.add_metric(base, buckets, float(q.duration_sum))
        yield duration
        entries = GaugeMetricFamily(
            "kdns_cache_entries", "The number of responses in the cache.", labels=["server"]
        )
        entries.add_metric([self.server], len(r))
        yield entries
        hits = CounterMetricFamily("kdns_cache_hits", "The count of cache hits.", labels=["server"])
        hits.add_metric([self.server], r.hits)
        yield hits
        misses = CounterMetricFamily(
            "kdns_cache_misses", "The count of cache misses.", labels=["server"]
        )
        misses.add_metric([self.server], r.misses)
        yield misses

    @staticmethod
    def _programming(hist: HistogramSource) -> Metric:
        family = HistogramMetricFamily(
            "kdns_kubernetes_dns_programming_duration_seconds",
            "Histogram of the time (in seconds) from receiving a Kubernetes API event to "
            "answering from it.",
            labels=[],
        )
        family.add_metric([], _buckets(hist.bounds, list(hist.cumulative), hist.count), hist.sum)
        return family

    # -- watches ------------------------------------------------------------------------------

    def _unreachable(self, sources: Iterable[tuple[str, float | None]]) -> Metric:
        family = GaugeMetricFamily(
            "kdns_kubernetes_api_unreachable_seconds",
            "Seconds since the cluster's API stopped answering (answers from its last data "
            "then carry the Stale Answer EDE); 0 while it answers.",
            labels=["zone"],
        )
        now = self.clock()
        for zone, since in sources:
            # Never 0 while unreachable, even if the clock stepped back past `since`: 0 is the
            # value an alert takes for "answering from the API".
            family.add_metric([zone], 0.0 if since is None else max(_TICK, now - since))
        return family

    @staticmethod
    def _watch(stats: list[WatchStats]) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "kdns_kubernetes_watch_events",
            "Watch events applied, by kind and event type.",
            labels=["kind", "type"],
        )
        relists = CounterMetricFamily(
            "kdns_kubernetes_relists",
            "Lists after the first one (after 410 Expired, a broken or idle watch), by kind.",
            labels=["kind"],
        )
        errors = CounterMetricFamily(
            "kdns_kubernetes_errors",
            "Failed API requests and broken watch streams, by kind.",
            labels=["kind"],
        )
        synced = GaugeMetricFamily(
            "kdns_kubernetes_synced",
            "1 once every watch of the kind has completed its first list.",
            labels=["kind"],
        )
        objects = GaugeMetricFamily(
            "kdns_kubernetes_objects",
            "Objects of the kind kdns currently holds from the API.",
            labels=["kind"],
        )
        by_event: dict[tuple[str, str], int] = {}
        by_kind: dict[str, list[WatchStats]] = {}
        for s in stats:
            by_kind.setdefault(s.kind, []).append(s)
            for etype, n in s.events.items():
                by_event[(s.kind, etype)] = by_event.get((s.kind, etype), 0) + n
        for (kind, etype), n in sorted(by_event.items()):
            events.add_metric([kind, etype], n)
        for kind, group in sorted(by_kind.items()):
            relists.add_metric([kind], sum(s.relists for s in group))
            errors.add_metric([kind], sum(s.errors for s in group))
            synced.add_metric([kind], 1 if all(s.lists > 0 for s in group) else 0)
            objects.add_metric([kind], sum(s.objects for s in group))
        yield from (events, relists, errors, synced, objects)

    @staticmethod
    def _acl(acl: AclStats) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "kdns_acl_refused",
            "Queries from sources --allow-query leaves out, answered REFUSED (HTTP: 403).",
            labels=["proto"],
        )
        dropped = CounterMetricFamily(
            "kdns_acl_dropped",
            "Queries (TCP: connections) from sources --allow-query leaves out, not answered.",
            labels=["proto"],
        )
        for proto in ("udp", "tcp", "http"):
            refused.add_metric([proto], acl.refused.get(proto, 0))
        for proto in ("udp", "tcp"):  # /explain gets its 403 with --allow-query-drop too
            dropped.add_metric([proto], acl.dropped.get(proto, 0))
        yield from (refused, dropped)

    # -- forwarding ---------------------------------------------------------------------------

    @staticmethod
    def _forward(fwd: ForwardStats) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "kdns_forward_requests", "Queries sent to each upstream.", labels=["to"]
        )
        responses = CounterMetricFamily(
            "kdns_forward_responses",
            "Replies from each upstream, by rcode.",
            labels=["to", "rcode"],
        )
        failures = CounterMetricFamily(
            "kdns_forward_failures",
            "Timeouts, refused connections and unreadable replies, per upstream.",
            labels=["to"],
        )
        looping = GaugeMetricFamily(
            "kdns_forward_loop",
            "1 when the upstream sent kdns's own query back to it (it is then skipped).",
            labels=["to"],
        )
        for up in fwd.upstreams:
            to = str(up)
            requests.add_metric([to], up.requests)
            failures.add_metric([to], up.failures)
            looping.add_metric([to], 1 if up.looping else 0)
            for rcode, n in sorted(up.responses.items()):
                responses.add_metric([to, RCODE_NAMES.get(rcode, str(rcode))], n)
        hits = CounterMetricFamily("kdns_forward_cache_hits", "Forwarded answers from the cache.")
        hits.add_metric([], fwd.hits)
        misses = CounterMetricFamily(
            "kdns_forward_cache_misses", "Forwarded questions not in the cache."
        )
        misses.add_metric([], fwd.misses)
        entries = GaugeMetricFamily(
            "kdns_forward_cache_entries", "Forwarded answers in the cache.", value=fwd.cache_entries
        )
        yield from (requests, responses, failures, looping, hits, misses, entries)


def render_metrics(collector: KdnsCollector) -> bytes:
    """The text exposition format of everything `collector` reads (serve as `CONTENT_TYPE`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
