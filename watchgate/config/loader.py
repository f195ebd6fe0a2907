"""Load a YAML configuration file into a validated `Config`.

The document is parsed with PyYAML's safe loader, checked against the Structs
in `schema`, then normalised: commands split and expanded, relative paths
made absolute against the config file's folder, server names derived where
missing, and plugin chains resolved per server. Every problem is raised as
ConfigError naming the file and the key path.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
import yaml

from watchgate.config.chains import Context, check_shared_files, parse_section, resolve_chain
from watchgate.config.commands import (
    check_server_name,
    derive_server_name,
    resolve_path,
    split_command,
)
from watchgate.config.errors import (
    ConfigError,
    InvalidSetting,
    check_choice,
    convert,
    invalid,
    join_index,
    join_key,
    show_value,
)
from watchgate.config.model import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Config,
    LoggingConfig,
    RestartPolicyConfig,
    ServerConfig,
    ServiceConfig,
)
from watchgate.config.schema import RawConfig, RawLogging, RawProxy, RawServer, RawService, set_fields

TRANSPORTS = ("stdio",)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_HANDLERS = ("stderr", "file")
EXPECTED_TOP_LEVEL = "a mapping with a 'proxy' section"
# PyYAML parses recursively, so very deep nesting exhausts Python's recursion limit.
NESTED_TOO_DEEPLY = "invalid YAML: lists or mappings are nested too deeply"


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, validate and resolve the configuration file at `path`.

    Raises ConfigError for a missing or unreadable file, invalid YAML, and any
    invalid setting. The message starts with `path` as given.
    """
    display = os.fspath(path)
    absolute = os.path.abspath(display)
    data = _read_yaml(display, absolute)
    try:
        return _build_config(data, absolute)
    except InvalidSetting as exc:
        raise ConfigError(f"{display}: {exc.path}: {exc.detail}", file=display, key_path=exc.path) from None
    except RecursionError:
        raise ConfigError(f"{display}: {NESTED_TOO_DEEPLY}", file=display) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error.

    The plain loader keeps the last value, which would silently drop, for
    example, the first of two `tools` lists.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                # The base class rejects unhashable keys with its own message.
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(display: str, absolute: str) -> dict[str, Any]:
    def fail(detail: str) -> ConfigError:
        return ConfigError(f"{display}: {detail}", file=display)

    try:
        with open(absolute, encoding="utf-8-sig") as file:
            text = file.read()
    except FileNotFoundError:
        raise fail("file not found") from None
    except IsADirectoryError:
        raise fail("is a directory, expected a YAML file") from None
    except PermissionError:
        raise fail("permission denied") from None
    except UnicodeDecodeError as exc:
        raise fail(f"invalid UTF-8 at byte {exc.start}") from None
    except OSError as exc:
        raise fail(f"cannot read the file: {exc.strerror or exc}") from None

    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise fail(f"{where}invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise fail(f"invalid YAML: {exc}") from None
    except RecursionError:
        raise fail(NESTED_TOO_DEEPLY) from None

    if data is None:
        raise fail(f"the file is empty: expected {EXPECTED_TOP_LEVEL}")
    if not isinstance(data, dict):
        raise fail(f"top level: invalid value {show_value(data)}: expected {EXPECTED_TOP_LEVEL}")
    try:
        _check_keys_are_strings(data, "")
    except InvalidSetting as exc:
        raise ConfigError(f"{display}: {exc.path}: {exc.detail}", file=display, key_path=exc.path) from None
    except RecursionError:
        raise fail(NESTED_TOO_DEEPLY) from None
    return data


def _check_keys_are_strings(data: Any, path: str) -> None:
    """Reject keys that YAML reads as numbers, booleans or null, such as `1:` or `yes:`."""
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str):
                raise InvalidSetting(path or "top level", f"invalid key {show_value(key)}: expected a string")
            _check_keys_are_strings(value, join_key(path, key))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            _check_keys_are_strings(item, join_index(path, index))


def _build_config(data: dict[str, Any], absolute: str) -> Config:
    raw = convert(data, RawConfig, "")
    base_dir = os.path.dirname(absolute)

    check_choice("proxy.transport", raw.proxy.transport, TRANSPORTS)
    servers = _build_servers(raw.proxy, base_dir)
    names = [server.name for server in servers]
    logging_config = _build_logging(raw.logging, base_dir)

    context = Context(base_dir=base_dir, server_names=names)
    plugins = raw.plugins
    security = parse_section(_section(plugins, "security"), "plugins.security", "security", context)
    auditing = parse_section(_section(plugins, "auditing"), "plugins.auditing", "auditing", context)
    check_shared_files([security, auditing], logging_config.file_path)

    max_message_bytes = raw.proxy.max_message_bytes
    if max_message_bytes is msgspec.UNSET:
        max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
    return Config(
        path=absolute,
        servers=servers,
        security={name: resolve_chain(security, name) for name in names},
        auditing={name: resolve_chain(auditing, name) for name in names},
        max_message_bytes=max_message_bytes,
        logging=logging_config,
        service=_build_service(raw.service, raw.proxy, base_dir),
    )


def _section(plugins: Any, name: str) -> Any:
    return msgspec.UNSET if plugins is msgspec.UNSET else getattr(plugins, name)


def _build_servers(proxy: RawProxy, base_dir: str) -> tuple[ServerConfig, ...]:
    if proxy.upstream is not msgspec.UNSET and proxy.upstreams is not msgspec.UNSET:
        raise InvalidSetting(
            "proxy",
            "both upstream and upstreams are set: expected exactly one of them "
            "(upstream for one server, upstreams for a list)",
        )
    if proxy.upstream is not msgspec.UNSET:
        located = [(proxy.upstream, "proxy.upstream")]
    elif proxy.upstreams is msgspec.UNSET:
        raise InvalidSetting(
            "proxy.upstream",
            "missing required key: expected proxy.upstream (one server) or proxy.upstreams (a list of servers)",
        )
    elif not proxy.upstreams:
        raise invalid("proxy.upstreams", [], "a list of at least one server")
    else:
        located = [(raw, join_index("proxy.upstreams", i)) for i, raw in enumerate(proxy.upstreams)]

    servers = []
    first_path_by_name: dict[str, str] = {}
    for raw, path in located:
        server = _build_server(raw, path, base_dir)
        if server.name in first_path_by_name:
            name_origin = "given" if raw.name is not msgspec.UNSET else "derived from the command"
            raise InvalidSetting(
                join_key(path, "name"),
                f"server name {server.name!r} ({name_origin}) is already used by "
                f"{first_path_by_name[server.name]}: expected a unique name",
            )
        first_path_by_name[server.name] = path
        servers.append(server)
    return tuple(servers)


def _build_server(raw: RawServer, path: str, base_dir: str) -> ServerConfig:
    env = _build_env(raw.env, join_key(path, "env"))
    # Expansion uses the server's own env on top of Watchgate's environment, as the server process gets both.
    variables = {**os.environ, **env}
    command = split_command(raw.command, join_key(path, "command"), variables)

    name_path = join_key(path, "name")
    if raw.name is not msgspec.UNSET:
        name = check_server_name(raw.name, name_path)
    else:
        derived = derive_server_name(command)
        if derived is None:
            raise InvalidSetting(name_path, "missing required key: no server name can be derived from the command")
        name = check_server_name(derived, name_path)

    settings = set_fields(raw, "startup_timeout", "request_timeout", "shutdown_grace", "terminate_timeout")
    if raw.cwd is not msgspec.UNSET and raw.cwd is not None:
        settings["cwd"] = resolve_path(raw.cwd, join_key(path, "cwd"), base_dir, variables)
    if raw.restart is not msgspec.UNSET:
        settings["restart"] = _build_restart(raw.restart, join_key(path, "restart"))
    return ServerConfig(name=name, command=command, env=env, **settings)


def _build_env(raw: Any, path: str) -> dict[str, str]:
    if raw is msgspec.UNSET:
        return {}
    env = {}
    for key, value in raw.items():
        key_path = join_key(path, key)
        if not key or "=" in key or "\0" in key:
            raise InvalidSetting(key_path, f"invalid variable name {key!r}: expected a name without '=' or NUL")
        # YAML reads `PORT: 8080` as a number, and the environment needs text.
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise invalid(key_path, value, "a string or a number (quote values such as 'true')")
        text = str(value)
        if "\0" in text:
            raise invalid(key_path, value, "a value without NUL characters")
        env[key] = text
    return env


def _build_restart(raw: Any, path: str) -> RestartPolicyConfig:
    names = ("backoff_initial", "backoff_max", "max_restarts", "restart_window", "healthy_after")
    restart = RestartPolicyConfig(**set_fields(raw, *names))
    if restart.backoff_max < restart.backoff_initial:
        raise invalid(
            join_key(path, "backoff_max"),
            restart.backoff_max,
            f"a number >= restart.backoff_initial ({restart.backoff_initial:g})",
        )
    return restart


def _build_logging(raw: RawLogging | Any, base_dir: str) -> LoggingConfig:
    if raw is msgspec.UNSET:
        return LoggingConfig()
    settings = set_fields(raw, "max_file_size_mb", "backup_count")
    if raw.level is not msgspec.UNSET:
        level = raw.level.upper()
        if level not in LOG_LEVELS:
            check_choice("logging.level", raw.level, LOG_LEVELS)
        settings["level"] = level

    file_path = None
    if raw.file_path not in (msgspec.UNSET, None):
        file_path = resolve_path(raw.file_path, "logging.file_path", base_dir, os.environ)
        settings["file_path"] = file_path

    if raw.handlers is msgspec.UNSET:
        # Naming a log file without listing handlers means logging to it as well.
        handlers = ("stderr", "file") if file_path else LoggingConfig().handlers
    else:
        for index, handler in enumerate(raw.handlers):
            check_choice(join_index("logging.handlers", index), handler, LOG_HANDLERS)
        handlers = tuple(dict.fromkeys(raw.handlers))
        if file_path and "file" not in handlers:
            raise invalid("logging.handlers", raw.handlers, "a list containing 'file' because logging.file_path is set")
    if "file" in handlers and not file_path:
        raise InvalidSetting(
            "logging.file_path",
            "missing required key: expected a file path because logging.handlers contains 'file'",
        )
    settings["handlers"] = handlers
    return LoggingConfig(**settings)


def _build_service(raw: RawService | Any, proxy: RawProxy, base_dir: str) -> ServiceConfig:
    settings: dict[str, Any] = {}
    runtime_dir, runtime_dir_path = proxy.runtime_dir, "proxy.runtime_dir"
    if raw is not msgspec.UNSET:
        settings = set_fields(raw, "shutdown_timeout", "heartbeat_interval", "heartbeat_timeout")
        if raw.socket_group not in (msgspec.UNSET, None):
            settings["socket_group"] = raw.socket_group
        if raw.runtime_dir is not msgspec.UNSET:
            if runtime_dir is not msgspec.UNSET:
                raise InvalidSetting(
                    "service.runtime_dir",
                    "runtime_dir is set here and in proxy.runtime_dir: expected it in one place",
                )
            runtime_dir, runtime_dir_path = raw.runtime_dir, "service.runtime_dir"

    if runtime_dir is msgspec.UNSET:
        settings["runtime_dir"] = default_runtime_dir()
    else:
        settings["runtime_dir"] = resolve_path(runtime_dir, runtime_dir_path, base_dir, os.environ)

    service = ServiceConfig(**settings)
    if service.heartbeat_timeout <= service.heartbeat_interval:
        raise invalid(
            "service.heartbeat_timeout",
            service.heartbeat_timeout,
            f"a number > service.heartbeat_interval ({service.heartbeat_interval:g})",
        )
    return service


def default_runtime_dir() -> str:
    """Return the runtime directory used when the file sets none.

    In order: $WATCHGATE_RUNTIME_DIR, the first entry of $RUNTIME_DIRECTORY
    (set by systemd for RuntimeDirectory=), $XDG_RUNTIME_DIR/watchgate, and
    /tmp/watchgate-<uid>.
    """
    if os.environ.get("WATCHGATE_RUNTIME_DIR"):
        return os.path.abspath(os.environ["WATCHGATE_RUNTIME_DIR"])
    if os.environ.get("RUNTIME_DIRECTORY"):
        return os.path.abspath(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.path.abspath(os.environ["XDG_RUNTIME_DIR"]), "watchgate")
    return f"/tmp/watchgate-{os.getuid()}"
