"""A small upstream DNS server for tests: UDP and TCP on 127.0.0.1, answers from a table.

`Upstream({("payments.example.com.", "A"): ["payments.example.com. 300 IN A 192.0.2.10"]})`
answers that question with those records; a question not in the table gets `default(name,
qtype)` (records, or an rcode name such as "NXDOMAIN"). It counts what it is asked. It runs in
a thread, so a test can start it before a kdns process and read `asked` while kdns runs.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

from dnslib import QTYPE, RCODE, RR, DNSRecord

Records = list[str] | str  # zone-file lines, or an rcode name


def a_record(name: str, qtype: str) -> Records:
    """The default of kdns's older tests: every A question gets 192.0.2.7, TTL 60."""
    return [f"{name} 60 IN A 192.0.2.7"] if qtype == "A" else []


class Upstream:
    """See the module docstring. `port` is the same for UDP and TCP."""

    def __init__(
        self,
        table: dict[tuple[str, str], Records] | None = None,
        default: Callable[[str, str], Records] = a_record,
        host: str = "127.0.0.1",
    ) -> None:
        self.table = {(n.lower(), t): r for (n, t), r in (table or {}).items()}
        self.default = default
        self.asked: list[str] = []
        self.questions: list[tuple[str, str]] = []
        self._stop = threading.Event()
        for _ in range(20):
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.tcp.bind((host, 0))
            self.port = self.tcp.getsockname()[1]
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                self.udp.bind((host, self.port))
                break
            except OSError:
                self.tcp.close()
                self.udp.close()
        else:
            raise RuntimeError("no free port pair")
        self.tcp.listen(16)
        self.udp.settimeout(0.2)
        self.tcp.settimeout(0.2)
        self.threads = [
            threading.Thread(target=self._serve_udp, daemon=True),
            threading.Thread(target=self._serve_tcp, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def reply(self, data: bytes) -> bytes:
        """The answer to one query packet."""
        q = DNSRecord.parse(data)
        name, qtype = str(q.q.qname), QTYPE[q.q.qtype]
        self.asked.append(name)
        self.questions.append((name, qtype))
        r = q.reply()
        found = self.table.get((name.lower(), qtype))
        if found is None:
            found = self.default(name, qtype)
        if isinstance(found, str):
            r.header.rcode = getattr(RCODE, found)
        else:
            for line in found:
                r.add_answer(*RR.fromZone(line))
        packed: bytes = r.pack()
        return packed

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.udp.sendto(self.reply(data), addr)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    (size,) = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))
                    answer = self.reply(conn.recv(size, socket.MSG_WAITALL))
                    conn.sendall(struct.pack("!H", len(answer)) + answer)
                except (OSError, struct.error):
                    continue

    def close(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(2)
        self.udp.close()
        self.tcp.close()
