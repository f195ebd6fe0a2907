"""Fixtures for the shim tests: a fake worker socket and shim subprocesses that are always stopped."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import processes
from shim_fakes import SERVER_NAME, FakeWorker, ShimProcess


@pytest.fixture
def shim_env(test_id: str, runtime_dir: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "WATCHGATE_RUNTIME_DIR": str(runtime_dir),
        processes.MARKER_VARIABLE: test_id,
    }


@pytest.fixture
def fake_worker(runtime_dir: Path) -> Iterator[FakeWorker]:
    worker = FakeWorker(runtime_dir / f"{SERVER_NAME}.sock")
    yield worker
    worker.kill()


@pytest.fixture
def start_watchgate(shim_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., ShimProcess]]:
    """Return a function running `python -m watchgate ARGS...`; every process is stopped at teardown."""
    started: list[ShimProcess] = []

    def start(*arguments: str) -> ShimProcess:
        stderr_path = tmp_path / f"watchgate-{len(started)}.stderr"
        process = ShimProcess([sys.executable, "-m", "watchgate", *arguments], shim_env, stderr_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
