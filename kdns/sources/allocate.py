"""ClusterIPs for manifest Services that do not set one.

A Service applied to a cluster without `clusterIP` gets a random free address from the service
CIDR, and the apiserver remembers it. A directory of manifests has no memory, yet the address must
not move when kdns restarts, runs on another machine or reads the files in another order: clients
cache it. So the address is a function of the files alone:

- each service's offset in the range is SHA-256 of "namespace/name" (never Python's `hash()`,
  which is salted per process), modulo the number of usable addresses;
- usable means not the network address, not the first host address (the apiserver's own
  `kubernetes.default` service traditionally holds it) and not the last address (the broadcast
  address in IPv4; kept free in IPv6 too, so both families follow one rule);
- a collision with an explicit ClusterIP, or with an address handed out earlier, moves on to the
  next free address (linear probing, wrapping around), services being taken in (namespace, name)
  order so that the result does not depend on the order of files or documents.

The address of a service changes only when another service, hashed to the same place, joins or
leaves ahead of it in that order; with a /12 and a few hundred services that is rare, and setting
`clusterIP` explicitly in the manifest pins an address for good.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable

from kdns.state.model import Service

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The kube-apiserver's default `--service-cluster-ip-range`.
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"


class AllocationError(ValueError):
    """The service CIDR is invalid or has no room for every service that needs an address."""


def parse_cidr(text: str) -> Network:
    """Parse a service CIDR such as `10.96.0.0/12` or `fd00:10:96::/108`.

    Raises `AllocationError` with a one-line reason when it is not a network with host bits
    clear, or when it is too small to hold any address after the reserved ones.
    """
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise AllocationError(f"service CIDR {text!r} is not a valid network: {exc}") from None
    if network.num_addresses < 4:
        raise AllocationError(
            f"service CIDR {text!r} is too small: it needs room for at least one address besides "
            "the network, first and last addresses"
        )
    return network


def needs_address(service: Service) -> bool:
    """Whether a service would get a ClusterIP from the apiserver but has none in its manifest."""
    return service.type != "ExternalName" and not service.headless and not service.cluster_ips


def _offset(namespace: str, name: str, size: int) -> int:
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return int.from_bytes(digest[:16], "big") % size


def allocate(services: Iterable[Service], cidr: Network | str) -> dict[tuple[str, str], str]:
    """Choose addresses for the services that need one.

    `services` is every service of the source (those with explicit ClusterIPs are read so that no
    allocated address collides with them). Returns {(namespace, name): address} for the services
    for which `needs_address` is true; raises `AllocationError` when the range is too small.
    """
    network = parse_cidr(cidr) if isinstance(cidr, str) else cidr
    first = int(network.network_address) + 2
    size = network.num_addresses - 3
    taken: set[int] = set()
    todo: list[tuple[str, str]] = []
    for svc in services:
        if needs_address(svc):
            todo.append((svc.namespace, svc.name))
            continue
        for ip in svc.cluster_ips:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                continue
            if address.version == network.version:
                offset = int(address) - first
                if 0 <= offset < size:
                    taken.add(offset)
    todo = sorted(set(todo))
    if len(todo) > size - len(taken):
        raise AllocationError(
            f"service CIDR {network} has {size - len(taken)} free addresses, but {len(todo)} "
            "services without clusterIP need one; use a larger --service-cidr"
        )
    # ip_address(int) would turn a small IPv6 address into an IPv4 one: build the network's type.
    address_type = type(network.network_address)
    out: dict[tuple[str, str], str] = {}
    for namespace, name in todo:
        offset = _offset(namespace, name, size)
        while offset in taken:
            offset = (offset + 1) % size
        taken.add(offset)
        out[(namespace, name)] = str(address_type(first + offset))
    return out
