"""A DeviceSink that checks what a family hands to the agent, as the uplink would carry it.

The sink only keeps what it is given (``feed`` is timed against the 50 ms budget, and the
checks are not the agent's work); ``check()``, called by the target after the input, judges it.
Readings must pass ``agent.wire``'s own check (the net the agent puts under every family would
otherwise have to turn them into bad readings: a value lost) and encode with orjson. Events are
built into the message ``Agent.event`` publishes, with the common fields, and must encode with
orjson as they are (the agent would otherwise replace their data) and validate against the
contract's event schema. Nothing here raises: a family calls its sink inside its own isolation,
which would hide the check; problems go to the target's ``problem``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from agent import contract, wire
from agent.core.model import Event, EvidenceFile, Reading, now_ms

_COMMON = {"v": 1, "gw": "gw-fuzz", "seq": 1, "hist": False}


class CheckingSink:
    def __init__(self, problem: Callable[[str, str], None]):
        self.problem = problem
        self.readings_seen = 0
        self.events_seen = 0
        self.latest_values: dict[tuple[str, str], Reading] = {}
        self._readings: list[tuple[str, list[Reading]]] = []
        self._events: list[tuple[str, Event, list[dict[str, Any]] | None]] = []
        contract.validator("event")   # compiled now, not inside the first input's timing

    def readings(self, device_id: str, readings: list[Reading]) -> None:
        self.readings_seen += len(readings)
        self._readings.append((device_id, list(readings)))
        if len(self.latest_values) < 10_000:   # random point names must not grow this forever
            for r in readings:
                self.latest_values[(device_id, r.point)] = r

    def event(self, device_id: str, event: Event, evidence: list[dict[str, Any]] | None = None) -> str:
        self.events_seen += 1
        self._events.append((device_id, event, evidence))
        return "gw-fuzz-1"

    def check(self) -> None:
        """Judge everything handed over since the last check."""
        readings, self._readings = self._readings, []
        events, self._events = self._events, []
        for device_id, batch in readings:
            self._check_readings(device_id, batch)
        for device_id, event, evidence in events:
            self._check_event(device_id, event, evidence)

    def _check_readings(self, device_id: str, readings: list[Reading]) -> None:
        for r in readings:
            if not wire._reading_ok(r):   # noqa: SLF001 - the same check the agent's sink applies
                self.problem("reading beyond the contract", f"{device_id}: {r!r}"[:300])
                return
        try:
            orjson.dumps([r.to_wire() for r in readings])
        except TypeError as exc:
            self.problem("reading orjson cannot encode", f"{device_id}: {exc}")

    def _check_event(self, device_id: str, event: Event, evidence: list[dict[str, Any]] | None) -> None:
        body: dict[str, Any] = {**_COMMON, "ts": now_ms(), "id": "gw-fuzz-1", "device": device_id,
                                "type": event.type, "severity": event.severity, "data": event.data}
        if event.t is not None:
            body["t"] = event.t
        if evidence:
            body["evidence"] = evidence
        try:
            orjson.dumps(body)
        except TypeError as exc:
            self.problem("event data orjson cannot encode", f"{device_id} {event.type}: {exc}")
            return
        problems = contract.validate("event", body)
        if problems:
            self.problem("event beyond the contract", f"{device_id} {event.type}: {'; '.join(problems[:2])}"[:300])

    def evidence(self, device_id: str, event: Event, files: list[EvidenceFile]) -> str:
        return self.event(device_id, event, [{"name": f.name, "sha256": "0" * 64, "bytes": len(f.data)} for f in files])

    def device_state(self, device_id: str, online: bool, error: str | None = None) -> None:
        if not isinstance(online, bool) or not (error is None or isinstance(error, str)):
            self.problem("device state", f"{device_id}: online={online!r} error={error!r}"[:300])
            return
        self.event(device_id, Event("device.online" if online else "device.offline", "info",
                                    {"error": error} if error else {}))

    def committed(self) -> "asyncio.Future[None]":
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def latest(self, device_id: str, point: str) -> Reading | None:
        return self.latest_values.get((device_id, point))

    def store(self, family: str) -> None:
        return None   # no state directory: a family keeps its state in memory (no disk in a fuzz run)
