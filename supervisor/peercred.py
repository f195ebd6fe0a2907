"""Credentials of the process on the other end of a Unix socket (Linux and macOS)."""

from __future__ import annotations

import pwd
import socket
import struct
import sys
from typing import NamedTuple

# Linux <asm/socket.h>: SO_PEERCRED returns struct ucred {pid_t pid; uid_t uid; gid_t gid}.
LINUX_SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
UCRED = struct.Struct("3i")
# macOS <sys/un.h>: level SOL_LOCAL, options LOCAL_PEERCRED (struct xucred) and LOCAL_PEERPID.
MACOS_SOL_LOCAL = 0
MACOS_LOCAL_PEERCRED = 0x001
MACOS_LOCAL_PEERPID = 0x002
# struct xucred {u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16];}
XUCRED_SIZE = 76
XUCRED_GROUPS_OFFSET = 12


class PeerCredentials(NamedTuple):
    pid: int | None
    uid: int
    gid: int | None


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Read the peer's credentials; raise OSError where the platform offers none."""
    if sys.platform.startswith("linux"):
        data = sock.getsockopt(socket.SOL_SOCKET, LINUX_SO_PEERCRED, UCRED.size)
        pid, uid, gid = UCRED.unpack(data)
        return PeerCredentials(pid or None, uid, gid)
    if sys.platform == "darwin":
        # NOTE: this branch follows the macOS headers but has not run in this project's tests.
        data = sock.getsockopt(MACOS_SOL_LOCAL, MACOS_LOCAL_PEERCRED, XUCRED_SIZE)
        (uid,) = struct.unpack_from("=I", data, 4)
        (group_count,) = struct.unpack_from("=h", data, 8)
        gid = struct.unpack_from("=I", data, XUCRED_GROUPS_OFFSET)[0] if group_count > 0 else None
        try:
            pid = struct.unpack("=i", sock.getsockopt(MACOS_SOL_LOCAL, MACOS_LOCAL_PEERPID, 4))[0]
        except OSError:
            pid = None
        return PeerCredentials(pid, uid, gid)
    raise OSError(f"peer credentials are not supported on {sys.platform}")


def peer_allowed(credentials: PeerCredentials, service_uid: int, group_id: int | None = None) -> bool:
    """Accept the service's own user and root, plus the socket group's members when one is set."""
    if credentials.uid in (service_uid, 0):
        return True
    return group_id is not None and credentials.gid == group_id


def user_label(uid: int) -> str:
    """Format a uid as "name(uid)" for audit records, or "uid(uid)" for an unknown user."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "uid"
    return f"{name}({uid})"
