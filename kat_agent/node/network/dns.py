"""The node's DNS server: the cluster zone (kat_agent/node/network/records.py) answered
from the latest endpoint view, everything else forwarded to the node's upstream resolvers.

It listens on the node's address on its instance network (the first host address of the
node's subnet, where containers' /etc/resolv.conf points), UDP and TCP. The socket is
bound with IP_FREEBIND, so it can be opened before the bridge (or overlay) interface that
carries the address exists. The wire format is dnslib's; the only bytes touched by hand
are a cached answer's 2-byte message id (the answer cache below), and TCP's length prefix.

The answer cache: dnslib needs ~0.5 ms to parse a query and build an answer, far too slow
for a busy node. Zone answers are therefore cached by the query's bytes after the id (the
question and flags) for the current view; each entry holds one packed answer per rotation
of the address list, served in turn. A new view clears the cache.

Upstreams: `KAT_DNS_UPSTREAM` (comma-separated `ip[:port]`; `none` = refuse external
names), else the nameservers of /etc/resolv.conf other than this server itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from dnslib import QTYPE, RCODE, RR, SOA, SRV, A, DNSError, DNSLabel, DNSRecord

from internal.observability import metrics
from kat_agent.node.network import records

log = logging.getLogger(__name__)

DNS_PORT = 53
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
FORWARD_TIMEOUT = 2.0
MAX_FORWARDS = 256  # queries forwarded at once; more are refused (bounded memory)
CACHE_ENTRIES = 4096
TCP_IDLE_SECONDS = 10.0
UDP_PAYLOAD = 512  # without EDNS


def parse_upstreams(
    text: str | None, resolv_conf: str = "", own: str = ""
) -> list[tuple[str, int]]:
    """`KAT_DNS_UPSTREAM` if set (`none`: no upstream), else resolv.conf's nameservers."""
    out: list[tuple[str, int]] = []
    if text is not None and text.strip():
        if text.strip().lower() == "none":
            return []
        for item in text.split(","):
            host, _, port = item.strip().rpartition(":") if ":" in item else (item, "", "")
            host = (host or item).strip()
            ipaddress.ip_address(host)  # ValueError on a bad address
            out.append((host, int(port) if port else DNS_PORT))
        return out
    for line in resolv_conf.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and parts[1] != own:
            out.append((parts[1], DNS_PORT))
    return out


def dns_port_from_env(environ: Mapping[str, str] | None = None) -> int:
    """KAT_DNS_PORT (tests and unprivileged runs), else 53."""
    env = os.environ if environ is None else environ
    return int(env.get("KAT_DNS_PORT") or DNS_PORT)


def upstreams_from_env(own: str, environ: Mapping[str, str] | None = None) -> list[tuple[str, int]]:
    env = os.environ if environ is None else environ
    conf = ""
    if env.get("KAT_DNS_UPSTREAM") is None:
        with contextlib.suppress(OSError):
            conf = Path("/etc/resolv.conf").read_text()
    return parse_upstreams(env.get("KAT_DNS_UPSTREAM"), conf, own)


@dataclass
class _Entry:
    answers: list[bytes]
    outcome: str = "zone"  # kat_dns_queries_total{answer}
    turn: int = 0

    def next(self) -> bytes:
        a = self.answers[self.turn]
        self.turn = (self.turn + 1) % len(self.answers)
        return a


class Resolver:
    """Answers for the zone (pure apart from the cache); says None for forwarding."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.table = records.ZoneTable.build(domain, ())
        self._cache: dict[tuple[bytes, int], _Entry] = {}

    def set_view(self, table: records.ZoneTable) -> None:
        self.table = table
        self._cache = {}

    def answer(self, data: bytes, max_size: int = UDP_PAYLOAD) -> bytes | None:
        """The packed answer to query `data`, or None: forward it (or drop garbage)."""
        key = (data[2:], max_size)
        hit = self._cache.get(key)
        if hit is not None:
            metrics.DNS_QUERIES.labels(hit.outcome).inc()
            return data[:2] + hit.next()[2:]
        try:
            query = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError, struct.error):
            return None
        if query.header.qr or len(query.questions) != 1:
            return None
        q = query.q
        qname = str(q.qname)
        if not self.table.in_zone(qname):
            return None
        qtype = QTYPE.get(q.qtype, str(q.qtype))
        found = self.table.lookup(qname, qtype)
        # One packed answer per rotation, so that the cache rotates like the table does.
        count = max(1, len(found.addresses), len(found.srv))
        answers = [self._pack(query, found, max_size)]
        for _ in range(count - 1):
            answers.append(self._pack(query, self.table.lookup(qname, qtype), max_size))
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        outcome = "nxdomain" if found.kind is records.Kind.NXDOMAIN else "zone"
        self._cache[key] = entry = _Entry(answers, outcome)
        metrics.DNS_QUERIES.labels(outcome).inc()
        return data[:2] + entry.next()[2:]

    def _soa(self) -> RR:
        zone = DNSLabel(self.table.domain)
        return RR(
            zone,
            QTYPE.SOA,
            ttl=records.TTL,
            rdata=SOA(
                DNSLabel(f"ns.{self.table.domain}"),
                DNSLabel(f"hostmaster.{self.table.domain}"),
                (1, 60, 30, 3600, records.TTL),
            ),
        )

    def _pack(self, query: DNSRecord, found: records.Lookup, max_size: int) -> bytes:
        reply = query.reply()
        reply.header.aa = 1
        reply.header.ra = 1
        qname = query.q.qname
        if found.kind is records.Kind.NXDOMAIN:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(self._soa())
        elif not found.addresses and not found.srv:
            reply.add_auth(self._soa())
        for ip in found.addresses:
            reply.add_answer(RR(qname, QTYPE.A, rdata=A(ip), ttl=records.TTL))
        for s in found.srv:
            target = DNSLabel(s.target)
            reply.add_answer(
                RR(
                    qname,
                    QTYPE.SRV,
                    rdata=SRV(records.SRV_PRIORITY, records.SRV_WEIGHT, s.port, target),
                    ttl=records.TTL,
                )
            )
            reply.add_ar(RR(target, QTYPE.A, rdata=A(s.address), ttl=records.TTL))
        packed = reply.pack()
        if len(packed) > max_size:
            # Too big for UDP: the client retries over TCP.
            short = query.reply()
            short.header.aa = 1
            short.header.tc = 1
            packed = short.pack()
        return packed


def _bind(kind: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (not isinstance: on 3.11 the selector's datagram transport is not a subclass)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.resolver.answer(data)
        if reply is not None:
            assert self.transport is not None
            self.transport.sendto(reply, addr)
            return
        self.server.forward_later(data, lambda r: self._send(r, addr), tcp=False)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)


class _UpstreamUdp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.reply.done():
            self.reply.set_result(data)


class DnsServer:
    """UDP and TCP listeners on `address:port`; `update(table)` swaps the view."""

    def __init__(self, address: str, port: int, domain: str, upstreams: list[tuple[str, int]]):
        self.address = address
        self.port = port
        self.upstreams = upstreams
        self.resolver = Resolver(domain)
        self._forwards = asyncio.Semaphore(MAX_FORWARDS)
        self._tasks: set[asyncio.Task[None]] = set()
        self.listening = asyncio.Event()  # set once both sockets are bound

    def update(self, table: records.ZoneTable) -> None:
        self.resolver.set_view(table)

    async def serve(self) -> None:
        """Serve until cancelled."""
        loop = asyncio.get_running_loop()
        udp = _bind(socket.SOCK_DGRAM, self.address, self.port)
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        try:
            tcp = _bind(socket.SOCK_STREAM, self.address, self.port)
            server = await asyncio.start_server(self._tcp_client, sock=tcp, backlog=128)
            log.info("DNS on %s:%d (upstream %s)", self.address, self.port, self.upstreams)
            self.listening.set()
            async with server:
                await server.serve_forever()
        finally:
            self.listening.clear()
            transport.close()
            for t in list(self._tasks):
                t.cancel()

    def forward_later(self, data: bytes, send: Callable[[bytes], None], *, tcp: bool) -> None:
        if self._forwards.locked():
            metrics.DNS_QUERIES.labels("refused").inc()
            send(self._refused(data) or b"")
            return
        task = asyncio.get_running_loop().create_task(self._forward_and_send(data, send, tcp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward_and_send(
        self, data: bytes, send: Callable[[bytes], None], tcp: bool
    ) -> None:
        async with self._forwards:
            reply = await self.forward(data, tcp=tcp)
        if reply:
            send(reply)

    def _refused(self, data: bytes, rcode: int = RCODE.REFUSED) -> bytes | None:
        try:
            query = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError, struct.error):
            return None
        if query.header.qr:
            return None
        reply = query.reply()
        reply.header.rcode = rcode
        return reply.pack()

    async def forward(self, data: bytes, *, tcp: bool) -> bytes | None:
        """Ask the upstreams in turn; REFUSED without any, SERVFAIL when none answers."""
        if self._refused(data) is None:
            metrics.DNS_QUERIES.labels("dropped").inc()
            return None  # not a query we can even read: drop it
        if not self.upstreams:
            metrics.DNS_QUERIES.labels("refused").inc()
            return self._refused(data)
        for host, port in self.upstreams:
            try:
                async with asyncio.timeout(FORWARD_TIMEOUT):
                    if tcp:
                        reply = await self._forward_tcp(data, host, port)
                    else:
                        reply = await self._forward_udp(data, host, port)
                metrics.DNS_QUERIES.labels("forwarded").inc()
                return reply
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("upstream %s:%d failed: %s", host, port, exc)
        metrics.DNS_QUERIES.labels("servfail").inc()
        return self._refused(data, RCODE.SERVFAIL)

    async def _forward_udp(self, data: bytes, host: str, port: int) -> bytes:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            _UpstreamUdp, remote_addr=(host, port)
        )
        try:
            transport.sendto(data)
            return await proto.reply
        finally:
            transport.close()

    async def _forward_tcp(self, data: bytes, host: str, port: int) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(struct.pack("!H", len(data)) + data)
            await writer.drain()
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            return await reader.readexactly(size)
        finally:
            writer.close()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_SECONDS):
                    (size,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(size)
                reply = self.resolver.answer(data, max_size=65535)
                if reply is None:
                    async with self._forwards:
                        reply = await self.forward(data, tcp=True)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
