"""Standalone gateway processes: a shared audit file, an unwritable one, and the asyncio fallback."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from pathlib import Path

import anyio
import pytest

from helpers.configs import audit_entry, fault_server_config
from helpers.raw_client import running_gateway

pytestmark = pytest.mark.anyio

TEST_DEADLINE = 120.0
CALLS_PER_PROCESS = 150
# Small files so the calls above rotate each file many times.
ROTATE_AT_MB = 0.02
BACKUPS = 200
PAYLOAD = "x" * 200
RESPONSE_TIMEOUT = 15.0


def audit_files(path: Path) -> list[Path]:
    """Return path and its rotated backups (path.1 is the newest backup), oldest first."""
    backups = [backup for backup in path.parent.glob(path.name + ".*") if backup.suffix[1:].isdigit()]
    numbers = sorted(int(backup.suffix[1:]) for backup in backups)
    assert numbers == list(range(1, len(numbers) + 1)), f"backups of {path.name} are not numbered 1..N: {numbers}"
    return [path.with_name(f"{path.name}.{number}") for number in reversed(numbers)] + [path]


async def drive_calls(gateway, label: str) -> None:
    await gateway.initialize()
    for number in range(CALLS_PER_PROCESS):
        response = await gateway.call_tool("echo", {"text": f"{label}-{number}-{PAYLOAD}"})
        assert "result" in response, f"{label} call {number} failed: {response}"


async def test_two_processes_share_audit_files(tmp_path, test_id, config_file, gateway_env):
    json_log = tmp_path / "logs" / "audit.log"
    csv_log = tmp_path / "logs" / "audit.csv"
    config = fault_server_config(tmp_path, test_id)
    config["plugins"]["auditing"] = [
        audit_entry(json_log, "json", max_file_size_mb=ROTATE_AT_MB, backup_count=BACKUPS),
        audit_entry(csv_log, "csv", max_file_size_mb=ROTATE_AT_MB, backup_count=BACKUPS),
    ]
    config_path = config_file(config)

    with anyio.fail_after(TEST_DEADLINE):
        async with running_gateway(config_path, gateway_env, tmp_path, tmp_path / "first.stderr") as first, \
                running_gateway(config_path, gateway_env, tmp_path, tmp_path / "second.stderr") as second:
            await asyncio.gather(drive_calls(first, "first"), drive_calls(second, "second"))

    json_files = audit_files(json_log)
    assert len(json_files) > 2, "the JSON log never rotated"
    events = []
    for path in json_files:
        for line in path.read_text(encoding="utf-8").splitlines():
            events.append(json.loads(line))
    sessions = {event["session_id"] for event in events if event.get("session_id")}
    assert len(sessions) == 2
    for session in sessions:
        calls = [e for e in events if e.get("session_id") == session and e.get("tool") == "echo"]
        requests = {e["request_id"] for e in calls if e["event_type"] == "REQUEST"}
        responses = {e["request_id"] for e in calls if e["event_type"] == "RESPONSE"}
        assert len(requests) == CALLS_PER_PROCESS
        assert requests == responses

    csv_files = audit_files(csv_log)
    assert len(csv_files) > 2, "the CSV log never rotated"
    rows = []
    for path in csv_files:
        with path.open(newline="", encoding="utf-8") as handle:
            table = list(csv.reader(handle))
        assert table[0][:3] == ["timestamp", "event_type", "method"], f"{path.name} does not start with the header"
        rows.extend(table[1:])
    assert len(rows) == len(events), "the CSV and JSON entries recorded different numbers of events"


async def test_asyncio_fallback_without_uvloop(tmp_path, test_id, config_file, gateway_env):
    config_path = config_file(fault_server_config(tmp_path, test_id))
    # Importing uvloop fails when its sys.modules entry is None, as where it has no wheel.
    program = "import sys; sys.modules['uvloop'] = None; from watchgate.cli import main; raise SystemExit(main())"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, "--config", str(config_path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env=gateway_env, cwd=str(tmp_path),
    )
    try:
        with anyio.fail_after(TEST_DEADLINE):
            messages = [
                {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                 "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                            "clientInfo": {"name": "fallback-test", "version": "1"}}},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                 "params": {"name": "echo", "arguments": {"text": "on asyncio"}}},
            ]
            for message in messages:
                process.stdin.write(json.dumps(message).encode() + b"\n")
            await process.stdin.drain()
            answers = {}
            while 2 not in answers:
                line = await asyncio.wait_for(process.stdout.readline(), RESPONSE_TIMEOUT)
                assert line, "watchgate closed stdout before answering"
                answer = json.loads(line)
                answers[answer.get("id")] = answer
            assert answers[1]["result"]["serverInfo"]["name"] == "fault-server"
            assert answers[2]["result"]["content"][0]["text"] == "on asyncio"
            process.stdin.close()
            assert await asyncio.wait_for(process.wait(), RESPONSE_TIMEOUT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def call_until(gateway, predicate, timeout: float, description: str) -> dict:
    """Call echo until a response satisfies `predicate`; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await gateway.call_tool("echo", {"text": "probe"})
        if predicate(response):
            return response
        if asyncio.get_running_loop().time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {description}; last response {response}")
        await asyncio.sleep(0.05)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="/dev/full is needed to simulate a full disk")
@pytest.mark.parametrize("critical", [True, False])
async def test_unwritable_audit_file(tmp_path, test_id, config_file, gateway_env, critical):
    log = tmp_path / "logs" / "audit.log"
    log.parent.mkdir()
    log.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    config = fault_server_config(tmp_path, test_id)
    config["plugins"]["auditing"] = [audit_entry(log, "json", critical=critical)]
    stderr_path = tmp_path / "gateway.stderr"

    with anyio.fail_after(TEST_DEADLINE):
        async with running_gateway(config_file(config), gateway_env, tmp_path, stderr_path) as gateway:
            await gateway.initialize()
            if critical:
                rejected = await call_until(gateway, lambda r: "error" in r, RESPONSE_TIMEOUT,
                                            "requests to be rejected while the critical audit file is full")
                assert rejected["error"]["code"] == -32006
            else:
                for _ in range(5):
                    response = await gateway.call_tool("echo", {"text": "still served"})
                    assert response["result"]["content"][0]["text"] == "still served"
            log.unlink()
            log.touch()  # space is free again
            await call_until(gateway, lambda r: "result" in r, RESPONSE_TIMEOUT, "requests to pass again")

    assert "No space left on device" in stderr_path.read_text()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    gaps = [event for event in events if event["event_type"] == "AUDIT_GAP"]
    assert gaps, "no AUDIT_GAP record after writing resumed"
