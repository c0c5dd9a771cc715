"""`fim-lsp serve`: start the language server on stdio or one TCP session."""
from __future__ import annotations

import argparse
import logging
import sys

from fim_lsp.secret import TOKEN_ENV, read_token
from lsp_server.address import is_loopback, parse_listen
from lsp_server.config import ConfigError, config_from_args


def main_serve(args: argparse.Namespace) -> int:
    from lsp_server.server import server
    from lsp_server.transport import serve_stdio, serve_tcp

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="fim-lsp: %(message)s")
    try:
        server.config = config_from_args(args)
        listen = parse_listen(args.tcp) if args.tcp else None
    except (ConfigError, ValueError) as exc:
        print(f"fim-lsp serve: {'--tcp ' if isinstance(exc, ValueError) and args.tcp else ''}{exc}", file=sys.stderr)
        return 2
    if listen is None:
        serve_stdio(server)
        return 0
    host, port = listen
    try:
        token = read_token(args, "fim-lsp serve")
    except (OSError, ValueError) as exc:
        print(f"fim-lsp serve: {exc}", file=sys.stderr)
        return 2
    if not is_loopback(host) and not token:
        print(f"fim-lsp serve: --tcp {host} is reachable from other machines; pass --token-file PATH or set "
              f"${TOKEN_ENV} (clients send it as initializationOptions.token) or bind 127.0.0.1", file=sys.stderr)
        return 2
    server.required_token = token
    server.start_config = server.config
    serve_tcp(server, host, port, handshake_timeout_s=args.handshake_timeout)
    return 0
