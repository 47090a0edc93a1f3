"""The command line as a user meets it: `kdns check`, `kdns records`, errors, help, version."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import dns.zone
import pytest

from kdns import __version__
from kdns.config import Config
from tests.kdns_process import KDNS

ROOT = Path(__file__).resolve().parent.parent


def kdns(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KDNS, *args], capture_output=True, text=True, timeout=30, cwd=cwd or ROOT
    )


def test_version_and_help() -> None:
    out = kdns("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"kdns {__version__}"
    out = kdns("serve", "--help")
    assert out.returncode == 0
    for flag in (
        "--zones",
        "--listen",
        "--domain",
        "--ttl",
        "--pods",
        "--service-cidr",
        "--http",
        "--kubeconfig",
        "--context",
        "--in-cluster",
        "--namespace",
        "--label-selector",
        "--startup-timeout",
        "--allow-query",
        "--allow-query-drop",
    ):
        assert flag in out.stdout, flag


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["serve", "--bogus"], 2, "No such option: --bogus"),
        (["serve", "--ttl", "3601"], 2, "--ttl"),
        (["serve", "--ttl", "-1"], 2, "--ttl"),
        (["serve", "--pods", "trusted"], 1, "--pods must be one of insecure, verified, disabled"),
        (["serve", "--listen", "localhost"], 1, "expected HOST:PORT"),
        (["serve", "--listen", "127.0.0.1:99999"], 1, "bad port"),
        (["serve", "--domain", "a..b"], 1, "bad domain"),
        (["serve", "--service-cidr", "10.0.0.0/99"], 1, "bad --service-cidr"),
        (["serve", "--allow-query", "10.0.0.0/33"], 1, "bad --allow-query '10.0.0.0/33'"),
        (["serve", "--allow-query", "foo"], 1, "bad --allow-query 'foo'"),
        (["serve", "--zones-watch", "sometimes"], 1, "--zones-watch must be one of"),
        (["serve", "--allow-query-drop"], 1, "--allow-query-drop needs --allow-query"),
        (["serve", "--http-show-clients"], 1, "--http-show-clients needs --http"),
        (["serve", "--zones", "/nonexistent/zones", "--listen", "127.0.0.1:0"], 1, "/nonexistent"),
        (
            ["serve", "--kubeconfig", "/nonexistent/kubeconfig", "--listen", "127.0.0.1:0"],
            1,
            "/nonexistent/kubeconfig",
        ),
        (["records", "--zones", "/nonexistent/zones"], 1, "/nonexistent/zones"),
        (
            ["serve", "--external-zone", "Cluster.Local.", "--listen", "127.0.0.1:0"],
            1,
            "every --cluster, --external-zone, --clusterset-domain and --clusterset needs a zone",
        ),
        (
            ["serve", "--clusterset-domain", "cluster.local", "--listen", "127.0.0.1:0"],
            1,
            "every --cluster, --external-zone, --clusterset-domain and --clusterset needs a zone",
        ),
        (
            ["serve", "--clusterset", "a.test", "--clusterset-domain", "a.test"],
            1,
            "every --cluster, --external-zone, --clusterset-domain and --clusterset needs a zone",
        ),
        (["serve", "--clusterset", "cs.test", "--cluster-id", "a.b"], 1, "'a.b' is no DNS label"),
        (
            ["serve", "--clusterset", "cs.test", "--cluster-id", "x", "--cluster", "X=x.test"],
            1,
            "--clusterset: two clusters have the same id (x, x)",
        ),
        (["serve", "--clusterset-domain", "a..b"], 1, "bad domain 'a..b'"),
        (["serve", "--external-zone", "a..b"], 1, "bad domain 'a..b'"),
    ],
)
def test_user_errors_are_one_line(args: list[str], code: int, message: str) -> None:
    out = kdns(*args)
    assert out.returncode == code, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("kdns: error: ")
    assert message in lines[0]
    assert "Traceback" not in out.stderr


#: Config fields whose flag is singular because it is repeated.
_REPEATED = {
    "namespaces": "--namespace",
    "clusters": "--cluster",
    "upstreams": "--upstream",
    "external_zones": "--external-zone",
}


def test_every_config_field_has_a_flag() -> None:
    # A field no flag sets is a setting nobody can change and a default nobody reads twice.
    help_text = kdns("serve", "--help").stdout
    missing = [
        f.name
        for f in dataclasses.fields(Config)
        if _REPEATED.get(f.name, "--" + f.name.replace("_", "-")) not in help_text
    ]
    assert missing == []


def test_check_missing_directory() -> None:
    out = kdns("check", "/nonexistent/zones")
    assert out.returncode == 1
    assert out.stdout.strip() == "/nonexistent/zones: no such directory"


def test_check_shipped_zones_is_clean() -> None:
    out = kdns("check", "zones")
    assert out.returncode == 0, out.stdout + out.stderr


def test_check_reports_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n"
    )
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports:\n  - port: http\n"
    )
    (tmp_path / "broken.yaml").write_text("kind: Service\nmetadata: [unclosed\n")
    out = kdns("check", str(tmp_path))
    assert out.returncode == 1
    text = out.stdout
    assert f"{tmp_path}/bad.yaml:10:" in text and "document 2" in text
    assert "spec.ports[0].port" in text
    assert f"{tmp_path}/broken.yaml:" in text
    assert "good.yaml" not in text


def test_records_is_a_valid_sorted_zone_file() -> None:
    out = kdns("records", "--zones", "zones")
    assert out.returncode == 0, out.stderr
    body = out.stdout
    lines = [line for line in body.splitlines() if line and not line.startswith(";")]
    # Parses as a zone file (relativised to nothing: all names are absolute).
    dns.zone.from_text(body, origin="cluster.local.", relativize=False, check_origin=False)
    assert any(
        line.split()[0] == "my-service.default.svc.cluster.local." and line.split()[3] == "A"
        for line in lines
    )
    etcd = [line.split() for line in lines if line.startswith("etcd-k8s.kube-system")]
    assert any(fields[3] == "A" for fields in etcd)
    for ip in ("178.104.163.38", "178.104.163.187", "178.104.163.243"):
        dashed = ip.replace(".", "-")
        assert f"{dashed}.etcd-k8s.kube-system.svc.cluster.local." in body
    # Deterministic: same input, same output (allocated ClusterIPs included).
    assert kdns("records", "--zones", "zones").stdout == body


def test_records_other_domain(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\n"
        "spec: {clusterIP: 10.0.0.7}\n"
    )
    out = kdns("records", "--zones", str(tmp_path), "--domain", "Corp.Internal.")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert ["a.x.svc.corp.internal.", "5", "IN", "A", "10.0.0.7"] in rows
    assert ["7.0.0.10.in-addr.arpa.", "5", "IN", "PTR", "a.x.svc.corp.internal."] in rows


def test_serve_where_there_is_no_zones_directory_says_what_else_it_can_serve(
    tmp_path: Path,
) -> None:
    def serve_here(kubeconfig: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=kubeconfig)
        return subprocess.run(
            [*KDNS, "serve", "--listen", "127.0.0.1:0"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            env=env,
        )

    out = serve_here(str(tmp_path / "config"))
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"kdns: error: no zones/ directory in {tmp_path}; give --zones DIR, or a cluster: "
        '--kubeconfig FILE (KUBECONFIG is set: --kubeconfig "$KUBECONFIG")'
    )
    out = serve_here(f"{tmp_path / 'a'}:{tmp_path / 'b'}")  # a list: name one of them
    assert out.stderr.strip().endswith("(KUBECONFIG is set: pass one of its files)")
