"""Reading the JSON-lines record that the fault server writes with --record."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.waiting import wait_until

Record = dict[str, Any]


def read_records(path: Path) -> list[Record]:
    """Return every complete record line. A half-written last line is left for the next read."""
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def received_messages(path: Path) -> list[Record]:
    """Return the records of messages that reached the server, in arrival order."""
    return [record for record in read_records(path) if "message" in record]


def received_requests(path: Path, method: str) -> list[Record]:
    """Return the records of received requests (or notifications) with this method."""
    return [record for record in received_messages(path) if record["message"].get("method") == method]


def received_tool_calls(path: Path, tool: str) -> list[Record]:
    """Return the records of received tools/call requests for `tool`."""
    return [
        record
        for record in received_requests(path, "tools/call")
        if (record["message"].get("params") or {}).get("name") == tool
    ]


def server_pids(path: Path) -> list[int]:
    """Return the pids of every fault server start, in start order."""
    return [record["pid"] for record in read_records(path) if record.get("event") == "start"]


async def wait_for_record(
    path: Path, predicate: Callable[[Record], bool], timeout: float, description: str
) -> Record:
    """Wait for the first record matching `predicate` and return it."""

    def find() -> Record | None:
        for record in read_records(path):
            if predicate(record):
                return record
        return None

    return await wait_until(find, timeout, f"{description} in {path}")


def upstream_id_of_call(path: Path, tool: str) -> Any:
    """Return the id under which the single received tools/call for `tool` reached the server."""
    calls = received_tool_calls(path, tool)
    assert len(calls) == 1, f"expected one {tool} call at the server, found {len(calls)}"
    return calls[0]["message"]["id"]
