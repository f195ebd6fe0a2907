"""Supervisor parts without processes: reload plans, peer checks, the process table."""

from __future__ import annotations

import logging

import msgspec
import pytest

from watchgate.config.model import Config, PluginEntry, ServerConfig, ServiceConfig, ToolAllowlistConfig
from watchgate.supervisor.peercred import PeerCredentials, peer_allowed, user_label
from watchgate.supervisor.process import Child, ProcessState, Role, transition
from watchgate.supervisor.reload import plan_reload
from watchgate.config.model import RestartPolicyConfig


def _config(*servers: ServerConfig, security: dict | None = None) -> Config:
    return Config(path="/etc/watchgate.yaml", servers=servers, security=security or {}, auditing={},
                  service=ServiceConfig(runtime_dir="/run/watchgate"))


def _server(name: str, *command: str) -> ServerConfig:
    return ServerConfig(name=name, command=command or ("server", name))


def test_reload_plan_sorts_servers_by_change() -> None:
    old = _config(_server("same"), _server("cmd"), _server("plugin"), _server("gone"))
    entry = PluginEntry(policy="tool_allowlist", config=ToolAllowlistConfig(tools=("echo",)))
    new = _config(_server("same"), _server("cmd", "other"), _server("plugin"), _server("new"),
                  security={"plugin": (entry,)})
    plan = plan_reload(old, new)
    assert plan.added == ["new"]
    assert plan.removed == ["gone"]
    assert plan.restarted == ["cmd"]
    assert plan.updated == ["plugin"]
    assert plan.unchanged == ["same"]
    assert plan.writer_restart


def test_reload_plan_env_change_restarts() -> None:
    old = _config(_server("alpha"))
    new = _config(msgspec.structs.replace(_server("alpha"), env={"TOKEN": "x"}))
    assert plan_reload(old, new).restarted == ["alpha"]
    assert not plan_reload(old, new).writer_restart


def test_reload_plan_timeout_change_applies_live() -> None:
    old = _config(_server("alpha"))
    new = _config(msgspec.structs.replace(_server("alpha"), request_timeout=5.0))
    assert plan_reload(old, new).updated == ["alpha"]


@pytest.mark.parametrize(("uid", "gid", "group", "allowed"), [
    (1000, 1000, None, True),
    (0, 0, None, True),
    (1001, 1001, None, False),
    (1001, 50, 50, True),
    (1001, 51, 50, False),
])
def test_peer_allowed(uid: int, gid: int, group: int | None, allowed: bool) -> None:
    assert peer_allowed(PeerCredentials(123, uid, gid), 1000, group) is allowed


def test_user_label_names_uid() -> None:
    assert user_label(0) == "root(0)"
    assert user_label(2_000_000_000) == "uid(2000000000)"


def test_transition_logs_once_fatal_at_error(caplog: pytest.LogCaptureFixture) -> None:
    child = Child("alpha", Role.WORKER, RestartPolicyConfig())
    child.pid = 42
    with caplog.at_level(logging.INFO, logger="watchgate.supervisor"):
        transition(child, ProcessState.STARTING, "service start")
        transition(child, ProcessState.FATAL, "gave up")
    assert [record.levelno for record in caplog.records] == [logging.INFO, logging.ERROR]
    assert "alpha" in caplog.records[1].getMessage()
    assert "42" in caplog.records[1].getMessage()
    assert child.state is ProcessState.FATAL
    assert child.state_reason == "gave up"
