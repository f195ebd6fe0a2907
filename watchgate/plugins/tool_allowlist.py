"""The tool_allowlist security plugin: which tools a client may see and call."""

from __future__ import annotations

from watchgate.config.model import ToolAllowlistConfig, ToolListMode
from watchgate.plugins.base import ALLOW, Decision


class ToolAllowlistPlugin:
    """Allow or block tools by exact name.

    `check_tool` is the one decision used both for `tools/call` and for
    filtering `tools/list`, so a tool hidden from the list cannot be called by name.
    """

    name = "tool_allowlist"

    def __init__(self, config: ToolAllowlistConfig, priority: int = 50):
        self.priority = priority
        self.block_message = config.block_message
        self._mode = config.mode
        self._tools = frozenset(config.tools)
        self._metadata = {"mode": config.mode.value}

    def check_tool(self, tool: str) -> Decision:
        if self._mode is ToolListMode.ALLOW_ALL:
            return ALLOW
        if self._mode is ToolListMode.ALLOWLIST:
            if tool in self._tools:
                return ALLOW
            return Decision(False, f"Tool '{tool}' is not in allowlist", self._metadata)
        if tool in self._tools:
            return Decision(False, f"Tool '{tool}' is in blocklist", self._metadata)
        return ALLOW

    def check_request(self, method: str, tool: str | None) -> Decision:
        if method == "tools/call" and tool is not None:
            return self.check_tool(tool)
        return ALLOW
