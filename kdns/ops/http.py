"""The HTTP endpoint: the page at `/`, `/health`, `/ready`, `/metrics`, `/changes?since=&name=`
and `/explain?name=&type=`.

Probes and a scrape need a handful of fixed routes, so a few lines on asyncio streams serve them
on the DNS server's own loop, where the state they report lives, with no second framework and no
thread (prometheus-client's own server would read counters from another thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from kdns.config import ConfigError

if TYPE_CHECKING:
    from kdns.serve.server import DnsServer

#: How long a client may take to send its request line and headers.
REQUEST_TIMEOUT = 5.0
MAX_HEADER_BYTES = 8192


def _response(status: int, reason: str, body: bytes, ctype: str = "text/plain") -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def page(server: DnsServer, peer: str) -> bytes:
    """The full HTTP response for a GET of the page, `/` (`kdns.ops.page`), from `peer`:
    like /changes, only for the addresses --allow-query allows (it lists the names clients
    asked, and the journal's changes)."""
    if server.acl is not None and not server.acl.allows(peer):
        server.acl.refuse("http")
        return _response(403, "Forbidden", b"/: this address is not in --allow-query\n")
    from kdns.ops.page import render_page

    return _response(200, "OK", (await render_page(server)).encode(), "text/html")


def route(server: DnsServer, target: str, peer: str = "") -> bytes:
    """The full HTTP response for a GET of `target` (path and query string) from `peer`.

    --allow-query covers /explain (it tells what DNS tells, and more) and /changes (the names
    that changed, which DNS would make a client guess), as it does the page (`page`), not the
    probes and /metrics, which the kubelet and Prometheus fetch from addresses DNS clients need
    not share.
    """
    path, _, query = target.partition("?")
    if path == "/changes":
        return _changes(server, query, peer)
    if path == "/metrics":
        from kdns.ops.metrics import CONTENT_TYPE, render_metrics

        ctype = CONTENT_TYPE.split(";", 1)[0]
        return _response(200, "OK", render_metrics(server.collector()), ctype)
    if path == "/explain" and not server.config.http_explain:
        return _response(404, "Not Found", b"/explain is off; start kdns with --http-explain\n")
    if path == "/explain" and server.acl is not None and not server.acl.allows(peer):
        server.acl.refuse("http")
        return _response(403, "Forbidden", b"/explain: this address is not in --allow-query\n")
    if path == "/explain":
        from kdns.ops.explain import ExplainError, explain

        params = parse_qs(query)
        name = params.get("name", [""])[0]
        qtype = params.get("type", ["A"])[0]
        try:
            text = explain(server.engine, name, qtype, server.scope)
        except ExplainError as err:
            return _response(400, "Bad Request", f"{err}\n".encode())
        return _response(200, "OK", text.encode())
    if path == "/health":
        if server.stopping:
            return _response(503, "Service Unavailable", b"shutting down\n")
        return _response(200, "OK", b"OK\n")
    if path == "/ready":
        if server.ready:
            return _response(200, "OK", b"OK\n")
        return _response(503, "Service Unavailable", b"not ready\n")
    return _response(404, "Not Found", b"not found\n")


def _changes(server: DnsServer, query: str, peer: str) -> bytes:
    """`/changes?since=SERIAL&name=SUBSTRING`: the change journal as JSON (`kdns.ops.journal`)."""
    from kdns.ops.journal import changes_json

    if server.acl is not None and not server.acl.allows(peer):
        server.acl.refuse("http")
        return _response(403, "Forbidden", b"/changes: this address is not in --allow-query\n")
    if not server.config.http_changes:
        return _response(
            404, "Not Found", b"/changes is off; start kdns without --no-http-changes\n"
        )
    params = parse_qs(query)
    since_text = params.get("since", [""])[0]
    since: int | None = None
    if since_text:
        # An SOA serial is a 32-bit number: at most 10 ASCII digits.
        if not (since_text.isascii() and since_text.isdigit() and len(since_text) <= 10):
            return _response(400, "Bad Request", b"since: expected an SOA serial (a number)\n")
        since = int(since_text)
    body = changes_json(server.journal, since, params.get("name", [""])[0])
    return _response(200, "OK", json.dumps(body).encode(), "application/json")


async def start_http(server: DnsServer, host: str, port: int) -> asyncio.Server:
    """Serve the probe endpoints on host:port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            if len(head) > MAX_HEADER_BYTES:
                return
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0]
            if method not in ("GET", "HEAD"):
                writer.write(_response(405, "Method Not Allowed", b"GET only\n"))
            else:
                peer = writer.get_extra_info("peername")
                client = peer[0] if peer else ""
                if path.partition("?")[0] in ("/", "/changes"):
                    # The journal's backlog, worked out a slice at a time, before it is read.
                    await server.journal.catch_up()
                if path.partition("?")[0] == "/":
                    reply = await page(server, client)
                else:
                    reply = route(server, path, client)
                if method == "HEAD":
                    reply = reply.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                writer.write(reply)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        return await asyncio.start_server(handle, host, port, limit=MAX_HEADER_BYTES)
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port} for HTTP: {err.strerror}") from None
