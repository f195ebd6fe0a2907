"""The Shim class in this process: giving up on reconnect, oversized lines and close()."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket

import pytest
from helpers.waiting import wait_until
from shim_fakes import HOLD_METHOD, initialize_request, request

from watchgate.protocol.jsonrpc import ErrorCode
from watchgate.shim import EXIT_FAILURE, EXIT_OK, Shim, connect_socket

RUN_TIMEOUT = 20.0
OUTPUT_TIMEOUT = 10.0


class CollectingWriter:
    """A stdout stand-in that keeps every line written."""

    def __init__(self):
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    def messages(self) -> list[dict]:
        return [json.loads(line) for line in bytes(self.data).splitlines()]


def feed(reader: asyncio.StreamReader, *messages: dict) -> None:
    for message in messages:
        reader.feed_data(json.dumps(message).encode() + b"\n")


def test_gives_up_after_reconnect_timeout(fake_worker, caplog):
    async def scenario() -> tuple[int, list[dict]]:
        fake_worker.start()
        reader, writer = asyncio.StreamReader(), CollectingWriter()
        shim = Shim(str(fake_worker.path), reader, writer, reconnect_timeout=0.5)
        run = asyncio.create_task(shim.run(connect_socket(str(fake_worker.path))))
        connection = await asyncio.to_thread(fake_worker.next_connection)
        feed(reader, initialize_request(0), request(1, HOLD_METHOD))
        await wait_until(lambda: len(connection.raw_lines) == 2, OUTPUT_TIMEOUT, "two lines at the worker")
        fake_worker.kill()
        code = await asyncio.wait_for(run, RUN_TIMEOUT)
        return code, writer.messages()

    with caplog.at_level(logging.INFO, logger="watchgate.shim"):
        code, messages = asyncio.run(scenario())
    assert code == EXIT_FAILURE
    assert messages[0]["id"] == 0
    assert messages[1]["id"] == 1
    assert messages[1]["error"]["code"] == ErrorCode.UPSTREAM_EXITED
    assert "Gave up reconnecting to" in caplog.text


def test_oversized_request_answered_locally(fake_worker):
    async def scenario() -> tuple[list[dict], list[bytes]]:
        fake_worker.start()
        reader, writer = asyncio.StreamReader(), CollectingWriter()
        shim = Shim(str(fake_worker.path), reader, writer, max_message_bytes=1024)
        run = asyncio.create_task(shim.run(connect_socket(str(fake_worker.path))))
        connection = await asyncio.to_thread(fake_worker.next_connection)
        feed(reader, request(5, "tools/call", {"text": "x" * 5000}), request(6, "ping"))
        await wait_until(lambda: len(writer.messages()) == 2, OUTPUT_TIMEOUT, "two responses")
        reader.feed_eof()
        assert await asyncio.wait_for(run, RUN_TIMEOUT) == EXIT_OK
        return writer.messages(), list(connection.raw_lines)

    messages, forwarded = asyncio.run(scenario())
    assert messages[0]["id"] == 5
    assert messages[0]["error"]["code"] == ErrorCode.MESSAGE_TOO_LARGE
    assert messages[1]["id"] == 6
    assert len(forwarded) == 1
    assert json.loads(forwarded[0])["id"] == 6


def test_close_while_reconnecting_exits_0(fake_worker):
    async def scenario() -> int:
        fake_worker.start()
        reader, writer = asyncio.StreamReader(), CollectingWriter()
        shim = Shim(str(fake_worker.path), reader, writer)
        run = asyncio.create_task(shim.run(connect_socket(str(fake_worker.path))))
        await asyncio.to_thread(fake_worker.next_connection)
        fake_worker.kill()
        await wait_until(lambda: not fake_worker.path.exists(), OUTPUT_TIMEOUT, "the socket removed")
        shim.close()
        return await asyncio.wait_for(run, RUN_TIMEOUT)

    assert asyncio.run(scenario()) == EXIT_OK


def test_gives_up_without_replay_response(fake_worker, caplog):
    async def scenario() -> int:
        fake_worker.start()
        reader, writer = asyncio.StreamReader(), CollectingWriter()
        shim = Shim(str(fake_worker.path), reader, writer, replay_timeout=0.5)
        run = asyncio.create_task(shim.run(connect_socket(str(fake_worker.path))))
        await asyncio.to_thread(fake_worker.next_connection)
        feed(reader, initialize_request(0))
        await wait_until(lambda: len(writer.messages()) == 1, OUTPUT_TIMEOUT, "the initialize response")
        fake_worker.kill()
        fake_worker.held_methods = frozenset({"initialize"})  # a stuck worker
        fake_worker.start()
        return await asyncio.wait_for(run, RUN_TIMEOUT)

    with caplog.at_level(logging.ERROR, logger="watchgate.shim"):
        assert asyncio.run(scenario()) == EXIT_FAILURE
    assert "No response to the replayed initialize" in caplog.text


def test_connect_socket_missing(runtime_dir):
    assert connect_socket(str(runtime_dir / "absent.sock")) is None


@pytest.mark.parametrize("response_id", [0, "0"])
def test_replay_swallows_only_matching_id(fake_worker, response_id):
    async def scenario() -> list[dict]:
        fake_worker.start()
        reader, writer = asyncio.StreamReader(), CollectingWriter()
        shim = Shim(str(fake_worker.path), reader, writer)
        run = asyncio.create_task(shim.run(connect_socket(str(fake_worker.path))))
        first = await asyncio.to_thread(fake_worker.next_connection)
        feed(reader, initialize_request(0))
        await wait_until(lambda: len(writer.messages()) == 1, OUTPUT_TIMEOUT, "the initialize response")
        fake_worker.kill()
        fake_worker.held_methods = frozenset({"initialize"})
        fake_worker.start()
        second = await asyncio.to_thread(fake_worker.next_connection)
        await wait_until(lambda: second.raw_lines, OUTPUT_TIMEOUT, "the replayed initialize")
        second.send({"jsonrpc": "2.0", "id": response_id, "result": {}})
        if response_id == "0":
            # Not the replayed request, so it reaches the client and the replay still waits.
            await wait_until(lambda: len(writer.messages()) == 2, OUTPUT_TIMEOUT, 'the response with id "0"')
            second.send({"jsonrpc": "2.0", "id": 0, "result": {}})
        feed(reader, request(1, "ping"))
        await wait_until(lambda: any(m.get("id") == 1 for m in writer.messages()), OUTPUT_TIMEOUT, "the ping response")
        reader.feed_eof()
        await asyncio.wait_for(run, RUN_TIMEOUT)
        assert first.raw_lines
        return writer.messages()

    messages = asyncio.run(scenario())
    ids = [message.get("id") for message in messages]
    if response_id == 0:
        assert ids == [0, 1]
    else:
        assert ids == [0, "0", 1]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the folder to another user needs root")
def test_connect_skips_folder_of_other_user(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(folder / "server.sock")
    listener.bind(path)
    listener.listen(1)
    try:
        connection = connect_socket(path)
        assert connection is not None
        connection.close()
        os.chown(folder, 65534, 65534)
        assert connect_socket(path) is None
    finally:
        listener.close()
