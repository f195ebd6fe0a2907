"""Renderers that turn a batch of audit events into the bytes of one file write.

Every format writes exactly one physical line per event, so a line count is an
event count and `tail -f`, `grep` and `wc -l` work on every format:

- json: one JSON object per line, keys in AuditEvent field order, unset fields
  omitted.
- line: `2024-06-16 10:30:15 UTC - REQUEST: tools/call - list_directory - ALLOWED`
  followed by ` - key=value` context (server, id, duration, ...). For people:
  a value may itself contain " - ", so parse json or debug instead.
- debug: `[2024-06-16 10:30:15.123] REQUEST_ID=123 SOURCE=... EVENT=REQUEST ...`
  in logfmt style. Values that contain a space, `"` or `=` are double-quoted with
  `"` escaped as `\\"`. METADATA, PARAMS and RESULT come last as compact JSON.
- csv: a constant header row, then one row per event (columns in CSV_COLUMNS).

Text that a client or an upstream chose (tool names, reasons, ids) must not be
able to forge a record. Text formats therefore escape a backslash as `\\\\`, a
newline as `\\n`, CR as `\\r`, tab as `\\t`, other C0 and C1 controls and DEL as
`\\xNN`, and the Unicode line and paragraph separators and bidirectional controls
as `\\uNNNN`. JSON already escapes C0 controls. The json renderer (and JSON
embedded in debug and csv) also writes C1 controls, the separators and the
bidirectional controls as `\\uNNNN`, which keeps it valid JSON and stops a
terminal from showing a spoofed line.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from watchgate.audit.events import AuditEvent
from watchgate.config.model import AuditFormat, CsvConfig

CSV_COLUMNS: tuple[str, ...] = (
    "timestamp",
    "event_type",
    "method",
    "tool",
    "status",
    "request_id",
    "plugin",
    "reason",
    "duration_ms",
    "server_name",
    "client_name",
    "session_id",
    "user",
    "error_code",
    "plugin_metadata",
    "client_version",
    "pid",
    "exit_code",
    "signal",
    "worker",
    "seq",
    "params",
    "result",
)

CSV_QUOTE_STYLES = ("minimal", "all", "nonnumeric", "none")

# Characters escaped in line, debug and csv text: C0 controls, backslash, DEL and
# C1 controls, the line and paragraph separators, bidirectional marks, embeddings,
# overrides and isolates, and lone surrogates (which UTF-8 cannot encode).
_UNSAFE_TEXT = re.compile(
    "[\x00-\x1f\\\\\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

# The same characters minus those that JSON encoders already escape, as UTF-8
# byte sequences. UTF-8 is self-synchronising, so a match never starts inside
# another character.
_UNSAFE_JSON_SEQUENCES = frozenset(
    chr(code).encode("utf-8")
    for code in (*range(0x80, 0xA0), 0x061C, 0x200E, 0x200F, *range(0x2028, 0x202F), *range(0x2066, 0x206A))
)
_UNSAFE_JSON = re.compile(b"|".join(re.escape(sequence) for sequence in sorted(_UNSAFE_JSON_SEQUENCES)))

_ISO_UTC = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.(\d+))?Z\Z")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_FORMULA_START = frozenset("=+-@")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def escape_text(text: str) -> str:
    """Escape the characters that could end or disguise a record (see the module docstring)."""
    # isprintable() is False for every escaped character except the backslash, and
    # is much faster than a regex search on the clean text that is the common case.
    if text.isprintable() and "\\" not in text:
        return text
    return _UNSAFE_TEXT.sub(_escape_char, text)


def _json_escape_match(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match.group().decode("utf-8"))


def _contains_unsafe_json(data: bytes) -> bool:
    # A single-byte bytes.find runs at memory speed, unlike a regex search or a
    # multi-byte find, so look for lead bytes and check the sequence only there.
    for lead, length in ((0xC2, 2), (0xD8, 2), (0xE2, 3)):
        position = data.find(lead)
        while position != -1:
            if data[position : position + length] in _UNSAFE_JSON_SEQUENCES:
                return True
            position = data.find(lead, position + 1)
    return False


def _escape_json_bytes(data: bytes) -> bytes:
    if data.isascii() or not _contains_unsafe_json(data):
        return data
    return _UNSAFE_JSON.sub(_json_escape_match, data)


def field_text(value: Any) -> str:
    """Return a field as text: an enum member as its value, anything else via str()."""
    if type(value) is str:
        return value
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def format_number(value: float | int) -> str:
    """Format a number as JSON would, but write integral floats without `.0` (1333.0 -> 1333)."""
    if type(value) is float and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _format_seconds(duration_ms: float) -> str:
    text = f"{duration_ms / 1000:.6f}".rstrip("0")
    if text.endswith("."):
        text += "0"
    return text + "s"


def _sanitize(value: Any) -> Any:
    """Return a copy of the value in which lone surrogates are replaced by `\\udXXX` text.

    Python strings can contain lone surrogates (from JSON such as "\\ud800"),
    but UTF-8 cannot encode them, so msgspec raises UnicodeEncodeError.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_sanitize(key): _sanitize(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_sanitize(item) for item in value]
    if isinstance(value, msgspec.Struct):
        return _sanitize(msgspec.structs.asdict(value))
    return value


def _encode_fallback(value: Any) -> str:
    # msgspec calls this for types it cannot encode, such as a custom object in params.
    return repr(value)


_ENCODER = msgspec.json.Encoder(enc_hook=_encode_fallback)


def encode_json(value: Any) -> bytes:
    """Encode any value as compact JSON, falling back to repr() and escaped text where needed."""
    try:
        data = _ENCODER.encode(value)
    except UnicodeEncodeError:
        data = _ENCODER.encode(_sanitize(value))
    return _escape_json_bytes(data)


def _json_text(value: Any) -> str:
    return encode_json(value).decode("utf-8")


class AuditFormatter(abc.ABC):
    """Renderer for one output format; `header` starts every new file (empty except for csv)."""

    name: str
    header: bytes = b""

    @abc.abstractmethod
    def render(self, events: Sequence[AuditEvent]) -> bytes:
        """Render a batch as the bytes to append: one newline-terminated line per event."""


class JsonFormatter(AuditFormatter):
    name = "json"

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder(enc_hook=_encode_fallback)

    def render(self, events: Sequence[AuditEvent]) -> bytes:
        try:
            data = self._encoder.encode_lines(events)
        except UnicodeEncodeError:
            data = b"".join(self._encode_sanitized(event) for event in events)
        return _escape_json_bytes(data)

    def _encode_sanitized(self, event: AuditEvent) -> bytes:
        try:
            return self._encoder.encode(event) + b"\n"
        except UnicodeEncodeError:
            fields = _sanitize(msgspec.structs.asdict(event))
            fields = {key: value for key, value in fields.items() if value is not None}
            return self._encoder.encode(fields) + b"\n"


def _line_timestamp(timestamp: str) -> str:
    # Fast path for the gateway's own form, 2026-12-04T10:30:15.123Z, without a regular expression.
    if len(timestamp) == 24 and timestamp[10] == "T" and timestamp[19] == "." and timestamp[23] == "Z":
        return f"{timestamp[:10]} {timestamp[11:19]} UTC"
    match = _ISO_UTC.match(timestamp)
    if match is None:
        return timestamp
    return f"{match.group(1)} {match.group(2)} UTC"


# Text fields of AuditEvent; the line renderer escapes exactly these.
_TEXT_FIELDS = (
    "timestamp",
    "event_type",
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


def _escaped_event(event: AuditEvent) -> AuditEvent:
    """Return a copy of the event with every text field escaped and converted to str."""
    changes = {}
    for field in _TEXT_FIELDS:
        value = getattr(event, field)
        if value is not None:
            changes[field] = escape_text(field_text(value))
    return msgspec.structs.replace(event, **changes)


def _is_clean(text: str) -> bool:
    return text.isprintable() and "\\" not in text


def _render_line(event: AuditEvent, time_text: str) -> str:
    """Render one line record without escaping; the caller verifies the result."""
    event_type = event.event_type
    if type(event_type) is not str:
        event_type = field_text(event_type)
    show_server = True

    if event_type == "REQUEST":
        parts = (event.method, event.tool, event.status, event.reason)
    elif event_type == "RESPONSE":
        parts = (event.status, event.reason)
    elif event_type == "SECURITY_BLOCK" or event_type == "TOOLS_FILTERED":
        target = event.tool if event.tool is not None else event.method
        parts = (target, f"[{event.plugin or '-'}] {event.reason or ''}".rstrip())
    elif event_type.startswith("UPSTREAM_"):
        parts = (event.server_name, event.reason)
        show_server = False
    elif event_type.startswith("SESSION_"):
        parts = (event.client_name, event.client_version, event.session_id, event.reason)
    else:
        parts = (event.method, event.tool, event.status, event.reason)
    subject = " - ".join([part for part in parts if part is not None])

    line = f"{time_text} - {event_type}: {subject}" if subject else f"{time_text} - {event_type}"
    if event.server_name is not None and show_server:
        line += " - server=" + event.server_name
    if event.request_id is not None:
        line += " - id=" + event.request_id
    if event.duration_ms is not None:
        line += " - duration=" + format_number(event.duration_ms) + "ms"
    if event.error_code is not None:
        line += f" - error_code={event.error_code}"
    if event.user is not None:
        line += " - user=" + event.user
    if event.pid is not None:
        line += f" - pid={event.pid}"
    if event.exit_code is not None:
        line += f" - exit_code={event.exit_code}"
    if event.signal is not None:
        line += " - signal=" + event.signal
    if event.worker is not None:
        line += " - worker=" + event.worker
    if event.seq is not None:
        line += f" - seq={event.seq}"
    return line


class LineFormatter(AuditFormatter):
    name = "line"

    def render(self, events: Sequence[AuditEvent]) -> bytes:
        # Render every line unescaped and check the whole batch with one pass: clean
        # text is the common case. Only lines that fail the check (or hold a value
        # that is not a str) are rendered again from an escaped copy of their event.
        lines = []
        retry = []
        last_timestamp = None
        time_text = ""
        for index, event in enumerate(events):
            try:
                if event.timestamp != last_timestamp:
                    time_text = _line_timestamp(event.timestamp)
                    last_timestamp = event.timestamp
                lines.append(_render_line(event, time_text))
            except TypeError:
                lines.append("")
                retry.append(index)

        if not _is_clean("".join(lines)):
            retry.extend(index for index, line in enumerate(lines) if not _is_clean(line))
        for index in retry:
            event = _escaped_event(events[index])
            lines[index] = _render_line(event, _line_timestamp(event.timestamp))

        lines.append("")
        return "\n".join(lines).encode("utf-8")


def _debug_timestamp(timestamp: str) -> str:
    if len(timestamp) == 24 and timestamp[10] == "T" and timestamp[19] == "." and timestamp[23] == "Z":
        return f"{timestamp[:10]} {timestamp[11:23]}"
    match = _ISO_UTC.match(timestamp)
    if match is None:
        return _debug_value(field_text(timestamp))
    fraction = ((match.group(3) or "") + "000")[:3]
    return f"{match.group(1)} {match.group(2)}.{fraction}"


def _debug_value(text: str) -> str:
    text = escape_text(text)
    if text and " " not in text and '"' not in text and "=" not in text:
        return text
    return '"' + text.replace('"', '\\"') + '"'


# Event types whose message came from the upstream server rather than the client.
_SERVER_SOURCED = frozenset({"RESPONSE", "TOOLS_FILTERED", "UPSTREAM_START", "UPSTREAM_EXIT", "UPSTREAM_RESTART"})

_DEBUG_TEXT_FIELDS = (
    ("METHOD", "method"),
    ("TOOL", "tool"),
    ("STATUS", "status"),
    ("PLUGIN", "plugin"),
    ("REASON", "reason"),
)
_DEBUG_CONTEXT_FIELDS = (
    ("SERVER", "server_name"),
    ("CLIENT", "client_name"),
    ("CLIENT_VERSION", "client_version"),
    ("SESSION", "session_id"),
    ("USER", "user"),
    ("ERROR_CODE", "error_code"),
    ("PID", "pid"),
    ("EXIT_CODE", "exit_code"),
    ("SIGNAL", "signal"),
    ("WORKER", "worker"),
    ("SEQ", "seq"),
)
_DEBUG_JSON_FIELDS = (("METADATA", "plugin_metadata"), ("PARAMS", "params"), ("RESULT", "result"))


class DebugFormatter(AuditFormatter):
    """Every field of the event as KEY=value.

    SOURCE names who sent the message: the upstream server for responses,
    filtered tool lists and upstream lifecycle events, the client otherwise.
    DURATION is in seconds.
    """

    name = "debug"

    def render(self, events: Sequence[AuditEvent]) -> bytes:
        lines = [self._render_event(event) for event in events]
        lines.append("")
        return "\n".join(lines).encode("utf-8")

    def _render_event(self, event: AuditEvent) -> str:
        event_type = field_text(event.event_type)
        parts = [f"[{_debug_timestamp(event.timestamp)}]"]
        if event.request_id is not None:
            parts.append("REQUEST_ID=" + _debug_value(field_text(event.request_id)))
        source = event.server_name if event_type in _SERVER_SOURCED else event.client_name
        if source is not None:
            parts.append("SOURCE=" + _debug_value(source))
        parts.append("EVENT=" + _debug_value(event_type))

        for key, field in _DEBUG_TEXT_FIELDS:
            value = getattr(event, field)
            if value is not None:
                parts.append(f"{key}={_debug_value(field_text(value))}")
        if event.duration_ms is not None:
            parts.append("DURATION=" + _format_seconds(event.duration_ms))
        for key, field in _DEBUG_CONTEXT_FIELDS:
            value = getattr(event, field)
            if value is not None:
                parts.append(f"{key}={_debug_value(field_text(value))}")
        for key, field in _DEBUG_JSON_FIELDS:
            value = getattr(event, field)
            if value is not None:
                parts.append(f"{key}={_json_text(value)}")
        return " ".join(parts)


class CsvFormatter(AuditFormatter):
    """Rows with the columns of CSV_COLUMNS, quoted according to `csv_config.quote_style`.

    Quote styles follow Python's csv module: minimal quotes cells that contain the
    delimiter or `"`, all quotes every cell, nonnumeric quotes every cell except
    numbers, and none never quotes but escapes the delimiter and `"` with a
    backslash. Text cells are escaped like the line format, so every row is one
    physical line. plugin_metadata, params and result are compact JSON.

    A text cell that starts with `=`, `+`, `-` or `@` gets a leading `'` so that a
    spreadsheet shows it as text instead of running it as a formula. Cells that
    are plain numbers (`-32601`, `-1.5e3`) are left alone, because a spreadsheet
    reads them as numbers, which cannot run anything. So numeric fields such as
    error_code and a negative request id keep their value. Tab and CR at the
    start are escaped to `\\t` and `\\r` and so need no prefix.

    NOTE: pipelines such as `awk -F','` and `cut -d','` split on every comma,
    so they miscount columns in a row whose cells before the one they read
    contain a quoted comma. CSV-aware tools read such rows correctly.
    """

    name = "csv"

    def __init__(self, csv_config: CsvConfig | None = None) -> None:
        config = csv_config or CsvConfig()
        delimiter = config.delimiter
        if len(delimiter) != 1 or delimiter in '"\\\r\n' or delimiter.isalnum():
            raise ValueError(
                f"invalid CSV delimiter {delimiter!r}: "
                "expected one character other than a letter, digit, quote, backslash or line break"
            )
        if config.quote_style not in CSV_QUOTE_STYLES:
            raise ValueError(
                f"invalid CSV quote_style {config.quote_style!r}: expected one of {', '.join(CSV_QUOTE_STYLES)}"
            )
        self.delimiter = delimiter
        self.quote_style = config.quote_style
        self._empty_cell = '""' if config.quote_style in ("all", "nonnumeric") else ""
        header = delimiter.join([self._quote_text(column) for column in CSV_COLUMNS])
        self.header = (header + "\n").encode("utf-8")

    def render(self, events: Sequence[AuditEvent]) -> bytes:
        lines = [self._render_row(event) for event in events]
        lines.append("")
        return "\n".join(lines).encode("utf-8")

    def _render_row(self, event: AuditEvent) -> str:
        # One expression per column of CSV_COLUMNS, in that order. It is spelled
        # out because a loop over the columns was about 30% slower when measured.
        empty = self._empty_cell
        text = self._text_cell
        number = self._number_cell
        data = self._json_cell
        e = event
        return self.delimiter.join(
            [
                text(e.timestamp),
                text(e.event_type),
                empty if e.method is None else text(e.method),
                empty if e.tool is None else text(e.tool),
                empty if e.status is None else text(e.status),
                empty if e.request_id is None else text(e.request_id),
                empty if e.plugin is None else text(e.plugin),
                empty if e.reason is None else text(e.reason),
                empty if e.duration_ms is None else number(e.duration_ms),
                empty if e.server_name is None else text(e.server_name),
                empty if e.client_name is None else text(e.client_name),
                empty if e.session_id is None else text(e.session_id),
                empty if e.user is None else text(e.user),
                empty if e.error_code is None else number(e.error_code),
                empty if e.plugin_metadata is None else data(e.plugin_metadata),
                empty if e.client_version is None else text(e.client_version),
                empty if e.pid is None else number(e.pid),
                empty if e.exit_code is None else number(e.exit_code),
                empty if e.signal is None else text(e.signal),
                empty if e.worker is None else text(e.worker),
                empty if e.seq is None else number(e.seq),
                empty if e.params is None else data(e.params),
                empty if e.result is None else data(e.result),
            ]
        )

    def _text_cell(self, value: Any) -> str:
        text = escape_text(value if type(value) is str else field_text(value))
        if text[:1] in _FORMULA_START and _PLAIN_NUMBER.match(text) is None:
            text = "'" + text
        if self.quote_style == "minimal" and self.delimiter not in text and '"' not in text:
            return text
        return self._quote_text(text)

    def _number_cell(self, value: float | int) -> str:
        text = format_number(value)
        return '"' + text + '"' if self.quote_style == "all" else text

    def _json_cell(self, value: Any) -> str:
        text = _json_text(value)
        if self.quote_style == "none":
            # A reader with escapechar "\\" turns "\\\\" back into the JSON's own backslash.
            text = text.replace("\\", "\\\\")
        return self._quote_text(text)

    def _quote_text(self, text: str) -> str:
        style = self.quote_style
        if style == "minimal":
            if self.delimiter in text or '"' in text:
                return '"' + text.replace('"', '""') + '"'
            return text
        if style == "none":
            return text.replace('"', '\\"').replace(self.delimiter, "\\" + self.delimiter)
        return '"' + text.replace('"', '""') + '"'


def make_formatter(format: AuditFormat | str, csv_config: CsvConfig | None = None) -> AuditFormatter:
    """Return the renderer for a configured format; "simple" is an alias of "line"."""
    name = format.value if isinstance(format, AuditFormat) else format
    if name == "json":
        return JsonFormatter()
    if name in ("line", "simple"):
        return LineFormatter()
    if name == "debug":
        return DebugFormatter()
    if name == "csv":
        return CsvFormatter(csv_config)
    raise ValueError(f"invalid audit format {name!r}: expected one of json, line, debug, csv")
