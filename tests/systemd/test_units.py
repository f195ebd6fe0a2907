"""The systemd units and the launchd plist: required settings, and `systemd-analyze verify` where it exists."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from watchgate.config.model import ServiceConfig

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
SYSTEM_UNIT = SYSTEMD_DIR / "watchgate.service"
USER_UNIT = SYSTEMD_DIR / "watchgate-user.service"
PLIST = SYSTEMD_DIR / "com.watchgate.service.plist"
VERIFY_TIMEOUT = 60.0

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(path: Path) -> Unit:
    """Parse a unit file into {section: [(key, value), ...]}, keeping repeated keys in order."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw_line in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw_line.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path}: setting outside a section: {line!r}"
        key, separator, value = line.partition("=")
        assert separator, f"{path}: line without '=': {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [value for name, value in unit.get(section, []) if name == key]


def single(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= appears {len(found)} times, expected once"
    return found[0]


def seconds(value: str) -> float:
    """Convert a plain systemd time span such as 30, 30s or 2min to seconds."""
    for suffix, factor in (("min", 60), ("ms", 0.001), ("s", 1), ("h", 3600)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


COMMON_SERVICE_SETTINGS = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "Restart": "on-failure",
    "KillMode": "mixed",
    "RuntimeDirectory": "watchgate",
    "RuntimeDirectoryMode": "0700",
    "LogsDirectory": "watchgate",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
}


@pytest.mark.parametrize("path", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_unit_common_settings(path):
    unit = parse_unit(path)
    for key, expected in COMMON_SERVICE_SETTINGS.items():
        assert single(unit, "Service", key) == expected, key
    assert int(single(unit, "Unit", "StartLimitBurst")) > 0
    assert seconds(single(unit, "Unit", "StartLimitIntervalSec")) > 0
    assert seconds(single(unit, "Service", "WatchdogSec")) > 0
    assert seconds(single(unit, "Service", "TimeoutStopSec")) > ServiceConfig(runtime_dir="/").shutdown_timeout
    assert set(single(unit, "Service", "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert values(unit, "Service", "MemoryDenyWriteExecute") == []  # node's JIT needs W+X memory
    assert " serve --config " in single(unit, "Service", "ExecStart")


def test_system_unit_settings():
    unit = parse_unit(SYSTEM_UNIT)
    assert single(unit, "Service", "ExecStart") == (
        "/usr/local/bin/watchgate serve --config /etc/watchgate/watchgate.yaml"
    )
    assert single(unit, "Service", "User") == "watchgate"
    assert single(unit, "Service", "Group") == "watchgate"
    writable = single(unit, "Service", "ReadWritePaths").split()
    for path in ("/var/log/watchgate", "/run/watchgate", "/var/lib/watchgate"):
        assert path in writable
    assert "HOME=/var/lib/watchgate" in values(unit, "Service", "Environment")
    assert single(unit, "Install", "WantedBy") == "multi-user.target"


def test_user_unit_settings():
    unit = parse_unit(USER_UNIT)
    assert single(unit, "Service", "ExecStart").startswith("%h/")
    assert "%h/.config/watchgate/watchgate.yaml" in single(unit, "Service", "ExecStart")
    assert values(unit, "Service", "User") == []
    assert values(unit, "Service", "Group") == []
    # File system namespacing in a user instance needs a user namespace.
    assert single(unit, "Service", "PrivateUsers") == "yes"
    writable = single(unit, "Service", "ReadWritePaths").split()
    assert "%t/watchgate" in writable
    assert "-%h/.npm" in writable
    assert single(unit, "Install", "WantedBy") == "default.target"


def _verify(unit_text: str, unit_name: str, directory: Path, user: bool) -> subprocess.CompletedProcess:
    """Run `systemd-analyze verify` on a copy whose ExecStart names an existing executable."""
    systemd_analyze = shutil.which("systemd-analyze")
    if systemd_analyze is None:
        pytest.skip("systemd-analyze is not installed, so the units are only checked by parsing")
    executable = Path(sys.executable).parent / "watchgate"
    if not executable.exists():
        pytest.skip(f"the watchgate entry point is not installed next to {sys.executable}")
    for placeholder in ("/usr/local/bin/watchgate", "%h/.local/bin/watchgate"):
        unit_text = unit_text.replace(placeholder, str(executable))
    unit_path = directory / unit_name
    unit_path.write_text(unit_text, encoding="utf-8")
    environment = dict(os.environ)
    command = [systemd_analyze]
    if user:
        runtime = directory / "xdg-runtime"
        runtime.mkdir(mode=0o700)
        environment["XDG_RUNTIME_DIR"] = str(runtime)
        command.append("--user")
    command += ["verify", "--man=no", str(unit_path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=VERIFY_TIMEOUT, env=environment)


def test_system_unit_passes_verify(tmp_path):
    completed = _verify(SYSTEM_UNIT.read_text(encoding="utf-8"), "watchgate.service", tmp_path, user=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""


def test_user_unit_passes_verify(tmp_path):
    completed = _verify(USER_UNIT.read_text(encoding="utf-8"), "watchgate.service", tmp_path, user=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""


def test_launchd_plist():
    with PLIST.open("rb") as file:
        agent = plistlib.load(file)
    assert agent["Label"] == "com.watchgate.service"
    assert agent["ProgramArguments"][0].endswith("/watchgate")
    assert agent["ProgramArguments"][1:3] == ["serve", "--config"]
    assert agent["ProgramArguments"][3].endswith(".yaml")
    assert agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["StandardErrorPath"].startswith("/")
    path_entries = agent["EnvironmentVariables"]["PATH"].split(":")
    assert "/usr/local/bin" in path_entries
    assert "/opt/homebrew/bin" in path_entries
    assert agent["ExitTimeOut"] > ServiceConfig(runtime_dir="/").shutdown_timeout
