"""SIGHUP and `reload`: what keeps running, what changes live, what restarts."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import mcp
import pytest

from helpers.audit_log import read_json_events
from helpers.configs import allow_all_entry, allowlist_entry
from helpers.waiting import wait_until
from service_harness import fault_upstream, running_service, server_row, service_config, socket_session

pytestmark = pytest.mark.anyio

CALL_TIMEOUT = 30.0
FILE_TIMEOUT = 20.0
BLOCKED_BY_POLICY = -32001


def _config(tmp_path: Path, runtime_dir: Path, env: dict[str, str], audit_path: Path, names=("alpha",),
            security=None, arguments: dict[str, tuple[str, ...]] | None = None) -> dict:
    test_id = env["WATCHGATE_TEST_ID"]
    upstreams = [fault_upstream(tmp_path, test_id, name, *(arguments or {}).get(name, ())) for name in names]
    return service_config(runtime_dir, upstreams, audit_path, security=security)


async def _echo(session: mcp.ClientSession, text: str) -> str:
    with anyio.fail_after(CALL_TIMEOUT):
        result = await session.call_tool("echo", {"text": text})
    return result.content[0].text


def _pids(status: dict, name: str) -> tuple[int, int]:
    row = server_row(status, name)
    return row["worker_pid"], row["upstream_pid"]


async def test_reload_unchanged_keeps_sessions(tmp_path, runtime_dir, gateway_env, stderr_path, write_service_config,
                                               audit_path) -> None:
    config = write_service_config(_config(tmp_path, runtime_dir, gateway_env, audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        async with socket_session(service.socket_path("alpha")) as session:
            before = await service.status()
            service.send_signal(signal.SIGHUP)
            assert await service.call("reload") == {"added": [], "removed": [], "restarted": [], "updated": [],
                                                    "unchanged": ["alpha"]}
            after = await service.status()
            assert _pids(after, "alpha") == _pids(before, "alpha")
            assert after["writer"]["pid"] == before["writer"]["pid"]
            assert await _echo(session, "still here") == "still here"


async def test_reload_changed_plugin_applies_live(tmp_path, runtime_dir, gateway_env, stderr_path,
                                                  write_service_config, audit_path) -> None:
    config = write_service_config(_config(tmp_path, runtime_dir, gateway_env, audit_path,
                                          security=[allow_all_entry()]))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        async with socket_session(service.socket_path("alpha")) as session:
            assert await _echo(session, "allowed") == "allowed"
            before = await service.status()
            write_service_config(_config(tmp_path, runtime_dir, gateway_env, audit_path,
                                         security=[allowlist_entry(["big"], "echo is off")]))
            assert (await service.call("reload"))["updated"] == ["alpha"]

            async def echo_blocked() -> bool:
                try:
                    await _echo(session, "blocked?")
                except mcp.McpError as error:
                    return error.error.code == BLOCKED_BY_POLICY
                return False

            with anyio.fail_after(CALL_TIMEOUT):
                while not await echo_blocked():
                    await anyio.sleep(0.05)
            assert _pids(await service.status(), "alpha") == _pids(before, "alpha")
    blocks = [event for event in read_json_events(audit_path) if event.get("event_type") == "SECURITY_BLOCK"]
    assert blocks and blocks[-1]["tool"] == "echo"


async def test_reload_changed_command_restarts_server(tmp_path, runtime_dir, gateway_env, stderr_path,
                                                      write_service_config, audit_path) -> None:
    config = write_service_config(_config(tmp_path, runtime_dir, gateway_env, audit_path, names=("alpha", "beta")))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        before = await service.status()
        write_service_config(_config(tmp_path, runtime_dir, gateway_env, audit_path, names=("alpha", "beta"),
                                     arguments={"alpha": ("--page-size", "2")}))
        result = await service.call("reload")
        assert result["restarted"] == ["alpha"]
        assert result["unchanged"] == ["beta"]
        after = await service.wait_status(
            lambda status: server_row(status, "alpha")["state"] == "RUNNING"
            and server_row(status, "alpha")["worker_pid"] not in (None, server_row(before, "alpha")["worker_pid"]),
            "alpha restarted with the new command")
        assert _pids(after, "beta") == _pids(before, "beta")
        async with socket_session(service.socket_path("alpha")) as session:
            assert await _echo(session, "new command") == "new command"


async def test_reload_added_server_starts(tmp_path, runtime_dir, gateway_env, stderr_path, write_service_config,
                                          audit_path) -> None:
    config = write_service_config(_config(tmp_path, runtime_dir, gateway_env, audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        before = await service.status()
        write_service_config(_config(tmp_path, runtime_dir, gateway_env, audit_path, names=("alpha", "gamma")))
        service.send_signal(signal.SIGHUP)
        await service.wait_running(["alpha", "gamma"])
        assert _pids(await service.status(), "alpha") == _pids(before, "alpha")
        async with socket_session(service.socket_path("gamma")) as session:
            assert await _echo(session, "new server") == "new server"
        await wait_until(lambda: [event for event in read_json_events(audit_path)
                                  if event.get("worker") == "gamma" and event.get("method") == "tools/call"],
                         FILE_TIMEOUT, "audit events of the added server")


async def test_reload_removed_server_stops(tmp_path, runtime_dir, gateway_env, stderr_path, write_service_config,
                                           audit_path) -> None:
    config = write_service_config(_config(tmp_path, runtime_dir, gateway_env, audit_path, names=("alpha", "beta")))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        before = await service.status()
        async with socket_session(service.socket_path("beta")) as session:
            await _echo(session, "last words")
        write_service_config(_config(tmp_path, runtime_dir, gateway_env, audit_path, names=("alpha",)))
        assert (await service.call("reload"))["removed"] == ["beta"]
        await service.wait_status(lambda status: [row["name"] for row in status["servers"]] == ["alpha"],
                                  "beta gone from status")
        await wait_until(lambda: not os.path.exists(service.socket_path("beta")), FILE_TIMEOUT,
                         "beta's socket to be removed")
        assert _pids(await service.status(), "alpha") == _pids(before, "alpha")
    beta_calls = [event for event in read_json_events(audit_path)
                  if event.get("worker") == "beta" and event.get("method") == "tools/call"]
    assert len(beta_calls) == 2, "the removed server's last events were not written"


async def test_reload_invalid_config_keeps_running(tmp_path, runtime_dir, gateway_env, stderr_path,
                                                   write_service_config, audit_path, config_path) -> None:
    config = write_service_config(_config(tmp_path, runtime_dir, gateway_env, audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        async with socket_session(service.socket_path("alpha")) as session:
            before = await service.status()
            config_path.write_text("proxy:\n  upstreams: [\n", encoding="utf-8")
            response = await service.request("reload")
            assert not response.ok
            assert response.error.code == "failed"
            status = await service.status()
            assert status["service"]["config_error"]
            assert _pids(status, "alpha") == _pids(before, "alpha")
            service.send_signal(signal.SIGHUP)
            await service.wait_status(lambda status: status["service"]["config_error"], "config_error after SIGHUP")
            assert await _echo(session, "old config") == "old config"
            write_service_config(_config(tmp_path, runtime_dir, gateway_env, audit_path))
            await service.call("reload")
            assert (await service.status())["service"]["config_error"] is None


async def test_reload_remove_then_add_back(tmp_path, runtime_dir, gateway_env, stderr_path, write_service_config,
                                           audit_path) -> None:
    both = _config(tmp_path, runtime_dir, gateway_env, audit_path, names=("alpha", "beta"))
    config = write_service_config(both)
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        write_service_config(_config(tmp_path, runtime_dir, gateway_env, audit_path, names=("alpha",)))
        assert (await service.call("reload"))["removed"] == ["beta"]
        write_service_config(both)
        assert (await service.call("reload"))["added"] == ["beta"]
        await service.wait_running(["alpha", "beta"])
        async with socket_session(service.socket_path("beta")) as session:
            assert await _echo(session, "back again") == "back again"
