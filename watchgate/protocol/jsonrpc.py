"""JSON-RPC 2.0 envelopes for MCP's newline-delimited stdio transport.

Only the envelope is decoded: `params`, `result` and `error` stay `msgspec.Raw`
so forwarded payloads are copied, never re-parsed. One encoder and one decoder
serve the whole process.
"""

from __future__ import annotations

import enum
import re
from typing import Any

import msgspec
from msgspec import UNSET, Raw, UnsetType

RequestId = int | str
EDGE_BYTES = 4096


class Envelope(msgspec.Struct, omit_defaults=True):
    """Any JSON-RPC message; the fields that are set determine its kind."""

    jsonrpc: str | UnsetType = UNSET
    id: int | str | None | UnsetType = UNSET
    method: str | UnsetType = UNSET
    params: Raw | UnsetType = UNSET
    result: Raw | UnsetType = UNSET
    error: Raw | UnsetType = UNSET


class Kind(enum.Enum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"


class ErrorCode(enum.IntEnum):
    """Wire error codes: JSON-RPC's standard ones and Watchgate's own in -32000..-32099."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    BLOCKED_BY_POLICY = -32001
    UPSTREAM_UNAVAILABLE = -32002
    UPSTREAM_EXITED = -32003
    REQUEST_TIMEOUT = -32004
    MESSAGE_TOO_LARGE = -32005
    AUDIT_UNAVAILABLE = -32006
    SHUTTING_DOWN = -32007


class InvalidMessage(Exception):
    """A line that is not a valid JSON-RPC message; carries the id when it could be read."""

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class _ErrorBody(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    data: Any = UNSET


class _ErrorResponse(msgspec.Struct):
    jsonrpc: str
    id: int | str | None
    error: _ErrorBody


class _IdOnly(msgspec.Struct):
    id: int | str | None = None


_decoder = msgspec.json.Decoder(Envelope)
_id_decoder = msgspec.json.Decoder(_IdOnly)
_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()

# A top-level id near either end of a message too large to decode. Senders put
# `id` first (most clients) or last (the TypeScript SDK serialises responses so).
_ID_PATTERN = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,200}")\s*[,}]')


def decode(line: bytes) -> tuple[Kind, Envelope]:
    """Decode and classify one line, raising InvalidMessage when it is not JSON-RPC."""
    if not line.isascii():
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMessage(ErrorCode.PARSE_ERROR, "Parse error: message is not valid UTF-8") from None
    try:
        message = _decoder.decode(line)
    except msgspec.ValidationError as error:  # a subclass of DecodeError, so it comes first
        raise _invalid_structure(line, error) from None
    except msgspec.DecodeError:
        # Best effort: a truncated or garbled message may still show its id.
        request_id = find_id(line[:EDGE_BYTES], line[-EDGE_BYTES:])
        raise InvalidMessage(ErrorCode.PARSE_ERROR, "Parse error: invalid JSON", request_id) from None
    return classify(message), message


def classify(message: Envelope) -> Kind:
    """Return the kind of a decoded envelope, raising InvalidMessage for anything else."""
    request_id = None if message.id is UNSET else message.id
    if message.jsonrpc != "2.0":
        raise InvalidMessage(ErrorCode.INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', request_id)
    if message.method is not UNSET:
        if message.result is not UNSET or message.error is not UNSET:
            raise InvalidMessage(ErrorCode.INVALID_REQUEST, "Invalid Request: method with result or error")
        if message.id is UNSET:
            return Kind.NOTIFICATION
        if message.id is None:
            raise InvalidMessage(ErrorCode.INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
        return Kind.REQUEST
    if message.id is UNSET or (message.result is UNSET) == (message.error is UNSET):
        raise InvalidMessage(
            ErrorCode.INVALID_REQUEST, "Invalid Request: expected a method, or an id with result or error", request_id
        )
    return Kind.RESPONSE


def _invalid_structure(line: bytes, error: msgspec.ValidationError) -> InvalidMessage:
    stripped = line.lstrip()
    if stripped.startswith(b"["):
        return InvalidMessage(ErrorCode.INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported")
    if not stripped.startswith(b"{"):
        return InvalidMessage(ErrorCode.INVALID_REQUEST, "Invalid Request: message must be a JSON object")
    try:
        request_id = _id_decoder.decode(line).id
    except msgspec.MsgspecError:
        request_id = None
    return InvalidMessage(ErrorCode.INVALID_REQUEST, f"Invalid Request: {error}", request_id)


def find_id(head: bytes, tail: bytes) -> RequestId | None:
    """Find a message's id in the first and last bytes of a message too large to decode."""
    for chunk in (head, tail):
        for match in _ID_PATTERN.finditer(chunk):
            value = match.group(1)
            try:
                return msgspec.json.decode(value)
            except msgspec.DecodeError:
                continue
    return None


def encode(message: Envelope) -> bytearray:
    """Encode one envelope as a newline-terminated line.

    Encoding into a bytearray and appending the newline in place avoids a
    second copy of a large payload.
    """
    line = bytearray()
    _encoder.encode_into(message, line)
    line += b"\n"
    return line


def request(request_id: RequestId, method: str, params: Raw | UnsetType = UNSET) -> bytes:
    return encode(Envelope(jsonrpc="2.0", id=request_id, method=method, params=params))


def notification(method: str, params: Any = UNSET) -> bytes:
    raw = params if params is UNSET or isinstance(params, Raw) else Raw(_encoder.encode(params))
    return encode(Envelope(jsonrpc="2.0", method=method, params=raw))


def error_response(request_id: RequestId | None, code: int, message: str, data: Any = UNSET) -> bytes:
    body = _ErrorResponse(jsonrpc="2.0", id=request_id, error=_ErrorBody(code=int(code), message=message, data=data))
    return _encoder.encode(body) + b"\n"


def encode_value(value: Any) -> bytes:
    return _encoder.encode(value)


def decode_value(data: bytes | Raw) -> Any:
    """Decode a raw payload into Python objects (only for payloads a plugin must read)."""
    return _any_decoder.decode(data)


def decode_error(raw: Raw) -> tuple[int | None, str]:
    """Read the code and message of a response's error member, tolerating odd shapes."""
    try:
        body = _any_decoder.decode(raw)
    except msgspec.DecodeError:
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    code = body.get("code")
    message = body.get("message")
    return (code if isinstance(code, int) else None), (message if isinstance(message, str) else "")
