"""Control protocol v1: encoding, decoding and the stable error codes."""

from __future__ import annotations

import asyncio
import json

import pytest

from watchgate.ctl import protocol
from watchgate.ctl.protocol import ProtocolError, Request


def test_request_round_trip_for_every_command():
    requests = [
        Request(command=protocol.STATUS),
        protocol.restart_request("filesystem"),
        protocol.restart_request(all_servers=True),
        Request(command=protocol.RELOAD),
        Request(command=protocol.STOP),
    ]
    for request in requests:
        line = protocol.encode_request(request)
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        assert protocol.decode_request(line) == request


def test_request_wire_shape():
    line = protocol.encode_request(protocol.restart_request("github"))
    assert json.loads(line) == {"version": 1, "command": "restart", "args": {"name": "github"}}


def test_response_wire_shapes():
    ok_line = protocol.encode_response(protocol.ok_response({"restarted": ["github"]}))
    error_line = protocol.encode_response(protocol.error_response(protocol.NOT_FOUND, "no server named 'x'"))
    assert json.loads(ok_line) == {"version": 1, "ok": True, "result": {"restarted": ["github"]}}
    assert json.loads(error_line) == {
        "version": 1,
        "ok": False,
        "error": {"code": "not_found", "message": "no server named 'x'"},
    }


def test_response_round_trip():
    for response in (protocol.ok_response(), protocol.error_response(protocol.FAILED, "boom")):
        assert protocol.decode_response(protocol.encode_response(response)) == response


def test_ok_response_converts_struct():
    status = protocol.StatusResult(
        service=protocol.ServiceStatus(pid=10, state="RUNNING", uptime=5.0),
        servers=[protocol.ServerStatus(name="fs", state="RUNNING", worker_pid=11)],
        writer=protocol.WriterStatus(state="RUNNING", sinks=[protocol.SinkStatus(path="/var/log/a.log")]),
    )
    response = protocol.ok_response(status)
    decoded = protocol.decode_response(protocol.encode_response(response))
    assert decoded.result["servers"][0]["worker_pid"] == 11
    assert protocol.status_from_result(decoded.result) == status


def test_status_result_tolerates_missing_and_extra_fields():
    status = protocol.status_from_result(
        {"service": {"pid": 1, "state": "RUNNING", "future": 1}, "servers": [{"name": "a", "state": "FATAL"}]}
    )
    assert status.servers[0].restarts == 0
    assert status.servers[0].worker_pid is None
    assert status.writer is None


def test_status_result_wrong_shape():
    with pytest.raises(ProtocolError) as caught:
        protocol.status_from_result({"servers": []})
    assert caught.value.code == protocol.INVALID_RESPONSE


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"", protocol.BAD_REQUEST),
        (b"   \n", protocol.BAD_REQUEST),
        (b"not json\n", protocol.BAD_REQUEST),
        (b"[1, 2]\n", protocol.BAD_REQUEST),
        (b'{"command": "status"}\n', protocol.BAD_REQUEST),
        (b'{"version": 1}\n', protocol.BAD_REQUEST),
        (b'{"version": 1, "command": 7}\n', protocol.BAD_REQUEST),
        (b'{"version": 1, "command": "status", "args": []}\n', protocol.BAD_REQUEST),
        (b'{"version": 1, "command": "status", "args": {"x": 1}}\n', protocol.BAD_REQUEST),
        (b'{"version": 1, "command": "restart", "args": {}}\n', protocol.BAD_REQUEST),
        (b'{"version": 1, "command": "restart", "args": {"name": ""}}\n', protocol.BAD_REQUEST),
        (b'{"version": 1, "command": "restart", "args": {"name": 3}}\n', protocol.BAD_REQUEST),
        (b'{"version": 1, "command": "restart", "args": {"all": false}}\n', protocol.BAD_REQUEST),
        (b'{"version": 1, "command": "restart", "args": {"all": true, "name": "a"}}\n', protocol.BAD_REQUEST),
        (b'{"version": 1, "command": "launch"}\n', protocol.UNKNOWN_COMMAND),
        (b'{"version": 2, "command": "status"}\n', protocol.VERSION_MISMATCH),
        (b'{"version": 0, "command": "status"}\n', protocol.VERSION_MISMATCH),
        (b'{"version": true, "command": "status"}\n', protocol.VERSION_MISMATCH),
        (b'{"version": "1", "command": "status"}\n', protocol.VERSION_MISMATCH),
    ],
)
def test_decode_request_errors(line, code):
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_request(line)
    assert caught.value.code == code
    assert code in str(caught.value)


def test_newer_version_wins_over_shape_errors():
    line = b'{"version": 2, "verb": "status", "options": []}\n'
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_request(line)
    assert caught.value.code == protocol.VERSION_MISMATCH
    assert "version 2" in caught.value.message


def test_request_size_cap():
    padding = "x" * protocol.MAX_LINE_BYTES
    line = json.dumps({"version": 1, "command": "status", "args": {"pad": padding}}).encode() + b"\n"
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_request(line)
    assert caught.value.code == protocol.TOO_LARGE


def test_line_at_cap_is_accepted():
    request = json.dumps({"version": 1, "command": "stop"}).encode()
    line = request + b" " * (protocol.MAX_LINE_BYTES - len(request))
    assert len(line) == protocol.MAX_LINE_BYTES
    assert protocol.decode_request(line + b"\n").command == protocol.STOP


def test_encode_rejects_oversized_message():
    with pytest.raises(ProtocolError) as caught:
        protocol.encode_response(protocol.ok_response({"blob": "x" * protocol.MAX_LINE_BYTES}))
    assert caught.value.code == protocol.TOO_LARGE


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"garbage\n", protocol.INVALID_RESPONSE),
        (b'{"version": 1, "ok": true}\n', protocol.INVALID_RESPONSE),
        (b'{"version": 1, "ok": false}\n', protocol.INVALID_RESPONSE),
        (b'{"version": 1, "ok": false, "error": {"code": "x"}}\n', protocol.INVALID_RESPONSE),
        (b'{"ok": true, "result": {}}\n', protocol.INVALID_RESPONSE),
        (b'{"version": 9, "ok": true, "result": {}}\n', protocol.VERSION_MISMATCH),
    ],
)
def test_decode_response_errors(line, code):
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_response(line)
    assert caught.value.code == code


def test_error_codes_are_stable():
    assert protocol.PROTOCOL_VERSION == 1
    assert protocol.MAX_LINE_BYTES == 1024 * 1024
    assert protocol.ERROR_CODES == (
        "unknown_command", "bad_request", "not_found", "version_mismatch", "too_large", "failed",
    )


def test_restart_request_needs_one_target():
    with pytest.raises(ValueError):
        protocol.restart_request()
    with pytest.raises(ValueError):
        protocol.restart_request("a", all_servers=True)


def test_read_line_size_cap():
    async def read(data: bytes) -> bytes:
        reader = asyncio.StreamReader(limit=protocol.MAX_LINE_BYTES + 1)
        reader.feed_data(data)
        reader.feed_eof()
        return await protocol.read_line(reader)

    assert asyncio.run(read(b'{"a": 1}\n{"b": 2}\n')) == b'{"a": 1}\n'
    assert asyncio.run(read(b"")) == b""
    with pytest.raises(ProtocolError) as caught:
        asyncio.run(read(b"x" * (protocol.MAX_LINE_BYTES + 10) + b"\n"))
    assert caught.value.code == protocol.TOO_LARGE
