"""Resolved configuration: what the loader returns after validation.

Every path is absolute, every command is an argument list with `~` and
`${VAR}` expanded, and plugin entries are already resolved per server.
"""

from __future__ import annotations

import enum
from pathlib import Path

import msgspec

DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024


class ToolListMode(enum.Enum):
    ALLOWLIST = "allowlist"
    BLOCKLIST = "blocklist"
    ALLOW_ALL = "allow_all"


class AuditFormat(enum.Enum):
    JSON = "json"
    LINE = "line"
    DEBUG = "debug"
    CSV = "csv"


class AuditMode(enum.Enum):
    ALL = "all"
    SECURITY_ONLY = "security_only"
    OPERATIONS_ONLY = "operations_only"


class FsyncPolicy(enum.Enum):
    NONE = "none"
    INTERVAL = "interval"
    ALWAYS = "always"


class RestartPolicyConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Backoff and give-up limits shared by upstreams, workers and the audit writer."""

    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    max_restarts: int = 5
    restart_window: float = 300.0
    healthy_after: float = 30.0


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One upstream MCP server and how to run it."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str] = {}
    cwd: str | None = None
    startup_timeout: float = 60.0
    request_timeout: float = 300.0
    shutdown_grace: float = 2.0
    terminate_timeout: float = 3.0
    restart: RestartPolicyConfig = RestartPolicyConfig()


class ToolAllowlistConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the tool_allowlist plugin, with `tools` resolved for one server."""

    mode: ToolListMode = ToolListMode.ALLOWLIST
    tools: tuple[str, ...] = ()
    block_message: str = "Tool access denied by security policy"


class CsvConfig(msgspec.Struct, frozen=True, kw_only=True):
    delimiter: str = ","
    quote_style: str = "minimal"  # minimal | all | nonnumeric | none


class FileAuditingConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of one file_auditing entry; `output_file` is absolute."""

    output_file: str
    format: AuditFormat = AuditFormat.JSON
    mode: AuditMode = AuditMode.ALL
    max_file_size_mb: float = 10.0
    backup_count: int = 5
    csv_config: CsvConfig = CsvConfig()
    critical: bool = False
    include_bodies: bool = False
    max_body_bytes: int = 4096
    fsync: FsyncPolicy = FsyncPolicy.NONE
    fsync_interval: float = 1.0


class PluginEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One enabled plugin for one server, in priority order (lower runs first)."""

    policy: str
    priority: int = 50
    config: ToolAllowlistConfig | FileAuditingConfig


class LoggingConfig(msgspec.Struct, frozen=True, kw_only=True):
    level: str = "INFO"
    handlers: tuple[str, ...] = ("stderr",)  # stderr and/or file
    file_path: str | None = None
    max_file_size_mb: float = 10.0
    backup_count: int = 5


class ServiceConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of `watchgate serve`; `runtime_dir` is absolute."""

    runtime_dir: str
    shutdown_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 10.0
    socket_group: str | None = None


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The whole validated configuration file."""

    path: str
    servers: tuple[ServerConfig, ...]
    security: dict[str, tuple[PluginEntry, ...]]
    auditing: dict[str, tuple[PluginEntry, ...]]
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    logging: LoggingConfig = LoggingConfig()
    service: ServiceConfig

    @property
    def base_dir(self) -> Path:
        return Path(self.path).parent

    def server(self, name: str) -> ServerConfig:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)
