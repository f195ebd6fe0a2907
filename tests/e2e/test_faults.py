"""Watchgate against a misbehaving upstream and a misbehaving client.

The upstream is tests/servers/fault_server.py, which records every message it
receives, so the tests can check what did and did not reach it. Protocol edge
cases use the raw line driver, and the SDK client covers the ordinary flows.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest

from helpers.audit_log import events_of_type, read_json_events, wait_for_event
from helpers.configs import (
    FAST_SHUTDOWN,
    FAULT_SERVER_NAME,
    allowlist_entry,
    fault_server_config,
)
from helpers.environment import NPM_ENVIRONMENT
from helpers.paths import NODE_DIR
from helpers.processes import MARKER_VARIABLE
from helpers.raw_client import RawGateway, is_response
from helpers.records import (
    read_records,
    received_messages,
    received_requests,
    received_tool_calls,
    server_pids,
    upstream_id_of_call,
    wait_for_record,
)
from helpers.sdk_client import text_of
from helpers.waiting import wait_until
from servers.fault_server import repeated_text

pytestmark = pytest.mark.anyio

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
BLOCKED_BY_POLICY = -32001
UPSTREAM_UNAVAILABLE = -32002
UPSTREAM_EXITED = -32003
REQUEST_TIMED_OUT = -32004
MESSAGE_TOO_LARGE = -32005
SHUTTING_DOWN = -32007

TEST_DEADLINE = 90.0
# Bound for errors the gateway can send without waiting on the upstream.
PROMPT_TIMEOUT = 5.0
RECORD_WAIT = 10.0
AUDIT_WAIT = 10.0
RESTART_WAIT = 20.0
MIB = 1024 * 1024


@pytest.fixture
def record_path(tmp_path: Path) -> Path:
    return tmp_path / "record.jsonl"


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def fault_config_path(tmp_path: Path, test_id: str, config_file):
    """Return a factory writing a fault-server config (options as for fault_server_config) and returning its path."""

    def write(**options: Any) -> Path:
        return config_file(fault_server_config(tmp_path, test_id, **options))

    return write


@pytest.fixture
def fault_gateway(fault_config_path, raw_watchgate):
    """Return a factory: `async with fault_gateway(**config options) as gateway` runs Watchgate on the fault server."""

    @contextlib.asynccontextmanager
    async def start(**options: Any) -> AsyncIterator[RawGateway]:
        async with raw_watchgate(fault_config_path(**options)) as gateway:
            yield gateway

    return start


def error_of(response: dict[str, Any]) -> dict[str, Any]:
    assert "error" in response, f"expected an error response, got {response}"
    return response["error"]


def result_text(response: dict[str, Any]) -> str:
    assert "result" in response, f"expected a result, got {response}"
    return "".join(block.get("text", "") for block in response["result"]["content"])


def error_text(error: dict[str, Any]) -> str:
    """Return the error's message and data as one searchable string."""
    return error.get("message", "") + " " + json.dumps(error.get("data"))


async def echo_works(gateway: RawGateway, text: str = "still serving") -> None:
    response = await gateway.call_tool("echo", {"text": text})
    assert result_text(response) == text


# Large messages


@pytest.mark.parametrize("alphabet", ["abcdefghijklmnopqrstuvwxyz", "é€😀ж"], ids=["ascii", "multibyte"])
async def test_result_70_kib_intact(
    fault_config_path, watchgate_session, alphabet: str
) -> None:
    size = 70 * 1024
    with anyio.fail_after(TEST_DEADLINE):
        async with watchgate_session(fault_config_path()) as session:
            await session.initialize()
            result = await session.call_tool("big", {"size": size, "alphabet": alphabet})
    assert text_of(result) == repeated_text(alphabet, size)


async def test_result_20_mib_intact(fault_gateway) -> None:
    size = 20 * MIB
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway() as gateway:
            await gateway.initialize()
            response = await gateway.call_tool("big", {"size": size}, timeout=60.0)
            text = result_text(response)
            assert len(text) == size
            assert text == repeated_text("abcdefghijklmnopqrstuvwxyz", size)
            await echo_works(gateway)


async def test_request_over_max_message_bytes(fault_gateway, record_path: Path, audit_path: Path) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway(proxy={"max_message_bytes": MIB}) as gateway:
            await gateway.initialize()
            oversized_id = await gateway.send_request(
                "tools/call", {"name": "echo", "arguments": {"text": "x" * (2 * MIB)}}
            )
            error = error_of(await gateway.response(oversized_id, PROMPT_TIMEOUT))
            assert error["code"] == MESSAGE_TOO_LARGE

            await echo_works(gateway, "y" * (MIB // 2))
            await echo_works(gateway)

            forwarded = [len(call["message"]["params"]["arguments"]["text"]) for call in received_tool_calls(record_path, "echo")]
            assert max(forwarded) < MIB, "the oversized request reached the upstream"
            await wait_for_event(
                audit_path,
                lambda event: event["event_type"] == "ERROR" and event.get("error_code") == MESSAGE_TOO_LARGE,
                AUDIT_WAIT,
                "ERROR with error_code -32005",
            )


async def test_upstream_message_over_max_message_bytes(fault_gateway) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway(proxy={"max_message_bytes": MIB}) as gateway:
            await gateway.initialize()
            response = await gateway.call_tool("big", {"size": 2 * MIB}, timeout=RESTART_WAIT)
            assert error_of(response)["code"] == MESSAGE_TOO_LARGE
            response = await gateway.call_tool("echo", {"text": "after"}, timeout=RESTART_WAIT)
            assert result_text(response) == "after"


# Cancellation, concurrency and ids


async def test_cancel_reaches_upstream(fault_gateway, record_path: Path, audit_path: Path) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway() as gateway:
            await gateway.initialize()
            slow_id = await gateway.send_request("tools/call", {"name": "slow", "arguments": {"seconds": 60}})
            await wait_for_record(record_path, lambda r: r.get("event") == "slow_started", RECORD_WAIT, "slow_started")
            upstream_id = upstream_id_of_call(record_path, "slow")

            await gateway.notify("notifications/cancelled", {"requestId": slow_id, "reason": "test cancelled it"})

            cancelled = await wait_for_record(
                record_path,
                lambda r: r.get("message", {}).get("method") == "notifications/cancelled",
                RECORD_WAIT,
                "notifications/cancelled at the upstream",
            )
            assert cancelled["message"]["params"]["requestId"] == upstream_id
            await wait_for_record(
                record_path,
                lambda r: r.get("event") == "cancelled" and r.get("id") == upstream_id,
                RECORD_WAIT,
                "the upstream honouring the cancellation",
            )
            await echo_works(gateway)
            assert not [m for m in gateway.responses_for(slow_id) if "result" in m]
            await wait_for_event(
                audit_path,
                lambda e: e["event_type"] == "RESPONSE" and e.get("request_id") == str(slow_id),
                AUDIT_WAIT,
                "RESPONSE for the cancelled request",
            )
            response_event = events_of_type(read_json_events(audit_path), "RESPONSE", request_id=str(slow_id))[0]
            assert response_event["status"] == "cancelled"


async def test_slow_call_does_not_delay_fast(fault_gateway, record_path: Path) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway() as gateway:
            await gateway.initialize()
            slow_id = await gateway.send_request("tools/call", {"name": "slow", "arguments": {"seconds": 60}})
            await wait_for_record(record_path, lambda r: r.get("event") == "slow_started", RECORD_WAIT, "slow_started")

            started = time.monotonic()
            response = await gateway.call_tool("echo", {"text": "fast"}, timeout=PROMPT_TIMEOUT)
            assert result_text(response) == "fast"
            assert time.monotonic() - started < PROMPT_TIMEOUT
            assert not gateway.responses_for(slow_id)

            await gateway.notify("notifications/cancelled", {"requestId": slow_id})


async def test_client_ids_map_back(fault_gateway, record_path: Path) -> None:
    ids: list[Any] = ["alpha", 0, -5, 9007199254740993, "ünïcødé id", "1"]
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway() as gateway:
            await gateway.initialize()
            for request_id in ids:
                await gateway.send_request(
                    "tools/call", {"name": "echo", "arguments": {"text": f"id {request_id!r}"}}, request_id
                )
            for request_id in ids:
                response = await gateway.response(request_id, PROMPT_TIMEOUT)
                assert result_text(response) == f"id {request_id!r}"
                assert len(gateway.responses_for(request_id)) == 1
            # "1" and 1 are different ids: only the initialize response may carry the number 1.
            assert len(gateway.responses_for(1)) == 1
            assert "protocolVersion" in gateway.responses_for(1)[0]["result"]


async def test_many_concurrent_calls(fault_gateway) -> None:
    count = 40
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway() as gateway:
            await gateway.initialize()
            request_ids = [
                await gateway.send_request("tools/call", {"name": "echo", "arguments": {"text": f"call {n}"}})
                for n in range(count)
            ]
            for n, request_id in enumerate(request_ids):
                assert result_text(await gateway.response(request_id)) == f"call {n}"


async def test_duplicate_in_flight_id_rejected(fault_gateway, record_path: Path) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway() as gateway:
            await gateway.initialize()
            await gateway.send_request("tools/call", {"name": "slow", "arguments": {"seconds": 60}}, 99)
            await wait_for_record(record_path, lambda r: r.get("event") == "slow_started", RECORD_WAIT, "slow_started")

            await gateway.send_request("tools/call", {"name": "echo", "arguments": {"text": "duplicate"}}, 99)
            response = await gateway.response(99, PROMPT_TIMEOUT)
            assert "error" in response, f"a second in-flight request with id 99 was accepted: {response}"
            assert not received_tool_calls(record_path, "echo"), "the duplicate reached the upstream"

            await gateway.notify("notifications/cancelled", {"requestId": 99})
            await echo_works(gateway)


async def test_unknown_method_passes_upstream_error(fault_gateway, audit_path: Path) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway() as gateway:
            await gateway.initialize()
            request_id = await gateway.send_request("custom/unknown-method", {"x": 1})
            assert error_of(await gateway.response(request_id))["code"] == METHOD_NOT_FOUND
            await echo_works(gateway)
            event = await wait_for_event(
                audit_path,
                lambda e: e["event_type"] == "RESPONSE" and e.get("request_id") == str(request_id),
                AUDIT_WAIT,
                "RESPONSE for the unknown method",
            )
            assert event["status"] == "error"
            assert event.get("error_code") == METHOD_NOT_FOUND


# Policy


async def test_blocked_call_not_forwarded(fault_gateway, record_path: Path, audit_path: Path) -> None:
    block_message = "Blocked by the test policy"
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway(security=[allowlist_entry(["echo"], block_message)]) as gateway:
            await gateway.initialize()
            listed = await gateway.request("tools/list")
            assert [tool["name"] for tool in listed["result"]["tools"]] == ["echo"]

            blocked_id = await gateway.send_request("tools/call", {"name": "slow", "arguments": {"seconds": 1}})
            error = error_of(await gateway.response(blocked_id, PROMPT_TIMEOUT))
            assert error["code"] == BLOCKED_BY_POLICY
            assert error["message"] == block_message
            assert error["data"]["plugin"] == "tool_allowlist"
            assert "slow" in error["data"]["reason"]

            await echo_works(gateway)
            assert not received_tool_calls(record_path, "slow")
            block = await wait_for_event(
                audit_path, lambda e: e["event_type"] == "SECURITY_BLOCK", AUDIT_WAIT, "SECURITY_BLOCK"
            )
            assert block["tool"] == "slow"
            assert block["request_id"] == str(blocked_id)
            assert block["server_name"] == FAULT_SERVER_NAME


# Server-to-client traffic


async def test_server_requests_reach_client(
    fault_config_path, watchgate_session, record_path: Path
) -> None:
    roots = [types.Root(uri="file:///tmp/fault-root", name="fault root")]

    async def list_roots(context: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=roots)

    async def sample(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = params.messages[0].content.text
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"sampled: {prompt}"), model="test-model"
        )

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": f"answer to {params.message}"})

    with anyio.fail_after(TEST_DEADLINE):
        async with watchgate_session(
            fault_config_path(),
            list_roots_callback=list_roots,
            sampling_callback=sample,
            elicitation_callback=elicit,
        ) as session:
            await session.initialize()
            roots_result = json.loads(text_of(await session.call_tool("ask_roots", {})))
            sampling_result = json.loads(text_of(await session.call_tool("ask_sampling", {"prompt": "ping?"})))
            elicitation_result = json.loads(
                text_of(await session.call_tool("ask_elicitation", {"message": "your name"}))
            )

    assert roots_result["roots"] == [{"uri": "file:///tmp/fault-root", "name": "fault root"}]
    assert sampling_result["content"] == {"type": "text", "text": "sampled: ping?"}
    assert elicitation_result == {"action": "accept", "content": {"name": "answer to your name"}}
    responses = [record for record in read_records(record_path) if record.get("event") == "client_response"]
    assert [response["id"] for response in responses] == [f"server-request-{n}" for n in (1, 2, 3)]
    assert not [record for record in read_records(record_path) if record.get("event") == "unexpected_response"]


async def test_client_error_response_reaches_upstream(
    fault_config_path, watchgate_session, record_path: Path
) -> None:
    # Without a roots callback the SDK client responds to roots/list with an error.
    with anyio.fail_after(TEST_DEADLINE):
        async with watchgate_session(fault_config_path()) as session:
            await session.initialize()
            result = await session.call_tool("ask_roots", {})
    assert result.is_error
    responses = [record for record in read_records(record_path) if record.get("event") == "client_response"]
    assert len(responses) == 1
    assert responses[0]["id"] == "server-request-1"
    assert "error" in responses[0]["response"]
    assert isinstance(responses[0]["response"]["error"]["code"], int)


async def test_server_notifications_reach_client(
    fault_config_path, watchgate_session
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []
    log_messages: list[Any] = []
    notifications: list[str] = []
    list_changed = anyio.Event()

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        log_messages.append(params.data)

    async def on_message(message: Any) -> None:
        if not isinstance(message, Exception):
            notifications.append(message.method)
            if message.method == "notifications/tools/list_changed":
                list_changed.set()

    with anyio.fail_after(TEST_DEADLINE):
        async with watchgate_session(fault_config_path(), logging_callback=on_log, message_handler=on_message) as session:
            await session.initialize()
            result = await session.call_tool("notify", {"steps": 3}, progress_callback=on_progress)
            with anyio.fail_after(PROMPT_TIMEOUT):
                await list_changed.wait()

    assert text_of(result) == "sent 3 progress notifications"
    assert progress == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert log_messages == ["notify tool called"]
    assert "notifications/tools/list_changed" in notifications


async def test_resource_pagination_passes_cursors(
    fault_config_path, watchgate_session
) -> None:
    pages: list[list[str]] = []
    cursors: list[str | None] = []
    with anyio.fail_after(TEST_DEADLINE):
        async with watchgate_session(fault_config_path()) as session:
            await session.initialize()
            cursor = None
            while True:
                params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                page = await session.list_resources(params=params)
                pages.append([str(resource.uri) for resource in page.resources])
                cursor = page.next_cursor
                cursors.append(cursor)
                if not cursor:
                    break
    assert [len(page) for page in pages] == [3, 3, 2]
    assert cursors == ["3", "6", None]
    assert [uri for page in pages for uri in page] == [f"fault://resource/{n}" for n in range(8)]


async def test_garbage_from_upstream_not_forwarded(fault_gateway) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway() as gateway:
            await gateway.initialize()
            garbage_id = await gateway.send_request("tools/call", {"name": "garbage", "arguments": {}})
            await gateway.response(garbage_id, RESTART_WAIT)
            response = await gateway.call_tool("echo", {"text": "after garbage"}, timeout=RESTART_WAIT)
            assert result_text(response) == "after garbage"
        # Leaving raw_watchgate asserted that every line the gateway wrote was a JSON object.


# Upstream crashes and restarts


async def test_crash_mid_call_restarts_upstream(
    fault_gateway, tmp_path: Path, record_path: Path, audit_path: Path
) -> None:
    variant = ("--state", str(tmp_path / "starts"), "--tools-variant", "by-start")
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway(server_arguments=variant) as gateway:
            initialize = await gateway.initialize(client_name="crash-test-client")
            assert "result" in initialize
            listed = await gateway.request("tools/list")
            assert "variant_1" in [tool["name"] for tool in listed["result"]["tools"]]

            slow_id = await gateway.send_request("tools/call", {"name": "slow", "arguments": {"seconds": 60}})
            await wait_for_record(record_path, lambda r: r.get("event") == "slow_started", RECORD_WAIT, "slow_started")
            first_pid = server_pids(record_path)[0]
            after_crash = len(gateway.messages)
            started = time.monotonic()
            crash_id = await gateway.send_request("tools/call", {"name": "crash", "arguments": {"exit_code": 3}})

            crash_error = error_of(await gateway.response(crash_id, PROMPT_TIMEOUT))
            slow_error = error_of(await gateway.response(slow_id, PROMPT_TIMEOUT))
            assert time.monotonic() - started < PROMPT_TIMEOUT
            assert crash_error["code"] == UPSTREAM_EXITED
            assert slow_error["code"] == UPSTREAM_EXITED

            await gateway.notification("notifications/tools/list_changed", RESTART_WAIT, start=after_crash)
            listed = await gateway.request("tools/list", timeout=RESTART_WAIT)
            names = [tool["name"] for tool in listed["result"]["tools"]]
            assert "variant_2" in names
            assert "variant_1" not in names
            await echo_works(gateway, "after the restart")

    pids = server_pids(record_path)
    assert len(pids) == 2
    assert pids[0] == first_pid
    second = [record["message"] for record in received_messages(record_path) if record["pid"] == pids[1]]
    assert second[0]["method"] == "initialize"
    assert second[0]["params"]["clientInfo"]["name"] == "crash-test-client"
    assert second[1]["method"] == "notifications/initialized"
    first_initialize = received_requests(record_path, "initialize")[0]["message"]
    assert second[0]["params"] == first_initialize["params"]

    events = read_json_events(audit_path)
    exits = events_of_type(events, "UPSTREAM_EXIT")
    assert len(exits) == 1
    assert exits[0]["exit_code"] == 3
    assert exits[0]["server_name"] == FAULT_SERVER_NAME


async def test_request_during_restart_waits(fault_gateway, record_path: Path) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway() as gateway:
            await gateway.initialize()
            crash_id = await gateway.send_request("tools/call", {"name": "crash", "arguments": {}})
            assert error_of(await gateway.response(crash_id, PROMPT_TIMEOUT))["code"] == UPSTREAM_EXITED
            # Sent while the upstream restarts: it waits for the replayed initialize, then runs.
            response = await gateway.call_tool("echo", {"text": "queued during the restart"}, timeout=RESTART_WAIT)
            assert result_text(response) == "queued during the restart"
    pids = server_pids(record_path)
    assert len(pids) == 2
    second = [record["message"] for record in received_messages(record_path) if record["pid"] == pids[1]]
    assert [message.get("method") for message in second[:3]] == ["initialize", "notifications/initialized", "tools/call"]


async def test_upstream_that_always_crashes_gives_up(fault_gateway) -> None:
    restart = {"backoff_initial": 0.1, "backoff_max": 0.2, "max_restarts": 2, "restart_window": 60.0}
    codes = []
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway(server_arguments=("--mode", "crash-on-call"), upstream={"restart": restart}) as gateway:
            await gateway.initialize()
            for _ in range(8):
                response = await gateway.call_tool("echo", {"text": "crash please"}, timeout=RESTART_WAIT)
                codes.append(error_of(response)["code"])
                if codes[-1] == UPSTREAM_UNAVAILABLE:
                    break
    assert set(codes) <= {UPSTREAM_EXITED, UPSTREAM_UNAVAILABLE}
    assert codes[-1] == UPSTREAM_UNAVAILABLE, f"never reported the upstream as unavailable: {codes}"


async def test_stderr_flood_before_response(fault_gateway) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway() as gateway:
            await gateway.initialize()
            response = await gateway.call_tool("stderr_flood", {"bytes": MIB}, timeout=RESTART_WAIT)
            assert result_text(response) == f"wrote {MIB} bytes to stderr"
            await echo_works(gateway)


async def test_request_timeout_cancels_upstream(fault_gateway, record_path: Path) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway(upstream={"request_timeout": 1.0}) as gateway:
            await gateway.initialize()
            started = time.monotonic()
            response = await gateway.call_tool("slow", {"seconds": 60}, timeout=1.0 + PROMPT_TIMEOUT)
            assert error_of(response)["code"] == REQUEST_TIMED_OUT
            assert time.monotonic() - started >= 0.9

            upstream_id = upstream_id_of_call(record_path, "slow")
            cancelled = await wait_for_record(
                record_path,
                lambda r: r.get("message", {}).get("method") == "notifications/cancelled",
                RECORD_WAIT,
                "notifications/cancelled at the upstream",
            )
            assert cancelled["message"]["params"]["requestId"] == upstream_id
            await echo_works(gateway)
            assert len(server_pids(record_path)) == 1, "the upstream was restarted instead of kept running"


# Startup failures


async def test_silent_upstream_times_out(fault_gateway) -> None:
    startup_timeout = 2.0
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway(
            server_arguments=("--mode", "never-answer"), upstream={"startup_timeout": startup_timeout}
        ) as gateway:
            started = time.monotonic()
            response = await gateway.initialize()
            elapsed = time.monotonic() - started
            error = error_of(response)
            # Either "upstream unavailable" (it never became ready) or "request timed out" fits.
            assert error["code"] in {UPSTREAM_UNAVAILABLE, REQUEST_TIMED_OUT}
            assert FAULT_SERVER_NAME in error_text(error)
            assert elapsed < startup_timeout + PROMPT_TIMEOUT


async def test_upstream_exiting_at_start_reported(fault_gateway) -> None:
    reason = "fault_server: configuration file /nowhere/x.conf missing"
    arguments = ("--mode", "exit-at-start", "--exit-code", "7", "--exit-message", reason)
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway(server_arguments=arguments) as gateway:
            response = await gateway.initialize()
            error = error_of(response)
            # The initialize may have been forwarded before the exit was noticed.
            assert error["code"] in {UPSTREAM_UNAVAILABLE, UPSTREAM_EXITED}
            text = error_text(error)
            assert FAULT_SERVER_NAME in text
            assert reason in text or "7" in text, f"the error gives no reason: {error}"


async def test_nonexistent_command_reported(fault_gateway) -> None:
    command = "/nonexistent/watchgate-test-missing-server"
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway(upstream={"command": [command, "--flag"]}) as gateway:
            response = await gateway.initialize()
            error = error_of(response)
            assert error["code"] == UPSTREAM_UNAVAILABLE
            assert command in error_text(error)


# Invalid input from the client

MALFORMED_INPUTS = [
    pytest.param(b'{"jsonrpc": "2.0", "id": 41, "method": "ping"', PARSE_ERROR, {None, 41}, id="truncated-json"),
    pytest.param(
        b'{"jsonrpc": "2.0", "id": 42, "method": "ping", "params": {"text": "\xff\xfe"}}',
        PARSE_ERROR,
        {None, 42},
        id="invalid-utf8",
    ),
    pytest.param(b"42", INVALID_REQUEST, {None}, id="number"),
    pytest.param(b'"ping"', INVALID_REQUEST, {None}, id="string"),
    pytest.param(b"null", INVALID_REQUEST, {None}, id="null"),
    pytest.param(b'[{"jsonrpc": "2.0", "id": 43, "method": "ping"}]', INVALID_REQUEST, {None}, id="batch"),
    pytest.param(b"[]", INVALID_REQUEST, {None}, id="empty-batch"),
    pytest.param(b'{"id": 44, "method": "ping"}', INVALID_REQUEST, {44}, id="missing-jsonrpc"),
    pytest.param(b'{"jsonrpc": "1.0", "id": 45, "method": "ping"}', INVALID_REQUEST, {45}, id="wrong-version"),
    pytest.param(b'{"jsonrpc": "2.0", "id": 46, "method": 7}', INVALID_REQUEST, {46}, id="method-not-string"),
    pytest.param(b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}', INVALID_REQUEST, {None}, id="object-id"),
]


@pytest.mark.parametrize(("line", "code", "acceptable_ids"), MALFORMED_INPUTS)
async def test_malformed_input_rejected(
    fault_gateway, record_path: Path, audit_path: Path, line: bytes, code: int, acceptable_ids: set[Any]
) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway() as gateway:
            await gateway.initialize()
            before = len(gateway.messages)
            await gateway.send_bytes(line)
            response = await gateway.wait_for(
                lambda m: is_response(m) and "error" in m and m.get("id") in acceptable_ids,
                PROMPT_TIMEOUT,
                f"an error response with an id in {acceptable_ids}",
                start=before,
            )
            assert response["error"]["code"] == code
            assert response.get("jsonrpc") == "2.0"

            ping = await gateway.request("ping", timeout=PROMPT_TIMEOUT)
            assert ping.get("result") == {}
            await echo_works(gateway)

            error_event = await wait_for_event(audit_path, lambda e: e["event_type"] == "ERROR", AUDIT_WAIT, "ERROR")
            assert error_event.get("error_code") == code

    received = received_messages(record_path)
    assert not [record for record in read_records(record_path) if "invalid" in record]
    assert all(record["message"].get("jsonrpc") == "2.0" for record in received)
    assert not [record for record in received if record["message"].get("id") in {41, 42, 43, 44, 45, 46}]


# Shutdown


async def wait_gone(pids: list[int], timeout: float) -> None:
    def all_gone() -> bool:
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                continue
        return True

    await wait_until(all_gone, timeout, f"processes {pids} to exit")


@pytest.mark.parametrize("ending", ["client-eof", "sigterm"])
async def test_shutdown_stops_upstream(fault_gateway, record_path: Path, ending: str) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway() as gateway:
            await gateway.initialize()
            await echo_works(gateway)
            upstream_pid = server_pids(record_path)[0]
            started = time.monotonic()
            if ending == "client-eof":
                status = await gateway.close()
            else:
                gateway.send_signal(signal.SIGTERM)
                status = await gateway.wait_exit()
                await gateway.finish_reading()
            assert status == 0
            # The fault server exits as soon as its stdin closes, so no stop wait should run out.
            assert time.monotonic() - started < FAST_SHUTDOWN["shutdown_grace"] + PROMPT_TIMEOUT
            await wait_gone([upstream_pid], PROMPT_TIMEOUT)
    # The stop sequence starts by closing the upstream's stdin, and the fault server exits on that EOF at once.
    events = [record.get("event") for record in read_records(record_path)]
    assert "stdin_closed" in events, f"the upstream never saw its stdin close; its events: {events}"
    assert "signal" not in events, f"the upstream got SIGTERM although it exits on stdin EOF; its events: {events}"


async def test_sigterm_fails_in_flight_request(fault_gateway, record_path: Path) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        async with fault_gateway() as gateway:
            await gateway.initialize()
            slow_id = await gateway.send_request("tools/call", {"name": "slow", "arguments": {"seconds": 60}})
            await wait_for_record(record_path, lambda r: r.get("event") == "slow_started", RECORD_WAIT, "slow_started")
            gateway.send_signal(signal.SIGTERM)
            status = await gateway.wait_exit()
            await gateway.finish_reading()
            assert status == 0
            responses = gateway.responses_for(slow_id)
            assert len(responses) == 1, f"the in-flight request got {len(responses)} responses before exit"
            assert error_of(responses[0])["code"] == SHUTTING_DOWN


@pytest.mark.npm
@pytest.mark.usefixtures("npm_servers")
@pytest.mark.parametrize("ending", ["client-eof", "sigterm"])
async def test_shutdown_stops_npx_filesystem_server(
    test_id: str, config_file, raw_watchgate, sandbox_home: Path, ending: str
) -> None:
    config_path = config_file(
        {
            "proxy": {
                "transport": "stdio",
                "upstream": {
                    "command": "npx @modelcontextprotocol/server-filesystem ~/claude-sandbox/",
                    "cwd": str(NODE_DIR),
                    "env": {MARKER_VARIABLE: test_id, **NPM_ENVIRONMENT},
                },
            },
            "plugins": {"security": [allowlist_entry(["list_directory"])]},
        },
    )
    with anyio.fail_after(TEST_DEADLINE):
        async with raw_watchgate(config_path) as gateway:
            initialize = await gateway.initialize()
            assert "result" in initialize, initialize
            response = await gateway.call_tool("list_directory", {"path": str(sandbox_home / "claude-sandbox")})
            assert "[FILE] readme.txt" in result_text(response)

            descendants = psutil.Process(gateway.pid).children(recursive=True)
            commands = [" ".join(process.cmdline()) for process in descendants]
            assert any("server-filesystem" in command for command in commands), commands
            if ending == "client-eof":
                status = await gateway.close()
            else:
                gateway.send_signal(signal.SIGTERM)
                status = await gateway.wait_exit()
                await gateway.finish_reading()
            assert status == 0
            await wait_gone([process.pid for process in descendants], PROMPT_TIMEOUT)
