"""One upstream MCP server process: spawn, stdio streams, stderr drain and group stop."""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable

import psutil

from watchgate.config.model import ServerConfig
from watchgate.protocol.framing import LineSplitter, Oversized

logger = logging.getLogger(__name__)

# Variables an upstream inherits from Watchgate's environment; the server's
# `env` from the config is added on top. Everything else (tokens, cloud
# credentials) stays out of the upstream unless the config names it.
INHERITED_VARIABLES = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TMPDIR", "TZ",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "NODE_OPTIONS", "NODE_PATH",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
        "VIRTUAL_ENV", "PYTHONPATH", "SYSTEMROOT",
    }
)
INHERITED_PREFIXES = ("LC_", "XDG_", "npm_config_", "NPM_CONFIG_", "NVM_", "WATCHGATE_")

STDERR_TAIL_LINES = 20
STDERR_LOG_BURST = 20  # lines logged at INFO per window before the rest are only counted
STDERR_LOG_WINDOW = 10.0  # seconds
STDERR_MAX_LINE = 64 * 1024  # longer stderr lines are summarised, never buffered whole
STDERR_LOG_CHARS = 1000
GROUP_EXIT_POLL = 0.05  # seconds between checks that a process group is gone
STRAGGLER_TIMEOUT = 1.0  # seconds for group members left after the leader exited
_ERROR_WORDS = re.compile(
    r"error|exception|fatal|denied|not found|no such|cannot|can't|failed|invalid|inaccessible|not accessible",
    re.IGNORECASE,
)
# Set in an upstream's environment unless Watchgate's own environment or the server's `env` sets it:
# npx would otherwise contact the registry for an update check on every start.
DEFAULT_UPSTREAM_VARIABLES = {"npm_config_update_notifier": "false"}
STDOUT_DRAIN_TIMEOUT = 0.5  # seconds to read what an exited upstream left in its stdout pipe


def upstream_environment(server: ServerConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """Build an upstream's environment: the inherited allowlist plus the server's `env`."""
    source = os.environ if base is None else base
    env = dict(DEFAULT_UPSTREAM_VARIABLES)
    env.update(
        (name, value)
        for name, value in source.items()
        if name in INHERITED_VARIABLES or name.startswith(INHERITED_PREFIXES)
    )
    env.update(server.env)
    return env


class SpawnError(Exception):
    """The upstream command could not be started at all."""

    def __init__(self, command: tuple[str, ...], error: OSError):
        name = errno.errorcode.get(error.errno or 0, "error")
        what = "command not found" if error.errno == errno.ENOENT else f"cannot start command ({name})"
        super().__init__(f"{what}: {command[0]!r} ({error.strerror or error})")
        self.errno_name = name


def describe_returncode(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class _UpstreamProtocol(asyncio.SubprocessProtocol):
    """Receives the upstream's stdout lines and stderr, and its flow-control and exit callbacks."""

    def __init__(self, upstream: "UpstreamProcess"):
        self._upstream = upstream
        self._stdout = LineSplitter(upstream.max_message_bytes)
        self._stderr = LineSplitter(STDERR_MAX_LINE)
        self.exited = asyncio.get_running_loop().create_future()
        self.stdout_closed = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            on_line = self._upstream.on_line
            for line in self._stdout.feed(data):
                on_line(line)
        else:
            for line in self._stderr.feed(data):
                self._upstream.stderr_line(line)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            for line in self._stdout.finish():
                self._upstream.on_line(line)
            _resolve(self.stdout_closed)
        elif fd == 2:
            for line in self._stderr.finish():
                self._upstream.stderr_line(line)

    def pause_writing(self) -> None:
        self._upstream.on_pause_writing()

    def resume_writing(self) -> None:
        self._upstream.on_resume_writing()

    def process_exited(self) -> None:
        _resolve(self.exited)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _ignore(*_args) -> None:
    return None


class UpstreamProcess:
    """A started upstream: stdin for writing, stdout lines delivered to `on_line`, stderr kept and logged."""

    def __init__(self, server: ServerConfig, max_message_bytes: int, on_line: Callable[[bytes | Oversized], None]):
        self.server = server
        self.max_message_bytes = max_message_bytes
        self.on_line = on_line
        self.on_pause_writing: Callable[[], None] = _ignore
        self.on_resume_writing: Callable[[], None] = _ignore
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._transport: asyncio.SubprocessTransport | None = None
        self._protocol: _UpstreamProtocol | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._outgoing: list[bytes] = []
        self._stderr_window_start = 0.0
        self._stderr_logged = 0
        self._stderr_suppressed = 0

    @property
    def pid(self) -> int | None:
        return self._transport.get_pid() if self._transport else None

    @property
    def returncode(self) -> int | None:
        return self._transport.get_returncode() if self._transport else None

    async def start(self) -> None:
        command = self.server.command
        loop = asyncio.get_running_loop()
        try:
            self._transport, self._protocol = await loop.subprocess_exec(
                lambda: _UpstreamProtocol(self),
                *command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=upstream_environment(self.server),
                cwd=self.server.cwd,
                start_new_session=True,
            )
        except OSError as error:
            raise SpawnError(command, error) from error
        self._stdin = self._transport.get_pipe_transport(0)

    def write(self, data: bytes) -> None:
        """Queue data for the upstream; everything queued in one loop iteration goes out in one write."""
        stdin = self._stdin
        if stdin is None or stdin.is_closing():
            raise ConnectionResetError("upstream stdin is closed")
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self.flush)
        self._outgoing.append(data)

    def flush(self) -> None:
        outgoing = self._outgoing
        if not outgoing:
            return
        data = outgoing[0] if len(outgoing) == 1 else b"".join(outgoing)
        outgoing.clear()
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.write(data)

    def pause_reading(self) -> None:
        stdout = self._transport.get_pipe_transport(1) if self._transport else None
        if stdout is not None and not stdout.is_closing():
            stdout.pause_reading()

    def resume_reading(self) -> None:
        stdout = self._transport.get_pipe_transport(1) if self._transport else None
        if stdout is not None and not stdout.is_closing():
            stdout.resume_reading()

    async def wait(self) -> int:
        """Wait for the process to exit and for its stdout to be read to the end."""
        # Shielded: cancelling a waiter must not cancel the shared future that stop() relies on.
        await asyncio.shield(self._protocol.exited)
        try:
            # Output still in the pipe is delivered first; a grandchild holding stdout open is not waited for.
            await asyncio.wait_for(asyncio.shield(self._protocol.stdout_closed), STDOUT_DRAIN_TIMEOUT)
        except asyncio.TimeoutError:
            pass
        return self._transport.get_returncode()

    def last_stderr(self) -> str:
        """Return the most telling recent stderr line: the last that reads like an error, else the last one.

        Launchers print notices after the server's own error (npm's update notice
        follows "Error: ..."), so the plain last line often hides the cause.
        """
        for line in reversed(self.stderr_tail):
            if _ERROR_WORDS.search(line):
                return line
        return self.stderr_tail[-1] if self.stderr_tail else ""

    async def stop(self) -> None:
        """Stop the whole process group: close stdin, then SIGTERM, then SIGKILL, each after a wait."""
        if self._transport is None:
            return
        pgid = self._transport.get_pid()
        if not self._protocol.exited.done():
            if self._stdin is not None and not self._stdin.is_closing():
                self.flush()
                self._stdin.close()
            if not await self._wait_exit(self.server.shutdown_grace):
                logger.info("Upstream %s (pid %d) still running after stdin closed; sending SIGTERM", self.server.name, pgid)
                signal_group(pgid, signal.SIGTERM)
                if not await self._wait_exit(self.server.terminate_timeout):
                    logger.warning("Upstream %s (pid %d) ignored SIGTERM; sending SIGKILL", self.server.name, pgid)
                    signal_group(pgid, signal.SIGKILL)
                    await self._wait_exit(self.server.terminate_timeout)
        await self._stop_stragglers(pgid)
        self._transport.close()

    async def _wait_exit(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self._protocol.exited), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _stop_stragglers(self, pgid: int) -> None:
        """End group members (e.g. what npx started) that outlived the leader."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not group_alive(pgid):
                return
            signal_group(pgid, sig)
            deadline = time.monotonic() + STRAGGLER_TIMEOUT
            while group_alive(pgid) and time.monotonic() < deadline:
                await asyncio.sleep(GROUP_EXIT_POLL)
        if group_alive(pgid):
            logger.warning("Process group %d of upstream %s did not exit after SIGKILL", pgid, self.server.name)

    def kill_group_now(self) -> None:
        """Send SIGKILL to the group at once, for exits that cannot wait."""
        if self._transport is not None:
            signal_group(self._transport.get_pid(), signal.SIGKILL)

    def stderr_line(self, line: bytes | Oversized) -> None:
        if isinstance(line, Oversized):
            text = f"<stderr line of {line.size} bytes>"
        else:
            text = line.decode("utf-8", "replace")
        self.stderr_tail.append(text[:STDERR_LOG_CHARS])
        self._log_stderr(text)

    def _log_stderr(self, text: str) -> None:
        now = time.monotonic()
        if now - self._stderr_window_start > STDERR_LOG_WINDOW:
            if self._stderr_suppressed:
                logger.info("[%s] %d stderr lines not logged (rate limit)", self.server.name, self._stderr_suppressed)
            self._stderr_window_start = now
            self._stderr_logged = 0
            self._stderr_suppressed = 0
        if self._stderr_logged < STDERR_LOG_BURST:
            self._stderr_logged += 1
            logger.info("[%s] %s", self.server.name, text[:STDERR_LOG_CHARS])
        else:
            self._stderr_suppressed += 1


def signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Tell whether any process of the group still runs (zombies waiting to be reaped do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False
