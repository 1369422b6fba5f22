"""Routes what one link's :class:`~.frame.StreamFramer` cut to the stations, by MN.

One router per listener (or serial port), with the stations configured on it; one
:class:`StreamSession` per link (a TCP connection, the serial port), made for the transport kit
(:mod:`agent.core.transport`), which reads the bytes, enforces the limits and writes the answers.
A frame from an MN no station has is counted, logged once per MN, and ignored (no answer: an
unknown logger learns nothing). A bad frame whose header still names a known MN goes to that
station (which may refuse it); other bad frames are counted here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.core.transport import Link, TransportStats
from agent.core.ratelimit import Throttle
from firmware_bridges.hj212.frame import Frame, FrameError, StreamFramer, lenient_header
from firmware_bridges.hj212.station import FRAMES, Session, Station

log = logging.getLogger("firmware_bridges.hj212")

MAX_REMEMBERED_UNKNOWN = 1000


@dataclass(slots=True)
class ListenerStats(TransportStats):
    """Counters of one listener (or serial port) that belong to no station: the transport's
    (connections, accepted, refused_connections, timed_out, flooded) and these."""

    unknown_mn_frames: int = 0
    unknown_mns: int = 0
    bad_frames: int = 0            # bad frames not attributable to a station
    garbage_bytes: int = 0
    last_error: str | None = None


class Router:
    def __init__(self, name: str, stations: list[Station]):
        self.name = name
        self.stations: dict[str, Station] = {s.mn: s for s in stations}
        self.stats = ListenerStats()
        self._unknown: set[str] = set()
        self._throttle = Throttle()

    def handle(self, items: list[Frame | FrameError], session: Session) -> list[bytes]:
        """Answers to write back for what one read produced."""
        out: list[bytes] = []
        for item in items:
            try:
                out += self._one(item, session)
            except Exception as exc:   # noqa: BLE001 - a bug meeting this frame: see agent/core/boundary.py
                out += self._unhandled(item, exc, session)
        return out

    def _one(self, item: Frame | FrameError, session: Session) -> list[bytes]:
        if isinstance(item, Frame):
            station = self.stations.get(item.mn or "")
            if station is None:
                self._unknown_mn(item.mn, session)
                return []
            return station.handle(item, session)
        header = lenient_header(item.segment) if item.segment is not None else {}
        station = self.stations.get(header.get("MN", "")) if header else None
        if station is not None:
            return station.handle_bad(item, header, session)
        self.stats.bad_frames += 1
        self.stats.last_error = f"{item.reason}: {item}"
        self._throttle.warn(log, "bad", "hj212 %s: bad frame from %s: %s", self.name, session.name, item)
        return []

    def _unhandled(self, item: Frame | FrameError, exc: Exception, session: Session) -> list[bytes]:
        """Counted and logged (agent/core/boundary.py); a frame of a known station goes on to the centre
        as a device.input_unhandled event and is refused if it asked for an answer, so the logger
        does not send it again and again."""
        segment = item.segment if isinstance(item, Frame) else (item.segment or "")
        FRAMES.failed(exc, segment, where=session.name)
        station = self.stations.get(item.mn or "") if isinstance(item, Frame) else None
        if station is None:
            return []
        try:
            return station.unhandled(item, exc)
        except Exception:   # noqa: BLE001 - the frame is already counted; nothing more to say to the logger
            log.debug("hj212 %s: answering an unhandled frame failed too", self.name, exc_info=True)
            return []

    def _unknown_mn(self, mn: str | None, session: Session) -> None:
        self.stats.unknown_mn_frames += 1
        key = (mn or "")[:40]
        if key in self._unknown:
            return
        if len(self._unknown) < MAX_REMEMBERED_UNKNOWN:
            self._unknown.add(key)
        self.stats.unknown_mns += 1
        log.warning("hj212 %s: frame from unknown MN %r on %s ignored (no device has this mn; "
                    "logged once per MN)", self.name, key, session.name)


class StreamSession:
    """One link as the stations see it (the kit's session): its framer, the stations that spoke
    on it, and where their answers go: every answer waits for the agent's commit (a 9014 tells
    the logger it may drop the data), in order."""

    def __init__(self, link: Link, router: Router):
        self.name = link.peer
        self.link = link
        self.router = router
        self.stations: set[Station] = set()
        self.framer = StreamFramer()
        self._garbage_counted = 0

    def handle(self, items: list[Frame | FrameError]) -> None:
        framer = self.framer
        self.router.stats.garbage_bytes += framer.garbage_bytes - self._garbage_counted
        self._garbage_counted = framer.garbage_bytes
        if items:
            answers = self.router.handle(items, self)
            if answers:
                self.link.send(b"".join(answers), after_commit=True)

    def discarded(self, count: int, why: str) -> None:
        """A stalled frame on a serial line: the transport counts it (``timed_out``) and logs it."""

    def close(self) -> None:
        for station in list(self.stations):
            station.detach(self)
        self.stations.clear()
