"""Reading the audit files that Watchgate writes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.waiting import wait_until

Event = dict[str, Any]

# Key order of a JSON audit record, as the audit event model defines it.
EVENT_FIELDS = (
    "timestamp",
    "event_type",
    "method",
    "tool",
    "status",
    "request_id",
    "plugin",
    "reason",
    "plugin_metadata",
    "duration_ms",
    "server_name",
    "client_name",
    "client_version",
    "session_id",
    "user",
    "error_code",
    "pid",
    "exit_code",
    "signal",
    "params",
    "result",
    "worker",
    "seq",
)

TUTORIAL_CSV_COLUMNS = (
    "timestamp",
    "event_type",
    "method",
    "tool",
    "status",
    "request_id",
    "plugin",
    "reason",
    "duration_ms",
    "server_name",
)
CSV_COLUMNS = TUTORIAL_CSV_COLUMNS + ("client_name", "session_id", "user", "error_code", "plugin_metadata")


def read_json_events(path: Path) -> list[Event]:
    """Parse a JSON audit file, in which every complete line must be one JSON object."""
    if not path.exists():
        return []
    events = []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    for number, line in enumerate(complete.split(b"\n")[:-1], start=1):
        event = json.loads(line)
        assert isinstance(event, dict), f"{path}:{number}: audit line is not a JSON object: {line[:200]!r}"
        events.append(event)
    return events


async def wait_for_event(path: Path, predicate: Callable[[Event], bool], timeout: float, description: str) -> Event:
    """Wait until a JSON audit event matching `predicate` is written and return it."""

    def find() -> Event | None:
        for event in read_json_events(path):
            if predicate(event):
                return event
        return None

    return await wait_until(find, timeout, f"audit event {description} in {path}")


def events_of_type(events: list[Event], event_type: str, **fields: Any) -> list[Event]:
    """Return the events of one type whose fields equal the given values."""
    return [
        event
        for event in events
        if event.get("event_type") == event_type and all(event.get(key) == value for key, value in fields.items())
    ]


def only_event(events: list[Event], event_type: str, **fields: Any) -> Event:
    """Return the single event of that type and field values, and fail when there are none or several."""
    matches = events_of_type(events, event_type, **fields)
    assert len(matches) == 1, f"expected one {event_type} event with {fields}, found {len(matches)}: {matches}"
    return matches[0]
