"""Fixtures for the audit pipeline tests: events, an emitter per test and fault seams."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from watchgate.audit import sink as sink_module
from watchgate.audit.emitter import AuditEmitter
from helpers.audit_events import TEST_RETRY_INTERVAL, WAIT_TIMEOUT

@pytest.fixture
def emitter() -> Iterator[AuditEmitter]:
    """A private emitter with a short retry interval, closed after the test."""
    instance = AuditEmitter(retry_interval=TEST_RETRY_INTERVAL)
    yield instance
    instance.close(WAIT_TIMEOUT)


@pytest.fixture
def full_disk_path(tmp_path: Path) -> Callable[[Path], None]:
    """Return a function that turns a path into a symlink to /dev/full, where every write fails with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is missing: this platform has no device that simulates a full disk")

    def make_full(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()
        path.symlink_to("/dev/full")

    return make_full


@pytest.fixture
def deny_open(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """Return a switch that makes opening audit files fail with EACCES (root ignores chmod)."""
    real_open = sink_module._open_append
    state = {"denied": False}

    def open_append(path: str) -> int:
        if state["denied"]:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path)

    monkeypatch.setattr(sink_module, "_open_append", open_append)

    def switch(denied: bool) -> None:
        state["denied"] = denied

    return switch
