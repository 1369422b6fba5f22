"""The bounded priority (preemption) request: ask, hold for a bounded time, always let go.

The controller owns signal safety: it decides how to get to the requested phase (yellow, all-red,
minimum greens). The agent only asserts the controller's preempt input (NTCIP preemptControlState
or a relay coil) and is responsible for taking it away again. It lets go:

- when the granted time runs out (the agent's own timer, not only the controller's max-presence);
- on :meth:`PriorityManager.release` (the centre said so);
- when the centre goes silent: no :meth:`heartbeat` for ``centre_silence``, or ``centre_alive(False)``;
- when the runner closes (agent shutdown, or a crashed runner being restarted).

Durations are clamped, not refused: a request below ``min_duration`` gets ``min_duration`` (a
one-second preempt would cost a yellow and an all-red for nothing); above ``max_duration`` it gets
``max_duration`` and the grant says ``clamped: true``. An ambulance is better served by 60 s it
can extend than by a refusal. A new request for the same phase extends the grant (from now), but
never past ``max_hold`` after it started. A request for another phase while one is held is
refused: one intersection serves one preempt at a time, and the centre must release first.

If the release cannot be written (controller offline), it is retried until it is, and the
controller's own backup timer (NTCIP unitBackupTime, a module's output watchdog) is the last line.
If the request write fails without an answer, the agent also releases: it cannot know whether the
controller took the request.

Every time here (holds, expiry, centre silence, re-assertion, release retries, the grant's UTC
stamps) is read from the manager's ``clock`` (:mod:`agent.core.clock`), so tests run it on virtual
time. The bound on a release at shutdown stays on real time: it guards I/O.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from agent.core.clock import SYSTEM, Clock
from agent.core.model import DeviceSink, Event
from firmware_bridges.signal_controller.errors import ControllerOffline, NoAnswer, PriorityRefused, Refused
from firmware_bridges.signal_controller.options import PhaseConfig, PriorityConfig
from firmware_bridges.signal_controller.phases import ControllerStatus

log = logging.getLogger("firmware_bridges.signal_controller")


class Actuator(Protocol):
    """What the priority manager needs from a link (NtcipLink, ModbusIoLink)."""

    @property
    def online(self) -> bool | None: ...

    async def set_preempt(self, number: int, on: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class PriorityGrant:
    """A priority the agent asked the controller for. Times are UTC epoch ms."""

    device_id: str
    phase: int
    approach: str | None
    preempt: int                 # NTCIP preempt number, or the coil address on a Modbus I/O module
    requested_s: float
    granted_s: float             # after clamping to min_duration..max_duration (and max_hold)
    clamped: bool
    started_ms: int
    expires_ms: int
    refreshed: bool = False      # this grant extended one already held
    source: str | None = None    # who asked (a command id), for the events

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Held:
    grant: PriorityGrant
    started: float               # monotonic
    expires: float
    next_assert: float
    green_at_ms: int | None = None


@dataclass(slots=True)
class PriorityStats:
    grants: int = 0
    refreshes: int = 0
    releases: int = 0
    release_failures: int = 0
    reassert_failures: int = 0
    pending_release: list[int] = field(default_factory=list)   # preempts whose release is still to be confirmed
    last_end_reason: str | None = None


class PriorityManager:
    """One device's priority request. Methods are called on the agent's event loop."""

    def __init__(self, device_id: str, config: PriorityConfig | None, phases: Mapping[int, PhaseConfig],
                 link: Actuator, sink: DeviceSink, clock: Clock = SYSTEM, release_retry: float | None = None):
        self.device_id = device_id
        self.config = config
        self.phases = phases
        self.link = link
        self.sink = sink
        self.clock = clock
        self.release_retry = release_retry   # the link's default where the config sets none
        self.stats = PriorityStats()
        self._held: _Held | None = None
        self._pending: dict[int, float] = {}   # preempt -> next retry (monotonic)
        self._lock = asyncio.Lock()
        self._wake: asyncio.Event | None = None
        self._last_heard: float | None = None
        self._centre_alive = True

    # -- the API the command layer calls (through the runner) -------------------------------------

    @property
    def active(self) -> PriorityGrant | None:
        return self._held.grant if self._held else None

    async def request(self, phase: int | None = None, *, approach: str | None = None, duration_s: float,
                      source: str | None = None) -> PriorityGrant:
        """Ask for priority for ``phase`` (or the phase serving ``approach``) for ``duration_s``.

        Returns the grant (check ``granted_s``/``clamped``). Raises PriorityRefused (bad request,
        another phase holds priority), ControllerOffline (the controller is not answering; nothing
        was asked of it, or what was asked is being taken back) or Refused (the controller said no).
        """
        config = self._config()
        phase = self._resolve(config, phase, approach)
        granted, clamped = self._clamp(config, duration_s)
        if self.link.online is False:
            raise ControllerOffline(f"{self.device_id} is offline: priority for phase {phase} was not requested")
        async with self._lock:
            held = self._held
            if held is not None and held.grant.phase != phase:
                raise PriorityRefused(f"{self.device_id}: phase {held.grant.phase} holds priority until "
                                      f"{_iso(held.grant.expires_ms)}; release it before asking for phase {phase}")
            number = config.preempts[phase]
            check = getattr(self.link, "check_request", None)   # a link that can tell a wrong mapping (GB/T 20999)
            if check is not None:
                check(number, phase)
            until = getattr(self.link, "hold_until", None)   # a link that records its hold (GB/T 20999)
            if until is not None:
                until(self._expiry_ms(held, config, granted))
            await self._assert(number, phase)
            now, wall = self.clock.monotonic(), self.clock.now_ms()
            self._last_heard = now   # a request is the centre talking
            self._centre_alive = True
            if held is not None:
                return self._extend(held, config, granted, clamped, duration_s, source, now, wall)
            grant = PriorityGrant(self.device_id, phase, self.phases[phase].approach, number, float(duration_s),
                                  granted, clamped, wall, wall + round(granted * 1000), source=source)
            self._held = _Held(grant, now, now + granted, now + config.reassert)
            self._pending.pop(number, None)   # asserted again: nothing left to take back
            self.stats.grants += 1
            log.info("%s: priority for phase %d (preempt %d) for %gs%s", self.device_id, phase, number, granted,
                     " (clamped)" if clamped else "")
            self._event("signal.priority_started", grant.as_dict())
            self._poke()
            return grant

    async def release(self, reason: str = "released") -> PriorityGrant | None:
        """Let go of the priority now. Returns the grant that ended, or None if none was held."""
        async with self._lock:
            return await self._end(reason)

    def heartbeat(self) -> None:
        """The centre is alive (the command layer calls this on every message from the centre)."""
        self._last_heard = self.clock.monotonic()
        self._centre_alive = True

    def centre_alive(self, alive: bool) -> None:
        """The uplink lost (False) or regained (True) the centre; False releases at once."""
        if alive:
            self.heartbeat()
            return
        self._centre_alive = False
        self._poke()

    def link_back(self) -> None:
        """The controller answers again: a release still to be written is tried now, not at its next retry."""
        if self._pending:
            now = self.clock.monotonic()
            for number in self._pending:
                self._pending[number] = now
            self._poke()

    def left_held(self, number: int) -> None:
        """A previous run was stopped while it held ``number`` (the link found its record): take
        it back like a release that failed, at once when the controller answers, and retried
        every ``release_retry`` until it lands."""
        self._pending.setdefault(number, self.clock.monotonic() + self._retry_interval())
        self._sync_pending()
        self._poke()

    def observe(self, status: ControllerStatus) -> None:
        """Each poll: note when the requested phase actually shows green (for logs and events)."""
        held = self._held
        if held is None or held.green_at_ms is not None:
            return
        lamp = status.vehicles.get(held.grant.phase)
        if lamp is not None and lamp.value == "green":
            held.green_at_ms = status.t
            log.info("%s: phase %d green %.1fs after the priority request", self.device_id, held.grant.phase,
                     (status.t - held.grant.started_ms) / 1000)

    # -- the watchdog ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Expiry, centre silence, re-assertion and release retries. Runs inside the runner's run()."""
        self._wake = asyncio.Event()
        while True:
            try:
                await self.clock.wait_for(self._wake.wait(), self._next_deadline())
            except TimeoutError:
                pass
            self._wake.clear()
            async with self._lock:
                await self._check()

    def _next_deadline(self) -> float:
        now = self.clock.monotonic()
        deadlines = [now + 1.0]
        held = self._held
        if held is not None and self.config is not None:
            deadlines += [held.expires, held.next_assert]
            if self.config.centre_silence is not None and self._last_heard is not None:
                deadlines.append(self._last_heard + self.config.centre_silence)
        deadlines += list(self._pending.values())
        return max(0.0, min(deadlines) - now)

    async def _check(self) -> None:
        now = self.clock.monotonic()
        held, config = self._held, self.config
        if held is not None and config is not None:
            silence = config.centre_silence
            if now >= held.expires:
                await self._end("expired")
            elif not self._centre_alive or (silence is not None and self._last_heard is not None
                                            and now - self._last_heard >= silence):
                await self._end("centre_silent")
            elif now >= held.next_assert:
                held.next_assert = now + config.reassert
                try:
                    await self.link.set_preempt(held.grant.preempt, True)
                except (NoAnswer, Refused) as exc:
                    self.stats.reassert_failures += 1
                    log.warning("%s: could not re-assert preempt %d: %s", self.device_id, held.grant.preempt, exc)
        for number, retry_at in list(self._pending.items()):
            if now >= retry_at:
                await self._take_back(number)

    async def shutdown(self) -> None:
        """Release whatever is held (runner close, agent shutdown), waiting at most release_timeout."""
        if self.config is None:
            return
        try:
            # real time: this bounds how long the agent's shutdown waits for the controller
            async with asyncio.timeout(self.config.release_timeout):
                async with self._lock:
                    await self._end("shutdown")
                    for number in list(self._pending):
                        await self._take_back(number)
        except TimeoutError:
            log.error("%s: priority release not confirmed within %gs at shutdown; the controller's own "
                      "timeout must end it", self.device_id, self.config.release_timeout)

    # -- internals ------------------------------------------------------------------------------

    def _config(self) -> PriorityConfig:
        if self.config is None:
            raise PriorityRefused(f"{self.device_id} has no 'priority' section in its config: priority is not "
                                  "available on this controller")
        return self.config

    def _resolve(self, config: PriorityConfig, phase: int | None, approach: str | None) -> int:
        preempts = config.preempts
        if phase is not None:
            if isinstance(phase, bool) or not isinstance(phase, int):
                raise PriorityRefused(f"phase must be a phase number, got {phase!r}")
            if phase not in preempts:
                raise PriorityRefused(f"{self.device_id}: phase {phase} has no preempt configured; priority is "
                                      f"available for phase(s) {', '.join(map(str, preempts))}")
            return phase
        if approach is None:
            raise PriorityRefused("name a phase or an approach")
        matches = [p for p in preempts if (self.phases[p].approach or "").lower() == str(approach).lower()]
        if len(matches) != 1:
            known = sorted({self.phases[p].approach for p in preempts if self.phases[p].approach})
            what = "no phase with a preempt serves" if not matches else "more than one phase serves"
            raise PriorityRefused(f"{self.device_id}: {what} approach {approach!r}; approaches with priority: "
                                  f"{', '.join(known) or 'none'} (or name the phase)")
        return matches[0]

    @staticmethod
    def _clamp(config: PriorityConfig, duration_s: float) -> tuple[float, bool]:
        if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not math.isfinite(duration_s):
            raise PriorityRefused(f"duration_s must be a number of seconds, got {duration_s!r}")
        if duration_s <= 0:
            raise PriorityRefused(f"duration_s must be positive, got {duration_s:g}")
        granted = min(max(float(duration_s), config.min_duration), config.max_duration)
        return granted, granted != duration_s

    def _expiry_ms(self, held: _Held | None, config: PriorityConfig, granted: float) -> int:
        """When the hold about to be (re)sent ends, as the grant or its extension will say."""
        wall = self.clock.now_ms()
        if held is None:
            return wall + round(granted * 1000)
        limit = held.grant.started_ms + round(config.hold_limit * 1000)
        return max(held.grant.expires_ms, min(wall + round(granted * 1000), limit))

    def _extend(self, held: _Held, config: PriorityConfig, granted: float, clamped: bool, requested: float,
                source: str | None, now: float, wall: int) -> PriorityGrant:
        limit = held.started + config.hold_limit
        expires = min(now + granted, limit)
        if expires < now + granted:
            clamped = True
            granted = max(0.0, expires - now)
        held.expires = max(held.expires, expires)   # an extension never shortens what was granted
        held.next_assert = now + config.reassert
        held.grant = replace(held.grant, requested_s=float(requested), granted_s=granted, clamped=clamped,
                             expires_ms=wall + round((held.expires - now) * 1000), refreshed=True,
                             source=source or held.grant.source)
        self.stats.refreshes += 1
        log.info("%s: priority for phase %d extended to %s", self.device_id, held.grant.phase,
                 _iso(held.grant.expires_ms))
        self._event("signal.priority_extended", held.grant.as_dict())
        self._poke()
        return held.grant

    async def _assert(self, number: int, phase: int) -> None:
        try:
            await self.link.set_preempt(number, True)
        except NoAnswer as exc:
            # the request may have reached the controller and only the answer got lost: take it back
            self._pending.setdefault(number, self.clock.monotonic())
            self._poke()
            raise ControllerOffline(f"{self.device_id} did not answer the priority request for phase {phase}: "
                                    f"{exc}") from None
        except Refused as exc:
            # the controller's error, or (GB/T 20999) the hold's record that could not be written
            raise Refused(f"{self.device_id}: preempt {number} (phase {phase}) refused: {exc}") from None

    async def _end(self, reason: str) -> PriorityGrant | None:
        held = self._held
        if held is None:
            return None
        self._held = None
        grant = held.grant
        confirmed, error = True, None
        try:
            await self.link.set_preempt(grant.preempt, False)
        except (NoAnswer, Refused) as exc:
            confirmed, error = False, str(exc)
            self.stats.release_failures += 1
            self._pending[grant.preempt] = self.clock.monotonic() + self._retry_interval()
            log.error("%s: releasing preempt %d failed (%s); retrying until the controller answers",
                      self.device_id, grant.preempt, exc)
        self.stats.releases += 1
        self.stats.last_end_reason = reason
        ended = self.clock.now_ms()
        log.info("%s: priority for phase %d ended (%s)", self.device_id, grant.phase, reason)
        data = {"phase": grant.phase, "approach": grant.approach, "preempt": grant.preempt, "reason": reason,
                "started_ms": grant.started_ms, "held_s": round((ended - grant.started_ms) / 1000, 3),
                "green_after_s": (None if held.green_at_ms is None
                                  else round((held.green_at_ms - grant.started_ms) / 1000, 3)),
                "release_confirmed": confirmed, "source": grant.source}
        if error:
            data["error"] = error
        self._event("signal.priority_ended", data)
        self._sync_pending()
        return grant

    async def _take_back(self, number: int) -> None:
        try:
            await self.link.set_preempt(number, False)
        except (NoAnswer, Refused) as exc:
            self._pending[number] = self.clock.monotonic() + self._retry_interval()
            log.debug("%s: release of preempt %d still failing: %s", self.device_id, number, exc)
        else:
            self._pending.pop(number, None)
            log.info("%s: preempt %d released", self.device_id, number)
            self._event("signal.priority_release_confirmed", {"preempt": number})
        self._sync_pending()

    def _retry_interval(self) -> float:
        if self.config is None:
            return 2.0
        if self.config.release_retry is not None:
            return self.config.release_retry
        return self.release_retry if self.release_retry is not None else self.config.reassert

    def _sync_pending(self) -> None:
        self.stats.pending_release = sorted(self._pending)

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        try:
            self.sink.event(self.device_id, Event(kind, "info", data))
        except Exception:   # noqa: BLE001 - the agent's problem must not stop a release
            log.exception("sink rejected event %s of %s", kind, self.device_id)

    def as_dict(self) -> dict[str, Any]:
        held = self._held
        out: dict[str, Any] = asdict(self.stats)
        out["active"] = held.grant.as_dict() if held else None
        if held is not None:
            out["remaining_s"] = round(max(0.0, held.expires - self.clock.monotonic()), 1)
        return out


def _iso(ms: int) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(ms / 1000))
