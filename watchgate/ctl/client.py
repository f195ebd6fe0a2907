"""Blocking client for the supervisor's control socket."""

from __future__ import annotations

import errno
import socket
from typing import Any

from watchgate.ctl import protocol
from watchgate.ctl.protocol import ProtocolError, Request, Response

DEFAULT_TIMEOUT = 10.0  # seconds for the connect and for each read of the response
RECEIVE_CHUNK_BYTES = 64 * 1024


class ServiceUnreachable(Exception):
    """The service cannot be reached: no socket, connection refused, or no response in time."""

    def __init__(self, socket_path: str, reason: str):
        super().__init__(f"cannot reach the Watchgate service at {socket_path}: {reason}")
        self.socket_path = socket_path
        self.reason = reason


class CommandError(Exception):
    """The service received the command and returned an error (`code` is a protocol error code)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


class ControlClient:
    """Send one request per connection to `<runtime_dir>/control.sock` and return the response."""

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT):
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, request: Request) -> Response:
        """Send `request` and return the decoded response, whether it reports success or an error.

        Raises ServiceUnreachable when no response arrives and ProtocolError
        when the response is malformed or speaks another protocol version.
        """
        line = protocol.encode_request(request)
        with self._connect() as connection:
            try:
                connection.sendall(line)
                data = self._receive_line(connection)
            except TimeoutError:
                raise ServiceUnreachable(self.socket_path, f"no response within {self.timeout:g} s") from None
            except OSError as error:
                raise ServiceUnreachable(self.socket_path, _describe(error)) from None
        return protocol.decode_response(data)

    def call(self, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a command and return its result, raising CommandError when the service rejects it."""
        response = self.request(Request(command=command, args=args or {}))
        if not response.ok:
            assert response.error is not None  # decode_response guarantees it
            raise CommandError(response.error.code, response.error.message)
        assert response.result is not None
        return response.result

    def status(self) -> protocol.StatusResult:
        return protocol.status_from_result(self.call(protocol.STATUS))

    def restart(self, name: str) -> dict[str, Any]:
        return self.call(protocol.RESTART, {"name": name})

    def restart_all(self) -> dict[str, Any]:
        return self.call(protocol.RESTART, {"all": True})

    def reload(self) -> dict[str, Any]:
        return self.call(protocol.RELOAD)

    def stop(self) -> dict[str, Any]:
        return self.call(protocol.STOP)

    def _connect(self) -> socket.socket:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(self.timeout)
        try:
            connection.connect(self.socket_path)
        except TimeoutError:
            connection.close()
            raise ServiceUnreachable(self.socket_path, f"connect timed out after {self.timeout:g} s") from None
        except OSError as error:
            connection.close()
            raise ServiceUnreachable(self.socket_path, _describe(error)) from None
        return connection

    def _receive_line(self, connection: socket.socket) -> bytes:
        """Read up to the first newline, raising ProtocolError once the line passes the size cap."""
        buffer = bytearray()
        while True:
            chunk = connection.recv(RECEIVE_CHUNK_BYTES)
            if not chunk:
                if buffer.strip():
                    return bytes(buffer)  # a final line without its newline
                raise ServiceUnreachable(self.socket_path, "the service closed the connection without a response")
            newline = chunk.find(b"\n")
            if newline >= 0:
                buffer += chunk[:newline]
                return bytes(buffer)
            buffer += chunk
            if len(buffer) > protocol.MAX_LINE_BYTES:
                raise ProtocolError(
                    protocol.TOO_LARGE, f"response exceeds the limit of {protocol.MAX_LINE_BYTES} bytes"
                )


def _describe(error: OSError) -> str:
    if error.errno == errno.ENOENT:
        return "no such socket (is `watchgate serve` running?)"
    if error.errno == errno.ECONNREFUSED:
        return "connection refused (the socket file exists but no service is listening on it)"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (the service runs as another user?)"
    return error.strerror or str(error)
