"""The change journal: every DNS-visible change, as record sets before and after, in a ring.

`/changes?since=SERIAL` and `kdns changes` read it. An entry says that one record set (a name
and a type) went from some records to others at some SOA serial, and which objects did it:

    serial 1733000042  web.shop.svc.cluster.local. A  10.1.0.1 10.1.0.2 -> 10.1.0.1
                       (EndpointSlice shop/web-abc12)

Where the diffs come from. The store tells its listeners, after every change, which services'
views changed (`Change.services`). The journal keeps, per service, the view and the endpoint
objects it saw last (references: both are immutable), so after a change it holds the old and
the new view of each changed service. The records of a view are not rebuilt here: each view is
put alone into a store of its own (`Store.of_views`) and the answer engine is asked the names
that view implies. Asking the live engine would not do, as it only knows the new state; a
one-view store answers for the old view just as well, and both sides come from the same rules,
so a record the change did not touch never shows as changed. The engine decides each name
(`Engine.decide`, the one place of the DNS rules) and gives the records as text
(`Engine.texts`): the same records `Engine.build` makes, without building dnslib objects,
which cost 150 ms for the A and SRV answers of a service of 1,000 endpoints, on the event loop,
at every change of it. `Engine.texts` sits beside `build` and a test holds them equal.

The names asked, per changed service (the record sets clients look up):
- `<svc>.<ns>.svc.<zone>`: A, AAAA and CNAME (an ExternalName's target);
- `_<port>._<proto>.<svc>...` for every named port of either view: SRV;
- `<endpoint>.<svc>...` for the ready endpoints of either view: A, AAAA;
- the reverse name of every ClusterIP and ready endpoint address of either view: PTR.
Other types at those names (SRV at a service's or an endpoint's own name, A at a port name,
which the engine also answers) follow from these and are left out; `kdns records` lists them.

Bounded work. Only the changed services are looked at. When a service object is the same
before and after, only the names and addresses of the ready endpoints that came, went or changed
are asked (a set difference of the two views' endpoints): one endpoint of a thousand moving
costs a few questions besides the service's own names, not thousands; and when only the order
or the not-ready count moved, nothing is asked. The store's listener (on the loop, after the
answer cache has dropped what the change touched) only notes the old and new views of each
changed service; the diffs are worked out later on the loop, 2 ms at a time with everything
else running in between (a relist or the end of an API outage changes thousands of services at
once: diffing them in the listener held the loop, and every query, for seconds), or when
someone reads the journal (`catch_up`, still a slice at a time). It never runs for a query.
With `--workers` it lives in the main process (the serving processes keep none).

Bounded cost. The background diffing takes at most `DRAIN_SHARE` (5%) of the time: after a
slice it pauses nineteen times as long, whether or not changes wait. Under a long churn of large
services (200 changes a second of 100-endpoint slices: working each out costs as much again as
applying it) the changes waiting then pile up; past `MAX_PENDING` endpoints of views held by
them, the oldest are dropped unjournaled, with a warning, and the journal says from which serial
on it is complete (`since`, `oldest`). A reader that follows (`kdns changes --follow`, asking
every second) works out what waits each time it asks, and so misses nothing unless more than
the bound comes between two of its questions.

The initial load. Until every source of a zone has loaded once, changes are not journaled one
by one (the first list of a large cluster would fill the ring with its own arrival): the
journal only keeps the views. Once it is `open()` (the server opens it when every source has
been added, so that a zones/ directory loaded before the cluster's first list does not count
as the whole zone) and the zone is synced, it writes one LOAD entry at the zone's apex
("initial load: N services"). Every change after that is journaled, relists included.

What is not journaled: namespaces coming and going (NXDOMAIN versus NODATA at `<ns>.svc`),
sync and reachability states, pod names. Each service's records are its own: when several
services share an address, a PTR entry shows this service's part of the answer; an ExternalName
whose target is a name in the zone changes its CNAME only when its own target does (the
target's records change under the target's name).

The ring holds the last `capacity` entries (10,000), and drops the oldest sooner when they
hold more than `max_records` record texts between them (250,000: a record set of a thousand
addresses, before and after, at every change of one endpoint, would otherwise fill memory).
`since(serial)` gives every entry after that SOA serial and says whether that is all of them:
not when older entries the answer needed were dropped, or the serial is from before the journal
started (the initial load, a restart), or is one this server has not given yet. Serials are per
zone; with `--cluster`, `since` compares every zone's entries with the one number given, which
is exact for the cluster domain only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import Any

from dnslib import QTYPE

from kdns.dns.resolution import Cluster, Engine
from kdns.state.model import EndpointPort, EndpointSet, endpoint_name
from kdns.state.store import ServiceKey, ServiceView, Store, ViewMemo

log = logging.getLogger(__name__)

#: Entries kept by default.
CAPACITY = 10_000
#: Record texts kept by default, over all entries: a change to a headless service of 1,000
#: endpoints lists its addresses and SRV records before and after. A text costs the ring about
#: 8 bytes when it is shared with the entry before (see `Journal._append`), 70 to 100 when not:
#: at most about 20 MB.
MAX_RECORDS = 250_000
#: How many entries `since(None)` gives: the latest.
LATEST = 100
#: Seconds of diffing per turn of the event loop (see `Journal._drain`).
DRAIN_BUDGET = 0.002
#: The share of the process's time the background diffing may take (see `Journal._drain`).
DRAIN_SHARE = 0.05
#: What the changes not worked out yet may hold, in endpoints of their views (a view each:
#: 100,000 of them grew the watching process by 31 MB in bench/scale.py's churn): past it the
#: oldest are dropped unjournaled (see `Journal._note`).
MAX_PENDING = 50_000
#: The most entries, and record texts, one answer of `/changes` gives (see `changes_json`).
PAGE_ENTRIES = 1000
PAGE_RECORDS = 20_000
#: The type of the one entry that stands for a zone's initial load.
LOAD = "LOAD"


@dataclass(frozen=True, slots=True)
class Entry:
    """One record set that changed: `name` (FQDN, trailing dot) and `type` went from `before`
    to `after` (rdata texts as dig prints them, sorted) at SOA serial `serial`, at wall-clock
    `time`; `cause` names the objects that did it, e.g. `EndpointSlice shop/web-abc12`."""

    serial: int
    time: float
    name: str
    type: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    cause: str


@dataclass(slots=True)
class _Zone:
    """A followed zone: its store, and per service the view and objects last seen."""

    domain: str
    store: Store
    seen: dict[ServiceKey, tuple[ServiceView, tuple[EndpointSet, ...]]] = field(
        default_factory=dict
    )
    started: bool = False
    #: What the zone's recent views answered (see `Answered`).
    answered: Answered = field(init=False)

    def __post_init__(self) -> None:
        self.answered = Answered(self.domain)


class Journal:
    """The last DNS-visible changes of the followed zones, as record-set diffs: at most
    `capacity` entries holding at most about `max_records` record texts between them."""

    def __init__(
        self,
        capacity: int = CAPACITY,
        max_records: int = MAX_RECORDS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if capacity < 1 or max_records < 1:
            raise ValueError("a journal needs room for at least one entry")
        self.capacity = capacity
        #: What the background diffing's slices and share are timed with.
        self._clock = clock
        self.max_records = max_records
        self._ring: deque[Entry] = deque()
        #: The record texts each entry of the ring added (a `before` shared with the entry
        #: before it is not counted twice), and their sum.
        self._costs: deque[int] = deque()
        self._records = 0
        #: The newest entry in the ring of each (name, type): the next entry of that record set
        #: shares its `after` as its own `before`.
        self._recent: dict[tuple[str, str], Entry] = {}
        self._zones: list[_Zone] = []
        #: The lowest serial `since` can be given and get every change after it (None until
        #: a zone has loaded): the initial load's, then that of the last entry dropped.
        self._floor: int | None = None
        self._dropped = False
        self._open = False
        #: Changed services not journaled yet: (zone, serial, time, key, before, after), taken
        #: in order by `_drain`, a few milliseconds of work per turn of the event loop.
        self._pending: deque[tuple[_Zone, int, float, ServiceKey, _Seen, _Seen]] = deque()
        #: What `_pending` holds, as `_weight` counts it, against `MAX_PENDING`.
        self._pending_weight = 0
        self._draining = False
        #: When (on `_clock`) the next slice of diffing may start: its share of the time.
        self._next = -float("inf")
        #: Changes dropped unjournaled (the journal fell behind), since the start.
        self.skipped = 0
        self._skip_logged = -_SKIP_LOG_EVERY

    def follow(self, domain: str, store: Store) -> None:
        """Journal the changes of `store`, which answers for `domain` (lower case, no trailing
        dot). Best before its sources load (the server's stores are empty then): what the store
        holds already is taken in at once, a pass over every service."""
        zone = _Zone(domain, store)
        self._zones.append(zone)
        for view in store.views():
            _remember(zone, (view.service.namespace, view.service.name))
        store.subscribe(lambda _generation, _received_at: self._changed(zone))
        if self._open:
            self._start(zone)

    def open(self) -> None:
        """Start journaling each followed zone as soon as it is synced (at once if it is). Call
        when every source of every zone has been added: before that, a zone whose only source
        so far has loaded looks synced."""
        self._open = True
        for zone in self._zones:
            self._start(zone)

    # -- reading ---------------------------------------------------------------------------

    @property
    def serial(self) -> int | None:
        """The current SOA serial of the first zone followed (the cluster domain)."""
        return self._zones[0].store.serial if self._zones else None

    @property
    def oldest(self) -> int | None:
        """The lowest serial `since` can be given and still get every change after it."""
        self.flush()
        return self._floor

    def latest(self, n: int) -> list[Entry]:
        """The last `n` entries, oldest first."""
        self.flush()
        if n <= 0:
            return []
        out = list(islice(reversed(self._ring), n))
        out.reverse()
        return out

    def since(self, serial: int | None) -> tuple[list[Entry], bool]:
        """The entries after SOA serial `serial`, oldest first, and whether they are all the
        changes since then. None: the latest `LATEST` entries, complete when they are every
        change since the journal started."""
        self.flush()
        if serial is None:
            entries = self.latest(LATEST)
            complete = (
                self._floor is not None and not self._dropped and len(entries) == len(self._ring)
            )
            return entries, complete
        out: list[Entry] = []
        for entry in reversed(self._ring):
            if entry.serial <= serial:
                break
            out.append(entry)
        out.reverse()
        current = max(z.store.serial for z in self._zones) if self._zones else serial
        complete = self._floor is not None and self._floor <= serial <= current
        return out, complete

    # -- writing ---------------------------------------------------------------------------

    def _append(
        self,
        serial: int,
        when: float,
        name: str,
        rtype: str,
        before: tuple[str, ...],
        after: tuple[str, ...],
        cause: str,
    ) -> None:
        """Add an entry, dropping the oldest ones past `capacity` or `max_records`.

        Record sets change a little at a time: an address of a hundred. The entry's `before`
        is the previous entry's `after` of the same record set when they are equal (the same
        tuple), and its `after` reuses the strings of its `before`, so that such a change holds
        one new tuple and one new string, not two hundred strings.
        """
        key = (name, rtype)
        previous = self._recent.get(key)
        cost = len(after)
        if previous is not None and previous.after == before:
            before = previous.after
        else:
            cost += len(before)
        if before and after:
            strings = {text: text for text in before}
            after = tuple([strings.get(text, text) for text in after])
        entry = Entry(serial, when, name, rtype, before, after, cause)
        ring = self._ring
        while ring and (len(ring) >= self.capacity or self._records + cost > self.max_records):
            gone = ring.popleft()
            self._records -= self._costs.popleft()
            gone_key = (gone.name, gone.type)
            if self._recent.get(gone_key) is gone:
                del self._recent[gone_key]
            self._lost(gone.serial)
        ring.append(entry)
        self._costs.append(cost)
        self._records += cost
        self._recent[key] = entry

    def _changed(self, zone: _Zone) -> None:
        try:
            self._record(zone)
        except Exception:
            # The listeners after this one must run all the same; a journal that misses an
            # entry is better than a server that stops there.
            log.exception("change journal: could not record a change of %s", zone.domain)

    def _start(self, zone: _Zone) -> None:
        """Begin journaling `zone` when the journal is open and the zone synced: one entry
        stands for everything loaded until now."""
        store = zone.store
        if zone.started or not self._open or not store.synced:
            return
        zone.started = True
        serial = store.serial
        self._floor = serial if self._floor is None else max(self._floor, serial)
        n = len(zone.seen)
        cause = f"initial load: {n} service{'s' if n != 1 else ''}"
        self._append(serial, time.time(), f"{zone.domain}.", LOAD, (), (), cause)

    def _record(self, zone: _Zone) -> None:
        store = zone.store
        services = store.last_change.services
        if not zone.started:
            for skey in services:
                _remember(zone, skey)
            self._start(zone)
            return
        if not services:
            return
        # Only what the diff needs is taken now (views and endpoint objects are immutable);
        # the diffs are worked out by `_drain`, a slice at a time, between the loop's other
        # work: after a relist or an outage thousands of services change at once, and working
        # them all out in this listener held the loop, and every query, for seconds.
        serial, now = store.serial, time.time()
        for skey in sorted(services):
            old = zone.seen.get(skey)
            new = _remember(zone, skey)
            if old is not None or new is not None:
                self._note((zone, serial, now, skey, old, new))
        self._schedule()

    def _lost(self, serial: int) -> None:
        """A change of `serial` is no longer all there: `since` is complete only from it on."""
        self._dropped = True
        self._floor = serial if self._floor is None else max(self._floor, serial)

    def _note(self, change: tuple[_Zone, int, float, ServiceKey, _Seen, _Seen]) -> None:
        """Queue a change for `_drain`. When changes come faster than the journal's share of
        the CPU works them out and nobody reads them, the oldest waiting are dropped: the
        journal then keeps the newest and says from which serial on it is complete, rather
        than holding every view of a long churn or taking half of the watching process's CPU
        (a 100-endpoint slice's event costs 0.55 ms without the journal, 1.2 ms with it:
        bench/event_cost.py)."""
        self._pending.append(change)
        self._pending_weight += _weight(change)
        while self._pending_weight > MAX_PENDING and len(self._pending) > 1:
            gone = self._pending.popleft()
            self._pending_weight -= _weight(gone)
            self.skipped += 1
            self._lost(gone[1])
            if self.skipped - self._skip_logged >= _SKIP_LOG_EVERY:
                self._skip_logged = self.skipped
                log.warning(
                    "change journal: changes come faster than it works them out with %d%% of "
                    "the CPU; %d dropped unjournaled so far, complete from serial %d on "
                    "(a reader such as kdns changes --follow works them out as it asks)",
                    round(DRAIN_SHARE * 100),
                    self.skipped,
                    self._floor,
                )

    def _schedule(self) -> None:
        if self._draining or not self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop (a tool, a test): at once
            self.flush()
            return
        self._draining = True
        delay = self._next - self._clock()
        if delay > 0:
            loop.call_later(delay, self._drain)
        else:
            loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Work out waiting changes for `DRAIN_BUDGET` seconds, then wait long enough that
        this takes `DRAIN_SHARE` of the time: a slice at a time, so that queries are answered
        in between, and a share at most, so that a long churn does not double what the
        watching process spends on each change. Readers catch up on the rest (`catch_up`)."""
        self._draining = False
        began = self._clock()
        self._slice(began + DRAIN_BUDGET)
        ended = self._clock()
        # The pause holds whether or not changes still wait: one change at a time, each
        # worked out as it comes, would otherwise take as much as it costs.
        self._next = ended + (ended - began) * (1 / DRAIN_SHARE - 1)
        self._schedule()

    def _slice(self, until: float) -> None:
        """Journal waiting changes until `until` (on `_clock`), at least one."""
        while self._pending:
            self._journal(*self._pop())
            if self._clock() >= until:
                return

    def _pop(self) -> tuple[_Zone, int, float, ServiceKey, _Seen, _Seen]:
        change = self._pending.popleft()
        self._pending_weight -= _weight(change)
        return change

    @property
    def pending(self) -> int:
        """Changes noted and not yet worked out."""
        return len(self._pending)

    def flush(self) -> None:
        """Journal every change still waiting (readers call it: they see every change)."""
        while self._pending:
            self._journal(*self._pop())

    async def catch_up(self) -> None:
        """Journal every change still waiting, `DRAIN_BUDGET` seconds at a time with the loop
        running in between: what a reader awaits first, so that reading after a burst does
        not hold the loop (and every query) for as long as the burst's backlog takes."""
        while self._pending:
            self._slice(self._clock() + DRAIN_BUDGET)
            await asyncio.sleep(0)

    def _journal(
        self, zone: _Zone, serial: int, when: float, skey: ServiceKey, old: _Seen, new: _Seen
    ) -> None:
        try:
            old_view = old[0] if old is not None else None
            new_view = new[0] if new is not None else None
            diffs = record_diff(zone.domain, old_view, new_view, zone.answered)
            if not diffs:
                return
            cause = _cause(skey, old, new)
            for name, rtype, before, after in diffs:
                self._append(serial, when, name, rtype, before, after, cause)
        except Exception:
            log.exception("change journal: could not record a change of %s", zone.domain)


_Seen = tuple[ServiceView, tuple[EndpointSet, ...]] | None

#: Changes dropped between two warnings about it.
_SKIP_LOG_EVERY = 10_000


def _weight(change: tuple[_Zone, int, float, ServiceKey, _Seen, _Seen]) -> int:
    """What a waiting change holds alive: its new view, counted in endpoints (its old view is
    the change before's new one, or the store's)."""
    new = change[5]
    return 1 + (len(new[0].ready) if new is not None else 0)


def _remember(zone: _Zone, skey: ServiceKey) -> _Seen:
    """Keep what the store now holds for `skey`, and return it."""
    view = zone.store.service(*skey)
    if view is None:
        zone.seen.pop(skey, None)
        return None
    seen = (view, tuple(zone.store.endpoint_sets(*skey)))
    zone.seen[skey] = seen
    return seen


def _cause(
    skey: ServiceKey,
    old: tuple[ServiceView, tuple[EndpointSet, ...]] | None,
    new: tuple[ServiceView, tuple[EndpointSet, ...]] | None,
) -> str:
    """The objects whose change made `old` into `new`: the Service when it came, went or
    changed, and each endpoint object that came, went or changed (the store keeps an object
    it is given again unchanged, so a changed one is another object)."""
    ns, name = skey
    service = f"Service {ns}/{name}"
    if new is None:
        return f"{service} deleted"
    if old is None:
        return service
    parts = [service] if old[0].service != new[0].service else []
    before = {s.key: s for s in old[1]}
    after = {s.key: s for s in new[1]}
    for key in sorted(before.keys() | after.keys()):
        was, now = before.get(key), after.get(key)
        if was is now:
            continue
        kind, ons, oname = key
        text = f"Pod manifests for {ons}/{oname}" if kind == "Pods" else f"{kind} {ons}/{oname}"
        parts.append(text + (" deleted" if now is None else ""))
    # Nothing to name: the same objects give another view (another source took the service).
    return ", ".join(parts) or service


class Answered(ViewMemo["_ViewAnswers"]):
    """The engine over each of the last `size` views of zone `domain` and the record sets it
    gave. Under churn this halves the journal's work: a service's next change starts from the
    view this one ended with, so its `before` is looked up rather than worked out again
    (answering a 100-endpoint service's SRV and A questions, each record as text, then sorted,
    and the view's PTR index are most of what a change costs)."""

    __slots__ = ()

    def __init__(self, domain: str, size: int = 1024) -> None:
        super().__init__(partial(_ViewAnswers, domain), size)


class _ViewAnswers:
    """The record sets one view gives in zone `domain`, worked out when first asked."""

    def __init__(self, domain: str, view: ServiceView) -> None:
        self.domain = domain
        self.view = view
        self._engine: Engine | None = None
        self._sets: dict[tuple[str, str], tuple[str, ...]] = {}

    def records(self, name: str, rtype: str) -> tuple[str, ...]:
        """The rdata texts, sorted, that the engine answers to (name, rtype) from the view."""
        texts = self._sets.get((name, rtype))
        if texts is None:
            engine = self._engine
            if engine is None:
                engine = Engine([Cluster(self.domain, Store.of_views([self.view]))])
                self._engine = engine
            res = engine.decide(engine.grammar.parse(name[:-1].split(".")))
            found = engine.texts(res, getattr(QTYPE, rtype))
            assert found is not None, (name, rtype)  # every question asked here is covered
            # Sorted as text: cheap, and lists that differ by one record show it at one place.
            texts = self._sets[name, rtype] = tuple(sorted(found))
        return texts


def record_diff(
    domain: str,
    old: ServiceView | None,
    new: ServiceView | None,
    answered: Answered | None = None,
) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    """(name, type, before, after) of every record set of one service in zone `domain` that
    differs between view `old` and view `new` (None: the service does not exist). `answered`:
    record sets worked out before in zone `domain`, to reuse (views are immutable, so they still
    hold)."""
    moved = _moved(old, new) if old is not None and new is not None else None
    if (
        old is not None
        and new is not None
        and old.service == new.service
        and not moved
        and {(ep.hostname, ep.address, ep.ports) for ep in old.ready}
        == {(ep.hostname, ep.address, ep.ports) for ep in new.ready}
    ):
        # Only the order or the not-ready count moved (a pod that starts not ready): the
        # records are the same sets.
        return []
    asked = questions(domain, old, new, moved)
    before = _record_sets(domain, old, asked, answered)
    after = _record_sets(domain, new, asked, answered)
    return [
        (name, rtype, b, a)
        for (name, rtype), b, a in zip(asked, before, after, strict=True)
        if b != a
    ]


def questions(
    domain: str,
    old: ServiceView | None,
    new: ServiceView | None,
    moved: set[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """The (name, type) pairs whose records may differ between two views of one service, in
    zone `domain`: what `record_diff` asks the engine, before and after. `moved`: what
    `_moved(old, new)` gives, when the caller has it already."""
    views = [v for v in (old, new) if v is not None]
    if not views:
        return []
    svc = views[0].service
    fqdn = f"{svc.name}.{svc.namespace}.svc.{domain}."
    # An A or AAAA record holds an address of the view: a family neither view has any address
    # of has none to ask about (most services are single-stack).
    families = {":" in a for view in views for a in view.service.cluster_ips}
    families.update(":" in ep.address for view in views for ep in view.ready)
    address_types = [t for t, v6 in (("A", False), ("AAAA", True)) if v6 in families]
    out = [(fqdn, t) for t in (*address_types, "CNAME")]
    ports: set[tuple[str, str]] = set()
    for view in views:
        ports.update((p.name.lower(), p.protocol.lower()) for p in view.service.ports if p.name)
        for port_list in _port_lists(view):
            ports.update((p.name.lower(), p.protocol.lower()) for p in port_list if p.name)
    out += [(f"_{port}._{proto}.{fqdn}", "SRV") for port, proto in sorted(ports)]
    if old is not None and new is not None and old.service == new.service:
        # The same service object: an endpoint name, or an address, whose endpoints are the
        # same in both views answers the same (the engine reads their names and addresses,
        # nothing else), so only those of the endpoints that came or went are asked.
        if moved is None:
            moved = _moved(old, new)
        labels = {name.lower() for name, _ in moved}
        addresses = {address for _, address in moved}
    else:
        labels = {ep.name.lower() for view in views for ep in view.ready}
        addresses = {ep.address for view in views for ep in view.ready}
        addresses.update(ip for view in views for ip in view.service.cluster_ips)
    out += [(f"{label}.{fqdn}", t) for label in sorted(labels) for t in address_types]
    for address in sorted(addresses):
        try:
            out.append((ipaddress.ip_address(address).reverse_pointer + ".", "PTR"))
        except ValueError:
            continue  # not an address a reverse name can spell
    return out


def _moved(old: ServiceView, new: ServiceView) -> set[tuple[str, str]]:
    """The (endpoint name, address) pairs that one view has and the other has not."""
    # Compared as (hostname, address), which the name is made from, so that only the names of
    # the endpoints that differ are spelled: a change moves one endpoint of a hundred.
    was = {(ep.hostname, ep.address) for ep in old.ready}
    now = {(ep.hostname, ep.address) for ep in new.ready}
    if was == now:
        return set()
    kept = was & now
    gone = {(endpoint_name(h, a), a) for h, a in was - now}
    came = {(endpoint_name(h, a), a) for h, a in now - was}
    # A pair can spell the same name as another ("10-0-0-1" as a hostname, or no hostname and
    # 10.0.0.1): a name an unchanged endpoint still gives did not move.
    return {
        (name, a)
        for name, a in gone ^ came
        if (name, a) not in kept and not (name == endpoint_name("", a) and ("", a) in kept)
    }


def _port_lists(view: ServiceView) -> Iterable[tuple[EndpointPort, ...]]:
    """The distinct port lists of a view's endpoints (the endpoints of one slice share one
    tuple: told apart by identity, not by hashing every port of every endpoint)."""
    return {id(ep.ports): ep.ports for ep in view.ready}.values()


def _record_sets(
    domain: str,
    view: ServiceView | None,
    asked: list[tuple[str, str]],
    answered: Answered | None = None,
) -> list[tuple[str, ...]]:
    """The rdata texts, sorted, that the engine answers to each question from `view` alone."""
    if view is None:
        return [() for _ in asked]
    known = answered.of(view) if answered is not None else _ViewAnswers(domain, view)
    return [known.records(name, rtype) for name, rtype in asked]


# -- the wire form (`/changes`) ----------------------------------------------------------------


def iso_time(when: float) -> str:
    """UTC ISO 8601 with milliseconds and Z: `2026-05-01T14:02:11.123Z`."""
    ms = int(when * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{ms:03d}Z"


def entry_json(entry: Entry) -> dict[str, Any]:
    """One entry as `/changes` gives it."""
    return {
        "serial": entry.serial,
        "time": iso_time(entry.time),
        "name": entry.name,
        "type": entry.type,
        "before": list(entry.before),
        "after": list(entry.after),
        "cause": entry.cause,
    }


def changes_json(journal: Journal, since: int | None, name: str = "") -> dict[str, Any]:
    """The body of `/changes`: the entries after `since` (the latest ones without it), those
    whose name contains `name` (case-insensitive) when given; whether they are complete; the
    lowest serial that can be asked for completely (`oldest`); the current serial.

    At most a page of them (`PAGE_ENTRIES` entries, `PAGE_RECORDS` record texts, but always
    every entry of a serial it gives): the answer is written on the event loop, and the whole
    ring as JSON took half a second. `"more": true` then says to ask again from the last
    serial given.
    """
    entries, complete = journal.since(since)
    needle = name.lower()
    if needle:
        entries = [e for e in entries if needle in e.name]
    page: list[Entry] = []
    records = 0
    more = False
    for entry in entries:
        size = len(entry.before) + len(entry.after)
        full = len(page) >= PAGE_ENTRIES or records + size > PAGE_RECORDS
        if page and full and entry.serial != page[-1].serial:
            more = True
            break
        page.append(entry)
        records += size
    return {
        "serial": journal.serial,
        "since": since,
        "complete": complete,
        "oldest": journal.oldest,
        "more": more,
        "capacity": journal.capacity,
        "max_records": journal.max_records,
        "entries": [entry_json(e) for e in page],
    }
