"""Running an MCP server (Watchgate or a real upstream) under the official SDK client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from helpers.paths import watchgate_executable

# Upper bound for any single request. The tests' own deadlines are shorter.
READ_TIMEOUT = 60.0


@contextlib.asynccontextmanager
async def open_session(
    command: str,
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    stderr_path: Path,
    client_name: str = "watchgate-tests",
    client_version: str = "1.0.0",
    **session_options: Any,
) -> AsyncIterator[ClientSession]:
    """Start `command` as a stdio MCP server and yield a connected, not yet initialized ClientSession."""
    parameters = StdioServerParameters(command=command, args=args, env=env, cwd=str(cwd))
    with open(stderr_path, "a", encoding="utf-8") as errlog:
        async with stdio_client(parameters, errlog=errlog) as (read_stream, write_stream):
            async with ClientSession(
                read_stream,
                write_stream,
                read_timeout_seconds=READ_TIMEOUT,
                client_info=types.Implementation(name=client_name, version=client_version),
                **session_options,
            ) as session:
                yield session


def gateway_session(
    config_path: Path, env: dict[str, str], cwd: Path, stderr_path: Path, **options: Any
) -> contextlib.AbstractAsyncContextManager[ClientSession]:
    """Run `watchgate --config config_path` under the SDK client."""
    return open_session(watchgate_executable(), ["--config", str(config_path)], env, cwd, stderr_path, **options)


def text_of(result: types.CallToolResult) -> str:
    """Return the concatenated text content of a tool result."""
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))
