"""The violation rules, in image coordinates, over tracks.

Each rule sees every processed frame with the tracks updated in it and returns the violations it
decided. A violation carries three shots (frame, time, the subject's box) for the evidence:

| rule | shots | moment of the violation |
| --- | --- | --- |
| red_light | behind the stop line with the signal red, past it, further on (`confirm_distance`) | the crossing (interpolated between frames) |
| stop_line | behind the line, past it, stopped there on red for `dwell` | when the dwell is reached |
| wrong_way | furthest point along the lane, half way back, `min_distance` back | when `min_distance` is reached |
| illegal_parking | arrival in the zone, half the dwell, the dwell | when the dwell is reached |
| zone_intrusion | entry, half `min_time`, `min_time` | when `min_time` is reached |

Frames are kept by reference only where a shot needs them (a handful per track), never one per
history entry.

The red-light rule never looks at the lamp's pixels: the signal state comes from another device
(a signal controller's ``phase2``) through a :data:`SignalFn`, which the camera runner feeds from
the agent's latest readings and tests feed directly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from drivers.camera.geometry import Box, DirectedLine, Path, Pt, anchor, inside, iou
from drivers.camera.options import (
    IllegalParkingRule, RedLightRule, SignalSource, StopLineRule, WrongWayRule, ZoneIntrusionRule, rule_name,
)
from drivers.camera.tracker import Track, duplicate

# decisions not to report, at debug level: what a technician needs to see why a violation was missed
log = logging.getLogger("drivers.camera.rules")


@dataclass(frozen=True, slots=True)
class SignalState:
    colour: str                 # red, yellow, green, dark
    since: float | None         # when this colour was first seen in its current run (seconds), if known
    t: float                    # time of the reading used


# (source, t seconds) -> the signal's state at t, or None when unknown (not read, stale, bad quality)
SignalFn = Callable[[SignalSource, float], SignalState | None]


@dataclass(slots=True)
class Frame:
    """One processed frame as the rules and the evidence see it."""

    seq: int
    t: float                                   # seconds since the epoch, when the frame was taken
    image: Any                                 # BGR ndarray (None in tests that need no pictures)
    persons: tuple[tuple[int, Box], ...] = ()  # (track id, box) of every person in it, for face blurring


@dataclass(frozen=True, slots=True)
class Shot:
    frame: Frame
    box: Box                                   # the subject's box in that frame


@dataclass(slots=True)
class Violation:
    type: str                                  # red_light, stop_line, wrong_way, illegal_parking, zone_intrusion
    rule: str                                  # the rule's name
    severity: str
    track: int
    label: str
    score: float
    t: float                                   # the moment of the violation (seconds)
    shots: list[Shot]
    data: dict[str, Any] = field(default_factory=dict)
    decided: float = 0.0                       # frame time at which the rule decided it


@dataclass(slots=True)
class _Obs:
    t: float
    p: Pt
    box: Box
    frame: Frame
    along: float = 0.0      # wrong_way: how far along the lane


def _obs(track: Track, frame: Frame, at: float = 1.0) -> _Obs:
    return _Obs(frame.t, anchor(track.box, at), track.box, frame)


def continuous(a: Box, b: Box) -> bool:
    """Whether two boxes of one track in consecutive observations can be one road user moving: a
    detector that swapped two neighbours (or a box that grew over a second vehicle) jumps."""
    return iou(a, b) >= 0.3


class _RuleBase:
    def __init__(self, name: str, cfg: Any):
        self.name = name
        self.cfg = cfg
        self.done: set[int] = set()

    def eligible(self, track: Track) -> bool:
        return track.label in self.cfg.classes and track.best_score >= self.cfg.min_score

    def violation(self, track: Track, t: float, shots: list[_Obs], now: float, **data: Any) -> Violation:
        self.done.add(track.id)
        return Violation(self.cfg.type, self.name, self.cfg.severity, track.id, track.label,
                         round(track.best_score, 3), t, [Shot(o.frame, o.box) for o in shots],
                         {k: v for k, v in data.items() if v is not None}, now)

    def update(self, frame: Frame, tracks: list[Track]) -> list[Violation]:
        raise NotImplementedError

    def ended(self, tracks: list[Track]) -> None:
        """The tracker ended these tracks (confirmed or not): what was kept about them goes."""
        self.forget(t.id for t in tracks)

    def forget(self, track_ids: Iterable[int]) -> None:
        for track_id in track_ids:
            self.done.discard(track_id)
            for store in self._stores():
                store.pop(track_id, None)

    def _stores(self) -> list[dict]:
        return []


class _StopLineBase(_RuleBase):
    """The stop line, the signal it obeys, and each track's last side of the line."""

    def __init__(self, name: str, cfg: RedLightRule | StopLineRule, source: SignalSource, signal: SignalFn):
        super().__init__(name, cfg)
        self.line = DirectedLine(cfg.line, cfg.direction, cfg.extent)
        self.source = source
        self.signal = signal
        self.last: dict[int, tuple[_Obs, float]] = {}       # track -> (observation, side)

    def observe(self, frame: Frame,
                tracks: list[Track]) -> Iterator[tuple[Track, _Obs, float, tuple[_Obs, float] | None]]:
        """Each track seen in this frame and not yet judged: (track, observation, side of the line,
        the previous (observation, side) or None); the previous is replaced by this one."""
        for track in tracks:
            if track.last_t != frame.t or track.id in self.done:
                continue
            obs = _obs(track, frame, self.cfg.anchor)
            side = self.line.side(obs.p)
            previous = self.last.get(track.id)
            self.last[track.id] = (obs, side)
            yield track, obs, side, previous


class RedLight(_StopLineBase):
    """Crossing on red, then `confirm_distance` further on within `confirm_within`.

    A vehicle that stopped with its front at the line (its box jittering a pixel or two over it)
    "crosses" it on red without going anywhere, and may drive on soon after, on green. So when a
    crossing is confirmed, the moment the vehicle left the line (its anchor beyond LINE_BAND of it)
    is judged too: still red then, or it did not linger, it ran the red; green by then, it waited
    at the line and went on green: not a violation."""

    LINE_BAND = 0.04        # of the box's height: how far a stopped vehicle's anchor jitters over the line

    def __init__(self, name: str, cfg: RedLightRule, source: SignalSource, signal: SignalFn):
        super().__init__(name, cfg, source, signal)
        self.pending: dict[int, dict[str, Any]] = {}
        self.unknown_signal = 0                             # crossings with no signal state to judge them

    def _stores(self) -> list[dict]:
        return [self.last, self.pending]

    def update(self, frame: Frame, tracks: list[Track]) -> list[Violation]:
        out = []
        for track, obs, side, previous in self.observe(frame, tracks):
            pending = self.pending.get(track.id)
            if pending is not None:
                if frame.t - pending["t"] > self.cfg.confirm_within:
                    del self.pending[track.id]     # stopped over the line: not a red-light runner
                    self.done.add(track.id)
                    log.debug("%s: track %d not %.0f px on within %.1f s of its crossing: stopped over the line",
                              self.name, track.id, self.cfg.confirm_distance, self.cfg.confirm_within)
                elif side >= self.cfg.confirm_distance and frame.t > pending["cross"].t and self.eligible(track):
                    del self.pending[track.id]
                    if self._went_on_after_red(track, pending):
                        self.done.add(track.id)
                        continue
                    out.append(self.violation(track, pending["t"], [pending["before"], pending["cross"], obs],
                                              frame.t, signal=pending["state"].colour,
                                              red_for=round(pending["t"] - pending["state"].since, 2)
                                              if pending["state"].since is not None else None,
                                              phase_point=self.source.point_name, signal_device=self.source.device))
                continue
            if previous is None:
                continue
            before, before_side = previous
            if not (before_side < 0 <= side) or not (self.line.within(obs.p) or self.line.within(before.p)):
                continue
            if not continuous(before.box, obs.box) or frame.t - before.t > 1.0:
                continue
            t_cross = before.t + (frame.t - before.t) * (-before_side) / (side - before_side)
            state = self.signal(self.source, t_cross)
            if state is None:
                self.unknown_signal += 1
                continue
            if state.colour != "red":
                continue
            if self.cfg.grace and state.since is not None and t_cross - state.since < self.cfg.grace:
                continue
            self.pending[track.id] = {"t": t_cross, "before": before, "cross": obs, "state": state}
            log.debug("%s: track %d crossed at %.2f on red, at %s: waiting for it %.0f px further on", self.name,
                      track.id, t_cross, _px(obs.box), self.cfg.confirm_distance)
        return out

    def _went_on_after_red(self, track: Track, pending: dict[str, Any]) -> bool:
        """The vehicle lingered at the line after its crossing and left it when the signal was no
        longer red."""
        band = max(3.0, self.LINE_BAND * (track.box[3] - track.box[1]))
        later: tuple[float, float] | None = None
        for t, _, box in reversed(track.history):
            s = self.line.side(anchor(box, self.cfg.anchor))
            if s > band:
                later = (t, s)
                continue
            if t <= pending["cross"].t or later is None:
                return False                       # it drove through the line without stopping
            t_left = t + (later[0] - t) * (band - s) / (later[1] - s)
            state = self.signal(self.source, t_left)
            if state is None or state.colour == "red":
                return False
            log.debug("%s: track %d crossed at %.2f on red but stayed at the line until %.2f (%s): not counted",
                      self.name, track.id, pending["t"], t_left, state.colour)
            return True
        return False


class StopLine(_StopLineBase):
    """Past the stop line (seen crossing it), on red, standing still for `dwell`."""

    def __init__(self, name: str, cfg: StopLineRule, source: SignalSource, signal: SignalFn):
        super().__init__(name, cfg, source, signal)
        self.crossed: dict[int, tuple[_Obs, _Obs]] = {}    # track -> (before, past)

    def _stores(self) -> list[dict]:
        return [self.last, self.crossed]

    def update(self, frame: Frame, tracks: list[Track]) -> list[Violation]:
        out = []
        for track, obs, side, previous in self.observe(frame, tracks):
            if previous is not None and previous[1] < 0 <= side and self.line.within(obs.p):
                self.crossed[track.id] = (previous[0], obs)
            if side < 0:
                self.crossed.pop(track.id, None)   # backed up behind the line
                continue
            crossing = self.crossed.get(track.id)
            if crossing is None or side > self.cfg.max_distance or not self.eligible(track):
                continue
            if not _still_for(track, frame.t, self.cfg.dwell, self.cfg.still_px, self.cfg.anchor):
                continue
            state = self.signal(self.source, frame.t)
            if state is None or state.colour != "red":
                continue
            out.append(self.violation(track, frame.t, [crossing[0], crossing[1], obs], frame.t,
                                      signal=state.colour, past_line_px=round(side, 1),
                                      phase_point=self.source.point_name, signal_device=self.source.device))
        return out


def _still_for(track: Track, now: float, seconds: float, still_px: float, at: float = 1.0) -> bool:
    """The track's anchor stayed within ``still_px`` of where it is now for the last ``seconds``."""
    here = anchor(track.box, at)
    covered = False
    for t, _, box in reversed(track.history):
        if math.dist(anchor(box, at), here) > still_px:
            return False
        if now - t >= seconds:
            covered = True
            break
    return covered


def _at_rest_since(track: Track, now: float, still_px: float, at: float = 1.0) -> float | None:
    """The earliest time from which the track's anchor stayed within ``still_px`` of where it is
    now (as far back as its history reaches), or None when it was elsewhere in the last frame."""
    here = anchor(track.box, at)
    since = None
    outliers = 0
    for t, _, box in reversed(track.history):
        if math.dist(anchor(box, at), here) > still_px:
            outliers += 1
            if outliers > 2:          # one or two stretched boxes are not where it was
                break
            continue
        outliers = 0
        since = t
    return since


class WrongWay(_RuleBase):
    """Inside the lane, `min_distance` back from the furthest point reached along its direction."""

    def __init__(self, name: str, cfg: WrongWayRule):
        super().__init__(name, cfg)
        self.best: dict[int, _Obs] = {}     # furthest observation along the legal direction
        self.half: dict[int, _Obs] = {}
        self.path = Path(cfg.path) if cfg.path is not None else None
        self.previous: dict[int, _Obs] = {}
        self.steps: dict[int, int] = {}

    def _stores(self) -> list[dict]:
        return [self.best, self.half, self.previous, self.steps]

    def _in_lane(self, p: Pt) -> float | None:
        """How far along the lane p is (px), or None when p is not in the lane."""
        if self.path is not None:
            along, off = self.path.locate(p)
            return along if off <= self.cfg.width / 2 else None
        if not inside(p, self.cfg.zone):
            return None
        return p[0] * self.cfg.direction[0] + p[1] * self.cfg.direction[1]


    def _position(self, p: Pt) -> float:
        if self.path is not None:
            return self.path.locate(p)[0]
        return p[0] * self.cfg.direction[0] + p[1] * self.cfg.direction[1]

    def _whole_box_moved(self, then: Box, now: Box) -> bool:
        """Both ends of the box went back, not only one: a box that grows or shrinks (a vehicle
        coming out from behind another, a detector unsure of an edge) is not a vehicle moving."""
        need = 0.5 * self.cfg.min_distance
        return all(self._position(anchor(then, at)) - self._position(anchor(now, at)) >= need for at in (0.0, 1.0))

    def update(self, frame: Frame, tracks: list[Track]) -> list[Violation]:
        out = []
        for track in tracks:
            if track.last_t != frame.t or track.id in self.done:
                continue
            obs = _obs(track, frame, self.cfg.anchor)
            here = self._in_lane(obs.p)
            if here is None:
                self.best.pop(track.id, None)
                self.half.pop(track.id, None)
                continue
            obs.along = here
            best = self.best.get(track.id)
            previous = self.previous.get(track.id)
            self.previous[track.id] = obs
            if previous is not None and (not continuous(previous.box, obs.box) or here > previous.along + 2.0):
                best = None       # a jump (another vehicle's box) or a step the right way: start again here
            if best is None or here > best.along:
                self.best[track.id] = obs
                self.half.pop(track.id, None)
                self.steps[track.id] = 0
                continue
            self.steps[track.id] = self.steps.get(track.id, 0) + 1
            back = best.along - here
            if back >= self.cfg.min_distance / 2 and track.id not in self.half:
                self.half[track.id] = obs
            if (back >= self.cfg.min_distance and frame.t - best.t >= self.cfg.min_time and self.steps[track.id] >= 3
                    and self._whole_box_moved(best.box, obs.box) and self.eligible(track)):
                half = self.half.get(track.id, obs)
                out.append(self.violation(track, frame.t, [best, half, obs], frame.t,
                                          against_px=round(back, 1),
                                          speed_px_s=round(back / max(frame.t - best.t, 1e-3), 1)))
        return out


def _px(box: Box) -> str:
    return "(" + ",".join(str(round(v)) for v in box) + ")"


@dataclass(slots=True)
class _Ghost:
    """A parked vehicle's clock kept after its track ended or its box left the zone, until it may
    be found again (``until``)."""
    until: float
    entry: _Obs
    half: _Obs | None
    owner: int                 # the track it belonged to
    reported: bool             # its violation was already decided


class _Dwell(_RuleBase):
    """In the zone for `seconds` (and, for parking, not moving more than `still_px`)."""

    seconds: float
    still_px: float | None = None
    label_kind = "dwell"
    LOST_KEEP = 60.0        # seconds an ended track's clock waits to be found again (parking only)
    JUMP_KEEP = 3.0         # the same for a box that left the zone
    MOVED_AFTER = 3         # observations in a row beyond still_px that make a move
    NO_OWNER = -1           # a ghost no live track may take back as its own (ids start at 1)

    def __init__(self, name: str, cfg: Any):
        super().__init__(name, cfg)
        self.entry: dict[int, _Obs] = {}
        self.half: dict[int, _Obs] = {}
        self.away: dict[int, int] = {}        # observations in a row beyond still_px of the entry
        self.moved: dict[int, tuple[float, _Obs, _Obs | None]] = {}   # last "move": when, the clock before it
        self.carried: set[int] = set()        # tracks taken over by another vehicle (_carried_off)
        self.ghosts: list[_Ghost] = []
        self.not_counted: set[int] = set()    # done without being anyone: no one to be a second box of
        self.last_t = 0.0

    def _stores(self) -> list[dict]:
        return [self.entry, self.half, self.away, self.moved]

    def forget(self, track_ids: Iterable[int]) -> None:
        ids = list(track_ids)
        for track_id in ids:
            self.not_counted.discard(track_id)
            self.carried.discard(track_id)
            if self.still_px is not None and track_id in self.entry:
                # a passing bus can hide a parked car for a while; one already reported is kept
                # too, or its new track would be reported again a dwell later
                self.ghosts.append(_Ghost(self.last_t + self.LOST_KEEP, self.entry[track_id], self.half.get(track_id),
                                          track_id, track_id in self.done))
        super().forget(ids)

    def _entered(self, track: Track, obs: _Obs) -> _Obs:
        """The observation a track's clock in the zone starts from, on its first frame inside."""
        return obs

    def _restore(self, track_id: int, entry: _Obs, half: _Obs | None) -> None:
        """A clock kept aside (a ghost's, or the one before a "move") is the track's again."""
        self.entry[track_id] = entry
        if half is not None:
            self.half[track_id] = half
        else:
            self.half.pop(track_id, None)
        self.away.pop(track_id, None)

    def _taken_over(self, track: Track) -> bool:
        """The track moves seen as another kind of vehicle than it has been (a bus passing close
        took over a parked car's track), for the first time."""
        return track.seen_as != track.label and track.id not in self.carried

    def _carried_off(self, track: Track, entry: _Obs, half: _Obs | None, obs: _Obs) -> None:
        """The parked car whose track was taken over is likely still there, hidden behind what
        took it: its clock waits for a track born where it stood, as a lost track's does, and no
        longer belongs to this one, whose driving off says nothing about the car."""
        self.carried.add(track.id)
        self.ghosts.append(_Ghost(self.last_t + self.LOST_KEEP, entry, half, self.NO_OWNER, False))
        self.away[track.id] = 0
        log.debug("%s: track %d at %s is seen as a %s: the %s's clock from %.1f is kept where it stood", self.name,
                  track.id, _px(obs.box), track.seen_as, track.label, entry.t)

    def _gone_from(self, track_id: int, entry: _Obs, obs: _Obs) -> bool:
        """Whether a vehicle drove off from where it stood: MOVED_AFTER observations in a row
        further from it than half the diagonal of its box there. A box that only jumped (grown
        over a neighbour, cut by the frame's edge) stays closer."""
        x1, y1, x2, y2 = entry.box
        away = math.dist(obs.p, entry.p) > 0.5 * math.hypot(x2 - x1, y2 - y1)
        self.away[track_id] = self.away.get(track_id, 0) + 1 if away else 0
        return self.away[track_id] >= self.MOVED_AFTER

    def _watch_departure(self, track_id: int, obs: _Obs) -> None:
        """A reported vehicle that drove off leaves no ghost when its track ends, or the next car
        to park there would take over its reported clock and go unreported."""
        entry = self.entry.get(track_id)
        if self.still_px is not None and entry is not None and self._gone_from(track_id, entry, obs):
            del self.entry[track_id]
            log.debug("%s: track %d (reported) drove off", self.name, track_id)

    def _adopt(self, track: Track, obs: _Obs, now: float) -> _Ghost | None:
        """A track that lost its id (occluded by a passing bus, taken over by a car passing close)
        comes back as a new one *born* at the same place: it keeps the arrival time. A vehicle that
        drove there is another one (the next car in a queue stopping where the last one stood), as
        is one that only passes through the ghost's box."""
        self.ghosts = [g for g in self.ghosts if now <= g.until]
        born = track.history[0][2] if track.history else obs.box
        for i, ghost in enumerate(self.ghosts):
            if iou(ghost.entry.box, obs.box) > 0.5 and (ghost.owner == track.id or iou(ghost.entry.box, born) > 0.5):
                del self.ghosts[i]
                return ghost
        return None

    def _once_each(self, found: list[Violation], tracks: list[Track], frame: Frame,
                   judged: set[int]) -> list[Violation]:
        """Drop a violation whose track is a second box on a road user already reported (or
        judged) and still tracked: two tracks on one parked car, or on one person, are one
        violation (a detector's second box, a track born while the first was briefly unmatched)."""
        if not found:
            return found
        seen = {t.id: t for t in tracks}
        kept: list[Violation] = []
        counted = set(judged)              # grows with each violation kept in this frame
        for violation in found:
            mine = seen.get(violation.track)
            same = None if mine is None else next(
                (o for o in seen.values() if o.id != mine.id and o.id in counted and duplicate(o.box, mine.box)), None)
            if same is None:
                kept.append(violation)
                counted.add(violation.track)
            else:
                log.debug("%s: track %d at %s is track %d again: not counted", self.name, mine.id, _px(mine.box), same.id)
        return kept

    def update(self, frame: Frame, tracks: list[Track]) -> list[Violation]:
        out: list[Violation] = []
        judged = self.done - self.not_counted
        self.last_t = frame.t
        for track in tracks:
            if track.last_t != frame.t or track.label not in self.cfg.classes:
                continue
            obs = _obs(track, frame, self.cfg.anchor)
            if track.id in self.done:
                self._watch_departure(track.id, obs)
                continue
            if not inside(obs.p, self.cfg.zone):
                entry = self.entry.pop(track.id, None)
                half = self.half.pop(track.id, None)
                if entry is not None and self.still_px is not None and self._taken_over(track):
                    self._carried_off(track, entry, half, obs)
                elif entry is not None and self.still_px is not None:
                    # a box that jumped (a car cut by the frame's edge, another one passing close)
                    # may come back where it was: briefly, the clock is kept for it
                    self.ghosts.append(_Ghost(frame.t + self.JUMP_KEEP, entry, half, track.id, False))
                    self.away[track.id] = 0
                elif self.still_px is not None:
                    ghost = next((g for g in self.ghosts if g.owner == track.id), None)
                    if ghost is not None and self._gone_from(track.id, ghost.entry, obs):
                        self.ghosts.remove(ghost)        # it drove off: nothing to come back to
                continue
            entry = self.entry.get(track.id)
            if entry is None:
                ghost = self._adopt(track, obs, frame.t) if self.still_px is not None else None
                if ghost is not None:
                    self._restore(track.id, ghost.entry, ghost.half)
                    if ghost.reported:
                        self.done.add(track.id)       # the vehicle already reported, under a new id
                    log.debug("%s: track %d at %s takes over the clock of track %d from %.1f%s", self.name, track.id,
                              _px(obs.box), ghost.owner, ghost.entry.t, " (reported)" if ghost.reported else "")
                else:
                    self.entry[track.id] = self._entered(track, obs)
                    self.away.pop(track.id, None)
                    log.debug("%s: track %d enters at %s", self.name, track.id, _px(obs.box))
                continue
            away = self.still_px is not None and math.dist(obs.p, entry.p) > self.still_px
            self.away[track.id] = self.away.get(track.id, 0) + 1 if away else 0
            if away and self.away[track.id] >= self.MOVED_AFTER:
                # it moved (for MOVED_AFTER observations in a row: one box stretched by a passing
                # car is not a move): the clock starts again from when it came to rest where it is
                # now. A car that rolls the last few pixels to a stop came to rest before it was
                # that far from where the clock last started.
                self.away[track.id] = 0
                before = self.moved.pop(track.id, None)
                if self._taken_over(track):
                    self._carried_off(track, entry, self.half.pop(track.id, None), obs)
                    self.entry[track.id] = obs         # whatever carries the track now starts its own
                    continue
                if before is not None and frame.t - before[0] <= self.JUMP_KEEP and \
                        math.dist(obs.p, before[1].p) <= self.still_px:
                    # back where it stood before a "move" a moment ago: its box was pulled aside (a
                    # passer-by or a passing car merged into it), the car never left: its clock goes on
                    self._restore(track.id, before[1], before[2])
                    entry = before[1]
                    log.debug("%s: track %d is back at %s: its clock from %.1f goes on", self.name, track.id,
                              _px(obs.box), entry.t)
                else:
                    self.moved[track.id] = (frame.t, entry, self.half.get(track.id))
                    log.debug("%s: track %d moved to %s: its clock starts again", self.name, track.id, _px(obs.box))
                    since = _at_rest_since(track, frame.t, self.still_px, self.cfg.anchor)
                    self.entry[track.id] = _Obs(max(since, track.history[0][0]) if since else frame.t,
                                                obs.p, obs.box, obs.frame)
                    self.half.pop(track.id, None)
                    entry = self.entry[track.id]
                    if frame.t - entry.t < self.seconds / 2:
                        continue
            held = frame.t - entry.t
            if held >= self.seconds / 2 and track.id not in self.half:
                self.half[track.id] = obs
            if held >= self.seconds and self.eligible(track):
                half = self.half.get(track.id, obs)
                out.append(self.violation(track, entry.t + self.seconds, [entry, half, obs], frame.t,
                                          **{self.label_kind: round(held, 1)}))
        return self._once_each(out, tracks, frame, judged)


class IllegalParking(_Dwell):
    label_kind = "dwell_s"

    def __init__(self, name: str, cfg: IllegalParkingRule):
        super().__init__(name, cfg)
        self.seconds = cfg.dwell
        self.still_px = cfg.still_px


@dataclass(slots=True)
class _Gone:
    """A person's track that ended, kept a while for a new track that may continue it."""
    t: float                   # last seen
    box: Box                   # where
    reported: bool
    outside: bool              # it had been seen outside the zone
    entry: _Obs | None         # its first moment in the zone, if it got there


class ZoneIntrusion(_Dwell):
    """A dwell in the zone, once per person, counted when they cross its edge (``from_outside``).

    Tracks break: a person hidden behind a vehicle comes back under a new id. A new track that
    starts near where another one of the same kind ended, soon before (within the distance a
    person walks in the time since), is taken as that person:
    it is not reported again if the old one was, and it counts as having come from outside if the
    old one had been seen there, even in detections too few to confirm it (someone glimpsed on the
    kerb between two passing cars); if the old one was already in the zone, the new one has been
    there since (reported as soon as it is seen, once ``min_time`` has passed), and if not, it
    stepped in while unseen, when a straight walk from the one sighting to the other crossed the
    edge (the way the red-light rule dates a crossing between two frames). Something that
    shows up in the middle of the zone with no such predecessor (a detector's mistake on a shadow
    or on a vehicle's flank) is not counted, nor is one that sits still across the zone's edge (a
    mistake on a road marking, its box jittering over the edge): a person who crosses it walks at
    least ``WALKED`` of their height."""

    label_kind = "in_zone_s"
    CONTINUE_WITHIN = 10.0       # seconds after a track ended
    REACH = 2.0                  # body heights from where it ended, at once ...
    WALK = 0.8                   # ... plus this many a second since (1.4 m/s, a walk) ...
    REACH_MAX = 4.0              # ... up to this many: further, a false box can vouch for another
    WALKED = 0.3                 # body heights a person's feet moved on their own track to count
    CROSSING_STEPS = 20          # points tried along a step in between two sightings (_crossing)
    TWIN_ACROSS = 0.4            # a second box on one person (_twin): shared width ...
    TWIN_ALONG = 0.7             # ... and shared height, of the smaller box

    def __init__(self, name: str, cfg: ZoneIntrusionRule):
        super().__init__(name, cfg)
        self.seconds = cfg.min_time
        self.still_px = None
        self.seen_outside: set[int] = set()
        self.first_in: set[int] = set()                       # tracks whose first moment in the zone was judged
        self.ended_tracks: list[_Gone] = []
        self.came_back: set[int] = set()                      # tracks continuing one that was outside
        self.continued = 0                                     # new tracks taken for a reported person
        self.appeared_inside = 0                               # tracks first seen in the zone, from nowhere

    def _outside(self, box: Box) -> bool:
        return not inside(anchor(box, self.cfg.anchor), self.cfg.zone)

    def _was_outside(self, track: Track) -> bool:
        """Seen outside the zone: as a confirmed track, or in any detection it kept."""
        return track.id in self.seen_outside or any(self._outside(entry[2]) for entry in track.history)

    def ended(self, tracks: list[Track]) -> None:
        for track in tracks:
            if track.label in self.cfg.classes:
                self.ended_tracks.append(_Gone(track.last_t, track.box, track.id in self.done, self._was_outside(track),
                                               self.entry.get(track.id)))
        if self.ended_tracks:   # bounded: people walking past on the pavement all day end tracks too
            newest = max(e.t for e in self.ended_tracks)
            self.ended_tracks = [e for e in self.ended_tracks if newest - e.t < self.CONTINUE_WITHIN][-200:]
        super().ended(tracks)

    def forget(self, track_ids: Iterable[int]) -> None:
        ids = list(track_ids)
        for track_id in ids:
            self.seen_outside.discard(track_id)
            self.first_in.discard(track_id)
            self.came_back.discard(track_id)
        super().forget(ids)

    def eligible(self, track: Track) -> bool:
        if not super().eligible(track):
            return False
        return not self.cfg.from_outside or track.id in self.came_back or self._walked(track)

    def _walked(self, track: Track) -> bool:
        """The feet moved WALKED of a body height on this track (a person hidden and found again
        walked while hidden: ``came_back``)."""
        at = self.cfg.anchor
        here = anchor(track.box, at)
        far = self.WALKED * (track.box[3] - track.box[1])
        return any(math.dist(anchor(entry[2], at), here) >= far for entry in track.history)

    def _predecessor(self, box: Box, now: float) -> _Gone | None:
        """The ended track this new one continues, if any (and forget it)."""
        self.ended_tracks = [e for e in self.ended_tracks if now - e.t < self.CONTINUE_WITHIN]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        best: tuple[float, int] | None = None
        for i, gone in enumerate(self.ended_tracks):
            old = gone.box
            heights = min(self.REACH_MAX, max(self.REACH, 1.0 + self.WALK * (now - gone.t)))
            reach = heights * max(box[3] - box[1], old[3] - old[1])
            d = math.dist((cx, cy), ((old[0] + old[2]) / 2, (old[1] + old[3]) / 2))
            if d <= reach and (best is None or d < best[0]):
                best = (d, i)
        return None if best is None else self.ended_tracks.pop(best[1])

    def _twin(self, track: Track, tracks: list[Track], frame: Frame) -> Track | None:
        """A person already counted in the zone, seen in this frame, whom this new track's box
        stands on: the same column of pixels (at least TWIN_ACROSS of the narrower box's width)
        and nearly the same height span (TWIN_ALONG of the shorter one). NMS lets through a second
        box on one person that overlaps the first by less than the tracker's duplicate test; people
        side by side do not share a column."""
        x1, y1, x2, y2 = track.box
        for other in tracks:
            if other.id == track.id or other.last_t != frame.t or other.label not in self.cfg.classes:
                continue
            if other.id not in self.done and other.id not in self.entry:
                continue
            ox1, oy1, ox2, oy2 = other.box
            across = (min(x2, ox2) - max(x1, ox1)) / max(min(x2 - x1, ox2 - ox1), 1e-6)
            along = (min(y2, oy2) - max(y1, oy1)) / max(min(y2 - y1, oy2 - oy1), 1e-6)
            if across >= self.TWIN_ACROSS and along >= self.TWIN_ALONG:
                return other
        return None

    def _crossing(self, a: Pt, t_a: float, b: Pt, t_b: float) -> float:
        """On a straight walk at an even pace from ``a`` (outside) to ``b`` (inside), when the first
        point inside was reached."""
        for k in range(1, self.CROSSING_STEPS + 1):
            f = k / self.CROSSING_STEPS
            if inside((a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f), self.cfg.zone):
                return t_a + (t_b - t_a) * f
        return t_b

    def _entered(self, track: Track, obs: _Obs) -> _Obs:
        """Stepping in between two frames: the clock starts when the edge was crossed, interpolated
        between the last position outside and the first inside (as the red-light rule dates its
        crossing), not at the first frame inside, up to a frame later."""
        if len(track.history) >= 2:
            t_a, _, box = track.history[-2]
            a = anchor(box, self.cfg.anchor)
            if obs.t - t_a <= 1.0 and not inside(a, self.cfg.zone):
                return _Obs(self._crossing(a, t_a, obs.p, obs.t), obs.p, obs.box, obs.frame)
        return obs

    def update(self, frame: Frame, tracks: list[Track]) -> list[Violation]:
        for track in tracks:
            if track.last_t != frame.t or track.label not in self.cfg.classes:
                continue
            if self._outside(track.box):
                self.seen_outside.add(track.id)
                continue
            if track.id in self.first_in or track.id in self.done:
                continue
            self.first_in.add(track.id)
            twin = self._twin(track, tracks, frame)
            if twin is not None:
                self.done.add(track.id)
                self.not_counted.add(track.id)
                log.debug("%s: track %d at %s is a second box on track %d: not counted", self.name, track.id,
                          _px(track.box), twin.id)
                continue
            if self._was_outside(track):          # before it was confirmed
                self.seen_outside.add(track.id)
            came_from = self._predecessor(track.box, frame.t) if track.id not in self.seen_outside else None
            if came_from is not None:
                log.debug("%s: track %d at %s continues one that ended at %s %.1f s before (%s)", self.name, track.id,
                          _px(track.box), _px(came_from.box), frame.t - came_from.t,
                          "reported" if came_from.reported else "from outside" if came_from.outside else "inside")
            if came_from is not None and came_from.reported:
                self.done.add(track.id)               # the person already reported
                self.continued += 1
            elif came_from is not None and came_from.outside:
                self.seen_outside.add(track.id)       # came in from outside before the break ...
                self.came_back.add(track.id)
                if came_from.entry is not None:       # ... and has been in the zone since before it
                    self.entry[track.id] = came_from.entry
                else:                                 # ... and stepped in while unseen
                    obs = _obs(track, frame, self.cfg.anchor)
                    stepped_in = self._crossing(anchor(came_from.box, self.cfg.anchor), came_from.t, obs.p, obs.t)
                    self.entry[track.id] = _Obs(stepped_in, obs.p, obs.box, obs.frame)
            elif self.cfg.from_outside and track.id not in self.seen_outside:
                self.done.add(track.id)
                self.not_counted.add(track.id)
                self.appeared_inside += 1
                log.debug("%s: track %d first seen inside at %s, not from outside: not counted", self.name, track.id,
                          _px(track.box))
        return super().update(frame, tracks)



class RuleSet:
    """The rules of one camera."""

    def __init__(self, rules: list[Any], signal: SignalFn | None = None, default_source: SignalSource | None = None):
        self.rules: list[_RuleBase] = []
        self.reported: set[tuple[str, int]] = set()
        for index, cfg in enumerate(rules):
            name = rule_name(cfg, index)
            if isinstance(cfg, (RedLightRule, StopLineRule)):
                source = cfg.signal or default_source
                if source is None or signal is None:
                    raise ValueError(f"rule {name} needs a signal source")
                self.rules.append((RedLight if isinstance(cfg, RedLightRule) else StopLine)(name, cfg, source, signal))
            elif isinstance(cfg, WrongWayRule):
                self.rules.append(WrongWay(name, cfg))
            elif isinstance(cfg, IllegalParkingRule):
                self.rules.append(IllegalParking(name, cfg))
            elif isinstance(cfg, ZoneIntrusionRule):
                self.rules.append(ZoneIntrusion(name, cfg))
            else:
                raise ValueError(f"unknown rule {cfg!r}")

    def update(self, frame: Frame, tracks: list[Track], ended: Iterable[Track] = (), min_hits: int = 1) -> list[Violation]:
        ended = list(ended)
        ended_ids = [t.id for t in ended]
        for rule in self.rules:
            rule.ended(ended)
        self.reported = {key for key in self.reported if key[1] not in set(ended_ids)}
        ready = [t for t in tracks if t.hits >= min_hits]
        out = []
        for rule in self.rules:
            for violation in rule.update(frame, ready):
                # one road user, one violation of a kind: lanes drawn to overlap do not count it twice
                key = (violation.type, violation.track)
                if key not in self.reported:
                    self.reported.add(key)
                    out.append(violation)
        return out

    @property
    def wants_signal(self) -> list[SignalSource]:
        return [r.source for r in self.rules if isinstance(r, (RedLight, StopLine))]

    def stats(self) -> dict[str, int]:
        return {"unknown_signal": sum(getattr(r, "unknown_signal", 0) for r in self.rules)}


class SignalBoard:
    """The recent history of signal readings, fed from the agent's latest readings (on the event
    loop) and read by the rules (on the pipeline thread). Appends and reads of a deque are atomic
    under the GIL; a reader sees a consistent prefix."""

    def __init__(self, keep: float = 120.0):
        from collections import deque
        self.keep = keep
        self._history: dict[tuple[str, str], deque] = {}

    def feed(self, device: str, point: str, value: Any, t: float, quality: str = "good") -> None:
        from collections import deque
        history = self._history.setdefault((device, point), deque(maxlen=4096))
        if history and history[-1][0] >= t:
            return   # the same reading again
        history.append((t, value, quality))
        while history and history[0][0] < t - self.keep:
            history.popleft()

    def __call__(self, source: SignalSource, t: float) -> SignalState | None:
        history = self._history.get((source.device, source.point_name))
        if not history:
            return None
        entries = list(history)
        index = None
        for i in range(len(entries) - 1, -1, -1):
            if entries[i][0] <= t:
                index = i
                break
        if index is None:
            return None
        at, value, quality = entries[index]
        if quality != "good" or t - at > source.max_age or not isinstance(value, str):
            return None
        since: float | None = at
        j = index
        while j > 0 and entries[j - 1][1] == value and entries[j - 1][2] == "good":
            j -= 1
        since = entries[j][0] if j > 0 else None   # the run reaches back past what we remember: unknown start
        return SignalState(value, since, at)
