"""Messages between the supervisor and its children on their private pipes.

Heartbeat pipe (child -> supervisor): one JSON object per line, sent every
heartbeat_interval by the child's main loop; any line counts as a sign of
life and carries the figures that `status` shows.

Control pipe (supervisor -> child): frames of a 4-byte big-endian length and
a pickled ControlMessage. Both ends are the same program forked from one
process, so pickle carries the resolved Config without a second schema.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, NamedTuple

import msgspec

FRAME_HEADER = struct.Struct(">I")
# Maximum heartbeat line the supervisor buffers. A longer one is a bug in the child and is dropped.
MAX_HEARTBEAT_LINE_BYTES = 1024 * 1024

CONFIG = "config"  # payload: the new Config (worker applies plugin and audit settings)
AUDIT_HEALTH = "audit_health"  # payload: frozenset of audit file paths that cannot be written
RESTART_UPSTREAM = "restart_upstream"  # payload: the reason; clears the upstream's FATAL state

_json_encoder = msgspec.json.Encoder()


class ControlMessage(NamedTuple):
    kind: str
    payload: Any


def encode_control(kind: str, payload: Any) -> bytes:
    data = pickle.dumps(ControlMessage(kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(data)) + data


class ControlDecoder:
    """Split the control pipe's byte stream into messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[ControlMessage]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= FRAME_HEADER.size:
            (length,) = FRAME_HEADER.unpack_from(self._buffer)
            end = FRAME_HEADER.size + length
            if len(self._buffer) < end:
                break
            messages.append(pickle.loads(bytes(self._buffer[FRAME_HEADER.size:end])))
            del self._buffer[:end]
        return messages


def encode_heartbeat(report: dict[str, Any]) -> bytes:
    return _json_encoder.encode(report) + b"\n"


def split_heartbeats(buffer: bytearray) -> list[dict[str, Any]]:
    """Remove complete lines from `buffer` and decode them; malformed lines are skipped."""
    reports = []
    while True:
        newline = buffer.find(b"\n")
        if newline < 0:
            if len(buffer) > MAX_HEARTBEAT_LINE_BYTES:
                buffer.clear()
            return reports
        line = bytes(buffer[:newline])
        del buffer[:newline + 1]
        try:
            report = msgspec.json.decode(line)
        except msgspec.DecodeError:
            continue
        if isinstance(report, dict):
            reports.append(report)
