"""The `watchgate` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import TYPE_CHECKING

from watchgate import __version__

if TYPE_CHECKING:
    from watchgate.config.model import Config

logger = logging.getLogger("watchgate.main")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # invalid command line or configuration
EXIT_NO_SERVICE = 3  # shim mode requested but no service is running

DESCRIPTION = """\
Watchgate: a security and audit gateway for MCP servers.

Runs between an MCP client and the MCP server named in the configuration:
forwards JSON-RPC on stdin/stdout, enforces the security plugins and writes
the audit trail.

commands:
  watchgate --config FILE [--server NAME]   run the gateway on stdio
  watchgate check --config FILE             validate a configuration and show it
  watchgate serve --config FILE             run the long-lived service (supervisor)
  watchgate connect NAME [--socket-dir DIR] connect stdio to a running service

exit codes:
  0  finished normally (client closed the connection, or a signal)
  1  runtime failure
  2  invalid command line or configuration
  3  shim mode requested but no service is running
"""


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watchgate", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="configuration file (YAML)")
    parser.add_argument("--server", metavar="NAME", help="server to run when the configuration names several")
    parser.add_argument(
        "--mode", choices=("auto", "shim", "standalone"), default="auto",
        help="auto (default): relay to a running service when <runtime_dir>/<server>.sock accepts a "
        "connection, else run the gateway in this process; shim: relay only, exit 3 without a service; "
        "standalone: always run the gateway in this process",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log at DEBUG level (payloads truncated)")
    parser.add_argument("--version", action="version", version=f"watchgate {__version__}")
    return parser


def _check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="watchgate check", description="Validate a configuration file and print "
                                     "each server with its resolved plugin chain.")
    parser.add_argument("--config", required=True, metavar="FILE", help="configuration file (YAML)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "check":
        return _check(_check_parser().parse_args(args[1:]))
    if args and args[0] == "serve":
        from watchgate.supervisor.cli import main as serve_main

        return serve_main(args[1:])
    if args and args[0] == "connect":
        from watchgate.shim import connect_main

        return connect_main(args[1:])
    return _run(_run_parser().parse_args(args))


def _check(options: argparse.Namespace) -> int:
    from watchgate.config import ConfigError, describe_config, load_config

    try:
        config = load_config(options.config)
    except ConfigError as error:
        print(f"watchgate: invalid configuration: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(describe_config(config))
    print("Configuration is valid.")
    return EXIT_OK


def _run(options: argparse.Namespace) -> int:
    config = load_logged_config(options.config, options.verbose)
    if config is None:
        return EXIT_USAGE
    server = _select_server(config, options.server)
    if server is None:
        return EXIT_USAGE
    if options.mode != "standalone":
        from watchgate.shim import connect_socket, run_shim, socket_path_for

        socket_path = socket_path_for(config.service.runtime_dir, server.name)
        connection = connect_socket(socket_path)
        if connection is not None:
            logger.info("Mode: shim (relaying to the service at %s)", socket_path)
            return run_event_loop(run_shim(socket_path, connection, config.max_message_bytes))
        if options.mode == "shim":
            logger.error("No Watchgate service is listening on %s; start it with `watchgate serve --config %s` "
                         "or use --mode auto", socket_path, options.config)
            return EXIT_NO_SERVICE
        logger.info("Mode: standalone (no service is listening on %s)", socket_path)
    else:
        logger.info("Mode: standalone (--mode standalone)")
    from watchgate.main import run_standalone

    return run_event_loop(run_standalone(config, server))


def load_logged_config(path: str, verbose: bool) -> Config | None:
    """Load the configuration and switch logging to its settings; log why and return None on failure."""
    from watchgate import logsetup
    from watchgate.config import ConfigError, load_config

    logsetup.setup_early(verbose)
    logger.info("Loading configuration from %s", path)
    try:
        config = load_config(path)
    except ConfigError as error:
        logger.error("Invalid configuration: %s", error)
        return None
    try:
        logsetup.apply_config(config.logging, verbose)
    except OSError as error:
        logger.error("Cannot open the log file %s: %s", config.logging.file_path, error)
        return None
    return config


def _select_server(config, name: str | None):
    names = [server.name for server in config.servers]
    if name is not None:
        if name in names:
            return config.server(name)
        logger.error("Server %r is not in %s; configured servers: %s", name, config.path, ", ".join(names))
        return None
    if len(config.servers) == 1:
        return config.servers[0]
    logger.error("%s configures %d servers (%s); choose one with --server NAME", config.path, len(names), ", ".join(names))
    return None


def run_event_loop(main_coroutine) -> int:
    """Run a coroutine on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_coroutine)
    return uvloop.run(main_coroutine)


if __name__ == "__main__":
    raise SystemExit(main())
