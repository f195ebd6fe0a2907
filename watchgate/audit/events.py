"""The audit event model shared by every format, sink and process."""

from __future__ import annotations

import datetime
import enum
import time
from typing import Any

import msgspec


class EventType(str, enum.Enum):
    REQUEST = "REQUEST"
    RESPONSE = "RESPONSE"
    SECURITY_BLOCK = "SECURITY_BLOCK"
    TOOLS_FILTERED = "TOOLS_FILTERED"
    NOTIFICATION = "NOTIFICATION"
    ERROR = "ERROR"
    UPSTREAM_START = "UPSTREAM_START"
    UPSTREAM_EXIT = "UPSTREAM_EXIT"
    UPSTREAM_RESTART = "UPSTREAM_RESTART"
    SESSION_OPEN = "SESSION_OPEN"
    SESSION_CLOSE = "SESSION_CLOSE"
    AUDIT_GAP = "AUDIT_GAP"


SECURITY_EVENTS = frozenset({EventType.SECURITY_BLOCK, EventType.TOOLS_FILTERED, EventType.ERROR})
OPERATION_EVENTS = frozenset(EventType) - {EventType.SECURITY_BLOCK, EventType.TOOLS_FILTERED}


class AuditEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One audit record. Field order is the order of the JSON output.

    `request_id` is the client's JSON-RPC id as a string. `status` is ALLOWED
    or BLOCKED for requests and success, error or cancelled for responses.
    """

    timestamp: str
    event_type: str
    method: str | None = None
    tool: str | None = None
    status: str | None = None
    request_id: str | None = None
    plugin: str | None = None
    reason: str | None = None
    plugin_metadata: dict[str, Any] | None = None
    duration_ms: float | None = None
    server_name: str | None = None
    client_name: str | None = None
    client_version: str | None = None
    session_id: str | None = None
    user: str | None = None
    error_code: int | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: str | None = None
    params: Any = None
    result: Any = None
    worker: str | None = None
    seq: int | None = None


_second_cache: list = [None, ""]


def utc_timestamp(now: float | None = None) -> str:
    """Format a Unix time (default: now) as UTC ISO 8601 with milliseconds and a Z.

    The text up to the second is cached, because formatting it costs more than
    the rest of recording an event.
    """
    if now is None:
        now = time.time()
    second = int(now)
    if _second_cache[0] != second:
        moment = datetime.datetime.fromtimestamp(second, datetime.timezone.utc)
        _second_cache[1] = moment.strftime("%Y-%m-%dT%H:%M:%S.")
        _second_cache[0] = second
    return f"{_second_cache[1]}{int((now - second) * 1000):03d}Z"
