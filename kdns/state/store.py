"""The store: current objects from every source, with the indexes answers need.

Sources write into named *layers* (the zones/ files, a cluster); the first layer added wins when
two define the same service, so manifests on disk can override what a cluster says. Each write is
a diff: objects equal to what the layer already holds change nothing, so the generation (which is
also the SOA serial and the key that invalidates cached answers) moves only when DNS-visible data
moves.

Readers and writers meet on one thread. The server applies every write as a single callback on
its event loop (see `LoopSink`), so a query never sees half of a change, and no lock sits on the
query path. A writer in a worker thread (the Kubernetes watch) never touches the store directly.

For each service the store keeps a precomputed `ServiceView`: the endpoints that count (slices win
over v1 Endpoints, readiness and publishNotReadyAddresses applied, duplicates removed). A change
recomputes only the views of the services it touches, and the reverse (PTR) indexes are updated
from the difference between the old and the new view.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from kdns.state.model import (
    ROUTE_KINDS,
    Endpoint,
    EndpointPort,
    EndpointSet,
    Gateway,
    HostRoute,
    ImportSlice,
    KubeObject,
    Namespace,
    ObjectKey,
    PodAddresses,
    Service,
    ServiceExport,
    ServiceImport,
    address_of_label,
    endpoint_name,
    fast_record,
    is_label,
    record_count,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

ServiceKey = tuple[str, str]  # (namespace, name)
#: Called after every change: (generation, time.monotonic() at which the change arrived, or None).
Listener = Callable[[int, float | None], None]


@dataclass(frozen=True, slots=True)
class Change:
    """What the last write changed, so caches can drop only what it affects."""

    #: Services whose view (spec, endpoints, readiness) changed.
    services: frozenset[ServiceKey] = frozenset()
    #: Addresses whose reverse (PTR) entries changed.
    addresses: frozenset[str] = frozenset()
    #: Namespaces in which a pod's addresses changed (`--pods verified`).
    pods: frozenset[str] = frozenset()
    #: Something every name may depend on changed: namespaces, sync state.
    full: bool = False


_NO_CHANGE = Change()


@fast_record
@dataclass(frozen=True, slots=True)
class ReadyEndpoint:
    """One address of one ready endpoint of a service."""

    #: The endpoint's own DNS label (its hostname, or its pod's name with
    #: --endpoint-pod-names); "" when it is named by its address. The dashed address is made
    #: when asked for (`name`): kept, those strings were 6 MB per 100,000 endpoints.
    hostname: str
    address: str
    ports: tuple[EndpointPort, ...]

    @property
    def name(self) -> str:
        """The endpoint's DNS label: hostname or dashed address."""
        return self.hostname or endpoint_name("", self.address)


@fast_record
@dataclass(frozen=True, slots=True)
class ServiceView:
    """A service with the endpoints that answer for it, as the DNS spec counts them."""

    service: Service
    #: Ready endpoint addresses, in a stable order; one entry per (endpoint name, address).
    ready: tuple[ReadyEndpoint, ...] = ()
    #: How many endpoint addresses were left out because they were not ready.
    not_ready: int = 0
    #: The endpoint objects the addresses came from, for `kdns explain`.
    sources: tuple[ObjectKey, ...] = ()
    #: How many of `ready`, from the first, are for the preferred zone (`--prefer-zone`):
    #: answers list them first and rotate each group apart. 0 when none or all are.
    preferred: int = 0

    def addresses(self) -> list[str]:
        """Ready addresses, deduplicated, in order."""
        seen: dict[str, None] = {}
        for ep in self.ready:
            seen.setdefault(ep.address, None)
        return list(seen)

    def preferred_addresses(self) -> frozenset[str]:
        """The addresses of the preferred group (empty when the answers are one group)."""
        return frozenset(ep.address for ep in self.ready[: self.preferred])

    def named(self, label: str) -> list[str]:
        """Addresses of the ready endpoints whose name is `label` (case-insensitive)."""
        return list(dict.fromkeys(ep.address for ep in self.endpoints_named(label)))

    def endpoints_named(self, label: str) -> list[ReadyEndpoint]:
        """The ready endpoints whose name is `label` (case-insensitive), in order."""
        label = label.lower()
        # The address the label would spell, worked out once, not every endpoint's dashed name.
        address = address_of_label(label)
        return [
            ep
            for ep in self.ready
            if (
                ep.hostname.lower() == label
                if ep.hostname
                else ep.address == address and endpoint_name("", ep.address) == label
            )
        ]


class ViewMemo(Generic[_T]):
    """What was worked out from each of the last `size` service views, by identity, oldest
    dropped first: a service that changes gets a new view, worked out anew, and the old one
    ages out. The view is held with its entry, so its id is not reused while the entry is here.

    The responder keeps the encoded answer sections of the views it answered
    (`kdns.dns.large_answers.Bodies`), the change journal the record sets (`kdns.ops.journal`).
    """

    __slots__ = ("_make", "_views", "size")

    def __init__(self, make: Callable[[ServiceView], _T], size: int) -> None:
        self._make = make
        self.size = size
        self._views: dict[int, tuple[ServiceView, _T]] = {}

    def of(self, view: ServiceView) -> _T:
        """The entry kept for `view`, made by `make(view)` when it is new here."""
        views = self._views
        kept = views.get(id(view))
        if kept is not None and kept[0] is view:
            return kept[1]
        if len(views) >= self.size:
            del views[next(iter(views))]
        made = self._make(view)
        views[id(view)] = (view, made)
        return made

    def __len__(self) -> int:
        return len(self._views)


@dataclass(frozen=True, slots=True)
class ViewRules:
    """How a service's endpoints become names and in what order (server-wide settings)."""

    #: `--endpoint-pod-names`: an endpoint without hostname is named by its pod (targetRef)
    #: when that name is a DNS label, as CoreDNS's endpoint_pod_names does.
    pod_names: bool = False
    #: `--prefer-zone`: the endpoints for this zone come first ("": no preference).
    prefer_zone: str = ""


@dataclass(slots=True)
class _Layer:
    name: str
    #: Files make a namespace exist by putting an object in it; a cluster says so with Namespaces.
    implicit_namespaces: bool
    services: dict[ServiceKey, Service] = field(default_factory=dict)
    endpoint_sets: dict[ObjectKey, EndpointSet] = field(default_factory=dict)
    pods: dict[ObjectKey, PodAddresses] = field(default_factory=dict)
    by_service: dict[ServiceKey, dict[ObjectKey, EndpointSet]] = field(default_factory=dict)
    namespaces: set[str] = field(default_factory=set)
    #: namespace -> number of objects in it (for implicit namespaces)
    populated: dict[str, int] = field(default_factory=dict)
    synced: bool = False
    #: Wall-clock time since which the layer's source cannot reach its API (None: it can).
    unreachable_since: float | None = None
    #: Set when a namespace came into or went out of existence; the store resets it.
    namespaces_changed: bool = False
    #: Ingresses and Gateway API routes (`--external-zone`), and the Gateways routes attach to.
    routes: dict[ObjectKey, HostRoute] = field(default_factory=dict)
    gateways: dict[ObjectKey, Gateway] = field(default_factory=dict)
    #: host name (wildcards as `*.<rest>`) -> the routes that have it
    by_host: dict[str, set[ObjectKey]] = field(default_factory=dict)
    #: every name strictly above a route's host -> how many hosts are below it: those names
    #: exist without records of their own (empty non-terminals: NODATA, not NXDOMAIN)
    above_hosts: dict[str, int] = field(default_factory=dict)
    #: A route without hostnames takes those of the listeners it attaches to (the Gateway
    #: API's rule): route -> the hosts it inherits from this layer's Gateways, and Gateway
    #: (namespace, name) -> the routes without hostnames that name it.
    inherited: dict[ObjectKey, tuple[str, ...]] = field(default_factory=dict)
    hostless: dict[tuple[str, str], set[ObjectKey]] = field(default_factory=dict)
    #: ServiceImports and their EndpointSlices (`--clusterset-domain`)
    imports: dict[ObjectKey, ServiceImport] = field(default_factory=dict)
    import_slices: dict[ObjectKey, ImportSlice] = field(default_factory=dict)
    slices_by_import: dict[ServiceKey, dict[ObjectKey, ImportSlice]] = field(default_factory=dict)
    #: ServiceExports (`--clusterset`), and how many name each service
    exports: dict[ObjectKey, ServiceExport] = field(default_factory=dict)
    exported: dict[ServiceKey, int] = field(default_factory=dict)
    #: `record_count` summed over the objects held, kept by `Store.apply` as it writes: summed
    #: afresh, it read every object, and with `--workers` every page it read became a page the
    #: serving processes forked before no longer shared with this one (19 MB each, 10,000
    #: services and 100,000 endpoints).
    records: int = 0

    def has_namespace(self, ns: str) -> bool:
        if ns in self.namespaces:
            return True
        return self.implicit_namespaces and self.populated.get(ns, 0) > 0

    def get(self, key: ObjectKey) -> KubeObject | None:
        kind, ns, name = key
        if kind == "Service":
            return self.services.get((ns, name))
        if kind == "Namespace":
            return Namespace(name) if name in self.namespaces else None
        if kind == "Pod":
            return self.pods.get(key)
        if kind == "Gateway":
            return self.gateways.get(key)
        if kind in ROUTE_KINDS:
            return self.routes.get(key)
        if kind == "ServiceImport":
            return self.imports.get(key)
        if kind == "ImportSlice":
            return self.import_slices.get(key)
        if kind == "ServiceExport":
            return self.exports.get(key)
        return self.endpoint_sets.get(key)

    def keys(self, kinds: Collection[str] | None) -> list[ObjectKey]:
        out: list[ObjectKey] = []
        if kinds is None or "Service" in kinds:
            out.extend(("Service", ns, name) for ns, name in self.services)
        if kinds is None or "Namespace" in kinds:
            out.extend(("Namespace", "", name) for name in self.namespaces)
        out.extend(k for k in self.endpoint_sets if kinds is None or k[0] in kinds)
        if kinds is None or "Pod" in kinds:
            out.extend(self.pods)
        out.extend(k for k in self.routes if kinds is None or k[0] in kinds)
        if kinds is None or "Gateway" in kinds:
            out.extend(self.gateways)
        if kinds is None or "ServiceImport" in kinds:
            out.extend(self.imports)
        if kinds is None or "ImportSlice" in kinds:
            out.extend(self.import_slices)
        if kinds is None or "ServiceExport" in kinds:
            out.extend(self.exports)
        return out

    def _hosts(self, route: HostRoute) -> tuple[str, ...]:
        return route.hosts or self.inherited.get(route.key, ())

    def _inherit(self, route: HostRoute) -> None:
        """Work out the hosts a route without hostnames takes from its parents' listeners."""
        hosts: dict[str, None] = {}
        for ns, name, section in route.parents:
            gateway = self.gateways.get(("Gateway", ns, name))
            for listener, hostname in gateway.listeners if gateway is not None else ():
                if hostname and (not section or listener == section):
                    hosts[hostname] = None
        if hosts:
            self.inherited[route.key] = tuple(hosts)
        else:
            self.inherited.pop(route.key, None)

    def _attach(self, route: HostRoute, delta: int) -> None:
        """Index (delta 1) or unindex (-1) a route, with what it inherits when hostless."""
        if route.hosts or not route.parents:
            self._index_route(route, delta)
            return
        if delta > 0:
            for ns, name, _ in route.parents:
                self.hostless.setdefault((ns, name), set()).add(route.key)
            self._inherit(route)
            self._index_route(route, 1)
            return
        self._index_route(route, -1)
        self.inherited.pop(route.key, None)
        for ns, name, _ in route.parents:
            keys = self.hostless.get((ns, name))
            if keys is not None:
                keys.discard(route.key)
                if not keys:
                    del self.hostless[(ns, name)]

    def _put_gateway(self, key: ObjectKey, gateway: Gateway | None) -> None:
        """Store (or, None: drop) a Gateway, moving the routes that inherit its listeners'
        hostnames to their new hosts."""
        attached = [self.routes[k] for k in sorted(self.hostless.get((key[1], key[2]), ()))]
        for route in attached:
            self._index_route(route, -1)
        if gateway is None:
            self.gateways.pop(key, None)
        else:
            self.gateways[key] = gateway
        for route in attached:
            self._inherit(route)
            self._index_route(route, 1)

    def _index_route(self, route: HostRoute, delta: int) -> None:
        for host in self._hosts(route):
            if delta > 0:
                self.by_host.setdefault(host, set()).add(route.key)
            else:
                keys = self.by_host.get(host)
                if keys is not None:
                    keys.discard(route.key)
                    if not keys:
                        del self.by_host[host]
            labels = host.split(".")
            for i in range(1, len(labels)):
                above = ".".join(labels[i:])
                n = self.above_hosts.get(above, 0) + delta
                if n > 0:
                    self.above_hosts[above] = n
                else:
                    self.above_hosts.pop(above, None)

    def _count(self, ns: str, delta: int) -> None:
        before = self.populated.get(ns, 0)
        n = before + delta
        if n > 0:
            self.populated[ns] = n
        else:
            self.populated.pop(ns, None)
        if self.implicit_namespaces and (before > 0) != (n > 0):
            self.namespaces_changed = True

    def put(self, obj: KubeObject) -> ServiceKey | None:
        """Store `obj`; return the service whose view it affects, if any."""
        if isinstance(obj, Namespace):
            if obj.name not in self.namespaces:
                self.namespaces.add(obj.name)
                self.namespaces_changed = True
            return None
        if isinstance(obj, Service):
            skey = (obj.namespace, obj.name)
            if skey not in self.services:
                self._count(obj.namespace, 1)
            self.services[skey] = obj
            return skey
        if isinstance(obj, PodAddresses):
            # Pods make no namespace exist: a pod name's namespace must exist by itself.
            self.pods[obj.key] = obj
            return None
        if isinstance(obj, HostRoute):
            old_route = self.routes.get(obj.key)
            if old_route is not None:
                self._attach(old_route, -1)
            self.routes[obj.key] = obj
            self._attach(obj, 1)
            return None
        if isinstance(obj, Gateway):
            self._put_gateway(obj.key, obj)
            return None
        if isinstance(obj, ServiceImport):
            if obj.key not in self.imports:
                self._count(obj.namespace, 1)
            self.imports[obj.key] = obj
            return None
        if isinstance(obj, ServiceExport):
            old_export = self.exports.get(obj.key)
            if old_export is not None:
                self._index_export(old_export, -1)
            self.exports[obj.key] = obj
            self._index_export(obj, 1)
            return None
        if isinstance(obj, ImportSlice):
            old_slice = self.import_slices.get(obj.key)
            if old_slice is not None:
                self._unlink_slice(old_slice)
            else:
                self._count(obj.namespace, 1)
            self.import_slices[obj.key] = obj
            self.slices_by_import.setdefault((obj.namespace, obj.service), {})[obj.key] = obj
            return None
        old = self.endpoint_sets.get(obj.key)
        if old is not None:
            self._unlink(old)
        else:
            self._count(obj.namespace, 1)
        self.endpoint_sets[obj.key] = obj
        skey = (obj.namespace, obj.service)
        self.by_service.setdefault(skey, {})[obj.key] = obj
        return skey

    def _index_export(self, export: ServiceExport, delta: int) -> None:
        skey = (export.namespace, export.service)
        n = self.exported.get(skey, 0) + delta
        if n > 0:
            self.exported[skey] = n
        else:
            self.exported.pop(skey, None)

    def _unlink(self, eps: EndpointSet) -> None:
        skey = (eps.namespace, eps.service)
        group = self.by_service.get(skey)
        if group is not None:
            group.pop(eps.key, None)
            if not group:
                del self.by_service[skey]

    def _unlink_slice(self, piece: ImportSlice) -> None:
        ikey = (piece.namespace, piece.service)
        group = self.slices_by_import.get(ikey)
        if group is not None:
            group.pop(piece.key, None)
            if not group:
                del self.slices_by_import[ikey]

    def remove(self, key: ObjectKey) -> list[ServiceKey]:
        """Remove the object at `key`; return the services whose views it affects."""
        kind, ns, name = key
        if kind == "Namespace":
            if name in self.namespaces:
                self.namespaces.discard(name)
                self.namespaces_changed = True
            return []
        if kind == "Service":
            if self.services.pop((ns, name), None) is None:
                return []
            self._count(ns, -1)
            return [(ns, name)]
        if kind == "Pod":
            self.pods.pop(key, None)
            return []
        if kind == "Gateway":
            self._put_gateway(key, None)
            return []
        if kind in ROUTE_KINDS:
            route = self.routes.get(key)
            if route is not None:
                self._attach(route, -1)
                del self.routes[key]
            return []
        if kind == "ServiceImport":
            if self.imports.pop(key, None) is not None:
                self._count(ns, -1)
            return []
        if kind == "ImportSlice":
            piece = self.import_slices.pop(key, None)
            if piece is not None:
                self._unlink_slice(piece)
                self._count(ns, -1)
            return []
        if kind == "ServiceExport":
            export = self.exports.pop(key, None)
            if export is not None:
                self._index_export(export, -1)
            return []
        eps = self.endpoint_sets.pop(key, None)
        if eps is None:
            return []
        self._unlink(eps)
        self._count(ns, -1)
        return [(eps.namespace, eps.service)]


_DEFAULT_RULES = ViewRules()


def build_view(
    service: Service, sets: Iterable[EndpointSet], rules: ViewRules = _DEFAULT_RULES
) -> ServiceView:
    """Compute the endpoints that answer for `service` from its endpoint objects.

    EndpointSlices win over v1 Endpoints: on a cluster the mirroring controller copies manual
    Endpoints into slices, and counting both would list every address twice.

    With a preferred zone, the endpoints for it come first (a stable partition). Which zone an
    endpoint is for follows kube-proxy's topology-aware routing: its `hints.forZones` when every
    ready endpoint of the service has hints (the controller placed them to balance the load),
    else the zone it is in.
    """
    if service.type == "ExternalName":
        return ServiceView(service)
    chosen = sorted(sets, key=lambda s: (s.kind, s.name))
    slices = [s for s in chosen if s.kind == "EndpointSlice"]
    if slices:
        chosen = slices
    ready: list[ReadyEndpoint] = []
    seen: set[tuple[str, str, int]] = set()
    # Port lists, numbered: hashing a tuple of port records per endpoint was a fifth of the
    # time of a slice change.
    port_ids: dict[tuple[EndpointPort, ...], int] = {}
    not_ready = 0
    zone = rules.prefer_zone
    pod_names = rules.pod_names
    #: With a preferred zone: the endpoint each entry of `ready` came from.
    origins: list[Endpoint] = []
    for eps in chosen:
        for subset in eps.subsets:
            ports = subset.ports
            pid = port_ids.setdefault(ports, len(port_ids))
            for ep in subset.endpoints:
                ok = ep.ready or service.publish_not_ready
                hostname = ep.hostname
                if not hostname and pod_names:
                    pod = ep.pod_name
                    if is_label(pod):
                        hostname = pod
                for address in ep.addresses:
                    if not ok:
                        not_ready += 1
                        continue
                    before = len(seen)
                    seen.add((hostname, address, pid))
                    if len(seen) == before:
                        continue
                    ready.append(ReadyEndpoint(hostname, address, ports))
                    if zone:
                        origins.append(ep)
    preferred = 0
    if zone and ready:
        hinted = all(ep.for_zones for ep in origins)
        first = [(zone in ep.for_zones) if hinted else (ep.zone == zone) for ep in origins]
        preferred = sum(first)
        if 0 < preferred < len(ready):
            ready = [r for r, f in zip(ready, first, strict=True) if f] + [
                r for r, f in zip(ready, first, strict=True) if not f
            ]
        else:
            preferred = 0
    return ServiceView(service, tuple(ready), not_ready, tuple(s.key for s in chosen), preferred)


def build_import_view(imp: ServiceImport, slices: Iterable[ImportSlice]) -> ServiceView:
    """A ServiceImport as the view the answer engine reads for `<svc>.<ns>.svc.<clusterset>`:
    a service with the import's clusterset IPs and ports, and for a Headless import the ready
    endpoints of its slices, each named `<hostname>.<clusterid>` (the hostname, or the dashed
    address when it has none, as in the cluster zone and CoreDNS's multicluster plugin). A
    ClusterSetIP import has no endpoint names: the MCS DNS specification (2.3.4) rules out
    names that single out one cluster's backends."""
    headless = imp.type == "Headless"
    service = Service(
        imp.namespace,
        imp.name,
        cluster_ips=() if headless else imp.ips,
        headless=headless,
        ports=imp.ports,
    )
    if not headless:
        return ServiceView(service)
    chosen = sorted(slices, key=lambda s: (s.cluster, s.name))
    ready: list[ReadyEndpoint] = []
    seen: set[tuple[str, str, tuple[EndpointPort, ...]]] = set()
    not_ready = 0
    for piece in chosen:
        for subset in piece.subsets:
            for ep in subset.endpoints:
                for address in ep.addresses:
                    if not ep.ready:
                        not_ready += 1
                        continue
                    label = f"{ep.hostname or endpoint_name('', address)}.{piece.cluster}"
                    entry = (label.lower(), address, subset.ports)
                    if entry in seen:
                        continue
                    seen.add(entry)
                    ready.append(ReadyEndpoint(label, address, subset.ports))
    return ServiceView(service, tuple(ready), not_ready, tuple(s.key for s in chosen))


class Store:
    """Current DNS-relevant objects from every source, with a generation counter."""

    def __init__(
        self,
        serial_base: int = 0,
        rules: ViewRules = _DEFAULT_RULES,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`serial_base`: the SOA serial before the first change. `clock` (a server's:
        `time.time`): each change then makes the serial the current second, or one more than
        before if that is not more. Counted from the start instead, a restarted server's serial
        went back whenever changes had come faster than one a second (a secondary then takes
        the zone for older); this way it leads the clock only by the burst just past."""
        self.rules = rules
        self._clock = clock
        self._layers: dict[str, _Layer] = {}
        #: pod IP -> namespace -> how many pods (of every layer) there have it (`--pods
        #: verified`, and `--autopath`, which finds a client's namespace by its address).
        self._pod_ips: dict[str, dict[str, int]] = {}
        self._changed_pods: set[str] = set()
        self._views: dict[ServiceKey, ServiceView] = {}
        self._owner: dict[ServiceKey, str] = {}
        self._cluster_ptr: dict[str, ServiceKey | list[ServiceKey]] = {}
        #: address -> the service of an endpoint named by its address (its key, shared with
        #: `_views`), or (namespace, service, label) for one named otherwise; a list when several.
        #: (A (namespace, service, label) tuple for every endpoint cost 6.4 MB per 100,000.)
        self._endpoint_ptr: dict[str, _PtrEntry | list[_PtrEntry]] = {}
        self._listeners: list[Listener] = []
        self._conflicts_warned: set[ServiceKey] = set()
        self.generation = 0
        self._serial_base = serial_base
        #: What the change being announced touched: valid while listeners run, then released
        #: (after a sync of 100,000 endpoints it held a 4 MB set of addresses for nothing).
        self.last_change = _NO_CHANGE
        self._changed_services: set[ServiceKey] = set()
        self._changed_addresses: set[str] = set()
        self._full = False
        #: ServiceImports as views (`build_import_view`), of the first layer that has each.
        self._imports: dict[ServiceKey, ServiceView] = {}
        #: The PTR index of the import views, as `_cluster_ptr` and `_endpoint_ptr` together:
        #: a clusterset IP -> its import's key, an endpoint address -> (ns, import, label).
        self._import_ptr: dict[str, _PtrEntry | list[_PtrEntry]] = {}
        self._imports_warned: set[ServiceImport] = set()

    @classmethod
    def of_views(cls, views: Iterable[ServiceView]) -> Store:
        """A synced store that holds exactly `views`, the namespaces they are in and their PTR
        indexes, and nothing else (no endpoint objects, no pods).

        What the answer engine reads when it is asked what some views give, including views the
        live store no longer holds: the change journal (`kdns.ops.journal`) asks it for a
        service's records before and after a change. Views are immutable, so they are shared,
        not copied; the cost is the PTR index of these views alone.
        """
        store = cls()
        store.add_layer("views", implicit_namespaces=True)
        lay = store._layers["views"]
        lay.synced = True
        for view in views:
            svc = view.service
            skey = (svc.namespace, svc.name)
            lay.put(svc)
            lay.records += 1
            store._views[skey] = view
            store._owner[skey] = lay.name
            store._reindex(skey, None, view)
        store._changed_addresses.clear()
        return store

    # -- layers and sync state -------------------------------------------------------------

    def add_layer(self, name: str, *, implicit_namespaces: bool = False) -> None:
        """Register a source. Layers added first win conflicts."""
        if name in self._layers:
            raise ValueError(f"layer {name!r} already exists")
        self._layers[name] = _Layer(name, implicit_namespaces)

    def layers(self) -> list[str]:
        return list(self._layers)

    def set_synced(self, layer: str, synced: bool = True) -> None:
        """Mark a layer as having completed (or lost) its first full load."""
        lay = self._layers[layer]
        if lay.synced != synced:
            lay.synced = synced
            self._full = True
            self._bump(None)

    def set_unreachable(self, layer: str, since: float | None) -> None:
        """Mark a layer's source as cut off from its API since `since` (wall-clock seconds), or
        as reaching it again (None). Answers from its data then say they may be stale (RFC 8914
        Stale Answer), so a change of this drops every cached answer, like a change of sync."""
        lay = self._layers[layer]
        if (lay.unreachable_since is None) != (since is None):
            lay.unreachable_since = since
            self._full = True
            self._bump(None)

    @property
    def unreachable_since(self) -> float | None:
        """The earliest time since which a layer's source cannot reach its API, if any does."""
        times = [lay.unreachable_since for lay in self._layers.values()]
        return min((t for t in times if t is not None), default=None)

    @property
    def synced(self) -> bool:
        """True once every layer has completed its first full load."""
        return all(lay.synced for lay in self._layers.values())

    def layer_states(self) -> list[tuple[str, bool, bool, float | None]]:
        """(name, implicit namespaces, synced, unreachable since) of every layer, in precedence
        order."""
        return [
            (lay.name, lay.implicit_namespaces, lay.synced, lay.unreachable_since)
            for lay in self._layers.values()
        ]

    def layer_objects(self, layer: str) -> list[KubeObject]:
        """Everything `layer` holds: what a replica needs to start from (see `publish.py`)."""
        lay = self._layers[layer]
        objects = [lay.get(key) for key in lay.keys(None)]
        return [obj for obj in objects if obj is not None]

    def records(self) -> int:
        """Records held by every layer (`record_count`): one per object and one per endpoint."""
        return sum(lay.records for lay in self._layers.values())

    def follow_serial(self, serial: int) -> None:
        """Make `serial` the current SOA serial: a replica takes its publisher's numbering, so
        every serving process gives the same serial for the same data."""
        self._serial_base = (serial - self.generation) % (1 << 32)

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(generation, received_at)` after every change."""
        self._listeners.append(listener)

    def forget_listeners(self) -> None:
        """Drop every listener: a serving process forked from the main process keeps the store
        but not what the main process hung on it (its answer cache, its journal)."""
        self._listeners.clear()

    # -- writing -------------------------------------------------------------------------------

    def apply(
        self,
        layer: str,
        upserts: Iterable[KubeObject] = (),
        deletes: Iterable[ObjectKey] = (),
        received_at: float | None = None,
    ) -> bool:
        """Add or replace `upserts` and remove `deletes` in `layer`, as one change.

        Returns True when anything DNS can see changed (and the generation moved).
        """
        lay = self._layers[layer]
        touched: set[ServiceKey] = set()
        imports: set[ServiceKey] = set()
        changed = False
        for key in deletes:
            old = lay.get(key)
            if old is None:
                continue
            changed = True
            lay.records -= record_count(old)
            if isinstance(old, PodAddresses):
                self._index_pod(old, -1)
            elif isinstance(old, (ServiceImport, ImportSlice)):
                imports.add(_import_key(old))
            elif isinstance(old, ServiceExport):
                # No view changes, but what `exported` says does (the `--clusterset` union).
                self._changed_services.add((old.namespace, old.service))
            touched.update(lay.remove(key))
        for obj in upserts:
            old = lay.get(obj.key)
            if old == obj:
                continue
            changed = True
            lay.records += record_count(obj) - (0 if old is None else record_count(old))
            if isinstance(obj, PodAddresses):
                if isinstance(old, PodAddresses):
                    self._index_pod(old, -1)
                self._index_pod(obj, 1)
            if isinstance(obj, EndpointSet):
                old = lay.endpoint_sets.get(obj.key)
                if old is not None and old.service != obj.service:
                    touched.add((old.namespace, old.service))
            elif isinstance(obj, (ServiceImport, ImportSlice)):
                imports.add(_import_key(obj))
                if isinstance(old, ImportSlice):
                    imports.add(_import_key(old))
            elif isinstance(obj, ServiceExport):
                self._changed_services.add((obj.namespace, obj.service))
                if isinstance(old, ServiceExport):
                    self._changed_services.add((old.namespace, old.service))
            skey = lay.put(obj)
            if skey is not None:
                touched.add(skey)
        if not changed:
            return False
        for skey in touched:
            self._refresh(skey)
        for ikey in imports:
            self._refresh_import(ikey)
        if lay.namespaces_changed:
            lay.namespaces_changed = False
            self._full = True
        self._bump(received_at)
        return True

    def replace(
        self,
        layer: str,
        objects: Iterable[KubeObject],
        kinds: Collection[str] | None = None,
        received_at: float | None = None,
    ) -> bool:
        """Make `objects` the whole content of `layer` for `kinds` (all kinds when None).

        Computed as a diff and applied as one change, so names that did not change keep
        answering throughout (a relist after 410 Expired, a reload of zones/).
        """
        lay = self._layers[layer]
        new = {obj.key: obj for obj in objects}
        deletes = [k for k in lay.keys(kinds) if k not in new]
        return self.apply(layer, new.values(), deletes, received_at)

    def _refresh(self, skey: ServiceKey) -> None:
        old = self._views.get(skey)
        view: ServiceView | None = None
        owner = None
        for lay in self._layers.values():
            svc = lay.services.get(skey)
            if svc is None:
                continue
            if owner is None:
                owner = lay.name
                view = build_view(svc, lay.by_service.get(skey, {}).values(), self.rules)
            elif skey not in self._conflicts_warned:
                self._conflicts_warned.add(skey)
                log.warning(
                    "service %s/%s is defined by both %s and %s; %s wins",
                    skey[0],
                    skey[1],
                    owner,
                    lay.name,
                    owner,
                )
        if old == view:
            return
        self._changed_services.add(skey)
        self._reindex(skey, old, view)
        if view is None:
            self._views.pop(skey, None)
            self._owner.pop(skey, None)
        else:
            self._views[skey] = view
            self._owner[skey] = owner or ""

    def _refresh_import(self, ikey: ServiceKey) -> None:
        """Recompute the view of one ServiceImport: the first layer that has it wins. (Answers
        in the clusterset zone are cached under `ANY_TAG`, dropped on every change: no change
        record is kept for them.)"""
        key = ("ServiceImport", *ikey)
        old = self._imports.get(ikey)
        for lay in self._layers.values():
            imp = lay.imports.get(key)
            if imp is None:
                continue
            if imp.type == "ClusterSetIP" and not imp.ips and imp not in self._imports_warned:
                self._imports_warned.add(imp)
                log.warning(
                    "ServiceImport %s/%s (ClusterSetIP) has no spec.ips: its names answer "
                    "NXDOMAIN until it has",
                    *ikey,
                )
            view = build_import_view(imp, lay.slices_by_import.get(ikey, {}).values())
            self._imports[ikey] = view
            self._reindex_import(ikey, old, view)
            return
        self._imports.pop(ikey, None)
        self._reindex_import(ikey, old, None)

    def _reindex_import(
        self, ikey: ServiceKey, old: ServiceView | None, new: ServiceView | None
    ) -> None:
        """Update the import PTR index from `old` to `new` (the clusterset names' PTR records,
        which answer where no cluster-local one does: `Engine._decide_reverse`)."""
        ns, name = ikey
        was: set[tuple[str, _PtrEntry]] = set()
        now: set[tuple[str, _PtrEntry]] = set()
        for view, into in ((old, was), (new, now)):
            if view is None:
                continue
            into.update((ip, ikey) for ip in view.service.cluster_ips)
            into.update((ep.address, (ns, name, ep.name)) for ep in view.ready)
        for address, entry in was - now:
            _edit(self._import_ptr, address, entry, True)
            self._changed_addresses.add(address)
        for address, entry in sorted(now - was):
            _edit(self._import_ptr, address, entry, False)
            self._changed_addresses.add(address)

    def _index_pod(self, pod: PodAddresses, delta: int) -> None:
        index = self._pod_ips
        ns = pod.namespace
        for ip in pod.ips:
            counts = index.setdefault(ip, {})
            n = counts.get(ns, 0) + delta
            if n > 0:
                counts[ns] = n
            else:
                counts.pop(ns, None)
                if not counts:
                    del index[ip]
        self._changed_pods.add(ns)

    def _reindex(self, skey: ServiceKey, old: ServiceView | None, new: ServiceView | None) -> None:
        """Update the PTR indexes from `old` to `new`, touching (and reporting as changed) only
        the addresses whose entries differ: when one endpoint of a hundred moves, the cached
        PTR answers of the other 99 stay."""
        changed = self._changed_addresses
        ns, name = skey
        before = set(old.service.cluster_ips) if old is not None else set()
        after = set(new.service.cluster_ips) if new is not None else set()
        for ip in before - after:
            _edit(self._cluster_ptr, ip, skey, True)
            changed.add(ip)
        for ip in after - before:
            _edit(self._cluster_ptr, ip, skey, False)
            changed.add(ip)
        was = {(ep.address, ep.hostname) for ep in old.ready} if old is not None else set()
        now = {(ep.address, ep.hostname) for ep in new.ready} if new is not None else set()
        for address, label in was - now:
            _edit(self._endpoint_ptr, address, (ns, name, label) if label else skey, True)
            changed.add(address)
        for address, label in sorted(now - was):
            _edit(self._endpoint_ptr, address, (ns, name, label) if label else skey, False)
            changed.add(address)

    def _bump(self, received_at: float | None) -> None:
        serial = self.serial
        self.generation += 1
        if self._clock is not None:
            serial = max(int(self._clock()), serial + 1) % (1 << 32)
            self._serial_base = (serial - self.generation) % (1 << 32)
        self.last_change = Change(
            frozenset(self._changed_services),
            frozenset(self._changed_addresses),
            frozenset(self._changed_pods),
            self._full,
        )
        self._changed_services.clear()
        self._changed_addresses.clear()
        self._changed_pods.clear()
        self._full = False
        for listener in self._listeners:
            listener(self.generation, received_at)
        self.last_change = _NO_CHANGE

    # -- reading -------------------------------------------------------------------------------

    @property
    def serial(self) -> int:
        """The SOA serial: changes with every DNS-relevant change."""
        return (self._serial_base + self.generation) % (1 << 32)

    def service(self, namespace: str, name: str) -> ServiceView | None:
        """The view of a service, by lower-case namespace and name."""
        return self._views.get((namespace, name))

    def service_import(self, namespace: str, name: str) -> ServiceView | None:
        """The view of a ServiceImport (`build_import_view`), by lower-case namespace and name."""
        return self._imports.get((namespace, name))

    def import_views(self) -> Iterator[ServiceView]:
        """Every ServiceImport's view, in (namespace, name) order."""
        for key in sorted(self._imports):
            yield self._imports[key]

    def exported(self, namespace: str, name: str) -> bool:
        """Whether the service is exported to the clusterset (`--clusterset`): a ServiceExport
        of any layer names it, or the Service that answers is annotated kdns.io/export."""
        view = self._views.get((namespace, name))
        if view is not None and view.service.exported:
            return True
        return any((namespace, name) in lay.exported for lay in self._layers.values())

    def import_slices(self, namespace: str, name: str) -> list[ImportSlice]:
        """The EndpointSlices of a ServiceImport, of every layer."""
        out: list[ImportSlice] = []
        for lay in self._layers.values():
            out.extend(lay.slices_by_import.get((namespace, name), {}).values())
        return out

    def imports_by_ip(self, ip: str) -> tuple[list[ServiceKey], list[tuple[str, str, str]]]:
        """The ServiceImports that have `ip` among their clusterset IPs, and (namespace,
        import, `<hostname>.<clusterid>`) of every ready imported endpoint with that address;
        both sorted."""
        ips: list[ServiceKey] = []
        endpoints: list[tuple[str, str, str]] = []
        for entry in _values(self._import_ptr, ip):
            if len(entry) == 2:
                ips.append((entry[0], entry[1]))
            else:
                endpoints.append((entry[0], entry[1], entry[2]))
        return sorted(ips), sorted(endpoints)

    def has_pod_ip(self, namespace: str, ip: str) -> bool:
        """True when a pod in `namespace` has the address `ip` (canonical text)."""
        return namespace in self._pod_ips.get(ip, ())

    def pod_namespaces(self, ip: str) -> list[str]:
        """The namespaces of the pods that have the address `ip` (canonical text)."""
        return list(self._pod_ips.get(ip, ()))

    def has_namespace(self, namespace: str) -> bool:
        return any(lay.has_namespace(namespace) for lay in self._layers.values())

    def namespaces(self) -> set[str]:
        out: set[str] = set()
        for lay in self._layers.values():
            out |= lay.namespaces
            if lay.implicit_namespaces:
                out.update(lay.populated)
        return out

    def services_by_cluster_ip(self, ip: str) -> list[ServiceKey]:
        """Services that have `ip` among their ClusterIPs, sorted."""
        return sorted(_values(self._cluster_ptr, ip))

    def endpoints_by_ip(self, ip: str) -> list[tuple[str, str, str]]:
        """(namespace, service, endpoint name) of every ready endpoint with address `ip`."""
        return sorted(
            entry if len(entry) == 3 else (*entry, endpoint_name("", ip))
            for entry in _values(self._endpoint_ptr, ip)
        )

    def views(self) -> Iterator[ServiceView]:
        """Every service view, in (namespace, name) order."""
        for key in sorted(self._views):
            yield self._views[key]

    def owner(self, namespace: str, name: str) -> str | None:
        """The layer a service's answers come from."""
        return self._owner.get((namespace, name))

    def routes_at(self, host: str) -> list[HostRoute]:
        """The Ingresses and routes that have the host name `host` (lower case, no trailing
        dot; `*.<rest>` for a wildcard), of every layer, in layer order then by key."""
        out: list[HostRoute] = []
        for lay in self._layers.values():
            keys = lay.by_host.get(host)
            if keys:
                out.extend(lay.routes[key] for key in sorted(keys))
        return out

    def has_host_below(self, name: str) -> bool:
        """True when some route's host name is strictly below `name`."""
        return any(name in lay.above_hosts for lay in self._layers.values())

    def gateway(self, namespace: str, name: str) -> Gateway | None:
        """The Gateway `namespace/name`, from the first layer that has it."""
        for lay in self._layers.values():
            gw = lay.gateways.get(("Gateway", namespace, name))
            if gw is not None:
                return gw
        return None

    def routes(self) -> Iterator[HostRoute]:
        """Every Ingress and route, of every layer."""
        for lay in self._layers.values():
            yield from lay.routes.values()

    def endpoint_sets(self, namespace: str, service: str) -> list[EndpointSet]:
        """Every endpoint object of a service in its owning layer (including ignored ones)."""
        owner = self._owner.get((namespace, service))
        if owner is None:
            return []
        return list(self._layers[owner].by_service.get((namespace, service), {}).values())


def _edit(index: dict[str, _T | list[_T]], ip: str, value: _T, remove: bool) -> None:
    # Nearly every address belongs to one service: keep that one value itself, and a list only
    # for the rare address with several (a list per address cost 5 MB per 100,000 endpoints).
    bucket = index.get(ip)
    if remove:
        if bucket == value:
            del index[ip]
        elif isinstance(bucket, list) and value in bucket:
            bucket.remove(value)
            if len(bucket) == 1:
                index[ip] = bucket[0]
    elif bucket is None:
        index[ip] = value
    elif isinstance(bucket, list):
        if value not in bucket:
            bucket.append(value)
    elif bucket != value:
        index[ip] = [bucket, value]


_PtrEntry = tuple[str, str] | tuple[str, str, str]


def _import_key(obj: ServiceImport | ImportSlice) -> ServiceKey:
    return (obj.namespace, obj.name if isinstance(obj, ServiceImport) else obj.service)


def _values(index: dict[str, _T | list[_T]], ip: str) -> list[_T]:
    bucket = index.get(ip)
    if bucket is None:
        return []
    return list(bucket) if isinstance(bucket, list) else [bucket]


class Sink(Protocol):
    """Where a source writes: the store itself, or a `LoopSink` in front of it."""

    def apply(
        self,
        layer: str,
        upserts: Iterable[KubeObject] = (),
        deletes: Iterable[ObjectKey] = (),
        received_at: float | None = None,
    ) -> object: ...

    def replace(
        self,
        layer: str,
        objects: Iterable[KubeObject],
        kinds: Collection[str] | None = None,
        received_at: float | None = None,
    ) -> object: ...

    def set_synced(self, layer: str, synced: bool = True) -> None: ...

    def set_unreachable(self, layer: str, since: float | None) -> None: ...


class LoopSink:
    """Hands writes from worker threads to a sink on its event loop, one callback each.

    The Kubernetes client blocks, so watches run in threads; the store belongs to the loop. Each
    call becomes one `call_soon_threadsafe` callback, so a batch (a relist, say) is applied
    between two queries, never across one.
    """

    def __init__(self, store: Sink, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop

    def apply(
        self,
        layer: str,
        upserts: Iterable[KubeObject] = (),
        deletes: Iterable[ObjectKey] = (),
        received_at: float | None = None,
    ) -> None:
        self.loop.call_soon_threadsafe(
            self.store.apply, layer, list(upserts), list(deletes), received_at
        )

    def replace(
        self,
        layer: str,
        objects: Iterable[KubeObject],
        kinds: Collection[str] | None = None,
        received_at: float | None = None,
    ) -> None:
        self.loop.call_soon_threadsafe(self.store.replace, layer, list(objects), kinds, received_at)

    def set_synced(self, layer: str, synced: bool = True) -> None:
        self.loop.call_soon_threadsafe(self.store.set_synced, layer, synced)

    def set_unreachable(self, layer: str, since: float | None) -> None:
        self.loop.call_soon_threadsafe(self.store.set_unreachable, layer, since)
