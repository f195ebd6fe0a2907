"""Control protocol v1 between `watchgatectl` and the supervisor.

Newline-delimited JSON over the Unix socket `<runtime_dir>/control.sock`. The
client sends one request line and reads one response line:

    {"version": 1, "command": "status" | "restart" | "reload" | "stop", "args": {...}}
    {"version": 1, "ok": true, "result": {...}}
    {"version": 1, "ok": false, "error": {"code": "<code>", "message": "<text>"}}

`restart` takes `{"name": "<server>"}` or `{"all": true}`; the other commands
take no arguments. A line longer than MAX_LINE_BYTES (newline excluded) is
rejected with the code `too_large`. Scripts may match on the error codes below,
so a new failure gets a new code and an existing code keeps its meaning.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1024 * 1024

STATUS = "status"
RESTART = "restart"
RELOAD = "reload"
STOP = "stop"
COMMANDS = (STATUS, RESTART, RELOAD, STOP)

# Error codes sent on the wire by the service.
UNKNOWN_COMMAND = "unknown_command"
BAD_REQUEST = "bad_request"
NOT_FOUND = "not_found"
VERSION_MISMATCH = "version_mismatch"
TOO_LARGE = "too_large"
FAILED = "failed"
ERROR_CODES = (UNKNOWN_COMMAND, BAD_REQUEST, NOT_FOUND, VERSION_MISMATCH, TOO_LARGE, FAILED)

# Raised only by decode_response on the client side. The service never sends it.
INVALID_RESPONSE = "invalid_response"


class ProtocolError(Exception):
    """A control message that cannot be accepted. `code` is one of the error codes above."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


class Request(msgspec.Struct, frozen=True, kw_only=True):
    version: int = PROTOCOL_VERSION
    command: str
    args: dict[str, Any] = {}


class ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str


class Response(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One reply: `result` is set when `ok` is true, `error` when it is false.

    `version` has no default because omit_defaults would drop it from the
    wire. Build responses with ok_response() and error_response().
    """

    version: int
    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None


# Result of the `status` command. The service builds a StatusResult and sends it
# through ok_response(), and readers convert it back with status_from_result().
# Times are in seconds. A pid is None while its process is not running.


class ServiceStatus(msgspec.Struct, kw_only=True):
    pid: int
    state: str
    uptime: float | None = None
    config: str | None = None
    config_error: str | None = None  # why the last reload was rejected


class ServerStatus(msgspec.Struct, kw_only=True):
    name: str
    state: str
    worker_pid: int | None = None
    upstream_pid: int | None = None
    uptime: float | None = None
    restarts: int = 0
    sessions: int = 0
    requests: int = 0
    blocked: int = 0
    last_exit: str | None = None  # e.g. "exit status 1" or "killed by SIGKILL"
    last_stderr: str | None = None  # the upstream's last stderr line


class SinkStatus(msgspec.Struct, kw_only=True):
    path: str
    healthy: bool = True
    lost: int = 0  # events dropped because the sink could not write


class WriterStatus(msgspec.Struct, kw_only=True):
    state: str
    pid: int | None = None
    uptime: float | None = None
    restarts: int = 0
    events_written: int = 0
    lag: int | float = 0  # events received from workers and not yet written
    lost: int = 0
    sinks: list[SinkStatus] = []


class StatusResult(msgspec.Struct, kw_only=True):
    service: ServiceStatus
    servers: list[ServerStatus] = []
    writer: WriterStatus | None = None


class _VersionOnly(msgspec.Struct):
    version: Any = None


_encoder = msgspec.json.Encoder()
_version_decoder = msgspec.json.Decoder(_VersionOnly)
_request_decoder = msgspec.json.Decoder(Request)
_response_decoder = msgspec.json.Decoder(Response)


def encode_request(request: Request) -> bytes:
    """Encode a request as one newline-terminated line."""
    return _encode_line(request)


def encode_response(response: Response) -> bytes:
    """Encode a response as one newline-terminated line."""
    return _encode_line(response)


def ok_response(result: dict[str, Any] | msgspec.Struct | None = None) -> Response:
    """Build a success response. A Struct result is converted to plain JSON types."""
    if isinstance(result, msgspec.Struct):
        result = msgspec.to_builtins(result)
    return Response(version=PROTOCOL_VERSION, ok=True, result=result if result is not None else {})


def error_response(code: str, message: str) -> Response:
    return Response(version=PROTOCOL_VERSION, ok=False, error=ErrorBody(code=code, message=message))


def decode_request(line: bytes) -> Request:
    """Decode and check one request line, raising ProtocolError with the code to send back."""
    data = _strip_line(line, BAD_REQUEST)
    _check_version(data, BAD_REQUEST)
    try:
        request = _request_decoder.decode(data)
    except msgspec.DecodeError as error:
        raise ProtocolError(BAD_REQUEST, f"invalid request: {error}") from None
    if request.command not in COMMANDS:
        raise ProtocolError(
            UNKNOWN_COMMAND, f"unknown command {request.command!r}: expected one of {', '.join(COMMANDS)}"
        )
    _check_args(request)
    return request


def decode_response(line: bytes) -> Response:
    """Decode and check one response line, raising ProtocolError when it is malformed."""
    data = _strip_line(line, INVALID_RESPONSE)
    _check_version(data, INVALID_RESPONSE)
    try:
        response = _response_decoder.decode(data)
    except msgspec.DecodeError as error:
        raise ProtocolError(INVALID_RESPONSE, f"invalid response: {error}") from None
    if response.ok and response.result is None:
        raise ProtocolError(INVALID_RESPONSE, 'invalid response: "ok" is true but "result" is missing')
    if not response.ok and response.error is None:
        raise ProtocolError(INVALID_RESPONSE, 'invalid response: "ok" is false but "error" is missing')
    return response


def status_from_result(result: dict[str, Any]) -> StatusResult:
    """Convert the result of a `status` response, raising ProtocolError when its shape is wrong."""
    try:
        return msgspec.convert(result, StatusResult)
    except msgspec.ValidationError as error:
        raise ProtocolError(INVALID_RESPONSE, f"invalid status result: {error}") from None


async def read_line(reader: asyncio.StreamReader) -> bytes:
    """Read one line of at most MAX_LINE_BYTES, raising ProtocolError(TOO_LARGE) beyond it.

    Returns b"" at end of stream. The reader's limit must be above MAX_LINE_BYTES
    (asyncio.open_unix_connection(..., limit=MAX_LINE_BYTES + 1)), else a long
    line fails with asyncio's own error before this check.
    """
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as error:
        line = error.partial
    except asyncio.LimitOverrunError:
        raise ProtocolError(TOO_LARGE, f"message exceeds {MAX_LINE_BYTES} bytes") from None
    if len(line.rstrip(b"\r\n")) > MAX_LINE_BYTES:
        raise ProtocolError(TOO_LARGE, f"message exceeds {MAX_LINE_BYTES} bytes")
    return line


def _encode_line(message: msgspec.Struct) -> bytes:
    data = _encoder.encode(message)
    if len(data) > MAX_LINE_BYTES:
        raise ProtocolError(TOO_LARGE, f"message of {len(data)} bytes exceeds the limit of {MAX_LINE_BYTES} bytes")
    return data + b"\n"


def _strip_line(line: bytes, invalid_code: str) -> bytes:
    data = line.rstrip(b"\r\n")
    if len(data) > MAX_LINE_BYTES:
        raise ProtocolError(TOO_LARGE, f"message of {len(data)} bytes exceeds the limit of {MAX_LINE_BYTES} bytes")
    if not data.strip():
        raise ProtocolError(invalid_code, "empty message")
    return data


def _check_version(data: bytes, invalid_code: str) -> None:
    """Check the version before the rest so a newer peer gets version_mismatch, not a shape error."""
    try:
        version = _version_decoder.decode(data).version
    except msgspec.DecodeError as error:
        raise ProtocolError(invalid_code, f"invalid message: {error}") from None
    if version is None:
        raise ProtocolError(invalid_code, 'missing "version"')
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(
            VERSION_MISMATCH,
            f"unsupported control protocol version {version!r}: this side speaks version {PROTOCOL_VERSION}",
        )


def _check_args(request: Request) -> None:
    args = request.args
    if request.command != RESTART:
        if args:
            raise ProtocolError(BAD_REQUEST, f"{request.command} takes no arguments, got {sorted(args)}")
        return
    if set(args) == {"name"} and isinstance(args["name"], str) and args["name"]:
        return
    if args == {"all": True}:
        return
    raise ProtocolError(BAD_REQUEST, 'restart expects {"name": "<server>"} or {"all": true}')


def restart_request(name: str | None = None, *, all_servers: bool = False) -> Request:
    """Build a restart request for one server or, with all_servers, for every server."""
    if all_servers == (name is not None):
        raise ValueError("pass either a server name or all_servers=True")
    return Request(command=RESTART, args={"all": True} if all_servers else {"name": name})
