"""Server names derived from commands, and expansion of single values."""

from __future__ import annotations

import pytest

from watchgate.config.commands import derive_server_name, expand, split_command
from watchgate.config.errors import InvalidSetting

DERIVED_NAMES = [
    ("npx @modelcontextprotocol/server-filesystem /home/u/claude-sandbox/", "filesystem"),
    ("npx -y @modelcontextprotocol/server-everything@2026.8.31", "everything"),
    ("npx --yes server-memory", "memory"),
    ("npx -p @scope/tools mcp-server-git", "git"),
    ("uvx mcp-server-fetch", "fetch"),
    ("uvx mcp-server-time==0.6.2", "time"),
    ("uvx --from mcp-server-sqlite==1.0 mcp-server-sqlite --db x.db", "sqlite"),
    ("uvx --python 3.12 mcp-server-git[extra]", "git"),
    ("uv run --directory /srv/weather weather.py", "weather"),
    ("uv tool run mcp-server-fetch", "fetch"),
    ("python -m mcp_server_time --local-timezone UTC", "time"),
    ("python3 server.py", "server"),
    ("python3.12 -u /opt/tools/notes.py", "notes"),
    ("/usr/bin/python3 -m my_server", "my_server"),
    ("node /opt/mcp/build/index.js", "index"),
    ("node --require ./setup.js dist/slack.mjs", "slack"),
    ("deno run --allow-read main.ts", "main"),
    ("bunx @acme/mcp-server-tickets@latest", "tickets"),
    ("pipx run mcp-server-fetch", "fetch"),
    ("/usr/local/bin/mcp-server-git --repository .", "git"),
    ("./my-server", "my-server"),
    ("docker run -i --rm mcp/filesystem", "docker"),
    ("npx", "npx"),
    ("npx 'my tool@1'", "my-tool"),
]


@pytest.mark.parametrize(("command", "expected"), DERIVED_NAMES, ids=[c for c, _ in DERIVED_NAMES])
def test_derived_name(command, expected):
    arguments = split_command(command, "command", {})

    assert derive_server_name(arguments) == expected


@pytest.mark.parametrize("command", ["/", "npx ///", "node -- @@"])
def test_no_derivable_name(command):
    assert derive_server_name(split_command(command, "command", {})) is None


def test_expand_unknown_user_left_alone():
    assert expand("~no_such_user_wg/x", "cwd", {}) == "~no_such_user_wg/x"


def test_expand_nul_in_argument_rejected():
    with pytest.raises(InvalidSetting) as caught:
        split_command(["server", "a\0b"], "proxy.upstream.command", {})

    assert caught.value.path == "proxy.upstream.command[1]"
    assert "without NUL" in caught.value.detail


def test_expand_variable_value_not_reexpanded():
    assert expand("$A", "x", {"A": "$B", "B": "no"}) == "$B"
