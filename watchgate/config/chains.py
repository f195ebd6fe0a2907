"""Plugin sections: validate each entry once, then resolve the chain of every server.

A section is either a list, which applies to every server, or a mapping with
`_global` and server names as keys. A server's chain is the `_global` entries
followed by the server's own entries, where server entries for a policy
replace every `_global` entry for that policy (a disabled server entry so
turns a global plugin off for that server). Disabled entries are then
dropped and the rest sorted by priority, lower first, keeping file order for
equal priorities.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from watchgate.config.commands import GLOBAL_KEY, resolve_path
from watchgate.config.errors import (
    InvalidSetting,
    check_choice,
    convert,
    invalid,
    join_index,
    join_key,
    suggest,
)
from watchgate.config.model import (
    AuditFormat,
    AuditMode,
    CsvConfig,
    FileAuditingConfig,
    FsyncPolicy,
    PluginEntry,
    ToolAllowlistConfig,
    ToolListMode,
)
from watchgate.config.schema import (
    RawCsvConfig,
    RawFileAuditing,
    RawPluginEntry,
    RawToolAllowlist,
    set_fields,
)

DEFAULT_PRIORITY = next(f.default for f in msgspec.structs.fields(PluginEntry) if f.name == "priority")
FORMAT_ALIASES = {"simple": "line"}
QUOTE_STYLES = ("minimal", "all", "nonnumeric", "none")
# These would end a CSV record or clash with the quote character.
FORBIDDEN_DELIMITERS = {'"', "\r", "\n", "\0"}
# Settings that belong to the file's writer, so entries sharing a file must agree on them.
SHARED_FILE_SETTINGS = ("format", "max_file_size_mb", "backup_count", "csv_config", "fsync", "fsync_interval")


@dataclass(frozen=True)
class Context:
    """Inputs of entry validation besides the entry: the config file's folder and the server names."""

    base_dir: str
    server_names: Sequence[str]


@dataclass(frozen=True)
class ParsedEntry:
    """One validated entry as written, before it is resolved for a server."""

    policy: str
    enabled: bool
    priority: int
    path: str
    # None for a disabled entry written without settings.
    config: ToolAllowlistConfig | FileAuditingConfig | None
    # Per-server tool lists when `tools` is a mapping.
    tools_by_server: Mapping[str, tuple[str, ...]] | None = None

    def resolve(self, server: str) -> PluginEntry:
        config = self.config
        if self.tools_by_server is not None:
            config = msgspec.structs.replace(config, tools=self.tools_by_server.get(server, ()))
        return PluginEntry(policy=self.policy, priority=self.priority, config=config)


Section = dict[str, list[ParsedEntry]]


def parse_section(raw: Any, path: str, kind: str, context: Context) -> Section:
    """Validate one plugin section (`security` or `auditing`) into entries keyed by `_global` or server."""
    if raw is msgspec.UNSET:
        return {}
    if isinstance(raw, list):
        return {GLOBAL_KEY: _parse_entries(raw, path, kind, context)}

    section: Section = {}
    for key, value in raw.items():
        key_path = join_key(path, key)
        if key != GLOBAL_KEY and key not in context.server_names:
            options = [GLOBAL_KEY, *context.server_names]
            raise InvalidSetting(
                key_path,
                f"unknown server {key!r}: expected {GLOBAL_KEY} or a configured server name "
                f"({', '.join(context.server_names)}){suggest(key, options)}",
            )
        entries = convert(value, list[RawPluginEntry], key_path)
        section[key] = _parse_entries(entries, key_path, kind, context)
    return section


def resolve_chain(section: Section, server: str) -> tuple[PluginEntry, ...]:
    """Return the enabled entries for one server, in the order the plugins run."""
    own = section.get(server, [])
    replaced = {entry.policy for entry in own}
    merged = [entry for entry in section.get(GLOBAL_KEY, []) if entry.policy not in replaced] + own
    enabled = [entry for entry in merged if entry.enabled]
    enabled.sort(key=lambda entry: entry.priority)
    return tuple(entry.resolve(server) for entry in enabled)


def check_shared_files(sections: Sequence[Section], logging_file: str | None) -> None:
    """Reject audit entries that share a file but disagree on how it is written.

    Entries with the same output_file share one writer, so they must agree on
    format, rotation and fsync. The log file of Watchgate itself must not be an
    audit file.
    """
    first_by_file: dict[str, ParsedEntry] = {}
    for section in sections:
        for entries in section.values():
            for entry in entries:
                if not entry.enabled or not isinstance(entry.config, FileAuditingConfig):
                    continue
                _check_same_writer(entry, first_by_file.setdefault(entry.config.output_file, entry))
                if entry.config.output_file == logging_file:
                    raise InvalidSetting(
                        join_key(join_key(entry.path, "config"), "output_file"),
                        f"invalid value {logging_file!r}: expected a file other than logging.file_path",
                    )


def _check_same_writer(entry: ParsedEntry, first: ParsedEntry) -> None:
    for setting in SHARED_FILE_SETTINGS:
        mine = getattr(entry.config, setting)
        theirs = getattr(first.config, setting)
        if mine != theirs:
            raise InvalidSetting(
                join_key(join_key(entry.path, "config"), setting),
                f"invalid value {_setting_text(mine)}: expected {_setting_text(theirs)} as set by "
                f"{first.path} for the same output_file {entry.config.output_file!r}",
            )


def _setting_text(value: Any) -> str:
    if isinstance(value, msgspec.Struct):
        return repr(msgspec.structs.asdict(value))
    return repr(value.value if hasattr(value, "value") else value)


def _parse_entries(raw_entries: list[RawPluginEntry], path: str, kind: str, context: Context) -> list[ParsedEntry]:
    entries = []
    for index, raw in enumerate(raw_entries):
        entries.append(_parse_entry(raw, join_index(path, index), kind, context))
    return entries


def _parse_entry(raw: RawPluginEntry, path: str, kind: str, context: Context) -> ParsedEntry:
    policy = _check_policy(raw.policy, join_key(path, "policy"), kind)
    priority = raw.priority if raw.priority is not msgspec.UNSET else DEFAULT_PRIORITY
    config_path = join_key(path, "config")

    # A bare `{policy: x, enabled: false}` only switches a global entry off, so it needs no settings.
    if not raw.enabled and not raw.config:
        return ParsedEntry(policy=policy, enabled=False, priority=priority, path=path, config=None)

    parser = _PARSERS[policy]
    config, tools_by_server = parser(raw.config, config_path, context)
    return ParsedEntry(
        policy=policy,
        enabled=raw.enabled,
        priority=priority,
        path=path,
        config=config,
        tools_by_server=tools_by_server,
    )


def _check_policy(policy: str, path: str, kind: str) -> str:
    if policy in POLICIES[kind]:
        return policy
    for other_kind, policies in POLICIES.items():
        if policy in policies:
            raise invalid(
                path,
                policy,
                f"{_choices(POLICIES[kind])} ({policy} is a {other_kind} plugin, "
                f"so it belongs under plugins.{other_kind})",
            )
    hint = suggest(policy, POLICIES[kind]) or suggest(policy, [p for ps in POLICIES.values() for p in ps])
    known = " and ".join(f"{', '.join(policies)} (plugins.{section})" for section, policies in POLICIES.items())
    raise invalid(path, policy, f"{_choices(POLICIES[kind])}{hint}. Known plugins are {known}")


def _choices(options: Sequence[str]) -> str:
    return options[0] if len(options) == 1 else "one of " + ", ".join(options)


def _parse_tool_allowlist(config: dict[str, Any], path: str, context: Context):
    raw = convert(config, RawToolAllowlist, path)
    settings = set_fields(raw, "block_message")
    if raw.mode is not msgspec.UNSET:
        mode = check_choice(join_key(path, "mode"), raw.mode, [m.value for m in ToolListMode])
        settings["mode"] = ToolListMode(mode)

    tools_path = join_key(path, "tools")
    tools_by_server = None
    if isinstance(raw.tools, list):
        settings["tools"] = _tool_names(raw.tools, tools_path)
    elif isinstance(raw.tools, dict):
        tools_by_server = {}
        for server, names in raw.tools.items():
            server_path = join_key(tools_path, server)
            if server not in context.server_names:
                raise InvalidSetting(
                    server_path,
                    f"unknown server {server!r}: expected a configured server name "
                    f"({', '.join(context.server_names)}){suggest(server, context.server_names)}",
                )
            tools_by_server[server] = _tool_names(convert(names, list[str], server_path), server_path)
    return ToolAllowlistConfig(**settings), tools_by_server


def _tool_names(names: list[str], path: str) -> tuple[str, ...]:
    for index, name in enumerate(names):
        if not name.strip():
            raise invalid(join_index(path, index), name, "a tool name")
    return tuple(dict.fromkeys(names))


def _parse_file_auditing(config: dict[str, Any], path: str, context: Context):
    raw = convert(config, RawFileAuditing, path)
    settings = set_fields(
        raw, "max_file_size_mb", "backup_count", "critical", "include_bodies", "max_body_bytes", "fsync_interval"
    )

    output_path = join_key(path, "output_file")
    output_file = resolve_path(raw.output_file, output_path, context.base_dir, os.environ)
    if os.path.isdir(output_file) or raw.output_file.endswith("/"):
        raise invalid(output_path, raw.output_file, "a file path, not a directory")
    settings["output_file"] = output_file

    if raw.format is not msgspec.UNSET:
        formats = [f.value for f in AuditFormat] + list(FORMAT_ALIASES)
        audit_format = check_choice(join_key(path, "format"), raw.format, formats)
        settings["format"] = AuditFormat(FORMAT_ALIASES.get(audit_format, audit_format))
    if raw.mode is not msgspec.UNSET:
        settings["mode"] = AuditMode(check_choice(join_key(path, "mode"), raw.mode, [m.value for m in AuditMode]))
    if raw.fsync is not msgspec.UNSET:
        settings["fsync"] = FsyncPolicy(
            check_choice(join_key(path, "fsync"), raw.fsync, [p.value for p in FsyncPolicy])
        )
    if raw.csv_config is not msgspec.UNSET:
        settings["csv_config"] = _parse_csv_config(raw.csv_config, join_key(path, "csv_config"))
    return FileAuditingConfig(**settings), None


def _parse_csv_config(raw: RawCsvConfig, path: str) -> CsvConfig:
    settings = {}
    if raw.delimiter is not msgspec.UNSET:
        if raw.delimiter in FORBIDDEN_DELIMITERS:
            raise invalid(
                join_key(path, "delimiter"),
                raw.delimiter,
                "a single character other than a double quote, a line break or NUL",
            )
        settings["delimiter"] = raw.delimiter
    if raw.quote_style is not msgspec.UNSET:
        settings["quote_style"] = check_choice(join_key(path, "quote_style"), raw.quote_style, QUOTE_STYLES)
    return CsvConfig(**settings)


SettingsParser = Callable[[dict[str, Any], str, Context], tuple[Any, Any]]
POLICIES: dict[str, tuple[str, ...]] = {
    "security": ("tool_allowlist",),
    "auditing": ("file_auditing",),
}
_PARSERS: dict[str, SettingsParser] = {
    "tool_allowlist": _parse_tool_allowlist,
    "file_auditing": _parse_file_auditing,
}
