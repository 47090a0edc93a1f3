"""deploy/components/monitoring: the Grafana dashboard and the ServiceMonitor, checked against what
kdns really exports and what deploy/ really holds.

- Every metric name in the dashboard's PromQL (panel targets, collapsed rows' panels and the
  template variables) must be one a real `kdns serve --http` exports at /metrics: a kdns run
  with every optional part on (a cluster through the API server double, --upstream, --workers,
  --allow-query) after a few queries and an API change. `name_bucket`, `_sum` and `_count` are
  a histogram's, `name_total` a counter's. Renaming a metric in kdns, or mistyping one in the
  dashboard, fails here; so does a grouping, matcher or legend label that metric does not have.
- Every metric family kdns exports has a panel.
- The component rendered onto deploy/ (in Python, as tests/test_deploy.py reads deploy/; and
  with `kubectl kustomize`, which must agree, where kubectl can build components): the
  ServiceMonitor selects the labels the Service carries, in its namespace, and names a port the
  Service has, the one kdns serves /metrics on; the dashboard ConfigMap carries the Grafana
  sidecar's label and the JSON file as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testkit.apiserver import FakeApiServer, service, write_kubeconfig
from testkit.upstream import Upstream
from tests.builders import shop_api_objects
from tests.deploy_render import kustomize_build
from tests.kdns_process import KdnsProcess, start_kdns, until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MONITORING = DEPLOY / "components" / "monitoring"
DASHBOARD = MONITORING / "kdns-dashboard.json"
Doc = dict[str, Any]

#: Labels Prometheus gives every target; the only ones besides kdns's own the dashboard may use
#: (the Prometheus Operator adds pod, namespace, service...; annotation-based scraping may not).
TARGET_LABELS = {"job", "instance"}
#: What every selector in the dashboard filters on.
FILTERS = {"job": ("=~", "$job"), "instance": ("=~", "$instance")}
#: Grafana's own variables.
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}
#: kubectl apply (client side) keeps the whole object in an annotation, at most 256 KiB.
ANNOTATION_LIMIT = 262144


# -- PromQL: the metric names, selectors and labels of an expression -------------------------

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
FUNCTIONS = AGGREGATIONS | {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "end", "exp", "floor",
    "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta",
    "increase", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
    "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc",
    "sort_desc", "sqrt", "start", "stddev_over_time", "stdvar_over_time", "sum_over_time",
    "tan", "tanh", "time", "timestamp", "vector", "year",
}  # fmt: skip
#: Keywords followed by a list of label names.
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
#: Other keywords, binary operators spelled as words, and literals.
WORDS = {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"}

TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    |(?P<var>\$\{[^}]*\}|\$\w+)
    |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[A-Za-z]*)   # 0.99, 1e-3, durations: 5m
    |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@:])
    |(?P<space>\s+)
    """,
    re.VERBOSE,
)


@dataclass
class Selector:
    """One instant or range vector selector: `name{label op "value", ...}`."""

    metric: str
    matchers: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class Query:
    selectors: list[Selector] = field(default_factory=list)
    #: label names of by/without/on/ignoring/group_left/group_right clauses
    grouping: set[str] = field(default_factory=set)
    variables: set[str] = field(default_factory=set)


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read {expr[pos:]!r} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def _unquote(text: str) -> str:
    return str(json.loads(text)) if text[0] == '"' else text[1:-1]


def parse_promql(expr: str) -> Query:
    """The selectors, grouping labels and Grafana variables of a PromQL expression. Function
    and aggregation names, keywords, numbers, durations, strings and range brackets are left
    out; an identifier that is none of those and not followed by `(` is a metric name."""
    query = Query()
    toks = tokens(expr)
    # Grafana variables, in label values too: $name, ${name}, ${name:format}
    query.variables = {a or b for a, b in re.findall(r"\$(?:\{(\w+)[^}]*\}|(\w+))", expr)}
    i = 0

    def peek(j: int) -> str:
        return toks[j][1] if j < len(toks) else ""

    def labels_until(j: int, close: str) -> tuple[list[str], int]:
        """The identifiers from toks[j] (after an opening bracket) to `close`; the index after."""
        names = []
        while peek(j) != close:
            if j >= len(toks):
                raise ValueError(f"no {close!r} in {expr!r}")
            if toks[j][0] == "ident":
                names.append(toks[j][1])
            j += 1
        return names, j + 1

    def matchers(j: int) -> tuple[dict[str, tuple[str, str]], int]:
        """`label op "value"` pairs from toks[j] (after `{`) to `}`; the index after."""
        out: dict[str, tuple[str, str]] = {}
        while peek(j) != "}":
            if peek(j) == ",":
                j += 1
                continue
            (k1, label), (_, op), (k3, value) = toks[j : j + 3]
            if k1 != "ident" or op not in ("=", "!=", "=~", "!~") or k3 != "string":
                raise ValueError(f"bad label matcher at {label!r} in {expr!r}")
            out[label] = (op, _unquote(value))
            j += 3
        return out, j + 1

    while i < len(toks):
        kind, text = toks[i]
        if kind == "op" and text == "[":  # a range or subquery: durations, variables
            i = labels_until(i + 1, "]")[1]
        elif kind == "op" and text == "{":  # a selector without a name: {__name__="..."}
            found, i = matchers(i + 1)
            name = found.pop("__name__", ("", ""))
            if name[0] != "=":
                raise ValueError(f"a selector without an exact metric name in {expr!r}")
            query.selectors.append(Selector(name[1], found))
        elif kind != "ident":
            i += 1
        elif text in GROUPING:
            if peek(i + 1) == "(":
                names, i = labels_until(i + 2, ")")
                query.grouping.update(names)
            else:
                i += 1  # group_left with no labels
        elif peek(i + 1) == "(":
            if text not in FUNCTIONS:
                raise ValueError(f"unknown PromQL function {text!r} in {expr!r}")
            i += 1
        elif text in AGGREGATIONS or text in WORDS:  # `sum by (x) (...)`, `or`, `offset 5m`
            i += 1
        else:
            selector = Selector(text)
            i += 1
            if peek(i) == "{":
                selector.matchers, i = matchers(i + 1)
            query.selectors.append(selector)
    return query


def variable_expr(query: Any) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query (label_values, query_result)."""
    text = query["query"] if isinstance(query, dict) else query
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", text, re.DOTALL)
    if m:
        return m[1]
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", text, re.DOTALL)
    if m:
        return m[1]
    if re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", text):
        return None
    raise ValueError(f"a variable query this test cannot read: {text!r}")


def test_parse_promql() -> None:
    q = parse_promql(
        'histogram_quantile(0.99, sum by (instance, le) (rate(kdns_x_seconds_bucket{job=~"$job",'
        ' a="x,}y"}[$__rate_interval])))'
        " / on (instance) group_left (version) (kdns_build_info offset 5m) * 1e3"
        ' or vector(0) > bool 2 and {__name__="kdns_y", kind!="b"}[5m:1m]'
    )
    assert [s.metric for s in q.selectors] == ["kdns_x_seconds_bucket", "kdns_build_info", "kdns_y"]
    assert q.selectors[0].matchers == {"job": ("=~", "$job"), "a": ("=", "x,}y")}
    assert q.selectors[2].matchers == {"kind": ("!=", "b")}
    assert q.grouping == {"instance", "le", "version"}
    assert q.variables == {"job", "__rate_interval"}
    assert [s.metric for s in parse_promql("sum without (zone) (up) - count(x)").selectors] == [
        "up",
        "x",
    ]
    with pytest.raises(ValueError, match="unknown PromQL function"):
        parse_promql("histogram_quantil(0.9, x)")
    assert variable_expr('label_values(kdns_build_info{job=~"$job"}, instance)') == (
        'kdns_build_info{job=~"$job"}'
    )


# -- the dashboard -----------------------------------------------------------------------------


def dashboard() -> Doc:
    doc: Doc = json.loads(DASHBOARD.read_text())
    return doc


def panels(board: Doc) -> Iterator[Doc]:
    """Every panel, those inside collapsed rows too."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels") or []


def targets(board: Doc) -> Iterator[tuple[str, Doc]]:
    for panel in panels(board):
        for target in panel.get("targets") or []:
            yield panel["title"], target


def expressions(board: Doc) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and template variable."""
    for title, target in targets(board):
        yield f"panel {title!r} {target['refId']}", target["expr"]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            expr = variable_expr(var["query"])
            if expr is not None:
                yield f"variable ${var['name']}", expr


def used_metrics(board: Doc) -> dict[str, list[str]]:
    """Metric name -> where the dashboard uses it."""
    out: dict[str, list[str]] = {}
    for where, expr in expressions(board):
        for selector in parse_promql(expr).selectors:
            out.setdefault(selector.metric, []).append(where)
    return out


def test_dashboard_shape() -> None:
    board = dashboard()
    assert board["title"] and board["uid"] == "kdns"
    assert isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["multi"] and variables[name]["includeAll"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "two panels with one id"
    drawn = [p for p in panels(board) if p["type"] != "row"]
    assert len(drawn) >= 20
    for panel in drawn:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel.get("description"), title
        assert panel["targets"], title
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit, f"panel {title!r} has no unit"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, title
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", title
    # the sections an operator looks for
    rows = {p["title"] for p in panels(board) if p["type"] == "row"}
    assert {"Queries", "Response cache", "Kubernetes API"} <= rows
    # kubectl apply -k keeps the ConfigMap in an annotation: it must fit
    assert len(DASHBOARD.read_bytes()) < ANNOTATION_LIMIT // 2


def test_every_selector_filters_on_job_and_instance_and_variables_exist() -> None:
    board = dashboard()
    defined = {v["name"] for v in board["templating"]["list"]} | BUILTIN_VARIABLES
    for where, expr in expressions(board):
        query = parse_promql(expr)
        assert query.variables <= defined, (where, query.variables - defined)
        for selector in query.selectors:
            assert selector.metric.startswith("kdns_"), (where, selector.metric)
            if where.startswith("variable $job"):
                continue  # the variable that $job is chosen from
            wanted = (
                FILTERS if not where.startswith("variable $instance") else {"job": FILTERS["job"]}
            )
            for label, matcher in wanted.items():
                assert selector.matchers.get(label) == matcher, (where, selector.metric, label)


def test_legends_name_only_grouping_labels() -> None:
    for where, target in targets(dashboard()):
        legend = target.get("legendFormat", "")
        used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        grouping = parse_promql(target["expr"]).grouping
        assert used <= grouping, (where, legend, used - grouping)


# -- a real kdns, every optional part on ---------------------------------------------------------


@dataclass
class Exported:
    """What /metrics says: family name -> type, and family name -> label names of its samples."""

    types: dict[str, str]
    labels: dict[str, set[str]]
    samples: dict[str, int]  # sample name -> how many

    def family_of(self, name: str) -> str | None:
        """The family a PromQL metric name reads: `x_bucket`/`x_sum`/`x_count` of histogram x,
        `x_total` of counter x, else x itself (a gauge or untyped family)."""
        for suffix, kinds in (
            ("_bucket", ("histogram",)),
            ("_sum", ("histogram", "summary")),
            ("_count", ("histogram", "summary")),
            ("_total", ("counter",)),
        ):
            base = name.removesuffix(suffix)
            if name.endswith(suffix) and self.types.get(base) in kinds:
                return base
        if self.types.get(name) in ("gauge", "untyped", "info", "stateset", "unknown"):
            return name
        return None


def read_exposition(text: str) -> Exported:
    types: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    samples: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        names = labels.setdefault(family.name, set())
        for sample in family.samples:
            names.update(sample.labels)
            samples[sample.name] = samples.get(sample.name, 0) + 1
    return Exported(types, labels, samples)


def metrics_path() -> str:
    (endpoint,) = service_monitor(render_python())["spec"]["endpoints"]
    return str(endpoint.get("path", "/metrics"))


def ask(kp: KdnsProcess, name: str, tcp: bool = False) -> int:
    q = dns.message.make_query(name, "A")
    send = dns.query.tcp if tcp else dns.query.udp
    return int(send(q, "127.0.0.1", port=kp.port, timeout=5).rcode())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """/metrics of a kdns with a cluster, --upstream, --workers 1 and --allow-query, after a
    few queries (answered, cached, NXDOMAIN, forwarded, over TCP) and an API change."""
    tmp = tmp_path_factory.mktemp("dashboard")
    api = FakeApiServer().start()
    upstream = Upstream()
    kp: KdnsProcess | None = None
    try:
        api.apply_all(shop_api_objects())
        kcfg = write_kubeconfig(tmp / "kubeconfig", api.url)
        kp = start_kdns(
            [
                *("--kubeconfig", str(kcfg), "--upstream", f"127.0.0.1:{upstream.port}"),
                *("--workers", "1", "--allow-query", "127.0.0.0/8"),
            ],
            http=True,
        )
        running = kp
        assert until(lambda: running.http_get("/ready")[0] == 200), kp.log()
        assert ask(kp, "cart.shop.svc.cluster.local") == dns.rcode.NOERROR
        assert ask(kp, "cart.shop.svc.cluster.local") == dns.rcode.NOERROR  # from the cache
        assert ask(kp, "db.shop.svc.cluster.local", tcp=True) == dns.rcode.NOERROR
        assert ask(kp, "nope.shop.svc.cluster.local") == dns.rcode.NXDOMAIN
        assert ask(kp, "payments.example.com") == dns.rcode.NOERROR  # forwarded
        api.apply(service("new", "shop", cluster_ip="10.96.1.2"))  # a watch event, programmed
        assert until(lambda: ask(running, "new.shop.svc.cluster.local") == dns.rcode.NOERROR)
        path = metrics_path()
        wanted = set(used_metrics(dashboard()))

        def scrape() -> Exported | None:
            status, text = running.http_get(path)
            assert status == 200, text
            got = read_exposition(text)
            # the serving process reports its counters every second: wait for them
            return got if wanted <= set(got.samples) else None

        result = until(scrape, 10) or read_exposition(running.http_get(path)[1])
        yield result
    finally:
        if kp is not None:
            kp.stop()
        upstream.close()
        api.stop()


def test_every_metric_the_dashboard_uses_is_one_kdns_exports(exported: Exported) -> None:
    used = used_metrics(dashboard())
    assert len(used) >= 20
    unknown = {name: where for name, where in used.items() if exported.family_of(name) is None}
    assert not unknown, f"not in kdns's /metrics: {unknown}\nkdns exports {sorted(exported.types)}"
    empty = sorted(name for name in used if not exported.samples.get(name))
    assert not empty, f"no samples after traffic: {empty}"


def test_labels_the_dashboard_uses_are_the_metrics_own(exported: Exported) -> None:
    for where, expr in expressions(dashboard()):
        query = parse_promql(expr)
        have = set(TARGET_LABELS)
        for selector in query.selectors:
            family = exported.family_of(selector.metric)
            assert family is not None, (where, selector.metric)
            own = (
                exported.labels[family]
                if selector.metric.endswith("_bucket")
                else (exported.labels[family] - {"le"})
            )
            unknown = set(selector.matchers) - own - TARGET_LABELS
            assert not unknown, (where, selector.metric, unknown)
            have |= own
        assert query.grouping <= have, (where, query.grouping - have)


def test_every_family_kdns_exports_has_a_panel(exported: Exported) -> None:
    families = {exported.family_of(name) for name in used_metrics(dashboard())}
    missing = sorted(set(exported.types) - families)
    assert not missing, f"kdns exports these, the dashboard shows none of them: {missing}"


def test_a_renamed_metric_is_caught(exported: Exported) -> None:
    assert exported.family_of("kdns_dns_request_duration_seconds_bucket")
    assert exported.family_of("kdns_dns_requests_total")
    assert exported.family_of("kdns_cache_entries")
    assert exported.family_of("kdns_dns_requests") is None  # a counter is read as _total
    assert exported.family_of("kdns_cache_entries_total") is None
    assert exported.family_of("kdns_dns_request_duration_seconds") is None
    assert exported.family_of("kdns_dns_request_seconds_bucket") is None


# -- the component, rendered onto deploy/ ----------------------------------------------------------


def load_yaml(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomization(folder: Path) -> Doc:
    (doc,) = load_yaml(folder / "kustomization.yaml")
    return doc


def render_base() -> list[Doc]:
    """deploy/ as `kubectl kustomize deploy` builds it: its resources, moved to its namespace
    (namespaced objects and ServiceAccount subjects), with its image names replaced."""
    k = kustomization(DEPLOY)
    unsupported = set(k) - {"apiVersion", "kind", "namespace", "resources", "images"}
    assert not unsupported, f"deploy/kustomization.yaml: render {sorted(unsupported)} here"
    docs = [doc for name in k["resources"] for doc in load_yaml(DEPLOY / name)]
    for doc in docs:
        if not doc["kind"].startswith("Cluster"):
            doc["metadata"]["namespace"] = k["namespace"]
        for subject in doc.get("subjects") or []:
            if subject["kind"] == "ServiceAccount":
                subject["namespace"] = k["namespace"]
        for image in k.get("images") or []:
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                if c["image"].split(":")[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return docs


def render_python() -> list[Doc]:
    """deploy/ with the monitoring component, as an overlay listing deploy/ under `resources`
    and the component under `components` builds it: the component's resources as they are
    and its ConfigMap generated (no hash suffix); patches are not rendered here."""
    docs = render_base()
    comp = kustomization(MONITORING)
    assert comp["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert comp["kind"] == "Component"
    unsupported = set(comp) - {"apiVersion", "kind", "resources", "configMapGenerator"}
    assert not unsupported, f"the monitoring component: render {sorted(unsupported)} here"
    for name in comp.get("resources") or []:
        docs.extend(load_yaml(MONITORING / name))
    for gen in comp.get("configMapGenerator") or []:
        options = gen.get("options") or {}
        assert options.get("disableNameSuffixHash") is True, "render the name hash here"
        assert set(gen) <= {"name", "namespace", "files", "options"}
        metadata: Doc = {"name": gen["name"]}
        if "namespace" in gen:
            metadata["namespace"] = gen["namespace"]
        if options.get("labels"):
            metadata["labels"] = dict(options["labels"])
        data = {}
        for entry in gen["files"]:
            key, _, file = entry.rpartition("=")
            data[key or Path(file).name] = (MONITORING / file).read_text()
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    return docs


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def service_monitor(docs: list[Doc]) -> Doc:
    return find(docs, "ServiceMonitor")


def test_the_component_adds_a_service_monitor_and_a_dashboard_and_changes_nothing() -> None:
    docs = render_python()
    base = render_base()
    assert docs[: len(base)] == base  # the base is as it was
    added = sorted((d["apiVersion"], d["kind"]) for d in docs[len(base) :])
    assert added == [("monitoring.coreos.com/v1", "ServiceMonitor"), ("v1", "ConfigMap")]
    files = sorted(p.name for p in MONITORING.iterdir())
    assert files == [
        "README.md",
        "kdns-dashboard.json",
        "kustomization.yaml",
        "servicemonitor.yaml",
    ]
    # deploy/ itself switches it on nowhere
    assert "components" not in kustomization(DEPLOY)


def test_the_service_monitor_selects_the_kdns_service_and_its_metrics_port() -> None:
    docs = render_python()
    monitor = service_monitor(docs)
    svc = find(docs, "Service", "kdns")
    # in the Service's namespace, or naming it
    ns = svc["metadata"]["namespace"]
    selector = monitor["spec"].get("namespaceSelector")
    if selector is None:
        assert monitor["metadata"]["namespace"] == ns
    else:
        assert selector.get("any") is True or ns in selector.get("matchNames", [])
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted and set(monitor["spec"]["selector"]) == {"matchLabels"}
    assert wanted.items() <= svc["metadata"]["labels"].items()
    # kdns's Service alone: not the pods', nor any other Service's
    selected = [
        d
        for d in docs
        if d["kind"] == "Service" and wanted.items() <= d["metadata"]["labels"].items()
    ]
    assert selected == [svc]
    # a port the Service has, by name, that leads to the container port of kdns's --http
    ports = {p.get("name"): p for p in svc["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert "targetPort" not in endpoint
    assert endpoint["port"] in ports, f"the Service has no port named {endpoint['port']!r}"
    port = ports[endpoint["port"]]
    assert port["protocol"] == "TCP"
    (container,) = find(docs, "Deployment", "kdns")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    http = args[args.index("--http") + 1]
    assert int(http.rsplit(":", 1)[1]) == port["targetPort"]
    assert endpoint.get("path", "/metrics") == "/metrics"
    assert endpoint.get("scheme", "http") == "http"
    # the dashboard's $instance: the pod's name
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_name"],
        "targetLabel": "instance",
    } in endpoint.get("relabelings", [])


def test_the_dashboard_config_map_is_for_the_grafana_sidecar() -> None:
    docs = render_python()
    cm = find(docs, "ConfigMap", "kdns-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == find(docs, "Service", "kdns")["metadata"]["namespace"]
    assert cm["data"] == {"kdns-dashboard.json": DASHBOARD.read_text()}
    assert len(json.dumps(cm)) < ANNOTATION_LIMIT


def test_kubectl_kustomize_renders_the_same(tmp_path: Path) -> None:
    built = kustomize_build(["monitoring"], tmp_path)
    if isinstance(built, str):
        pytest.skip(f"{built}: the Python rendering above is the check")

    def key(doc: Doc) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    by_key = {key(d): d for d in built}
    ours = {key(d): d for d in render_python()}
    assert sorted(by_key) == sorted(ours)
    for k, doc in ours.items():
        assert by_key[k] == doc, k
