"""Audit events over a pipe: the frame format and the worker's audit plugin.

In service mode each worker sends its audit events to the audit writer on a
pipe of its own. A frame is a 4-byte big-endian payload length followed by
the event encoded as JSON. Every frame carries the worker name and a
per-worker sequence number (`AuditEvent.worker`, `.seq`) so the writer can
detect a gap. The sequence starts at 1 in each worker process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
from collections.abc import Iterable

import msgspec

from watchgate.audit.events import AuditEvent
from watchgate.config.model import FileAuditingConfig
from watchgate.plugins.file_auditing import accepts_event, cap_body

logger = logging.getLogger(__name__)

FRAME_HEADER = struct.Struct(">I")
# Upper bound for one encoded event; a larger length is read as a lost frame
# boundary. Bodies are capped by max_body_bytes and messages by max_message_bytes
# (32 MiB by default), so only a configuration far above the defaults comes near it.
MAX_FRAME_BYTES = 256 * 1024 * 1024
# Every encoded AuditEvent starts with its first field, which is required.
PAYLOAD_PREFIX = b'{"timestamp":'
# Unsent frames above this make the worker stop reading client input until the
# writer catches up; below LOW the worker resumes.
PIPE_HIGH_WATER_BYTES = 1024 * 1024
PIPE_LOW_WATER_BYTES = 256 * 1024
# Event type of a frame the supervisor adds after a worker exits, carrying the last sequence
# number that worker reported. The writer only checks sequences with it; it is never written.
SEQUENCE_MARK = "SEQUENCE_MARK"
FLUSH_POLL_INTERVAL = 0.01  # seconds between checks of the transport buffer while flushing at exit

_HEADER_START = re.compile(rb"[\x00-\x1f]")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AuditEvent)


def encode_frame(event: AuditEvent) -> bytes:
    payload = _encoder.encode(event)
    return FRAME_HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Split the byte stream of one audit pipe into events.

    A writer that was killed in the middle of a frame leaves the rest of that
    frame in the pipe. The next reader then skips bytes up to the next frame
    header followed by an event payload, and counts them in `skipped_bytes`.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes of an unfinished frame already searched for a header byte
        self.skipped_bytes = 0

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[AuditEvent]:
        self._buffer += data
        events: list[AuditEvent] = []
        while len(self._buffer) >= FRAME_HEADER.size:
            (length,) = FRAME_HEADER.unpack_from(self._buffer)
            if not self._plausible_start(length):
                if not self._resynchronise():
                    break
                continue
            end = FRAME_HEADER.size + length
            if len(self._buffer) < end:
                if self._cut_short():
                    continue
                break
            payload = bytes(self._buffer[FRAME_HEADER.size:end])
            try:
                event = _decoder.decode(payload)
            except msgspec.DecodeError:
                if not self._resynchronise():
                    break
                continue
            del self._buffer[:end]
            self._scanned = 0
            events.append(event)
        return events

    def _plausible_start(self, length: int) -> bool:
        if length < len(PAYLOAD_PREFIX) or length > MAX_FRAME_BYTES:
            return False
        available = self._buffer[FRAME_HEADER.size:FRAME_HEADER.size + len(PAYLOAD_PREFIX)]
        return PAYLOAD_PREFIX.startswith(bytes(available))

    def _cut_short(self) -> bool:
        """Drop an incomplete frame that a later header shows was cut off; return whether one was dropped.

        JSON payloads never contain bytes below 0x20, and every header starts
        with one (a length under MAX_FRAME_BYTES), so such a byte inside an
        unfinished frame is where the next frame begins.
        """
        match = _HEADER_START.search(self._buffer, max(FRAME_HEADER.size, self._scanned))
        if match is None:
            self._scanned = len(self._buffer)
            return False
        self._skip(match.start())
        return True

    def _resynchronise(self) -> bool:
        """Drop bytes up to the next plausible frame; return False when none is buffered yet."""
        position = self._buffer.find(PAYLOAD_PREFIX, FRAME_HEADER.size + 1)
        while position >= 0:
            (length,) = FRAME_HEADER.unpack_from(self._buffer, position - FRAME_HEADER.size)
            if len(PAYLOAD_PREFIX) <= length <= MAX_FRAME_BYTES:
                dropped = position - FRAME_HEADER.size
                self._skip(dropped)
                return True
            position = self._buffer.find(PAYLOAD_PREFIX, position + 1)
        # Keep a tail that may hold the start of the next header and prefix.
        keep = FRAME_HEADER.size + len(PAYLOAD_PREFIX) - 1
        if len(self._buffer) > keep:
            self._skip(len(self._buffer) - keep)
        return False

    def _skip(self, count: int) -> None:
        if count <= 0:
            return
        self._scanned = 0
        del self._buffer[:count]
        self.skipped_bytes += count
        logger.warning("Audit pipe lost its frame boundary; skipped %d bytes", count)


def _with_capped_bodies(event: AuditEvent, entries: list[FileAuditingConfig]) -> AuditEvent:
    """Copy the event with bodies cut to what the most generous entry keeps; the writer caps per entry."""
    limits = [entry.max_body_bytes for entry in entries if entry.include_bodies]
    if not limits:
        return msgspec.structs.replace(event, params=None, result=None)
    limit = max(limits)
    return msgspec.structs.replace(event, params=cap_body(event.params, limit), result=cap_body(event.result, limit))


class _PipeProtocol(asyncio.Protocol):
    """Flow control for the pipe's write transport."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.lost = False

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.writable.set()


class PipeAuditPlugin:
    """The worker's audit plugin: sends each wanted event to the audit writer.

    An event is sent when at least one of the server's file_auditing entries
    accepts it (that entry's `mode`). The writer applies each entry again when
    it routes the event to that entry's file. `record()` does not block
    because frames queue in the pipe transport. The worker awaits
    `wait_writable()` before reading client input, so a full pipe pauses clients.
    """

    name = "file_auditing"

    def __init__(self, worker_name: str, entries: Iterable[FileAuditingConfig], fd: int):
        self.worker_name = worker_name
        self.entries: tuple[FileAuditingConfig, ...] = tuple(entries)
        self.sent = 0
        self.dropped = 0
        self._fd = fd
        self._seq = 0
        self._unwritable_paths: frozenset[str] = frozenset()
        self._early: list[bytes] = []
        self._pending_frames: list[bytes] = []
        self._transport: asyncio.WriteTransport | None = None
        self._protocol: _PipeProtocol | None = None

    async def open(self) -> None:
        """Attach the pipe to the running event loop; events recorded before are sent now."""
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(self._fd, "wb", buffering=0)
        self._transport, self._protocol = await loop.connect_write_pipe(_PipeProtocol, pipe)
        self._transport.set_write_buffer_limits(high=PIPE_HIGH_WATER_BYTES, low=PIPE_LOW_WATER_BYTES)
        for frame in self._early:
            self._transport.write(frame)
        self._early.clear()

    @property
    def config(self) -> FileAuditingConfig | None:
        """The entry that keeps bodies, if any: the gateway attaches params and results only when one does."""
        keeping = [entry for entry in self.entries if entry.include_bodies]
        if keeping:
            return keeping[0]
        return self.entries[0] if self.entries else None

    def set_entries(self, entries: Iterable[FileAuditingConfig]) -> None:
        self.entries = tuple(entries)

    def set_unwritable_paths(self, paths: Iterable[str]) -> None:
        """Record which audit files the writer currently cannot write, releasing or pausing clients to match."""
        self._unwritable_paths = frozenset(paths)
        if self._protocol is None or self._protocol.lost:
            return
        if self._nothing_writable():
            self._protocol.writable.set()
        elif self._transport.get_write_buffer_size() > PIPE_HIGH_WATER_BYTES:
            self._protocol.writable.clear()

    @property
    def healthy(self) -> bool:
        return not any(entry.critical and entry.output_file in self._unwritable_paths for entry in self.entries)

    @property
    def queued_bytes(self) -> int:
        if self._transport is None:
            return sum(len(frame) for frame in self._early)
        return self._transport.get_write_buffer_size() + sum(len(frame) for frame in self._pending_frames)

    def record(self, event: AuditEvent) -> None:
        wanted = [entry for entry in self.entries if accepts_event(entry, event)]
        if not wanted:
            return
        if event.params is not None or event.result is not None:
            event = _with_capped_bodies(event, wanted)
        self._seq += 1
        event.worker = self.worker_name
        event.seq = self._seq
        frame = encode_frame(event)
        self.sent += 1
        if self._transport is None:
            self._early.append(frame)
        elif self._drops_frames():
            # The sequence number is spent, so the writer records an AUDIT_GAP once it writes again.
            self.dropped += 1
        elif not self._protocol.lost:
            if not self._pending_frames:
                asyncio.get_running_loop().call_soon(self._write_pending)
            self._pending_frames.append(frame)

    def _write_pending(self) -> None:
        """Write the frames recorded in one loop iteration with one system call."""
        frames = self._pending_frames
        if not frames or self._transport is None or self._protocol.lost:
            frames.clear()
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        frames.clear()
        self._transport.write(data)

    def _drops_frames(self) -> bool:
        """Drop instead of queueing while the pipe is full and no entry's file can be written."""
        return (self._transport.get_write_buffer_size() > PIPE_HIGH_WATER_BYTES
                and self._nothing_writable())

    def _nothing_writable(self) -> bool:
        return bool(self.entries) and all(entry.output_file in self._unwritable_paths for entry in self.entries)

    async def wait_writable(self) -> None:
        """Wait while the pipe transport buffers more than its high-water mark.

        Returns at once while no entry's file can be written (the writer gave
        up): clients keep being served, and record() counts what it drops.
        """
        if self._protocol is not None and not self._nothing_writable():
            await self._protocol.writable.wait()

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued frame is in the pipe; return False on timeout."""
        self._write_pending()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._transport is not None and not self._protocol.lost and self._transport.get_write_buffer_size():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(FLUSH_POLL_INTERVAL)
        return True

    def close(self) -> None:
        if self._transport is not None:
            self._write_pending()
            self._transport.close()

