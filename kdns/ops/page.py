"""The operator's page at `/` of `--http`: one screen on the state of kdns, refreshed every
`REFRESH` seconds.

What it shows: every source (each cluster and its watches, the zones/ directories) with its
objects, sync, last event, relists, errors and how long its API has been unreachable; queries a
second over the last ten minutes, the rcode mix, latency and cache hits; the names answered
NXDOMAIN most, and the clients that got the most (their addresses only with
`--http-show-clients`); the search-path expansions; and the last changes of the change
journal (`kdns.ops.journal`).

How: server-rendered HTML built as strings, every value from outside passed through
`html.escape`, the style inline and the chart an inline SVG: no framework, no build step,
nothing fetched from anywhere, so it works wherever the port is reachable, through a
`kubectl port-forward` too. It is rendered on the loop thread, from the same counters as
`/metrics` (see `kdns.ops.traffic` and `kdns.serve.tally` for what it adds), so the numbers of
the two agree.

Elements whose values tests and scripts may read carry an `id` and a `data-value` holding the
exact number, beside the one formatted for people.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdns import __version__
from kdns.ops.metrics import RCODE_NAMES
from kdns.ops.traffic import INTERVAL, POINTS, expansions, percentile
from kdns.serve.stats import DURATION_BOUNDS

if TYPE_CHECKING:
    from kdns.serve.server import DnsServer

#: Seconds between two refreshes of the page (a meta refresh: no script).
REFRESH = 5
#: Rows of each "top" table.
TOP = 20
#: Changes shown from the journal.
CHANGES = 50
NXDOMAIN = 3


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass
class KindRow:
    """One kind of object of a source."""

    kind: str
    objects: int
    synced: bool | None = None  # None: the source does not say per kind
    last_event: float = 0.0
    events: int | None = None
    relists: int | None = None
    errors: int | None = None


@dataclass
class Source:
    """One source of records: a cluster (its watches) or the zones/ directories."""

    title: str
    zone: str
    synced: bool
    unreachable_since: float | None = None
    #: Wall-clock time of the last change the source made (files: applied; cluster: event).
    last_change: float = 0.0
    kinds: list[KindRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def sources(server: DnsServer) -> list[Source]:
    """Every source of every served zone, in precedence order (files before the cluster)."""
    from kdns.serve.server import FILES_LAYER

    cfg = server.config
    zones = [cfg.domain, *(zone for _, zone in cfg.clusters)]
    by_layer = {source.layer: source for source in server.sources}
    out: list[Source] = []
    for index, store in enumerate(server.stores):
        for layer, _implicit, synced, since in store.layer_states():
            if layer == FILES_LAYER and server.file_source is not None:
                out.append(_files(server.file_source, zones[index], synced))
            elif layer in by_layer:
                title = _cluster_title(server, layer)
                out.append(_cluster(title, zones[index], synced, since, by_layer[layer].stats()))
    return out


def _cluster_title(server: DnsServer, layer: str) -> str:
    # No kubeconfig path, context name or API address: the page tells what DNS does, and counts
    # (the zone, which DNS tells, names each cluster apart).
    if ":" in layer:
        return "cluster API (--cluster)"
    return "cluster API (in-cluster)" if server.config.in_cluster else "cluster API (kubeconfig)"


#: What a kind of record is called on the page, where its key's name is not enough.
_KINDS = {"Pods": "endpoints from Pod manifests", "Pod": "Pod (manifests)"}


def _files(files: Any, zone: str, synced: bool) -> Source:
    dirs = len(files.dirs)
    source = Source(
        f"zones/ directories ({dirs})" if dirs > 1 else "zones/ directory",
        zone,
        synced,
        last_change=files.applied_at or 0.0,
    )
    source.kinds = [KindRow(_KINDS.get(kind, kind), n) for kind, n in sorted(files.objects.items())]
    problems = files.problems
    errors = sum(1 for p in problems if p.severity == "error")
    warnings = len(problems) - errors
    # Counts only: where and what is in kdns's log and `kdns check`, not on the page.
    if errors or warnings:
        source.notes.append(
            f"{errors} error(s) and {warnings} warning(s) in the manifests: kdns's log and "
            "`kdns check DIR` say where; a file with errors keeps its last good content served"
        )
    if files.failure:
        source.notes.append(
            "the directories cannot be read now (kdns's log says why): still serving what was "
            "loaded before"
        )
    return source


def _cluster(
    title: str, zone: str, synced: bool, since: float | None, stats: Iterable[Any]
) -> Source:
    source = Source(title, zone, synced, since)
    by_kind: dict[str, list[Any]] = {}
    for stat in stats:
        by_kind.setdefault(stat.kind, []).append(stat)
    for kind, group in by_kind.items():
        row = KindRow(
            kind,
            sum(s.objects for s in group),
            synced=all(s.lists > 0 for s in group),
            last_event=max(s.last_event for s in group),
            events=sum(n for s in group for t, n in s.events.items() if t != "BOOKMARK"),
            relists=sum(s.relists for s in group),
            errors=sum(s.errors for s in group),
        )
        source.kinds.append(row)
        source.last_change = max(source.last_change, row.last_event)
    if any(k.errors for k in source.kinds):
        source.notes.append(
            "errors: failed API requests and broken watch streams, each retried; kdns's log "
            "says which and why"
        )
    return source


# -- formatting --------------------------------------------------------------------------------


def _count(n: int) -> str:
    return f"{n:,}"


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


def _ago(t: float, now: float) -> str:
    """`t` (wall clock) as a time and how long ago, or "never" for 0."""
    if not t:
        return "never"
    return f'<time datetime="{esc(_clock(t))}">{esc(_clock(t)[11:])}</time> ({_span(now - t)} ago)'


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "no queries yet"
    if math.isinf(seconds):
        return f"over {DURATION_BOUNDS[-1]:g} s"
    if seconds < 0.001:
        return f"≤ {seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"≤ {seconds * 1e3:g} ms"
    return f"≤ {seconds:g} s"


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "-"


def _value(ident: str, value: float | int, text: str | None = None) -> str:
    """A number people read (`text`) with the exact value for scripts (`data-value`)."""
    shown = text if text is not None else (_count(value) if isinstance(value, int) else f"{value}")
    return f'<span id="{esc(ident)}" data-value="{esc(value)}">{esc(shown)}</span>'


def sparkline(values: Sequence[float], width: int = 600, height: int = 80) -> str:
    """An inline SVG line of `values` (queries a second, oldest first) on a fixed ten-minute
    axis, newest at the right edge."""
    step = width / POINTS
    top = max(values, default=0.0)
    scale = (height - 6) / top if top > 0 else 0.0
    points = [
        (width - (len(values) - 1 - i) * step, height - 3 - v * scale) for i, v in enumerate(values)
    ]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    area = ""
    if len(points) >= 2:
        area = (
            f'<polygon fill="#d7e6fb" points="{points[0][0]:.1f},{height} {line} '
            f'{points[-1][0]:.1f},{height}"/>'
        )
    if points:  # the newest point, and the only one in the first interval
        x, y = points[-1]
        area += f'<circle cx="{x - 3:.1f}" cy="{y:.1f}" r="3" fill="#1f6feb"/>'

    label = f"queries a second over the last {POINTS * INTERVAL / 60:.0f} minutes, peak {top:.1f}"
    return (
        f'<svg id="qps-chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{esc(label)}</title>"
        f'<rect width="{width}" height="{height}" fill="#f6f8fa"/>'
        f"{area}"
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="2" points="{line}"/>'
        "</svg>"
    )


# -- the page ----------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1f2328; background: #fff; }
header { background: #24292f; color: #fff; padding: 12px 24px; }
header h1 { font-size: 18px; margin: 0; display: inline; }
header .meta { color: #c9d1d9; margin-left: 12px; }
main { padding: 8px 24px 24px; max-width: 1200px; }
h2 { font-size: 16px; margin: 22px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { text-align: left; padding: 3px 12px 3px 0; vertical-align: top; }
th { color: #57606a; font-weight: 600; border-bottom: 1px solid #d0d7de; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.name { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; word-break: break-all; }
td.nw { white-space: nowrap; word-break: normal; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; margin-left: 6px; }
.ok { background: #dafbe1; color: #116329; }
.bad { background: #ffebe9; color: #a40e26; }
.warn { background: #fff8c5; color: #7d4e00; }
.figures { display: flex; flex-wrap: wrap; gap: 28px; margin: 6px 0; }
.figure .label { color: #57606a; font-size: 12px; }
.figure .big { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.figure .big .note { font-size: 13px; font-weight: 400; }
.note { color: #57606a; }
.cols { display: flex; flex-wrap: wrap; gap: 40px; }
.cols > div { flex: 0 0 auto; }
.cols p { max-width: 420px; }
"""


async def render_page(server: DnsServer, now: float | None = None) -> str:
    """The page, as HTML text (a coroutine: the name tables are summed a slice at a time, with
    queries answered in between)."""
    names, clients = await server.tallies()
    now = time.time() if now is None else now
    cfg = server.config
    collector = server.collector()
    zones = [cfg.domain, *(zone for _, zone in cfg.clusters)]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>kdns · {esc(', '.join(zones))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        _header(server, zones, now),
        "<main>",
        _sources_section(sources(server), now),
        _queries_section(server, collector),
        _nxdomain_section(names, clients, server.config.workers > 0),
        _expansions_section(server, names, collector),
    ]
    # The journal gives the oldest first; the page puts the newest on top.
    parts.append(changes_section(server.journal.latest(CHANGES)[::-1], now))
    parts.append(
        f'<p class="note">Refreshes every {REFRESH} s. Counts are since kdns started '
        f"({esc(_clock(server.started_at))}) unless a heading says otherwise; /metrics "
        "has the same counters for Prometheus.</p></main></body></html>"
    )
    return "\n".join(parts)


def _header(server: DnsServer, zones: list[str], now: float) -> str:
    state = (
        '<span class="badge ok" id="state">ready</span>'
        if server.ready
        else '<span class="badge bad" id="state">not ready</span>'
    )
    listen = ", ".join(f"{h}:{p}" for h, p in server.addresses)
    workers = f" · {server.config.workers} serving processes" if server.config.workers else ""
    return (
        f"<header><h1>kdns {esc(__version__)}</h1>{state}"
        f'<span class="meta">{esc(", ".join(zones))} on {esc(listen)}{esc(workers)} · '
        f"up {esc(_span(now - server.started_at))}</span></header>"
    )


def _sources_section(found: list[Source], now: float) -> str:
    out = ['<h2 id="sources">Sources</h2>']
    for i, source in enumerate(found):
        badges = (
            '<span class="badge ok">synced</span>'
            if source.synced
            else '<span class="badge warn">not synced yet</span>'
        )
        if source.unreachable_since is not None:
            badges += (
                f'<span class="badge bad">API unreachable since '
                f"{esc(_clock(source.unreachable_since)[11:])} "
                f"({esc(_span(now - source.unreachable_since))}); answering from the last "
                "data</span>"
            )
        out.append(
            f'<section class="source" id="source-{i}"><h3>{esc(source.title)} '
            f'<span class="note">→ {esc(source.zone)}</span>{badges}</h3>'
        )
        out.append(f'<div class="note">last change: {_ago(source.last_change, now)}</div>')
        per_kind = any(k.synced is not None for k in source.kinds)
        head = "<tr><th>kind</th><th class='n'>objects</th>"
        if per_kind:
            head += (
                "<th>synced</th><th>last event</th><th class='n'>events</th>"
                "<th class='n'>relists</th><th class='n'>errors</th>"
            )
        rows = [head + "</tr>"]
        for k in source.kinds:
            row = f"<tr><td>{esc(k.kind)}</td><td class='n'>{_count(k.objects)}</td>"
            if per_kind:
                row += (
                    f"<td>{'yes' if k.synced else 'no'}</td><td>{_ago(k.last_event, now)}</td>"
                    f"<td class='n'>{_count(k.events or 0)}</td>"
                    f"<td class='n'>{_count(k.relists or 0)}</td>"
                    f"<td class='n'>{_count(k.errors or 0)}</td>"
                )
            rows.append(row + "</tr>")
        if not source.kinds:
            rows.append("<tr><td colspan='2' class='note'>nothing yet</td></tr>")
        out.append(f'<table id="source-{i}-kinds">' + "".join(rows) + "</table>")
        out.extend(f'<p class="note">{esc(note)}</p>' for note in source.notes)
        out.append("</section>")
    if not found:
        out.append('<p class="note">No source (a serving process has none).</p>')
    return "\n".join(out)


def _queries_section(server: DnsServer, collector: Any) -> str:
    queries, responses = collector.queries, collector.responses
    rcodes: dict[int, int] = dict(responses.rcodes)
    total = sum(rcodes.values())
    count = queries.duration_count
    cumulative = list(queries.duration_buckets)
    p50 = percentile(DURATION_BOUNDS, cumulative, count, 0.50)
    p99 = percentile(DURATION_BOUNDS, cumulative, count, 0.99)
    mean = queries.duration_sum / count if count else float("nan")
    hits, misses = responses.hits, responses.misses
    ratio = hits / (hits + misses) if hits + misses else 0.0
    rate = server.rate.per_second() if server.rate is not None else []
    now_qps = rate[-1] if rate else 0.0

    def figure(label: str, body: str) -> str:
        return (
            f'<div class="figure"><div class="label">{esc(label)}</div>'
            f'<div class="big">{body}</div></div>'
        )

    mean_text = "-" if math.isnan(mean) else f"{mean * 1e6:.0f} µs"
    figures = [
        figure("queries a second now", _value("qps-now", round(now_qps, 1), f"{now_qps:,.1f}")),
        figure("responses", _value("responses-total", total)),
        figure("p50 latency", _value("latency-p50", p50, _duration(p50))),
        figure("p99 latency", _value("latency-p99", p99, _duration(p99))),
        figure("mean latency", _value("latency-mean", mean, mean_text)),
        figure(
            "cache hits",
            _value("cache-ratio", round(ratio, 4), f"{ratio:.1%}")
            + f' <span class="note">{_value("cache-hits", hits)} hits, '
            f"{_value('cache-misses', misses)} misses, "
            f"{_value('cache-entries', len(responses))} cached</span>",
        ),
    ]
    rows = ["<tr><th>rcode</th><th class='n'>responses</th><th class='n'>share</th></tr>"]
    for rcode, n in sorted(rcodes.items(), key=lambda item: -item[1]):
        name = RCODE_NAMES.get(rcode, str(rcode))
        rows.append(
            f"<tr><td>{esc(name)}</td><td class='n'>{_value('rcode-' + name, n)}</td>"
            f"<td class='n'>{_share(n, total)}</td></tr>"
        )
    return "\n".join(
        [
            '<h2 id="queries">Queries</h2>',
            f'<div class="figures">{"".join(figures)}</div>',
            f'<div class="cols"><div><h3>Queries a second, last {POINTS * INTERVAL / 60:.0f} '
            f"minutes</h3>{sparkline(rate)}<div class='note'>one point per "
            f"{INTERVAL:.0f} s; peak {max(rate, default=0.0):,.1f}/s</div></div>",
            f'<div><h3>Rcodes</h3><table id="rcodes">{"".join(rows)}</table></div></div>',
            '<p class="note">Latency: the bucket of the request duration histogram the '
            "percentile falls in (as /metrics has it); the mean is exact.</p>",
        ]
    )


def _nxdomain_section(
    names: dict[tuple[str, int], int], clients: dict[str, int] | None, workers: bool
) -> str:
    nx: dict[str, int] = {}
    for (name, rcode), n in names.items():
        if rcode == NXDOMAIN:
            nx[name] = nx.get(name, 0) + n
    ranked = sorted(nx.items(), key=lambda item: (-item[1], item[0]))[:TOP]
    rows = ["<tr><th>name</th><th class='n'>NXDOMAIN answers</th></tr>"]
    rows += [
        f"<tr><td class='name'>{esc(name)}</td><td class='n' data-value='{n}'>{_count(n)}</td></tr>"
        for name, n in ranked
    ]
    if not ranked:
        rows.append("<tr><td colspan='2' class='note'>none yet</td></tr>")
    out = [
        '<h2 id="nxdomain">NXDOMAIN</h2><div class="cols">',
        f'<div><h3>Names answered NXDOMAIN most</h3><table id="nxdomain-names">'
        f"{''.join(rows)}</table></div>",
    ]
    if clients is None:
        out.append(
            '<div><h3>Clients answered NXDOMAIN most</h3><p class="note" id="clients-hidden">'
            "Client addresses are hidden. Start kdns with <code>--http-show-clients</code> to "
            "count and show them.</p></div>"
        )
    else:
        ranked_clients = sorted(clients.items(), key=lambda item: (-item[1], item[0]))[:TOP]
        crows = ["<tr><th>client</th><th class='n'>NXDOMAIN answers</th></tr>"]
        crows += [
            f"<tr><td class='name'>{esc(addr)}</td><td class='n' data-value='{n}'>{_count(n)}"
            "</td></tr>"
            for addr, n in ranked_clients
        ]
        if not ranked_clients:
            crows.append("<tr><td colspan='2' class='note'>none yet</td></tr>")
        out.append(
            '<div><h3>Clients answered NXDOMAIN most</h3><table id="nxdomain-clients">'
            f"{''.join(crows)}</table></div>"
        )
    out.append("</div>")
    if workers:
        out.append(
            '<p class="note">With --workers the serving processes send these tables every '
            "few seconds: they can lag the other counts.</p>"
        )
    return "\n".join(out)


def _expansions_section(
    server: DnsServer, names: dict[tuple[str, int], int], collector: Any
) -> str:
    zones = {cluster.domain: _Namespaces(cluster.store) for cluster in server.engine.clusters}
    found = expansions(names, zones, TOP)
    total = sum(dict(collector.responses.rcodes).values())
    share = found.failed / total if total else 0.0
    rows = [
        "<tr><th>name tried</th><th class='n'>asked</th><th class='n'>answered</th>"
        "<th>failed expansions</th></tr>"
    ]
    for t in found.tried:
        suffixes = ", ".join(
            f".{suffix} x{n}" for suffix, n in sorted(t.suffixes.items(), key=lambda i: -i[1])
        )
        rows.append(
            f"<tr><td class='name'>{esc(t.name)}</td>"
            f"<td class='n' data-value='{t.asked}'>{_count(t.asked)}</td>"
            f"<td class='n' data-value='{t.answered}'>{_count(t.answered)}</td>"
            f"<td class='name'>{esc(suffixes)}</td></tr>"
            f"<tr class='summary'><td colspan='4' class='note'>{esc(t.name)} asked "
            f"{_count(t.asked)} {'time' if t.asked == 1 else 'times'} for "
            f"{_count(t.answered)} {'answer' if t.answered == 1 else 'answers'}</td></tr>"
        )
    if not found.tried:
        rows.append("<tr><td colspan='4' class='note'>none yet</td></tr>")
    return "\n".join(
        [
            '<h2 id="expansions">Search-path expansions</h2>',
            f"<p>{_value('expansion-share', round(share, 4), f'{share:.1%}')} of responses "
            f"({_value('expansion-failed', found.failed)} of {_count(total)}) were NXDOMAIN for "
            "a search-path expansion: a name ending in <code>.&lt;ns&gt;.svc.&lt;zone&gt;</code>, "
            "<code>.svc.&lt;zone&gt;</code> or <code>.&lt;zone&gt;</code> whose front part "
            "holds dots, as a pod's resolver (<code>ndots:5</code>) makes of "
            "<code>api.example.com</code>. A name written with a final dot, or with 5 dots or "
            "more, is asked once.</p>",
            f'<table id="expansions-table">{"".join(rows)}</table>',
            '<p class="note">asked: queries for any form of the name (each expansion, the name '
            "itself when kdns forwards it); answered: those answered NOERROR.</p>",
        ]
    )


class _Namespaces:
    """A store's namespaces as a container (`traffic.expansion` asks `ns in ...`)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __contains__(self, ns: object) -> bool:
        return isinstance(ns, str) and bool(self.store.has_namespace(ns))


def changes_section(entries: Sequence[Any], now: float) -> str:
    """The journal's last changes (`kdns.ops.journal.Entry`: `serial`, `time` (wall clock),
    `name`, `type`, `before` and `after` (record texts) and `cause`), in the order given."""
    rows = [
        "<tr><th>time</th><th class='n'>serial</th><th>name</th><th>type</th><th>before</th>"
        "<th>after</th><th>cause</th></tr>"
    ]
    for e in entries:
        rows.append(
            f"<tr><td class='nw'>{_ago(e.time, now)}</td><td class='n'>{esc(e.serial)}</td>"
            f"<td class='name nw'>{esc(e.name)}</td><td>{esc(e.type)}</td>"
            f"<td class='name'>{esc(', '.join(e.before) or '-')}</td>"
            f"<td class='name'>{esc(', '.join(e.after) or '-')}</td>"
            f"<td class='nw'>{esc(e.cause)}</td></tr>"
        )
    if not entries:
        rows.append("<tr><td colspan='7' class='note'>no change since kdns started</td></tr>")
    return (
        f'<h2 id="changes">Last {CHANGES} changes</h2>'
        f'<table id="changes-table">{"".join(rows)}</table>'
    )
