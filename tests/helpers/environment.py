"""Environment settings shared by every process the tests start."""

from __future__ import annotations

# The user npm config written into each test HOME: never touch the network, never prompt.
NPMRC = "offline=true\nupdate-notifier=false\nfund=false\naudit=false\nyes=false\n"
# The same settings as variables, for servers that get them through the config's `env`.
NPM_ENVIRONMENT = {
    "npm_config_offline": "true",
    "npm_config_update_notifier": "false",
    "npm_config_fund": "false",
    "npm_config_audit": "false",
    "npm_config_yes": "false",
}
