"""One client connection to a gateway, over any pair of byte streams."""

from __future__ import annotations

import asyncio
import logging
import uuid

from msgspec import Raw

from watchgate.protocol.jsonrpc import RequestId

logger = logging.getLogger(__name__)

# A session whose unsent output passes this is waited for before more upstream
# output is read; a client that stays that far behind for SLOW_CLIENT_TIMEOUT is dropped.
WRITE_HIGH_WATER_BYTES = 4 * 1024 * 1024
SLOW_CLIENT_TIMEOUT = 30.0


class Session:
    """A client's state: who it is, what it declared, and its requests in flight."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str | None = None):
        self.id = uuid.uuid4().hex[:12]
        self.reader = reader
        self.writer = writer
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

    def __repr__(self) -> str:
        return f"<Session {self.id} client={self.client_name!r}>"

    def send(self, data: bytes) -> None:
        if self.closed or self.writer.is_closing():
            return
        self.writer.write(data)

    @property
    def backlogged(self) -> bool:
        transport = self.writer.transport
        return transport is not None and transport.get_write_buffer_size() > WRITE_HIGH_WATER_BYTES

    async def wait_writable(self) -> None:
        """Wait for a backlogged client to catch up, closing the session if it does not."""
        try:
            await asyncio.wait_for(self.writer.drain(), SLOW_CLIENT_TIMEOUT)
        except asyncio.TimeoutError:
            logger.warning("Session %s (%s) read nothing for %.0f s; closing it", self.id, self.client_name, SLOW_CLIENT_TIMEOUT)
            self.close()
        except (ConnectionError, RuntimeError):
            self.close()

    def declares(self, capability: str) -> bool:
        return capability in self.capabilities

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.writer.close()
        except (ConnectionError, RuntimeError):
            pass
