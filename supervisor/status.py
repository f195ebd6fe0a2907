"""The `status` result and the one-line systemd STATUS, built from the process table only.

Nothing here sends a request to a worker. The figures are the ones each
worker sent with its latest heartbeat, so `status` returns at once even
while workers are busy.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from watchgate.ctl import protocol
from watchgate.supervisor.process import Child, ProcessState

if TYPE_CHECKING:
    from watchgate.supervisor.daemon import Supervisor

# Upstream states (from the worker's heartbeat) that the server row shows instead of RUNNING.
UPSTREAM_STATES = frozenset({"STARTING", "BACKOFF", "FATAL", "STOPPED"})
# Upstream states whose reason explains a failure and so replaces the worker's last exit in status.
UPSTREAM_FAILURE_STATES = frozenset({"BACKOFF", "FATAL"})


def server_state(child: Child) -> str:
    """Return the worker's state, or the upstream's while the worker itself runs."""
    if child.state is not ProcessState.RUNNING:
        return child.state.value
    upstream_state = child.report.get("upstream_state")
    return upstream_state if upstream_state in UPSTREAM_STATES else ProcessState.RUNNING.value


def server_status(child: Child, now: float) -> protocol.ServerStatus:
    report = child.report if child.alive else {}
    upstream_state = report.get("upstream_state")
    last_exit = child.last_exit
    if upstream_state in UPSTREAM_FAILURE_STATES and report.get("upstream_reason"):
        last_exit = report["upstream_reason"]
    return protocol.ServerStatus(
        name=child.name,
        state=server_state(child),
        worker_pid=child.pid if child.alive else None,
        upstream_pid=report.get("upstream_pid"),
        uptime=child.uptime(now),
        restarts=child.restarts + report.get("upstream_restarts", 0),
        sessions=report.get("sessions", 0),
        requests=report.get("requests", 0),
        blocked=report.get("blocked", 0),
        last_exit=last_exit,
        last_stderr=child.report.get("last_stderr") or None,
    )


def writer_status(supervisor: Supervisor, now: float) -> protocol.WriterStatus:
    writer = supervisor.writer
    sinks = [protocol.SinkStatus(path=sink["path"], healthy=sink["healthy"], lost=sink["lost"])
             for sink in writer.report.get("sinks", [])]
    return protocol.WriterStatus(
        state=writer.state.value,
        pid=writer.pid if writer.alive else None,
        uptime=writer.uptime(now),
        restarts=writer.restarts,
        events_written=writer.report.get("events_written", 0),
        lag=audit_lag(supervisor),
        lost=sum(sink.lost for sink in sinks) + sum(worker.report.get("audit_dropped", 0)
                                                    for worker in supervisor.workers.values()),
        sinks=sinks,
    )


def audit_lag(supervisor: Supervisor) -> int:
    """Estimate the events that workers sent and the writer has not yet written."""
    lag = 0
    for name, worker in supervisor.workers.items():
        sent = worker.report.get("audit_sent", 0)
        lag += max(0, sent - supervisor.writer_seq.get(name, 0))
    return lag


def build_status(supervisor: Supervisor, now: float) -> protocol.StatusResult:
    service = protocol.ServiceStatus(
        pid=os.getpid(),
        state=supervisor.phase.value,
        uptime=round(now - supervisor.started, 3),
        config=supervisor.config.path,
        config_error=supervisor.config_error,
    )
    servers = [server_status(child, now) for _, child in sorted(supervisor.workers.items())]
    return protocol.StatusResult(service=service, servers=servers, writer=writer_status(supervisor, now))


def status_line(supervisor: Supervisor) -> str:
    states = [server_state(child) for child in supervisor.workers.values()]
    running = states.count(ProcessState.RUNNING.value)
    line = f"{running}/{len(states)} servers running; audit writer {supervisor.writer.state.value}"
    if supervisor.config_error:
        line += "; last reload rejected (invalid configuration)"
    return line
