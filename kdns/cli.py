"""The command line: flags in, a `Config` out, then the server or a one-shot command.

Every error a user can cause ends as one line on stderr and exit status 1 (2 for bad usage);
tracebacks are for bugs only.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from kdns import __version__
from kdns.config import (
    PODS_MODES,
    ROTATE_MODES,
    Config,
    ConfigError,
    check_cidr,
    check_node_name,
    check_zone_name,
    normalize_domain,
    parse_cluster,
    parse_hostport,
)

#: Record types `kdns wait` knows by name.
QTYPE_NUMBERS = {"A": 1, "AAAA": 28, "SRV": 33, "PTR": 12, "CNAME": 5, "TXT": 16}

if TYPE_CHECKING:
    from kdns.dns.resolution import Engine

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="kdns: a small, fast cluster DNS server for Kubernetes.",
)


def _fail(message: str) -> NoReturn:
    typer.echo(f"kdns: error: {message}", err=True)
    raise typer.Exit(1)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kdns {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """kdns: a small, fast cluster DNS server for Kubernetes."""


ZonesOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--zones", help="Directory of Kubernetes manifests (repeatable) [default: ./zones]."
    ),
]
DomainOpt = Annotated[str, typer.Option("--domain", help="The cluster domain.")]
CidrOpt = Annotated[
    str, typer.Option("--service-cidr", help="Range for ClusterIPs the manifests leave out.")
]
NamespaceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--namespace",
        help="Serve only this namespace (repeatable), of every source: names in others are "
        "NXDOMAIN.",
    ),
]
PodNamesOpt = Annotated[
    bool,
    typer.Option(
        "--endpoint-pod-names",
        help="Name an endpoint without hostname by its pod's name (targetRef) when that is a "
        "DNS label, else by its dashed IP (CoreDNS endpoint_pod_names).",
    ),
]
PreferZoneOpt = Annotated[
    str | None,
    typer.Option(
        "--prefer-zone",
        help="Headless A/AAAA and SRV answers list the endpoints for this topology zone first "
        "(hints.forZones when every ready endpoint has hints, else their zone).",
    ),
]
ExternalZoneOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--external-zone",
        help="Also answer ZONE (repeatable) with what reaches the cluster from outside: "
        "<svc>.<ns>.ZONE from LoadBalancer ingress and externalIPs (CoreDNS k8s_external), and "
        "the host names of Ingress rules and Gateway API routes (watches Ingresses, Gateways, "
        "HTTPRoutes, GRPCRoutes, TLSRoutes: deploy/components/external-zone).",
    ),
]
ClustersetOpt = Annotated[
    str | None,
    typer.Option(
        "--clusterset-domain",
        help="Also answer this zone (clusterset.local) as the Multi-Cluster Services DNS "
        "specification says: <svc>.<ns>.svc.ZONE and its SRV and endpoint names from "
        "ServiceImports (multicluster.x-k8s.io) and the EndpointSlices labelled "
        "multicluster.kubernetes.io/service-name, of the first cluster and zones/ "
        "(RBAC: deploy/components/clusterset). Off by default.",
    ),
]
ClustersetUnionOpt = Annotated[
    str | None,
    typer.Option(
        "--clusterset",
        help="Also answer this zone (clusterset.local) for the services exported across the "
        "served clusters (the first and every --cluster), with no MCS controller: a Service is "
        "exported by a ServiceExport of its name (or labelled multicluster.kubernetes.io/"
        'service-name with it), or by the annotation kdns.io/export: "true". ClusterIP '
        "services answer with every exporting cluster's ClusterIPs, headless ones with every "
        "cluster's endpoints as <host>.<cluster id>.<svc>.<ns>.svc.ZONE (RBAC: "
        "deploy/components/clusterset-exports). Off by default.",
    ),
]
ClusterIdOpt = Annotated[
    str | None,
    typer.Option(
        "--cluster-id",
        help="The first cluster's id in --clusterset names [default: its kubeconfig context, "
        "else local]; each --cluster's is its CONTEXT.",
    ),
]
SelectorOpt = Annotated[
    str | None,
    typer.Option(
        "--label-selector",
        help="Serve only the services matching this Kubernetes label selector, of every source.",
    ),
]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def serve(
    zones: ZonesOpt = None,
    listen: Annotated[
        list[str] | None,
        typer.Option(
            "--listen",
            help="HOST:PORT or [IPv6]:PORT, UDP and TCP (repeatable) [default: 127.0.0.1:1053].",
        ),
    ] = None,
    domain: DomainOpt = "cluster.local",
    ttl: Annotated[
        int, typer.Option("--ttl", min=0, max=3600, help="TTL of answers (seconds).")
    ] = 5,
    pods: Annotated[
        str,
        typer.Option(
            "--pods",
            help="Pod names <a-b-c-d>.<ns>.pod.<zone>: insecure (any address), verified (only a "
            "pod's address in that namespace; watches pods) or disabled.",
        ),
    ] = "insecure",
    endpoint_pod_names: PodNamesOpt = False,
    prefer_zone: PreferZoneOpt = None,
    autopath: Annotated[
        bool,
        typer.Option(
            "--autopath",
            help="When a pod's question under <its ns>.svc.<zone> is NXDOMAIN, walk its search "
            "path here and answer with a CNAME to the first name that exists (needs --pods "
            "verified; names outside the zones through --upstream).",
        ),
    ] = False,
    prefer_zone_from_node: Annotated[
        str | None,
        typer.Option(
            "--prefer-zone-from-node",
            help="Prefer the zone of this node (its topology.kubernetes.io/zone label, read once "
            "at start; needs get on nodes).",
        ),
    ] = None,
    rotate: Annotated[
        str,
        typer.Option(
            "--rotate",
            help="Order of multi-record A, AAAA and SRV answers: round-robin, random or off.",
        ),
    ] = "round-robin",
    service_cidr: CidrOpt = "10.96.0.0/12",
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            help="HOST:PORT for the page at /, /health, /ready and /metrics (off unless given).",
        ),
    ] = None,
    kubeconfig: Annotated[
        str | None, typer.Option("--kubeconfig", help="Watch the cluster of this kubeconfig.")
    ] = None,
    context: Annotated[str | None, typer.Option("--context", help="Kubeconfig context.")] = None,
    in_cluster: Annotated[
        bool,
        typer.Option("--in-cluster", help="Use the pod's service account (automatic in a pod)."),
    ] = False,
    cluster: Annotated[
        list[str] | None,
        typer.Option(
            "--cluster",
            help="Also serve kubeconfig context CONTEXT as zone ZONE (CONTEXT=ZONE, repeatable).",
        ),
    ] = None,
    namespace: NamespaceOpt = None,
    label_selector: SelectorOpt = None,
    external_zone: ExternalZoneOpt = None,
    clusterset_domain: ClustersetOpt = None,
    clusterset: ClustersetUnionOpt = None,
    cluster_id: ClusterIdOpt = None,
    startup_timeout: Annotated[
        float, typer.Option("--startup-timeout", min=0, help="Seconds to wait for the first sync.")
    ] = 5.0,
    http_explain: Annotated[
        bool,
        typer.Option("--http-explain", help="Serve /explain on --http (shows endpoint details)."),
    ] = False,
    http_show_clients: Annotated[
        bool,
        typer.Option(
            "--http-show-clients",
            help="Show the clients answered NXDOMAIN most on the page at / of --http (their "
            "addresses; hidden unless given).",
        ),
    ] = False,
    http_changes: Annotated[
        bool,
        typer.Option(
            "--http-changes/--no-http-changes",
            help="Keep the change journal for /changes on --http (at most 5% of the watching "
            "process's time in the background; off: /changes answers 404).",
        ),
    ] = True,
    lameduck: Annotated[
        float,
        typer.Option("--lameduck", min=0, help="On SIGTERM, answer this long while not ready."),
    ] = 5.0,
    log_queries: Annotated[
        bool, typer.Option("--log-queries", help="Log one line per query.")
    ] = False,
    udp_batch: Annotated[
        bool,
        typer.Option(
            "--udp-batch/--no-udp-batch",
            help="Receive and send UDP in batches (recvmmsg/sendmmsg) when nothing needs the "
            "datagram protocol (--rrl, --log-queries, --autopath, --allow-query).",
        ),
    ] = True,
    rrl: Annotated[
        float,
        typer.Option("--rrl", min=0, help="UDP responses a second per client prefix (0: off)."),
    ] = 0.0,
    transfer_to: Annotated[
        list[str] | None,
        typer.Option("--transfer-to", help="CIDR allowed to AXFR the zone over TCP (repeatable)."),
    ] = None,
    allow_query: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-query",
            help="Answer only sources in this CIDR or address (repeatable; DNS and /explain); "
            "others get REFUSED [default: everyone].",
        ),
    ] = None,
    allow_query_drop: Annotated[
        bool,
        typer.Option("--allow-query-drop", help="Send nothing, not REFUSED, to the others."),
    ] = False,
    upstream: Annotated[
        list[str] | None,
        typer.Option(
            "--upstream",
            help="Forward names outside kdns's zones to ADDR[:PORT] or [IPv6]:PORT (repeatable), "
            "or 'resolv.conf' for the system's nameservers other than kdns. Without it they get "
            "REFUSED.",
        ),
    ] = None,
    upstream_timeout: Annotated[
        float,
        typer.Option(
            "--upstream-timeout", min=0.05, help="Seconds to wait for an upstream's answer."
        ),
    ] = 2.0,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            max=64,
            help="Answer from N processes fed by this one, which alone watches the API server "
            "and reads zones/ (0: this process answers too).",
        ),
    ] = 0,
    steer: Annotated[
        bool,
        typer.Option(
            "--steer/--no-steer",
            help="With --workers 2 or more (Linux): send each query to the serving process "
            "that owns its name, so that each reads and caches only its share of the services "
            "(less memory, more cache hits); off: any process answers any query. Off by itself "
            "with --rrl.",
        ),
    ] = True,
    worker_renew: Annotated[
        float,
        typer.Option(
            "--worker-renew",
            min=0.0,
            metavar="FRACTION",
            help="With --workers: fork a serving process again, from the data as it is now, "
            "once the records written since its fork (services, endpoints; by changes or a "
            "relist) number this fraction of those it was forked with; it then shares the main "
            "process's memory again instead of holding a copy of its own (0: never).",
        ),
    ] = 0.5,
    watch_idle_timeout: Annotated[
        float,
        typer.Option(
            "--watch-idle-timeout",
            min=1.0,
            help="Give up a watch that sent nothing, not even a bookmark, this long (a dead "
            "connection, a frozen API server), and list again.",
        ),
    ] = 120.0,
    zones_watch: Annotated[
        str,
        typer.Option(
            "--zones-watch",
            help="How a changed zones/ file is known to be complete: inotify (when its writer "
            "closes it), poll (two equal reads 0.3 s apart), or auto (inotify where it works).",
        ),
    ] = "auto",
    tcp_idle_timeout: Annotated[
        float,
        typer.Option("--tcp-idle-timeout", min=0.1, help="Close TCP connections idle this long."),
    ] = 10.0,
    tcp_max_connections: Annotated[
        int, typer.Option("--tcp-max-connections", min=1, help="Concurrent TCP connections.")
    ] = 1000,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning, error.")
    ] = "info",
) -> None:
    """Serve DNS for the manifests in --zones (and a cluster, with --kubeconfig)."""
    import os

    try:
        if pods not in PODS_MODES:
            raise ConfigError(f"--pods must be one of {', '.join(PODS_MODES)}, not {pods!r}")
        if autopath and pods != "verified":
            raise ConfigError(
                "--autopath needs --pods verified (it finds a client's namespace by its pod)"
            )
        if prefer_zone is not None and prefer_zone_from_node is not None:
            raise ConfigError("choose either --prefer-zone or --prefer-zone-from-node")
        if prefer_zone is not None:
            check_zone_name(prefer_zone)
        if prefer_zone_from_node is not None:
            check_node_name(prefer_zone_from_node)
        if rotate not in ROTATE_MODES:
            raise ConfigError(f"--rotate must be one of {', '.join(ROTATE_MODES)}, not {rotate!r}")
        if allow_query_drop and not allow_query:
            raise ConfigError("--allow-query-drop needs --allow-query (everyone may query now)")
        if http_show_clients and not http:
            raise ConfigError("--http-show-clients needs --http (the page it shows them on)")
        if not kubeconfig and not in_cluster and os.environ.get("KUBERNETES_SERVICE_HOST"):
            in_cluster = True
        from kdns.ops.forward import parse_upstream
        from kdns.serve.acl import parse_allow

        listen_addrs = [parse_hostport(a) for a in (listen or ["127.0.0.1:1053"])]
        upstreams = list(
            dict.fromkeys(u for t in upstream or [] for u in parse_upstream(t, own=listen_addrs))
        )
        from kdns.sources.files import WATCH_MODES

        if zones_watch not in WATCH_MODES:
            raise ConfigError(
                f"--zones-watch must be one of {', '.join(WATCH_MODES)}, not {zones_watch!r}"
            )
        config = Config(
            zones=list(zones or []),
            clusters=[parse_cluster(c) for c in cluster or []],
            external_zones=list(dict.fromkeys(normalize_domain(z) for z in external_zone or [])),
            clusterset_domain=normalize_domain(clusterset_domain) if clusterset_domain else "",
            clusterset=normalize_domain(clusterset) if clusterset else "",
            cluster_id=cluster_id or "",
            listen=listen_addrs,
            upstreams=upstreams,
            upstream_timeout=upstream_timeout,
            workers=workers,
            steer=steer,
            worker_renew=worker_renew,
            zones_watch=zones_watch,
            watch_idle_timeout=watch_idle_timeout,
            domain=normalize_domain(domain),
            ttl=ttl,
            pods=pods,
            rotate=rotate,
            endpoint_pod_names=endpoint_pod_names,
            autopath=autopath,
            prefer_zone=prefer_zone or "",
            prefer_zone_from_node=prefer_zone_from_node or "",
            service_cidr=check_cidr(service_cidr),
            http=parse_hostport(http) if http else None,
            kubeconfig=kubeconfig,
            context=context,
            in_cluster=in_cluster,
            namespaces=list(namespace or []),
            label_selector=label_selector,
            startup_timeout=startup_timeout,
            lameduck=lameduck,
            http_explain=http_explain,
            http_show_clients=http_show_clients,
            http_changes=http_changes,
            log_queries=log_queries,
            udp_batch=udp_batch,
            rrl=rrl,
            transfer_to=list(transfer_to or []),
            allow_query=parse_allow(allow_query or []),
            allow_query_drop=allow_query_drop,
            tcp_idle_timeout=tcp_idle_timeout,
            tcp_max_connections=tcp_max_connections,
        )
        # Checked before anything starts: the API server would reject a malformed selector at
        # every list, and the files would never be filtered.
        config.scope()
        if config.clusterset:
            if not config.cluster_id and not config.context and config.kubeconfig:
                from kdns.sources.cluster import current_context

                config.cluster_id = current_context(config.kubeconfig)
            config.cluster_ids()
    except ConfigError as err:
        _fail(str(err))
    _setup_logging(log_level)
    if config.prefer_zone_from_node:
        try:
            config.prefer_zone = _zone_of_node(config)
        except ConfigError as err:
            _fail(str(err))
    from kdns.serve.server import run
    from kdns.sources.files import SourceError

    try:
        run(config)
    except ConfigError as err:
        _fail(str(err))
    except SourceError as err:
        if not config.zones and err.reason == "no such directory":
            # The ./zones kdns looks for when told nothing: say what else it could serve.
            hint = "; give --zones DIR, or a cluster: --kubeconfig FILE"
            kubeconfig = os.environ.get("KUBECONFIG")
            if kubeconfig and os.pathsep in kubeconfig:
                hint += " (KUBECONFIG is set: pass one of its files)"
            elif kubeconfig:
                hint += ' (KUBECONFIG is set: --kubeconfig "$KUBECONFIG")'
            _fail(f"no zones/ directory in {os.getcwd()}{hint}")
        _fail(str(err))
    except KeyboardInterrupt:
        pass


def _zone_of_node(config: Config) -> str:
    """--prefer-zone-from-node: the node's zone, read once now (before any process forks)."""
    from kdns.sources.cluster import ZONE_LABEL, load_api_client, node_zone

    if not config.uses_cluster:
        raise ConfigError("--prefer-zone-from-node needs a cluster (--kubeconfig or --in-cluster)")
    client = load_api_client(config.kubeconfig, config.context, config.in_cluster)
    try:
        zone = node_zone(client, config.prefer_zone_from_node)
    finally:
        client.close()  # type: ignore[no-untyped-call]
    log = logging.getLogger("kdns")
    if zone:
        log.info("preferring zone %s, of node %s", zone, config.prefer_zone_from_node)
    else:
        log.warning(
            "node %s has no %s label: no zone is preferred",
            config.prefer_zone_from_node,
            ZONE_LABEL,
        )
    return zone


def _one_shot_config(
    zones: list[Path] | None,
    domain: str,
    service_cidr: str,
    namespace: list[str] | None,
    label_selector: str | None,
    endpoint_pod_names: bool = False,
    prefer_zone: str | None = None,
    external_zone: list[str] | None = None,
    clusterset_domain: str | None = None,
    clusterset: str | None = None,
    cluster_id: str | None = None,
) -> Config:
    """The settings of `kdns serve` that decide what a one-shot command reads."""
    try:
        config = Config(
            external_zones=list(dict.fromkeys(normalize_domain(z) for z in external_zone or [])),
            clusterset_domain=normalize_domain(clusterset_domain) if clusterset_domain else "",
            clusterset=normalize_domain(clusterset) if clusterset else "",
            cluster_id=cluster_id or "",
            zones=list(zones or []),
            domain=normalize_domain(domain),
            service_cidr=check_cidr(service_cidr),
            namespaces=list(namespace or []),
            label_selector=label_selector,
            endpoint_pod_names=endpoint_pod_names,
            prefer_zone=check_zone_name(prefer_zone) if prefer_zone is not None else "",
        )
        config.scope()
        config.cluster_ids()
    except ConfigError as err:
        _fail(str(err))
    return config


def _load_engine(config: Config) -> Engine:
    """The engine `kdns serve` with `config` would answer from (built by the server)."""
    from kdns.serve.server import engine_from_files
    from kdns.sources.files import SourceError

    try:
        return engine_from_files(config)
    except (ConfigError, SourceError) as err:
        _fail(str(err))


@app.command()
def records(
    zones: ZonesOpt = None,
    domain: DomainOpt = "cluster.local",
    service_cidr: CidrOpt = "10.96.0.0/12",
    namespace: NamespaceOpt = None,
    label_selector: SelectorOpt = None,
    endpoint_pod_names: PodNamesOpt = False,
) -> None:
    """Print every record kdns would serve, as a sorted zone file."""
    from kdns.ops.zonefile import render

    logging.basicConfig(level=logging.ERROR)
    config = _one_shot_config(
        zones, domain, service_cidr, namespace, label_selector, endpoint_pod_names
    )
    typer.echo(render(_load_engine(config)), nl=False)


@app.command()
def check(
    dirs: Annotated[list[Path], typer.Argument(help="Directories (or files) of manifests.")],
) -> None:
    """Validate manifests; print each problem with its file and position."""
    from kdns.sources.files import SourceError
    from kdns.sources.files import check as check_dirs

    try:
        problems = check_dirs(dirs)
    except SourceError as err:
        _fail(str(err))
    errors = 0
    for problem in problems:
        typer.echo(str(problem), err=False)
        if problem.severity == "error":
            errors += 1
    if errors:
        typer.echo(f"{errors} error(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {len(problems)} warning(s)", err=True)


@app.command()
def explain(
    name: Annotated[str, typer.Argument(help="The name to explain.")],
    qtype: Annotated[str, typer.Argument(help="Record type.")] = "A",
    zones: ZonesOpt = None,
    domain: DomainOpt = "cluster.local",
    service_cidr: CidrOpt = "10.96.0.0/12",
    namespace: NamespaceOpt = None,
    label_selector: SelectorOpt = None,
    endpoint_pod_names: PodNamesOpt = False,
    prefer_zone: PreferZoneOpt = None,
    external_zone: ExternalZoneOpt = None,
    clusterset_domain: ClustersetOpt = None,
    clusterset: ClustersetUnionOpt = None,
    cluster_id: ClusterIdOpt = None,
    server: Annotated[
        str | None,
        typer.Option("--server", help="HOST:PORT of a running kdns's --http: use its live data."),
    ] = None,
) -> None:
    """Tell which objects produce the answer to NAME [TYPE], and why."""
    from kdns.ops.explain import ExplainError
    from kdns.ops.explain import explain as explain_name

    if server is not None:
        typer.echo(_explain_remote(server, name, qtype), nl=False)
        return
    logging.basicConfig(level=logging.ERROR)
    config = _one_shot_config(
        zones,
        domain,
        service_cidr,
        namespace,
        label_selector,
        endpoint_pod_names,
        prefer_zone,
        external_zone,
        clusterset_domain,
        clusterset,
        cluster_id,
    )
    engine = _load_engine(config)
    try:
        typer.echo(explain_name(engine, name, qtype, config.scope()), nl=False)
    except ExplainError as err:
        _fail(str(err))


@app.command()
def wait(
    name: Annotated[str, typer.Argument(help="The name to wait for.")],
    qtype: Annotated[str, typer.Argument(help="Record type.")] = "A",
    minimum: Annotated[
        int, typer.Option("--min", min=1, help="How many records make the name ready.")
    ] = 1,
    server: Annotated[
        str, typer.Option("--server", help="HOST:PORT of the DNS server to ask.")
    ] = "127.0.0.1:1053",
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Give up after this many seconds.")
    ] = 30.0,
) -> None:
    """Wait until NAME has at least --min records of TYPE (exit 0), or give up at --timeout
    (exit 1, with the last rcode and kdns's reason). For container entrypoints."""
    from kdns.ops.wait import wait as wait_for

    number = QTYPE_NUMBERS.get(qtype.upper())
    if number is None:
        _fail(f"unknown record type {qtype!r}")
    try:
        address = parse_hostport(server)
    except ConfigError as err:
        _fail(str(err))
    ready, outcome = wait_for(address, name, number, minimum, timeout)
    if not ready:
        _fail(
            f"{name} {qtype.upper()}: not {minimum} record(s) after {timeout:g} s: "
            f"{outcome.describe()}"
        )
    for record in outcome.records or []:
        typer.echo(record)


@app.command()
def changes(
    server: Annotated[
        str,
        typer.Option("--server", help="HOST:PORT of a running kdns's --http."),
    ] = "127.0.0.1:8080",
    since: Annotated[
        int | None,
        typer.Option(
            "--since", min=0, help="Print the changes after this SOA serial [default: the latest]."
        ),
    ] = None,
    name: Annotated[
        str, typer.Option("--name", help="Only the names that contain this text.")
    ] = "",
    follow: Annotated[
        bool,
        typer.Option("--follow", help="Keep printing new changes (every second) until Ctrl-C."),
    ] = False,
) -> None:
    """Print what a running kdns changed in DNS: each record set before and after, its SOA
    serial and the objects that did it (the journal of its --http, /changes)."""
    from kdns.ops.changes import ChangesError, show

    try:
        address = parse_hostport(server)
    except ConfigError as err:
        _fail(str(err))
    try:
        show(
            address,
            since,
            name,
            follow,
            typer.echo,
            lambda text: typer.echo(f"kdns: {text}", err=True),
        )
    except ChangesError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --follow ends


def _explain_remote(server: str, name: str, qtype: str) -> str:
    import urllib.error
    import urllib.parse
    import urllib.request

    try:
        host, port = parse_hostport(server)
    except ConfigError as err:
        _fail(str(err))
    if ":" in host:
        host = f"[{host}]"
    query = urllib.parse.urlencode({"name": name, "type": qtype})
    url = f"http://{host}:{port}/explain?{query}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as err:
        _fail(err.read().decode().strip() or f"HTTP {err.code}")
    except (urllib.error.URLError, OSError) as err:
        _fail(f"cannot reach kdns at {server}: {getattr(err, 'reason', err)}")


@app.command()
def resolver(
    kind: Annotated[
        str | None,
        typer.Argument(help="systemd-resolved, macos or dnsmasq [default: detected]."),
    ] = None,
    domain: DomainOpt = "cluster.local",
    external_zone: Annotated[
        list[str] | None,
        typer.Option(
            "--external-zone", help="Route this zone to kdns too (repeatable), as kdns serves it."
        ),
    ] = None,
    clusterset_domain: Annotated[
        str | None,
        typer.Option(
            "--clusterset-domain",
            "--clusterset",
            help="Route this clusterset zone (of --clusterset-domain or --clusterset) to kdns too.",
        ),
    ] = None,
    address: Annotated[str, typer.Option("--address", help="Where kdns listens.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="kdns's port.")] = 1053,
    apply_: Annotated[
        bool,
        typer.Option(
            "--apply", help="Write the file (backing up another one); print the undo commands."
        ),
    ] = False,
    undo_: Annotated[
        bool, typer.Option("--undo", help="Remove what --apply wrote, restoring any backup.")
    ] = False,
) -> None:
    """Print (or --apply) the resolver configuration that sends only DOMAIN (and each
    --external-zone and --clusterset-domain) to kdns: one file per domain."""
    from kdns.ops.resolver_config import (
        ResolverError,
        activate_commands,
        apply,
        detect,
        path_for,
        render,
        undo,
    )

    try:
        extra = [*(external_zone or []), *([clusterset_domain] if clusterset_domain else [])]
        domains = list(dict.fromkeys(normalize_domain(d) for d in (domain, *extra)))
        chosen = kind or detect()
        targets = [(d, path_for(chosen, d)) for d in domains]
        if undo_:
            for d, target in targets:
                typer.echo(f"{'undone:' if undo(chosen, d) else 'nothing at'} {target}")
            return
        if not apply_:
            for d, target in targets:
                typer.echo(f"# {target}")
                typer.echo(render(chosen, d, address, port), nl=False)
            return
        commands = [apply(chosen, d, address, port) for d, _ in targets]
    except (ResolverError, ConfigError) as err:
        _fail(str(err))
    for _, target in targets:
        typer.echo(f"wrote {target}", err=True)
    for cmd in activate_commands(chosen):
        typer.echo(f"now run: sudo {cmd}", err=True)
    # One reload at the end of the undo, not one per file.
    removals = [c for cmds in commands for c in cmds if c not in activate_commands(chosen)]
    undo_all = removals + activate_commands(chosen)
    typer.echo("to undo: sudo " + " && sudo ".join(undo_all), err=True)


def main() -> None:
    """Entry point of the `kdns` command."""
    try:
        code = app(standalone_mode=False)
    except Exception as err:
        # Usage errors: one line, like every other error (click would print three).
        fmt = getattr(err, "format_message", None)
        if fmt is None:
            raise
        if type(err).__name__ == "NoArgsIsHelpError":
            typer.echo(fmt(), err=True)
        else:
            typer.echo(f"kdns: error: {fmt()} (see kdns --help)", err=True)
        sys.exit(getattr(err, "exit_code", 2))
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
