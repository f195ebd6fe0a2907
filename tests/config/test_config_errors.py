"""Invalid configuration files: every problem is one ConfigError naming file, key, value and fix."""

from __future__ import annotations

import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchgate.config import ConfigError, load_config

ONE_SERVER = """\
proxy:
  upstream:
    name: files
    command: server
"""
TWO_SERVERS = """\
proxy:
  upstreams:
    - {name: files, command: server-a}
    - {name: everything, command: server-b}
"""


def plugin(section: str, entry: str) -> str:
    """Return ONE_SERVER plus one entry (flow-style YAML) in a plugin section."""
    return ONE_SERVER + f"plugins:\n  {section}:\n    - {entry}\n"


def audit(config: str) -> str:
    return plugin("auditing", f"{{policy: file_auditing, config: {{output_file: audit.log, {config}}}}}")


def allowlist(config: str) -> str:
    return plugin("security", f"{{policy: tool_allowlist, config: {{{config}}}}}")


# (id, YAML text, key path, bad value as shown, expectation); None where there is no value to show.
BAD_CONFIGS = [
    # Top level and proxy section.
    ("unknown-top-key", "prxy: {}\n", "prxy", None, "unknown key (did you mean 'proxy'?)"),
    ("missing-proxy", "plugins: {}\n", "proxy", None, "missing required key: expected a mapping"),
    ("proxy-not-mapping", "proxy: [a]\n", "proxy", "['a']", "expected a mapping"),
    ("proxy-null", "proxy:\n", "proxy", "null", "expected a mapping"),
    (
        "unknown-proxy-key",
        ONE_SERVER + "  upstream_list: []\n",
        "proxy.upstream_list",
        None,
        "did you mean 'upstreams'?",
    ),
    ("transport", ONE_SERVER + "  transport: http\n", "proxy.transport", "'http'", "expected stdio"),
    (
        "both-upstream-forms",
        ONE_SERVER + "  upstreams: [{command: x}]\n",
        "proxy",
        None,
        "both upstream and upstreams are set: expected exactly one of them",
    ),
    ("no-upstream", "proxy: {transport: stdio}\n", "proxy.upstream", None, "or proxy.upstreams"),
    ("empty-upstreams", "proxy: {upstreams: []}\n", "proxy.upstreams", "[]", "a list of at least one server"),
    ("upstreams-mapping", "proxy: {upstreams: {a: 1}}\n", "proxy.upstreams", "{'a': 1}", "expected a list of mappings"),
    ("max-message-bytes", ONE_SERVER + "  max_message_bytes: 100\n", "proxy.max_message_bytes", "100", "from 1024 to"),
    # Upstream keys.
    (
        "unknown-upstream-key",
        "proxy: {upstream: {comand: x}}\n",
        "proxy.upstream.comand",
        None,
        "did you mean 'command'?",
    ),
    (
        "unknown-key-no-match",
        "proxy: {upstream: {command: x, zzz: 1}}\n",
        "proxy.upstream.zzz",
        None,
        "unknown key: expected one of command, name, env, cwd",
    ),
    ("missing-command", "proxy: {upstream: {name: a}}\n", "proxy.upstream.command", None, "missing required key"),
    (
        "command-number",
        "proxy: {upstream: {command: 5}}\n",
        "proxy.upstream.command",
        "5",
        "a string or a list of strings",
    ),
    ("command-empty", "proxy: {upstream: {command: ''}}\n", "proxy.upstream.command", "''", "a non-empty command"),
    ("command-empty-list", "proxy: {upstream: {command: []}}\n", "proxy.upstream.command", "[]", "a non-empty command"),
    (
        "command-unclosed-quote",
        'proxy: {upstream: {command: "x \'y"}}\n',
        "proxy.upstream.command",
        '"x \'y"',
        "No closing quotation",
    ),
    (
        "command-list-number",
        "proxy: {upstream: {command: [x, 8080]}}\n",
        "proxy.upstream.command[1]",
        "8080",
        "expected a string",
    ),
    (
        "command-empty-program",
        "proxy: {upstream: {command: ['', x]}}\n",
        "proxy.upstream.command[0]",
        "''",
        "a program name",
    ),
    (
        "command-unset-variable",
        "proxy: {upstream: {command: [x, '${WG_TEST_UNSET_VARIABLE}/a']}}\n",
        "proxy.upstream.command[1]",
        "'${WG_TEST_UNSET_VARIABLE}/a'",
        "environment variable WG_TEST_UNSET_VARIABLE is not set",
    ),
    (
        "command-bad-reference",
        "proxy: {upstream: {command: 'x ${A-B}'}}\n",
        "proxy.upstream.command",
        "'${A-B}'",
        "${NAME} or $NAME",
    ),
    (
        "cwd-unset-variable",
        "proxy: {upstream: {command: x, cwd: $WG_TEST_UNSET_VARIABLE}}\n",
        "proxy.upstream.cwd",
        "'$WG_TEST_UNSET_VARIABLE'",
        "is not set",
    ),
    ("cwd-number", "proxy: {upstream: {command: x, cwd: 3}}\n", "proxy.upstream.cwd", "3", "a string or null"),
    (
        "name-space",
        "proxy: {upstream: {command: x, name: my server}}\n",
        "proxy.upstream.name",
        "'my server'",
        "A-Z, a-z, 0-9",
    ),
    ("name-slash", "proxy: {upstream: {command: x, name: a/b}}\n", "proxy.upstream.name", "'a/b'", "A-Z, a-z, 0-9"),
    ("name-dots", "proxy: {upstream: {command: x, name: '..'}}\n", "proxy.upstream.name", "'..'", "A-Z, a-z, 0-9"),
    (
        "name-too-long",
        f"proxy: {{upstream: {{command: x, name: {'n' * 65}}}}}\n",
        "proxy.upstream.name",
        "'nnn",
        "1 to 64 characters",
    ),
    (
        "name-global",
        "proxy: {upstream: {command: x, name: _global}}\n",
        "proxy.upstream.name",
        "'_global'",
        "a name other than _global",
    ),
    ("name-number", "proxy: {upstream: {command: x, name: 12}}\n", "proxy.upstream.name", "12", "expected a string"),
    (
        "name-underivable",
        "proxy: {upstream: {command: /}}\n",
        "proxy.upstream.name",
        None,
        "no server name can be derived from the command",
    ),
    (
        "duplicate-names",
        "proxy: {upstreams: [{name: a, command: x}, {name: a, command: y}]}\n",
        "proxy.upstreams[1].name",
        "'a'",
        "already used by proxy.upstreams[0]: expected a unique name",
    ),
    (
        "duplicate-derived-names",
        "proxy: {upstreams: [{command: npx server-x}, {command: npx -y server-x@2}]}\n",
        "proxy.upstreams[1].name",
        "'x' (derived from the command)",
        "expected a unique name",
    ),
    (
        "env-list",
        "proxy: {upstream: {command: x, env: {A: [1]}}}\n",
        "proxy.upstream.env.A",
        "[1]",
        "a string or a number",
    ),
    (
        "env-bool",
        "proxy: {upstream: {command: x, env: {DEBUG: true}}}\n",
        "proxy.upstream.env.DEBUG",
        "true",
        "quote values",
    ),
    (
        "env-null",
        "proxy: {upstream: {command: x, env: {DEBUG: }}}\n",
        "proxy.upstream.env.DEBUG",
        "null",
        "a string or a number",
    ),
    (
        "env-bad-name",
        "proxy: {upstream: {command: x, env: {'A=B': c}}}\n",
        "proxy.upstream.env['A=B']",
        "'A=B'",
        "without '='",
    ),
    (
        "env-not-mapping",
        "proxy: {upstream: {command: x, env: [A]}}\n",
        "proxy.upstream.env",
        "['A']",
        "expected a mapping",
    ),
    (
        "startup-timeout-zero",
        "proxy: {upstream: {command: x, startup_timeout: 0}}\n",
        "proxy.upstream.startup_timeout",
        "0",
        "a number > 0 and <= 3600",
    ),
    (
        "request-timeout-string",
        "proxy: {upstream: {command: x, request_timeout: '10'}}\n",
        "proxy.upstream.request_timeout",
        "'10'",
        "a number > 0",
    ),
    (
        "request-timeout-infinite",
        "proxy: {upstream: {command: x, request_timeout: .inf}}\n",
        "proxy.upstream.request_timeout",
        "inf",
        "<= 86400",
    ),
    (
        "timeout-nan",
        "proxy: {upstream: {command: x, terminate_timeout: .nan}}\n",
        "proxy.upstream.terminate_timeout",
        "nan",
        "a number > 0",
    ),
    (
        "shutdown-grace-negative",
        "proxy: {upstream: {command: x, shutdown_grace: -1}}\n",
        "proxy.upstream.shutdown_grace",
        "-1",
        "from 0 to 600",
    ),
    (
        "restart-unknown-key",
        "proxy: {upstream: {command: x, restart: {backoff: 1}}}\n",
        "proxy.upstream.restart.backoff",
        None,
        "unknown key (did you mean",
    ),
    (
        "restart-negative",
        "proxy: {upstream: {command: x, restart: {max_restarts: -1}}}\n",
        "proxy.upstream.restart.max_restarts",
        "-1",
        "an integer from 0 to 1000",
    ),
    (
        "restart-backoff-order",
        "proxy: {upstream: {command: x, restart: {backoff_initial: 10, backoff_max: 5}}}\n",
        "proxy.upstream.restart.backoff_max",
        "5",
        "a number >= restart.backoff_initial (10)",
    ),
    # Plugin sections and entries.
    (
        "unknown-plugin-section",
        ONE_SERVER + "plugins: {sekurity: []}\n",
        "plugins.sekurity",
        None,
        "did you mean 'security'?",
    ),
    (
        "section-string",
        ONE_SERVER + "plugins: {security: allow}\n",
        "plugins.security",
        "'allow'",
        "a list of mappings or a mapping",
    ),
    (
        "entry-not-mapping",
        plugin("security", "tool_allowlist"),
        "plugins.security[0]",
        "'tool_allowlist'",
        "expected a mapping",
    ),
    (
        "entry-missing-policy",
        plugin("security", "{enabled: true}"),
        "plugins.security[0].policy",
        None,
        "missing required key: expected a string",
    ),
    (
        "entry-unknown-key",
        plugin("security", "{policy: tool_allowlist, priorty: 1}"),
        "plugins.security[0].priorty",
        None,
        "did you mean 'priority'?",
    ),
    (
        "unknown-policy",
        plugin("security", "{policy: rate_limit}"),
        "plugins.security[0].policy",
        "'rate_limit'",
        "expected tool_allowlist. Known plugins are tool_allowlist (plugins.security) "
        "and file_auditing (plugins.auditing)",
    ),
    (
        "policy-typo",
        plugin("security", "{policy: tool_alowlist}"),
        "plugins.security[0].policy",
        "'tool_alowlist'",
        "(did you mean 'tool_allowlist'?)",
    ),
    (
        "policy-wrong-section",
        plugin("auditing", "{policy: tool_allowlist}"),
        "plugins.auditing[0].policy",
        "'tool_allowlist'",
        "expected file_auditing (tool_allowlist is a security plugin, so it belongs under plugins.security)",
    ),
    (
        "priority-too-high",
        plugin("security", "{policy: tool_allowlist, priority: 101}"),
        "plugins.security[0].priority",
        "101",
        "an integer from 0 to 100",
    ),
    (
        "priority-float",
        plugin("security", "{policy: tool_allowlist, priority: 1.5}"),
        "plugins.security[0].priority",
        "1.5",
        "an integer from 0 to 100",
    ),
    (
        "enabled-string",
        plugin("security", "{policy: tool_allowlist, enabled: 'maybe'}"),
        "plugins.security[0].enabled",
        "'maybe'",
        "true or false",
    ),
    (
        "config-list",
        plugin("security", "{policy: tool_allowlist, config: [a]}"),
        "plugins.security[0].config",
        "['a']",
        "expected a mapping",
    ),
    (
        "per-server-unknown-server",
        ONE_SERVER + "plugins:\n  security:\n    file:\n      - {policy: tool_allowlist}\n",
        "plugins.security.file",
        None,
        "unknown server 'file': expected _global or a configured server name (files) (did you mean 'files'?)",
    ),
    (
        "per-server-not-list",
        ONE_SERVER + "plugins:\n  security:\n    files: {policy: tool_allowlist}\n",
        "plugins.security.files",
        "{'policy': 'tool_allowlist'}",
        "expected a list of mappings",
    ),
    (
        "per-server-entry-error",
        ONE_SERVER
        + "plugins:\n  security:\n    _global: []\n    files:\n"
        + "      - {policy: tool_allowlist, config: {mode: deny}}\n",
        "plugins.security.files[0].config.mode",
        "'deny'",
        "expected one of allowlist, blocklist, allow_all",
    ),
    # tool_allowlist settings.
    (
        "mode-typo",
        allowlist("mode: alowlist"),
        "plugins.security[0].config.mode",
        "'alowlist'",
        "expected one of allowlist, blocklist, allow_all (did you mean 'allowlist'?)",
    ),
    ("allowlist-unknown-key", allowlist("tool: [a]"), "plugins.security[0].config.tool", None, "did you mean 'tools'?"),
    (
        "tools-string",
        allowlist("tools: read_file"),
        "plugins.security[0].config.tools",
        "'read_file'",
        "a list of strings or a mapping",
    ),
    ("tools-empty-name", allowlist("tools: [a, '']"), "plugins.security[0].config.tools[1]", "''", "a tool name"),
    ("tools-number", allowlist("tools: [a, 3]"), "plugins.security[0].config.tools[1]", "3", "expected a string"),
    (
        "tools-unknown-server",
        allowlist("tools: {filez: [a]}"),
        "plugins.security[0].config.tools.filez",
        None,
        "unknown server 'filez': expected a configured server name (files) (did you mean 'files'?)",
    ),
    (
        "tools-mapping-bad-list",
        allowlist("tools: {files: a}"),
        "plugins.security[0].config.tools.files",
        "'a'",
        "a list of strings",
    ),
    (
        "block-message-list",
        allowlist("block_message: [a]"),
        "plugins.security[0].config.block_message",
        "['a']",
        "expected a string",
    ),
    # file_auditing settings.
    (
        "output-file-missing",
        plugin("auditing", "{policy: file_auditing}"),
        "plugins.auditing[0].config.output_file",
        None,
        "missing required key: expected a non-empty string",
    ),
    (
        "output-file-empty",
        plugin("auditing", "{policy: file_auditing, config: {output_file: ''}}"),
        "plugins.auditing[0].config.output_file",
        "''",
        "a non-empty string",
    ),
    (
        "output-file-directory",
        plugin("auditing", "{policy: file_auditing, config: {output_file: .}}"),
        "plugins.auditing[0].config.output_file",
        "'.'",
        "a file path, not a directory",
    ),
    (
        "output-file-trailing-slash",
        plugin("auditing", "{policy: file_auditing, config: {output_file: logs/}}"),
        "plugins.auditing[0].config.output_file",
        "'logs/'",
        "not a directory",
    ),
    (
        "format-typo",
        audit("format: jsn"),
        "plugins.auditing[0].config.format",
        "'jsn'",
        "one of json, line, debug, csv, simple (did you mean 'json'?)",
    ),
    ("format-case", audit("format: JSON"), "plugins.auditing[0].config.format", "'JSON'", "(did you mean 'json'?)"),
    (
        "audit-mode-typo",
        audit("mode: security"),
        "plugins.auditing[0].config.mode",
        "'security'",
        "one of all, security_only, operations_only (did you mean 'security_only'?)",
    ),
    (
        "max-file-size-zero",
        audit("max_file_size_mb: 0"),
        "plugins.auditing[0].config.max_file_size_mb",
        "0",
        "a number > 0",
    ),
    (
        "backup-count-negative",
        audit("backup_count: -1"),
        "plugins.auditing[0].config.backup_count",
        "-1",
        "an integer from 0 to 1000",
    ),
    (
        "delimiter-long",
        audit("csv_config: {delimiter: ';;'}"),
        "plugins.auditing[0].config.csv_config.delimiter",
        "';;'",
        "a single character",
    ),
    (
        "delimiter-empty",
        audit("csv_config: {delimiter: ''}"),
        "plugins.auditing[0].config.csv_config.delimiter",
        "''",
        "a single character",
    ),
    (
        "delimiter-quote",
        audit("csv_config: {delimiter: '\"'}"),
        "plugins.auditing[0].config.csv_config.delimiter",
        "'\"'",
        "other than a double quote",
    ),
    (
        "quote-style",
        audit("csv_config: {quote_style: always}"),
        "plugins.auditing[0].config.csv_config.quote_style",
        "'always'",
        "one of minimal, all, nonnumeric, none",
    ),
    (
        "csv-unknown-key",
        audit("csv_config: {separator: ';'}"),
        "plugins.auditing[0].config.csv_config.separator",
        None,
        "unknown key: expected one of delimiter, quote_style",
    ),
    (
        "fsync-typo",
        audit("fsync: sometimes"),
        "plugins.auditing[0].config.fsync",
        "'sometimes'",
        "one of none, interval, always",
    ),
    (
        "fsync-interval-zero",
        audit("fsync_interval: 0"),
        "plugins.auditing[0].config.fsync_interval",
        "0",
        "a number > 0",
    ),
    (
        "max-body-bytes-negative",
        audit("max_body_bytes: -5"),
        "plugins.auditing[0].config.max_body_bytes",
        "-5",
        "an integer from 0 to",
    ),
    ("critical-string", audit("critical: 'no'"), "plugins.auditing[0].config.critical", "'no'", "true or false"),
    (
        "shared-file-different-format",
        ONE_SERVER
        + "plugins:\n  auditing:\n    - {policy: file_auditing, config: {output_file: audit.log}}\n"
        + "    - {policy: file_auditing, config: {output_file: audit.log, format: csv}}\n",
        "plugins.auditing[1].config.format",
        "'csv'",
        "expected 'json' as set by plugins.auditing[0] for the same output_file",
    ),
    (
        "audit-file-is-log-file",
        audit("format: json") + "logging: {file_path: audit.log}\n",
        "plugins.auditing[0].config.output_file",
        "audit.log'",
        "a file other than logging.file_path",
    ),
    # Logging and service sections.
    (
        "log-level",
        ONE_SERVER + "logging: {level: verbose}\n",
        "logging.level",
        "'verbose'",
        "one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
    ),
    ("log-level-typo", ONE_SERVER + "logging: {level: WARN}\n", "logging.level", "'WARN'", "(did you mean 'WARNING'?)"),
    (
        "log-handler",
        ONE_SERVER + "logging: {handlers: [stderr, syslog]}\n",
        "logging.handlers[1]",
        "'syslog'",
        "one of stderr, file",
    ),
    (
        "log-file-handler-without-path",
        ONE_SERVER + "logging: {handlers: [file]}\n",
        "logging.file_path",
        None,
        "because logging.handlers contains 'file'",
    ),
    (
        "log-path-without-file-handler",
        ONE_SERVER + "logging: {handlers: [stderr], file_path: w.log}\n",
        "logging.handlers",
        "['stderr']",
        "a list containing 'file' because logging.file_path is set",
    ),
    ("logging-unknown-key", ONE_SERVER + "logging: {file: w.log}\n", "logging.file", None, "unknown key"),
    (
        "service-unknown-key",
        ONE_SERVER + "service: {runtime_directory: /run/x}\n",
        "service.runtime_directory",
        None,
        "did you mean 'runtime_dir'?",
    ),
    (
        "runtime-dir-twice",
        ONE_SERVER + "  runtime_dir: /a\nservice: {runtime_dir: /b}\n",
        "service.runtime_dir",
        None,
        "set here and in proxy.runtime_dir",
    ),
    (
        "heartbeat-order",
        ONE_SERVER + "service: {heartbeat_interval: 5, heartbeat_timeout: 5}\n",
        "service.heartbeat_timeout",
        "5",
        "a number > service.heartbeat_interval (5)",
    ),
    (
        "heartbeat-interval-large",
        ONE_SERVER + "service: {heartbeat_interval: 120}\n",
        "service.heartbeat_interval",
        "120",
        "a number > 0 and <= 60",
    ),
    (
        "socket-group-number",
        ONE_SERVER + "service: {socket_group: 5}\n",
        "service.socket_group",
        "5",
        "a non-empty string or null",
    ),
    # Keys that YAML reads as something other than a string.
    ("number-key", ONE_SERVER + "plugins: {1: []}\n", "plugins", "1", "invalid key 1: expected a string"),
    (
        "bool-key",
        "proxy: {upstream: {command: x, env: {yes: 1}}}\n",
        "proxy.upstream.env",
        "true",
        "invalid key true: expected a string",
    ),
]


@pytest.mark.parametrize(
    ("text", "key_path", "value", "expected"),
    [case[1:] for case in BAD_CONFIGS],
    ids=[case[0] for case in BAD_CONFIGS],
)
def test_bad_config(write_config, monkeypatch, text, key_path, value, expected):
    monkeypatch.delenv("WG_TEST_UNSET_VARIABLE", raising=False)
    path = write_config(text, "bad.yaml")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    message = str(caught.value)
    assert message.startswith(f"{path}: {key_path}: "), message
    if value is not None:
        assert f"invalid value {value}" in message or value in message, message
    assert expected in message, message
    assert "\n" not in message
    assert "$." not in message
    assert caught.value.file == str(path)
    assert caught.value.key_path == key_path


def test_bad_value_shown_after_invalid_value(write_config):
    path = write_config(allowlist("mode: alowlist"), "bad.yaml")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == (
        f"{path}: plugins.security[0].config.mode: invalid value 'alowlist': "
        "expected one of allowlist, blocklist, allow_all (did you mean 'allowlist'?)"
    )


def test_unknown_key_message(write_config):
    path = write_config("proxy:\n  upstream:\n    comand: x\n", "bad.yaml")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == f"{path}: proxy.upstream.comand: unknown key (did you mean 'command'?)"


def test_message_uses_path_as_given(write_config, monkeypatch, tmp_path):
    write_config("proxy: {upstream: {command: x, comand: y}}\n", "configs/bad.yaml")
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigError) as caught:
        load_config("configs/bad.yaml")

    assert str(caught.value).startswith("configs/bad.yaml: proxy.upstream.comand: unknown key")


def test_long_value_shortened(write_config):
    path = write_config(f"proxy: {{transport: {'x' * 500}, upstream: {{command: x}}}}\n", "bad.yaml")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert "..." in str(caught.value)
    assert len(str(caught.value)) < len(str(path)) + 200


def test_server_name_with_dot_bracketed(write_config):
    text = (
        "proxy: {upstream: {name: my.server, command: x}}\n"
        "plugins:\n  security:\n    my.server:\n      - {policy: tool_allowlist, config: {mode: none}}\n"
    )
    path = write_config(text, "bad.yaml")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert f"{path}: plugins.security['my.server'][0].config.mode: invalid value 'none'" in str(caught.value)


class TestFileProblems:
    def test_missing_file(self, tmp_path):
        path = tmp_path / "absent.yaml"

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert str(caught.value) == f"{path}: file not found"
        assert caught.value.key_path is None

    def test_directory(self, tmp_path):
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path)

        assert str(caught.value) == f"{tmp_path}: is a directory, expected a YAML file"

    @pytest.mark.parametrize(
        "text", ["", "\n\n", "# only a comment\n", "---\n"], ids=["empty", "blank", "comment", "document-marker"]
    )
    def test_empty_file(self, write_config, text):
        path = write_config(text, "empty.yaml")

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert str(caught.value) == f"{path}: the file is empty: expected a mapping with a 'proxy' section"

    @pytest.mark.parametrize(
        ("text", "shown"),
        [("- proxy\n", "['proxy']"), ("just text\n", "'just text'"), ("42\n", "42")],
        ids=["list", "string", "number"],
    )
    def test_top_level_not_mapping(self, write_config, text, shown):
        path = write_config(text, "list.yaml")

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert (
            str(caught.value) == f"{path}: top level: invalid value {shown}: expected a mapping with a 'proxy' section"
        )

    def test_yaml_syntax_error_has_line_and_column(self, write_config):
        path = write_config("proxy:\n  upstream:\n    command: x\n  bad: [1, 2\n", "syntax.yaml")

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        message = str(caught.value)
        assert message.startswith(f"{path}: line 5, column 1: invalid YAML: ")
        assert caught.value.key_path is None

    def test_yaml_indentation_error(self, write_config):
        path = write_config("proxy:\n  upstream:\n    command: x\n   name: y\n", "indent.yaml")

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert str(caught.value).startswith(f"{path}: line 4, column 4: invalid YAML: ")

    def test_tab_indentation(self, write_config):
        path = write_config("proxy:\n\tupstream: {command: x}\n", "tabs.yaml")

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert str(caught.value).startswith(f"{path}: line 2, column 1: invalid YAML: ")

    def test_duplicate_key(self, write_config):
        path = write_config(
            "proxy:\n  upstream:\n    command: x\n    command: y\n",
            "duplicate.yaml",
        )

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert str(caught.value) == f"{path}: line 4, column 5: invalid YAML: duplicate key 'command'"

    def test_unsafe_tag_rejected(self, write_config):
        path = write_config("proxy: !!python/object/apply:os.system ['true']\n", "unsafe.yaml")

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert str(caught.value).startswith(f"{path}: line 1, column 8: invalid YAML: ")

    def test_deep_nesting(self, write_config):
        path = write_config("proxy: " + "[" * 600 + "]" * 600 + "\n", "deep.yaml")

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert str(caught.value) == f"{path}: invalid YAML: lists or mappings are nested too deeply"

    def test_invalid_utf8(self, tmp_path):
        path = tmp_path / "binary.yaml"
        path.write_bytes(b"proxy:\n  upstream: {command: \xff}\n")

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert str(caught.value) == f"{path}: invalid UTF-8 at byte 29"

    def test_byte_order_mark_accepted(self, tmp_path):
        path = tmp_path / "bom.yaml"
        path.write_bytes("\ufeff".encode() + ONE_SERVER.encode())

        assert load_config(path).servers[0].name == "files"

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
    def test_unreadable_file(self, write_config):
        path = write_config(ONE_SERVER, "secret.yaml")
        path.chmod(0)

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert str(caught.value) == f"{path}: permission denied"


# Places in a valid document where random values are put, to check that no
# input gives anything but a Config or a ConfigError.
VALID_DOCUMENT = {
    "proxy": {
        "upstreams": [{"name": "a", "command": "server", "env": {"A": "1"}, "restart": {"max_restarts": 1}}],
    },
    "plugins": {
        "security": {"_global": [{"policy": "tool_allowlist", "config": {"tools": {"a": ["x"]}}}]},
        "auditing": [{"policy": "file_auditing", "config": {"output_file": "a.log", "csv_config": {}}}],
    },
    "logging": {"level": "INFO"},
    "service": {"heartbeat_interval": 1},
}
KEY_PATHS = [
    (),
    ("proxy",),
    ("proxy", "upstreams"),
    ("proxy", "upstreams", 0),
    ("proxy", "upstreams", 0, "command"),
    ("proxy", "upstreams", 0, "name"),
    ("proxy", "upstreams", 0, "env"),
    ("proxy", "upstreams", 0, "env", "A"),
    ("proxy", "upstreams", 0, "restart"),
    ("proxy", "upstreams", 0, "cwd"),
    ("plugins",),
    ("plugins", "security"),
    ("plugins", "security", "_global"),
    ("plugins", "security", "_global", 0),
    ("plugins", "security", "_global", 0, "config"),
    ("plugins", "security", "_global", 0, "config", "tools"),
    ("plugins", "security", "_global", 0, "config", "tools", "a"),
    ("plugins", "auditing", 0, "config"),
    ("plugins", "auditing", 0, "config", "output_file"),
    ("plugins", "auditing", 0, "config", "csv_config"),
    ("logging",),
    ("logging", "handlers"),
    ("service",),
]
yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["$", "${", "${}", "$HOME", "~", "'", '"', "a b", "_global", "a", "file", "csv"]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.booleans()), children, max_size=3),
    ),
    max_leaves=8,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key_path=st.sampled_from(KEY_PATHS), value=yaml_values)
def test_any_value_gives_config_or_config_error(tmp_path, key_path, value):
    document = _replace(VALID_DOCUMENT, key_path, value)
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")

    try:
        load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ")
        assert "$." not in str(exc)


def _replace(document, key_path, value):
    if not key_path:
        return value
    copy = yaml.safe_load(yaml.safe_dump(document))
    target = copy
    for key in key_path[:-1]:
        target = target[key]
    target[key_path[-1]] = value
    return copy
