"""A TCP gate in front of the emulator: "WaveSpeed is down" without losing its state.

Stopping the emulator process would also wipe its predictions and media (it keeps
them in memory), which the real service never does: every poll of an earlier
prediction would then get a 404 and every earlier output URL would break. The gate
is what an outage looks like from the worker's side instead: while it is down,
connections are refused and open ones are reset, and the emulator behind it keeps
running its predictions. Workers and output URLs go through the gate; the harness
reads the emulator's introspection endpoints directly.

Run as its own process (so the harness's GIL never slows the workload down):
``python -m tests.chaos.gate LISTEN_PORT UPSTREAM_PORT``. SIGUSR1 takes it down,
SIGUSR2 brings it back up on the same port, SIGTERM stops it. It prints one line per
change (``gate up``/``gate down: N connections reset``) for the harness to wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import sys

HOST = "127.0.0.1"
CHUNK = 65536


class Gate:
    def __init__(self, listen_port: int, upstream_port: int) -> None:
        self.listen_port = listen_port
        self.upstream_port = upstream_port
        self.server: asyncio.Server | None = None
        self.open: set[asyncio.StreamWriter] = set()
        self.stopped = asyncio.Event()

    async def up(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(
                self._serve, HOST, self.listen_port, reuse_address=True
            )
        print("gate up", flush=True)

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        cut = len(self.open)
        for writer in list(self.open):
            _reset(writer)
        self.open.clear()
        print(f"gate down: {cut} connections reset", flush=True)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:
            _reset(client)
            return
        self.open.update((client, upstream))
        try:
            await asyncio.gather(_pipe(client_reader, upstream), _pipe(upstream_reader, client))
        finally:
            for writer in (client, upstream):
                self.open.discard(writer)
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a failing load balancer would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def main(listen_port: int, upstream_port: int) -> None:
    gate = Gate(listen_port, upstream_port)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: asyncio.ensure_future(gate.down()))
    loop.add_signal_handler(signal.SIGUSR2, lambda: asyncio.ensure_future(gate.up()))
    loop.add_signal_handler(signal.SIGTERM, gate.stopped.set)
    await gate.up()
    await gate.stopped.wait()
    await gate.down()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
