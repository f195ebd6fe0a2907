#!/usr/bin/env python3
"""A stdio MCP server that misbehaves on request, for testing the gateway.

Standard library only, so any Python 3.11+ interpreter runs it. It reads
newline-delimited JSON-RPC on stdin and writes responses on stdout. Every
request runs on its own thread, so a slow call never delays another one.

Modes (--mode):
  normal          serve the tools below
  exit-at-start   print --exit-message to stderr and exit with --exit-code
                  before reading anything
  never-answer    read and record messages but never write a byte
  crash-on-call   serve normally, but exit with --exit-code on any tools/call

Tools:
  echo {text}                 return the text
  big {size, alphabet?}       return `size` characters of `alphabet` repeated
  slow {seconds}              sleep, unless notifications/cancelled names the
                              request: then record the cancellation and send
                              no response
  crash {exit_code?}          exit in the middle of the call
  stderr_flood {bytes?}       write that many bytes (default 1 MiB) to stderr,
                              then respond
  ask_roots                   send roots/list to the client
  ask_sampling {prompt}       send sampling/createMessage to the client
  ask_elicitation {message}   send elicitation/create to the client
                              (the three ask_ tools return the client's result
                              as JSON text, or its error with isError set)
  notify {steps?}             send notifications/progress for the request's
                              progressToken, a notifications/message and
                              notifications/tools/list_changed, then respond
  garbage                     write a line that is not JSON, then respond

resources/list is paginated (--page-size) over --resource-count resources.

--state FILE counts starts across restarts. With --tools-variant by-start the
tool list gains a tool named `variant_<start number>`, so a restarted server
has a different tool set. --record FILE appends one JSON line per received
message ({"pid", "start", "message"}) and per notable action
({"pid", "start", "event", ...}) so tests can see what reached the server.
A SIGTERM is recorded as {"event": "signal"} before the server exits with
status 128 + 15.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import threading
import time
from typing import Any

PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
DEFAULT_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
# Upper bound for waiting on the client's response to a server->client request.
CLIENT_RESPONSE_TIMEOUT = 30.0
DEFAULT_STDERR_FLOOD_BYTES = 1024 * 1024

TOOLS = [
    {
        "name": "echo",
        "description": "Return the given text.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
    {
        "name": "big",
        "description": "Return `size` characters of `alphabet` repeated.",
        "inputSchema": {
            "type": "object",
            "properties": {"size": {"type": "integer"}, "alphabet": {"type": "string"}},
            "required": ["size"],
        },
    },
    {
        "name": "slow",
        "description": "Sleep for `seconds` unless cancelled.",
        "inputSchema": {
            "type": "object",
            "properties": {"seconds": {"type": "number"}},
            "required": ["seconds"],
        },
    },
    {
        "name": "crash",
        "description": "Exit the server process in the middle of the call.",
        "inputSchema": {"type": "object", "properties": {"exit_code": {"type": "integer"}}},
    },
    {
        "name": "stderr_flood",
        "description": "Write `bytes` bytes to stderr, then respond.",
        "inputSchema": {"type": "object", "properties": {"bytes": {"type": "integer"}}},
    },
    {
        "name": "ask_roots",
        "description": "Ask the client for its roots.",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "ask_sampling",
        "description": "Ask the client to sample a message.",
        "inputSchema": {
            "type": "object",
            "properties": {"prompt": {"type": "string"}},
            "required": ["prompt"],
        },
    },
    {
        "name": "ask_elicitation",
        "description": "Ask the client to elicit input from the user.",
        "inputSchema": {
            "type": "object",
            "properties": {"message": {"type": "string"}},
            "required": ["message"],
        },
    },
    {
        "name": "notify",
        "description": "Send progress, a log message and tools/list_changed, then respond.",
        "inputSchema": {"type": "object", "properties": {"steps": {"type": "integer"}}},
    },
    {
        "name": "garbage",
        "description": "Write a line that is not JSON to stdout, then respond.",
        "inputSchema": {"type": "object", "properties": {}},
    },
]


class ToolError(Exception):
    """A JSON-RPC error to send back for the current request."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FaultServer:
    def __init__(self, options: argparse.Namespace, start_number: int) -> None:
        self.options = options
        self.start_number = start_number
        self.pid = os.getpid()
        self.stdout = sys.stdout.buffer
        self.write_lock = threading.Lock()
        self.record_lock = threading.Lock()
        self.state_lock = threading.Lock()
        # Events of in-flight requests by id, set when the client cancels them.
        self.cancel_events: dict[Any, threading.Event] = {}
        # Server->client requests waiting for a response, by the id this server chose.
        self.pending_responses: dict[str, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self.next_outgoing_id = 0

    # Output and recording

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        self.send_raw(data)

    def send_raw(self, data: bytes) -> None:
        with self.write_lock:
            try:
                self.stdout.write(data)
                self.stdout.flush()
            except (BrokenPipeError, ValueError):
                # The gateway closed our stdout; nothing can be delivered any more.
                os._exit(0)

    def record(self, entry: dict[str, Any]) -> None:
        if not self.options.record:
            return
        entry = {"pid": self.pid, "start": self.start_number, **entry}
        line = json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n"
        with self.record_lock:
            descriptor = os.open(self.options.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
                os.write(descriptor, line)
            finally:
                os.close(descriptor)

    def respond(self, request_id: Any, result: dict[str, Any]) -> None:
        self.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def respond_error(self, request_id: Any, code: int, message: str) -> None:
        self.send({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})

    # Main loop

    def serve(self) -> None:
        for raw_line in sys.stdin.buffer:
            line = raw_line.rstrip(b"\r\n")
            if not line:
                continue
            try:
                message = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                self.record({"invalid": line[:1000].decode("utf-8", "replace")})
                continue
            self.record({"message": message})
            if self.options.mode == "never-answer":
                continue
            self.dispatch(message)
        self.record({"event": "stdin_closed"})

    def dispatch(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        method = message.get("method")
        if method is None:
            self.accept_response(message)
            return
        if "id" not in message:
            self.handle_notification(method, message.get("params") or {})
            return
        request_id = message["id"]
        with self.state_lock:
            self.cancel_events[request_id] = threading.Event()
        worker = threading.Thread(target=self.run_request, args=(message,), daemon=True)
        worker.start()

    def accept_response(self, message: dict[str, Any]) -> None:
        with self.state_lock:
            waiter = self.pending_responses.pop(message.get("id"), None)
        if waiter is None:
            self.record({"event": "unexpected_response", "id": message.get("id")})
            return
        event, slot = waiter
        slot.append(message)
        event.set()

    def handle_notification(self, method: str, params: dict[str, Any]) -> None:
        if method == "notifications/cancelled":
            with self.state_lock:
                event = self.cancel_events.get(params.get("requestId"))
            if event is not None:
                event.set()

    def run_request(self, message: dict[str, Any]) -> None:
        request_id = message["id"]
        method = message["method"]
        params = message.get("params") or {}
        try:
            result = self.handle_request(request_id, method, params)
        except ToolError as error:
            self.respond_error(request_id, error.code, error.message)
        else:
            if result is not None:
                self.respond(request_id, result)
        finally:
            with self.state_lock:
                self.cancel_events.pop(request_id, None)

    def handle_request(self, request_id: Any, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        if method == "initialize":
            return self.initialize(params)
        if method == "ping":
            return {}
        if method == "tools/list":
            return {"tools": self.tool_list()}
        if method == "tools/call":
            if self.options.mode == "crash-on-call":
                self.exit_now(self.options.exit_code, "crash-on-call mode")
            return self.call_tool(request_id, params)
        if method == "resources/list":
            return self.list_resources(params)
        if method == "resources/read":
            return self.read_resource(params)
        raise ToolError(-32601, f"Method not found: {method}")

    def initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.options.init_delay:
            time.sleep(self.options.init_delay)
        requested = params.get("protocolVersion")
        version = requested if requested in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[-1]
        return {
            "protocolVersion": version,
            "capabilities": {
                "tools": {"listChanged": True},
                "resources": {"listChanged": False, "subscribe": False},
                "logging": {},
            },
            "serverInfo": {"name": "fault-server", "version": "1.0.0"},
        }

    def tool_list(self) -> list[dict[str, Any]]:
        tools = list(TOOLS)
        if self.options.tools_variant == "by-start":
            tools.append(
                {
                    "name": f"variant_{self.start_number}",
                    "description": "Exists only in this start of the server.",
                    "inputSchema": {"type": "object", "properties": {}},
                }
            )
        return tools

    def list_resources(self, params: dict[str, Any]) -> dict[str, Any]:
        cursor = params.get("cursor")
        try:
            offset = int(cursor) if cursor is not None else 0
        except ValueError:
            raise ToolError(-32602, f"Invalid cursor: {cursor!r}") from None
        end = min(offset + self.options.page_size, self.options.resource_count)
        resources = [
            {"uri": f"fault://resource/{index}", "name": f"resource-{index}", "mimeType": "text/plain"}
            for index in range(offset, end)
        ]
        result: dict[str, Any] = {"resources": resources}
        if end < self.options.resource_count:
            result["nextCursor"] = str(end)
        return result

    def read_resource(self, params: dict[str, Any]) -> dict[str, Any]:
        uri = params.get("uri", "")
        return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": f"contents of {uri}"}]}

    # Tools

    def call_tool(self, request_id: Any, params: dict[str, Any]) -> dict[str, Any] | None:
        name = params.get("name")
        arguments = params.get("arguments") or {}

        if name == "echo":
            return text_result(str(arguments.get("text", "")))

        if name == "big":
            alphabet = arguments.get("alphabet") or DEFAULT_ALPHABET
            return text_result(repeated_text(alphabet, int(arguments["size"])))

        if name == "slow":
            return self.slow(request_id, float(arguments.get("seconds", 10)))

        if name == "crash":
            self.exit_now(int(arguments.get("exit_code", self.options.exit_code)), "crash tool called")

        if name == "stderr_flood":
            return self.stderr_flood(int(arguments.get("bytes", DEFAULT_STDERR_FLOOD_BYTES)))

        if name == "ask_roots":
            return self.ask_client("roots/list", {})

        if name == "ask_sampling":
            return self.ask_client(
                "sampling/createMessage",
                {
                    "messages": [{"role": "user", "content": {"type": "text", "text": arguments.get("prompt", "")}}],
                    "maxTokens": 50,
                },
            )

        if name == "ask_elicitation":
            return self.ask_client(
                "elicitation/create",
                {
                    "message": arguments.get("message", ""),
                    "requestedSchema": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}},
                        "required": ["name"],
                    },
                },
            )

        if name == "notify":
            return self.notify(params, int(arguments.get("steps", 3)))

        if name == "garbage":
            self.send_raw(b"this line is not JSON {\n")
            return text_result("sent garbage")

        if name == f"variant_{self.start_number}" and self.options.tools_variant == "by-start":
            return text_result(f"variant of start {self.start_number}")
        raise ToolError(-32602, f"Unknown tool: {name}")

    def slow(self, request_id: Any, seconds: float) -> dict[str, Any] | None:
        with self.state_lock:
            event = self.cancel_events[request_id]
        self.record({"event": "slow_started", "id": request_id})
        if event.wait(seconds):
            self.record({"event": "cancelled", "id": request_id})
            return None
        return text_result(f"slept {seconds} seconds")

    def stderr_flood(self, size: int) -> dict[str, Any]:
        chunk = b"stderr flood line " + b"." * 100 + b"\n"
        remaining = size
        stderr = sys.stderr.buffer
        while remaining > 0:
            piece = chunk[:remaining]
            stderr.write(piece)
            remaining -= len(piece)
        stderr.flush()
        return text_result(f"wrote {size} bytes to stderr")

    def ask_client(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        with self.state_lock:
            self.next_outgoing_id += 1
            outgoing_id = f"server-request-{self.next_outgoing_id}"
            event = threading.Event()
            slot: list[dict[str, Any]] = []
            self.pending_responses[outgoing_id] = (event, slot)
        self.send({"jsonrpc": "2.0", "id": outgoing_id, "method": method, "params": params})
        if not event.wait(CLIENT_RESPONSE_TIMEOUT):
            with self.state_lock:
                self.pending_responses.pop(outgoing_id, None)
            raise ToolError(-32603, f"The client sent no response to {method} within {CLIENT_RESPONSE_TIMEOUT} seconds")
        response = slot[0]
        self.record({"event": "client_response", "id": outgoing_id, "response": response})
        if "error" in response:
            return {"content": [{"type": "text", "text": json.dumps(response["error"])}], "isError": True}
        return text_result(json.dumps(response.get("result"), sort_keys=True))

    def notify(self, params: dict[str, Any], steps: int) -> dict[str, Any]:
        token = (params.get("_meta") or {}).get("progressToken")
        if token is not None:
            for step in range(1, steps + 1):
                self.send(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/progress",
                        "params": {"progressToken": token, "progress": step, "total": steps, "message": f"step {step}"},
                    }
                )
        self.send(
            {
                "jsonrpc": "2.0",
                "method": "notifications/message",
                "params": {"level": "info", "logger": "fault-server", "data": "notify tool called"},
            }
        )
        self.send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        return text_result(f"sent {steps if token is not None else 0} progress notifications")

    def on_terminate(self, signum: int, frame: Any) -> None:
        """Record SIGTERM before dying of it, so tests can tell a signal from a stdin EOF."""
        self.record({"event": "signal", "signal": signal.Signals(signum).name})
        os._exit(128 + signum)

    def exit_now(self, code: int, reason: str) -> None:
        self.record({"event": "exit", "code": code, "reason": reason})
        sys.stderr.write(f"fault_server: exiting with code {code}: {reason}\n")
        sys.stderr.flush()
        os._exit(code)


def text_result(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def repeated_text(alphabet: str, size: int) -> str:
    """Return `size` characters: `alphabet` repeated and cut to length."""
    repeats = size // len(alphabet) + 1
    return (alphabet * repeats)[:size]


def count_start(state_file: str | None) -> int:
    """Increment and return the start counter kept in `state_file` (1 without one)."""
    if not state_file:
        return 1
    descriptor = os.open(state_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        previous = os.read(descriptor, 64).decode("ascii").strip()
        number = int(previous) + 1 if previous else 1
        os.lseek(descriptor, 0, os.SEEK_SET)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, str(number).encode("ascii"))
        return number
    finally:
        os.close(descriptor)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fault-injecting stdio MCP server for tests.")
    parser.add_argument(
        "--mode",
        choices=("normal", "exit-at-start", "never-answer", "crash-on-call"),
        default="normal",
        help="overall behaviour (default: normal)",
    )
    parser.add_argument("--record", help="append every received message to this file as JSON lines")
    parser.add_argument("--state", help="file that counts starts across restarts")
    parser.add_argument(
        "--tools-variant",
        choices=("fixed", "by-start"),
        default="fixed",
        help="by-start adds a tool named after the start number (needs --state)",
    )
    parser.add_argument("--exit-code", type=int, default=3, help="exit status for exits and crashes (default: 3)")
    parser.add_argument(
        "--exit-message",
        default="fault_server: exiting at start as requested",
        help="stderr line written by --mode exit-at-start",
    )
    parser.add_argument("--init-delay", type=float, default=0.0, help="seconds to wait before responding to initialize")
    parser.add_argument("--page-size", type=int, default=3, help="resources per resources/list page (default: 3)")
    parser.add_argument("--resource-count", type=int, default=8, help="number of resources (default: 8)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    options = parse_arguments(argv)
    start_number = count_start(options.state)
    server = FaultServer(options, start_number)
    server.record({"event": "start", "argv": argv})
    signal.signal(signal.SIGTERM, server.on_terminate)
    if options.mode == "exit-at-start":
        server.record({"event": "exit", "code": options.exit_code, "reason": "exit-at-start mode"})
        sys.stderr.write(options.exit_message + "\n")
        sys.stderr.flush()
        return options.exit_code
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
