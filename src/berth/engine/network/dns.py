"""The embedded DNS server of user-defined networks (dnslib for the wire format).

One UDP and one TCP listener on each user network's gateway address, port 53. A
question for a name known on the asking container's networks (container names,
``--network-alias``, compose service aliases, the short id) is answered with every
matching address (several A records for a scaled service; AAAA records for the
IPv6 addresses of networks with IPv6); anything else is
forwarded to the host's resolvers from ``/etc/resolv.conf`` and the answer relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from collections.abc import Callable

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord  # type: ignore[import-untyped]

Lookup = Callable[[str, str], list[str] | None]  # (client address, name) -> addresses
TTL = 600


def host_resolvers(path: str = "/etc/resolv.conf") -> list[str]:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return []
    return re.findall(r"^\s*nameserver\s+(\S+)", text, re.M)


class Resolver:
    """Answers one query packet (shared by every listener of the daemon)."""

    def __init__(self, lookup: Lookup, upstreams: Callable[[], list[str]] = host_resolvers):
        self.lookup = lookup
        self.upstreams = upstreams

    async def answer(self, packet: bytes, client: str, forward: bool) -> bytes | None:
        try:
            query = DNSRecord.parse(packet)
        except Exception:  # not DNS: ignore, as a resolver does
            return None
        if not query.questions:
            return None
        question = query.q
        name = str(question.qname).rstrip(".").lower()
        addresses = self.lookup(client, name)
        if addresses is not None:
            reply = query.reply()
            for address in addresses:
                if ":" in address and question.qtype in (QTYPE.AAAA, QTYPE.ANY):
                    rdata = AAAA(address)
                    reply.add_answer(RR(question.qname, QTYPE.AAAA, rdata=rdata, ttl=TTL))
                elif ":" not in address and question.qtype in (QTYPE.A, QTYPE.ANY):
                    reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(address), ttl=TTL))
            return bytes(reply.pack())
        if forward:
            for server in self.upstreams():
                answer = await _udp_query(server, packet)
                if answer is not None:
                    return answer
        reply = query.reply()
        reply.header.rcode = RCODE.SERVFAIL if forward else RCODE.NXDOMAIN
        return bytes(reply.pack())


async def _udp_query(server: str, packet: bytes, timeout: float = 3.0) -> bytes | None:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (server, 53))
        await loop.sock_sendall(sock, packet)
        return await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
    except (OSError, TimeoutError):
        return None
    finally:
        sock.close()


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, forward: bool) -> None:
        self.resolver = resolver
        self.forward = forward
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.ensure_future(self._reply(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = await self.resolver.answer(data, addr[0], self.forward)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


class Listener:
    """UDP and TCP on (address, port) for one network."""

    def __init__(self, resolver: Resolver, address: str, forward: bool, port: int = 53) -> None:
        self.resolver = resolver
        self.address = address
        self.port = port
        self.forward = forward
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UDP(self.resolver, self.forward), local_addr=(self.address, self.port)
        )
        self.udp = transport
        self.tcp = await asyncio.start_server(self._tcp_client, self.address, self.port)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        try:
            while True:
                size = struct.unpack(">H", await reader.readexactly(2))[0]
                packet = await reader.readexactly(size)
                answer = await self.resolver.answer(packet, peer[0], self.forward)
                if answer is None:
                    break
                writer.write(struct.pack(">H", len(answer)) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
            with contextlib.suppress(Exception):
                await self.tcp.wait_closed()
