"""The zones/ source: manifest directories, served and kept up to date while kdns runs.

How changes are noticed: by polling. Every `poll_interval` the directories are listed and each
manifest is stat'ed through its symlinks; a file whose signature (resolved target, device, inode,
mtime, size) changed is read again. Polling needs no dependency and sees every way a file can
change, including the one inotify makes awkward: a mounted ConfigMap is updated by writing a new
hidden `..<timestamp>` directory and renaming a `..data_tmp` symlink over `..data`, so the visible
`foo.yaml -> ..data/foo.yaml` symlink never changes while the file it reaches does. Hidden names
are never loaded directly (that would count every ConfigMap key twice), but visible symlinks into
them are followed. Visible subdirectories are read too, recursively, so a zones/ tree can be
organised by namespace or hold one ConfigMap mount per subdirectory.

Two details keep polling exact:

- mtime has a granularity (coarse on some filesystems), so two writes of the same size within
  one tick leave the same signature. A file modified within `_RACY_NS` of being read is read
  again at every poll, and its content compared by digest, until it has been quiet that long
  (git calls this the racily-clean problem);
- a ConfigMap swap, or an editor saving several files, can happen while files are being read.
  After reading, the directories are listed again; if anything moved meanwhile, the changed
  files are read once more before the result is used, so kdns does not serve half of a swap.

When new content is applied. A file being written is not a file that was written: the shell
truncates `f` for `kubectl get svc -o yaml > f` at once, and kubectl writes only after its API
round trip; an empty file is valid YAML, and serving it would answer NXDOMAIN for every name the
file held. No timer tells the two apart on a loaded machine, so the watch asks who is writing
(`kdns.sources.writers`, inotify):

- a file whose writer closed it (IN_CLOSE_WRITE), or that was renamed into place (IN_MOVED_TO),
  is applied at once;
- a file written to since its last close is left alone, its previous content still served, until
  its writer closes it, however long that takes;
- a file that changed while it was being read is read again at the next poll;
- a file about whose writer inotify said nothing (no inotify, a network filesystem, a directory
  created a moment ago, a ConfigMap swap) is applied once two reads at least `_STABLE_NS` apart
  gave the same content.

And whatever the writer: a change that takes a file from N objects to none, or removes more than
half of them, or a file that disappears, is applied only once the file has held still for
`_SHRINK_NS`; the wait is logged with its reason. `load()` at startup and `reload()` (SIGHUP, an
explicit request) apply what they read at once.

How changes are applied: the complete new set of objects, built from every file, goes to the
store in ONE `replace` call. The store diffs it against what the layer holds, so a query sees
either the old state or the new one, and unchanged names never blink.

A file that stops parsing (any error, not warnings) keeps serving its last good content, whole: a
half-edited file should not drop half its services. Its errors are logged once, when its content
changes, not at every poll. Problems between files (the same object in two files, endpoints of a
service no file defines) are logged when they appear.

`watch()` is a coroutine for the server's event loop, but reading and parsing run in a worker
thread (`asyncio.to_thread`): YAML parsing is slow in Python, and a large zones/ file would
otherwise stall every query while it is parsed. The store is then written on the loop itself,
so the store needs no lock.

The file source also computes what a cluster's control plane would add: ClusterIPs for services
without one (`kdns.sources.allocate`) and endpoints from Pod manifests (`kdns.sources.pods`).
It emits a `Namespace` record for every namespace an object lives in, so that names under
`<ns>.svc.<zone>` exist whether or not the layer was added with implicit namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kdns.sources.allocate import (
    DEFAULT_SERVICE_CIDR,
    AllocationError,
    Network,
    allocate,
    parse_cidr,
)
from kdns.sources.manifests import SUFFIXES, Origin, Parsed, Problem, Record, Severity, decode, read
from kdns.sources.pods import Pod, ServiceTargets, endpoints_for, resolve_port, selects
from kdns.sources.scope import Scope
from kdns.sources.writers import WriteState, WriteTracker, inotify_available
from kdns.state.model import EndpointSet, KubeObject, Namespace, PodAddresses, Service
from kdns.state.store import Sink

log = logging.getLogger(__name__)

#: How the watch learns that a writer is done: inotify where it works, else two equal reads.
WATCH_MODES = ("auto", "inotify", "poll")

#: A file modified less than this long before it was read may change again without its
#: signature changing (mtime granularity), so it is re-read until it is older than this.
_RACY_NS = 2_000_000_000
#: Without word from inotify, new content is applied once two reads this far apart agree.
_STABLE_NS = 300_000_000
#: A change that removes all, or more than half, of a file's objects waits this long.
_SHRINK_NS = 1_000_000_000
#: How many times one reload re-reads files that kept changing while they were read.
_SETTLE_ATTEMPTS = 5


class SourceError(Exception):
    """A zones directory that cannot be used: missing, not a directory, unreadable."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Signature:
    target: str
    device: int
    inode: int
    mtime_ns: int
    size: int


@dataclass(frozen=True, slots=True)
class _File:
    signature: _Signature
    digest: bytes
    parsed: Parsed
    #: The records of the last content without errors; None if it never had any.
    good: tuple[Record, ...] | None
    racy: bool


@dataclass(frozen=True, slots=True)
class _Pending:
    """Content of a file that was read but is not served yet."""

    digest: bytes
    since_ns: int  # monotonic time of the first read that gave this content


def _shrinks(served: int, kept: int) -> bool:
    """True when a change from `served` objects to `kept` drops all, or more than half."""
    return served > 0 and (kept == 0 or (served - kept) * 2 > served)


def _signature(path: str) -> _Signature:
    st = os.stat(path)  # follows symlinks: the ConfigMap swap changes the target's inode
    return _Signature(os.path.realpath(path), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _walk(
    directory: str,
    out: dict[str, _Signature],
    problems: list[Problem],
    seen: set[str],
    top: bool = False,
) -> None:
    real = os.path.realpath(directory)
    if real in seen:  # the same directory twice, or a symlink loop
        return
    seen.add(real)
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        reason = f"cannot read directory: {exc.strerror or exc}"
        if top:
            raise SourceError(directory, reason) from None
        problems.append(Problem(directory, reason))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = os.path.join(directory, entry.name)
        try:
            if entry.is_dir():
                _walk(path, out, problems, seen)
            elif entry.is_file() and entry.name.lower().endswith(SUFFIXES):
                out.setdefault(path, _signature(path))
        except OSError:
            continue  # vanished or dangling symlink (a ConfigMap key mid-swap): not a manifest


def _scan(dirs: Iterable[str]) -> tuple[dict[str, _Signature], list[Problem]]:
    """Every manifest file under `dirs`, in a stable order, with its signature.

    Raises SourceError for a top-level path that is missing or not usable; problems below the
    top level (an unreadable subdirectory) are returned instead.
    """
    out: dict[str, _Signature] = {}
    problems: list[Problem] = []
    seen: set[str] = set()
    for top in dirs:
        try:
            st = os.stat(top)
        except FileNotFoundError:
            raise SourceError(top, "no such directory") from None
        except OSError as exc:
            raise SourceError(top, f"cannot use: {exc.strerror or exc}") from None
        if os.path.isdir(top):
            _walk(top, out, problems, seen, top=True)
        elif os.path.isfile(top):  # a single manifest named explicitly (kdns check FILE)
            out.setdefault(top, _signature(top))
        else:
            raise SourceError(top, f"not a directory or file (mode {st.st_mode:o})")
    return out, problems


@dataclass(frozen=True, slots=True)
class Assembly:
    """The objects a set of manifests puts in the store, and the problems between files."""

    objects: tuple[KubeObject, ...]
    problems: tuple[Problem, ...]


def _describe(record: Record) -> str:
    kind, namespace, name = record.key
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def _problem_at(origin: Origin, message: str, severity: Severity = "error") -> Problem:
    return Problem(origin.path, message, origin.document, origin.line, 0, severity)


def assemble(
    records: Iterable[Record], service_cidr: Network | str, scope: Scope | None = None
) -> Assembly:
    """Turn the records of every file (in file order) into the store's objects.

    This is where the manifests are joined: duplicates are resolved (the first definition wins
    and the others are errors), ClusterIPs are allocated, and services with a selector but no
    Endpoints/EndpointSlice get endpoints from the Pod manifests. Then what `scope` leaves out
    is dropped, as the cluster watch never receives it; the manifests are joined and checked
    whole first, so a ClusterIP allocated, and a problem reported, are the same in every scope.
    """
    problems: list[Problem] = []
    first: dict[tuple[str, str, str], Record] = {}
    for record in records:
        prev = first.get(record.key)
        if prev is None:
            first[record.key] = record
        elif isinstance(record.obj, Namespace):
            # Declaring a namespace in every file that uses it keeps files self-contained.
            continue
        else:
            problems.append(
                _problem_at(
                    record.origin,
                    f"{_describe(record)} is already defined at {prev.origin}; "
                    "this definition is ignored",
                )
            )

    services: dict[tuple[str, str], Service] = {}
    targets: dict[tuple[str, str], ServiceTargets] = {}
    origins: dict[tuple[str, str], Origin] = {}
    endpoint_sets: list[tuple[EndpointSet, Origin]] = []
    pods_by_ns: dict[str, list[tuple[Pod, Origin]]] = {}
    objects: list[KubeObject] = []
    for record in first.values():
        obj = record.obj
        if isinstance(obj, Service):
            services[(obj.namespace, obj.name)] = obj
            targets[(obj.namespace, obj.name)] = record.targets or ServiceTargets()
            origins[(obj.namespace, obj.name)] = record.origin
        elif isinstance(obj, EndpointSet):
            endpoint_sets.append((obj, record.origin))
        elif isinstance(obj, Pod):
            pods_by_ns.setdefault(obj.namespace, []).append((obj, record.origin))
            if obj.ips and not obj.terminating and not obj.terminal:
                # What `--pods verified` answers from, as the watch's trimmed pods.
                objects.append(PodAddresses(obj.namespace, obj.name, obj.ips))
        else:
            objects.append(obj)

    try:
        allocated = allocate(services.values(), service_cidr)
    except AllocationError as exc:
        problems.append(Problem("", str(exc)))
        allocated = {}
    for key, address in allocated.items():
        services[key] = dataclasses.replace(services[key], cluster_ips=(address,))
        version = 6 if ":" in address else 4
        families = targets[key].families
        if families and version not in families:
            # The apiserver would refuse the Service (no range of its family); kdns serves it
            # from the one range it has, and says so rather than give another family silently.
            problems.append(
                _problem_at(
                    origins[key],
                    f"Service {key[0]}/{key[1]} asks for IPv{families[0]} (spec.ipFamilies) "
                    f"but --service-cidr {service_cidr} is IPv{version}: it gets {address}; "
                    f"give an IPv{families[0]} --service-cidr, or a clusterIP",
                    "warning",
                )
            )

    owners: dict[str, tuple[str, str]] = {}
    for key, svc in services.items():
        for ip in svc.cluster_ips:
            other = owners.setdefault(ip, key)
            if other != key:
                problems.append(
                    _problem_at(
                        origins[key],
                        f"clusterIP {ip} of Service {key[0]}/{key[1]} is also the clusterIP of "
                        f"Service {other[0]}/{other[1]} ({origins[other]})",
                        "warning",
                    )
                )

    covered: set[tuple[str, str]] = set()
    for eps, origin in endpoint_sets:
        covered.add((eps.namespace, eps.service))
        if (eps.namespace, eps.service) not in services:
            problems.append(
                _problem_at(
                    origin,
                    f"{eps.kind} {eps.namespace}/{eps.name}: no Service "
                    f"{eps.namespace}/{eps.service} is defined in these files, "
                    "so DNS does not use these endpoints",
                    "warning",
                )
            )
        objects.append(eps)

    for key, svc in services.items():
        objects.append(svc)
        if svc.selector is None or svc.type == "ExternalName" or key in covered:
            continue
        candidates = pods_by_ns.get(svc.namespace, [])
        objects.append(endpoints_for(svc, targets[key], (pod for pod, _ in candidates)))
        problems.extend(_unresolved_ports(svc, targets[key], candidates))

    namespaces = {obj.name for obj in objects if isinstance(obj, Namespace)}
    for record in first.values():
        namespace = record.key[1]
        if namespace and namespace not in namespaces:
            namespaces.add(namespace)
            objects.append(Namespace(namespace))
    if scope is not None and not scope.everything:
        labels = {
            record.key: dict(record.labels)
            for record in first.values()
            if isinstance(record.obj, Service)
        }
        objects = [obj for obj in objects if scope.admits(obj, labels.get(obj.key))]
    return Assembly(tuple(objects), tuple(problems))


def _unresolved_ports(
    service: Service, targets: ServiceTargets, candidates: Sequence[tuple[Pod, Origin]]
) -> list[Problem]:
    out = []
    for pod, origin in candidates:
        if not selects(service, pod) or pod.terminal or not pod.ips:
            continue
        for target in targets.ports:
            if resolve_port(pod, target) is None:
                out.append(
                    _problem_at(
                        origin,
                        f"Pod {pod.namespace}/{pod.name} has no {target.protocol} container port "
                        f"named {target.target!r}, which port {target.name or target.port} of "
                        f"Service {service.namespace}/{service.name} targets; "
                        "the pod gets no endpoint for that port",
                        "warning",
                    )
                )
    return out


def check(
    dirs: Sequence[str | os.PathLike[str]], service_cidr: str = DEFAULT_SERVICE_CIDR
) -> list[Problem]:
    """Every problem in the manifests under `dirs` (directories or single files), in file order.

    For `kdns check`: nothing is raised, a missing directory is a problem like any other. Only
    problems with `is_error` should make the check fail.
    """
    problems: list[Problem] = []
    network: Network | None = None
    try:
        network = parse_cidr(service_cidr)
    except AllocationError as exc:
        problems.append(Problem("", str(exc)))
    records: list[Record] = []
    for top in dirs:
        try:
            signatures, scan_problems = _scan([os.fspath(top)])
        except SourceError as exc:
            problems.append(Problem(exc.path, exc.reason))
            continue
        problems.extend(scan_problems)
        for path in signatures:
            parsed = read(path)
            problems.extend(parsed.problems)
            # Records of a file with errors still take part, so that problems between files
            # (duplicates, orphans) are reported in one run rather than one per fix.
            records.extend(parsed.records)
    if network is not None:
        problems.extend(assemble(records, network).problems)
    return problems


def _log_problem(problem: Problem) -> None:
    log.log(logging.ERROR if problem.is_error else logging.WARNING, "%s", problem)


class FileSource:
    """Serves the manifests under `dirs` into the store layer `layer`, and keeps them current.

    `load()` once at startup (it raises `SourceError` for a missing or unreadable directory),
    then run `watch()` on the event loop; `reload()` forces a check now (on SIGHUP, say).
    Only what `scope` admits reaches the sink (`--namespace`, `--label-selector`; all when None).
    """

    def __init__(
        self,
        sink: Sink,
        layer: str,
        dirs: Sequence[str | os.PathLike[str]],
        service_cidr: str = DEFAULT_SERVICE_CIDR,
        poll_interval: float = 0.25,
        watch_mode: str = "auto",
        scope: Scope | None = None,
    ) -> None:
        if watch_mode not in WATCH_MODES:
            raise SourceError(
                "--zones-watch", f"expected one of {', '.join(WATCH_MODES)}, not {watch_mode!r}"
            )
        if watch_mode == "inotify" and not inotify_available():
            raise SourceError("--zones-watch inotify", "inotify is not available here")
        try:
            self._network = parse_cidr(service_cidr)
        except AllocationError as exc:
            raise SourceError("--service-cidr", str(exc)) from None
        self.sink = sink
        self.layer = layer
        self.dirs = [os.fspath(d) for d in dirs]
        self.poll_interval = poll_interval
        self.scope = scope or Scope()
        self._files: dict[str, _File] = {}
        self._scan_problems: tuple[Problem, ...] = ()
        self._cross: tuple[Problem, ...] = ()
        self._reported: set[Problem] = set()
        self._failure = ""  # the last poll failure logged, so that it is logged once
        self._lock = threading.Lock()  # one reader of the files at a time
        self._apply_lock = threading.Lock()
        self._seq = 0
        self._applied = 0
        self.watch_mode = watch_mode
        self._tracker: WriteTracker | None = None
        #: Content read but not applied yet, by path: waiting for its writer or to hold still.
        self._pending: dict[str, _Pending] = {}
        #: Files gone from disk whose objects are still served, by path: since when (monotonic).
        self._removing: dict[str, int] = {}
        self._waits_logged: set[tuple[str, str]] = set()
        #: Objects served now, by kind, and the wall-clock time they were applied (for the page).
        self.objects: dict[str, int] = {}
        self.applied_at: float | None = None

    # -- public API ------------------------------------------------------------------------------

    def load(self) -> None:
        """Read every file and hand the result to the sink, then mark the layer synced.

        Files with errors are logged and left out; only an unusable directory raises
        `SourceError`, because serving without it would answer NXDOMAIN for all it defines.
        """
        result = self._refresh(force=True)
        assert result is not None  # force: always a result
        self._apply(*result)
        self.sink.set_synced(self.layer)

    def reload(self) -> bool:
        """Re-read what changed on disk; True when a new object set went to the sink.

        Safe to call from a signal handler: a directory that has become unusable is logged
        (once) and the store keeps what it has.
        """
        try:
            result = self._refresh(force=False)
        except SourceError as exc:
            self._fail(f"{exc}; still serving what was loaded before")
            return False
        self._recovered()
        if result is None:
            return False
        self._apply(*result)
        return True

    async def watch(self) -> None:
        """Poll for changes until cancelled, applying each on the running loop."""
        if self.watch_mode != "poll":
            await asyncio.to_thread(self._start_tracking)
        log.info(
            "watching %s for changes (%s)",
            ", ".join(self.dirs),
            "inotify: applied when the writer closes a file"
            if self._tracker is not None
            else "polling: applied when two reads agree",
        )
        try:
            while True:
                await asyncio.sleep(self.poll_interval)
                result = await asyncio.to_thread(self._poll)
                if result is not None:
                    self._apply(*result)
        finally:
            with self._lock:
                if self._tracker is not None:
                    self._tracker.close()
                    self._tracker = None

    @property
    def failure(self) -> str:
        """Why the directories cannot be read now ("" when they can)."""
        return self._failure

    @property
    def problems(self) -> list[Problem]:
        """The current problems: of each file as last read, and between files."""
        out = list(self._scan_problems)
        for state in self._files.values():
            out.extend(state.parsed.problems)
        out.extend(self._cross)
        return out

    # -- reading -------------------------------------------------------------------------------

    def _start_tracking(self) -> None:
        # Before the first poll: a write that starts from now on is seen by its events.
        with self._lock:
            self._tracker = WriteTracker.create()
            if self._tracker is not None:
                with contextlib.suppress(SourceError):  # the polls report it
                    self._tracker.watch(self._directories(_scan(self.dirs)[0]))

    def _poll(self) -> tuple[int, tuple[KubeObject, ...]] | None:
        try:
            result = self._refresh(force=False, settle=True)
        except SourceError as exc:
            self._fail(f"{exc}; still serving what was loaded before")
            return None
        except Exception as exc:  # a bug must not end the watch: log it once, keep polling
            if self._failure != repr(exc):
                self._failure = repr(exc)
                log.exception("reloading zones failed; still serving what was loaded before")
            return None
        self._recovered()
        return result

    def _fail(self, message: str) -> None:
        if self._failure != message:
            self._failure = message
            log.error("%s", message)

    def _recovered(self) -> None:
        if self._failure:
            self._failure = ""
            log.warning("reloading zones works again")

    def _read_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def _refresh(
        self, force: bool, settle: bool = False
    ) -> tuple[int, tuple[KubeObject, ...]] | None:
        with self._lock:
            changed = False
            for _ in range(_SETTLE_ATTEMPTS):
                signatures, scan_problems = _scan(self.dirs)
                if settle and self._tracker is not None:
                    self._tracker.watch(self._directories(signatures))
                read_any, changed_now = self._update(signatures, settle)
                changed |= changed_now
                if not read_any or _scan(self.dirs)[0] == signatures:
                    break
            if scan_problems != list(self._scan_problems):
                for problem in scan_problems:
                    _log_problem(problem)
                self._scan_problems = tuple(scan_problems)
            if not changed and not force:
                return None
            records: list[Record] = []
            for state in self._files.values():
                records.extend(state.parsed.records if state.parsed.ok else state.good or ())
            assembly = assemble(records, self._network, self.scope)
            self._report(assembly.problems)
            self._seq += 1
            return self._seq, assembly.objects

    def _directories(self, signatures: dict[str, _Signature]) -> set[str]:
        """The real directories whose events concern these manifests (and the top ones)."""
        out = {os.path.realpath(d) for d in self.dirs if os.path.isdir(d)}
        for path, signature in signatures.items():
            out.add(os.path.realpath(os.path.dirname(path)))
            out.add(os.path.dirname(signature.target))
        return out

    def _update(self, signatures: dict[str, _Signature], settle: bool) -> tuple[bool, bool]:
        """Bring `_files` up to date with `signatures`; return (read anything, content changed).

        With `settle` (the background polls; not an explicit load or reload), new content waits
        until `_ready` says its writer is done, and a file that vanished until `_gone` does.
        """
        now = time.time_ns()
        tick = time.monotonic_ns()
        read_any = changed = False
        files: dict[str, _File] = {}
        tracker = self._tracker if settle else None
        for path, signature in signatures.items():
            old = self._files.get(path)
            self._removing.pop(path, None)
            if (
                old is not None
                and old.signature == signature
                and not old.racy
                and path not in self._pending
            ):
                files[path] = old
                continue
            read_any = True
            before = 0
            if tracker is not None:
                tracker.drain()
                before = tracker.seq
            try:
                data = self._read_file(path)
            except FileNotFoundError:
                if old is not None:
                    files[path] = old  # gone since the scan: the next scan settles it
                continue
            except OSError as exc:
                # The digest of an unreadable file is its error, so the error is logged once.
                reason = f"cannot read: {exc.strerror or exc}"
                parsed: Parsed | None = Parsed(path, problems=(Problem(path, reason),))
                digest = b"!" + reason.encode()
            else:
                parsed = None
                digest = hashlib.sha256(data).digest()
            racy = now - signature.mtime_ns < _RACY_NS
            if old is not None and old.digest == digest:
                files[path] = dataclasses.replace(old, signature=signature, racy=racy)
                self._pending.pop(path, None)
                continue
            if parsed is None:
                parsed = decode(data, path)
            if settle and not self._ready(path, signature, digest, parsed, old, tick, before):
                if old is not None:
                    files[path] = dataclasses.replace(old, racy=True)  # read again next poll
                continue
            good = parsed.records if parsed.ok else (old.good if old is not None else None)
            files[path] = _File(signature, digest, parsed, good, racy)
            self._log_file(path, parsed, old)
            changed = True
        for path in self._files.keys() - files.keys():
            old = self._files[path]
            if settle and path in signatures:
                files[path] = old  # read failed or deferred above: keep what is served
                continue
            if settle and not self._gone(path, old, tick):
                files[path] = old
                continue
            self._removing.pop(path, None)
            self._pending.pop(path, None)
            log.info("%s: removed; its objects are no longer served", path)
            changed = True
        self._files = files
        return read_any, changed

    def _ready(
        self,
        path: str,
        signature: _Signature,
        digest: bytes,
        parsed: Parsed,
        old: _File | None,
        tick: int,
        before: int,
    ) -> bool:
        """May new content of `path`, just read, be applied now? (see the module docstring)"""
        tracker = self._tracker
        state = WriteState.UNKNOWN
        if tracker is not None:
            tracker.drain()
            if tracker.last_event(signature.target) > before:
                return False  # it changed while it was read: what was read may be half of it
            state = tracker.state(signature.target)
        if state is WriteState.WRITING:
            self._log_wait(
                path,
                "writing",
                "%s: changed, but its writer has not closed it yet; "
                "still serving its previous content",
            )
            return False
        pending = self._pending.get(path)
        if pending is None or pending.digest != digest:
            pending = self._pending[path] = _Pending(digest, tick)
        need = 0 if state is WriteState.DONE else _STABLE_NS
        served = len(old.good or ()) if old is not None else 0
        kept = len(parsed.records) if parsed.ok else served
        if _shrinks(served, kept):
            need = _SHRINK_NS
            self._log_wait(
                path,
                "shrink",
                f"%s: the new content would remove {served - kept} of its {served} objects; "
                f"applying it once the file has held still for {_SHRINK_NS / 1e9:g} s",
            )
        if tick - pending.since_ns < need:
            return False
        del self._pending[path]
        self._waits_logged.discard((path, "writing"))
        self._waits_logged.discard((path, "shrink"))
        return True

    def _gone(self, path: str, old: _File, tick: int) -> bool:
        """May a file that vanished stop being served? Only once it has been gone a while."""
        if not old.good:
            return True  # it served nothing
        since = self._removing.setdefault(path, tick)
        if tick - since >= _SHRINK_NS:
            self._waits_logged.discard((path, "removed"))
            return True
        self._log_wait(
            path,
            "removed",
            f"%s: gone from disk; its {len(old.good)} objects stay served until it has been "
            f"gone for {_SHRINK_NS / 1e9:g} s",
        )
        return False

    def _log_wait(self, path: str, reason: str, message: str) -> None:
        if (path, reason) not in self._waits_logged:
            self._waits_logged.add((path, reason))
            log.info(message, path)

    def _log_file(self, path: str, parsed: Parsed, old: _File | None) -> None:
        for problem in parsed.problems:
            _log_problem(problem)
        if not parsed.ok:
            if old is not None and old.good is not None:
                log.error(
                    "%s: not reloaded because of the errors above; "
                    "still serving its previous content",
                    path,
                )
            else:
                log.error("%s: not loaded because of the errors above", path)
        elif old is not None and not old.parsed.ok:
            log.info("%s: loaded; its errors are fixed", path)
        else:
            log.info("%s: loaded %d objects", path, len(parsed.records))

    def _report(self, problems: tuple[Problem, ...]) -> None:
        for problem in problems:
            if problem not in self._reported:
                _log_problem(problem)
        self._reported = set(problems)
        self._cross = problems

    def _apply(self, seq: int, objects: tuple[KubeObject, ...]) -> None:
        # Results can reach here out of order (a reload() on the loop while a poll's result
        # waits to be applied); an older one must not undo a newer one.
        with self._apply_lock:
            if seq <= self._applied:
                return
            self._applied = seq
            self.sink.replace(self.layer, objects)
            kinds: dict[str, int] = {}
            for obj in objects:
                kinds[obj.key[0]] = kinds.get(obj.key[0], 0) + 1
            self.objects = kinds
            self.applied_at = time.time()
