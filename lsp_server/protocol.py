"""The JSON-RPC protocol object: pygls' own, fed whole bodies by `framing.py` and stricter at the door.

What it adds to pygls (each a place where pygls drops a message JSON-RPC or LSP says to answer):
- a body that is not UTF-8 JSON gets -32700, one that is not a JSON-RPC 2.0 message -32600
  (`framing.decode_body`); a malformed notification is logged, never answered;
- only the top-level object is structured (pygls structures every nested object as if it might be
  a message, so a request-shaped object inside a notification's params was answered);
- a request whose params do not parse gets -32602 naming the method and what was wrong, and
  params are structured strictly: `"4"` or `true` where an integer belongs is refused, not converted;
- before `initialize`, a request other than `initialize` gets -32002 and a notification other than
  `exit` is dropped (`shutdown` included: it does not wedge the session); after `shutdown`, a
  request gets -32600 (the LSP specification's rules).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import cattrs
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.protocol import LanguageServerProtocol, default_converter

from lsp_server.framing import EnvelopeError, decode_body

log = logging.getLogger("fim-lsp")

ANSWERED = object()  # a request already answered with an error while it was parsed
SERVER_NOT_INITIALIZED = -32002
INVALID_REQUEST = -32600


def _strict(kind: str, accept: Callable[[Any], bool]):
    def hook(value: Any, _type: type) -> Any:
        if not accept(value):
            raise TypeError(f"expected {kind}, got {type(value).__name__} {value!r}")
        return value
    return hook


def strict_converter() -> cattrs.Converter:
    """lsprotocol's converter, refusing a value of the wrong JSON type instead of converting it
    (cattrs would read `"4"` and `true` as the integers 4 and 1)."""
    converter = default_converter()
    converter.register_structure_hook(int, _strict("an integer", lambda v: type(v) is int))
    converter.register_structure_hook(bool, _strict("a boolean", lambda v: type(v) is bool))
    converter.register_structure_hook(str, _strict("a string", lambda v: type(v) is str))
    converter.register_structure_hook(float, _strict("a number", lambda v: type(v) in (int, float)))
    return converter


class FimProtocol(LanguageServerProtocol):
    """pygls' protocol, answering what pygls drops (see the module docstring)."""

    on_exit: Callable[[], None] | None = None  # set by a transport where `exit` ends a connection, not the process

    def receive(self, data: bytes) -> None:
        """Handle one message body as the framing layer delivered it."""
        checked = decode_body(data)
        if isinstance(checked, EnvelopeError):
            log.warning("fim-lsp: %s", checked.reason)
            if checked.answer:
                self.send_error(checked.msg_id, checked.code, checked.reason)
            return
        message = checked.message
        method = message.get("method")
        is_request = "id" in message and method is not None
        if self._shutdown and method is not None and method != types.EXIT:
            if is_request:
                self.send_error(message["id"], INVALID_REQUEST,
                                "the server is shutting down: no request after `shutdown`")
            return
        if self._workspace is None and method not in (None, types.INITIALIZE, types.EXIT):
            if is_request:
                self.send_error(message["id"], SERVER_NOT_INITIALIZED,
                                f"the server is not initialized: send `initialize` before {method}")
            return
        if method == types.EXIT and self.on_exit is not None:
            self.on_exit()
            return
        structured = self.structure_message(message)
        self.handle_message(structured)

    def send_error(self, msg_id: Any, code: int, message: str) -> None:
        self._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})

    def structure_message(self, data: dict[str, Any]):
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if isinstance(data, dict) and "id" in data and "method" in data:
                cause = exc.__cause__
                detail = ("; ".join(cattrs.transform_error(cause)) if isinstance(cause, cattrs.ClassValidationError)
                          else str(cause))
                error = JsonRpcInvalidParams(f"invalid params for {data['method']}: {detail}")
                self._send_response(data["id"], error=error.to_response_error())
                return ANSWERED
            raise

    def handle_message(self, message):
        if message is not ANSWERED:
            super().handle_message(message)
