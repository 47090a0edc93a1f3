"""Asking DNS servers in the e2e suite: dig for the seed's story, dnspython for comparisons."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from tests.kdns_process import KdnsProcess

STATUS = re.compile(r"status: (\w+)")


@dataclass(frozen=True)
class Reply:
    rcode: str
    answer: frozenset[str]
    authority: frozenset[str] = frozenset()
    additional: frozenset[str] = frozenset()
    aa: bool = False

    def short(self) -> str:
        return f"{self.rcode} {sorted(self.answer)}"


def dig_reply(kp: KdnsProcess, name: str, qtype: str = "A", tcp: bool = False) -> Reply:
    """Ask kdns with dig: the status and the answer records' data (as `+short` prints it)."""
    out = kp.dig("+noall", "+comments", "+answer", name, qtype, tcp=tcp)
    m = STATUS.search(out)
    rcode = m.group(1) if m else "TIMEOUT"
    answer = set()
    for line in out.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        fields = line.split(None, 4)
        if len(fields) == 5 and fields[3] == qtype:
            answer.add(fields[4].strip())
    return Reply(rcode, frozenset(answer))


#: The product's target from an API write to dig (design: well under a second). Measured and
#: printed by `until_dig`, never asserted: five control-plane processes share two cores here.
TARGET = 1.0

#: (what, seconds) of every `until_dig` slower than TARGET in this session, for the summary.
SLOW: list[tuple[str, float]] = []


def until_dig(
    kp: KdnsProcess,
    name: str,
    qtype: str,
    answer: set[str] | frozenset[str],
    rcode: str = "NOERROR",
    *,
    timeout: float = 20.0,
) -> float:
    """Poll dig until the reply is (rcode, answer); the seconds it took.

    The clock starts when this is called, i.e. right after the API write returned. Only a reply
    that never comes within `timeout` fails; a slow one is recorded in SLOW (and printed at the
    end of the session), since latency is measured, not asserted.
    """
    start = time.monotonic()
    want = Reply(rcode, frozenset(answer))
    got = Reply("NONE", frozenset())
    while time.monotonic() - start < timeout:
        got = dig_reply(kp, name, qtype)
        if got.rcode == want.rcode and got.answer == want.answer:
            elapsed = time.monotonic() - start
            if elapsed > TARGET:
                SLOW.append((f"{name} {qtype} {want.short()}", elapsed))
            return elapsed
        time.sleep(0.02)
    raise AssertionError(
        f"{name} {qtype}: wanted {want.short()}, still {got.short()} after {timeout}s\n"
        f"{kp.log()[-3000:]}"
    )


def _rr_texts(section: list[dns.rrset.RRset]) -> frozenset[str]:
    out = set()
    for rrset in section:
        rtype = dns.rdatatype.to_text(rrset.rdtype)
        for rd in rrset:
            if rrset.rdtype == dns.rdatatype.SOA:
                rd = rd.replace(serial=0)  # serials differ between servers by design
            out.add(f"{rrset.name.to_text()} {rtype} {rd.to_text()}")
    return frozenset(out)


def ask(
    port: int, name: str, qtype: str = "A", *, tcp: bool = False, timeout: float = 3.0
) -> Reply:
    """One query with dnspython (UDP, retried over TCP when truncated)."""
    q = dns.message.make_query(name, qtype)
    try:
        if tcp:
            r = dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout)
        else:
            r = dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)
            if r.flags & dns.flags.TC:
                r = dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout)
    except dns.exception.Timeout:
        return Reply("TIMEOUT", frozenset())
    return Reply(
        dns.rcode.to_text(r.rcode()),
        _rr_texts(r.answer),
        _rr_texts(r.authority),
        _rr_texts(r.additional),
        bool(r.flags & dns.flags.AA),
    )


#: Why two servers' replies to one question differ (a key of the test's table of known
#: differences), or None when nothing known explains it.
Classifier = Callable[[str, str, Reply, Reply], str | None]


@dataclass
class Tally:
    """The outcome of asking two servers the same questions (`differential`)."""

    questions: int = 0
    identical: int = 0
    explained: dict[str, int] = field(default_factory=dict)
    unexplained: list[str] = field(default_factory=list)
    report: list[str] = field(default_factory=list)

    def summary(self) -> str:
        known = sum(self.explained.values())
        return (
            f"{self.questions} questions, {self.identical} identical, {known} known differences "
            f"{dict(sorted(self.explained.items()))}, {len(self.unexplained)} unexplained"
        )

    def write(self, path: Path, header: str) -> None:
        """The header, then every difference with its class, for reading after a run."""
        path.write_text(f"{header}\n\n" + "\n".join(self.report) + "\n")

    def check(self, known: Iterable[str], summary: str) -> None:
        """Fail on any unexplained difference, and on a known one that no longer occurs (the
        workloads are seeded, so each class must show up)."""
        assert not self.unexplained, summary + "\n" + "\n".join(self.unexplained[:40])
        unused = set(known) - set(self.explained)
        assert not unused, f"known differences that no longer occur: {sorted(unused)}"


#: (name, qtype, the first server's reply, the second's)
Replies = list[tuple[str, str, Reply, Reply]]


def ask_both(ports: tuple[int, int], questions: Iterable[tuple[str, str]]) -> Replies:
    """Each (name, qtype) asked of the servers at `ports` (kdns first), over UDP."""
    return [(n, t, ask(ports[0], n, t), ask(ports[1], n, t)) for n, t in questions]


def noerror_names(replies: Replies) -> frozenset[str]:
    """The names (lower case, no final dot) the second server answered NOERROR for some type."""
    return frozenset(n.lower().rstrip(".") for n, _, _, b in replies if b.rcode == "NOERROR")


def differential(
    replies: Replies, classify: Classifier, names: tuple[str, str] = ("kdns", "coredns")
) -> Tally:
    """Compare the two servers' replies: rcode and answer records (TTLs left out, sets
    compared); `classify(name, qtype, first, second)` names the known class of each difference."""
    tally = Tally()
    width = max(len(n) for n in names) + 1
    for name, qtype, a, b in replies:
        tally.questions += 1
        if (a.rcode, a.answer) == (b.rcode, b.answer):
            tally.identical += 1
            continue
        line = (
            f"{name} {qtype}\n    {names[0] + ':':<{width}} {a.short()}"
            f"\n    {names[1] + ':':<{width}} {b.short()}"
        )
        key = classify(name, qtype, a, b)
        if key:
            tally.explained[key] = tally.explained.get(key, 0) + 1
            tally.report.append(f"[known: {key}] {line}")
        else:
            tally.unexplained.append(line)
            tally.report.append(f"[UNEXPLAINED] {line}")
    return tally
