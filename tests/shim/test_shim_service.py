"""The shim and `watchgatectl` against a real `watchgate serve` whose worker is killed mid-request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.configs import FAULT_SERVER_NAME, fault_server_config, write_config
from helpers.waiting import wait_until_sync
from shim_fakes import INITIALIZED, initialize_request, request

from watchgate.ctl import cli as ctl_cli
from watchgate.protocol.jsonrpc import ErrorCode

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
CTL_TIMEOUT = 30.0


def watchgatectl(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "watchgate.ctl.cli", *arguments],
        capture_output=True, text=True, env=env, timeout=CTL_TIMEOUT,
    )


@pytest.fixture
def service(tmp_path: Path, test_id: str, shim_env: dict[str, str], runtime_dir: Path):
    """A running `watchgate serve` for the fault server; stopped (and killed if need be) at teardown."""
    config = write_config(tmp_path / "watchgate.yaml", fault_server_config(tmp_path, test_id))
    with open(tmp_path / "serve.stderr", "ab") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "watchgate", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=shim_env,
        )
    try:
        wait_until_sync(
            lambda: watchgatectl(shim_env, "status").returncode == ctl_cli.EXIT_OK or process.poll() is not None,
            START_TIMEOUT, "every server of the service to be RUNNING",
        )
        assert process.poll() is None, (tmp_path / "serve.stderr").read_text()
        yield config
        assert watchgatectl(shim_env, "stop").returncode == ctl_cli.EXIT_OK
        assert process.wait(STOP_TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)


def test_shim_survives_worker_kill(service, start_watchgate, shim_env, runtime_dir):
    shim = start_watchgate("--config", str(service))
    shim.send(initialize_request(0))
    assert shim.receive()["result"]["serverInfo"]["name"] == "fault-server"
    shim.send(INITIALIZED)
    shim.send(request(1, "tools/call", {"name": "slow", "arguments": {"seconds": 60}}))
    status = json.loads(watchgatectl(shim_env, "status", "--json").stdout)
    worker_pid = status["servers"][0]["worker_pid"]
    wait_until_sync(
        lambda: json.loads(watchgatectl(shim_env, "status", "--json").stdout)["servers"][0]["requests"] >= 1,
        CTL_TIMEOUT, "the slow call to reach the worker",
    )

    os.kill(worker_pid, signal.SIGKILL)
    lost = shim.receive()
    assert lost["id"] == 1
    assert lost["error"]["code"] == ErrorCode.UPSTREAM_EXITED

    shim.send(request(2, "tools/call", {"name": "echo", "arguments": {"text": "after restart"}}))
    answer = shim.receive(timeout=START_TIMEOUT)
    assert answer["id"] == 2
    assert answer["result"]["content"][0]["text"] == "after restart"
    assert f"Mode: shim (relaying to the service at {runtime_dir / FAULT_SERVER_NAME}.sock)" in shim.stderr()

    shim.close_stdin()
    assert shim.wait() == 0
    table = watchgatectl(shim_env, "status").stdout
    assert "killed by SIGKILL" in table
