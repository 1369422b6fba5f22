"""The latest events with their evidence (stills, plate crop, clip), kept in memory for the
console's events page: the outbox deletes what the centre acknowledged, and the technician at
the cabinet wants to see what was just reported. Bounded in count and bytes; a clip, which
arrives as its own ``evidence.clip`` event after the violation, is listed with its violation."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from agent.core.model import EvidenceFile, now_ms

MAX_EVENTS = 100
MAX_BYTES = 24 * 2**20   # evidence held; the oldest event's files go first


class EventLog:
    def __init__(self, max_events: int = MAX_EVENTS, max_bytes: int = MAX_BYTES):
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._files: dict[str, dict[str, EvidenceFile]] = {}
        self._bytes = 0

    def record(self, body: dict[str, Any], files: list[EvidenceFile]) -> None:
        """The pipeline's ``on_event``: on the loop, cheap (references, no copies)."""
        event_id = body["id"]
        target = event_id
        if body.get("type") == "evidence.clip" and body.get("data", {}).get("event") in self._events:
            target = body["data"]["event"]   # the clip belongs on its violation's line
        else:
            self._events[event_id] = {k: body.get(k) for k in ("id", "device", "type", "severity", "data", "t")} | {
                "ts": now_ms(), "files": []}
        entry = self._events[target]
        held = self._files.setdefault(target, {})
        for file in files:
            held[file.name] = file
            self._bytes += len(file.data)
            entry["files"].append({"name": file.name, "type": file.type, "bytes": len(file.data)})
        self._trim()

    def _trim(self) -> None:
        while self._events and (len(self._events) > self.max_events or self._bytes > self.max_bytes):
            oldest, _ = self._events.popitem(last=False)
            for file in self._files.pop(oldest, {}).values():
                self._bytes -= len(file.data)

    def latest(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        return list(reversed(self._events.values()))[:limit]

    def file(self, event_id: str, name: str) -> EvidenceFile | None:
        return self._files.get(event_id, {}).get(name)
