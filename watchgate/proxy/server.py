"""The gateway core: one upstream server, any number of client sessions.

Standalone mode runs one session on stdio; a service worker runs many on
socket connections. Both use this class unchanged.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import shlex
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
from msgspec import UNSET, Raw

from watchgate.audit.events import AuditEvent, EventType, utc_timestamp
from watchgate.config.model import ServerConfig
from watchgate.plugins.base import AuditPlugin, SecurityPlugin
from watchgate.protocol import jsonrpc
from watchgate.protocol.framing import LineReader, Oversized
from watchgate.protocol.jsonrpc import Envelope, ErrorCode, InvalidMessage, Kind, RequestId
from watchgate.proxy.session import Session, SessionProtocol
from watchgate.proxy.upstream import SpawnError, UpstreamProcess, describe_returncode
from watchgate.restart import RestartPolicy

logger = logging.getLogger(__name__)

TIMEOUT_SWEEP_INTERVAL = 0.25  # seconds between checks for requests past their deadline
REPLAY_TIMEOUT_FLOOR = 5.0  # seconds at least for re-initialising a restarted upstream

# Server-to-client request methods and the client capability each needs.
CAPABILITY_OF_METHOD = {
    "roots/list": "roots",
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
}

class UpstreamState(enum.Enum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    FATAL = "FATAL"
    STOPPED = "STOPPED"


class _ToolName(msgspec.Struct):
    name: str


_tool_name_decoder = msgspec.json.Decoder(_ToolName)


class Pending:
    """A request sent upstream under a gateway id, waiting for its response."""

    __slots__ = ("session", "client_id", "method", "tool", "started", "deadline", "future", "progress_token")

    def __init__(self, session, client_id, method, tool, started, deadline, future=None, progress_token=None):
        self.session: Session | None = session
        self.client_id: RequestId | None = client_id
        self.method: str = method
        self.tool: str | None = tool
        self.started: float = started
        self.deadline: float = deadline
        self.future: asyncio.Future | None = future
        self.progress_token: RequestId | None = progress_token


class ServerRequest:
    """A request from the upstream forwarded to one session under a gateway id."""

    __slots__ = ("session", "upstream_id", "method", "started")

    def __init__(self, session: Session, upstream_id: RequestId, method: str, started: float):
        self.session = session
        self.upstream_id = upstream_id
        self.method = method
        self.started = started


class UpstreamUnavailable(Exception):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Gateway:
    """Route JSON-RPC between client sessions and one upstream, enforcing policy and auditing."""

    def __init__(
        self,
        server: ServerConfig,
        security: list[SecurityPlugin],
        auditing: list[AuditPlugin],
        max_message_bytes: int,
    ):
        self.server = server
        self.security = sorted(security, key=lambda plugin: plugin.priority)
        self.auditing = list(auditing)
        self._audit_bodies = _wants_bodies(self.auditing)
        self.max_message_bytes = max_message_bytes
        self.sessions: set[Session] = set()
        # STARTING until start() runs, so status never shows a new gateway as stopped.
        self.state = UpstreamState.STARTING
        self.state_reason = "starting"
        self.requests_total = 0
        self.blocked_total = 0
        self.restarts = 0
        self._policy_names = ",".join(plugin.name for plugin in self.security) or None
        self._commanded_restart = False
        self._supervision: asyncio.Task | None = None
        self._backlogged: set[Session] = set()
        self._background: set[asyncio.Task] = set()
        self._upstream_paused_writing = False
        self._upstream: UpstreamProcess | None = None
        self._restart_policy = RestartPolicy(server.restart)
        self._ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._server_requests: dict[int, ServerRequest] = {}
        self._progress: dict[str, tuple[Session, RequestId]] = {}
        self._subscribers: dict[str, set[Session]] = {}
        self._ready = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._init_params: Raw | None = None
        self._init_result: Raw | None = None
        self._init_waiters: list[asyncio.Future] = []
        self._init_in_flight = False
        self._initialized_sent = False
        self._tool_names: frozenset[str] | None = None
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the upstream supervision loop and the request timeout sweep."""
        self._supervision = asyncio.create_task(self._run_upstream(), name=f"upstream-{self.server.name}")
        self._tasks.append(self._supervision)
        self._tasks.append(asyncio.create_task(self._sweep_timeouts(), name=f"timeouts-{self.server.name}"))

    def set_plugins(self, security: list[SecurityPlugin], auditing: list[AuditPlugin]) -> list[AuditPlugin]:
        """Replace the plugin chains (a live reload); return the audit plugins taken out, for closing."""
        self.security = sorted(security, key=lambda plugin: plugin.priority)
        self._policy_names = ",".join(plugin.name for plugin in self.security) or None
        previous, self.auditing = self.auditing, list(auditing)
        self._audit_bodies = _wants_bodies(self.auditing)
        return previous

    def update_server(self, server: ServerConfig) -> None:
        """Apply reloaded timeouts and restart settings; a changed command needs a new gateway instead."""
        if server.restart != self.server.restart:
            self._restart_policy = RestartPolicy(server.restart)
        self.server = server

    async def restart_upstream(self, reason: str = "restart requested") -> None:
        """Restart the upstream on command: not counted as a crash, and clears FATAL."""
        self._restart_policy.reset()
        if self._supervision is None or self._supervision.done():
            logger.info("Starting upstream %s again: %s", self.server.name, reason)
            self._supervision = asyncio.create_task(self._run_upstream(), name=f"upstream-{self.server.name}")
            self._tasks.append(self._supervision)
            return
        if self._upstream is not None:
            logger.info("Restarting upstream %s: %s", self.server.name, reason)
            self._commanded_restart = True
            await self._upstream.stop()

    async def wait_started(self, timeout: float) -> bool:
        """Wait until the upstream has been spawned or has failed to start."""
        deadline = time.monotonic() + timeout
        while self.state in (UpstreamState.STOPPED, UpstreamState.STARTING) and not self._stopping:
            self._state_changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._state_changed.wait(), remaining)
            except asyncio.TimeoutError:
                return False
        return self.state is UpstreamState.RUNNING

    async def shutdown(self, reason: str = "gateway shutting down") -> None:
        """Fail the requests in flight, stop the upstream group and close every session."""
        if self._stopping:
            return
        self._stopping = True
        self._fail_pending(ErrorCode.SHUTTING_DOWN, f"Watchgate is shutting down: {reason}")
        for task in self._tasks:
            task.cancel()
        if self._upstream is not None:
            await self._upstream.stop()
            self._upstream = None
        self._set_state(UpstreamState.STOPPED, reason)
        for session in list(self.sessions):
            session.close()

    def _set_state(self, state: UpstreamState, reason: str) -> None:
        self.state = state
        self.state_reason = reason
        self._state_changed.set()
        if state is not UpstreamState.RUNNING:
            self._ready.clear()

    def kill_upstream_now(self) -> None:
        """Send SIGKILL to the upstream's process group without waiting (forced exit)."""
        if self._upstream is not None:
            self._upstream.kill_group_now()

    @property
    def upstream_pid(self) -> int | None:
        return self._upstream.pid if self._upstream else None

    def last_stderr(self) -> str:
        return self._upstream.last_stderr() if self._upstream else ""

    async def _run_upstream(self) -> None:
        """Run the upstream, restarting it after crashes with backoff until given up."""
        command_text = command_line(self.server)
        while not self._stopping:
            self._set_state(UpstreamState.STARTING, "starting")
            upstream = UpstreamProcess(self.server, self.max_message_bytes, self._upstream_line)
            upstream.on_pause_writing = self._pause_sessions
            upstream.on_resume_writing = self._resume_sessions
            try:
                await upstream.start()
            except SpawnError as error:
                reason = str(error)
                logger.error("Failed to start upstream %s (%s): %s", self.server.name, command_text, reason)
                self._audit_lifecycle(EventType.UPSTREAM_EXIT, status="error", reason=reason)
            else:
                self._upstream = upstream
                self._restart_policy.started()
                logger.info("Connected to upstream server %s (pid %d): %s", self.server.name, upstream.pid, command_text)
                self._audit_lifecycle(EventType.UPSTREAM_START, pid=upstream.pid, reason=command_text)
                reason = await self._serve_upstream(upstream)
            if self._stopping:
                return
            if self._commanded_restart:
                self._commanded_restart = False
                self.restarts += 1
                self._audit_lifecycle(EventType.UPSTREAM_RESTART, reason="restart requested")
                continue
            delay = self._restart_policy.failed()
            if delay is None:
                reason = f"gave up after {self.server.restart.max_restarts} restarts: {reason}"
                logger.error("Upstream %s %s", self.server.name, reason)
                self._set_state(UpstreamState.FATAL, reason)
                self._fail_init_waiters()
                return
            self._set_state(UpstreamState.BACKOFF, reason)
            self._fail_init_waiters()
            logger.warning("Upstream %s %s; restarting in %.1f s", self.server.name, reason, delay)
            await asyncio.sleep(delay)
            self.restarts += 1
            self._audit_lifecycle(EventType.UPSTREAM_RESTART, reason=reason)

    async def _serve_upstream(self, upstream: UpstreamProcess) -> str:
        """Pump one upstream process until it exits; return why it stopped."""
        self._set_state(UpstreamState.RUNNING, "running")
        replay = None
        if self._init_params is not None:
            replay = asyncio.create_task(self._replay_initialize(), name=f"replay-{self.server.name}")
        else:
            self._ready.set()
        try:
            returncode = await upstream.wait()
        finally:
            if replay is not None:
                replay.cancel()
        reason = describe_returncode(returncode)
        stderr = upstream.last_stderr()
        if stderr:
            reason = f"{reason}; last stderr line: {stderr}"
        if not self._stopping and not self._commanded_restart:
            logger.warning("Upstream %s (pid %s) %s", self.server.name, upstream.pid, reason)
        if not self._stopping:
            self._audit_upstream_exit(upstream, returncode)
        self._ready.clear()
        self._fail_pending(ErrorCode.UPSTREAM_EXITED,
                           f"Upstream server '{self.server.name}' {reason} (command: {command_line(self.server)})")
        await upstream.stop()
        self._upstream = None
        if self._init_params is None:
            self._initialized_sent = False
        return reason

    async def _replay_initialize(self) -> None:
        """Initialise a restarted upstream with the first client's parameters before new requests pass."""
        timeout = max(self.server.startup_timeout, REPLAY_TIMEOUT_FLOOR)
        try:
            await self._internal_request("initialize", self._init_params, timeout)
            self._write_upstream(jsonrpc.notification("notifications/initialized"))
            tools = await self._list_tool_names(timeout) if self._tool_names is not None else None
        except (UpstreamUnavailable, asyncio.TimeoutError) as error:
            logger.error("Re-initialising upstream %s failed: %s", self.server.name, error)
            if self._upstream is not None:
                self._upstream.kill_group_now()
            return
        logger.info("Upstream %s re-initialised after restart", self.server.name)
        self._ready.set()
        if tools is not None and tools != self._tool_names:
            self._tool_names = tools
            logger.info("Tool set of %s changed across the restart; notifying clients", self.server.name)
            self._broadcast(jsonrpc.notification("notifications/tools/list_changed"))

    async def _list_tool_names(self, timeout: float) -> frozenset[str]:
        names: set[str] = set()
        cursor = None
        while True:
            params = Raw(jsonrpc.encode_value({"cursor": cursor} if cursor else {}))
            result = jsonrpc.decode_value(await self._internal_request("tools/list", params, timeout))
            names.update(tool.get("name") for tool in result.get("tools", []) if isinstance(tool, dict))
            cursor = result.get("nextCursor")
            if not cursor:
                return frozenset(names)

    async def _internal_request(self, method: str, params: Raw | None, timeout: float) -> Raw:
        gateway_id = next(self._ids)
        now = time.monotonic()
        future = asyncio.get_running_loop().create_future()
        self._pending[gateway_id] = Pending(None, None, method, None, now, now + timeout, future)
        self._write_upstream(jsonrpc.request(gateway_id, method, UNSET if params is None else params))
        return await future

    # ------------------------------------------------------------------ sessions

    def open_session(self, session: Session) -> None:
        """Register a connected client; lines then go to `handle_client_line`."""
        self.sessions.add(session)
        self._audit(EventType.SESSION_OPEN, session)
        logger.debug("Session %s opened (user %s)", session.id, session.user)
        if self._upstream_paused_writing:
            session.pause_reading()

    def close_session(self, session: Session) -> None:
        if session in self.sessions:
            self._close_session(session)

    def connection_protocol(self, user_of: Callable[[asyncio.BaseTransport], str | None] | None = None):
        """Return a protocol factory serving each connection as a session (for `create_unix_server`)."""
        return lambda: SessionProtocol(self, user_of)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str | None = None) -> None:
        """Serve one client connection given as asyncio streams, until it closes."""
        session = Session(writer.transport, user, drain=writer.drain)
        self.open_session(session)
        lines = LineReader(reader, self.max_message_bytes)
        try:
            while not session.closed:
                line = await lines.readline()
                if line is None:
                    break
                waiting = self.handle_client_line(session, line)
                if waiting is not None:
                    await waiting
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            logger.info("Session %s connection lost: %s", session.id, error)
        finally:
            self.close_session(session)

    def _close_session(self, session: Session) -> None:
        self.sessions.discard(session)
        self._backlogged.discard(session)
        for client_id, gateway_id in list(session.inflight.items()):
            if self._pending.pop(gateway_id, None) is not None:
                self._send_cancel(gateway_id, "client disconnected")
        session.inflight.clear()
        for gateway_id, server_request in list(self._server_requests.items()):
            if server_request.session is session:
                del self._server_requests[gateway_id]
                self._write_upstream(
                    jsonrpc.error_response(server_request.upstream_id, ErrorCode.INTERNAL_ERROR, "Client disconnected")
                )
        for uri in list(session.subscriptions):
            self._unsubscribe(session, uri)
        for token, (owner, _) in list(self._progress.items()):
            if owner is session:
                del self._progress[token]
        self._audit(EventType.SESSION_CLOSE, session)
        logger.debug("Session %s closed", session.id)
        session.close()

    def _reject_oversized_from_client(self, session: Session, line: Oversized) -> None:
        request_id = jsonrpc.find_id(line.head, line.tail)
        message = f"Message too large: {line.size} bytes exceeds max_message_bytes ({self.max_message_bytes})"
        logger.warning("Session %s: %s (id %r)", session.id, message, request_id)
        session.send(jsonrpc.error_response(request_id, ErrorCode.MESSAGE_TOO_LARGE, message))
        self._audit(EventType.ERROR, session, request_id=request_id, status="error",
                    error_code=ErrorCode.MESSAGE_TOO_LARGE, reason=message)

    def handle_client_line(self, session: Session, line: bytes | Oversized) -> Coroutine | None:
        """Handle one line from a client; return a coroutine when the line must wait (for the upstream).

        The caller runs the coroutine to completion before handing over the
        session's next line, so a session's messages keep their order.
        """
        if isinstance(line, Oversized):
            self._reject_oversized_from_client(session, line)
            return None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("client %s -> %s: %s", session.id, self.server.name, _preview(line))
        try:
            kind, message = jsonrpc.decode(line)
        except InvalidMessage as error:
            logger.warning("Session %s sent an invalid message: %s", session.id, error.message)
            session.send(jsonrpc.error_response(error.request_id, error.code, error.message))
            self._audit(EventType.ERROR, session, request_id=error.request_id, status="error",
                        error_code=error.code, reason=error.message)
            return None
        try:
            if kind is Kind.REQUEST:
                return self._client_request(session, message, line)
            if kind is Kind.NOTIFICATION:
                self._client_notification(session, message)
            else:
                self._client_response(session, message)
        except Exception:
            self._internal_error(session, message, kind)
        return None

    def _internal_error(self, session: Session, message: Envelope, kind: Kind) -> None:
        logger.exception("Handling %s from session %s failed", message.method or "a response", session.id)
        if kind is Kind.REQUEST:
            session.send(jsonrpc.error_response(message.id, ErrorCode.INTERNAL_ERROR, "Internal error in Watchgate"))

    # ------------------------------------------------------- client -> upstream

    def _client_request(self, session: Session, message: Envelope, line: bytes) -> Coroutine | None:
        client_id = message.id
        method = message.method
        if client_id in session.inflight:
            self._reply_error(session, client_id, method, None, ErrorCode.INVALID_REQUEST,
                              f"Invalid Request: id {client_id!r} is already in flight")
            return None
        if not self._audit_healthy():
            self._reply_error(session, client_id, method, None, ErrorCode.AUDIT_UNAVAILABLE,
                              "Audit log unavailable: a critical audit file cannot be written")
            return None
        tool = None
        if method == "tools/call":
            tool = self._tool_name(message.params)
            if tool is None:
                self._reply_error(session, client_id, method, None, ErrorCode.INVALID_PARAMS,
                                  "Invalid params: tools/call needs a string 'name'")
                return None
        if not self._check_policy(session, client_id, method, tool):
            return None
        self.requests_total += 1
        if method == "initialize":
            self._remember_client(session, message.params)
        self._audit(EventType.REQUEST, session, method=method, tool=tool, status="ALLOWED",
                    request_id=client_id, plugin=self._policy_names, params=message.params)
        if method == "initialize":
            return self._client_initialize(session, message, line)
        if method == "resources/subscribe" and self._subscribe_locally(session, message):
            return None
        if method == "resources/unsubscribe" and self._unsubscribe_locally(session, message):
            return None
        if self._ready.is_set():
            self._forward_request(session, message, line, tool, self.server.request_timeout)
            return None
        return self._forward_when_ready(session, message, line, tool)

    async def _forward_when_ready(self, session: Session, message: Envelope, line: bytes, tool: str | None) -> None:
        try:
            await self._wait_ready()
        except UpstreamUnavailable as error:
            self._reply_error(session, message.id, message.method, tool, error.code, error.message)
            return
        if not session.closed:
            self._forward_request(session, message, line, tool, self.server.request_timeout)

    def _tool_name(self, params: Raw | Any) -> str | None:
        if params is UNSET:
            return None
        try:
            return _tool_name_decoder.decode(params).name
        except msgspec.MsgspecError:
            return None

    def _check_policy(self, session: Session, client_id: RequestId, method: str, tool: str | None) -> bool:
        """Run the security plugins in priority order; any block or plugin error rejects the request."""
        for plugin in self.security:
            try:
                decision = plugin.check_request(method, tool)
            except Exception:
                logger.exception("Security plugin %s failed on %s (id %r); rejecting the request", plugin.name, method, client_id)
                self._reply_error(session, client_id, method, tool, ErrorCode.BLOCKED_BY_POLICY,
                                  "Request rejected: a security policy check failed",
                                  data={"plugin": plugin.name, "reason": "plugin error"}, audit_type=EventType.ERROR)
                self.blocked_total += 1
                return False
            if not decision.allowed:
                self.blocked_total += 1
                logger.info("Blocked %s %s (id %r) from %s: %s", method, tool or "", client_id, session.client_name, decision.reason)
                session.send(jsonrpc.error_response(client_id, ErrorCode.BLOCKED_BY_POLICY, plugin.block_message,
                                                    {"plugin": plugin.name, "reason": decision.reason}))
                self._audit(EventType.SECURITY_BLOCK, session, method=method, tool=tool, status="BLOCKED",
                            request_id=client_id, plugin=plugin.name, reason=decision.reason,
                            plugin_metadata=decision.metadata)
                return False
        return True

    def _forward_request(self, session: Session, message: Envelope, line: bytes, tool: str | None,
                         timeout: float) -> None:
        gateway_id = next(self._ids)
        now = time.monotonic()
        params = message.params
        token = None
        if params is not UNSET and b"progressToken" in line:
            params, token = self._adopt_progress_token(session, gateway_id, params)
        self._pending[gateway_id] = Pending(session, message.id, message.method, tool, now, now + timeout,
                                            progress_token=token)
        session.inflight[message.id] = gateway_id
        self._write_upstream(jsonrpc.request(gateway_id, message.method, params))

    def _adopt_progress_token(self, session: Session, gateway_id: int, params: Raw) -> tuple[Raw, Any]:
        """Replace a client's progress token with a gateway one, so tokens of two sessions never collide."""
        try:
            decoded = jsonrpc.decode_value(params)
            token = decoded["_meta"]["progressToken"]
        except (msgspec.DecodeError, KeyError, TypeError):
            return params, None
        gateway_token = f"wg-{gateway_id}"
        decoded["_meta"]["progressToken"] = gateway_token
        self._progress[gateway_token] = (session, token)
        return Raw(jsonrpc.encode_value(decoded)), gateway_token

    async def _client_initialize(self, session: Session, message: Envelope, line: bytes) -> None:
        if self._init_result is None and not self._init_in_flight:
            try:
                await self._wait_ready()
            except UpstreamUnavailable as error:
                self._reply_error(session, message.id, "initialize", None, error.code, error.message)
                return
            if self._init_result is None and not self._init_in_flight:
                self._init_in_flight = True
                self._forward_request(session, message, line, None, self.server.startup_timeout)
                return
        try:
            await self._wait_initialized()
            await self._wait_ready()
        except UpstreamUnavailable as error:
            self._reply_error(session, message.id, "initialize", None, error.code, error.message)
            return
        # Later sessions share the upstream initialised by the first one.
        session.send(jsonrpc.encode(Envelope(jsonrpc="2.0", id=message.id, result=self._init_result)))
        self._audit(EventType.RESPONSE, session, method="initialize", status="success", request_id=message.id,
                    duration_ms=0.0)

    async def _wait_initialized(self) -> None:
        if self._init_result is not None:
            return
        future = asyncio.get_running_loop().create_future()
        self._init_waiters.append(future)
        try:
            await asyncio.wait_for(future, self.server.startup_timeout)
        except asyncio.TimeoutError:
            raise UpstreamUnavailable(ErrorCode.UPSTREAM_UNAVAILABLE,
                                      f"Upstream server '{self.server.name}' did not finish initialising "
                                      f"within {self.server.startup_timeout:g} s") from None

    def _fail_init_waiters(self) -> None:
        if self._init_result is None:
            self._init_in_flight = False
        for future in self._init_waiters:
            if not future.done():
                future.set_exception(UpstreamUnavailable(ErrorCode.UPSTREAM_UNAVAILABLE, self._unavailable_message()))
        self._init_waiters.clear()

    def _remember_client(self, session: Session, params: Raw | Any) -> None:
        session.initialize_params = None if params is UNSET else params
        try:
            decoded = jsonrpc.decode_value(params) if params is not UNSET else {}
        except msgspec.DecodeError:
            decoded = {}
        info = decoded.get("clientInfo") if isinstance(decoded, dict) else None
        if isinstance(info, dict):
            session.client_name = _text_or_none(info.get("name"))
            session.client_version = _text_or_none(info.get("version"))
        if isinstance(decoded, dict):
            session.protocol_version = _text_or_none(decoded.get("protocolVersion"))
            capabilities = decoded.get("capabilities")
            session.capabilities = capabilities if isinstance(capabilities, dict) else {}
        logger.info("Client %s %s connected to %s (session %s, protocol %s)", session.client_name,
                    session.client_version, self.server.name, session.id, session.protocol_version)

    async def _wait_ready(self) -> None:
        if self._ready.is_set():
            return
        if self.state in (UpstreamState.FATAL, UpstreamState.STOPPED) or self._stopping:
            raise UpstreamUnavailable(ErrorCode.UPSTREAM_UNAVAILABLE, self._unavailable_message())
        if self.state is UpstreamState.BACKOFF and self._upstream is None and self._init_params is None:
            # The upstream failed before any client initialised it: report why at once.
            raise UpstreamUnavailable(ErrorCode.UPSTREAM_UNAVAILABLE, self._unavailable_message())
        try:
            await asyncio.wait_for(self._ready.wait(), self.server.startup_timeout)
        except asyncio.TimeoutError:
            raise UpstreamUnavailable(ErrorCode.UPSTREAM_UNAVAILABLE, self._unavailable_message()) from None

    def _unavailable_message(self) -> str:
        command = command_line(self.server)
        state = self.state.value.lower()
        reason = f": {self.state_reason}" if self.state_reason else ""
        return f"Upstream server '{self.server.name}' is unavailable ({state}{reason}); command: {command}"

    def _client_notification(self, session: Session, message: Envelope) -> None:
        method = message.method
        self._audit(EventType.NOTIFICATION, session, method=method, status="FORWARDED")
        if method == "notifications/initialized":
            session.initialized = True
            if self._initialized_sent:
                return
            self._initialized_sent = True
        elif method == "notifications/cancelled":
            self._forward_client_cancel(session, message)
            return
        self._write_upstream(jsonrpc.encode(message))

    def _forward_client_cancel(self, session: Session, message: Envelope) -> None:
        try:
            params = jsonrpc.decode_value(message.params)
            client_id = params["requestId"]
        except (msgspec.DecodeError, KeyError, TypeError):
            logger.info("Session %s sent notifications/cancelled without a requestId; ignored", session.id)
            return
        gateway_id = session.inflight.pop(client_id, None)
        if gateway_id is None:
            return
        pending = self._pending.pop(gateway_id, None)
        if pending is not None:
            self._audit_response(pending, gateway_id, "cancelled")
        self._send_cancel(gateway_id, params.get("reason"))

    def _send_cancel(self, gateway_id: int, reason: str | None) -> None:
        params: dict[str, Any] = {"requestId": gateway_id}
        if reason:
            params["reason"] = reason
        self._write_upstream(jsonrpc.notification("notifications/cancelled", params))

    def _client_response(self, session: Session, message: Envelope) -> None:
        server_request = self._server_requests.pop(message.id, None) if isinstance(message.id, int) else None
        if server_request is None or server_request.session is not session:
            logger.info("Session %s responded to unknown request id %r; dropped", session.id, message.id)
            return
        status = "error" if message.error is not UNSET else "success"
        self._audit(EventType.RESPONSE, session, method=server_request.method, status=status,
                    request_id=message.id, duration_ms=_elapsed_ms(server_request.started))
        message.id = server_request.upstream_id
        self._write_upstream(jsonrpc.encode(message))

    # ------------------------------------------------------- upstream -> client

    def _upstream_line(self, line: bytes | Oversized) -> None:
        if isinstance(line, Oversized):
            self._reject_oversized_from_upstream(line)
            return
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s -> gateway: %s", self.server.name, _preview(line))
        try:
            kind, message = jsonrpc.decode(line)
        except InvalidMessage as error:
            logger.warning("Upstream %s sent an invalid message: %s", self.server.name, error.message)
            self._audit(EventType.ERROR, None, status="error", error_code=error.code,
                        reason=f"invalid message from upstream: {error.message}")
            return
        try:
            if kind is Kind.RESPONSE:
                session = self._upstream_response(message)
            elif kind is Kind.NOTIFICATION:
                session = self._upstream_notification(message)
            else:
                session = self._upstream_request(message)
        except Exception:
            logger.exception("Handling %s from upstream %s failed", message.method or "a response", self.server.name)
            return
        if session is not None and session.backlogged:
            self._hold_upstream_for(session)

    def _hold_upstream_for(self, session: Session) -> None:
        """Stop reading the upstream until a backlogged client has caught up (or is dropped)."""
        if session in self._backlogged:
            return
        self._backlogged.add(session)
        if self._upstream is not None:
            self._upstream.pause_reading()
        task = asyncio.get_running_loop().create_task(self._release_upstream_after(session))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release_upstream_after(self, session: Session) -> None:
        await session.wait_writable()
        self._backlogged.discard(session)
        if not self._backlogged and self._upstream is not None:
            self._upstream.resume_reading()

    def _pause_sessions(self) -> None:
        """Stop reading client input while the upstream's stdin is full."""
        self._upstream_paused_writing = True
        for session in self.sessions:
            session.pause_reading()

    def _resume_sessions(self) -> None:
        self._upstream_paused_writing = False
        for session in self.sessions:
            session.resume_reading()

    def _reject_oversized_from_upstream(self, line: Oversized) -> None:
        gateway_id = jsonrpc.find_id(line.head, line.tail)
        message = (f"Upstream message too large: {line.size} bytes exceeds "
                   f"max_message_bytes ({self.max_message_bytes})")
        logger.warning("Upstream %s: %s (id %r)", self.server.name, message, gateway_id)
        pending = self._pending.pop(gateway_id, None) if isinstance(gateway_id, int) else None
        if pending is None:
            self._audit(EventType.ERROR, None, status="error", error_code=ErrorCode.MESSAGE_TOO_LARGE, reason=message)
            return
        self._fail_one(gateway_id, pending, ErrorCode.MESSAGE_TOO_LARGE, message)

    def _upstream_response(self, message: Envelope) -> Session | None:
        gateway_id = message.id
        pending = self._pending.pop(gateway_id, None) if isinstance(gateway_id, int) else None
        if pending is None:
            logger.debug("Upstream %s responded to id %r, which is no longer pending", self.server.name, gateway_id)
            return None
        if pending.future is not None:
            if message.error is not UNSET:
                _, text = jsonrpc.decode_error(message.error)
                pending.future.set_exception(UpstreamUnavailable(ErrorCode.UPSTREAM_UNAVAILABLE,
                                                                 f"{pending.method} failed: {text}"))
            else:
                pending.future.set_result(message.result)
            return None
        session = pending.session
        session.inflight.pop(pending.client_id, None)
        if pending.progress_token is not None:
            self._progress.pop(pending.progress_token, None)
        if message.error is not UNSET:
            code, text = jsonrpc.decode_error(message.error)
            self._audit_response(pending, gateway_id, "error", error_code=code, reason=text or None)
            if pending.method == "initialize":
                self._init_in_flight = False
                self._fail_init_waiters()
        else:
            if pending.method == "initialize":
                self._cache_initialize(session, message.result)
            elif pending.method == "tools/list" and message.result is not UNSET:
                message.result = self._filter_tools(session, pending, message.result)
            self._audit_response(pending, gateway_id, "success", result=message.result)
        message.id = pending.client_id
        session.send(jsonrpc.encode(message))
        return session

    def _cache_initialize(self, session: Session, result: Raw) -> None:
        self._init_result = result
        self._init_in_flight = False
        if self._init_params is None:
            self._init_params = session.initialize_params
        for future in self._init_waiters:
            if not future.done():
                future.set_result(None)
        self._init_waiters.clear()

    def _filter_tools(self, session: Session, pending: Pending, result: Raw) -> Raw:
        """Remove tools a security plugin blocks, keeping every other member (nextCursor too)."""
        try:
            decoded = jsonrpc.decode_value(result)
            tools = decoded["tools"]
        except (msgspec.DecodeError, KeyError, TypeError):
            return result
        if not isinstance(tools, list):
            return result
        # Pages add up, so the set compared after a restart covers every page the client listed.
        self._tool_names = (self._tool_names or frozenset()) | {
            tool.get("name") for tool in tools if isinstance(tool, dict)
        }
        if not self.security:
            return result
        kept = tools
        for plugin in self.security:
            try:
                allowed = [tool for tool in kept if isinstance(tool, dict) and plugin.check_tool(str(tool.get("name"))).allowed]
            except Exception:
                logger.exception("Security plugin %s failed while filtering tools/list; hiding every tool", plugin.name)
                allowed = []
            filtered = len(kept) - len(allowed)
            if filtered:
                self._audit(EventType.TOOLS_FILTERED, session, method="tools/list", status="FILTERED",
                            request_id=pending.client_id, plugin=plugin.name,
                            reason=f"Filtered {filtered} tools from response",
                            plugin_metadata={"filtered_count": filtered})
            kept = allowed
        if len(kept) == len(tools):
            return result
        decoded["tools"] = kept
        return Raw(jsonrpc.encode_value(decoded))

    def _upstream_notification(self, message: Envelope) -> Session | None:
        method = message.method
        self._audit(EventType.NOTIFICATION, None, method=method, status="FORWARDED")
        if method == "notifications/progress":
            return self._route_progress(message)
        if method == "notifications/cancelled":
            return self._route_server_cancel(message)
        if method == "notifications/resources/updated":
            return self._route_resource_update(message)
        self._broadcast(jsonrpc.encode(message))
        return None

    def _route_progress(self, message: Envelope) -> Session | None:
        try:
            params = jsonrpc.decode_value(message.params)
            owner = self._progress.get(params["progressToken"])
        except (msgspec.DecodeError, KeyError, TypeError):
            owner = None
        if owner is None:
            logger.debug("Progress from %s for an unknown token; dropped", self.server.name)
            return None
        session, client_token = owner
        params["progressToken"] = client_token
        session.send(jsonrpc.notification("notifications/progress", params))
        return session

    def _route_server_cancel(self, message: Envelope) -> Session | None:
        try:
            params = jsonrpc.decode_value(message.params)
            upstream_id = params["requestId"]
        except (msgspec.DecodeError, KeyError, TypeError):
            return None
        for gateway_id, server_request in list(self._server_requests.items()):
            if server_request.upstream_id == upstream_id:
                del self._server_requests[gateway_id]
                params["requestId"] = gateway_id
                server_request.session.send(jsonrpc.notification("notifications/cancelled", params))
                return server_request.session
        return None

    def _route_resource_update(self, message: Envelope) -> Session | None:
        try:
            uri = jsonrpc.decode_value(message.params)["uri"]
        except (msgspec.DecodeError, KeyError, TypeError):
            uri = None
        subscribers = self._subscribers.get(uri) if isinstance(uri, str) else None
        data = jsonrpc.encode(message)
        if subscribers:
            for session in subscribers:
                session.send(data)
        else:
            for session in self.sessions:
                if session.subscriptions:
                    session.send(data)
        return None

    def _upstream_request(self, message: Envelope) -> Session | None:
        session = self._pick_session_for(message.method)
        if session is None:
            logger.info("No client session can take %s from %s; responding with an error", message.method, self.server.name)
            self._write_upstream(jsonrpc.error_response(message.id, ErrorCode.METHOD_NOT_FOUND,
                                                        f"No connected client supports {message.method}"))
            return None
        gateway_id = next(self._ids)
        self._server_requests[gateway_id] = ServerRequest(session, message.id, message.method, time.monotonic())
        self._audit(EventType.REQUEST, session, method=message.method, status="ALLOWED", request_id=gateway_id,
                    reason="request from upstream to client")
        session.send(jsonrpc.encode(Envelope(jsonrpc="2.0", id=gateway_id, method=message.method, params=message.params)))
        return session

    def _pick_session_for(self, method: str) -> Session | None:
        """Choose the session for a server-to-client request.

        When exactly one session has a request in flight, it is chosen.
        Otherwise a busy session that declared the capability comes first, then
        any session that declared it (any session at all for `ping`).
        """
        busy = [session for session in self.sessions if session.inflight]
        if len(busy) == 1:
            return busy[0]
        capability = CAPABILITY_OF_METHOD.get(method)
        capable = [s for s in self.sessions if capability is None or s.declares(capability)]
        for session in capable:
            if session.inflight:
                return session
        return capable[0] if capable else None

    # ------------------------------------------------------------ subscriptions

    def _subscribe_locally(self, session: Session, message: Envelope) -> bool:
        """Count a subscription, responding at once when another session has already subscribed upstream."""
        uri = _uri_of(message.params)
        if uri is None:
            return False
        subscribers = self._subscribers.setdefault(uri, set())
        already = bool(subscribers)
        subscribers.add(session)
        session.subscriptions.add(uri)
        if not already:
            return False
        session.send(jsonrpc.encode(Envelope(jsonrpc="2.0", id=message.id, result=Raw(b"{}"))))
        self._audit(EventType.RESPONSE, session, method=message.method, status="success", request_id=message.id,
                    duration_ms=0.0)
        return True

    def _unsubscribe_locally(self, session: Session, message: Envelope) -> bool:
        uri = _uri_of(message.params)
        if uri is None:
            return False
        subscribers = self._subscribers.get(uri, set())
        subscribers.discard(session)
        session.subscriptions.discard(uri)
        if not subscribers:
            self._subscribers.pop(uri, None)
            return False
        session.send(jsonrpc.encode(Envelope(jsonrpc="2.0", id=message.id, result=Raw(b"{}"))))
        self._audit(EventType.RESPONSE, session, method=message.method, status="success", request_id=message.id,
                    duration_ms=0.0)
        return True

    def _unsubscribe(self, session: Session, uri: str) -> None:
        subscribers = self._subscribers.get(uri)
        if subscribers is None:
            return
        subscribers.discard(session)
        if not subscribers:
            del self._subscribers[uri]
            if self._upstream is not None and self._ready.is_set():
                gateway_id = next(self._ids)
                now = time.monotonic()
                future = asyncio.get_running_loop().create_future()
                future.add_done_callback(_ignore_result)
                self._pending[gateway_id] = Pending(None, None, "resources/unsubscribe", None, now,
                                                    now + self.server.request_timeout, future)
                self._write_upstream(jsonrpc.request(gateway_id, "resources/unsubscribe",
                                                     Raw(jsonrpc.encode_value({"uri": uri}))))

    # ----------------------------------------------------------------- plumbing

    def _write_upstream(self, data: bytes) -> None:
        if self._upstream is None:
            return
        try:
            self._upstream.write(data)
        except (ConnectionError, RuntimeError) as error:
            logger.info("Write to upstream %s failed: %s", self.server.name, error)

    def _broadcast(self, data: bytes) -> None:
        for session in self.sessions:
            session.send(data)

    def _reply_error(self, session: Session, client_id: RequestId, method: str | None, tool: str | None,
                     code: ErrorCode, message: str, data: Any = UNSET,
                     audit_type: EventType = EventType.ERROR) -> None:
        logger.info("Rejected %s (id %r) from session %s: %s", method, client_id, session.id, message)
        session.send(jsonrpc.error_response(client_id, code, message, data))
        self._audit(audit_type, session, method=method, tool=tool, status="error", request_id=client_id,
                    error_code=int(code), reason=message)

    def _fail_one(self, gateway_id: int, pending: Pending, code: ErrorCode, message: str) -> None:
        if pending.future is not None:
            if not pending.future.done():
                pending.future.set_exception(UpstreamUnavailable(code, message))
            return
        session = pending.session
        session.inflight.pop(pending.client_id, None)
        if pending.progress_token is not None:
            self._progress.pop(pending.progress_token, None)
        session.send(jsonrpc.error_response(pending.client_id, code, message))
        self._audit_response(pending, gateway_id, "error", error_code=int(code), reason=message)
        if pending.method == "initialize":
            self._init_in_flight = False
            self._fail_init_waiters()

    def _fail_pending(self, code: ErrorCode, message: str) -> None:
        pending, self._pending = self._pending, {}
        for gateway_id, entry in pending.items():
            self._fail_one(gateway_id, entry, code, message)
        self._server_requests.clear()

    async def _sweep_timeouts(self) -> None:
        while True:
            await asyncio.sleep(TIMEOUT_SWEEP_INTERVAL)
            now = time.monotonic()
            expired = [(gid, entry) for gid, entry in self._pending.items() if entry.deadline <= now]
            for gateway_id, pending in expired:
                del self._pending[gateway_id]
                limit = pending.deadline - pending.started
                if pending.method == "initialize":
                    message = (f"Upstream server '{self.server.name}' did not respond to initialize within {limit:g} s "
                               f"(command: {command_line(self.server)})")
                else:
                    message = f"Request timed out: no response from '{self.server.name}' within {limit:g} s"
                logger.warning("%s (method %s, id %r)", message, pending.method, pending.client_id)
                self._fail_one(gateway_id, pending, ErrorCode.REQUEST_TIMEOUT, message)
                self._send_cancel(gateway_id, "request timed out in Watchgate")

    def _audit_healthy(self) -> bool:
        if not self.auditing:
            return True
        return all(plugin.healthy for plugin in self.auditing)

    # -------------------------------------------------------------------- audit

    def _audit(self, event_type: EventType, session: Session | None, **fields: Any) -> None:
        if not self.auditing:
            return
        request_id = fields.get("request_id")
        if request_id is not None:
            fields["request_id"] = str(request_id)
        params = fields.pop("params", None) if self._audit_bodies else None
        result = fields.pop("result", None) if self._audit_bodies else None
        fields.pop("params", None)
        fields.pop("result", None)
        event = AuditEvent(
            timestamp=utc_timestamp(),
            event_type=event_type.value,
            server_name=self.server.name,
            client_name=session.client_name if session else None,
            client_version=session.client_version if session else None,
            session_id=session.id if session else None,
            user=session.user if session else None,
            **fields,
        )
        if params is not None and params is not UNSET:
            event.params = params
        if result is not None and result is not UNSET:
            event.result = result
        for plugin in self.auditing:
            try:
                plugin.record(event)
            except Exception:
                logger.exception("Audit plugin %s failed to record a %s event", plugin.name, event_type.value)

    def _audit_response(self, pending: Pending, gateway_id: int, status: str, **fields: Any) -> None:
        if not self.auditing:
            return
        self._audit(EventType.RESPONSE, pending.session, method=pending.method, tool=pending.tool, status=status,
                    request_id=pending.client_id, duration_ms=_elapsed_ms(pending.started), **fields)

    def _audit_lifecycle(self, event_type: EventType, **fields: Any) -> None:
        self._audit(event_type, None, **fields)

    def _audit_upstream_exit(self, upstream: UpstreamProcess, returncode: int) -> None:
        signal_name = describe_returncode(returncode).removeprefix("killed by ") if returncode < 0 else None
        self._audit_lifecycle(EventType.UPSTREAM_EXIT, pid=upstream.pid, status="error",
                              exit_code=returncode if returncode >= 0 else None, signal=signal_name,
                              reason=upstream.last_stderr() or None)


def _wants_bodies(plugins: list[AuditPlugin]) -> bool:
    """Tell whether any audit plugin records params and results, which are otherwise not attached."""
    return any(getattr(getattr(plugin, "config", None), "include_bodies", False) for plugin in plugins)


def command_line(server: ServerConfig) -> str:
    return shlex.join(server.command)


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _uri_of(params: Raw | Any) -> str | None:
    if params is UNSET:
        return None
    try:
        uri = jsonrpc.decode_value(params).get("uri")
    except (msgspec.DecodeError, AttributeError):
        return None
    return uri if isinstance(uri, str) else None


def _ignore_result(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


PREVIEW_BYTES = 500


def _preview(line: bytes) -> str:
    """Truncate a payload for DEBUG logging."""
    text = line[:PREVIEW_BYTES].decode("utf-8", "replace")
    return text if len(line) <= PREVIEW_BYTES else f"{text}... ({len(line)} bytes)"
