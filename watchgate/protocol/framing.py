"""Newline framing with a size limit that never buffers an oversized line whole."""

from __future__ import annotations

import asyncio
import collections

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


class LineSplitter:
    """Split fed bytes into lines of at most `max_bytes` (excluding the newline).

    `feed()` returns the lines completed by a chunk, without their newlines,
    with an `Oversized` record in place of each line past the limit. Blank
    lines are skipped and a trailing CR is dropped.
    """

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes
        # The start of an unfinished line, as received: joined once when its newline arrives,
        # so a large message is copied once rather than on every chunk.
        self._parts: list[bytes] = []
        self._partial_size = 0
        self._discarding: Oversized | None = None

    def feed(self, data: bytes) -> list[bytes | Oversized]:
        lines: list[bytes | Oversized] = []
        start = 0
        if self._discarding is not None:
            start = self._continue_discard(data)
            if start < 0:
                return lines
            lines.append(self._discarding)
            self._discarding = None
        if self._parts:
            newline = data.find(b"\n", start)
            if newline < 0:
                self._append_partial(data[start:] if start else data)
                return lines
            self._parts.append(data[start:newline])
            self._emit(b"".join(self._parts), lines)
            self._parts.clear()
            self._partial_size = 0
            start = newline + 1
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            self._emit(data[start:newline], lines)
            start = newline + 1
        if start < len(data):
            self._append_partial(data[start:] if start else data)
        return lines

    def finish(self) -> list[bytes | Oversized]:
        """Return what is left at end of stream: a last line without its newline."""
        lines: list[bytes | Oversized] = []
        if self._discarding is not None:
            lines.append(self._discarding)
            self._discarding = None
        elif self._parts:
            self._emit(b"".join(self._parts), lines)
        self._parts.clear()
        self._partial_size = 0
        return lines

    def _emit(self, line: bytes, lines: list[bytes | Oversized]) -> None:
        if len(line) > self._max_bytes:
            lines.append(Oversized(len(line), line[:EDGE_BYTES], line[-EDGE_BYTES:]))
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        if line and not line.isspace():
            lines.append(line)

    def _append_partial(self, chunk: bytes) -> None:
        self._parts.append(chunk)
        self._partial_size += len(chunk)
        if self._partial_size > self._max_bytes:
            joined = b"".join(self._parts)
            self._discarding = Oversized(len(joined), joined[:EDGE_BYTES], joined[-EDGE_BYTES:])
            self._parts.clear()
            self._partial_size = 0

    def _continue_discard(self, data: bytes) -> int:
        """Drop the oversized line's bytes in `data`; return where the next line starts, or -1."""
        record = self._discarding
        newline = data.find(b"\n")
        end = len(data) if newline < 0 else newline
        record.size += end
        record.tail = (record.tail + data[max(0, end - EDGE_BYTES) : end])[-EDGE_BYTES:]
        return -1 if newline < 0 else newline + 1


class LineReader:
    """Read lines from an asyncio StreamReader through a LineSplitter.

    `readline()` returns the next line, an `Oversized` record, or None at end
    of stream.
    """

    def __init__(self, reader: asyncio.StreamReader, max_bytes: int):
        self._reader = reader
        self._splitter = LineSplitter(max_bytes)
        self._ready: collections.deque[bytes | Oversized] = collections.deque()
        self._eof = False

    async def readline(self) -> bytes | Oversized | None:
        while not self._ready:
            if self._eof:
                return None
            chunk = await self._reader.read(READ_CHUNK_BYTES)
            if chunk:
                self._ready.extend(self._splitter.feed(chunk))
            else:
                self._eof = True
                self._ready.extend(self._splitter.finish())
        return self._ready.popleft()
