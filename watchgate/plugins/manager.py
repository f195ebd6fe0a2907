"""Build the plugin instances that one server's gateway runs."""

from __future__ import annotations

import logging

from watchgate.config.model import Config, FileAuditingConfig, ToolAllowlistConfig
from watchgate.plugins.base import AuditPlugin, SecurityPlugin
from watchgate.plugins.tool_allowlist import ToolAllowlistPlugin

logger = logging.getLogger(__name__)


def load_security_plugins(config: Config, server_name: str) -> list[SecurityPlugin]:
    plugins: list[SecurityPlugin] = []
    for entry in config.security.get(server_name, ()):
        if isinstance(entry.config, ToolAllowlistConfig):
            plugins.append(ToolAllowlistPlugin(entry.config, entry.priority))
            logger.info("Loaded security plugin: %s", entry.policy)
    return plugins


def load_auditing_plugins(config: Config, server_name: str) -> list[AuditPlugin]:
    plugins: list[AuditPlugin] = []
    for entry in config.auditing.get(server_name, ()):
        if isinstance(entry.config, FileAuditingConfig):
            from watchgate.plugins.file_auditing import FileAuditingPlugin

            plugins.append(FileAuditingPlugin(entry.config, server_name))
            logger.info("Loaded auditing plugin: %s (%s, %s)", entry.policy, entry.config.format.value,
                        entry.config.output_file)
    return plugins
