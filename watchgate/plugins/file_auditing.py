"""The file_auditing plugin: filter audit events for one entry and queue them for its file."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from watchgate.audit.emitter import AuditEmitter, get_emitter
from watchgate.audit.events import AuditEvent, EventType
from watchgate.audit.formats import encode_json, field_text
from watchgate.config.model import AuditMode, FileAuditingConfig

logger = logging.getLogger("watchgate.audit")

# Seconds that close() waits for the writer to put queued events into the file.
CLOSE_TIMEOUT = 5.0

_SECURITY_TYPES = frozenset({EventType.SECURITY_BLOCK.value, EventType.TOOLS_FILTERED.value, EventType.ERROR.value})
_POLICY_TYPES = frozenset({EventType.SECURITY_BLOCK.value, EventType.TOOLS_FILTERED.value})


def accepts_event(config: FileAuditingConfig, event: AuditEvent) -> bool:
    """Return whether the entry's mode selects the event.

    security_only selects SECURITY_BLOCK, TOOLS_FILTERED and ERROR;
    operations_only selects every other type; all selects everything.
    """
    if config.mode is AuditMode.ALL:
        return True
    event_type = event.event_type
    if type(event_type) is not str:
        event_type = field_text(event_type)
    if config.mode is AuditMode.SECURITY_ONLY:
        return event_type in _SECURITY_TYPES
    return event_type not in _POLICY_TYPES


def cap_body(value: Any, max_bytes: int) -> Any:
    """Return a message body unchanged if its JSON encoding fits in `max_bytes`, else a marker.

    None stays None. The marker is `{"truncated": true, "size_bytes": N, "preview": "..."}`, where
    preview contains the first `max_bytes` bytes of the JSON encoding (cut back to
    a whole UTF-8 character).
    """
    if value is None:
        return None
    if isinstance(value, msgspec.Raw):
        if len(value) <= max_bytes:
            return value
        data = bytes(memoryview(value))
    else:
        data = encode_json(value)
        if len(data) <= max_bytes:
            return value
    return {
        "truncated": True,
        "size_bytes": len(data),
        "preview": data[:max_bytes].decode("utf-8", "ignore"),
    }


class FileAuditingPlugin:
    """Audit plugin that writes one server's events to a file, in the background.

    `mode` selects the events (see accepts_event). Bodies (params, result) are
    dropped unless `include_bodies` is set, and then capped by cap_body().
    Events without a server_name get this plugin's server.

    Entries that name the same output_file share one file and one writer
    channel, so `lost_events` counts the losses of that file.
    """

    name = "file_auditing"

    def __init__(self, config: FileAuditingConfig, server_name: str, *, emitter: AuditEmitter | None = None) -> None:
        self.config = config
        self.server_name = server_name
        self._emitter = emitter if emitter is not None else get_emitter()
        self._channel = self._emitter.attach(config)
        self._closed = False

    def record(self, event: AuditEvent) -> None:
        """Filter the event and queue it for the writer thread without waiting for the disk.

        The event must not be changed after this call, because the writer thread
        renders it later. The plugin copies an event before changing it, so the
        caller may pass the same event to several plugins.
        """
        if self._closed or not accepts_event(self.config, event):
            return

        changes: dict[str, Any] = {}
        if event.params is not None or event.result is not None:
            if self.config.include_bodies:
                # Capping encodes each body on the caller's thread, so a large body
                # costs time there. Only entries with include_bodies pay for it.
                changes["params"] = cap_body(event.params, self.config.max_body_bytes)
                changes["result"] = cap_body(event.result, self.config.max_body_bytes)
            else:
                changes["params"] = None
                changes["result"] = None
        if event.server_name is None:
            changes["server_name"] = self.server_name
        if changes:
            event = msgspec.structs.replace(event, **changes)
        self._channel.submit(event)

    @property
    def healthy(self) -> bool:
        """False while this entry is critical and its file cannot be written or its queue is full."""
        return self._channel.healthy or not self.config.critical

    @property
    def lost_events(self) -> int:
        """Events that never reached this entry's file (write failures and a full queue)."""
        return self._channel.lost_events

    def status(self) -> dict[str, Any]:
        """Return the file's health and counters for status displays."""
        return self._channel.status()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the events recorded so far are written; False on timeout."""
        return self._emitter.flush(timeout)

    def close(self) -> None:
        """Write what is queued and release the file (closed once no entry uses it)."""
        if self._closed:
            return
        self._closed = True
        if not self._emitter.detach(self._channel, CLOSE_TIMEOUT):
            logger.error(
                "audit file %s: queued events were not written within %.1f s of closing",
                self._channel.path,
                CLOSE_TIMEOUT,
            )
