"""Building and writing Watchgate configuration files for tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from helpers.paths import FAULT_SERVER
from helpers.processes import MARKER_VARIABLE

FAULT_SERVER_NAME = "faulty"
# Short stop waits keep the suite fast, and the fault server exits on stdin EOF at once.
FAST_SHUTDOWN = {"shutdown_grace": 1.0, "terminate_timeout": 2.0}
# Restart quickly so crash tests do not wait out the production backoff.
FAST_RESTART = {"backoff_initial": 0.1, "backoff_max": 0.5, "max_restarts": 5, "restart_window": 60.0}


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write `data` as YAML to `path` and return the path."""
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def fault_server_command(*arguments: str) -> list[str]:
    """Return the argument list that runs the fault server with this interpreter."""
    return [sys.executable, str(FAULT_SERVER), *arguments]


def audit_entry(output_file: Path, audit_format: str = "json", **settings: Any) -> dict[str, Any]:
    return {
        "policy": "file_auditing",
        "enabled": True,
        "config": {"output_file": str(output_file), "format": audit_format, **settings},
    }


def allowlist_entry(tools: list[str], block_message: str = "Tool access denied by security policy") -> dict[str, Any]:
    return {
        "policy": "tool_allowlist",
        "enabled": True,
        "config": {"mode": "allowlist", "tools": tools, "block_message": block_message},
    }


def allow_all_entry() -> dict[str, Any]:
    return {"policy": "tool_allowlist", "enabled": True, "config": {"mode": "allow_all"}}


def fault_server_config(
    directory: Path,
    test_id: str,
    server_arguments: tuple[str, ...] = (),
    upstream: dict[str, Any] | None = None,
    proxy: dict[str, Any] | None = None,
    security: list[dict[str, Any]] | None = None,
    audit_file: Path | None = None,
) -> dict[str, Any]:
    """Return a config whose upstream is the fault server, recording into directory/record.jsonl.

    The audit log goes to `audit_file` (default directory/audit.log) in JSON format.
    """
    command = fault_server_command("--record", str(directory / "record.jsonl"), *server_arguments)
    upstream_section: dict[str, Any] = {
        "name": FAULT_SERVER_NAME,
        "command": command,
        "cwd": str(directory),
        "env": {MARKER_VARIABLE: test_id},
        "startup_timeout": 10.0,
        "request_timeout": 60.0,
        **FAST_SHUTDOWN,
        "restart": dict(FAST_RESTART),
    }
    upstream_section.update(upstream or {})
    return {
        "proxy": {"transport": "stdio", "upstream": upstream_section, **(proxy or {})},
        "plugins": {
            "security": security if security is not None else [allow_all_entry()],
            "auditing": [audit_entry(audit_file or directory / "audit.log")],
        },
    }
