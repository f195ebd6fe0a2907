"""AuditEmitter: the writer thread, shared channels, loss accounting and recovery."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers.audit_events import TEST_RETRY_INTERVAL, WAIT_TIMEOUT, make_event, restore_regular_file
from helpers.waiting import wait_until_sync

from watchgate.audit.emitter import AuditEmitter, get_emitter
from watchgate.config.model import AuditFormat, AuditMode, FileAuditingConfig


def json_config(path: Path, **settings) -> FileAuditingConfig:
    return FileAuditingConfig(output_file=str(path), **settings)


def read_json(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@contextmanager
def file_lock_held(path: Path) -> Iterator[None]:
    """Hold the audit file's cross-process lock, as another Watchgate process would while writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def audit_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "watchgate.audit" and r.levelno == logging.ERROR]


def test_emitter_writes_in_order(emitter: AuditEmitter, tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.log"
    channel = emitter.attach(json_config(path))
    for number in range(5000):
        channel.submit(make_event(event_type="REQUEST", request_id=str(number)))

    assert emitter.flush(WAIT_TIMEOUT)
    assert [event["request_id"] for event in read_json(path)] == [str(n) for n in range(5000)]
    assert channel.healthy
    assert channel.lost_events == 0


def test_emitter_creates_file_at_attach(emitter: AuditEmitter, tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.log"
    emitter.attach(json_config(path))
    assert emitter.flush(WAIT_TIMEOUT)
    assert path.exists()


def test_emitter_shares_channel_per_file(emitter: AuditEmitter, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    first = emitter.attach(json_config(tmp_path / "real" / "audit.log", mode=AuditMode.SECURITY_ONLY))
    second = emitter.attach(json_config(tmp_path / "alias" / "audit.log", critical=True))
    other = emitter.attach(json_config(tmp_path / "real" / "other.log"))

    assert first is second
    assert other is not first
    assert first.critical

    with pytest.raises(ValueError, match="different format, backup_count: give each entry its own output_file"):
        emitter.attach(json_config(tmp_path / "real" / "audit.log", format=AuditFormat.CSV, backup_count=1))


def test_emitter_last_detach_closes_file(emitter: AuditEmitter, tmp_path: Path) -> None:
    config = json_config(tmp_path / "audit.log")
    channel = emitter.attach(config)
    assert emitter.attach(config) is channel

    channel.submit(make_event(event_type="REQUEST", request_id="1"))
    assert emitter.detach(channel, WAIT_TIMEOUT)
    assert emitter.status() == [channel.status()]
    assert emitter.detach(channel, WAIT_TIMEOUT)

    assert emitter.status() == []
    assert emitter.attach(config) is not channel
    assert [event["request_id"] for event in read_json(tmp_path / "audit.log")] == ["1"]


def test_submit_does_not_wait_for_locked_file(emitter: AuditEmitter, tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    channel = emitter.attach(json_config(path))
    assert emitter.flush(WAIT_TIMEOUT)

    with file_lock_held(path):
        for number in range(100):
            channel.submit(make_event(event_type="REQUEST", request_id=str(number)))
        assert not emitter.flush(timeout=0.2), "flush returned although the file was locked"

    assert emitter.flush(WAIT_TIMEOUT)
    assert len(read_json(path)) == 100


def test_emitter_full_queue_counts_and_records_gap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    emitter = AuditEmitter(max_queued=10, retry_interval=TEST_RETRY_INTERVAL)
    path = tmp_path / "audit.log"
    try:
        with file_lock_held(path):
            channel = emitter.attach(json_config(path, critical=True))
            for number in range(15):
                channel.submit(make_event(event_type="REQUEST", request_id=str(number)))
            assert channel.lost_events == 5
            assert not channel.healthy
        assert emitter.flush(WAIT_TIMEOUT)
    finally:
        emitter.close(WAIT_TIMEOUT)

    events = read_json(path)
    assert events[0]["event_type"] == "AUDIT_GAP"
    assert events[0]["plugin_metadata"]["lost_events"] == 5
    assert "audit queue full" in events[0]["reason"]
    assert [event["request_id"] for event in events[1:]] == [str(n) for n in range(10)]
    assert channel.healthy
    assert any("is full" in record.getMessage() for record in audit_errors(caplog))


def test_emitter_full_queue_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    emitter = AuditEmitter(max_queued=5, retry_interval=TEST_RETRY_INTERVAL)
    path = tmp_path / "audit.log"
    try:
        channel = emitter.attach(json_config(path))
        for episode in range(2):
            with file_lock_held(path):
                for number in range(8):
                    channel.submit(make_event(event_type="REQUEST", request_id=f"{episode}-{number}"))
            assert emitter.flush(WAIT_TIMEOUT)
    finally:
        emitter.close(WAIT_TIMEOUT)

    gaps = [event for event in read_json(path) if event["event_type"] == "AUDIT_GAP"]
    assert [gap["plugin_metadata"]["lost_events"] for gap in gaps] == [3, 3]
    assert channel.lost_events == 6
    full_lines = [record for record in audit_errors(caplog) if "is full" in record.getMessage()]
    assert len(full_lines) == 1


def test_emitter_disk_full_then_recovers(
    emitter: AuditEmitter, tmp_path: Path, full_disk_path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.log"
    full_disk_path(path)
    channel = emitter.attach(json_config(path))

    for batch in range(3):
        for number in range(4):
            channel.submit(make_event(event_type="REQUEST", request_id=f"{batch}-{number}"))
        assert emitter.flush(WAIT_TIMEOUT)
    assert channel.lost_events == 12
    assert not channel.healthy
    assert "No space left on device" in channel.last_error
    errors = audit_errors(caplog)
    assert len(errors) == 1, [record.getMessage() for record in errors]
    assert str(path) in errors[0].getMessage()
    assert "requests continue without audit records" in errors[0].getMessage()
    assert "Free space on the file system of the audit file." in errors[0].getMessage()

    restore_regular_file(path)
    channel.submit(make_event(event_type="REQUEST", request_id="after"))
    assert emitter.flush(WAIT_TIMEOUT)
    wait_until_sync(lambda: channel.healthy, WAIT_TIMEOUT, "the channel to recover")

    events = read_json(path)
    assert [event["event_type"] for event in events] == ["AUDIT_GAP", "REQUEST"]
    gap = events[0]
    assert gap["plugin_metadata"]["lost_events"] == 12
    assert "No space left on device" in gap["plugin_metadata"]["error"]
    assert gap["reason"].startswith("12 audit events lost: ")
    assert gap["pid"] == os.getpid()
    assert events[1]["request_id"] == "after"
    assert channel.lost_events == 12
    recoveries = [
        record
        for record in caplog.records
        if record.levelno == logging.WARNING and "writable again" in record.getMessage()
    ]
    assert len(recoveries) == 1
    assert "12 events lost" in recoveries[0].getMessage()


def test_emitter_periodic_retry_recovers(
    emitter: AuditEmitter, tmp_path: Path, full_disk_path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.log"
    full_disk_path(path)
    channel = emitter.attach(json_config(path, critical=True))
    channel.submit(make_event(event_type="REQUEST", request_id="lost"))
    assert emitter.flush(WAIT_TIMEOUT)
    assert not channel.healthy
    assert "requests are rejected until it recovers" in audit_errors(caplog)[0].getMessage()

    restore_regular_file(path)
    wait_until_sync(lambda: channel.healthy, WAIT_TIMEOUT, "the periodic retry to recover the channel")

    events = read_json(path)
    assert len(events) == 1
    assert events[0]["event_type"] == "AUDIT_GAP"
    assert events[0]["plugin_metadata"]["lost_events"] == 1


def test_emitter_permission_denied_at_open(
    emitter: AuditEmitter, tmp_path: Path, deny_open, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.log"
    deny_open(True)
    channel = emitter.attach(json_config(path, critical=True))
    assert emitter.flush(WAIT_TIMEOUT)
    assert not channel.healthy
    assert channel.lost_events == 0
    assert "Permission denied" in channel.last_error
    assert "open failed" in audit_errors(caplog)[0].getMessage()

    deny_open(False)
    wait_until_sync(lambda: channel.healthy, WAIT_TIMEOUT, "the channel to recover")
    channel.submit(make_event(event_type="REQUEST", request_id="1"))
    assert emitter.flush(WAIT_TIMEOUT)

    events = read_json(path)
    assert [event["event_type"] for event in events] == ["AUDIT_GAP", "REQUEST"]
    assert events[0]["plugin_metadata"]["lost_events"] == 0


def test_emitter_unrenderable_event_counted(emitter: AuditEmitter, tmp_path: Path) -> None:
    path = tmp_path / "audit.debug"
    channel = emitter.attach(FileAuditingConfig(output_file=str(path), format=AuditFormat.DEBUG))
    channel.submit(make_event(event_type="RESPONSE", request_id="1"))
    channel.submit(make_event(event_type="RESPONSE", request_id="2", duration_ms="not a number"))
    channel.submit(make_event(event_type="RESPONSE", request_id="3"))
    assert emitter.flush(WAIT_TIMEOUT)
    wait_until_sync(lambda: "AUDIT_GAP" in path.read_text(), WAIT_TIMEOUT, "the AUDIT_GAP record")

    lines = path.read_text().splitlines()
    assert [line.split()[2] for line in lines[:2]] == ["REQUEST_ID=1", "REQUEST_ID=3"]
    assert "EVENT=AUDIT_GAP" in lines[2]
    assert channel.lost_events == 1


def test_emitter_close_writes_queue(tmp_path: Path) -> None:
    emitter = AuditEmitter()
    path = tmp_path / "audit.log"
    channel = emitter.attach(json_config(path))
    for number in range(2000):
        channel.submit(make_event(event_type="REQUEST", request_id=str(number)))

    assert emitter.close(WAIT_TIMEOUT)
    assert len(read_json(path)) == 2000

    channel.submit(make_event(event_type="REQUEST", request_id="late"))
    assert channel.lost_events == 1
    with pytest.raises(RuntimeError, match="closed"):
        emitter.attach(json_config(path))


def test_emitter_close_records_gap(tmp_path: Path, full_disk_path) -> None:
    emitter = AuditEmitter(retry_interval=3600.0)
    path = tmp_path / "audit.log"
    full_disk_path(path)
    channel = emitter.attach(json_config(path))
    channel.submit(make_event(event_type="REQUEST", request_id="lost"))
    assert emitter.flush(WAIT_TIMEOUT)
    assert channel.lost_events == 1

    restore_regular_file(path)
    assert emitter.close(WAIT_TIMEOUT)

    events = read_json(path)
    assert [event["event_type"] for event in events] == ["AUDIT_GAP"]
    assert events[0]["plugin_metadata"]["lost_events"] == 1


def test_get_emitter_is_shared() -> None:
    first = get_emitter()
    assert get_emitter() is first
    first.close(WAIT_TIMEOUT)
    assert get_emitter() is not first


def test_get_emitter_after_fork() -> None:
    parent_emitter = get_emitter()
    pid = os.fork()
    if pid == 0:
        # In the child: report through the exit status only, never through pytest.
        os._exit(0 if get_emitter() is not parent_emitter else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert get_emitter() is parent_emitter
