"""deploy/components: the kustomize components that switch on kdns modes needing more RBAC.

Each component is rendered onto the base with tests/deploy_render.py (plain Python, since CI's
kubectl is too old for components) and checked for exactly what it adds: one ClusterRole rule and
the container's arguments (and env), everything else as the base has it. Where kubectl's
kustomize can build components (v3.7+), its output must equal the Python rendering. That the RBAC
is enough against a real API server is tests/e2e/test_modes.py's job.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kdns.cli import app
from tests.deploy_render import (
    COMPONENTS,
    DEPLOY,
    Doc,
    base_documents,
    component_names,
    find,
    granted,
    json_patch,
    kdns_container,
    kustomization,
    kustomize_build,
    rbac,
    render,
    strategic_merge,
)

PODS = "pods-verified"
ZONE = "prefer-zone-from-node"
CLUSTERSET = "clusterset"
EXPORTS = "clusterset-exports"
EXTERNAL = "external-zone"
_GATEWAY_KINDS = ("gateways", "httproutes", "grpcroutes", "tlsroutes")
#: What each component adds: (apiGroup, resource, verb) triples, and container arguments.
ADDS: dict[str, tuple[set[tuple[str, str, str]], list[str]]] = {
    PODS: ({("", "pods", "list"), ("", "pods", "watch")}, ["--pods=verified"]),
    ZONE: ({("", "nodes", "get")}, ["--prefer-zone-from-node=$(NODE_NAME)"]),
    CLUSTERSET: (
        {
            ("multicluster.x-k8s.io", "serviceimports", "list"),
            ("multicluster.x-k8s.io", "serviceimports", "watch"),
        },
        ["--clusterset-domain=clusterset.local"],
    ),
    EXPORTS: (
        {
            ("multicluster.x-k8s.io", "serviceexports", "list"),
            ("multicluster.x-k8s.io", "serviceexports", "watch"),
        },
        ["--clusterset=clusterset.local"],
    ),
    EXTERNAL: (
        {("networking.k8s.io", "ingresses", verb) for verb in ("list", "watch")}
        | {
            ("gateway.networking.k8s.io", kind, verb)
            for kind in _GATEWAY_KINDS
            for verb in ("list", "watch")
        },
        ["--external-zone=$(KDNS_EXTERNAL_ZONE)"],
    ),
}
#: How many ClusterRole rules each component appends (one per API group it reads).
RULES = {PODS: 1, ZONE: 1, EXTERNAL: 2, CLUSTERSET: 1, EXPORTS: 1}


def _key(doc: Doc) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _without_changes(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    """The documents by (kind, name), minus what the components may change: the ClusterRole's
    rules and the kdns container's args and env."""
    out = {}
    for doc in copy.deepcopy(docs):
        if doc["kind"] == "ClusterRole":
            doc.pop("rules")
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if c["name"] == "kdns":
                    c.pop("args")
                    c.pop("env", None)
        out[_key(doc)] = doc
    return out


def test_the_components_are_the_ones_documented() -> None:
    # The others add objects, not a rule and a flag: `monitoring` is tests/test_dashboard.py's,
    # the autoscalers are checked below.
    assert component_names() == sorted([*ADDS, *AUTOSCALERS, "monitoring"])
    readme = (COMPONENTS / "README.md").read_text()
    for name in component_names():
        assert f"deploy/components/{name}" in readme, name
    # The base itself switches none of them on.
    assert "components" not in kustomization()


@pytest.mark.parametrize("name", sorted(ADDS))
def test_each_is_a_kustomize_component(name: str) -> None:
    comp = kustomization(COMPONENTS / name)
    assert comp["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert comp["kind"] == "Component"
    assert set(comp) == {"apiVersion", "kind", "patches"}


def test_without_components_the_base_is_unchanged() -> None:
    docs = render()
    assert docs == base_documents()
    # ...and is what tests/test_deploy.py reads: the same files, the same rules and arguments.
    role = rbac(docs)[1]
    assert granted(role) == {
        (group, resource, verb)
        for group, resource in [
            ("", "services"),
            ("", "endpoints"),
            ("", "namespaces"),
            ("discovery.k8s.io", "endpointslices"),
        ]
        for verb in ("list", "watch")
    }
    (deployment,) = yaml.safe_load_all((DEPLOY / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert kdns_container(docs)["args"] == container["args"]
    assert not any(
        a.startswith(("--pods", "--prefer-zone", "--external-zone")) for a in container["args"]
    )
    assert "env" not in kdns_container(docs)


@pytest.mark.parametrize(
    "components",
    [c for n in (1, 2) for c in itertools.permutations(sorted(ADDS), n)],
    ids="+".join,
)
def test_a_component_adds_its_rule_and_arguments_and_nothing_else(
    components: tuple[str, ...],
) -> None:
    base, docs = render(), render(components)
    base_role, role = rbac(base)[1], rbac(docs)[1]
    added = granted(role) - granted(base_role)
    assert added == set().union(*(ADDS[c][0] for c in components))
    assert granted(base_role) <= granted(role)
    # A rule of its own per component, appended: the base's rules stay as they were.
    assert role["rules"][: len(base_role["rules"])] == base_role["rules"]
    assert len(role["rules"]) == len(base_role["rules"]) + sum(RULES[c] for c in components)
    base_args, args = kdns_container(base)["args"], kdns_container(docs)["args"]
    assert args[: len(base_args)] == base_args
    assert args[len(base_args) :] == [a for c in components for a in ADDS[c][1]]
    # Everything else (the other objects, the rest of the Deployment) is the base's.
    assert _without_changes(docs) == _without_changes(base)
    # The binding still grants that role to the Deployment's ServiceAccount.
    assert rbac(docs)[2]["roleRef"]["name"] == role["metadata"]["name"]


def test_pods_verified_reads_pods_with_list_and_watch_only() -> None:
    (rule,) = rbac(render([PODS]))[1]["rules"][-1:]
    assert rule == {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}


def test_clusterset_lists_and_watches_serviceimports_only() -> None:
    (rule,) = rbac(render([CLUSTERSET]))[1]["rules"][-1:]
    assert rule == {
        "apiGroups": ["multicluster.x-k8s.io"],
        "resources": ["serviceimports"],
        "verbs": ["list", "watch"],
    }
    # The slices of imports are EndpointSlices: the base already lists and watches them.
    assert ("discovery.k8s.io", "endpointslices", "watch") in granted(rbac(render([]))[1])


def test_prefer_zone_from_node_gets_nodes_and_its_own_node_name() -> None:
    docs = render([ZONE])
    (rule,) = rbac(docs)[1]["rules"][-1:]
    assert rule == {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}
    container = kdns_container(docs)
    # $(NODE_NAME) in args is expanded by the kubelet only if the container declares it.
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"] == {
        "name": "NODE_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
    }
    for arg in container["args"]:
        for var in re.findall(r"\$\((\w+)\)", arg):
            assert var in env, arg


def test_external_zone_reads_ingresses_and_gateway_api_routes_only() -> None:
    docs = render([EXTERNAL])
    ingresses, gateway_api = rbac(docs)[1]["rules"][-2:]
    assert ingresses == {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["ingresses"],
        "verbs": ["list", "watch"],
    }
    assert gateway_api == {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": list(_GATEWAY_KINDS),
        "verbs": ["list", "watch"],
    }
    env = {e["name"]: e for e in kdns_container(docs)["env"]}
    assert env["KDNS_EXTERNAL_ZONE"] == {"name": "KDNS_EXTERNAL_ZONE", "value": "example.org"}
    # The kinds granted are the kinds the watch reads, no more, no fewer.
    from kdns.sources.cluster import EXPOSURE_KINDS
    from kdns.sources.reflector import RESOURCES

    watched = {
        (RESOURCES[k].group_version.rpartition("/")[0], RESOURCES[k].plural) for k in EXPOSURE_KINDS
    }
    assert watched == {(g, r) for g, r, _ in ADDS[EXTERNAL][0]}


def test_the_env_patch_merges_with_an_existing_env() -> None:
    """A base that gains env of its own keeps it: the component's env patch merges by name."""
    comp = yaml.safe_load((COMPONENTS / ZONE / "kustomization.yaml").read_text())
    smp = [yaml.safe_load(p["patch"]) for p in comp["patches"]]
    (body,) = [b for b in smp if isinstance(b, dict)]
    dep = copy.deepcopy(next(d for d in render() if d["kind"] == "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "TZ", "value": "UTC"}]
    merged = strategic_merge(dep, {k: v for k, v in body.items() if k != "metadata"})
    (container,) = merged["spec"]["template"]["spec"]["containers"]
    assert [e["name"] for e in container["env"]] == ["TZ", "NODE_NAME"]
    assert container["args"] == dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_arguments_are_options_kdns_serve_has() -> None:
    """The flags the components add are kdns's own (spelled as `kdns serve --help` has them)."""
    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    for _, args in ADDS.values():
        for arg in args:
            flag = arg.split("=", 1)[0]
            assert re.search(rf"{re.escape(flag)}\b", out.output), flag
    # `verified` is one of the --pods modes.
    assert re.search(r"--pods\b.*\bverified\b", out.output, re.DOTALL)


def test_json_patch_operations() -> None:
    doc: dict[str, Any] = {"a": {"b": [1, 2]}, "c~/d": 1}
    json_patch(doc, {"op": "add", "path": "/a/b/-", "value": 3})
    json_patch(doc, {"op": "add", "path": "/a/b/0", "value": 0})
    json_patch(doc, {"op": "add", "path": "/a/e", "value": {"f": 1}})
    json_patch(doc, {"op": "replace", "path": "/c~0~1d", "value": 2})
    json_patch(doc, {"op": "test", "path": "/a/b/3", "value": 3})
    json_patch(doc, {"op": "remove", "path": "/a/b/1"})
    assert doc == {"a": {"b": [0, 2, 3], "e": {"f": 1}}, "c~/d": 2}
    with pytest.raises(ValueError):
        json_patch(doc, {"op": "test", "path": "/a/b/0", "value": 9})
    with pytest.raises(KeyError):
        json_patch(doc, {"op": "replace", "path": "/nope", "value": 1})
    with pytest.raises(NotImplementedError):
        json_patch(doc, {"op": "move", "from": "/a", "path": "/z"})


# --------------------------------------------------------------------------- against kustomize


@pytest.mark.parametrize(
    "components",
    [(), (PODS,), (ZONE,), (EXTERNAL,), (PODS, ZONE), (ZONE, PODS), (ZONE, EXTERNAL)],
    ids=lambda c: "+".join(c) or "base",
)
def test_kubectl_kustomize_renders_the_same(components: tuple[str, ...], tmp_path: Path) -> None:
    built = kustomize_build(components, tmp_path)
    if isinstance(built, str):
        pytest.skip(f"{built}: the Python rendering is the check")
    by_key = {_key(d): _env_by_name(d) for d in built}
    ours = {_key(d): _env_by_name(d) for d in render(components)}
    assert sorted(by_key) == sorted(ours)
    for key in ours:
        assert by_key[key] == ours[key], key


def _env_by_name(doc: Doc) -> Doc:
    """`doc` with its containers' env sorted by name: kustomize puts an entry a strategic merge
    adds before the ones there (the Python rendering, after them); none of these values refers
    to another variable, so the order means nothing to the kubelet."""
    doc = copy.deepcopy(doc)
    if doc["kind"] == "Deployment":
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if "env" in c:
                assert not any("$(" in str(e.get("value", "")) for e in c["env"])
                c["env"] = sorted(c["env"], key=lambda e: e["name"])
    return doc


AUTOSCALERS = ("autoscale-hpa", "autoscale-proportional")


@pytest.mark.parametrize("name", AUTOSCALERS)
def test_an_autoscaler_owns_the_replica_count_of_kdns_and_nothing_else(name: str) -> None:
    base = base_documents()
    docs = render([name])
    deployment = find(docs, "Deployment", "kdns")
    assert "replicas" not in deployment["spec"]  # or every apply would reset it to 2
    added = [d for d in docs if _key(d) not in {_key(b) for b in base}]
    assert added, "the component adds no object"
    for doc in added:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "kube-system", _key(doc)
    kdns_before = {_key(d): d for d in base}
    for doc in docs:  # the base's objects are unchanged but for the replica count
        if _key(doc) in kdns_before and _key(doc) != ("Deployment", "kdns"):
            assert doc == kdns_before[_key(doc)], _key(doc)
    if name == "autoscale-hpa":
        [hpa] = [d for d in added if d["kind"] == "HorizontalPodAutoscaler"]
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "kdns",
        }
        assert hpa["spec"]["minReplicas"] >= 2
        # Utilization is measured against the request: the kdns container must have one.
        assert kdns_container(docs)["resources"]["requests"]["cpu"]
    else:
        auto = find(added, "Deployment", "kdns-autoscaler")
        [container] = auto["spec"]["template"]["spec"]["containers"]
        flags = dict(a.split("=", 1) for a in container["command"][1:] if "=" in a)
        assert flags["--target"] == "deployment/kdns"
        assert flags["--namespace"] == "kube-system"
        linear = yaml.safe_load(flags["--default-params"])["linear"]
        assert linear["min"] >= 2 and linear["preventSinglePointFailure"] is True
        # What it reads and writes, and no more.
        cluster = find(added, "ClusterRole", "kdns-autoscaler")
        role = find(added, "Role", "kdns-autoscaler")
        assert granted(cluster) == {("", "nodes", "list"), ("", "nodes", "watch")}
        assert granted(role) == {
            ("", "configmaps", "get"),
            ("", "configmaps", "create"),
            ("apps", "deployments/scale", "get"),
            ("apps", "deployments/scale", "update"),
        }
        sa = auto["spec"]["template"]["spec"]["serviceAccountName"]
        for binding in ("ClusterRoleBinding", "RoleBinding"):
            [subject] = find(added, binding, "kdns-autoscaler")["subjects"]
            assert subject == {"kind": "ServiceAccount", "name": sa, "namespace": "kube-system"}
