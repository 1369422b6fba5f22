"""The protocol side of the bridge, free of sockets: frames in, answers and sink calls out.

A :class:`Channel` is what one runner serves (one listening port, one outgoing connection, one UDP
port or one serial port); a :class:`Link` is one conversation on it, the transport kit's session
(:mod:`agent.core.transport` reads the bytes, keeps the limits and writes the answers). The
channel routes each frame to a configured device by source address and answers it the way
clause 6 asks:

- send data (2): decoded, handed to the agent, then confirmed (3) with the frame's serial number
  and the addresses swapped. The confirm goes out only after the agent has the events: a
  critical event is committed to the outbox inside ``sink.event`` (agent/app.py), so a confirmed
  fire alarm survives a crash of the agent right after. If handing over fails, no confirm goes
  out and the device retransmits (6.5);
- a frame that fails its checksum (its header still readable) is denied (6), which makes the
  device retransmit at once rather than after its timeout (6.3, 6.5);
- control (1) and request (4) frames, reserved and user-defined commands: denied; the agent is the
  centre and holds nothing a device may ask for;
- response (5): decoded like data, not answered; confirm/deny (3, 6): counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.core.boundary import boundary
from agent.core.ratelimit import Throttle
from agent.core.clock import SYSTEM, Clock
from agent.core.config import DeviceConfig
from agent.core.model import DeviceSink, now_ms
from firmware_bridges.gb26875 import appdata
from firmware_bridges.gb26875.frame import BadFrame, Command, Deframer, Frame, address_wire, now_label
from firmware_bridges.gb26875.mapping import FireState
from firmware_bridges.gb26875.options import Options

log = logging.getLogger("firmware_bridges.gb26875")
FRAMES = boundary("gb26875")   # every frame of every transport passes Channel.handle_all



@dataclass(slots=True)
class DeviceStats:
    frames: int = 0              # valid frames from the device
    bad_frames: int = 0          # failed checks: checksum, length, missing '##', unparseable data
    confirms_sent: int = 0
    denies_sent: int = 0
    duplicates: int = 0          # re-sent frames recognised
    events: int = 0
    internal_errors: int = 0     # handing over to the agent failed (frame left unconfirmed)
    points_dropped: int = 0      # readings not reported: over max_component_points
    systems_dropped: int = 0     # objects of systems beyond max_systems: events raised, state not kept
    last_frame_ms: int | None = None
    online: bool | None = None   # None: not heard from yet
    peer: str | None = None
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__}
        out["errors"] = self.bad_frames + self.internal_errors   # the agent shows this as the device's errors
        return out


class Link:
    """One conversation: a TCP connection, a serial port, or a UDP peer. As the transport kit's
    session it holds the conversation's deframer and hands what it cuts to the channel."""

    def __init__(self, peer: str, send: Callable[[bytes], None], channel: "Channel | None" = None,
                 announce: bool = False):
        self.peer = peer
        self._send = send
        self.device: DeviceHandler | None = None   # who spoke on it last
        self.framer = Deframer()
        self.channel = channel
        self.announce = announce                    # log its coming and going (TCP, serial; not each UDP sender)
        if channel is not None:
            channel.stats.links.add(self)
            channel.stats.connections += 1
            if announce:
                log.info("%s: %s connected", channel.name, peer)

    def send(self, data: bytes) -> bool:
        try:
            self._send(data)
            return True
        except Exception as exc:   # noqa: BLE001 - a dead link is the transport's business
            log.debug("%s: send failed: %s", self.peer, exc)
            return False

    # -- the transport kit's Session -----------------------------------------------------------

    def handle(self, items: "list[Frame | BadFrame]") -> None:
        assert self.channel is not None
        self.channel.handle_all(items, self)

    def discarded(self, count: int, why: str) -> None:
        """An unfinished frame thrown away (a datagram cut short, a serial frame that stalled): a
        bad frame of whoever speaks on this link."""
        channel = self.channel
        device = self.device or (channel.devices[0] if channel is not None and len(channel.devices) == 1 else None)
        if device is not None:
            device.stats.bad_frames += 1
            device.stats.last_error = f"{self.peer}: {why}"

    def close(self) -> None:
        if self.channel is not None:
            self.channel.stats.links.discard(self)
            if self.announce:
                log.info("%s: %s disconnected", self.channel.name, self.peer)


class DeviceHandler:
    """One configured transmission device: its state, counters and online watch."""

    def __init__(self, config: DeviceConfig, options: Options, sink: DeviceSink, clock: Clock = SYSTEM):
        self.id = config.id
        self._monotonic = clock.monotonic   # online watch; the runner's watchdog reads the same clock
        self.options = options
        self.sink = sink
        self.state = FireState(options)
        self.stats = DeviceStats()
        self.last_seen: float | None = None   # monotonic time of the last valid frame
        self.started = self._monotonic()
        self._throttle = Throttle(clock=self._monotonic)

    def warn(self, key: str, message: str, *args: Any) -> None:
        """Log a problem at most once a minute per kind: a noisy line must not flood the journal."""
        self._throttle.warn(log, key, "%s: " + message, self.id, *args)

    def on_frame(self, frame: Frame, link: Link) -> None:
        stats = self.stats
        stats.frames += 1
        stats.last_frame_ms = now_ms()
        stats.peer = link.peer
        self.last_seen = self._monotonic()
        if stats.online is not True:
            stats.online = True
            self.sink.device_state(self.id, True)
        command = frame.command
        if command in (Command.SEND_DATA, Command.RESPONSE):
            if not self._deliver(frame):
                return   # not handed over: no confirm, the device will send it again
            if command == Command.SEND_DATA and self.options.confirm:
                if link.send(frame.answer(Command.CONFIRM, time_label=now_label(self.options.utc_offset))):
                    stats.confirms_sent += 1
        elif command in (Command.CONFIRM, Command.DENY):
            pass   # answers to requests; the agent sends none yet
        else:
            self.deny(frame, link)

    def _deliver(self, frame: Frame) -> bool:
        """Decode and hand readings and events to the agent. False if the agent could not take them."""
        if not frame.app_data:
            return True   # heartbeat (an empty send-data frame): confirmed, nothing to report
        duplicate = self.state.is_duplicate(frame)
        self.stats.duplicates = self.state.duplicates
        applied = False
        try:
            unit = appdata.parse(frame.app_data)
            if unit.problems:
                self.stats.bad_frames += 1
                self.stats.last_error = f"serial {frame.serial}: {unit.problems[0]}"
                self.warn("appdata", "frame %d, type %d: %s", frame.serial, unit.type, "; ".join(unit.problems))
            applied = True
            output = self.state.apply(unit, frame, duplicate=duplicate)
        except appdata.AppDataError as exc:
            self.stats.bad_frames += 1
            self.stats.last_error = f"serial {frame.serial}: {exc}"
            self.warn("appdata", "frame %d: %s", frame.serial, exc)
            return True   # nothing usable; confirming stops pointless retransmissions of it
        except Exception as exc:   # noqa: BLE001 - a bug meeting this frame: see agent/core/boundary.py
            if applied:
                self.state.undo(frame)   # no half-applied frame stays in the state
            return self._unhandled(frame, exc)
        try:
            for event in output.events:
                self.sink.event(self.id, event)   # critical: committed before this returns
                self.stats.events += 1
            if output.readings:
                self.sink.readings(self.id, output.readings)
        except Exception as exc:   # noqa: BLE001 - an outbox failure: leave the frame unconfirmed
            self.stats.internal_errors += 1
            self.stats.last_error = f"handing frame {frame.serial} to the agent failed: {exc}"
            log.exception("%s: handing frame %d to the agent failed; not confirming it", self.id, frame.serial)
            self.state.undo(frame)
            return False
        finally:
            self.stats.points_dropped = self.state.points_dropped
            self.stats.systems_dropped = self.state.systems_dropped
        return True

    def _unhandled(self, frame: Frame, exc: Exception) -> bool:
        """A frame the agent failed on: counted and logged on the gb26875 boundary, its bytes sent
        to the centre in a device.input_unhandled event, and confirmed once that is committed, so
        the device does not resend it forever (left unconfirmed if the outbox cannot take it)."""
        FRAMES.failed(exc, frame.app_data, where=self.stats.peer or self.id)
        self.stats.internal_errors += 1
        self.stats.last_error = f"frame {frame.serial}: the agent could not handle it ({type(exc).__name__}; see its log)"
        report = FRAMES.report(exc, frame.app_data)
        if report is None:
            return True
        try:
            self.sink.event(self.id, report)
        except Exception:   # noqa: BLE001 - the outbox cannot take it now: the device resends, we try again
            log.exception("%s: could not queue the report of frame %d", self.id, frame.serial)
            return False
        return True

    def deny(self, frame: Frame, link: Link) -> None:
        if self.options.confirm and link.send(frame.answer(Command.DENY, time_label=now_label(self.options.utc_offset))):
            self.stats.denies_sent += 1

    def check_silence(self, now: float) -> None:
        """Report offline once when nothing valid arrived for offline_after (or since start)."""
        since = self.last_seen if self.last_seen is not None else self.started
        if self.stats.online is not False and now - since > self.options.offline_after:
            self.stats.online = False
            heard = "no frame since the agent started" if self.last_seen is None else \
                f"no frame for {now - since:.0f}s"
            self.stats.last_error = heard
            self.sink.device_state(self.id, False, heard)


@dataclass(slots=True)
class ChannelStats:
    unknown_source: int = 0      # frames from an address no device of this channel has
    bad_unrouted: int = 0        # bad frames on a link no device has spoken on yet
    connections: int = 0
    links: set[Link] = field(default_factory=set)


class Channel:
    """Routes frames of one runner to its devices."""

    def __init__(self, name: str, members: list[tuple[DeviceConfig, Options]], sink: DeviceSink,
                 clock: Clock = SYSTEM):
        self.name = name
        self.clock = clock
        self.devices = [DeviceHandler(config, options, sink, clock) for config, options in members]
        self._by_address = {d.options.address: d for d in self.devices if d.options.address is not None}
        # One device on a channel of its own takes every frame on it; a source address that differs
        # from its config is logged, not refused: refusing would lose its fire alarms over a typo.
        self._only = self.devices[0] if len(self.devices) == 1 else None
        self.stats = ChannelStats()

    def route(self, frame: Frame) -> DeviceHandler | None:
        device = self._by_address.get(frame.source)
        if device is not None:
            return device
        if self._only is not None:
            if self._only.options.address is not None:
                self._only.warn("address", "frames come from address %d (%s), the config says %d; "
                                "taking them (this device is alone on %s)", frame.source,
                                address_wire(frame.source), self._only.options.address, self.name)
            return self._only
        return None

    def receive(self, deframer: Deframer, data: bytes, link: Link) -> None:
        """Bytes read outside the transport kit (tests, tools): cut by ``deframer`` under the
        gb26875 boundary, then handled as the kit's sessions do (:meth:`handle_all`)."""
        try:
            items = deframer.feed(data)
        except Exception as exc:   # noqa: BLE001 - see agent/core/boundary.py; the deframer starts clean
            FRAMES.failed(exc, data, where=link.peer)
            deframer.reset()
            return
        self.handle_all(items, link)

    def handle_all(self, items: list[Frame | BadFrame], link: Link) -> None:
        """Each frame handled on its own, so a bug meeting one frame (counted on the gb26875
        boundary) costs that frame and nothing after it."""
        for item in items:
            try:
                self.handle(item, link)
            except Exception as exc:   # noqa: BLE001 - see agent/core/boundary.py
                FRAMES.failed(exc, item.frame.app_data if isinstance(item, BadFrame) and item.frame
                              else getattr(item, "app_data", None), where=link.peer)

    def handle(self, item: Frame | BadFrame, link: Link) -> None:
        if isinstance(item, BadFrame):
            # a checksum failure still has a readable header: its source (if not the corrupted
            # part) names the device to deny and count against
            device = (self._by_address.get(item.frame.source) if item.frame is not None else None) \
                or link.device or self._only
            if device is None:
                self.stats.bad_unrouted += 1
                log.debug("%s: %s: %s", self.name, link.peer, item.reason)
            else:
                device.stats.bad_frames += 1
                device.stats.last_error = item.reason
                device.warn("bad", "%s: %s", link.peer, item.reason)
            if item.frame is not None and device is not None:
                device.deny(item.frame, link)
            return
        device = self.route(item)
        if device is None:
            self.stats.unknown_source += 1
            log.warning("%s: frame from address %d (%s) on %s: no device here has it; denied",
                        self.name, item.source, address_wire(item.source), link.peer)
            if any(d.options.confirm for d in self.devices):
                link.send(item.answer(Command.DENY))
            return
        link.device = device
        device.on_frame(item, link)

    def check_silence(self) -> None:
        now = self.clock.monotonic()
        for device in self.devices:
            device.check_silence(now)

    def stats_by_device(self) -> dict[str, dict[str, Any]]:
        out = {}
        for device in self.devices:
            entry = device.stats.as_dict()
            entry["unknown_source"] = self.stats.unknown_source
            entry["connections"] = len(self.stats.links)
            out[device.id] = entry
        return out
