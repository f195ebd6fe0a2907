import pytest

from watchgate.config.model import ToolAllowlistConfig, ToolListMode
from watchgate.plugins.tool_allowlist import ToolAllowlistPlugin


def plugin(mode, tools=("read_file", "write_file")):
    return ToolAllowlistPlugin(ToolAllowlistConfig(mode=mode, tools=tuple(tools), block_message="nope"))


@pytest.mark.parametrize(
    ("mode", "tool", "allowed"),
    [
        (ToolListMode.ALLOWLIST, "read_file", True),
        (ToolListMode.ALLOWLIST, "delete_file", False),
        (ToolListMode.ALLOWLIST, "Read_File", False),
        (ToolListMode.BLOCKLIST, "read_file", False),
        (ToolListMode.BLOCKLIST, "delete_file", True),
        (ToolListMode.ALLOW_ALL, "anything", True),
    ],
)
def test_check_tool_by_mode(mode, tool, allowed):
    assert plugin(mode).check_tool(tool).allowed is allowed


def test_block_reason_and_metadata():
    decision = plugin(ToolListMode.ALLOWLIST).check_tool("delete_file")
    assert decision.reason == "Tool 'delete_file' is not in allowlist"
    assert decision.metadata == {"mode": "allowlist"}


def test_only_tools_call_is_checked():
    allowlist = plugin(ToolListMode.ALLOWLIST, tools=())
    assert allowlist.check_request("tools/list", None).allowed
    assert allowlist.check_request("resources/read", None).allowed
    assert not allowlist.check_request("tools/call", "read_file").allowed
