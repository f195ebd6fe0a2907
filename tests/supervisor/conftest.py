"""Fixtures for the service tests: a config writer for `watchgate serve`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.configs import write_config


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tmp_path / "watchgate.yaml"


@pytest.fixture
def write_service_config(config_path: Path) -> Callable[[dict[str, Any]], Path]:
    def write(data: dict[str, Any]) -> Path:
        return write_config(config_path, data)

    return write
