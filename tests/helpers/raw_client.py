"""A raw JSON-RPC line driver for `watchgate --config FILE`, for protocol edge cases.

The official SDK client refuses to send malformed messages and hides ids, so
these tests talk to the gateway's stdin and stdout directly: write any bytes,
read newline-delimited JSON, wait for a response by id with a bounded timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.paths import watchgate_executable

Message = dict[str, Any]

# asyncio's default 64 KiB line limit would break on large results, and the
# gateway's own default maximum message size is 32 MiB.
STREAM_LIMIT = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 20.0
# Time the gateway gets to stop its upstream and exit after stdin closes.
EXIT_TIMEOUT = 15.0
EXIT_POLL_INTERVAL = 0.02
# How long stdout may stay open after the gateway exited before the tests
# conclude that a child process inherited it.
STDOUT_EOF_TIMEOUT = 5.0
PROTOCOL_VERSION = "2025-06-18"


def is_response(message: Message) -> bool:
    return "method" not in message and ("result" in message or "error" in message)


class RawGateway:
    """One `watchgate` process driven through its stdin and stdout."""

    def __init__(self, process: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.process = process
        self.stderr_path = stderr_path
        self.messages: list[Message] = []
        # Output lines that were not JSON objects. The gateway must never write any.
        self.invalid_output: list[bytes] = []
        self.stdout_closed = False
        self._changed = asyncio.Condition()
        self._next_id = 0
        self._reader = asyncio.create_task(self._read_stdout())

    @classmethod
    async def start(
        cls, config_path: Path, env: dict[str, str], cwd: Path, stderr_path: Path, extra_args: tuple[str, ...] = ()
    ) -> RawGateway:
        with open(stderr_path, "ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                watchgate_executable(),
                "--config",
                str(config_path),
                *extra_args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=str(cwd),
                limit=STREAM_LIMIT,
                start_new_session=True,
            )
        return cls(process, stderr_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_tail(self, size: int = 4000) -> str:
        try:
            data = self.stderr_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[-size:].decode("utf-8", "replace")

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        try:
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    break
                self._accept_line(line)
                async with self._changed:
                    self._changed.notify_all()
        finally:
            self.stdout_closed = True
            async with self._changed:
                self._changed.notify_all()

    def _accept_line(self, line: bytes) -> None:
        stripped = line.rstrip(b"\n")
        try:
            message = json.loads(stripped)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.invalid_output.append(stripped)
            return
        if isinstance(message, dict):
            self.messages.append(message)
        else:
            self.invalid_output.append(stripped)

    # Sending

    async def send_bytes(self, data: bytes) -> None:
        """Write `data` and a newline exactly as given."""
        assert self.process.stdin is not None
        self.process.stdin.write(data + b"\n")
        await self.process.stdin.drain()

    async def send(self, message: Message) -> None:
        await self.send_bytes(json.dumps(message, ensure_ascii=False).encode("utf-8"))

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send_request(self, method: str, params: Message | None = None, request_id: Any = None) -> Any:
        """Send a request without waiting for the response and return its id."""
        if request_id is None:
            request_id = self.new_id()
        message: Message = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return request_id

    async def notify(self, method: str, params: Message | None = None) -> None:
        message: Message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)

    async def request(
        self, method: str, params: Message | None = None, request_id: Any = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Message:
        """Send a request and return its whole response message (result or error)."""
        request_id = await self.send_request(method, params, request_id)
        return await self.response(request_id, timeout)

    async def call_tool(
        self, name: str, arguments: Message | None = None, timeout: float = DEFAULT_TIMEOUT, **extra: Any
    ) -> Message:
        params: Message = {"name": name, "arguments": arguments or {}, **extra}
        return await self.request("tools/call", params, timeout=timeout)

    async def respond(self, request_id: Any, result: Message) -> None:
        await self.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    async def initialize(
        self, client_name: str = "raw-test-client", client_version: str = "1.0.0", capabilities: Message | None = None
    ) -> Message:
        """Run the initialize handshake and return the initialize response, which may be an error."""
        response = await self.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": capabilities or {},
                "clientInfo": {"name": client_name, "version": client_version},
            },
        )
        if "result" in response:
            await self.notify("notifications/initialized")
        return response

    # Receiving

    async def wait_for(
        self, predicate: Callable[[Message], bool], timeout: float, description: str, start: int = 0
    ) -> Message:
        """Return the first received message from index `start` on that matches `predicate`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        index = start
        while True:
            while index < len(self.messages):
                message = self.messages[index]
                index += 1
                if predicate(message):
                    return message
            if self.stdout_closed:
                raise AssertionError(
                    f"gateway closed stdout while waiting for {description}; stderr:\n{self.stderr_tail()}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {description}; "
                    f"last messages: {self.messages[-5:]}; stderr:\n{self.stderr_tail()}"
                )
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: len(self.messages) > index or self.stdout_closed),
                        remaining,
                    )

    async def response(self, request_id: Any, timeout: float = DEFAULT_TIMEOUT) -> Message:
        return await self.wait_for(
            lambda message: is_response(message) and message.get("id") == request_id and same_type(message, request_id),
            timeout,
            f"the response to id {request_id!r}",
        )

    async def notification(self, method: str, timeout: float = DEFAULT_TIMEOUT, start: int = 0) -> Message:
        return await self.wait_for(
            lambda message: message.get("method") == method and "id" not in message,
            timeout,
            f"a {method} notification",
            start,
        )

    async def server_request(self, method: str, timeout: float = DEFAULT_TIMEOUT) -> Message:
        return await self.wait_for(
            lambda message: message.get("method") == method and "id" in message,
            timeout,
            f"a {method} request from the gateway",
        )

    def responses_for(self, request_id: Any) -> list[Message]:
        return [message for message in self.messages if is_response(message) and message.get("id") == request_id]

    # Ending

    async def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Wait for the gateway to exit and return its exit status. Kill it and fail after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Poll the return code: Process.wait() also waits for pipe EOF, which
        # would hide whether the gateway itself exited.
        while self.process.returncode is None:
            if loop.time() >= deadline:
                self.kill()
                raise AssertionError(
                    f"watchgate (pid {self.pid}) still running {timeout} s after it should have exited; "
                    f"stderr:\n{self.stderr_tail()}"
                )
            await asyncio.sleep(EXIT_POLL_INTERVAL)
        return self.process.returncode

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        if not self.process.stdin.is_closing():
            self.process.stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await self.process.stdin.wait_closed()

    async def close(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Close stdin (client EOF), wait for the gateway to exit and return its exit status."""
        await self.close_stdin()
        status = await self.wait_exit(timeout)
        await self.finish_reading()
        return status

    async def finish_reading(self) -> None:
        """Wait for stdout EOF after exit, because an open stdout means a child inherited it."""
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), STDOUT_EOF_TIMEOUT)
        except TimeoutError:
            self._reader.cancel()
            raise AssertionError(
                f"watchgate exited but its stdout stayed open for {STDOUT_EOF_TIMEOUT} s: "
                "a child process inherited the client's pipe"
            ) from None

    def send_signal(self, signum: signal.Signals) -> None:
        if self.process.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def abort(self) -> None:
        """Kill the gateway if it still runs, after a test failed half-way."""
        self.kill()
        with contextlib.suppress(AssertionError):
            await self.wait_exit(EXIT_TIMEOUT)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


def same_type(message: Message, request_id: Any) -> bool:
    """Return True when the response id has the JSON type of the request id (1 is not "1" nor True)."""
    return type(message.get("id")) is type(request_id)


@contextlib.asynccontextmanager
async def running_gateway(
    config_path: Path, env: dict[str, str], cwd: Path, stderr_path: Path, extra_args: tuple[str, ...] = ()
):
    """Start a RawGateway. On exit, close it (it must exit with status 0), or kill it if the body failed."""
    gateway = await RawGateway.start(config_path, env, cwd, stderr_path, extra_args)
    try:
        yield gateway
    except BaseException:
        await gateway.abort()
        raise
    else:
        if gateway.process.returncode is None:
            status = await gateway.close()
            assert status == 0, f"watchgate exited with status {status} after the client closed stdin"
        assert not gateway.invalid_output, f"gateway wrote lines that are not JSON objects: {gateway.invalid_output[:3]}"
