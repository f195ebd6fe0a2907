"""Shim mode: pump an MCP client's stdio to a service worker's Unix socket.

Lines are forwarded unchanged in both directions. Only the JSON-RPC envelope
is decoded, to track which requests are in flight and to remember the
session's `initialize` request and `notifications/initialized` notification.

When the worker connection drops (the worker or its upstream was restarted),
the shim sends the client error -32003 for every request in flight. It then
reconnects with backoff for up to RECONNECT_TIMEOUT seconds and replays
`initialize`, dropping its response because the client already has one, and
then `notifications/initialized`. Client traffic waits meanwhile, so the
client sees one slow moment and a few failed requests instead of a closed
server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from watchgate.config.model import DEFAULT_MAX_MESSAGE_BYTES
from watchgate.protocol import jsonrpc
from watchgate.protocol.framing import Oversized, LineReader
from watchgate.protocol.jsonrpc import ErrorCode, InvalidMessage, Kind, RequestId
from watchgate.stdio import open_stdio_streams

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NO_SERVICE = 3

# Seconds for the first connect. A Unix socket connect returns at once unless the listen backlog is full.
PROBE_TIMEOUT = 2.0
RECONNECT_TIMEOUT = 30.0  # seconds to keep retrying after the worker connection dropped
RECONNECT_DELAY_INITIAL = 0.05
RECONNECT_DELAY_MAX = 2.0
# Seconds to wait for the worker's response to the replayed initialize before
# giving up. The worker may be starting its upstream (npx can take several
# seconds), and it returns an error once its upstream start times out
# (startup_timeout, 60 s by default), so a live worker responds within this.
REPLAY_TIMEOUT = 90.0

INITIALIZE = "initialize"
INITIALIZED = "notifications/initialized"
LOST_REQUEST_MESSAGE = "Upstream or worker restarted; request lost"
NEWLINE = b"\n"
DRAIN_THRESHOLD_BYTES = 1024 * 1024  # unsent bytes above which a writer waits for its peer


def socket_path_for(runtime_dir: str, server_name: str) -> str:
    """Return the path of a server's worker socket in the service's runtime directory."""
    return os.path.join(runtime_dir, f"{server_name}.sock")


def connect_socket(path: str, timeout: float = PROBE_TIMEOUT) -> socket.socket | None:
    """Connect to a worker socket, returning None when nothing is listening there.

    Other errors (permission denied, say, when the service belongs to another
    user) also return None, after a warning.
    """
    if not _owned_by_us(os.path.dirname(path)):
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(timeout)
    try:
        connection.connect(path)
    except (FileNotFoundError, ConnectionRefusedError, TimeoutError):
        connection.close()
        return None
    except OSError as error:
        connection.close()
        logger.warning("Cannot connect to the service socket %s: %s", path, error)
        return None
    connection.setblocking(False)
    return connection


def _owned_by_us(directory: str) -> bool:
    """Tell whether a runtime directory belongs to this user (or root), so a shim never relays to a stranger."""
    try:
        owner = os.stat(directory).st_uid
    except FileNotFoundError:
        return False
    except OSError as error:
        logger.warning("Cannot check the runtime directory %s: %s", directory, error)
        return False
    if owner in (os.geteuid(), 0):
        return True
    logger.warning("Runtime directory %s belongs to uid %d, not to this user; not connecting to it", directory, owner)
    return False


class Shim:
    """One client session relayed to a worker socket, surviving worker restarts."""

    def __init__(
        self,
        socket_path: str,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
        replay_timeout: float = REPLAY_TIMEOUT,
    ):
        self.socket_path = socket_path
        self.max_message_bytes = max_message_bytes
        self.reconnect_timeout = reconnect_timeout
        self.replay_timeout = replay_timeout
        self._client_lines = LineReader(client_reader, max_message_bytes)
        self._client_writer = BatchingWriter(client_writer)
        self._worker_writer: asyncio.StreamWriter | None = None
        self._ready = asyncio.Event()  # set while client lines may go to the worker
        self._closing = asyncio.Event()  # set once the client is gone or a signal arrived
        self._in_flight: dict[RequestId, None] = {}  # insertion-ordered set of request ids
        self._initialize_line: bytes | None = None
        self._initialize_id: RequestId | None = None
        self._initialize_answered = False
        self._initialized_line: bytes | None = None
        self._replay_id: RequestId | None = None  # the replayed initialize whose response is dropped
        self._replay_done = asyncio.Event()

    def close(self) -> None:
        """Stop relaying, as on client EOF (used by signal handlers)."""
        self._closing.set()

    async def run(self, connection: socket.socket | None = None) -> int:
        """Relay until the client closes stdin; return the process exit code."""
        client_task = asyncio.create_task(self._pump_client(), name="shim-client")
        try:
            return await self._relay(client_task, connection)
        finally:
            client_task.cancel()
            await asyncio.gather(client_task, return_exceptions=True)
            if self._worker_writer is not None:
                self._worker_writer.close()

    async def _relay(self, client_task: asyncio.Task, connection: socket.socket | None) -> int:
        streams = await asyncio.open_unix_connection(sock=connection) if connection is not None else None
        while True:
            if streams is None:
                streams = await self._reconnect()
                if streams is None:
                    return EXIT_OK if self._closing.is_set() else EXIT_FAILURE
            reader, worker_writer = streams
            self._worker_writer = BatchingWriter(worker_writer)
            worker_task = asyncio.create_task(self._pump_worker(reader), name="shim-worker")
            closing_task = asyncio.create_task(self._closing.wait())
            try:
                replayed = await self._replay(worker_task)
            except TimeoutError:
                logger.error("No response to the replayed initialize from %s within %.0f s; giving up",
                             self.socket_path, self.replay_timeout)
                closing_task.cancel()
                return EXIT_FAILURE
            if replayed:
                self._ready.set()
                await asyncio.wait({worker_task, closing_task}, return_when=asyncio.FIRST_COMPLETED)
            closing_task.cancel()
            self._ready.clear()
            self._worker_writer.close()
            worker_task.cancel()
            await asyncio.gather(worker_task, return_exceptions=True)
            if self._closing.is_set():
                if client_task.done() and not client_task.cancelled() and client_task.exception():
                    logger.error("Reading from the client failed: %s", client_task.exception())
                    return EXIT_FAILURE
                return EXIT_OK
            self._fail_in_flight()
            streams = None

    async def _reconnect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Retry the worker socket with doubling delays. Return None once the client left or time ran out."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        delay = RECONNECT_DELAY_INITIAL
        attempts = 0
        while True:
            attempts += 1
            try:
                streams = await asyncio.open_unix_connection(self.socket_path)
            except OSError as error:
                last_error = error
            else:
                logger.info("Reconnected to %s after %.1f s (%d attempts)", self.socket_path,
                            loop.time() - started, attempts)
                return streams
            remaining = started + self.reconnect_timeout - loop.time()
            if remaining <= 0:
                logger.error("Gave up reconnecting to %s after %.1f s and %d attempts: %s",
                             self.socket_path, self.reconnect_timeout, attempts, last_error)
                return None
            try:
                await asyncio.wait_for(self._closing.wait(), min(delay, remaining))
                return None
            except TimeoutError:
                delay = min(delay * 2, RECONNECT_DELAY_MAX)

    async def _replay(self, worker_task: asyncio.Task) -> bool:
        """Replay the session's handshake on a new connection. Return False when the connection dropped again.

        An initialize that was itself in flight at the drop is resent as a
        normal request, so its response reaches the client. Raises
        TimeoutError when the worker does not respond within replay_timeout.
        """
        if self._initialize_line is None:
            return True
        assert self._worker_writer is not None
        if not self._initialize_answered:
            return await self._send_to_worker(self._initialize_line)
        self._replay_id = self._initialize_id
        self._replay_done.clear()
        if not await self._send_to_worker(self._initialize_line):
            return False
        done_task = asyncio.create_task(self._replay_done.wait())
        closing_task = asyncio.create_task(self._closing.wait())
        done, _ = await asyncio.wait(
            {done_task, worker_task, closing_task}, timeout=self.replay_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        done_task.cancel()
        closing_task.cancel()
        if not done:
            raise TimeoutError
        if worker_task in done or closing_task in done:
            return False
        if self._initialized_line is not None:
            return await self._send_to_worker(self._initialized_line)
        return True

    async def _send_to_worker(self, line: bytes) -> bool:
        writer = self._worker_writer
        assert writer is not None
        try:
            writer.write(line)
            writer.write(NEWLINE)
            await writer.drain()
        except (ConnectionError, OSError) as error:
            logger.debug("Writing to the worker failed: %s", error)
            writer.close()  # the worker pump then reads EOF and the relay loop reconnects
            return False
        return True

    async def _pump_client(self) -> None:
        """Forward client lines to the worker, waiting while it is reconnecting."""
        try:
            while True:
                line = await self._client_lines.readline()
                if line is None:
                    logger.info("Client closed stdin; closing the connection to %s", self.socket_path)
                    return
                if isinstance(line, Oversized):
                    await self._reject_oversized(line)
                    continue
                await self._ready.wait()
                self._track_request(line)
                await self._send_to_worker(line)
        finally:
            self._closing.set()

    async def _pump_worker(self, reader: asyncio.StreamReader) -> None:
        """Forward worker lines to the client, dropping the response to a replayed initialize."""
        lines = LineReader(reader, self.max_message_bytes)
        while True:
            try:
                line = await lines.readline()
            except (ConnectionError, OSError) as error:
                logger.warning("Connection to %s failed: %s", self.socket_path, error)
                return
            if line is None:
                logger.warning("Worker at %s closed the connection", self.socket_path)
                return
            if isinstance(line, Oversized):
                self._drop_oversized_response(line)
                continue
            if (self._in_flight or self._replay_id is not None) and self._settle_response(line):
                continue
            if not await self._send_to_client(line, NEWLINE):
                return

    def _track_request(self, line: bytes) -> None:
        try:
            kind, message = jsonrpc.decode(line)
        except InvalidMessage:
            return  # forwarded unchanged, because the worker sends the error response
        if kind is Kind.REQUEST:
            self._in_flight[message.id] = None
            if message.method == INITIALIZE:
                self._initialize_line = line
                self._initialize_id = message.id
                self._initialize_answered = False
        elif kind is Kind.NOTIFICATION and message.method == INITIALIZED:
            self._initialized_line = line

    def _settle_response(self, line: bytes) -> bool:
        """Mark a response's request as settled; return True when the line must not reach the client."""
        try:
            kind, message = jsonrpc.decode(line)
        except InvalidMessage:
            return False
        if kind is not Kind.RESPONSE:
            return False
        if self._replay_id is not None and _same_id(message.id, self._replay_id):
            self._replay_id = None
            self._replay_done.set()
            if message.error is not jsonrpc.UNSET:
                code, text = jsonrpc.decode_error(message.error)
                logger.warning("Worker rejected the replayed initialize: %s %s", code, text)
            return True
        if self._in_flight.pop(message.id, False) is None and _same_id(message.id, self._initialize_id):
            self._initialize_answered = True
        return False

    def _fail_in_flight(self) -> None:
        """Send an error for each request lost with the connection, except an initialize to resend."""
        lost = [request_id for request_id in self._in_flight if not self._is_pending_initialize(request_id)]
        logger.warning("Lost the connection to %s with %d request(s) in flight; answering them with error %d",
                       self.socket_path, len(lost), ErrorCode.UPSTREAM_EXITED)
        for request_id in lost:
            del self._in_flight[request_id]
            self._write_client(jsonrpc.error_response(request_id, ErrorCode.UPSTREAM_EXITED, LOST_REQUEST_MESSAGE))

    def _is_pending_initialize(self, request_id: RequestId) -> bool:
        return not self._initialize_answered and _same_id(request_id, self._initialize_id)

    async def _reject_oversized(self, line: Oversized) -> None:
        request_id = jsonrpc.find_id(line.head, line.tail)
        logger.warning("Client message of %d bytes exceeds the limit of %d bytes; not forwarded",
                       line.size, self.max_message_bytes)
        if request_id is not None:
            message = f"Message too large: {line.size} bytes exceeds the limit of {self.max_message_bytes} bytes"
            await self._send_to_client(jsonrpc.error_response(request_id, ErrorCode.MESSAGE_TOO_LARGE, message))

    def _drop_oversized_response(self, line: Oversized) -> None:
        request_id = jsonrpc.find_id(line.head, line.tail)
        logger.warning("Worker message of %d bytes exceeds the limit of %d bytes; dropped", line.size,
                       self.max_message_bytes)
        if request_id is not None and request_id in self._in_flight:
            del self._in_flight[request_id]
            message = f"Response too large: {line.size} bytes exceeds the limit of {self.max_message_bytes} bytes"
            self._write_client(jsonrpc.error_response(request_id, ErrorCode.MESSAGE_TOO_LARGE, message))

    async def _send_to_client(self, *parts: bytes) -> bool:
        """Write to stdout. A failed write means the client is gone, so the shim closes."""
        for data in parts:
            if not self._write_client(data):
                return False
        try:
            await self._client_writer.drain()
        except (ConnectionError, OSError) as error:
            logger.info("Client stdout closed (%s); exiting", error)
            self._closing.set()
            return False
        return True

    def _write_client(self, data: bytes) -> bool:
        try:
            self._client_writer.write(data)
        except (ConnectionError, OSError) as error:
            logger.info("Client stdout closed (%s); exiting", error)
            self._closing.set()
            return False
        return True


def _same_id(first: RequestId | None, second: RequestId | None) -> bool:
    """Compare JSON-RPC ids by value and type, so 1 and "1" differ."""
    return first == second and type(first) is type(second)


async def run_shim(
    socket_path: str,
    connection: socket.socket | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> int:
    """Relay this process's stdin and stdout to the worker socket until stdin closes or a signal arrives."""
    reader, writer = await open_stdio_streams()
    shim = Shim(socket_path, reader, writer, max_message_bytes)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, shim.close)
    if connection is None:
        connection = connect_socket(socket_path)
        if connection is None:
            logger.error("No Watchgate service is listening on %s", socket_path)
            return EXIT_NO_SERVICE
    logger.info("Relaying stdio to %s", socket_path)
    try:
        return await shim.run(connection)
    finally:
        writer.close()


class BatchingWriter:
    """Wrap a StreamWriter so the lines written in one loop iteration leave in one system call.

    drain() waits only while the transport buffers more than DRAIN_THRESHOLD_BYTES, so
    relaying a line costs no await in the common case.
    """

    def __init__(self, writer):
        self._writer = writer
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        transport = getattr(self._writer, "transport", None)
        if transport is not None and transport.is_closing():
            return  # the reader of this connection gets EOF, and the shim reconnects or exits
        try:
            self._writer.write(data)
        except (ConnectionError, OSError) as error:
            logger.debug("Write failed: %s", error)

    async def drain(self) -> None:
        transport = getattr(self._writer, "transport", None)
        if transport is None or transport.get_write_buffer_size() > DRAIN_THRESHOLD_BYTES:
            self.flush()
            await self._writer.drain()

    def close(self) -> None:
        self.flush()
        self._writer.close()

    def __getattr__(self, name: str):
        return getattr(self._writer, name)


def _connect_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watchgate connect",
        description="Connect stdin and stdout to the worker of server NAME in a running `watchgate serve`. "
        "Exits with status 3 when no service is listening.",
    )
    parser.add_argument("name", metavar="NAME", help="server name, as in the service's configuration")
    parser.add_argument("--socket-dir", metavar="DIR",
                        help="the service's runtime directory (default: from --config, else the default runtime "
                        "directory: $WATCHGATE_RUNTIME_DIR, $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR/watchgate "
                        "or /tmp/watchgate-<uid>)")
    parser.add_argument("--config", metavar="FILE", help="configuration file whose service.runtime_dir to use")
    parser.add_argument("--verbose", "-v", action="store_true", help="log at DEBUG level")
    return parser


def connect_main(argv: list[str]) -> int:
    """Run `watchgate connect NAME [--socket-dir DIR] [--config FILE]`."""
    from watchgate import logsetup
    from watchgate.cli import run_event_loop

    options = _connect_parser().parse_args(argv)
    logsetup.setup_early(options.verbose)
    # NOTE: without --config the shim applies the default size limit, which may
    # be below the service's proxy.max_message_bytes.
    max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
    runtime_dir = options.socket_dir
    if options.config is not None:
        from watchgate.config import ConfigError, load_config

        try:
            config = load_config(options.config)
        except ConfigError as error:
            logger.error("Invalid configuration: %s", error)
            return EXIT_USAGE
        max_message_bytes = config.max_message_bytes
        if runtime_dir is None:
            runtime_dir = config.service.runtime_dir
    if runtime_dir is None:
        from watchgate.config.loader import default_runtime_dir

        runtime_dir = default_runtime_dir()
    path = socket_path_for(runtime_dir, options.name)
    connection = connect_socket(path)
    if connection is None:
        print(f"watchgate connect: no Watchgate service is listening on {path}; "
              "start it with `watchgate serve --config FILE`", file=sys.stderr)
        return EXIT_NO_SERVICE
    logger.info("Mode: shim, connected to %s", path)
    return run_event_loop(run_shim(path, connection, max_message_bytes))
