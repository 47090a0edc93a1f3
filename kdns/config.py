"""Every knob of a kdns server, in one object the CLI fills and the server reads."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kdns.state.model import is_label

if TYPE_CHECKING:
    from kdns.sources.scope import Scope

#: How pod names (`<a-b-c-d>.<ns>.pod.<zone>`) are answered: from the name alone, only for the
#: IP of a pod in that namespace (pods are watched), or not at all.
PodsMode = Literal["insecure", "verified", "disabled"]
PODS_MODES: tuple[PodsMode, ...] = ("insecure", "verified", "disabled")
#: The order of multi-record A, AAAA and SRV answers (`kdns.serve.rotation`).
RotateMode = Literal["round-robin", "random", "off"]
ROTATE_MODES: tuple[RotateMode, ...] = ("round-robin", "random", "off")


class ConfigError(ValueError):
    """A setting that cannot work; the message is one line meant for the user."""


class ClusterConfigError(ConfigError):
    """A Kubernetes client configuration that cannot be used; the message is one line."""


@dataclass(slots=True)
class Config:
    """Settings of `kdns serve`. Defaults match the CLI's."""

    #: Directories of manifests. Empty: ./zones, unless a cluster is served (see `zone_dirs`).
    zones: list[Path] = field(default_factory=list)
    listen: list[tuple[str, int]] = field(default_factory=lambda: [("127.0.0.1", 1053)])
    domain: str = "cluster.local"
    ttl: int = 5
    pods: PodsMode = "insecure"
    rotate: RotateMode = "round-robin"
    #: Name an endpoint without hostname by its pod (targetRef), CoreDNS's endpoint_pod_names.
    endpoint_pod_names: bool = False
    #: Headless answers list the endpoints for this topology zone first; "" for none.
    prefer_zone: str = ""
    #: Take `prefer_zone` from this node's topology.kubernetes.io/zone label, read once at start.
    prefer_zone_from_node: str = ""
    #: Walk a pod's search path on NXDOMAIN (CoreDNS's autopath @kubernetes); needs pods verified.
    autopath: bool = False
    service_cidr: str = "10.96.0.0/12"
    http: tuple[str, int] | None = None
    # the cluster source (none of these set: files only)
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    #: Serve only these namespaces, of every source (see `scope`); empty: all.
    namespaces: list[str] = field(default_factory=list)
    #: Further clusters, each under its own zone: (kubeconfig context, zone).
    clusters: list[tuple[str, str]] = field(default_factory=list)
    #: Zones answering with what reaches the (first) cluster from outside: LoadBalancer and
    #: external IPs as `<svc>.<ns>.<zone>`, and Ingress and Gateway API route host names.
    external_zones: list[str] = field(default_factory=list)
    #: The clusterset zone of the Multi-Cluster Services API (`clusterset.local`), answering
    #: from the (first) cluster's ServiceImports; "" when off.
    clusterset_domain: str = ""
    #: A clusterset zone answering for the services that the served clusters (the first and
    #: every `--cluster`) export, merged by kdns itself (`kdns.state.clusterset`: no MCS
    #: controller needed); "" when off.
    clusterset: str = ""
    #: The first cluster's id in `--clusterset` endpoint names (`<host>.<id>.<svc>.<ns>.svc.`);
    #: "": its --context, else "local" (the CLI fills in the kubeconfig's current context).
    cluster_id: str = ""
    #: Serve only the Services matching this Kubernetes label selector, of every source.
    label_selector: str | None = None
    startup_timeout: float = 5.0
    #: A watch silent this long (not even a bookmark) is given up and the kind listed again.
    watch_idle_timeout: float = 120.0
    # operations
    lameduck: float = 5.0
    #: Serve /explain on the HTTP port (it shows more than DNS does: off by default).
    http_explain: bool = False
    #: Count NXDOMAIN answers per client address and show them on the page (`/`).
    http_show_clients: bool = False
    #: Keep the change journal and serve it at /changes (and on the page). Working each change
    #: out as record sets is about half of the watching process's CPU per endpoint change.
    http_changes: bool = True
    log_queries: bool = False
    #: Answer UDP in batches (recvmmsg/sendmmsg, `serve/batch.py`) where the short path applies.
    udp_batch: bool = True
    upstreams: list[tuple[str, int]] = field(default_factory=list)
    upstream_timeout: float = 2.0
    rrl: float = 0.0  # responses a second per client prefix; 0: off
    transfer_to: list[str] = field(default_factory=list)
    #: Networks allowed to query (DNS and /explain); empty: everyone (see `acl.py`).
    allow_query: list[str] = field(default_factory=list)
    #: Send nothing to the others, instead of REFUSED.
    allow_query_drop: bool = False
    # TCP limits
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1000
    #: How a changed zones/ file is known to be complete (`files.WATCH_MODES`).
    zones_watch: str = "auto"
    #: Serving processes; 0: this process serves too (see `workers.py`).
    workers: int = 0
    #: With 2 or more workers on Linux: each query to the process that owns its name
    #: (`steering.py`); off: every process reads one shared socket.
    steer: bool = True
    #: With workers: fork a serving process again once the records written since its fork
    #: number this fraction of those it was forked with (`WorkerPool`); 0: never.
    worker_renew: float = 0.5

    @property
    def uses_cluster(self) -> bool:
        return bool(self.kubeconfig or self.in_cluster)

    def cluster_ids(self) -> list[str]:
        """The id of every served cluster in `--clusterset` names, in the order of the stores
        (the first cluster, then each `--cluster`): `cluster_id` or the context, lower case.
        Raises `ConfigError` when one is no DNS label or two are the same."""
        ids = [(self.cluster_id or self.context or "local").lower()]
        ids += [ctx.lower() for ctx, _ in self.clusters]
        for cid in ids:
            if not is_label(cid):
                raise ConfigError(
                    f"--clusterset: cluster id {cid!r} is no DNS label (it names endpoints, "
                    "<host>.<id>.<svc>.<ns>.svc.ZONE): pass --cluster-id, or rename the context"
                )
        if len(set(ids)) != len(ids):
            raise ConfigError(f"--clusterset: two clusters have the same id ({', '.join(ids)})")
        return ids

    def zone_dirs(self) -> list[Path]:
        """The manifest directories to load: those named, else ./zones unless a cluster is
        served (then files are served only when named, so that a checkout's sample zones/ never
        mixes into a cluster's answers unasked)."""
        if self.zones:
            return list(self.zones)
        return [] if self.uses_cluster or self.clusters else [Path("zones")]

    def scope(self) -> Scope:
        """What is served of every source (`--namespace`, `--label-selector`): the watch asks
        the API server for it, the file source drops the rest. Raises `ConfigError` (one line)
        for a malformed selector or namespace name."""
        # Imported here: kdns.sources.scope imports this module for ConfigError.
        from kdns.sources.scope import Scope

        return Scope.of(self.namespaces, self.label_selector)


def parse_cluster(text: str) -> tuple[str, str]:
    """`CONTEXT=ZONE` of --cluster."""
    context, sep, zone = text.partition("=")
    if not sep or not context:
        raise ConfigError(f"bad --cluster {text!r}: expected CONTEXT=ZONE")
    return context, normalize_domain(zone)


def parse_hostport(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` (the port may be left out when a default is given)."""
    host, sep, port = text.rpartition(":")
    if text.startswith("[") and "]" in text:
        close = text.index("]")
        host = text[1:close]
        rest = text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"bad address {text!r}: expected [IPv6]:PORT")
        port = rest[1:]
        sep = ":" if rest else ""
    elif not sep or ":" in host:
        # no port, or a bare IPv6 address
        host, port = text, ""
    if not port:
        if default_port is None:
            raise ConfigError(f"bad address {text!r}: expected HOST:PORT")
        port = str(default_port)
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"bad port in {text!r}")
    if not host:
        raise ConfigError(f"bad address {text!r}: no host")
    return host, int(port)


def check_zone_name(zone: str, what: str = "--prefer-zone") -> str:
    """A topology zone name as Kubernetes allows it in a label value: up to 63 characters of
    letters, digits, '-', '_' and '.', alphanumeric at both ends."""
    ok = (
        0 < len(zone) <= 63
        and zone.isascii()
        and zone[0].isalnum()
        and zone[-1].isalnum()
        and all(c.isalnum() or c in "-_." for c in zone)
    )
    if not ok:
        raise ConfigError(f"bad {what} {zone!r}: expected a zone label value such as us-east-1a")
    return zone


def check_node_name(name: str) -> str:
    """A node name: a DNS-1123 subdomain (lower case, up to 253 characters)."""
    labels = name.split(".")
    if not name or len(name) > 253 or not all(is_label(label) for label in labels):
        raise ConfigError(f"bad --prefer-zone-from-node {name!r}: not a node name")
    return name


def normalize_domain(domain: str) -> str:
    """Lower case, no trailing dot; rejects names that cannot be zones."""
    name = domain.strip().rstrip(".").lower()
    labels = name.split(".") if name else []
    if not labels or any(not label or len(label) > 63 for label in labels) or len(name) > 253:
        raise ConfigError(f"bad domain {domain!r}")
    return name


def check_cidr(cidr: str) -> str:
    """A CIDR for allocating service addresses, normalised."""
    try:
        return str(ipaddress.ip_network(cidr, strict=False))
    except ValueError as err:
        raise ConfigError(f"bad --service-cidr {cidr!r}: {err}") from None
