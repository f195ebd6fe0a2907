"""The audit writer's sequence check, run in-process on a real audit file."""

from __future__ import annotations

import os
from pathlib import Path

from helpers.audit_log import read_json_events
from watchgate.audit.events import AuditEvent
from watchgate.audit.pipe import SEQUENCE_MARK
from watchgate.config.model import (Config, FileAuditingConfig, PluginEntry, ServerConfig, ServiceConfig)
from watchgate.supervisor.writer import AuditWriter, WriterFds

CLOSE_TIMEOUT = 5.0


def _writer(audit_path: Path, last_seq: dict[str, int] | None = None) -> AuditWriter:
    entry = PluginEntry(policy="file_auditing", config=FileAuditingConfig(output_file=str(audit_path)))
    config = Config(path=str(audit_path.parent / "watchgate.yaml"),
                    servers=(ServerConfig(name="alpha", command=("server",)),),
                    security={}, auditing={"alpha": (entry,)},
                    service=ServiceConfig(runtime_dir=str(audit_path.parent)))
    read_fd, write_fd = os.pipe()
    os.close(write_fd)
    return AuditWriter(config, WriterFds({"alpha": read_fd}, heartbeat_fd=-1, lifeline_fd=-1,
                                         last_seq=last_seq or {}))


def _events(*sequence: int) -> list[tuple[str, AuditEvent]]:
    return [("alpha", AuditEvent(timestamp="2026-01-01T00:00:00.000Z", event_type="REQUEST", server_name="alpha",
                                 worker="alpha", seq=seq)) for seq in sequence]


def _write(writer: AuditWriter, *sequence: int) -> None:
    writer._write_batch(_events(*sequence))


def test_gap_recorded_with_missing_range(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"
    writer = _writer(audit_path)
    _write(writer, 1, 2, 5)
    assert writer.emitter.close(CLOSE_TIMEOUT)
    events = read_json_events(audit_path)
    assert [event["event_type"] for event in events] == ["REQUEST", "REQUEST", "AUDIT_GAP", "REQUEST"]
    gap = events[2]
    assert gap["plugin_metadata"] == {"first_missing": 3, "last_missing": 4, "lost_events": 2}
    assert gap["worker"] == "alpha"


def test_restarted_worker_starts_new_sequence(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"
    writer = _writer(audit_path)
    _write(writer, 1, 2, 3, 1, 2)
    assert writer.emitter.close(CLOSE_TIMEOUT)
    assert [event["event_type"] for event in read_json_events(audit_path)] == ["REQUEST"] * 5
    assert writer.gaps == 0


def test_new_writer_continues_from_last_written(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"
    writer = _writer(audit_path, last_seq={"alpha": 5})
    _write(writer, 6, 7, 10)
    assert writer.emitter.close(CLOSE_TIMEOUT)
    gaps = [event for event in read_json_events(audit_path) if event["event_type"] == "AUDIT_GAP"]
    assert len(gaps) == 1
    assert gaps[0]["plugin_metadata"]["first_missing"] == 8
    assert gaps[0]["plugin_metadata"]["last_missing"] == 9


def _mark(seq: int) -> tuple[str, AuditEvent]:
    return ("alpha", AuditEvent(timestamp="2026-01-01T00:00:00.000Z", event_type=SEQUENCE_MARK, worker="alpha",
                                seq=seq))


def test_exit_mark_reveals_undelivered_events(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"
    writer = _writer(audit_path)
    writer._write_batch(_events(1, 2, 3) + [_mark(6)] + _events(1, 2))
    assert writer.emitter.close(CLOSE_TIMEOUT)
    events = read_json_events(audit_path)
    assert [event["event_type"] for event in events] == ["REQUEST"] * 3 + ["AUDIT_GAP"] + ["REQUEST"] * 2
    assert events[3]["plugin_metadata"] == {"first_missing": 4, "last_missing": 6, "lost_events": 3}
    assert writer.events_written == 5


def test_exit_mark_of_complete_worker_is_silent(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"
    writer = _writer(audit_path)
    writer._write_batch(_events(1, 2, 3) + [_mark(2), _mark(3)] + _events(1))
    assert writer.emitter.close(CLOSE_TIMEOUT)
    assert [event["event_type"] for event in read_json_events(audit_path)] == ["REQUEST"] * 4
    assert writer.gaps == 0
