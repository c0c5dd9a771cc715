"""The framing layer (lsp_server/framing.py): any byte stream gives bodies or refusals, never a
crash, a stall or an allocation of what a header claims; and the JSON-RPC envelope checks."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsp_server.framing import (INVALID_REQUEST, PARSE_ERROR, Body, Envelope, EnvelopeError, Framer, FramingLimits,
                                Refusal, decode_body)

LIMITS = FramingLimits(max_message_bytes=1000, max_header_bytes=200)


def frame(body: bytes, header: bytes | None = None) -> bytes:
    return (header if header is not None else b"Content-Length: %d\r\n\r\n" % len(body)) + body


def feed_all(data: bytes, framer: Framer | None = None, step: int | None = None) -> list:
    framer = framer or Framer(LIMITS)
    if step is None:
        return framer.feed(data)
    return [event for i in range(0, len(data), step) for event in framer.feed(data[i:i + step])]


OK = b'{"jsonrpc":"2.0","id":1,"method":"x"}'


@pytest.mark.parametrize("step", [None, 1, 7])
def test_messages_come_out_whole_however_the_bytes_are_cut(step):
    typed = b"Content-Length: 2\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n"
    data = frame(OK) + frame(b"{}", typed)
    assert feed_all(data, step=step) == [Body(OK), Body(b"{}")]


@pytest.mark.parametrize("header", [
    b"content-length: %d\r\n\r\n",  # names are case-insensitive
    b"CONTENT-LENGTH:%d\r\n\r\n",
    b"Content-Length: %d\n\n",  # LF-only lines: accepted (documented leniency)
    b"Content-Length: %d\r\n\n",
    b"Content-Length: \t%d \r\n\r\n",
])
def test_header_spellings_the_spec_allows_or_we_accept(header):
    assert feed_all(frame(OK, header % len(OK)) + frame(OK)) == [Body(OK), Body(OK)]


@pytest.mark.parametrize("header, reason", [
    (b"Content-Length: 1000000000000\r\n\r\n", "over the 1000-byte limit"),
    (b"Content-Length: 9223372036854775808\r\n\r\n", "over the 1000-byte limit"),
    (b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", "header block over 200 bytes"),
    (b"Content-Length: " + b"9" * 150 + b"\r\n\r\n", "over the 1000-byte limit"),
    (b"Content-Length: -5\r\n\r\n", "not a non-negative integer"),
    (b"Content-Length: 0x10\r\n\r\n", "not a non-negative integer"),
    (b"Content-Length: \xd9\xa3\r\n\r\n", "not a non-negative integer"),  # an Arabic-Indic digit
    (b"Content-Type: text/plain\r\n\r\n", "without Content-Length"),
    (b"X" * 70_000 + b"\r\n\r\n", "header block over 200 bytes"),
    (b"no colon here\r\n\r\n", "not `Name: value`"),
])
def test_a_bad_header_is_refused_and_the_next_message_still_arrives(header, reason):
    events = feed_all(header + b'{"garbage": 1}' + frame(OK), step=4096)
    refusals = [e for e in events if isinstance(e, Refusal)]
    assert refusals and reason in refusals[0].reason, events
    assert events[-1] == Body(OK)


def test_a_huge_claimed_length_allocates_nothing_and_waits_for_nothing():
    framer = Framer(LIMITS)
    events = framer.feed(b"Content-Length: 10000000000\r\n\r\n" + b"x" * 100)
    assert [type(e) for e in events] == [Refusal]
    assert framer.buffered < 100  # the claimed 10 GB is never reserved nor awaited
    assert framer.feed(frame(OK)) == [Body(OK)]


def test_a_length_shorter_than_the_body_costs_that_message_only():
    events = feed_all(frame(OK, b"Content-Length: 10\r\n\r\n") + frame(OK))
    assert events[0] == Body(OK[:10])  # the JSON layer answers it with -32700
    assert isinstance(events[1], Refusal) and events[-1] == Body(OK)


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=400), step=st.integers(1, 64))
def test_fuzz_any_garbage_then_a_valid_message(garbage, step):
    """Whatever came before (unless it declared a body still being read), a valid message after it
    arrives, and the parser never holds more than its limits allow."""
    framer = Framer(LIMITS)
    for i in range(0, len(garbage), step):
        framer.feed(garbage[i:i + step])
        assert framer.buffered <= LIMITS.max_message_bytes + LIMITS.max_header_bytes + step
    # close any body the garbage declared (at most the limit) and any header line it left open
    events = framer.feed(b"\r\n\r\n" + b" " * LIMITS.max_message_bytes + frame(OK))
    assert events and events[-1] == Body(OK)


# ------------------------------------------------------------------------------------------------
# The JSON-RPC envelope


@pytest.mark.parametrize("body, code, msg_id, answer", [
    (b"\xff\xfe{}", PARSE_ERROR, None, True),
    (b"{not json", PARSE_ERROR, None, True),
    (b"", PARSE_ERROR, None, True),
    (b"[]", INVALID_REQUEST, None, True),
    (b'[{"jsonrpc":"2.0","id":1,"method":"x"}]', INVALID_REQUEST, None, True),
    (b"42", INVALID_REQUEST, None, True),
    (b'{"jsonrpc":"2.0","id":[1],"method":"x"}', INVALID_REQUEST, None, True),
    (b'{"jsonrpc":"2.0","id":{"a":1},"method":"x"}', INVALID_REQUEST, None, True),
    (b'{"jsonrpc":"2.0","id":true,"method":"x"}', INVALID_REQUEST, None, True),
    (b'{"jsonrpc":"2.0","id":1.5,"method":"x"}', INVALID_REQUEST, None, True),
    (b'{"jsonrpc":"1.0","id":7,"method":"x"}', INVALID_REQUEST, 7, True),
    (b'{"id":7,"method":"x"}', INVALID_REQUEST, 7, True),
    (b'{"jsonrpc":"2.0","id":"a","method":5}', INVALID_REQUEST, "a", True),
    (b'{"jsonrpc":"1.0","method":"x"}', INVALID_REQUEST, None, False),  # a notification: never answered
    (b'{"jsonrpc":"2.0"}', INVALID_REQUEST, None, True),
    (b"[" * 100_000, PARSE_ERROR, None, True),  # nesting deeper than the parser's recursion
])
def test_bodies_that_are_not_json_rpc_get_the_spec_error(body, code, msg_id, answer):
    checked = decode_body(body)
    assert isinstance(checked, EnvelopeError)
    assert (checked.code, checked.msg_id, checked.answer) == (code, msg_id, answer), checked


def test_a_valid_request_notification_and_response_pass():
    for message in ({"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"a": [1]}},
                    {"jsonrpc": "2.0", "id": "s", "method": "x"},
                    {"jsonrpc": "2.0", "method": "n"},
                    {"jsonrpc": "2.0", "id": 3, "result": None}):
        assert decode_body(json.dumps(message).encode()) == Envelope(message)
