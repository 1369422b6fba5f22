"""Hardware-in-the-loop traffic-signal controller: a fixed-time plan served over NTCIP 1202 (SNMP)
and over a Modbus digital I/O module, accepting preemption.

Three layers, each usable on its own:

* the plan (:class:`Stage`, :class:`Plan`, :func:`signal_state_at`, :func:`ped_state_at`): a ring
  of stages, each with green, yellow and all-red intervals and optional pedestrian walk and
  clearance. Pure functions of time, so a camera simulator can draw the same lights;
* the controller (:class:`Controller`): runs the plan and serves preemption. A preempt input
  (SNMP preemptControlState or a Modbus coil) ends conflicting greens with a full yellow and
  all-red, holds the preempt's dwell phase green while the input is on, then clears it (yellow,
  all-red) and resumes the plan at the stage after the dwell phase's;
* the faces: :class:`SnmpFace` (a real SNMP agent built with pysnmp's agent-side API: v2c and v3
  USM, GET, GETNEXT, SET) and :class:`ModbusFace` (the Modbus simulator of ``modbus_sim`` serving
  ``config/profiles/signal_io_module.yaml``: lamp sensors as discrete inputs, preempt relays as
  coils; a flashing don't-walk is a lamp that really toggles at 1 Hz).

Usage from code::

    sim = SignalControllerSim(FAST_PLAN, snmp=("127.0.0.1", 0), modbus=("127.0.0.1", 0))
    await sim.start(); sim.snmp_address, sim.modbus_address
    sim.controller.view().vehicles  ->  {2: "green", 4: "red", ...}
    sim.silence(True)                 # stops answering on both faces
    await sim.stop()

    with SignalControllerSim(...).run_in_thread() as sim: ...   # for synchronous tests

From the command line: ``python -m tests.hardware_sim.signal_controller --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pysnmp.smi import instrum

ASC = (1, 3, 6, 1, 4, 1, 1206, 4, 2, 1)   # NTCIP 1202 asc node; see firmware_bridges/signal_controller/ntcip.py
GROUP_COLUMNS = {"reds": 2, "yellows": 3, "greens": 4, "dont_walks": 5, "ped_clears": 6, "walks": 7}
# preemptState values (NTCIP 1202)
NOT_ACTIVE, NOT_ACTIVE_WITH_CALL, ENTRY_STARTED, DWELL, EXIT_STARTED = 2, 3, 4, 6, 8


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Stage:
    """Vehicle phases that are green together, then yellow, then all-red; peds walk at its start."""

    phases: tuple[int, ...]
    green: float
    yellow: float = 3.0
    all_red: float = 2.0
    peds: tuple[int, ...] = ()      # pedestrian heads that walk with this stage
    walk: float = 0.0               # walk, from the start of green
    ped_clear: float = 0.0          # then flashing don't walk; steady don't walk after

    @property
    def duration(self) -> float:
        return self.green + self.yellow + self.all_red

    def __post_init__(self) -> None:
        if self.walk + self.ped_clear > self.green:
            raise ValueError("walk + ped_clear must fit in the green (peds clear before the yellow)")


@dataclass(frozen=True, slots=True)
class Plan:
    stages: tuple[Stage, ...]

    @property
    def cycle(self) -> float:
        return sum(s.duration for s in self.stages)

    @property
    def phases(self) -> tuple[int, ...]:
        return tuple(sorted({p for s in self.stages for p in s.phases}))

    @property
    def peds(self) -> tuple[int, ...]:
        return tuple(sorted({p for s in self.stages for p in s.peds}))

    def start_of(self, index: int) -> float:
        """Seconds into the cycle at which stage ``index`` starts its green."""
        return sum(s.duration for s in self.stages[:index % len(self.stages)])

    def locate(self, t: float) -> tuple[int, float]:
        """(stage index, seconds into that stage) at ``t`` seconds into the plan."""
        offset = t % self.cycle
        for index, stage in enumerate(self.stages):
            if offset < stage.duration:
                return index, offset
            offset -= stage.duration
        return len(self.stages) - 1, self.stages[-1].duration   # float edge: end of the cycle

    def stage_of(self, phase: int) -> int:
        return next(i for i, s in enumerate(self.stages) if phase in s.phases)


# NEMA numbering: 2 and 6 the main street's through movements, 4 and 8 the side street's; the ped
# heads 2 and 4 cross with them.
DEFAULT_PLAN = Plan((
    Stage((2, 6), green=20, yellow=3, all_red=2, peds=(2,), walk=7, ped_clear=9),
    Stage((4, 8), green=15, yellow=3, all_red=2, peds=(4,), walk=5, ped_clear=7),
))
# A 9 s cycle for tests: every interval shows up within seconds.
FAST_PLAN = Plan((
    Stage((2, 6), green=3.0, yellow=1.0, all_red=0.5, peds=(2,), walk=1.0, ped_clear=1.5),
    Stage((4, 8), green=3.0, yellow=1.0, all_red=0.5, peds=(4,), walk=1.0, ped_clear=1.5),
))
PLANS = {"default": DEFAULT_PLAN, "fast": FAST_PLAN}


def signal_state_at(t: float, plan: Plan = DEFAULT_PLAN) -> dict[int, str]:
    """Vehicle phase -> "green" / "yellow" / "red" at ``t`` seconds into the plan (it repeats every cycle)."""
    index, offset = plan.locate(t)
    stage = plan.stages[index]
    colour = "green" if offset < stage.green else "yellow" if offset < stage.green + stage.yellow else "red"
    return {p: (colour if p in stage.phases else "red") for p in plan.phases}


def ped_state_at(t: float, plan: Plan = DEFAULT_PLAN) -> dict[int, str]:
    """Ped head -> "walk" / "flashing" (clearance) / "dont_walk" at ``t`` seconds into the plan."""
    index, offset = plan.locate(t)
    stage = plan.stages[index]
    state = ("walk" if offset < stage.walk else "flashing" if offset < stage.walk + stage.ped_clear
             else "dont_walk")
    return {p: (state if p in stage.peds else "dont_walk") for p in plan.peds}


def flash_lamp_on(seconds_into_clearance: float) -> bool:
    """A flashing hand at 1 Hz: lit for the first half of every second of the clearance."""
    return seconds_into_clearance % 1.0 < 0.5


# --------------------------------------------------------------------------------------------
# The controller
# --------------------------------------------------------------------------------------------

@dataclass(slots=True)
class View:
    """What the controller shows at one instant."""

    mode: str                                   # plan, entry, dwell, exit
    vehicles: dict[int, str]
    peds: dict[int, str]
    ped_lamps: dict[int, tuple[bool, bool]]     # (walk lit, don't-walk lit) as a lamp sensor sees them
    preempt_states: dict[int, int]              # preempt number -> NTCIP preemptState value
    dwell_phase: int | None = None


@dataclass(slots=True)
class _Segment:
    until: float
    vehicles: dict[int, str]
    peds: dict[int, str]


@dataclass(slots=True)
class Controller:
    """Fixed-time plan plus preemption. Thread-safe: faces and tests call it from any thread."""

    plan: Plan = DEFAULT_PLAN
    # preempt number -> dwell phase, or the phases of a stage held green together (GB/T 20999)
    preempts: Mapping[int, int | tuple[int, ...]] = field(default_factory=lambda: {1: 2, 2: 4})
    clock: Callable[[], float] = time.time
    t0: float = 0.0
    mode: str = "plan"
    active: int | None = None                   # the preempt being served
    segments: list[_Segment] = field(default_factory=list)
    segment_start: float = 0.0
    snmp_control: dict[int, bool] = field(default_factory=dict)   # preemptControlState per preempt
    inputs: dict[int, bool] = field(default_factory=dict)         # physical inputs (Modbus relays)
    preempt_log: list[tuple[float, str, int]] = field(default_factory=list)   # (time, mode, preempt)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.t0 = self.t0 or self.clock()
        for number in self.preempts:
            for phase in self.dwell(number):
                if phase not in self.plan.phases:
                    raise ValueError(f"preempt {number}: dwell phase {phase} is not in the plan")

    def dwell(self, number: int) -> tuple[int, ...]:
        """The phases preempt ``number`` holds green."""
        phases = self.preempts[number]
        return (phases,) if isinstance(phases, int) else tuple(phases)

    @property
    def yellow(self) -> float:
        return max(s.yellow for s in self.plan.stages)

    @property
    def all_red(self) -> float:
        return max(s.all_red for s in self.plan.stages)

    def plan_time(self, at: float | None = None) -> float:
        """Seconds into the plan at clock time ``at`` (meaningful while in plan mode)."""
        return (self.clock() if at is None else at) - self.t0

    def requested(self) -> int | None:
        """The preempt to serve: the lowest-numbered asserted one (NTCIP: lower number, higher priority)."""
        on = [n for n in self.preempts if self.snmp_control.get(n) or self.inputs.get(n)]
        return min(on) if on else None

    def set_snmp_control(self, number: int, on: bool) -> None:
        with self.lock:
            self.update()
            self.snmp_control[number] = on
            self.update()

    def set_input(self, number: int, on: bool) -> None:
        with self.lock:
            if self.inputs.get(number, False) != on:
                self.update()
                self.inputs[number] = on
                self.update()

    # -- the state machine --------------------------------------------------------------------

    def update(self, now: float | None = None) -> None:
        with self.lock:
            now = self.clock() if now is None else now
            for _ in range(16):   # a few steps at most per call; bounded so a bug cannot spin
                if not self._step(now):
                    return

    def _step(self, now: float) -> bool:
        """Advance one transition if one is due. True when something changed."""
        wanted = self.requested()
        if self.mode == "plan":
            if wanted is None:
                return False
            self._enter(wanted, now)
            return True
        if self.segments:
            if self.segments[0].until > now:
                return False
            self.segment_start = self.segments.pop(0).until
            if self.segments:
                return True
        at = self.segment_start   # when the last segment ended: times stay exact however late we look
        if self.mode == "entry":
            self.mode = "dwell"
            self.preempt_log.append((at, "dwell", self.active or 0))
            return True
        if self.mode == "dwell":
            if wanted == self.active:
                return False
            self._exit(now)
            return True
        # exit finished: back to the plan, at the stage after the dwell phase's
        dwell_stage = self.plan.stage_of(self.dwell(self.active or 0)[0])
        self.t0 = at - self.plan.start_of(dwell_stage + 1)
        self.preempt_log.append((at, "plan", self.active or 0))
        self.mode, self.active = "plan", None
        return True

    def _enter(self, number: int, now: float) -> None:
        dwell = self.dwell(number)
        vehicles = signal_state_at(self.plan_time(now), self.plan)
        peds = ped_state_at(self.plan_time(now), self.plan)
        clearing_peds = {p: ("flashing" if s != "dont_walk" else "dont_walk") for p, s in peds.items()}
        all_dont_walk = {p: "dont_walk" for p in peds}
        segments = []
        if all(vehicles[p] == "green" for p in dwell):
            movers = [p for p, c in vehicles.items() if p not in dwell and c != "red"]
            if movers:   # the dwell phases keep their green; their partners clear
                colours = {p: ("yellow" if p in movers else "green" if p in dwell else "red") for p in vehicles}
                segments.append(_Segment(now + self.yellow, colours, clearing_peds))
        else:
            movers = [p for p, c in vehicles.items() if c != "red"]
            if movers:   # a full yellow even for a phase already in its yellow: longer is safe
                segments.append(_Segment(now + self.yellow,
                                         {p: ("yellow" if p in movers else "red") for p in vehicles}, clearing_peds))
            start = segments[-1].until if segments else now
            segments.append(_Segment(start + self.all_red, {p: "red" for p in vehicles}, all_dont_walk))
        self.mode, self.active, self.segments, self.segment_start = "entry", number, segments, now
        self.preempt_log.append((now, "entry", number))

    def _exit(self, now: float) -> None:
        dwell = self.dwell(self.active or 0)
        peds = {p: "dont_walk" for p in self.plan.peds}
        self.segments = [
            _Segment(now + self.yellow, {p: ("yellow" if p in dwell else "red") for p in self.plan.phases}, peds),
            _Segment(now + self.yellow + self.all_red, {p: "red" for p in self.plan.phases}, peds),
        ]
        self.mode, self.segment_start = "exit", now
        self.preempt_log.append((now, "exit", self.active or 0))

    # -- what it shows --------------------------------------------------------------------------

    def view(self, now: float | None = None) -> View:
        with self.lock:
            now = self.clock() if now is None else now
            self.update(now)
            if self.mode == "plan":
                t = self.plan_time(now)
                vehicles, peds = signal_state_at(t, self.plan), ped_state_at(t, self.plan)
                index, offset = self.plan.locate(t)
                clearance_t = offset - self.plan.stages[index].walk
            elif self.mode == "dwell":
                dwell = self.dwell(self.active or 0)
                vehicles = {p: ("green" if p in dwell else "red") for p in self.plan.phases}
                peds = {p: "dont_walk" for p in self.plan.peds}
                clearance_t = 0.0
            else:
                segment = self.segments[0]
                vehicles, peds = dict(segment.vehicles), dict(segment.peds)
                clearance_t = now - self.segment_start
            lamps = {p: (s == "walk", s == "dont_walk" or (s == "flashing" and flash_lamp_on(clearance_t)))
                     for p, s in peds.items()}
            states = {}
            for number in self.preempts:
                if number == self.active:
                    states[number] = {"entry": ENTRY_STARTED, "dwell": DWELL, "exit": EXIT_STARTED}[self.mode]
                elif self.snmp_control.get(number) or self.inputs.get(number):
                    states[number] = NOT_ACTIVE_WITH_CALL
                else:
                    states[number] = NOT_ACTIVE
            dwell_phase = self.dwell(self.active)[0] if self.active is not None else None
            return View(self.mode, vehicles, peds, lamps, states, dwell_phase)


# --------------------------------------------------------------------------------------------
# SNMP face: a real agent (pysnmp's agent-side API) with a MIB computed from the controller
# --------------------------------------------------------------------------------------------

def _masks(view: View, groups: int) -> dict[tuple[int, ...], int]:
    """phaseStatusGroup objects (INTEGER bitmasks, bit 0 = phase 8g-7) from a view."""
    values: dict[tuple[int, ...], int] = {}
    wanted = {
        "reds": lambda p: view.vehicles.get(p) == "red", "yellows": lambda p: view.vehicles.get(p) == "yellow",
        "greens": lambda p: view.vehicles.get(p) == "green",
        "dont_walks": lambda p: view.peds.get(p) == "dont_walk",
        "ped_clears": lambda p: view.peds.get(p) == "flashing", "walks": lambda p: view.peds.get(p) == "walk",
    }
    for name, column in GROUP_COLUMNS.items():
        for g in range(1, groups + 1):
            mask = 0
            for bit in range(8):
                if wanted[name](8 * (g - 1) + bit + 1):
                    mask |= 1 << bit
            values[ASC + (1, 4, 1, column, g)] = mask
    return values


class SnmpFace:
    """NTCIP 1202 objects of one controller on a UDP port: v2c community and optional v3 user."""

    def __init__(self, controller: Controller, address: tuple[str, int] = ("127.0.0.1", 0),
                 community: str = "public", v3_user: tuple[str, str] | None = None):
        self.controller = controller
        self.address = address
        self.community = community
        self.v3_user = v3_user          # (user, SHA auth passphrase), authNoPriv
        self.silent = False
        self.requests = 0
        self.sets: list[tuple[tuple[int, ...], int]] = []
        self.bound: tuple[str, int] | None = None
        self._engine: Any = None
        self.groups = max(1, (max(controller.plan.phases + controller.plan.peds) + 7) // 8)

    def mib(self) -> dict[tuple[int, ...], int]:
        view = self.controller.view()
        values = _masks(view, self.groups)
        values[ASC + (1, 1, 0)] = 8 * self.groups                 # maxPhases
        values[ASC + (1, 3, 0)] = self.groups                     # maxPhaseGroups
        values[ASC + (6, 1, 0)] = len(self.controller.preempts)   # maxPreempts
        for number, state in view.preempt_states.items():
            values[ASC + (6, 2, 1, 16, number)] = state           # preemptState
            values[ASC + (6, 3, 1, 2, number)] = int(bool(self.controller.snmp_control.get(number)))
        return values

    async def start(self) -> None:
        def build() -> tuple[Any, Any]:
            # importing pysnmp, an engine and its MIB tables take 100+ ms of CPU: not on the loop
            from pysnmp.entity import config, engine
            from pysnmp.entity.rfc3413 import context

            snmp_engine = engine.SnmpEngine()
            config.add_v1_system(snmp_engine, "ntcip-area", self.community)
            if self.v3_user:
                config.add_v3_user(snmp_engine, self.v3_user[0], config.USM_AUTH_HMAC96_SHA, self.v3_user[1])
            return snmp_engine, context.SnmpContext(snmp_engine)

        snmp_engine, snmp_context = await asyncio.to_thread(build)
        from pysnmp.carrier.asyncio.dgram import udp
        from pysnmp.entity import config
        from pysnmp.entity.rfc3413 import cmdrsp
        from pysnmp.proto.api import v2c

        self._engine = snmp_engine
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(self.address)
        self.bound = sock.getsockname()
        config.add_transport(snmp_engine, udp.DOMAIN_NAME, udp.UdpTransport().open_server_mode(sock=sock))
        # our own instrumentation controller instead of a compiled MIB: values come from the controller
        snmp_context.unregister_context_name(v2c.OctetString(""))
        snmp_context.register_context_name(v2c.OctetString(""), _Instrumentation(self))
        for responder in (cmdrsp.GetCommandResponder, cmdrsp.NextCommandResponder, cmdrsp.SetCommandResponder):
            responder(snmp_engine, snmp_context)
        snmp_engine.transport_dispatcher.job_started(1)
        snmp_engine.open_dispatcher()

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.transport_dispatcher.job_finished(1)
            self._engine.close_dispatcher()
            self._engine = None
            await asyncio.sleep(0)


class _Instrumentation(instrum.AbstractMibInstrumController):
    """pysnmp calls these synchronously on the agent's loop for GET, GETNEXT and SET."""

    def __init__(self, face: SnmpFace):
        self.face = face

    def _gate(self) -> None:
        from pysnmp.error import PySnmpError

        self.face.requests += 1
        if self.face.silent:
            raise PySnmpError("simulated silence")   # pysnmp sends no response for this

    def read_variables(self, *var_binds: Any, **context: Any) -> list[Any]:
        from pysnmp.proto.api import v2c

        self._gate()
        mib = self.face.mib()
        return [(name, v2c.Integer(mib[tuple(name)]) if tuple(name) in mib else v2c.NoSuchInstance())
                for name, _ in var_binds]

    def read_next_variables(self, *var_binds: Any, **context: Any) -> list[Any]:
        from pysnmp.proto.api import v2c

        self._gate()
        mib = self.face.mib()
        names = sorted(mib)
        out = []
        for name, _ in var_binds:
            following = next((n for n in names if n > tuple(name)), None)
            out.append((v2c.ObjectIdentifier(following), v2c.Integer(mib[following])) if following
                       else (name, v2c.EndOfMibView()))
        return out

    def write_variables(self, *var_binds: Any, **context: Any) -> list[Any]:
        from pysnmp.smi import error as smi_error

        self._gate()
        controls = {ASC + (6, 3, 1, 2, n): n for n in self.face.controller.preempts}
        for index, (name, value) in enumerate(var_binds):   # check every binding before changing anything
            if tuple(name) not in controls:
                raise smi_error.NotWritableError(name=name, idx=index)
            if int(value) not in (0, 1):
                raise smi_error.WrongValueError(name=name, idx=index)
        for name, value in var_binds:
            self.face.sets.append((tuple(name), int(value)))
            self.face.controller.set_snmp_control(controls[tuple(name)], bool(int(value)))
        return list(var_binds)


# --------------------------------------------------------------------------------------------
# Modbus face: the I/O module, on the Modbus simulator
# --------------------------------------------------------------------------------------------

class ModbusFace:
    """Lamp sensors (discrete inputs) and preempt relays (coils 0.. -> preempt inputs 1..)."""

    PROFILE = "signal_io_module"

    def __init__(self, controller: Controller, address: tuple[str, int] = ("127.0.0.1", 0), unit: int = 1,
                 tick: float = 0.02):
        from tests.hardware_sim.modbus_sim import ModbusSim

        self.controller = controller
        self.unit = unit
        self.tick = tick
        self.sim = ModbusSim(self.PROFILE, units=[unit], tcp=address)
        self._shown: dict[str, bool] = {}
        self._task: asyncio.Task[None] | None = None
        self.coils = {n - 1: n for n in controller.preempts}   # coil address -> preempt input

    @property
    def bound(self) -> tuple[str, int]:
        return self.sim.tcp_address

    def _lamps(self) -> dict[str, bool]:
        view = self.controller.view()
        lamps: dict[str, bool] = {}
        for p in range(1, 9):
            colour = view.vehicles.get(p, "dark")
            for c in ("red", "yellow", "green"):
                lamps[f"phase{p}_{c}"] = colour == c
            walk, dont_walk = view.ped_lamps.get(p, (False, False))
            lamps[f"ped{p}_walk"], lamps[f"ped{p}_dont_walk"] = walk, dont_walk
        return lamps

    def refresh(self) -> None:
        """Relays in, lamps out: what one scan of the cabinet wiring does."""
        values = self.sim.values(self.unit)
        for address, number in self.coils.items():
            self.controller.set_input(number, bool(values.get(f"preempt{address + 1}")))
        for name, lit in self._lamps().items():
            if self._shown.get(name) != lit:
                self.sim.set_value(self.unit, name, lit)
                self._shown[name] = lit

    async def start(self) -> None:
        for address in range(4):   # relays start open
            self.sim.set_value(self.unit, f"preempt{address + 1}", False)
        self.refresh()
        await self.sim.start()
        self._task = asyncio.create_task(self._scan())

    async def _scan(self) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(self.tick)

    def silence(self, on: bool) -> None:
        self.sim.set_fault(self.unit, "no_answer" if on else "none")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.sim.stop()


# --------------------------------------------------------------------------------------------
# The whole simulator
# --------------------------------------------------------------------------------------------

class SignalControllerSim:
    """A controller with an SNMP face and/or a Modbus I/O face (see the module docstring)."""

    def __init__(self, plan: Plan = DEFAULT_PLAN, *, snmp: tuple[str, int] | None = ("127.0.0.1", 0),
                 modbus: tuple[str, int] | None = None, community: str = "public",
                 v3_user: tuple[str, str] | None = None, preempts: Mapping[int, int] | None = None,
                 clock: Callable[[], float] = time.time):
        self.controller = Controller(plan, dict(preempts or {1: 2, 2: 4}), clock)
        self.snmp = SnmpFace(self.controller, snmp, community, v3_user) if snmp else None
        self.modbus = ModbusFace(self.controller, modbus) if modbus else None

    @property
    def plan(self) -> Plan:
        return self.controller.plan

    @property
    def snmp_address(self) -> tuple[str, int]:
        assert self.snmp is not None and self.snmp.bound is not None, "no SNMP face running"
        return self.snmp.bound

    @property
    def modbus_address(self) -> tuple[str, int]:
        assert self.modbus is not None, "no Modbus face"
        return self.modbus.bound

    def view(self) -> View:
        return self.controller.view()

    def preempt_asserted(self, number: int) -> bool:
        """Whether anything (SNMP control or relay) asks the controller for preempt ``number``."""
        with self.controller.lock:
            return bool(self.controller.snmp_control.get(number) or self.controller.inputs.get(number))

    def silence(self, on: bool = True) -> None:
        """Stop (or resume) answering on every face, like a controller that lost power or its network."""
        if self.snmp:
            self.snmp.silent = on
        if self.modbus:
            self.modbus.silence(on)

    async def start(self) -> "SignalControllerSim":
        try:
            if self.snmp:
                await self.snmp.start()
            if self.modbus:
                await self.modbus.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        if self.modbus:
            await self.modbus.stop()
        if self.snmp:
            await self.snmp.stop()

    def run_in_thread(self, timeout: float = 10.0) -> "ThreadedSignalSim":
        return ThreadedSignalSim(self).start(timeout)


class ThreadedSignalSim:
    """A started simulator on its own event loop in a daemon thread; attributes pass through."""

    def __init__(self, sim: SignalControllerSim):
        self.sim = sim
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="signal-sim", daemon=True)

    def start(self, timeout: float = 10.0) -> "ThreadedSignalSim":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop).result(timeout)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sim, name)

    def __enter__(self) -> "ThreadedSignalSim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.hardware_sim.signal_controller",
        description="Traffic-signal controller simulator: a fixed-time plan over NTCIP 1202 (SNMP) "
                    "and a Modbus I/O module, with preemption.")
    parser.add_argument("--snmp", default="127.0.0.1:1161", help="UDP host:port for SNMP, or 'off' (default %(default)s)")
    parser.add_argument("--modbus", default="127.0.0.1:1502", help="TCP host:port for Modbus, or 'off' (default %(default)s)")
    parser.add_argument("--plan", choices=sorted(PLANS), default="default", help="timing plan (default %(default)s)")
    parser.add_argument("--community", default="public", help="SNMP v2c community, read and write (default %(default)s)")
    parser.add_argument("--v3-user", metavar="USER:AUTHKEY", help="also accept this SNMPv3 user (SHA, no privacy)")
    args = parser.parse_args(argv)
    v3 = tuple(args.v3_user.split(":", 1)) if args.v3_user else None
    sim = SignalControllerSim(PLANS[args.plan], snmp=None if args.snmp == "off" else _hostport(args.snmp),
                              modbus=None if args.modbus == "off" else _hostport(args.modbus),
                              community=args.community, v3_user=v3)  # type: ignore[arg-type]

    def started() -> None:
        if sim.snmp:
            print(f"SNMP   udp {sim.snmp_address[0]}:{sim.snmp_address[1]}  community {args.community!r}"
                  + (f", v3 user {v3[0]!r} (SHA)" if v3 else ""), flush=True)
        if sim.modbus:
            print(f"Modbus tcp {sim.modbus_address[0]}:{sim.modbus_address[1]}  unit 1, profile signal_io_module",
                  flush=True)
        print(f"plan {args.plan}: cycle {sim.plan.cycle:g}s; preempt 1 -> phase 2, preempt 2 -> phase 4", flush=True)

    def shown() -> str:
        view = sim.view()
        lights = " ".join(f"{p}:{c}" for p, c in view.vehicles.items())
        peds = " ".join(f"ped{p}:{s}" for p, s in view.peds.items())
        return f"{view.mode:5} {lights}  {peds}"

    return serve_until_interrupted(sim, started, shown)


def serve_until_interrupted(sim: Any, started: Callable[[], None], shown: Callable[[], str]) -> int:
    """A simulator's command line: start it, say where it listens, print a line each time what
    it shows changes, stop it on Ctrl-C."""
    async def serve() -> None:
        await sim.start()
        started()
        last = None
        try:
            while True:
                line = shown()
                if line != last:
                    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
                    last = line
                await asyncio.sleep(0.1)
        finally:
            await sim.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
