"""The cluster source (every kind, namespaces, selectors) and `load_api_client`, through the real
kubernetes client against the API server double, into a real store on its own loop."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import urllib3

from kdns.sources.cluster import ClusterConfigError, ClusterSource, load_api_client
from testkit.apiserver import (
    FAST,
    FakeApiServer,
    Fault,
    LoopStore,
    endpoint_slice,
    endpoints,
    namespace,
    service,
    slice_endpoint,
    wait_for,
    write_kubeconfig,
)

Start = Callable[..., ClusterSource]


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def kubeconfig(api: FakeApiServer, tmp_path: Path) -> Path:
    return write_kubeconfig(
        tmp_path / "kubeconfig", api.url, other_contexts={"elsewhere": "http://127.0.0.1:9"}
    )


@pytest.fixture
def store() -> Iterator[LoopStore]:
    loop_store = LoopStore()
    yield loop_store
    loop_store.close()


@pytest.fixture
def start(kubeconfig: Path, store: LoopStore) -> Iterator[Start]:
    sources: list[ClusterSource] = []

    def run(**kw: Any) -> ClusterSource:
        client = load_api_client(str(kubeconfig))
        kw.setdefault("settings", FAST)
        source = ClusterSource(store.sink, store.layer, client, **kw)
        source.start()
        sources.append(source)
        return source

    yield run
    for source in sources:
        source.stop()


def synced(source: ClusterSource) -> ClusterSource:
    assert source.wait_synced(30), "cluster source did not sync"
    return source


def test_syncs_every_kind_and_only_then_marks_the_layer_synced(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply_all(
        [
            namespace("default"),
            namespace("data"),
            service("web", cluster_ip="10.96.0.10"),
            service("db", "data", cluster_ip="None"),
            endpoint_slice("db-a1", "db", "data", endpoints=["10.1.0.1"]),
            service("etcd", "data", cluster_ip="None"),
            endpoints("etcd", "data", ready=["10.2.0.1"]),
        ]
    )
    stuck = api.inject(Fault(503, times=None, resource="endpointslices"))
    source = start()
    wait_for(
        lambda: sum(r.synced for r in source.reflectors) == 3, what="all kinds but slices to sync"
    )
    assert not source.synced
    assert not store.read(lambda s: s.synced)
    assert store.service_names() == {"web", "db", "etcd"}

    api.remove(stuck)
    synced(source)
    wait_for(lambda: store.read(lambda s: s.synced), what="the layer to be synced")
    assert store.endpoint_addresses("db", "data") == ["10.1.0.1"]
    assert store.endpoint_addresses("etcd", "data") == ["10.2.0.1"]
    assert store.read(lambda s: s.has_namespace("data") and not s.has_namespace("ghost"))
    stats = {s.kind: s for s in source.stats()}
    assert set(stats) == {"Service", "EndpointSlice", "Endpoints", "Namespace"}
    assert stats["EndpointSlice"].errors >= 1 and stats["Service"].errors == 0


def test_namespaces_come_and_go(api: FakeApiServer, store: LoopStore, start: Start) -> None:
    api.apply(namespace("default"))
    synced(start())
    api.apply(namespace("team-a"))
    wait_for(lambda: store.read(lambda s: s.has_namespace("team-a")), what="new namespace")
    api.delete("Namespace", "team-a", namespace="")
    wait_for(lambda: not store.read(lambda s: s.has_namespace("team-a")), what="deletion")


def test_slices_win_over_endpoints_and_manual_endpoints_still_answer(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply_all(
        [
            service("web", cluster_ip="None", selector={"app": "web"}),
            endpoints("web", ready=["10.1.0.1", "10.1.0.2"]),  # the legacy controller's copy
            endpoint_slice("web-x1", "web", endpoints=["10.1.0.1", "10.1.0.2"]),
            service("etcd", cluster_ip="None", ports=(("client", 2379, "TCP"),)),
            endpoints("etcd", ready=["192.168.0.10"], not_ready=["192.168.0.11"]),
        ]
    )
    synced(start())
    assert store.endpoint_addresses("web") == ["10.1.0.1", "10.1.0.2"], "counted once"
    assert store.endpoint_addresses("etcd") == ["192.168.0.10"]

    # Slices are what counts: a slice losing an endpoint wins over Endpoints still listing it.
    api.apply(endpoint_slice("web-x1", "web", endpoints=["10.1.0.1"]))
    wait_for(lambda: store.endpoint_addresses("web") == ["10.1.0.1"], what="slice update")
    # With its last slice gone, the service falls back on its Endpoints.
    api.delete("EndpointSlice", "web-x1")
    wait_for(lambda: store.endpoint_addresses("web") == ["10.1.0.1", "10.1.0.2"], what="fallback")
    api.apply(endpoints("etcd", ready=["192.168.0.10", "192.168.0.11"]))
    wait_for(
        lambda: store.endpoint_addresses("etcd") == ["192.168.0.10", "192.168.0.11"],
        what="manual Endpoints update",
    )


def test_slice_with_null_endpoints_gives_a_headless_service_no_address(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply_all(
        [
            service("quiet", cluster_ip="None"),
            endpoint_slice("quiet-p0", "quiet", endpoints=None),
        ]
    )
    synced(start())
    assert store.endpoint_addresses("quiet") == []
    api.apply(
        endpoint_slice(
            "quiet-p0",
            "quiet",
            endpoints=[slice_endpoint("10.3.0.1"), slice_endpoint("10.3.0.2", ready=False)],
        )
    )
    wait_for(lambda: store.endpoint_addresses("quiet") == ["10.3.0.1"], what="ready endpoint")


def test_namespace_filter_watches_only_those_namespaces(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply_all(
        [
            namespace("team-a"),
            namespace("team-b"),
            service("web", "team-a", cluster_ip="10.96.0.1"),
            service("web", "team-b", cluster_ip="10.96.0.2"),
            endpoint_slice("api-1", "api", "team-b", endpoints=["10.1.0.9"]),
            service("api", "team-a", cluster_ip="None"),
            endpoint_slice("api-1", "api", "team-a", endpoints=["10.1.0.1"]),
        ]
    )
    source = synced(start(namespaces=["team-a"]))
    assert store.read(lambda s: {(v.service.namespace, v.service.name) for v in s.views()}) == {
        ("team-a", "web"),
        ("team-a", "api"),
    }
    assert store.endpoint_addresses("api", "team-a") == ["10.1.0.1"]
    api.apply(service("new", "team-b", cluster_ip="10.96.0.3"))
    api.apply(service("new", "team-a", cluster_ip="10.96.0.4"))
    wait_for(lambda: store.addresses("new", "team-a") == ["10.96.0.4"], what="team-a change")
    assert store.addresses("new", "team-b") is None

    paths = {r.path for r in api.requests()}
    assert paths == {
        "/api/v1/namespaces/team-a/services",
        "/api/v1/namespaces/team-a/endpoints",
        "/apis/discovery.k8s.io/v1/namespaces/team-a/endpointslices",
        "/api/v1/namespaces/team-a",  # the namespace itself, with a GET: no cluster-wide watch
    }
    assert store.read(lambda s: s.has_namespace("team-a") and not s.has_namespace("team-b"))
    assert len(source.stats()) == 4


def test_listed_namespaces_forbidden_missing_and_created_later(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply(namespace("team-a"))
    api.inject(Fault(403, times=None, path="/api/v1/namespaces/team-a"))
    settings = replace(FAST, namespace_recheck=0.1)
    synced(start(namespaces=["team-a", "team-c"], settings=settings))
    assert store.read(lambda s: s.has_namespace("team-a")), "forbidden: taken as existing"
    assert not store.read(lambda s: s.has_namespace("team-c")), "404: does not exist"
    api.apply(namespace("team-c"))
    wait_for(lambda: store.read(lambda s: s.has_namespace("team-c")), what="created later")


def test_label_selector_applies_to_services_only(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply_all(
        [
            service("a", cluster_ip="None", labels={"dns": "yes"}),
            service("b", cluster_ip="None", labels={"dns": "no"}),
            endpoint_slice("a-1", "a", endpoints=["10.1.0.1"]),
            endpoint_slice("b-1", "b", endpoints=["10.1.0.2"]),
        ]
    )
    synced(start(label_selector="dns=yes"))
    assert store.service_names() == {"a"}
    assert store.endpoint_addresses("a") == ["10.1.0.1"]

    api.apply(service("b", cluster_ip="None", labels={"dns": "yes"}))  # enters the selection
    wait_for(lambda: store.endpoint_addresses("b") == ["10.1.0.2"], what="b selected")
    api.apply(service("a", cluster_ip="None", labels={"dns": "no"}))  # leaves it
    wait_for(lambda: store.service_names() == {"b"}, what="a no longer selected")

    with_selector = {r.resource for r in api.requests() if "labelSelector" in r.query}
    assert with_selector == {"services"}
    assert {r.query["labelSelector"] for r in api.requests("services")} == {"dns=yes"}


def test_stop_ends_every_thread(api: FakeApiServer, store: LoopStore, start: Start) -> None:
    api.apply(service("web"))
    source = synced(start(namespaces=["default", "other"]))
    wait_for(lambda: api.open_watches() == 6, what="six watches")
    began = time.monotonic()
    assert source.stop(timeout=10), "every thread ended"
    print(f"stop() returned after {time.monotonic() - began:.3f} s")
    # Nothing is left to receive a change: every watch stream is closed on the server's side.
    wait_for(lambda: api.open_watches() == 0, what="no open watch")
    mark = store.read(lambda _: len(store.changes))
    api.apply(service("late"))
    assert store.read(lambda _: len(store.changes)) == mark


# -- load_api_client -------------------------------------------------------------------------------


def test_kubeconfig_current_and_named_context(kubeconfig: Path, api: FakeApiServer) -> None:
    assert load_api_client(str(kubeconfig)).configuration.host == api.url
    other = load_api_client(str(kubeconfig), context="elsewhere")
    assert other.configuration.host == "http://127.0.0.1:9"
    assert other.configuration.retries is False


@pytest.mark.parametrize(
    ("content", "context", "message"),
    [
        (None, None, "does not exist"),
        ("clusters: [", None, "unusable"),
        ("apiVersion: v1\nkind: Config\n", None, "unusable"),
        # the contexts it has, and how to pick one
        ("", "nope", "has no context 'nope' (it has: "),
    ],
    ids=["missing", "not-yaml", "no-context", "unknown-context"],
)
def test_bad_kubeconfig_is_one_clear_line(
    tmp_path: Path, kubeconfig: Path, content: str | None, context: str | None, message: str
) -> None:
    path = tmp_path / "bad-kubeconfig"
    if content == "":
        path = kubeconfig
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ClusterConfigError) as info:
        load_api_client(str(path), context=context)
    text = str(info.value)
    assert message in text and str(path) in text
    assert "\n" not in text
    if context == "nope":
        assert "elsewhere" in text and text.endswith("pick one with --context")


def test_in_cluster_is_chosen_in_a_pod_and_explains_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterConfigError, match="in-cluster configuration unusable"):
        load_api_client(None, in_cluster=True)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(ClusterConfigError, match=r"in-cluster .*--kubeconfig") as info:
        load_api_client(None)
    assert "\n" not in str(info.value)
    with pytest.raises(ClusterConfigError, match="either"):
        load_api_client("some/kubeconfig", in_cluster=True)


def test_insecure_skip_tls_verify_is_said_once_not_warned_per_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:9', "
        "insecure-skip-tls-verify: true}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    with caplog.at_level(logging.WARNING, logger="kdns.sources.cluster"):
        client = load_api_client(str(path))
    assert client.configuration.verify_ssl is False
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"kubeconfig {path}: insecure-skip-tls-verify: the API server's certificate is not checked"
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("unverified", urllib3.exceptions.InsecureRequestWarning, stacklevel=1)
    assert caught == []  # urllib3's two lines per request are gone
