"""The runner's link to a GB/T 20999 controller: lamp groups read into phase colours, stage and
mode published, and a stage held for priority with the controller's own mode and plan put back.

**Reading.** At the first answer (and after every time the controller was offline) the link reads
which lamp groups each configured phase drives (04.02.02.p) and their types (03.02.02.g: vehicle,
pedestrian). Each poll is then one query: every lamp group's state (03.03.02.g), the road's run
mode, plan and stage (0D.02.02/03/04.r), the stage's state and remaining time (06.03.02/04.s) and
the configured detectors (0E.01.00.00 presence, 0E.02.02.d volume); a second query follows only
when the stage changed. ``phase<n>`` is the colour of the phase's vehicle lamp groups and
``ped<n>`` that of its pedestrian groups, with the NTCIP path's names and values.

**Holding a stage** (:meth:`Gbt20999Link.set_preempt`, called by the priority manager with the
stage configured for the phase, after :meth:`Gbt20999Link.check_request` made sure, from the
stage table 06.02.02.s, that the stage serves that phase). No GB/T 20999 control object carries
a duration, and the priority status tables (08.03, 08.06) are read-only, so the agent owns the hold:

1. before the first hold the road's run mode and plan are read and kept (audited: ``saved``),
   and written with the stage and the hold's end to the hold's durable record
   (:mod:`.hold_record`) before anything is set, so a run killed during the hold is undone by
   the next one (:meth:`Gbt20999Link.load_record`); the record goes once the restore lands;
2. where the controller needs it (``hold_mode``), the specified run mode is set (11.01.04.r),
   then the specified stage (11.01.02.r); the priority manager re-sends it every ``reassert``;
3. to let go, the plan is set back if it changed (11.01.03.r), then the run mode (11.01.04.r):
   the controller runs its own schedule again (audited: ``restored``). If that fails the
   priority manager retries until it lands, and at once when the controller answers again
   (audited ``restore_failed`` once a series).

What a controller does by itself when the centre goes quiet is vendor-defined: configure its own
centre-loss fallback where it has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.core.backoff import Retry
from agent.core.clock import SYSTEM, Clock
from agent.core.state import StateStore, StateUnreadable
from firmware_bridges.signal_controller.errors import BadAnswer, NoAnswer, Refused
from firmware_bridges.signal_controller.gbt20999 import hold_record
from firmware_bridges.signal_controller.gbt20999 import objects as o
from firmware_bridges.signal_controller.gbt20999.client import FRAMES, Gbt20999Client
from firmware_bridges.signal_controller.gbt20999.codec import DataValue, Frame
from firmware_bridges.signal_controller.gbt20999.decode import value_dict
from firmware_bridges.signal_controller.gbt20999.hold_record import HoldRecord
from firmware_bridges.signal_controller.gbt20999.options import Gbt20999Connection
from firmware_bridges.signal_controller.options import Options
from firmware_bridges.signal_controller.phases import ControllerStatus, Lamp
from firmware_bridges.signal_controller.polling import LinkStats, PollLoop, StateCallback, StatusCallback

log = logging.getLogger("firmware_bridges.signal_controller")

# points this path adds to the NTCIP path's (name, unit, type)
EXTRA_POINTS = (("stage", None, "int"), ("stage_state", None, "string"), ("stage_remaining_s", "s", "int"),
                ("run_mode", None, "string"), ("plan", None, "int"))

_VEHICLE = {0x10: "red", 0x11: "red", 0x12: "red", 0x40: "red", 0x20: "green", 0x21: "green", 0x22: "green",
            0x30: "yellow", 0x31: "yellow", 0x32: "yellow", 0x01: "dark"}
# green flashing is the pedestrian clearance (the Chinese walk signal flashes before red)
_PED = {0x10: "dont_walk", 0x11: "dont_walk", 0x12: "dont_walk", 0x20: "walk", 0x21: "flashing",
        0x22: "flashing", 0x01: "dark"}
RESTARTED = "agent restarted during a hold"
_RANK = {"green": 3, "walk": 3, "flashing": 2, "yellow": 2, "red": 1, "dont_walk": 1, "dark": 0}


def lamp_of(states: list[int], table: dict[int, str]) -> Lamp:
    """One head from the states of the lamp groups it has: the highest colour; ``conflict`` when
    they disagree or a state is not one the standard lists."""
    colours = [table.get(s) for s in states]
    known = [c for c in colours if c is not None]
    if not known:
        return Lamp("dark", conflict=bool(states))
    colour = max(known, key=_RANK.__getitem__)
    return Lamp(colour, conflict=len(set(colours)) > 1)


@dataclass(frozen=True, slots=True)
class Layout:
    vehicle: dict[int, tuple[int, ...]]   # phase -> its vehicle lamp groups
    ped: dict[int, tuple[int, ...]]       # phase -> its pedestrian lamp groups
    stages: dict[int, tuple[int, ...]] | None = None   # configured stage -> its phases (None: not readable)

    @property
    def groups(self) -> list[int]:
        return sorted({g for gs in (*self.vehicle.values(), *self.ped.values()) for g in gs})


AuditCallback = Callable[..., None]   # (step, data, severity="info")


class Gbt20999Link(PollLoop):
    # A hold changed the controller's run mode, and no backup timer of the controller's undoes it:
    # a release that failed is tried every half second (priority.release_retry overrides it), so
    # the plan is back within about that of a lost link's return, whatever the poll's backoff.
    RELEASE_RETRY = 0.5

    def __init__(self, device_id: str, options: Options, poll: float, *, clock: Clock = SYSTEM):
        assert isinstance(options.connection, Gbt20999Connection)
        self.device_id = device_id
        self.connection = c = options.connection
        self.clock = clock
        self.describe = c.describe()
        self.poll = poll
        self.offline_after = options.offline_after
        self.phases = list(options.phases)
        self.peds = options.peds
        self.detectors = options.detectors
        self.stats = LinkStats()
        self._backoff = Retry(options.backoff)
        self.answers = FRAMES
        self.client = Gbt20999Client(device_id, c, backoff=options.backoff, clock=clock, on_trap=self._trap)
        self.audit: AuditCallback = lambda step, data, severity="info": None
        self.on_report: Callable[[str, dict[str, Any]], None] = lambda kind, data: None
        self.layout: Layout | None = None
        self._stage: int | None = None
        self.saved: tuple[int, int] | None = None   # (run mode, plan) before the hold
        self.held_stage: int | None = None
        # the hold's durable record (hold_record.py); None: no state directory, memory only
        self.records: StateStore | None = None
        self.hold_expires_ms: int | None = None
        self.restart_reason: str | None = None     # restoring a hold a killed run left
        self._recorded: tuple[int, int | None] | None = None   # (stage, expires_ms) on disk
        self._records_loaded = False
        self.restore_failures = 0   # in a row, before the restore lands
        self.heartbeat_failures = 0
        self.stage_phases: dict[int, list[int]] = {}   # stage -> the phases priority.preempt holds it for
        for phase, stage in (options.priority.preempts.items() if options.priority else ()):
            self.stage_phases.setdefault(stage, []).append(phase)
        self._transport: asyncio.Task[None] | None = None

    @property
    def online(self) -> bool | None:
        return self.stats.online

    # -- reading ---------------------------------------------------------------------------------

    async def read_layout(self) -> Layout:
        client = self.client
        wanted = sorted(set(self.phases) | set(self.peds))
        maps = await client.query([o.phase_lamp_groups(p) for p in wanted])
        for p in wanted:
            if len(maps[o.phase_lamp_groups(p)]) != 8:
                raise BadAnswer(f"{self.device_id}: phase {p}'s lamp groups came as "
                                f"{len(maps[o.phase_lamp_groups(p)])} bytes; GB/T 20999 has an 8-byte bitmap")
        groups_of = {p: o.bitmap(maps[o.phase_lamp_groups(p)]) for p in wanted}
        groups = sorted({g for gs in groups_of.values() for g in gs})
        types = await client.query([o.lamp_group_type(g) for g in groups]) if groups else {}
        kind = {g: o.uint(types[o.lamp_group_type(g)]) for g in groups}
        vehicle = {p: tuple(g for g in groups_of[p] if kind[g] in (1, 2)) for p in self.phases}
        ped = {p: tuple(g for g in groups_of[p] if kind[g] == 3) for p in self.peds}
        log.info("%s: lamp groups by phase: vehicle %s, pedestrian %s", self.device_id, vehicle, ped)
        return Layout(vehicle, ped, await self._read_stages())

    async def _read_stages(self) -> dict[int, tuple[int, ...]] | None:
        """The phases of each stage the config holds for priority (06.02.02.s), to check the config
        against the controller before a hold. None where the controller does not say."""
        if not self.stage_phases:
            return None
        try:
            values = await self.client.query([o.stage_phases(s) for s in self.stage_phases])
        except Refused as exc:
            log.warning("%s: cannot read the stages' phases (%s): the priority config is not checked", self.device_id, exc)
            return None
        stages = {s: tuple(o.bitmap(values[o.stage_phases(s)])) for s in self.stage_phases}
        for stage, phases in self.stage_phases.items():
            missing = sorted(set(phases) - set(stages[stage]))
            if missing:
                log.error("%s: priority.preempt holds stage %d for phase(s) %s, but the controller's stage %d "
                          "serves phases %s: a request for them is refused", self.device_id, stage,
                          ", ".join(map(str, missing)), stage, ", ".join(map(str, stages[stage])) or "none")
        return stages

    async def read_status(self) -> ControllerStatus:
        if self.layout is None or self.stats.online is not True:
            self.layout = await self.read_layout()
        layout, r = self.layout, self.connection.road
        stage = self._stage or 1
        ids = [o.lamp_group_state(g) for g in layout.groups]
        ids += [o.run_mode(r), o.current_plan(r), o.current_stage(r), o.stage_status(stage), o.stage_remaining(stage)]
        if self.detectors:
            ids.append(o.DETECTOR_PRESENCE)
            ids += [o.detector_volume(d) for d in self.detectors]
        values = self._checked(await self.client.query(ids))
        current = o.uint(values[o.current_stage(r)])
        if current and current != stage:
            values.update(self._checked(await self.client.query([o.stage_status(current), o.stage_remaining(current)])))
        self._stage = current or stage
        t = self.clock.now_ms()
        states = {g: o.uint(values[o.lamp_group_state(g)]) for g in layout.groups}
        vehicles = {p: lamp_of([states[g] for g in layout.vehicle[p]], _VEHICLE) for p in self.phases}
        peds = {p: lamp_of([states[g] for g in layout.ped[p]], _PED) for p in self.peds}
        status = ControllerStatus(vehicles, peds, t=t)
        mode = o.uint(values[o.run_mode(r)])
        shown = self._stage
        status.extra = {
            "stage": current, "stage_state": o.STAGE_STATES.get(o.uint(values[o.stage_status(shown)]), "unknown"),
            "stage_remaining_s": o.uint(values[o.stage_remaining(shown)]),
            "run_mode": o.RUN_MODES.get(mode, f"unknown_{mode:#04x}"), "plan": o.uint(values[o.current_plan(r)]),
        }
        if self.detectors:
            present = set(o.bitmap(values[o.DETECTOR_PRESENCE]))
            for d in self.detectors:
                status.extra[f"det{d}"] = d in present
                status.extra[f"det{d}_volume"] = o.uint(values[o.detector_volume(d)])
        if self.held_stage is not None:
            status.preempt = current == self.held_stage
        else:
            status.preempt = False
        return status

    def _checked(self, values: dict[tuple[int, int, int, int], bytes]) -> dict[tuple[int, int, int, int], bytes]:
        """The answer's values, each of a size its object can have (states 1 byte, times 2, the
        detector bitmap 8; numbers at most 4): anything else is the controller's fault (BadAnswer),
        not a number or a name to publish."""
        for ids, raw in values.items():
            if ids == o.DETECTOR_PRESENCE:
                ok = len(raw) == 8
            elif ids[:3] in ((3, 3, 2), (13, 2, 2), (6, 3, 2)):
                ok = len(raw) == 1
            else:
                ok = 1 <= len(raw) <= 4
            if not ok:
                raise BadAnswer(f"{self.device_id}: {'.'.join(f'{i:02X}' for i in ids)} came as {len(raw)} bytes "
                                f"({raw[:8].hex()}{'...' if len(raw) > 8 else ''})")
        return values

    def _trap(self, frame: Frame) -> None:
        """The controller's own report: alarms (class 15) and faults (16) become events, the rest
        is counted (the poll reads the state anyway)."""
        values = [value_dict(frame, v) for v in frame.values]
        classes = {v.cls for v in frame.values}
        if o.ALARMS in classes or o.FAULTS in classes:
            kind = "signal.controller_fault" if o.FAULTS in classes else "signal.controller_alarm"
            self.on_report(kind, {"values": values[:16]})
        else:
            log.debug("%s: report %s", self.device_id, values[:4])

    # -- holding a stage (the priority manager's Actuator) -------------------------------------

    async def set_preempt(self, stage: int, on: bool) -> None:
        if on:
            await self._hold(stage)
        else:
            await self._restore()

    async def _hold(self, stage: int) -> None:
        c, r = self.connection, self.connection.road
        read_now = self.saved is None
        if read_now:
            values = await self.client.query([o.run_mode(r), o.current_plan(r)])
            self.saved = (o.uint(values[o.run_mode(r)]), o.uint(values[o.current_plan(r)]))
            self.audit("saved", {"run_mode": o.RUN_MODES.get(self.saved[0], self.saved[0]),
                                 "run_mode_code": self.saved[0], "plan": self.saved[1]})
        first = self.held_stage != stage
        if first or self._recorded != (stage, self.hold_expires_ms):
            try:   # on disk before the controller is asked: a run killed during the hold restores it
                await self._write_record(stage)
            except OSError as exc:
                if read_now and self.held_stage is None:
                    self.saved = None
                raise Refused(f"{self.device_id}: the hold was not sent: its record could not be written "
                              f"({exc}); a hold the agent could not undo after a restart is not started") from None
        try:
            if c.hold_mode is not None and first:
                await self.client.set([DataValue(*o.specified_mode(r), bytes((c.hold_mode,)))])
            await self.client.set([DataValue(*o.specified_stage(r), bytes((stage,)))])
        except Refused:
            if first and self.held_stage is None:
                # the controller said no to the first hold: put back the mode if it was changed
                # (a no-answer is left to the priority manager, which takes the request back)
                if c.hold_mode is not None:
                    with contextlib.suppress(NoAnswer, Refused):
                        await self._restore()
                self.saved = None
                await self._forget_record()
            raise
        self.restart_reason = None   # a hold a killed run left is this run's own now: restored when it ends
        if first:
            self.held_stage = stage
            self.audit("hold", {"stage": stage, "run_mode_code": c.hold_mode})

    def hold_until(self, expires_ms: int) -> None:
        """The priority manager says when the hold it is about to (re)send ends, for the record."""
        self.hold_expires_ms = expires_ms

    def check_request(self, stage: int, phase: int) -> None:
        """Before a hold (the priority manager asks): refuse a stage that does not serve the phase
        the config holds it for, or the ambulance would get another approach's green."""
        if self.restart_reason is not None and self.held_stage not in (None, stage):
            raise Refused(f"{self.device_id}: stage {self.held_stage}, held when the agent was stopped, is being "
                          "released (the controller's own mode and plan restored): ask again once it is")
        stages = self.layout.stages if self.layout is not None else None
        if stages is None or stage not in stages or phase in stages[stage]:
            return
        raise Refused(f"{self.device_id}: the controller's stage {stage} serves phase(s) "
                      f"{', '.join(map(str, stages[stage])) or 'none'}, not {phase} as priority.preempt says: "
                      "fix the config (nothing was asked of the controller)")

    async def _restore(self) -> None:
        """Put back the run mode and plan read before the hold. Raises (NoAnswer, Refused) when it
        did not land; the priority manager retries."""
        saved, r = self.saved, self.connection.road
        if saved is None:
            self.held_stage = None
            return   # nothing was changed (the read before the hold failed)
        mode, plan = saved
        try:
            current = await self.client.query([o.current_plan(r)])
            if o.uint(current[o.current_plan(r)]) != plan and plan:
                await self.client.set([DataValue(*o.specified_plan(r), bytes((plan,)))])
            await self.client.set([DataValue(*o.specified_mode(r), bytes((mode,)))])
        except Exception as exc:
            self.restore_failures += 1
            if self.restore_failures == 1:   # once a series: the retries of an offline controller are no news
                failed: dict[str, Any] = {"run_mode_code": mode, "plan": plan, "error": str(exc)}
                if self.restart_reason is not None:
                    failed["reason"] = self.restart_reason
                self.audit("restore_failed", failed)
            raise
        self.saved, self.held_stage = None, None
        data: dict[str, Any] = {"run_mode": o.RUN_MODES.get(mode, mode), "run_mode_code": mode, "plan": plan}
        if self.restore_failures:
            data["attempts"], self.restore_failures = self.restore_failures + 1, 0
        if self.restart_reason is not None:
            data["reason"], self.restart_reason = self.restart_reason, None
        await self._forget_record()
        self.audit("restored", data)

    # -- the hold's record (hold_record.py) --------------------------------------------------------

    async def load_record(self) -> int | None:
        """At the runner's first start: a hold a previous run left behind (it was killed during
        it). Its saved mode and plan become this run's, to be restored as soon as the controller
        answers; returns the stage held (for the priority manager's release retries), or None.
        An unreadable record is reported (``record_unreadable``) and left in place."""
        if self.records is None or self._records_loaded:
            return None
        self._records_loaded = True
        try:
            record = await asyncio.to_thread(hold_record.read, self.records, self.device_id)
        except (StateUnreadable, OSError) as exc:
            log.error("%s: the hold record %s cannot be read (%s): if the agent was stopped during a hold, "
                      "the controller may still hold a stage: check it", self.device_id,
                      self.records.path(self.device_id), exc)
            self.audit("record_unreadable", {"record": str(self.records.path(self.device_id)), "error": str(exc)},
                       "major")
            return None
        if record is None or record.controller != self.describe:
            return None   # another controller's: reported at start (hold_record.report_orphans)
        self.saved, self.held_stage = (record.run_mode, record.plan), record.stage
        self.restart_reason = RESTARTED
        self._recorded = (record.stage, record.expires_ms)
        log.warning("%s: the agent was stopped while it held stage %d; restoring run mode %#04x and plan %d as "
                    "soon as the controller answers", self.device_id, record.stage, record.run_mode, record.plan)
        self.audit("restart_found_hold", {**record.audit(), "reason": RESTARTED})
        return record.stage

    async def _write_record(self, stage: int) -> None:
        if self.records is None or self.saved is None:
            return
        mode, plan = self.saved
        record = HoldRecord(self.device_id, self.describe, mode, plan, stage, self.clock.now_ms(), self.hold_expires_ms)
        await asyncio.to_thread(self.records.put, self.device_id, record.document())
        self._recorded = (stage, self.hold_expires_ms)

    async def _forget_record(self) -> None:
        self._recorded = None
        if self.records is None:
            return
        try:
            await asyncio.to_thread(self.records.delete, self.device_id)
        except OSError as exc:   # the restore landed; a next run would only restore the same mode again
            log.error("%s: cannot remove the hold record %s: %s", self.device_id,
                      self.records.path(self.device_id), exc)

    # -- running ---------------------------------------------------------------------------------

    async def run(self, on_status: StatusCallback, on_state: StateCallback) -> None:
        # the transport outlives run(): the runner's close() restores the controller's mode through
        # it after run() was cancelled, and a restarted run() finds it still there
        if self._transport is None or self._transport.done():
            self._transport = asyncio.create_task(self.client.run(), name=f"{self.device_id}:gbt20999")
        beat = asyncio.create_task(self._heartbeats(), name=f"{self.device_id}:heartbeat")
        try:
            await self.client.wait_link(2.0)
            await PollLoop.run(self, on_status, on_state)
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)

    async def _heartbeats(self) -> None:
        every = self.connection.heartbeat
        if not every:
            return
        while True:
            await self.clock.sleep(every)
            try:
                await self.client.heartbeat()
            except (NoAnswer, Exception) as exc:   # noqa: BLE001 - the poll decides online/offline
                self.heartbeat_failures += 1
                log.debug("%s: heartbeat: %s", self.device_id, exc)

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.cancel()
            await asyncio.gather(transport, return_exceptions=True)
        self.client.close()
