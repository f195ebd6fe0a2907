"""The audit writer: the only process of the service that opens audit files.

It reads length-prefixed frames from one pipe per worker, checks each
worker's sequence numbers, and hands every event to the same
FileAuditingPlugin and AuditEmitter that standalone mode uses, so formats,
modes, body caps, rotation, fsync and failure handling are identical. After
each batch it waits for the emitter to write the batch (flush per batch) and
reports the last sequence number written per worker to the supervisor, which
gives that map to the next writer after a restart.

What stays in a pipe survives any writer restart, because the supervisor
keeps every read end open. A writer killed with SIGKILL loses the batch it had
read but not yet written; the next writer records that range as AUDIT_GAP.
A kill between writing a batch and reporting it makes the next writer report
a gap for events that did reach the file, so a gap range may overlap records.
"""

from __future__ import annotations

import logging
import os
import select
import selectors
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from watchgate.audit.emitter import AuditChannel, AuditEmitter
from watchgate.audit.events import AuditEvent, EventType, utc_timestamp
from watchgate.audit.pipe import SEQUENCE_MARK, FrameDecoder
from watchgate.config.model import Config
from watchgate.plugins.file_auditing import FileAuditingPlugin
from watchgate.supervisor import channels
from watchgate.supervisor.worker import audit_entries

logger = logging.getLogger("watchgate.supervisor.writer")

EXIT_OK = 0
READ_BYTES = 256 * 1024
# Stop reading pipes while this many events wait for a slow file; workers then
# wait for pipe capacity instead of anything being dropped.
QUEUE_HIGH_WATER = 20_000
BATCH_FLUSH_TIMEOUT = 2.0  # seconds one batch may take to reach the files before the loop moves on
CLOSE_TIMEOUT = 5.0  # seconds to write what is queued at exit
# After a stop request, seconds to wait for the rest of a frame that is half read.
PARTIAL_FRAME_TIMEOUT = 1.0


@dataclass
class WriterFds:
    pipes: dict[str, int]  # worker name -> read end of its audit pipe
    heartbeat_fd: int
    lifeline_fd: int
    last_seq: dict[str, int] = field(default_factory=dict)


def run_writer(config: Config, fds: WriterFds) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return AuditWriter(config, fds).run()


class AuditWriter:
    def __init__(self, config: Config, fds: WriterFds):
        self.config = config
        self.fds = fds
        self.emitter = AuditEmitter()
        self.routes: dict[str, list[FileAuditingPlugin]] = {}
        self.gap_channels: dict[str, list[AuditChannel]] = {}
        for server in config.servers:
            entries = audit_entries(config, server.name)
            self.routes[server.name] = [FileAuditingPlugin(entry, server.name, emitter=self.emitter)
                                        for entry in entries]
            self.gap_channels[server.name] = [self.emitter.attach(entry) for entry in entries]
        self.decoders = {name: FrameDecoder() for name in fds.pipes}
        # Highest sequence number seen per worker, and the highest known to be in the files.
        self.last_seq = dict(fds.last_seq)
        self.written_seq = dict(fds.last_seq)
        self.events_written = 0
        self.submitted = 0
        self.unrouted = 0
        self.gaps = 0
        self._stop_reason: str | None = None
        self._selector = selectors.DefaultSelector()
        self._reading = False
        self._wakeup_read, self._wakeup_write = os.pipe()
        self._reported_health: tuple[bool, ...] = ()

    # -------------------------------------------------------------- main loop

    def run(self) -> int:
        self._install_signals()
        for fd in self.fds.pipes.values():
            os.set_blocking(fd, False)
        self._selector.register(self.fds.lifeline_fd, selectors.EVENT_READ, "lifeline")
        self._selector.register(self._wakeup_read, selectors.EVENT_READ, "wakeup")
        for name, fd in self.fds.pipes.items():
            self._selector.register(fd, selectors.EVENT_READ, name)
        self._reading = True
        logger.info("Audit writer (pid %d) reading audit pipes: %d", os.getpid(), len(self.fds.pipes))
        interval = self.config.service.heartbeat_interval
        next_report = 0.0
        while self._stop_reason is None:
            now = time.monotonic()
            if now >= next_report:
                self._report()
                next_report = now + interval
            self._set_reading(self._queued() < QUEUE_HIGH_WATER)
            batch = self._poll(max(0.0, next_report - time.monotonic()))
            if batch:
                self._write_batch(batch)
                # Figures go out once per interval. A change in sink health goes out at once,
                # because workers must start or stop rejecting requests for critical files.
                if self._sink_health() != self._reported_health:
                    self._report()
        logger.info("Audit writer stopping: %s", self._stop_reason)
        self._drain()
        if self.emitter.close(CLOSE_TIMEOUT):
            self.written_seq = dict(self.last_seq)
            self.events_written = self.submitted
        self._report()
        logger.info("Audit writer stopped after %d events", self.events_written)
        return EXIT_OK

    def _install_signals(self) -> None:
        os.set_blocking(self._wakeup_write, False)
        signal.set_wakeup_fd(self._wakeup_write)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._stop_reason = self._stop_reason or "received SIGTERM"

    def _set_reading(self, reading: bool) -> None:
        if reading == self._reading:
            return
        self._reading = reading
        for name, fd in self.fds.pipes.items():
            if reading:
                self._selector.register(fd, selectors.EVENT_READ, name)
            else:
                self._selector.unregister(fd)
        if reading:
            logger.info("Audit writer resumed reading the audit pipes")
        else:
            logger.warning("Audit writer paused reading: %d events wait for the audit files", self._queued())

    def _poll(self, timeout: float) -> list[tuple[str, AuditEvent]]:
        batch: list[tuple[str, AuditEvent]] = []
        for key, _ in self._selector.select(timeout):
            if key.data == "lifeline":
                if not _read_or_eof(key.fd):
                    self._stop_reason = "the supervisor exited"
            elif key.data == "wakeup":
                _read_or_eof(key.fd)
            else:
                batch.extend(self._read_pipe(key.data, key.fd))
        return batch

    def _read_pipe(self, name: str, fd: int) -> list[tuple[str, AuditEvent]]:
        try:
            data = os.read(fd, READ_BYTES)
        except BlockingIOError:
            return []
        if not data:
            # Every write end is closed, so the worker was removed and the supervisor closed its copy.
            self._selector.unregister(fd)
            del self.fds.pipes[name]
            return []
        return [(name, event) for event in self.decoders[name].feed(data)]

    def _drain(self) -> None:
        """Read what the pipes contain, finishing any half-read frame, and write it."""
        batch: list[tuple[str, AuditEvent]] = []
        for name, fd in list(self.fds.pipes.items()):
            deadline = time.monotonic() + PARTIAL_FRAME_TIMEOUT
            while True:
                try:
                    data = os.read(fd, READ_BYTES)
                except BlockingIOError:
                    if not self.decoders[name].pending_bytes or time.monotonic() >= deadline:
                        break
                    select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                    continue
                if not data:
                    break
                batch.extend((name, event) for event in self.decoders[name].feed(data))
        if batch:
            self._write_batch(batch)

    # ---------------------------------------------------------------- events

    def _write_batch(self, batch: list[tuple[str, AuditEvent]]) -> None:
        routed = 0
        for name, event in batch:
            if event.event_type == SEQUENCE_MARK:
                self._check_mark(name, event)
                continue
            self._check_sequence(name, event)
            self._route(name, event)
            routed += 1
        self.submitted += routed
        if not self.emitter.flush(BATCH_FLUSH_TIMEOUT):
            logger.warning("Audit writer: a batch of %d events took more than %.1f s to write", len(batch),
                           BATCH_FLUSH_TIMEOUT)
            return
        # The flush covers every event submitted so far, earlier slow batches included.
        self.written_seq = dict(self.last_seq)
        self.events_written = self.submitted

    def _route(self, name: str, event: AuditEvent) -> None:
        plugins = self.routes.get(name)
        if plugins is None:
            self.unrouted += 1
            if self.unrouted == 1:
                logger.warning("Audit writer got events from %s, which has no audit entries in this configuration",
                               name)
            return
        for plugin in plugins:
            plugin.record(event)

    def _check_sequence(self, name: str, event: AuditEvent) -> None:
        seq = event.seq
        if seq is None:
            return
        expected = self.last_seq.get(name, 0) + 1
        if seq > expected and seq != 1:
            self._record_gap(name, expected, seq - 1)
        elif seq < expected and seq != 1:
            logger.warning("Audit writer: worker %s sent sequence %d after %d", name, seq, expected - 1)
        self.last_seq[name] = seq

    def _check_mark(self, name: str, mark: AuditEvent) -> None:
        """Record the events an exited worker numbered but never delivered, as far as its mark shows."""
        expected = self.last_seq.get(name, 0) + 1
        if mark.seq is not None and mark.seq >= expected:
            self._record_gap(name, expected, mark.seq)
            self.last_seq[name] = mark.seq

    def _record_gap(self, name: str, first: int, last: int) -> None:
        self.gaps += 1
        count = last - first + 1
        reason = f"audit events {first}..{last} of worker {name} are missing ({count} events)"
        logger.error("Audit writer: %s", reason)
        gap = AuditEvent(timestamp=utc_timestamp(), event_type=EventType.AUDIT_GAP.value, status="error",
                         reason=reason, server_name=name, worker=name,
                         plugin_metadata={"first_missing": first, "last_missing": last, "lost_events": count})
        for channel in self.gap_channels.get(name, ()):
            channel.submit(gap)

    # ---------------------------------------------------------------- status

    def _queued(self) -> int:
        return sum(channel["queued"] for channel in self.emitter.status())

    def _sink_health(self) -> tuple[bool, ...]:
        return tuple(channel["healthy"] for channel in self.emitter.status())

    def _report(self) -> None:
        self._reported_health = self._sink_health()
        sinks = [{"path": channel["path"], "healthy": channel["healthy"], "critical": channel["critical"],
                  "lost": channel["lost_events"]} for channel in self.emitter.status()]
        report = {
            "events_written": self.events_written,
            "seq": self.written_seq,
            "sinks": sinks,
            "gaps": self.gaps,
            "unrouted": self.unrouted,
            "skipped_bytes": sum(decoder.skipped_bytes for decoder in self.decoders.values()),
        }
        data = channels.encode_heartbeat(report)
        try:
            _write_all(self.fds.heartbeat_fd, data)
        except BrokenPipeError:
            self._stop_reason = self._stop_reason or "the supervisor exited"


def _read_or_eof(fd: int) -> bool:
    """Read and discard what is available; return False at end of file."""
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
