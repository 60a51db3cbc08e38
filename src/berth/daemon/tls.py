"""TLS for berthd's TCP listeners, with the half-close Docker's clients rely on.

``docker run`` and ``docker exec`` end their stdin by closing the write side of the
hijacked connection (over TLS: a ``close_notify``) and keep reading the output.
asyncio's own TLS transport shuts the whole connection down at a ``close_notify``,
so the output would be lost. Here each TLS connection is terminated with
``ssl.MemoryBIO`` and relayed over a socketpair into the same aiohttp server the
unix sockets use: a ``close_notify`` becomes ``shutdown(SHUT_WR)`` on the relay,
and the daemon's answer still flows back encrypted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

CHUNK = 65536


class TLSListener:
    """Accepts TLS clients on ``address:port`` for ``protocol_factory`` (aiohttp's
    ``runner.server``). Each connection is one task; :meth:`close` ends them all."""

    def __init__(
        self,
        protocol_factory: Callable[[], Any],
        context: ssl.SSLContext,
        address: str,
        port: int,
    ) -> None:
        self.factory = protocol_factory
        self.context = context
        self.address = address
        self.port = port
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accepted, self.address, self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self._relay(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError):
            pass  # a client that fails the handshake or goes away: nothing to report
        finally:
            self.tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=True)

        async def flush() -> None:
            data = outgoing.read()
            if data:
                writer.write(data)
                await writer.drain()

        while True:  # the handshake, client certificate checked by the context
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await flush()
                data = await reader.read(CHUNK)
                if not data:
                    return
                incoming.write(data)
        await flush()

        inner, outer = socket.socketpair()
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(self.factory, inner)
        except BaseException:
            inner.close()
            outer.close()
            raise
        up_reader, up_writer = await asyncio.open_connection(sock=outer)

        async def from_client() -> None:
            while True:
                try:
                    chunk = tls.read(CHUNK)
                except ssl.SSLWantReadError:
                    await flush()  # TLS 1.3 may want to answer (key updates)
                    data = await reader.read(CHUNK)
                    if not data:
                        break  # the client closed without close_notify
                    incoming.write(data)
                    continue
                except ssl.SSLZeroReturnError:
                    break  # close_notify: the client is done writing
                if not chunk:
                    break
                up_writer.write(chunk)
                await up_writer.drain()
            with contextlib.suppress(OSError):
                up_writer.write_eof()  # the half-close the daemon sees

        async def to_client() -> None:
            while data := await up_reader.read(CHUNK):
                tls.write(data)
                await flush()
            with contextlib.suppress(ssl.SSLError):
                tls.unwrap()
            await flush()

        reading = asyncio.ensure_future(from_client())
        try:
            await to_client()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading
            up_writer.close()
