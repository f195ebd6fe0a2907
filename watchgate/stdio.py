"""Asyncio streams over this process's stdin and stdout."""

from __future__ import annotations

import asyncio
import os
import stat
import sys


class _BlockingWriter:
    """A StreamWriter stand-in for a stdout that is a regular file (asyncio pipes reject files)."""

    transport = None

    def __init__(self, fd: int):
        self._fd = fd
        self._closed = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    async def drain(self) -> None:
        return None

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True


def _is_regular_file(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


async def open_stdio() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Return a reader for stdin and a writer for stdout, without blocking the loop on pipes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    stdin_fd = sys.stdin.fileno()
    if _is_regular_file(stdin_fd):
        reader.feed_data(os.read(stdin_fd, os.fstat(stdin_fd).st_size) if os.fstat(stdin_fd).st_size else b"")
        reader.feed_eof()
    else:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(stdin_fd), "rb", 0))
    stdout_fd = sys.stdout.fileno()
    if _is_regular_file(stdout_fd):
        return reader, _BlockingWriter(stdout_fd)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(os.dup(stdout_fd), "wb", 0)
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer
