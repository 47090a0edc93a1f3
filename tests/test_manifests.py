"""Parsing one manifest file: what is read, and where each problem is."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import pytest

from kdns.sources.manifests import Origin, Parsed, Problem, decode, parse, read
from kdns.sources.pods import Pod, ServiceTargets, TargetPort
from kdns.state.model import EndpointSet, Namespace, Service, ServicePort


def yaml_file(text: str, path: str = "zones/test.yaml") -> Parsed:
    return parse(dedent(text).lstrip("\n"), path)


def messages(parsed: Parsed) -> list[str]:
    return [str(p) for p in parsed.problems]


def test_every_kind_with_its_origin() -> None:
    parsed = yaml_file(
        """
        # a comment before the first document
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          selector: {app: web}
          ports: [{name: http, port: 80, targetPort: 8080}]
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {name: web}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: web-abc
          namespace: shop
          labels: {kubernetes.io/service-name: web}
        endpoints: null
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web-0, labels: {app: web}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop}
        """
    )
    assert parsed.problems == ()
    assert parsed.ok
    assert [(r.key, r.origin) for r in parsed.records] == [
        (("Service", "default", "web"), Origin("zones/test.yaml", 1, 2)),
        (("Endpoints", "default", "web"), Origin("zones/test.yaml", 2, 9)),
        (("EndpointSlice", "shop", "web-abc"), Origin("zones/test.yaml", 3, 13)),
        (("Pod", "default", "web-0"), Origin("zones/test.yaml", 4, 21)),
        (("Namespace", "", "shop"), Origin("zones/test.yaml", 5, 25)),
    ]
    service = parsed.records[0]
    assert service.obj == Service(
        "default", "web", ports=(ServicePort("http", 80),), selector=(("app", "web"),)
    )
    assert service.targets == ServiceTargets((TargetPort("http", 80, "TCP", 8080),))
    assert isinstance(parsed.records[2].obj, EndpointSet)
    assert isinstance(parsed.records[3].obj, Pod)
    assert parsed.records[4].obj == Namespace("shop")


def test_field_error_points_at_the_field_line() -> None:
    parsed = yaml_file(
        """
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop}
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: web
        spec:
          ports:
            - name: http
              port: http
        """
    )
    assert messages(parsed) == [
        "zones/test.yaml:12: document 2: "
        "spec.ports[0].port must be a port number (1-65535), not 'http'"
    ]
    assert not parsed.ok
    assert [r.key for r in parsed.records] == [("Namespace", "", "shop")]


def test_missing_field_points_at_the_deepest_parent() -> None:
    parsed = yaml_file(
        """
        apiVersion: v1
        kind: Service
        metadata:
          namespace: shop
        """
    )
    assert messages(parsed) == ["zones/test.yaml:4: document 1: metadata.name is missing"]


def test_yaml_syntax_error_has_line_and_column() -> None:
    parsed = yaml_file(
        """
        apiVersion: v1
        kind: Namespace
        metadata: {name: a}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: b
        """
    )
    (problem,) = parsed.problems
    assert (problem.document, problem.line, problem.severity) == (2, 8, "error")
    assert problem.column > 0
    assert "YAML syntax error" in problem.message
    assert str(problem).startswith(f"zones/test.yaml:8:{problem.column}: document 2: YAML syntax")


def test_bad_indentation_is_a_syntax_error() -> None:
    parsed = yaml_file("apiVersion: v1\n kind: Service\n")
    assert [(p.line, p.document) for p in parsed.problems] == [(2, 1)]


def test_other_kinds_are_skipped_with_one_warning_per_kind() -> None:
    parsed = yaml_file(
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: a}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: b}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: c}
        """
    )
    assert messages(parsed) == [
        "zones/test.yaml:2: document 1: warning: skipping kind Deployment: kdns reads only "
        "Service, Endpoints, Pod, Namespace, EndpointSlice, Ingress, Gateway, HTTPRoute, "
        "GRPCRoute, TLSRoute, ServiceImport and ServiceExport",
        "zones/test.yaml:10: document 3: warning: skipping kind ConfigMap: kdns reads only "
        "Service, Endpoints, Pod, Namespace, EndpointSlice, Ingress, Gateway, HTTPRoute, "
        "GRPCRoute, TLSRoute, ServiceImport and ServiceExport",
    ]
    assert parsed.ok


@pytest.mark.parametrize(
    ("head", "message", "line"),
    [
        ("apiVersion: apps/v1\nkind: Service", "a Service has apiVersion v1, not 'apps/v1'", 1),
        ("apiVersion: v1\nkind: EndpointSlice", "has apiVersion discovery.k8s.io/v1, not 'v1'", 1),
        ("kind: Service", "apiVersion is missing", 1),
        ("apiVersion: v1", "kind is missing", 1),
    ],
)
def test_api_version_and_kind_are_checked(head: str, message: str, line: int) -> None:
    parsed = parse(f"{head}\nmetadata: {{name: x}}\n", "f.yaml")
    (problem,) = parsed.problems
    assert message in problem.message
    assert (problem.line, problem.severity) == (line, "error")
    assert parsed.records == ()


def test_v1beta1_endpoint_slice_is_read_with_a_warning() -> None:
    parsed = yaml_file(
        """
        apiVersion: discovery.k8s.io/v1beta1
        kind: EndpointSlice
        metadata:
          name: s
          labels: {kubernetes.io/service-name: web}
        addressType: IPv4
        endpoints: [{addresses: [10.0.0.1]}]
        """
    )
    assert [p.severity for p in parsed.problems] == ["warning"]
    assert "removed in Kubernetes 1.25" in parsed.problems[0].message
    assert [r.key for r in parsed.records] == [("EndpointSlice", "default", "s")]


def test_endpoint_slice_of_no_service_is_a_warning() -> None:
    parsed = yaml_file(
        """
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: s}
        addressType: IPv4
        """
    )
    assert parsed.records == ()
    assert [p.severity for p in parsed.problems] == ["warning"]
    assert "kubernetes.io/service-name" in parsed.problems[0].message


def test_list_items_are_read_and_located() -> None:
    parsed = yaml_file(
        """
        apiVersion: v1
        kind: List
        items:
          - apiVersion: v1
            kind: Service
            metadata: {name: a}
          - apiVersion: v1
            kind: Service
            metadata: {name: b}
            spec:
              type: Magic
        """
    )
    assert [r.key for r in parsed.records] == [("Service", "default", "a")]
    assert parsed.records[0].origin == Origin("zones/test.yaml", 1, 4)
    assert messages(parsed) == [
        "zones/test.yaml:11: document 1: items[1]: spec.type must be one of "
        "ClusterIP, NodePort, LoadBalancer, ExternalName, not 'Magic'"
    ]


def test_typed_list_items_without_kind_take_the_list_kind() -> None:
    # What the apiserver returns: the items of a ServiceList carry no kind or apiVersion.
    parsed = yaml_file(
        """
        apiVersion: v1
        kind: ServiceList
        items:
          - metadata: {name: a, namespace: x}
          - metadata: {name: b, namespace: x}
        """
    )
    assert parsed.problems == ()
    assert [r.key for r in parsed.records] == [("Service", "x", "a"), ("Service", "x", "b")]


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        ("{name: Web}", "metadata.name 'Web' is not a valid Service name"),
        ("{name: 1web}", "metadata.name '1web' is not a valid Service name"),
        ("{name: web, namespace: my_ns}", "metadata.namespace 'my_ns' is not a valid namespace"),
        ("{name: web-}", "metadata.name 'web-' is not a valid Service name"),
    ],
)
def test_names_must_be_dns_labels(meta: str, field: str) -> None:
    parsed = parse(f"apiVersion: v1\nkind: Service\nmetadata: {meta}\n", "f.yaml")
    (problem,) = parsed.problems
    assert problem.message.startswith(field)
    assert problem.line == 3


def test_pod_hostname_must_be_a_dns_label() -> None:
    parsed = parse(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  hostname: Web_0\n", "f.yaml"
    )
    (problem,) = parsed.problems
    assert problem.message.startswith("spec.hostname 'Web_0' is not a valid hostname")
    assert problem.line == 5


def test_non_object_documents_are_errors_and_empty_ones_are_not() -> None:
    parsed = yaml_file(
        """
        ---
        ---
        - a
        - list
        ---
        just a string
        """
    )
    assert messages(parsed) == [
        "zones/test.yaml:3: document 2: expected an object with apiVersion and kind, not a list",
        "zones/test.yaml:6: document 3: expected an object with apiVersion and kind, not a string",
    ]


def test_empty_file_is_fine() -> None:
    assert parse("", "f.yaml") == Parsed("f.yaml")
    assert parse("# only a comment\n", "f.yaml") == Parsed("f.yaml")


def test_json_object_and_its_errors() -> None:
    good = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}
    assert [r.key for r in parse(json.dumps(good), "svc.json").records] == [
        ("Service", "default", "web")
    ]
    bad_port = dict(good, spec={"ports": [{"port": -1}]})
    parsed = parse(json.dumps(bad_port, indent=2), "svc.json")
    assert messages(parsed) == [
        "svc.json:10: document 1: spec.ports[0].port must be a port number (1-65535), not -1"
    ]
    parsed = parse('{\n  "apiVersion": "v1",\n  "kind": \n}\n', "svc.json")
    assert messages(parsed) == ["svc.json:4:1: document 1: JSON syntax error: Expecting value"]


def test_decode_rejects_non_utf8_and_accepts_a_bom() -> None:
    parsed = decode(b"apiVersion: v1\nkind: Namespace\nmetadata: {name: \xff}\n", "f.yaml")
    assert [(p.line, p.message.split(":")[0]) for p in parsed.problems] == [(3, "not UTF-8 text")]
    bom = "\ufeffapiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n".encode()
    assert [r.key for r in decode(bom, "f.yaml").records] == [("Namespace", "", "a")]


def test_read_a_missing_file_is_a_problem(tmp_path: Path) -> None:
    parsed = read(tmp_path / "gone.yaml")
    assert [p.message for p in parsed.problems] == ["cannot read: No such file or directory"]


def test_problem_formats() -> None:
    assert str(Problem("a.yaml", "bad", 2, 12)) == "a.yaml:12: document 2: bad"
    assert str(Problem("a.yaml", "odd", 1, 3, severity="warning")) == (
        "a.yaml:3: document 1: warning: odd"
    )
    assert str(Problem("a.yaml", "syntax", 1, 3, 7)) == "a.yaml:3:7: document 1: syntax"
    assert str(Problem("a.yaml", "cannot read")) == "a.yaml: cannot read"
    assert str(Problem("", "range full")) == "range full"


def test_duplicate_keys_are_errors_as_kubectl_makes_them() -> None:
    parsed = yaml_file(
        """
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports:
            - port: 80
              port: 81
        """
    )
    assert messages(parsed) == [
        "zones/test.yaml:7: document 1: duplicate key 'port' (kubectl rejects this file)"
    ]
    assert not parsed.ok


def test_yaml_merge_keys_are_not_duplicates() -> None:
    parsed = yaml_file(
        """
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports:
            - &http {name: http, port: 80}
            - <<: *http
              <<: {protocol: UDP}
              name: http-udp
        """
    )
    assert parsed.problems == ()


def test_control_character_is_located() -> None:
    parsed = parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: a\x00}\n", "f.yaml")
    assert messages(parsed) == [
        "f.yaml:3:19: unacceptable character #x0000: control characters are not allowed"
    ]


@pytest.mark.parametrize(
    ("document", "line", "message"),
    [
        (
            "kind: Service\nmetadata: {name: x}\nspec:\n  type: ExternalName\n"
            "  externalName: a..b.example.com\n",
            6,
            "spec.externalName is not a host name: 'a..b.example.com'",
        ),
        (
            "kind: Service\nmetadata: {name: x}\nspec:\n  type: ExternalName\n"
            f"  externalName: {'a' * 64}.example.com\n",
            6,
            f"spec.externalName is not a host name: '{'a' * 64}.example.com'",
        ),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            "metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\n"
            "endpoints:\n- addresses: [10.0.0.1]\n- addresses: [10.1.0.999]\n",
            7,
            "endpoints[1].addresses[0] '10.1.0.999' is not an IPv4 address",
        ),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            "metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\n"
            "endpoints:\n- addresses: [10.0.0.1, 'fd00::9']\n",
            6,
            "endpoints[0].addresses[1] 'fd00::9' is not an IPv4 address",
        ),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            "metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}\naddressType: IPv6\n"
            "endpoints:\n- addresses: ['::ffff:10.9.1.2']\n",
            6,
            "endpoints[0].addresses[0] '::ffff:10.9.1.2' is not an IPv6 address",
        ),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            "metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}\naddressType: IPv6\n"
            "endpoints:\n- addresses: ['fd00::9']\n  hostname: a.b\n",
            7,
            "endpoints[0].hostname 'a.b' is not a valid hostname",
        ),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            "metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\n"
            "endpoints:\n- addresses: [10.0.0.1]\n  hostname: ''\n",
            7,
            "endpoints[0].hostname '' is not a valid hostname",
        ),
        (
            "kind: Endpoints\nmetadata: {name: s}\nsubsets:\n- addresses:\n"
            "  - {ip: 10.0.0.1, hostname: Web_1}\n",
            6,
            "subsets[0].addresses[0].hostname 'Web_1' is not a valid hostname",
        ),
        (
            "kind: Endpoints\nmetadata: {name: s}\nsubsets:\n- notReadyAddresses:\n"
            f"  - {{ip: 10.0.0.1, hostname: {'h' * 64}}}\n",
            6,
            f"subsets[0].notReadyAddresses[0].hostname '{'h' * 64}' is not a valid hostname",
        ),
    ],
)
def test_names_and_addresses_the_apiserver_refuses_are_refused_with_their_place(
    document: str, line: int, message: str
) -> None:
    # The line of the field (an `apiVersion: v1` line is put in front of the v1 ones).
    # Served, they gave SRV targets and PTR names no query reaches, or answers that could not be
    # encoded (SERVFAIL); `kdns check` said nothing.
    if not document.startswith("apiVersion"):
        document = "apiVersion: v1\n" + document
    parsed = parse(document, "f.yaml")
    (problem,) = parsed.problems
    assert problem.message.startswith(message), problem.message
    assert problem.line == line
    assert not parsed.records


def test_valid_hostnames_addresses_and_external_names_are_kept() -> None:
    parsed = parse(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        "metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\n"
        f"endpoints:\n- addresses: [10.0.0.1]\n  hostname: {'h' * 63}\n"
        "- addresses: [10.0.0.2]\n  hostname: 0-web\n"
        "- addresses: [10.0.0.3]\n  hostname: null\n"
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
        "spec: {type: ExternalName, externalName: Db.Example.COM.}\n"
        # A v1 Endpoints address takes "" for no hostname (the apiserver checks it only when
        # set); a slice does not.
        "---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: y}\n"
        "subsets:\n- addresses:\n  - {ip: 10.0.0.4, hostname: ''}\n",
        "f.yaml",
    )
    assert not parsed.problems
    assert len(parsed.records) == 3
