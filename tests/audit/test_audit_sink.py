"""FileSink: appends, size rotation, headers, concurrent processes and write failures."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.audit_events import make_event, restore_regular_file
from helpers import processes

from watchgate.audit import sink as sink_module
from watchgate.audit.formats import CsvFormatter, JsonFormatter, LineFormatter, make_formatter
from watchgate.audit.sink import AuditWriteError, FileSink
from watchgate.config.model import FsyncPolicy

# Seconds that the concurrent writer processes get to finish.
WRITERS_TIMEOUT = 120.0


def record(number: int, padding: int = 0) -> bytes:
    """Return one JSON line carrying a sequence number."""
    return json.dumps({"seq": number, "pad": "x" * padding}).encode() + b"\n"


def rotated_files(path: Path) -> list[Path]:
    """Return path.N ... path.1, path: oldest first."""
    backups = sorted(path.parent.glob(path.name + ".[0-9]*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    return [*reversed(backups), path]


def read_sequence(files: list[Path]) -> list[int]:
    numbers = []
    for file in files:
        for line in file.read_bytes().splitlines():
            numbers.append(json.loads(line)["seq"])
    return numbers


def test_sink_creates_folder_and_private_files(tmp_path: Path) -> None:
    path = tmp_path / "new" / "logs" / "audit.log"
    sink = FileSink(str(path), JsonFormatter(), max_bytes=1000, backup_count=2)
    sink.append(record(1))
    sink.close()

    assert path.read_bytes() == record(1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert (tmp_path / "new" / "logs" / "audit.log.lock").exists()


def test_sink_rotation_names(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = FileSink(str(path), JsonFormatter(), max_bytes=200, backup_count=3)
    for number in range(1, 51):
        sink.append(record(number))
    sink.close()

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3", "audit.log.lock"]
    retained = read_sequence(rotated_files(path))
    assert retained == list(range(retained[0], 51))
    for file in rotated_files(path):
        assert file.stat().st_size <= 200
        assert file.read_bytes().endswith(b"\n")


def test_sink_splits_batch_at_line_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = FileSink(str(path), JsonFormatter(), max_bytes=200, backup_count=100)
    sink.append(b"".join(record(number) for number in range(1, 101)))
    sink.close()

    files = rotated_files(path)
    assert len(files) > 10
    assert read_sequence(files) == list(range(1, 101))
    for file in files:
        assert 0 < file.stat().st_size <= 200


def test_sink_header_on_every_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.csv"
    formatter = CsvFormatter()
    sink = FileSink(str(path), formatter, max_bytes=1000, backup_count=5)
    for number in range(100):
        sink.write_events([make_event(event_type="REQUEST", request_id=str(number), tool="read_file")])
    sink.close()

    files = rotated_files(path)
    assert len(files) == 6
    for file in files:
        lines = file.read_bytes().splitlines(keepends=True)
        assert lines[0] == formatter.header
        assert formatter.header not in lines[1:]
        assert len(lines) > 1
        assert file.stat().st_size <= 1000


def test_sink_oversized_record_alone(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = FileSink(str(path), JsonFormatter(), max_bytes=100, backup_count=5)
    sink.append(record(1))
    sink.append(record(2, padding=300))
    sink.append(record(3))
    sink.close()

    assert read_sequence([tmp_path / "audit.log.2"]) == [1]
    assert read_sequence([tmp_path / "audit.log.1"]) == [2]
    assert read_sequence([path]) == [3]


def test_sink_backup_count_zero_truncates(tmp_path: Path) -> None:
    path = tmp_path / "audit.csv"
    formatter = CsvFormatter()
    sink = FileSink(str(path), formatter, max_bytes=600, backup_count=0)
    sink.write_events([make_event(event_type="REQUEST", request_id="0")])
    inode = path.stat().st_ino
    for number in range(1, 30):
        sink.write_events([make_event(event_type="REQUEST", request_id=str(number))])
        assert path.stat().st_size <= 600
    sink.close()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.csv", "audit.csv.lock"]
    assert path.stat().st_ino == inode
    lines = path.read_bytes().splitlines(keepends=True)
    assert lines[0] == formatter.header
    assert lines[-1].split(b",")[5] == b"29"


def test_sink_follows_external_rename(tmp_path: Path) -> None:
    path = tmp_path / "audit.csv"
    formatter = CsvFormatter()
    sink = FileSink(str(path), formatter, max_bytes=10_000, backup_count=2)
    sink.write_events([make_event(event_type="REQUEST", request_id="1")])
    path.rename(tmp_path / "audit.csv.old")

    sink.write_events([make_event(event_type="REQUEST", request_id="2")])
    sink.close()

    assert path.read_bytes().splitlines()[0] + b"\n" == formatter.header
    assert len(path.read_bytes().splitlines()) == 2
    assert len((tmp_path / "audit.csv.old").read_bytes().splitlines()) == 2


def test_sink_copytruncate_gets_header(tmp_path: Path) -> None:
    path = tmp_path / "audit.csv"
    formatter = CsvFormatter()
    sink = FileSink(str(path), formatter, max_bytes=10_000, backup_count=2)
    sink.write_events([make_event(event_type="REQUEST", request_id="1")])
    os.truncate(path, 0)

    sink.write_events([make_event(event_type="REQUEST", request_id="2")])
    sink.close()

    lines = path.read_bytes().splitlines(keepends=True)
    assert lines[0] == formatter.header
    assert len(lines) == 2


def test_sink_reopen_after_external_move(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = FileSink(str(path), LineFormatter(), max_bytes=10_000, backup_count=2)
    sink.append(record(1))
    path.rename(tmp_path / "moved.log")
    path.write_bytes(b"")

    sink.reopen()
    sink.append(record(2))
    sink.close()

    assert path.read_bytes() == record(2)
    assert (tmp_path / "moved.log").read_bytes() == record(1)


def test_sink_disk_full(tmp_path: Path, full_disk_path) -> None:
    path = tmp_path / "audit.csv"
    full_disk_path(path)
    sink = FileSink(str(path), CsvFormatter(), max_bytes=10_000, backup_count=2)

    with pytest.raises(AuditWriteError) as raised:
        sink.write_events([make_event(event_type="REQUEST", request_id="1")])
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.operation == "write"
    assert raised.value.records_written == 0
    assert raised.value.filename == str(path)
    assert "No space left on device" in str(raised.value)

    restore_regular_file(path)
    sink.write_events([make_event(event_type="REQUEST", request_id="2")])
    sink.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2
    assert lines[1].split(b",")[5] == b"2"


def test_sink_partial_write_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.log"
    sink = FileSink(str(path), JsonFormatter(), max_bytes=10_000, backup_count=2)
    sink.append(record(1))
    real_write = os.write

    def write_half_then_fail(fd: int, data) -> int:
        data = bytes(data)
        if b"fails-half-way" not in data:
            return real_write(fd, data)
        if not getattr(write_half_then_fail, "wrote_half", False):
            write_half_then_fail.wrote_half = True
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sink_module.os, "write", write_half_then_fail)
    with pytest.raises(AuditWriteError) as raised:
        sink.append(b'{"seq": 2, "note": "fails-half-way"}\n')
    monkeypatch.undo()

    assert raised.value.errno == errno.ENOSPC
    assert raised.value.records_written == 0
    assert path.read_bytes() == record(1)
    sink.append(record(3))
    sink.close()
    assert read_sequence([path]) == [1, 3]


def test_sink_permission_denied_seam(tmp_path: Path, deny_open) -> None:
    path = tmp_path / "audit.log"
    sink = FileSink(str(path), JsonFormatter(), max_bytes=10_000, backup_count=2)
    deny_open(True)

    with pytest.raises(AuditWriteError) as raised:
        sink.append(record(1))
    assert raised.value.errno == errno.EACCES
    assert raised.value.operation == "open"
    assert isinstance(raised.value, OSError)

    deny_open(False)
    sink.append(record(2))
    sink.close()
    assert read_sequence([path]) == [2]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions, so chmod cannot deny access")
def test_sink_permission_denied_chmod(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    folder.chmod(0o500)
    sink = FileSink(str(folder / "audit.log"), JsonFormatter(), max_bytes=10_000, backup_count=2)
    try:
        with pytest.raises(AuditWriteError) as raised:
            sink.append(record(1))
        assert raised.value.errno == errno.EACCES
    finally:
        folder.chmod(0o700)
    sink.append(record(2))
    sink.close()
    assert read_sequence([folder / "audit.log"]) == [2]


@pytest.mark.parametrize(
    ("policy", "interval", "expected_syncs"),
    [(FsyncPolicy.NONE, 1.0, 0), (FsyncPolicy.ALWAYS, 1.0, 3), (FsyncPolicy.INTERVAL, 0.0, 3)],
)
def test_sink_fsync_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy, interval, expected_syncs) -> None:
    synced = []
    monkeypatch.setattr(sink_module, "_sync", synced.append)
    sink = FileSink(str(tmp_path / "audit.log"), JsonFormatter(), max_bytes=10_000, backup_count=2, fsync=policy,
                    fsync_interval=interval)
    for number in range(3):
        sink.append(record(number))
    assert len(synced) == expected_syncs
    sink.close()


def test_sink_fsync_interval_due(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = []
    monkeypatch.setattr(sink_module, "_sync", synced.append)
    sink = FileSink(str(tmp_path / "audit.log"), JsonFormatter(), max_bytes=10_000, backup_count=2,
                    fsync=FsyncPolicy.INTERVAL, fsync_interval=3600.0)
    assert sink.sync_due_in() is None
    sink.append(record(1))
    assert synced == []
    assert 3500 < sink.sync_due_in() <= 3600

    sink.close()
    assert len(synced) == 1


def test_sink_rejects_bad_limits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid max_bytes 0"):
        FileSink(str(tmp_path / "a.log"), JsonFormatter(), max_bytes=0, backup_count=1)
    with pytest.raises(ValueError, match="invalid backup_count -1"):
        FileSink(str(tmp_path / "a.log"), JsonFormatter(), max_bytes=10, backup_count=-1)


WRITER_SCRIPT = """
import sys
from watchgate.audit.events import AuditEvent
from watchgate.audit.formats import make_formatter
from watchgate.audit.sink import FileSink

path, audit_format, max_bytes, backup_count, name, batches = sys.argv[1:]
sink = FileSink(path, make_formatter(audit_format), max_bytes=int(max_bytes), backup_count=int(backup_count))
seq = 0
for batch in range(int(batches)):
    events = []
    for _ in range(1 + batch % 7):
        seq += 1
        events.append(AuditEvent(timestamp="2024-06-16T10:30:15.123Z", event_type="REQUEST", method="tools/call",
                                 tool="t" * (seq % 40), worker=name, seq=seq))
    sink.write_events(events)
sink.close()
print(seq)
"""


def run_writers(path: Path, audit_format: str, max_bytes: int, test_id: str) -> dict[str, int]:
    """Run two writer processes on one file at once; return the event count of each."""
    env = {**os.environ, processes.MARKER_VARIABLE: test_id}
    writers = {
        name: subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(path), audit_format, str(max_bytes), "1000", name, "300"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for name in ("alpha", "beta")
    }
    counts = {}
    for name, writer in writers.items():
        stdout, stderr = writer.communicate(timeout=WRITERS_TIMEOUT)
        assert writer.returncode == 0, stderr.decode()
        counts[name] = int(stdout)
    return counts


def test_two_processes_json_through_rotation(tmp_path: Path, test_id: str) -> None:
    path = tmp_path / "audit.log"
    counts = run_writers(path, "json", 4096, test_id)

    files = rotated_files(path)
    assert len(files) > 10, "the writers never rotated the file"
    seen: dict[str, list[int]] = {"alpha": [], "beta": []}
    total_lines = 0
    for file in files:
        assert file.stat().st_size <= 4096
        for line in file.read_bytes().splitlines():
            event = json.loads(line)
            seen[event["worker"]].append(event["seq"])
            total_lines += 1

    assert total_lines == sum(counts.values())
    for name, count in counts.items():
        assert sorted(seen[name]) == list(range(1, count + 1))
        assert seen[name] == sorted(seen[name]), f"{name}'s events are out of order"


def test_two_processes_csv_through_rotation(tmp_path: Path, test_id: str) -> None:
    path = tmp_path / "audit.csv"
    counts = run_writers(path, "csv", 4096, test_id)
    header = make_formatter("csv").header

    files = rotated_files(path)
    assert len(files) > 10, "the writers never rotated the file"
    rows = 0
    for file in files:
        lines = file.read_bytes().splitlines(keepends=True)
        assert lines[0] == header, f"{file.name} does not start with the header"
        for line in lines[1:]:
            cells = line.rstrip(b"\n").split(b",")
            assert len(cells) == 23
            assert cells[1] == b"REQUEST"
            rows += 1

    assert rows == sum(counts.values())
