"""Metrics: known counter values in, the Prometheus text format out, parsed back and checked.

The stats objects are plain fakes filled with known values (as the server's counters would be);
the output is read with prometheus_client's own parser, so names, labels, types and values are
checked as Prometheus would see them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
from dnslib import DNSRecord
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from kdns import __version__
from kdns.ops.forward import Forwarder
from kdns.ops.metrics import (
    CONTENT_TYPE,
    DURATION_BOUNDS,
    ForwardStats,
    KdnsCollector,
    LatencyHistogram,
    QueryStats,
    ResponseStats,
    render_metrics,
    store_listener,
)
from kdns.serve.responder import Responder
from kdns.serve.stats import QueryCounters
from kdns.sources.reflector import ReflectorStats
from kdns.state.store import Store
from tests.builders import clusterip, make_engine, namespaces


@dataclass
class FakeQueries:
    """Shaped like kdns.serve.stats.QueryCounters."""

    requests: dict[tuple[str, int, int], int] = field(default_factory=dict)
    duration_buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BOUNDS))
    duration_sum: float = 0.0
    duration_count: int = 0


@dataclass
class FakeResponses:
    """Shaped like kdns.serve.responder.Responder."""

    rcodes: dict[int, int] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    entries: int = 0

    def __len__(self) -> int:
        return self.entries


def families(collector: KdnsCollector) -> dict[str, list[Sample]]:
    text = render_metrics(collector).decode()
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


def known_queries() -> FakeQueries:
    q = FakeQueries()
    q.requests = {
        ("udp", 4, 1): 10,  # A
        ("udp", 4, 28): 4,  # AAAA
        ("tcp", 6, 33): 2,  # SRV over IPv6
        ("udp", 4, 99): 1,  # SPF: not monitored -> other
        ("udp", 4, 257): 2,  # CAA: other too, merged
    }
    # cumulative: 7 at or below 0.25 ms, 2 more in (0.5 ms, 1 ms], 1 above every bound
    q.duration_buckets = [7, 7] + [9] * (len(DURATION_BOUNDS) - 2)
    q.duration_sum, q.duration_count = 9.5, 10
    return q


def known_responses() -> FakeResponses:
    return FakeResponses(rcodes={0: 12, 3: 5, 5: 2}, hits=15, misses=4, entries=3)


def test_dns_request_metrics() -> None:
    fams = families(KdnsCollector(known_queries(), known_responses(), server="dns://:53", zone="."))
    req = fams["kdns_dns_requests"]
    base = {"server": "dns://:53", "zone": "."}
    assert value(req, "kdns_dns_requests_total", **base, proto="udp", family="1", type="A") == 10
    assert value(req, "kdns_dns_requests_total", **base, proto="udp", family="1", type="AAAA") == 4
    assert value(req, "kdns_dns_requests_total", **base, proto="tcp", family="2", type="SRV") == 2
    assert value(req, "kdns_dns_requests_total", **base, proto="udp", family="1", type="other") == 3
    resp = fams["kdns_dns_responses"]
    assert value(resp, "kdns_dns_responses_total", **base, rcode="NOERROR") == 12
    assert value(resp, "kdns_dns_responses_total", **base, rcode="NXDOMAIN") == 5
    assert value(resp, "kdns_dns_responses_total", **base, rcode="REFUSED") == 2
    assert value(fams["kdns_cache_hits"], "kdns_cache_hits_total", server="dns://:53") == 15
    assert value(fams["kdns_cache_misses"], "kdns_cache_misses_total", server="dns://:53") == 4
    assert value(fams["kdns_cache_entries"], "kdns_cache_entries", server="dns://:53") == 3


def test_duration_histogram_is_cumulative() -> None:
    fams = families(KdnsCollector(known_queries(), known_responses(), server="s"))
    hist = fams["kdns_dns_request_duration_seconds"]
    name = "kdns_dns_request_duration_seconds"
    labels = {"server": "s", "zone": "."}
    assert value(hist, f"{name}_bucket", **labels, le="0.00025") == 7
    assert value(hist, f"{name}_bucket", **labels, le="0.0005") == 7
    assert value(hist, f"{name}_bucket", **labels, le="0.001") == 9
    assert value(hist, f"{name}_bucket", **labels, le="8.192") == 9
    assert value(hist, f"{name}_bucket", **labels, le="+Inf") == 10
    assert value(hist, f"{name}_count", **labels) == 10
    assert value(hist, f"{name}_sum", **labels) == 9.5
    les = [s.labels["le"] for s in hist if s.name.endswith("_bucket")]
    assert len(les) == len(DURATION_BOUNDS) + 1


def test_latency_histogram_and_store_listener() -> None:
    hist = LatencyHistogram((0.01, 0.1, 1.0))
    for seconds in (0.001, 0.01, 0.05, 0.5, 3.0):
        hist.observe(seconds)
    assert hist.cumulative == [2, 3, 4]  # le is inclusive: 0.01 falls in the first bucket
    assert hist.count == 5 and hist.sum == pytest.approx(3.561)
    now = [100.0]
    store = Store()
    store.add_layer("cluster")
    store.subscribe(store_listener(hist, clock=lambda: now[0]))
    store.set_synced("cluster")  # a change with no API event: not observed
    assert hist.count == 5
    store.apply("cluster", [clusterip("default", "a", "10.96.0.1")], received_at=99.95)
    assert hist.count == 6 and hist.cumulative == [2, 4, 5]  # 0.05 s

    fams = families(KdnsCollector(FakeQueries(), FakeResponses(), programming=hist))
    name = "kdns_kubernetes_dns_programming_duration_seconds"
    samples = fams[name]
    assert value(samples, f"{name}_bucket", le="0.01") == 2
    assert value(samples, f"{name}_bucket", le="0.1") == 4
    assert value(samples, f"{name}_bucket", le="1.0") == 5
    assert value(samples, f"{name}_bucket", le="+Inf") == 6
    assert value(samples, f"{name}_count") == 6
    with pytest.raises(ValueError):
        LatencyHistogram((1.0, 0.5))


def reflector_stats() -> Iterable[ReflectorStats]:
    svc = ReflectorStats("Service", "", events={"ADDED": 3, "MODIFIED": 2}, lists=2, relists=1)
    svc.errors, svc.objects = 1, 40
    a = ReflectorStats("EndpointSlice", "a", events={"ADDED": 5, "DELETED": 1}, lists=1)
    b = ReflectorStats("EndpointSlice", "b", events={"ADDED": 1, "BOOKMARK": 4}, lists=0)
    a.objects, b.objects, b.errors = 7, 2, 3
    return [svc, a, b]


def test_watch_metrics() -> None:
    fams = families(KdnsCollector(FakeQueries(), FakeResponses(), watch=reflector_stats))
    ev = fams["kdns_kubernetes_watch_events"]
    name = "kdns_kubernetes_watch_events_total"
    assert value(ev, name, kind="Service", type="ADDED") == 3
    assert value(ev, name, kind="Service", type="MODIFIED") == 2
    assert value(ev, name, kind="EndpointSlice", type="ADDED") == 6  # summed over namespaces
    assert value(ev, name, kind="EndpointSlice", type="BOOKMARK") == 4
    relists = fams["kdns_kubernetes_relists"]
    assert value(relists, "kdns_kubernetes_relists_total", kind="Service") == 1
    assert value(relists, "kdns_kubernetes_relists_total", kind="EndpointSlice") == 0
    errors = fams["kdns_kubernetes_errors"]
    assert value(errors, "kdns_kubernetes_errors_total", kind="Service") == 1
    assert value(errors, "kdns_kubernetes_errors_total", kind="EndpointSlice") == 3
    synced = fams["kdns_kubernetes_synced"]
    assert value(synced, "kdns_kubernetes_synced", kind="Service") == 1
    assert value(synced, "kdns_kubernetes_synced", kind="EndpointSlice") == 0  # b never listed
    objects = fams["kdns_kubernetes_objects"]
    assert value(objects, "kdns_kubernetes_objects", kind="EndpointSlice") == 9


def test_unreachable_metric_counts_seconds_since_the_api_stopped_answering() -> None:
    now = 1_000_000.0
    states = [("cluster.local.", None), ("east.local.", now - 42.5), ("west.local.", now + 3)]
    collector = KdnsCollector(
        FakeQueries(), FakeResponses(), unreachable=lambda: states, clock=lambda: now
    )
    fams = families(collector)
    name = "kdns_kubernetes_api_unreachable_seconds"
    assert value(fams[name], name, zone="cluster.local.") == 0
    assert value(fams[name], name, zone="east.local.") == 42.5
    # A clock stepped back (NTP) gives a tick, neither a negative age nor the 0 of "answering".
    assert value(fams[name], name, zone="west.local.") == 0.001
    # Without a cluster source there is no such family at all.
    assert name not in families(KdnsCollector(FakeQueries(), FakeResponses()))


def test_forward_metrics() -> None:
    fwd = Forwarder([("192.0.2.1", 53), ("2001:db8::1", 5353)])
    fwd.hits, fwd.misses = 5, 2
    fwd.upstreams[0].requests = 2
    fwd.upstreams[0].responses = {0: 1, 2: 1}
    fwd.upstreams[1].failures = 4
    fwd.upstreams[1].looping = True
    stats: ForwardStats = fwd  # the Forwarder is what the collector reads
    fams = families(KdnsCollector(FakeQueries(), FakeResponses(), forward=stats))
    to0, to1 = "192.0.2.1:53", "[2001:db8::1]:5353"
    assert value(fams["kdns_forward_requests"], "kdns_forward_requests_total", to=to0) == 2
    responses = fams["kdns_forward_responses"]
    assert value(responses, "kdns_forward_responses_total", to=to0, rcode="SERVFAIL") == 1
    assert value(fams["kdns_forward_failures"], "kdns_forward_failures_total", to=to1) == 4
    assert value(fams["kdns_forward_loop"], "kdns_forward_loop", to=to1) == 1
    assert value(fams["kdns_forward_loop"], "kdns_forward_loop", to=to0) == 0
    assert value(fams["kdns_forward_cache_hits"], "kdns_forward_cache_hits_total") == 5
    assert value(fams["kdns_forward_cache_entries"], "kdns_forward_cache_entries") == 0


def test_build_info_and_optional_parts() -> None:
    queries: QueryStats = FakeQueries()
    responses: ResponseStats = FakeResponses()
    fams = families(KdnsCollector(queries, responses, version="9.9.9"))
    (info,) = fams["kdns_build_info"]
    assert info.value == 1 and info.labels["version"] == "9.9.9" and info.labels["python"]
    assert (
        families(KdnsCollector(queries, responses))["kdns_build_info"][0].labels["version"]
        == __version__
    )
    # without watch, programming or forward sources those families are absent, not zero
    assert not any(n.startswith(("kdns_kubernetes", "kdns_forward")) for n in fams)
    # and every family that is there uses the kdns_ prefix
    assert all(n.startswith("kdns_") for n in fams)
    assert CONTENT_TYPE.startswith("text/plain")


def test_scrape_reads_current_values() -> None:
    r = FakeResponses()
    collector = KdnsCollector(FakeQueries(), r, server="s")
    assert value(families(collector)["kdns_cache_hits"], "kdns_cache_hits_total", server="s") == 0
    r.hits = 41
    assert value(families(collector)["kdns_cache_hits"], "kdns_cache_hits_total", server="s") == 41


def test_two_key_requests_leave_family_empty() -> None:
    q = FakeQueries()
    q.requests = {("udp", 1): 3, ("tcp", 1): 1}  # type: ignore[dict-item]  # QueryCounters' shape
    fams = families(KdnsCollector(q, FakeResponses(), server="s"))
    req = fams["kdns_dns_requests"]
    base = {"server": "s", "zone": "."}
    assert value(req, "kdns_dns_requests_total", **base, proto="udp", family="", type="A") == 3
    assert value(req, "kdns_dns_requests_total", **base, proto="tcp", family="", type="A") == 1


def test_known_queries_through_the_real_counters() -> None:
    """The collector on the server's own counter objects, after known queries."""
    engine = make_engine(
        [*namespaces("default"), clusterip("default", "web", "10.96.0.10")], synced=True
    )
    responder = Responder(engine)
    counters = QueryCounters()
    queries: QueryStats = counters
    responses: ResponseStats = responder

    def ask(name: str, qtype: str, proto: str = "udp") -> None:
        started = time.perf_counter()
        packet = bytes(DNSRecord.question(name, qtype).pack())
        assert isinstance(responder.respond(packet, udp=proto == "udp"), bytes)
        counters.record(counters.counter(proto, 4), responder.qtype, started)

    for _ in range(3):
        ask("web.default.svc.cluster.local", "A")  # 1 miss, then 2 hits
    ask("web.default.svc.cluster.local", "AAAA", "tcp")  # NODATA
    ask("nope.default.svc.cluster.local", "A")  # NXDOMAIN
    ask("example.org", "MX")  # REFUSED
    fams = families(KdnsCollector(queries, responses, server="s"))
    base = {"server": "s", "zone": "."}
    req = fams["kdns_dns_requests"]
    assert value(req, "kdns_dns_requests_total", **base, proto="udp", family="1", type="A") == 4
    assert value(req, "kdns_dns_requests_total", **base, proto="tcp", family="1", type="AAAA") == 1
    assert value(req, "kdns_dns_requests_total", **base, proto="udp", family="1", type="MX") == 1
    resp = fams["kdns_dns_responses"]
    assert value(resp, "kdns_dns_responses_total", **base, rcode="NOERROR") == 4
    assert value(resp, "kdns_dns_responses_total", **base, rcode="NXDOMAIN") == 1
    assert value(resp, "kdns_dns_responses_total", **base, rcode="REFUSED") == 1
    assert value(fams["kdns_cache_hits"], "kdns_cache_hits_total", server="s") == 2
    assert value(fams["kdns_cache_misses"], "kdns_cache_misses_total", server="s") == 4
    assert value(fams["kdns_cache_entries"], "kdns_cache_entries", server="s") == 4
    hist = fams["kdns_dns_request_duration_seconds"]
    name = "kdns_dns_request_duration_seconds"
    assert value(hist, f"{name}_count", **base) == 6
    assert value(hist, f"{name}_bucket", **base, le="+Inf") == 6
    assert value(hist, f"{name}_bucket", **base, le="8.192") == 6  # none took 8 s
