"""Properties of the decoder, the responder and the answer engine, on arbitrary and hostile input.

Hypothesis drives four families of properties:

(a) `parse_query` on arbitrary bytes raises nothing but `Drop` or `Refuse`, and a `Refuse` reply is
    a DNS message dnspython reads, with the query's ID, QR set and the rcode it claims;
(b) `Responder.respond` on mutated valid queries (the mutation families of testkit/fuzz.py: bit
    flips, truncation, counts, label lengths, compression pointers and loops, long names, QDCOUNT
    0 and 2, QR, opcodes, classes and types, EDNS with bad or repeated options, OPT not at the
    root, two OPTs) returns None or bytes dnspython reads, with the query's ID, QR set and the
    UDP size limit kept;
(c) the fast path (cache hit without decoding) and the full path agree byte for byte on every
    query the fast path accepts, and both agree with an oracle that shares no code with kdns
    (tests/reference.py: the records from the objects; testkit.fuzz.judge_reply: the message,
    TC=1 exactly when it does not fit the client's UDP limit, built by dnspython);
(d) the answer engine on arbitrary label sequences never raises, gives a valid rcode and puts the
    zone's SOA in the authority section of every in-zone NXDOMAIN and NODATA.

The tests under "bugs found" pin bugs in kdns/ that these properties found (fixed since), each
with the input that showed it.
"""

from __future__ import annotations

import random
import struct

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
from dnslib import QTYPE, RCODE, DNSLabel
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kdns.dns.resolution import Answer, Cluster, Engine
from kdns.dns.wire import (
    Drop,
    Query,
    Refuse,
    describe_packet,
    encode,
    limit_for,
    parse_query,
    slipped,
    truncated,
)
from kdns.serve.responder import TRANSFER, Responder
from kdns.state.model import (
    Endpoint,
    EndpointPort,
    EndpointSet,
    Namespace,
    Service,
    ServicePort,
    Subset,
)
from kdns.state.store import Store
from testkit.fuzz import (
    MUTATIONS,
    judge_reply,
    mutate,
    name_wire,
    opt_record,
    random_packet,
    valid_query,
)
from testkit.fuzz import Query as Packet
from tests import reference

ZONE = "cluster.local"
NS_ADDRESSES = ("127.0.0.1", "::1")
FAST = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)

# -- the data every property runs against ------------------------------------------------------


def _objects() -> list[Service | EndpointSet | Namespace]:
    http = (ServicePort("http", 80),)
    big = tuple(
        Endpoint((f"10.1.{i // 250}.{i % 250 + 1}",), hostname=f"big-{i}" if i % 3 == 0 else "")
        for i in range(100)
    )
    db = (
        Endpoint(("10.2.0.10",), hostname="db-0"),
        Endpoint(("10.2.0.11",), hostname="db-1"),
        Endpoint(("10.2.0.12",), hostname="db-2", ready=False),
        Endpoint(("fd00:10:2::13",)),
    )
    return [
        *(Namespace(n) for n in ("default", "data", "empty")),
        Service("default", "web", cluster_ips=("10.96.0.10",), ports=http),
        Service("default", "dual", cluster_ips=("10.96.0.11", "fd00:96::11"), ports=http),
        Service("default", "big", headless=True, ports=http),
        EndpointSet(
            "EndpointSlice",
            "default",
            "big-1",
            "big",
            (Subset(big, (EndpointPort("http", 8080),)),),
        ),
        Service("default", "ext", type="ExternalName", external_name="www.example.com"),
        Service(
            "default", "alias", type="ExternalName", external_name="web.default.svc.cluster.local"
        ),
        Service("default", "loop1", type="ExternalName", external_name=f"loop2.default.svc.{ZONE}"),
        Service("default", "loop2", type="ExternalName", external_name=f"loop1.default.svc.{ZONE}"),
        Service("default", "lonely", headless=True),  # no endpoints: NXDOMAIN
        Service("data", "db", headless=True, ports=(ServicePort("postgres", 5432),)),
        EndpointSet(
            "EndpointSlice", "data", "db-1", "db", (Subset(db, (EndpointPort("postgres", 5432),)),)
        ),
    ]


def new_store() -> Store:
    store = Store()
    store.add_layer("t")
    store.apply("t", _objects())
    store.set_synced("t")
    return store


def new_engine(store: Store) -> Engine:
    return Engine([Cluster(ZONE, store)], ns_addresses=NS_ADDRESSES)


def new_responder(store: Store | None = None) -> Responder:
    return Responder(new_engine(store or new_store()), rotate="off")


ENGINE = new_engine(new_store())  # the engine is pure: one is enough for (d)

NAMES = [
    ZONE,
    f"ns.dns.{ZONE}",
    f"dns-version.{ZONE}",
    f"default.svc.{ZONE}",
    f"empty.svc.{ZONE}",
    f"web.default.svc.{ZONE}",
    f"dual.default.svc.{ZONE}",
    f"big.default.svc.{ZONE}",
    f"big-0.big.default.svc.{ZONE}",
    f"10-1-0-2.big.default.svc.{ZONE}",
    f"_http._tcp.big.default.svc.{ZONE}",
    f"_http._tcp.web.default.svc.{ZONE}",
    f"ext.default.svc.{ZONE}",
    f"alias.default.svc.{ZONE}",
    f"loop1.default.svc.{ZONE}",
    f"lonely.default.svc.{ZONE}",
    f"db.data.svc.{ZONE}",
    f"db-0.db.data.svc.{ZONE}",
    f"_postgres._tcp.db.data.svc.{ZONE}",
    f"nope.default.svc.{ZONE}",
    f"10-0-0-1.default.pod.{ZONE}",
    "10.0.96.10.in-addr.arpa",
    "10.0.2.10.in-addr.arpa",
    "1.0.0.10.in-addr.arpa",
    "in-addr.arpa",
    "example.org",
]
QTYPES = [1, 28, 33, 12, 16, 5, 6, 2, 255, 15, 65, 97, 0, 99, 65535]


# -- strategies ----------------------------------------------------------------------------------


def _labels(name: str) -> list[bytes]:
    return [label.encode() for label in name.split(".") if label]


@st.composite
def spelled(draw: st.DrawFn, name: str) -> list[bytes]:
    """`name` in a random mix of upper and lower case (as 0x20-randomising resolvers ask)."""
    out = []
    for label in _labels(name):
        mask = draw(st.lists(st.booleans(), min_size=len(label), max_size=len(label)))
        flipped = (
            c ^ 0x20 if m and chr(c).isalpha() else c for c, m in zip(label, mask, strict=True)
        )
        out.append(bytes(flipped))
    return out


edns_options = st.lists(
    st.tuples(st.sampled_from([3, 8, 10, 12, 65001]), st.binary(max_size=24)), max_size=4
).flatmap(lambda opts: st.just(opts + opts[:1]) | st.just(opts))  # sometimes one repeated


def _cacheable(qtype: int) -> bool:
    return qtype not in (41, QTYPE.AXFR, QTYPE.IXFR)


@st.composite
def valid_wire(draw: st.DrawFn) -> bytes:
    """A query kdns must answer: one question for a name the data knows (or nearly), any case."""
    name = draw(st.sampled_from(NAMES))
    packet = Packet(
        id=draw(st.integers(0, 0xFFFF)),
        # RD, CD, AD, AA, TC, Z: bits a query may carry without changing its meaning.
        flags=draw(st.sampled_from([0, 0x0100, 0x0110, 0x0120, 0x0500, 0x0300, 0x0140])),
        name=name_wire(draw(spelled(name))),
        # Not OPT (FORMERR), not AXFR/IXFR (never cached: whether they may is up to the client).
        qtype=draw(st.sampled_from(QTYPES) | st.integers(0, 0xFFFF).filter(_cacheable)),
        qclass=draw(st.sampled_from([1, 1, 1, 1, 3, 255, 254])),
    )
    if draw(st.booleans()):
        packet.opt = opt_record(
            draw(st.integers(0, 0xFFFF)), draw(st.booleans()), draw(edns_options)
        )
    return packet.wire()


def _mutated(rng: random.Random, family: str) -> bytes:
    return mutate(rng, valid_query(rng, NAMES), family)[1]


mutated_wire = st.builds(
    _mutated, st.randoms(use_true_random=False), st.sampled_from(sorted(MUTATIONS))
)
headers = st.builds(
    lambda f, c: struct.pack("!HHHHHH", 0x1234, f, *c),
    st.integers(0, 0xFFFF),
    st.tuples(*[st.sampled_from([0, 1, 2, 0xFFFF])] * 4),
)
any_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda h, b: h + b, headers, st.binary(max_size=300)),
    st.builds(random_packet, st.randoms(use_true_random=False)),
    mutated_wire,
)


# -- (a) the decoder ---------------------------------------------------------------------------


def _question(data: bytes) -> bytes:
    """The first question of `data`, uncompressed, as bytes ("" when it has none)."""
    if len(data) < 12 or data[4:6] == b"\x00\x00":
        return b""
    i = 12
    while i < len(data) and data[i] and data[i] <= 63:
        i += 1 + data[i]
    return data[12 : i + 5] if i < len(data) and not data[i] and i + 5 <= len(data) else b""


@FAST
@given(any_bytes)
def test_parse_query_raises_only_drop_or_refuse_with_a_valid_reply(data: bytes) -> None:
    try:
        query = parse_query(data)
    except Drop:
        assert len(data) < 12 or data[2] & 0x80, "only headerless packets and responses drop"
        return
    except Refuse as refused:
        reply = refused.reply
        msg = dns.message.from_wire(reply)
        assert msg.id == struct.unpack_from("!H", data)[0]
        assert msg.flags & dns.flags.QR
        assert msg.rcode() == refused.rcode
        assert refused.rcode in (RCODE.FORMERR, RCODE.NOTIMP, 16)
        assert len(reply) <= 512
        if msg.question:
            assert reply[12 : 12 + len(_question(reply))] == _question(data)
        return
    assert not data[2] & 0xF8, "QR clear and opcode QUERY"
    assert data[4:10] == b"\x00\x01\x00\x00\x00\x00"
    assert query.qtype != 41
    assert len(query.name) <= 255 and query.name.endswith(b"\x00")
    assert all(1 <= len(label) <= 63 for label in query.labels)
    # Only the name is folded: type and class bytes that happen to be letters stay apart.
    end = 12 + len(query.name)
    assert query.key[:-1] == data[12:end].lower() + data[end : end + 4]


# -- (b) the responder on hostile packets ------------------------------------------------------


def _limit(data: bytes) -> int:
    """The largest UDP reply the client of `data` may get."""
    try:
        return limit_for(parse_query(data))
    except (Drop, Refuse):
        return 512


@FAST
@given(st.one_of(mutated_wire, any_bytes), st.booleans())
def test_responder_answers_hostile_packets_with_well_formed_messages(
    data: bytes, udp: bool
) -> None:
    responder = new_responder()
    response = responder.respond(data, udp=udp)
    if response is None:
        assert len(data) < 12 or data[2] & 0x80
        return
    if response is TRANSFER:
        assert not udp and parse_query(data).qtype == QTYPE.AXFR
        return
    assert isinstance(response, bytes)
    msg = dns.message.from_wire(response)
    assert response[:2] == data[:2]
    assert msg.flags & dns.flags.QR
    if udp:
        assert len(response) <= _limit(data)
        if msg.edns < 0:
            assert len(response) <= 512
    dns.message.from_wire(slipped(response))  # what RRL sends instead: well-formed too
    assert responder.respond(data, udp=udp) == response, "the cached answer is the same"


# -- (c) fast path and full path -----------------------------------------------------------------


def _full_path(data: bytes, store: Store, udp: bool) -> bytes:
    """What kdns answers without any cache: decode, resolve, encode, truncate."""
    query = parse_query(data)
    full = encode(query, new_responder(store).resolve(query))
    limit = limit_for(query) if udp else 65535
    if len(full) <= limit:
        return full
    return truncated(full, len(query.name) + 4, query.edns, limit)


@FAST
@given(valid_wire(), st.booleans())
# Answers too large for 512 bytes and for 1232: random draws rarely pick them.
@example(Packet(id=1, name=name_wire(_labels(f"big.default.svc.{ZONE}")), qtype=1).wire(), True)
@example(
    Packet(
        id=2,
        name=name_wire(_labels(f"_http._tcp.big.default.svc.{ZONE}")),
        qtype=33,
        opt=opt_record(4096, False, []),
    ).wire(),
    True,
)
def test_fast_path_equals_full_path_for_valid_questions(data: bytes, udp: bool) -> None:
    store = new_store()
    responder = new_responder(store)
    first = responder.respond(data, udp=udp)  # a miss: the full path, and now cached
    assert responder._fast(data, udp) is not None, "the fast path takes a cached question"
    second = responder.respond(data, udp=udp)
    assert isinstance(first, bytes)
    assert first == second == _full_path(data, store, udp)
    assert not _against_reference(data, first, udp)


def _against_reference(data: bytes, reply: bytes, udp: bool) -> list[str]:
    """What the oracle finds wrong with `reply` ([] also when it does not cover the question)."""
    try:
        query = dns.message.from_wire(data)
    except dns.exception.DNSException:
        query = _without_options(data)  # dnspython refuses some options kdns ignores
    question = query.question[0]
    if question.rdclass != 1:
        return []
    expected = reference.records(_objects(), ZONE, question.name.to_text(), question.rdtype)
    if expected is None:
        return []
    return judge_reply(query, reply, expected.answer, expected.additional, udp=udp)


def _without_options(data: bytes) -> dns.message.Message:
    """`data` (one question, at most an OPT) read by dnspython with its EDNS options left out."""
    name, used = dns.name.from_wire(data, 12)
    qtype, qclass = struct.unpack_from("!HH", data, 12 + used)
    query = dns.message.make_query(name, qtype, qclass, use_edns=False)
    query.id, query.flags = struct.unpack_from("!HH", data)
    opt = 12 + used + 4
    if len(data) > opt:
        payload, _ext, _version, flags = struct.unpack_from("!HBBH", data, opt + 3)
        query.use_edns(0, flags & dns.flags.DO, payload)
    return query


BIG = [
    (f"big.default.svc.{ZONE}", "A"),
    (f"_http._tcp.big.default.svc.{ZONE}", "SRV"),
    (f"big.default.svc.{ZONE}", "SRV"),
    (f"db.data.svc.{ZONE}", "SRV"),
    (f"dual.default.svc.{ZONE}", "AAAA"),
    (f"big-0.big.default.svc.{ZONE}", "A"),
]


def test_replies_match_the_reference_including_truncation() -> None:
    """Large answers go out TC=1 over UDP when the reference says they do not fit (512 without
    EDNS, the client's size up to 1232 with it), whole over TCP; small ones whole everywhere.
    Both the full path (first ask) and the fast path (second ask) are judged."""
    responder = new_responder()
    verdicts = set()
    for name, rdtype in BIG:
        for payload in (None, 512, 1232, 4096):
            q = dns.message.make_query(name, rdtype, use_edns=payload is not None, payload=payload)
            for udp in (True, False):
                for _ in range(2):
                    reply = responder.respond(q.to_wire(), udp=udp)
                    assert isinstance(reply, bytes)
                    problems = _against_reference(q.to_wire(), reply, udp)
                    assert not problems, (name, rdtype, payload, udp, problems)
                    verdicts.add(bool(dns.message.from_wire(reply).flags & dns.flags.TC))
    assert verdicts == {True, False}, "the fixture has answers that fit and ones that do not"


@FAST
@given(valid_wire(), st.data(), st.booleans())
def test_other_spellings_of_a_cached_question_get_their_own_full_answer(
    data: bytes, draw: st.DataObject, udp: bool
) -> None:
    """A second query with the same key (other case, ID, flags, payload, options) from the cache
    gets exactly what the full path gives it."""
    query = parse_query(data)
    name = b".".join(query.labels).decode("latin-1")
    other = Packet(
        id=draw.draw(st.integers(0, 0xFFFF)),
        flags=draw.draw(st.sampled_from([0, 0x0100, 0x0110, 0x0010])),
        name=name_wire(draw.draw(spelled(name))),
        qtype=query.qtype,
        qclass=query.qclass,
    )
    if query.edns:
        other.opt = opt_record(draw.draw(st.integers(0, 0xFFFF)), query.do, draw.draw(edns_options))
    wire = other.wire()
    assert parse_query(wire).key == query.key
    store = new_store()
    responder = new_responder(store)
    responder.respond(data, udp=udp)
    assert responder._fast(wire, udp) == _full_path(wire, store, udp)


@FAST
@given(valid_wire(), st.randoms(use_true_random=False), st.sampled_from(sorted(MUTATIONS)))
def test_fast_path_accepts_only_what_the_decoder_accepts(
    data: bytes, rng: random.Random, family: str
) -> None:
    store = new_store()
    responder = new_responder(store)
    responder.respond(data, udp=True)
    responder.respond(data, udp=False)
    query = parse_query(data)
    base = Packet(
        id=query.id,
        flags=query.flags,
        name=query.name,
        qtype=query.qtype,
        qclass=query.qclass,
        opt=data[12 + len(query.name) + 4 :] or None,
    )
    mutated = mutate(rng, base, family)[1]
    for udp in (True, False):
        fast = responder._fast(mutated, udp)
        if fast is not None:
            parse_query(mutated)  # raises if the fast path took what the decoder refuses
            assert fast == _full_path(mutated, store, udp)


# -- (d) the answer engine ---------------------------------------------------------------------

KNOWN_LABELS = [
    *sorted({label for name in NAMES for label in _labels(name)}),
    b"*",
    b"_tcp",
    b"_udp",
    b"svc",
    b"pod",
    b"dns",
    b"ns",
    b"255",
    b"256",
    b"01",
]
SUFFIXES = [
    (),
    (b"cluster", b"local"),
    (b"svc", b"cluster", b"local"),
    (b"default", b"svc", b"cluster", b"local"),
    (b"default", b"pod", b"cluster", b"local"),
    (b"empty", b"pod", b"cluster", b"local"),
    (b"in-addr", b"arpa"),
    (b"ip6", b"arpa"),
    (b"arpa",),
    (b"Cluster", b"LOCAL"),
    (b"org",),
]
label_strategy = st.one_of(
    st.sampled_from(KNOWN_LABELS),
    st.binary(min_size=1, max_size=63),
    st.text(alphabet="0123456789abcdef-_.:*", min_size=1, max_size=40).map(str.encode),
)
label_sequences = st.tuples(st.lists(label_strategy, max_size=6), st.sampled_from(SUFFIXES)).map(
    lambda parts: [*parts[0], *parts[1]]
)
qtypes = st.sampled_from([1, 28, 33, 12, 16, 5, 6, 2, 255, 15, 65, 0]) | st.integers(0, 0xFFFF)


def _zone_of(labels: list[bytes]) -> str | None:
    low = [label.lower() for label in labels]
    if low[-2:] == [b"cluster", b"local"]:
        return ZONE
    if low[-2:] in ([b"in-addr", b"arpa"], [b"ip6", b"arpa"]):
        return b".".join(low[-2:]).decode()
    return None


def _wire(labels: list[bytes], qtype: int) -> bytes:
    return Packet(id=7, name=name_wire(labels), qtype=qtype).wire()


def _check_answer(labels: list[bytes], qtype: int, answer: Answer) -> None:
    zone = _zone_of(labels)
    if zone is None:
        assert answer.rcode == RCODE.REFUSED and not answer.authoritative
        assert not answer.answer and not answer.authority
        return
    assert answer.rcode in (RCODE.NOERROR, RCODE.NXDOMAIN), RCODE[answer.rcode]
    assert answer.authoritative
    if answer.rcode == RCODE.NXDOMAIN or not answer.answer:
        soas = [rr for rr in answer.authority if rr.rtype == QTYPE.SOA]
        assert len(soas) == 1, "negative answers carry the zone's SOA"
        assert str(soas[0].rname).lower() == zone + "."


@FAST
@given(label_sequences, qtypes)
def test_engine_never_raises_and_negative_answers_carry_the_soa(
    labels: list[bytes], qtype: int
) -> None:
    if len(name_wire(labels)) > 255:
        return
    wire = _wire(labels, qtype)
    if qtype == 41:
        return  # OPT is FORMERR before the engine
    answer = ENGINE.resolve(DNSLabel(labels), qtype)
    _check_answer(labels, qtype, answer)
    # What the engine says can be encoded, and reads back with the same rcode.
    query = parse_query(wire)
    msg = dns.message.from_wire(encode(query, ENGINE.resolve(DNSLabel(query.labels), qtype)))
    assert msg.rcode() == answer.rcode


# -- bugs found by these properties ------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(label_sequences, qtypes)
@example([b"fe80--1%eth0", b"default", b"pod", b"cluster", b"local"], QTYPE.AAAA)
@example([b"--%a", b"default", b"pod", b"cluster", b"local"], QTYPE.ANY)
def test_pod_name_with_scope_id_is_answered_without_an_exception(
    labels: list[bytes], qtype: int
) -> None:
    if len(name_wire(labels)) > 255 or qtype == 41:
        return
    answer = ENGINE.resolve(DNSLabel(labels), qtype)
    _check_answer(labels, qtype, answer)
    is_pod_name = len(labels) >= 5 and [x.lower() for x in labels[-3:]] == [
        b"pod",
        b"cluster",
        b"local",
    ]
    if is_pod_name and b"%" in labels[0]:
        assert answer.rcode == RCODE.NXDOMAIN


@settings(max_examples=100, deadline=None)
@given(label_sequences, qtypes)
@example([b"ns", b"dns", b"cluster", b"local"], QTYPE.TXT)
def test_answers_hold_only_the_type_asked_or_a_cname(labels: list[bytes], qtype: int) -> None:
    if len(name_wire(labels)) > 255 or qtype in (41, QTYPE.ANY, QTYPE.AXFR, QTYPE.IXFR):
        return
    answer = ENGINE.resolve(DNSLabel(labels), qtype)
    assert {rr.rtype for rr in answer.answer} <= {qtype, QTYPE.CNAME}


@settings(max_examples=100, deadline=None)
@given(any_bytes)
@example(bytes.fromhex("123401000001000000000000c00400010001"))
@example(bytes.fromhex("12340100000100000000000000"))
def test_query_log_line_is_made_for_any_packet(data: bytes) -> None:
    response = new_responder().respond(data, udp=True)
    name, qtype, rcode = describe_packet(data, response if isinstance(response, bytes) else None)
    assert name and qtype and rcode


def test_cache_key_lowers_the_name_only() -> None:
    https = Packet(name=name_wire(_labels(f"web.default.svc.{ZONE}")), qtype=65).wire()
    other = Packet(name=name_wire(_labels(f"web.default.svc.{ZONE}")), qtype=97).wire()
    assert parse_query(https).key != parse_query(other).key


def test_a_query_of_the_fuzz_generator_is_what_kdns_accepts() -> None:
    """The generator behind (b) makes valid queries (else the mutations start from garbage)."""
    rng = random.Random(1)
    for _ in range(200):
        wire = valid_query(rng, NAMES).wire()
        assert isinstance(parse_query(wire), Query)
