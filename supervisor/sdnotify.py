"""systemd notifications (sd_notify) without libsystemd: one datagram to $NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger("watchgate.supervisor")


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1") to systemd; return False when not run under systemd or on failure."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        # A leading "@" names a socket in the Linux abstract namespace.
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode("utf-8"), address)
    except OSError as error:
        logger.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), error)
        return False
    return True
