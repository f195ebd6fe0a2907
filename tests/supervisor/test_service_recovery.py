"""Crashes and hangs inside a running service, and how it recovers from each."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import anyio
import psutil
import pytest

from helpers.audit_log import read_json_events
from helpers.processes import wait_for_exit
from service_harness import FAST_RESTART, fault_upstream, running_service, server_row, service_config, socket_session

pytestmark = pytest.mark.anyio

CALL_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0


def _upstream(tmp_path: Path, env: dict[str, str], *arguments: str, name: str = "alpha", **settings) -> dict:
    return fault_upstream(tmp_path, env["WATCHGATE_TEST_ID"], name, *arguments, **settings)


async def _echo(path: str, text: str) -> str:
    async with socket_session(path) as session:
        with anyio.fail_after(CALL_TIMEOUT):
            result = await session.call_tool("echo", {"text": text})
    return result.content[0].text


async def test_upstream_sigkill_restarts_upstream(tmp_path: Path, runtime_dir: Path, gateway_env, stderr_path,
                                                  write_service_config, audit_path) -> None:
    config = write_service_config(service_config(runtime_dir, [_upstream(tmp_path, gateway_env)], audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        before = server_row(await service.status(), "alpha")
        os.kill(before["upstream_pid"], signal.SIGKILL)
        after = await service.wait_status(
            lambda status: server_row(status, "alpha")["upstream_pid"] not in (None, before["upstream_pid"])
            and server_row(status, "alpha")["state"] == "RUNNING",
            "a new upstream process")
        row = server_row(after, "alpha")
        assert row["worker_pid"] == before["worker_pid"]
        assert row["restarts"] == before["restarts"] + 1
        assert await _echo(service.socket_path("alpha"), "after upstream crash") == "after upstream crash"


async def test_worker_sigkill_restarts_worker(tmp_path: Path, runtime_dir: Path, gateway_env, stderr_path,
                                              write_service_config, audit_path) -> None:
    config = write_service_config(service_config(runtime_dir, [_upstream(tmp_path, gateway_env)], audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        before = server_row(await service.status(), "alpha")
        old_upstream = psutil.Process(before["upstream_pid"])
        os.kill(before["worker_pid"], signal.SIGKILL)
        after = await service.wait_running(["alpha"])
        after = await service.wait_status(
            lambda status: server_row(status, "alpha")["worker_pid"] not in (None, before["worker_pid"])
            and server_row(status, "alpha")["state"] == "RUNNING", "a new worker")
        row = server_row(after, "alpha")
        assert row["restarts"] >= 1
        assert "SIGKILL" in (row["last_exit"] or "")
        assert not wait_for_exit([old_upstream], EXIT_TIMEOUT), "the dead worker's upstream still runs"
        assert await _echo(service.socket_path("alpha"), "after worker crash") == "after worker crash"


async def test_silent_worker_is_killed_and_restarted(tmp_path: Path, runtime_dir: Path, gateway_env, stderr_path,
                                                     write_service_config, audit_path) -> None:
    config = write_service_config(service_config(runtime_dir, [_upstream(tmp_path, gateway_env)], audit_path,
                                                 heartbeat_timeout=1.0))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        before = server_row(await service.status(), "alpha")
        os.kill(before["worker_pid"], signal.SIGSTOP)
        after = await service.wait_status(
            lambda status: server_row(status, "alpha")["worker_pid"] not in (None, before["worker_pid"])
            and server_row(status, "alpha")["state"] == "RUNNING", "a replacement for the stopped worker")
        assert "no heartbeat" in server_row(after, "alpha")["last_exit"]
        assert await _echo(service.socket_path("alpha"), "after hang") == "after hang"


async def test_writer_sigkill_reports_any_loss(tmp_path: Path, runtime_dir: Path, gateway_env, stderr_path,
                                                     write_service_config, audit_path) -> None:
    config = write_service_config(service_config(runtime_dir, [_upstream(tmp_path, gateway_env)], audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        path = service.socket_path("alpha")
        async with socket_session(path) as session:
            with anyio.fail_after(CALL_TIMEOUT):
                for index in range(20):
                    await session.call_tool("echo", {"text": f"before {index}"})
            writer_pid = (await service.status())["writer"]["pid"]
            os.kill(writer_pid, signal.SIGKILL)
            with anyio.fail_after(CALL_TIMEOUT):
                for index in range(20):
                    await session.call_tool("echo", {"text": f"during {index}"})
            status = await service.wait_status(
                lambda status: status["writer"]["state"] == "RUNNING" and status["writer"]["pid"] != writer_pid,
                "a new audit writer")
            assert status["writer"]["restarts"] == 1
            with anyio.fail_after(CALL_TIMEOUT):
                for index in range(20):
                    await session.call_tool("echo", {"text": f"after {index}"})
    events = read_json_events(audit_path)
    sequence = [event["seq"] for event in events if event.get("worker") == "alpha" and "seq" in event]
    assert len(sequence) == len(set(sequence)), "an event was written twice"
    missing = set(range(1, max(sequence) + 1)) - set(sequence)
    reported: set[int] = set()
    for gap in (event for event in events if event.get("event_type") == "AUDIT_GAP"):
        metadata = gap["plugin_metadata"]
        reported |= set(range(metadata["first_missing"], metadata["last_missing"] + 1))
    assert missing <= reported, f"events {sorted(missing - reported)} are missing without an AUDIT_GAP record"
    texts = [event.get("tool") for event in events if event.get("method") == "tools/call"
             and event["event_type"] == "RESPONSE"]
    assert len(texts) >= 40, "events sent after the writer restarted were not written"


async def test_crash_looping_upstream_reaches_fatal(tmp_path: Path, runtime_dir: Path, gateway_env, stderr_path,
                                                    write_service_config, audit_path) -> None:
    upstreams = [_upstream(tmp_path, gateway_env),
                 _upstream(tmp_path, gateway_env, "--mode", "exit-at-start", "--exit-message", "config file missing",
                           name="broken")]
    config = write_service_config(service_config(runtime_dir, upstreams, audit_path))
    # "broken" is RUNNING only for moments between its crashes, so only "alpha" is waited for.
    async with running_service(config, runtime_dir, gateway_env, stderr_path, wait_for=["alpha"]) as service:
        status = await service.wait_status(lambda status: server_row(status, "broken")["state"] == "FATAL",
                                           "the crash-looping server to reach FATAL")
        row = server_row(status, "broken")
        assert row["last_stderr"] == "config file missing"
        assert "gave up" in row["last_exit"]
        assert server_row(status, "alpha")["state"] == "RUNNING"
        assert await service.call("restart", {"name": "broken"}) == {"restarted": ["broken"]}
        await service.wait_status(lambda status: server_row(status, "broken")["restarts"] > row["restarts"],
                                  "a restart after the restart command")
        await service.wait_status(lambda status: server_row(status, "broken")["state"] == "FATAL",
                                  "FATAL again after the restart command")


async def test_restart_all_restarts_every_upstream(tmp_path: Path, runtime_dir: Path, gateway_env, stderr_path,
                                                   write_service_config, audit_path) -> None:
    upstreams = [_upstream(tmp_path, gateway_env), _upstream(tmp_path, gateway_env, name="beta")]
    config = write_service_config(service_config(runtime_dir, upstreams, audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        before = await service.status()
        assert await service.call("restart", {"all": True}) == {"restarted": ["alpha", "beta"]}
        for name in ("alpha", "beta"):
            old_pid = server_row(before, name)["upstream_pid"]
            await service.wait_status(
                lambda status, name=name, old_pid=old_pid: server_row(status, name)["state"] == "RUNNING"
                and server_row(status, name)["upstream_pid"] not in (None, old_pid),
                f"a new upstream for {name}")
        response = await service.request("restart", {"name": "missing"})
        assert response.error.code == "not_found"


async def test_worker_crash_loop_reaches_fatal(tmp_path: Path, runtime_dir: Path, gateway_env, stderr_path,
                                               write_service_config, audit_path) -> None:
    config = write_service_config(service_config(runtime_dir, [_upstream(tmp_path, gateway_env)], audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        killed: set[int] = set()
        for _ in range(FAST_RESTART["max_restarts"] + 1):
            status = await service.wait_status(
                lambda status: server_row(status, "alpha")["worker_pid"] not in (None, *killed)
                and server_row(status, "alpha")["state"] == "RUNNING", "a running worker to kill")
            worker_pid = server_row(status, "alpha")["worker_pid"]
            killed.add(worker_pid)
            os.kill(worker_pid, signal.SIGKILL)
        status = await service.wait_status(lambda status: server_row(status, "alpha")["state"] == "FATAL",
                                           "the worker given up")
        assert "SIGKILL" in server_row(status, "alpha")["last_exit"]
        assert server_row(status, "alpha")["worker_pid"] is None
        # A client of the given-up worker is disconnected at once rather than left waiting.
        reader, writer = await asyncio.open_unix_connection(service.socket_path("alpha"))
        assert await asyncio.wait_for(reader.read(), CALL_TIMEOUT) == b""
        writer.close()
        await service.call("restart", {"name": "alpha"})
        await service.wait_running(["alpha"])
        assert await _echo(service.socket_path("alpha"), "revived") == "revived"


async def test_commanded_restarts_never_fatal(tmp_path: Path, runtime_dir: Path, gateway_env, stderr_path,
                                              write_service_config, audit_path) -> None:
    config = write_service_config(service_config(runtime_dir, [_upstream(tmp_path, gateway_env)], audit_path))
    async with running_service(config, runtime_dir, gateway_env, stderr_path) as service:
        for count in range(1, FAST_RESTART["max_restarts"] + 3):
            await service.call("restart", {"name": "alpha"})
            status = await service.wait_status(
                lambda status, count=count: server_row(status, "alpha")["restarts"] >= count
                and server_row(status, "alpha")["state"] == "RUNNING", f"restart number {count}")
        assert server_row(status, "alpha")["state"] == "RUNNING"
