"""The zones/ file source: real files in temporary directories, a real Store as the sink."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from kdns.sources.allocate import allocate, needs_address
from kdns.sources.files import FileSource, SourceError, check
from kdns.sources.manifests import read
from kdns.state.model import EndpointSet, KubeObject, Service
from kdns.state.store import Store

LAYER = "files"
ZONES = Path(__file__).resolve().parent.parent / "zones"


def service(
    name: str,
    namespace: str = "default",
    *,
    port: int = 80,
    ip: str | None = None,
    selector: str | None = None,
) -> str:
    lines = [
        "apiVersion: v1",
        "kind: Service",
        f"metadata: {{name: {name}, namespace: {namespace}}}",
        "spec:",
        f"  ports: [{{name: http, port: {port}}}]",
    ]
    if ip:
        lines.append(f"  clusterIP: {ip}")
    if selector:
        lines.append(f"  selector: {{app: {selector}}}")
    return "\n".join(lines) + "\n"


def endpoints(name: str, *ips: str, namespace: str = "default") -> str:
    addresses = ", ".join(f"{{ip: {ip}}}" for ip in ips)
    return (
        "apiVersion: v1\nkind: Endpoints\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        f"subsets: [{{addresses: [{addresses}], ports: [{{name: http, port: 8080}}]}}]\n"
    )


def pod(name: str, ip: str, app: str, namespace: str = "default", spec: str = "{}") -> str:
    return (
        "apiVersion: v1\nkind: Pod\n"
        f"metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {app}}}}}\n"
        f"spec: {spec}\n"
        f"status: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: 'True'}}]}}\n"
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def new_store() -> Store:
    store = Store()
    store.add_layer(LAYER, implicit_namespaces=True)
    return store


def source(store: Store, *dirs: Path, cidr: str = "10.96.0.0/12") -> FileSource:
    return FileSource(store, LAYER, list(dirs), cidr, poll_interval=0.02)


def ports(store: Store, namespace: str, name: str) -> list[int] | None:
    view = store.service(namespace, name)
    return None if view is None else [p.port for p in view.service.ports]


def services(store: Store) -> dict[str, list[int]]:
    return {
        f"{v.service.namespace}/{v.service.name}": [p.port for p in v.service.ports]
        for v in store.views()
    }


def run_with_watch(src: FileSource, body: Callable[[], Awaitable[None]]) -> None:
    """Run `body` on an event loop while `src.watch()` polls, then stop the watch."""

    async def main() -> None:
        task = asyncio.create_task(src.watch())
        try:
            await body()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())


async def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> float:
    """Wait until `condition()` holds; return how long it took. Fails after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


class ConfigMapMount:
    """A directory written the way the kubelet's AtomicWriter writes a ConfigMap volume.

    Each version goes to a new hidden `..<timestamp>` directory; a `..data_tmp` symlink to it is
    renamed over `..data` (the atomic step); visible `key -> ..data/key` symlinks are added for
    new keys and removed for dropped ones; the old timestamped directory is deleted.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        root.mkdir(parents=True, exist_ok=True)

    def write(self, payload: dict[str, str]) -> None:
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        visible = {p.name for p in self.root.iterdir() if not p.name.startswith(".")}
        self.version += 1
        stamp = self.root / f"..2026_11_26_05_10_{self.version:02d}.{123456789 + self.version}"
        stamp.mkdir()
        for key, text in payload.items():
            (stamp / key).write_text(text)
        tmp = self.root / "..data_tmp"
        os.symlink(stamp.name, tmp)
        os.rename(tmp, data)
        for key in payload:
            if not (self.root / key).is_symlink():
                os.symlink(f"..data/{key}", self.root / key)
        for key in visible - payload.keys():
            os.unlink(self.root / key)
        if old is not None:
            shutil.rmtree(self.root / old)


# -- loading -----------------------------------------------------------------------------------


def test_load_reads_yaml_yml_json_and_subdirectories_but_not_hidden(tmp_path: Path) -> None:
    zones = tmp_path / "zones"
    write(zones / "a.yaml", service("a"))
    write(zones / "team" / "b.yml", service("b", "team"))
    write(
        zones / "c.json",
        '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c"},'
        ' "spec": {"ports": [{"port": 80}]}}',
    )
    write(zones / ".hidden.yaml", service("hidden"))
    write(zones / ".git" / "x.yaml", service("in-git"))
    write(zones / "notes.txt", service("text"))
    store = new_store()
    assert not store.synced
    source(store, zones).load()
    assert store.synced
    assert sorted(services(store)) == ["default/a", "default/c", "team/b"]


def test_single_file_can_be_named(tmp_path: Path) -> None:
    write(tmp_path / "one.yaml", service("one"))
    store = new_store()
    source(store, tmp_path / "one.yaml").load()
    assert list(services(store)) == ["default/one"]


def test_missing_directory_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        source(new_store(), tmp_path / "nope").load()
    assert str(info.value) == f"{tmp_path / 'nope'}: no such directory"


def test_bad_service_cidr_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a valid network"):
        source(new_store(), tmp_path, cidr="10.96.0.1/12")


def test_symlink_loop_does_not_hang(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", service("a"))
    os.symlink(".", tmp_path / "self")
    (tmp_path / "sub").mkdir()
    os.symlink("..", tmp_path / "sub" / "up")
    store = new_store()
    source(store, tmp_path).load()
    assert list(services(store)) == ["default/a"]


def test_broken_file_at_startup_is_left_out_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "good.yaml", service("good"))
    write(tmp_path / "bad.yaml", service("bad") + "---\nkind: [\n")
    store = new_store()
    with caplog.at_level(logging.INFO, logger="kdns.sources.files"):
        source(store, tmp_path).load()
    assert list(services(store)) == ["default/good"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert re.fullmatch(rf"{tmp_path}/bad.yaml:8:1: document 2: YAML syntax error: .*", errors[0])
    assert errors[1] == f"{tmp_path}/bad.yaml: not loaded because of the errors above"


# -- allocation, pods, namespaces, duplicates ----------------------------------------------------


def test_allocated_address_does_not_depend_on_file_names(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    write(first / "a.yaml", service("x"))
    write(first / "b.yaml", service("y") + "---\n" + service("z", ip="10.96.0.99"))
    write(second / "b.yaml", service("x"))
    write(second / "a.yaml", service("z", ip="10.96.0.99") + "---\n" + service("y"))
    got = []
    for zones in (first, second):
        store = new_store()
        source(store, zones).load()
        got.append({v.service.name: v.service.cluster_ips for v in store.views()})
    assert got[0] == got[1]
    expected = allocate([Service("default", "x"), Service("default", "y")], "10.96.0.0/12")
    assert got[0]["x"] == (expected[("default", "x")],)
    assert got[0]["z"] == ("10.96.0.99",)


def test_allocation_uses_the_given_cidr(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", service("a"))
    store = new_store()
    source(store, tmp_path, cidr="fd00:10:96::/112").load()
    view = store.service("default", "a")
    assert view is not None
    assert view.service.cluster_ips[0].startswith("fd00:10:96::")


@pytest.mark.parametrize(
    ("families", "cidr", "warned"),
    [
        ("[IPv6]", "10.96.0.0/12", True),
        ("[IPv6, IPv4]", "10.96.0.0/12", False),  # dual-stack: one of its families
        ("[IPv4]", "fd00:10:96::/112", True),
        ("[IPv6]", "fd00:10:96::/112", False),
        (None, "fd00:10:96::/112", False),  # no family asked: the range's
    ],
)
def test_a_family_the_range_cannot_give_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, families: str | None, cidr: str, warned: bool
) -> None:
    text = service("a")
    if families is not None:
        text = text.replace("spec:\n", f"spec:\n  ipFamilies: {families}\n", 1)
        assert "ipFamilies" in text
    write(tmp_path / "a.yaml", text)
    store = new_store()
    with caplog.at_level(logging.INFO, logger="kdns.sources.files"):
        source(store, tmp_path, cidr=cidr).load()
    view = store.service("default", "a")
    assert view is not None and view.service.cluster_ips  # served all the same
    warnings = [r.getMessage() for r in caplog.records if "spec.ipFamilies" in r.getMessage()]
    assert bool(warnings) is warned, warnings
    if warned:
        assert "a.yaml:1: document 1: warning: Service default/a asks for IPv" in warnings[0]


def test_pods_give_endpoints_until_endpoints_are_written(tmp_path: Path) -> None:
    write(tmp_path / "web.yaml", service("web", selector="web"))
    write(
        tmp_path / "pods.yaml",
        pod("web-0", "10.2.0.1", "web") + "---\n" + pod("x", "10.2.0.9", "x"),
    )
    store = new_store()
    src = source(store, tmp_path)
    src.load()
    view = store.service("default", "web")
    assert view is not None and view.addresses() == ["10.2.0.1"]
    assert [s.kind for s in store.endpoint_sets("default", "web")] == ["Pods"]

    write(tmp_path / "eps.yaml", endpoints("web", "10.3.0.1"))
    assert src.reload()
    view = store.service("default", "web")
    assert view is not None and view.addresses() == ["10.3.0.1"]
    assert [s.kind for s in store.endpoint_sets("default", "web")] == ["Endpoints"]


def test_namespace_exists_when_only_pods_live_in_it(tmp_path: Path) -> None:
    write(tmp_path / "p.yaml", pod("p", "10.2.0.1", "x", namespace="jobs"))
    store = Store()
    store.add_layer(LAYER)  # even without implicit namespaces
    source(store, tmp_path).load()
    assert store.has_namespace("jobs")
    assert not store.has_namespace("other")


def test_duplicate_object_first_file_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "a.yaml", service("web", port=1))
    write(tmp_path / "b.yaml", "# the same service again\n" + service("web", port=2))
    store = new_store()
    with caplog.at_level(logging.ERROR, logger="kdns.sources.files"):
        source(store, tmp_path).load()
    assert ports(store, "default", "web") == [1]
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}/b.yaml:2: document 1: Service default/web is already defined at "
        f"{tmp_path}/a.yaml:1 (document 1); this definition is ignored"
    ]


# -- reloading ---------------------------------------------------------------------------------


def test_reload_sees_edit_add_and_remove(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", service("a", port=1))
    store = new_store()
    src = source(store, tmp_path)
    src.load()
    assert not src.reload()  # nothing changed

    write(tmp_path / "a.yaml", service("a", port=2))
    assert src.reload()
    assert services(store) == {"default/a": [2]}

    write(tmp_path / "sub" / "b.yaml", service("b"))
    assert src.reload()
    assert services(store) == {"default/a": [2], "default/b": [80]}

    (tmp_path / "a.yaml").unlink()
    assert src.reload()
    assert services(store) == {"default/b": [80]}
    assert not src.reload()


def test_same_size_rewrite_within_one_mtime_tick_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    write(path, service("a", port=1111))
    store = new_store()
    src = source(store, tmp_path)
    src.load()
    before = path.stat()
    write(path, service("a", port=2222))
    # A coarse mtime clock would leave the signature as it was: simulate exactly that.
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    assert src.reload()
    assert ports(store, "default", "a") == [2222]


def test_broken_file_keeps_last_good_content_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.yaml"
    write(path, service("a", port=1))
    write(tmp_path / "b.yaml", service("b"))
    store = new_store()
    src = source(store, tmp_path)
    src.load()
    generation = store.generation

    with caplog.at_level(logging.ERROR, logger="kdns.sources.files"):
        write(path, service("a", port=1).replace("port: 1", "port: http"))
        src.reload()
        for _ in range(3):
            src.reload()
    assert ports(store, "default", "a") == [1]
    assert store.generation == generation
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:5: document 1: spec.ports[0].port must be a port number (1-65535), not 'http'",
        f"{path}: not reloaded because of the errors above; still serving its previous content",
    ]
    assert [str(p) for p in src.problems] == [caplog.records[0].getMessage()]

    write(path, service("a", port=3))
    assert src.reload()
    assert ports(store, "default", "a") == [3]
    assert src.problems == []


def test_one_store_change_per_reload_however_many_files_changed(tmp_path: Path) -> None:
    for name in "abcd":
        write(tmp_path / f"{name}.yaml", service(name, port=1))
    store = new_store()
    src = source(store, tmp_path)
    src.load()
    changes: list[int] = []
    store.subscribe(lambda generation, _at: changes.append(generation))
    for name in "abcd":
        write(tmp_path / f"{name}.yaml", service(name, port=2))
    (tmp_path / "d.yaml").unlink()
    write(tmp_path / "e.yaml", service("e", port=2))
    assert src.reload()
    assert len(changes) == 1
    assert services(store) == {f"default/{n}": [2] for n in "abce"}


def test_files_changing_while_read_are_read_again_before_anything_is_served(
    tmp_path: Path,
) -> None:
    mount = ConfigMapMount(tmp_path / "cm")
    mount.write({"a.yaml": service("a", port=1), "b.yaml": service("b", port=1)})
    store = new_store()
    states: list[dict[str, list[int]]] = []
    store.subscribe(lambda *_: states.append(services(store)))

    class SwapDuringRead(FileSource):
        """Swaps the ConfigMap after a.yaml was read and before b.yaml is: a torn read."""

        armed = False

        def _read_file(self, path: str) -> bytes:
            if self.armed and path.endswith("b.yaml"):
                self.armed = False
                mount.write({"a.yaml": service("a", port=3), "b.yaml": service("b", port=3)})
            return super()._read_file(path)

    src = SwapDuringRead(store, LAYER, [tmp_path / "cm"])
    src.load()
    mount.write({"a.yaml": service("a", port=2), "b.yaml": service("b", port=2)})
    src.armed = True
    assert src.reload()
    assert not src.armed  # the swap did happen mid-read
    assert services(store) == {"default/a": [3], "default/b": [3]}
    for state in states:  # never a mix of two versions
        assert state["default/a"] == state["default/b"], states


# -- watching ----------------------------------------------------------------------------------


class CountingSource(FileSource):
    """A FileSource that counts its background polls, so a test can wait for the next ones."""

    polls = 0

    def _poll(self) -> tuple[int, tuple[KubeObject, ...]] | None:
        try:
            return super()._poll()
        finally:
            self.polls += 1


def watched(store: Store, directory: Path, mode: str) -> CountingSource:
    return CountingSource(store, LAYER, [directory], poll_interval=0.02, watch_mode=mode)


async def more_polls(src: CountingSource, count: int = 3) -> None:
    """Wait until `src` has polled `count` more times (each poll saw what was on disk)."""
    target = src.polls + count
    await eventually(lambda: src.polls >= target, timeout=30)


MODES = ["inotify", "poll"]


@pytest.mark.parametrize("mode", MODES)
def test_watch_applies_edits_additions_and_removals(tmp_path: Path, mode: str) -> None:
    write(tmp_path / "a.yaml", service("a", port=1))
    store = new_store()
    src = watched(store, tmp_path, mode)
    src.load()

    async def body() -> None:
        write(tmp_path / "a.yaml", service("a", port=2))
        await eventually(lambda: ports(store, "default", "a") == [2], timeout=30)
        write(tmp_path / "b.yaml", service("b"))
        await eventually(lambda: ports(store, "default", "b") == [80], timeout=30)
        # A file that disappears drops all its names: only once it has been gone a while
        # (editors that save by removing and writing again must not blank the names).
        gone = time.monotonic()
        (tmp_path / "a.yaml").unlink()
        await eventually(lambda: store.service("default", "a") is None, timeout=30)
        assert time.monotonic() - gone >= 1.0

    run_with_watch(src, body)


@pytest.mark.parametrize("mode", MODES)
def test_a_file_truncated_and_written_late_never_drops_its_names(tmp_path: Path, mode: str) -> None:
    """`kubectl get svc -o yaml > f`: the shell truncates f at once, kubectl writes it after its
    API round trip. Meanwhile f is empty, which is valid YAML that defines nothing."""
    path = tmp_path / "a.yaml"
    write(path, service("a", ip="10.96.0.80") + "---\n" + service("b", ip="10.96.0.81"))
    store = new_store()
    seen: list[dict[str, list[int]]] = []
    store.subscribe(lambda *_: seen.append(services(store)))
    src = watched(store, tmp_path, mode)
    src.load()

    async def body() -> None:
        await more_polls(src, 1)  # watching
        with path.open("w") as f:  # truncated; the writer is still at work
            await more_polls(src)
            f.write(service("a", ip="10.96.0.80", port=81)[:20])  # part of it
            f.flush()
            await more_polls(src)
            assert services(store) == {"default/a": [80], "default/b": [80]}
            f.write(service("a", ip="10.96.0.80", port=81)[20:])
            f.write("---\n" + service("b", ip="10.96.0.81", port=81))
        await eventually(lambda: ports(store, "default", "b") == [81], timeout=30)

    run_with_watch(src, body)
    for state in seen:  # every state the store went through had both names
        assert set(state) == {"default/a", "default/b"}, seen


def test_a_writer_still_at_work_keeps_the_old_content_however_long_it_takes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With inotify, no timer decides: content is applied when its writer closes the file."""
    path = tmp_path / "a.yaml"
    write(path, service("a", port=1))
    store = new_store()
    src = watched(store, tmp_path, "inotify")
    src.load()

    async def body() -> None:
        await more_polls(src, 1)  # watching
        with path.open("w") as f:
            f.write(service("a", port=2))  # complete, and valid, but not closed yet
            f.flush()
            start = src.polls
            # Longer than the polling rule's two reads, and than the shrink delay.
            await eventually(lambda: src.polls >= start + 10, timeout=30)
            await asyncio.sleep(1.2)
            assert ports(store, "default", "a") == [1]
        await eventually(lambda: ports(store, "default", "a") == [2], timeout=30)

    with caplog.at_level(logging.INFO, logger="kdns.sources.files"):
        run_with_watch(src, body)
    waits = [r for r in caplog.records if "writer has not closed it yet" in r.getMessage()]
    assert len(waits) == 1  # logged once, not at every poll


def test_without_inotify_new_content_waits_for_two_equal_reads(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", service("a", port=1))
    store = new_store()
    src = watched(store, tmp_path, "poll")
    src.load()

    async def body() -> None:
        written = time.monotonic()
        write(tmp_path / "a.yaml", service("a", port=2))
        await eventually(lambda: ports(store, "default", "a") == [2], timeout=30)
        # The first read of the new content came after the write, the second 0.3 s after it.
        assert time.monotonic() - written >= 0.3

    run_with_watch(src, body)


@pytest.mark.parametrize("mode", MODES)
def test_a_change_that_drops_most_of_a_file_waits_until_it_holds_still(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.yaml"
    write(path, "---\n".join(service(n) for n in "abcd"))
    store = new_store()
    src = watched(store, tmp_path, mode)
    src.load()

    async def body() -> None:
        written = time.monotonic()
        write(path, service("a"))  # closed by its writer: complete, but 3 of 4 names go
        await eventually(lambda: sorted(services(store)) == ["default/a"], timeout=30)
        assert time.monotonic() - written >= 1.0
        write(path, "---\n".join(service(n) for n in "abcdef"))  # growing: no such wait
        await eventually(lambda: len(services(store)) == 6, timeout=30)

    with caplog.at_level(logging.INFO, logger="kdns.sources.files"):
        run_with_watch(src, body)
    waits = [r.getMessage() for r in caplog.records if "would remove" in r.getMessage()]
    assert waits == [
        f"{path}: the new content would remove 3 of its 4 objects; "
        "applying it once the file has held still for 1 s"
    ]


def test_content_that_changed_while_it_was_read_is_read_again(tmp_path: Path) -> None:
    """A writer can truncate, write and close between the poll's look at the events and its
    read: the events tell, and what was read is not used."""
    path = tmp_path / "a.yaml"
    write(path, service("a", port=1))
    store = new_store()
    seen: list[dict[str, list[int]]] = []
    store.subscribe(lambda *_: seen.append(services(store)))

    class WriterDuringRead(CountingSource):
        armed = False

        def _read_file(self, name: str) -> bytes:
            data = super()._read_file(name)
            if self.armed:
                self.armed = False
                # After the read, so what was read is old; same size and mtime (as on a
                # filesystem with coarse timestamps), so only the events can tell.
                st = os.stat(path)
                path.write_text(service("a", port=3))
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            return data

    src = WriterDuringRead(store, LAYER, [tmp_path], poll_interval=0.02, watch_mode="inotify")
    src.load()

    async def body() -> None:
        await more_polls(src)
        src.armed = True
        path.write_text(service("a", port=2))
        await eventually(lambda: not src.armed, timeout=30)
        await eventually(lambda: ports(store, "default", "a") == [3], timeout=30)

    run_with_watch(src, body)
    # Port 2 was read (the write during the read came after it), but was never served.
    assert [2] not in [state["default/a"] for state in seen], seen


def test_unknown_watch_mode_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="--zones-watch"):
        FileSource(new_store(), LAYER, [tmp_path], watch_mode="sometimes")


def test_watch_follows_a_configmap_swap(tmp_path: Path) -> None:
    mount = ConfigMapMount(tmp_path / "zones")
    mount.write({"a.yaml": service("a", port=1), "b.yaml": service("b", port=1)})
    assert sorted(p.name for p in (tmp_path / "zones").iterdir())[:2] == [
        "..2026_11_26_05_10_01.123456790",
        "..data",
    ]
    store = new_store()
    src = source(store, tmp_path / "zones")
    src.load()
    assert services(store) == {"default/a": [1], "default/b": [1]}

    async def body() -> None:
        # Same size content in place, a key dropped, a key added: all in one swap.
        mount.write({"a.yaml": service("a", port=2), "c.yaml": service("c", port=2)})
        await eventually(lambda: services(store) == {"default/a": [2], "default/c": [2]})
        mount.write({"a.yaml": service("a", port=3), "c.yaml": service("c", port=3)})
        await eventually(lambda: services(store) == {"default/a": [3], "default/c": [3]})

    run_with_watch(src, body)
    assert src.problems == []  # nothing read twice through the hidden directories


def test_watch_keeps_serving_when_the_directory_vanishes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    zones = tmp_path / "zones"
    write(zones / "a.yaml", service("a"))
    store = new_store()
    src = watched(store, zones, "auto")
    src.load()

    async def body() -> None:
        shutil.rmtree(zones)
        await eventually(
            lambda: any("no such directory" in r.getMessage() for r in caplog.records), 30
        )
        await more_polls(src, 10)
        assert store.service("default", "a") is not None
        write(zones / "b.yaml", service("b"))
        await eventually(lambda: store.service("default", "b") is not None, 30)
        await eventually(lambda: store.service("default", "a") is None, 30)

    with caplog.at_level(logging.WARNING, logger="kdns.sources.files"):
        run_with_watch(src, body)
    gone = [r for r in caplog.records if "no such directory" in r.getMessage()]
    assert len(gone) == 1


# -- check -------------------------------------------------------------------------------------


def test_check_reports_problems_between_files(tmp_path: Path) -> None:
    write(
        tmp_path / "a.yaml",
        service("web", selector="web") + "---\n" + service("other", ip="10.96.0.10"),
    )
    write(tmp_path / "b.yaml", service("web") + "---\n" + service("clash", ip="10.96.0.10"))
    write(tmp_path / "c.yaml", endpoints("orphan", "10.0.0.1"))
    write(
        tmp_path / "d.yaml",
        pod("web-0", "10.2.0.1", "web")
        + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
    )
    write(
        tmp_path / "e.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {type: X}\n",
    )
    lines = [str(p) for p in check([tmp_path, tmp_path / "missing"])]
    t = tmp_path
    assert lines == [
        f"{t}/d.yaml:8: document 2: warning: skipping kind Deployment: kdns reads only "
        "Service, Endpoints, Pod, Namespace, EndpointSlice, Ingress, Gateway, HTTPRoute, "
        "GRPCRoute, TLSRoute, ServiceImport and ServiceExport",
        f"{t}/e.yaml:4: document 1: spec.type must be one of ClusterIP, NodePort, LoadBalancer, "
        "ExternalName, not 'X'",
        f"{t / 'missing'}: no such directory",
        f"{t}/b.yaml:1: document 1: Service default/web is already defined at "
        f"{t}/a.yaml:1 (document 1); this definition is ignored",
        f"{t}/b.yaml:7: document 2: warning: clusterIP 10.96.0.10 of Service default/clash is "
        f"also the clusterIP of Service default/other ({t}/a.yaml:8 (document 2))",
        f"{t}/c.yaml:1: document 1: warning: Endpoints default/orphan: no Service "
        "default/orphan is defined in these files, so DNS does not use these endpoints",
    ]


def test_check_warns_about_pods_without_the_named_port(tmp_path: Path) -> None:
    write(
        tmp_path / "web.yaml",
        service("web", selector="web").replace("port: 80}", "port: 80, targetPort: http}")
        + "---\n"
        + pod("web-0", "10.2.0.1", "web"),
    )
    (problem,) = check([tmp_path])
    assert problem.severity == "warning"
    assert problem.line == 8
    assert "Pod default/web-0 has no TCP container port named 'http'" in problem.message


# -- the shipped examples ------------------------------------------------------------------------


def test_shipped_zones_have_no_problems() -> None:
    assert [str(p) for p in check([ZONES])] == []


def test_shipped_zones_quote_their_allocated_addresses() -> None:
    # The examples tell the reader which ClusterIP each allocated service gets; keep that true.
    store = new_store()
    source(store, ZONES).load()
    allocated = 0
    for path in sorted(ZONES.glob("*.yaml")):
        for record in read(path).records:
            if isinstance(record.obj, Service) and needs_address(record.obj):
                view = store.service(record.obj.namespace, record.obj.name)
                assert view is not None
                (address,) = view.service.cluster_ips
                assert f"{address}  (the ClusterIP, allocated)" in path.read_text(), path
                allocated += 1
    assert allocated >= 3


def test_shipped_zones_serve_what_the_comments_say() -> None:
    store = new_store()
    source(store, ZONES).load()
    my_service = store.service("default", "my-service")
    etcd = store.service("kube-system", "etcd-k8s")
    db = store.service("data", "db")
    web = store.service("shop", "web")
    api = store.service("shop", "api")
    search = store.service("default", "search")
    assert my_service and etcd and db and web and api and search
    assert my_service.addresses() == ["10.0.0.1", "10.0.0.2"]
    assert [(p.name, p.port) for p in my_service.service.ports] == [("http", 8080)]
    assert etcd.addresses() == ["178.104.163.38", "178.104.163.187", "178.104.163.243"]
    assert [ep.name for ep in db.ready] == ["db-0", "db-1"] and db.not_ready == 1
    assert [ep.name for ep in web.ready] == ["web-0", "10-2-0-11"] and web.not_ready == 1
    assert isinstance(store.endpoint_sets("shop", "web")[0], EndpointSet)
    assert api.service.cluster_ips == ("10.96.100.10", "fd00:10:96::100")
    assert search.service.external_name == "www.example.com"
    assert {"default", "kube-system", "data", "shop"} <= store.namespaces()
