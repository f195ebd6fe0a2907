"""A raw JSON-RPC client for benchmarks: one MCP server process over stdio.

`StdioClient` starts a command, runs the MCP initialize handshake, then sends
`tools/call` echo requests one at a time or with several in flight. Each
response must carry the id it was sent with and the payload the echo tool was
asked for (a per-request tag and size). Latency is measured per request with
`time.perf_counter_ns`, from when the request is handed to the write path to
the arrival of the data that completes its response. With several requests in
flight, the requests sent in reaction to one read go out in one write after that
read is handled, which adds the time to handle the rest of the read to their
latency.

The client works on asyncio protocol callbacks, not streams: the next request
of a closed-loop run is written from the callback that received the previous
response, so the client adds as little as possible to what it measures.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

CLOSE_TIMEOUT = 10.0  # seconds for a server to exit after its stdin closes
TERMINATE_TIMEOUT = 5.0  # seconds after SIGTERM before SIGKILL
PROTOCOL_VERSION = "2025-06-18"


class ProtocolFailure(Exception):
    """A response was missing, malformed, an error, or carried the wrong id or payload."""


class _TextItem(msgspec.Struct):
    text: str = ""


class _ToolResult(msgspec.Struct):
    content: list[_TextItem] = []
    isError: bool = False


class _Message(msgspec.Struct):
    id: int | str | None = None
    result: msgspec.Raw = None  # None when the member is absent
    error: Any = None
    method: str | None = None


_message_decoder = msgspec.json.Decoder(_Message)
_tool_result_decoder = msgspec.json.Decoder(_ToolResult)
_encoder = msgspec.json.Encoder()


@dataclass
class Reply:
    """One response: its id, raw result or error, and the receive time in ns."""

    request_id: int
    result: msgspec.Raw | None
    error: Any
    received_ns: int


@dataclass
class RunResult:
    """Latencies (ns) of the requests of one run and the run's wall time (ns)."""

    latencies_ns: list[int] = field(default_factory=list)
    wall_ns: int = 0

    def extend(self, other: RunResult) -> None:
        self.latencies_ns.extend(other.latencies_ns)
        self.wall_ns += other.wall_ns

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies_ns) / (self.wall_ns / 1e9) if self.wall_ns else float("nan")


class _EchoRun:
    """A closed-loop run: `count` echo calls with at most `in_flight` outstanding."""

    def __init__(self, client: StdioClient, count: int, size: int, in_flight: int):
        self.client = client
        self.count = count
        self.size = size
        self.in_flight = in_flight
        self.sent = 0
        self.result = RunResult()
        self.done = asyncio.get_running_loop().create_future()
        self.started_ns = 0

    def start(self) -> None:
        self.started_ns = time.perf_counter_ns()
        if self.count == 0:
            self.done.set_result(self.result)
            return
        for _ in range(min(self.in_flight, self.count)):
            self.send_next()

    def send_next(self) -> None:
        self.sent += 1
        self.client._send_echo(self, self.size)

    def on_reply(self, reply: Reply, sent_ns: int, tag: str) -> None:
        if self.done.done():
            return
        try:
            check_echo_reply(reply, reply.request_id, tag, self.size, self.client.name)
        except ProtocolFailure as error:
            self.done.set_exception(error)
            return
        latencies = self.result.latencies_ns
        latencies.append(reply.received_ns - sent_ns)
        if self.sent < self.count:
            self.send_next()
        elif len(latencies) == self.count:
            self.result.wall_ns = time.perf_counter_ns() - self.started_ns
            self.done.set_result(self.result)

    def fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)


class _Protocol(asyncio.SubprocessProtocol):
    def __init__(self, client: StdioClient):
        self.client = client

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.client._feed(data, time.perf_counter_ns())

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self.client._fail_all("the server closed its stdout")

    def process_exited(self) -> None:
        self.client._on_exit()


class StdioClient:
    """One MCP client session with a server process started from `command`."""

    def __init__(self, command: Sequence[str], *, tool: str = "echo", env: dict[str, str] | None = None,
                 cwd: str | None = None, stderr_path: str | None = None, name: str = "client"):
        self.command = list(command)
        self.tool = tool
        self.env = env
        self.cwd = cwd
        self.stderr_path = stderr_path
        self.name = name
        self.transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, Any] = {}
        self._buffer = bytearray()
        self._batch: list[bytes] | None = None
        self._closed_reason: str | None = None
        self._exited: asyncio.Future | None = None
        self._stderr_file = None

    @property
    def pid(self) -> int | None:
        return self.transport.get_pid() if self.transport else None

    async def start(self, timeout: float = 30.0) -> dict:
        """Start the process and run the MCP initialize handshake; return the initialize result."""
        loop = asyncio.get_running_loop()
        stderr = asyncio.subprocess.DEVNULL
        if self.stderr_path:
            self._stderr_file = open(self.stderr_path, "ab")
            stderr = self._stderr_file
        self._exited = loop.create_future()
        self.transport, _ = await loop.subprocess_exec(
            lambda: _Protocol(self), *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=stderr, env=self.env, cwd=self.cwd,
        )
        self._stdin = self.transport.get_pipe_transport(0)
        params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                  "clientInfo": {"name": "watchgate-benchmark", "version": "1.0"}}
        try:
            reply = await asyncio.wait_for(self.request("initialize", params), timeout)
        except asyncio.TimeoutError:
            raise ProtocolFailure(f"{self.name}: no answer to initialize within {timeout:g} s") from None
        if reply.error is not None:
            raise ProtocolFailure(f"{self.name}: initialize failed: {reply.error}")
        self.notify("notifications/initialized")
        return msgspec.json.decode(reply.result) if reply.result is not None else {}

    def notify(self, method: str, params: Any = None) -> None:
        message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self._write(_encoder.encode(message) + b"\n")

    def _write(self, data: bytes) -> None:
        if self._closed_reason is not None:
            raise ProtocolFailure(f"{self.name}: {self._closed_reason}")
        if self._batch is not None:
            self._batch.append(data)
        else:
            self._stdin.write(data)

    async def request(self, method: str, params: Any = None) -> Reply:
        """Send one request and wait for its response."""
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        message = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self._write(_encoder.encode(message) + b"\n")
        return await future

    async def call_tool(self, tool: str, arguments: dict) -> tuple[Reply, int]:
        """Call any tool; return the reply and the latency in ns (no payload check)."""
        sent_ns = time.perf_counter_ns()
        reply = await self.request("tools/call", {"name": tool, "arguments": arguments})
        return reply, reply.received_ns - sent_ns

    async def run_sequential(self, count: int, size: int) -> RunResult:
        """Send `count` echo calls one after another."""
        return await self.run_in_flight(count, size, 1)

    async def run_in_flight(self, count: int, size: int, in_flight: int) -> RunResult:
        """Send `count` echo calls keeping `in_flight` of them outstanding until the last is sent."""
        run = _EchoRun(self, count, size, in_flight)
        run.start()
        return await run.done

    def _send_echo(self, run: _EchoRun, size: int) -> None:
        request_id = next(self._ids)
        tag = f"t{request_id}-"
        data = _encoder.encode({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                                "params": {"name": self.tool, "arguments": {"tag": tag, "size": size}}})
        self._waiting[request_id] = (run, time.perf_counter_ns(), tag)
        try:
            self._write(data + b"\n")
        except ProtocolFailure as error:
            run.fail(error)

    def _feed(self, data: bytes, received_ns: int) -> None:
        """Dispatch each complete line; requests sent meanwhile go out in one write at the end."""
        buffer = self._buffer
        start = len(buffer)
        buffer += data
        newline = buffer.find(b"\n", start)
        if newline < 0:
            return
        self._batch = []
        try:
            while newline >= 0:
                line = bytes(buffer[:newline])
                del buffer[: newline + 1]
                if line.strip():
                    self._dispatch(line, received_ns)
                newline = buffer.find(b"\n")
        finally:
            batch, self._batch = self._batch, None
            if batch and self._closed_reason is None:
                self._stdin.write(b"".join(batch))

    def _dispatch(self, line: bytes, received_ns: int) -> None:
        try:
            message = _message_decoder.decode(line)
        except msgspec.DecodeError as error:
            self._fail_all(f"invalid JSON from the server ({error}): {line[:200]!r}")
            return
        if message.method is not None:
            return  # a notification or a server-to-client request: not part of the benchmark
        waiter = self._waiting.pop(message.id, None) if isinstance(message.id, int) else None
        if waiter is None:
            self._fail_all(f"response with an id that was never sent or already answered: {message.id!r}")
            return
        reply = Reply(message.id, message.result, message.error, received_ns)
        if isinstance(waiter, tuple):
            run, sent_ns, tag = waiter
            run.on_reply(reply, sent_ns, tag)
        elif not waiter.done():
            waiter.set_result(reply)

    def _fail_all(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
        waiting, self._waiting = self._waiting, {}
        error = ProtocolFailure(f"{self.name}: {reason}")
        for waiter in waiting.values():
            if isinstance(waiter, tuple):
                waiter[0].fail(error)
            elif not waiter.done():
                waiter.set_exception(error)

    def _on_exit(self) -> None:
        self._fail_all(f"the server exited with code {self.transport.get_returncode()}")
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(self.transport.get_returncode())

    async def close(self) -> int | None:
        """Close stdin, wait for the process to exit (SIGTERM, then SIGKILL, if it does not); return its code."""
        transport = self.transport
        if transport is None:
            return None
        if transport.get_returncode() is None:
            self._stdin.close()
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), CLOSE_TIMEOUT)
            except asyncio.TimeoutError:
                _signal(transport.get_pid(), signal.SIGTERM)
                try:
                    await asyncio.wait_for(asyncio.shield(self._exited), TERMINATE_TIMEOUT)
                except asyncio.TimeoutError:
                    _signal(transport.get_pid(), signal.SIGKILL)
                    await self._exited
        transport.close()
        if self._stderr_file is not None:
            self._stderr_file.close()
        return transport.get_returncode()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def check_echo_reply(reply: Reply, request_id: int, tag: str, size: int, name: str) -> None:
    """Raise ProtocolFailure unless `reply` is the response to `request_id`, with `size` bytes of text starting with `tag`."""
    if reply.request_id != request_id:
        raise ProtocolFailure(f"{name}: expected id {request_id}, got {reply.request_id!r}")
    if reply.error is not None:
        raise ProtocolFailure(f"{name}: request {request_id} failed: {reply.error}")
    if reply.result is None:
        raise ProtocolFailure(f"{name}: request {request_id}: response without a result")
    result = _tool_result_decoder.decode(reply.result)
    if result.isError or len(result.content) != 1:
        raise ProtocolFailure(f"{name}: request {request_id}: unexpected tool result {bytes(reply.result)[:200]!r}")
    text = result.content[0].text
    if not text.startswith(tag) or len(text) != max(size, len(tag)):
        raise ProtocolFailure(f"{name}: request {request_id}: payload of {len(text)} bytes starting "
                              f"{text[:40]!r}, expected {size} bytes starting {tag!r}")


def percentile(sorted_values: Sequence[int], fraction: float) -> float:
    """Return the nearest-rank percentile of values sorted in ascending order."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(fraction * len(sorted_values))))
    return float(sorted_values[rank - 1])
