"""Whether a manifest's writer is done with it, as the kernel saw it (inotify).

The zones/ source notices changes by polling, which sees every kind of change but cannot tell a
file that was written from a file being written: `kubectl get svc -o yaml > f` truncates `f` at
once and writes it only after kubectl's API round trip, and an empty file is valid YAML. No timer
can tell the two apart on a loaded machine. The kernel can: a write in place shows as IN_MODIFY
(the truncation included), and the writer's `close()` as IN_CLOSE_WRITE; a file renamed into place
(`mv`, editors that save atomically, `kubectl ... > tmp && mv tmp f`) shows as IN_MOVED_TO.

So each directory that holds a manifest (and the real directory of each symlinked manifest) is
watched, and every event gets a sequence number. For each real path, `WriteTracker` knows:

- `state(path)`: WRITING after an IN_MODIFY with no close since, DONE after IN_CLOSE_WRITE or
  IN_MOVED_TO, UNKNOWN when no event was seen (a file that changed before the watch began, a
  directory created a moment ago, a network filesystem that sends no events). The caller
  applies DONE content at once, waits for WRITING, and uses its polling rule for UNKNOWN.
- `last_event(path)`: the sequence number of the newest event for the path, so that a caller can
  tell whether a file changed while it was being read (drain, note `seq`, read, drain again,
  compare), which the state alone cannot: a writer may truncate, write and close in between.

inotify_simple is the binding (a ctypes wrapper around the three system calls, no compiled
code). Where it is missing or the kernel refuses (not Linux, too many inotify instances),
`WriteTracker.create()` returns None and the caller polls.

When the kernel's event queue overflows, events were lost: every state becomes UNKNOWN (and
every path's last event is "now") until new events arrive, so nothing is trusted that was not
seen.
"""

from __future__ import annotations

import contextlib
import logging
import os
from enum import Enum
from typing import Any

log = logging.getLogger(__name__)

try:  # inotify exists only on Linux; elsewhere the zones/ source polls
    import inotify_simple

    _FLAGS: Any = inotify_simple.flags
except ImportError:  # pragma: no cover - exercised on other platforms
    inotify_simple = None
    _FLAGS = None


def inotify_available() -> bool:
    """True where the inotify binding could be imported (Linux with inotify_simple)."""
    return inotify_simple is not None


class WriteState(Enum):
    UNKNOWN = "unknown"
    WRITING = "writing"
    DONE = "done"


class WriteTracker:
    """Follows the writers of the files in a set of directories through inotify.

    Not thread-safe: the file source calls it only while holding its own read lock.
    """

    def __init__(self, notify: Any) -> None:
        self._notify = notify
        self._mask = (
            _FLAGS.MODIFY
            | _FLAGS.CLOSE_WRITE
            | _FLAGS.MOVED_TO
            | _FLAGS.MOVED_FROM
            | _FLAGS.CREATE
            | _FLAGS.DELETE
        )
        self._dirs: dict[int, str] = {}  # watch descriptor -> real directory path
        self._watched: dict[str, int] = {}
        self._states: dict[str, WriteState] = {}
        self._last: dict[str, int] = {}
        self._overflow_seq = 0  # the newest overflow: every path "changed" then
        #: The number of events seen so far (including overflows).
        self.seq = 0

    @classmethod
    def create(cls) -> WriteTracker | None:
        """A tracker on a new inotify instance, or None where inotify cannot be had."""
        if inotify_simple is None:
            return None
        try:
            notify = inotify_simple.INotify(nonblocking=True)
        except OSError as exc:
            log.warning(
                "inotify unavailable (%s); zones/ changes are applied after two equal reads",
                exc.strerror or exc,
            )
            return None
        return cls(notify)

    def close(self) -> None:
        self._notify.close()

    def watch(self, directories: set[str]) -> None:
        """Watch exactly these real directory paths (added and dropped as needed)."""
        for path in set(self._watched) - directories:
            wd = self._watched.pop(path)
            self._dirs.pop(wd, None)
            # The directory may be gone, and the kernel dropped its watch already.
            with contextlib.suppress(OSError):
                self._notify.rm_watch(wd)
        for path in directories - set(self._watched):
            try:
                wd = self._notify.add_watch(path, self._mask)
            except OSError as exc:
                # Unwatched files fall back to the polling rule (UNKNOWN), so this only costs
                # latency; say so once per directory.
                log.debug("cannot watch %s (%s); polling it", path, exc.strerror or exc)
                continue
            self._watched[path] = wd
            self._dirs[wd] = path
        for known in (self._states, self._last):  # forget files of directories left behind
            for path in [p for p in known if os.path.dirname(p) not in self._watched]:
                del known[path]

    def drain(self) -> None:
        """Take every queued event into the states (never blocks)."""
        for event in self._notify.read(timeout=0):
            self.seq += 1
            if event.mask & _FLAGS.Q_OVERFLOW:
                log.warning("inotify queue overflowed; re-checking every zones/ file")
                self._states.clear()
                self._overflow_seq = self.seq
                continue
            if event.mask & _FLAGS.IGNORED:  # the directory was removed
                path = self._dirs.pop(event.wd, None)
                if path is not None:
                    self._watched.pop(path, None)
                continue
            directory = self._dirs.get(event.wd)
            if directory is None or not event.name:
                continue
            path = os.path.join(directory, event.name)
            self._last[path] = self.seq
            if event.mask & _FLAGS.MODIFY:
                self._states[path] = WriteState.WRITING
            elif event.mask & (_FLAGS.CLOSE_WRITE | _FLAGS.MOVED_TO):
                self._states[path] = WriteState.DONE
            elif event.mask & (_FLAGS.DELETE | _FLAGS.MOVED_FROM):
                self._states.pop(path, None)

    def state(self, path: str) -> WriteState:
        """What the events since the watch began say about the writer of real path `path`."""
        return self._states.get(path, WriteState.UNKNOWN)

    def last_event(self, path: str) -> int:
        """The sequence number of the newest event that concerned real path `path` (0: none)."""
        return max(self._last.get(path, 0), self._overflow_seq)
