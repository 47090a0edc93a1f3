"""`--allow-query`: which source addresses may ask kdns anything (DNS over UDP and TCP, /explain).

A cluster DNS server answers every pod; the one thing it needs from CoreDNS's `acl` is to keep
everyone else out when its port is reachable from outside the cluster (a node port, a host
network pod, a shared VPC). Everything not allowed is REFUSED, or with `--allow-query-drop`
gets no reply at all (a scanner learns nothing, and a spoofed query reflects nothing).

The check is on the UDP path of every query, so its answer is kept per source address: a dict
lookup, instead of parsing the address and walking the networks each time (bench/acl.py). The
memo is emptied when it fills, so a flood of spoofed sources costs the full check per query
but never memory.

Refused and dropped queries are counted here, by transport, and nowhere else: they never reach
the responder, so they are not in `kdns_dns_requests_total` or `kdns_dns_responses_total`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence

from kdns.config import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Source addresses whose verdict is kept; past this, the memo starts again empty.
MEMO_SIZE = 65536
_MAPPED = b"\x00" * 10 + b"\xff\xff"


def parse_allow(texts: Iterable[str]) -> list[str]:
    """`--allow-query` values (CIDRs or plain addresses), normalised; ConfigError on a bad one."""
    out = []
    for text in texts:
        try:
            out.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            raise ConfigError(
                f"bad --allow-query {text!r}: expected an IPv4 or IPv6 address or CIDR"
            ) from None
    return out


class QueryAcl:
    """The networks allowed to query, the verdict for each source seen, and the counters."""

    def __init__(self, networks: Sequence[str], drop: bool = False) -> None:
        self.networks: tuple[Network, ...] = tuple(parse_allow_networks(networks))
        #: (network address, mask) as integers, by family
        self._v4 = [_bits(n) for n in self.networks if n.version == 4]
        self._v6 = [_bits(n) for n in self.networks if n.version == 6]
        #: No reply at all instead of REFUSED (403 stays 403 on HTTP).
        self.drop = drop
        #: source address -> verdict: what `allows` decided so far (the UDP path reads it first)
        self.verdicts: dict[str, bool] = {}
        #: queries (over TCP with --allow-query-drop: connections) turned away, by transport
        self.refused: dict[str, int] = {}
        self.dropped: dict[str, int] = {}

    def allows(self, host: str) -> bool:
        """True when `host` (an address as the socket gives it) may query."""
        verdict = self.verdicts.get(host)
        if verdict is None:
            verdict = self._check(host)
            memo = self.verdicts
            if len(memo) >= MEMO_SIZE:
                memo.clear()  # the same dict: whoever holds its `get` keeps reading it
            memo[host] = verdict
        return verdict

    def _check(self, host: str) -> bool:
        # Integers and masks, not `ipaddress` objects: a flood of spoofed sources takes this
        # path for every query (bench/acl.py: about 16 µs a query with `ipaddress`).
        try:
            if ":" in host:
                packed = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
                if packed[:12] != _MAPPED:
                    value = int.from_bytes(packed, "big")
                    return any(value & mask == net for net, mask in self._v6)
                # An IPv4 client of a dual-stack socket, ::ffff:a.b.c.d: the IPv4 rules apply.
                packed = packed[12:]
            else:
                packed = socket.inet_pton(socket.AF_INET, host)
        except (OSError, ValueError):
            return False
        value = int.from_bytes(packed, "big")
        return any(value & mask == net for net, mask in self._v4)

    def deny(self, proto: str) -> None:
        """Count one query from a source not allowed, refused or dropped as configured."""
        counts = self.dropped if self.drop else self.refused
        counts[proto] = counts.get(proto, 0) + 1

    def refuse(self, proto: str) -> None:
        """Count one refusal that is a refusal even with --allow-query-drop (HTTP's 403)."""
        self.refused[proto] = self.refused.get(proto, 0) + 1


def parse_allow_networks(texts: Iterable[str]) -> list[Network]:
    """`--allow-query` values as networks (ConfigError on a bad one)."""
    return [ipaddress.ip_network(text, strict=False) for text in parse_allow(texts)]


def acl_from(networks: Sequence[str], drop: bool) -> QueryAcl | None:
    """The ACL of a server: None (everyone may query, and nothing is checked) when no network."""
    return QueryAcl(networks, drop) if networks else None


def _bits(network: Network) -> tuple[int, int]:
    return int(network.network_address), int(network.netmask)
