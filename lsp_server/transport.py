"""How the server is reached: LSP over stdio (the default) or one session over TCP."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading

from pygls.io_ import run_async
from pygls.lsp.server import LanguageServer

log = logging.getLogger("fim-lsp")


def serve_stdio(server: LanguageServer) -> None:
    """Speak LSP on stdin/stdout. LSP owns stdout: anything else printed goes to stderr."""
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    server.start_io(sys.stdin.buffer, protocol_out)


def serve_tcp(server: LanguageServer, host: str, port: int) -> None:
    """Serve one LSP session over TCP, then exit.

    pygls' own start_tcp hands every new connection the live session (the next answers go to the
    newcomer, who needs no token), so any connection after the first is closed at once.
    """
    stop_event = threading.Event()
    server._stop_event = stop_event
    taken = False

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal taken
        if taken:
            writer.close()
            return
        taken = True
        server.protocol.set_writer(writer)
        await run_async(stop_event=stop_event, reader=reader, protocol=server.protocol, logger=log,
                        error_handler=server.report_server_error)
        server.shutdown()

    async def serve() -> None:
        server._server = await asyncio.start_server(session, host, port)
        async with server._server:
            await server._server.serve_forever()

    try:
        asyncio.run(serve())
    except asyncio.CancelledError:
        pass
