"""`watchgate serve --config FILE`: run the service in the foreground (systemd Type=notify)."""

from __future__ import annotations

import argparse
import logging

from watchgate.cli import load_logged_config

logger = logging.getLogger("watchgate.supervisor")

EXIT_OK = 0
EXIT_FAILURE = 1  # the service could not start, or another instance already runs
EXIT_USAGE = 2  # invalid command line or configuration


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watchgate serve",
        description="Run the Watchgate service: one gateway worker per configured server, one audit writer, "
                    "and a control socket for watchgatectl. Stops on SIGTERM or SIGINT (a second one forces), "
                    "reloads the configuration on SIGHUP.",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="configuration file (YAML)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log at DEBUG level (payloads truncated)")
    return parser


def main(argv: list[str]) -> int:
    from watchgate.supervisor import runtime
    from watchgate.supervisor.daemon import Supervisor

    options = _parser().parse_args(argv)
    config = load_logged_config(options.config, options.verbose)
    if config is None:
        return EXIT_USAGE
    try:
        supervisor = Supervisor(config)
        supervisor.setup()
    except runtime.AlreadyRunning as error:
        logger.error("Watchgate service for %s is %s", config.service.runtime_dir, error)
        return EXIT_FAILURE
    except runtime.SetupError as error:
        logger.error("Cannot start the service: %s", error)
        return EXIT_FAILURE
    return supervisor.run()
