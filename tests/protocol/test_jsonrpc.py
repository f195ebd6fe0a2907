import pytest

from watchgate.protocol import jsonrpc
from watchgate.protocol.jsonrpc import ErrorCode, InvalidMessage, Kind


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"ping"}', Kind.REQUEST),
        (b'{"jsonrpc":"2.0","id":"a","method":"tools/list","params":{}}', Kind.REQUEST),
        (b'{"jsonrpc":"2.0","method":"notifications/initialized"}', Kind.NOTIFICATION),
        (b'{"jsonrpc":"2.0","id":1,"result":{}}', Kind.RESPONSE),
        (b'{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"x"}}', Kind.RESPONSE),
    ],
)
def test_decode_classifies_messages(line, kind):
    assert jsonrpc.decode(line)[0] is kind


@pytest.mark.parametrize(
    ("line", "code", "request_id"),
    [
        (b'{"jsonrpc":"2.0","id":5,"method":"tools/call"', ErrorCode.PARSE_ERROR, 5),
        (b"not json", ErrorCode.PARSE_ERROR, None),
        (b'{"jsonrpc":"2.0","id":3,"method":"x","params":{"t":"\xff"}}', ErrorCode.PARSE_ERROR, None),
        (b'[{"jsonrpc":"2.0","id":6,"method":"ping"}]', ErrorCode.INVALID_REQUEST, None),
        (b'"hello"', ErrorCode.INVALID_REQUEST, None),
        (b'{"id":7,"method":"ping"}', ErrorCode.INVALID_REQUEST, 7),
        (b'{"jsonrpc":"1.0","id":"q","method":"ping"}', ErrorCode.INVALID_REQUEST, "q"),
        (b'{"jsonrpc":"2.0","id":8,"method":7}', ErrorCode.INVALID_REQUEST, 8),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', ErrorCode.INVALID_REQUEST, None),
        (b'{"jsonrpc":"2.0","id":null,"method":"ping"}', ErrorCode.INVALID_REQUEST, None),
        (b'{"jsonrpc":"2.0","id":2}', ErrorCode.INVALID_REQUEST, 2),
        (b'{"jsonrpc":"2.0","id":2,"result":{},"error":{}}', ErrorCode.INVALID_REQUEST, 2),
    ],
)
def test_decode_rejects_invalid_messages(line, code, request_id):
    with pytest.raises(InvalidMessage) as caught:
        jsonrpc.decode(line)
    assert caught.value.code == code
    assert caught.value.request_id == request_id


def test_forwarded_payload_bytes_unchanged():
    payload = b'{"name":"echo","arguments":{"text":"caf\xc3\xa9 \\u00e9","n":1.50}}'
    _, message = jsonrpc.decode(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + payload + b"}")
    message.id = 99
    assert jsonrpc.encode(message) == b'{"jsonrpc":"2.0","id":99,"method":"tools/call","params":' + payload + b"}\n"


def test_error_response_shape():
    line = jsonrpc.error_response(4, ErrorCode.BLOCKED_BY_POLICY, "denied", {"plugin": "p"})
    assert line == b'{"jsonrpc":"2.0","id":4,"error":{"code":-32001,"message":"denied","data":{"plugin":"p"}}}\n'


@pytest.mark.parametrize(
    ("head", "tail", "expected"),
    [
        (b'{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"x":"', b"", 12),
        (b'{"result":{"content":[', b'"]},"jsonrpc":"2.0","id":"abc"}', "abc"),
        (b'{"result":{"text":"', b'xxxx', None),
    ],
)
def test_find_id_in_oversized_edges(head, tail, expected):
    assert jsonrpc.find_id(head, tail) == expected
