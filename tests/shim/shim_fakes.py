"""A fake service worker on a Unix socket that tests can kill and restart, and a driver for shim processes."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

Message = dict[str, Any]
RECEIVE_TIMEOUT = 15.0
EXIT_TIMEOUT = 15.0
SERVER_NAME = "fake"  # the fake worker listens on <runtime_dir>/fake.sock
HOLD_METHOD = "test/hold"  # by default the fake worker never responds to this method


class WorkerConnection:
    """One accepted shim connection: records each received line and responds to requests."""

    def __init__(self, connection: socket.socket, generation: int, held_methods: frozenset[str]):
        self.socket = connection
        self.generation = generation
        self.held_methods = held_methods
        self.raw_lines: list[bytes] = []
        self.received: queue.Queue[Message | None] = queue.Queue()  # None marks EOF
        self._thread = threading.Thread(target=self._serve, name=f"fake-worker-{generation}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self.socket.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._handle(line)
        except OSError:
            pass
        self.received.put(None)

    def _handle(self, line: bytes) -> None:
        self.raw_lines.append(line)
        message = json.loads(line)
        self.received.put(message)
        if "id" not in message or "method" not in message or message["method"] in self.held_methods:
            return
        if message["method"] == "initialize":
            result = {
                "protocolVersion": "2025-06-18",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "fake-worker", "version": str(self.generation)},
            }
        else:
            result = {"method": message["method"], "generation": self.generation}
        reply = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode() + b"\n"
        try:
            self.socket.sendall(reply)
        except OSError:
            pass

    def next_message(self, timeout: float = RECEIVE_TIMEOUT) -> Message | None:
        return self.received.get(timeout=timeout)

    def send(self, message: Message) -> None:
        self.socket.sendall(json.dumps(message).encode() + b"\n")

    def close(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.socket.close()
        self._thread.join(RECEIVE_TIMEOUT)


class FakeWorker:
    """A listener at `path` standing in for a worker; kill() drops every connection like a crash."""

    def __init__(self, path: Path):
        self.path = path
        self.generation = 0
        self.held_methods = frozenset({HOLD_METHOD})  # requests left unanswered by connections accepted next
        self.connections: queue.Queue[WorkerConnection] = queue.Queue()
        self._all: list[WorkerConnection] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.generation += 1
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(8)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener, self.generation), daemon=True)
        self._thread.start()

    def _accept(self, listener: socket.socket, generation: int) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted = WorkerConnection(connection, generation, self.held_methods)
            self._all.append(accepted)
            self.connections.put(accepted)

    def next_connection(self, timeout: float = RECEIVE_TIMEOUT) -> WorkerConnection:
        return self.connections.get(timeout=timeout)

    def kill(self) -> None:
        """Stop listening, remove the socket file and drop every open connection."""
        if self._listener is not None:
            self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        if self._thread is not None:
            self._thread.join(RECEIVE_TIMEOUT)
            self._thread = None
        if self.path.exists():
            os.unlink(self.path)
        for connection in self._all:
            connection.close()
        self._all.clear()


class ShimProcess:
    """A `watchgate` shim subprocess driven through its stdin and stdout."""

    def __init__(self, arguments: list[str], env: dict[str, str], stderr_path: Path):
        self.stderr_path = stderr_path
        with open(stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(
                arguments, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env
            )
        self.output: queue.Queue[Message | None] = queue.Queue()  # None marks EOF
        self._reader = threading.Thread(target=self._read, name="shim-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.put(json.loads(line))
        self.output.put(None)

    def send(self, message: Message) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def receive(self, timeout: float = RECEIVE_TIMEOUT) -> Message | None:
        try:
            return self.output.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from the shim within {timeout} s; stderr:\n{self.stderr()}") from None

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        return self.process.wait(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """Kill the process by pid if it is still running, and collect its status."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(EXIT_TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._reader.join(EXIT_TIMEOUT)


def request(request_id: int | str, method: str, params: dict | None = None) -> Message:
    message: Message = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def initialize_request(request_id: int | str = 0) -> Message:
    return request(request_id, "initialize", {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "shim-test", "version": "1.0"},
    })


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
