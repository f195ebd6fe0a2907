"""A minimal, fast MCP server on stdio for benchmarks (standard library, plus msgspec when installed).

Tools:
  echo  returns one text item of `size` bytes (argument, else --size) that
        starts with the call's `tag` argument, so a client can check that each
        response carries its own payload.
  slow  responds after `seconds` (argument, default 2) from a timer thread,
        so later requests keep being served while it waits.

Responses are assembled as bytes around a cached filler, so the server spends
as little time per call as possible and the gateway dominates what a client
measures.
"""

from __future__ import annotations

import argparse
import json
import os
import threading

try:
    import msgspec
except ImportError:  # the server also runs on a bare Python, with the json module
    msgspec = None

PROTOCOL_VERSION = "2025-06-18"
DEFAULT_SIZE = 200
DEFAULT_SLOW_SECONDS = 2.0
SERVER_INFO = {"name": "benchmark-echo", "version": "1.0"}
TOOLS = [
    {
        "name": "echo",
        "description": "Return a text result of `size` bytes that starts with `tag`.",
        "inputSchema": {
            "type": "object",
            "properties": {"tag": {"type": "string"}, "size": {"type": "integer", "minimum": 0}},
        },
    },
    {
        "name": "slow",
        "description": "Sleep `seconds` (default 2) and then answer like echo.",
        "inputSchema": {
            "type": "object",
            "properties": {"tag": {"type": "string"}, "seconds": {"type": "number", "minimum": 0}},
        },
    },
]
FILLER_BYTE = b"x"
STDIN_FD = 0
STDOUT_FD = 1
READ_BYTES = 1024 * 1024


class EchoServer:
    """Serve MCP requests read line by line from stdin, writing the responses to stdout."""

    def __init__(self, default_size: int):
        self.default_size = default_size
        self._write_lock = threading.Lock()
        self._main_thread = threading.get_ident()
        self._batch: list[bytes] | None = None
        self._fillers: dict[int, bytes] = {}

    def write(self, data: bytes) -> None:
        """Queue `data` while a batch of input is being handled, else write it at once."""
        if self._batch is not None and threading.get_ident() == self._main_thread:
            self._batch.append(data)
            return
        self._write_all(data)

    def _write_all(self, data: bytes) -> None:
        with self._write_lock:
            view = memoryview(data)
            while view:
                view = view[os.write(STDOUT_FD, view):]

    def reply(self, request_id, result) -> None:
        body = {"jsonrpc": "2.0", "id": request_id, "result": result}
        self.write(json.dumps(body, separators=(",", ":")).encode() + b"\n")

    def reply_error(self, request_id, code: int, message: str) -> None:
        body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
        self.write(json.dumps(body, separators=(",", ":")).encode() + b"\n")

    def text_result(self, request_id, tag: str, size: int) -> bytes:
        """Build a tools/call response whose text is `tag` padded with filler to `size` bytes."""
        tag_bytes = tag.encode()
        filler = self._fillers.get(size)
        if filler is None:
            filler = FILLER_BYTE * size
            self._fillers[size] = filler
        text = tag_bytes + filler[: max(0, size - len(tag_bytes))]
        return b"".join(
            (
                b'{"jsonrpc":"2.0","id":',
                json.dumps(request_id).encode(),
                b',"result":{"content":[{"type":"text","text":"',
                text,
                b'"}],"isError":false}}\n',
            )
        )

    def handle(self, line: bytes) -> None:
        try:
            message = _decode(line)
        except ValueError:
            self.reply_error(None, -32700, "Parse error")
            return
        if not isinstance(message, dict):
            self.reply_error(None, -32600, "Invalid Request")
            return
        method = message.get("method")
        request_id = message.get("id")
        if method is None or request_id is None:
            return  # a notification or a response, which gets no response
        params = message.get("params") or {}
        if method == "tools/call":
            self.call_tool(request_id, params)
        elif method == "initialize":
            version = params.get("protocolVersion", PROTOCOL_VERSION)
            self.reply(request_id, {"protocolVersion": version, "capabilities": {"tools": {}},
                                    "serverInfo": SERVER_INFO})
        elif method == "tools/list":
            self.reply(request_id, {"tools": TOOLS})
        elif method == "ping":
            self.reply(request_id, {})
        else:
            self.reply_error(request_id, -32601, f"Method not found: {method}")

    def call_tool(self, request_id, params: dict) -> None:
        name = params.get("name")
        arguments = params.get("arguments") or {}
        tag = str(arguments.get("tag", ""))
        if name == "echo":
            size = int(arguments.get("size", self.default_size))
            self.write(self.text_result(request_id, tag, size))
        elif name == "slow":
            seconds = float(arguments.get("seconds", DEFAULT_SLOW_SECONDS))
            timer = threading.Timer(seconds, lambda: self.write(self.text_result(request_id, tag, len(tag))))
            timer.daemon = True
            timer.start()
        else:
            self.reply_error(request_id, -32602, f"Unknown tool: {name}")

    def serve(self) -> None:
        """Handle every complete line of each read, then write all their responses with one write."""
        pending = b""
        while True:
            chunk = os.read(STDIN_FD, READ_BYTES)
            if not chunk:
                return
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            self._batch = []
            try:
                for line in lines:
                    if line.strip():
                        self.handle(line)
            finally:
                batch, self._batch = self._batch, None
                if batch:
                    self._write_all(b"".join(batch))


def _decode(line: bytes):
    if msgspec is None:
        return json.loads(line)
    try:
        return msgspec.json.decode(line)
    except msgspec.DecodeError as error:
        raise ValueError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark MCP upstream: echo and slow tools on stdio.")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"bytes of text in an echo result when the call gives no size (default {DEFAULT_SIZE})")
    options = parser.parse_args(argv)
    try:
        EchoServer(options.size).serve()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
