"""A serving process of `kdns serve --workers N`; the main process starts it (see `workers.py`).

    python -m kdns.serve.worker INDEX FEED_FD STATUS_FD SOCKET_FD...

The first frame on FEED_FD carries the settings; the snapshot and every later write follow.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import sys

from kdns.serve.frames import FrameReader


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("the main process closed the pipe")
        data += chunk
    return data


def main(argv: list[str]) -> int:
    """Serve until the main process says stop (SIGTERM) or goes away (the pipe closes)."""
    # Ctrl-C from a terminal, and systemd's SIGTERM, reach every process of the group: the main
    # process decides, and says "stop" through the pipe (or closes it by dying).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    index, feed, status = (int(a) for a in argv[:3])
    sockets = tuple(int(a) for a in argv[3:])
    # Read the settings frame and nothing after it: the event loop reads the rest.
    try:
        header = _read_exactly(feed, 4)
        body = _read_exactly(feed, struct.unpack("!I", header)[0])
    except EOFError as err:
        print(f"kdns worker {index}: {err}", file=sys.stderr)
        return 1
    reader = FrameReader()
    reader.feed(header + body)
    hello = reader.next()
    if not hello or hello[0] != "hello":
        print(f"kdns worker {index}: unexpected first message", file=sys.stderr)
        return 2
    _, config, level = hello
    logging.basicConfig(
        level=level, format=f"%(asctime)s %(levelname)s worker {index} %(name)s: %(message)s"
    )
    from kdns.serve.server import Inherited, run

    run(config, Inherited(index, feed, status, sockets))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
