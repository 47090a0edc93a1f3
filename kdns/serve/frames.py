"""Messages between kdns's own processes: length-prefixed pickles on a pipe.

Only the watching process and the serving processes it started speak this, over pipes nothing
else can open, so pickle (fast, and it carries the frozen model records as they are) is safe
here; it never reads anything that came from the network.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

_LENGTH = struct.Struct("!I")


def pack(message: Any) -> bytes:
    """One frame: 4-byte big-endian length, then the pickle."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class FrameReader:
    """Collects bytes as they arrive and hands out whole messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._at = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received and not yet handed out."""
        return len(self._buffer) - self._at

    def next(self) -> Any | None:
        """The next whole message, or None until more bytes arrive."""
        buf, at = self._buffer, self._at
        if len(buf) - at < 4:
            return None
        (size,) = _LENGTH.unpack_from(buf, at)
        end = at + 4 + size
        if len(buf) < end:
            return None
        message = pickle.loads(buf[at + 4 : end])
        if end == len(buf):
            buf.clear()
            self._at = 0
        elif end > 1 << 20:
            # Drop what was read once it is large, not on every frame (that would be quadratic).
            del buf[:end]
            self._at = 0
        else:
            self._at = end
        return message
