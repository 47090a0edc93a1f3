"""A serving process of `kdns serve --workers N`, forked from the main process (see `workers.py`).

Why fork. At 10,000 services and 100,000 endpoints the stores are most of a process's memory
(60 of 104 MB). A serving process started afresh (`python -m ...`) rebuilt its own copy from a
snapshot sent through a pipe: four of them cost four copies. Forked from the synced main process
after `gc.freeze()` (which keeps the cyclic collector from writing to the objects it inherited),
it shares those pages with the main process and its siblings until one of them writes to them.
A restarted serving process is forked from the current data in the same way.

What the fork leaves to clean up. Only the forking thread (the main process's event loop) goes on in
the child. A lock another thread held at the fork stays held there: the child never takes the watch
threads' locks, the logging module re-creates its own in the child (an at-fork hook), and glibc its
allocator's. The fork happens on the loop thread, where every store write is made, so no store is
ever copied half-written. The child drops the parent's running event loop (without closing it: its
epoll instance and signal pipe are shared with the parent, and closing them would unregister the
parent's sockets), resets signal handling, closes every file descriptor but its own, forgets the
stores' listeners (the parent's answer cache and journal), and runs a server of its own on a new
event loop. It never returns into the parent's code: it ends with `os._exit`, so nothing inherited
is finalised twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from kdns.config import Config
from kdns.serve.tally import PageClock
from kdns.state.store import Store


def run_forked(
    index: int,
    feed: int,
    status: int,
    sockets: Sequence[int],
    config: Config,
    level: int,
    stores: Sequence[Store],
    page_clock: PageClock,
) -> None:
    """Serve in a child just forked by the main process, then exit (never returns)."""
    code = 1
    try:
        # The parent's handlers would write to the parent's wakeup pipe. Ctrl-C from a terminal
        # and systemd's SIGTERM reach every process of the group: the main process decides, and
        # says "stop" through the pipe (or closes it by dying).
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        # Before the descriptors go: replacing the handlers closes the parent's.
        logging.basicConfig(
            level=level,
            format=f"%(asctime)s %(levelname)s worker {index} %(name)s: %(message)s",
            force=True,
        )
        _close_fds_but({0, 1, 2, feed, status, *sockets})
        asyncio.events._set_running_loop(None)
        asyncio.set_event_loop(None)
        for store in stores:
            store.forget_listeners()
        from kdns.serve.server import Inherited, run

        run(config, Inherited(index, feed, status, tuple(sockets), page_clock), stores=stores)
        code = 0
    except BaseException:  # anything: this process must not go on as the parent
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def _close_fds_but(keep: set[int]) -> None:
    """Close every descriptor inherited but `keep`: the other serving processes' pipes (the main
    process tells that one exited by its pipe closing), the API connections, the HTTP socket."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, os.sysconf("SC_OPEN_MAX")))
    for fd in fds:
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
