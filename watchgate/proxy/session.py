"""One client connection to a gateway, over any byte-stream transport."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from msgspec import Raw

from watchgate.protocol.framing import LineSplitter
from watchgate.protocol.jsonrpc import RequestId

if TYPE_CHECKING:
    from watchgate.proxy.server import Gateway

logger = logging.getLogger(__name__)

# A session whose unsent output passes this makes the gateway stop reading the
# upstream until the client catches up. A session that stays behind for
# SLOW_CLIENT_TIMEOUT is dropped, so it cannot stall the other sessions forever.
WRITE_HIGH_WATER_BYTES = 4 * 1024 * 1024
SLOW_CLIENT_TIMEOUT = 30.0


class Session:
    """A client's state: who it is, what it declared, and its requests in flight."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        user: str | None = None,
        drain: Callable[[], Awaitable[None]] | None = None,
        read_transport: asyncio.ReadTransport | None = None,
    ):
        self.id = uuid.uuid4().hex[:12]
        self.transport = transport
        self.read_transport = read_transport
        self.user = user
        self.client_name: str | None = None
        self.client_version: str | None = None
        self.protocol_version: str | None = None
        self.capabilities: dict = {}
        self.initialize_params: Raw | None = None
        self.initialized = False
        self.closed = False
        # Client request id -> gateway id of the request in flight upstream.
        self.inflight: dict[RequestId, int] = {}
        self.subscriptions: set[str] = set()
        self._drain = drain
        self._writable = asyncio.Event()
        self._writable.set()
        self._loop = asyncio.get_running_loop()
        self._outgoing: list[bytes] = []
        self.finished: asyncio.Future[None] = self._loop.create_future()

    def __repr__(self) -> str:
        return f"<Session {self.id} client={self.client_name!r}>"

    def send(self, data: bytes) -> None:
        """Queue data for the client; everything queued in one loop iteration goes out in one write."""
        if self.closed:
            return
        if not self._outgoing:
            self._loop.call_soon(self.flush)
        self._outgoing.append(data)

    def flush(self) -> None:
        outgoing = self._outgoing
        if not outgoing:
            return
        data = outgoing[0] if len(outgoing) == 1 else b"".join(outgoing)
        outgoing.clear()
        if not self.transport.is_closing():
            self.transport.write(data)

    @property
    def backlogged(self) -> bool:
        return self.transport.get_write_buffer_size() > WRITE_HIGH_WATER_BYTES

    def writing_paused(self) -> None:
        self._writable.clear()

    def writing_resumed(self) -> None:
        self._writable.set()

    async def wait_writable(self) -> None:
        """Wait for a backlogged client to catch up, closing the session if it does not in time."""
        try:
            if self._drain is not None:
                await asyncio.wait_for(self._drain(), SLOW_CLIENT_TIMEOUT)
            else:
                await asyncio.wait_for(self._writable.wait(), SLOW_CLIENT_TIMEOUT)
        except asyncio.TimeoutError:
            logger.warning("Session %s (%s) read nothing for %.0f s; closing it", self.id, self.client_name,
                           SLOW_CLIENT_TIMEOUT)
            self.close()
        except (ConnectionError, RuntimeError):
            self.close()

    def pause_reading(self) -> None:
        if self.read_transport is not None and not self.read_transport.is_closing():
            self.read_transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_transport is not None and not self.read_transport.is_closing():
            self.read_transport.resume_reading()

    def declares(self, capability: str) -> bool:
        return capability in self.capabilities

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        self._writable.set()
        if not self.finished.done():
            self.finished.set_result(None)
        for transport in (self.transport, self.read_transport):
            if transport is not None and not transport.is_closing():
                transport.close()


class SessionProtocol(asyncio.Protocol):
    """Feed a connection's lines to the gateway as they arrive, keeping their order.

    A line whose handling must wait (for the upstream to start, say) pauses
    reading. The lines after it wait in a backlog until it is done.
    """

    def __init__(
        self,
        gateway: Gateway,
        user_of: Callable[[asyncio.BaseTransport], str | None] | None = None,
        write_transport: asyncio.WriteTransport | None = None,
    ):
        self._gateway = gateway
        self._user_of = user_of
        self._write_transport = write_transport
        self._splitter = LineSplitter(gateway.max_message_bytes)
        self._backlog: list = []
        self._waiting: asyncio.Task | None = None
        self._eof = False
        self.session: Session | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        user = self._user_of(transport) if self._user_of is not None else None
        self.session = Session(self._write_transport or transport, user, read_transport=transport)
        self._gateway.open_session(self.session)

    def data_received(self, data: bytes) -> None:
        lines = self._splitter.feed(data)
        if self._waiting is not None:
            self._backlog.extend(lines)
            return
        self._handle(lines, 0)

    def _handle(self, lines: list, start: int) -> None:
        handle = self._gateway.handle_client_line
        session = self.session
        for index in range(start, len(lines)):
            waiting = handle(session, lines[index])
            if waiting is not None:
                self._backlog = lines[index + 1 :] + self._backlog
                self._waiting = asyncio.get_running_loop().create_task(self._finish_waiting(waiting))
                session.pause_reading()
                return

    async def _finish_waiting(self, waiting: Awaitable[None]) -> None:
        try:
            await waiting
        except Exception:
            logger.exception("Session %s: a waiting request failed", self.session.id)
        self._waiting = None
        backlog, self._backlog = self._backlog, []
        self._handle(backlog, 0)
        if self._waiting is not None:
            return
        if self._eof:
            self._finish()
        else:
            self.session.resume_reading()

    def eof_received(self) -> bool:
        self._eof = True
        rest = self._splitter.finish()
        if self._waiting is not None:
            self._backlog.extend(rest)
        else:
            self._handle(rest, 0)
            if self._waiting is None:
                self._finish()
        return True

    def _finish(self) -> None:
        self._gateway.close_session(self.session)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
        if self.session is not None:
            self._gateway.close_session(self.session)

    def pause_writing(self) -> None:
        self.session.writing_paused()

    def resume_writing(self) -> None:
        self.session.writing_resumed()


class WriteSideProtocol(asyncio.BaseProtocol):
    """Protocol of a separate write-only transport (stdout): flow control and close reach the session."""

    def __init__(self) -> None:
        self.reader: SessionProtocol | None = None

    def pause_writing(self) -> None:
        if self.reader is not None and self.reader.session is not None:
            self.reader.session.writing_paused()

    def resume_writing(self) -> None:
        if self.reader is not None and self.reader.session is not None:
            self.reader.session.writing_resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reader is not None:
            self.reader.connection_lost(exc)
