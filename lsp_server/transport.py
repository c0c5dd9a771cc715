"""How the server is reached: LSP over stdio (the default) or over TCP, one session at a time.

Both read raw chunks and hand them to `framing.Framer` (bounded, resynchronising framing) and the
bodies to `FimProtocol.receive`; pygls' own reader loops (`start_io`, `run_async`) are not used.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable

from lsprotocol import types
from pygls.io_ import StdoutWriter

from lsp_server.framing import Body, Framer, FramingLimits

log = logging.getLogger("fim-lsp")

CHUNK_BYTES = 64 << 10  # bytes read at a time


async def pump(read: Callable[[], Awaitable[bytes]], server, stop: threading.Event,
               limits: FramingLimits = FramingLimits()) -> None:
    """Read chunks until end of stream or `stop`; deliver each body to the protocol. Nothing a
    client sends ends this loop but the end of its stream."""
    framer = Framer(limits)
    while not stop.is_set():
        chunk = await read()
        if not chunk:
            return
        for event in framer.feed(chunk):
            if not isinstance(event, Body):
                server.log(types.MessageType.Error, f"fim-lsp: framing error, message dropped: {event.reason}")
                continue
            try:
                server.protocol.receive(event.data)
            except Exception as exc:  # a notification that failed to parse or to run: logged, never fatal
                log.exception("fim-lsp: could not handle a message")
                server.report_server_error(exc, None)
            if stop.is_set():
                return
            # let the handler tasks this message started run their first step before the next message
            # is read (an async didChangeConfiguration sets the settings a following request must see)
            await asyncio.sleep(0)


def serve_stdio(server) -> None:
    """Speak LSP on stdin/stdout. LSP owns stdout: anything else printed goes to stderr."""
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer
    read_some = getattr(stdin, "read1", stdin.read)
    server._stop_event = stop = threading.Event()
    server.protocol.set_writer(StdoutWriter(protocol_out))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await pump(lambda: loop.run_in_executor(server.thread_pool, read_some, CHUNK_BYTES), server, stop)

    try:
        asyncio.run(main())
    except BrokenPipeError:
        log.error("fim-lsp: the client closed the connection")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()


def serve_tcp(server, host: str, port: int, handshake_timeout_s: float = 10.0,
              ready: Callable[[int], None] | None = None) -> None:
    """Serve LSP sessions over TCP, one after another, until the process is stopped.

    One session at a time (the server holds one client's documents): a connection made while
    another session is live is closed at once (pygls' own start_tcp would hand it the live
    session, token and all). A connection that has not completed `initialize` within
    `handshake_timeout_s` is dropped, so half a header cannot hold the port. When a session ends
    (the client left, its stream broke, `exit`, or the timeout) the server forgets everything the
    session sent and waits for the next connection; `exit` over TCP ends the session, not the server.
    """
    busy = False

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal busy
        if busy:
            writer.close()
            return
        busy = True
        stop = threading.Event()
        server._stop_event = stop
        loop = asyncio.get_running_loop()

        def end() -> None:
            stop.set()
            writer.transport.abort()

        def handshake_over() -> None:
            if not server.session_ready():
                log.warning("fim-lsp: a TCP connection did not complete initialize in %.0f s; dropped",
                            handshake_timeout_s)
                end()

        server.protocol.set_writer(writer)
        server.protocol.on_exit = end
        timer = loop.call_later(handshake_timeout_s, handshake_over)
        try:
            await pump(lambda: reader.read(CHUNK_BYTES), server, stop)
        except (ConnectionError, OSError) as exc:
            log.warning("fim-lsp: a TCP session ended: %s", exc)
        finally:
            timer.cancel()
            writer.transport.abort()
            server.end_session()
            busy = False

    async def serve() -> None:
        server._server = await asyncio.start_server(session, host, port)
        if ready is not None:
            ready(server._server.sockets[0].getsockname()[1])
        async with server._server:
            await server._server.serve_forever()

    try:
        asyncio.run(serve())
    except (asyncio.CancelledError, KeyboardInterrupt):
        pass
