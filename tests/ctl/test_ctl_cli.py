"""`watchgatectl` against a fake control server: output, requests sent and exit codes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ctl_fakes import reply_with

from watchgate.ctl import cli, protocol
from watchgate.ctl.client import ControlClient, ServiceUnreachable

RUN_TIMEOUT = 30.0


def status_result(server_states=("RUNNING", "RUNNING"), writer_state="RUNNING") -> dict:
    servers = []
    for index, state in enumerate(server_states):
        servers.append({
            "name": f"server{index}",
            "state": state,
            "worker_pid": 1000 + index if state == "RUNNING" else None,
            "upstream_pid": 2000 + index if state == "RUNNING" else None,
            "uptime": 3725.0,
            "restarts": index,
            "sessions": 2,
            "requests": 120,
            "blocked": 3,
            "last_exit": None if state == "RUNNING" else "exit status 1",
            "last_stderr": None if state == "RUNNING" else "Error: cannot find module",
        })
    return {
        "service": {"pid": 999, "uptime": 90061.0, "config": "/etc/watchgate/watchgate.yaml",
                    "config_error": None, "state": "RUNNING"},
        "servers": servers,
        "writer": {"state": writer_state, "pid": 998, "uptime": 3725.0, "restarts": 0, "events_written": 4321,
                   "lag": 0, "lost": 7, "sinks": [{"path": "/var/log/watchgate/audit.log", "healthy": True, "lost": 7}]},
    }


def run_ctl(capsys, *arguments: str) -> tuple[int, str, str]:
    code = cli.main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status_all_running(fake_control, capsys):
    server = fake_control(reply_with(status_result()))
    code, out, err = run_ctl(capsys, "--socket", str(server.path), "status")
    assert code == cli.EXIT_OK, err
    lines = out.splitlines()
    assert lines[0] == "watchgate service: RUNNING, pid 999, uptime 1d 1:01:01"
    header = next(line for line in lines if line.startswith("NAME"))
    assert header.split() == ["NAME", "STATE", "PID", "UPSTREAM", "UPTIME", "RESTARTS", "SESSIONS", "REQUESTS",
                              "BLOCKED", "INFO"]
    row = next(line for line in lines if line.startswith("server1"))
    assert row.split() == ["server1", "RUNNING", "1001", "2001", "1:02:05", "1", "2", "120", "3"]
    writer = next(line for line in lines if line.startswith("(audit writer)"))
    assert "written 4321, lag 0, lost 7" in writer
    assert json.loads(server.requests[0]) == {"version": 1, "command": "status", "args": {}}


def test_status_some_not_running(fake_control, capsys):
    server = fake_control(reply_with(status_result(("RUNNING", "FATAL"))))
    code, out, _ = run_ctl(capsys, "--socket", str(server.path), "status")
    assert code == cli.EXIT_NOT_RUNNING
    row = next(line for line in out.splitlines() if line.startswith("server1"))
    assert "FATAL" in row
    assert "exit status 1; stderr: Error: cannot find module" in row


def test_status_writer_not_running(fake_control, capsys):
    server = fake_control(reply_with(status_result(writer_state="BACKOFF")))
    code, _, _ = run_ctl(capsys, "--socket", str(server.path), "status")
    assert code == cli.EXIT_NOT_RUNNING


def test_status_json_prints_raw_result(fake_control, capsys):
    result = status_result(("STOPPED",))
    server = fake_control(reply_with(result))
    code, out, _ = run_ctl(capsys, "--socket", str(server.path), "status", "--json")
    assert code == cli.EXIT_NOT_RUNNING
    assert json.loads(out) == result


def test_status_escapes_control_characters(fake_control, capsys):
    result = status_result(("EXITED",))
    result["servers"][0]["last_exit"] = None
    result["servers"][0]["last_stderr"] = "\x1b[2Jcleared\x07"
    server = fake_control(reply_with(result))
    _, out, _ = run_ctl(capsys, "--socket", str(server.path), "status")
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "\\x1b[2Jcleared\\x07" in out


def test_status_shows_rejected_reload(fake_control, capsys):
    result = status_result()
    result["service"]["config_error"] = "watchgate.yaml: proxy.upstream.comand: unknown key"
    server = fake_control(reply_with(result))
    _, out, _ = run_ctl(capsys, "--socket", str(server.path), "status")
    assert "last reload rejected: watchgate.yaml: proxy.upstream.comand: unknown key" in out


@pytest.mark.parametrize(
    ("arguments", "expected_request"),
    [
        (["restart", "github"], {"version": 1, "command": "restart", "args": {"name": "github"}}),
        (["restart", "--all"], {"version": 1, "command": "restart", "args": {"all": True}}),
        (["reload"], {"version": 1, "command": "reload", "args": {}}),
        (["stop"], {"version": 1, "command": "stop", "args": {}}),
    ],
)
def test_commands_send_request(fake_control, capsys, arguments, expected_request):
    server = fake_control(reply_with({}))
    code, out, err = run_ctl(capsys, "--socket", str(server.path), *arguments)
    assert code == cli.EXIT_OK, err
    assert "requested" in out
    assert json.loads(server.requests[0]) == expected_request


def test_command_result_details_printed(fake_control, capsys):
    server = fake_control(reply_with({"restarted": ["a", "b"]}))
    _, out, _ = run_ctl(capsys, "--socket", str(server.path), "restart", "--all")
    assert '  restarted: ["a","b"]' in out


def test_service_error_exits_1(fake_control, capsys):
    server = fake_control(reply_with(error=(protocol.NOT_FOUND, "no server named 'nope'")))
    code, _, err = run_ctl(capsys, "--socket", str(server.path), "restart", "nope")
    assert code == cli.EXIT_FAILURE
    assert "restart failed: no server named 'nope' (not_found)" in err


def test_malformed_response_exits_1(fake_control, capsys):
    server = fake_control(lambda _line: b"this is not json\n")
    code, _, err = run_ctl(capsys, "--socket", str(server.path), "reload")
    assert code == cli.EXIT_FAILURE
    assert "invalid_response" in err


def test_newer_service_version_exits_1(fake_control, capsys):
    server = fake_control(lambda _line: b'{"version": 2, "ok": true, "result": {}}\n')
    code, _, err = run_ctl(capsys, "--socket", str(server.path), "stop")
    assert code == cli.EXIT_FAILURE
    assert "version_mismatch" in err


def test_missing_socket_is_unreachable(socket_dir, capsys):
    code, _, err = run_ctl(capsys, "--socket", str(socket_dir / "control.sock"), "status")
    assert code == cli.EXIT_UNREACHABLE
    assert "no such socket" in err


def test_stale_socket_is_unreachable(socket_dir, capsys):
    path = socket_dir / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays but nothing listens
    code, _, err = run_ctl(capsys, "--socket", str(path), "status")
    assert code == cli.EXIT_UNREACHABLE
    assert "connection refused" in err


def test_silent_service_times_out(socket_dir, capsys):
    path = socket_dir / "control.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)  # accepts into the backlog, never reads or writes
    try:
        code, _, err = run_ctl(capsys, "--socket", str(path), "--timeout", "0.3", "status")
    finally:
        listener.close()
    assert code == cli.EXIT_UNREACHABLE
    assert "no response within 0.3 s" in err


def test_closed_without_response_is_unreachable(fake_control, capsys):
    server = fake_control(lambda _line: None)
    code, _, err = run_ctl(capsys, "--socket", str(server.path), "status")
    assert code == cli.EXIT_UNREACHABLE
    assert "closed the connection without a response" in err


def test_oversized_response_rejected(fake_control):
    server = fake_control(lambda _line: b"x" * (protocol.MAX_LINE_BYTES + 70000))
    with pytest.raises(protocol.ProtocolError) as caught:
        ControlClient(str(server.path)).status()
    assert caught.value.code == protocol.TOO_LARGE


def test_client_raises_unreachable(socket_dir):
    with pytest.raises(ServiceUnreachable) as caught:
        ControlClient(str(socket_dir / "missing.sock")).reload()
    assert caught.value.socket_path == str(socket_dir / "missing.sock")


@pytest.mark.parametrize(
    "arguments",
    [
        [],
        ["launch"],
        ["restart"],
        ["restart", "a", "--all"],
        ["--socket", "a", "--config", "b", "status"],
        ["--timeout", "0", "status"],
        ["status", "--yaml"],
    ],
)
def test_usage_errors_exit_2(capsys, arguments):
    code, _, err = run_ctl(capsys, *arguments)
    assert code == cli.EXIT_USAGE
    assert "usage" in err or "error" in err


def test_help_documents_exit_codes(capsys):
    code, out, _ = run_ctl(capsys, "--help")
    assert code == 0
    for line in ("0  success", "2  invalid command line", "3  status: some server", "4  the service is unreachable"):
        assert line in out


def test_config_selects_runtime_dir(fake_control, socket_dir, tmp_path, capsys):
    server = fake_control(reply_with(status_result()))
    config = tmp_path / "watchgate.yaml"
    config.write_text(
        "proxy:\n  transport: stdio\n  upstream:\n    command: python3 server.py\n"
        f"service:\n  runtime_dir: {socket_dir}\n",
        encoding="utf-8",
    )
    code, _, err = run_ctl(capsys, "--config", str(config), "status")
    assert code == cli.EXIT_OK, err
    assert len(server.requests) == 1


def test_invalid_config_exits_2(tmp_path, capsys):
    config = tmp_path / "watchgate.yaml"
    config.write_text("proxy:\n  transport: stdio\n  upstream:\n    comand: x\n", encoding="utf-8")
    code, _, err = run_ctl(capsys, "--config", str(config), "status")
    assert code == cli.EXIT_USAGE
    assert "invalid configuration" in err


def test_default_socket_from_environment(fake_control, socket_dir, monkeypatch, capsys):
    fake_control(reply_with(status_result()))
    monkeypatch.setenv("WATCHGATE_RUNTIME_DIR", str(socket_dir))
    assert cli.resolve_socket_path(None, None) == os.path.join(str(socket_dir), "control.sock")
    code, _, _ = run_ctl(capsys, "status")
    assert code == cli.EXIT_OK


def test_entry_point_unreachable(socket_dir):
    executable = Path(sys.executable).parent / "watchgatectl"
    if not executable.exists():
        pytest.skip(f"the watchgatectl entry point is not installed next to {sys.executable}")
    completed = subprocess.run(
        [str(executable), "--socket", str(socket_dir / "control.sock"), "status"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )
    assert completed.returncode == cli.EXIT_UNREACHABLE
    assert "cannot reach the Watchgate service" in completed.stderr


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0, "0:00:00"), (59.9, "0:00:59"), (3600, "1:00:00"), (86400 + 61, "1d 0:01:01")],
)
def test_format_uptime(seconds, text):
    assert cli.format_uptime(seconds) == text
