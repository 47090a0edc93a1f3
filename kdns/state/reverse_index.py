"""Which addresses have a PTR record, as sorted integers: the index behind partial reverse names.

A partial reverse name (`10.in-addr.arpa`, a nibble of an IPv6 name) exists when some address
under it has a PTR record: an empty non-terminal, NODATA rather than NXDOMAIN (RFC 8020, RFC
4592). Whether one does is a range question, one bisection on sorted integers. The index is
state that follows the stores (it subscribes to their changes), so it lives here beside them
and the resolution only asks it.
"""

from __future__ import annotations

import socket
import weakref
from bisect import bisect_left
from collections.abc import Callable, Collection, Sequence

from kdns.state.store import Store


def _ip_value(address: str) -> tuple[int, int] | None:
    """(version, integer value) of an address, None when no reverse name reaches it (a scoped
    IPv6 address: `reverse_address` never spells the scope)."""
    family, version = (socket.AF_INET6, 6) if ":" in address else (socket.AF_INET, 4)
    try:
        return version, int.from_bytes(socket.inet_pton(family, address))
    except OSError:
        return None


class ReverseIndex:
    """The addresses that have a PTR record in any of `stores`, as sorted integers per IP
    version: whether anything exists under a partial reverse name is then one bisection.

    Built on the first partial reverse name asked, so a server never asked one pays nothing.
    From then on it follows the stores: each change only records the addresses it touched (a set
    union, on the write path), and the next partial name applies them. A few are inserted or
    removed one by one; many (a relist) are merged in one pass. When changes pile up unread the
    index is dropped and built again when next needed, so that an index nobody asks keeps no
    growing backlog.
    """

    #: Up to this many pending addresses are applied one by one (a list insert each).
    ONE_BY_ONE = 64
    #: More pending addresses than this, and more than the index holds: drop it.
    BACKLOG = 4096

    def __init__(self, stores: Sequence[Store], import_stores: Sequence[Store] = ()) -> None:
        """`stores`: those whose services and endpoints have PTR records; `import_stores`:
        those whose ServiceImports have them too (the clusterset zones' stores)."""
        self._stores = list({id(s): s for s in [*stores, *import_stores]}.values())
        self._importing = {id(s) for s in import_stores}
        self._values: dict[int, list[int]] | None = None
        self._pending: set[str] = set()
        self._subscribed = False

    def any_within(self, version: int, low: int, high: int) -> bool:
        values = self._current()[version]
        i = bisect_left(values, low)
        return i < len(values) and values[i] <= high

    def _current(self) -> dict[int, list[int]]:
        if not self._subscribed:
            self._subscribed = True
            # A weak reference: an engine that is dropped leaves a listener that does nothing.
            ref = weakref.ref(self)
            for store in self._stores:
                store.subscribe(_ptr_listener(ref, store))
        values = self._values
        if values is None:
            self._pending.clear()
            values = self._values = self._build()
        elif self._pending:
            self._apply(values)
        return values

    def _has_ptr(self, address: str) -> bool:
        return any(
            s.services_by_cluster_ip(address)
            or s.endpoints_by_ip(address)
            or (id(s) in self._importing and any(s.imports_by_ip(address)))
            for s in self._stores
        )

    def _build(self) -> dict[int, list[int]]:
        # The same addresses the store's PTR indexes hold: ClusterIPs and ready endpoints.
        found: dict[int, set[int]] = {4: set(), 6: set()}
        for store in self._stores:
            views = list(store.views())
            if id(store) in self._importing:
                views += store.import_views()
            for view in views:
                for address in view.service.cluster_ips:
                    parsed = _ip_value(address)
                    if parsed is not None:
                        found[parsed[0]].add(parsed[1])
                for ep in view.ready:
                    parsed = _ip_value(ep.address)
                    if parsed is not None:
                        found[parsed[0]].add(parsed[1])
        return {version: sorted(values) for version, values in found.items()}

    def _apply(self, values: dict[int, list[int]]) -> None:
        pending = self._pending
        changed: dict[int, dict[int, bool]] = {4: {}, 6: {}}
        for address in pending:
            parsed = _ip_value(address)
            if parsed is not None:
                changed[parsed[0]][parsed[1]] = self._has_ptr(address)
        pending.clear()
        for version, now in changed.items():
            if not now:
                continue
            current = values[version]
            if len(now) <= self.ONE_BY_ONE:
                for value, present in now.items():
                    i = bisect_left(current, value)
                    there = i < len(current) and current[i] == value
                    if present and not there:
                        current.insert(i, value)
                    elif there and not present:
                        del current[i]
            else:
                merged = [v for v in current if v not in now]
                merged.extend(v for v, present in now.items() if present)
                merged.sort()
                values[version] = merged

    def changed(self, addresses: Collection[str]) -> None:
        """Note the addresses a change touched (called by the stores' listeners)."""
        if self._values is None or not addresses:
            return
        self._pending.update(addresses)
        if len(self._pending) > max(self.BACKLOG, len(self._values[4]) + len(self._values[6])):
            self._values = None
            self._pending.clear()


def _ptr_listener(
    ref: weakref.ref[ReverseIndex], store: Store
) -> Callable[[int, float | None], None]:
    def listener(generation: int, received_at: float | None) -> None:
        index = ref()
        if index is not None:
            index.changed(store.last_change.addresses)

    return listener
