"""One runner per signal controller: its link (NTCIP, Modbus I/O or GB/T 20999), its phase readings, its priority.

Readings are published on every poll (``phase<n>``, ``ped<n>``, ``preempt``, ``preempt_state``); the
device's report policy decides what is sent (``report: {mode: on_change, max_silence: 10s}`` sends
each change at once and a reminder every 10 s). The link owns its schedule and backoff; the runner
turns what it reads into readings and hands it to the priority manager.

For the command layer (``signal.priority``, agent/command_handlers.py): ``Agent.runner_for(device_id)``
finds the runner (``device_ids``), then ``await runner.request_priority(device_id, phase=2,
duration_s=30, source=cmd_id)``; ``release_priority``, ``heartbeat`` and ``centre_alive`` likewise.
``write_point(device_id, "priority", {"phase": 2, "duration_s": 30})`` does the same for a generic
write path (a value of 0/False/None releases).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from agent.core.clock import SYSTEM, Clock
from agent.core.config import DeviceConfig
from agent.core.model import DeviceSink, Event, Reading, Severity, Value
from agent.core.driver import HoldsForCentre, Runner
from firmware_bridges.signal_controller.errors import PriorityRefused
from firmware_bridges.signal_controller.ntcip import NtcipLink
from firmware_bridges.signal_controller.options import Options
from firmware_bridges.signal_controller.phases import ControllerStatus, PhaseTracker
from firmware_bridges.signal_controller.priority import PriorityGrant, PriorityManager

log = logging.getLogger("firmware_bridges.signal_controller")
FAMILY = "signal_controller"   # the driver's name: its state store (DeviceSink.store)


class SignalRunner(Runner, HoldsForCentre):
    """Serves one signal controller (see the module docstring)."""

    def __init__(self, device: DeviceConfig, options: Options, sink: DeviceSink, *, clock: Clock = SYSTEM):
        self.device_id = device.id
        self.options = options
        self.sink = sink
        self.clock = clock   # the link's schedule and the priority's holds (tests: a VirtualClock)
        if options.protocol == "ntcip":
            self.link: Any = NtcipLink(device.id, options, device.poll, clock=clock)
        elif options.protocol == "gbt20999":
            from firmware_bridges.signal_controller.gbt20999.link import Gbt20999Link
            self.link = Gbt20999Link(device.id, options, device.poll, clock=clock)
            self.link.audit = self._audit
            self.link.on_report = self._report
            self.link.records = sink.store(FAMILY)   # the hold's record survives a killed agent
        else:
            from firmware_bridges.signal_controller.modbus_io import ModbusIoLink   # late: pymodbus only if used
            self.link = ModbusIoLink(device, options, clock=clock)
        self.name = f"signal_controller {device.id} ({self.link.describe})"
        self.devices: dict[str, SignalRunner] = {device.id: self}   # same lookup shape as the Modbus bus runner
        self.tracker = PhaseTracker()
        self.priority = PriorityManager(device.id, options.priority, options.phases, self.link, sink, clock,
                                        release_retry=getattr(self.link, "RELEASE_RETRY", None))
        self.last_status: ControllerStatus | None = None
        self._with_preempt = options.priority is not None
        self._preempt_state = options.protocol == "ntcip" and self._with_preempt

    # -- Runner ---------------------------------------------------------------------------------

    async def run(self) -> None:
        load = getattr(self.link, "load_record", None)   # GB/T 20999: a hold a killed run left
        left = await load() if load is not None else None
        if left is not None:
            self.priority.left_held(left)
        link = asyncio.create_task(self.link.run(self._on_status, self._on_state), name=f"{self.device_id}:link")
        watchdog = asyncio.create_task(self.priority.run(), name=f"{self.device_id}:priority")
        try:
            # both loop forever; if one fails, the other is stopped and the supervisor restarts us
            done, _ = await asyncio.wait((link, watchdog), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in (link, watchdog):
                task.cancel()
            for task in (link, watchdog):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def close(self) -> None:
        """Release any priority first (the link is still open), then the link."""
        await self.priority.shutdown()
        await self.link.close()

    @property
    def device_ids(self) -> tuple[str, ...]:
        """For the agent's command routing (Agent.runner_for)."""
        return (self.device_id,)

    def stats(self) -> dict[str, dict[str, Any]]:
        entry = self.link.stats.as_dict()
        client = getattr(self.link, "client", None)
        if client is not None and hasattr(client, "stats"):   # GB/T 20999: requests, traps, bad frames
            entry["protocol"] = client.stats.as_dict()
        entry["state_changes"] = self.tracker.changes
        entry["priority"] = self.priority.as_dict()
        return {self.device_id: entry}

    async def read_point(self, device_id: str, point: str) -> Reading:
        """The point's value from the latest poll (quality ``stale`` while the controller is offline)."""
        self._check_device(device_id)
        status = self.last_status
        readings = {r.point: r for r in self._readings(status)} if status else {}
        if point not in readings:
            raise KeyError(f"{device_id} has no point {point!r}; it has: {', '.join(self.point_names())}")
        reading = readings[point]
        if self.link.online is False:
            reading.q = "stale"
        return reading

    async def write_point(self, device_id: str, point: str, value: Value | dict[str, Any]) -> None:
        """Only ``priority``: a mapping (or its JSON) {phase|approach, duration_s} requests; 0/False/None releases."""
        self._check_device(device_id)
        if point != "priority":
            raise PermissionError(f"{device_id}.{point} is read-only; the only writable point is 'priority'")
        if value in (None, False, 0, "", "release"):
            await self.release_priority(device_id)
            return
        args = json.loads(value) if isinstance(value, str) else value
        if not isinstance(args, dict):
            raise PriorityRefused('priority takes {"phase": 2, "duration_s": 30} (or "approach" instead of "phase")')
        unknown = set(args) - {"phase", "approach", "duration_s", "source"}
        if unknown:
            raise PriorityRefused(f"unknown priority argument(s): {', '.join(sorted(unknown))}")
        if "duration_s" not in args:
            raise PriorityRefused("priority needs duration_s")
        await self.request_priority(device_id, args.get("phase"), approach=args.get("approach"),
                                    duration_s=args["duration_s"], source=args.get("source"))

    # -- priority (the signal.priority command calls these) ----------------------------------------

    async def request_priority(self, device_id: str, phase: int | None = None, *, approach: str | None = None,
                               duration_s: float, source: str | None = None) -> PriorityGrant:
        """See :meth:`PriorityManager.request`."""
        self._check_device(device_id)
        return await self.priority.request(phase, approach=approach, duration_s=duration_s, source=source)

    async def release_priority(self, device_id: str, reason: str = "released") -> PriorityGrant | None:
        self._check_device(device_id)
        return await self.priority.release(reason)

    # -- HoldsForCentre ------------------------------------------------------------------------------

    def centre_heard(self) -> None:
        self.priority.heartbeat()

    def centre_lost(self) -> None:
        self.priority.centre_alive(False)   # releases at once

    # -- from the link ----------------------------------------------------------------------------

    def _on_status(self, status: ControllerStatus) -> None:
        self.last_status = status
        for change in self.tracker.update(status):
            log.debug("%s: %s %s -> %s", self.device_id, change.point, change.old, change.new)
        self.priority.observe(status)
        try:
            self.sink.readings(self.device_id, self._readings(status))
        except Exception:   # noqa: BLE001 - the agent's problem must not stop the controller's polling
            log.exception("sink rejected readings of %s", self.device_id)

    def _on_state(self, online: bool, error: str | None) -> None:
        if not online:
            self.tracker.forget()
        else:
            self.priority.link_back()   # a release that could not be written is tried again now
        try:
            self.sink.device_state(self.device_id, online, error)
        except Exception:   # noqa: BLE001
            log.exception("sink rejected the state of %s", self.device_id)

    def _readings(self, status: ControllerStatus) -> list[Reading]:
        t = status.t or self.clock.now_ms()
        readings = [Reading(f"phase{p}", lamp.value, None, t, "bad" if lamp.conflict else "good")
                    for p, lamp in status.vehicles.items()]
        readings += [Reading(f"ped{p}", lamp.value, None, t, "bad" if lamp.conflict else "good")
                     for p, lamp in status.peds.items()]
        # left out, not sent as null, while the controller does not say (NTCIP preemptState is optional)
        if self._with_preempt and status.preempt is not None:
            readings.append(Reading("preempt", status.preempt, None, t))
        if self._preempt_state and status.preempt_state is not None:
            readings.append(Reading("preempt_state", status.preempt_state, None, t))
        readings += [Reading(name, value, "s" if name.endswith("_s") else None, t) for name, value in status.extra.items()]
        return readings

    def _audit(self, step: str, data: dict[str, Any], severity: Severity = "info") -> None:
        """A step of holding a stage or giving the controller its own mode back (GB/T 20999)."""
        self._emit("signal.control", {"step": step, **data}, severity)

    def _report(self, kind: str, data: dict[str, Any]) -> None:
        self._emit(kind, data)

    def _emit(self, kind: str, data: dict[str, Any], severity: Severity = "info") -> None:
        try:
            self.sink.event(self.device_id, Event(kind, severity, data))
        except Exception:   # noqa: BLE001 - the agent's problem must not stop the controller's link
            log.exception("sink rejected event %s of %s", kind, self.device_id)

    def point_names(self) -> list[str]:
        names = [f"phase{p}" for p in self.options.phases] + [f"ped{p}" for p in self.options.peds]
        if self._with_preempt:
            names.append("preempt")
        if self._preempt_state:
            names.append("preempt_state")
        if self.options.protocol == "gbt20999":
            from firmware_bridges.signal_controller.gbt20999.link import EXTRA_POINTS
            names += [name for name, _, _ in EXTRA_POINTS]
            names += [f"det{d}{suffix}" for d in self.options.detectors for suffix in ("", "_volume")]
        return names

    def _check_device(self, device_id: str) -> None:
        if device_id != self.device_id:
            raise KeyError(f"no signal controller {device_id!r} on {self.name}")
