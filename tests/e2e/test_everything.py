"""The reference "everything" MCP server, directly and through Watchgate: the client must see the same.

One scenario exercises progress, logging, sampling, elicitation, roots,
resource subscriptions, prompts, completions and resource listing. It runs
once against `npx @modelcontextprotocol/server-everything stdio` and once
against Watchgate (tool_allowlist in allow_all mode) running that same
command, and each test compares one feature of the two runs.

The pinned server returns every resource list in one page, so cursor
forwarding is tested with the fault server in test_faults.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.session import ClientSession

from helpers import processes
from helpers.audit_log import events_of_type, read_json_events
from helpers.configs import FAST_SHUTDOWN, allow_all_entry, audit_entry, write_config
from helpers.environment import NPM_ENVIRONMENT, NPMRC
from helpers.paths import NODE_DIR, npm_servers_missing_reason
from helpers.sdk_client import gateway_session, open_session, text_of

pytestmark = [
    pytest.mark.npm,
    # The scenario uses logging/setLevel and resources/subscribe, which the SDK marks deprecated.
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

EVERYTHING_COMMAND = ["npx", "@modelcontextprotocol/server-everything", "stdio"]
CLIENT_NAME = "everything-comparison"
ROOTS = [types.Root(uri="file:///tmp/watchgate-test-root", name="test root")]
SAMPLED_TEXT = "A sampled answer from the test client."
ELICITED_CONTENT = {"name": "Ada", "check": True, "integer": 7}
STEP_TIMEOUT = 20.0
SCENARIO_TIMEOUT = 150.0
LEFTOVER_EXIT_TIMEOUT = 15.0
FAILED_PREFIX = "step failed: "
ROOTS_LOG_TEXT = "Roots updated: 1 root(s) received from client"
SUBSCRIBED_URI = "demo://resource/static/document/features.md"
SIMULATED_LOG_TEXT = re.compile(r"^[A-Za-z]+[- ]level[- ]message")
# Dynamic resources of the everything server embed the wall-clock time they were made.
CREATION_TIME = re.compile(r"created at \d{1,2}:\d{2}:\d{2}\s?[AP]M")


class Recorder:
    """Everything the server sent to the client outside of responses."""

    def __init__(self) -> None:
        self.notification_methods: list[str] = []
        self.log_messages: list[dict[str, Any]] = []
        self.updated_uris: list[str] = []
        self.sampling_requests: list[dict[str, Any]] = []
        self.elicitation_requests: list[dict[str, Any]] = []
        self.roots_requests = 0
        self.changed = anyio.Event()

    def signal(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, check: Callable[[], bool], description: str) -> None:
        with anyio.move_on_after(STEP_TIMEOUT) as scope:
            while not check():
                await self.changed.wait()
        if scope.cancelled_caught:
            raise AssertionError(f"timed out after {STEP_TIMEOUT} s waiting for {description}")

    async def on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            self.notification_methods.append(f"exception: {type(message).__name__}")
        else:
            self.notification_methods.append(message.method)
            if isinstance(message, types.ResourceUpdatedNotification):
                self.updated_uris.append(str(message.params.uri))
        self.signal()

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.log_messages.append({"level": params.level, "logger": params.logger, "data": params.data})
        self.signal()

    async def on_sampling(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.sampling_requests.append(params.model_dump(mode="json", by_alias=True, exclude_none=True))
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=SAMPLED_TEXT), model="test-model"
        )

    async def on_elicitation(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicitation_requests.append(params.model_dump(mode="json", by_alias=True, exclude_none=True))
        return types.ElicitResult(action="accept", content=ELICITED_CONTENT)

    async def on_list_roots(self, context: Any) -> types.ListRootsResult:
        self.roots_requests += 1
        return types.ListRootsResult(roots=ROOTS)


def dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def run_scenario(session: ClientSession, recorder: Recorder) -> dict[str, Any]:
    """Exercise every feature and return what the client observed, keyed by feature."""
    observed: dict[str, Any] = {}

    async def step(name: str, action: Callable[[], Awaitable[Any]]) -> None:
        try:
            with anyio.fail_after(STEP_TIMEOUT):
                observed[name] = await action()
        except Exception as error:  # noqa: BLE001 - one broken feature must not hide the others
            observed[name] = f"{FAILED_PREFIX}{type(error).__name__}: {error}"

    async def initialize() -> Any:
        result = await session.initialize()
        return {
            "protocol_version": result.protocol_version,
            "server_info": dump(result.server_info),
            "capabilities": dump(result.capabilities),
            "instructions": result.instructions,
        }

    async def roots_and_logging() -> Any:
        # The server requests the roots right after initialization and logs how many it received.
        await recorder.wait_for(
            lambda: any(message["data"] == ROOTS_LOG_TEXT for message in recorder.log_messages), "roots log message"
        )
        result = await session.call_tool("get-roots-list", {})
        return {"roots_requests": recorder.roots_requests, "tool_text": text_of(result)}

    async def tools() -> Any:
        result = await session.list_tools()
        return sorted((dump(tool) for tool in result.tools), key=lambda tool: tool["name"])

    async def progress() -> Any:
        updates: list[tuple[float, float | None, str | None]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            updates.append((value, total, message))

        result = await session.call_tool(
            "trigger-long-running-operation", {"duration": 0.4, "steps": 4}, progress_callback=on_progress
        )
        return {"updates": updates, "result": dump(result)}

    async def sampling() -> Any:
        result = await session.call_tool("trigger-sampling-request", {"prompt": "Say hello", "maxTokens": 20})
        return {"requests": recorder.sampling_requests, "result": dump(result)}

    async def elicitation() -> Any:
        result = await session.call_tool("trigger-elicitation-request", {})
        return {"requests": recorder.elicitation_requests, "result": dump(result)}

    async def simple_tools() -> Any:
        return {
            "echo": dump(await session.call_tool("echo", {"message": "héllo through the gateway"})),
            "get-sum": dump(await session.call_tool("get-sum", {"a": 2, "b": 40})),
            "get-structured-content": dump(await session.call_tool("get-structured-content", {"location": "New York"})),
            "get-tiny-image": dump(await session.call_tool("get-tiny-image", {})),
        }

    async def logging() -> Any:
        await session.set_logging_level("debug")
        before = len(recorder.log_messages)
        started = text_of(await session.call_tool("toggle-simulated-logging", {}))
        await recorder.wait_for(
            lambda: any(SIMULATED_LOG_TEXT.match(str(m["data"])) for m in recorder.log_messages[before:]),
            "a simulated log message",
        )
        stopped = text_of(await session.call_tool("toggle-simulated-logging", {}))
        simulated = [m for m in recorder.log_messages[before:] if SIMULATED_LOG_TEXT.match(str(m["data"]))]
        # The level is random, but the shape is fixed.
        return {
            "started": started,
            "stopped": stopped,
            "simulated_shape": sorted({(type(m["data"]).__name__, m["logger"]) for m in simulated}),
        }

    async def subscription() -> Any:
        await session.subscribe_resource(SUBSCRIBED_URI)
        started = text_of(await session.call_tool("toggle-subscriber-updates", {}))
        await recorder.wait_for(lambda: SUBSCRIBED_URI in recorder.updated_uris, "resources/updated")
        stopped = text_of(await session.call_tool("toggle-subscriber-updates", {}))
        await session.unsubscribe_resource(SUBSCRIBED_URI)
        acknowledgements = [m["data"] for m in recorder.log_messages if "Subscribe Resource request" in str(m["data"])]
        return {"started": started, "stopped": stopped, "updated": sorted(set(recorder.updated_uris)), "logs": acknowledgements}

    async def prompts() -> Any:
        listed = await session.list_prompts()
        return {
            "list": sorted((dump(prompt) for prompt in listed.prompts), key=lambda prompt: prompt["name"]),
            "simple": dump(await session.get_prompt("simple-prompt")),
            "args": dump(await session.get_prompt("args-prompt", {"city": "Paris", "state": "Texas"})),
            "resource": dump(await session.get_prompt("resource-prompt", {"resourceType": "Text", "resourceId": "2"})),
        }

    async def completion() -> Any:
        reference = types.PromptReference(type="ref/prompt", name="completable-prompt")
        departments = await session.complete(reference, {"name": "department", "value": "S"})
        names = await session.complete(reference, {"name": "name", "value": ""}, {"department": "Sales"})
        return {"departments": dump(departments), "names": dump(names)}

    async def resources() -> Any:
        pages = []
        cursor = None
        while True:
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_resources(params=params)
            pages.append(dump(page))
            cursor = page.next_cursor
            if not cursor:
                break
        templates = await session.list_resource_templates()
        first_uri = pages[0]["resources"][0]["uri"]
        return {
            "pages": pages,
            "templates": dump(templates),
            "static": dump(await session.read_resource(first_uri)),
            "dynamic": dump(await session.read_resource("demo://resource/dynamic/text/3")),
        }

    async def ping() -> Any:
        return dump(await session.send_ping())

    await step("initialize", initialize)
    await step("roots", roots_and_logging)
    await step("tools", tools)
    await step("progress", progress)
    await step("sampling", sampling)
    await step("elicitation", elicitation)
    await step("simple_tools", simple_tools)
    await step("logging", logging)
    await step("subscription", subscription)
    await step("prompts", prompts)
    await step("completion", completion)
    await step("resources", resources)
    await step("ping", ping)
    observed["notification_methods"] = sorted(set(recorder.notification_methods))
    return observed


def without_times(value: Any) -> Any:
    """Return `value` with every embedded creation time replaced by a placeholder."""
    if isinstance(value, str):
        return CREATION_TIME.sub("created at <time>", value)
    if isinstance(value, list | tuple):
        return [without_times(item) for item in value]
    if isinstance(value, dict):
        return {key: without_times(item) for key, item in value.items()}
    return value


def session_options(recorder: Recorder) -> dict[str, Any]:
    return {
        "client_name": CLIENT_NAME,
        "message_handler": recorder.on_message,
        "logging_callback": recorder.on_log,
        "sampling_callback": recorder.on_sampling,
        "elicitation_callback": recorder.on_elicitation,
        "list_roots_callback": recorder.on_list_roots,
    }


async def observe_direct(env: dict[str, str], stderr_path: Path) -> dict[str, Any]:
    recorder = Recorder()
    with anyio.fail_after(SCENARIO_TIMEOUT):
        async with open_session(
            EVERYTHING_COMMAND[0], EVERYTHING_COMMAND[1:], env, NODE_DIR, stderr_path, **session_options(recorder)
        ) as session:
            return await run_scenario(session, recorder)


async def observe_through_gateway(
    config_path: Path, env: dict[str, str], stderr_path: Path
) -> dict[str, Any]:
    recorder = Recorder()
    with anyio.fail_after(SCENARIO_TIMEOUT):
        async with gateway_session(config_path, env, NODE_DIR, stderr_path, **session_options(recorder)) as session:
            return await run_scenario(session, recorder)


def fail_on_leftovers(marker: str) -> None:
    leftovers = processes.wait_for_exit(processes.find_test_processes(marker), LEFTOVER_EXIT_TIMEOUT)
    if leftovers:
        descriptions = [processes.describe(process) for process in leftovers]
        processes.kill(leftovers, 5.0)
        pytest.fail("processes left running after the everything scenario:\n  " + "\n  ".join(descriptions))


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the scenario directly and through Watchgate once for the whole module."""
    reason = npm_servers_missing_reason()
    if reason is not None:
        pytest.skip(reason)

    directory = tmp_path_factory.mktemp("everything")
    home = directory / "home"
    home.mkdir()
    (home / ".npmrc").write_text(NPMRC, encoding="utf-8")
    runtime_dir = directory / "run"
    runtime_dir.mkdir()
    marker = f"everything-{directory.name}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "WATCHGATE_RUNTIME_DIR": str(runtime_dir),
        processes.MARKER_VARIABLE: marker,
        **NPM_ENVIRONMENT,
    }

    audit_path = directory / "audit.log"
    config_path = write_config(
        directory / "watchgate.yaml",
        {
            "proxy": {
                "transport": "stdio",
                "upstream": {
                    "name": "everything",
                    "command": EVERYTHING_COMMAND,
                    "cwd": str(NODE_DIR),
                    "env": {processes.MARKER_VARIABLE: marker, **NPM_ENVIRONMENT},
                    **FAST_SHUTDOWN,
                },
            },
            "plugins": {"security": [allow_all_entry()], "auditing": [audit_entry(audit_path)]},
        },
    )

    direct = anyio.run(observe_direct, env, directory / "direct.stderr")
    fail_on_leftovers(marker)
    proxied = anyio.run(observe_through_gateway, config_path, env, directory / "watchgate.stderr")
    fail_on_leftovers(marker)

    stderr_text = (directory / "watchgate.stderr").read_text(encoding="utf-8", errors="replace")
    return {"direct": direct, "proxied": proxied, "audit_path": audit_path, "gateway_stderr": stderr_text}


FEATURES = [
    "initialize",
    "roots",
    "tools",
    "progress",
    "sampling",
    "elicitation",
    "simple_tools",
    "logging",
    "subscription",
    "prompts",
    "completion",
    "resources",
    "ping",
    "notification_methods",
]


@pytest.mark.parametrize("feature", FEATURES)
def test_everything_same_through_gateway(comparison: dict[str, Any], feature: str) -> None:
    direct = without_times(comparison["direct"][feature])
    proxied = without_times(comparison["proxied"][feature])
    assert not (isinstance(direct, str) and direct.startswith(FAILED_PREFIX)), f"direct run failed: {direct}"
    assert proxied == direct, (
        f"{feature} differs through Watchgate\n direct:  {json.dumps(direct, sort_keys=True)[:3000]}\n"
        f" gateway: {json.dumps(proxied, sort_keys=True)[:3000]}\n"
        f"gateway stderr tail:\n{comparison['gateway_stderr'][-3000:]}"
    )


def test_everything_direct_run_saw_features(comparison: dict[str, Any]) -> None:
    """Guard against a vacuous comparison: the direct run itself exercised each feature."""
    direct = comparison["direct"]
    assert [update[0] for update in direct["progress"]["updates"]] == [1, 2, 3, 4]
    assert direct["roots"]["roots_requests"] >= 1
    assert "file:///tmp/watchgate-test-root" in direct["roots"]["tool_text"]
    assert len(direct["sampling"]["requests"]) == 1
    assert SAMPLED_TEXT in direct["sampling"]["result"]["content"][0]["text"]
    assert len(direct["elicitation"]["requests"]) == 1
    assert "Ada" in json.dumps(direct["elicitation"]["result"])
    assert direct["subscription"]["updated"] == [SUBSCRIBED_URI]
    assert direct["logging"]["simulated_shape"] == [("str", None)]
    assert {"notifications/message", "notifications/resources/updated"} <= set(direct["notification_methods"])
    assert direct["completion"]["departments"]["completion"]["values"] == ["Sales", "Support"]
    assert direct["completion"]["names"]["completion"]["values"] == ["David", "Eve", "Frank"]
    assert len(direct["resources"]["pages"][0]["resources"]) >= 1


def test_everything_audit_log(comparison: dict[str, Any]) -> None:
    events = read_json_events(comparison["audit_path"])
    calls = events_of_type(events, "REQUEST", method="tools/call")
    called_tools = {event.get("tool") for event in calls}
    assert {"trigger-long-running-operation", "trigger-sampling-request", "get-roots-list", "echo"} <= called_tools
    for event in calls:
        assert event["status"] == "ALLOWED"
        assert event["server_name"] == "everything"
        assert event["client_name"] == CLIENT_NAME
    responses = events_of_type(events, "RESPONSE")
    assert {event["request_id"] for event in calls} <= {event["request_id"] for event in responses}
    assert not events_of_type(events, "SECURITY_BLOCK")
