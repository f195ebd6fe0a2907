"""Fixtures that write a YAML configuration file into the test's temporary folder."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from watchgate.config import Config, load_config

WriteConfig = Callable[..., Path]
LoadText = Callable[..., Config]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Return a function that writes dedented YAML text to tmp_path/<name> and returns the path."""

    def write(text: str, name: str = "watchgate.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def load_text(write_config: WriteConfig) -> LoadText:
    """Return a function that writes YAML text to a file and loads it."""

    def load(text: str, name: str = "watchgate.yaml") -> Config:
        return load_config(write_config(text, name))

    return load


@pytest.fixture(autouse=True)
def no_leftover_processes() -> None:
    """Replace the suite-wide process-leak check, which costs a process-table scan per test.

    Loading a configuration starts no processes, so there is nothing to find here.
    """
