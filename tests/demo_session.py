"""Drive Watchgate with the official MCP client, as Claude Desktop would, and show the audit trail.

The session uses configs/tutorials/2-implementing-audit-logging.yaml unchanged.
HOME points at a temporary folder holding the tutorial's ~/claude-sandbox, and
the upstream's npx resolves the pinned server installed in tests/node, offline.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from mcp import ClientSession, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "tutorials" / "2-implementing-audit-logging.yaml"
AUDIT_LOG = CONFIG.parent / "logs" / "audit.log"
WATCHGATE = ROOT / ".venv" / "bin" / "watchgate"


def make_sandbox(home: Path) -> Path:
    sandbox = home / "claude-sandbox"
    (sandbox / "projects").mkdir(parents=True)
    (sandbox / "readme.txt").write_text("Hello from the sandbox!\n")
    (sandbox / "projects" / "info.txt").write_text("Project info\n")
    return sandbox


async def run_session(home: Path, sandbox: Path) -> None:
    env = dict(os.environ, HOME=str(home), npm_config_offline="true", npm_config_update_notifier="false")
    server = StdioServerParameters(
        command=str(WATCHGATE), args=["--config", str(CONFIG)], env=env, cwd=ROOT / "tests" / "node"
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        info = await session.initialize()
        print(f"connected to {info.server_info.name} {info.server_info.version} through Watchgate")
        tools = await session.list_tools()
        print("tools the client may see:", ", ".join(tool.name for tool in tools.tools))
        steps = [
            ("list_directory", {"path": str(sandbox)}),
            ("write_file", {"path": str(sandbox / "audit-test.txt"), "content": "Testing audit logging!"}),
            ("read_file", {"path": str(sandbox / "readme.txt")}),
            ("move_file", {"source": str(sandbox / "readme.txt"), "destination": str(sandbox / "gone.txt")}),
        ]
        for name, arguments in steps:
            try:
                result = await session.call_tool(name, arguments)
            except MCPError as error:
                print(f"  {name}: rejected: {error.message} ({error.data})")
                continue
            text = " ".join(getattr(item, "text", "") for item in result.content).strip().replace("\n", " | ")
            outcome = "error" if result.is_error else "ok"
            print(f"  {name}: {outcome}: {text[:100]}")


def main() -> int:
    offset = AUDIT_LOG.stat().st_size if AUDIT_LOG.exists() else 0
    with tempfile.TemporaryDirectory(prefix="watchgate-demo-") as home_name:
        home = Path(home_name)
        sandbox = make_sandbox(home)
        print(f"sandbox: {sandbox}")
        asyncio.run(run_session(home, sandbox))
    with AUDIT_LOG.open("rb") as log:
        log.seek(offset)
        produced = log.read().decode("utf-8")
    print(f"\naudit lines written to {AUDIT_LOG.relative_to(ROOT)} by this session:")
    sys.stdout.write(produced)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
