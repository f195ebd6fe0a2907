"""A gateway worker: one upstream server served to many clients on a Unix socket.

The supervisor forks the worker with every file descriptor it needs already
open; the worker builds its event loop only after the fork. It runs the same
Gateway as standalone mode, with a PipeAuditPlugin in place of file auditing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from dataclasses import dataclass

from watchgate.audit.pipe import PipeAuditPlugin
from watchgate.config.model import Config, FileAuditingConfig, ServerConfig
from watchgate.plugins.manager import load_security_plugins
from watchgate.proxy.server import Gateway
from watchgate.supervisor import channels
from watchgate.supervisor.peercred import peer_allowed, peer_credentials, user_label

logger = logging.getLogger("watchgate.supervisor.worker")

EXIT_OK = 0
DRAIN_POLL_INTERVAL = 0.05  # seconds between checks for in-flight requests while draining
AUDIT_FLUSH_TIMEOUT = 5.0  # seconds to hand queued audit frames to the pipe at exit
# The upstream's last stderr line is cut to this length so a heartbeat stays one small write.
STDERR_LINE_MAX_CHARS = 1000
# A heartbeat is skipped while this much is still unsent (the supervisor is not reading).
HEARTBEAT_BACKLOG_BYTES = 64 * 1024
CONTROL_READ_BYTES = 65536
# Text before the upstream's stderr line in the gateway's state reason after an exit.
STDERR_MARKER = "last stderr line: "


@dataclass
class WorkerFds:
    """Descriptors the supervisor opened for one worker before forking it."""

    listener: socket.socket
    audit_fd: int
    heartbeat_fd: int
    control_fd: int
    lifeline_fd: int
    socket_group_id: int | None


def run_worker(config: Config, name: str, fds: WorkerFds) -> int:
    """Run the worker until SIGTERM or the supervisor's exit; return the exit status."""
    from watchgate.cli import run_event_loop
    from watchgate.memory import tune_allocator

    tune_allocator()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return run_event_loop(Worker(config, name, fds).run())


def audit_entries(config: Config, name: str) -> list[FileAuditingConfig]:
    return [entry.config for entry in config.auditing.get(name, ()) if isinstance(entry.config, FileAuditingConfig)]


class _AuditPacedReader:
    """A client stream reader that waits while the audit pipe is backed up (backpressure)."""

    def __init__(self, reader: asyncio.StreamReader, audit: PipeAuditPlugin):
        self._reader = reader
        self._audit = audit

    async def read(self, size: int = -1) -> bytes:
        await self._audit.wait_writable()
        return await self._reader.read(size)


class Worker:
    def __init__(self, config: Config, name: str, fds: WorkerFds):
        self.config = config
        self.name = name
        self.fds = fds
        self.server_config: ServerConfig = config.server(name)
        self.audit = PipeAuditPlugin(name, audit_entries(config, name), fds.audit_fd)
        self.gateway: Gateway | None = None
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._fast_stop = False
        self._control = channels.ControlDecoder()
        self._heartbeat_transport: asyncio.WriteTransport | None = None
        self._connections: set[asyncio.Task] = set()
        self._background: set[asyncio.Task] = set()
        self._rejected_peers = 0
        self._last_stderr = ""

    async def run(self) -> int:
        server, heartbeat = await self._start()
        await self._stop.wait()
        logger.info("Worker %s stopping: %s", self.name, self._stop_reason)
        server.close()
        if not self._fast_stop:
            await self._drain(self.config.service.shutdown_timeout)
        await self.gateway.shutdown(self._stop_reason)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        heartbeat.cancel()
        await self._flush_audit()
        logger.info("Worker %s stopped", self.name)
        return EXIT_OK

    async def _start(self) -> tuple[asyncio.AbstractServer, asyncio.Task]:
        """Connect the pipes, start the gateway and listen; return the server and the heartbeat task."""
        loop = asyncio.get_running_loop()
        await self.audit.open()
        security = load_security_plugins(self.config, self.name)
        self.gateway = Gateway(self.server_config, security, [self.audit] if self.audit.entries else [],
                               self.config.max_message_bytes)

        loop.add_signal_handler(signal.SIGTERM, self._request_stop, "received SIGTERM", False)
        loop.add_reader(self.fds.lifeline_fd, self._on_lifeline)
        loop.add_reader(self.fds.control_fd, self._on_control)
        self._heartbeat_transport, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(self.fds.heartbeat_fd, "wb", buffering=0))
        heartbeat = asyncio.create_task(self._send_heartbeats(), name=f"heartbeat-{self.name}")

        await self.gateway.start()
        server = await asyncio.start_unix_server(self._accept, sock=self.fds.listener)
        logger.info("Worker %s (pid %d) serving on %s", self.name, os.getpid(), self.fds.listener.getsockname())
        return server, heartbeat

    async def _flush_audit(self) -> None:
        if not await self.audit.flush(AUDIT_FLUSH_TIMEOUT):
            logger.error("Worker %s: %d bytes of audit frames not delivered within %.0f s", self.name,
                         self.audit.queued_bytes, AUDIT_FLUSH_TIMEOUT)
        self.audit.close()

    def _request_stop(self, reason: str, fast: bool) -> None:
        if self._stop.is_set():
            return
        self._stop_reason = reason
        self._fast_stop = fast
        self._stop.set()

    async def _drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the upstream to respond to in-flight requests."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._in_flight() and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_INTERVAL)
        if self._in_flight():
            logger.warning("Worker %s: %d requests still in flight after %.1f s; sending each client an error response",
                           self.name, self._in_flight(), timeout)

    def _in_flight(self) -> int:
        return sum(len(session.inflight) for session in self.gateway.sessions)

    # ------------------------------------------------------------ connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            user = self._check_peer(writer)
            if user is None:
                writer.close()
                return
            await self.gateway.serve(_AuditPacedReader(reader, self.audit), writer, user=user)
        finally:
            self._connections.discard(task)

    def _check_peer(self, writer: asyncio.StreamWriter) -> str | None:
        """Return the audit user label of an allowed peer, or None after logging a rejection."""
        sock = writer.get_extra_info("socket")
        try:
            credentials = peer_credentials(sock)
        except OSError as error:
            logger.warning("Worker %s rejected a connection: cannot read peer credentials: %s", self.name, error)
            return None
        if not peer_allowed(credentials, os.getuid(), self.fds.socket_group_id):
            self._rejected_peers += 1
            logger.warning("Worker %s rejected a connection from uid %d (pid %s): only the service user (uid %d) and root may connect",
                           self.name, credentials.uid, credentials.pid, os.getuid())
            return None
        return user_label(credentials.uid)

    # ------------------------------------------------------- supervisor links

    def _on_lifeline(self) -> None:
        try:
            data = os.read(self.fds.lifeline_fd, 1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.fds.lifeline_fd)
            self._request_stop("the supervisor exited", True)

    def _on_control(self) -> None:
        try:
            data = os.read(self.fds.control_fd, CONTROL_READ_BYTES)
        except BlockingIOError:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(self.fds.control_fd)
            return
        for message in self._control.feed(data):
            self._apply(message)

    def _apply(self, message: channels.ControlMessage) -> None:
        if message.kind == channels.AUDIT_HEALTH:
            self.audit.set_unwritable_paths(message.payload)
            logger.info("Worker %s: audit files that cannot be written: %s", self.name,
                        ", ".join(sorted(message.payload)) or "none")
        elif message.kind == channels.CONFIG:
            self._apply_config(message.payload)
        elif message.kind == channels.RESTART_UPSTREAM:
            task = asyncio.create_task(self.gateway.restart_upstream(message.payload))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _apply_config(self, config: Config) -> None:
        """Replace plugins and per-request settings; the upstream and the sessions keep running."""
        self.config = config
        self.server_config = config.server(self.name)
        self.gateway.update_server(self.server_config)
        self.gateway.max_message_bytes = config.max_message_bytes
        self.audit.set_entries(audit_entries(config, self.name))
        self.gateway.set_plugins(load_security_plugins(config, self.name), [self.audit] if self.audit.entries else [])
        logger.info("Worker %s applied the reloaded configuration (%d security plugins, %d audit entries)",
                    self.name, len(self.gateway.security), len(self.audit.entries))

    async def _send_heartbeats(self) -> None:
        interval = self.config.service.heartbeat_interval
        while True:
            transport = self._heartbeat_transport
            if transport.get_write_buffer_size() < HEARTBEAT_BACKLOG_BYTES:
                transport.write(channels.encode_heartbeat(self._report()))
            await asyncio.sleep(interval)

    def _report(self) -> dict:
        gateway = self.gateway
        return {
            "upstream_state": gateway.state.value,
            "upstream_reason": gateway.state_reason[:STDERR_LINE_MAX_CHARS],
            "upstream_pid": gateway.upstream_pid,
            "upstream_restarts": gateway.restarts,
            "sessions": len(gateway.sessions),
            "requests": gateway.requests_total,
            "blocked": gateway.blocked_total,
            "last_stderr": self._latest_stderr()[-STDERR_LINE_MAX_CHARS:],
            "audit_sent": self.audit.sent,
            "audit_dropped": self.audit.dropped,
            "audit_queued_bytes": self.audit.queued_bytes,
            "rejected_peers": self._rejected_peers,
        }

    def _latest_stderr(self) -> str:
        """Return the upstream's last stderr line, also after the process is gone."""
        gateway = self.gateway
        current = gateway.last_stderr()
        if not current and STDERR_MARKER in gateway.state_reason:
            current = gateway.state_reason.rsplit(STDERR_MARKER, 1)[1]
        if current:
            self._last_stderr = current
        return self._last_stderr
