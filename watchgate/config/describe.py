"""A readable summary of a resolved configuration, printed by `watchgate check`."""

from __future__ import annotations

import shlex

from watchgate.config.model import (
    AuditFormat,
    Config,
    FileAuditingConfig,
    PluginEntry,
    ServerConfig,
    ToolAllowlistConfig,
    ToolListMode,
)

_INDENT = "  "


def describe_config(config: Config) -> str:
    """Describe every server with its resolved plugin chains, then logging and service settings.

    Environment values are left out because they often contain secrets, so only
    the variable names are listed.
    """
    lines = [
        f"Configuration: {config.path}",
        f"Transport: stdio, max message size {_size(config.max_message_bytes)}",
    ]
    for server in config.servers:
        lines.append("")
        lines.extend(_describe_server(server))
        lines.extend(_describe_chain("security", config.security.get(server.name, ())))
        lines.extend(_describe_chain("auditing", config.auditing.get(server.name, ())))

    lines.append("")
    lines.append(_describe_logging(config))
    service = config.service
    lines.append(
        f"Service: runtime dir {service.runtime_dir}, shutdown timeout {_seconds(service.shutdown_timeout)}, "
        f"heartbeat every {_seconds(service.heartbeat_interval)} "
        f"(timeout {_seconds(service.heartbeat_timeout)}), socket group {service.socket_group or 'none'}"
    )
    return "\n".join(lines) + "\n"


def _describe_server(server: ServerConfig) -> list[str]:
    restart = server.restart
    env = ", ".join(sorted(server.env)) + " (values hidden)" if server.env else "none"
    return [
        f"Server {server.name}",
        f"{_INDENT}command: {shlex.join(server.command)}",
        f"{_INDENT}cwd: {server.cwd or 'inherited from Watchgate'}",
        f"{_INDENT}env: {env}",
        f"{_INDENT}timeouts: startup {_seconds(server.startup_timeout)}, "
        f"request {_seconds(server.request_timeout)}, shutdown grace {_seconds(server.shutdown_grace)}, "
        f"terminate {_seconds(server.terminate_timeout)}",
        f"{_INDENT}restart: backoff {_seconds(restart.backoff_initial)} to {_seconds(restart.backoff_max)}, "
        f"at most {restart.max_restarts} restarts in {_seconds(restart.restart_window)}, "
        f"healthy after {_seconds(restart.healthy_after)}",
    ]


def _describe_chain(kind: str, entries: tuple[PluginEntry, ...]) -> list[str]:
    if not entries:
        consequence = " (every tool is allowed)" if kind == "security" else " (nothing is recorded)"
        return [f"{_INDENT}{kind} plugins: none{consequence}"]

    lines = [f"{_INDENT}{kind} plugins, in order:"]
    for number, entry in enumerate(entries, start=1):
        lines.append(f"{_INDENT * 2}{number}. {entry.policy} (priority {entry.priority})")
        if isinstance(entry.config, ToolAllowlistConfig):
            details = _describe_tool_allowlist(entry.config)
        else:
            details = _describe_file_auditing(entry.config)
        lines.extend(f"{_INDENT * 2}   {detail}" for detail in details)
    return lines


def _describe_tool_allowlist(config: ToolAllowlistConfig) -> list[str]:
    details = [f"mode: {config.mode.value}"]
    if config.mode is ToolListMode.ALLOW_ALL:
        return details
    details.append(f"tools: {', '.join(config.tools) if config.tools else 'none'}")
    details.append(f"block message: {config.block_message!r}")
    return details


def _describe_file_auditing(config: FileAuditingConfig) -> list[str]:
    details = [
        f"output file: {config.output_file}",
        f"format: {config.format.value}, mode: {config.mode.value}",
        f"rotation: at {config.max_file_size_mb:g} MB, keeping {config.backup_count} backups",
        f"fsync: {_describe_fsync(config)}, critical: {'yes' if config.critical else 'no'}",
    ]
    if config.format is AuditFormat.CSV:
        details.append(f"csv: delimiter {config.csv_config.delimiter!r}, quote style {config.csv_config.quote_style}")
    if config.include_bodies:
        details.append(f"bodies: included, up to {_size(config.max_body_bytes)} each")
    return details


def _describe_fsync(config: FileAuditingConfig) -> str:
    if config.fsync.value == "interval":
        return f"every {_seconds(config.fsync_interval)}"
    return config.fsync.value


def _describe_logging(config: Config) -> str:
    logging = config.logging
    targets = list(logging.handlers) or ["nowhere"]
    text = f"Logging: level {logging.level} to {', '.join(targets)}"
    if logging.file_path:
        text += (
            f" (file {logging.file_path}, rotation at {logging.max_file_size_mb:g} MB, "
            f"keeping {logging.backup_count} backups)"
        )
    return text


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"
