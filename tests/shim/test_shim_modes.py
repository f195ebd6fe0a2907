"""Mode selection in `watchgate --config FILE`: shim when the worker socket accepts a connection, else standalone."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.configs import FAULT_SERVER_NAME, fault_server_config, write_config
from shim_fakes import INITIALIZED, initialize_request, request


@pytest.fixture
def config_path(tmp_path: Path, test_id: str) -> Path:
    return write_config(tmp_path / "watchgate.yaml", fault_server_config(tmp_path, test_id))


@pytest.fixture
def worker_for_config(fake_worker, runtime_dir):
    """The fake worker, listening where the service would put the fault server's socket."""
    fake_worker.path = runtime_dir / f"{FAULT_SERVER_NAME}.sock"
    return fake_worker


def test_auto_without_service_runs_standalone(start_watchgate, config_path):
    gateway = start_watchgate("--config", str(config_path))
    gateway.send(initialize_request(0))
    response = gateway.receive()
    assert response["result"]["serverInfo"]["name"] == "fault-server"
    gateway.close_stdin()
    assert gateway.wait() == 0
    assert "Mode: standalone (no service is listening on" in gateway.stderr()


def test_auto_with_service_becomes_shim(start_watchgate, config_path, worker_for_config):
    worker_for_config.start()
    gateway = start_watchgate("--config", str(config_path))
    connection = worker_for_config.next_connection()
    gateway.send(initialize_request(0))
    assert connection.next_message()["method"] == "initialize"
    assert gateway.receive()["result"]["serverInfo"]["name"] == "fake-worker"
    gateway.close_stdin()
    assert gateway.wait() == 0
    assert f"Mode: shim (relaying to the service at {worker_for_config.path})" in gateway.stderr()


def test_shim_mode_without_service_exits_3(start_watchgate, config_path, runtime_dir):
    gateway = start_watchgate("--config", str(config_path), "--mode", "shim")
    assert gateway.wait() == 3
    assert f"No Watchgate service is listening on {runtime_dir / FAULT_SERVER_NAME}.sock" in gateway.stderr()


def test_standalone_mode_ignores_service(start_watchgate, config_path, worker_for_config):
    worker_for_config.start()
    gateway = start_watchgate("--config", str(config_path), "--mode", "standalone")
    gateway.send(initialize_request(0))
    assert gateway.receive()["result"]["serverInfo"]["name"] == "fault-server"
    gateway.send(INITIALIZED)
    gateway.send(request(1, "tools/list"))
    assert gateway.receive()["id"] == 1
    gateway.close_stdin()
    assert gateway.wait() == 0
    assert worker_for_config.connections.empty()
    assert "Mode: standalone (--mode standalone)" in gateway.stderr()


def test_invalid_mode_is_usage_error(start_watchgate, config_path):
    gateway = start_watchgate("--config", str(config_path), "--mode", "proxy")
    assert gateway.wait() == 2
    assert "invalid choice: 'proxy'" in gateway.stderr()
