"""System logging (not the audit trail): stdlib logging to stderr and optionally a file."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from watchgate.config.model import LoggingConfig

STDERR_FORMAT = "[%(levelname)s] %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s [%(levelname)s] %(name)s[%(process)d]: %(message)s"


def setup_early(verbose: bool) -> None:
    """Log to stderr before the configuration is known."""
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def apply_config(config: LoggingConfig, verbose: bool) -> None:
    """Switch to the handlers and level the configuration names; --verbose always means DEBUG."""
    root = logging.getLogger()
    root.handlers.clear()
    if "stderr" in config.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(STDERR_FORMAT))
        root.addHandler(handler)
    if "file" in config.handlers and config.file_path:
        os.makedirs(os.path.dirname(config.file_path), exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            config.file_path,
            maxBytes=int(config.max_file_size_mb * 1024 * 1024),
            backupCount=config.backup_count,
            encoding="utf-8",
        )
        file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        root.addHandler(file_handler)
    root.setLevel(logging.DEBUG if verbose else getattr(logging, config.level.upper(), logging.INFO))
