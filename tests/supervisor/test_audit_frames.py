"""Audit pipe frames and the worker's PipeAuditPlugin: encoding, splitting, recovery, filtering."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from watchgate.audit.events import AuditEvent
from watchgate.audit.pipe import FRAME_HEADER, PIPE_HIGH_WATER_BYTES, FrameDecoder, PipeAuditPlugin, encode_frame
from watchgate.config.model import AuditMode, FileAuditingConfig

FLUSH_TIMEOUT = 5.0
# Seconds to show that wait_writable() blocks; the unblocked case returns at once.
WAIT_CHECK_TIMEOUT = 0.2


def _event(seq: int, reason: str = "") -> AuditEvent:
    return AuditEvent(timestamp="2026-01-01T00:00:00.000Z", event_type="REQUEST", reason=reason or None,
                      worker="alpha", seq=seq)


def test_frames_split_at_any_byte() -> None:
    data = b"".join(encode_frame(_event(seq)) for seq in range(1, 6))
    decoder = FrameDecoder()
    events = []
    for index in range(len(data)):
        events += decoder.feed(data[index:index + 1])
    assert [event.seq for event in events] == [1, 2, 3, 4, 5]
    assert decoder.skipped_bytes == 0
    assert decoder.pending_bytes == 0


def test_frame_header_is_big_endian_length() -> None:
    frame = encode_frame(_event(1))
    (length,) = FRAME_HEADER.unpack_from(frame)
    assert length == len(frame) - 4
    assert frame[4:].startswith(b'{"timestamp":')


@pytest.mark.parametrize("cut", [1, 3, 4, 10, 30])
def test_decoder_resynchronises_after_partial_frame(cut: int) -> None:
    first = encode_frame(_event(1, "first"))
    rest = encode_frame(_event(2)) + encode_frame(_event(3))
    decoder = FrameDecoder()
    events = decoder.feed(first[cut:] + rest)
    assert [event.seq for event in events] == [2, 3]
    assert decoder.skipped_bytes == len(first) - cut


@pytest.mark.parametrize("kept", [5, 40, 2000])
def test_decoder_skips_frame_cut_off_at_end(kept: int) -> None:
    """A writer killed mid-frame leaves the frame's start; the next frames must not wait behind it."""
    cut_off = encode_frame(_event(1, "y" * 5000))[:kept]
    decoder = FrameDecoder()
    events = decoder.feed(cut_off + encode_frame(_event(2)) + encode_frame(_event(3)))
    assert [event.seq for event in events] == [2, 3]
    assert decoder.skipped_bytes == kept
    assert decoder.pending_bytes == 0


def test_large_frames_arrive_whole() -> None:
    """Each writer owns its pipe, so a frame far above PIPE_BUF arrives whole."""
    big = "x" * 300_000
    read_fd, write_fd = os.pipe()
    frames = [encode_frame(_event(seq, big)) for seq in range(1, 11)]

    def write_all() -> None:
        with os.fdopen(write_fd, "wb") as pipe:
            for frame in frames:
                pipe.write(frame)

    thread = threading.Thread(target=write_all)
    thread.start()
    decoder = FrameDecoder()
    events = []
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            events += decoder.feed(chunk)
    thread.join()
    assert [event.seq for event in events] == list(range(1, 11))
    assert all(event.reason == big for event in events)


def _plugin_config(**settings) -> FileAuditingConfig:
    return FileAuditingConfig(output_file="/var/log/watchgate/audit.log", **settings)


async def _record_and_read(plugin_entries: list[FileAuditingConfig], events: list[AuditEvent]) -> list[AuditEvent]:
    read_fd, write_fd = os.pipe()
    plugin = PipeAuditPlugin("alpha", plugin_entries, write_fd)
    await plugin.open()
    for event in events:
        plugin.record(event)
    assert await plugin.flush(FLUSH_TIMEOUT)
    decoder = FrameDecoder()
    received = []
    os.set_blocking(read_fd, False)
    try:
        while True:
            received += decoder.feed(os.read(read_fd, 65536))
    except BlockingIOError:
        pass
    finally:
        plugin.close()
        os.close(read_fd)
    return received


@pytest.mark.anyio
async def test_pipe_plugin_filters_by_mode_and_numbers_events() -> None:
    entries = [_plugin_config(mode=AuditMode.SECURITY_ONLY)]
    events = [AuditEvent(timestamp="t", event_type=kind) for kind in ("REQUEST", "SECURITY_BLOCK", "RESPONSE", "ERROR")]
    received = await _record_and_read(entries, events)
    assert [event.event_type for event in received] == ["SECURITY_BLOCK", "ERROR"]
    assert [event.seq for event in received] == [1, 2]
    assert {event.worker for event in received} == {"alpha"}


@pytest.mark.anyio
async def test_pipe_plugin_drops_or_caps_bodies() -> None:
    event = AuditEvent(timestamp="t", event_type="RESPONSE", result={"text": "x" * 1000})
    without = await _record_and_read([_plugin_config()], [event])
    assert without[0].result is None
    capped = await _record_and_read([_plugin_config(include_bodies=True, max_body_bytes=100)], [event])
    assert capped[0].result["truncated"] is True


def test_pipe_plugin_unhealthy_only_for_critical_entry() -> None:
    plugin = PipeAuditPlugin("alpha", [_plugin_config(critical=True)], -1)
    assert plugin.healthy
    plugin.set_unwritable_paths({"/var/log/watchgate/other.log"})
    assert plugin.healthy
    plugin.set_unwritable_paths({"/var/log/watchgate/audit.log"})
    assert not plugin.healthy
    plugin.set_entries([_plugin_config(critical=False)])
    assert plugin.healthy


@pytest.mark.anyio
async def test_pipe_plugin_drops_only_when_nothing_writable() -> None:
    read_fd, write_fd = os.pipe()
    plugin = PipeAuditPlugin("alpha", [_plugin_config(include_bodies=True, max_body_bytes=1_000_000)], write_fd)
    await plugin.open()
    try:
        big = AuditEvent(timestamp="t", event_type="RESPONSE", result="x" * 500_000)
        for _ in range(8):
            plugin.record(big)
        assert plugin.queued_bytes > PIPE_HIGH_WATER_BYTES
        assert plugin.dropped == 0
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(plugin.wait_writable(), WAIT_CHECK_TIMEOUT)

        plugin.set_unwritable_paths({"/var/log/watchgate/audit.log"})
        await asyncio.wait_for(plugin.wait_writable(), WAIT_CHECK_TIMEOUT)
        plugin.record(big)
        assert plugin.dropped == 1
        assert plugin.sent == 9
    finally:
        plugin.close()
        os.close(read_fd)
