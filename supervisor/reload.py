"""The plan of a configuration reload: the change for each server."""

from __future__ import annotations

from dataclasses import dataclass, field

from watchgate.config.model import Config, ServerConfig


@dataclass
class ReloadPlan:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    # The upstream command, environment or working directory changed: restart the worker.
    restarted: list[str] = field(default_factory=list)
    # Plugins, audit entries or request settings changed: the worker applies them live.
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # Audit entries or the set of servers changed: the writer starts again with the new routes.
    writer_restart: bool = False
    # Service settings that only take effect at the next start.
    ignored_service_keys: list[str] = field(default_factory=list)

    def as_result(self) -> dict[str, list[str]]:
        return {"added": self.added, "removed": self.removed, "restarted": self.restarted,
                "updated": self.updated, "unchanged": self.unchanged}


# Service settings the supervisor reads once, at start.
STATIC_SERVICE_KEYS = ("runtime_dir", "socket_group")


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    plan = ReloadPlan()
    old_names = {server.name for server in old.servers}
    new_names = {server.name for server in new.servers}
    plan.added = sorted(new_names - old_names)
    plan.removed = sorted(old_names - new_names)
    for name in sorted(old_names & new_names):
        old_server, new_server = old.server(name), new.server(name)
        if _process_changed(old_server, new_server):
            plan.restarted.append(name)
        elif (old_server != new_server or old.security.get(name) != new.security.get(name)
              or old.auditing.get(name) != new.auditing.get(name) or old.max_message_bytes != new.max_message_bytes):
            plan.updated.append(name)
        else:
            plan.unchanged.append(name)
    plan.writer_restart = bool(plan.added or plan.removed) or any(
        old.auditing.get(name) != new.auditing.get(name) for name in old_names & new_names)
    plan.ignored_service_keys = [key for key in STATIC_SERVICE_KEYS
                                 if getattr(old.service, key) != getattr(new.service, key)]
    return plan


def _process_changed(old: ServerConfig, new: ServerConfig) -> bool:
    return (old.command, old.env, old.cwd) != (new.command, new.env, new.cwd)
