"""ClusterIP allocation for manifest services: deterministic, in range, never colliding."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdns.sources.allocate import AllocationError, allocate, needs_address, parse_cidr
from kdns.state.model import Service


def svc(namespace: str, name: str, *ips: str, headless: bool = False) -> Service:
    return Service(namespace, name, cluster_ips=ips, headless=headless)


def test_golden_address_is_the_same_on_every_machine() -> None:
    # Pins the hash: Python's salted hash(), or any change of algorithm, would move every
    # address a user may have cached or written down (zones/my-service.yaml quotes this one).
    assert allocate([svc("default", "my-service")], "10.96.0.0/12") == {
        ("default", "my-service"): "10.100.32.42"
    }


def test_only_services_without_address_get_one() -> None:
    services = [
        svc("a", "explicit", "10.96.0.50"),
        svc("a", "headless", headless=True),
        Service("a", "external", type="ExternalName", external_name="example.com"),
        svc("a", "plain"),
        Service("a", "nodeport", type="NodePort"),
    ]
    assert [s.name for s in services if needs_address(s)] == ["plain", "nodeport"]
    assert set(allocate(services, "10.96.0.0/12")) == {("a", "plain"), ("a", "nodeport")}


def test_order_of_input_does_not_matter() -> None:
    services = [svc("ns", f"s{i}") for i in range(200)] + [svc("ns", "fixed", "10.96.0.77")]
    expected = allocate(services, "10.96.0.0/24")
    for seed in range(5):
        shuffled = services[:]
        random.Random(seed).shuffle(shuffled)
        assert allocate(shuffled, "10.96.0.0/24") == expected


def test_reserved_addresses_are_never_handed_out() -> None:
    # A /29 has 8 addresses: network, first host and last are reserved, 5 remain.
    services = [svc("ns", f"s{i}") for i in range(5)]
    got = set(allocate(services, "192.0.2.0/29").values())
    assert got == {f"192.0.2.{i}" for i in range(2, 7)}


def test_collision_with_explicit_address_probes_to_next_free() -> None:
    network = "10.96.0.0/12"
    alone = allocate([svc("default", "my-service")], network)[("default", "my-service")]
    taken = svc("other", "pinned", alone)
    moved = allocate([svc("default", "my-service"), taken], network)[("default", "my-service")]
    assert moved == str(ipaddress.ip_address(alone) + 1)


def test_probing_wraps_around_the_end_of_the_range() -> None:
    # /29: usable .2 to .6. Take .3 to .6, so whatever the hash says, the one left is .2.
    pinned = [svc("x", f"p{i}", f"192.0.2.{i}") for i in range(3, 7)]
    assert allocate([*pinned, svc("x", "new")], "192.0.2.0/29") == {("x", "new"): "192.0.2.2"}


def test_range_too_small_is_a_clear_error() -> None:
    services = [svc("ns", f"s{i}") for i in range(6)]
    with pytest.raises(AllocationError, match="5 free addresses, but 6 services"):
        allocate(services, "192.0.2.0/29")


def test_ipv6_range() -> None:
    got = allocate([svc("ns", "a"), svc("ns", "b")], "fd00:10:96::/112")
    network = ipaddress.ip_network("fd00:10:96::/112")
    for address in got.values():
        ip = ipaddress.ip_address(address)
        assert ip.version == 6 and ip in network
        assert ip not in (network.network_address, network.network_address + 1)


def test_small_ipv6_numbers_stay_ipv6() -> None:
    # ::/125 holds integers below 2**32; they must still be written as IPv6 addresses.
    got = allocate([svc("ns", "a")], "::/125")
    assert ipaddress.ip_address(got[("ns", "a")]).version == 6


@pytest.mark.parametrize(
    ("cidr", "reason"),
    [
        ("10.96.0.1/12", "host bits set"),
        ("not-a-cidr", "does not appear to be"),
        ("192.0.2.0/31", "too small"),
    ],
)
def test_bad_cidr(cidr: str, reason: str) -> None:
    with pytest.raises(AllocationError, match=reason):
        parse_cidr(cidr)


names = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    wanted=st.sets(st.tuples(names, names), max_size=40),
    explicit=st.sets(st.integers(min_value=0, max_value=63), max_size=40),
)
def test_no_collision_and_all_in_range(wanted: set[tuple[str, str]], explicit: set[int]) -> None:
    # A /26 is small enough that hashes collide often, with each other and with explicit IPs.
    network = ipaddress.ip_network("10.0.0.0/26")
    pinned = [svc("pinned", f"p{i}", str(network[i])) for i in explicit]
    services = pinned + [svc(ns, name) for ns, name in wanted]
    usable = network.num_addresses - 3
    taken = {i for i in explicit if 2 <= i < network.num_addresses - 1}
    if len(wanted) > usable - len(taken):
        with pytest.raises(AllocationError):
            allocate(services, network)
        return
    got = allocate(services, network)
    assert set(got) == wanted
    addresses = [ipaddress.ip_address(a) for a in got.values()]
    assert len(set(addresses)) == len(addresses)
    for ip in addresses:
        assert ip in network
        assert int(ip) - int(network.network_address) not in explicit
        assert ip not in (network[0], network[1], network[-1])
    assert allocate(list(reversed(services)), network) == got


def test_adding_a_service_moves_no_other_in_a_large_range() -> None:
    # Clients and caches hold these addresses: with a /12, adding a service must not renumber
    # the others (only a hash collision could, and these names have none).
    existing = [svc(f"ns{i % 7}", f"svc-{i}") for i in range(300)]
    before = allocate(existing, "10.96.0.0/12")
    for i in range(20):
        extra = svc("new", f"extra-{i}")
        after = allocate([*existing, extra], "10.96.0.0/12")
        assert {k: v for k, v in after.items() if k != ("new", f"extra-{i}")} == before
