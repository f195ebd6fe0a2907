"""The jq and awk recipes of the user documentation, run on logs that the plugin wrote.

The commands are copied unchanged and run with bash in a folder that contains
logs/audit.log (json) and logs/audit.csv (csv).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.audit_events import WAIT_TIMEOUT

from watchgate.audit.emitter import AuditEmitter
from watchgate.audit.events import AuditEvent
from watchgate.config.model import AuditFormat, FileAuditingConfig
from watchgate.plugins.file_auditing import FileAuditingPlugin

# Seconds that one recipe pipeline may take.
RECIPE_TIMEOUT = 30.0

# A session like the documented one: handshake, four allowed calls, a blocked call,
# a filtered tools/list and one slow call, spread over two hours of one day.
SESSION = [
    {"timestamp": "2024-06-16T10:29:45Z", "event_type": "REQUEST", "method": "initialize", "status": "ALLOWED",
     "request_id": "1"},
    {"timestamp": "2024-06-16T10:29:46Z", "event_type": "RESPONSE", "status": "success", "request_id": "1",
     "duration_ms": 45.0},
    {"timestamp": "2024-06-16T10:30:15Z", "event_type": "REQUEST", "method": "tools/call", "tool": "list_directory",
     "status": "ALLOWED", "request_id": "123", "plugin": "tool_allowlist"},
    {"timestamp": "2024-06-16T10:30:16Z", "event_type": "RESPONSE", "status": "success", "request_id": "123",
     "duration_ms": 1333.0},
    {"timestamp": "2024-06-16T10:30:45Z", "event_type": "REQUEST", "method": "tools/call", "tool": "write_file",
     "status": "ALLOWED", "request_id": "124", "plugin": "tool_allowlist"},
    {"timestamp": "2024-06-16T10:30:46Z", "event_type": "RESPONSE", "status": "success", "request_id": "124",
     "duration_ms": 892.0},
    {"timestamp": "2024-06-16T10:31:00Z", "event_type": "SECURITY_BLOCK", "method": "tools/call",
     "tool": "delete_file", "status": "BLOCKED", "reason": "Tool 'delete_file' is not in allowlist",
     "request_id": "125", "plugin": "tool_allowlist", "plugin_metadata": {"mode": "allowlist"}},
    {"timestamp": "2024-06-16T10:31:05Z", "event_type": "REQUEST", "method": "tools/list", "status": "ALLOWED",
     "request_id": "126", "plugin": "tool_allowlist"},
    {"timestamp": "2024-06-16T10:31:06Z", "event_type": "TOOLS_FILTERED", "method": "tools/list",
     "status": "FILTERED", "reason": "Filtered 3 tools from response", "plugin": "tool_allowlist",
     "request_id": "126", "plugin_metadata": {"filtered_count": 3}},
    {"timestamp": "2024-06-16T10:31:06Z", "event_type": "RESPONSE", "status": "success", "request_id": "126",
     "duration_ms": 3.0},
    {"timestamp": "2024-06-16T11:02:00Z", "event_type": "REQUEST", "method": "tools/call", "tool": "write_file",
     "status": "ALLOWED", "request_id": "127", "plugin": "tool_allowlist"},
    {"timestamp": "2024-06-16T11:02:07Z", "event_type": "RESPONSE", "status": "success", "request_id": "127",
     "duration_ms": 7000.0},
    {"timestamp": "2024-06-16T11:05:00Z", "event_type": "REQUEST", "method": "tools/call", "tool": "read_file",
     "status": "ALLOWED", "request_id": "128", "plugin": "tool_allowlist"},
    {"timestamp": "2024-06-16T11:05:01Z", "event_type": "RESPONSE", "status": "error", "request_id": "128",
     "duration_ms": 10.0},
]
RESPONSE_TIMES = [event["duration_ms"] for event in SESSION if event["event_type"] == "RESPONSE"]
AVERAGE_LINE = f"Average: {sum(RESPONSE_TIMES) / len(RESPONSE_TIMES):.2f} ms"


@pytest.fixture
def log_folder(tmp_path: Path) -> Path:
    """A folder whose logs/ contains the session as audit.log (json) and audit.csv (csv)."""
    emitter = AuditEmitter()
    plugins = [
        FileAuditingPlugin(
            FileAuditingConfig(output_file=str(tmp_path / "logs" / name), format=audit_format),
            "filesystem",
            emitter=emitter,
        )
        for name, audit_format in (("audit.log", AuditFormat.JSON), ("audit.csv", AuditFormat.CSV))
    ]
    for fields in SESSION:
        for plugin in plugins:
            plugin.record(AuditEvent(**fields))
    for plugin in plugins:
        plugin.close()
    assert emitter.close(WAIT_TIMEOUT)
    return tmp_path


def run_recipe(command: str, folder: Path, tool: str) -> str:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed, so the documented {tool} recipes cannot run")
    completed = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + command],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=RECIPE_TIMEOUT,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def counts(output: str) -> list[tuple[int, str]]:
    """Parse `uniq -c` output into (count, value) pairs, in output order."""
    pairs = []
    for line in output.splitlines():
        count, value = line.split(maxsplit=1)
        pairs.append((int(count), value))
    return pairs


def json_values(output: str) -> list[dict]:
    decoder = json.JSONDecoder()
    values = []
    text = output.strip()
    while text:
        value, end = decoder.raw_decode(text)
        values.append(value)
        text = text[end:].strip()
    return values


def test_jq_count_requests(log_folder: Path) -> None:
    output = run_recipe("""jq -r 'select(.event_type == "REQUEST") | .event_type' logs/audit.log | wc -l""",
                        log_folder, "jq")
    assert int(output) == 6


def test_jq_security_events(log_folder: Path) -> None:
    output = run_recipe(
        """jq -r 'select(.event_type == "SECURITY_BLOCK" or .event_type == "TOOLS_FILTERED")' logs/audit.log""",
        log_folder,
        "jq",
    )
    events = json_values(output)
    assert [event["event_type"] for event in events] == ["SECURITY_BLOCK", "TOOLS_FILTERED"]
    assert events[0]["plugin_metadata"] == {"mode": "allowlist"}
    assert events[1]["plugin_metadata"] == {"filtered_count": 3}


def test_jq_tool_usage(log_folder: Path) -> None:
    output = run_recipe("""jq -r 'select(.tool == "write_file")' logs/audit.log""", log_folder, "jq")
    assert [event["request_id"] for event in json_values(output)] == ["124", "127"]


def test_jq_time_period(log_folder: Path) -> None:
    output = run_recipe("""jq -r 'select(.timestamp | startswith("2024-06-16"))' logs/audit.log""", log_folder, "jq")
    assert len(json_values(output)) == len(SESSION)


def test_jq_most_used_tools(log_folder: Path) -> None:
    output = run_recipe(
        """jq -r 'select(.event_type == "REQUEST" and .tool) | .tool' logs/audit.log | sort | uniq -c | sort -nr""",
        log_folder,
        "jq",
    )
    assert counts(output)[0] == (2, "write_file")
    assert sorted(counts(output)[1:]) == [(1, "list_directory"), (1, "read_file")]


def test_jq_blocks_by_tool(log_folder: Path) -> None:
    output = run_recipe(
        """jq -r 'select(.event_type == "SECURITY_BLOCK") | .tool' logs/audit.log | sort | uniq -c""", log_folder, "jq"
    )
    assert counts(output) == [(1, "delete_file")]


def test_jq_operations_per_hour(log_folder: Path) -> None:
    output = run_recipe(
        """jq -r 'select(.event_type == "REQUEST") | .timestamp[0:13]' logs/audit.log | sort | uniq -c""",
        log_folder,
        "jq",
    )
    assert counts(output) == [(4, "2024-06-16T10"), (2, "2024-06-16T11")]


def test_jq_average_response_time(log_folder: Path) -> None:
    output = run_recipe(
        """jq -r 'select(.event_type == "RESPONSE" and .duration_ms) | .duration_ms' logs/audit.log"""
        """ | awk '{sum+=$1; count++} END {printf "Average: %.2f ms\\n", sum/count}'""",
        log_folder,
        "jq",
    )
    assert output.strip() == AVERAGE_LINE


def test_jq_plugin_activity(log_folder: Path) -> None:
    output = run_recipe("""jq -r 'select(.plugin) | .plugin' logs/audit.log | sort | uniq -c | sort -nr""",
                        log_folder, "jq")
    assert counts(output) == [(7, "tool_allowlist")]


def test_jq_slow_requests(log_folder: Path) -> None:
    output = run_recipe(
        """jq -r 'select(.duration_ms and .duration_ms > 5000) | {tool, duration_ms, timestamp, request_id}'"""
        """ logs/audit.log""",
        log_folder,
        "jq",
    )
    assert json_values(output) == [
        {"tool": None, "duration_ms": 7000.0, "timestamp": "2024-06-16T11:02:07Z", "request_id": "127"}
    ]


def test_jq_daily_summary(log_folder: Path) -> None:
    output = run_recipe("""jq -r '.timestamp[0:10]' logs/audit.log | sort | uniq -c""", log_folder, "jq")
    assert counts(output) == [(len(SESSION), "2024-06-16")]


def test_csv_count_rows(log_folder: Path) -> None:
    output = run_recipe("tail -n +2 logs/audit.csv | wc -l", log_folder, "tail")
    assert int(output) == len(SESSION)


def test_csv_most_used_tools(log_folder: Path) -> None:
    output = run_recipe(
        "tail -n +2 logs/audit.csv | cut -d',' -f4 | grep -v '^$' | sort | uniq -c | sort -nr", log_folder, "cut"
    )
    assert counts(output)[0] == (2, "write_file")
    assert sorted(counts(output)[1:]) == [(1, "delete_file"), (1, "list_directory"), (1, "read_file")]


def test_csv_blocks_by_tool(log_folder: Path) -> None:
    output = run_recipe(
        """tail -n +2 logs/audit.csv | awk -F',' '$2=="SECURITY_BLOCK" {print $4}' | sort | uniq -c""",
        log_folder,
        "awk",
    )
    assert counts(output) == [(1, "delete_file")]


def test_csv_average_response_time(log_folder: Path) -> None:
    output = run_recipe(
        """tail -n +2 logs/audit.csv | awk -F',' '$9 != "" {sum+=$9; count++} END """
        """{if(count>0) printf "Average: %.2f ms\\n", sum/count}'""",
        log_folder,
        "awk",
    )
    assert output.strip() == AVERAGE_LINE
