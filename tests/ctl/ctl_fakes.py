"""A fake control server on a Unix socket, standing in for `watchgate serve` in client tests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path

from watchgate.ctl import protocol

Handler = Callable[[bytes], bytes | None]
ACCEPT_TIMEOUT = 10.0


class FakeControlServer:
    """Reply to each connection's first line with `handler(line)`. A None reply closes without a response."""

    def __init__(self, path: Path, handler: Handler):
        self.path = path
        self.handler = handler
        self.requests: list[bytes] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._listener.settimeout(ACCEPT_TIMEOUT)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(ACCEPT_TIMEOUT)
                line = self._read_line(connection)
                self.requests.append(line)
                reply = self.handler(line)
                if reply is None:
                    continue
                try:
                    connection.sendall(reply)
                except OSError:
                    pass  # the client stopped reading (an oversized response, say)

    @staticmethod
    def _read_line(connection: socket.socket) -> bytes:
        data = b""
        while not data.endswith(b"\n"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    def close(self) -> None:
        self._stopped.set()
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(ACCEPT_TIMEOUT)




def reply_with(result: dict | None = None, error: tuple[str, str] | None = None) -> Handler:
    """Return a handler that sends one fixed success or error response."""
    if error is not None:
        response = protocol.error_response(*error)
    else:
        response = protocol.ok_response(result or {})
    line = protocol.encode_response(response)
    return lambda _request: line
