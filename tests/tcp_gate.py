"""A TCP relay a test can close, to cut one process off a server while the others keep it.

Killing Redis cuts every node at once; a network that fails between one node and Redis cuts only
that node, and the others chat on with Redis meanwhile. The gate sits between the node and the
server (the node is given the gate's port): `close()` resets every relayed connection and refuses
new ones until `open()`.

It runs on the test's own event loop, relaying bytes as they come, over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpGate:
    """127.0.0.1:`port` relayed to 127.0.0.1:`target`, while open."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.is_open = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpGate:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        """Cut every relayed connection now (a reset, as a failed network shows), refuse new ones."""
        self.is_open = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def open(self) -> None:
        self.is_open = True

    async def stop(self) -> None:
        self.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if not self.is_open:
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}
        try:
            await asyncio.gather(
                self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer)
            )
        except asyncio.CancelledError:
            pass  # the test's loop is closing: its streams' callback must not see the cancellation
        finally:
            for writer in (client_writer, server_writer):
                self._writers.discard(writer)
                writer.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
