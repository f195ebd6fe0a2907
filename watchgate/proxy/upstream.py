"""One upstream MCP server process: spawn, stdio streams, stderr drain and group stop."""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import signal
import time

import psutil

from watchgate.config.model import ServerConfig
from watchgate.protocol.framing import LineReader, Oversized

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


def upstream_environment(server: ServerConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """Build an upstream's environment: the inherited allowlist plus the server's `env`."""
    source = os.environ if base is None else base
    env = {
        name: value
        for name, value in source.items()
        if name in INHERITED_VARIABLES or name.startswith(INHERITED_PREFIXES)
    }
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


class UpstreamProcess:
    """A started upstream: its stdin for writing, its stdout lines, its stderr kept and logged."""

    def __init__(self, server: ServerConfig, max_message_bytes: int):
        self.server = server
        self._max_message_bytes = max_message_bytes
        self._process: asyncio.subprocess.Process | None = None
        self.stdout: LineReader | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_task: asyncio.Task | None = None
        self._stderr_window_start = 0.0
        self._stderr_logged = 0
        self._stderr_suppressed = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    async def start(self) -> None:
        command = self.server.command
        try:
            self._process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=upstream_environment(self.server),
                cwd=self.server.cwd,
                start_new_session=True,
            )
        except OSError as error:
            raise SpawnError(command, error) from error
        self.stdout = LineReader(self._process.stdout, self._max_message_bytes)
        self._stderr_task = asyncio.create_task(self._drain_stderr(), name=f"stderr-{self.server.name}")

    def write(self, data: bytes) -> None:
        stdin = self._process.stdin
        if stdin.is_closing():
            raise ConnectionResetError("upstream stdin is closed")
        stdin.write(data)

    async def drain(self) -> None:
        await self._process.stdin.drain()

    @property
    def write_buffer_size(self) -> int:
        return self._process.stdin.transport.get_write_buffer_size()

    async def wait(self) -> int:
        returncode = await self._process.wait()
        if self._stderr_task:
            # stderr reaches EOF once every process holding it is gone; do not wait for stragglers.
            try:
                await asyncio.wait_for(asyncio.shield(self._stderr_task), timeout=0.5)
            except asyncio.TimeoutError:
                pass
        return returncode

    def last_stderr(self) -> str:
        return self.stderr_tail[-1] if self.stderr_tail else ""

    async def stop(self) -> None:
        """Stop the whole process group: close stdin, then SIGTERM, then SIGKILL, each after a wait."""
        process = self._process
        if process is None:
            return
        pgid = process.pid
        if process.returncode is None:
            if process.stdin and not process.stdin.is_closing():
                process.stdin.close()
            if not await self._wait_exit(self.server.shutdown_grace):
                logger.info("Upstream %s (pid %d) still running after stdin closed; sending SIGTERM", self.server.name, pgid)
                _signal_group(pgid, signal.SIGTERM)
                if not await self._wait_exit(self.server.terminate_timeout):
                    logger.warning("Upstream %s (pid %d) ignored SIGTERM; sending SIGKILL", self.server.name, pgid)
                    _signal_group(pgid, signal.SIGKILL)
                    await process.wait()
        await self._stop_stragglers(pgid)
        if self._stderr_task:
            self._stderr_task.cancel()

    async def _wait_exit(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._process.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _stop_stragglers(self, pgid: int) -> None:
        """End group members (e.g. what npx started) that outlived the leader."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not _group_alive(pgid):
                return
            _signal_group(pgid, sig)
            deadline = time.monotonic() + STRAGGLER_TIMEOUT
            while _group_alive(pgid) and time.monotonic() < deadline:
                await asyncio.sleep(GROUP_EXIT_POLL)
        if _group_alive(pgid):
            logger.warning("Process group %d of upstream %s did not exit after SIGKILL", pgid, self.server.name)

    def kill_group_now(self) -> None:
        """Send SIGKILL to the group at once, for exits that cannot wait."""
        if self._process is not None:
            _signal_group(self._process.pid, signal.SIGKILL)

    async def _drain_stderr(self) -> None:
        reader = LineReader(self._process.stderr, STDERR_MAX_LINE)
        while True:
            line = await reader.readline()
            if line is None:
                break
            if isinstance(line, Oversized):
                text = f"<stderr line of {line.size} bytes>"
            else:
                text = line.decode("utf-8", "replace")
            self.stderr_tail.append(text[:STDERR_LOG_CHARS])
            self._log_stderr(text)
        if self._stderr_suppressed:
            logger.info("[%s] %d more stderr lines not logged", self.server.name, self._stderr_suppressed)
            self._stderr_suppressed = 0

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


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
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
