"""A prober that checks every answer kdns gives against the API's own state, during a fault.

Issue 15's rule: no name disappears unless its definition did. While a fault runs, a thread asks
kdns for each probed name, over and over, and reads the truth from kube-apiserver (the port kdns
itself uses) right before and right after each round of questions. Every answer is classified:

- current: it matches what the API held before or after the round (a change in flight is
  allowed either way);
- stale while down: the API could not be read (by us, on kdns's own port), and the answer is a
  state the name had earlier, or has when we next read the API (kdns may see a change first):
  kdns keeps serving the last known data, as it must;
- stale while up: a state the name had earlier, the API readable, within `bound` seconds of the
  name's last change or of the API's last recovery (propagation, and kdns's reconnect backoff);
  how long after the recovery the last of these came is measured and printed (target 2 s);
- wrong: anything else. An answer no state of the API ever matched (NXDOMAIN for a name that
  existed throughout, another address, SERVFAIL, no answer at all), or a stale one still coming
  `bound` seconds after the API was back. The tests assert there are none.

A name's earlier states are the ones the prober saw, plus those a test declares (`allow`) when a
state may last too short for the prober to catch it.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from testkit.controlplane import ApiError, ControlPlane, Obj
from tests.e2e.dnsutil import ask
from tests.kdns_process import KdnsProcess

#: (rcode, addresses) of an A question.
State = tuple[str, frozenset[str]]
NXDOMAIN: State = ("NXDOMAIN", frozenset())

SERVICE_NAME = "kubernetes.io/service-name"


def api_state(
    cp: ControlPlane, ns: str, names: Iterable[str], timeout: float = 2.0
) -> dict[str, State] | None:
    """What the A question of each service name should get, from the API (None: unreadable).

    A ClusterIP service answers its IPv4 ClusterIPs; a headless one its ready endpoint addresses
    (NXDOMAIN without any); a missing service NXDOMAIN."""
    try:
        services = cp.get(f"/api/v1/namespaces/{ns}/services", timeout=timeout, port=cp.api_port)
        slices = cp.get(
            f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            timeout=timeout,
            port=cp.api_port,
        )
    except (OSError, ApiError, ValueError, http.client.HTTPException):
        return None
    by_name: dict[str, Obj] = {s["metadata"]["name"]: s for s in services.get("items") or []}
    ready: dict[str, set[str]] = {}
    for sl in slices.get("items") or []:
        owner = (sl["metadata"].get("labels") or {}).get(SERVICE_NAME, "")
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is not False:
                ready.setdefault(owner, set()).update(ep.get("addresses") or [])
    out: dict[str, State] = {}
    for name in names:
        svc = by_name.get(name)
        if svc is None:
            out[name] = NXDOMAIN
        elif svc["spec"].get("clusterIP") == "None":
            addrs = frozenset(ready.get(name, ()))
            out[name] = ("NOERROR", addrs) if addrs else NXDOMAIN
        else:
            ips = svc["spec"].get("clusterIPs") or [svc["spec"]["clusterIP"]]
            out[name] = ("NOERROR", frozenset(ip for ip in ips if ":" not in ip))
    return out


@dataclass
class Counts:
    rounds: int = 0
    answers: int = 0
    current: int = 0
    stale_while_down: int = 0
    stale_while_up: int = 0
    wrong: int = 0


@dataclass
class Probe:
    """Ask kdns about `names` (services of `ns`) until stopped, and judge every answer."""

    cp: ControlPlane
    kp: KdnsProcess
    ns: str
    names: list[str]
    zone: str = "cluster.local"
    #: Seconds after a change or a recovery that a stale answer is still only late, not wrong.
    #: The target is 2 s (measured and printed); 10 s leaves room for a loaded 2-core machine and
    #: still fails a kind left in a long backoff (up to 30 s) after the API came back.
    bound: float = 10.0
    counts: Counts = field(default_factory=Counts)
    wrong: list[str] = field(default_factory=list)  # the first few wrong answers, explained
    history: dict[str, set[State]] = field(default_factory=dict)
    #: monotonic time of the last change of each name's state, as the prober saw it
    changed: dict[str, float] = field(default_factory=dict)
    down_since: float | None = None
    recovered_at: float | None = None
    #: after the last recovery: when the last stale answer came, when every answer was current
    last_stale_after_recovery: float | None = None
    outages: list[float] = field(default_factory=list)  # seconds the API could not be read
    _all_current_since: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last: dict[str, State] = field(default_factory=dict)
    #: (name, answer, when) given while the API was unreadable, judged at the next reading
    _pending: list[tuple[str, State, float]] = field(default_factory=list)

    def allow(self, name: str, *states: State) -> None:
        """Declare states `name` may pass through too briefly for the prober to see them."""
        with self._lock:
            self.history.setdefault(name, set()).update(states)

    def start(self) -> Probe:
        first = api_state(self.cp, self.ns, self.names, timeout=15)
        assert first is not None, "the API must be readable when a probe starts"
        now = time.monotonic()
        for name, state in first.items():
            self.history.setdefault(name, set()).add(state)
            self.changed[name] = now
        self._last = first
        self._thread = threading.Thread(target=self._run, args=(first,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)
        with self._lock:
            for name, got, _ in self._pending:  # never confirmed by a reading of the API
                self._wrong(name, got, set(), "a state the API never had, before the API returned")
            self._pending.clear()

    def answer(self, name: str) -> State:
        reply = ask(self.kp.port, f"{name}.{self.ns}.svc.{self.zone}", "A", timeout=2.0)
        return (reply.rcode, frozenset(r.split()[-1] for r in reply.answer))

    def _run(self, before: dict[str, State] | None) -> None:
        next_read = 0.0
        while not self._stop.is_set():
            answers = {name: self.answer(name) for name in self.names}
            after = None
            # While the API is away, try it once a second (a read of a frozen apiserver takes
            # its whole timeout) and keep asking kdns in between.
            if before is not None or time.monotonic() >= next_read:
                after = api_state(self.cp, self.ns, self.names)
                next_read = time.monotonic() + 1.0
            with self._lock:
                self._judge(before, answers, after, time.monotonic())
            before = after
            self._stop.wait(0.05)

    def _judge(
        self,
        before: dict[str, State] | None,
        answers: dict[str, State],
        after: dict[str, State] | None,
        now: float,
    ) -> None:
        c = self.counts
        c.rounds += 1
        if after is None:
            if self.down_since is None:
                self.down_since = now
        else:
            if self.down_since is not None:
                self.outages.append(now - self.down_since)
                self.down_since = None
                self.recovered_at = now
                self.last_stale_after_recovery = None
                self._all_current_since = None
            for name, state in after.items():
                if state != self._last.get(name):
                    self.changed[name] = now
                self.history.setdefault(name, set()).add(state)
            self._last = after
            # Answers given while the API was unreadable, of a state we had not seen then: kdns
            # may have seen a change before we could read it. Judged now, against what we know.
            for name, got, at in self._pending:
                if got in self.history.get(name, ()):
                    c.stale_while_down += 1
                else:
                    why = f"a state the API never had ({now - at:.1f}s ago)"
                    self._wrong(name, got, set(), why)
            self._pending.clear()
        readable = before is not None and after is not None
        all_current = readable
        for name, got in answers.items():
            c.answers += 1
            truths = {s[name] for s in (before, after) if s is not None}
            if got in truths:
                c.current += 1
                continue
            all_current = False
            if not readable and got not in self.history.get(name, ()):
                self._pending.append((name, got, now))
                continue
            if got in self.history.get(name, ()):
                if not readable:
                    c.stale_while_down += 1
                    continue
                since = max(self.changed.get(name, 0.0), self.recovered_at or 0.0)
                if now - since <= self.bound:
                    c.stale_while_up += 1
                    if self.recovered_at is not None:
                        self.last_stale_after_recovery = now
                    continue
                why = f"stale {now - since:.1f}s after the API was back"
            else:
                why = "a state the API never had"
            self._wrong(name, got, truths, why)
        if all_current and self._all_current_since is None:
            self._all_current_since = now
        elif not all_current:
            self._all_current_since = None

    def _wrong(self, name: str, got: State, truths: set[State], why: str) -> None:
        self.counts.wrong += 1
        if len(self.wrong) < 20:
            want = " or ".join(_show(t) for t in truths) or "(API unreadable)"
            self.wrong.append(f"{name}: {_show(got)}, the API says {want}: {why}")

    def wait_current(self, timeout: float, hold: float = 1.0) -> float:
        """Wait until every answer has been current for `hold` seconds with the API readable;
        the seconds from the last recovery, or the last change the prober saw, to the first
        such round (0 when kdns had it before the prober did)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                since = self._all_current_since
                if since is not None and time.monotonic() - since >= hold:
                    ref = max([self.recovered_at or 0.0, *self.changed.values()])
                    return max(0.0, since - ref)
            time.sleep(0.05)
        with self._lock:
            raise AssertionError(
                f"kdns not current {timeout}s on: {self.report()}\nAPI: {self._last}\n"
                + "\n".join(self.wrong)
            )

    def report(self) -> str:
        c = self.counts
        late = (
            f"{self.last_stale_after_recovery - self.recovered_at:.2f}s"
            if self.last_stale_after_recovery is not None and self.recovered_at is not None
            else "none"
        )
        return (
            f"{c.answers} answers in {c.rounds} rounds: {c.current} current, "
            f"{c.stale_while_down} stale while the API was unreadable, {c.stale_while_up} stale "
            f"while readable (last one after the recovery: {late}; target 2 s), {c.wrong} WRONG; "
            f"API outages seen: {[round(o, 1) for o in self.outages]}s"
        )


def _show(state: State) -> str:
    rcode, addrs = state
    return f"{rcode} {sorted(addrs)}" if addrs else rcode
