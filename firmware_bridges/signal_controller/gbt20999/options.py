"""The ``connection`` keys of a GB/T 20999-2017 controller (``protocol: gbt20999``)::

    connection: {transport: udp, host: 192.0.2.30, port: 4050, local_port: 5051, centre_id: 1,
                 controller_id: 0, road: 1, timeout: 500ms, heartbeat: 10s}

Or on RS-232: ``{transport: serial, serial: {port: /dev/ttyS1, baudrate: 9600}, ...}`` (escaped
frames, as on TCP).

The standard fixes no ports: the controller stores the centre's address in class 2, object 3.
The captured device listens on UDP 4050 and answers the centre on UDP 5051; OpenATC listens on
TCP 8881.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.core.config import Strict
from agent.core.transport import SerialLine
from agent.core.units import Duration
from firmware_bridges.signal_controller.timeouts import AnswerTimeout
from firmware_bridges.signal_controller.gbt20999.codec import VERSION
from firmware_bridges.signal_controller.gbt20999.objects import RUN_MODES


class Gbt20999Connection(Strict):
    transport: Literal["udp", "tcp", "serial"] = "udp"
    host: str | None = Field(default=None, min_length=1)     # udp, tcp
    serial: SerialLine | None = None                          # serial: {port: /dev/ttyS1, baudrate: 9600 ...}
    port: int = Field(default=4050, ge=1, le=65535)
    # UDP: the centre's own port, where the controller sends answers and reports (0: any free port,
    # for a controller that answers the sender's port)
    local_host: str = "0.0.0.0"
    local_port: int = Field(default=5051, ge=0, le=65535)
    centre_id: int = Field(default=1, ge=0, le=255)          # 上位机 id in every frame header
    controller_id: int = Field(default=0, ge=0, le=0xFFFFFFFF)
    road_id: int = Field(default=0, ge=0, le=255)            # the header's road id (0 on the captured device)
    road: int = Field(default=1, ge=1, le=255)               # the row of the run-status and centre-control tables
    version: int = Field(default=VERSION, ge=0, le=0xFFFF)   # 0x0100 (captured device) or 0x0101 (OpenATC)
    timeout: AnswerTimeout = 0.5
    heartbeat: Duration = 10.0                               # a heartbeat query this often (0: none)
    # Some controllers take a specified stage only in centre manual mode: set it first (0x15)
    hold_mode: int | None = None

    @field_validator("heartbeat")
    @classmethod
    def _heartbeat(cls, value: float) -> float:
        if value and value < 1:
            raise ValueError("heartbeat is at least 1s (or 0 for none)")
        return value

    @field_validator("hold_mode")
    @classmethod
    def _hold_mode(cls, value: int | None) -> int | None:
        if value is not None and value not in RUN_MODES:
            known = ", ".join(f"{code:#04x} {name}" for code, name in RUN_MODES.items())
            raise ValueError(f"unknown run mode {value:#04x}; known: {known}")
        return value

    @model_validator(mode="after")
    def _ports(self) -> "Gbt20999Connection":
        if self.transport == "serial":
            if self.serial is None:
                raise ValueError("transport serial needs 'serial' ({port: /dev/ttyS1, baudrate: 9600})")
            if self.host is not None:
                raise ValueError("'host' is for transport udp or tcp; a serial controller has 'serial'")
            return self
        if self.host is None:
            raise ValueError(f"transport {self.transport} needs 'host' (the controller's address)")
        if self.serial is not None:
            raise ValueError("'serial' is for transport serial")
        if self.transport == "tcp" and self.local_port not in (0, 5051):
            raise ValueError("local_port is for transport udp (TCP dials out from any port)")
        return self

    @property
    def channel_key(self) -> tuple[str, ...]:
        if self.serial is not None:
            return ("serial", self.serial.port)   # one port, one runner, whatever opens it
        return ("gbt20999", self.transport, (self.host or "").lower(), str(self.port), str(self.road))

    def describe(self) -> str:
        if self.serial is not None:
            return f"gbt20999 serial {self.serial.port} {self.serial.settings_text} road {self.road}"
        return f"gbt20999 {self.transport} {self.host}:{self.port} road {self.road}"
