"""`--workers N` on Linux: each query goes to the serving process that owns its service's name.

Why. A serving process forked from the synced main process shares the stores' pages with it
until it writes to them, and reading a record writes to it (CPython counts references in the
object). When the kernel spread queries over the processes at random, every process answered
every name in time: each wrote to most of the store, and each cached every answer (10,000
services, 100,000 endpoints, four processes: 460 MB of proportional set size once the caches
were full, where one process is 104 MB). Steered by name, each process reads and caches only
its share of the services.

How. The main process binds one UDP socket per serving process to the same address with
SO_REUSEPORT, and attaches to the group a classic BPF program (SO_ATTACH_REUSEPORT_CBPF) that
the kernel runs on each datagram's payload, the DNS message: it hashes the query name's first
label that does not start with "_" (the service's own label for `svc.ns.svc.zone`,
`_port._proto.svc.ns.svc.zone` and the search-path spellings of both; the endpoint's label for
`endpoint.svc.ns.svc.zone`), ASCII case folded, and returns the index of the socket to deliver
to. The main process keeps every socket open: a serving process that dies or is forked again
finds the queries that came meanwhile queued in its socket, and the port stays bound.

While a serving process is gone (it died and waits to be forked again, or is starting), the
main process attaches the program again with that socket's names sent to the next process up:
what was already queued waits for the new process, what comes next is answered meanwhile.

What it costs. A name is answered by one process only: a single name asked at more than one
process's maximum rate (~150,000 queries/s of cache hits here) is limited to it, and while a
process is stuck but not yet known to be (until the main process kills it, SILENCE_TIMEOUT) its
names wait. `--no-steer` reads one shared socket in every process instead.
"""

from __future__ import annotations

import ctypes
import socket
import sys
from collections.abc import Collection

#: setsockopt(SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, ...) (Linux 4.5; not in the socket module)
SO_ATTACH_REUSEPORT_CBPF = 51
#: Bytes of the label hashed: past this, names differ rarely enough not to matter for balance.
HASHED_BYTES = 40
#: Leading labels starting with "_" skipped (`_port._proto.` of SRV names).
SKIPPED_LABELS = 2
#: The DNS header's length: the question's name starts after it.
_HEADER = 12
_FNV_BASIS = 0x811C9DC5
_FNV_PRIME = 0x01000193

# Classic BPF opcodes (linux/filter.h).
_LD_B_IND = 0x50  # A = byte at [X + k]
_LD_IMM = 0x00  # A = k
_LD_MEM = 0x60  # A = M[k]
_LDX_IMM = 0x01  # X = k
_LDX_MEM = 0x61  # X = M[k]
_ST = 0x02  # M[k] = A
_TAX = 0x07  # X = A
_TXA = 0x87  # A = X
_ADD_K, _ADD_X = 0x04, 0x0C
_OR_K = 0x44
_XOR_X = 0xAC
_MUL_K = 0x24
_RSH_K = 0x74
_MOD_K = 0x94
_JA = 0x05
_JEQ_K = 0x15
_JGT_K = 0x25
_RET_A = 0x16

# Scratch memory cells.
_HASH, _POS, _LEN = 0, 1, 2

Instruction = tuple[int, int, int, int]  # (code, jt, jf, k)


class _Filter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


def replacements(sockets: int, down: Collection[int]) -> dict[int, int]:
    """For each socket in `down` (its serving process gone or not yet answering), the one its
    names go to meanwhile: the next one up. None up: no replacement."""
    up = [i for i in range(sockets) if i not in down]
    if not up:
        return {}
    return {k: next((i for i in up if i > k), up[0]) for k in sorted(down) if 0 <= k < sockets}


def program(sockets: int, down: Collection[int] = ()) -> list[Instruction]:
    """The classic BPF program choosing one of `sockets` sockets for a DNS query datagram,
    the names of the sockets in `down` going to `replacements`.

    A load past the end of the datagram ends the program with 0 (socket 0): only a malformed
    name does that, the label's own bytes are all inside the datagram."""
    if sockets < 1:
        raise ValueError("at least one socket")
    code: list[Instruction] = [(_LDX_IMM, 0, 0, 0)]  # X: offset of the label's length byte
    for _ in range(SKIPPED_LABELS):
        code += [
            (_LD_B_IND, 0, 0, _HEADER + 1),  # the label's first byte
            (_JEQ_K, 0, 4, ord("_")),
            (_LD_B_IND, 0, 0, _HEADER),  # its length
            (_ADD_K, 0, 0, 1),
            (_ADD_X, 0, 0, 0),
            (_TAX, 0, 0, 0),  # X: the next label
        ]
    code += [
        (_TXA, 0, 0, 0),
        (_ST, 0, 0, _POS),
        (_LD_B_IND, 0, 0, _HEADER),
        (_ST, 0, 0, _LEN),
        (_LD_IMM, 0, 0, _FNV_BASIS),
        (_ST, 0, 0, _HASH),
    ]
    # FNV-1a over the label's bytes, unrolled (classic BPF has no loops): each byte first checks
    # it is inside the label, else jumps to the end.
    exits: list[int] = []
    for i in range(HASHED_BYTES):
        code += [(_LD_MEM, 0, 0, _LEN), (_JGT_K, 1, 0, i)]
        exits.append(len(code))
        code += [
            (_JA, 0, 0, 0),  # to the end, patched below
            (_LDX_MEM, 0, 0, _POS),
            (_LD_B_IND, 0, 0, _HEADER + 1 + i),
            (_OR_K, 0, 0, 0x20),  # ASCII case folded: resolvers randomise it (0x20 bits)
            (_TAX, 0, 0, 0),
            (_LD_MEM, 0, 0, _HASH),
            (_XOR_X, 0, 0, 0),
            (_MUL_K, 0, 0, _FNV_PRIME),
            (_ST, 0, 0, _HASH),
        ]
    end = len(code)
    for at in exits:
        code[at] = (_JA, 0, 0, end - at - 1)
    # FNV's low bits mix poorly; fold the high half in before taking the remainder.
    code += [
        (_LD_MEM, 0, 0, _HASH),
        (_RSH_K, 0, 0, 16),
        (_TAX, 0, 0, 0),
        (_LD_MEM, 0, 0, _HASH),
        (_XOR_X, 0, 0, 0),
        (_MOD_K, 0, 0, sockets),
    ]
    for k, to in replacements(sockets, down).items():
        code += [(_JEQ_K, 0, 1, k), (_LD_IMM, 0, 0, to)]  # a replacement is never in `down`
    code.append((_RET_A, 0, 0, 0))
    return code


def choose(payload: bytes, sockets: int, down: Collection[int] = ()) -> int:
    """What `program(sockets, down)` returns for a datagram: the same steps in Python, for
    tests and for saying which serving process owns a name."""
    try:
        x = 0
        for _ in range(SKIPPED_LABELS):
            if payload[x + _HEADER + 1] == ord("_"):
                x = x + payload[x + _HEADER] + 1
        length = payload[x + _HEADER]
        h = _FNV_BASIS
        for i in range(min(length, HASHED_BYTES)):
            h = ((h ^ (payload[x + _HEADER + 1 + i] | 0x20)) * _FNV_PRIME) & 0xFFFFFFFF
    except IndexError:
        return 0  # the kernel ends the program there, with 0, before any replacement
    index = (h ^ (h >> 16)) % sockets
    return replacements(sockets, down).get(index, index)


def supported() -> bool:
    """Whether this platform can steer (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def attach(sock: socket.socket, sockets: int, down: Collection[int] = ()) -> None:
    """Attach the steering program for a group of `sockets` sockets to `sock`'s group,
    replacing the one it had (the kernel swaps them at once)."""
    code = program(sockets, down)
    filters = (_Filter * len(code))(*(_Filter(c, jt, jf, k) for c, jt, jf, k in code))
    prog = _Program(len(code), ctypes.cast(filters, ctypes.POINTER(_Filter)))
    # The kernel copies the program during the call; `filters` only has to live until then.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(prog))
