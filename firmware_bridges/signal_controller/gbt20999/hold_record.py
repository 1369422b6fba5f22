"""The durable record of a held stage: what to put back if the agent dies during the hold.

A GB/T 20999 hold has no duration the controller keeps (:mod:`.link`): if the agent is killed
(kill -9, a power cut) while it holds a stage, the controller stays on it. So before the hold is
sent the link writes the run mode and plan it read, the stage and when the hold is to end to the
family's state store (``DeviceSink.store``: ``<state_dir>/families/signal_controller/<device
id>.json``, written atomically), and removes it only once the restore is confirmed. The next run
finds it and restores as soon as the controller answers (:meth:`.link.Gbt20999Link.load_record`).

A record names the controller it was written for (``controller``, the connection as
``describe()`` says it): a record whose device is no longer configured as that GB/T 20999
controller is reported once per start (:func:`report_orphans`) and kept, never dropped: the
junction it names may still be held.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from agent.core.model import DeviceSink, Event
from agent.core.state import StateStore, StateUnreadable
from firmware_bridges.signal_controller.gbt20999.objects import RUN_MODES

log = logging.getLogger("firmware_bridges.signal_controller")

FORMAT = 1
CONTROL_EVENT = "signal.control"


@dataclass(frozen=True, slots=True)
class HoldRecord:
    device_id: str
    controller: str              # Gbt20999Connection.describe(): the record is for this controller only
    run_mode: int                # the standard's byte, as read before the hold
    plan: int
    stage: int                   # the stage held
    saved_ms: int                # when the mode and plan were read (UTC epoch ms)
    expires_ms: int | None       # when the agent meant to end the hold
    format: int = FORMAT

    def document(self) -> dict[str, Any]:
        return {**asdict(self), "run_mode_name": RUN_MODES.get(self.run_mode)}

    def audit(self) -> dict[str, Any]:
        """The record as a ``signal.control`` event's data shows it."""
        return {"run_mode": RUN_MODES.get(self.run_mode, self.run_mode), "run_mode_code": self.run_mode,
                "plan": self.plan, "stage": self.stage, "saved_ms": self.saved_ms, "expires_ms": self.expires_ms}

    @classmethod
    def parse(cls, document: Mapping[str, Any]) -> "HoldRecord":
        """A record read back; StateUnreadable naming the first key that is wrong."""
        def number(key: str, low: int, high: int, *, optional: bool = False) -> Any:
            value = document.get(key)
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise StateUnreadable(f"hold record: {key} is {value!r}, not an integer {low}..{high}")
            return value

        if document.get("format") != FORMAT:
            raise StateUnreadable(f"hold record: format {document.get('format')!r}, this agent reads {FORMAT}")
        texts = {}
        for key in ("device_id", "controller"):
            value = document.get(key)
            if not isinstance(value, str) or not value:
                raise StateUnreadable(f"hold record: {key} is {value!r}, not a text")
            texts[key] = value
        return cls(texts["device_id"], texts["controller"], number("run_mode", 0, 255), number("plan", 0, 255),
                   number("stage", 1, 255), number("saved_ms", 0, 2**53), number("expires_ms", 0, 2**53, optional=True))


def read(store: StateStore, key: str) -> HoldRecord | None:
    """The record kept under ``key``, None when there is none. Raises StateUnreadable, OSError."""
    document = store.get(key)
    return None if document is None else HoldRecord.parse(document)


def report_orphans(store: StateStore | None, configured: Mapping[str, str], sink: DeviceSink) -> list[str]:
    """At start, before any runner runs: records whose device is not configured (or not as the same
    GB/T 20999 controller) are logged and sent as a ``signal.control`` event (``step:
    orphaned``) on that device id, and kept. ``configured``: device id -> ``describe()`` of its
    GB/T 20999 connection. Returns the keys reported. Blocking (reads files): call it at start."""
    if store is None:
        return []
    reported = []
    for key in _keys(store):
        try:
            record = read(store, key)
        except (StateUnreadable, OSError) as exc:
            if key in configured:
                continue   # its runner reports it (record_unreadable) when it starts
            record, error = None, str(exc)
        else:
            if record is None or configured.get(key) == record.controller:
                continue
            error = None
        where = "is not configured" if key not in configured else f"is now {configured[key]}"
        data: dict[str, Any] = {"step": "orphaned", "record": str(store.path(key)),
                                "why": f"device {key} {where}"}
        if record is not None:
            data |= {"controller": record.controller, **record.audit()}
        if error is not None:
            data["error"] = error
        log.error("%s: a hold record %s was left by a run that was stopped during a hold, and device %s %s: "
                  "the agent cannot restore that controller (it may still hold stage %s); the record is kept",
                  key, store.path(key), key, where, record.stage if record else "?")
        _event(sink, key, Event(CONTROL_EVENT, "major", data))
        reported.append(key)
    return reported


def _keys(store: StateStore) -> Iterable[str]:
    try:
        return store.keys()
    except OSError as exc:
        log.error("cannot list the hold records in %s: %s", store.directory, exc)
        return []


def _event(sink: DeviceSink, device_id: str, event: Event) -> None:
    try:
        sink.event(device_id, event)
    except Exception:   # noqa: BLE001 - the agent's problem must not stop the start
        log.exception("sink rejected event %s of %s", event.type, device_id)
