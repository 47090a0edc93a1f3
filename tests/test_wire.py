"""The decoder's fates for every kind of packet, and the encoder's EDNS, TC and case handling."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import RCODE

from kdns.dns.resolution import Cluster, Engine
from kdns.dns.wire import Drop, Refuse, describe_packet, encode, parse_query
from kdns.serve.responder import Responder
from kdns.state.model import Endpoint, EndpointPort, EndpointSet, Service, ServicePort, Subset
from kdns.state.store import Store


def make_store(endpoints: int = 3) -> Store:
    store = Store()
    store.add_layer("t", implicit_namespaces=True)
    eps = tuple(Endpoint((f"10.1.{i // 250}.{i % 250 + 1}",)) for i in range(endpoints))
    store.apply(
        "t",
        [
            Service(
                "default", "web", cluster_ips=("10.96.0.10",), ports=(ServicePort("http", 80),)
            ),
            Service("default", "big", headless=True, ports=(ServicePort("http", 80),)),
            EndpointSet(
                "EndpointSlice",
                "default",
                "big-1",
                "big",
                (Subset(eps, (EndpointPort("http", 8080),)),),
            ),
        ],
    )
    store.set_synced("t")
    return store


@pytest.fixture
def responder() -> Responder:
    return Responder(Engine([Cluster("cluster.local", make_store(100))]), rotate="off")


def ask(responder: Responder, msg: dns.message.Message, udp: bool = True) -> dns.message.Message:
    data = responder.respond(msg.to_wire(), udp=udp)
    assert data is not None
    return dns.message.from_wire(data)


def test_answer_keeps_question_case_and_id(responder: Responder) -> None:
    q = dns.message.make_query("WeB.DeFault.SVC.cluster.LOCAL", "A")
    for _ in range(2):  # the second one comes from the cache
        r = ask(responder, q)
        assert r.id == q.id
        assert r.question[0].name.to_text() == "WeB.DeFault.SVC.cluster.LOCAL."
        assert r.answer[0].name.to_text() == "WeB.DeFault.SVC.cluster.LOCAL."
        assert r.flags & dns.flags.AA
        assert r.flags & dns.flags.RD
    # Another spelling of the cached name gets its own case back.
    q2 = dns.message.make_query("web.default.svc.cluster.local", "A")
    q2.flags &= ~dns.flags.RD
    r2 = ask(responder, q2)
    assert r2.answer[0].name.to_text() == "web.default.svc.cluster.local."
    assert not r2.flags & dns.flags.RD


def test_edns_opt_echoed_and_do_bit(responder: Responder) -> None:
    q = dns.message.make_query("web.default.svc.cluster.local", "A", use_edns=0, payload=4096)
    r = ask(responder, q)
    assert r.edns == 0
    assert r.payload == 1232
    assert not r.ednsflags & dns.flags.DO
    q = dns.message.make_query("web.default.svc.cluster.local", "A", want_dnssec=True)
    assert ask(responder, q).ednsflags & dns.flags.DO
    q = dns.message.make_query("web.default.svc.cluster.local", "A")
    assert ask(responder, q).edns == -1


def test_truncation_without_edns_and_full_answer_over_tcp(responder: Responder) -> None:
    q = dns.message.make_query("big.default.svc.cluster.local", "A")
    for _ in range(2):  # the miss, then the cache (the memo)
        data = responder.respond(q.to_wire(), udp=True)
        assert isinstance(data, bytes) and len(data) <= 512
        r = dns.message.from_wire(data)
        assert r.flags & dns.flags.TC and len(r.question) == 1
        # The records that fit, in order: 100 would take 1,650 bytes; each is 16 more.
        assert [rd.address for rd in r.answer[0]] == [f"10.1.0.{i}" for i in range(1, 30)]
        assert len(data) + 16 > 512 and not r.additional
    r = ask(responder, q, udp=False)
    assert not r.flags & dns.flags.TC
    assert len(r.answer[0]) == 100


def test_bufsize_is_honoured(responder: Responder) -> None:
    # 100 A records: about 1,650 bytes. Fits neither 512 nor 1232 (the server maximum).
    q = dns.message.make_query("big.default.svc.cluster.local", "A", use_edns=0, payload=4096)
    data = responder.respond(q.to_wire(), udp=True)
    assert data is not None and len(data) <= 1232
    r = dns.message.from_wire(data)
    assert r.flags & dns.flags.TC and r.edns == 0
    bigger = Responder(
        Engine([Cluster("cluster.local", make_store(100))]), max_udp=4096, rotate="off"
    )
    data = bigger.respond(q.to_wire(), udp=True)
    assert data is not None and 1232 < len(data) <= 4096
    assert not dns.message.from_wire(data).flags & dns.flags.TC


def header(
    id_: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", id_, flags, qd, an, ns, ar)


QUESTION = b"\x03web\x07default\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01"
#: A TXT record at the root, with one byte of text.
_TXT_AT_ROOT = b"\x00\x00\x10\x00\x01\x00\x00\x00\x00\x00\x02\x01x"
#: An OPT record: payload 4096, version 0, no options.
OPT = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x12",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00",  # 11 bytes
        header(flags=0x8100) + QUESTION,  # a response: never answered
    ],
)
def test_dropped(packet: bytes) -> None:
    with pytest.raises(Drop):
        parse_query(packet)


@pytest.mark.parametrize(
    ("packet", "rcode"),
    [
        (header(flags=0x2100) + QUESTION, RCODE.NOTIMP),  # opcode 4, NOTIFY
        (header(flags=0x2900) + QUESTION, RCODE.NOTIMP),  # opcode 5, UPDATE
        (header(qd=0), RCODE.FORMERR),
        (header(qd=2) + QUESTION + QUESTION, RCODE.FORMERR),
        (header(an=1) + QUESTION, RCODE.FORMERR),
        (header() + QUESTION[:-3], RCODE.FORMERR),  # truncated question
        (header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", RCODE.FORMERR),  # label > 63
        (header() + b"\xc0\x0c\x00\x01\x00\x01", RCODE.FORMERR),  # pointer in the question
        (header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", RCODE.FORMERR),  # > 255
        (header() + QUESTION + b"junk", RCODE.FORMERR),
        (header(ar=1) + QUESTION, RCODE.FORMERR),  # missing additional record
        (
            header(ar=2) + QUESTION + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00" * 2,
            RCODE.FORMERR,
        ),
        (
            header(ar=1)
            + QUESTION
            + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x05\x00\x01\x00\x09x",
            RCODE.FORMERR,
        ),
        (header() + b"\x00\x00\x29\x00\x01", RCODE.FORMERR),  # OPT as question type
        # More records than a query carries (an OPT and a TSIG at most; one SOA for IXFR), as
        # CoreDNS's DNS library refuses them: their names are not walked at all.
        (header(ar=3) + QUESTION + _TXT_AT_ROOT * 3, RCODE.FORMERR),
        (header(ns=2) + QUESTION + _TXT_AT_ROOT * 2, RCODE.FORMERR),
        (header(ns=1) + QUESTION, RCODE.FORMERR),  # its authority record is missing
        (header(ar=1) + QUESTION + b"\x00\x00\x29\x10\x00\x00\x01\x00\x00\x00\x00", 16),  # BADVERS
    ],
)
def test_refused_with_error_reply(packet: bytes, rcode: int) -> None:
    with pytest.raises(Refuse) as caught:
        parse_query(packet)
    assert caught.value.rcode == rcode
    reply = caught.value.reply
    id_, flags, *_ = struct.unpack_from("!HHHHHH", reply)
    assert id_ == 0x1234
    assert flags & 0x8000
    if rcode < 16:
        assert flags & 0xF == rcode
    else:
        msg = dns.message.from_wire(reply)
        assert msg.rcode() == dns.rcode.BADVERS


def test_rr_in_additional_other_than_opt_is_accepted() -> None:
    q = parse_query(header(ar=1) + QUESTION + _TXT_AT_ROOT)
    assert not q.edns
    q = parse_query(header(ar=2) + QUESTION + _TXT_AT_ROOT + OPT)
    assert q.edns and q.payload == 4096


def test_one_authority_record_is_accepted_as_ixfr_carries_its_soa() -> None:
    # RFC 1995 section 3: an IXFR query has the client's SOA in its authority section.
    soa = (
        b"\xc0\x0c\x00\x06\x00\x01\x00\x00\x00\x00\x00\x16"
        + b"\x00\x00"
        + struct.pack("!5I", 1, 2, 3, 4, 5)
    )
    ixfr = b"\x07cluster\x05local\x00\x00\xfb\x00\x01"
    q = parse_query(header(ns=1, ar=1) + ixfr + soa + OPT)
    assert q.qtype == 251 and q.edns
    assert parse_query(header(ns=1) + QUESTION + _TXT_AT_ROOT).qtype == 1


def test_long_queries_are_answered_but_not_memoised(responder: Responder) -> None:
    # Every distinct query a memo keeps costs its bytes: padding makes each one distinct and
    # up to 64 KiB, so only queries of ordinary size are kept (kdns.serve.responder).
    name = "web.default.svc.cluster.local"
    for size in (100, 2000, 30000):
        for i in range(3):
            pad = dns.edns.GenericOption(dns.edns.OptionType.PADDING, i.to_bytes(2, "big") * size)
            q = dns.message.make_query(name, "A", use_edns=0, options=[pad])
            wire = q.to_wire(max_size=65535)
            for _ in range(2):  # the second time from the cache (the memo, when it keeps it)
                data = responder.respond(wire, udp=True)
                assert isinstance(data, bytes)
                r = dns.message.from_wire(data)
                assert r.answer[0][0].address == "10.96.0.10" and r.id == q.id
    # The three queries of about 260 bytes, none of the longer ones.
    assert len(responder._memo) == 3


def test_class_other_than_in_is_refused(responder: Responder) -> None:
    q = dns.message.make_query("web.default.svc.cluster.local", "A", rdclass="CH")
    assert ask(responder, q).rcode() == dns.rcode.REFUSED


def test_axfr_over_udp_refused(responder: Responder) -> None:
    q = dns.message.make_query("cluster.local", "AXFR")
    assert ask(responder, q).rcode() == dns.rcode.REFUSED


def test_cache_invalidated_by_store_change() -> None:
    store = make_store()
    responder = Responder(Engine([Cluster("cluster.local", store)]), rotate="off")
    q = dns.message.make_query("web.default.svc.cluster.local", "A")
    assert ask(responder, q).answer[0][0].address == "10.96.0.10"
    store.apply("t", [Service("default", "web", cluster_ips=("10.96.0.11",))])
    assert ask(responder, q).answer[0][0].address == "10.96.0.11"
    store.apply("t", deletes=[("Service", "default", "web")])
    assert ask(responder, q).rcode() == dns.rcode.NXDOMAIN


def test_cached_equals_full_path_byte_for_byte() -> None:
    store = make_store(20)
    responder = Responder(Engine([Cluster("cluster.local", store)]), rotate="off")
    names = [
        "web.default.svc.cluster.local",
        "WEB.default.svc.cluster.local",
        "big.default.svc.cluster.local",
        "_http._tcp.big.default.svc.cluster.local",
        "10-1-0-5.big.default.svc.cluster.local",
        "nope.default.svc.cluster.local",
        "10.0.96.10.in-addr.arpa",
        "cluster.local",
        "example.org",
    ]
    for name in names:
        for rdtype in ("A", "AAAA", "SRV", "PTR", "SOA", "TXT"):
            for edns in (-1, 0):
                q = dns.message.make_query(name, rdtype, use_edns=edns)
                wire = q.to_wire()
                first = responder.respond(wire, udp=False)
                second = responder.respond(wire, udp=False)
                query = parse_query(wire)
                fresh = Responder(Engine([Cluster("cluster.local", store)]), rotate="off")
                full = encode(query, fresh.resolve(query))
                assert first == second == full, (name, rdtype, edns)


def test_the_query_log_names_extended_rcodes(responder: Responder) -> None:
    # BADVERS is 16: 0 in the header, 1 in the OPT record (RFC 6891 section 6.1.3).
    wire = header(ar=1) + QUESTION + b"\x00\x00\x29\x10\x00\x00\x01\x00\x00\x00\x00"
    response = responder.respond(wire, udp=True)
    assert isinstance(response, bytes)
    assert describe_packet(wire, response)[2] == "BADVERS"
    for name, rcode in [("web", "NOERROR"), ("nope", "NXDOMAIN")]:
        q = dns.message.make_query(f"{name}.default.svc.cluster.local", "A", use_edns=0)
        response = responder.respond(q.to_wire(), udp=True)
        assert isinstance(response, bytes)
        assert describe_packet(q.to_wire(), response) == (
            f"{name}.default.svc.cluster.local.",
            "A",
            rcode,
        )
