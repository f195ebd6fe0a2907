"""An audit file that several processes can append to and rotate safely.

Every append runs under an exclusive flock(2) on the sidecar file `<path>.lock`:
check the file, rotate it if the batch does not fit, then append. Processes that
share the file therefore never interleave half records, and exactly one of them
rotates. The file is opened with O_APPEND and a batch normally goes out in one
os.write. After taking the lock, the sink compares the inode of `path` with that
of its open descriptor and reopens `path` when they differ. They differ after
another process or an external logrotate renamed the file.

The lock is advisory: a program that appends to the file without taking it can
still interleave with Watchgate.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Sequence

from watchgate.audit.events import AuditEvent
from watchgate.audit.formats import AuditFormatter
from watchgate.config.model import FsyncPolicy

logger = logging.getLogger("watchgate.audit")

FILE_MODE = 0o600
FOLDER_MODE = 0o700


class AuditWriteError(OSError):
    """Failure to append or flush an audit batch, with the errno of the cause.

    `records_written` is the number of lines of the batch that reached the file.
    After an fsync failure they are in the file but may not be on disk.
    """

    def __init__(self, error: OSError, operation: str, path: str, records_written: int = 0) -> None:
        super().__init__(error.errno, f"{operation} failed: {error.strerror or error}", path)
        self.operation = operation
        self.records_written = records_written


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)


def _sync(fd: int) -> None:
    # fdatasync skips the metadata that does not matter for reading the data back.
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:
        os.fsync(fd)


class FileSink:
    """An append-only audit file with size rotation to `path.1` ... `path.N`.

    Rotation starts a new file when the next records would push the current one
    past `max_bytes`. A batch is split between files only at line boundaries,
    and a single record larger than `max_bytes` is written alone into a fresh
    file. The formatter's header (the CSV column row) starts every new file,
    including one emptied or replaced by an external tool.

    `backup_count` 0 keeps no backups: a full file is truncated in place and
    starts over, so the log never exceeds `max_bytes` but keeps only the records
    written since the last truncation. The inode stays the same, so other
    processes and `tail -F` keep following it.

    The folder is created (mode 0700) if missing, and new audit files get mode
    0600 because they can contain request details. Methods are thread-safe.
    Failures raise AuditWriteError, an OSError with the errno of the cause.
    """

    def __init__(
        self,
        path: str,
        formatter: AuditFormatter,
        *,
        max_bytes: int,
        backup_count: int,
        fsync: FsyncPolicy = FsyncPolicy.NONE,
        fsync_interval: float = 1.0,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"invalid max_bytes {max_bytes}: expected a positive number of bytes")
        if backup_count < 0:
            raise ValueError(f"invalid backup_count {backup_count}: expected 0 or more")
        self.path = os.path.abspath(path)
        self.formatter = formatter
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self._header = formatter.header
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._unsynced = False
        self._last_sync = time.monotonic()

    def sync_due_in(self) -> float | None:
        """Return the seconds until an interval fsync is due, or None when none is pending."""
        if self.fsync is not FsyncPolicy.INTERVAL or not self._unsynced:
            return None
        return max(0.0, self._last_sync + self.fsync_interval - time.monotonic())

    def open(self) -> None:
        """Create the folder and open (or create) the file now instead of at the first append."""
        with self._lock:
            lock_fd = self._acquire_file_lock()
            try:
                self._current_file()
            except OSError as error:
                raise AuditWriteError(error, "open", self.path) from error
            finally:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def write_events(self, events: Sequence[AuditEvent]) -> int:
        """Render the events and append them; return the number of bytes appended."""
        data = self.formatter.render(events)
        self.append(data)
        return len(data)

    def append(self, data: bytes) -> None:
        """Append rendered records (whole lines) under the cross-process lock."""
        if not data:
            return
        with self._lock:
            lock_fd = self._acquire_file_lock()
            try:
                records_written = self._append_locked(data)
            finally:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
            if self.fsync is FsyncPolicy.INTERVAL:
                self._sync_if_due_locked(records_written)

    def sync_if_due(self) -> None:
        """Flush written data to disk if the fsync interval has passed since the last flush."""
        with self._lock:
            self._sync_if_due_locked()

    def sync(self) -> None:
        """Flush written data to disk now, whatever the fsync policy."""
        with self._lock:
            self._sync_locked()

    def reopen(self) -> None:
        """Close the file so that the next append opens `path` afresh (for external logrotate)."""
        with self._lock:
            self._close_file()

    def close(self) -> None:
        """Flush to disk (unless fsync is FsyncPolicy.NONE), then close the file and the lock file."""
        with self._lock:
            try:
                if self.fsync is not FsyncPolicy.NONE:
                    self._sync_locked()
            finally:
                self._close_file()
                if self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None

    def _acquire_file_lock(self) -> int:
        try:
            if self._lock_fd is None:
                os.makedirs(os.path.dirname(self.path), mode=FOLDER_MODE, exist_ok=True)
                self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except OSError as error:
            raise AuditWriteError(error, "lock", self.path + ".lock") from error
        return self._lock_fd

    def _append_locked(self, data: bytes) -> int:
        """Append the data, rotating as needed, and return the number of lines written."""
        try:
            fd, size = self._current_file()
        except OSError as error:
            raise AuditWriteError(error, "open", self.path) from error

        view = memoryview(data)
        start = 0
        records_written = 0
        while start < len(data):
            prefix = self._header if size == 0 else b""
            length = self._fitting_length(data, start, size, len(prefix))
            if length == 0:
                fd = self._rotate(fd, records_written)
                size = 0
                continue
            chunk = view[start : start + length]
            try:
                self._write_all(fd, prefix + chunk if prefix else chunk, size)
            except OSError as error:
                raise AuditWriteError(error, "write", self.path, records_written) from error
            size += len(prefix) + length
            records_written += data.count(b"\n", start, start + length)
            start += length

        if self.fsync is FsyncPolicy.ALWAYS:
            try:
                self._sync_locked()
            except OSError as error:
                raise AuditWriteError(error, "fsync", self.path, records_written) from error
        return records_written

    def _fitting_length(self, data: bytes, start: int, size: int, prefix_length: int) -> int:
        """Return how many bytes (whole lines) from `start` to append now; 0 means rotate first."""
        room = self.max_bytes - size - prefix_length
        if len(data) - start <= room:
            return len(data) - start
        if room > 0:
            cut = data.rfind(b"\n", start, start + room)
            if cut != -1:
                return cut + 1 - start
        if size > len(self._header):
            return 0
        # A fresh file, and the first record alone exceeds max_bytes: write it anyway.
        end = data.find(b"\n", start)
        return len(data) - start if end == -1 else end + 1 - start

    def _write_all(self, fd: int, data: bytes | memoryview, size_before: int) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError:
            self._discard_partial_write(fd, size_before)
            raise
        self._unsynced = True

    def _discard_partial_write(self, fd: int, size_before: int) -> None:
        # Cut off a half-written record so that the next append starts on a fresh
        # line. Other processes wait on the lock, so none of them has appended since.
        try:
            if os.fstat(fd).st_size > size_before:
                os.ftruncate(fd, size_before)
        except OSError as error:
            # The caller raises the write error. If the next append succeeds, the
            # half record ends up joined to its first line.
            logger.warning("could not remove a partly written audit record from %s: %s", self.path, error)

    def _current_file(self) -> tuple[int, int]:
        """Return the descriptor and size of `path`, reopening it if the path now names another file."""
        if self._fd is not None:
            try:
                on_disk = os.stat(self.path)
            except FileNotFoundError:
                on_disk = None
            opened = os.fstat(self._fd)
            if on_disk is not None and (on_disk.st_ino, on_disk.st_dev) == (opened.st_ino, opened.st_dev):
                return self._fd, opened.st_size
            self._close_file()
        os.makedirs(os.path.dirname(self.path), mode=FOLDER_MODE, exist_ok=True)
        self._fd = _open_append(self.path)
        return self._fd, os.fstat(self._fd).st_size

    def _rotate(self, fd: int, records_written: int) -> int:
        try:
            if self.fsync is not FsyncPolicy.NONE:
                self._sync_locked()
            if self.backup_count == 0:
                os.ftruncate(fd, 0)
                return fd
            for index in range(self.backup_count - 1, 0, -1):
                source = f"{self.path}.{index}"
                if os.path.lexists(source):
                    os.replace(source, f"{self.path}.{index + 1}")
            os.replace(self.path, f"{self.path}.1")
            self._close_file()
            self._fd = _open_append(self.path)
            return self._fd
        except OSError as error:
            raise AuditWriteError(error, "rotate", self.path, records_written) from error

    def _sync_if_due_locked(self, records_written: int = 0) -> None:
        if self._unsynced and time.monotonic() - self._last_sync >= self.fsync_interval:
            try:
                self._sync_locked()
            except OSError as error:
                raise AuditWriteError(error, "fsync", self.path, records_written) from error

    def _sync_locked(self) -> None:
        if self._fd is not None and self._unsynced:
            _sync(self._fd)
        self._unsynced = False
        self._last_sync = time.monotonic()

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
