"""Clients of a running service: sessions sharing a worker, audit counts end to end."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import anyio
import pytest

from helpers.audit_log import read_json_events
from helpers.paths import watchgate_executable
from helpers.records import received_requests
from helpers.sdk_client import open_session
from service_harness import fault_upstream, running_service, server_row, service_config, socket_session

pytestmark = pytest.mark.anyio

CALL_TIMEOUT = 30.0


async def test_two_clients_share_one_upstream(tmp_path: Path, runtime_dir: Path, gateway_env: dict[str, str],
                                              stderr_path: Path, write_service_config, audit_path: Path) -> None:
    config = write_service_config(service_config(runtime_dir, [fault_upstream(tmp_path, gateway_env["WATCHGATE_TEST_ID"],
                                                                             "alpha")], audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        path = service.socket_path("alpha")
        async with socket_session(path, "client-one") as first, socket_session(path, "client-two") as second:
            with anyio.fail_after(CALL_TIMEOUT):
                results = await asyncio.gather(
                    first.call_tool("echo", {"text": "from one"}),
                    second.call_tool("echo", {"text": "from two"}),
                )
            await service.wait_status(lambda status: server_row(status, "alpha")["sessions"] == 2,
                                      "two sessions in status")
    assert [block.text for block in results[0].content] == ["from one"]
    assert [block.text for block in results[1].content] == ["from two"]
    assert len(received_requests(tmp_path / "alpha.record.jsonl", "initialize")) == 1
    users = {event.get("user") for event in read_json_events(audit_path) if event.get("event_type") == "REQUEST"}
    assert len(users) == 1
    assert users.pop().endswith(f"({os.getuid()})")


async def test_audit_events_counted_end_to_end(tmp_path: Path, runtime_dir: Path, gateway_env: dict[str, str],
                                               stderr_path: Path, write_service_config, audit_path: Path) -> None:
    test_id = gateway_env["WATCHGATE_TEST_ID"]
    upstreams = [fault_upstream(tmp_path, test_id, "alpha"), fault_upstream(tmp_path, test_id, "beta")]
    config = write_service_config(service_config(runtime_dir, upstreams, audit_path))
    calls_per_client = 40
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        async with socket_session(service.socket_path("alpha")) as alpha, \
                socket_session(service.socket_path("beta")) as beta:
            with anyio.fail_after(CALL_TIMEOUT):
                await asyncio.gather(*(session.call_tool("echo", {"text": f"call {index}"})
                                       for index in range(calls_per_client) for session in (alpha, beta)))
    events = read_json_events(audit_path)
    for worker in ("alpha", "beta"):
        sequence = [event["seq"] for event in events if event.get("worker") == worker and "seq" in event]
        assert sequence, f"no events from {worker}"
        assert sorted(sequence) == list(range(1, len(sequence) + 1)), f"{worker} sequence has gaps or repeats"
        calls = [event for event in events if event.get("worker") == worker
                 and event.get("method") == "tools/call"]
        assert len([event for event in calls if event["event_type"] == "REQUEST"]) == calls_per_client
        assert len([event for event in calls if event["event_type"] == "RESPONSE"]) == calls_per_client
    assert not [event for event in events if event.get("event_type") == "AUDIT_GAP"]


CONNECT_SCRIPT = """
import socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.settimeout(10)
try:
    sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\\n')
    print(repr(sock.recv(65536)))
except OSError:
    print(repr(b""))
"""
NOBODY_UID = 65534
# An interpreter that another user may run; the venv's may sit in root's home.
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(os.getuid() != 0, reason="connecting as another user needs root")
@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason=f"{SYSTEM_PYTHON} not found")
async def test_worker_rejects_other_users(tmp_path: Path, runtime_dir: Path, gateway_env: dict[str, str],
                                          stderr_path: Path, write_service_config, audit_path: Path) -> None:
    config = write_service_config(service_config(runtime_dir, [fault_upstream(tmp_path, gateway_env["WATCHGATE_TEST_ID"],
                                                                             "alpha")], audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        # Open the test's own directory and socket to every user, so only the peer check can reject the client.
        os.chmod(runtime_dir, 0o711)
        os.chmod(service.socket_path("alpha"), 0o666)
        process = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, "-c", CONNECT_SCRIPT, service.socket_path("alpha"), user=NOBODY_UID,
            stdout=asyncio.subprocess.PIPE, env=gateway_env)
        output, _ = await asyncio.wait_for(process.communicate(), CALL_TIMEOUT)
        assert output.strip() == b"b''", "the worker answered a connection from another user"
        assert f"rejected a connection from uid {NOBODY_UID}" in service.stderr_text()


async def test_sdk_client_through_shim(tmp_path: Path, runtime_dir: Path, gateway_env: dict[str, str],
                                       stderr_path: Path, write_service_config, audit_path: Path) -> None:
    """The client entry `watchgate --config FILE --server NAME` relays to the running worker."""
    config = write_service_config(service_config(runtime_dir, [fault_upstream(tmp_path, gateway_env["WATCHGATE_TEST_ID"],
                                                                             "alpha")], audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        arguments = ["--config", str(config), "--server", "alpha", "--mode", "shim"]
        async with open_session(watchgate_executable(), arguments, gateway_env, tmp_path,
                                tmp_path / "shim.stderr") as session:
            with anyio.fail_after(CALL_TIMEOUT):
                await session.initialize()
                result = await session.call_tool("echo", {"text": "through the shim"})
            await service.wait_status(lambda status: server_row(status, "alpha")["sessions"] == 1,
                                      "the shim's session in status")
    assert [block.text for block in result.content] == ["through the shim"]
    assert len(received_requests(tmp_path / "alpha.record.jsonl", "tools/call")) == 1
