"""Loading valid configuration files: the tutorial file, every accepted form, and resolution rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watchgate.config import load_config
from watchgate.config.model import (
    DEFAULT_MAX_MESSAGE_BYTES,
    AuditFormat,
    AuditMode,
    CsvConfig,
    FileAuditingConfig,
    FsyncPolicy,
    LoggingConfig,
    RestartPolicyConfig,
    ToolAllowlistConfig,
    ToolListMode,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TUTORIAL_CONFIG = REPO_ROOT / "configs" / "tutorials" / "2-implementing-audit-logging.yaml"
TUTORIAL_TOOLS = ("read_file", "write_file", "create_directory", "list_directory", "search_files")

ONE_SERVER = """\
proxy:
  upstream:
    name: files
    command: server
"""


def test_tutorial_file_loads(monkeypatch):
    monkeypatch.setenv("HOME", "/home/tutorial-user")

    config = load_config(TUTORIAL_CONFIG)

    assert config.path == str(TUTORIAL_CONFIG)
    assert [server.name for server in config.servers] == ["filesystem"]
    server = config.server("filesystem")
    assert server.command == (
        "npx",
        "@modelcontextprotocol/server-filesystem",
        "/home/tutorial-user/claude-sandbox/",
    )
    assert server.cwd is None
    assert server.env == {}


def test_tutorial_file_plugins():
    config = load_config(TUTORIAL_CONFIG)

    (audit,) = config.auditing["filesystem"]
    assert audit.policy == "file_auditing"
    assert audit.config.output_file == str(REPO_ROOT / "configs" / "tutorials" / "logs" / "audit.log")
    assert os.path.isabs(audit.config.output_file)
    assert audit.config.format is AuditFormat.JSON
    assert audit.config.max_file_size_mb == 10
    assert audit.config.backup_count == 5

    (security,) = config.security["filesystem"]
    assert security.policy == "tool_allowlist"
    assert security.config.mode is ToolListMode.ALLOWLIST
    assert security.config.tools == TUTORIAL_TOOLS
    assert security.config.block_message == "Tool access denied by security policy"


def test_tutorial_file_uses_real_home():
    config = load_config(str(TUTORIAL_CONFIG))

    assert config.servers[0].command[2] == os.path.expanduser("~") + "/claude-sandbox/"


def test_defaults_for_minimal_file(load_text, monkeypatch):
    monkeypatch.setenv("WATCHGATE_RUNTIME_DIR", "/run/wg-test")

    config = load_text(ONE_SERVER)

    server = config.server("files")
    assert server.command == ("server",)
    assert server.startup_timeout == 60.0
    assert server.restart == RestartPolicyConfig()
    assert config.security == {"files": ()}
    assert config.auditing == {"files": ()}
    assert config.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert config.logging == LoggingConfig()
    assert config.service.runtime_dir == "/run/wg-test"


def test_config_path_made_absolute(write_config, monkeypatch, tmp_path):
    write_config(ONE_SERVER, "sub/watchgate.yaml")
    monkeypatch.chdir(tmp_path)

    config = load_config("sub/watchgate.yaml")

    assert config.path == str(tmp_path / "sub" / "watchgate.yaml")
    assert config.base_dir == tmp_path / "sub"


def test_upstreams_list(load_text):
    config = load_text(
        """\
        proxy:
          transport: stdio
          upstreams:
            - name: files
              command: [npx, "@modelcontextprotocol/server-filesystem", /data]
            - command: uvx mcp-server-fetch
            - name: my.server_2-b
              command: python3 -m my_server
        """
    )

    assert [server.name for server in config.servers] == ["files", "fetch", "my.server_2-b"]
    assert config.server("fetch").command == ("uvx", "mcp-server-fetch")
    assert set(config.security) == {"files", "fetch", "my.server_2-b"}


def test_command_string_split_like_shell(load_text):
    config = load_text(
        """\
        proxy:
          upstream:
            name: s
            command: "server --title 'two words' \\"quoted arg\\" plain"
        """
    )

    assert config.server("s").command == ("server", "--title", "two words", "quoted arg", "plain")


def test_command_list_keeps_spaces(load_text):
    config = load_text(
        """\
        proxy:
          upstream:
            name: s
            command: [server, "a b", "c'd"]
        """
    )

    assert config.server("s").command == ("server", "a b", "c'd")


def test_server_settings(load_text, tmp_path):
    config = load_text(
        """\
        proxy:
          upstream:
            name: s
            command: server
            env: {API_URL: "http://127.0.0.1:9", PORT: 8080, RATIO: 0.5, EMPTY: ""}
            cwd: work
            startup_timeout: 5
            request_timeout: 120.5
            shutdown_grace: 0
            terminate_timeout: 1
            restart: {backoff_initial: 0.1, max_restarts: 0}
          max_message_bytes: 1024
        """
    )

    server = config.server("s")
    assert server.env == {"API_URL": "http://127.0.0.1:9", "PORT": "8080", "RATIO": "0.5", "EMPTY": ""}
    assert server.cwd == str(tmp_path / "work")
    assert server.startup_timeout == 5.0
    assert server.request_timeout == 120.5
    assert server.shutdown_grace == 0.0
    assert server.terminate_timeout == 1.0
    assert server.restart == RestartPolicyConfig(backoff_initial=0.1, max_restarts=0)
    assert config.max_message_bytes == 1024


def test_null_cwd_means_inherited(load_text):
    config = load_text(ONE_SERVER.replace("command: server", "command: server\n    cwd: null"))

    assert config.server("files").cwd is None


def test_yaml_anchors_and_merge_keys(load_text):
    config = load_text(
        """\
        proxy:
          upstreams:
            - &first
              name: a
              command: server-a
              startup_timeout: 7
            - <<: *first
              name: b
              startup_timeout: 8
        """
    )

    assert config.server("a").startup_timeout == 7.0
    assert config.server("b").command == ("server-a",)
    assert config.server("b").startup_timeout == 8.0


class TestPaths:
    def test_relative_paths_from_config_folder(self, write_config, monkeypatch, tmp_path):
        path = write_config(
            """\
            proxy:
              upstream: {name: s, command: server, cwd: ../work}
              runtime_dir: run
            plugins:
              auditing:
                - policy: file_auditing
                  config: {output_file: logs/audit.log}
            logging:
              file_path: ./logs/watchgate.log
            """,
            "configs/watchgate.yaml",
        )
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)

        config = load_config(path)

        assert config.server("s").cwd == str(tmp_path / "work")
        assert config.auditing["s"][0].config.output_file == str(tmp_path / "configs" / "logs" / "audit.log")
        assert config.logging.file_path == str(tmp_path / "configs" / "logs" / "watchgate.log")
        assert config.service.runtime_dir == str(tmp_path / "configs" / "run")

    def test_absolute_paths_kept(self, load_text):
        config = load_text(
            """\
            proxy:
              upstream: {name: s, command: server, cwd: /srv/work/}
            plugins:
              auditing:
                - policy: file_auditing
                  config: {output_file: /var/log/watchgate/../wg/audit.log}
            """
        )

        assert config.server("s").cwd == "/srv/work"
        assert config.auditing["s"][0].config.output_file == "/var/log/wg/audit.log"

    def test_home_expanded_in_paths(self, load_text, monkeypatch):
        monkeypatch.setenv("HOME", "/home/someone")

        config = load_text(
            """\
            proxy:
              upstream: {name: s, command: server ~/data, cwd: ~/work}
            plugins:
              auditing:
                - policy: file_auditing
                  config: {output_file: ~/logs/audit.log}
            """
        )

        assert config.server("s").command == ("server", "/home/someone/data")
        assert config.server("s").cwd == "/home/someone/work"
        assert config.auditing["s"][0].config.output_file == "/home/someone/logs/audit.log"

    def test_tilde_inside_argument_kept(self, load_text, monkeypatch):
        monkeypatch.setenv("HOME", "/home/someone")

        config = load_text(ONE_SERVER.replace("command: server", "command: [server, --root=~/x, a~b]"))

        assert config.server("files").command == ("server", "--root=~/x", "a~b")


class TestEnvironmentExpansion:
    def test_braced_and_plain_variables(self, load_text, monkeypatch):
        monkeypatch.setenv("WG_TEST_ROOT", "/data/root")
        monkeypatch.setenv("WG_TEST_NAME", "alpha")

        config = load_text(
            """\
            proxy:
              upstream:
                name: s
                command: "server ${WG_TEST_ROOT}/sub --name=$WG_TEST_NAME 'quoted $WG_TEST_NAME'"
                cwd: ${WG_TEST_ROOT}/cwd
            """
        )

        server = config.server("s")
        assert server.command == ("server", "/data/root/sub", "--name=alpha", "quoted alpha")
        assert server.cwd == "/data/root/cwd"

    def test_list_command_expanded(self, load_text, monkeypatch):
        monkeypatch.setenv("WG_TEST_ROOT", "/data/root")
        monkeypatch.setenv("HOME", "/home/someone")

        config = load_text(ONE_SERVER.replace("command: server", "command: [server, '$WG_TEST_ROOT', '~/x']"))

        assert config.server("files").command == ("server", "/data/root", "/home/someone/x")

    def test_double_dollar_is_literal(self, load_text, monkeypatch):
        monkeypatch.setenv("WG_TEST_NAME", "alpha")

        config = load_text(
            ONE_SERVER.replace("command: server", "command: [server, 'cost$$5', 'a$$WG_TEST_NAME', 'end$', '$1']")
        )

        assert config.server("files").command == ("server", "cost$5", "a$WG_TEST_NAME", "end$", "$1")

    def test_server_env_visible_to_command(self, load_text, monkeypatch):
        monkeypatch.setenv("WG_TEST_ROOT", "/from/environment")

        config = load_text(
            """\
            proxy:
              upstream:
                name: s
                command: server $WG_TEST_ROOT $WG_TEST_ONLY_IN_CONFIG
                env: {WG_TEST_ROOT: /from/config, WG_TEST_ONLY_IN_CONFIG: yes-here}
            """
        )

        assert config.server("s").command == ("server", "/from/config", "yes-here")

    def test_env_values_not_expanded(self, load_text, monkeypatch):
        monkeypatch.setenv("WG_TEST_ROOT", "/data/root")

        config = load_text(ONE_SERVER.replace("command: server", "command: server\n    env: {A: $WG_TEST_ROOT}"))

        assert config.server("files").env == {"A": "$WG_TEST_ROOT"}

    def test_variable_in_output_file(self, load_text, monkeypatch):
        monkeypatch.setenv("WG_TEST_ROOT", "/data/root")

        config = load_text(
            ONE_SERVER
            + """\
plugins:
  auditing:
    - policy: file_auditing
      config: {output_file: "${WG_TEST_ROOT}/audit.log"}
"""
        )

        assert config.auditing["files"][0].config.output_file == "/data/root/audit.log"


class TestPluginForms:
    def test_list_applies_to_every_server(self, load_text):
        config = load_text(
            """\
            proxy:
              upstreams:
                - {name: a, command: server-a}
                - {name: b, command: server-b}
            plugins:
              security:
                - policy: tool_allowlist
                  config: {mode: blocklist, tools: [delete_file]}
            """
        )

        for name in ("a", "b"):
            (entry,) = config.security[name]
            assert entry.config == ToolAllowlistConfig(mode=ToolListMode.BLOCKLIST, tools=("delete_file",))

    def test_mapping_with_global_and_server(self, load_text, tmp_path):
        config = load_text(
            """\
            proxy:
              upstreams:
                - {name: a, command: server-a}
                - {name: b, command: server-b}
            plugins:
              auditing:
                _global:
                  - policy: file_auditing
                    config: {output_file: all.log}
                b:
                  - policy: file_auditing
                    config: {output_file: b.log, format: csv}
            """
        )

        assert config.auditing["a"][0].config.output_file == str(tmp_path / "all.log")
        (entry,) = config.auditing["b"]
        assert entry.config.output_file == str(tmp_path / "b.log")
        assert entry.config.format is AuditFormat.CSV

    def test_mapping_without_global(self, load_text):
        config = load_text(
            """\
            proxy:
              upstreams:
                - {name: a, command: server-a}
                - {name: b, command: server-b}
            plugins:
              security:
                a:
                  - policy: tool_allowlist
                    config: {tools: [read_file]}
            """
        )

        assert config.security["a"][0].config.tools == ("read_file",)
        assert config.security["b"] == ()

    def test_tools_mapping_per_server(self, load_text):
        config = load_text(
            """\
            proxy:
              upstreams:
                - {name: a, command: server-a}
                - {name: b, command: server-b}
                - {name: c, command: server-c}
            plugins:
              security:
                - policy: tool_allowlist
                  config:
                    mode: allowlist
                    tools:
                      a: [read_file, list_directory]
                      b: [echo]
            """
        )

        assert config.security["a"][0].config.tools == ("read_file", "list_directory")
        assert config.security["b"][0].config.tools == ("echo",)
        # A server missing from the mapping gets an empty list: nothing is allowed.
        assert config.security["c"][0].config.tools == ()
        assert config.security["c"][0].config.mode is ToolListMode.ALLOWLIST

    def test_duplicate_tools_collapsed(self, load_text):
        config = load_text(
            ONE_SERVER
            + """\
plugins:
  security:
    - policy: tool_allowlist
      config: {tools: [b, a, b]}
"""
        )

        assert config.security["files"][0].config.tools == ("b", "a")

    def test_file_auditing_settings(self, load_text, tmp_path):
        config = load_text(
            ONE_SERVER
            + """\
plugins:
  auditing:
    - policy: file_auditing
      enabled: true
      priority: 10
      config:
        output_file: audit.csv
        format: csv
        mode: security_only
        max_file_size_mb: 0.5
        backup_count: 0
        csv_config: {delimiter: ";", quote_style: all}
        critical: true
        include_bodies: true
        max_body_bytes: 100
        fsync: interval
        fsync_interval: 0.25
"""
        )

        (entry,) = config.auditing["files"]
        assert entry.priority == 10
        assert entry.config == FileAuditingConfig(
            output_file=str(tmp_path / "audit.csv"),
            format=AuditFormat.CSV,
            mode=AuditMode.SECURITY_ONLY,
            max_file_size_mb=0.5,
            backup_count=0,
            csv_config=CsvConfig(delimiter=";", quote_style="all"),
            critical=True,
            include_bodies=True,
            max_body_bytes=100,
            fsync=FsyncPolicy.INTERVAL,
            fsync_interval=0.25,
        )

    @pytest.mark.parametrize(
        ("written", "expected"),
        [("simple", AuditFormat.LINE), ("line", AuditFormat.LINE), ("debug", AuditFormat.DEBUG)],
    )
    def test_format_names(self, load_text, written, expected):
        config = load_text(
            ONE_SERVER
            + f"""\
plugins:
  auditing:
    - policy: file_auditing
      config: {{output_file: audit.log, format: {written}}}
"""
        )

        assert config.auditing["files"][0].config.format is expected

    def test_allow_all_mode(self, load_text):
        config = load_text(
            ONE_SERVER
            + """\
plugins:
  security:
    - {policy: tool_allowlist, config: {mode: allow_all}}
"""
        )

        assert config.security["files"][0].config == ToolAllowlistConfig(mode=ToolListMode.ALLOW_ALL)

    def test_empty_sections(self, load_text):
        config = load_text(ONE_SERVER + "plugins:\n  security: []\n  auditing: {}\n")

        assert config.security == {"files": ()}
        assert config.auditing == {"files": ()}

    def test_shared_output_file_accepted(self, load_text):
        config = load_text(
            """\
            proxy:
              upstreams:
                - {name: a, command: server-a}
                - {name: b, command: server-b}
            plugins:
              auditing:
                a:
                  - policy: file_auditing
                    config: {output_file: audit.log, mode: security_only}
                b:
                  - policy: file_auditing
                    config: {output_file: ./audit.log}
            """
        )

        assert config.auditing["a"][0].config.output_file == config.auditing["b"][0].config.output_file


class TestChainResolution:
    SERVERS = """\
proxy:
  upstreams:
    - {name: a, command: server-a}
    - {name: b, command: server-b}
"""

    def test_server_entry_replaces_global(self, load_text):
        config = load_text(
            self.SERVERS
            + """\
plugins:
  security:
    _global:
      - policy: tool_allowlist
        config: {tools: [read_file]}
    b:
      - policy: tool_allowlist
        config: {mode: blocklist, tools: [delete_file]}
"""
        )

        (entry_a,) = config.security["a"]
        assert entry_a.config.tools == ("read_file",)
        (entry_b,) = config.security["b"]
        assert entry_b.config.mode is ToolListMode.BLOCKLIST
        assert entry_b.config.tools == ("delete_file",)

    def test_server_entry_replaces_every_global(self, load_text, tmp_path):
        config = load_text(
            self.SERVERS
            + """\
plugins:
  auditing:
    _global:
      - policy: file_auditing
        config: {output_file: audit.log}
      - policy: file_auditing
        config: {output_file: audit.csv, format: csv}
    a:
      - policy: file_auditing
        config: {output_file: a.log}
"""
        )

        assert [e.config.output_file for e in config.auditing["a"]] == [str(tmp_path / "a.log")]
        assert [e.config.output_file for e in config.auditing["b"]] == [
            str(tmp_path / "audit.log"),
            str(tmp_path / "audit.csv"),
        ]

    def test_disabled_server_entry_turns_global_off(self, load_text):
        config = load_text(
            self.SERVERS
            + """\
plugins:
  auditing:
    _global:
      - policy: file_auditing
        config: {output_file: audit.log}
    b:
      - {policy: file_auditing, enabled: false}
"""
        )

        assert len(config.auditing["a"]) == 1
        assert config.auditing["b"] == ()

    def test_disabled_entries_dropped(self, load_text):
        config = load_text(
            self.SERVERS
            + """\
plugins:
  auditing:
    - policy: file_auditing
      enabled: false
      config: {output_file: off.log}
    - policy: file_auditing
      config: {output_file: on.log}
"""
        )

        assert [Path(e.config.output_file).name for e in config.auditing["a"]] == ["on.log"]

    def test_sorted_by_priority_stable(self, load_text):
        config = load_text(
            self.SERVERS
            + """\
plugins:
  auditing:
    _global:
      - {policy: file_auditing, priority: 50, config: {output_file: g50.log}}
      - {policy: file_auditing, priority: 0, config: {output_file: g0.log}}
      - {policy: file_auditing, config: {output_file: default.log}}
    a:
      - {policy: file_auditing, priority: 100, config: {output_file: a100.log}}
      - {policy: file_auditing, priority: 50, config: {output_file: a50.log}}
"""
        )

        assert [Path(e.config.output_file).name for e in config.auditing["b"]] == [
            "g0.log",
            "g50.log",
            "default.log",
        ]
        assert [e.priority for e in config.auditing["b"]] == [0, 50, 50]
        assert [Path(e.config.output_file).name for e in config.auditing["a"]] == ["a50.log", "a100.log"]

    def test_global_entries_before_server_entries(self, load_text):
        config = load_text(
            self.SERVERS
            + """\
plugins:
  security:
    _global:
      - policy: tool_allowlist
        config: {tools: [global_tool]}
  auditing:
    _global:
      - {policy: file_auditing, config: {output_file: global.log}}
    a:
      - {policy: file_auditing, config: {output_file: a.log}}
"""
        )

        assert config.security["a"][0].config.tools == ("global_tool",)
        assert [Path(e.config.output_file).name for e in config.auditing["a"]] == ["a.log"]
        assert [Path(e.config.output_file).name for e in config.auditing["b"]] == ["global.log"]


class TestLoggingAndService:
    def test_logging_section(self, load_text, tmp_path):
        config = load_text(
            ONE_SERVER
            + """\
logging:
  level: debug
  handlers: [file]
  file_path: watchgate.log
  max_file_size_mb: 2
  backup_count: 1
"""
        )

        assert config.logging == LoggingConfig(
            level="DEBUG",
            handlers=("file",),
            file_path=str(tmp_path / "watchgate.log"),
            max_file_size_mb=2.0,
            backup_count=1,
        )

    def test_file_path_alone_adds_file_handler(self, load_text):
        config = load_text(ONE_SERVER + "logging:\n  file_path: watchgate.log\n")

        assert config.logging.handlers == ("stderr", "file")

    def test_service_section(self, load_text, tmp_path):
        config = load_text(
            ONE_SERVER
            + """\
service:
  runtime_dir: run
  shutdown_timeout: 3
  heartbeat_interval: 0.5
  heartbeat_timeout: 2
  socket_group: watchgate
"""
        )

        service = config.service
        assert service.runtime_dir == str(tmp_path / "run")
        assert service.shutdown_timeout == 3.0
        assert service.heartbeat_interval == 0.5
        assert service.heartbeat_timeout == 2.0
        assert service.socket_group == "watchgate"

    def test_runtime_dir_in_proxy_section(self, load_text, tmp_path):
        config = load_text(ONE_SERVER + "  runtime_dir: /run/custom\n")

        assert config.service.runtime_dir == "/run/custom"

    @pytest.mark.parametrize(
        ("environment", "expected"),
        [
            ({"WATCHGATE_RUNTIME_DIR": "/a", "RUNTIME_DIRECTORY": "/b", "XDG_RUNTIME_DIR": "/c"}, "/a"),
            ({"RUNTIME_DIRECTORY": "/b:/b2", "XDG_RUNTIME_DIR": "/c"}, "/b"),
            ({"XDG_RUNTIME_DIR": "/c"}, "/c/watchgate"),
            ({}, f"/tmp/watchgate-{os.getuid()}"),
        ],
        ids=["watchgate-variable", "systemd", "xdg", "fallback"],
    )
    def test_default_runtime_dir(self, load_text, monkeypatch, environment, expected):
        for name in ("WATCHGATE_RUNTIME_DIR", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
            monkeypatch.delenv(name, raising=False)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)

        assert load_text(ONE_SERVER).service.runtime_dir == expected
