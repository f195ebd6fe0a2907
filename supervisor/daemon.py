"""The supervisor: starts a worker per server and the audit writer, and keeps them running.

It is a single-threaded selector loop with no asyncio and no threads, so a
fork never copies a running event loop or a held lock. Signal handlers only
record the signal, and the loop acts on it. Every pipe and socket a child
needs exists before the child is forked.
"""

from __future__ import annotations

import enum
import logging
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

import msgspec
import psutil

from watchgate.audit.events import AuditEvent, utc_timestamp
from watchgate.audit.pipe import SEQUENCE_MARK, encode_frame
from watchgate.config import ConfigError, load_config
from watchgate.config.model import Config, RestartPolicyConfig
from watchgate.ctl import protocol
from watchgate.proxy.upstream import group_alive, signal_group
from watchgate.supervisor import channels, runtime, sdnotify
from watchgate.supervisor.control import ControlServer
from watchgate.supervisor.process import Child, ProcessState, Role, transition
from watchgate.supervisor.reload import plan_reload
from watchgate.supervisor.status import build_status, status_line
from watchgate.supervisor.worker import WorkerFds, audit_entries, run_worker
from watchgate.supervisor.writer import WriterFds, run_writer

logger = logging.getLogger("watchgate.supervisor")

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_CHILD_CRASHED = 70  # a child's main function raised; the traceback is in the log
WRITER_NAME = "writer"
TICK_INTERVAL = 0.1  # seconds the loop sleeps at most, the resolution of every timer below
# Extra seconds a stopping worker gets beyond shutdown_timeout to stop its upstream group.
STOP_MARGIN = 5.0
ORPHAN_KILL_TIMEOUT = 3.0  # seconds an orphaned upstream group gets between SIGTERM and SIGKILL
FORCED_EXIT_TIMEOUT = 3.0  # seconds to reap children after a forced stop's SIGKILL
HEARTBEAT_READ_BYTES = 65536
# Linux <linux/prctl.h>: orphaned descendants (upstreams of a killed worker) re-parent to us.
PR_SET_CHILD_SUBREAPER = 36


class ShutdownPhase(enum.Enum):
    """The service's stage on the way to exit; status shows the value."""

    NONE = "running"
    WORKERS = "stopping workers"
    WRITER = "stopping writer"
    DONE = "stopped"


class Supervisor:
    def __init__(self, config: Config):
        self.config = config
        self.config_error: str | None = None
        self.runtime_dir = config.service.runtime_dir
        self.socket_group_id = runtime.group_id(config.service.socket_group)
        self.started = time.monotonic()
        self.workers: dict[str, Child] = {}
        self.writer = Child(WRITER_NAME, Role.WRITER, RestartPolicyConfig())
        self.listeners: dict[str, socket.socket] = {}
        self.audit_pipes: dict[str, tuple[int, int]] = {}
        self.selector = selectors.DefaultSelector()
        self.control: ControlServer | None = None
        self.phase = ShutdownPhase.NONE
        self.forced = False
        self.orphans: dict[int, float] = {}
        self.writer_restart_pending = False
        self.writer_seq: dict[str, int] = {}
        self.unwritable: frozenset[str] = frozenset()
        self.ready_sent = False
        self.last_status_line = ""
        self.next_watchdog = 0.0
        self._signals: list[int] = []
        self._lifeline_read, self._lifeline_write = os.pipe()
        self._wakeup_read, self._wakeup_write = os.pipe()

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Create the runtime directory, sockets and pipes; raise SetupError or AlreadyRunning."""
        runtime.prepare_directory(self.runtime_dir)
        control_path = os.path.join(self.runtime_dir, runtime.CONTROL_SOCKET)
        runtime.check_socket_path(control_path)
        runtime.probe_control_socket(control_path)
        control_listener = runtime.create_listener(control_path)
        self.control = ControlServer(control_listener, control_path, self.selector, self.handle_request)
        for server in self.config.servers:
            self._open_server_resources(server.name)
            self.workers[server.name] = Child(server.name, Role.WORKER, server.restart)
        runtime.write_pid_file(self.runtime_dir)
        _become_subreaper()
        self._install_signals()

    def _open_server_resources(self, name: str) -> None:
        if name in self.listeners:
            # A server removed and added back before the writer restart keeps its socket and pipe.
            return
        path = self.socket_path(name)
        self.listeners[name] = runtime.create_listener(path, self.config.service.socket_group)
        self.audit_pipes[name] = runtime.create_audit_pipe()

    def _close_server_resources(self, name: str) -> None:
        self._accept_again(name)
        listener = self.listeners.pop(name, None)
        if listener is not None:
            runtime.close_listener(listener, self.socket_path(name))
        for fd in self.audit_pipes.pop(name, ()):
            os.close(fd)

    def socket_path(self, name: str) -> str:
        return os.path.join(self.runtime_dir, f"{name}.sock")

    def _install_signals(self) -> None:
        os.set_blocking(self._wakeup_write, False)
        os.set_blocking(self._wakeup_read, False)
        signal.set_wakeup_fd(self._wakeup_write)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._record_signal)
        self.selector.register(self._wakeup_read, selectors.EVENT_READ, self._drain_wakeup)

    def _record_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _drain_wakeup(self, mask: int) -> None:
        try:
            while os.read(self._wakeup_read, 4096):
                pass
        except BlockingIOError:
            pass

    # -------------------------------------------------------------- main loop

    def run(self) -> int:
        logger.info("Watchgate service (pid %d) starting workers: %d; runtime directory %s", os.getpid(),
                    len(self.workers), self.runtime_dir)
        self._spawn(self.writer, "service start")
        for child in self.workers.values():
            self._spawn(child, "service start")
        while self.phase is not ShutdownPhase.DONE:
            for key, mask in self.selector.select(TICK_INTERVAL):
                key.data(mask)
            self._handle_signals()
            self._reap()
            self._tick(time.monotonic())
        self._cleanup()
        logger.info("Watchgate service stopped")
        return EXIT_FORCED if self.forced else EXIT_OK

    def _handle_signals(self) -> None:
        pending, self._signals = self._signals, []
        for signum in pending:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stop(f"received {signal.Signals(signum).name}")
            elif signum == signal.SIGHUP:
                logger.info("Received SIGHUP: reloading %s", self.config.path)
                self.reload()

    def _tick(self, now: float) -> None:
        for child in self._all_children():
            self._check_timers(child, now)
        self._kill_due_orphans(now)
        if self.writer_restart_pending and self.phase is ShutdownPhase.NONE:
            self._restart_writer_when_drained()
        self._advance_shutdown()
        self._notify_systemd(now)

    def _check_timers(self, child: Child, now: float) -> None:
        if child.state is ProcessState.BACKOFF and child.backoff_until is not None and now >= child.backoff_until:
            child.restarts += 1
            self._spawn(child, "restarting after backoff")
        elif child.state in (ProcessState.STARTING, ProcessState.RUNNING) and child.killed_for is None:
            silence = now - child.last_heartbeat
            if silence > self.config.service.heartbeat_timeout:
                self._kill(child, f"no heartbeat for {silence:.1f} s (heartbeat_timeout "
                                  f"{self.config.service.heartbeat_timeout:g} s)")
        elif child.state is ProcessState.STOPPING and child.killed_for is None and now >= child.stop_deadline:
            self._kill(child, f"did not stop within {self._stop_timeout(child):.0f} s of SIGTERM")

    def _kill(self, child: Child, reason: str) -> None:
        logger.warning("%s (pid %d): %s; sending SIGKILL", child.label, child.pid, reason)
        child.killed_for = reason
        _signal_pid(child.pid, signal.SIGKILL)

    # -------------------------------------------------------------- children

    def _all_children(self) -> list[Child]:
        return [*self.workers.values(), self.writer]

    def _reject_connections(self, name: str) -> None:
        """Close connections to a FATAL worker's socket at once, so clients fail instead of waiting forever.

        The supervisor keeps the socket (a restart command brings the worker
        back on it), so without this, connections would queue unanswered.
        """
        listener = self.listeners.get(name)
        if listener is None or listener.fileno() in self.selector.get_map():
            return
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, lambda mask: self._reject_connection(name, listener))

    def _reject_connection(self, name: str, listener: socket.socket) -> None:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            logger.warning("Accepting on the socket of FATAL server %s failed: %s", name, error)
            return
        connection.close()
        logger.info("Closed a connection to %s: its worker is FATAL (run `watchgatectl restart %s`)", name, name)

    def _accept_again(self, name: str) -> None:
        """Hand a socket back to its worker: the supervisor stops refusing its connections."""
        listener = self.listeners.get(name)
        if listener is not None and listener.fileno() in self.selector.get_map():
            self.selector.unregister(listener)
            listener.setblocking(True)

    def _spawn(self, child: Child, reason: str) -> None:
        if child.role is Role.WORKER:
            self._accept_again(child.name)
        try:
            heartbeat_read, heartbeat_write = os.pipe()
            control_read, control_write = os.pipe()
        except OSError as error:
            self._spawn_failed(child, f"cannot create pipes: {error.strerror}")
            return
        _flush_logs()
        try:
            pid = os.fork()
        except OSError as error:
            for fd in (heartbeat_read, heartbeat_write, control_read, control_write):
                os.close(fd)
            self._spawn_failed(child, f"fork failed: {error.strerror}")
            return
        if pid == 0:
            self._run_child(child, heartbeat_write, control_read)
        os.close(heartbeat_write)
        os.close(control_read)
        os.set_blocking(heartbeat_read, False)
        os.set_blocking(control_write, False)
        child.spawned(pid, heartbeat_read, control_write, time.monotonic())
        self.selector.register(heartbeat_read, selectors.EVENT_READ, lambda mask: self._read_heartbeat(child))
        transition(child, ProcessState.STARTING, reason)
        if child.role is Role.WORKER and self.unwritable:
            self._send_control(child, channels.AUDIT_HEALTH, self.unwritable)

    def _spawn_failed(self, child: Child, reason: str) -> None:
        logger.error("Cannot start %s: %s", child.label, reason)
        child.last_exit = reason
        transition(child, ProcessState.EXITED, reason)
        self._schedule_restart(child, reason)

    def _run_child(self, child: Child, heartbeat_fd: int, control_fd: int) -> None:
        """Become the child process; never returns."""
        code = EXIT_CHILD_CRASHED
        try:
            self._release_in_child(child)
            os.set_blocking(control_fd, False)
            if child.role is Role.WORKER:
                fds = WorkerFds(self.listeners[child.name], self.audit_pipes[child.name][1], heartbeat_fd,
                                control_fd, self._lifeline_read, self.socket_group_id)
                code = run_worker(self.config, child.name, fds)
            else:
                pipes = {name: ends[0] for name, ends in self.audit_pipes.items()}
                code = run_writer(self.config, WriterFds(pipes, heartbeat_fd, self._lifeline_read,
                                                         dict(self.writer_seq)))
        except BaseException:
            logging.getLogger(f"watchgate.supervisor.{child.role.value}").exception(
                "%s (pid %d) failed", child.label, os.getpid())
        finally:
            _flush_logs()
            os._exit(code)

    def _release_in_child(self, child: Child) -> None:
        """Close in a fresh child every descriptor that belongs to the supervisor or to other children."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        self.selector.close()
        for sock in self.control.sockets():
            sock.close()
        for fd in (self._wakeup_read, self._wakeup_write, self._lifeline_write):
            os.close(fd)
        for other in self._all_children():
            for fd in (other.heartbeat_fd, other.control_fd):
                if fd is not None and other is not child:
                    os.close(fd)
        for name, listener in self.listeners.items():
            if child.role is not Role.WORKER or name != child.name:
                listener.close()
        for name, (read_fd, write_fd) in self.audit_pipes.items():
            if child.role is Role.WORKER:
                os.close(read_fd)
                if name != child.name:
                    os.close(write_fd)
            else:
                os.close(write_fd)

    def _read_heartbeat(self, child: Child) -> None:
        fd = child.heartbeat_fd
        try:
            data = os.read(fd, HEARTBEAT_READ_BYTES)
        except BlockingIOError:
            return
        if not data:
            self.selector.unregister(fd)
            return
        child.heartbeat_buffer += data
        reports = channels.split_heartbeats(child.heartbeat_buffer)
        if reports:
            self._on_reports(child, reports)

    def _on_reports(self, child: Child, reports: list[dict[str, Any]]) -> None:
        child.last_heartbeat = time.monotonic()
        child.report = reports[-1]
        if child.state is ProcessState.STARTING:
            child.policy.started()
            transition(child, ProcessState.RUNNING, "first heartbeat received")
        if child.role is Role.WRITER:
            self.writer_seq.update(child.report.get("seq", {}))
            self._update_audit_health()

    def _update_audit_health(self) -> None:
        """Tell the workers which audit files cannot be written, so critical entries reject requests."""
        sinks = self.writer.report.get("sinks", [])
        unwritable = frozenset(sink["path"] for sink in sinks if not sink.get("healthy", True))
        if self.writer.state is ProcessState.FATAL:
            unwritable = frozenset(_all_audit_paths(self.config))
        if unwritable == self.unwritable:
            return
        self.unwritable = unwritable
        logger.warning("Audit files that cannot be written: %s", ", ".join(sorted(unwritable)) or "none")
        for worker in self.workers.values():
            if worker.alive:
                self._send_control(worker, channels.AUDIT_HEALTH, unwritable)

    def _send_control(self, child: Child, kind: str, payload: Any) -> None:
        if child.control_fd is None:
            return
        child.control_outbox += channels.encode_control(kind, payload)
        self._flush_control(child)

    def _flush_control(self, child: Child) -> None:
        fd = child.control_fd
        try:
            written = os.write(fd, child.control_outbox) if child.control_outbox else 0
        except BlockingIOError:
            written = 0
        except BrokenPipeError:
            child.control_outbox.clear()
            written = 0
        del child.control_outbox[:written]
        registered = fd in self.selector.get_map()
        if child.control_outbox and not registered:
            self.selector.register(fd, selectors.EVENT_WRITE, lambda mask: self._flush_control(child))
        elif not child.control_outbox and registered:
            self.selector.unregister(fd)

    # --------------------------------------------------------------- exits

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = next((c for c in self._all_children() if c.pid == pid and c.alive), None)
            if child is not None:
                self._on_exit(child, status)

    def _on_exit(self, child: Child, status: int) -> None:
        self._close_child_pipes(child)
        reason = _describe_status(status)
        if child.killed_for:
            reason = f"{child.killed_for}; {reason}"
        child.last_exit = reason
        if child.role is Role.WORKER:
            self._collect_orphans(child)
            self._mark_audit_sequence(child)
        if child.stop_command is not None:
            transition(child, ProcessState.STOPPED, f"{child.stop_command}; {reason}")
            child.pid = None
            self._after_stop(child)
            return
        transition(child, ProcessState.EXITED, reason)
        child.pid = None
        if self.phase is not ShutdownPhase.NONE:
            transition(child, ProcessState.STOPPED, "service stopping")
            return
        self._schedule_restart(child, reason)

    def _schedule_restart(self, child: Child, reason: str) -> None:
        delay = child.policy.failed()
        if delay is None:
            limits = child.restart_config
            transition(child, ProcessState.FATAL, f"gave up after more than {limits.max_restarts} exits within "
                                                  f"{limits.restart_window:g} s: {reason}")
            if child.role is Role.WRITER:
                self._update_audit_health()
            else:
                self._reject_connections(child.name)
            return
        child.backoff_until = time.monotonic() + delay
        transition(child, ProcessState.BACKOFF, f"restarting in {delay:.1f} s")

    def _mark_audit_sequence(self, child: Child) -> None:
        """Tell the writer the last audit sequence number an exited worker reported.

        A worker killed with frames still in its own buffer never delivers them,
        and its successor numbers from 1 again. This mark lets the writer detect
        that gap (up to the last heartbeat's figure) and record it.
        """
        last_sent = child.report.get("audit_sent")
        pipe = self.audit_pipes.get(child.name)
        if not isinstance(last_sent, int) or last_sent <= 0 or pipe is None:
            return
        mark = AuditEvent(timestamp=utc_timestamp(), event_type=SEQUENCE_MARK, worker=child.name, seq=last_sent)
        write_end = pipe[1]
        os.set_blocking(write_end, False)
        try:
            os.write(write_end, encode_frame(mark))
        except BlockingIOError:
            logger.warning("Audit pipe of %s is full; audit events it lost at exit may go unreported", child.name)
        except OSError as error:
            logger.warning("Cannot write the sequence mark of %s to its audit pipe: %s", child.name, error)

    def _close_child_pipes(self, child: Child) -> None:
        if child.heartbeat_fd is not None:
            try:
                self._read_remaining_heartbeats(child)
            finally:
                if child.heartbeat_fd in self.selector.get_map():
                    self.selector.unregister(child.heartbeat_fd)
                os.close(child.heartbeat_fd)
                child.heartbeat_fd = None
        if child.control_fd is not None:
            if child.control_fd in self.selector.get_map():
                self.selector.unregister(child.control_fd)
            os.close(child.control_fd)
            child.control_fd = None
            child.control_outbox.clear()

    def _read_remaining_heartbeats(self, child: Child) -> None:
        """Read the reports a child wrote just before it exited (the writer's last sequence numbers)."""
        while True:
            try:
                data = os.read(child.heartbeat_fd, HEARTBEAT_READ_BYTES)
            except BlockingIOError:
                break
            if not data:
                break
            child.heartbeat_buffer += data
        reports = channels.split_heartbeats(child.heartbeat_buffer)
        if reports:
            child.report = reports[-1]
            if child.role is Role.WRITER:
                self.writer_seq.update(child.report.get("seq", {}))

    def _collect_orphans(self, worker: Child) -> None:
        """Stop the upstream process groups a dead worker left behind."""
        groups = set()
        upstream_pid = worker.report.get("upstream_pid")
        if isinstance(upstream_pid, int) and group_alive(upstream_pid):
            groups.add(upstream_pid)
        known = {child.pid for child in self._all_children() if child.pid is not None}
        try:
            strays = [process for process in psutil.Process().children() if process.pid not in known]
        except psutil.Error:
            strays = []
        for process in strays:
            try:
                groups.add(os.getpgid(process.pid))
            except ProcessLookupError:
                continue
        groups.discard(os.getpgid(0))
        for group in groups:
            logger.warning("Stopping process group %d left behind by worker %s", group, worker.name)
            signal_group(group, signal.SIGTERM)
            self.orphans[group] = time.monotonic() + ORPHAN_KILL_TIMEOUT

    def _kill_due_orphans(self, now: float) -> None:
        for group, deadline in list(self.orphans.items()):
            if not group_alive(group):
                del self.orphans[group]
            elif now >= deadline or self.phase is ShutdownPhase.DONE:
                logger.warning("Process group %d still running %.0f s after SIGTERM; sending SIGKILL", group,
                               ORPHAN_KILL_TIMEOUT)
                signal_group(group, signal.SIGKILL)
                del self.orphans[group]

    # ---------------------------------------------------------- commanded stops

    def _stop_child(self, child: Child, reason: str) -> None:
        """Stop a child on command; a commanded stop never counts as a crash."""
        child.stop_command = reason
        if child.alive:
            if child.state is ProcessState.STOPPING:
                return
            child.stop_deadline = time.monotonic() + self._stop_timeout(child)
            transition(child, ProcessState.STOPPING, reason)
            _signal_pid(child.pid, signal.SIGTERM)
            return
        if child.state is not ProcessState.STOPPED:
            transition(child, ProcessState.STOPPED, reason)
        self._after_stop(child)

    def _stop_timeout(self, child: Child) -> float:
        timeout = self.config.service.shutdown_timeout + STOP_MARGIN
        if child.role is Role.WORKER and child.name in self.workers:
            try:
                server = self.config.server(child.name)
            except KeyError:
                return timeout
            timeout += server.shutdown_grace + server.terminate_timeout
        return timeout

    def _after_stop(self, child: Child) -> None:
        if child.remove_after_stop:
            del self.workers[child.name]
            logger.info("Worker %s removed", child.name)
        elif child.start_after_stop and self.phase is ShutdownPhase.NONE:
            child.restarts += 1
            self._spawn(child, "restart requested")

    def restart(self, child: Child, reason: str) -> None:
        """Restart a child now, clearing FATAL and the failure count."""
        child.policy.reset()
        if child.alive:
            self._stop_child(child, reason)
            child.start_after_stop = True
            return
        child.restarts += 1
        self._spawn(child, reason)

    def stop(self, reason: str) -> None:
        """Stop the service gracefully; a second request forces it."""
        if self.phase is not ShutdownPhase.NONE:
            self._force_stop(reason)
            return
        logger.info("Stopping the service: %s", reason)
        sdnotify.notify("STOPPING=1")
        self.phase = ShutdownPhase.WORKERS
        for child in self.workers.values():
            child.start_after_stop = False
            self._stop_child(child, f"service stopping ({reason})")

    def _advance_shutdown(self) -> None:
        if self.phase is ShutdownPhase.WORKERS and not any(child.alive for child in self.workers.values()):
            self.phase = ShutdownPhase.WRITER
            self._stop_child(self.writer, "service stopping")
        if self.phase is ShutdownPhase.WRITER and not self.writer.alive:
            self.phase = ShutdownPhase.DONE

    def _force_stop(self, reason: str) -> None:
        logger.warning("Forcing the service to stop: %s", reason)
        self.forced = True
        for child in self._all_children():
            if child.alive:
                upstream_pid = child.report.get("upstream_pid")
                if isinstance(upstream_pid, int):
                    signal_group(upstream_pid, signal.SIGKILL)
                _signal_pid(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + FORCED_EXIT_TIMEOUT
        while any(child.alive for child in self._all_children()) and time.monotonic() < deadline:
            self._reap()
            time.sleep(TICK_INTERVAL / 10)
        for group in list(self.orphans):
            signal_group(group, signal.SIGKILL)
        self.phase = ShutdownPhase.DONE

    def _cleanup(self) -> None:
        for group in list(self.orphans):
            signal_group(group, signal.SIGKILL)
        for name in list(self.listeners):
            self._close_server_resources(name)
        if self.control is not None:
            self.control.close()
        runtime.remove_pid_file(self.runtime_dir)
        os.close(self._lifeline_write)

    # ---------------------------------------------------------------- reload

    def reload(self) -> protocol.Response:
        """Re-read the configuration and apply what changed; an invalid file leaves everything as it is."""
        sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            response = self._reload()
        finally:
            sdnotify.notify("READY=1")
        return response

    def _reload(self) -> protocol.Response:
        if self.phase is not ShutdownPhase.NONE:
            return protocol.error_response(protocol.FAILED, "the service is stopping")
        try:
            new = load_config(self.config.path)
        except ConfigError as error:
            self.config_error = str(error)
            logger.error("Reload rejected, keeping the running configuration: %s", error)
            return protocol.error_response(protocol.FAILED, f"invalid configuration: {error}")
        plan = plan_reload(self.config, new)

        for key in plan.ignored_service_keys:
            logger.warning("Reload: service.%s changed; it takes effect at the next service start", key)
        new = _keep_static_service_keys(new, self.config)
        self.config = new
        self.config_error = None

        for name in plan.removed:
            self._remove_worker(name)
        for name in plan.restarted:
            child = self.workers[name]
            child.set_restart_config(new.server(name).restart)
            self.restart(child, "command changed by reload")
        for name in plan.updated:
            child = self.workers[name]
            child.set_restart_config(new.server(name).restart)
            self._send_control(child, channels.CONFIG, new)
        for name in plan.added:
            self._add_worker(name)
        if plan.writer_restart:
            self.writer_restart_pending = True

        logger.info("Reloaded %s: added %s, removed %s, restarted %s, updated %s", new.path,
                    plan.added or "none", plan.removed or "none", plan.restarted or "none", plan.updated or "none")
        return protocol.ok_response(plan.as_result())

    def _add_worker(self, name: str) -> None:
        restart_config = self.config.server(name).restart
        stopping = self.workers.get(name)
        if stopping is not None:
            # Removed by an earlier reload and still stopping: keep its socket and pipe, start it again after.
            stopping.remove_after_stop = False
            stopping.set_restart_config(restart_config)
            stopping.start_after_stop = True
            return
        self._open_server_resources(name)
        self.workers[name] = Child(name, Role.WORKER, restart_config)
        self._spawn(self.workers[name], "added by reload")

    def _remove_worker(self, name: str) -> None:
        child = self.workers[name]
        child.remove_after_stop = True
        child.start_after_stop = False
        self._stop_child(child, "removed by reload")

    def _restart_writer_when_drained(self) -> None:
        """Restart the writer once removed workers are gone, so the old writer reads their last events."""
        if any(child.remove_after_stop for child in self.workers.values()):
            return
        if self.writer.alive:
            if self.writer.state is not ProcessState.STOPPING:
                self._stop_child(self.writer, "audit settings changed by reload")
            return
        for name in [name for name in self.audit_pipes if name not in self.workers]:
            self._close_server_resources(name)
        self.writer_restart_pending = False
        self.writer.policy.reset()
        self.writer.restarts += 1
        self._spawn(self.writer, "audit settings changed by reload")

    # -------------------------------------------------------------- control

    def handle_request(self, request: protocol.Request) -> protocol.Response:
        if request.command == protocol.STATUS:
            return protocol.ok_response(build_status(self, time.monotonic()))
        if request.command == protocol.RELOAD:
            logger.info("Reload requested over the control socket")
            return self.reload()
        if request.command == protocol.STOP:
            self.stop("stop requested over the control socket")
            return protocol.ok_response({"stopping": True})
        return self._handle_restart(request.args)

    def _handle_restart(self, args: dict[str, Any]) -> protocol.Response:
        if self.phase is not ShutdownPhase.NONE:
            return protocol.error_response(protocol.FAILED, "the service is stopping")
        if args.get("all"):
            names = sorted(self.workers)
            if self.writer.state is ProcessState.FATAL:
                self.restart(self.writer, "restart requested")
        else:
            name = args["name"]
            if name not in self.workers and name != WRITER_NAME:
                return protocol.error_response(protocol.NOT_FOUND, f"no server named {name!r}; configured servers: "
                                               f"{', '.join(sorted(self.workers))}")
            if name not in self.workers:
                self.restart(self.writer, "restart requested")
                return protocol.ok_response({"restarted": [WRITER_NAME]})
            names = [name]
        for name in names:
            self._restart_server(self.workers[name])
        return protocol.ok_response({"restarted": names})

    def _restart_server(self, child: Child) -> None:
        """Restart a server's upstream inside its running worker (sessions stay), else the worker itself."""
        if child.remove_after_stop:
            return
        if child.state is ProcessState.RUNNING:
            child.policy.reset()
            logger.info("Restarting the upstream of %s on request", child.name)
            self._send_control(child, channels.RESTART_UPSTREAM, "restart requested")
            return
        self.restart(child, "restart requested")

    # -------------------------------------------------------------- systemd

    def _notify_systemd(self, now: float) -> None:
        if not self.ready_sent and self.phase is ShutdownPhase.NONE and not any(
                child.state is ProcessState.STARTING for child in self._all_children()):
            self.ready_sent = True
            sdnotify.notify("READY=1")
            logger.info("Watchgate service ready: workers: %d, audit writer started", len(self.workers))
        line = status_line(self)
        if line != self.last_status_line:
            self.last_status_line = line
            sdnotify.notify(f"STATUS={line}")
        watchdog_usec = os.environ.get("WATCHDOG_USEC")
        if watchdog_usec and now >= self.next_watchdog and self.phase is ShutdownPhase.NONE:
            sdnotify.notify("WATCHDOG=1")
            # systemd advises pinging at half the watchdog interval.
            self.next_watchdog = now + int(watchdog_usec) / 2_000_000


def _keep_static_service_keys(new: Config, old: Config) -> Config:
    service = msgspec.structs.replace(new.service, runtime_dir=old.service.runtime_dir,
                                      socket_group=old.service.socket_group)
    return msgspec.structs.replace(new, service=service)


def _all_audit_paths(config: Config) -> list[str]:
    return [entry.output_file for server in config.servers for entry in audit_entries(config, server.name)]


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"killed by {name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _signal_pid(pid: int | None, signum: signal.Signals) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _become_subreaper() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        logger.warning("Cannot become a child subreaper: %s", os.strerror(ctypes.get_errno()))


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()

