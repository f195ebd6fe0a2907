"""`watchgate connect` against a fake worker socket: relay, restart recovery and exit codes."""

from __future__ import annotations

import json

from helpers.waiting import wait_until_sync
from shim_fakes import HOLD_METHOD, INITIALIZED, RECEIVE_TIMEOUT, SERVER_NAME, initialize_request, request

from watchgate.protocol.jsonrpc import ErrorCode


def connect(start_watchgate, runtime_dir):
    return start_watchgate("connect", SERVER_NAME, "--socket-dir", str(runtime_dir))


def handshake(shim, connection):
    shim.send(initialize_request(0))
    assert connection.next_message()["method"] == "initialize"
    response = shim.receive()
    assert response["id"] == 0
    assert response["result"]["serverInfo"]["version"] == "1"
    shim.send(INITIALIZED)
    assert connection.next_message() == INITIALIZED


def test_relays_both_directions(fake_worker, start_watchgate, runtime_dir):
    fake_worker.start()
    shim = connect(start_watchgate, runtime_dir)
    connection = fake_worker.next_connection()
    handshake(shim, connection)

    shim.send(request(1, "tools/list"))
    assert shim.receive() == {"jsonrpc": "2.0", "id": 1, "result": {"method": "tools/list", "generation": 1}}
    notification = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    connection.send(notification)
    assert shim.receive() == notification


def test_forwards_lines_unchanged(fake_worker, start_watchgate, runtime_dir):
    fake_worker.start()
    shim = connect(start_watchgate, runtime_dir)
    connection = fake_worker.next_connection()
    line = b'{ "method" : "tools/list", "id":"a\\u00e9", "jsonrpc":"2.0",  "params":{"x": [1, 2.50]} }'
    assert shim.process.stdin is not None
    shim.process.stdin.write(line + b"\n")
    shim.process.stdin.flush()
    assert connection.next_message()["id"] == "a\u00e9"
    assert connection.raw_lines[-1] == line


def test_client_eof_exits_0(fake_worker, start_watchgate, runtime_dir):
    fake_worker.start()
    shim = connect(start_watchgate, runtime_dir)
    connection = fake_worker.next_connection()
    handshake(shim, connection)
    shim.close_stdin()
    assert shim.wait() == 0
    assert connection.next_message() is None  # the worker saw the connection close


def test_worker_restart_replays_handshake(fake_worker, start_watchgate, runtime_dir):
    fake_worker.start()
    shim = connect(start_watchgate, runtime_dir)
    first = fake_worker.next_connection()
    handshake(shim, first)
    shim.send(request(7, HOLD_METHOD))
    shim.send(request("eight", HOLD_METHOD))
    assert first.next_message()["id"] == 7
    assert first.next_message()["id"] == "eight"

    fake_worker.kill()
    lost = [shim.receive(), shim.receive()]
    assert sorted(str(message["id"]) for message in lost) == ["7", "eight"]
    for message in lost:
        assert message["error"]["code"] == ErrorCode.UPSTREAM_EXITED
        assert "request lost" in message["error"]["message"]

    fake_worker.start()
    second = fake_worker.next_connection()
    replayed_initialize = second.next_message()
    assert replayed_initialize == initialize_request(0)
    assert second.raw_lines[0] == first.raw_lines[0]
    assert second.next_message() == INITIALIZED

    shim.send(request(9, "tools/list"))
    assert second.next_message()["id"] == 9
    # The replayed initialize's response was dropped, so the next output is the tools/list response.
    assert shim.receive() == {"jsonrpc": "2.0", "id": 9, "result": {"method": "tools/list", "generation": 2}}
    assert "Reconnected to" in shim.stderr()


def test_initialize_in_flight_is_resent(fake_worker, start_watchgate, runtime_dir):
    fake_worker.held_methods = frozenset({"initialize", HOLD_METHOD})
    fake_worker.start()
    shim = connect(start_watchgate, runtime_dir)
    first = fake_worker.next_connection()
    shim.send(initialize_request(0))
    shim.send(request(1, HOLD_METHOD))
    assert first.next_message()["method"] == "initialize"
    assert first.next_message()["id"] == 1

    fake_worker.kill()
    lost = shim.receive()
    assert lost["id"] == 1
    assert lost["error"]["code"] == ErrorCode.UPSTREAM_EXITED

    fake_worker.held_methods = frozenset({HOLD_METHOD})
    fake_worker.start()
    second = fake_worker.next_connection()
    assert second.next_message() == initialize_request(0)
    # The first worker never responded, so the new worker's response goes to the client.
    response = shim.receive()
    assert response["id"] == 0
    assert response["result"]["serverInfo"]["version"] == "2"
    shim.send(INITIALIZED)
    assert second.next_message() == INITIALIZED


def test_connection_lost_during_handshake(fake_worker, start_watchgate, runtime_dir):
    fake_worker.start()
    shim = connect(start_watchgate, runtime_dir)
    first = fake_worker.next_connection()
    handshake(shim, first)
    fake_worker.kill()
    fake_worker.start()
    second = fake_worker.next_connection()
    assert second.next_message()["method"] == "initialize"
    fake_worker.kill()  # drop again before the shim resumes client traffic
    fake_worker.start()
    third = fake_worker.next_connection()
    assert third.next_message()["method"] == "initialize"
    assert third.next_message() == INITIALIZED
    shim.send(request(2, "ping"))
    assert shim.receive() == {"jsonrpc": "2.0", "id": 2, "result": {"method": "ping", "generation": 3}}


def test_no_service_exits_3(start_watchgate, runtime_dir):
    shim = connect(start_watchgate, runtime_dir)
    assert shim.wait() == 3
    assert shim.receive() is None
    assert f"no Watchgate service is listening on {runtime_dir / 'fake.sock'}" in shim.stderr()


def test_requests_sent_while_reconnecting_wait(fake_worker, start_watchgate, runtime_dir):
    fake_worker.start()
    shim = connect(start_watchgate, runtime_dir)
    handshake(shim, fake_worker.next_connection())
    fake_worker.kill()
    wait_until_sync(lambda: "Lost the connection" in shim.stderr(), RECEIVE_TIMEOUT, "the shim to notice the drop")
    shim.send(request(3, "tools/list"))  # read by the shim while no worker is listening
    fake_worker.start()
    second = fake_worker.next_connection()
    assert second.next_message()["method"] == "initialize"
    assert second.next_message() == INITIALIZED
    assert second.next_message()["id"] == 3
    assert shim.receive() == {"jsonrpc": "2.0", "id": 3, "result": {"method": "tools/list", "generation": 2}}


def test_unparseable_line_forwarded(fake_worker, start_watchgate, runtime_dir):
    fake_worker.start()
    shim = connect(start_watchgate, runtime_dir)
    connection = fake_worker.next_connection()
    assert shim.process.stdin is not None
    shim.process.stdin.write(b'{"jsonrpc": "2.0", "id": 1}\n')
    shim.process.stdin.flush()
    assert connection.next_message() == json.loads(b'{"jsonrpc": "2.0", "id": 1}')
