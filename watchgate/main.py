"""Standalone mode: one gateway for one upstream, with the client on stdin/stdout."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from watchgate.config.model import Config, ServerConfig
from watchgate.memory import tune_allocator
from watchgate.plugins.manager import load_auditing_plugins, load_security_plugins
from watchgate.proxy.server import Gateway
from watchgate.stdio import serve_stdio

logger = logging.getLogger(__name__)

EXIT_FORCED = 1


async def run_standalone(config: Config, server: ServerConfig) -> int:
    """Serve the client on stdio until it closes the stream or a signal arrives."""
    logger.info("Starting Watchgate MCP Gateway for server %s", server.name)
    tune_allocator()
    auditing = load_auditing_plugins(config, server.name)
    security = load_security_plugins(config, server.name)
    gateway = Gateway(server, security, auditing, config.max_message_bytes)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, _on_signal, signum, stop, received, gateway)
    try:
        await gateway.start()
        await gateway.wait_started(server.startup_timeout)
        session = await serve_stdio(gateway)
        logger.info("MCPProxy now accepting client connections")
        stopped = asyncio.create_task(stop.wait(), name="stop-signal")
        await asyncio.wait({session, stopped}, return_when=asyncio.FIRST_COMPLETED)
        reason = f"received {received[0]}" if received else "client closed the connection"
        logger.info("Shutting down: %s", reason)
        await gateway.shutdown(reason)
        stopped.cancel()
        await asyncio.gather(stopped, return_exceptions=True)
    finally:
        await gateway.shutdown("exiting")
        await loop.run_in_executor(None, _close_audit, auditing)
    return 0


def _on_signal(signum: int, stop: asyncio.Event, received: list[str], gateway: Gateway) -> None:
    name = signal.Signals(signum).name
    if stop.is_set():
        logger.warning("Received %s again during shutdown; killing the upstream group and exiting now", name)
        gateway.kill_upstream_now()
        os._exit(EXIT_FORCED)
    received.append(name)
    stop.set()


def _close_audit(plugins) -> None:
    for plugin in plugins:
        try:
            plugin.close()
        except Exception:
            logger.exception("Closing audit plugin %s failed", plugin.name)
