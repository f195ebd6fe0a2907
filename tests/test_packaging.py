"""How the package installs: one top-level import name, with supervisor/ under it."""

from importlib.metadata import distribution
from pathlib import Path

import watchgate.supervisor

ROOT = Path(__file__).resolve().parent.parent


def test_only_top_level_name_is_watchgate():
    assert distribution("watchgate").read_text("top_level.txt").split() == ["watchgate"]


def test_supervisor_folder_installs_under_watchgate():
    assert Path(watchgate.supervisor.__file__).resolve().parent == ROOT / "supervisor"
