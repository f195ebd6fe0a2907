"""Locations of the programs and files the tests run."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests"
FAULT_SERVER = TESTS_DIR / "servers" / "fault_server.py"
TUTORIAL_CONFIG = REPO_ROOT / "configs" / "tutorials" / "2-implementing-audit-logging.yaml"

# The pinned npm servers: `npx <package>` run with this folder as its working
# directory finds them in node_modules instead of fetching them.
NODE_DIR = TESTS_DIR / "node"
NODE_MODULES = NODE_DIR / "node_modules"
FILESYSTEM_SERVER_PACKAGE = NODE_MODULES / "@modelcontextprotocol" / "server-filesystem"
EVERYTHING_SERVER_PACKAGE = NODE_MODULES / "@modelcontextprotocol" / "server-everything"
EVERYTHING_SERVER_ENTRY = EVERYTHING_SERVER_PACKAGE / "dist" / "index.js"


def watchgate_executable() -> str:
    """Return the `watchgate` entry point installed next to the running interpreter."""
    beside_python = Path(sys.executable).parent / "watchgate"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("watchgate")
    if found is None:
        raise FileNotFoundError(
            f"watchgate entry point not found next to {sys.executable} or on PATH; run tests/setup"
        )
    return found


def npm_servers_missing_reason() -> str | None:
    """Return why the npm tests cannot run, or None when the pinned servers are installed."""
    for package in (FILESYSTEM_SERVER_PACKAGE, EVERYTHING_SERVER_PACKAGE):
        if not package.is_dir():
            return f"pinned npm server missing: {package} (run tests/setup to install it)"
    if shutil.which("node") is None or shutil.which("npx") is None:
        return "node and npx are not on PATH"
    return None
