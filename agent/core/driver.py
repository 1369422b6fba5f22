"""The contract between the agent and a driver (or a firmware bridge).

A device family is one module in ``drivers/`` or ``firmware_bridges/`` that defines ``DRIVER``,
an instance of a :class:`Driver` subclass. The agent finds it by the name in the config's
``driver:`` key; nothing in ``agent/`` changes when a family is added.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable, Mapping
    from pathlib import Path
    from agent.core.config import DeviceConfig
    from agent.core.model import DeviceSink, Reading, Value


class DeviceError(Exception):
    """A device (or the link to it) failed a read or write asked of it: no answer, link down, or
    an error answer. Drivers raise subclasses of it from ``read_point``/``write_point`` so that
    the command handlers answer the centre with ``device_error`` whatever the family."""


@dataclass(frozen=True, slots=True)
class PointInfo:
    """A point as the birth message describes it to the centre."""

    name: str
    unit: str | None
    type: str            # bool, int16, float32, string ...
    writable: bool = False


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    kind: str                     # air_monitor, manhole_cover, lamp_pole, fire_panel ...
    points: tuple[PointInfo, ...]


class Runner(ABC):
    """A long-running task serving one or more devices (for Modbus: one bus).

    ``run`` loops until cancelled and handles its devices' failures itself: a device that fails is
    reported through the sink and retried with backoff, never allowed to end the runner.
    """

    name: str

    @abstractmethod
    async def run(self) -> None: ...

    async def close(self) -> None:
        """Release the transport. Called after ``run`` is cancelled."""

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per device id: counters for `edge-agent status` (errors, last_read_ms, online ...)."""
        return {}

    @property
    def device_ids(self) -> tuple[str, ...]:
        """The devices this runner serves, for routing commands (override if stats() can be empty)."""
        return tuple(self.stats())

    async def read_point(self, device_id: str, point: str) -> "Reading":
        raise NotImplementedError(f"{self.name} cannot read single points")

    async def write_point(self, device_id: str, point: str, value: "Value") -> None:
        raise NotImplementedError(f"{self.name} cannot write points")


class HoldsForCentre(ABC):
    """A runner that holds something on the centre's behalf (a signal priority) and lets it go
    when the centre is gone. The agent calls these; the runner decides what letting go means."""

    @abstractmethod
    def centre_heard(self) -> None:
        """The centre is there: an authenticated command arrived, or the uplink (re)connected."""

    @abstractmethod
    def centre_lost(self) -> None:
        """The centre cannot reach us: the uplink is down, or it was silent longer than
        ``commands.centre_silence``."""


@dataclass(frozen=True, slots=True)
class Picture:
    """What a device sees now (a camera's newest frame), for the console."""

    jpeg: bytes
    width: int          # pixels of the device's own frame: the coordinates its config uses
    height: int
    t_ms: int           # when the frame was taken


class ShowsPicture(ABC):
    """A runner whose devices have a picture (a camera). The web console shows it, refreshing,
    with the figures of the device's config (:meth:`Driver.shapes`) drawn over it."""

    @abstractmethod
    def picture(self, device_id: str, quality: int = 80) -> Picture | None:
        """The newest frame, or None before the first. Blocking (it encodes a JPEG): the caller
        runs it in a worker thread."""


Path_ = tuple["str | int", ...]   # a key path inside one device's config entry: ("rules", 2, "zone")


@dataclass(frozen=True, slots=True)
class Shape:
    """A figure of a device's config drawn on its picture: a stop line, a zone, a lane, an area
    to ignore. The console moves its points and writes them back at ``path``; deleting it
    removes the entry at ``remove`` (the whole rule, or the one area)."""

    path: Path_
    kind: str                        # line (2 points), arrow (tail, head), polygon (3+), path (2+, in order)
    label: str
    points: tuple[tuple[float, float], ...]
    remove: Path_


@dataclass(frozen=True, slots=True)
class ShapeKind:
    """A figure the console can add to a device's config: the technician draws ``kind`` on the
    picture, and a copy of ``template`` is appended to the list at ``into`` with the points at
    ``field`` (or, with ``field`` None, the points themselves are the new list item)."""

    key: str
    label: str
    kind: str
    into: Path_
    template: "Mapping[str, Any] | None" = None
    field: str | None = None


class Driver(ABC):
    """A device family: one module or package in ``drivers/`` or ``firmware_bridges/`` (or any
    importable module, named by its dotted path) that defines ``DRIVER``, an instance of a subclass.

    What a family contributes, all through this class and nothing else (the agent never names a
    family): its config keys (``Options``, and ``section`` for a top-level section of its own),
    its devices' descriptions and runners, checks across its devices, a frame decoder for the CLI,
    commands for the centre (``commands``), figures for the metrics topic (``metrics``) and
    subcommands of the command line (``add_cli``). Its runners declare what they can do by the
    classes they derive from (:class:`Runner` methods, :class:`HoldsForCentre`). What a family
    must still know after the agent was killed (small, rare writes) it keeps in its own store,
    ``sink.store(name)`` (:mod:`agent.core.state`), never in the outbox."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]]
    polled: ClassVar[bool] = True   # False for devices that push (the device config's poll is unused)
    # A top-level config section whose entries are this family's devices, ``driver:`` implied
    # (``cameras:`` for the camera driver). None: its devices go under ``devices:``.
    section: ClassVar[str | None] = None

    def options(self, device: "DeviceConfig") -> Any:
        """The device's validated ``Options`` (validated here when the config did not come
        through load_config, as in tests that build a DeviceConfig by hand)."""
        if isinstance(device.options, self.Options):
            return device.options
        return self.Options.model_validate(device.model_extra or {})

    @abstractmethod
    def describe(self, device: "DeviceConfig") -> DeviceInfo:
        """What the device is and which points it has, for the birth message and the report policy."""

    @abstractmethod
    def create_runners(self, devices: list["DeviceConfig"], sink: "DeviceSink") -> list[Runner]:
        """Group this driver's devices into runners (one per bus, connection or port)."""

    def validate_devices(self, devices: list["DeviceConfig"]) -> list[str]:
        """Problems that only show across devices (two devices with one unit id on one bus, two
        listeners on one port ...), one line each naming the device ids. Called by load_config."""
        return []

    def check_devices(self, devices: list["DeviceConfig"]) -> list[str]:
        """Problems with what the devices' options name that only opening it shows (a camera's
        model file whose sha256 or outputs are not what its manifest says), one line each naming
        the device and the file. Called by ``edge-agent check-config`` only: the running agent
        meets the same problem when it starts that device, reports it failed and runs the rest."""
        return []

    def decode(self, text: str) -> dict[str, Any]:
        """For `edge-agent decode <driver> FRAME`: a frame as a technician pastes it (ASCII or hex)
        decoded to JSON-ready data. Raises ValueError saying what is wrong and where."""
        raise NotImplementedError(f"the {self.name} driver has no frame decoder")

    def decoders(self) -> "Mapping[str, Callable[[str], dict[str, Any]]]":
        """Frame decoders under protocol names other than the driver's own, for `edge-agent decode
        <protocol> FRAME` when a family speaks several protocols (the signal controller's
        ``gbt20999``): name -> a function like :meth:`decode`."""
        return {}

    def commands(self) -> "Mapping[str, Callable[..., Awaitable[Any]]]":
        """Commands this family adds for the centre (``camera.snapshot``, ``signal.priority``):
        name -> handler (see :mod:`agent.core.commands`). Still subject to the config's allowlist."""
        return {}

    def metrics(self, stats: "Mapping[str, Mapping[str, Any]]") -> dict[str, Any]:
        """Blocks this family adds to the metrics topic, from its devices' runner stats (device id
        -> ``Runner.stats()`` entry): e.g. ``{"inference": {...}}``. Keys must not collide with
        the agent's own blocks."""
        return {}

    def shapes(self, entry: "Mapping[str, Any]") -> list[Shape]:
        """The figures of one device's config entry (as read from the YAML, not yet validated)
        that the console draws on its picture and lets a technician move (see :class:`Shape`)."""
        return []

    def shape_kinds(self) -> list[ShapeKind]:
        """The figures a technician may add to one of this family's devices in the console."""
        return []

    def add_cli(self, subcommands: "argparse._SubParsersAction",
                load_devices: "Callable[[Path], list[DeviceConfig] | None]", default_config: "Path") -> None:
        """Subcommands this family adds to ``edge-agent`` (each sets ``func`` to a callable taking
        the parsed arguments and returning the exit status). ``load_devices(path)`` gives the
        devices of a gateway config (None after printing its problems); ``default_config`` is
        the gateway's config path."""
