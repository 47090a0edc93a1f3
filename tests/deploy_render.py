"""deploy/ rendered as `kubectl kustomize` would, with optional components, in plain Python.

The base: the resources deploy/kustomization.yaml lists, moved to its namespace (namespaced
objects and ServiceAccount subjects of bindings) and with its image names replaced. A component
(deploy/components/<name>/kustomization.yaml, `kind: Component`) may only hold `resources`
(files of further objects) and `patches`:
JSON 6902 patches (add, remove, replace, test) and strategic merge patches (maps merged, the
Kubernetes lists below merged by their key, every other list replaced), each applied to the
resources its `target` selects (group, version, kind, name, namespace; names are anchored regular
expressions, as in kustomize). Anything else raises NotImplementedError, so that a component
this renderer cannot render fails its tests instead of rendering wrongly.

CI's kubectl (Debian 12: 1.20, kustomize v2) cannot build components, hence this renderer;
tests/test_deploy_components.py compares it with `kubectl kustomize` wherever kubectl's kustomize
is recent enough (v3.7+).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
COMPONENTS = DEPLOY / "components"
Doc = dict[str, Any]

#: Kinds the namespace transformer leaves without a namespace.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "Node", "PriorityClass"}
#: The merge key of each list a strategic merge patch may meet here (k8s.io/api's
#: patchMergeKey); other lists are replaced whole, as for `args` and `command`.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "envFrom": None,  # atomic in k8s.io/api: replaced
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}


def load_yaml(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomization(folder: Path = DEPLOY) -> Doc:
    (doc,) = load_yaml(folder / "kustomization.yaml")
    return doc


def component_names() -> list[str]:
    """The folders of deploy/components that hold a kustomization.yaml."""
    if not COMPONENTS.is_dir():
        return []
    return sorted(p.parent.name for p in COMPONENTS.glob("*/kustomization.yaml"))


def render(components: Sequence[str] = ()) -> list[Doc]:
    """deploy/ with the named components of deploy/components, in that order."""
    docs = base_documents()
    for name in components:
        apply_component(docs, COMPONENTS / name)
    return docs


def base_documents() -> list[Doc]:
    k = kustomization()
    allowed = {"apiVersion", "kind", "namespace", "resources", "images"}
    if set(k) - allowed:
        raise NotImplementedError(f"deploy/kustomization.yaml fields {sorted(set(k) - allowed)}")
    docs: list[Doc] = []
    for resource in k.get("resources") or []:
        docs.extend(load_yaml(DEPLOY / resource))
    namespace = k.get("namespace")
    if namespace:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
            for subject in doc.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
    for image in k.get("images") or []:
        for doc in docs:
            for c in _containers(doc):
                c["image"] = _new_image(c["image"], image)
    return docs


def _containers(doc: Doc) -> Iterable[Doc]:
    spec = doc.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or (spec if doc["kind"] == "Pod" else {})
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def _new_image(current: str, image: Doc) -> str:
    name, tag = current, ""
    if "@" in name:
        name, tag = name.split("@", 1)
        tag = "@" + tag
    elif ":" in name.rsplit("/", 1)[-1]:
        name, rest = name.rsplit(":", 1)
        tag = ":" + rest
    if name != image["name"]:
        return current
    if "digest" in image:
        tag = "@" + image["digest"]
    elif "newTag" in image:
        tag = ":" + str(image["newTag"])
    return str(image.get("newName", name)) + tag


def apply_component(docs: list[Doc], folder: Path) -> None:
    """Apply the component in `folder` to `docs`, in place."""
    comp = kustomization(folder)
    if comp.get("kind") != "Component":
        raise ValueError(f"{folder}: kind {comp.get('kind')!r}, not Component")
    unsupported = set(comp) - {"apiVersion", "kind", "patches", "resources"}
    if unsupported:
        raise NotImplementedError(f"{folder}: component fields {sorted(unsupported)}")
    for resource in comp.get("resources") or []:
        if not str(resource).endswith((".yaml", ".yml")):
            raise NotImplementedError(f"{folder}: resource {resource!r} (files only)")
        docs.extend(load_yaml(folder / resource))
    for patch in comp.get("patches") or []:
        if set(patch) - {"target", "patch", "path"}:
            raise NotImplementedError(f"{folder}: patch options {sorted(patch)}")
        text = patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text()
        body = yaml.safe_load(text)
        if isinstance(body, list):  # JSON 6902: needs a target
            targets = [d for d in docs if _selected(d, patch["target"])]
            for doc in targets:
                for op in body:
                    json_patch(doc, op)
        else:  # strategic merge: its target, or the resource of its own kind and name
            if set(body.get("metadata") or {}) - {"name", "namespace"}:
                raise NotImplementedError(f"{folder}: a strategic merge patch of metadata")
            target = patch.get("target") or {
                "kind": body["kind"],
                "name": re.escape(body["metadata"]["name"]),
            }
            targets = [d for d in docs if _selected(d, target)]
            for i, doc in enumerate(docs):
                if any(doc is t for t in targets):
                    merged = strategic_merge(
                        doc, {k: v for k, v in body.items() if k != "metadata"}
                    )
                    docs[i] = merged
        if not targets:
            raise ValueError(f"{folder}: a patch selects nothing ({patch.get('target')})")


def _selected(doc: Doc, target: Doc) -> bool:
    unsupported = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unsupported:
        raise NotImplementedError(f"patch target fields {sorted(unsupported)}")
    group, _, version = doc["apiVersion"].rpartition("/")
    have = {
        "group": group,
        "version": version,
        "kind": doc["kind"],
        "name": doc["metadata"]["name"],
        "namespace": doc["metadata"].get("namespace", ""),
    }
    return all(re.fullmatch(str(want), have[key]) for key, want in target.items())


# --------------------------------------------------------------------------- JSON 6902


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer {path!r} does not start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _step(node: Any, token: str) -> Any:
    if isinstance(node, list):
        return node[int(token)]
    return node[token]


def json_patch(doc: Doc, op: Doc) -> None:
    """One RFC 6902 operation (add, remove, replace, test) applied to `doc` in place."""
    kind = op["op"]
    if kind not in ("add", "remove", "replace", "test"):
        raise NotImplementedError(f"JSON patch op {kind!r}")
    *parents, last = _pointer(op["path"])
    node: Any = doc
    for token in parents:
        node = _step(node, token)
    if kind == "test":
        if _step(node, last) != op["value"]:
            raise ValueError(f"JSON patch test failed at {op['path']}")
        return
    if isinstance(node, list):
        if kind == "add":
            index = len(node) if last == "-" else int(last)
            if not 0 <= index <= len(node):
                raise IndexError(f"JSON patch add at {op['path']}: out of range")
            node.insert(index, copy.deepcopy(op["value"]))
        elif kind == "remove":
            del node[int(last)]
        else:
            node[int(last)] = copy.deepcopy(op["value"])
        return
    if kind in ("remove", "replace") and last not in node:
        raise KeyError(f"JSON patch {kind} at {op['path']}: no such member")
    if kind == "remove":
        del node[last]
    else:
        node[last] = copy.deepcopy(op["value"])


# --------------------------------------------------------------------------- strategic merge


def strategic_merge(doc: Any, patch: Any, key: str = "") -> Any:
    """`patch` merged into `doc` (a new value): maps key by key (null deletes), the lists of
    MERGE_KEYS item by item on their key, every other value replaced."""
    if isinstance(patch, dict):
        if any(k.startswith("$") for k in patch):
            raise NotImplementedError(f"strategic merge directives {sorted(patch)}")
        out = dict(doc) if isinstance(doc, dict) else {}
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = strategic_merge(out.get(k), v, k)
        return out
    if isinstance(patch, list) and MERGE_KEYS.get(key) and isinstance(doc, list):
        merge_key = MERGE_KEYS[key]
        out_list = [copy.deepcopy(item) for item in doc]
        for item in patch:
            if not isinstance(item, dict) or merge_key not in item:
                raise NotImplementedError(f"{key} item without {merge_key}: {item!r}")
            for i, have in enumerate(out_list):
                if have.get(merge_key) == item[merge_key]:
                    out_list[i] = strategic_merge(have, item)
                    break
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


# --------------------------------------------------------------------------- reading the result


def find(docs: Sequence[Doc], kind: str, name: str | None = None) -> Doc:
    """The one object of `kind` (and `name`) in `docs`."""
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    if len(found) != 1:
        raise LookupError(f"{len(found)} {kind} objects named {name!r}")
    return found[0]


def kdns_container(docs: Sequence[Doc]) -> Doc:
    dep = find(docs, "Deployment")
    (container,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "kdns"]
    return dict(container)


def rbac(docs: Sequence[Doc]) -> tuple[Doc, Doc, Doc]:
    """The ServiceAccount the Deployment runs as, the ClusterRoleBinding naming it and the
    ClusterRole that binding grants."""
    dep = find(docs, "Deployment")
    account = find(docs, "ServiceAccount", dep["spec"]["template"]["spec"]["serviceAccountName"])
    name, ns = account["metadata"]["name"], account["metadata"].get("namespace")
    (binding,) = [
        d
        for d in docs
        if d["kind"] == "ClusterRoleBinding"
        and any(
            s.get("kind") == "ServiceAccount" and s["name"] == name and s.get("namespace") == ns
            for s in d.get("subjects") or []
        )
    ]
    role = find(docs, "ClusterRole", binding["roleRef"]["name"])
    return account, role, binding


def granted(role: Doc) -> set[tuple[str, str, str]]:
    """A role's rules as (apiGroup, resource, verb) triples."""
    return {
        (group, resource, verb)
        for rule in role.get("rules") or []
        for group in rule.get("apiGroups") or []
        for resource in rule.get("resources") or []
        for verb in rule.get("verbs") or []
    }


# --------------------------------------------------------------------------- against kustomize


def kustomize_build(components: Sequence[str], workdir: Path) -> list[Doc] | str:
    """deploy/ with `components`, as `kubectl kustomize` builds it from an overlay in
    `workdir`; or why it cannot here (no kubectl, or one whose kustomize is older than v3.7 and
    does not know components, as CI's Debian kubectl 1.20)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return "kubectl is not installed"
    out = subprocess.run(
        [kubectl, "version", "--client"], capture_output=True, text=True, timeout=30
    ).stdout
    m = re.search(r"Kustomize Version: v(\d+)\.(\d+)", out)
    version = (int(m[1]), int(m[2])) if m else None
    if version is None or version < (3, 7):
        return f"kubectl's kustomize ({version}) cannot build components (needs v3.7+)"
    overlay = workdir / "overlay"
    overlay.mkdir()
    overlay_doc: Doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, overlay)],
    }
    if components:
        overlay_doc["components"] = [os.path.relpath(COMPONENTS / c, overlay) for c in components]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(overlay_doc))
    built = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
    )
    if built.returncode != 0:
        raise RuntimeError(f"kubectl kustomize failed: {built.stderr}")
    return [d for d in yaml.safe_load_all(built.stdout) if d]
