"""Running `watchgate serve` in tests: configs, the control client, SDK sessions over worker sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.shared.message import SessionMessage

from helpers.configs import allow_all_entry, audit_entry, fault_server_command
from helpers.paths import watchgate_executable
from helpers.processes import MARKER_VARIABLE
from watchgate.ctl import protocol
from watchgate.ctl.client import ControlClient

# Bounds for waits; each is far above what a healthy run needs.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0
STATE_TIMEOUT = 20.0
CONTROL_TIMEOUT = 10.0
STATUS_POLL_INTERVAL = 0.05
EXIT_POLL_INTERVAL = 0.02
READ_TIMEOUT = 30.0
SOCKET_READ_BYTES = 65536

# Fast settings so crash and restart tests finish in seconds.
FAST_RESTART = {"backoff_initial": 0.1, "backoff_max": 0.5, "max_restarts": 3, "restart_window": 60.0}
FAST_SERVICE = {"heartbeat_interval": 0.2, "heartbeat_timeout": 3.0, "shutdown_timeout": 3.0}


def fault_upstream(directory: Path, test_id: str, name: str, *arguments: str, **settings: Any) -> dict[str, Any]:
    """Return an upstreams entry running the fault server, recording into directory/<name>.record.jsonl."""
    command = fault_server_command("--record", str(directory / f"{name}.record.jsonl"), *arguments)
    return {
        "name": name,
        "command": command,
        "cwd": str(directory),
        "env": {MARKER_VARIABLE: test_id},
        "startup_timeout": 10.0,
        "request_timeout": 60.0,
        "shutdown_grace": 1.0,
        "terminate_timeout": 2.0,
        "restart": dict(FAST_RESTART),
        **settings,
    }


def service_config(runtime_dir: Path, upstreams: list[dict[str, Any]], audit_file: Path,
                   security: list[dict[str, Any]] | None = None, **service: Any) -> dict[str, Any]:
    return {
        "proxy": {"transport": "stdio", "upstreams": upstreams},
        "plugins": {
            "security": security if security is not None else [allow_all_entry()],
            "auditing": [audit_entry(audit_file)],
        },
        "service": {"runtime_dir": str(runtime_dir), **FAST_SERVICE, **service},
    }


class Service:
    """One `watchgate serve` process and its control socket."""

    def __init__(self, process: asyncio.subprocess.Process, runtime_dir: Path, stderr_path: Path):
        self.process = process
        self.runtime_dir = runtime_dir
        self.stderr_path = stderr_path
        self.client = ControlClient(str(runtime_dir / "control.sock"), CONTROL_TIMEOUT)

    @classmethod
    async def start(cls, config_path: Path, runtime_dir: Path, env: dict[str, str], stderr_path: Path) -> Service:
        with open(stderr_path, "ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                watchgate_executable(), "serve", "--config", str(config_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
                env=env, cwd=str(config_path.parent),
            )
        return cls(process, runtime_dir, stderr_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def socket_path(self, name: str) -> str:
        return str(self.runtime_dir / f"{name}.sock")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace") if self.stderr_path.exists() else ""

    async def call(self, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self.client.call, command, args)

    async def request(self, command: str, args: dict[str, Any] | None = None) -> protocol.Response:
        request = protocol.Request(command=command, args=args or {})
        return await asyncio.to_thread(self.client.request, request)

    async def status(self) -> dict[str, Any]:
        return await self.call(protocol.STATUS)

    async def wait_status(self, check: Callable[[dict[str, Any]], bool], description: str,
                          timeout: float = STATE_TIMEOUT) -> dict[str, Any]:
        """Poll `status` until `check` accepts it; fail with the last status after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: dict[str, Any] | Exception | None = None
        while loop.time() < deadline:
            if self.process.returncode is not None:
                raise AssertionError(f"service exited with {self.process.returncode} while waiting for "
                                     f"{description}; stderr:\n{self.stderr_text()[-4000:]}")
            try:
                last = await self.status()
            except Exception as error:  # the socket may not exist yet
                last = error
            else:
                if check(last):
                    return last
            await asyncio.sleep(STATUS_POLL_INTERVAL)
        raise AssertionError(f"timed out after {timeout} s waiting for {description}; last status: {last}; "
                             f"stderr:\n{self.stderr_text()[-4000:]}")

    async def wait_running(self, names: list[str] | None = None, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        def all_running(status: dict[str, Any]) -> bool:
            servers = {row["name"]: row for row in status["servers"]}
            wanted = names if names is not None else list(servers)
            return (status["writer"]["state"] == "RUNNING"
                    and all(name in servers and servers[name]["state"] == "RUNNING"
                            and servers[name]["upstream_pid"] for name in wanted))

        return await self.wait_status(all_running, f"servers {names or 'all'} and the writer RUNNING", timeout)

    def send_signal(self, signum: signal.Signals) -> None:
        if self.process.returncode is None:
            os.kill(self.pid, signum)

    async def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.process.returncode is None:
            if loop.time() >= deadline:
                raise AssertionError(f"service (pid {self.pid}) still running {timeout} s after it should have "
                                     f"exited; stderr:\n{self.stderr_text()[-4000:]}")
            await asyncio.sleep(EXIT_POLL_INTERVAL)
        return self.process.returncode

    async def stop(self) -> int:
        self.send_signal(signal.SIGTERM)
        return await self.wait_exit()

    async def abort(self) -> None:
        """Stop the service after a failed test: SIGTERM, then SIGKILL if it hangs."""
        self.send_signal(signal.SIGTERM)
        try:
            await self.wait_exit()
        except AssertionError:
            self.send_signal(signal.SIGKILL)
            await self.process.wait()


def server_row(status: dict[str, Any], name: str) -> dict[str, Any]:
    for row in status["servers"]:
        if row["name"] == name:
            return row
    raise AssertionError(f"server {name!r} not in status: {status['servers']}")


@contextlib.asynccontextmanager
async def running_service(config_path: Path, runtime_dir: Path, env: dict[str, str],
                          stderr_path: Path, wait_for: list[str] | None = None) -> AsyncIterator[Service]:
    """Start the service and wait until it runs; stop it (or kill it after a failure) at the end.

    `wait_for` names the servers that must be RUNNING first (default: all of them).
    """
    service = await Service.start(config_path, runtime_dir, env, stderr_path)
    try:
        await service.wait_running(wait_for)
        yield service
    except BaseException:
        await service.abort()
        raise
    else:
        if service.process.returncode is None:
            assert await service.stop() == 0, service.stderr_text()[-4000:]


@contextlib.asynccontextmanager
async def socket_session(path: str, client_name: str = "watchgate-tests") -> AsyncIterator[ClientSession]:
    """Connect the official SDK client to a worker's Unix socket; yield it initialized."""
    stream = await anyio.connect_unix(path)
    incoming_send, incoming = anyio.create_memory_object_stream[SessionMessage | Exception](100)
    outgoing, outgoing_receive = anyio.create_memory_object_stream[SessionMessage](100)

    async def read_socket() -> None:
        buffer = b""
        async with incoming_send:
            with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                while True:
                    buffer += await stream.receive(SOCKET_READ_BYTES)
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                            await incoming_send.send(SessionMessage(message))

    async def write_socket() -> None:
        async with outgoing_receive:
            async for session_message in outgoing_receive:
                data = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                await stream.send(data.encode() + b"\n")

    async with anyio.create_task_group() as group:
        group.start_soon(read_socket)
        group.start_soon(write_socket)
        try:
            async with ClientSession(incoming, outgoing, read_timeout_seconds=READ_TIMEOUT,
                                     client_info=types.Implementation(name=client_name, version="1.0")) as session:
                await session.initialize()
                yield session
        finally:
            group.cancel_scope.cancel()
            await stream.aclose()
