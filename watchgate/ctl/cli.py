"""`watchgatectl`: query and control a running `watchgate serve`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

import msgspec

from watchgate import __version__
from watchgate.ctl import protocol
from watchgate.ctl.client import DEFAULT_TIMEOUT, CommandError, ControlClient, ServiceUnreachable
from watchgate.ctl.protocol import ProtocolError, ServerStatus, StatusResult, WriterStatus

EXIT_OK = 0
EXIT_FAILURE = 1  # the service rejected the command, or its response was malformed
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_UNREACHABLE = 4

CONTROL_SOCKET_NAME = "control.sock"
RUNNING = "RUNNING"
WRITER_ROW_NAME = "(audit writer)"
INFO_MAX_CHARS = 80  # the INFO column of `status` is cut to this many characters

DESCRIPTION = """\
Query and control a running Watchgate service (`watchgate serve`).

The control socket is --socket PATH, else control.sock in the runtime
directory of --config FILE (service.runtime_dir), else in the default runtime
directory: $WATCHGATE_RUNTIME_DIR, $RUNTIME_DIRECTORY (set by systemd),
$XDG_RUNTIME_DIR/watchgate, or /tmp/watchgate-<uid>, the first that is set.

commands:
  status [--json]     one row per server and one for the audit writer
  restart NAME        restart one server: its upstream when the worker runs (sessions stay),
                      else the worker; `restart writer` restarts the audit writer
  restart --all       restart every server
  reload              re-read the configuration (like SIGHUP)
  stop                stop the service

exit codes:
  0  success (for status: every server and the audit writer are RUNNING)
  1  the service rejected the command, or sent a malformed response
  2  invalid command line or configuration file
  3  status: some server or the audit writer is not RUNNING
  4  the service is unreachable (no socket, connection refused, timed out)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watchgatectl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--config", metavar="FILE", help="configuration file whose runtime directory to use")
    target.add_argument("--socket", metavar="PATH", help="control socket path")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help=f"wait at most this many seconds for the service (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--version", action="version", version=f"watchgatectl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    status = commands.add_parser("status", help="show servers and the audit writer")
    status.add_argument("--json", action="store_true", help="print the raw status result as JSON")
    restart = commands.add_parser("restart", help="restart one server, or all with --all")
    restart.add_argument("name", nargs="?", metavar="NAME", help="server name")
    restart.add_argument("--all", action="store_true", help="restart every server")
    commands.add_parser("reload", help="re-read the configuration")
    commands.add_parser("stop", help="stop the service")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_request:  # --help, --version and usage errors
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_USAGE
    if options.command == "restart" and options.all == (options.name is not None):
        parser.print_usage(sys.stderr)
        print("watchgatectl: error: restart needs either a server NAME or --all", file=sys.stderr)
        return EXIT_USAGE
    if options.timeout <= 0:
        print(f"watchgatectl: error: --timeout must be positive, got {options.timeout:g}", file=sys.stderr)
        return EXIT_USAGE
    try:
        socket_path = resolve_socket_path(options.socket, options.config)
    except ValueError as error:
        print(f"watchgatectl: {error}", file=sys.stderr)
        return EXIT_USAGE
    client = ControlClient(socket_path, options.timeout)
    try:
        return _dispatch(client, options, sys.stdout)
    except ServiceUnreachable as error:
        print(f"watchgatectl: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CommandError as error:
        print(f"watchgatectl: {options.command} failed: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except ProtocolError as error:
        print(f"watchgatectl: invalid response from {socket_path}: {error}", file=sys.stderr)
        return EXIT_FAILURE


def resolve_socket_path(socket_path: str | None, config_path: str | None) -> str:
    """Return the control socket path, raising ValueError when the configuration cannot be loaded."""
    if socket_path is not None:
        return socket_path
    if config_path is not None:
        from watchgate.config import ConfigError, load_config

        try:
            config = load_config(config_path)
        except ConfigError as error:
            raise ValueError(f"invalid configuration: {error}") from None
        return os.path.join(config.service.runtime_dir, CONTROL_SOCKET_NAME)
    from watchgate.config.loader import default_runtime_dir

    return os.path.join(default_runtime_dir(), CONTROL_SOCKET_NAME)


def _dispatch(client: ControlClient, options: argparse.Namespace, out: TextIO) -> int:
    if options.command == "status":
        result = client.call(protocol.STATUS)
        status = protocol.status_from_result(result)
        if options.json:
            out.write(json.dumps(result, indent=2, sort_keys=False) + "\n")
        else:
            out.write(format_status(status))
        return EXIT_OK if all_running(status) else EXIT_NOT_RUNNING
    if options.command == "restart":
        if options.all:
            result = client.restart_all()
            out.write("restart requested for all servers\n")
        else:
            result = client.restart(options.name)
            out.write(f"restart requested for {options.name}\n")
    elif options.command == "reload":
        result = client.reload()
        out.write("reload requested\n")
    else:
        result = client.stop()
        out.write("stop requested\n")
    _write_details(result, out)
    return EXIT_OK


def all_running(status: StatusResult) -> bool:
    """Return True when every server and the audit writer are RUNNING."""
    if status.writer is None or status.writer.state != RUNNING:
        return False
    return all(server.state == RUNNING for server in status.servers)


def format_status(status: StatusResult) -> str:
    """Render a status result as a service line and a table, supervisorctl style."""
    service = status.service
    lines = [f"watchgate service: {service.state}, pid {service.pid}, uptime {format_uptime(service.uptime)}"]
    if service.config:
        lines.append(f"config: {service.config}")
    if service.config_error:
        lines.append(f"last reload rejected: {_printable(service.config_error)}")
    header = ("NAME", "STATE", "PID", "UPSTREAM", "UPTIME", "RESTARTS", "SESSIONS", "REQUESTS", "BLOCKED", "INFO")
    rows = [_server_row(server) for server in status.servers]
    rows.append(_writer_row(status.writer))
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def _server_row(server: ServerStatus) -> tuple[str, ...]:
    info = server.last_exit or server.last_stderr or ""
    if server.last_exit and server.last_stderr:
        info = f"{server.last_exit}; stderr: {server.last_stderr}"
    return (
        _printable(server.name),
        server.state,
        _optional(server.worker_pid),
        _optional(server.upstream_pid),
        format_uptime(server.uptime),
        str(server.restarts),
        str(server.sessions),
        str(server.requests),
        str(server.blocked),
        _cut(_printable(info)),
    )


def _writer_row(writer: WriterStatus | None) -> tuple[str, ...]:
    if writer is None:
        return (WRITER_ROW_NAME, "MISSING", "-", "-", "-", "-", "-", "-", "-", "no audit writer in the status")
    info = f"written {writer.events_written}, lag {writer.lag}, lost {writer.lost}"
    unhealthy = [sink.path for sink in writer.sinks if not sink.healthy]
    if unhealthy:
        info += f"; failing: {', '.join(unhealthy)}"
    return (
        WRITER_ROW_NAME,
        writer.state,
        _optional(writer.pid),
        "-",
        format_uptime(writer.uptime),
        str(writer.restarts),
        "-",
        "-",
        "-",
        _cut(_printable(info)),
    )


def format_uptime(seconds: float | None) -> str:
    """Format seconds as H:MM:SS, with a day count in front past 24 hours."""
    if seconds is None or seconds < 0:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def _optional(value: Any) -> str:
    return "-" if value is None else str(value)


def _printable(text: str) -> str:
    """Escape control characters, so upstream stderr text cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(character if character.isprintable() else repr(character)[1:-1] for character in text)


def _cut(text: str) -> str:
    return text if len(text) <= INFO_MAX_CHARS else text[: INFO_MAX_CHARS - 3] + "..."


def _write_details(result: dict[str, Any], out: TextIO) -> None:
    """Print any fields the service returned with a command result, one `key: value` per line."""
    for key, value in result.items():
        text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
        out.write(f"  {_printable(str(key))}: {_printable(text)}\n")


if __name__ == "__main__":
    raise SystemExit(main())
