"""The YAML document as written: msgspec Structs that reject unknown keys.

A field left out of the file stays UNSET, so the defaults live in one place,
the resolved types in `watchgate.config.model`. Fields whose allowed values
depend on other keys (plugin `config`, mappings keyed by server name, `env`)
are typed loosely here and checked key by key in the loader, so that errors
can name the exact key.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

# Range limits are sanity bounds that catch unit mistakes (milliseconds
# written as seconds, bytes as megabytes), not tuned values.
Seconds = Annotated[float, Meta(gt=0, le=86_400)]
ShortSeconds = Annotated[float, Meta(gt=0, le=3_600)]
NonNegativeSeconds = Annotated[float, Meta(ge=0, le=86_400)]
Megabytes = Annotated[float, Meta(gt=0, le=1_048_576)]
BackupCount = Annotated[int, Meta(ge=0, le=1_000)]
Priority = Annotated[int, Meta(ge=0, le=100)]
NonEmptyStr = Annotated[str, Meta(min_length=1)]

MAX_MESSAGE_BYTES_LIMIT = 1024 * 1024 * 1024
MessageBytes = Annotated[int, Meta(ge=1024, le=MAX_MESSAGE_BYTES_LIMIT)]
BodyBytes = Annotated[int, Meta(ge=0, le=MAX_MESSAGE_BYTES_LIMIT)]


class RawSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every section: unknown keys are errors."""


class RawRestart(RawSection):
    backoff_initial: ShortSeconds | UnsetType = UNSET
    backoff_max: Seconds | UnsetType = UNSET
    max_restarts: Annotated[int, Meta(ge=0, le=1_000)] | UnsetType = UNSET
    restart_window: Seconds | UnsetType = UNSET
    healthy_after: NonNegativeSeconds | UnsetType = UNSET


class RawServer(RawSection):
    command: str | list[str]
    name: str | UnsetType = UNSET
    env: dict[str, Any] | UnsetType = UNSET
    cwd: str | None | UnsetType = UNSET
    startup_timeout: ShortSeconds | UnsetType = UNSET
    request_timeout: Seconds | UnsetType = UNSET
    shutdown_grace: Annotated[float, Meta(ge=0, le=600)] | UnsetType = UNSET
    terminate_timeout: Annotated[float, Meta(gt=0, le=600)] | UnsetType = UNSET
    restart: RawRestart | UnsetType = UNSET


class RawProxy(RawSection):
    transport: str = "stdio"
    upstream: RawServer | UnsetType = UNSET
    upstreams: list[RawServer] | UnsetType = UNSET
    max_message_bytes: MessageBytes | UnsetType = UNSET
    runtime_dir: NonEmptyStr | UnsetType = UNSET


class RawPluginEntry(RawSection):
    policy: str
    enabled: bool = True
    priority: Priority | UnsetType = UNSET
    # Checked against the policy's own settings struct below.
    config: dict[str, Any] = {}


class RawPlugins(RawSection):
    # A list applies to every server. A mapping has `_global` and server names as keys.
    security: list[RawPluginEntry] | dict[str, Any] | UnsetType = UNSET
    auditing: list[RawPluginEntry] | dict[str, Any] | UnsetType = UNSET


class RawToolAllowlist(RawSection):
    mode: str | UnsetType = UNSET
    # A list applies to every server. A mapping gives each server its own list.
    tools: list[str] | dict[str, Any] | UnsetType = UNSET
    block_message: str | UnsetType = UNSET


class RawCsvConfig(RawSection):
    delimiter: Annotated[str, Meta(min_length=1, max_length=1)] | UnsetType = UNSET
    quote_style: str | UnsetType = UNSET


class RawFileAuditing(RawSection):
    output_file: NonEmptyStr
    format: str | UnsetType = UNSET
    mode: str | UnsetType = UNSET
    max_file_size_mb: Megabytes | UnsetType = UNSET
    backup_count: BackupCount | UnsetType = UNSET
    csv_config: RawCsvConfig | UnsetType = UNSET
    critical: bool | UnsetType = UNSET
    include_bodies: bool | UnsetType = UNSET
    max_body_bytes: BodyBytes | UnsetType = UNSET
    fsync: str | UnsetType = UNSET
    fsync_interval: ShortSeconds | UnsetType = UNSET


class RawLogging(RawSection):
    level: str | UnsetType = UNSET
    handlers: list[str] | UnsetType = UNSET
    file_path: NonEmptyStr | None | UnsetType = UNSET
    max_file_size_mb: Megabytes | UnsetType = UNSET
    backup_count: BackupCount | UnsetType = UNSET


class RawService(RawSection):
    runtime_dir: NonEmptyStr | UnsetType = UNSET
    shutdown_timeout: ShortSeconds | UnsetType = UNSET
    heartbeat_interval: Annotated[float, Meta(gt=0, le=60)] | UnsetType = UNSET
    heartbeat_timeout: ShortSeconds | UnsetType = UNSET
    socket_group: NonEmptyStr | None | UnsetType = UNSET


class RawConfig(RawSection):
    proxy: RawProxy
    plugins: RawPlugins | UnsetType = UNSET
    logging: RawLogging | UnsetType = UNSET
    service: RawService | UnsetType = UNSET


def set_fields(raw: msgspec.Struct, *names: str) -> dict[str, Any]:
    """Return the named fields that the file sets, for use as keyword arguments."""
    values = {name: getattr(raw, name) for name in names}
    return {name: value for name, value in values.items() if value is not UNSET}
