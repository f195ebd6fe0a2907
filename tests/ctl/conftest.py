"""Fixtures for the control client tests: a short socket folder and the fake control server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ctl_fakes import FakeControlServer, Handler


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short folder for sockets (Unix socket paths are limited to about 100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="wg-ctl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_control(socket_dir: Path) -> Iterator[Callable[[Handler], FakeControlServer]]:
    servers: list[FakeControlServer] = []

    def start(handler: Handler) -> FakeControlServer:
        server = FakeControlServer(socket_dir / "control.sock", handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
