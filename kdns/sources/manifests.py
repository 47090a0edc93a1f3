"""Parse one manifest file into records, and say precisely what is wrong with it.

A file holds what `kubectl apply -f` takes: YAML (any number of `---` documents) or JSON, each
document an object or a `List` of objects. kdns reads v1 Service, Endpoints, Pod and Namespace and
discovery.k8s.io/v1 EndpointSlice; any other kind is skipped with one warning per kind per file,
so a directory can hold a whole application's manifests and kdns takes what concerns DNS.

Every problem carries the file, the document number and a line, because "invalid port" without a
place is useless in a directory of fifty files. PyYAML gives positions only on its node tree, so
each document is composed to nodes first and constructed from them; when a check fails on a field
(kdns.sources.trim names the field first in its messages: `spec.ports[0].port must be ...`), the
field's path is followed in the node tree and the problem points at that field's line. JSON files
are parsed by `json` (its syntax errors have exact positions) and composed by the YAML parser only
to find field positions, JSON being (nearly) YAML.

Trimming goes through `kdns.sources.trim`, as for the cluster watch, so a manifest means to kdns
exactly what the same object would mean coming from the apiserver. The apiserver also validates
names; files have no apiserver, so the checks on names that end up in DNS are done here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # PyYAML built without libyaml: the same, slower
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

from kdns.sources import pods
from kdns.sources.trim import TrimError, as_host, canonical_ip, trim
from kdns.sources.trim import labels as trim_labels
from kdns.state.model import (
    MCS_SERVICE_NAME_LABEL,
    SERVICE_NAME_LABEL,
    EndpointSet,
    KubeObject,
    Namespace,
    ObjectKey,
    Service,
)

Severity = Literal["error", "warning"]

#: The kinds kdns reads, with the apiVersion each must have.
KINDS: dict[str, str] = {
    "Service": "v1",
    "Endpoints": "v1",
    "Pod": "v1",
    "Namespace": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    # read for --external-zone (served only where one is asked for)
    "Ingress": "networking.k8s.io/v1",
    "Gateway": "gateway.networking.k8s.io/v1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
    "GRPCRoute": "gateway.networking.k8s.io/v1",
    "TLSRoute": "gateway.networking.k8s.io/v1",
    # read for --clusterset-domain, with the EndpointSlices labelled
    # multicluster.kubernetes.io/service-name
    "ServiceImport": "multicluster.x-k8s.io/v1alpha1",
    # read for --clusterset (as is the kdns.io/export annotation of Services)
    "ServiceExport": "multicluster.x-k8s.io/v1alpha1",
}

#: Older apiVersions that are still read, with the warning they deserve.
_OLD_VERSIONS: dict[tuple[str, str], str] = {
    ("discovery.k8s.io/v1beta1", "EndpointSlice"): (
        "discovery.k8s.io/v1beta1 EndpointSlice was removed in Kubernetes 1.25; "
        "read as discovery.k8s.io/v1, which is what it should say"
    ),
}

#: List kinds: `List` holds anything; typed lists (`kubectl get --raw` output) imply their
#: items' kind, which the apiserver leaves out of the items.
#: The kinds read, for the warning about the others.
_READ = ", ".join(list(KINDS)[:-1]) + " and " + list(KINDS)[-1]

_LIST_KINDS: dict[str, str | None] = {"List": None} | {f"{kind}List": kind for kind in KINDS}

_YAML_SUFFIXES = (".yaml", ".yml")
_JSON_SUFFIXES = (".json",)
#: The file names the file source reads.
SUFFIXES = _YAML_SUFFIXES + _JSON_SUFFIXES

# Name rules of the apiserver: Service names are RFC 1035 labels (they must start with a letter,
# being DNS labels under <ns>.svc); namespaces and pod hostnames are RFC 1123 labels.
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

# The field path at the start of a kdns.sources.trim message: `spec.ports[0].port must be ...`.
_FIELD_PATH = re.compile(r"[A-Za-z_][\w-]*(?:\[\d+\]|\.[A-Za-z_][\w-]*)*")
_SEGMENT = re.compile(r"\[(\d+)\]|\.?([A-Za-z_][\w-]*)")

_TYPE_NAMES = {
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
}


class _Loader(_BaseLoader):
    """The safe loader (libyaml's when available), noting duplicate keys as it builds mappings.

    PyYAML keeps the last of two equal keys without a word; kubectl rejects the file. Two
    `port:` lines in one entry are a classic editing slip, so they are errors here too.
    """

    duplicates: list[ScalarNode]

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key, _ in node.value:
            if isinstance(key, ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    self.duplicates.append(key)
                seen.add(key.value)
        return super().construct_mapping(node, deep)


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong (an error) or suspicious (a warning) in the manifests.

    `document` and `line` are 1-based; 0 means the problem is about the whole file (or, for
    `line`, that no position is known).
    """

    path: str
    message: str
    document: int = 0
    line: int = 0
    column: int = 0
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        """Errors make `kdns check` fail and keep a file's previous content in service."""
        return self.severity == "error"

    def __str__(self) -> str:
        where = self.path
        if self.line:
            where += f":{self.line}"
            if self.column:
                where += f":{self.column}"
        parts = [where] if where else []
        if self.document:
            parts.append(f"document {self.document}")
        if self.severity == "warning":
            parts.append("warning")
        parts.append(self.message)
        return ": ".join(parts)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an object was defined."""

    path: str
    document: int
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line} (document {self.document})"


Item = KubeObject | pods.Pod


@dataclass(frozen=True, slots=True)
class Record:
    """One object read from a manifest, with where it came from."""

    obj: Item
    origin: Origin
    #: For a Service: its target ports and IP families, needed to build endpoints from pods.
    targets: pods.ServiceTargets | None = None
    #: For a Service: its labels, which `--label-selector` reads (the store keeps no labels).
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> ObjectKey:
        return self.obj.key


@dataclass(frozen=True, slots=True)
class Parsed:
    """The result of parsing one file: what could be read, and what is wrong."""

    path: str
    records: tuple[Record, ...] = ()
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed): the file can be served as it is."""
        return not any(p.is_error for p in self.problems)


def parse(text: str, path: str, *, is_json: bool | None = None) -> Parsed:
    """Parse the text of one manifest file; `path` names it in problems and decides the format
    (`.json` is JSON, anything else YAML) unless `is_json` says otherwise."""
    if is_json is None:
        is_json = path.lower().endswith(_JSON_SUFFIXES)
    parser = _Parser(path)
    if is_json:
        parser.parse_json(text)
    else:
        parser.parse_yaml(text)
    return Parsed(path, tuple(parser.records), tuple(parser.problems))


def decode(data: bytes, path: str) -> Parsed:
    """Parse the bytes of one manifest file (UTF-8, with or without a byte order mark)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return Parsed(path, problems=(Problem(path, f"not UTF-8 text: {exc.reason}", 0, line),))
    return parse(text, path)


def read(path: str | os.PathLike[str]) -> Parsed:
    """Read and parse one manifest file; an unreadable file is a problem, not an exception."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as exc:
        return Parsed(name, problems=(Problem(name, f"cannot read: {exc.strerror or exc}"),))
    return decode(data, name)


def _child(node: Node, segment: str | int) -> Node | None:
    if isinstance(node, MappingNode) and isinstance(segment, str):
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == segment:
                return value  # type: ignore[no-any-return]
    if isinstance(node, SequenceNode) and isinstance(segment, int) and segment < len(node.value):
        return node.value[segment]  # type: ignore[no-any-return]
    return None


def _locate(node: Node, path: str) -> Node:
    """The node at `path` (`spec.ports[0].port`) below `node`, or the deepest that exists."""
    for match in _SEGMENT.finditer(path):
        index, name = match.groups()
        child = _child(node, int(index) if index is not None else name)
        if child is None:
            break
        node = child
    return node


def _field(message: str) -> str:
    """The field path a message starts with ("" when it starts with something else)."""
    match = _FIELD_PATH.match(message)
    if match is None or match.end() == len(message) or message[match.end()] not in " [":
        return ""
    return match.group(0)


@dataclass(slots=True)
class _Parser:
    path: str
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    _skipped: set[str] = field(default_factory=set)

    # -- formats ---------------------------------------------------------------------------------

    def parse_yaml(self, text: str) -> None:
        document = 0
        loader: _Loader | None = None
        try:
            loader = _Loader(text)
            while loader.check_node():
                node = loader.get_node()
                document += 1
                loader.duplicates = []
                data = loader.construct_document(node)
                for key in loader.duplicates:
                    self.problems.append(
                        Problem(
                            self.path,
                            f"duplicate key {key.value!r} (kubectl rejects this file)",
                            document,
                            key.start_mark.line + 1,
                        )
                    )
                self.document(document, data, node)
        except yaml.reader.ReaderError as exc:
            # Found before or while parsing, so its document is unknown; its position is not.
            before = text[: exc.position]
            line, column = before.count("\n") + 1, exc.position - before.rfind("\n")
            code = exc.character if isinstance(exc.character, int) else ord(exc.character)
            self.problems.append(
                Problem(
                    self.path,
                    f"unacceptable character #x{code:04x}: {exc.reason}",
                    0,
                    line,
                    column,
                )
            )
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            reason = " ".join(str(part) for part in (exc.context, exc.problem) if part)
            self.problems.append(
                Problem(
                    self.path,
                    f"YAML syntax error: {reason or exc}",
                    document + 1,
                    mark.line + 1 if mark else 0,
                    mark.column + 1 if mark else 0,
                )
            )
        except yaml.YAMLError as exc:
            self.problems.append(Problem(self.path, f"YAML error: {exc}", document + 1))
        finally:
            if loader is not None:
                loader.dispose()

    def parse_json(self, text: str) -> None:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            self.problems.append(
                Problem(self.path, f"JSON syntax error: {exc.msg}", 1, exc.lineno, exc.colno)
            )
            return
        node: Node | None
        try:
            node = yaml.compose(text, Loader=_BaseLoader)
        except yaml.YAMLError:
            node = None  # valid JSON that YAML rejects: lose field positions, nothing else
        self.document(1, data, node)

    # -- documents and objects ------------------------------------------------------------------

    def problem(
        self,
        message: str,
        document: int,
        node: Node | None,
        field_path: str = "",
        severity: Severity = "error",
    ) -> None:
        line = 0
        if node is not None:
            target = _locate(node, field_path) if field_path else node
            line = target.start_mark.line + 1
        self.problems.append(Problem(self.path, message, document, line, 0, severity))

    def document(self, document: int, data: Any, node: Node | None) -> None:
        if data is None:  # an empty document (a stray `---`) is allowed, as kubectl allows it
            return
        self.object(data, node, document, "", {})

    def object(
        self, obj: Any, node: Node | None, document: int, prefix: str, implied: Mapping[str, str]
    ) -> None:
        """Check and convert one object; `prefix` locates it inside a List (`items[3]: `)."""
        if not isinstance(obj, Mapping):
            what = _TYPE_NAMES.get(type(obj), type(obj).__name__)
            self.problem(
                f"{prefix}expected an object with apiVersion and kind, not {what}", document, node
            )
            return
        kind = obj.get("kind") or implied.get("kind")
        api = obj.get("apiVersion") or implied.get("apiVersion")
        if not isinstance(kind, str) or not kind:
            self.problem(f"{prefix}kind is missing", document, node, "kind")
            return
        if not isinstance(api, str) or not api:
            self.problem(f"{prefix}apiVersion is missing", document, node, "apiVersion")
            return
        if kind in _LIST_KINDS:
            self.list(obj, node, document, prefix, kind, api)
            return
        if kind not in KINDS:
            if kind not in self._skipped:
                self._skipped.add(kind)
                self.problem(
                    f"{prefix}skipping kind {kind}: kdns reads only {_READ}",
                    document,
                    node,
                    "kind",
                    "warning",
                )
            return
        old = _OLD_VERSIONS.get((api, kind))
        if old is not None:
            self.problem(f"{prefix}{old}", document, node, "apiVersion", "warning")
        elif api != KINDS[kind]:
            self.problem(
                f"{prefix}a {kind} has apiVersion {KINDS[kind]}, not {api!r}",
                document,
                node,
                "apiVersion",
            )
            return
        line = node.start_mark.line + 1 if node is not None else 0
        origin = Origin(self.path, document, line)
        imported = kind == "EndpointSlice" and bool(
            trim_labels_safe(obj).get(MCS_SERVICE_NAME_LABEL)
        )
        if imported:
            # An EndpointSlice of a ServiceImport (the Multi-Cluster Services API): kept apart
            # from the cluster's own slices; one with kubernetes.io/service-name as well also
            # answers for that service, as on a cluster, where both watches see it.
            ok, record = self._converted("ImportSlice", obj, origin, prefix, document, node)
            if not ok:
                return
            if record is not None:
                self.records.append(record)
        ok, record = self._converted(kind, obj, origin, prefix, document, node)
        if not ok:
            return
        if record is not None:
            self.records.append(record)
        elif kind == "EndpointSlice" and not imported:
            self.problem(f"{prefix}{_unused_slice(obj)}", document, node, "", "warning")

    def _converted(
        self,
        kind: str,
        obj: Mapping[str, Any],
        origin: Origin,
        prefix: str,
        document: int,
        node: Node | None,
    ) -> tuple[bool, Record | None]:
        """`convert`, with a refusal reported at the field it names: (False, None) then."""
        try:
            return True, self.convert(kind, obj, origin)
        except TrimError as exc:
            message = str(exc)
            self.problem(f"{prefix}{message}", document, node, _field(message))
            return False, None

    def list(
        self,
        obj: Mapping[str, Any],
        node: Node | None,
        document: int,
        prefix: str,
        kind: str,
        api: str,
    ) -> None:
        if kind == "List" and api != "v1":
            self.problem(
                f"{prefix}a List has apiVersion v1, not {api!r}", document, node, "apiVersion"
            )
            return
        items = obj.get("items")
        if items is None:
            return
        if not isinstance(items, list):
            self.problem(f"{prefix}items must be a list", document, node, "items")
            return
        item_kind = _LIST_KINDS[kind]
        implied = {"kind": item_kind, "apiVersion": api} if item_kind else {}
        items_node = _child(node, "items") if node is not None else None
        for i, item in enumerate(items):
            item_node = _child(items_node, i) if items_node is not None else None
            self.object(item, item_node or node, document, f"{prefix}items[{i}]: ", implied)

    def convert(self, kind: str, obj: Mapping[str, Any], origin: Origin) -> Record | None:
        """The record for one object; raises TrimError (field path first) when it is invalid."""
        if kind == "Pod":
            pod = pods.trim_pod(obj)
            _check_label(pod.namespace, _DNS1123_LABEL, "metadata.namespace", "namespace")
            _check_label(pod.hostname, _DNS1123_LABEL, "spec.hostname", "hostname", empty=True)
            _check_label(pod.subdomain, _DNS1123_LABEL, "spec.subdomain", "subdomain", empty=True)
            return Record(pod, origin)
        converted = trim(kind, obj)
        if converted is None:
            return None
        if isinstance(converted, Namespace):
            _check_label(converted.name, _DNS1123_LABEL, "metadata.name", "namespace name")
            return Record(converted, origin)
        _check_label(converted.namespace, _DNS1123_LABEL, "metadata.namespace", "namespace")
        if isinstance(converted, Service):
            _check_label(converted.name, _DNS1035_LABEL, "metadata.name", "Service name")
            if converted.type == "ExternalName":
                as_host(converted.external_name, "spec.externalName", wildcard=False)
            labels = tuple(sorted(trim_labels(obj).items()))
            return Record(converted, origin, pods.service_targets(obj), labels)
        if isinstance(converted, EndpointSet):
            _check_endpoints(kind, obj)
        return Record(converted, origin)


def _check_endpoints(kind: str, obj: Mapping[str, Any]) -> None:
    """What the apiserver refuses in endpoints and the trimmer lets by (on a cluster, the
    apiserver has checked): addresses of another family than a slice's or none at all, and
    hostnames that are no DNS label (a name's one label: `a.b` or `Web_1` would give SRV targets
    and PTR names that no query reaches)."""
    if kind == "EndpointSlice":
        family = obj.get("addressType") or "IPv4"
        for i, ep in enumerate(obj.get("endpoints") or ()):
            for j, address in enumerate(ep.get("addresses") or ()):
                canonical = canonical_ip(address)
                if (
                    canonical is None
                    or (":" in canonical) != (family == "IPv6")
                    or canonical.startswith("::ffff:")  # IPv4-mapped: the apiserver refuses it
                ):
                    raise TrimError(
                        f"endpoints[{i}].addresses[{j}] {address!r} is not an {family} address"
                    )
            # A slice's hostname is optional, but when given it must be a label: the apiserver
            # refuses `hostname: ""` there (a v1 Endpoints address takes "" for none).
            hostname = ep.get("hostname")
            if hostname is not None:
                _check_label(hostname, _DNS1123_LABEL, f"endpoints[{i}].hostname", "hostname")
        return
    for i, subset in enumerate(obj.get("subsets") or ()):
        for field_name in ("addresses", "notReadyAddresses"):
            for j, address in enumerate(subset.get(field_name) or ()):
                _check_label(
                    address.get("hostname") or "",
                    _DNS1123_LABEL,
                    f"subsets[{i}].{field_name}[{j}].hostname",
                    "hostname",
                    empty=True,
                )


def _check_label(
    value: str, rule: re.Pattern[str], where: str, what: str, *, empty: bool = False
) -> None:
    if empty and not value:
        return
    if len(value) > 63 or not rule.fullmatch(value):
        start = "a letter" if rule is _DNS1035_LABEL else "a letter or digit"
        raise TrimError(
            f"{where} {value!r} is not a valid {what}: lower-case letters, digits and '-', "
            f"starting with {start}, not ending with '-', at most 63 characters"
        )


def trim_labels_safe(obj: Mapping[str, Any]) -> dict[str, str]:
    """An object's labels, or none when they are malformed (the trimmer reports that)."""
    try:
        return trim_labels(obj)
    except TrimError:
        return {}


def _unused_slice(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    if not isinstance(labels, Mapping) or not labels.get(SERVICE_NAME_LABEL):
        return f"EndpointSlice has no {SERVICE_NAME_LABEL} label, so no service uses it"
    return f"EndpointSlice addressType {obj.get('addressType')!r} has no DNS records; ignored"
