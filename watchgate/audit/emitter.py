"""The audit writer thread: callers enqueue events, one thread renders and writes them.

`AuditChannel.submit()` only appends to a deque and, when the writer is idle,
wakes it, so the event loop never waits for a disk. The writer thread takes up
to `batch_size` events per channel at a time, renders them with the channel's
format and appends them, normally with a single write (see FileSink).

A failed write is never silent. The channel turns unhealthy, counts the lost
events and logs one ERROR line to the `watchgate.audit` logger. Repeats of the
same error are logged at most once per ERROR_LOG_INTERVAL. Every later batch
tries again, and while no events arrive the writer retries every
`retry_interval` seconds. The first write that succeeds logs the recovery and
puts an AUDIT_GAP record in front of the batch, stating how many events were
lost and why.
"""

from __future__ import annotations

import atexit
import collections
import errno
import logging
import os
import threading
import time
from typing import Any

from watchgate.audit.events import AuditEvent, EventType, utc_timestamp
from watchgate.audit.formats import make_formatter
from watchgate.audit.sink import AuditWriteError, FileSink
from watchgate.config.model import FileAuditingConfig

logger = logging.getLogger("watchgate.audit")

DEFAULT_BATCH_SIZE = 2048
# Events that may wait per audit file before new ones are dropped (and counted).
# 100k typical events without bodies took about 35 MB in a tracemalloc
# measurement with CPython 3.11, and bodies add to that.
DEFAULT_MAX_QUEUED = 100_000
# Seconds between attempts on a failing file while no new events arrive.
DEFAULT_RETRY_INTERVAL = 1.0
# Seconds the writer waits after its first wake-up for more events to arrive.
# Events reach the file at most this much later; the gain is far fewer thread switches.
BATCH_GATHER_SECONDS = 0.005
# Seconds between repeated ERROR lines for a file that keeps failing the same way.
ERROR_LOG_INTERVAL = 60.0
# Seconds that process exit waits for queued events to reach the files.
EXIT_FLUSH_TIMEOUT = 5.0

# Advice for the operator on common write failures, appended to the ERROR line.
_FIX_HINTS = {
    errno.ENOSPC: " Free space on the file system of the audit file.",
    errno.EDQUOT: " Free space or raise the disk quota of the user running Watchgate.",
    errno.EACCES: " Check the permissions of the audit file and its folder.",
    errno.EPERM: " Check the permissions of the audit file and its folder.",
    errno.EROFS: " The file system is read-only: choose another output_file or remount it read-write.",
}

# Settings that every file_auditing entry naming the same output_file must agree on.
_SHARED_SETTINGS = ("format", "csv_config", "max_file_size_mb", "backup_count", "fsync", "fsync_interval")


def make_sink(config: FileAuditingConfig) -> FileSink:
    """Build the FileSink that a file_auditing entry describes."""
    return FileSink(
        config.output_file,
        make_formatter(config.format, config.csv_config),
        max_bytes=max(1, int(config.max_file_size_mb * 1024 * 1024)),
        backup_count=config.backup_count,
        fsync=config.fsync,
        fsync_interval=config.fsync_interval,
    )


class AuditChannel:
    """The writer thread's state for one audit file: queue, health and loss counters.

    `lost_events` counts every event that never reached the file since the
    channel was created: events of failed writes and events dropped because the
    queue was full.
    """

    def __init__(self, emitter: AuditEmitter, key: str, config: FileAuditingConfig, sink: FileSink) -> None:
        self.key = key
        self.config = config
        self.sink = sink
        self.healthy = True
        self.lost_events = 0
        self.last_error: str | None = None
        self.critical = config.critical
        self._emitter = emitter
        self._queue: collections.deque[AuditEvent] = collections.deque()
        self._users = 1
        self._detached = False
        self._closed = threading.Event()
        self._opened = False
        # Loss not yet recorded by an AUDIT_GAP record, and when it started.
        self._unreported = 0
        self._failing_since: str | None = None
        self._write_failing = False
        self._next_retry = 0.0
        self._last_error_log = 0.0
        self._last_errno: int | None = None
        # A full queue: set by submit() on the first drop, cleared by the next gap record.
        self._overflowing = False
        self._overflow_noticed = False
        self._overflow_announced = False
        self._last_overflow_log: float | None = None

    @property
    def path(self) -> str:
        return self.sink.path

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, event: AuditEvent) -> None:
        """Queue an event for writing without waiting for the disk; a full queue drops and counts it."""
        emitter = self._emitter
        if len(self._queue) >= emitter.max_queued or emitter.closed:
            emitter._count_dropped(self)
            return
        self._queue.append(event)
        if emitter._idle or len(self._queue) == emitter.batch_size:
            emitter._wake()

    def status(self) -> dict[str, Any]:
        """Return health and counters for status displays."""
        return {
            "path": self.path,
            "healthy": self.healthy,
            "critical": self.critical,
            "lost_events": self.lost_events,
            "queued": len(self._queue),
            "last_error": self.last_error,
        }

    def _take(self, count: int) -> list[AuditEvent]:
        pop = self._queue.popleft
        return [pop() for _ in range(min(count, len(self._queue)))]

    def _needs_gap_record(self) -> bool:
        return not self.healthy or self._unreported > 0


class AuditEmitter:
    """A writer thread and the channels (one per audit file) that it serves.

    Entries that name the same output file share one channel and one FileSink.
    The thread starts with the first attach(). Use get_emitter() for the
    process-wide instance.
    """

    def __init__(
        self,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_queued: int = DEFAULT_MAX_QUEUED,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
    ) -> None:
        self.batch_size = batch_size
        self.max_queued = max_queued
        self.retry_interval = retry_interval
        self.closed = False
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._drained = threading.Condition(self._lock)
        self._channels: dict[str, AuditChannel] = {}
        self._thread: threading.Thread | None = None
        self._idle = False
        self._stopping = False
        self._drain_count = 0

    def attach(self, config: FileAuditingConfig) -> AuditChannel:
        """Return the channel for the entry's output file, creating it on first use.

        Raises ValueError when another entry already uses the same file with a
        different format, rotation or fsync setting.
        """
        key = os.path.realpath(config.output_file)
        with self._lock:
            if self.closed:
                raise RuntimeError("audit emitter is closed")
            channel = self._channels.get(key)
            if channel is not None:
                _check_shared_settings(channel.config, config)
                channel._users += 1
                channel.critical = channel.critical or config.critical
                return channel
            channel = AuditChannel(self, key, config, make_sink(config))
            self._channels[key] = channel
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watchgate-audit", daemon=True)
                self._thread.start()
            self._wakeup.notify()
            return channel

    def detach(self, channel: AuditChannel, timeout: float | None = None) -> bool:
        """Release a channel and write what is queued; the last user's detach also closes the file.

        Returns False if the writer did not finish within `timeout` seconds.
        """
        with self._lock:
            channel._users -= 1
            last_user = channel._users == 0
            if last_user:
                channel._detached = True
                self._wakeup.notify()
        if not last_user:
            return self.flush(timeout)
        if self._thread is None or not self._thread.is_alive():
            return channel._closed.is_set()
        return channel._closed.wait(timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before the call is written or counted lost; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                return all(not channel._queue for channel in self._channels.values())
            target = self._drain_count + 1
            self._wakeup.notify()
            while self._drain_count < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._drained.wait(remaining)
            return True

    def close(self, timeout: float | None = None) -> bool:
        """Write what is queued, stop the thread and close every file.

        Returns False if the thread did not stop within `timeout` seconds; the
        files stay open then, because the thread may still be writing to them.
        """
        with self._lock:
            self.closed = True
            self._stopping = True
            self._wakeup.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                queued = sum(len(channel._queue) for channel in self._channels.values())
                logger.error("audit writer did not stop within %.1f s; %d events still queued", timeout or 0.0, queued)
                return False
        for channel in list(self._channels.values()):
            self._close_channel(channel)
        return True

    def reopen(self) -> None:
        """Reopen every audit file by path, e.g. after an external logrotate."""
        for channel in list(self._channels.values()):
            channel.sink.reopen()

    def status(self) -> list[dict[str, Any]]:
        """Return the status of every channel."""
        return [channel.status() for channel in list(self._channels.values())]

    def _wake(self) -> None:
        with self._lock:
            self._wakeup.notify()

    def _count_dropped(self, channel: AuditChannel) -> None:
        with self._lock:
            channel.lost_events += 1
            channel._unreported += 1
            if not channel._overflowing:
                channel._overflowing = True
                channel._failing_since = channel._failing_since or utc_timestamp()
                channel.healthy = False
                if channel.last_error is None:
                    channel.last_error = f"audit queue full ({self.max_queued} events)"

    def _run(self) -> None:
        while True:
            failed = False
            try:
                self._write_pending()
                self._run_periodic_tasks()
            except Exception:
                # A bug here must not end the thread, or every later event would be lost.
                logger.exception("audit writer failed; retrying in %.1f s", self.retry_interval)
                failed = True
            with self._lock:
                if failed:
                    self._wakeup.wait(self.retry_interval)
                    continue
                if any(channel._queue for channel in self._channels.values()):
                    continue
                if self._stopping:
                    break
                self._drain_count += 1
                self._drained.notify_all()
                self._idle = True
                self._wakeup.wait(self._wait_timeout())
                self._idle = False
                if not self._stopping:
                    # Let a burst gather, so a busy gateway pays one wake-up and one
                    # write per batch rather than per event; flush() cuts this short.
                    self._wakeup.wait(BATCH_GATHER_SECONDS)

        self._write_final_gap_records()
        with self._lock:
            self._drain_count += 1
            self._drained.notify_all()

    def _write_final_gap_records(self) -> None:
        """Try once more to record losses in the files before the thread ends."""
        for channel in list(self._channels.values()):
            if channel._needs_gap_record():
                try:
                    self._write_batch(channel, [])
                except Exception:
                    logger.exception("audit gap record for %s could not be written", channel.path)

    def _write_pending(self) -> None:
        """Write batches round-robin over the channels until every queue is empty."""
        while True:
            wrote = False
            for channel in list(self._channels.values()):
                if not channel._opened:
                    self._open_channel(channel)
                if channel._overflowing and not channel._overflow_noticed:
                    self._announce_overflow(channel)
                events = channel._take(self.batch_size)
                if events:
                    wrote = True
                    self._write_batch(channel, events)
                elif channel._detached:
                    self._close_channel(channel)
            if not wrote:
                return

    def _announce_overflow(self, channel: AuditChannel) -> None:
        """Log a full queue, at most once per ERROR_LOG_INTERVAL for each file."""
        channel._overflow_noticed = True
        now = time.monotonic()
        if channel._last_overflow_log is not None and now - channel._last_overflow_log < ERROR_LOG_INTERVAL:
            return
        channel._last_overflow_log = now
        channel._overflow_announced = True
        logger.error(
            "audit queue for %s is full (%d events): dropping events until the writer catches up",
            channel.path,
            self.max_queued,
        )

    def _run_periodic_tasks(self) -> None:
        now = time.monotonic()
        for channel in list(self._channels.values()):
            if channel._needs_gap_record() and now >= channel._next_retry and not channel._queue:
                self._write_batch(channel, [])
            if channel.sink.sync_due_in() is not None:
                try:
                    channel.sink.sync_if_due()
                except AuditWriteError as error:
                    self._record_failure(channel, error, lost=0)

    def _wait_timeout(self) -> float | None:
        now = time.monotonic()
        timeouts = []
        for channel in self._channels.values():
            if channel._needs_gap_record():
                timeouts.append(max(0.0, channel._next_retry - now))
            sync_due_in = channel.sink.sync_due_in()
            if sync_due_in is not None:
                timeouts.append(sync_due_in)
        return min(timeouts) if timeouts else None

    def _open_channel(self, channel: AuditChannel) -> None:
        channel._opened = True
        try:
            channel.sink.open()
        except AuditWriteError as error:
            self._record_failure(channel, error, lost=0)

    def _write_batch(self, channel: AuditChannel, events: list[AuditEvent]) -> None:
        gap = self._gap_event(channel) if channel._needs_gap_record() else None
        batch = [gap, *events] if gap is not None else events
        data, unrendered = self._render(channel, batch)
        try:
            channel.sink.append(data)
        except AuditWriteError as error:
            written = error.records_written
            if gap is not None and written > 0:
                self._mark_gap_written(channel, gap)
                written -= 1
            self._record_failure(channel, error, lost=len(events) - written)
            return

        if gap is not None:
            self._mark_gap_written(channel, gap)
        if unrendered:
            self._count_lost(channel, unrendered)
        self._record_success(channel)

    def _render(self, channel: AuditChannel, batch: list[AuditEvent]) -> tuple[bytes, int]:
        """Render a batch; if that fails, render event by event and return the failure count too."""
        formatter = channel.sink.formatter
        try:
            return formatter.render(batch), 0
        except Exception:
            # A bug or an event with a wrongly typed field. Only the failing events are lost.
            logger.exception("audit events for %s could not be rendered; retrying one by one", channel.path)
        parts = []
        unrendered = 0
        for event in batch:
            try:
                parts.append(formatter.render([event]))
            except Exception:
                unrendered += 1
        return b"".join(parts), unrendered

    def _count_lost(self, channel: AuditChannel, lost: int) -> None:
        with self._lock:
            channel.lost_events += lost
            channel._unreported += lost
            channel._failing_since = channel._failing_since or utc_timestamp()

    def _gap_event(self, channel: AuditChannel) -> AuditEvent:
        with self._lock:
            lost = channel._unreported
            since = channel._failing_since
        metadata: dict[str, Any] = {"lost_events": lost}
        if since is not None:
            metadata["since"] = since
        if channel.last_error is not None:
            metadata["error"] = channel.last_error
        return AuditEvent(
            timestamp=utc_timestamp(),
            event_type=EventType.AUDIT_GAP.value,
            reason=f"{lost} audit events lost: {channel.last_error or 'unknown error'}",
            plugin_metadata=metadata,
            pid=os.getpid(),
        )

    def _mark_gap_written(self, channel: AuditChannel, gap: AuditEvent) -> None:
        assert gap.plugin_metadata is not None
        with self._lock:
            channel._unreported -= gap.plugin_metadata["lost_events"]
            channel._failing_since = None
            channel._overflowing = False
            channel._overflow_noticed = False

    def _record_failure(self, channel: AuditChannel, error: OSError, lost: int) -> None:
        now = time.monotonic()
        self._count_lost(channel, lost)
        was_healthy = channel.healthy
        channel.healthy = False
        channel._write_failing = True
        channel.last_error = str(error)
        channel._next_retry = now + self.retry_interval
        if was_healthy or error.errno != channel._last_errno or now - channel._last_error_log >= ERROR_LOG_INTERVAL:
            channel._last_error_log = now
            channel._last_errno = error.errno
            consequence = (
                "requests are rejected until it recovers"
                if channel.critical
                else "requests continue without audit records"
            )
            logger.error(
                "audit file %s cannot be written: %s; %d events lost so far, %s.%s",
                channel.path,
                error,
                channel.lost_events,
                consequence,
                _FIX_HINTS.get(error.errno, ""),
            )

    def _record_success(self, channel: AuditChannel) -> None:
        if channel.healthy:
            return
        with self._lock:
            # Dropping continues while the queue is full; the next gap record covers it.
            if channel._overflowing:
                return
            channel.healthy = True
        if channel._write_failing:
            logger.warning(
                "audit file %s is writable again; %d events lost in total, recorded as AUDIT_GAP",
                channel.path,
                channel.lost_events,
            )
        elif channel._overflow_announced:
            logger.warning(
                "audit queue for %s has room again; %d events lost in total, recorded as AUDIT_GAP",
                channel.path,
                channel.lost_events,
            )
        channel._write_failing = False
        channel._overflow_announced = False
        channel._last_errno = None
        channel.last_error = None

    def _close_channel(self, channel: AuditChannel) -> None:
        with self._lock:
            if self._channels.get(channel.key) is channel:
                del self._channels[channel.key]
        try:
            channel.sink.close()
        except OSError as error:
            logger.error("closing audit file %s failed: %s", channel.path, error)
        channel._closed.set()


def _check_shared_settings(existing: FileAuditingConfig, new: FileAuditingConfig) -> None:
    differing = [name for name in _SHARED_SETTINGS if getattr(existing, name) != getattr(new, name)]
    if differing:
        raise ValueError(
            f"output_file {new.output_file} is used by two file_auditing entries with different "
            f"{', '.join(differing)}: give each entry its own output_file or make these settings equal"
        )


_process_emitter: AuditEmitter | None = None
_process_emitter_lock = threading.Lock()


def get_emitter() -> AuditEmitter:
    """Return this process's shared emitter, creating it on first use and after close()."""
    global _process_emitter
    with _process_emitter_lock:
        if _process_emitter is None or _process_emitter.closed:
            _process_emitter = AuditEmitter()
        return _process_emitter


def _forget_parent_emitter() -> None:
    # A forked child has no writer thread, and another thread of the parent may
    # have held the lock at the fork, so the child starts from scratch.
    global _process_emitter, _process_emitter_lock
    _process_emitter = None
    _process_emitter_lock = threading.Lock()


@atexit.register
def _close_process_emitter() -> None:
    with _process_emitter_lock:
        emitter = _process_emitter
    if emitter is not None and not emitter.closed:
        emitter.close(EXIT_FLUSH_TIMEOUT)


os.register_at_fork(after_in_child=_forget_parent_emitter)
