"""describe_config: the text `watchgate check` prints."""

from __future__ import annotations

from pathlib import Path

from watchgate.config import describe_config, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
TUTORIAL_CONFIG = REPO_ROOT / "configs" / "tutorials" / "2-implementing-audit-logging.yaml"


def test_describe_tutorial(monkeypatch):
    monkeypatch.setenv("HOME", "/home/tutorial-user")

    text = describe_config(load_config(TUTORIAL_CONFIG))

    assert f"Configuration: {TUTORIAL_CONFIG}" in text
    assert "Server filesystem\n" in text
    assert "command: npx @modelcontextprotocol/server-filesystem /home/tutorial-user/claude-sandbox/" in text
    assert "cwd: inherited from Watchgate" in text
    assert "timeouts: startup 60s, request 300s, shutdown grace 2s, terminate 3s" in text
    assert "1. tool_allowlist (priority 50)" in text
    assert "mode: allowlist" in text
    assert "tools: read_file, write_file, create_directory, list_directory, search_files" in text
    assert f"output file: {REPO_ROOT}/configs/tutorials/logs/audit.log" in text
    assert "format: json, mode: all" in text
    assert "rotation: at 10 MB, keeping 5 backups" in text


def test_describe_several_servers_in_chain_order(load_text, tmp_path):
    config = load_text(
        """\
        proxy:
          upstreams:
            - name: alpha
              command: [server-a, "two words"]
              cwd: work
              env: {API_TOKEN: very-secret-value}
              request_timeout: 30
            - name: beta
              command: server-b
        plugins:
          security:
            beta:
              - {policy: tool_allowlist, config: {mode: allow_all}}
          auditing:
            _global:
              - policy: file_auditing
                priority: 60
                config: {output_file: audit.csv, format: csv, csv_config: {delimiter: ";"}}
              - policy: file_auditing
                priority: 10
                config: {output_file: audit.log, format: simple, fsync: interval}
        """
    )

    text = describe_config(config)
    alpha, beta = text.split("Server beta\n")

    assert "command: server-a 'two words'" in alpha
    assert f"cwd: {tmp_path / 'work'}" in alpha
    assert "env: API_TOKEN (values hidden)" in alpha
    assert "very-secret-value" not in text
    assert "request 30s" in alpha
    assert "security plugins: none (every tool is allowed)" in alpha
    assert alpha.index("audit.log") < alpha.index("audit.csv")
    assert "1. file_auditing (priority 10)" in alpha
    assert "2. file_auditing (priority 60)" in alpha
    assert "format: line, mode: all" in alpha
    assert "fsync: every 1s" in alpha
    assert "csv: delimiter ';', quote style minimal" in alpha
    assert "mode: allow_all" in beta
    assert "tools:" not in beta


def test_describe_logging_and_service(load_text, tmp_path):
    config = load_text(
        """\
        proxy:
          upstream: {command: npx server-memory}
          max_message_bytes: 1048576
        logging: {level: warning, file_path: wg.log}
        service: {runtime_dir: /run/wg, socket_group: staff}
        """
    )

    text = describe_config(config)

    assert "max message size 1 MiB" in text
    assert "Server memory\n" in text
    assert "auditing plugins: none (nothing is recorded)" in text
    assert f"Logging: level WARNING to stderr, file (file {tmp_path / 'wg.log'}" in text
    assert "Service: runtime dir /run/wg" in text
    assert "socket group staff" in text
    assert text.endswith("\n")
