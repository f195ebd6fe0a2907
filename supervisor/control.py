"""The control socket server inside the supervisor's single-threaded selector loop."""

from __future__ import annotations

import logging
import os
import selectors
import socket
from collections.abc import Callable

from watchgate.ctl import protocol
from watchgate.supervisor.peercred import peer_allowed, peer_credentials

logger = logging.getLogger("watchgate.supervisor.control")

READ_BYTES = 65536

Handler = Callable[[protocol.Request], protocol.Response]


class _Connection:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.close_after_write = False


class ControlServer:
    """Accept control clients and send one JSON response line per request line, without blocking the loop."""

    def __init__(self, listener: socket.socket, path: str, selector: selectors.BaseSelector, handler: Handler):
        self.listener = listener
        self.path = path
        self._selector = selector
        self._handler = handler
        self._connections: dict[int, _Connection] = {}
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, self._on_accept)

    def sockets(self) -> list[socket.socket]:
        """Return every socket this server holds, for closing in a forked child."""
        return [self.listener, *(connection.sock for connection in self._connections.values())]

    def close(self) -> None:
        for connection in list(self._connections.values()):
            self._drop(connection)
        self._selector.unregister(self.listener)
        self.listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _on_accept(self, mask: int) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        try:
            credentials = peer_credentials(sock)
        except OSError as error:
            logger.warning("Rejected a control connection: cannot read peer credentials: %s", error)
            sock.close()
            return
        if not peer_allowed(credentials, os.getuid()):
            logger.warning("Rejected a control connection from uid %d (pid %s): only the service user (uid %d) and root may connect",
                           credentials.uid, credentials.pid, os.getuid())
            sock.close()
            return
        sock.setblocking(False)
        connection = _Connection(sock)
        self._connections[sock.fileno()] = connection
        self._selector.register(sock, selectors.EVENT_READ, lambda mask: self._on_ready(connection, mask))

    def _on_ready(self, connection: _Connection, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read(connection)
        if connection.sock.fileno() >= 0 and mask & selectors.EVENT_WRITE:
            self._flush(connection)

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(connection)
            return
        connection.inbox += data
        while True:
            newline = connection.inbox.find(b"\n")
            if newline < 0:
                break
            line = bytes(connection.inbox[:newline + 1])
            del connection.inbox[:newline + 1]
            self._answer(connection, line)
        if len(connection.inbox) > protocol.MAX_LINE_BYTES:
            connection.inbox.clear()
            connection.close_after_write = True
            self._send(connection, protocol.error_response(
                protocol.TOO_LARGE, f"message exceeds {protocol.MAX_LINE_BYTES} bytes"))

    def _answer(self, connection: _Connection, line: bytes) -> None:
        try:
            request = protocol.decode_request(line)
        except protocol.ProtocolError as error:
            self._send(connection, protocol.error_response(error.code, error.message))
            return
        self._send(connection, self._handler(request))

    def _send(self, connection: _Connection, response: protocol.Response) -> None:
        try:
            connection.outbox += protocol.encode_response(response)
        except protocol.ProtocolError as error:
            connection.outbox += protocol.encode_response(protocol.error_response(error.code, error.message))
        self._flush(connection)

    def _flush(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.outbox)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(connection)
            return
        del connection.outbox[:sent]
        if not connection.outbox and connection.close_after_write:
            self._drop(connection)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if connection.outbox else 0)
        key = self._selector.get_key(connection.sock)
        if key.events != events:
            self._selector.modify(connection.sock, events, key.data)

    def _drop(self, connection: _Connection) -> None:
        fd = connection.sock.fileno()
        if fd < 0:
            return
        self._connections.pop(fd, None)
        self._selector.unregister(connection.sock)
        connection.sock.close()
