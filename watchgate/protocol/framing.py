"""Newline framing with a size limit that never buffers an oversized line whole."""

from __future__ import annotations

import asyncio

READ_CHUNK_BYTES = 256 * 1024
# Bytes kept from each end of an oversized line, to find its id for the error reply.
EDGE_BYTES = 4096


class Oversized:
    """A line longer than the limit: its size and edges, the middle discarded."""

    __slots__ = ("size", "head", "tail")

    def __init__(self, size: int, head: bytes, tail: bytes):
        self.size = size
        self.head = head
        self.tail = tail


class LineReader:
    """Split a byte stream into lines of at most `max_bytes` (excluding the newline).

    `readline()` returns the next line without its newline, an `Oversized`
    record for a line past the limit, or None at end of stream. A final line
    without a newline is returned as a line. Blank lines are skipped.
    """

    def __init__(self, reader: asyncio.StreamReader, max_bytes: int):
        self._reader = reader
        self._max_bytes = max_bytes
        self._buffer = bytearray()
        self._scanned = 0
        self._eof = False

    async def readline(self) -> bytes | Oversized | None:
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline > self._max_bytes:
                oversized = Oversized(newline, bytes(self._buffer[:EDGE_BYTES]),
                                      bytes(self._buffer[max(0, newline - EDGE_BYTES) : newline]))
                del self._buffer[: newline + 1]
                self._scanned = 0
                return oversized
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                self._scanned = 0
                if line.strip():
                    return line.rstrip(b"\r")
                continue
            if len(self._buffer) > self._max_bytes:
                return await self._discard_oversized()
            if self._eof:
                return self._take_rest()
            self._scanned = len(self._buffer)
            chunk = await self._reader.read(READ_CHUNK_BYTES)
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True

    def _take_rest(self) -> bytes | None:
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return rest if rest.strip() else None

    async def _discard_oversized(self) -> Oversized:
        """Drop bytes up to the end of the current line, keeping only its edges."""
        head = bytes(self._buffer[:EDGE_BYTES])
        size = len(self._buffer)
        tail = bytes(self._buffer[-EDGE_BYTES:])
        self._buffer.clear()
        self._scanned = 0
        while True:
            chunk = await self._reader.read(READ_CHUNK_BYTES)
            if not chunk:
                self._eof = True
                return Oversized(size, head, tail)
            newline = chunk.find(b"\n")
            if newline < 0:
                size += len(chunk)
                tail = (tail + chunk)[-EDGE_BYTES:]
                continue
            size += newline
            tail = (tail + chunk[:newline])[-EDGE_BYTES:]
            self._buffer += chunk[newline + 1 :]
            return Oversized(size, head, tail)
