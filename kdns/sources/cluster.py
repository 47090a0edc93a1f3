"""The live cluster as a source: one reflector per kind, and how to reach the API.

`ClusterSource` watches v1 Services, discovery.k8s.io/v1 EndpointSlices, v1 Endpoints and v1
Namespaces into one store layer and marks the layer synced once the first list of every kind is
in. Endpoints are watched as well as slices because hand-written Endpoints are not always
mirrored into slices (see `../shared/dns-behaviour.md`); the store prefers slices when a service
has both, so no address counts twice.

A label selector applies to Services only: endpoints are joined to services by name and label
`kubernetes.io/service-name`, not by the service's labels, and a slice of a service that is not
selected simply joins nothing.

With `pods=True` (`--pods verified`) Pods are watched too, trimmed to their IPs the moment they
arrive. That is the one mode that needs list/watch on pods (deploy/components/pods-verified).

Namespaced mode (`namespaces=[...]`) runs the three namespaced kinds once per namespace, on the
namespaced list/watch paths, so kdns needs only a Role in each namespace. It does not watch
Namespaces: listing them is cluster-scoped, exactly the permission namespaced mode avoids.
Instead each listed namespace is looked up with a GET every `namespace_recheck` seconds: 200 means
it exists, 404 that it does not (`<ns>.svc` answers NXDOMAIN), and 403 that we may not read the
namespace object, in which case it is treated as existing, because the operator named it and a
namespace-scoped Role often cannot grant `get` on the Namespace. Any other failure is retried with
backoff, as for the reflectors.

`load_api_client` builds the official client's `ApiClient` from a kubeconfig (and context) or the
in-cluster service account, turning every configuration problem into one `ClusterConfigError`
line. It turns off urllib3's own retries: the reflectors retry with backoff and jitter, and hidden
immediate retries underneath would only multiply the requests a struggling apiserver receives.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

import urllib3
import yaml
from kubernetes.client import ApiClient, ApiException, Configuration
from kubernetes.config import (
    ConfigException,
    list_kube_config_contexts,
    load_incluster_config,
    load_kube_config,
)

from kdns.config import ClusterConfigError
from kdns.sources import apicall
from kdns.sources.reflector import Recovery, Reflector, ReflectorStats, WatchSettings, backoff_delay
from kdns.state.model import MCS_SERVICE_NAME_LABEL, Namespace, ObjectKey
from kdns.state.store import Sink

log = logging.getLogger(__name__)

#: The label the kubelet (or the cloud provider) puts on a node: the zone it runs in.
ZONE_LABEL = "topology.kubernetes.io/zone"


def node_zone(api_client: ApiClient, node: str, timeout: float = 10.0) -> str:
    """The `topology.kubernetes.io/zone` label of `node`, read once ("" when it has none), for
    `--prefer-zone-from-node`. Raises `ClusterConfigError` (one line) when it cannot be read:
    kdns has no data before it reaches the API anyway, and a preference silently dropped would
    send every client across zones."""
    try:
        response = apicall.get(api_client, f"/api/v1/nodes/{node}", request_timeout=timeout)
        try:
            obj = json.loads(response.data)
        finally:
            response.release_conn()
    except ApiException as exc:
        if exc.status == 404:
            raise ClusterConfigError(f"--prefer-zone-from-node: no node {node!r}") from None
        if exc.status == 403:
            raise ClusterConfigError(
                f"--prefer-zone-from-node: may not get node {node!r} (RBAC: get on nodes, "
                "deploy/components/prefer-zone-from-node)"
            ) from None
        raise ClusterConfigError(
            f"--prefer-zone-from-node: reading node {node!r} failed: {exc.status} {exc.reason}"
        ) from None
    except Exception as exc:  # the client raises urllib3's and the socket's errors as they are
        raise ClusterConfigError(
            f"--prefer-zone-from-node: reading node {node!r} failed: {_one_line(exc)}"
        ) from None
    labels = (obj.get("metadata") or {}).get("labels") or {} if isinstance(obj, dict) else {}
    return str(labels.get(ZONE_LABEL, "")) if isinstance(labels, dict) else ""


#: Every kind a cluster source watches, in the order they start.
KINDS = ("Service", "EndpointSlice", "Endpoints", "Namespace")
NAMESPACED_KINDS = ("Service", "EndpointSlice", "Endpoints")
#: What `--external-zone` adds: the objects that give host names addresses from outside.
EXPOSURE_KINDS = ("Ingress", "Gateway", "HTTPRoute", "GRPCRoute", "TLSRoute")
#: What `--clusterset-domain` adds: ServiceImports (optional: a cluster without the MCS CRDs has
#: none) and the EndpointSlices of the Multi-Cluster Services API (kind "ImportSlice": the
#: EndpointSlices labelled multicluster.kubernetes.io/service-name, by a second reflector).
CLUSTERSET_KINDS = ("ServiceImport", "ImportSlice")
#: What `--clusterset` adds in every cluster: ServiceExports (optional: without the MCS CRDs a
#: Service is exported by the kdns.io/export annotation alone).
EXPORT_KINDS = ("ServiceExport",)


def load_api_client(
    kubeconfig: str | None = None, context: str | None = None, in_cluster: bool = False
) -> ApiClient:
    """An `ApiClient` for the cluster to watch.

    With `in_cluster`, or when no kubeconfig is given and `KUBERNETES_SERVICE_HOST` is set (a
    pod), the pod's service account is used; otherwise the kubeconfig (`$KUBECONFIG` or
    `~/.kube/config` when None) and its current context or `context`. Raises
    `ClusterConfigError` with a one-line message when the configuration cannot be used.
    """
    config = Configuration()
    if in_cluster and kubeconfig:
        raise ClusterConfigError("choose either a kubeconfig or the in-cluster configuration")
    if in_cluster or (kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST")):
        if context:
            raise ClusterConfigError("a context needs a kubeconfig; in a pod, pass --kubeconfig")
        try:
            load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
        except ConfigException as exc:
            raise ClusterConfigError(
                f"in-cluster configuration unusable: {_one_line(exc)} (run in a pod with a "
                "service account token mounted, or pass --kubeconfig)"
            ) from None
    else:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        if kubeconfig is not None and not os.path.isfile(kubeconfig):
            raise ClusterConfigError(f"kubeconfig {kubeconfig} does not exist")
        try:
            load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig,
                context=context,
                client_configuration=config,
                persist_config=False,
            )
        except (ConfigException, OSError, yaml.YAMLError, ValueError, TypeError, KeyError) as exc:
            raise ClusterConfigError(
                _missing_context(kubeconfig, where, context)
                or f"kubeconfig {where} unusable: {_one_line(exc)}"
            ) from None
    config.retries = False
    if not config.verify_ssl:
        # urllib3 would warn twice per request (every list and watch, for ever): said once here.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        log.warning(
            "kubeconfig %s: insecure-skip-tls-verify: the API server's certificate is not checked",
            kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config",
        )
    return ApiClient(configuration=config)


def _missing_context(kubeconfig: str | None, where: str, context: str | None) -> str | None:
    """The message for a kubeconfig that lacks the context asked for (`--context`), or none
    current: the contexts it has, and how to pick one. None when that is not the trouble."""
    try:
        contexts, active = list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, yaml.YAMLError, ValueError, TypeError, KeyError):
        return None
    names = [c.get("name") for c in contexts or () if isinstance(c, dict)]
    has = f"(it has: {', '.join(str(n) for n in names) or 'none'}); pick one with --context"
    if context is not None and context not in names:
        return f"kubeconfig {where} has no context {context!r} {has}"
    if context is None and not active:
        return f"kubeconfig {where} has no current context {has}"
    return None


def current_context(kubeconfig: str) -> str:
    """The name of `kubeconfig`'s current context (the first cluster's id in `--clusterset`
    names when no --context or --cluster-id says otherwise). Raises `ClusterConfigError`."""
    try:
        _, active = list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, yaml.YAMLError, ValueError, TypeError, KeyError) as exc:
        raise ClusterConfigError(f"kubeconfig {kubeconfig} unusable: {_one_line(exc)}") from None
    name = active.get("name") if isinstance(active, dict) else None
    if not isinstance(name, str) or not name:
        raise ClusterConfigError(f"kubeconfig {kubeconfig} has no current context: pass --context")
    return name


class ClusterSource:
    """Keeps store layer `layer` in step with a cluster, through `sink`.

    `namespaces`: watch only these (None or empty: all namespaces, and Namespaces themselves).
    `label_selector`: only Services matching it. `settings`: list/watch knobs (tests shrink the
    timeouts and backoff). `pods`: watch Pods too (`--pods verified`). `targets`: keep ready
    endpoints' targetRefs (`--endpoint-pod-names`; see `trim.endpoint_slice`). `exposure`: watch
    Ingresses and the Gateway API's Gateways and routes too (`--external-zone`; the Gateway API
    kinds are optional: a cluster without their CRDs has none). `clusterset`: watch
    ServiceImports and the EndpointSlices labelled multicluster.kubernetes.io/service-name
    (`--clusterset-domain`; ServiceImport is optional as well). `exports`: watch ServiceExports
    (`--clusterset`; optional too). Call `start()`, then `stop()`; `synced` turns True (and
    `sink.set_synced(layer)` is called, once) when the first list of every kind is in.

    Several threads write to `sink` at once, so it must be thread-safe: the server's `LoopSink`,
    not a bare `Store`. The caller owns `api_client` (close it after `stop()`).
    """

    def __init__(
        self,
        sink: Sink,
        layer: str,
        api_client: ApiClient,
        *,
        namespaces: Iterable[str] | None = None,
        label_selector: str | None = None,
        settings: WatchSettings | None = None,
        idle_timeout: float | None = None,
        pods: bool = False,
        targets: bool = False,
        exposure: bool = False,
        clusterset: bool = False,
        exports: bool = False,
    ) -> None:
        self.sink = sink
        self.layer = layer
        self.settings = settings or WatchSettings()
        if idle_timeout is not None:  # --watch-idle-timeout
            self.settings = replace(self.settings, idle_timeout=idle_timeout)
        self.namespaces = list(dict.fromkeys(ns for ns in namespaces or () if ns)) or None
        self.label_selector = label_selector or None
        self.reflectors: list[Reflector] = []
        self._probe: NamespaceProbe | None = None
        scopes: list[str | None] = [*self.namespaces] if self.namespaces else [None]
        # One for all kinds: one probe a cluster while the API is away, and every kind back as
        # soon as any finds it answering.
        recovery = Recovery(self.settings.probe_interval)
        kinds = KINDS if self.namespaces is None else NAMESPACED_KINDS
        if pods:
            kinds = (*kinds, "Pod")
        if exposure:
            kinds = (*kinds, *EXPOSURE_KINDS)
        if clusterset:
            kinds = (*kinds, *CLUSTERSET_KINDS)
        if exports:
            kinds = (*kinds, *EXPORT_KINDS)
        for kind in kinds:
            for ns in scopes:
                self.reflectors.append(
                    Reflector(
                        kind,
                        sink,
                        layer,
                        api_client,
                        namespace=ns,
                        label_selector=self._selector(kind),
                        settings=self.settings,
                        on_synced=self._part_synced,
                        recovery=recovery,
                        targets=targets,
                    )
                )
        if self.namespaces is not None:
            self._probe = NamespaceProbe(
                self.namespaces, sink, layer, api_client, self.settings, self._part_synced
            )
        self._lock = threading.Lock()
        self._pending = len(self.reflectors) + (self._probe is not None)
        self._synced = threading.Event()
        self._started = False

    def _selector(self, kind: str) -> str | None:
        """The label selector of `kind`'s list and watch: --label-selector for Services, the
        MCS service-name label for the EndpointSlices of ServiceImports."""
        if kind == "Service":
            return self.label_selector
        if kind == "ImportSlice":
            return MCS_SERVICE_NAME_LABEL
        return None

    def start(self) -> None:
        """Start every reflector (and the namespace probe) in its own thread."""
        if self._started:
            raise RuntimeError("cluster source already started")
        self._started = True
        where = ", ".join(self.namespaces) if self.namespaces else "all namespaces"
        if self.label_selector:
            where += f", services matching {self.label_selector}"
        log.info("cluster source: watching %s", where)
        for reflector in self.reflectors:
            reflector.start()
        if self._probe is not None:
            self._probe.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop every thread; wait up to `timeout` seconds in all. True if all have ended."""
        parts: list[Reflector | NamespaceProbe] = [*self.reflectors]
        if self._probe is not None:
            parts.append(self._probe)
        for part in parts:
            part.request_stop()
        deadline = time.monotonic() + timeout
        ended = True
        for part in parts:
            ended = part.join(max(0.0, deadline - time.monotonic())) and ended
        return ended

    @property
    def synced(self) -> bool:
        """True once the first list of every kind has been handed to the sink."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def stats(self) -> list[ReflectorStats]:
        """A snapshot of every reflector's counters (and the namespace probe's)."""
        out = [r.stats.snapshot() for r in self.reflectors]
        if self._probe is not None:
            out.append(self._probe.stats.snapshot())
        return out

    def _part_synced(self, part: object) -> None:
        with self._lock:
            self._pending -= 1
            done = self._pending == 0
        if done:
            self.sink.set_synced(self.layer)
            self._synced.set()
            log.info("cluster source synced")


class NamespaceProbe:
    """Decides which of the listed namespaces exist, without watching Namespaces.

    GETs each namespace every `settings.namespace_recheck` seconds: 200 exists, 404 does not,
    403 is taken as existing (the operator named it; a namespaced Role may not read it). Other
    failures are retried with backoff and change nothing.
    """

    def __init__(
        self,
        namespaces: list[str],
        sink: Sink,
        layer: str,
        api_client: ApiClient,
        settings: WatchSettings,
        on_synced: Callable[[NamespaceProbe], None] | None = None,
    ) -> None:
        self.namespaces = namespaces
        self.settings = settings
        self.stats = ReflectorStats("Namespace", "")
        self._sink = sink
        self._layer = layer
        self._api_client = api_client
        self._on_synced = on_synced
        self._known: dict[str, bool] = {}
        self._forbidden_logged = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kdns-namespaces", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                found = {ns: self._exists(ns) for ns in self.namespaces}
            except Exception as exc:
                failures += 1
                self.stats.errors += 1
                self.stats.last_error = _one_line(exc)
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "namespaces: cannot check %s: %s; retrying",
                    ", ".join(self.namespaces),
                    self.stats.last_error,
                )
                s = self.settings
                self._stop.wait(backoff_delay(failures, s.backoff_base, s.backoff_cap, self._rng))
                continue
            failures = 0
            if self._stop.is_set():
                break
            self._publish(found)
            self._stop.wait(self.settings.namespace_recheck)

    def _exists(self, ns: str) -> bool:
        try:
            response = apicall.get(
                self._api_client,
                f"/api/v1/namespaces/{ns}",
                request_timeout=(self.settings.connect_timeout, self.settings.read_timeout),
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status == 403:
                if not self._forbidden_logged:
                    self._forbidden_logged = True
                    log.info(
                        "namespaces: not allowed to read namespace %s; treating the namespaces "
                        "named on the command line as existing",
                        ns,
                    )
                return True
            raise
        response.read()
        response.release_conn()
        return True

    def _publish(self, found: dict[str, bool]) -> None:
        changed = {ns: ok for ns, ok in found.items() if self._known.get(ns) != ok}
        self._known.update(found)
        first = self.stats.lists == 0
        self.stats.lists += 1
        self.stats.objects = sum(found.values())
        if changed:
            for ns, ok in changed.items():
                if not ok:
                    log.warning("namespaces: %s does not exist", ns)
            upserts = [Namespace(ns) for ns, ok in changed.items() if ok]
            deletes: list[ObjectKey] = [
                ("Namespace", "", ns) for ns, ok in changed.items() if not ok
            ]
            self._sink.apply(self._layer, upserts, deletes, time.monotonic())
        if first and self._on_synced is not None:
            self._on_synced(self)


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 200 else text[:197] + "..."
