"""sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, nothing without it."""

from __future__ import annotations

import logging
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchgate.supervisor import sdnotify

RECEIVE_TIMEOUT = 5.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path, because a Unix socket path must fit in about 100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="wg-notify-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def receiver(short_dir: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(short_dir / "notify.sock"))
    sock.settimeout(RECEIVE_TIMEOUT)
    yield sock
    sock.close()


def test_sends_one_datagram(receiver, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.getsockname())
    assert sdnotify.notify("READY=1") is True
    assert receiver.recv(4096) == b"READY=1"


def test_multiline_message_is_one_datagram(receiver, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.getsockname())
    message = "RELOADING=1\nSTATUS=Reloading the configuration"
    assert sdnotify.notify(message) is True
    assert receiver.recv(4096) == message.encode()


def test_no_variable_is_noop(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_missing_socket_returns_false(short_dir, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "absent.sock"))
    with caplog.at_level(logging.WARNING):
        assert sdnotify.notify("WATCHDOG=1") is False
    assert "absent.sock" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract socket names exist only on Linux")
def test_abstract_socket_name(monkeypatch):
    name = f"watchgate-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECEIVE_TIMEOUT)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"
