"""The runtime directory and what lives in it: sockets, pipes and the pid file."""

from __future__ import annotations

import errno
import fcntl
import grp
import logging
import os
import socket
import stat
import sys

from watchgate.ctl import protocol

logger = logging.getLogger("watchgate.supervisor")

DIRECTORY_MODE = 0o700
SOCKET_MODE = 0o600
GROUP_SOCKET_MODE = 0o660
CONTROL_SOCKET = "control.sock"
PID_FILE = "supervisor.pid"
LISTEN_BACKLOG = 128
# sockaddr_un.sun_path has room for 108 bytes on Linux and 104 on macOS, the final NUL included.
MAX_SOCKET_PATH_BYTES = 103
PROBE_TIMEOUT = 2.0  # seconds for a running service to respond to the start-up probe
PROBE_READ_BYTES = 1024 * 1024
# Linux lets a pipe grow beyond the 64 KiB default; more room absorbs audit bursts.
# The value is F_SETPIPE_SZ from <linux/fcntl.h>, which Python 3.10+ also exports.
LINUX_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
AUDIT_PIPE_BYTES = 1024 * 1024


class SetupError(Exception):
    """The runtime directory or one of its files cannot be used."""


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None):
        super().__init__(f"already running (pid {pid if pid is not None else 'unknown'})")
        self.pid = pid


def prepare_directory(path: str) -> None:
    """Create the runtime directory with mode 0700, or check an existing one."""
    try:
        os.makedirs(path, mode=DIRECTORY_MODE, exist_ok=True)
        info = os.lstat(path)
    except OSError as error:
        raise SetupError(f"cannot create runtime directory {path}: {error.strerror}") from error
    if not stat.S_ISDIR(info.st_mode):
        raise SetupError(f"runtime directory {path} is not a directory")
    if info.st_uid != os.getuid():
        raise SetupError(f"runtime directory {path} is owned by uid {info.st_uid}, not by this user "
                            f"({os.getuid()}): choose another service.runtime_dir")
    if stat.S_IMODE(info.st_mode) != DIRECTORY_MODE:
        os.chmod(path, DIRECTORY_MODE)


def check_socket_path(path: str) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise SetupError(f"socket path {path} is longer than {MAX_SOCKET_PATH_BYTES} bytes: "
                            "choose a shorter service.runtime_dir")


def probe_control_socket(path: str) -> None:
    """Raise AlreadyRunning when a service accepts connections on `path`; remove a stale socket file."""
    if not os.path.lexists(path):
        return
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(PROBE_TIMEOUT)
    try:
        client.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        logger.info("Removing stale control socket %s (nothing listens on it)", path)
        _unlink(path)
        return
    except OSError as error:
        raise SetupError(f"cannot probe control socket {path}: {error.strerror or error}") from error
    try:
        raise AlreadyRunning(_ask_pid(client, path))
    finally:
        client.close()


def _ask_pid(client: socket.socket, path: str) -> int | None:
    try:
        client.sendall(protocol.encode_request(protocol.Request(command=protocol.STATUS)))
        data = b""
        while not data.endswith(b"\n") and len(data) < PROBE_READ_BYTES:
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
        response = protocol.decode_response(data)
        return response.result["service"]["pid"] if response.ok else read_pid_file(os.path.dirname(path))
    except (OSError, protocol.ProtocolError, KeyError, TypeError):
        return read_pid_file(os.path.dirname(path))


def read_pid_file(directory: str) -> int | None:
    try:
        with open(os.path.join(directory, PID_FILE), encoding="ascii") as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def write_pid_file(directory: str) -> None:
    path = os.path.join(directory, PID_FILE)
    temporary = f"{path}.{os.getpid()}"
    with open(temporary, "w", encoding="ascii") as file:
        file.write(f"{os.getpid()}\n")
    os.replace(temporary, path)


def remove_pid_file(directory: str) -> None:
    path = os.path.join(directory, PID_FILE)
    if read_pid_file(directory) == os.getpid():
        _unlink(path)


def create_listener(path: str, group: str | None = None) -> socket.socket:
    """Bind a listening Unix socket at `path`, replacing a stale file, with mode 0600 (0660 with a group)."""
    check_socket_path(path)
    _unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as error:
        sock.close()
        raise SetupError(f"cannot bind socket {path}: {error.strerror}") from error
    finally:
        os.umask(previous_umask)
    if group is not None:
        os.chown(path, -1, group_id(group))
        os.chmod(path, GROUP_SOCKET_MODE)
    sock.listen(LISTEN_BACKLOG)
    return sock


def group_id(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SetupError(f"service.socket_group: group {group!r} not found") from None


def close_listener(sock: socket.socket, path: str) -> None:
    sock.close()
    _unlink(path)


def create_audit_pipe() -> tuple[int, int]:
    """Return (read end, write end) of a new audit pipe, enlarged where the platform allows."""
    read_fd, write_fd = os.pipe()
    if not sys.platform.startswith("linux"):
        return read_fd, write_fd
    try:
        fcntl.fcntl(write_fd, LINUX_F_SETPIPE_SZ, AUDIT_PIPE_BYTES)
    except OSError as error:
        logger.debug("Audit pipe keeps its default size: %s", error)
    return read_fd, write_fd


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        if error.errno != errno.ENOENT:
            raise SetupError(f"cannot remove {path}: {error.strerror}") from error
