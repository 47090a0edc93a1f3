"""testkit/fuzz.py, briefly, against a live kdns: 5,000 random and mutated packets over UDP and TCP.

The long run is `python -m testkit.fuzz` (100,000 packets). This one uses a fixed seed, so it sends
the same packets every time, and runs kdns with --log-queries so the query log sees them too.
Known names are judged by testkit.fuzz.judge_reply: dnspython builds the reply from the expected
records and decides whether it must be truncated; the records of the large service `big.fuzz`
come from what the fuzz wrote, not from `kdns records`.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rrset
import pytest

from kdns.serve import batch
from testkit import fuzz
from testkit.fuzz import big_address, check_reply, judge_reply

ROOT = Path(__file__).resolve().parent.parent
PACKETS = 5000
SEED = 1


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    began = time.monotonic()
    cmd = [sys.executable, "-m", "testkit.fuzz", "--packets", str(PACKETS)]
    cmd += ["--seed", str(SEED), "--log-queries", "--time-limit", "60"]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=90,
    )
    lines = [x for x in out.stdout.splitlines() if x.startswith("FUZZ-SUMMARY ")]
    assert lines, f"no summary:\n{out.stdout}\n{out.stderr}"
    summary: dict[str, Any] = json.loads(lines[-1].split(" ", 1)[1])
    summary["exit"] = out.returncode
    summary["wall"] = time.monotonic() - began
    summary["stdout"] = out.stdout
    return summary


def test_kdns_survives_the_fuzz_and_still_answers_correctly(run: dict[str, Any]) -> None:
    assert run["packets"] == PACKETS
    assert run["alive"] and run["crashes"] == 0
    assert run["checks"] >= 5
    # Every known name answered as `kdns records` says, before, during and after.
    wrong = [f for f in run["failures"] if f.startswith(("before", "after", "at the end"))]
    assert not wrong, wrong
    assert not [f for f in run["failures"] if "stalled" in f or "died" in f or "RSS" in f]
    assert run["rss_growth_mb"] <= run["rss_bound_mb"]
    outcomes = run["outcomes"]
    for fate in ("NOERROR", "NXDOMAIN", "FORMERR", "NOTIMP", "REFUSED", "BADVERS", "dropped"):
        assert outcomes.get(fate, 0) > 0, (fate, outcomes)
    assert outcomes.get("malformed", 0) == 0
    # Every UDP query answered, nothing answered that must not be, every reply well-formed.
    assert not run["problem_counts"], run["problems"]
    assert run["tcp_messages"] > 500
    assert set(run["tcp_sessions"]) >= {"pipeline", "huge-prefix", "partial-prefix", "zero-length"}
    assert len(run["families"]) == 23  # every mutation family, valid and random packets
    print(f"fuzz of {PACKETS} packets: {run['wall']:.1f} s wall")  # bounded by --time-limit


def test_the_fuzz_finds_nothing_wrong(run: dict[str, Any]) -> None:
    assert run["tracebacks"] == 0, run["log_errors"]
    assert not run["problems"], run["problems"]
    assert run["ok"] and run["exit"] == 0, run["failures"]


def test_reply_checker_catches_what_it_is_there_for() -> None:
    """The fuzz's reply checks can fail: a wrong ID, no QR, oversize UDP, a type not asked."""
    query = dns.message.make_query("web.default.svc.cluster.local", "TXT")
    good = dns.message.make_response(query)
    assert check_reply(query.to_wire(), good.to_wire(), udp=True) == ("NOERROR", [])
    wrong_id = struct.pack("!H", query.id ^ 1) + good.to_wire()[2:]
    assert check_reply(query.to_wire(), wrong_id, udp=True)[1]
    no_qr = bytearray(good.to_wire())
    no_qr[2] &= 0x7F
    assert check_reply(query.to_wire(), bytes(no_qr), udp=True)[1]
    big = dns.message.make_response(query)
    big.answer.append(
        dns.rrset.from_text_list(
            query.question[0].name, 5, "IN", "TXT", [f'"{c * 250}"' for c in "xyz"]
        )
    )
    assert any("limit" in p for p in check_reply(query.to_wire(), big.to_wire(), udp=True)[1])
    mismatched = dns.message.make_response(query)
    mismatched.answer.append(dns.rrset.from_text(query.question[0].name, 5, "IN", "A", "127.0.0.1"))
    assert any(
        "answered with A" in p for p in check_reply(query.to_wire(), mismatched.to_wire(), True)[1]
    )
    assert check_reply(query.to_wire(), b"\x00\x01", udp=True)[0] == "malformed"


def test_reference_judge_catches_a_missing_tc_bit() -> None:
    """A reply cut to its question without TC=1, or sent whole past the limit, is wrong."""
    name = "big.fuzz.svc.cluster.local."
    records = [dns.rrset.from_text_list(name, 5, "IN", "A", [big_address(i) for i in range(100)])]
    query = dns.message.make_query(name, "A", use_edns=False)
    whole = dns.message.make_response(query)
    whole.answer = records
    cut = dns.message.make_response(query)
    assert judge_reply(query, whole.to_wire(), records, udp=False) == []
    assert any("TC=0" in p for p in judge_reply(query, cut.to_wire(), records, udp=True))
    assert any("limit" in p for p in judge_reply(query, whole.to_wire(), records, udp=True))
    cut.flags |= dns.flags.TC
    assert any("TC=1" in p for p in judge_reply(query, cut.to_wire(), records, udp=False))
    # Truncated, it carries the records that fit (as CoreDNS's DNS library truncates): none
    # at all is wrong, all that fit is right, one of another name is wrong.
    assert any(
        "room for a record" in p for p in judge_reply(query, cut.to_wire(), records, udp=True)
    )
    filled = dns.message.make_response(query)
    filled.flags |= dns.flags.TC
    for i in range(100):
        one = dns.rrset.from_text_list(name, 5, "IN", "A", [big_address(j) for j in range(i + 1)])
        filled.answer = [one]
        if len(filled.to_wire()) > 512:
            filled.answer = [
                dns.rrset.from_text_list(name, 5, "IN", "A", [big_address(j) for j in range(i)])
            ]
            break
    assert judge_reply(query, filled.to_wire(), records, udp=True) == []
    filled.answer = [dns.rrset.from_text_list(name, 5, "IN", "A", ["192.0.2.1"])]
    assert any(
        "does not have" in p for p in judge_reply(query, filled.to_wire(), records, udp=True)
    )


def test_the_fuzzer_knows_which_datagrams_kdns_drops_unanswered() -> None:
    assert fuzz.SLOT == batch.SLOT
