"""ConfigError, key paths, and the translation of msgspec validation errors.

A key path names one place in the YAML document the way a user would point
at it: mapping keys joined with dots and list positions in brackets, for
example `plugins.security[0].config.mode`.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable
from typing import Any

import msgspec
import msgspec.inspect as mi

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MAX_VALUE_CHARS = 80


class ConfigError(Exception):
    """An unreadable or invalid configuration file.

    str() is the whole message, for example
    "x.yaml: proxy.transport: invalid value 'http': expected stdio".
    `file` is the path as the caller gave it, and `key_path` is None when the
    problem is the file itself (missing, unreadable, not YAML).
    """

    def __init__(self, message: str, *, file: str | None = None, key_path: str | None = None):
        super().__init__(message)
        self.file = file
        self.key_path = key_path


class InvalidSetting(Exception):
    """A problem at one key path, raised before the file name is added."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


def join_key(path: str, key: str) -> str:
    """Append a mapping key to a key path, bracketing keys that contain dots or spaces."""
    if not _PLAIN_KEY.fullmatch(key):
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


def join_index(path: str, index: int) -> str:
    return f"{path}[{index}]"


def show_value(value: Any) -> str:
    """Render a YAML value for a message: YAML spelling for null and booleans, repr otherwise."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


def suggest(word: str, options: Iterable[str]) -> str:
    """Return " (did you mean 'x'?)" for the closest option, or "" when none is close."""
    by_lower = {option.lower(): option for option in options}
    matches = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    if not matches:
        return ""
    return f" (did you mean {by_lower[matches[0]]!r}?)"


def invalid(path: str, value: Any, expected: str) -> InvalidSetting:
    return InvalidSetting(path, f"invalid value {show_value(value)}: expected {expected}")


def check_choice(path: str, value: Any, options: Iterable[str]) -> str:
    """Return `value` if it is one of `options`, else raise InvalidSetting with a suggestion."""
    options = list(options)
    if isinstance(value, str) and value in options:
        return value
    expected = options[0] if len(options) == 1 else "one of " + ", ".join(options)
    if isinstance(value, str):
        expected += suggest(value, options)
    raise invalid(path, value, expected)


def unknown_key(path: str, key: str, known: Iterable[str]) -> InvalidSetting:
    """Build the error for a key that is not allowed at `path`."""
    known = list(known)
    hint = suggest(key, known)
    if not hint:
        hint = ": expected one of " + ", ".join(known)
    return InvalidSetting(join_key(path, key), "unknown key" + hint)


def convert(data: Any, type_: Any, path: str) -> Any:
    """Validate `data` (found at key `path`) into `type_` with msgspec.

    Raises InvalidSetting with the key path, the bad value and the expected
    type in words, in place of msgspec's `$.a[0].b` style message.
    """
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise _translate(str(exc), data, type_, path) from None


_LOCATION = re.compile(r"^(?P<message>.*) - at `(?P<key>key` in `)?(?P<location>\$[^`]*)`$", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(?P<name>[^`]*)`")
_MISSING_FIELD = re.compile(r"Object missing required field `(?P<name>[^`]*)`")
_MISSING = object()


def _translate(message: str, data: Any, type_: Any, path: str) -> InvalidSetting:
    # msgspec leaves out the location when the problem is at the root.
    match = _LOCATION.match(message)
    location = match["location"] if match else "$"
    value, info, path = _walk(data, _type_info(type_), path, location[1:])
    if match:
        message = match["message"]
        if match["key"]:
            return InvalidSetting(path or "top level", "invalid key: expected a string")

    unknown = _UNKNOWN_FIELD.match(message)
    if unknown and isinstance(info, mi.StructType):
        return unknown_key(path, unknown["name"], [field.encode_name for field in info.fields])

    missing = _MISSING_FIELD.match(message)
    if missing and isinstance(info, mi.StructType):
        field = next(f for f in info.fields if f.encode_name == missing["name"])
        return InvalidSetting(
            join_key(path, field.encode_name),
            f"missing required key: expected {describe_type(field.type)}",
        )

    if value is _MISSING or info is None:
        return InvalidSetting(path or "top level", message)
    return invalid(path or "top level", value, describe_type(info))


@functools.cache
def _type_info(type_: Any) -> mi.Type:
    return mi.type_info(type_)


def _walk(data: Any, info: mi.Type | None, path: str, location: str):
    """Follow a msgspec location such as `.a[0].b` through the data and the type together."""
    for field_name, index in _STEP.findall(location):
        info = _pick_union_member(info, data)
        if field_name:
            path = join_key(path, field_name)
            data = data.get(field_name, _MISSING) if isinstance(data, dict) else _MISSING
            info = _field_type(info, field_name)
        elif index == "...":
            # msgspec does not report which mapping key failed.
            path = f"{path}[...]"
            data = _MISSING
            info = info.value_type if isinstance(info, mi.DictType) else None
        else:
            path = join_index(path, int(index))
            position = int(index)
            data = data[position] if isinstance(data, list) and position < len(data) else _MISSING
            info = info.item_type if isinstance(info, mi.ListType) else None
    return data, _pick_union_member(info, data), path


def _field_type(info: mi.Type | None, name: str) -> mi.Type | None:
    if isinstance(info, mi.StructType):
        for field in info.fields:
            if field.encode_name == name:
                return field.type
    return None


def _pick_union_member(info: mi.Type | None, data: Any) -> mi.Type | None:
    """Narrow a union to its struct, mapping or list member when the data is one."""
    if not isinstance(info, mi.UnionType):
        return info
    member_kinds: tuple[type, ...] = ()
    if isinstance(data, dict):
        member_kinds = (mi.StructType, mi.DictType)
    elif isinstance(data, list):
        member_kinds = (mi.ListType,)
    for member in info.types:
        if member_kinds and isinstance(member, member_kinds):
            return member
    return info


def describe_type(info: mi.Type) -> str:
    """Describe an accepted type in words, for example "an integer from 0 to 100"."""
    if isinstance(info, mi.UnionType):
        return " or ".join(describe_type(member) for member in info.types)
    if isinstance(info, mi.BoolType):
        return "true or false"
    if isinstance(info, mi.NoneType):
        return "null"
    if isinstance(info, mi.IntType):
        return "an integer" + _describe_bounds(info)
    if isinstance(info, mi.FloatType):
        return "a number" + _describe_bounds(info)
    if isinstance(info, mi.StrType):
        return _describe_str(info)
    if isinstance(info, mi.ListType):
        if isinstance(info.item_type, mi.StrType):
            return "a list of strings"
        if isinstance(info.item_type, mi.StructType):
            return "a list of mappings"
        return "a list"
    if isinstance(info, (mi.DictType, mi.StructType)):
        return "a mapping"
    return "a value of another type"


def _describe_str(info: mi.StrType) -> str:
    if info.min_length == 1 and info.max_length == 1:
        return "a single character"
    if info.min_length == 1:
        return "a non-empty string"
    return "a string"


def _describe_bounds(info: mi.IntType | mi.FloatType) -> str:
    if info.ge is not None and info.le is not None:
        return f" from {_number(info.ge)} to {_number(info.le)}"
    bounds = []
    for symbol, bound in ((">", info.gt), (">=", info.ge), ("<", info.lt), ("<=", info.le)):
        if bound is not None:
            bounds.append(f"{symbol} {_number(bound)}")
    return (" " + " and ".join(bounds)) if bounds else ""


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
