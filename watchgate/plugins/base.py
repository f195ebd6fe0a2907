"""The interfaces that security and auditing plugins implement."""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from watchgate.audit.events import AuditEvent


class Decision(msgspec.Struct, frozen=True):
    """A security plugin's verdict on one request or one listed tool."""

    allowed: bool
    reason: str = ""
    metadata: dict[str, Any] | None = None


ALLOW = Decision(True)


class SecurityPlugin(Protocol):
    name: str
    priority: int
    block_message: str

    def check_tool(self, tool: str) -> Decision:
        """Decide whether calling `tool` is allowed; also used to filter tools/list."""

    def check_request(self, method: str, tool: str | None) -> Decision:
        """Decide on any request before a byte of it reaches the upstream."""


class AuditPlugin(Protocol):
    name: str

    def record(self, event: AuditEvent) -> None:
        """Accept one event without blocking the caller."""

    @property
    def healthy(self) -> bool:
        """False while a critical sink cannot write, so requests must be rejected."""

    def close(self) -> None:
        """Flush what is queued and release the files."""
