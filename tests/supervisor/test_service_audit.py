"""The service's audit path: critical and non-critical files that cannot be written."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from helpers.audit_log import read_json_events
from helpers.configs import audit_entry
from service_harness import fault_upstream, running_service, service_config

pytestmark = pytest.mark.anyio

RESPONSE_TIMEOUT = 20.0
RECOVERY_TIMEOUT = 20.0
READ_LIMIT = 16 * 1024 * 1024  # bytes per response line; asyncio's 64 KiB default is too small for big results
AUDIT_UNAVAILABLE = -32006
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    def send(self, message: dict) -> None:
        self.writer.write(json.dumps(message).encode() + b"\n")

    async def receive(self) -> dict:
        line = await asyncio.wait_for(self.reader.readline(), RESPONSE_TIMEOUT)
        assert line, "the worker closed the connection"
        return json.loads(line)

    async def request(self, message: dict) -> dict:
        self.send(message)
        while True:
            response = await self.receive()
            if response.get("id") == message["id"]:
                return response


async def _connect(path: str) -> RawConnection:
    return RawConnection(*await asyncio.open_unix_connection(path, limit=READ_LIMIT))


def _blocked_audit_config(tmp_path: Path, runtime_dir: Path, env: dict[str, str], critical: bool) -> tuple[dict, Path]:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the audit folder should be\n", encoding="utf-8")
    audit_file = blocker / "audit.log"
    config = service_config(runtime_dir, [fault_upstream(tmp_path, env["WATCHGATE_TEST_ID"], "alpha")], audit_file)
    config["plugins"]["auditing"] = [audit_entry(audit_file, critical=critical)]
    return config, audit_file


async def test_critical_audit_failure_rejects_until_writable(tmp_path, runtime_dir, gateway_env, stderr_path,
                                                             write_service_config) -> None:
    data, audit_file = _blocked_audit_config(tmp_path, runtime_dir, gateway_env, critical=True)
    config = write_service_config(data)
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        status = await service.wait_status(
            lambda status: status["writer"]["sinks"] and not status["writer"]["sinks"][0]["healthy"],
            "the audit file reported as unwritable")
        assert status["writer"]["sinks"][0]["path"] == str(audit_file)
        connection = await _connect(service.socket_path("alpha"))
        deadline = asyncio.get_running_loop().time() + RECOVERY_TIMEOUT
        response = await connection.request(INITIALIZE)
        while "error" not in response and asyncio.get_running_loop().time() < deadline:
            response = await connection.request({**INITIALIZE, "id": response["id"] + 1})
        assert response["error"]["code"] == AUDIT_UNAVAILABLE

        (tmp_path / "blocked").unlink()
        await service.wait_status(lambda status: status["writer"]["sinks"][0]["healthy"],
                                  "the audit file writable again")
        request_id = 100
        response = await connection.request({**INITIALIZE, "id": request_id})
        while "error" in response and asyncio.get_running_loop().time() < deadline + RECOVERY_TIMEOUT:
            request_id += 1
            response = await connection.request({**INITIALIZE, "id": request_id})
        assert "result" in response, response
        connection.writer.close()
    events = read_json_events(audit_file)
    assert [event for event in events if event["event_type"] == "AUDIT_GAP"], "the loss was not recorded"
    assert [event for event in events if event["event_type"] == "RESPONSE" and event.get("method") == "initialize"]


async def test_noncritical_audit_failure_counts_lost(tmp_path, runtime_dir, gateway_env, stderr_path,
                                                     write_service_config) -> None:
    data, _ = _blocked_audit_config(tmp_path, runtime_dir, gateway_env, critical=False)
    config = write_service_config(data)
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        connection = await _connect(service.socket_path("alpha"))
        response = await connection.request(INITIALIZE)
        assert "result" in response, response
        status = await service.wait_status(lambda status: status["writer"]["lost"] > 0, "lost events counted")
        assert not status["writer"]["sinks"][0]["healthy"]
        connection.writer.close()


BIG_BODY_CHARS = 100_000
BIG_CALLS = 40  # about 4 MB of audit frames: more than the pipe and the worker's buffer take


async def test_stalled_writer_pauses_clients_without_loss(tmp_path, runtime_dir, gateway_env, stderr_path,
                                                          write_service_config, audit_path) -> None:
    data = service_config(runtime_dir, [fault_upstream(tmp_path, gateway_env["WATCHGATE_TEST_ID"], "alpha")],
                          audit_path, heartbeat_timeout=60.0)
    data["plugins"]["auditing"] = [audit_entry(audit_path, include_bodies=True, max_body_bytes=2 * BIG_BODY_CHARS)]
    config = write_service_config(data)
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        writer_pid = (await service.status())["writer"]["pid"]
        connection = await _connect(service.socket_path("alpha"))
        assert "result" in await connection.request(INITIALIZE)
        os.kill(writer_pid, signal.SIGSTOP)
        try:
            for index in range(2, BIG_CALLS + 2):
                connection.send({"jsonrpc": "2.0", "id": index, "method": "tools/call",
                                 "params": {"name": "big", "arguments": {"size": BIG_BODY_CHARS}}})
            responses = [await connection.receive() for _ in range(BIG_CALLS)]
        finally:
            os.kill(writer_pid, signal.SIGCONT)
        assert all("result" in response for response in responses)
        assert "result" in await connection.request({**INITIALIZE, "id": BIG_CALLS + 2})
        connection.writer.close()
    events = read_json_events(audit_path)
    assert not [event for event in events if event["event_type"] == "AUDIT_GAP"]
    sequence = [event["seq"] for event in events]
    assert sorted(sequence) == list(range(1, len(sequence) + 1))
    responses = [event for event in events if event["event_type"] == "RESPONSE" and event.get("method") == "tools/call"]
    assert len(responses) == BIG_CALLS
    assert all(len(event["result"]["content"][0]["text"]) == BIG_BODY_CHARS for event in responses)


async def test_killed_worker_loss_recorded_as_gap(tmp_path, runtime_dir, gateway_env, stderr_path,
                                                  write_service_config, audit_path) -> None:
    data = service_config(runtime_dir, [fault_upstream(tmp_path, gateway_env["WATCHGATE_TEST_ID"], "alpha")],
                          audit_path, heartbeat_timeout=60.0)
    data["plugins"]["auditing"] = [audit_entry(audit_path, include_bodies=True, max_body_bytes=2 * BIG_BODY_CHARS)]
    config = write_service_config(data)
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        status = await service.status()
        writer_pid = status["writer"]["pid"]
        worker_pid = status["servers"][0]["worker_pid"]
        connection = await _connect(service.socket_path("alpha"))
        assert "result" in await connection.request(INITIALIZE)
        os.kill(writer_pid, signal.SIGSTOP)
        try:
            for index in range(2, BIG_CALLS + 2):
                connection.send({"jsonrpc": "2.0", "id": index, "method": "tools/call",
                                 "params": {"name": "big", "arguments": {"size": BIG_BODY_CHARS}}})
            # The pipe takes about ten of these events; later ones wait in the worker's own buffer.
            counted = await service.wait_status(lambda status: status["servers"][0]["requests"] >= 15,
                                                "calls whose audit events overflow the pipe")
            # One more heartbeat, so the supervisor's figure of sent events covers the buffered ones.
            await service.wait_status(lambda status: status["servers"][0]["requests"] >= counted["servers"][0]["requests"]
                                      and status["service"]["uptime"] > counted["service"]["uptime"] + 0.5,
                                      "a later heartbeat")
            os.kill(worker_pid, signal.SIGKILL)
        finally:
            os.kill(writer_pid, signal.SIGCONT)
        connection.writer.close()
        await service.wait_status(lambda status: status["servers"][0]["worker_pid"] not in (None, worker_pid)
                                  and status["servers"][0]["state"] == "RUNNING", "a new worker")
    gaps = [event for event in read_json_events(audit_path) if event["event_type"] == "AUDIT_GAP"]
    assert gaps, "the events lost with the killed worker were not recorded as a gap"
    assert gaps[0]["worker"] == "alpha"
    assert gaps[0]["plugin_metadata"]["lost_events"] > 0
