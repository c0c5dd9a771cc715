"""LSP base-protocol framing that survives any byte stream: bytes in, whole message bodies out.

An LSP message is a header block (`Name: value` lines, ended by an empty line) and a body of exactly
`Content-Length` bytes. pygls' reader matches one exact spelling (`Content-Length: N\\r\\n`),
converts N unbounded and reads that many bytes before looking at anything else, so a huge, negative,
lowercase or missing length crashes it or stalls it forever. This parser is incremental and pure:
`Framer.feed(chunk)` returns the events the bytes complete, and nothing it holds grows past
`FramingLimits` whatever a header claims.

Header rules (LSP base protocol, with one documented leniency):
- names are case-insensitive (`content-length` = `Content-Length`); `Content-Type` is ignored;
- lines end in `\\r\\n` as the specification says; a bare `\\n` is accepted too (many hand-written
  clients send it, and accepting it costs nothing: a header value never holds a newline);
- `Content-Length` must be ASCII digits and at most `max_message_bytes`; anything else is refused.

A refused header or an oversized message is reported as a `Refusal` and the parser resynchronises:
it drops bytes until the next `Content-Length:` header name (any case) and starts a header block
there. Bodies are never pre-allocated: a body's bytes are held only as they arrive.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

_HEADER_START = re.compile(rb"content-length[ \t]*:", re.IGNORECASE)
_KEEP_FOR_MATCH = len(b"content-length \t:") + 8  # tail kept while skipping, so a name split across chunks is found


@dataclass(frozen=True, slots=True)
class FramingLimits:
    """How much one message may hold."""

    max_message_bytes: int = 64 << 20  # largest body accepted (a 5 MB file sent as JSON is ~6 MB)
    max_header_bytes: int = 8 << 10  # largest header block (real clients send under 100 bytes)


@dataclass(frozen=True, slots=True)
class Body:
    """One complete message body (not yet decoded)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Refusal:
    """A header block or a message that was dropped, and why (for the log)."""

    reason: str


Event = Body | Refusal


class Framer:
    """Incremental LSP framing: `feed` bytes, get the bodies and refusals they complete."""

    def __init__(self, limits: FramingLimits = FramingLimits()) -> None:
        self.limits = limits
        self._buffer = bytearray()
        self._length: int | None = None  # the body's length once its header block is read
        self._skipping = False  # resynchronising: dropping bytes until the next Content-Length name

    @property
    def buffered(self) -> int:
        """Bytes held now (bounded by the limits, whatever the stream claims)."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[Event]:
        """Take the next bytes of the stream; the events they complete, in order."""
        self._buffer += chunk
        events: list[Event] = []
        while True:
            if self._skipping and not self._resync():
                return events
            if self._length is None:
                progress = self._read_headers(events)
            else:
                progress = self._read_body(events)
            if not progress:
                return events

    def _refuse(self, events: list[Event], reason: str) -> None:
        events.append(Refusal(reason))
        self._length = None
        self._skipping = True

    def _resync(self) -> bool:
        """Drop bytes up to the next `Content-Length` name; False while none has arrived."""
        match = _HEADER_START.search(self._buffer)
        if match is None:
            del self._buffer[:max(0, len(self._buffer) - _KEEP_FOR_MATCH)]
            return False
        del self._buffer[:match.start()]
        self._skipping = False
        return True

    def _read_headers(self, events: list[Event]) -> bool:
        end = self._buffer.find(b"\n\r\n")
        lf_end = self._buffer.find(b"\n\n")
        ends = [e for e in (end, lf_end) if e >= 0]
        if self._buffer.startswith((b"\r\n", b"\n")):  # an empty line where a header was expected
            self._refuse(events, "an empty header block (no Content-Length)")
            del self._buffer[:1]
            return True
        if not ends:
            if len(self._buffer) > self.limits.max_header_bytes:
                self._refuse(events, f"a header block over {self.limits.max_header_bytes} bytes")
                del self._buffer[:1]  # so that resynchronising looks past this block's own name
            return False
        stop = min(ends)
        block_end = stop + (3 if stop == end else 2)
        if stop > self.limits.max_header_bytes:
            self._refuse(events, f"a header block over {self.limits.max_header_bytes} bytes")
            del self._buffer[:1]
            return True
        block = bytes(self._buffer[:stop + 1])
        length, problem = parse_headers(block, self.limits)
        if problem is not None:
            # keep the block's bytes after its first: a real header may follow garbage on its line
            del self._buffer[:1]
            self._refuse(events, problem)
            return True
        del self._buffer[:block_end]
        self._length = length
        return True

    def _read_body(self, events: list[Event]) -> bool:
        assert self._length is not None, "a body is read only after its header"
        if len(self._buffer) < self._length:
            return False
        events.append(Body(bytes(self._buffer[:self._length])))
        del self._buffer[:self._length]
        self._length = None
        return True


def parse_headers(block: bytes, limits: FramingLimits) -> tuple[int | None, str | None]:
    """(Content-Length, None) for a valid header block, else (None, why it is refused)."""
    length: int | None = None
    for raw in block.split(b"\n"):
        line = raw.removesuffix(b"\r")
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name.strip() or name != name.strip():
            return None, f"a header line that is not `Name: value`: {_show(line)}"
        if name.lower() != b"content-length":
            continue  # Content-Type and anything else: ignored
        value = value.strip(b" \t")
        if not value.isdigit() or not value.isascii():
            return None, f"Content-Length is not a non-negative integer: {_show(value)}"
        if len(value) > 20 or int(value) > limits.max_message_bytes:
            shown = value[:20].decode() + ("..." if len(value) > 20 else "")
            return None, (f"Content-Length {shown} is over the {limits.max_message_bytes}-byte "
                          "limit per message; message dropped")
        length = int(value)
    if length is None:
        return None, "a header block without Content-Length"
    return length, None


def _show(data: bytes, limit: int = 60) -> str:
    text = data[:limit].decode("ascii", "backslashreplace")
    return repr(text + ("..." if len(data) > limit else ""))


# ------------------------------------------------------------------------------------------------
# The JSON-RPC envelope of a body

PARSE_ERROR = -32700
INVALID_REQUEST = -32600

MsgId = int | str | None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A body that is one well-formed JSON-RPC 2.0 message: the decoded object, ready to structure."""

    message: dict


@dataclass(frozen=True, slots=True)
class EnvelopeError:
    """A body that is not a JSON-RPC message: answer `code` to `msg_id` unless `answer` is False
    (a malformed notification is never answered; JSON-RPC forbids it)."""

    code: int
    reason: str
    msg_id: MsgId = None
    answer: bool = True


def decode_body(data: bytes) -> Envelope | EnvelopeError:
    """Check a body as the JSON-RPC 2.0 specification asks: UTF-8 JSON (-32700 otherwise), one
    object (LSP sends no batches: -32600), `jsonrpc: "2.0"`, an id that is an integer, a string or
    null, a method that is a string (-32600 otherwise)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return EnvelopeError(PARSE_ERROR, f"Parse error: the body is not UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return EnvelopeError(PARSE_ERROR, f"Parse error: the body is not JSON ({str(exc)[:120]})")
    if isinstance(message, list):
        return EnvelopeError(INVALID_REQUEST, "Invalid Request: batches (JSON arrays) are not supported by LSP")
    if not isinstance(message, dict):
        return EnvelopeError(INVALID_REQUEST,
                             f"Invalid Request: a message must be an object, got {type(message).__name__}")
    has_id = "id" in message
    msg_id = message.get("id")
    if has_id and not valid_id(msg_id):
        return EnvelopeError(INVALID_REQUEST,
                             f"Invalid Request: id must be an integer or a string, got {_kind(msg_id)}")
    is_request = has_id and "method" in message
    is_notification = not has_id and "method" in message
    answer = has_id and "result" not in message and "error" not in message  # never answer a response
    if message.get("jsonrpc") != "2.0":
        return EnvelopeError(INVALID_REQUEST,
                             f"Invalid Request: jsonrpc must be \"2.0\", got {_kind(message.get('jsonrpc'))}",
                             msg_id, answer)
    if (is_request or is_notification) and not isinstance(message["method"], str):
        return EnvelopeError(INVALID_REQUEST,
                             f"Invalid Request: method must be a string, got {_kind(message['method'])}",
                             msg_id, answer)
    if not (is_request or is_notification) and not has_id:
        return EnvelopeError(INVALID_REQUEST, "Invalid Request: neither a method nor an id", None, True)
    return Envelope(message)


def valid_id(value: object) -> bool:
    """JSON-RPC ids as LSP allows them: an integer (not a boolean), a string, or null."""
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _kind(value: object) -> str:
    return f"{type(value).__name__} {json.dumps(value)[:40]}"
