"""Serve a gateway session on this process's stdin and stdout."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import threading
from typing import TYPE_CHECKING

from watchgate.protocol.framing import READ_CHUNK_BYTES
from watchgate.proxy.session import SessionProtocol, WriteSideProtocol

if TYPE_CHECKING:
    from watchgate.proxy.server import Gateway


class FileWriter:
    """A StreamWriter stand-in for a stdout the event loop cannot watch (a file, /dev/null): blocking writes."""

    def __init__(self, fd: int):
        self._fd = fd
        self._closed = False

    @property
    def transport(self) -> FileWriter:
        return self

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def get_write_buffer_size(self) -> int:
        return 0

    async def drain(self) -> None:
        return None

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True


def _is_pollable(fd: int) -> bool:
    """Tell whether the event loop can watch `fd`: pipes, sockets and terminals, not files or /dev/null."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


def _read_blocking(fd: int, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
    """Copy a non-pollable stdin into `reader` from a thread."""
    while chunk := os.read(fd, READ_CHUNK_BYTES):
        loop.call_soon_threadsafe(reader.feed_data, chunk)
    loop.call_soon_threadsafe(reader.feed_eof)


async def serve_stdio(gateway: Gateway) -> asyncio.Future:
    """Start serving stdin/stdout as one session; return a future that completes when it ends."""
    loop = asyncio.get_running_loop()
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    if not (_is_pollable(stdin_fd) and _is_pollable(stdout_fd)):
        return asyncio.ensure_future(_serve_files(gateway))
    write_side = WriteSideProtocol()
    write_transport, _ = await loop.connect_write_pipe(lambda: write_side, os.fdopen(os.dup(stdout_fd), "wb", 0))
    reader = SessionProtocol(gateway, write_transport=write_transport)
    write_side.reader = reader
    await loop.connect_read_pipe(lambda: reader, os.fdopen(os.dup(stdin_fd), "rb", 0))
    return reader.session.finished


async def _serve_files(gateway: Gateway) -> None:
    """Serve when stdin or stdout is a file or /dev/null (a recorded session replayed, say)."""
    reader, writer = await open_stdio_streams()
    await gateway.serve(reader, writer)


async def open_stdio_streams() -> tuple[asyncio.StreamReader, asyncio.StreamWriter | FileWriter]:
    """Return a StreamReader over stdin and a writer over stdout, whatever kind of file each is."""
    loop = asyncio.get_running_loop()
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    reader = asyncio.StreamReader()
    if _is_pollable(stdin_fd):
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(stdin_fd), "rb", 0))
    else:
        threading.Thread(target=_read_blocking, args=(stdin_fd, reader, loop), name="stdin", daemon=True).start()
    if not _is_pollable(stdout_fd):
        return reader, FileWriter(stdout_fd)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(os.dup(stdout_fd), "wb", 0)
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
