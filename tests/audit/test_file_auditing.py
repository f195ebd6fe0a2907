"""FileAuditingPlugin: mode filter, bodies, server name, health and closing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest
from helpers.audit_events import WAIT_TIMEOUT, make_event, restore_regular_file
from helpers.waiting import wait_until_sync

from watchgate.audit.emitter import AuditEmitter
from watchgate.audit.events import EventType
from watchgate.config.model import AuditMode, FileAuditingConfig
from watchgate.plugins.file_auditing import FileAuditingPlugin, accepts_event, cap_body

SECURITY_TYPES = {"SECURITY_BLOCK", "TOOLS_FILTERED", "ERROR"}
ALL_TYPES = {event_type.value for event_type in EventType}


def read_json(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def make_plugin(emitter: AuditEmitter, path: Path, server_name: str = "filesystem", **settings) -> FileAuditingPlugin:
    return FileAuditingPlugin(FileAuditingConfig(output_file=str(path), **settings), server_name, emitter=emitter)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (AuditMode.ALL, ALL_TYPES),
        (AuditMode.SECURITY_ONLY, SECURITY_TYPES),
        (AuditMode.OPERATIONS_ONLY, ALL_TYPES - {"SECURITY_BLOCK", "TOOLS_FILTERED"}),
    ],
)
def test_plugin_mode_filter(emitter: AuditEmitter, tmp_path: Path, mode: AuditMode, expected: set[str]) -> None:
    path = tmp_path / "audit.log"
    plugin = make_plugin(emitter, path, mode=mode)
    for event_type in EventType:
        plugin.record(make_event(event_type=event_type))
        plugin.record(make_event(event_type=event_type.value))
    plugin.close()

    written = [event["event_type"] for event in read_json(path)]
    assert set(written) == expected
    assert len(written) == 2 * len(expected)


def test_accepts_event_modes() -> None:
    config = FileAuditingConfig(output_file="/unused/audit.log", mode=AuditMode.SECURITY_ONLY)
    assert accepts_event(config, make_event(event_type=EventType.ERROR))
    assert not accepts_event(config, make_event(event_type="REQUEST"))
    assert not accepts_event(config, make_event(event_type="SOMETHING_NEW"))
    operations = FileAuditingConfig(output_file="/unused/audit.log", mode=AuditMode.OPERATIONS_ONLY)
    assert accepts_event(operations, make_event(event_type="SOMETHING_NEW"))
    assert not accepts_event(operations, make_event(event_type=EventType.TOOLS_FILTERED))


def test_plugin_strips_bodies(emitter: AuditEmitter, tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    plugin = make_plugin(emitter, path)
    event = make_event(event_type="REQUEST", tool="read_file", params={"path": "/secret"}, result={"ok": True})
    plugin.record(event)
    plugin.close()

    written = read_json(path)[0]
    assert "params" not in written
    assert "result" not in written
    assert written["tool"] == "read_file"
    assert event.params == {"path": "/secret"}, "the caller's event was changed"


def test_plugin_caps_bodies(emitter: AuditEmitter, tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    plugin = make_plugin(emitter, path, include_bodies=True, max_body_bytes=40)
    small = {"path": "/tmp/a"}
    large = {"content": "é" * 100}
    plugin.record(make_event(event_type="REQUEST", request_id="1", params=small))
    plugin.record(make_event(event_type="RESPONSE", request_id="1", result=large))
    raw_params = msgspec.Raw(b'{"path":"' + b"x" * 60 + b'"}')
    plugin.record(make_event(event_type="REQUEST", request_id="2", params=raw_params))
    plugin.close()

    first, second, third = read_json(path)
    assert first["params"] == small
    encoded_size = len(json.dumps(large, ensure_ascii=False, separators=(",", ":")).encode())
    assert second["result"]["truncated"] is True
    assert second["result"]["size_bytes"] == encoded_size
    assert len(second["result"]["preview"].encode()) <= 40
    assert second["result"]["preview"].startswith('{"content":"éé')
    assert third["params"] == {"truncated": True, "size_bytes": 71, "preview": '{"path":"' + "x" * 31}


def test_cap_body_zero_bytes() -> None:
    assert cap_body({"a": 1}, 0) == {"truncated": True, "size_bytes": 7, "preview": ""}
    assert cap_body(None, 0) is None


def test_plugin_fills_server_name(emitter: AuditEmitter, tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    plugin = make_plugin(emitter, path, server_name="filesystem")
    plugin.record(make_event(event_type="REQUEST", request_id="1"))
    plugin.record(make_event(event_type="REQUEST", request_id="2", server_name="other"))
    plugin.close()

    assert [event["server_name"] for event in read_json(path)] == ["filesystem", "other"]


def test_plugin_shared_file_health(emitter: AuditEmitter, tmp_path: Path, full_disk_path) -> None:
    path = tmp_path / "audit.log"
    full_disk_path(path)
    critical = make_plugin(emitter, path, server_name="alpha", critical=True)
    relaxed = make_plugin(emitter, path, server_name="beta")
    assert critical.healthy
    assert relaxed.healthy

    critical.record(make_event(event_type="REQUEST", request_id="1"))
    relaxed.record(make_event(event_type="REQUEST", request_id="2"))
    assert emitter.flush(WAIT_TIMEOUT)

    assert not critical.healthy
    assert relaxed.healthy
    assert critical.lost_events == 2
    assert relaxed.lost_events == 2
    assert relaxed.status()["healthy"] is False

    restore_regular_file(path)
    wait_until_sync(lambda: critical.healthy, WAIT_TIMEOUT, "the critical entry to recover")
    relaxed.record(make_event(event_type="REQUEST", request_id="3"))
    critical.close()
    relaxed.close()

    events = read_json(path)
    assert [event["event_type"] for event in events] == ["AUDIT_GAP", "REQUEST"]
    assert events[0]["plugin_metadata"]["lost_events"] == 2
    assert events[1]["server_name"] == "beta"


def test_plugin_permission_denied_critical(emitter: AuditEmitter, tmp_path: Path, deny_open) -> None:
    deny_open(True)
    plugin = make_plugin(emitter, tmp_path / "audit.log", critical=True)
    plugin.record(make_event(event_type="REQUEST", request_id="1"))
    assert emitter.flush(WAIT_TIMEOUT)
    assert not plugin.healthy
    assert plugin.lost_events == 1

    deny_open(False)
    wait_until_sync(lambda: plugin.healthy, WAIT_TIMEOUT, "the entry to recover")
    plugin.close()
    assert read_json(tmp_path / "audit.log")[0]["plugin_metadata"]["lost_events"] == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions, so chmod cannot deny access")
def test_plugin_permission_denied_chmod(emitter: AuditEmitter, tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    folder.chmod(0o500)
    plugin = make_plugin(emitter, folder / "audit.log", critical=True)
    try:
        plugin.record(make_event(event_type="REQUEST", request_id="1"))
        assert emitter.flush(WAIT_TIMEOUT)
        assert not plugin.healthy
        assert plugin.lost_events == 1
    finally:
        folder.chmod(0o700)
    wait_until_sync(lambda: plugin.healthy, WAIT_TIMEOUT, "the entry to recover")
    plugin.close()


def test_plugin_close_flushes_and_ignores_later_events(emitter: AuditEmitter, tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    plugin = make_plugin(emitter, path)
    for number in range(500):
        plugin.record(make_event(event_type="REQUEST", request_id=str(number)))
    plugin.close()
    plugin.close()
    plugin.record(make_event(event_type="REQUEST", request_id="late"))

    assert len(read_json(path)) == 500
    assert plugin.lost_events == 0
    assert emitter.status() == []
