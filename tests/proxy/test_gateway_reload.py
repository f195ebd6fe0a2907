from watchgate.config.model import RestartPolicyConfig, ServerConfig
from watchgate.proxy.server import Gateway


def test_update_server_applies_restart_settings():
    gateway = Gateway(ServerConfig(name="s", command=("true",)), [], [], 1024 * 1024)
    stricter = ServerConfig(name="s", command=("true",), request_timeout=5.0,
                            restart=RestartPolicyConfig(max_restarts=1, healthy_after=1000.0))
    gateway.update_server(stricter)
    assert gateway.server.request_timeout == 5.0
    assert gateway._restart_policy.failed() is not None
    assert gateway._restart_policy.failed() is None
