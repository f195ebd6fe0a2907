"""The audit-logging tutorial, end to end: its config unchanged, the real filesystem server, its log recipes.

Each test copies configs/tutorials/2-implementing-audit-logging.yaml into a
temporary folder, so the relative `logs/audit.log` lands there, and runs
`watchgate --config <copy>` under the official MCP SDK client with HOME
pointing at a temporary home that contains ~/claude-sandbox. The gateway runs
in tests/node so `npx @modelcontextprotocol/server-filesystem` finds the
pinned local copy.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
import statistics
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from helpers.audit_log import (
    CSV_COLUMNS,
    EVENT_FIELDS,
    TUTORIAL_CSV_COLUMNS,
    events_of_type,
    only_event,
    read_json_events,
)
from helpers.paths import NODE_DIR, TUTORIAL_CONFIG
from helpers.sdk_client import gateway_session, text_of
from helpers.waiting import wait_until_sync

pytestmark = [pytest.mark.npm, pytest.mark.anyio, pytest.mark.usefixtures("npm_servers")]

CLIENT_NAME = "tutorial-client"
CLIENT_VERSION = "1.2.3"
SERVER_NAME = "filesystem"
BLOCK_MESSAGE = "Tool access denied by security policy"
ALLOWED_TOOLS = {"read_file", "write_file", "create_directory", "list_directory", "search_files"}
# Every tool of the pinned @modelcontextprotocol/server-filesystem 2026.8.31.
FILESYSTEM_SERVER_TOOLS = {
    "read_file",
    "read_text_file",
    "read_media_file",
    "read_multiple_files",
    "write_file",
    "edit_file",
    "create_directory",
    "list_directory",
    "list_directory_with_sizes",
    "directory_tree",
    "move_file",
    "search_files",
    "get_file_info",
    "list_allowed_directories",
}
FILTERED_COUNT = len(FILESYSTEM_SERVER_TOOLS - ALLOWED_TOOLS)
CALLED_TOOLS = ("list_directory", "write_file", "read_file")
EXPECTED_REQUESTS = Counter(
    [("initialize", None), ("tools/list", None)] + [("tools/call", tool) for tool in CALLED_TOOLS]
)
AUDIT_TEXT = "Testing audit logging!"
SESSION_DEADLINE = 90.0
# The gateway has exited when the session ends, so this only covers a slow flush.
AUDIT_WAIT = 10.0
RECIPE_TIMEOUT = 30.0
JQ = "/usr/bin/jq"

ISO_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
LINE_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC - [A-Z_]+(: |$)")
DEBUG_PREFIX = re.compile(r"^\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}\] ")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def copy_tutorial_config(directory: Path) -> Path:
    """Copy the tutorial config, byte for byte, into `directory`."""
    copy = directory / TUTORIAL_CONFIG.name
    shutil.copyfile(TUTORIAL_CONFIG, copy)
    return copy


def switch_audit_format(config_path: Path, audit_format: str, output_file: str, extra_lines: str = "") -> None:
    """Edit the copied config the way a reader of the tutorial would: format and output_file only."""
    text = config_path.read_text(encoding="utf-8")
    text, format_edits = re.subn(
        r'^(\s*)format: "json"$', lambda m: f'{m.group(1)}format: "{audit_format}"{extra_lines}', text, flags=re.M
    )
    text, output_edits = re.subn(
        r'^(\s*)output_file: "logs/audit.log"$', lambda m: f'{m.group(1)}output_file: "{output_file}"', text, flags=re.M
    )
    assert (format_edits, output_edits) == (1, 1), "the tutorial config no longer has the expected audit keys"
    config_path.write_text(text, encoding="utf-8")


@dataclasses.dataclass
class Observations:
    """What the client saw during the tutorial session."""

    server_info_name: str = ""
    tool_names: set[str] = dataclasses.field(default_factory=set)
    listing: str = ""
    write_text: str = ""
    read_text: str = ""
    blocked: MCPError | None = None


async def run_tutorial_session(config_path: Path, env: dict[str, str], stderr_path: Path, sandbox: Path) -> Observations:
    """Run the tutorial's conversation steps: list, write, read, then call a tool outside the allowlist."""
    seen = Observations()
    with anyio.fail_after(SESSION_DEADLINE):
        async with gateway_session(
            config_path, env, NODE_DIR, stderr_path, client_name=CLIENT_NAME, client_version=CLIENT_VERSION
        ) as session:
            initialize_result = await session.initialize()
            seen.server_info_name = initialize_result.server_info.name

            tools = await session.list_tools()
            seen.tool_names = {tool.name for tool in tools.tools}

            result = await session.call_tool("list_directory", {"path": str(sandbox)})
            seen.listing = text_of(result)

            result = await session.call_tool(
                "write_file", {"path": str(sandbox / "audit-test.txt"), "content": AUDIT_TEXT}
            )
            seen.write_text = text_of(result)

            result = await session.call_tool("read_file", {"path": str(sandbox / "readme.txt")})
            seen.read_text = text_of(result)

            try:
                await session.call_tool(
                    "move_file",
                    {"source": str(sandbox / "readme.txt"), "destination": str(sandbox / "moved.txt")},
                )
            except MCPError as error:
                seen.blocked = error
    return seen


def check_client_view(seen: Observations, sandbox: Path) -> None:
    """Assert what the tutorial's user sees in the conversation."""
    assert seen.server_info_name == "secure-filesystem-server"
    assert seen.tool_names == ALLOWED_TOOLS

    assert "[FILE] readme.txt" in seen.listing
    assert "[DIR] projects" in seen.listing

    assert (sandbox / "audit-test.txt").read_text(encoding="utf-8") == AUDIT_TEXT
    assert seen.read_text.strip() == "Hello from the sandbox!"

    assert seen.blocked is not None, "move_file is outside the allowlist but the call succeeded"
    assert seen.blocked.code == -32001
    assert seen.blocked.message == BLOCK_MESSAGE
    assert isinstance(seen.blocked.data, dict)
    assert seen.blocked.data.get("plugin") == "tool_allowlist"
    assert "move_file" in str(seen.blocked.data.get("reason"))
    # Nothing reached the server: the file was not moved.
    assert (sandbox / "readme.txt").exists()
    assert not (sandbox / "moved.txt").exists()


def run_recipe(command: str, directory: Path) -> str:
    """Run one of the tutorial's shell recipes in `directory` and return its stdout."""
    completed = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + command],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=RECIPE_TIMEOUT,
    )
    assert completed.returncode == 0, f"recipe failed: {command}\nstderr: {completed.stderr}"
    return completed.stdout


def parse_json_stream(text: str) -> list[Any]:
    """Parse concatenated JSON values, as `jq` prints them."""
    decoder = json.JSONDecoder()
    values = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return values
        value, index = decoder.raw_decode(text, index)
        values.append(value)


def uniq_counts(text: str) -> Counter[str]:
    """Parse `uniq -c` output into a Counter."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        count, _, value = line.strip().partition(" ")
        counts[value.strip()] = int(count)
    return counts


def wait_for_log(path: Path, marker: str) -> str:
    """Return the file's text once it contains `marker`."""

    def text_with_marker() -> str | None:
        if not path.exists():
            return None
        text = path.read_text(encoding="utf-8")
        return text if marker in text else None

    return wait_until_sync(text_with_marker, AUDIT_WAIT, f"{marker!r} in {path}")


@pytest.fixture
def tutorial_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "tutorial"
    directory.mkdir()
    return directory


async def test_tutorial_json_audit_log(
    tutorial_dir: Path, sandbox_home: Path, gateway_env: dict[str, str], stderr_path: Path
) -> None:
    config_path = copy_tutorial_config(tutorial_dir)
    sandbox = sandbox_home / "claude-sandbox"

    seen = await run_tutorial_session(config_path, gateway_env, stderr_path, sandbox)
    check_client_view(seen, sandbox)

    log_path = tutorial_dir / "logs" / "audit.log"
    wait_for_log(log_path, "SECURITY_BLOCK")
    events = read_json_events(log_path)

    for event in events:
        assert list(event) == [field for field in EVENT_FIELDS if field in event], f"unknown or misordered keys: {event}"
        assert None not in event.values(), f"null value written: {event}"
        assert ISO_TIMESTAMP.match(event["timestamp"]), event["timestamp"]

    session_ids = {event.get("session_id") for event in events if "request_id" in event}
    assert len(session_ids) == 1, f"several or missing session ids: {session_ids}"
    session_id = session_ids.pop()
    assert isinstance(session_id, str) and session_id

    requests = events_of_type(events, "REQUEST")
    assert Counter((event.get("method"), event.get("tool")) for event in requests) == EXPECTED_REQUESTS
    for request in requests:
        assert request["status"] == "ALLOWED"
        assert isinstance(request["request_id"], str) and request["request_id"]
        assert request["server_name"] == SERVER_NAME
        assert request["session_id"] == session_id

        response = only_event(events, "RESPONSE", request_id=request["request_id"])
        assert response["status"] == "success"
        assert isinstance(response["duration_ms"], int | float)
        assert response["duration_ms"] >= 0
        assert response["server_name"] == SERVER_NAME
        assert response.get("client_name") == CLIENT_NAME, f"RESPONSE without the client's name: {response}"
        assert response["session_id"] == session_id

    for tool in CALLED_TOOLS:
        request = only_event(events, "REQUEST", method="tools/call", tool=tool)
        assert request["plugin"] == "tool_allowlist"

    block = only_event(events, "SECURITY_BLOCK")
    assert block["method"] == "tools/call"
    assert block["tool"] == "move_file"
    assert block["status"] == "BLOCKED"
    assert block["plugin"] == "tool_allowlist"
    assert "move_file" in block["reason"]
    assert block["plugin_metadata"]["mode"] == "allowlist"
    assert isinstance(block["request_id"], str) and block["request_id"]
    assert block["server_name"] == SERVER_NAME
    assert block["client_name"] == CLIENT_NAME
    assert block["session_id"] == session_id
    assert not events_of_type(events, "REQUEST", tool="move_file")
    assert not events_of_type(events, "RESPONSE", request_id=block["request_id"], status="success")

    list_request = only_event(events, "REQUEST", method="tools/list")
    filtered = only_event(events, "TOOLS_FILTERED")
    assert filtered["method"] == "tools/list"
    assert filtered["status"] == "FILTERED"
    assert filtered["plugin"] == "tool_allowlist"
    assert filtered["reason"] == f"Filtered {FILTERED_COUNT} tools from response"
    assert filtered["plugin_metadata"] == {"filtered_count": FILTERED_COUNT}
    assert filtered["request_id"] == list_request["request_id"]
    assert filtered["server_name"] == SERVER_NAME
    assert filtered["session_id"] == session_id

    # Checked last so a missing client name does not hide the checks above.
    # The initialize request itself carries clientInfo, so its REQUEST event can name the client too.
    for request in requests:
        assert request.get("client_name") == CLIENT_NAME, f"REQUEST without the client's name: {request}"
        assert request.get("client_version") == CLIENT_VERSION, f"REQUEST without the client's version: {request}"


async def test_tutorial_jq_recipes(
    tutorial_dir: Path, sandbox_home: Path, gateway_env: dict[str, str], stderr_path: Path
) -> None:
    if not Path(JQ).exists():
        pytest.skip(f"{JQ} is not installed")
    config_path = copy_tutorial_config(tutorial_dir)
    sandbox = sandbox_home / "claude-sandbox"
    seen = await run_tutorial_session(config_path, gateway_env, stderr_path, sandbox)
    check_client_view(seen, sandbox)
    log_path = tutorial_dir / "logs" / "audit.log"
    wait_for_log(log_path, "SECURITY_BLOCK")
    events = read_json_events(log_path)

    # Count total requests performed using jq
    output = run_recipe(
        """jq -r 'select(.event_type == "REQUEST") | .event_type' logs/audit.log | wc -l""", tutorial_dir
    )
    assert int(output) == sum(EXPECTED_REQUESTS.values())

    # Find security events and blocked operations
    output = run_recipe(
        """jq -r 'select(.event_type == "SECURITY_BLOCK" or .event_type == "TOOLS_FILTERED")' logs/audit.log""",
        tutorial_dir,
    )
    security_events = parse_json_stream(output)
    assert sorted(event["event_type"] for event in security_events) == ["SECURITY_BLOCK", "TOOLS_FILTERED"]

    # Extract usage of specific tools
    output = run_recipe("""jq -r 'select(.tool == "write_file")' logs/audit.log""", tutorial_dir)
    write_events = parse_json_stream(output)
    assert [event["event_type"] for event in write_events].count("REQUEST") == 1
    assert all(event["tool"] == "write_file" for event in write_events)

    # View logs from a specific time period
    day = events[0]["timestamp"][:10]
    output = run_recipe(f"""jq -r 'select(.timestamp | startswith("{day}"))' logs/audit.log""", tutorial_dir)
    assert len(parse_json_stream(output)) == sum(1 for event in events if event["timestamp"].startswith(day))

    # Most frequently used tools
    output = run_recipe(
        """jq -r 'select(.event_type == "REQUEST" and .tool) | .tool' logs/audit.log | sort | uniq -c | sort -nr""",
        tutorial_dir,
    )
    assert uniq_counts(output) == Counter(CALLED_TOOLS)

    # Security blocks by tool type
    output = run_recipe(
        """jq -r 'select(.event_type == "SECURITY_BLOCK") | .tool' logs/audit.log | sort | uniq -c""", tutorial_dir
    )
    assert uniq_counts(output) == Counter({"move_file": 1})

    # Operations per hour
    output = run_recipe(
        """jq -r 'select(.event_type == "REQUEST") | .timestamp[0:13]' logs/audit.log | sort | uniq -c""",
        tutorial_dir,
    )
    assert sum(uniq_counts(output).values()) == sum(EXPECTED_REQUESTS.values())

    # Average response time
    output = run_recipe(
        """jq -r 'select(.event_type == "RESPONSE" and .duration_ms) | .duration_ms' logs/audit.log """
        """| awk '{sum+=$1; count++} END {printf "Average: %.2f ms\\n", sum/count}'""",
        tutorial_dir,
    )
    durations = [event["duration_ms"] for event in events if event["event_type"] == "RESPONSE" and "duration_ms" in event]
    assert len(durations) == sum(EXPECTED_REQUESTS.values())
    assert output.strip() == f"Average: {statistics.fmean(durations):.2f} ms"

    # Security plugin activity
    output = run_recipe("""jq -r 'select(.plugin) | .plugin' logs/audit.log | sort | uniq -c | sort -nr""", tutorial_dir)
    expected_plugins = Counter(event["plugin"] for event in events if event.get("plugin"))
    assert uniq_counts(output) == expected_plugins
    assert expected_plugins["tool_allowlist"] >= len(CALLED_TOOLS) + 2

    # Generate daily activity summary
    output = run_recipe("""jq -r '.timestamp[0:10]' logs/audit.log | sort | uniq -c""", tutorial_dir)
    assert sum(uniq_counts(output).values()) == len(events)


async def test_tutorial_line_format(
    tutorial_dir: Path, sandbox_home: Path, gateway_env: dict[str, str], stderr_path: Path
) -> None:
    config_path = copy_tutorial_config(tutorial_dir)
    switch_audit_format(config_path, "line", "logs/audit.log")
    sandbox = sandbox_home / "claude-sandbox"
    seen = await run_tutorial_session(config_path, gateway_env, stderr_path, sandbox)
    check_client_view(seen, sandbox)

    text = wait_for_log(tutorial_dir / "logs" / "audit.log", "SECURITY_BLOCK")
    lines = text.splitlines()
    for line in lines:
        assert LINE_PREFIX.match(line), f"line record without the tutorial's prefix: {line!r}"
        assert not CONTROL_CHARACTERS.search(line), f"unescaped control character: {line!r}"

    for tool in CALLED_TOOLS:
        pattern = re.compile(rf" UTC - REQUEST: tools/call - {tool} - ALLOWED( - .*)?$")
        assert sum(1 for line in lines if pattern.search(line)) == 1, f"no REQUEST line for {tool}"
    assert sum(1 for line in lines if re.search(r" UTC - REQUEST: initialize( - .*)?", line)) == 1
    responses = [line for line in lines if re.search(r" UTC - RESPONSE: success( - .*)?$", line)]
    assert len(responses) == sum(EXPECTED_REQUESTS.values())

    blocks = [line for line in lines if " UTC - SECURITY_BLOCK: " in line]
    assert len(blocks) == 1
    match = re.search(r" UTC - SECURITY_BLOCK: move_file - \[tool_allowlist\] (.+)$", blocks[0])
    assert match, f"SECURITY_BLOCK line not in the tutorial's shape: {blocks[0]!r}"
    assert "move_file" in match.group(1)
    assert sum(1 for line in lines if " UTC - TOOLS_FILTERED" in line) == 1


async def test_tutorial_debug_format(
    tutorial_dir: Path, sandbox_home: Path, gateway_env: dict[str, str], stderr_path: Path
) -> None:
    config_path = copy_tutorial_config(tutorial_dir)
    switch_audit_format(config_path, "debug", "logs/audit.log")
    sandbox = sandbox_home / "claude-sandbox"
    seen = await run_tutorial_session(config_path, gateway_env, stderr_path, sandbox)
    check_client_view(seen, sandbox)

    text = wait_for_log(tutorial_dir / "logs" / "audit.log", "SECURITY_BLOCK")
    lines = text.splitlines()
    for line in lines:
        assert DEBUG_PREFIX.match(line), f"debug record without a [timestamp] prefix: {line!r}"
        assert " EVENT=" in line, f"debug record without EVENT=: {line!r}"
        assert not CONTROL_CHARACTERS.search(line), f"unescaped control character: {line!r}"

    for tool in CALLED_TOOLS:
        pattern = re.compile(
            rf"^\[[^\]]+\] REQUEST_ID=(\S+) SOURCE={CLIENT_NAME} EVENT=REQUEST METHOD=tools/call TOOL={tool} STATUS=ALLOWED\b"
        )
        matches = [pattern.match(line) for line in lines if pattern.match(line)]
        assert len(matches) == 1, f"no debug REQUEST record for {tool}"
        request_id = matches[0].group(1)
        response_lines = [
            line for line in lines if f"REQUEST_ID={request_id} " in line and " EVENT=RESPONSE " in line
        ]
        assert len(response_lines) == 1, f"no debug RESPONSE record for request {request_id}"
        assert "STATUS=success" in response_lines[0]

    blocks = [line for line in lines if " EVENT=SECURITY_BLOCK " in line]
    assert len(blocks) == 1
    assert " TOOL=move_file" in blocks[0]
    assert " STATUS=BLOCKED" in blocks[0]
    assert "tool_allowlist" in blocks[0]


async def test_tutorial_csv_format(
    tutorial_dir: Path, sandbox_home: Path, gateway_env: dict[str, str], stderr_path: Path
) -> None:
    config_path = copy_tutorial_config(tutorial_dir)
    csv_settings = '\n        csv_config:\n          quote_style: "minimal"\n          delimiter: ","'
    switch_audit_format(config_path, "csv", "logs/audit.csv", csv_settings)
    sandbox = sandbox_home / "claude-sandbox"
    seen = await run_tutorial_session(config_path, gateway_env, stderr_path, sandbox)
    check_client_view(seen, sandbox)

    csv_path = tutorial_dir / "logs" / "audit.csv"
    text = wait_for_log(csv_path, "SECURITY_BLOCK")
    reader = csv.reader(text.splitlines())
    header = next(reader)
    assert tuple(header[: len(TUTORIAL_CSV_COLUMNS)]) == TUTORIAL_CSV_COLUMNS
    assert tuple(header[: len(CSV_COLUMNS)]) == CSV_COLUMNS
    rows = [dict(zip(header, row, strict=True)) for row in reader]

    requests = [row for row in rows if row["event_type"] == "REQUEST"]
    assert Counter((row["method"], row["tool"] or None) for row in requests) == EXPECTED_REQUESTS
    for request in requests:
        assert request["status"] == "ALLOWED"
        assert request["request_id"]
        assert request["server_name"] == SERVER_NAME
        assert request["session_id"]
        responses = [
            row for row in rows if row["event_type"] == "RESPONSE" and row["request_id"] == request["request_id"]
        ]
        assert len(responses) == 1
        assert responses[0]["status"] == "success"
        assert float(responses[0]["duration_ms"]) >= 0
    for tool in CALLED_TOOLS:
        request = next(row for row in requests if row["tool"] == tool)
        assert request["plugin"] == "tool_allowlist"

    blocks = [row for row in rows if row["event_type"] == "SECURITY_BLOCK"]
    assert len(blocks) == 1
    assert blocks[0]["method"] == "tools/call"
    assert blocks[0]["tool"] == "move_file"
    assert blocks[0]["status"] == "BLOCKED"
    assert blocks[0]["plugin"] == "tool_allowlist"
    assert "move_file" in blocks[0]["reason"]
    assert json.loads(blocks[0]["plugin_metadata"])["mode"] == "allowlist"

    filtered = [row for row in rows if row["event_type"] == "TOOLS_FILTERED"]
    assert len(filtered) == 1
    assert filtered[0]["reason"] == f"Filtered {FILTERED_COUNT} tools from response"
    assert json.loads(filtered[0]["plugin_metadata"]) == {"filtered_count": FILTERED_COUNT}

    # The tutorial's command-line recipes for CSV.
    output = run_recipe("tail -n +2 logs/audit.csv | wc -l", tutorial_dir)
    assert int(output) == len(rows)

    output = run_recipe(
        "tail -n +2 logs/audit.csv | cut -d',' -f4 | grep -v '^$' | sort | uniq -c | sort -nr", tutorial_dir
    )
    assert uniq_counts(output) == Counter(row["tool"] for row in rows if row["tool"])

    output = run_recipe(
        """tail -n +2 logs/audit.csv | awk -F',' '$2=="SECURITY_BLOCK" {print $4}' | sort | uniq -c""", tutorial_dir
    )
    assert uniq_counts(output) == Counter({"move_file": 1})

    output = run_recipe(
        """tail -n +2 logs/audit.csv | awk -F',' '$9 != "" {sum+=$9; count++} END """
        """{if(count>0) printf "Average: %.2f ms\\n", sum/count}'""",
        tutorial_dir,
    )
    durations = [float(row["duration_ms"]) for row in rows if row["duration_ms"] != ""]
    assert len(durations) == sum(EXPECTED_REQUESTS.values())
    assert output.strip() == f"Average: {statistics.fmean(durations):.2f} ms"

    # Checked last so a missing client name does not hide the checks above.
    for request in requests:
        assert request["client_name"] == CLIENT_NAME, f"REQUEST row without the client's name: {request}"
