"""One station (one device of the config, one MN): checks its frames, answers them, reassembles
split uploads, turns uploads into readings, and keeps its online state and counters.

No I/O here: the transport kit (:mod:`agent.core.transport`, set up by :mod:`.server` and
:mod:`.serial_line`) feeds frames through :mod:`.router` and writes back the bytes these methods return.

What a frame gets (see README.md for the full table):

- malformed header (QN/ST/CN/Flag/MN/PNUM/PNO) → refused with the matching QnRtn (7/5/8/6/4/6)
  when the logger asked for an answer (or when its Flag is unreadable); not ingested;
- wrong PW (when ``password`` is configured) → QnRtn 3; ST other than the configured ``st`` →
  QnRtn 5; neither is ingested;
- a bad CRC or length with this station's MN → QnRtn 9 (CRC) or 2 (length) when asked;
- an accepted upload → 9014 when asked (each part of a split upload is answered); a station
  notification (1013) → 9013; any other accepted request → 9011 QnRtn=1;
- the station's own answers (9011..9014, to our 1012) → counted, never answered;
- data the agent does not take (its sink raises) → no answer, so the logger sends it again;
- the same upload again (same QN, CN and CP: our answer was lost) → answered, not ingested twice.

Online: the first accepted frame reports the station online; ``stale_after`` without one
reports it offline (also when it never sent anything since the agent started).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol

from agent.core.boundary import boundary
from agent.core.ratelimit import Throttle
from agent.core.clock import SYSTEM, Clock
from agent.core.model import DeviceSink, Event, Reading, now_ms
from firmware_bridges.hj212 import codes, replies
from firmware_bridges.hj212.frame import (
    QNRTN_FLAG, QNRTN_NAMES, QNRTN_PW, QNRTN_READY, QNRTN_REFUSED, QNRTN_ST, Frame, FrameError, check_header,
    digits,
)
from firmware_bridges.hj212.mapping import LocalClock, PointMapper, map_upload
from firmware_bridges.hj212.options import Options
from firmware_bridges.hj212.reassembly import Reassembler

log = logging.getLogger("firmware_bridges.hj212")
FRAMES = boundary("hj212")   # every frame of every listener and serial line passes it

RECENT_UPLOADS = 64  # uploads remembered per station to recognise a resend


class Session(Protocol):
    """A transport's connection (or serial port) as a station sees it."""

    name: str
    stations: set["Station"]


@dataclass(slots=True)
class StationStats:
    """Counters for `edge-agent status` (``Runner.stats()``)."""

    online: bool | None = None
    last_frame_ms: int | None = None
    last_read_ms: int | None = None
    frames: int = 0              # frames accepted from this MN
    readings: int = 0
    answers: int = 0             # frames sent to the logger (answers, clock settings)
    refused: int = 0             # frames answered with a refusal (QnRtn != 1)
    errors: int = 0              # refused + bad frames carrying this MN + undeliverable data
    bad_frames: int = 0          # bad CRC / length / structure, with this MN
    pw_errors: int = 0
    split_parts: int = 0
    split_dropped: int = 0
    bad_values: int = 0          # values that were not numbers (reported null, quality bad)
    station_answers: int = 0     # 9011..9014 the logger sent us
    duplicates: int = 0          # uploads sent again (our answer was lost): answered, not ingested again
    connections: int = 0         # open connections that carried this MN
    peer: str | None = None      # the last connection that did
    unmapped: list[str] = field(default_factory=list)   # codes/CNs seen but not turned into readings
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Station:
    def __init__(self, device_id: str, options: Options, sink: DeviceSink, password: str | None,
                 clock: Clock = SYSTEM):
        self.id = device_id
        self._monotonic = clock.monotonic   # online/stale timing; the runner's ticks read the same clock
        self.options = options
        self.mn = options.mn
        self.sink = sink
        self.password = password
        self.st = options.st_text
        self.clock = LocalClock(options.timezone)
        self.mapper = PointMapper(options.points, self.st, flag_points=options.flag_points)
        self.reassembler = Reassembler(timeout=max(60.0, options.stale_after))
        self.stats = StationStats()
        self.sessions: set[Session] = set()
        self.started = self._monotonic()
        self.last_frame = 0.0
        self.latest: dict[str, Reading] = {}     # the last reading of each point (device.read)
        self._recent: OrderedDict[tuple[str, str | None, int], None] = OrderedDict()   # see _upload_key
        self._throttle = Throttle(clock=self._monotonic)

    # -- frames -------------------------------------------------------------------------------

    def handle(self, frame: Frame, session: Session) -> list[bytes]:
        """Check, answer and ingest one frame whose MN is this station's."""
        stats = self.stats
        problem = check_header(frame)
        if problem is not None:
            unreadable_flag = problem.qnrtn == QNRTN_FLAG and frame.flag is None
            return self._refuse(frame, problem.qnrtn, problem.message, force=unreadable_flag)
        cn = frame.cn or ""
        if cn in codes.ANSWER_CNS:
            stats.station_answers += 1
            self._alive(session)
            return []
        if self.password is not None and frame.pw != self.password:
            stats.pw_errors += 1
            return self._refuse(frame, QNRTN_PW, "wrong PW (the logger's password differs from the config's)")
        if self.st is not None and frame.st != self.st:
            return self._refuse(frame, QNRTN_ST, f"ST {frame.st} differs from the configured st {self.st}")
        self._alive(session)
        answered = frame
        if frame.is_split:
            stats.split_parts += 1
            whole = self.reassembler.add(frame, self._monotonic())
            stats.split_dropped = self.reassembler.dropped
            if isinstance(whole, str):
                return self._refuse(frame, QNRTN_REFUSED, whole)
            if whole is None:
                return [self._accept_answer(frame)] if frame.wants_answer else []
            frame = whole      # ingest the joined upload; answer the part that completed it
        key = self._upload_key(frame)
        if key is not None and key in self._recent:
            # the logger missed our answer and sent the same upload again: answer, don't duplicate
            self.stats.duplicates += 1
            return [self._accept_answer(answered)] if answered.wants_answer else []
        extra: list[bytes] = []
        if not self._ingest(frame, extra):
            return []     # the agent could not take the data: no answer, so the logger sends it again
        if key is not None:
            self._recent[key] = None
            if len(self._recent) > RECENT_UPLOADS:
                self._recent.popitem(last=False)
        # the answer first: a clock setting (1012) may follow it
        out = [self._accept_answer(answered)] if answered.wants_answer else []
        return out + extra

    def unhandled(self, frame: Frame, exc: Exception) -> list[bytes]:
        """A frame the agent failed on (a bug, counted on the hj212 boundary by the router): its
        bytes go to the centre in a device.input_unhandled event, and it is refused (QnRtn 2)
        when it asked for an answer, rather than left for the logger to resend forever."""
        report = FRAMES.report(exc, frame.segment)
        if report is not None:
            try:
                self.sink.event(self.id, report)
            except Exception:   # noqa: BLE001 - the outbox's problem; the frame is counted already
                log.exception("sink rejected an event of %s", self.id)
        return self._refuse(frame, QNRTN_REFUSED, f"the agent could not handle this frame ({type(exc).__name__}; "
                                                  "see its log)")

    def handle_bad(self, error: FrameError, header: dict[str, str], session: Session) -> list[bytes]:
        """A frame with this station's MN that failed its CRC or length check: counted, and
        refused when it asked for an answer (its header is readable even if its CRC is not)."""
        stats = self.stats
        stats.bad_frames += 1
        stats.errors += 1
        stats.last_error = f"{error.reason}: {error.message}"
        self._log("bad", "station %s (MN %s) sent a bad frame on %s: %s", self.id, self.mn, session.name, error)
        flag = header.get("Flag", "")
        if not (digits(flag, 3) and int(flag) & 1):
            return []
        stats.refused += 1
        return [self._answer_frame("9011", header, f"QnRtn={error.qnrtn}")]

    # -- state --------------------------------------------------------------------------------

    def attach(self, session: Session) -> None:
        if session not in self.sessions:
            self.sessions.add(session)
            session.stations.add(self)
            self.stats.connections = len(self.sessions)
            self.stats.peer = session.name

    def detach(self, session: Session) -> None:
        self.sessions.discard(session)
        self.stats.connections = len(self.sessions)

    def tick(self, now: float) -> None:
        """Called about once a second: stale detection, expiry of split uploads."""
        if self.reassembler.pending and self.reassembler.expire(now):
            self.stats.split_dropped = self.reassembler.dropped
            self.stats.errors += 1
            self.stats.last_error = "a split upload never completed (parts missing)"
        stale_after = self.options.stale_after
        stats = self.stats
        if stats.online is True and now - self.last_frame > stale_after:
            connected = (f"{stats.connections} connection(s) open" if stats.connections
                         else "no connection from its logger")
            self._set_online(False, f"no valid frame from MN {self.mn} for {stale_after:g}s ({connected})")
        elif stats.online is None and now - self.started > stale_after:
            self._set_online(False, f"no frame from MN {self.mn} since the agent started: check the logger's "
                                    "server address/port and MN")

    # -- internals ----------------------------------------------------------------------------

    def _alive(self, session: Session) -> None:
        stats = self.stats
        stats.frames += 1
        stats.last_frame_ms = now_ms()
        self.last_frame = self._monotonic()
        self.attach(session)
        stats.peer = session.name
        if stats.online is not True:
            self._set_online(True, None)

    def _set_online(self, online: bool, error: str | None) -> None:
        was = self.stats.online
        self.stats.online = online
        if not online:
            self.stats.last_error = error
            log.warning("hj212 station %s: %s", self.id, error)
        elif was is False:
            log.info("hj212 station %s (MN %s) sends again", self.id, self.mn)
        try:
            self.sink.device_state(self.id, online=online, error=error)
        except Exception:   # the agent's problem must not stop the listener
            log.exception("sink rejected the state of %s", self.id)

    def _ingest(self, frame: Frame, out: list[bytes]) -> bool:
        """Hand what the frame carries to the agent; False when the agent refused it."""
        cn = frame.cn or ""
        stats = self.stats
        if cn in codes.PERIODS or cn in (codes.REALTIME_CN, codes.STATUS_CN, codes.RUNTIME_CN):
            received = now_ms()
            result = map_upload(cn, frame.cp, frame.qn, frame.st, received, self.mapper, self.clock)
            if result.time_problem:
                self._log("time", "station %s: %s; using the time of receipt", self.id, result.time_problem)
            if result.bad_values:
                stats.bad_values += result.bad_values
            for code in result.unmapped:
                self._note_unmapped(code)
            if result.readings:
                stats.readings += len(result.readings)
                stats.last_read_ms = result.data_time_ms
                latest = self.latest
                for reading in result.readings:
                    latest[reading.point] = reading
                try:
                    self.sink.readings(self.id, result.readings)
                except Exception:
                    stats.errors += 1
                    stats.last_error = "the agent did not accept the readings (see its log)"
                    log.exception("sink rejected readings of %s", self.id)
                    return False
        elif cn == codes.RESTART_CN:
            self._restart_event(frame)
        elif cn == codes.TIME_REQUEST_CN:
            if self.options.time_sync:
                out.append(self._set_time(frame))
        else:
            self._note_unmapped(f"CN {cn}")
        return True

    @staticmethod
    def _upload_key(frame: Frame) -> tuple[str, str | None, int] | None:
        """What identifies an upload to recognise its resend: QN, CN and the CP content (some
        loggers send one QN for ever; their new data must not be taken for a resend)."""
        return (frame.qn, frame.cn, hash(frame.cp)) if frame.qn else None

    def _restart_event(self, frame: Frame) -> None:
        data: dict[str, Any] = {"mn": self.mn}
        for item in frame.cp.split(";"):
            key, _, value = item.partition("=")
            if key == "RestartTime":
                data["restart_time"] = self.clock.to_ms(value) or value[:20]
        try:
            self.sink.event(self.id, Event("station.restart", "info", data))
        except Exception:
            log.exception("sink rejected an event of %s", self.id)

    def _set_time(self, frame: Frame) -> bytes:
        now = datetime.now(self.clock.zone)
        self.stats.answers += 1
        return replies.set_time(qn=replies.local_qn(self.clock.zone, now), st=self._answer_st(frame.st),
                                pw=self._pw(frame.pw), mn=self.mn, system_time=now.strftime("%Y%m%d%H%M%S"))

    def _note_unmapped(self, what: str) -> None:
        unmapped = self.stats.unmapped
        if what not in unmapped and len(unmapped) < 32:
            unmapped.append(what)
            log.info("hj212 station %s: %s is not mapped to a point (add it under 'points:' to name it)",
                     self.id, what)

    def _refuse(self, frame: Frame, qnrtn: int, why: str, *, force: bool = False) -> list[bytes]:
        stats = self.stats
        stats.errors += 1
        stats.last_error = f"refused ({QNRTN_NAMES.get(qnrtn, qnrtn)}): {why}"
        self._log(f"refuse{qnrtn}", "hj212 station %s: frame QN %s CN %s refused: %s", self.id,
                  (frame.qn or "-")[:20], (frame.cn or "-")[:8], why)
        if not (frame.wants_answer or force):
            return []
        stats.refused += 1
        return [self._answer_frame("9011", frame.header, f"QnRtn={qnrtn}")]

    def _accept_answer(self, frame: Frame) -> bytes:
        cn = frame.cn or ""
        if cn.startswith("2") or cn in codes.UPLOAD_CNS:
            return self._answer_frame("9014", frame.header, "")
        if cn in codes.NOTICE_CNS:
            return self._answer_frame("9013", frame.header, "")
        return self._answer_frame("9011", frame.header, f"QnRtn={QNRTN_READY}")

    def _answer_frame(self, cn: str, header: dict[str, str], cp: str) -> bytes:
        self.stats.answers += 1
        flag = header.get("Flag", "")
        version = int(flag) >> 2 if digits(flag, 3) else 0
        qn = header.get("QN", "")
        if not (digits(qn) and len(qn) in (14, 17)):
            qn = replies.local_qn(self.clock.zone)    # a malformed QN cannot be echoed in a valid frame
        answered = header.get("CN", "")
        return replies.answer(cn, cp, qn=qn, st=self._answer_st(header.get("ST")), pw=self._pw(header.get("PW")),
                              mn=self.mn, version=version,
                              answered_cn=answered if digits(answered, 4) else None)

    def _answer_st(self, frame_st: str | None) -> str:
        answer_st = self.options.answer_st
        if answer_st == "station":
            st = self.st or frame_st or "91"
            return st if digits(st, 2) else "91"
        return f"{answer_st:02d}"

    @staticmethod
    def _pw(frame_pw: str | None) -> str:
        # Echo the frame's PW, never the configured one: a refusal of a wrong PW must not tell
        # the sender the right one. (When the PW was right, the echo is the station's PW.)
        pw = frame_pw or ""
        return pw if pw.isascii() and pw.isalnum() and len(pw) <= 16 else ""

    def _log(self, key: str, message: str, *args: object) -> None:
        """The same complaint about one station at most once a minute."""
        self._throttle.warn(log, key, message, *args)


def latest_reading(stations: list[Station], device_id: str, point: str) -> Reading:
    """A station's last reading of a point; KeyError saying what exists otherwise."""
    station = next((s for s in stations if s.id == device_id), None)
    if station is None:
        raise KeyError(f"no hj212 station {device_id!r} here")
    try:
        return station.latest[point]
    except KeyError:
        known = ", ".join(sorted(station.latest)[:20]) or "none yet"
        raise KeyError(f"station {device_id} has not uploaded {point!r}; it has: {known}") from None
