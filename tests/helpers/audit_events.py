"""Audit events and limits shared by the audit pipeline tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from watchgate.audit.events import AuditEvent

# Retry interval for failing audit files in tests, short so recovery tests finish fast.
TEST_RETRY_INTERVAL = 0.05
# Upper bound for any wait on the writer thread in these tests.
WAIT_TIMEOUT = 10.0

TIMESTAMP = "2024-06-16T10:30:15.123Z"


def make_event(**fields: Any) -> AuditEvent:
    """Return an AuditEvent with a fixed timestamp unless one is given."""
    fields.setdefault("timestamp", TIMESTAMP)
    return AuditEvent(**fields)


def restore_regular_file(path: Path) -> None:
    """Replace a /dev/full symlink with a regular file, like freeing disk space."""
    path.unlink()
    path.touch()
