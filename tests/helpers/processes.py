"""Finding, waiting for and killing the processes a test left behind.

A test's processes are found two ways: as descendants of the pytest process
and by a marker variable in their environment. The pytest process is made a
child subreaper (Linux), so a grandchild whose parent died (an `npx` child
after the gateway was killed, say) is re-parented to pytest and still counts
as a descendant.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Iterable

import psutil

MARKER_VARIABLE = "WATCHGATE_TEST_ID"
POLL_INTERVAL = 0.05
# prctl option number from <linux/prctl.h>.
PR_SET_CHILD_SUBREAPER = 36


def enable_child_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process. Return False where Linux prctl is missing."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def reap_zombie(process: psutil.Process) -> None:
    """Collect the exit status of a zombie child so it leaves the process table."""
    try:
        os.waitpid(process.pid, os.WNOHANG)
    except ChildProcessError:
        pass


def is_running(process: psutil.Process) -> bool:
    """Return True unless the process is gone or a zombie (which is reaped here)."""
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            reap_zombie(process)
            return False
        return process.is_running()
    except psutil.NoSuchProcess:
        return False


def marked_processes(marker: str) -> list[psutil.Process]:
    """Return processes whose environment carries MARKER_VARIABLE=marker."""
    found = []
    own_pid = os.getpid()
    for process in psutil.process_iter(["environ"]):
        environment = process.info.get("environ") or {}
        if process.pid != own_pid and environment.get(MARKER_VARIABLE) == marker:
            found.append(process)
    return found


def find_test_processes(marker: str) -> list[psutil.Process]:
    """Return the live descendants of this process and the processes carrying `marker`."""
    candidates: dict[int, psutil.Process] = {}
    try:
        for child in psutil.Process().children(recursive=True):
            candidates[child.pid] = child
    except psutil.NoSuchProcess:
        pass
    for process in marked_processes(marker):
        candidates.setdefault(process.pid, process)
    return [process for process in candidates.values() if is_running(process)]


def identity(process: psutil.Process) -> tuple[int, float]:
    """Return (pid, creation time), which stays unique when a pid is reused."""
    try:
        return (process.pid, process.create_time())
    except psutil.NoSuchProcess:
        return (process.pid, 0.0)


def identities(processes: Iterable[psutil.Process]) -> set[tuple[int, float]]:
    return {identity(process) for process in processes}


def wait_for_exit(processes: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` seconds for the processes to exit and return those still running."""
    remaining = list(processes)
    deadline = time.monotonic() + timeout
    while True:
        remaining = [process for process in remaining if is_running(process)]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(POLL_INTERVAL)


def describe(process: psutil.Process) -> str:
    """Return "pid name cmdline (parent ppid)" for a failure message."""
    try:
        command = " ".join(process.cmdline()) or process.name()
        parent = process.ppid()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return f"{process.pid} (exited or inaccessible)"
    return f"{process.pid} {command!r} (parent {parent})"


def kill(processes: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Send SIGKILL to each process by pid, wait up to `timeout` and return the ones that survived."""
    targets = list(processes)
    for process in targets:
        try:
            # psutil checks the creation time first, so a reused pid is never hit.
            process.kill()
        except psutil.NoSuchProcess:
            pass
    return wait_for_exit(targets, timeout)
