"""The device pipeline: the :class:`~agent.core.model.DeviceSink` every runner delivers to.

What a driver hands over goes, in this order: the wire check (a value the contract cannot carry
becomes a bad reading, agent/wire.py), the edge rules (alarms on every value read), the report
policy (what is sent), the outbox. Events get their id and priority here; a life-safety event is
committed before ``event`` returns. Evidence files follow their event as bulk data, in chunks when
larger than the broker takes. Per device it keeps what ``edge-agent status`` shows.

Nothing here knows MQTT: the outbox is the single path out, and ``on_commit`` tells the uplink
that something new is on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import wire
from agent.core.config import DeviceConfig
from agent.core.driver import DeviceInfo
from agent.core.model import SEVERITY_PRIORITY, Event, EvidenceFile, Priority, Reading, now_ms
from agent.core.ratelimit import Throttle
from agent.core.state import StateStore
from agent.outbox import Outbox
from agent.report import ReportFilter
from agent.rules import AlarmRules

log = logging.getLogger("agent")

RECENT_EVENTS = 6


class NotDurable(OSError):
    """A life-safety event was accepted but could not be committed to disk yet."""


@dataclass
class DeviceStatus:
    """What the agent knows of one device, for `edge-agent status` and the metrics topic."""

    id: str
    driver: str
    kind: str
    online: bool | None = None     # None: not heard from yet
    last_read_ms: int | None = None
    readings: int = 0              # values read
    sent: int = 0                  # values that passed the report policy
    errors: int = 0
    invalid_values: int = 0        # values the contract cannot carry, sent as bad (agent/wire.py)
    last_error: str | None = None
    last_batch: list[Reading] | None = None   # the latest readings as read, for the live view

    def as_dict(self, latest: int = 6) -> dict[str, Any]:
        entry = {k: v for k, v in self.__dict__.items() if k != "last_batch"}
        entry["latest"] = [[r.point, r.value, r.unit, r.q] for r in (self.last_batch or [])[:latest]]
        return entry


class DevicePipeline:
    """Readings, events and evidence of every device into the outbox. See the module docstring."""

    def __init__(self, outbox: Outbox, *, gateway_id: str, topic: Callable[[str], str], max_payload: int,
                 on_commit: Callable[[], None] = lambda: None, state_dir: Path | None = None):
        self.outbox = outbox
        self.state_dir = state_dir   # the families' own state (DeviceSink.store)
        self.gateway_id = gateway_id
        self.topic = topic
        self.max_payload = max_payload
        self.on_commit = on_commit
        self.devices: dict[str, DeviceStatus] = {}
        self.infos: dict[str, DeviceInfo] = {}
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)   # for status and the live view
        self._filters: dict[str, ReportFilter] = {}
        self._rules: dict[str, AlarmRules] = {}
        self._telemetry_topics: dict[str, str] = {}
        self._flush_soon = False
        self._commit_waiters: list[asyncio.Future[None]] = []
        self._warn = Throttle()
        # told of every event with its evidence files (the web console keeps the latest few)
        self.on_event: Callable[[dict[str, Any], list[EvidenceFile]], None] | None = None

    def add_device(self, device: DeviceConfig, info: DeviceInfo) -> None:
        self.infos[device.id] = info
        self.devices[device.id] = DeviceStatus(device.id, device.driver, device.kind or info.kind)
        self._filters[device.id] = ReportFilter(device.report)
        if device.alarms:
            self._rules[device.id] = AlarmRules(device.alarms)
        self._telemetry_topics[device.id] = self.topic(f"telemetry/{device.id}")

    # -- DeviceSink: called by drivers on the event loop ----------------------------------------

    def readings(self, device_id: str, readings: list[Reading]) -> None:
        status = self.devices[device_id]
        readings, fixed = wire.safe_readings(readings)
        if fixed:   # a value out of range is one bad reading, never a lost batch
            status.invalid_values += fixed
            self._warn.warn(log, f"invalid:{device_id}", "device %s: %d value(s) the contract cannot carry "
                            "(out of range, not finite, too long) reported as bad", device_id, fixed)
        status.readings += len(readings)
        if readings:
            status.last_read_ms = readings[-1].t
            status.last_batch = readings
        rules = self._rules.get(device_id)
        if rules is not None:   # on every value read, before the report policy thins them out
            for event in rules.apply(readings):
                try:
                    self.event(device_id, event)
                except NotDurable:
                    log.error("alarm %s on %s kept in memory until the outbox can be written",
                              event.type, device_id)
        sent = self._filters[device_id].apply(readings)
        if not sent:
            return
        status.sent += len(sent)
        self.outbox.put(Priority.TELEMETRY, self._telemetry_topics[device_id],
                        {"device": device_id, "readings": [r.to_wire() for r in sent]})

    def latest(self, device_id: str, point: str) -> Reading | None:
        """The latest value read of another device's point (a camera's red-light rule asks the
        signal controller's phase state), or None when it has not been read."""
        status = self.devices.get(device_id)
        for reading in (status.last_batch or []) if status is not None else []:
            if reading.point == point:
                return reading
        return None

    def evidence(self, device_id: str, event: Event, files: list[EvidenceFile]) -> str:
        limit = self.max_payload
        listed, parts = [], []
        for file in files:
            chunks = max(1, -(-len(file.data) // limit))
            entry = {"name": file.name, "sha256": hashlib.sha256(file.data).hexdigest(),
                     "bytes": len(file.data), "type": file.type}
            if chunks > 1:
                entry["chunks"] = chunks
            listed.append(entry)
            parts.append((file, chunks))
        event_id = self.event(device_id, event, evidence=listed, files=files)
        for file, chunks in parts:
            if chunks == 1:
                self.outbox.put_raw(Priority.BULK, self.topic(f"evidence/{event_id}/{file.name}"), file.data)
                continue
            for i in range(chunks):
                self.outbox.put_raw(Priority.BULK, self.topic(f"evidence/{event_id}/{file.name}.{i}"),
                                    file.data[i * limit:(i + 1) * limit])
        return event_id

    def event(self, device_id: str, event: Event, evidence: list[dict[str, Any]] | None = None,
              files: list[EvidenceFile] | None = None) -> str:
        priority = SEVERITY_PRIORITY[event.severity]
        event_id = f"{self.gateway_id[:40]}-{self.outbox.allocate_seq()}"
        body: dict[str, Any] = {"id": event_id, "device": device_id, "type": event.type,
                                "severity": event.severity, "data": event.data}
        if evidence:
            body["evidence"] = evidence
        if event.t is not None:
            # the contract's ts is when the message was produced; when it happened goes in t
            # (a violation's clip follows seconds later, a panel reports an alarm it buffered)
            body["t"] = event.t
        try:
            self.outbox.put(priority, self.topic(f"event/{device_id}"), body)
        except TypeError:   # orjson: data a parser filled with what JSON cannot carry
            body["data"] = wire.safe_data(event.data)
            self._warn.warn(log, f"event-data:{device_id}", "event %s on %s: data the contract cannot carry "
                            "was replaced (numbers out of range, bytes, nesting)", event.type, device_id)
            self.outbox.put(priority, self.topic(f"event/{device_id}"), body)
        self.recent_events.append({"ts": now_ms(), "device": device_id, "type": event.type,
                                   "severity": event.severity})
        log.info("event %s %s on %s", event.severity, event.type, device_id)
        if self.on_event is not None:
            try:
                self.on_event(body, files or [])
            except Exception:   # noqa: BLE001 - a watcher's bug must not lose the event (it is queued)
                log.exception("event watcher failed on %s", event_id)
        if priority == Priority.LIFE_SAFETY:
            # a fire alarm does not wait for the next group commit, and the caller must know
            # whether it is on disk: a bridge confirms the device's frame only then, so a panel
            # whose alarm could not be stored keeps resending it
            self.commit()
            if self.outbox.pending:
                raise NotDurable(f"life-safety event {event.type} on {device_id} is queued in memory: "
                                 f"the outbox {self.outbox.path} cannot be written")
        return event_id

    def device_state(self, device_id: str, online: bool, error: str | None = None) -> None:
        status = self.devices[device_id]
        if not online:
            status.errors += 1
            status.last_error = error
        if status.online == online:
            return
        was_known = status.online is not None
        status.online = online
        if online and not was_known:
            return   # first contact is not news
        log.warning("device %s is %s%s", device_id, "online" if online else "offline",
                    f": {error}" if error else "")
        self.event(device_id, Event("device.online" if online else "device.offline",
                                    "info" if online else "major",
                                    {"error": error} if error else {}))

    def store(self, family: str) -> StateStore | None:
        """The family's directory of small durable state (agent/core/state.py)."""
        if self.state_dir is None:
            return None
        return StateStore.of_family(self.state_dir, family)

    def committed(self) -> "asyncio.Future[None]":
        """Resolves once everything handed to the sink so far is committed to disk (at the next
        group commit; later ones if the disk refuses): a bridge that acknowledges data to its
        device awaits this first, so a power cut never loses what a device was told arrived."""
        waiter = asyncio.get_running_loop().create_future()
        self._commit_waiters.append(waiter)
        return waiter

    # -- commits -----------------------------------------------------------------------------------

    def commit(self) -> None:
        """Write what is queued (one transaction, one fsync) and release the commit waiters."""
        if self.outbox.flush():
            self.on_commit()
        if self._commit_waiters and not self.outbox.pending:
            waiters, self._commit_waiters = self._commit_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def commit_soon(self) -> None:
        """Commit at the next turn of the loop instead of waiting for the group commit."""
        if not self._flush_soon:
            self._flush_soon = True

            def flush() -> None:
                self._flush_soon = False
                self.commit()
            asyncio.get_running_loop().call_soon(flush)
