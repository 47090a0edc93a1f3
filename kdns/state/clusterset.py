"""A clusterset without an MCS controller (`--clusterset ZONE`): the services that the served
clusters export, merged into the ServiceImports and EndpointSlices a controller would write.

kdns already reads every cluster it serves (`--cluster CONTEXT=ZONE`), so it can do the
controller's merge itself. `ExportUnion` keeps a store of its own holding, for every service
that at least one member cluster exports (a ServiceExport names it, or the Service is annotated
`kdns.io/export: "true"`), one `ServiceImport` and, for a headless service, one `ImportSlice`
per exporting cluster. The clusterset zone then answers from that store exactly as a
`--clusterset-domain` zone answers from a controller's records: one set of rules
(`Engine.decide`, `build_import_view`), one `kdns explain`.

How the exports merge, where KEP-1645 leaves a controller the choice:

- A ClusterIP service answers with the ClusterIPs of every cluster that exports it (there is no
  controller to allocate one clusterset IP), in the order the clusters are named.
- A headless service answers with the ready endpoints of every exporting cluster, each named
  `<hostname>.<cluster id>` (the dashed address for an endpoint without hostname).
- Conflicts are settled by the order the clusters are named (the first, `--context`, then each
  `--cluster`), where the KEP says the oldest export wins (kdns does not read creation times):
  a cluster whose export is headless where the first exporter's is not (or the reverse) is left
  out, with a warning; ports are the union by (name, protocol), the first cluster's number
  winning.
- ExternalName services are not exported (the MCS API has no such import), with a warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from functools import partial

from kdns.state.model import (
    Endpoint,
    EndpointPort,
    ImportSlice,
    KubeObject,
    Namespace,
    ObjectKey,
    ServiceImport,
    ServicePort,
    Subset,
)
from kdns.state.store import ServiceKey, ServiceView, Store

log = logging.getLogger(__name__)

#: The union store's one layer.
LAYER = "exports"


class ExportUnion:
    """Keeps `store` (made here) equal to the merge of the services exported by `members`,
    (cluster id, store) pairs, from the moment it is made: it listens to every member store.
    `store.synced` is True once every member is; `store.unreachable_since` is the earliest of
    theirs, so a clusterset answer says it may be stale when any cluster's API is away."""

    def __init__(self, members: Sequence[tuple[str, Store]]) -> None:
        self.members = list(members)
        self.store = Store(serial_base=int(time.time()), clock=time.time)
        self.store.add_layer(LAYER)
        self.store.set_synced(LAYER)
        # An empty layer per member, holding its sync and reachability (the store's are those
        # of all its layers together).
        for cid, _ in self.members:
            self.store.add_layer(f"{LAYER}:{cid}")
        #: service -> the keys of the ImportSlices made for it
        self._slices: dict[ServiceKey, tuple[ObjectKey, ...]] = {}
        self._warned: set[tuple[ServiceKey, str]] = set()
        for _, member in self.members:
            member.subscribe(partial(self._on_change, member))
        self._state()
        self._merge(self._every_key(), namespaces=True)

    def _on_change(self, member: Store, _generation: int, _received_at: float | None) -> None:
        change = member.last_change
        if change.full:  # a sync state, a namespace, the API reachable or not
            self._state()
            self._merge(self._every_key(), namespaces=True)
        elif change.services:
            self._merge(change.services, namespaces=False)

    def _state(self) -> None:
        for cid, member in self.members:
            self.store.set_synced(f"{LAYER}:{cid}", member.synced)
            self.store.set_unreachable(f"{LAYER}:{cid}", member.unreachable_since)

    def _every_key(self) -> set[ServiceKey]:
        keys = set(self._slices)
        keys.update((v.service.namespace, v.service.name) for v in self.store.import_views())
        for _, member in self.members:
            for view in member.views():
                svc = view.service
                if member.exported(svc.namespace, svc.name):
                    keys.add((svc.namespace, svc.name))
        return keys

    def _merge(self, keys: Iterable[ServiceKey], *, namespaces: bool) -> None:
        upserts: list[KubeObject] = []
        deletes: list[ObjectKey] = []
        for skey in sorted(keys):
            found = self._derive(skey)
            old = self._slices.pop(skey, ())
            if found is None:
                deletes.append(("ServiceImport", *skey))
                deletes.extend(old)
                continue
            imp, slices = found
            upserts.append(imp)
            upserts.extend(slices)
            made = tuple(s.key for s in slices)
            deletes.extend(k for k in old if k not in made)
            if made:
                self._slices[skey] = made
        if namespaces:
            want: set[str] = set()
            for _, member in self.members:
                want |= member.namespaces()
            have = self.store.namespaces()
            upserts.extend(Namespace(ns) for ns in sorted(want - have))
            deletes.extend(("Namespace", "", ns) for ns in sorted(have - want))
        self.store.apply(LAYER, upserts, deletes)

    def _derive(self, skey: ServiceKey) -> tuple[ServiceImport, list[ImportSlice]] | None:
        """The import (and slices) the exports of `skey` make; None when no cluster exports it."""
        ns, name = skey
        exporters: list[tuple[str, ServiceView]] = []
        for cid, member in self.members:
            view = member.service(ns, name)
            if view is None or not member.exported(ns, name):
                continue
            if view.service.type == "ExternalName":
                self._warn(skey, cid, "is an ExternalName service, which cannot be exported")
                continue
            exporters.append((cid, view))
        if not exporters:
            return None
        headless = exporters[0][1].service.headless
        agreeing = []
        for cid, view in exporters:
            if view.service.headless == headless:
                agreeing.append((cid, view))
            else:
                first = "headless" if headless else "a ClusterIP service"
                self._warn(skey, cid, f"is left out: the first cluster exports it as {first}")
        ports: dict[tuple[str, str], ServicePort] = {}
        for _, view in agreeing:
            for port in view.service.ports:
                ports.setdefault((port.name, port.protocol), port)
        if not headless:
            ips = dict.fromkeys(ip for _, view in agreeing for ip in view.service.cluster_ips)
            imp = ServiceImport(ns, name, "ClusterSetIP", tuple(ips), tuple(ports.values()))
            return imp, []
        imp = ServiceImport(ns, name, "Headless", (), tuple(ports.values()))
        return imp, [_slice(ns, name, cid, view) for cid, view in agreeing]

    def _warn(self, skey: ServiceKey, cid: str, why: str) -> None:
        if (skey, cid) not in self._warned:
            self._warned.add((skey, cid))
            log.warning("--clusterset: service %s/%s of cluster %s %s", *skey, cid, why)


def _slice(ns: str, name: str, cid: str, view: ServiceView) -> ImportSlice:
    """The ready endpoints of one cluster's view of a headless service, as an MCS controller's
    EndpointSlice from that cluster (one subset per port list)."""
    groups: dict[tuple[EndpointPort, ...], list[Endpoint]] = {}
    for ep in view.ready:
        groups.setdefault(ep.ports, []).append(Endpoint((ep.address,), ep.hostname))
    subsets = tuple(Subset(tuple(eps), ports) for ports, eps in groups.items())
    return ImportSlice(ns, f"{name}.{cid}", name, cid, subsets)
