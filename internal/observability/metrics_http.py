"""The HTTPS /metrics endpoint of every kat-agent.

TLS with the node's certificate, and a client certificate from the cluster CA
required at the handshake; of those, only the roles in READ_ROLES (monitoring,
admin) get the metrics, a node certificate gets 403. A tiny HTTP/1.1 server on
asyncio (GET and HEAD, keep-alive, bounded headers and idle time) rather than
prometheus_client's threaded one: it needs the peer certificate of each request
and costs no thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import tempfile
from pathlib import Path

from internal.observability import metrics
from internal.security import rpc
from internal.security.certfiles import KeyPairFile

log = logging.getLogger(__name__)

READ_ROLES = frozenset({rpc.ROLE_MONITORING, rpc.ROLE_ADMIN})
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEADER_BYTES = 8192
IDLE_SECONDS = 75.0  # longer than Prometheus' scrape intervals, so connections are reused
HANDSHAKE_SECONDS = 10.0
RELOAD_SECONDS = 5.0  # how often a renewed certificate is looked for


def server_context(cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_pem.decode())
    # load_cert_chain reads files only: a private temporary directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="kat-metrics-") as tmp:
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_bytes(cert_pem)
        key.touch(0o600)
        key.write_bytes(key_pem)
        ctx.load_cert_chain(cert, key)
    return ctx


def _peer(writer: asyncio.StreamWriter) -> tuple[str, str]:
    """(common name, organization) of the verified client certificate."""
    cert = writer.get_extra_info("peercert") or {}
    attrs: dict[str, str] = {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            attrs.setdefault(key, value)
    return attrs.get("commonName", ""), attrs.get("organizationName", "")


def _response(status: str, body: bytes, content_type: str, *, head: bool, close: bool) -> bytes:
    headers = [
        f"HTTP/1.1 {status}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close" if close else "Connection: keep-alive",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + (b"" if head else body)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    cn, role = _peer(writer)
    allowed = role in READ_ROLES
    try:
        while True:
            try:
                async with asyncio.timeout(IDLE_SECONDS):
                    raw = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            except asyncio.LimitOverrunError:
                writer.write(
                    _response(
                        "431 Request Header Fields Too Large",
                        b"",
                        "text/plain",
                        head=False,
                        close=True,
                    )
                )
                return
            lines = raw.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (h.partition(":") for h in lines[1:] if h)
            }
            close = headers.get("connection", "").lower() == "close" or lines[0].endswith("1.0")
            if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
                writer.write(
                    _response(
                        "405 Method Not Allowed",
                        b"GET only\n",
                        "text/plain",
                        head=False,
                        close=True,
                    )
                )
                return
            head = parts[0] == "HEAD"
            path = parts[1].split("?", 1)[0]
            if path != "/metrics":
                reply = _response(
                    "404 Not Found", b"try /metrics\n", "text/plain", head=head, close=close
                )
            elif not allowed:
                text = (
                    f"certificate {cn!r} has role {role or 'none'!r}; metrics need "
                    f"{' or '.join(sorted(READ_ROLES))}\n"
                )
                reply = _response(
                    "403 Forbidden", text.encode(), "text/plain", head=head, close=close
                )
            else:
                reply = _response(
                    "200 OK", metrics.exposition(), CONTENT_TYPE, head=head, close=close
                )
            writer.write(reply)
            await writer.drain()
            if close:
                return
    except (ConnectionError, ssl.SSLError):
        return
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def start_metrics_server(
    host: str,
    port: int,
    cert_pem: bytes,
    key_pem: bytes,
    ca_pem: bytes,
    *,
    context: ssl.SSLContext | None = None,
) -> asyncio.Server:
    """Listening on host:port (0: any free port) once this returns."""
    return await asyncio.start_server(
        _handle,
        host,
        port,
        ssl=context or server_context(cert_pem, key_pem, ca_pem),
        limit=MAX_HEADER_BYTES,
        ssl_handshake_timeout=HANDSHAKE_SECONDS,
    )


async def serve_metrics(
    host: str,
    port: int,
    cert_pem: bytes,
    key_pem: bytes,
    ca_pem: bytes,
    *,
    pair: KeyPairFile | None = None,
) -> None:
    """Serve /metrics until cancelled. A port that cannot be bound is logged and the
    agent goes on without metrics: they must never keep containers from running. With
    `pair`, a renewed certificate is served from the next handshake on."""
    context = server_context(cert_pem, key_pem, ca_pem)
    try:
        server = await start_metrics_server(host, port, cert_pem, key_pem, ca_pem, context=context)
    except OSError as exc:
        log.error(
            "metrics endpoint not started: cannot listen on %s:%s: %s",
            host,
            port,
            exc.strerror or exc,
        )
        return
    log.info("metrics on https://%s:%s/metrics", host, port)
    async with server, asyncio.TaskGroup() as tg:
        if pair is not None:
            tg.create_task(_follow_renewals(context, pair))
        await server.serve_forever()


async def _follow_renewals(context: ssl.SSLContext, pair: KeyPairFile) -> None:
    seen = pair.version
    while True:
        await asyncio.sleep(RELOAD_SECONDS)
        pair.refresh()
        if pair.version != seen:
            seen = pair.version
            try:  # the context serves new handshakes with the pair loaded last
                context.load_cert_chain(pair.cert_path, pair.key_path)
            except (OSError, ssl.SSLError) as exc:
                log.warning("metrics certificate not reloaded: %s", exc)
