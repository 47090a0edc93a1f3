"""`kdns resolver`: each configuration checked against its tool's documented syntax, and `--apply`
writing into a temporary root (never the real /etc).

- systemd-resolved: resolved.conf(5) is an INI file; the drop-in must parse with configparser,
  have exactly a `[Resolve]` section with `DNS=` in the `ADDRESS[:PORT]` / `[IPv6]:PORT` form and
  `Domains=` with the `~` routing-only prefix.
- macOS: resolver(5): one `keyword value` per line, keywords from its list, `#` comments.
- dnsmasq: dnsmasq(8): `--server=[/[<domain>]/[domain/]][<server>[#<port>]][@<interface>]
  [@<source-ip>[#<port>]]`, which the regular expression below transcribes.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
from pathlib import Path

import pytest

from kdns.ops.resolver_config import (
    BACKUP_SUFFIX,
    KINDS,
    ResolverError,
    activate_commands,
    apply,
    detect,
    path_for,
    render,
    undo,
    undo_commands,
)

# dnsmasq(8) --server grammar, as one regular expression (domain list, server, port, interface).
DNSMASQ_SERVER = re.compile(
    r"^server="
    r"(?:/(?:[A-Za-z0-9_.-]+/)+)?"  # /<domain>/[domain/]...
    r"(?P<server>[0-9A-Fa-f:.]+)"  # an IPv4 or IPv6 address, no brackets
    r"(?:#(?P<port>\d{1,5}))?"  # #<port>
    r"(?:@[A-Za-z0-9_.-]+)?"  # @<interface>
    r"(?:@[0-9A-Fa-f:.]+(?:#\d{1,5})?)?$"  # @<source-ip>[#<port>]
)
# resolver(5) keywords
MACOS_KEYWORDS = {"domain", "nameserver", "port", "search", "search_order", "timeout", "options"}
# resolved.conf(5) DNS= entry: ADDRESS[:PORT][%IFNAME][#SERVERNAME]
RESOLVED_DNS = re.compile(
    r"^(?:(?P<v4>\d{1,3}(?:\.\d{1,3}){3})(?::(?P<port4>\d+))?"
    r"|\[(?P<v6b>[0-9A-Fa-f:.]+)\](?::(?P<port6>\d+))?"
    r"|(?P<v6>[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*))"
    r"(?:%[A-Za-z0-9_.-]+)?(?:#[A-Za-z0-9_.-]+)?$"
)


def dnsmasq_server(line: str) -> tuple[str, int] | None:
    """(server, port) of a valid `server=` line, None when the grammar rejects it."""
    match = DNSMASQ_SERVER.match(line)
    if match is None:
        return None
    try:
        ipaddress.ip_address(match["server"])
    except ValueError:
        return None
    return match["server"], int(match["port"] or 53)


def parse_resolved(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(text)
    return parser


@pytest.mark.parametrize(
    ("address", "port", "dns"),
    [("127.0.0.1", 1053, "127.0.0.1:1053"), ("::1", 5353, "[::1]:5353")],
)
def test_systemd_resolved_drop_in(address: str, port: int, dns: str) -> None:
    text = render("systemd-resolved", "Cluster.Local.", address, port)
    parser = parse_resolved(text)
    assert parser.sections() == ["Resolve"]
    assert dict(parser["Resolve"]) == {"DNS": dns, "Domains": "~cluster.local"}
    match = RESOLVED_DNS.match(parser["Resolve"]["DNS"])
    assert match is not None
    host = match["v4"] or match["v6b"] or match["v6"]
    assert ipaddress.ip_address(host) == ipaddress.ip_address(address)
    assert int(match["port4"] or match["port6"]) == port
    assert text.startswith("#")  # says who wrote it
    assert path_for("systemd-resolved", "cluster.local").as_posix() == (
        "/etc/systemd/resolved.conf.d/kdns-cluster.local.conf"
    )


def test_macos_resolver_file() -> None:
    text = render("macos", "cluster.local", "127.0.0.1", 1053)
    entries = [
        line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")
    ]
    assert all(len(e) == 2 and e[0] in MACOS_KEYWORDS for e in entries)
    assert dict(entries) == {"nameserver": "127.0.0.1", "port": "1053"}  # type: ignore[arg-type]
    assert path_for("macos", "cluster.local").as_posix() == "/etc/resolver/cluster.local"


@pytest.mark.parametrize(
    ("address", "line"),
    [
        ("127.0.0.1", "server=/cluster.local/127.0.0.1#1053"),
        ("::1", "server=/cluster.local/::1#1053"),
    ],
)
def test_dnsmasq_line(address: str, line: str) -> None:
    text = render("dnsmasq", "cluster.local", address, 1053)
    lines = [x for x in text.splitlines() if x and not x.startswith("#")]
    assert lines == [line]
    assert dnsmasq_server(lines[0]) == (address, 1053)
    assert (
        path_for("dnsmasq", "cluster.local").as_posix() == "/etc/dnsmasq.d/kdns-cluster.local.conf"
    )


def test_grammar_regexes_reject_wrong_forms() -> None:
    # the checks above would pass anything if these accepted everything
    assert dnsmasq_server("server=/cluster.local/127.0.0.1:1053") is None
    assert dnsmasq_server("server=cluster.local/127.0.0.1#1053") is None
    assert dnsmasq_server("server=/cluster.local/[::1]#1053") is None
    assert dnsmasq_server("server=/a/b/10.0.0.1#53@eth0") == ("10.0.0.1", 53)
    assert not RESOLVED_DNS.match("127.0.0.1#1053:x y")
    assert not RESOLVED_DNS.match("::1:1053]")


@pytest.mark.parametrize(
    ("kind", "domain", "address", "port"),
    [
        ("bind", "cluster.local", "127.0.0.1", 1053),
        ("macos", "", "127.0.0.1", 1053),
        ("macos", "bad domain", "127.0.0.1", 1053),
        ("macos", "../../etc/passwd", "127.0.0.1", 1053),
        ("macos", "cluster.local", "localhost", 1053),
        ("macos", "cluster.local", "127.0.0.1", 0),
    ],
)
def test_bad_input(kind: str, domain: str, address: str, port: int) -> None:
    with pytest.raises(ResolverError):
        render(kind, domain, address, port)


def test_detect(tmp_path: Path) -> None:
    assert detect(system="Darwin", root=tmp_path) == "macos"
    with pytest.raises(ResolverError, match="cannot tell"):
        detect(system="Linux", root=tmp_path)
    (tmp_path / "etc/dnsmasq.d").mkdir(parents=True)
    assert detect(system="Linux", root=tmp_path) == "dnsmasq"
    (tmp_path / "run/systemd/resolve").mkdir(parents=True)
    assert detect(system="Linux", root=tmp_path) == "systemd-resolved"
    with pytest.raises(ResolverError):
        detect(system="Windows", root=tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_apply_writes_the_file_and_undo_removes_it(kind: str, tmp_path: Path) -> None:
    commands = apply(kind, "cluster.local", "127.0.0.1", 1053, root=tmp_path)
    target = tmp_path / path_for(kind, "cluster.local").relative_to("/")
    assert target.read_text() == render(kind, "cluster.local", "127.0.0.1", 1053)
    assert target.stat().st_mode & 0o777 == 0o644
    assert commands[0] == f"rm {path_for(kind, 'cluster.local')}"
    assert commands[1:] == activate_commands(kind)
    assert list(target.parent.iterdir()) == [target]  # no temporary file left behind
    # applying again changes nothing and makes no backup
    assert apply(kind, "cluster.local", "127.0.0.1", 1053, root=tmp_path) == commands
    assert not target.with_name(target.name + BACKUP_SUFFIX).exists()
    # a new port replaces kdns's own file in place
    apply(kind, "cluster.local", "127.0.0.1", 1054, root=tmp_path)
    assert "1054" in target.read_text()
    assert not target.with_name(target.name + BACKUP_SUFFIX).exists()
    assert undo(kind, "cluster.local", root=tmp_path)
    assert not target.exists()
    assert not undo(kind, "cluster.local", root=tmp_path)


def test_apply_backs_up_a_foreign_file_and_undo_restores_it(tmp_path: Path) -> None:
    target = tmp_path / "etc/resolver/cluster.local"
    target.parent.mkdir(parents=True)
    target.write_text("nameserver 10.0.0.10\n")
    commands = apply("macos", "cluster.local", root=tmp_path)
    backup = target.with_name("cluster.local" + BACKUP_SUFFIX)
    assert backup.read_text() == "nameserver 10.0.0.10\n"
    assert commands == [
        "mv /etc/resolver/cluster.local.kdns-backup /etc/resolver/cluster.local",
    ]
    apply("macos", "cluster.local", port=1054, root=tmp_path)
    assert backup.read_text() == "nameserver 10.0.0.10\n"  # the original backup survives
    assert undo("macos", "cluster.local", root=tmp_path)
    assert target.read_text() == "nameserver 10.0.0.10\n"
    assert not backup.exists()


def test_apply_refuses_to_clobber_a_backup(tmp_path: Path) -> None:
    target = tmp_path / "etc/resolver/cluster.local"
    target.parent.mkdir(parents=True)
    target.write_text("nameserver 10.0.0.10\n")
    target.with_name("cluster.local" + BACKUP_SUFFIX).write_text("older\n")
    with pytest.raises(ResolverError, match="both exist"):
        apply("macos", "cluster.local", root=tmp_path)
    assert target.read_text() == "nameserver 10.0.0.10\n"


def test_undo_leaves_foreign_files_alone(tmp_path: Path) -> None:
    target = tmp_path / "etc/resolver/cluster.local"
    target.parent.mkdir(parents=True)
    target.write_text("nameserver 10.0.0.10\n")
    with pytest.raises(ResolverError, match="not written by kdns"):
        undo("macos", "cluster.local", root=tmp_path)
    assert target.exists()


def test_permission_denied_says_sudo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    # a real read-only /etc cannot be made here when the tests run as root
    monkeypatch.setattr("kdns.ops.resolver_config.tempfile.mkstemp", denied)
    with pytest.raises(ResolverError, match=r"permission denied .*sudo"):
        apply("macos", "cluster.local", root=tmp_path)


def test_undo_commands_quote_paths() -> None:
    assert undo_commands("dnsmasq", "cluster.local", backed_up=False) == [
        "rm /etc/dnsmasq.d/kdns-cluster.local.conf",
        "systemctl restart dnsmasq",
    ]


def test_cli_routes_every_served_domain(tmp_path: Path) -> None:
    """`kdns resolver` prints one file per domain kdns answers: the cluster domain, each
    --external-zone and the --clusterset-domain, each the file `render` makes for it."""
    from typer.testing import CliRunner

    from kdns.cli import app

    out = CliRunner().invoke(
        app,
        [
            "resolver",
            "dnsmasq",
            "--external-zone",
            "Apps.Example.test.",
            "--external-zone",
            "example.org",
            "--clusterset-domain",
            "clusterset.local",
        ],
    )
    assert out.exit_code == 0, out.output
    domains = ["cluster.local", "apps.example.test", "example.org", "clusterset.local"]
    want = "".join(f"# {path_for('dnsmasq', d)}\n{render('dnsmasq', d)}" for d in domains)
    assert out.output == want
