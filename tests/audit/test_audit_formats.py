"""The four audit formats, field by field, including escaping and CSV formula injection."""

from __future__ import annotations

import csv
import io
import json
import re

import msgspec
import pytest
from helpers.audit_events import TIMESTAMP, make_event
from hypothesis import given, settings
from hypothesis import strategies as st

from watchgate.audit.events import AuditEvent, EventType
from watchgate.audit.formats import (
    CSV_COLUMNS,
    CsvFormatter,
    DebugFormatter,
    JsonFormatter,
    LineFormatter,
    escape_text,
    make_formatter,
)
from watchgate.config.model import AuditFormat, CsvConfig

# The first ten columns, which the documented awk recipes address by number.
DOCUMENTED_CSV_HEADER = "timestamp,event_type,method,tool,status,request_id,plugin,reason,duration_ms,server_name"
CONTRACT_CSV_PREFIX = DOCUMENTED_CSV_HEADER + ",client_name,session_id,user,error_code,plugin_metadata"

TEXT_FIELDS = (
    "method",
    "tool",
    "status",
    "request_id",
    "plugin",
    "reason",
    "server_name",
    "client_name",
    "client_version",
    "session_id",
    "user",
    "signal",
    "worker",
)

# Characters that must never appear raw in a line, debug or csv record.
RAW_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def render_lines(formatter, events: list[AuditEvent]) -> list[str]:
    data = formatter.render(events)
    assert data.endswith(b"\n")
    return data.decode("utf-8").split("\n")[:-1]


def unescape(text: str) -> str:
    """Reverse escape_text."""
    return re.sub(
        r"\\(\\|n|r|t|x[0-9a-f]{2}|u[0-9a-f]{4})",
        lambda match: {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}.get(match.group(1))
        or chr(int(match.group(1)[1:], 16)),
        text,
    )


def every_field_event() -> AuditEvent:
    return make_event(
        event_type="RESPONSE",
        method="tools/call",
        tool="read_file",
        status="error",
        request_id="7",
        plugin="tool_allowlist",
        reason="upstream failed",
        plugin_metadata={"mode": "allowlist"},
        duration_ms=12.5,
        server_name="filesystem",
        client_name="claude-ai",
        client_version="0.1.0",
        session_id="s-1",
        user="alice",
        error_code=-32603,
        pid=4242,
        exit_code=1,
        signal="SIGKILL",
        params={"path": "/tmp/x"},
        result={"content": []},
        worker="w1",
        seq=9,
    )


# --- escape_text -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain text é 漢字 🙂", "plain text é 漢字 🙂"),
        ("a\nb", "a\\nb"),
        ("a\rb", "a\\rb"),
        ("a\tb", "a\\tb"),
        ("C:\\new", "C:\\\\new"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("\x00\x7f\x85\x9b", "\\x00\\x7f\\x85\\x9b"),
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
        ("\u202eevil\u202c", "\\u202eevil\\u202c"),
        ("\u2066x\u2069\u200e\u200f\u061c", "\\u2066x\\u2069\\u200e\\u200f\\u061c"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("a\u00a0b", "a\u00a0b"),
    ],
)
def test_escape_text_cases(raw: str, escaped: str) -> None:
    assert escape_text(raw) == escaped


@given(st.text())
def test_escape_text_reversible(text: str) -> None:
    escaped = escape_text(text)
    assert RAW_UNSAFE.search(escaped) is None
    assert "\n" not in escaped
    assert unescape(escaped) == text


# --- json ----------------------------------------------------------------------


def test_json_key_order_and_omitted_fields() -> None:
    event = every_field_event()
    line = render_lines(JsonFormatter(), [event])[0]
    decoded = json.loads(line)

    assert list(decoded) == list(AuditEvent.__struct_fields__)
    assert decoded["duration_ms"] == 12.5
    assert decoded["error_code"] == -32603
    assert decoded["plugin_metadata"] == {"mode": "allowlist"}

    sparse = json.loads(render_lines(JsonFormatter(), [make_event(event_type="RESPONSE", status="success")])[0])
    assert sparse == {"timestamp": TIMESTAMP, "event_type": "RESPONSE", "status": "success"}


def test_json_documented_records() -> None:
    # The records that the user documentation shows when it explains audit logs.
    expected = [
        {"timestamp": "2024-06-16T10:30:15Z", "event_type": "REQUEST", "method": "tools/call", "tool": "write_file",
         "status": "ALLOWED", "request_id": "123", "plugin": "tool_allowlist"},
        {"timestamp": "2024-06-16T10:30:16Z", "event_type": "RESPONSE", "status": "success", "request_id": "123",
         "duration_ms": 892},
        {"timestamp": "2024-06-16T10:30:45Z", "event_type": "SECURITY_BLOCK", "method": "tools/call",
         "tool": "delete_file", "reason": "Tool 'delete_file' is not in allowlist", "request_id": "124",
         "plugin": "tool_allowlist", "plugin_metadata": {"mode": "allowlist"}},
        {"timestamp": "2024-06-16T10:30:50Z", "event_type": "TOOLS_FILTERED", "method": "tools/list",
         "reason": "Filtered 3 tools from response", "plugin": "tool_allowlist", "request_id": "125",
         "plugin_metadata": {"filtered_count": 3}},
        {"timestamp": "2024-06-16T10:29:45Z", "event_type": "REQUEST", "method": "initialize", "status": "ALLOWED",
         "request_id": "1"},
    ]
    events = [msgspec.convert(record, AuditEvent) for record in expected]
    lines = render_lines(JsonFormatter(), events)

    assert [json.loads(line) for line in lines] == expected


def test_json_enum_event_type() -> None:
    line = render_lines(JsonFormatter(), [make_event(event_type=EventType.SECURITY_BLOCK)])[0]
    assert json.loads(line)["event_type"] == "SECURITY_BLOCK"


def test_json_one_line_per_event() -> None:
    events = [make_event(event_type="REQUEST", tool="a\nb\r\n", reason="x\u2028y") for _ in range(3)]
    lines = render_lines(JsonFormatter(), events)
    assert len(lines) == 3
    assert json.loads(lines[0])["tool"] == "a\nb\r\n"


def test_json_escapes_separators_and_bidi() -> None:
    reason = "a\u2028b\u2029c\u202ed\x85e\u2066f"
    line = render_lines(JsonFormatter(), [make_event(event_type="ERROR", reason=reason)])[0]
    assert RAW_UNSAFE.search(line) is None
    assert "\\u2028" in line
    assert "\\u202e" in line
    assert json.loads(line)["reason"] == reason


def test_json_unencodable_values_keep_batch() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    events = [
        make_event(event_type="REQUEST", request_id="1"),
        make_event(event_type="REQUEST", request_id="2", params={"object": Opaque()}),
        make_event(event_type="REQUEST", request_id="3", tool="lone \ud800"),
        make_event(event_type="REQUEST", request_id="4", params={"big": 2**80}),
    ]
    decoded = [json.loads(line) for line in render_lines(JsonFormatter(), events)]

    assert [record["request_id"] for record in decoded] == ["1", "2", "3", "4"]
    assert decoded[1]["params"] == {"object": "<opaque>"}
    assert decoded[2]["tool"] == "lone \\ud800"
    assert decoded[3]["params"] == {"big": 2**80}


def test_json_raw_body_verbatim() -> None:
    event = make_event(event_type="REQUEST", params=msgspec.Raw(b'{"path":"/x"}'))
    assert json.loads(render_lines(JsonFormatter(), [event])[0])["params"] == {"path": "/x"}


# --- line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"event_type": "REQUEST", "method": "tools/call", "tool": "list_directory", "status": "ALLOWED"},
            "2024-06-16 10:30:15 UTC - REQUEST: tools/call - list_directory - ALLOWED",
        ),
        (
            {"event_type": "RESPONSE", "status": "success"},
            "2024-06-16 10:30:15 UTC - RESPONSE: success",
        ),
        (
            {"event_type": "SECURITY_BLOCK", "method": "tools/call", "tool": "delete_file", "status": "BLOCKED",
             "plugin": "tool_allowlist", "reason": "Tool blocked by allowlist policy"},
            "2024-06-16 10:30:15 UTC - SECURITY_BLOCK: delete_file - [tool_allowlist] Tool blocked by allowlist policy",
        ),
        (
            {"event_type": "TOOLS_FILTERED", "method": "tools/list", "plugin": "tool_allowlist",
             "reason": "Filtered 3 tools from response", "plugin_metadata": {"filtered_count": 3}},
            "2024-06-16 10:30:15 UTC - TOOLS_FILTERED: tools/list - [tool_allowlist] Filtered 3 tools from response",
        ),
        (
            {"event_type": "NOTIFICATION", "method": "notifications/initialized"},
            "2024-06-16 10:30:15 UTC - NOTIFICATION: notifications/initialized",
        ),
        (
            {"event_type": "UPSTREAM_EXIT", "server_name": "filesystem", "reason": "exited", "pid": 77,
             "exit_code": -9, "signal": "SIGKILL"},
            "2024-06-16 10:30:15 UTC - UPSTREAM_EXIT: filesystem - exited - pid=77 - exit_code=-9 - signal=SIGKILL",
        ),
        (
            {"event_type": "SESSION_OPEN", "client_name": "claude-ai", "client_version": "0.1.0",
             "session_id": "s-1"},
            "2024-06-16 10:30:15 UTC - SESSION_OPEN: claude-ai - 0.1.0 - s-1",
        ),
        (
            {"event_type": "AUDIT_GAP", "reason": "3 audit events lost: disk full"},
            "2024-06-16 10:30:15 UTC - AUDIT_GAP: 3 audit events lost: disk full",
        ),
    ],
)
def test_line_records(fields: dict, expected: str) -> None:
    assert render_lines(LineFormatter(), [make_event(**fields)]) == [expected]


def test_line_context_suffix() -> None:
    event = make_event(
        event_type="RESPONSE",
        status="error",
        reason="boom",
        server_name="filesystem",
        request_id="123",
        duration_ms=1333.0,
        error_code=-32603,
        user="alice",
        worker="w1",
        seq=4,
    )
    assert render_lines(LineFormatter(), [event]) == [
        "2024-06-16 10:30:15 UTC - RESPONSE: error - boom - server=filesystem - id=123 - duration=1333ms"
        " - error_code=-32603 - user=alice - worker=w1 - seq=4"
    ]


def test_line_fractional_duration() -> None:
    event = make_event(event_type="RESPONSE", status="success", duration_ms=0.25)
    assert render_lines(LineFormatter(), [event])[0].endswith(" - duration=0.25ms")


def test_line_timestamp_variants() -> None:
    events = [
        make_event(timestamp="2024-06-16T10:30:15Z", event_type="RESPONSE", status="success"),
        make_event(timestamp="2024-06-16T10:30:15+02:00", event_type="RESPONSE", status="success"),
        make_event(timestamp="bad\nstamp", event_type="RESPONSE", status="success"),
    ]
    assert render_lines(LineFormatter(), events) == [
        "2024-06-16 10:30:15 UTC - RESPONSE: success",
        "2024-06-16T10:30:15+02:00 - RESPONSE: success",
        "bad\\nstamp - RESPONSE: success",
    ]


def test_line_forged_record_stays_one_line() -> None:
    forged = "list_directory - ALLOWED\n2024-06-16 10:30:16 UTC - REQUEST: tools/call - delete_file - ALLOWED"
    events = [
        make_event(event_type="REQUEST", method="tools/call", tool=forged, status="ALLOWED"),
        make_event(event_type="RESPONSE", status="success", request_id="1\r\n2024-06-16 10:30:17 UTC - RESPONSE: x"),
    ]
    lines = render_lines(LineFormatter(), events)

    assert len(lines) == 2
    assert lines[0] == (
        "2024-06-16 10:30:15 UTC - REQUEST: tools/call - list_directory - ALLOWED\\n2024-06-16 10:30:16 UTC"
        " - REQUEST: tools/call - delete_file - ALLOWED - ALLOWED"
    )
    assert lines[1].endswith(" - id=1\\r\\n2024-06-16 10:30:17 UTC - RESPONSE: x")


def test_line_escapes_terminal_controls() -> None:
    event = make_event(event_type="SECURITY_BLOCK", tool="\x1b[2K\rfake", plugin="p\u202e", reason="C:\\dir\u2028x")
    line = render_lines(LineFormatter(), [event])[0]
    assert line == "2024-06-16 10:30:15 UTC - SECURITY_BLOCK: \\x1b[2K\\rfake - [p\\u202e] C:\\\\dir\\u2028x"


def test_line_dirty_event_leaves_clean_ones() -> None:
    events = [make_event(event_type="REQUEST", method="m", request_id=str(i)) for i in range(5)]
    events[2] = make_event(event_type="REQUEST", method="m\n", request_id="2")
    lines = render_lines(LineFormatter(), events)
    assert lines[1] == "2024-06-16 10:30:15 UTC - REQUEST: m - id=1"
    assert lines[2] == "2024-06-16 10:30:15 UTC - REQUEST: m\\n - id=2"


def test_line_non_string_values() -> None:
    event = make_event(event_type=EventType.REQUEST, method="tools/call", request_id=42)
    assert render_lines(LineFormatter(), [event]) == ["2024-06-16 10:30:15 UTC - REQUEST: tools/call - id=42"]


# --- debug ---------------------------------------------------------------------


def test_debug_request_record() -> None:
    event = make_event(
        event_type="REQUEST",
        method="tools/call",
        tool="list_directory",
        status="ALLOWED",
        request_id="123",
        client_name="claude_desktop",
        server_name="filesystem",
        params={"path": "/Users/username/claude-sandbox"},
    )
    assert render_lines(DebugFormatter(), [event]) == [
        "[2024-06-16 10:30:15.123] REQUEST_ID=123 SOURCE=claude_desktop EVENT=REQUEST METHOD=tools/call"
        " TOOL=list_directory STATUS=ALLOWED SERVER=filesystem CLIENT=claude_desktop"
        ' PARAMS={"path":"/Users/username/claude-sandbox"}'
    ]


def test_debug_response_record() -> None:
    event = make_event(
        event_type="RESPONSE",
        tool="list_directory",
        status="success",
        request_id="123",
        duration_ms=1333.0,
        server_name="filesystem_server",
    )
    assert render_lines(DebugFormatter(), [event]) == [
        "[2024-06-16 10:30:15.123] REQUEST_ID=123 SOURCE=filesystem_server EVENT=RESPONSE TOOL=list_directory"
        " STATUS=success DURATION=1.333s SERVER=filesystem_server"
    ]


def test_debug_every_field_in_order() -> None:
    line = render_lines(DebugFormatter(), [every_field_event()])[0]
    keys = re.findall(r" ([A-Z_]+)=", line)
    assert keys == [
        "REQUEST_ID", "SOURCE", "EVENT", "METHOD", "TOOL", "STATUS", "PLUGIN", "REASON", "DURATION", "SERVER",
        "CLIENT", "CLIENT_VERSION", "SESSION", "USER", "ERROR_CODE", "PID", "EXIT_CODE", "SIGNAL", "WORKER", "SEQ",
        "METADATA", "PARAMS", "RESULT",
    ]
    assert ' REASON="upstream failed" ' in line
    assert " DURATION=0.0125s " in line
    assert " ERROR_CODE=-32603 " in line
    assert line.endswith(' METADATA={"mode":"allowlist"} PARAMS={"path":"/tmp/x"} RESULT={"content":[]}')


@pytest.mark.parametrize(
    ("tool", "rendered"),
    [
        ("x STATUS=SUCCESS", 'TOOL="x STATUS=SUCCESS"'),
        ('say "hi"', 'TOOL="say \\"hi\\""'),
        ("a=b", 'TOOL="a=b"'),
        ("", 'TOOL=""'),
        ("x\nEVENT=REQUEST", 'TOOL="x\\nEVENT=REQUEST"'),
        ("back\\slash", "TOOL=back\\\\slash"),
    ],
)
def test_debug_value_quoting(tool: str, rendered: str) -> None:
    line = render_lines(DebugFormatter(), [make_event(event_type="REQUEST", tool=tool)])[0]
    assert f" {rendered}" in line
    assert line.count("TOOL=") == 1 + tool.count("TOOL=")


def test_debug_timestamp_without_milliseconds() -> None:
    line = render_lines(DebugFormatter(), [make_event(timestamp="2024-06-16T10:30:15Z", event_type="ERROR")])[0]
    assert line.startswith("[2024-06-16 10:30:15.000] EVENT=ERROR")


def test_debug_json_values_escape_separators() -> None:
    event = make_event(event_type="REQUEST", params={"text": "a\u2028b\u202e"})
    line = render_lines(DebugFormatter(), [event])[0]
    assert RAW_UNSAFE.search(line) is None
    assert json.loads(line.split(" PARAMS=", 1)[1]) == {"text": "a\u2028b\u202e"}


# --- csv -----------------------------------------------------------------------


def parse_csv(data: bytes, **reader_options) -> list[list]:
    return list(csv.reader(io.StringIO(data.decode("utf-8")), **reader_options))


def test_csv_header() -> None:
    header = CsvFormatter().header.decode()
    assert header == ",".join(CSV_COLUMNS) + "\n"
    assert header.startswith(CONTRACT_CSV_PREFIX + ",")
    assert header.split(",")[:10] == DOCUMENTED_CSV_HEADER.split(",")


def test_csv_documented_rows() -> None:
    events = [
        make_event(timestamp="2024-06-16T10:30:15Z", event_type="REQUEST", method="tools/call",
                   tool="list_directory", status="ALLOWED", request_id="123", plugin="tool_allowlist",
                   reason="Request approved"),
        make_event(timestamp="2024-06-16T10:30:16Z", event_type="RESPONSE", status="success", request_id="123",
                   duration_ms=1333.0),
        make_event(timestamp="2024-06-16T10:30:45Z", event_type="SECURITY_BLOCK", method="tools/call",
                   tool="delete_file", status="BLOCKED", request_id="124", plugin="tool_allowlist",
                   reason="Tool blocked by allowlist policy"),
    ]
    documented_rows = [
        "2024-06-16T10:30:15Z,REQUEST,tools/call,list_directory,ALLOWED,123,tool_allowlist,Request approved,,",
        "2024-06-16T10:30:16Z,RESPONSE,,,success,123,,,1333,",
        "2024-06-16T10:30:45Z,SECURITY_BLOCK,tools/call,delete_file,BLOCKED,124,tool_allowlist,"
        "Tool blocked by allowlist policy,,",
    ]
    extra_empty_cells = "," * (len(CSV_COLUMNS) - 10)
    assert render_lines(CsvFormatter(), events) == [row + extra_empty_cells for row in documented_rows]


def test_csv_every_column() -> None:
    rows = parse_csv(CsvFormatter().render([every_field_event()]))
    assert dict(zip(CSV_COLUMNS, rows[0], strict=True)) == {
        "timestamp": TIMESTAMP,
        "event_type": "RESPONSE",
        "method": "tools/call",
        "tool": "read_file",
        "status": "error",
        "request_id": "7",
        "plugin": "tool_allowlist",
        "reason": "upstream failed",
        "duration_ms": "12.5",
        "server_name": "filesystem",
        "client_name": "claude-ai",
        "session_id": "s-1",
        "user": "alice",
        "error_code": "-32603",
        "plugin_metadata": '{"mode":"allowlist"}',
        "client_version": "0.1.0",
        "pid": "4242",
        "exit_code": "1",
        "signal": "SIGKILL",
        "worker": "w1",
        "seq": "9",
        "params": '{"path":"/tmp/x"}',
        "result": '{"content":[]}',
    }


@pytest.mark.parametrize(
    ("reason", "cell"),
    [
        ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("-", "'-"),
        ("\t=1+1", "\\t=1+1"),
        ("\r=1+1", "\\r=1+1"),
        ("-32601", "-32601"),
        ("-1.5e3", "-1.5e3"),
        ("+7", "+7"),
        ("a=b", "a=b"),
        ("plain", "plain"),
    ],
)
def test_csv_formula_neutralised(reason: str, cell: str) -> None:
    rows = parse_csv(CsvFormatter().render([make_event(event_type="ERROR", reason=reason)]))
    assert rows[0][CSV_COLUMNS.index("reason")] == cell


def test_csv_numeric_fields_keep_sign() -> None:
    event = make_event(event_type="ERROR", request_id="-5", error_code=-32601, exit_code=-9, duration_ms=-0.5)
    row = dict(zip(CSV_COLUMNS, parse_csv(CsvFormatter().render([event]))[0], strict=True))
    assert row["request_id"] == "-5"
    assert row["error_code"] == "-32601"
    assert row["exit_code"] == "-9"
    assert row["duration_ms"] == "-0.5"


def test_csv_newlines_stay_in_one_row() -> None:
    event = make_event(event_type="ERROR", reason="line1\nline2,with comma", tool='q"uote')
    data = CsvFormatter().render([event])
    assert data.count(b"\n") == 1
    row = parse_csv(data)[0]
    assert row[CSV_COLUMNS.index("reason")] == "line1\\nline2,with comma"
    assert row[CSV_COLUMNS.index("tool")] == 'q"uote'


QUOTED_EVENT = make_event(
    event_type="REQUEST", tool='a,b "c"', reason="back\\slash", duration_ms=2.0, plugin_metadata={"k": "v,w"}
)


def test_csv_quote_minimal() -> None:
    line = render_lines(CsvFormatter(CsvConfig(quote_style="minimal")), [QUOTED_EVENT])[0]
    assert line.startswith(f'{TIMESTAMP},REQUEST,,"a,b ""c""",,,,back\\\\slash,2,,')
    row = parse_csv(line.encode())[0]
    assert row[3] == 'a,b "c"'
    assert row[14] == '{"k":"v,w"}'


def test_csv_quote_all() -> None:
    formatter = CsvFormatter(CsvConfig(quote_style="all"))
    assert formatter.header.decode() == ",".join(f'"{column}"' for column in CSV_COLUMNS) + "\n"
    line = render_lines(formatter, [QUOTED_EVENT])[0]
    assert line.startswith(f'"{TIMESTAMP}","REQUEST","","a,b ""c""","","","","back\\\\slash","2",""')
    assert len(parse_csv(line.encode())[0]) == len(CSV_COLUMNS)


def test_csv_quote_nonnumeric() -> None:
    line = render_lines(CsvFormatter(CsvConfig(quote_style="nonnumeric")), [QUOTED_EVENT])[0]
    assert line.startswith(f'"{TIMESTAMP}","REQUEST","","a,b ""c""","","","","back\\\\slash",2,""')
    row = parse_csv(line.encode(), quoting=csv.QUOTE_NONNUMERIC)[0]
    assert row[8] == 2.0
    assert row[3] == 'a,b "c"'


def test_csv_quote_none() -> None:
    line = render_lines(CsvFormatter(CsvConfig(quote_style="none")), [QUOTED_EVENT])[0]
    assert line.startswith(f'{TIMESTAMP},REQUEST,,a\\,b \\"c\\",,,,back\\\\slash,2,')
    row = parse_csv(line.encode(), quoting=csv.QUOTE_NONE, escapechar="\\")[0]
    assert len(row) == len(CSV_COLUMNS)
    assert row[3] == 'a,b "c"'
    assert row[7] == "back\\slash"
    assert json.loads(row[14]) == {"k": "v,w"}


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_csv_delimiter(delimiter: str) -> None:
    formatter = CsvFormatter(CsvConfig(delimiter=delimiter))
    assert formatter.header.decode().split(delimiter)[:2] == ["timestamp", "event_type"]
    event = make_event(event_type="REQUEST", tool=f"x{delimiter}y", reason="tab\there")
    data = formatter.header + formatter.render([event])
    rows = parse_csv(data, delimiter=delimiter)
    assert rows[0] == list(CSV_COLUMNS)
    # A tab is escaped like any control character, even when it is the delimiter.
    assert rows[1][3] == escape_text(f"x{delimiter}y")
    assert rows[1][7] == "tab\\there"


@pytest.mark.parametrize(
    "config",
    [CsvConfig(delimiter=";;"), CsvConfig(delimiter='"'), CsvConfig(delimiter="a"), CsvConfig(quote_style="some")],
)
def test_csv_invalid_config(config: CsvConfig) -> None:
    with pytest.raises(ValueError, match="invalid CSV"):
        CsvFormatter(config)


# --- every format ----------------------------------------------------------------


def test_make_formatter_names() -> None:
    assert isinstance(make_formatter(AuditFormat.JSON), JsonFormatter)
    assert isinstance(make_formatter("simple"), LineFormatter)
    assert isinstance(make_formatter(AuditFormat.DEBUG), DebugFormatter)
    assert isinstance(make_formatter(AuditFormat.CSV, CsvConfig(delimiter=";")), CsvFormatter)
    with pytest.raises(ValueError, match="invalid audit format 'xml'"):
        make_formatter("xml")


def test_empty_batch_renders_nothing() -> None:
    for audit_format in AuditFormat:
        assert make_formatter(audit_format).render([]) == b""


hostile_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from("\n\r\t\\\"',;=+-@ \x00\x1b\x85\u2028\u2029\u202e\u2066"),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional={field: hostile_text for field in TEXT_FIELDS}))
def test_hostile_text_one_record_per_line(fields: dict[str, str]) -> None:
    events = [make_event(event_type="SECURITY_BLOCK", **fields), make_event(event_type="RESPONSE", status="success")]

    json_lines = render_lines(JsonFormatter(), events)
    assert len(json_lines) == 2
    assert {key: value for key, value in json.loads(json_lines[0]).items() if key in fields} == fields

    for formatter in (LineFormatter(), DebugFormatter(), CsvFormatter()):
        lines = render_lines(formatter, events)
        assert len(lines) == 2
        assert RAW_UNSAFE.search(lines[0]) is None

    rows = parse_csv(CsvFormatter().render(events))
    assert len(rows) == 2
    for field, value in fields.items():
        cell = rows[0][CSV_COLUMNS.index(field)]
        if cell[:1] in ("=", "+", "-", "@"):
            assert re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", cell), cell
        expected = escape_text(value)
        assert cell in (expected, "'" + expected)
