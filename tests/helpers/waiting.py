"""Bounded polling for conditions that no event signals (files written by other processes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

POLL_INTERVAL = 0.05

T = TypeVar("T")


async def wait_until(check: Callable[[], T], timeout: float, description: str) -> T:
    """Call `check` until it returns a truthy value and return it; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {description}")
        await asyncio.sleep(POLL_INTERVAL)


def wait_until_sync(check: Callable[[], T], timeout: float, description: str) -> T:
    """Blocking form of wait_until, for code outside an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {description}")
        time.sleep(POLL_INTERVAL)
