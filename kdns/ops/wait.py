"""`kdns wait NAME [TYPE]`: block until a name has records, for container entrypoints.

Entrypoints that wait for a dependency loop on `nslookup` and learn nothing when it fails. This
asks kdns (or any DNS server) over UDP, with EDNS so that kdns says why an answer is empty
(RFC 8914, see `Engine.reason`), falls back to TCP when the answer is truncated, and ends:
- as soon as NAME has at least `minimum` records of TYPE: exit 0, the records on stdout;
- at the timeout: exit 1, with the last rcode and reason.
Every wait is bounded by the timeout; the pause between questions grows from 0.1 to 1 s.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, RCODE, DNSQuestion, DNSRecord

from kdns.dns.wire import EDE_OPTION


@dataclass
class Outcome:
    """The last answer seen: its rcode, the records of the asked type, and kdns's reason."""

    rcode: str = "no answer"
    records: list[str] | None = None
    reason: str = ""

    def describe(self) -> str:
        text = self.rcode
        if self.records is not None and self.rcode == "NOERROR":
            text += f", {len(self.records)} record(s)"
        return text + (f" ({self.reason})" if self.reason else "")


def ask(server: tuple[str, int], name: str, qtype: int, timeout: float) -> Outcome:
    """One question to `server`; what came back (an `Outcome` with rcode "no answer" if none)."""
    query = DNSRecord(q=DNSQuestion(name, qtype))
    query.header.id = random.randrange(1 << 16)
    query.add_ar(EDNS0(udp_len=1232))
    data = query.pack()
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(data, server)
            reply = sock.recv(65535)
        if reply[2] & 0x02:  # TC: the whole answer over TCP
            with socket.create_connection(server, timeout=timeout) as conn:
                conn.sendall(struct.pack("!H", len(data)) + data)
                size = struct.unpack("!H", _read(conn, 2))[0]
                reply = _read(conn, size)
        answer = DNSRecord.parse(reply)
    except (OSError, ValueError, struct.error) as err:
        return Outcome(f"no answer ({err.__class__.__name__})")
    except Exception as err:  # dnslib raises its own errors for bad packets
        return Outcome(f"unreadable answer ({err})")
    if answer.header.id != query.header.id:
        return Outcome("mismatched answer")
    records = [rr.toZone() for rr in answer.rr if rr.rtype == qtype]
    return Outcome(RCODE.get(answer.header.rcode), records, _reason(answer))


def _read(conn: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        chunk = conn.recv(size - len(out))
        if not chunk:
            raise OSError("connection closed")
        out += chunk
    return out


def _reason(answer: DNSRecord) -> str:
    reasons = []
    for rr in answer.ar:
        if rr.rtype == QTYPE.OPT:
            for option in rr.rdata:
                if option.code == EDE_OPTION and len(option.data) >= 2:
                    code = struct.unpack("!H", option.data[:2])[0]
                    reasons.append(f"EDE {code}: {option.data[2:].decode(errors='replace')}")
    return "; ".join(reasons)


def wait(
    server: tuple[str, int], name: str, qtype: int, minimum: int, timeout: float
) -> tuple[bool, Outcome]:
    """Ask until `name` has `minimum` records of `qtype` or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    pause = 0.1
    while True:
        left = deadline - time.monotonic()
        outcome = ask(server, name, qtype, max(0.05, min(2.0, left)))
        if outcome.records is not None and len(outcome.records) >= minimum:
            return True, outcome
        left = deadline - time.monotonic()
        if left <= 0:
            return False, outcome
        time.sleep(min(pause, left))
        pause = min(1.0, pause * 2)
