"""A tiny run of the benchmark harness, so the harness keeps working as the gateway changes.

It checks that every case completes and that the figures are produced. It
asserts nothing about how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_TIMEOUT = 120  # seconds; the run itself takes a few seconds


def test_benchmark_harness_smoke(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    command = [
        sys.executable, "-m", "tests.benchmarks.run", "--quick",
        "--cases", "direct,standalone+json,service+json",
        "--groups", "latency-200B,slow-fast",
        "--requests", "10", "--warmup", "2",
        "--no-gatekit", "--json", str(output),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT)
    assert done.returncode == 0, f"benchmark run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"

    report = json.loads(output.read_text())
    cases = {result["case"]: result for result in report["cases"]}
    assert set(cases) == {"direct", "standalone+json", "service+json"}
    for key in ("direct", "standalone+json"):
        assert cases[key]["failed"] is None, cases[key]["failed"]
        assert cases[key]["skipped"] is None, cases[key]["skipped"]
        assert cases[key]["requests"] == 10
    assert cases["service+json"]["failed"] is None, cases["service+json"]["failed"]

    slow_fast = {result["case"]: result for result in report["slow_fast"]}
    assert slow_fast["standalone+json"]["failed"] is None, slow_fast["standalone+json"]["failed"]
    assert slow_fast["standalone+json"]["fast_ms"] > 0
    assert "machine:" in done.stdout
    assert "== targets" in done.stdout
