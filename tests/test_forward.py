"""Forwarding against real upstream DNS servers on 127.0.0.1 (asyncio, UDP and TCP, dnslib).

Each test starts one or more tiny upstreams on free ports in its own event loop; an upstream is a
handler `(request, proto) -> reply` and counts what it receives, so a test can tell whether a
query reached it. Cache expiry runs on a fake clock, so no test waits for a TTL to pass; the only
real waiting is for the forwarder's timeout, which the tests set to a fraction of a second.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, A, DNSRecord, EDNSOption

from kdns.config import ConfigError
from kdns.ops import forward
from kdns.ops.forward import MAX_TTL, TIMEOUT, Forwarder, cache_ttl, parse_upstream

Reply = DNSRecord | bytes | None
Handler = Callable[[DNSRecord, str], Awaitable[Reply]]
DEADLINE = 10.0  # no test may take longer than this, whatever goes wrong


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """A DNS server on 127.0.0.1 (same port for UDP and TCP) answering with `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.udp: list[DNSRecord] = []
        self.tcp: list[DNSRecord] = []
        self.raw: list[bytes] = []
        self.port = 0
        self.last_client: tuple[str, int] = ("", 0)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def count(self) -> int:
        return len(self.udp) + len(self.tcp)

    async def start(self) -> Upstream:
        loop = asyncio.get_running_loop()
        for _ in range(20):
            self.server = await asyncio.start_server(self._tcp, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            try:
                self.transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpServer(self), local_addr=self.address
                )
                return self
            except OSError:
                self.server.close()
        raise RuntimeError("no free port pair")

    def close(self) -> None:
        self.transport.close()
        self.server.close()
        for task in self._tasks:
            task.cancel()

    async def answer(self, data: bytes, proto: str) -> bytes | None:
        self.raw.append(data)
        request = DNSRecord.parse(data)
        (self.udp if proto == "udp" else self.tcp).append(request)
        reply = await self.handler(request, proto)
        if isinstance(reply, DNSRecord):
            return reply.pack()
        return reply

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = await self.answer(await reader.readexactly(size), "tcp")
                if reply is not None:
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.upstream.last_client = addr

        async def run() -> None:
            reply = await self.upstream.answer(data, "udp")
            if reply is not None:
                self.transport.sendto(reply, addr)

        task = asyncio.get_running_loop().create_task(run())
        self.upstream._tasks.add(task)
        task.add_done_callback(self.upstream._tasks.discard)


def records(ttl: int = 60, n: int = 1) -> Handler:
    """A handler answering every A question with `n` records of TTL `ttl`."""

    async def handler(request: DNSRecord, proto: str) -> Reply:
        reply = request.reply()
        for i in range(n):
            reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=ttl, rdata=A(f"192.0.2.{i % 250}")))
        return reply

    return handler


def negative(rcode: int = RCODE.NXDOMAIN, soa_ttl: int = 300, minimum: int = 30) -> Handler:
    async def handler(request: DNSRecord, proto: str) -> Reply:
        reply = request.reply()
        reply.header.rcode = rcode
        soa = SOA("ns.test.", "hostmaster.test.", (1, 7200, 1800, 86400, minimum))
        reply.add_auth(RR("test.", QTYPE.SOA, ttl=soa_ttl, rdata=soa))
        return reply

    return handler


async def silent(request: DNSRecord, proto: str) -> Reply:
    return None


def query(name: str = "www.example.test", qtype: str = "A", *, qid: int = 4242, edns: bool = False):
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    if edns:
        q.add_ar(EDNS0(udp_len=1232))
    return q


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(DEADLINE):
            await main()

    asyncio.run(bounded())


def answers(packet: bytes | None) -> list[str]:
    assert packet is not None
    return sorted(
        f"{rr.rname} {rr.ttl} {QTYPE[rr.rtype]} {rr.rdata}" for rr in DNSRecord.parse(packet).rr
    )


# -- forwarding and caching ------------------------------------------------------------------------


def test_forwards_and_gives_the_client_its_id_and_spelling() -> None:
    async def main() -> None:
        up = await Upstream(records(ttl=60)).start()
        fwd = Forwarder([up.address], timeout=1.0)
        reply = await fwd.forward(query("WwW.ExAmple.TEST", qid=777).pack())
        assert reply is not None
        parsed = DNSRecord.parse(reply)
        assert parsed.header.id == 777
        assert parsed.header.rcode == RCODE.NOERROR
        assert str(parsed.q.qname) == "WwW.ExAmple.TEST."
        assert answers(reply) == ["WwW.ExAmple.TEST. 60 A 192.0.2.0"]
        assert not parsed.ar  # no EDNS from the client, no OPT back
        # upstream got our own query: a different ID, RD, EDNS with the loop tag
        assert len(up.udp) == 1
        sent = up.udp[0]
        assert sent.header.rd == 1
        assert any(rr.rtype == QTYPE.OPT for rr in sent.ar)
        up.close()

    run(main)


def test_second_query_is_answered_from_the_cache_with_aged_ttls() -> None:
    async def main() -> None:
        clock = FakeClock()
        up = await Upstream(records(ttl=60)).start()
        fwd = Forwarder([up.address], timeout=1.0, clock=clock)
        await fwd.forward(query(qid=1).pack())
        clock.now += 10.4
        reply = await fwd.forward(query("WWW.example.test", qid=2).pack())
        assert up.count == 1
        assert fwd.hits == 1 and fwd.misses == 1
        parsed = DNSRecord.parse(reply or b"")
        assert parsed.header.id == 2
        assert answers(reply) == ["WWW.example.test. 50 A 192.0.2.0"]
        clock.now += 49  # 59.4 s after it was stored: still there
        await fwd.forward(query(qid=3).pack())
        assert up.count == 1
        clock.now += 1  # 60.4 s: expired, asked again
        reply = await fwd.forward(query(qid=4).pack())
        assert up.count == 2
        assert answers(reply) == ["www.example.test. 60 A 192.0.2.0"]
        up.close()

    run(main)


def test_cache_key_separates_types_and_do_bit() -> None:
    async def main() -> None:
        up = await Upstream(records(ttl=60)).start()
        fwd = Forwarder([up.address], timeout=1.0)
        await fwd.forward(query(qtype="A").pack())
        await fwd.forward(query(qtype="AAAA").pack())
        do = query(edns=True)
        do.ar[0].edns_do = 1
        await fwd.forward(do.pack())
        assert up.count == 3
        up.close()

    run(main)


def test_negative_answer_cached_by_soa_minimum() -> None:
    async def main() -> None:
        clock = FakeClock()
        up = await Upstream(negative(soa_ttl=300, minimum=30)).start()
        fwd = Forwarder([up.address], timeout=1.0, clock=clock)
        reply = await fwd.forward(query("nope.test").pack())
        assert DNSRecord.parse(reply or b"").header.rcode == RCODE.NXDOMAIN
        clock.now += 29
        reply = await fwd.forward(query("nope.test").pack())
        assert up.count == 1
        assert DNSRecord.parse(reply or b"").header.rcode == RCODE.NXDOMAIN
        clock.now += 2
        await fwd.forward(query("nope.test").pack())
        assert up.count == 2
        up.close()

    run(main)


def test_negative_ttl_capped_by_the_soa_ttl() -> None:
    async def main() -> None:
        clock = FakeClock()
        up = await Upstream(negative(rcode=RCODE.NOERROR, soa_ttl=10, minimum=300)).start()
        fwd = Forwarder([up.address], timeout=1.0, clock=clock)
        await fwd.forward(query("nodata.test").pack())
        clock.now += 9
        await fwd.forward(query("nodata.test").pack())
        assert up.count == 1
        clock.now += 2
        await fwd.forward(query("nodata.test").pack())
        assert up.count == 2
        up.close()

    run(main)


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(negative(rcode=RCODE.SERVFAIL), id="servfail"),
        pytest.param(records(ttl=0), id="ttl-0"),
    ],
)
def test_not_cached(handler: Handler) -> None:
    async def main() -> None:
        up = await Upstream(handler).start()
        fwd = Forwarder([up.address], timeout=1.0)
        await fwd.forward(query().pack())
        await fwd.forward(query().pack())
        assert up.count == 2
        up.close()

    run(main)


def test_cache_size_zero_turns_the_cache_off() -> None:
    async def main() -> None:
        up = await Upstream(records(ttl=60)).start()
        fwd = Forwarder([up.address], timeout=1.0, cache_size=0)
        for _ in range(2):
            assert answers(await fwd.forward(query().pack())) == [
                "www.example.test. 60 A 192.0.2.0"
            ]
        assert up.count == 2
        up.close()

    run(main)


def test_cache_ttl_rules() -> None:
    def reply(
        rcode: int = 0, ttls: tuple[int, ...] = (), soa: tuple[int, int] | None = None
    ) -> bytes:
        r = query().reply()
        r.header.rcode = rcode
        for ttl in ttls:
            r.add_answer(RR("www.example.test", QTYPE.A, ttl=ttl, rdata=A("192.0.2.1")))
        if soa is not None:
            rdata = SOA("ns.test.", "h.test.", (1, 2, 3, 4, soa[1]))
            r.add_auth(RR("test.", QTYPE.SOA, ttl=soa[0], rdata=rdata))
        return r.pack()

    assert cache_ttl(reply(ttls=(300, 20, 60))) == 20  # the smallest record TTL
    assert cache_ttl(reply(ttls=(86400,))) == MAX_TTL
    assert cache_ttl(reply(RCODE.NXDOMAIN, soa=(300, 30))) == 30
    assert cache_ttl(reply(RCODE.NXDOMAIN, soa=(10, 300))) == 10
    assert cache_ttl(reply(RCODE.NXDOMAIN, soa=(86400, 86400))) == MAX_TTL
    assert cache_ttl(reply(RCODE.NXDOMAIN)) == 0  # no SOA: not cached (RFC 2308 5)
    assert cache_ttl(reply()) == 0  # NODATA without SOA
    assert cache_ttl(reply(RCODE.SERVFAIL, soa=(300, 30))) == 0
    assert cache_ttl(reply(RCODE.REFUSED)) == 0
    assert cache_ttl(b"\x00\x01garbage") == 0


def test_edns_client_gets_opt_and_others_do_not() -> None:
    async def main() -> None:
        up = await Upstream(records()).start()
        fwd = Forwarder([up.address], timeout=1.0)
        with_edns = DNSRecord.parse(await fwd.forward(query(edns=True).pack()) or b"")
        plain = DNSRecord.parse(await fwd.forward(query().pack()) or b"")
        assert [rr.rtype for rr in with_edns.ar] == [QTYPE.OPT]
        assert with_edns.ar[0].rclass == 1232
        assert plain.ar == []
        assert up.count == 1  # same cache entry for both
        up.close()

    run(main)


def test_upstream_opt_is_kept_for_edns_clients_and_removed_for_others() -> None:
    async def with_opt(request: DNSRecord, proto: str) -> Reply:
        reply = await records()(request, proto)
        assert isinstance(reply, DNSRecord)
        reply.add_ar(EDNS0(udp_len=4096, opts=[EDNSOption(12, b"\x00" * 8)]))
        return reply

    async def main() -> None:
        up = await Upstream(with_opt).start()
        fwd = Forwarder([up.address], timeout=1.0)
        plain = DNSRecord.parse(await fwd.forward(query().pack()) or b"")
        with_edns = DNSRecord.parse(await fwd.forward(query(edns=True).pack()) or b"")
        assert plain.ar == [] and len(plain.rr) == 1
        assert [(rr.rtype, rr.rclass) for rr in with_edns.ar] == [(QTYPE.OPT, 1232)]
        up.close()

    run(main)


# -- truncation and TCP ----------------------------------------------------------------------------


def test_truncated_reply_is_asked_again_over_tcp() -> None:
    async def handler(request: DNSRecord, proto: str) -> Reply:
        if proto == "udp":
            reply = request.reply()
            reply.header.tc = 1
            return reply
        return await records(n=100)(request, proto)

    async def main() -> None:
        up = await Upstream(handler).start()
        fwd = Forwarder([up.address], timeout=1.0)
        reply = await fwd.forward(query().pack(), udp=False)
        assert len(answers(reply)) == 100
        assert (len(up.udp), len(up.tcp)) == (1, 1)
        # a UDP client without EDNS gets TC=1 (the 100 records exceed 512 bytes), from the cache
        small = DNSRecord.parse(await fwd.forward(query(qid=9).pack(), udp=True) or b"")
        assert small.header.tc == 1 and small.header.id == 9 and not small.rr
        assert str(small.q.qname) == "www.example.test."
        assert (len(up.udp), len(up.tcp)) == (1, 1)
        up.close()

    run(main)


# -- failures and failover -------------------------------------------------------------------------


def test_timeout_gives_servfail() -> None:
    async def main() -> None:
        up = await Upstream(silent).start()
        fwd = Forwarder([up.address], timeout=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await fwd.forward(query(qid=5).pack())
        assert loop.time() - started < 10  # gave up at its timeout, did not hang
        parsed = DNSRecord.parse(reply or b"")
        assert parsed.header.rcode == RCODE.SERVFAIL and parsed.header.id == 5
        assert up.count == 1
        assert fwd.upstreams[0].failures == 1
        up.close()

    run(main)


def test_fails_over_to_the_second_upstream_and_stays_there() -> None:
    async def main() -> None:
        dead = await Upstream(silent).start()
        good = await Upstream(records()).start()
        fwd = Forwarder([dead.address, good.address], timeout=1.0)
        reply = await fwd.forward(query("one.test").pack())
        assert answers(reply) == ["one.test. 60 A 192.0.2.0"]
        reply = await fwd.forward(query("two.test").pack())
        assert answers(reply) == ["two.test. 60 A 192.0.2.0"]
        assert dead.count == 1  # marked down: not asked for the second name
        assert good.count == 2
        dead.close()
        good.close()

    run(main)


def test_refused_and_garbage_fail_over() -> None:
    async def refuse(request: DNSRecord, proto: str) -> Reply:
        reply = request.reply()
        reply.header.rcode = RCODE.REFUSED
        return reply

    async def garbage(request: DNSRecord, proto: str) -> Reply:
        # right ID and question, then junk where records should be
        reply = request.reply()
        reply.header.a = 1
        return reply.pack() + b"\xff"

    async def main() -> None:
        refusing = await Upstream(refuse).start()
        broken = await Upstream(garbage).start()
        good = await Upstream(records()).start()
        fwd = Forwarder([refusing.address, broken.address, good.address], timeout=5.0)
        reply = await fwd.forward(query().pack())
        assert answers(reply) == ["www.example.test. 60 A 192.0.2.0"]
        assert (refusing.count, broken.count, good.count) == (1, 1, 1)
        for up in (refusing, broken, good):
            up.close()

    run(main)


def test_only_refused_returns_refused() -> None:
    async def refuse(request: DNSRecord, proto: str) -> Reply:
        reply = request.reply()
        reply.header.rcode = RCODE.REFUSED
        return reply

    async def main() -> None:
        up = await Upstream(refuse).start()
        fwd = Forwarder([up.address], timeout=5.0)
        reply = await fwd.forward(query().pack())
        assert DNSRecord.parse(reply or b"").header.rcode == RCODE.REFUSED
        up.close()

    run(main)


def test_mismatched_reply_is_ignored() -> None:
    async def main() -> None:
        async def spoof_then_answer(request: DNSRecord, proto: str) -> Reply:
            wrong = request.reply()
            wrong.header.id = (request.header.id + 1) % 65536
            wrong.add_answer(RR(request.q.qname, QTYPE.A, ttl=60, rdata=A("203.0.113.66")))
            up.transport.sendto(wrong.pack(), up.last_client)
            other = DNSRecord.question("other.test").reply()
            other.header.id = request.header.id
            up.transport.sendto(other.pack(), up.last_client)
            return await records()(request, proto)

        up = await Upstream(spoof_then_answer).start()
        fwd = Forwarder([up.address], timeout=1.0)
        reply = await fwd.forward(query().pack())
        assert answers(reply) == ["www.example.test. 60 A 192.0.2.0"]
        up.close()

    run(main)


def held_until(release: asyncio.Event) -> Handler:
    """An upstream handler that answers only once `release` is set."""

    async def held(request: DNSRecord, proto: str) -> Reply:
        await release.wait()
        return await records()(request, proto)

    return held


def test_identical_queries_in_flight_share_one_upstream_query() -> None:
    async def main() -> None:
        release = asyncio.Event()
        up = await Upstream(held_until(release)).start()
        fwd = Forwarder([up.address], timeout=2.0)
        tasks = [
            asyncio.create_task(fwd.forward(query("WWW.example.test", qid=i).pack()))
            for i in range(5)
        ]
        while up.count < 1 or fwd.misses < 5:
            await asyncio.sleep(0.01)  # bounded by DEADLINE; all five past the in-flight check
        release.set()
        replies = await asyncio.gather(*tasks)
        assert up.count == 1
        for i, reply in enumerate(replies):
            parsed = DNSRecord.parse(reply or b"")
            assert parsed.header.id == i
            assert str(parsed.q.qname) == "WWW.example.test."
            assert len(parsed.rr) == 1
        up.close()

    run(main)


def test_past_max_pending_waiting_queries_get_servfail_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(forward, "MAX_PENDING", 3)

    async def main() -> None:
        release = asyncio.Event()
        up = await Upstream(held_until(release)).start()
        fwd = Forwarder([up.address], timeout=60.0)
        # Two questions share one upstream transaction: waiting counts queries, not transactions.
        names = ["a.example.test", "a.example.test", "b.example.test"]
        tasks = [
            asyncio.create_task(fwd.forward(query(n, qid=i).pack())) for i, n in enumerate(names)
        ]
        while fwd.waiting < 3:
            await asyncio.sleep(0.01)  # bounded by DEADLINE
        # At once: without the bound it would wait for the held upstream (60 s), not 30 s.
        reply = await asyncio.wait_for(fwd.forward(query("c.example.test", qid=9).pack()), 30)
        over = DNSRecord.parse(reply or b"")
        assert over.header.rcode == RCODE.SERVFAIL and over.header.id == 9
        release.set()
        replies = await asyncio.gather(*tasks)
        assert [DNSRecord.parse(r or b"").header.rcode for r in replies] == [RCODE.NOERROR] * 3
        assert fwd.waiting == 0
        up.close()

    run(main)


# -- loops -----------------------------------------------------------------------------------------


def forward_back(fwd: list[Forwarder], *, rewrite_id: bool, strip_edns: bool = False) -> Handler:
    """An upstream that forwards every query back to kdns's forwarder, like a misconfigured
    resolver pointing at kdns: transparently (same ID), like CoreDNS (new ID, same EDNS), or
    like dnsmasq (new ID, its own EDNS)."""

    async def handler(request: DNSRecord, proto: str) -> Reply:
        original = request.header.id
        if rewrite_id:
            request.header.id = (original + 1) % 65536
        if strip_edns:
            request.ar = []
            request.header.ar = 0
        reply = await fwd[0].forward(request.pack())
        if reply is None:
            return None
        return struct.pack("!H", original) + reply[2:]  # the upstream's own ID back

    return handler


@pytest.mark.parametrize("rewrite_id", [False, True], ids=["same-id", "new-id"])
def test_loop_through_an_upstream_is_detected(
    rewrite_id: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        box: list[Forwarder] = []
        loop_up = await Upstream(forward_back(box, rewrite_id=rewrite_id)).start()
        good = await Upstream(records()).start()
        fwd = Forwarder([loop_up.address, good.address], timeout=10.0)
        box.append(fwd)
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await fwd.forward(query("a.test").pack())
        assert loop.time() - started < 10  # detected, not timed out
        assert answers(reply) == ["a.test. 60 A 192.0.2.0"]  # from the second upstream
        assert fwd.upstreams[0].looping
        assert fwd.loops == 1
        await fwd.forward(query("b.test").pack())
        await fwd.forward(query("c.test").pack())
        assert loop_up.count == 1  # skipped from then on
        assert good.count == 3
        loop_up.close()
        good.close()

    with caplog.at_level(logging.ERROR, logger="kdns.ops.forward"):
        run(main)
    loop_logs = [r for r in caplog.records if "forwarding loop" in r.getMessage()]
    assert len(loop_logs) == 1


def test_loop_with_only_one_upstream_gives_servfail() -> None:
    async def main() -> None:
        box: list[Forwarder] = []
        up = await Upstream(forward_back(box, rewrite_id=False)).start()
        fwd = Forwarder([up.address], timeout=1.0)
        box.append(fwd)
        reply = await fwd.forward(query(qid=31).pack())
        parsed = DNSRecord.parse(reply or b"")
        assert parsed.header.rcode == RCODE.SERVFAIL and parsed.header.id == 31
        reply = await fwd.forward(query("other.test").pack())
        assert DNSRecord.parse(reply or b"").header.rcode == RCODE.SERVFAIL
        assert up.count == 1
        up.close()

    run(main)


def test_loop_that_hides_our_query_cannot_multiply() -> None:
    """New ID and new EDNS (dnsmasq-like): unrecognisable, but the looped query joins the one in
    flight instead of going upstream again, so the loop ends in a timeout, not a storm."""

    async def main() -> None:
        box: list[Forwarder] = []
        up = await Upstream(forward_back(box, rewrite_id=True, strip_edns=True)).start()
        fwd = Forwarder([up.address], timeout=0.3)
        box.append(fwd)
        reply = await fwd.forward(query().pack())
        assert DNSRecord.parse(reply or b"").header.rcode == RCODE.SERVFAIL
        assert up.count == 1
        up.close()

    run(main)


def test_chance_match_does_not_mark_the_upstream() -> None:
    """A client query that happens to match one in flight gets SERVFAIL, but the upstream, which
    answers our query normally, is not marked as looping."""

    async def main() -> None:
        box: list[Forwarder] = []
        seen: list[int] = []

        async def answer_after_collision(request: DNSRecord, proto: str) -> Reply:
            # a client asks the same name with our upstream ID while our query is in flight
            seen.append(request.header.id)
            collide = query(str(request.q.qname), qid=request.header.id)
            reply = await box[0].forward(collide.pack())
            assert DNSRecord.parse(reply or b"").header.rcode == RCODE.SERVFAIL
            return await records()(request, proto)

        up = await Upstream(answer_after_collision).start()
        fwd = Forwarder([up.address], timeout=1.0)
        box.append(fwd)
        reply = await fwd.forward(query().pack())
        assert answers(reply) == ["www.example.test. 60 A 192.0.2.0"]
        assert not fwd.upstreams[0].looping
        up.close()

    run(main)


# -- construction and --upstream -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "own"),
    [
        (("127.0.0.1", 1053), ("127.0.0.1", 1053)),
        (("127.0.0.1", 1053), ("0.0.0.0", 1053)),
        (("::1", 1053), ("::", 1053)),
        (("::ffff:127.0.0.1", 1053), ("127.0.0.1", 1053)),
    ],
)
def test_upstream_that_is_kdns_itself_is_refused(
    upstream: tuple[str, int], own: tuple[str, int]
) -> None:
    with pytest.raises(ConfigError, match="loop"):
        Forwarder([upstream], own=[own])


def test_other_ports_and_hosts_are_fine() -> None:
    fwd = Forwarder([("127.0.0.1", 53), ("192.0.2.1", 1053)], own=[("127.0.0.1", 1053)])
    assert [u.address for u in fwd.upstreams] == [("127.0.0.1", 53), ("192.0.2.1", 1053)]
    with pytest.raises(ConfigError):
        fwd.set_own([("0.0.0.0", 53)])  # a port-0 listener learned its port: checked again
    with pytest.raises(ConfigError):
        Forwarder([])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", [("192.0.2.1", 53)]),
        ("192.0.2.1:5353", [("192.0.2.1", 5353)]),
        ("[2001:db8::1]:5353", [("2001:db8::1", 5353)]),
        ("2001:db8::1", [("2001:db8::1", 53)]),
        (" 10.0.0.1 ", [("10.0.0.1", 53)]),
    ],
)
def test_parse_upstream(text: str, expected: list[tuple[str, int]]) -> None:
    assert parse_upstream(text) == expected


@pytest.mark.parametrize("text", ["dns.google", "192.0.2.1:99999", "192.0.2.1:0", "", "[::1"])
def test_parse_upstream_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_upstream(text)


def test_parse_upstream_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# generated\n"
        "search example.test\n"
        "nameserver 127.0.0.1   # kdns itself when it listens on :53\n"
        "nameserver 192.0.2.53\n"
        "; another comment style\n"
        "nameserver fe80::1%eth0\n"
        "nameserver 192.0.2.53\n"
        "options ndots:5\n"
    )
    got = parse_upstream("resolv.conf", own=[("0.0.0.0", 53)], resolv_conf=conf)
    assert got == [("192.0.2.53", 53), ("fe80::1%eth0", 53)]
    got = parse_upstream("resolv.conf", own=[("127.0.0.1", 1053)], resolv_conf=conf)
    assert got[0] == ("127.0.0.1", 53)


def test_parse_upstream_resolv_conf_errors(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\n")
    with pytest.raises(ConfigError, match="only kdns itself"):
        parse_upstream("resolv.conf", own=[("127.0.0.1", 53)], resolv_conf=conf)
    conf.write_text("search x\n")
    with pytest.raises(ConfigError, match="no nameserver"):
        parse_upstream("resolv.conf", resolv_conf=conf)
    with pytest.raises(ConfigError, match="cannot read"):
        parse_upstream("resolv.conf", resolv_conf=tmp_path / "missing")


def test_zone_transfers_are_not_forwarded() -> None:
    async def main() -> None:
        up = await Upstream(records()).start()
        fwd = Forwarder([up.address], timeout=0.5)
        reply = await fwd.forward(query(qtype="AXFR").pack())
        assert DNSRecord.parse(reply or b"").header.rcode == RCODE.REFUSED
        assert up.count == 0
        assert await fwd.forward(b"\x00") is None
        up.close()

    run(main)


# -- upstreams without EDNS ----------------------------------------------------------------------


class NoEdnsUpstream(asyncio.DatagramProtocol):
    """A UDP server on 127.0.0.1 that does not implement EDNS, written with dnspython (a second
    parser, so what kdns sends is read by code other than its own): FORMERR without an OPT, as
    such servers answer, to every query carrying one; to plain queries, what `plain` says:
    "answer" (one A record), "formerr" or "silent"."""

    def __init__(self, plain: str = "answer") -> None:
        self.plain = plain
        self.queries: list[dns.message.Message] = []

    async def start(self) -> NoEdnsUpstream:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        return self

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (host, port)

    def close(self) -> None:
        self.transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        self.queries.append(query)
        reply = dns.message.make_response(query)
        reply.use_edns(False)
        if query.edns >= 0 or self.plain == "formerr":
            reply.set_rcode(dns.rcode.FORMERR)
        elif self.plain == "answer":
            reply.answer.append(
                dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.7")
            )
        else:
            return
        self.transport.sendto(reply.to_wire(), addr)


def test_formerr_to_edns_is_asked_again_without_opt_and_that_answer_relayed() -> None:
    async def main() -> None:
        up = await NoEdnsUpstream().start()
        fwd = Forwarder([up.address], timeout=1.0)
        reply = await fwd.forward(query("old.example.test", qid=321).pack())
        parsed = dns.message.from_wire(reply or b"")
        assert (parsed.id, parsed.rcode(), parsed.edns) == (321, dns.rcode.NOERROR, -1)
        assert [rrset.to_text() for rrset in parsed.answer] == [
            "old.example.test. 60 IN A 192.0.2.7"
        ]
        first, second = up.queries
        assert first.edns == 0 and second.edns == -1 and not second.additional
        assert first.question == second.question
        assert second.flags & dns.flags.RD
        assert second.id != first.id  # a fresh ID for the second query, as for any other
        # the answer is cached like any other: no third query
        again = await fwd.forward(query("old.example.test", qid=322).pack())
        assert dns.message.from_wire(again or b"").rcode() == dns.rcode.NOERROR
        assert len(up.queries) == 2
        assert fwd.upstreams[0].failures == 0
        up.close()

    run(main)


def test_edns_client_gets_an_opt_back_from_an_upstream_without_edns() -> None:
    async def main() -> None:
        up = await NoEdnsUpstream().start()
        fwd = Forwarder([up.address], timeout=1.0)
        reply = await fwd.forward(query("old.example.test", edns=True).pack())
        parsed = dns.message.from_wire(reply or b"")
        assert parsed.rcode() == dns.rcode.NOERROR and parsed.edns == 0  # RFC 6891 6.1.1
        assert len(parsed.answer) == 1
        assert [q.edns for q in up.queries] == [0, -1]
        up.close()

    run(main)


def test_formerr_is_retried_once_only_and_then_relayed() -> None:
    async def main() -> None:
        up = await NoEdnsUpstream(plain="formerr").start()
        fwd = Forwarder([up.address], timeout=1.0)
        reply = await fwd.forward(query(qid=11).pack())
        parsed = dns.message.from_wire(reply or b"")
        assert (parsed.id, parsed.rcode()) == (11, dns.rcode.FORMERR)
        assert [q.edns for q in up.queries] == [0, -1]
        await fwd.forward(query(qid=12).pack())  # FORMERR is never cached: asked again
        assert [q.edns for q in up.queries] == [0, -1, 0, -1]
        up.close()

    run(main)


def test_upstream_silent_without_edns_fails_over() -> None:
    async def main() -> None:
        mute = await NoEdnsUpstream(plain="silent").start()
        good = await NoEdnsUpstream().start()
        fwd = Forwarder([mute.address, good.address], timeout=1.0)
        reply = await fwd.forward(query("old.example.test").pack())
        assert dns.message.from_wire(reply or b"").rcode() == dns.rcode.NOERROR
        assert [q.edns for q in mute.queries] == [0, -1]
        assert [q.edns for q in good.queries] == [0, -1]
        assert fwd.upstreams[0].failures == 1
        mute.close()
        good.close()

    run(main)


def test_upstream_timeout_is_a_constructor_parameter() -> None:
    assert TIMEOUT == 2.0
    assert Forwarder([("192.0.2.1", 53)]).timeout == TIMEOUT
    assert Forwarder([("192.0.2.1", 53)], timeout=0.5).timeout == 0.5
    with pytest.raises(ConfigError, match="positive"):
        Forwarder([("192.0.2.1", 53)], timeout=0)
