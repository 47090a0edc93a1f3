"""`kdns changes`: a running kdns's change journal (`/changes` on its `--http`), one line each.

    14:02:11Z  serial 1733000042  web.shop.svc.cluster.local. A  10.1.0.1 10.1.0.2 -> 10.1.0.1
        (EndpointSlice shop/web-abc12)

(one line: wrapped here).

With `--follow` it asks again every second for what came after the serial of its last answer,
until Ctrl-C. When the journal no longer holds everything after the serial asked for (its ring
overflowed, or kdns restarted), a note on stderr says from which serial on it is complete.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kdns.ops.journal import LOAD, Entry

#: Seconds between two questions of --follow.
INTERVAL = 1.0
#: Seconds to wait for one answer.
TIMEOUT = 5.0


class ChangesError(Exception):
    """Why the journal could not be read: one line for the user."""


def fetch(
    server: tuple[str, int], since: int | None, name: str = "", timeout: float = TIMEOUT
) -> dict[str, Any]:
    """The body of `/changes` at `server` (the host and port of kdns's --http)."""
    host, port = server
    where = f"{host}:{port}"
    if ":" in host:
        where = f"[{host}]:{port}"
    params = {k: v for k, v in (("since", since), ("name", name)) if v is not None and v != ""}
    url = f"http://{where}/changes"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace").strip()
        raise ChangesError(f"/changes at {where}: HTTP {err.code}: {text}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ChangesError(f"cannot reach kdns at {where} (its --http): {reason}") from None
    try:
        body = json.loads(raw)
        if not isinstance(body, dict) or not isinstance(body.get("entries"), list):
            raise ValueError("no entries")
        return body
    except ValueError:
        raise ChangesError(f"/changes at {where}: not a kdns change journal") from None


def entry_from_json(data: dict[str, Any]) -> Entry:
    """An entry as `/changes` gives it, back into an `Entry`."""
    return Entry(
        serial=int(data["serial"]),
        time=datetime.fromisoformat(data["time"]).timestamp(),
        name=str(data["name"]),
        type=str(data["type"]),
        before=tuple(data["before"]),
        after=tuple(data["after"]),
        cause=str(data["cause"]),
    )


def line(entry: Entry) -> str:
    """One entry as a line: time, serial, name, type, before -> after, cause."""
    at = time.strftime("%H:%M:%S", time.gmtime(entry.time)) + "Z"
    head = f"{at}  serial {entry.serial}  {entry.name} {entry.type}"
    if entry.type == LOAD:
        return f"{head}  ({entry.cause})"
    # Addresses side by side; records whose text has spaces (SRV) apart, with commas.
    sep = ", " if any(" " in text for text in entry.before + entry.after) else " "
    before = sep.join(entry.before) or "(none)"
    after = sep.join(entry.after) or "(none)"
    return f"{head}  {before} -> {after}  ({entry.cause})"


def show(
    server: tuple[str, int],
    since: int | None,
    name: str,
    follow: bool,
    out: Callable[[str], None],
    note: Callable[[str], None],
    interval: float = INTERVAL,
) -> None:
    """Print the entries after `since` (the latest without it) with `out`; with `follow`, keep
    asking every `interval` seconds for newer ones, until interrupted. Raises `ChangesError`."""
    while True:
        body = fetch(server, since, name)
        entries = [entry_from_json(e) for e in body["entries"]]
        if since is not None and not body.get("complete", True):
            oldest = body.get("oldest")
            if oldest is None:
                note("the journal has not started: kdns has not finished loading")
            else:
                note(
                    f"the changes after serial {since} are not all kept; from serial {oldest} "
                    "on they are (--since " + str(oldest) + ")"
                )
        for entry in entries:
            out(line(entry))
        if body.get("more") and entries:
            # One page of many: the next one starts after the last serial of this one.
            since = entries[-1].serial
            continue
        if not follow:
            return
        # Everything up to the answer's serial is in the answer (both are read at one moment).
        serials = [e.serial for e in entries]
        if isinstance(body.get("serial"), int):
            serials.append(body["serial"])
        if serials:
            since = max(serials)
        time.sleep(interval)
