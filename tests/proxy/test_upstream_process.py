from watchgate.config.model import ServerConfig
from watchgate.proxy.upstream import UpstreamProcess, upstream_environment


def server(**settings):
    return ServerConfig(name="test", command=("true",), **settings)


def test_environment_keeps_allowlist_only():
    env = upstream_environment(server(), {"PATH": "/bin", "HOME": "/h", "AWS_SECRET_ACCESS_KEY": "s", "LC_ALL": "C"})
    assert env["PATH"] == "/bin"
    assert env["LC_ALL"] == "C"
    assert "AWS_SECRET_ACCESS_KEY" not in env


def test_environment_adds_server_env():
    env = upstream_environment(server(env={"TOKEN": "t", "PATH": "/opt/bin"}), {"PATH": "/bin"})
    assert env["TOKEN"] == "t"
    assert env["PATH"] == "/opt/bin"


def test_npm_update_check_off_unless_set():
    assert upstream_environment(server(), {})["npm_config_update_notifier"] == "false"
    inherited = upstream_environment(server(), {"npm_config_update_notifier": "true"})
    assert inherited["npm_config_update_notifier"] == "true"


def test_last_stderr_prefers_error_line():
    process = UpstreamProcess(server(), 1024, lambda line: None)
    for text in ["starting", "Error: None of the specified directories are accessible", "npm notice",
                 "npm notice New minor version of npm available!"]:
        process.stderr_tail.append(text)
    assert process.last_stderr() == "Error: None of the specified directories are accessible"


def test_last_stderr_falls_back_to_last_line():
    process = UpstreamProcess(server(), 1024, lambda line: None)
    process.stderr_tail.extend(["one", "two"])
    assert process.last_stderr() == "two"
