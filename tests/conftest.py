"""Fixtures shared by the whole suite: isolated homes, gateway environments and a process-leak check."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import processes
from helpers.configs import write_config
from helpers.environment import NPM_ENVIRONMENT, NPMRC
from helpers.paths import npm_servers_missing_reason
from helpers.raw_client import running_gateway
from helpers.sdk_client import gateway_session

# Time a test's processes get to exit on their own after the test body ended.
LEFTOVER_EXIT_TIMEOUT = 15.0
KILL_TIMEOUT = 5.0
STDERR_TAIL_BYTES = 6000

SANDBOX_README = "Hello from the sandbox!\n"
SANDBOX_PROJECT_INFO = "Project info\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def child_subreaper() -> None:
    """Re-parent orphaned grandchildren to pytest so the leak check can still see them."""
    processes.enable_child_subreaper()


@pytest.fixture
def test_id() -> str:
    """Per-test marker value, put in every subprocess environment as WATCHGATE_TEST_ID."""
    return uuid.uuid4().hex


@pytest.fixture(autouse=True)
def no_leftover_processes(test_id: str) -> Iterator[None]:
    """Fail the test when a process it started is still running after it ended.

    Processes that already ran when the test started (started by module- or
    session-scoped fixtures, which pytest sets up first) are not the test's own.
    """
    existing = processes.identities(processes.find_test_processes(test_id))
    yield
    leftovers = [
        process
        for process in processes.find_test_processes(test_id)
        if processes.identity(process) not in existing
    ]
    leftovers = processes.wait_for_exit(leftovers, LEFTOVER_EXIT_TIMEOUT)
    if not leftovers:
        return
    descriptions = [processes.describe(process) for process in leftovers]
    survivors = processes.kill(leftovers, KILL_TIMEOUT)
    message = (
        f"{len(descriptions)} process(es) still running {LEFTOVER_EXIT_TIMEOUT} s after the test; "
        "killed them:\n  " + "\n  ".join(descriptions)
    )
    if survivors:
        message += "\nstill alive after SIGKILL: " + ", ".join(str(process.pid) for process in survivors)
    pytest.fail(message)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A short private runtime directory, so standalone mode never finds another service.

    It lives directly under the system temp folder because Unix socket paths
    are limited to about 100 bytes.
    """
    path = Path(tempfile.mkdtemp(prefix="wg-run-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sandbox_home(tmp_path: Path) -> Path:
    """A HOME holding the tutorial's ~/claude-sandbox and an offline npm config."""
    home = tmp_path / "home"
    sandbox = home / "claude-sandbox"
    (sandbox / "projects").mkdir(parents=True)
    (sandbox / "readme.txt").write_text(SANDBOX_README, encoding="utf-8")
    (sandbox / "projects" / "info.txt").write_text(SANDBOX_PROJECT_INFO, encoding="utf-8")
    (home / ".npmrc").write_text(NPMRC, encoding="utf-8")
    return home


@pytest.fixture
def gateway_env(sandbox_home: Path, test_id: str, runtime_dir: Path) -> dict[str, str]:
    """Environment for a watchgate process (or a server run directly) started by a test."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(sandbox_home),
        "LANG": "C.UTF-8",
        "WATCHGATE_RUNTIME_DIR": str(runtime_dir),
        processes.MARKER_VARIABLE: test_id,
        **NPM_ENVIRONMENT,
    }


@pytest.fixture
def stderr_path(tmp_path: Path) -> Iterator[Path]:
    """File receiving the gateway's stderr; its tail is printed at teardown (shown for failed tests)."""
    path = tmp_path / "watchgate.stderr"
    yield path
    if path.exists():
        data = path.read_bytes()
        print(f"--- last {STDERR_TAIL_BYTES} bytes of {path} ---")
        print(data[-STDERR_TAIL_BYTES:].decode("utf-8", "replace"))


@pytest.fixture
def npm_servers() -> None:
    """Skip the test when the pinned npm servers are not installed."""
    reason = npm_servers_missing_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[..., Path]:
    """Return a function that writes a config dict as YAML into tmp_path and returns its path."""

    def write(data: dict[str, Any], name: str = "watchgate.yaml") -> Path:
        return write_config(tmp_path / name, data)

    return write


@pytest.fixture
def watchgate_session(gateway_env: dict[str, str], stderr_path: Path, tmp_path: Path) -> Callable[..., Any]:
    """Return a factory: `async with watchgate_session(config_path) as session` runs Watchgate under the SDK client.

    The session is connected but not initialized. Keyword options go to ClientSession
    (callbacks) or name the client (client_name, client_version). `cwd` defaults to tmp_path.
    """

    def start(config_path: Path, cwd: Path | None = None, **options: Any) -> Any:
        return gateway_session(config_path, gateway_env, cwd or tmp_path, stderr_path, **options)

    return start


@pytest.fixture
def raw_watchgate(gateway_env: dict[str, str], stderr_path: Path, tmp_path: Path) -> Callable[..., Any]:
    """Return a factory: `async with raw_watchgate(config_path) as gateway` drives Watchgate line by line.

    On a clean exit the gateway is closed (stdin EOF) and must exit, and on an error it is killed.
    """

    def start(config_path: Path, cwd: Path | None = None, extra_args: tuple[str, ...] = ()) -> Any:
        return running_gateway(config_path, gateway_env, cwd or tmp_path, stderr_path, extra_args)

    return start
