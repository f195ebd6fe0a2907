"""The supervisor's process table: one entry per worker and one for the audit writer."""

from __future__ import annotations

import enum
import logging
import time
from typing import Any

from watchgate.config.model import RestartPolicyConfig
from watchgate.restart import RestartPolicy

logger = logging.getLogger("watchgate.supervisor")


class ProcessState(enum.Enum):
    STARTING = "STARTING"  # forked, no heartbeat yet
    RUNNING = "RUNNING"  # heartbeats arrive
    BACKOFF = "BACKOFF"  # exited unexpectedly, waiting for the next start
    STOPPING = "STOPPING"  # SIGTERM sent on command, waiting for the exit
    STOPPED = "STOPPED"  # exited after a commanded stop
    EXITED = "EXITED"  # exited without a commanded stop
    FATAL = "FATAL"  # too many restarts in the window; waits for `restart NAME`


ALIVE_STATES = frozenset({ProcessState.STARTING, ProcessState.RUNNING, ProcessState.STOPPING})


class Role(enum.Enum):
    WORKER = "worker"
    WRITER = "writer"


class Child:
    """One supervised process and the supervisor's record of it."""

    def __init__(self, name: str, role: Role, restart_config: RestartPolicyConfig):
        self.name = name
        self.role = role
        self.restart_config = restart_config
        self.policy = RestartPolicy(restart_config)
        self.state = ProcessState.STOPPED
        self.state_reason = "not started"
        self.pid: int | None = None
        self.spawned_at: float | None = None
        self.running_since: float | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self.last_heartbeat = 0.0
        # The latest figures the process sent with its heartbeat.
        self.report: dict[str, Any] = {}
        # Supervisor ends of the per-process pipes, open while the process lives.
        self.heartbeat_fd: int | None = None
        self.control_fd: int | None = None
        self.heartbeat_buffer = bytearray()
        self.control_outbox = bytearray()
        # Why the pending stop was requested; None while no stop was commanded.
        self.stop_command: str | None = None
        self.stop_deadline: float | None = None
        self.killed_for: str | None = None
        self.backoff_until: float | None = None
        # After the commanded stop: start again (restart) or leave the table (removed server).
        self.start_after_stop = False
        self.remove_after_stop = False

    def set_restart_config(self, restart_config: RestartPolicyConfig) -> None:
        if restart_config != self.restart_config:
            self.restart_config = restart_config
            self.policy = RestartPolicy(restart_config)

    def spawned(self, pid: int, heartbeat_fd: int, control_fd: int, now: float) -> None:
        """Reset the per-process fields for a freshly forked process."""
        self.pid = pid
        self.heartbeat_fd = heartbeat_fd
        self.control_fd = control_fd
        self.heartbeat_buffer.clear()
        self.control_outbox.clear()
        self.report = {}
        self.spawned_at = now
        self.last_heartbeat = now
        self.stop_command = None
        self.stop_deadline = None
        self.killed_for = None
        self.backoff_until = None
        self.start_after_stop = False

    @property
    def label(self) -> str:
        return "audit writer" if self.role is Role.WRITER else f"worker {self.name}"

    @property
    def alive(self) -> bool:
        return self.state in ALIVE_STATES

    def uptime(self, now: float) -> float | None:
        if self.state is not ProcessState.RUNNING or self.running_since is None:
            return None
        return round(now - self.running_since, 3)


def transition(child: Child, state: ProcessState, reason: str) -> None:
    """Move a child to a new state and log the change once (FATAL at ERROR)."""
    previous = child.state
    child.state = state
    child.state_reason = reason
    now = time.monotonic()
    if state is ProcessState.RUNNING:
        child.running_since = now
    elif previous is ProcessState.RUNNING:
        child.running_since = None
    level = logging.ERROR if state is ProcessState.FATAL else logging.INFO
    logger.log(level, "%s: %s -> %s (pid %s): %s", child.label, previous.value, state.value,
               child.pid if child.pid is not None else "-", reason)
