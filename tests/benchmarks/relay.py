"""A do-nothing stdio relay: the floor for any Python gateway on this machine.

    python relay.py COMMAND [ARG ...]

Starts COMMAND and copies bytes unchanged from stdin to its stdin and from its
stdout to stdout, on uvloop when installed, with no framing, parsing or policy.
The benchmark runs it as the "relay" case. What it adds over a direct
connection is the cost of one more process and two more pipe hops, which every
stdio gateway pays. Watchgate's own work is what Watchgate adds beyond that.
"""

from __future__ import annotations

import asyncio
import os
import sys


class _UpstreamProtocol(asyncio.SubprocessProtocol):
    def __init__(self, client_out: asyncio.WriteTransport, exited: asyncio.Future):
        self.client_out = client_out
        self.exited = exited

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.client_out.write(data)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, upstream_in: asyncio.WriteTransport):
        self.upstream_in = upstream_in

    def data_received(self, data: bytes) -> None:
        self.upstream_in.write(data)

    def eof_received(self) -> bool:
        self.upstream_in.close()
        return False


async def relay(command: list[str]) -> int:
    loop = asyncio.get_running_loop()
    stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb", 0)
    client_out, _ = await loop.connect_write_pipe(asyncio.Protocol, stdout)
    exited = loop.create_future()
    upstream, _ = await loop.subprocess_exec(lambda: _UpstreamProtocol(client_out, exited), *command,
                                             stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    upstream_in = upstream.get_pipe_transport(0)
    stdin = os.fdopen(os.dup(sys.stdin.fileno()), "rb", 0)
    await loop.connect_read_pipe(lambda: _ClientProtocol(upstream_in), stdin)
    await exited
    return upstream.get_returncode() or 0


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: relay.py COMMAND [ARG ...]", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:
        return asyncio.run(relay(sys.argv[1:]))
    return uvloop.run(relay(sys.argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
