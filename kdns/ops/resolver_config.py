"""What `kdns resolver` prints and `kdns resolver --apply` writes: split DNS for the cluster domain.

One job: the configuration that sends only the cluster domain to kdns, for the three resolvers
laptops run, each in the form its own documentation gives:

- `systemd-resolved`: a drop-in `/etc/systemd/resolved.conf.d/kdns-<domain>.conf` with a
  `[Resolve]` section, `DNS=127.0.0.1:1053` (the `ADDRESS:PORT` form, `[IPv6]:PORT` for IPv6,
  systemd 246 and later) and `Domains=~<domain>` (the `~` makes it a routing-only domain: names
  under it go to this server, and it is not added to the search list). Takes effect after
  `systemctl restart systemd-resolved`.
- `macos`: `/etc/resolver/<domain>` (resolver(5)) with `nameserver 127.0.0.1` and `port 1053`;
  the system picks it up by itself (`scutil --dns` lists it).
- `dnsmasq`: `server=/<domain>/127.0.0.1#1053` (dnsmasq(8), `--server`; `#` separates the port
  so that IPv6 addresses need no brackets) in `/etc/dnsmasq.d/kdns-<domain>.conf`.

Every file starts with a comment saying kdns wrote it. `apply()` writes the file under `root`
(tests pass a temporary directory) atomically, moving a file someone else wrote at that path
aside to `<path>.kdns-backup` first (a backup is never overwritten: when one exists already,
`apply()` refuses), replacing a file kdns wrote earlier in place, and returns the shell commands
that undo it; `undo()` does the same undo itself. Applying twice changes nothing. Root privileges
are the user's business: a `PermissionError` becomes a `ResolverError` that says to use sudo.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import shlex
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Literal, get_args

Kind = Literal["systemd-resolved", "macos", "dnsmasq"]
KINDS: tuple[Kind, ...] = get_args(Kind)
_BY_NAME: dict[str, Kind] = {k: k for k in KINDS}
BACKUP_SUFFIX = ".kdns-backup"
MARKER = "# Written by kdns"

_RELOAD: dict[Kind, list[str]] = {
    "systemd-resolved": ["systemctl restart systemd-resolved"],
    "macos": [],
    "dnsmasq": ["systemctl restart dnsmasq"],
}


class ResolverError(ValueError):
    """A configuration that cannot be made; the message is one line for the user."""


def _check(kind: str, domain: str, address: str, port: int) -> tuple[Kind, str, str]:
    checked = _BY_NAME.get(kind)
    if checked is None:
        raise ResolverError(f"unknown resolver {kind!r}: expected one of {', '.join(KINDS)}")
    name = domain.strip().rstrip(".").lower()
    labels = name.split(".")
    if not name or any(
        not label or len(label) > 63 or not all(c.isalnum() or c in "-_" for c in label)
        for label in labels
    ):
        raise ResolverError(f"bad domain {domain!r}")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ResolverError(f"bad address {address!r}: expected an IP address") from None
    if not 0 < port <= 65535:
        raise ResolverError(f"bad port {port}")
    return checked, name, str(ip)


def path_for(kind: str, domain: str) -> PurePosixPath:
    """Where the configuration for `domain` goes (absolute, on the real system)."""
    kind, name, _ = _check(kind, domain, "127.0.0.1", 53)
    if kind == "systemd-resolved":
        return PurePosixPath(f"/etc/systemd/resolved.conf.d/kdns-{name}.conf")
    if kind == "macos":
        return PurePosixPath(f"/etc/resolver/{name}")
    return PurePosixPath(f"/etc/dnsmasq.d/kdns-{name}.conf")


def render(kind: str, domain: str, address: str = "127.0.0.1", port: int = 1053) -> str:
    """The configuration file that sends `domain` (and only it) to kdns at address:port."""
    kind, name, ip = _check(kind, domain, address, port)
    header = f"{MARKER} (`kdns resolver`): send {name} to kdns at {ip} port {port}.\n"
    if kind == "systemd-resolved":
        server = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        return f"{header}[Resolve]\nDNS={server}\nDomains=~{name}\n"
    if kind == "macos":
        return f"{header}nameserver {ip}\nport {port}\n"
    return f"{header}server=/{name}/{ip}#{port}\n"


def detect(*, system: str | None = None, root: Path = Path("/")) -> Kind:
    """The resolver this machine uses; ResolverError when it cannot tell."""
    system = system or platform.system()
    if system == "Darwin":
        return "macos"
    if system == "Linux":
        if (root / "run/systemd/resolve").is_dir():
            return "systemd-resolved"  # the directory resolved creates while it runs
        if (root / "etc/dnsmasq.d").is_dir() or (
            root == Path("/") and shutil.which("dnsmasq") is not None
        ):
            return "dnsmasq"
    raise ResolverError(
        f"cannot tell which resolver this {system} machine uses; "
        f"pass one of {', '.join(KINDS)} explicitly"
    )


def _target(kind: str, domain: str, root: Path) -> tuple[PurePosixPath, Path]:
    real = path_for(kind, domain)
    return real, root / str(real).lstrip("/")


def apply(
    kind: str,
    domain: str,
    address: str = "127.0.0.1",
    port: int = 1053,
    *,
    root: Path = Path("/"),
) -> list[str]:
    """Write the configuration; return the shell commands that undo it."""
    text = render(kind, domain, address, port)
    real, path = _target(kind, domain, root)
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    try:
        current = path.read_text(encoding="utf-8", errors="replace") if path.exists() else None
        if current is not None and not current.startswith(MARKER):
            # someone else's file: keep it, unless a backup of an earlier one is in the way
            if backup.exists():
                raise ResolverError(
                    f"{real} and {real}{BACKUP_SUFFIX} both exist; move one of them away first"
                )
            os.replace(path, backup)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except PermissionError:
        raise ResolverError(f"cannot write {real}: permission denied (run with sudo)") from None
    except OSError as err:
        raise ResolverError(f"cannot write {real}: {err.strerror or err}") from None
    return undo_commands(kind, domain, backed_up=backup.exists())


def undo_commands(kind: str, domain: str, *, backed_up: bool) -> list[str]:
    """The shell commands that remove kdns's file (restoring a backup) and reload the resolver."""
    checked, _, _ = _check(kind, domain, "127.0.0.1", 53)
    real = str(path_for(kind, domain))
    if backed_up:
        first = f"mv {shlex.quote(real + BACKUP_SUFFIX)} {shlex.quote(real)}"
    else:
        first = f"rm {shlex.quote(real)}"
    return [first, *_RELOAD[checked]]


def activate_commands(kind: str) -> list[str]:
    """What to run after `apply()` for the resolver to read the new file."""
    checked, _, _ = _check(kind, "x", "127.0.0.1", 53)
    return list(_RELOAD[checked])


def undo(kind: str, domain: str, *, root: Path = Path("/")) -> bool:
    """Remove the file `apply()` wrote, putting back a backup; False when there was nothing."""
    real, path = _target(kind, domain, root)
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    try:
        if backup.exists():
            os.replace(backup, path)
            return True
        if path.exists():
            if not path.read_text(encoding="utf-8", errors="replace").startswith(MARKER):
                raise ResolverError(f"{real} was not written by kdns; left alone")
            path.unlink()
            return True
    except PermissionError:
        raise ResolverError(f"cannot change {real}: permission denied (run with sudo)") from None
    except OSError as err:
        raise ResolverError(f"cannot change {real}: {err.strerror or err}") from None
    return False
