"""Run Watchgate's benchmark suite and print latency, throughput and audit figures.

    python -m tests.benchmarks.run [--quick] [--pin [CPU]] [--json FILE]
    python tests/benchmarks/run.py ...

Every case talks to the same upstream, tests/benchmarks/echo_server.py: directly,
through Watchgate standalone, through a Watchgate service via a shim, and
through Gatekit 0.3.0 (installed on demand into tests/benchmarks/.venv-gatekit).
Within a group the cases run in alternating rounds, so a slow phase of the
machine is spread over all of them instead of falling on one. docs/benchmarks.md
describes each case and the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

import psutil  # noqa: E402  (a Watchgate runtime dependency)

from tests.benchmarks.driver import ProtocolFailure, RunResult, StdioClient, percentile  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
ECHO_SERVER = BENCH_DIR / "echo_server.py"
RELAY = BENCH_DIR / "relay.py"
GATEKIT_VENV = BENCH_DIR / ".venv-gatekit"
GATEKIT_VERSION = "0.3.0"
GATEKIT_SERVER = "bench"  # Gatekit requires tool names of the form <server>__<tool>

SMALL = 200
MEDIUM = 10 * 1024
LARGE = 1024 * 1024
IN_FLIGHT = 16
SESSIONS = 8
SLOW_SECONDS = 2.0
FAST_AFTER_SLOW_DELAY = 0.05  # seconds between sending the slow call and the fast one
FAST_WAITED_THRESHOLD = 1.0  # seconds: a fast call slower than this waited behind the slow one
AUDIT_MAX_FILE_MB = 10
AUDIT_BACKUP_COUNT = 5
AUDIT_BATCH = 512  # events per write, as a busy background writer batches them

START_TIMEOUT = 60.0  # seconds for a gateway to start and return the initialize result
SERVICE_START_TIMEOUT = 30.0  # seconds for `watchgate serve` to create the worker socket
SERVICE_STOP_TIMEOUT = 15.0  # seconds for `watchgate serve` to exit after SIGTERM
ROUND_TIMEOUT = 300.0  # seconds for one case's share of one round
INSTALL_TIMEOUT = 600.0  # seconds for creating the Gatekit environment


# ---------------------------------------------------------------- cases and groups


@dataclass(frozen=True)
class Case:
    """One way of reaching the echo server."""

    key: str
    kind: str  # direct, relay, standalone, service or gatekit
    audit: bool
    description: str


CASES = {
    case.key: case
    for case in (
        Case("direct", "direct", False, "client -> echo server"),
        Case("relay", "relay", False, "a byte relay with no parsing: the floor for any Python stdio gateway"),
        Case("standalone", "standalone", False, "Watchgate standalone, allowlist, no audit"),
        Case("standalone+json", "standalone", True, "Watchgate standalone, allowlist, JSON audit"),
        Case("service+json", "service", True, "shim -> Watchgate service worker, allowlist, JSON audit"),
        Case("gatekit", "gatekit", False, "Gatekit 0.3.0, tool_manager allowlist, no audit"),
        Case("gatekit+json", "gatekit", True, "Gatekit 0.3.0, tool_manager allowlist, audit_jsonl"),
    )
}


@dataclass(frozen=True)
class Group:
    """Cases measured against each other in alternating rounds with one load shape."""

    name: str
    cases: tuple[str, ...]
    size: int
    in_flight: int = 1
    sessions: int = 1
    scale: float = 1.0  # requests per case = scale * --requests

    def describe(self) -> str:
        load = f"{self.in_flight} in flight" if self.in_flight > 1 else "one at a time"
        sessions = f", {self.sessions} sessions at once" if self.sessions > 1 else ""
        return f"{format_size(self.size)} results, {load}{sessions}"


GROUPS = (
    Group("latency-200B", tuple(CASES), SMALL),
    Group("latency-10KB", ("direct", "standalone+json", "service+json", "gatekit+json"), MEDIUM),
    Group("latency-1MB", ("direct", "relay", "standalone", "standalone+json", "service+json", "gatekit+json"),
          LARGE, scale=0.05),
    Group("throughput-16", ("direct", "relay", "standalone", "standalone+json", "service+json", "gatekit+json"),
          SMALL, in_flight=IN_FLIGHT, scale=5.0),
    Group("sessions-8", ("direct", "standalone+json", "service+json"), SMALL, sessions=SESSIONS, scale=2.0),
)


def format_size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size // (1024 * 1024)} MB"
    if size >= 1024:
        return f"{size // 1024} KB"
    return f"{size} B"


# ------------------------------------------------------------------- results


@dataclass
class CaseResult:
    group: str
    case: str
    requests: int = 0
    p50_us: float = math.nan
    p99_us: float = math.nan
    rps: float = math.nan
    gateway_cpu_us: float = math.nan  # CPU time of the gateway processes per request
    added_p50_us: float = math.nan
    added_p99_us: float = math.nan
    ratio_p50: float = math.nan
    # Per request, by process role: CPU time and read and write system calls.
    by_process: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: str | None = None
    failed: str | None = None


@dataclass
class SlowFastResult:
    case: str
    fast_ms: float = math.nan
    slow_ms: float = math.nan
    fast_waited: bool | None = None
    skipped: str | None = None
    failed: str | None = None


@dataclass
class AuditResult:
    format: str
    events: int = 0
    events_per_second: float = math.nan
    bytes_per_event: float = math.nan
    rotations: int = 0  # an estimate: bytes written divided by the rotation size
    skipped: str | None = None


@dataclass
class Report:
    environment: dict[str, Any] = field(default_factory=dict)
    cases: list[CaseResult] = field(default_factory=list)
    slow_fast: list[SlowFastResult] = field(default_factory=list)
    audit: list[AuditResult] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- environment


def read_cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def watchgate_version() -> str:
    try:
        from watchgate import __version__
    except ImportError:
        return "not importable"
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return f"{__version__} ({commit})" if commit else __version__


def describe_machine() -> dict[str, Any]:
    return {
        "cpu_model": read_cpu_model(),
        "cpus_online": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "kernel": f"{platform.system()} {platform.release()}",
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "watchgate": watchgate_version(),
        "msgspec": package_version("msgspec"),
        "uvloop": package_version("uvloop"),
    }


def pin_to_cpu(requested: int) -> tuple[int, str]:
    """Pin this process to one CPU; child processes inherit the mask. Return the CPU and what was done."""
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if requested < 0 else requested
    if cpu not in allowed:
        raise SystemExit(f"run.py: invalid --pin CPU {cpu}: this process may use CPUs {allowed}")
    os.sched_setaffinity(0, {cpu})
    return cpu, (f"os.sched_setaffinity(0, {{{cpu}}}) on the benchmark client (pid {os.getpid()}); "
                 "the gateways, shims, service processes and upstreams it starts inherit the mask")


# ------------------------------------------------------------- configurations


def yaml_list(items: list[str]) -> str:
    return json.dumps(items)  # a JSON array is valid YAML flow syntax


def watchgate_config(audit_file: Path | None, runtime_dir: Path) -> str:
    upstream = yaml_list([sys.executable, str(ECHO_SERVER)])
    text = f"""\
proxy:
  transport: stdio
  upstream:
    name: echo
    command: {upstream}
service:
  runtime_dir: {json.dumps(str(runtime_dir))}
plugins:
  security:
    - policy: tool_allowlist
      config:
        mode: allowlist
        tools: [echo, slow]
"""
    if audit_file is not None:
        text += f"""\
  auditing:
    - policy: file_auditing
      config:
        output_file: {json.dumps(str(audit_file))}
        format: json
        max_file_size_mb: {AUDIT_MAX_FILE_MB}
        backup_count: {AUDIT_BACKUP_COUNT}
"""
    return text + "logging:\n  level: WARNING\n"


def gatekit_config(audit_file: Path | None) -> str:
    """A Gatekit config equivalent to Watchgate's: an allowlist of echo and slow, optionally a JSON Lines audit."""
    upstream = yaml_list([sys.executable, str(ECHO_SERVER)])
    text = f"""\
proxy:
  transport: stdio
  upstreams:
    - name: {GATEKIT_SERVER}
      command: {upstream}
plugins:
  middleware:
    {GATEKIT_SERVER}:
      - handler: tool_manager
        config:
          enabled: true
          tools:
            - tool: echo
            - tool: slow
"""
    if audit_file is not None:
        text += f"""\
  auditing:
    _global:
      - handler: audit_jsonl
        config:
          enabled: true
          output_file: {json.dumps(str(audit_file))}
"""
    return text + "logging:\n  level: WARNING\n"


# ------------------------------------------------------------------ the bench


class Bench:
    """Configurations, availability of each kind of case, and the processes they need."""

    def __init__(self, options: argparse.Namespace, workdir: Path):
        self.options = options
        self.workdir = workdir
        self.unavailable: dict[str, str] = {}  # kind -> why its cases are skipped
        self.python = sys.executable
        self.watchgate = [self.python, "-m", "watchgate"]
        self.gatekit_gateway = GATEKIT_VENV / "bin" / "gatekit-gateway"
        self.configs: dict[str, Path] = {}
        self.service_process: subprocess.Popen | None = None
        self.service_stderr: Path = workdir / "service.stderr"
        self.shim_command: list[str] = []
        self.standalone_mode: list[str] = []
        self.gatekit_version = "not used"
        self.stderr_paths: list[Path] = []
        self.affinity_shown: set[str] = set()

    # --- preparation

    def prepare(self, kinds: set[str]) -> None:
        self._write_configs()
        if "standalone" in kinds or "service" in kinds:
            self._check_watchgate()
        if "service" in kinds and "service" not in self.unavailable:
            self._start_service()
        if "gatekit" in kinds:
            self._prepare_gatekit()

    def _write(self, name: str, text: str) -> Path:
        path = self.workdir / name
        path.write_text(text, encoding="utf-8")
        self.configs[name] = path
        return path

    def _write_configs(self) -> None:
        standalone_run = self.workdir / "run-standalone"
        self._write("standalone.yaml", watchgate_config(None, standalone_run))
        self._write("standalone-json.yaml", watchgate_config(self.workdir / "standalone-audit.log", standalone_run))
        self._write("service.yaml", watchgate_config(self.workdir / "service-audit.log", self.workdir / "run-service"))
        self._write("gatekit.yaml", gatekit_config(None))
        self._write("gatekit-json.yaml", gatekit_config(self.workdir / "gatekit-audit.jsonl"))

    def _check_watchgate(self) -> None:
        check = subprocess.run([*self.watchgate, "check", "--config", str(self.configs["standalone-json.yaml"])],
                               capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            reason = f"`watchgate check` failed ({check.returncode}): {tail(check.stderr or check.stdout)}"
            self.unavailable["standalone"] = reason
            self.unavailable["service"] = reason
            return
        help_text = subprocess.run([*self.watchgate, "--help"], capture_output=True, text=True, timeout=60).stdout
        if "--mode" in help_text:
            self.standalone_mode = ["--mode", "standalone"]
            self.shim_command = [*self.watchgate, "--config", str(self.configs["service.yaml"]), "--server", "echo",
                                 "--mode", "shim"]
        elif importlib.util.find_spec("watchgate.shim") is not None:
            self.shim_command = [*self.watchgate, "connect", "echo", "--config", str(self.configs["service.yaml"])]
        else:
            self.unavailable["service"] = "this Watchgate has neither `--mode shim` nor `watchgate connect`"
        if importlib.util.find_spec("watchgate.supervisor.cli") is None:
            self.unavailable["service"] = "watchgate.supervisor.cli is missing, so `watchgate serve` cannot run"

    def _start_service(self) -> None:
        socket_path = self.workdir / "run-service" / "echo.sock"
        stderr = open(self.service_stderr, "ab")
        self.service_process = subprocess.Popen(
            [*self.watchgate, "serve", "--config", str(self.configs["service.yaml"])],
            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=self.workdir,
        )
        stderr.close()
        deadline = time.monotonic() + SERVICE_START_TIMEOUT
        while time.monotonic() < deadline:
            if socket_path.exists():
                return
            if self.service_process.poll() is not None:
                self.unavailable["service"] = (f"`watchgate serve` exited with code {self.service_process.returncode}: "
                                               f"{tail(self.service_stderr.read_text(errors='replace'))}")
                self.service_process = None
                return
            time.sleep(0.05)
        self.unavailable["service"] = (f"`watchgate serve` did not create {socket_path} within "
                                       f"{SERVICE_START_TIMEOUT:g} s: "
                                       f"{tail(self.service_stderr.read_text(errors='replace'))}")
        self.stop_service()

    def stop_service(self) -> None:
        process, self.service_process = self.service_process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(SERVICE_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"warning: `watchgate serve` (pid {process.pid}) ignored SIGTERM for "
                  f"{SERVICE_STOP_TIMEOUT:g} s; sending SIGKILL", file=sys.stderr)
            process.kill()
            process.wait()

    def _prepare_gatekit(self) -> None:
        if self.options.no_gatekit:
            self.unavailable["gatekit"] = "disabled with --no-gatekit"
            return
        if not self.gatekit_gateway.exists():
            reason = install_gatekit(self.options.no_gatekit_install)
            if reason:
                self.unavailable["gatekit"] = reason
                return
        python = GATEKIT_VENV / "bin" / "python"
        version = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('gatekit'))"],
                                 capture_output=True, text=True, timeout=60)
        self.gatekit_version = version.stdout.strip() or f"unknown ({tail(version.stderr)})"
        if self.gatekit_version != GATEKIT_VERSION:
            self.unavailable["gatekit"] = (f"{GATEKIT_VENV} holds gatekit {self.gatekit_version}, not "
                                           f"{GATEKIT_VERSION}; delete the folder to reinstall")
            return
        for name in ("gatekit.yaml", "gatekit-json.yaml"):
            check = subprocess.run([str(self.gatekit_gateway), "--config", str(self.configs[name]), "--validate-only"],
                                   capture_output=True, text=True, timeout=120)
            if check.returncode != 0:
                self.unavailable["gatekit"] = (f"`gatekit-gateway --validate-only` rejected {name}: "
                                               f"{tail(check.stderr or check.stdout, 2)}")
                return

    # --- clients

    def skip_reason(self, case: Case) -> str | None:
        return self.unavailable.get(case.kind)

    def make_client(self, case: Case, index: int) -> StdioClient:
        tool = "echo"
        if case.kind == "direct":
            command = [self.python, str(ECHO_SERVER)]
        elif case.kind == "relay":
            command = [self.python, str(RELAY), self.python, str(ECHO_SERVER)]
        elif case.kind == "standalone":
            config = self.configs["standalone-json.yaml" if case.audit else "standalone.yaml"]
            command = [*self.watchgate, "--config", str(config), *self.standalone_mode]
        elif case.kind == "service":
            command = list(self.shim_command)
        elif case.kind == "gatekit":
            config = self.configs["gatekit-json.yaml" if case.audit else "gatekit.yaml"]
            command = [str(self.gatekit_gateway), "--config", str(config)]
            tool = f"{GATEKIT_SERVER}__echo"
        else:
            raise ValueError(f"unknown case kind {case.kind!r}")
        stderr_path = self.workdir / f"{case.key}-{index}.stderr"
        self.stderr_paths.append(stderr_path)
        return StdioClient(command, tool=tool, cwd=str(self.workdir), stderr_path=str(stderr_path),
                           name=f"{case.key}#{index}")

    def gateway_processes(self, case: Case, clients: list[StdioClient]) -> dict[str, list[psutil.Process]]:
        """Return the processes whose CPU time counts as the gateway's (all but the echo servers), by role."""
        client_pids = {client.pid for client in clients}
        client_role = {"relay": "relay", "standalone": "gateway", "service": "shim", "gatekit": "gateway"}
        labelled: dict[str, list[psutil.Process]] = {}
        for process in self.all_processes(case, clients):
            if is_echo_server(process):
                continue
            if process.pid in client_pids:
                label = client_role.get(case.kind, "client")
            elif self.service_process is not None and process.pid == self.service_process.pid:
                label = "supervisor"
            elif case.kind == "service":
                label = "worker" if any(is_echo_server(child) for child in _children(process)) else "writer"
            else:
                label = "helper"
            labelled.setdefault(label, []).append(process)
        return labelled

    def all_processes(self, case: Case, clients: list[StdioClient]) -> list[psutil.Process]:
        roots = [client.pid for client in clients if client.pid]
        if case.kind == "service" and self.service_process is not None:
            roots.append(self.service_process.pid)
        found: list[psutil.Process] = []
        for pid in roots:
            try:
                root = psutil.Process(pid)
                found.extend([root, *root.children(recursive=True)])
            except psutil.NoSuchProcess:
                continue
        return found


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children()
    except psutil.Error:
        return []


def is_echo_server(process: psutil.Process) -> bool:
    try:
        command = process.cmdline()
    except psutil.Error:
        return False
    return len(command) >= 2 and command[1] == str(ECHO_SERVER)  # `python echo_server.py`, not the relay


def process_counters(process: psutil.Process) -> tuple[float, int, int]:
    """Return a process's CPU seconds and its counts of read and write system calls so far.

    CPU time is the sum over the live threads of /proc/PID/task/TID/schedstat,
    which counts nanoseconds where psutil's cpu_times() has clock-tick (10 ms)
    resolution. Threads that exited are not counted, which is why callers take
    differences around one round. Zeros when the process is gone.
    """
    cpu = 0.0
    try:
        threads = os.listdir(f"/proc/{process.pid}/task")
        for thread in threads:
            with open(f"/proc/{process.pid}/task/{thread}/schedstat", encoding="ascii") as schedstat:
                cpu += int(schedstat.read().split()[0]) / 1e9
        io = process.io_counters()
    except (OSError, ValueError, IndexError, psutil.Error):
        return cpu, 0, 0
    return cpu, io.read_count, io.write_count


def sample_counters(labelled: dict[str, list[psutil.Process]]) -> dict[str, list[float]]:
    totals: dict[str, list[float]] = {}
    for label, processes in labelled.items():
        total = totals.setdefault(label, [0.0, 0.0, 0.0])
        for process in processes:
            for index, value in enumerate(process_counters(process)):
                total[index] += value
    return totals


def tail(text: str, lines: int = 5) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(no output)"


def install_gatekit(forbidden: bool) -> str | None:
    """Create the Gatekit virtual environment; return why it failed, or None."""
    if forbidden:
        return f"{GATEKIT_VENV} is missing and --no-gatekit-install was given"
    print(f"Installing gatekit=={GATEKIT_VERSION} into {GATEKIT_VENV} ...", flush=True)
    steps = (
        [sys.executable, "-m", "venv", str(GATEKIT_VENV)],
        [str(GATEKIT_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", f"gatekit=={GATEKIT_VERSION}"],
    )
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(step)}` timed out after {INSTALL_TIMEOUT:g} s"
        if done.returncode != 0:
            return f"`{' '.join(step)}` failed ({done.returncode}): {tail(done.stderr or done.stdout)}"
    return None


# ------------------------------------------------------------------- measuring


@dataclass
class _Accumulator:
    latencies_ns: list[int] = field(default_factory=list)
    wall_ns: int = 0
    by_process: dict[str, list[float]] = field(default_factory=dict)  # role -> [CPU s, reads, writes]


async def open_clients(bench: Bench, case: Case, sessions: int) -> list[StdioClient]:
    clients = [bench.make_client(case, index) for index in range(sessions)]
    try:
        await asyncio.gather(*(client.start(START_TIMEOUT) for client in clients))
    except BaseException:
        await close_clients(clients)
        raise
    return clients


async def close_clients(clients: list[StdioClient]) -> None:
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


async def run_share(clients: list[StdioClient], count: int, size: int, in_flight: int) -> RunResult:
    """Run `count` requests on each client at once; return all latencies and the wall time of the slowest."""
    started = time.perf_counter_ns()
    results = await asyncio.gather(*(client.run_in_flight(count, size, in_flight) for client in clients))
    combined = RunResult(wall_ns=time.perf_counter_ns() - started)
    for result in results:
        combined.latencies_ns.extend(result.latencies_ns)
    return combined


def stderr_tail(clients: list[StdioClient]) -> str:
    texts = []
    for client in clients:
        if client.stderr_path and os.path.exists(client.stderr_path):
            with open(client.stderr_path, errors="replace") as stderr:
                texts.append(stderr.read())
    return tail("\n".join(texts), 3)


class _GroupRun:
    """The clients, counters and results of one group while its rounds run."""

    def __init__(self, bench: Bench, group: Group, options: argparse.Namespace, cases: list[Case]):
        self.bench = bench
        self.group = group
        self.options = options
        self.cases = cases
        total = max(1, int(options.requests * group.scale))
        self.per_session = max(1, math.ceil(total / group.sessions / options.rounds))
        self.warmup = max(1, min(options.warmup, self.per_session))
        self.results = {case.key: CaseResult(group.name, case.key) for case in cases}
        self.clients: dict[str, list[StdioClient]] = {}
        self.gateway: dict[str, dict[str, list[psutil.Process]]] = {}
        self.totals: dict[str, _Accumulator] = {}

    async def open_all(self) -> None:
        """Start every available case's sessions and warm them up; record skips and failures."""
        for case in self.cases:
            reason = self.bench.skip_reason(case)
            if reason:
                self.results[case.key].skipped = reason
                continue
            try:
                self.clients[case.key] = await open_clients(self.bench, case, self.group.sessions)
                await asyncio.wait_for(self._run_share(case, self.warmup), ROUND_TIMEOUT)
            except (ProtocolFailure, OSError, asyncio.TimeoutError) as error:
                await self._fail(case, f"{error or type(error).__name__}")
                continue
            self.gateway[case.key] = self.bench.gateway_processes(case, self.clients[case.key])
            self.totals[case.key] = _Accumulator()
            if (self.options.pin is not None and case.key not in self.bench.affinity_shown) or self.options.verbose:
                self.bench.affinity_shown.add(case.key)
                print_affinity(case, self.bench.all_processes(case, self.clients[case.key]))

    async def run_round(self, round_index: int) -> None:
        """Give every open case its share of requests, starting one case later than the last round."""
        active = [case for case in self.cases if case.key in self.clients]
        shift = round_index % max(1, len(active))
        for case in active[shift:] + active[:shift]:
            before = sample_counters(self.gateway[case.key])
            try:
                share = await asyncio.wait_for(self._run_share(case, self.per_session), ROUND_TIMEOUT)
            except (ProtocolFailure, OSError, asyncio.TimeoutError) as error:
                await self._fail(case, f"round {round_index + 1}: {error or type(error).__name__}")
                continue
            after = sample_counters(self.gateway[case.key])
            accumulator = self.totals[case.key]
            for label, counters in after.items():
                total = accumulator.by_process.setdefault(label, [0.0, 0.0, 0.0])
                for index, value in enumerate(counters):
                    total[index] += value - before[label][index]
            accumulator.latencies_ns.extend(share.latencies_ns)
            accumulator.wall_ns += share.wall_ns

    async def close_all(self) -> None:
        for key in list(self.clients):
            await close_clients(self.clients.pop(key))

    def finish(self) -> list[CaseResult]:
        """Compute each case's figures and its difference from the direct case."""
        for key, accumulator in self.totals.items():
            if not self.results[key].failed:
                fill_result(self.results[key], accumulator, has_gateway=CASES[key].kind != "direct")
        direct = self.results.get("direct")
        for result in self.results.values():
            if direct is not None and result.case != "direct" and not math.isnan(direct.p50_us):
                result.added_p50_us = result.p50_us - direct.p50_us
                result.added_p99_us = result.p99_us - direct.p99_us
                result.ratio_p50 = result.p50_us / direct.p50_us
        return list(self.results.values())

    def _run_share(self, case: Case, count: int):
        return run_share(self.clients[case.key], count, self.group.size, self.group.in_flight)

    async def _fail(self, case: Case, reason: str) -> None:
        clients = self.clients.pop(case.key, [])
        self.results[case.key].failed = f"{reason}; stderr: {stderr_tail(clients)}"
        await close_clients(clients)


async def run_group(bench: Bench, group: Group, options: argparse.Namespace, report: Report) -> None:
    """Measure the selected cases of one group in alternating rounds and print their figures."""
    cases = [CASES[key] for key in group.cases if key in options.case_keys]
    if not cases:
        return
    print(f"\n== {group.name}: {group.describe()}", flush=True)
    run = _GroupRun(bench, group, options, cases)
    try:
        await run.open_all()
        for round_index in range(options.rounds):
            await run.run_round(round_index)
    finally:
        await run.close_all()
    for result in run.finish():
        report.cases.append(result)
        print_case(result, options.breakdown)


def fill_result(result: CaseResult, accumulator: _Accumulator, has_gateway: bool) -> None:
    latencies = sorted(accumulator.latencies_ns)
    result.requests = len(latencies)
    result.p50_us = percentile(latencies, 0.50) / 1000
    result.p99_us = percentile(latencies, 0.99) / 1000
    result.rps = len(latencies) / (accumulator.wall_ns / 1e9) if accumulator.wall_ns else math.nan
    if has_gateway and latencies:
        count = len(latencies)
        result.gateway_cpu_us = sum(cpu for cpu, _, _ in accumulator.by_process.values()) / count * 1e6
        result.by_process = {
            label: {"cpu_us": cpu / count * 1e6, "reads": reads / count, "writes": writes / count}
            for label, (cpu, reads, writes) in sorted(accumulator.by_process.items())
        }


def print_affinity(case: Case, processes: list[psutil.Process]) -> None:
    masks = []
    for process in [psutil.Process(os.getpid()), *processes]:
        try:
            name = "echo_server" if is_echo_server(process) else process.name()
            masks.append(f"{name}[{process.pid}]={sorted(process.cpu_affinity())}")
        except psutil.Error:
            continue
    print(f"   CPU affinity for {case.key}: {', '.join(masks)}")


def print_case(result: CaseResult, breakdown: bool = False) -> None:
    if result.skipped:
        print(f"   {result.case:16} skipped: {result.skipped}")
        return
    if result.failed:
        print(f"   {result.case:16} FAILED: {result.failed}")
        return
    added = "" if math.isnan(result.added_p50_us) else (
        f"  added p50 {result.added_p50_us:+8.1f} us p99 {result.added_p99_us:+8.1f} us  x{result.ratio_p50:.2f}")
    cpu = "" if math.isnan(result.gateway_cpu_us) else f"  gateway CPU {result.gateway_cpu_us:6.1f} us/req"
    print(f"   {result.case:16} n={result.requests:<6} p50 {result.p50_us:9.1f} us  p99 {result.p99_us:9.1f} us  "
          f"{result.rps:9.0f} req/s{added}{cpu}", flush=True)
    if breakdown and result.by_process:
        parts = [f"{label} {figures['cpu_us']:.1f} us CPU, {figures['reads']:.2f} reads, {figures['writes']:.2f} writes"
                 for label, figures in result.by_process.items()]
        print(f"   {'':16} per request: {'; '.join(parts)}")


# ---------------------------------------------------------- slow and fast call


async def run_slow_fast(bench: Bench, options: argparse.Namespace, report: Report) -> None:
    keys = [key for key in ("direct", "standalone+json", "service+json", "gatekit+json") if key in options.case_keys]
    if not keys:
        return
    print(f"\n== slow-fast: a {SLOW_SECONDS:g} s call, then {FAST_AFTER_SLOW_DELAY * 1000:g} ms later a "
          f"{SMALL} B call on the same session", flush=True)
    for key in keys:
        case = CASES[key]
        result = SlowFastResult(key, skipped=bench.skip_reason(case))
        report.slow_fast.append(result)
        if result.skipped:
            print(f"   {key:16} skipped: {result.skipped}")
            continue
        clients: list[StdioClient] = []
        try:
            clients = await open_clients(bench, case, 1)
            client = clients[0]
            slow_tool = client.tool.replace("echo", "slow")
            slow = asyncio.create_task(client.call_tool(slow_tool, {"tag": "slow", "seconds": SLOW_SECONDS}))
            await asyncio.sleep(FAST_AFTER_SLOW_DELAY)
            fast = await asyncio.wait_for(client.run_sequential(1, SMALL), ROUND_TIMEOUT)
            slow_reply, slow_ns = await asyncio.wait_for(slow, ROUND_TIMEOUT)
            if slow_reply.error is not None:
                raise ProtocolFailure(f"the slow call failed: {slow_reply.error}")
            result.fast_ms = fast.latencies_ns[0] / 1e6
            result.slow_ms = slow_ns / 1e6
            result.fast_waited = result.fast_ms >= FAST_WAITED_THRESHOLD * 1000
        except (ProtocolFailure, OSError, asyncio.TimeoutError) as error:
            result.failed = f"{error or type(error).__name__}; stderr: {stderr_tail(clients)}"
        finally:
            await close_clients(clients)
        if result.failed:
            print(f"   {key:16} FAILED: {result.failed}")
        else:
            verdict = "WAITED behind the slow call" if result.fast_waited else "did not wait"
            print(f"   {key:16} fast call {result.fast_ms:8.2f} ms, slow call {result.slow_ms:8.1f} ms: "
                  f"fast call {verdict}", flush=True)


# ----------------------------------------------------------------- audit writer


def audit_sample_events(count: int) -> list:
    """Build REQUEST and RESPONSE events shaped like the gateway's for a tools/call."""
    from watchgate.audit.events import AuditEvent, utc_timestamp

    base = time.time()
    events = []
    for index in range(count):
        timestamp = utc_timestamp(base + index / 1000)
        common = dict(timestamp=timestamp, method="tools/call", tool="echo", request_id=str(index),
                      server_name="echo", client_name="watchgate-benchmark", client_version="1.0",
                      session_id="3f2a9c1e")
        if index % 2 == 0:
            events.append(AuditEvent(event_type="REQUEST", status="ALLOWED", **common))
        else:
            events.append(AuditEvent(event_type="RESPONSE", status="success", duration_ms=0.412, **common))
    return events


def run_audit_writer(workdir: Path, options: argparse.Namespace, report: Report) -> None:
    print(f"\n== audit-writer: FileSink with rotation at {AUDIT_MAX_FILE_MB} MB, {AUDIT_BACKUP_COUNT} backups, "
          f"{AUDIT_BATCH} events per write", flush=True)
    try:
        from watchgate.audit.formats import make_formatter
        from watchgate.audit.sink import FileSink
    except ImportError as error:
        reason = f"watchgate.audit.sink or formats is not importable: {error}"
        for name in ("json", "line", "debug", "csv"):
            report.audit.append(AuditResult(name, skipped=reason))
        print(f"   skipped: {reason}")
        return
    pool = audit_sample_events(4096)
    batches = [pool[start : start + AUDIT_BATCH] for start in range(0, len(pool), AUDIT_BATCH)]
    for name in ("json", "line", "debug", "csv"):
        folder = workdir / f"audit-writer-{name}"
        path = folder / f"audit.{name}"
        sink = FileSink(str(path), make_formatter(name), max_bytes=AUDIT_MAX_FILE_MB * 1024 * 1024,
                        backup_count=AUDIT_BACKUP_COUNT)
        sink.open()
        written_bytes = 0
        written_events = 0
        started = time.perf_counter()
        while written_events < options.audit_events:
            for batch in batches:
                written_bytes += sink.write_events(batch)
                written_events += len(batch)
        elapsed = time.perf_counter() - started
        sink.close()
        result = AuditResult(name, events=written_events, events_per_second=written_events / elapsed,
                             bytes_per_event=written_bytes / written_events,
                             rotations=written_bytes // (AUDIT_MAX_FILE_MB * 1024 * 1024))
        report.audit.append(result)
        print(f"   {name:6} {result.events_per_second:12,.0f} events/s  {result.bytes_per_event:6.0f} B/event  "
              f"{result.events:,} events, about {result.rotations} rotations", flush=True)
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------- targets


def find(report: Report, group: str, case: str) -> CaseResult | None:
    for result in report.cases:
        if result.group == group and result.case == case and not result.skipped and not result.failed:
            return result
    return None


def evaluate_targets(report: Report, pinned: bool) -> list[dict[str, Any]]:
    """Compare the figures with the design targets and mark each one met (True), missed (False) or not measured (None)."""
    targets: list[dict[str, Any]] = []

    def add(name: str, met: bool | None, figure: str) -> None:
        targets.append({"target": name, "met": met, "figure": figure})

    pin_note = "" if pinned else " (not pinned)"
    standalone = find(report, "latency-200B", "standalone+json")
    if standalone:
        add("standalone adds <= 35 us at p50 and <= 80 us at p99 (200 B, JSON audit, one core)",
            standalone.added_p50_us <= 35 and standalone.added_p99_us <= 80,
            f"p50 {standalone.added_p50_us:+.1f} us, p99 {standalone.added_p99_us:+.1f} us{pin_note}")
    else:
        add("standalone adds <= 35 us at p50 and <= 80 us at p99", None, "not measured")
    service = find(report, "latency-200B", "service+json")
    if service and standalone:
        add("service via shim adds <= 2x what standalone adds",
            service.added_p50_us <= 2 * standalone.added_p50_us and service.added_p99_us <= 2 * standalone.added_p99_us,
            f"p50 {service.added_p50_us:+.1f} us vs 2 x {standalone.added_p50_us:.1f}, "
            f"p99 {service.added_p99_us:+.1f} us vs 2 x {standalone.added_p99_us:.1f}")
    else:
        add("service via shim adds <= 2x what standalone adds", None, "not measured")
    throughput = find(report, "throughput-16", "service+json") or find(report, "throughput-16", "standalone+json")
    direct_throughput = find(report, "throughput-16", "direct")
    if throughput:
        ceiling = f", direct {direct_throughput.rps:,.0f} req/s" if direct_throughput else ""
        capacity = ("" if math.isnan(throughput.gateway_cpu_us)
                    else f", gateway CPU {throughput.gateway_cpu_us:.1f} us/req (= {1e6 / throughput.gateway_cpu_us:,.0f} "
                         "req/s per fully used core)")
        add("one worker sustains >= 40,000 req/s with 16 in flight", throughput.rps >= 40_000,
            f"{throughput.case}: {throughput.rps:,.0f} req/s{ceiling}{capacity}")
    else:
        add("one worker sustains >= 40,000 req/s with 16 in flight", None, "not measured")
    large = find(report, "latency-1MB", "standalone+json")
    if large:
        add("a 1 MB result adds <= 0.5 ms (no plugin inspects results)", large.added_p50_us <= 500,
            f"standalone+json p50 {large.added_p50_us / 1000:+.2f} ms, p99 {large.added_p99_us / 1000:+.2f} ms")
    else:
        add("a 1 MB result adds <= 0.5 ms", None, "not measured")
    rates = {result.format: result.events_per_second for result in report.audit if not result.skipped}
    for name, floor in (("line", 300_000), ("json", 1_000_000)):
        if name in rates:
            add(f"audit writer: >= {floor:,} {name} events/s with rotation", rates[name] >= floor,
                f"{rates[name]:,.0f} events/s")
        else:
            add(f"audit writer: >= {floor:,} {name} events/s with rotation", None, "not measured")
    gatekit = find(report, "latency-200B", "gatekit+json")
    if gatekit and standalone:
        add("Watchgate adds <= 1/3 of what Gatekit adds (200 B, JSON audit)",
            standalone.added_p50_us <= gatekit.added_p50_us / 3,
            f"Watchgate {standalone.added_p50_us:+.1f} us vs Gatekit {gatekit.added_p50_us:+.1f} us at p50 "
            f"(ratio {standalone.added_p50_us / gatekit.added_p50_us:.3f})")
    else:
        add("Watchgate adds <= 1/3 of what Gatekit adds", None, "not measured")
    waits = [result for result in report.slow_fast
             if result.case in ("standalone+json", "service+json") and result.fast_waited is not None]
    if waits:
        add("a fast call does not wait behind a slow one", not any(result.fast_waited for result in waits),
            ", ".join(f"{result.case}: fast {result.fast_ms:.2f} ms" for result in waits))
    else:
        add("a fast call does not wait behind a slow one", None, "not measured")
    return targets


def print_targets(targets: list[dict[str, Any]]) -> None:
    print("\n== targets")
    for target in targets:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        print(f"   [{verdict:12}] {target['target']}: {target['figure']}")


# ------------------------------------------------------------------------ main


FULL_LOAD = {"requests": 2000, "rounds": 5, "warmup": 200, "audit_events": 300_000}
QUICK_LOAD = {"requests": 40, "rounds": 2, "warmup": 5, "audit_events": 20_000}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark Watchgate against a direct connection and Gatekit.")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run to check the harness: 40 requests per case, 2 rounds, 20,000 audit events "
                        "(options given explicitly still apply)")
    parser.add_argument("--requests", type=int,
                        help="requests per case in the 200 B latency group; other groups scale it (default 2000)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per group (default 5)")
    parser.add_argument("--warmup", type=int, help="unrecorded requests per session first (default 200)")
    parser.add_argument("--audit-events", type=int,
                        help="events per format in the audit writer test (default 300,000)")
    parser.add_argument("--pin", type=int, nargs="?", const=-1, metavar="CPU",
                        help="pin client, gateways and upstreams to one CPU (default: the last allowed CPU)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated cases to run (default all: {','.join(CASES)})")
    parser.add_argument("--groups", default=",".join([group.name for group in GROUPS] + ["slow-fast", "audit-writer"]),
                        help="comma-separated groups to run (default all)")
    parser.add_argument("--no-gatekit", action="store_true", help="skip the Gatekit cases")
    parser.add_argument("--no-gatekit-install", action="store_true",
                        help=f"skip the Gatekit cases instead of creating {GATEKIT_VENV.name} when it is missing")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (configs, audit logs, stderr)")
    parser.add_argument("--breakdown", action="store_true",
                        help="print each gateway process's CPU time and read/write system calls per request")
    parser.add_argument("--verbose", action="store_true", help="print the CPU affinity of every case's processes")
    options = parser.parse_args(argv)
    for name, value in (QUICK_LOAD if options.quick else FULL_LOAD).items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    options.case_keys = [key.strip() for key in options.cases.split(",") if key.strip()]
    unknown = [key for key in options.case_keys if key not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; expected some of {', '.join(CASES)}")
    options.group_names = [name.strip() for name in options.groups.split(",") if name.strip()]
    known_groups = {group.name for group in GROUPS} | {"slow-fast", "audit-writer"}
    unknown = [name for name in options.group_names if name not in known_groups]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known_groups))}")
    if options.requests < 1 or options.rounds < 1:
        parser.error("--requests and --rounds must be at least 1")
    return options


async def run_all(options: argparse.Namespace, workdir: Path, report: Report) -> None:
    bench = Bench(options, workdir)
    kinds = {CASES[key].kind for key in options.case_keys}
    try:
        bench.prepare(kinds)
        report.environment["gatekit"] = bench.gatekit_version
        for kind, reason in sorted(bench.unavailable.items()):
            if kind in kinds:
                print(f"{kind} cases skipped: {reason}")
        print(f"gatekit: {bench.gatekit_version}")
        for group in GROUPS:
            if group.name in options.group_names:
                await run_group(bench, group, options, report)
        if "slow-fast" in options.group_names:
            await run_slow_fast(bench, options, report)
    finally:
        bench.stop_service()
    if "audit-writer" in options.group_names:
        run_audit_writer(workdir, options, report)


def run_event_loop(coroutine) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
        return
    uvloop.run(coroutine)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    report = Report()
    pinned = None
    if options.pin is not None:
        cpu, done = pin_to_cpu(options.pin)
        pinned = cpu
        report.environment["pinning"] = done
    report.environment.update(describe_machine())
    environment = report.environment
    print(f"machine: {environment['cpu_model']}, {environment['cpus_online']} CPUs online, "
          f"allowed {environment['cpus_allowed']}, {environment['kernel']}, load {environment['load_average']}")
    print(f"versions: python {environment['python']}, watchgate {environment['watchgate']}, "
          f"msgspec {environment['msgspec']}, uvloop {environment['uvloop']}")
    print(f"pinning: {environment.get('pinning', 'none (pass --pin to pin everything to one CPU)')}")
    print(f"load: --requests {options.requests}, --rounds {options.rounds}, --warmup {options.warmup}")
    workdir = Path(tempfile.mkdtemp(prefix="watchgate-bench-"))
    try:
        run_event_loop(run_all(options, workdir, report))
    finally:
        if options.keep:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report.targets = evaluate_targets(report, pinned is not None)
    print_targets(report.targets)
    if options.json:
        with open(options.json, "w", encoding="utf-8") as output:
            json.dump(dataclasses.asdict(report), output, indent=2, default=str)
            output.write("\n")
    # A Gatekit failure is a finding about Gatekit, so only a failing direct or Watchgate case fails the run.
    failed = [result for result in [*report.cases, *report.slow_fast]
              if result.failed and CASES[result.case].kind != "gatekit"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
