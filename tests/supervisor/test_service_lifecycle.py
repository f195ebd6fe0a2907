"""Start, stop and supervision of the service as a whole: signals, systemd, the control socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path

import anyio
import pytest

from helpers.paths import NODE_DIR
from helpers.processes import MARKER_VARIABLE, find_test_processes, wait_for_exit
from service_harness import Service, fault_upstream, running_service, server_row, service_config, socket_session

pytestmark = pytest.mark.anyio

EXIT_TIMEOUT = 15.0
# Seconds; generous, because status reads the supervisor's table and never waits for a worker.
STATUS_BOUND = 5.0
NOTIFY_TIMEOUT = 20.0
CALL_TIMEOUT = 60.0
SATURATING_CALLS = 200
BIG_RESULT_CHARS = 200_000


def _fault(tmp_path: Path, env: dict[str, str], name: str = "alpha") -> dict:
    return fault_upstream(tmp_path, env["WATCHGATE_TEST_ID"], name)


@pytest.mark.npm
@pytest.mark.usefixtures("npm_servers")
async def test_sigterm_leaves_no_process(tmp_path, runtime_dir, gateway_env, stderr_path, write_service_config,
                                         audit_path, sandbox_home) -> None:
    filesystem = {
        "name": "filesystem",
        "command": ["npx", "@modelcontextprotocol/server-filesystem", str(sandbox_home / "claude-sandbox")],
        "cwd": str(NODE_DIR),
        "env": {MARKER_VARIABLE: gateway_env[MARKER_VARIABLE], "npm_config_offline": "true"},
        "startup_timeout": 30.0,
    }
    config = write_service_config(service_config(runtime_dir, [_fault(tmp_path, gateway_env), filesystem],
                                                 audit_path))
    service = await Service.start(config, runtime_dir, gateway_env, stderr_path)
    try:
        await service.wait_running(timeout=60.0)
        async with socket_session(service.socket_path("filesystem")) as session:
            with anyio.fail_after(CALL_TIMEOUT):
                tools = await session.list_tools()
        assert "read_text_file" in {tool.name for tool in tools.tools} or tools.tools
        started = find_test_processes(gateway_env[MARKER_VARIABLE])
        assert len(started) >= 5, "expected supervisor, writer, two workers, the fault server and npx/node"
        assert await service.stop() == 0
    except BaseException:
        await service.abort()
        raise
    leftovers = wait_for_exit(find_test_processes(gateway_env[MARKER_VARIABLE]), EXIT_TIMEOUT)
    assert not leftovers, f"processes left after SIGTERM: {[process.pid for process in leftovers]}"
    assert sorted(os.listdir(runtime_dir)) == []


async def test_second_service_reports_already_running(tmp_path, runtime_dir, gateway_env, stderr_path,
                                                      write_service_config, audit_path) -> None:
    config = write_service_config(service_config(runtime_dir, [_fault(tmp_path, gateway_env)], audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        second_stderr = tmp_path / "second.stderr"
        second = await Service.start(config, runtime_dir, gateway_env, second_stderr)
        assert await second.wait_exit(EXIT_TIMEOUT) == 1
        assert f"already running (pid {service.pid})" in second_stderr.read_text(encoding="utf-8")
        assert (await service.status())["service"]["pid"] == service.pid


async def test_stale_control_socket_is_replaced(tmp_path, runtime_dir, gateway_env, stderr_path,
                                                write_service_config, audit_path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(runtime_dir / "control.sock"))
    stale.close()
    config = write_service_config(service_config(runtime_dir, [_fault(tmp_path, gateway_env)], audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        assert (await service.status())["service"]["pid"] == service.pid
        assert oct(os.stat(runtime_dir).st_mode & 0o777) == "0o700"
        assert oct(os.stat(runtime_dir / "control.sock").st_mode & 0o777) == "0o600"
        assert oct(os.stat(service.socket_path("alpha")).st_mode & 0o777) == "0o600"


class NotifyListener:
    """A Unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def receive(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return

    async def wait_for(self, prefix: str, start: int = 0) -> int:
        """Wait for a message starting with `prefix` at or after index `start`; return its index."""
        deadline = time.monotonic() + NOTIFY_TIMEOUT
        while time.monotonic() < deadline:
            self.receive()
            for index in range(start, len(self.messages)):
                if self.messages[index].startswith(prefix):
                    return index
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {prefix!r} notification within {NOTIFY_TIMEOUT} s; got {self.messages}")


async def test_sd_notify_messages(tmp_path, runtime_dir, gateway_env, stderr_path, write_service_config,
                                  audit_path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    env = {**gateway_env, "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "400000"}
    config = write_service_config(service_config(runtime_dir, [_fault(tmp_path, gateway_env)], audit_path))
    try:
        service = await Service.start(config, runtime_dir, env, stderr_path)
        try:
            ready = await listener.wait_for("READY=1")
            await service.wait_running()
            status = await listener.wait_for("STATUS=1/1 servers running")
            watchdog = await listener.wait_for("WATCHDOG=1")
            await listener.wait_for("WATCHDOG=1", watchdog + 1)
            service.send_signal(signal.SIGHUP)
            reloading = await listener.wait_for("RELOADING=1", max(ready, status) + 1)
            assert "\nMONOTONIC_USEC=" in listener.messages[reloading]
            await listener.wait_for("READY=1", reloading + 1)
            assert await service.stop() == 0
        except BaseException:
            await service.abort()
            raise
        await listener.wait_for("STOPPING=1")
    finally:
        listener.sock.close()


async def test_status_answers_while_worker_saturated(tmp_path, runtime_dir, gateway_env, stderr_path,
                                                     write_service_config, audit_path) -> None:
    config = write_service_config(service_config(runtime_dir, [_fault(tmp_path, gateway_env)], audit_path,
                                                 heartbeat_timeout=30.0))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        reader, writer = await asyncio.open_unix_connection(service.socket_path("alpha"), limit=2**24)
        writer.write(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "flood", "version": "1"}}}).encode() + b"\n")
        writer.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        for index in range(1, SATURATING_CALLS + 1):
            writer.write(json.dumps({"jsonrpc": "2.0", "id": index, "method": "tools/call", "params": {
                "name": "big", "arguments": {"size": BIG_RESULT_CHARS}}}).encode() + b"\n")
        flood = asyncio.create_task(_read_responses(reader, SATURATING_CALLS + 1))
        answered = 0
        while not flood.done():
            started = time.monotonic()
            status = await asyncio.wait_for(service.status(), STATUS_BOUND)
            assert time.monotonic() - started < STATUS_BOUND
            assert server_row(status, "alpha")["state"] == "RUNNING"
            answered += 1
        await asyncio.wait_for(flood, CALL_TIMEOUT)
        writer.close()
        assert answered >= 1
        await service.wait_status(lambda status: server_row(status, "alpha")["requests"] >= SATURATING_CALLS,
                                  "the request count from the worker's heartbeat")


async def _read_responses(reader: asyncio.StreamReader, count: int) -> None:
    seen = 0
    while seen < count:
        line = await reader.readline()
        assert line, "the worker closed the connection"
        if b'"id"' in line:
            seen += 1


async def test_supervisor_death_takes_everything_down(tmp_path, runtime_dir, gateway_env, stderr_path,
                                                      write_service_config, audit_path) -> None:
    config = write_service_config(service_config(runtime_dir, [_fault(tmp_path, gateway_env),
                                                               _fault(tmp_path, gateway_env, "beta")], audit_path))
    service = await Service.start(config, runtime_dir, gateway_env, stderr_path)
    try:
        await service.wait_running()
        children = [process for process in find_test_processes(gateway_env[MARKER_VARIABLE])
                    if process.pid != service.pid]
        assert len(children) >= 5, "expected the writer, two workers and two upstreams"
        service.send_signal(signal.SIGKILL)
        assert await service.wait_exit() == -signal.SIGKILL
    except BaseException:
        await service.abort()
        raise
    leftovers = wait_for_exit(children, EXIT_TIMEOUT)
    assert not leftovers, f"still running after the supervisor died: {[process.pid for process in leftovers]}"


async def test_sigterm_drains_in_flight_requests(tmp_path, runtime_dir, gateway_env, stderr_path,
                                                 write_service_config, audit_path) -> None:
    config = write_service_config(service_config(runtime_dir, [_fault(tmp_path, gateway_env)], audit_path,
                                                 shutdown_timeout=10.0))
    service = await Service.start(config, runtime_dir, gateway_env, stderr_path)
    try:
        await service.wait_running()
        async with socket_session(service.socket_path("alpha")) as session:
            call = asyncio.create_task(session.call_tool("slow", {"seconds": 1.0}))
            await service.wait_status(lambda status: server_row(status, "alpha")["requests"] >= 2,
                                      "the slow call in flight")
            service.send_signal(signal.SIGTERM)
            with anyio.fail_after(CALL_TIMEOUT):
                result = await call
            assert not result.isError
        assert await service.wait_exit() == 0
    except BaseException:
        await service.abort()
        raise


async def test_second_sigterm_forces_stop(tmp_path, runtime_dir, gateway_env, stderr_path, write_service_config,
                                          audit_path) -> None:
    config = write_service_config(service_config(runtime_dir, [_fault(tmp_path, gateway_env)], audit_path,
                                                 shutdown_timeout=60.0))
    service = await Service.start(config, runtime_dir, gateway_env, stderr_path)
    try:
        await service.wait_running()
        async with socket_session(service.socket_path("alpha")) as session:
            call = asyncio.create_task(session.call_tool("slow", {"seconds": 120.0}))
            await service.wait_status(lambda status: server_row(status, "alpha")["requests"] >= 2,
                                      "the slow call in flight")
            service.send_signal(signal.SIGTERM)
            await service.wait_status(lambda status: status["service"]["state"] != "running",
                                      "the service stopping")
            started = time.monotonic()
            service.send_signal(signal.SIGTERM)
            assert await service.wait_exit() == 1
            assert time.monotonic() - started < EXIT_TIMEOUT
            call.cancel()
    except BaseException:
        await service.abort()
        raise
    leftovers = wait_for_exit(find_test_processes(gateway_env[MARKER_VARIABLE]), EXIT_TIMEOUT)
    assert not leftovers, f"processes left after a forced stop: {[process.pid for process in leftovers]}"


async def test_stop_command_stops_service(tmp_path, runtime_dir, gateway_env, stderr_path, write_service_config,
                                          audit_path) -> None:
    config = write_service_config(service_config(runtime_dir, [_fault(tmp_path, gateway_env)], audit_path))
    service = await Service.start(config, runtime_dir, gateway_env, stderr_path)
    try:
        await service.wait_running()
        assert await service.call("stop") == {"stopping": True}
        assert await service.wait_exit() == 0
    except BaseException:
        await service.abort()
        raise
