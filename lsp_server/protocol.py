"""The JSON-RPC protocol object: pygls' own, answering requests whose params do not parse.

pygls drops a request whose params fail to structure; JSON-RPC requires an answer to every request,
so such a request gets -32602 (invalid params) naming the method and what was wrong.
"""
from __future__ import annotations

from typing import Any

import cattrs
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.protocol import LanguageServerProtocol

ANSWERED = object()  # a request already answered with an error while it was parsed


class FimProtocol(LanguageServerProtocol):
    """pygls' protocol, answering requests whose params do not parse instead of dropping them."""

    def structure_message(self, data: dict[str, Any]):
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if isinstance(data, dict) and "id" in data and "method" in data:
                cause = exc.__cause__
                detail = "; ".join(cattrs.transform_error(cause)) if isinstance(cause, cattrs.ClassValidationError) else str(cause)
                error = JsonRpcInvalidParams(f"invalid params for {data['method']}: {detail}")
                self._send_response(data["id"], error=error.to_response_error())
                return ANSWERED
            raise

    def handle_message(self, message):
        if message is not ANSWERED:
            super().handle_message(message)
