"""The HJ 212 bridge's keys in a device entry of the gateway config. One device = one station (MN).

```yaml
- id: aq-station-01
  driver: hj212
  listen: {host: 0.0.0.0, port: 9212}        # or serial: {port: /dev/ttyS1, baudrate: 9600}
  mn: "010000A8900016F000169DC0"
  password: {file: /etc/edge-agent/aq01.pw}  # optional: PW is checked when given
  st: 22
  points: {a34004: {name: pm25, unit: ug/m3}}
  stale_after: 5m
```
"""

from __future__ import annotations

import re
import zoneinfo
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.core.config import ID_PATTERN, Secret, Strict
from agent.core.transport.serial_line import SerialLine as CoreSerialLine
from agent.core.units import Duration

_MN = re.compile(r"^[0-9A-Za-z_.-]{1,32}$")


class Listen(Strict):
    """A TCP server the station's data logger connects to. Devices with the same host and port
    share one server (and must agree on its limits)."""

    host: str = Field(default="0.0.0.0", min_length=1)
    port: int = Field(ge=0, le=65535)   # 0: any free port (tests; see TcpListener.port)
    max_connections: int = Field(default=64, ge=1, le=10000)
    idle_timeout: Duration = 600.0     # close a connection silent this long (the logger reconnects)
    frame_timeout: Duration = 30.0     # a frame must complete within this (slow-loris guard)

    @field_validator("idle_timeout", "frame_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value < 0.1:
            raise ValueError("must be at least 100ms")
        return value

    @property
    def key(self) -> tuple[str, ...]:
        return ("tcp", self.host.lower(), str(self.port))

    @property
    def limits(self) -> tuple[int, float, float]:
        return (self.max_connections, self.idle_timeout, self.frame_timeout)

    def describe(self) -> str:
        return f"listen tcp {self.host}:{self.port}"


class SerialLine(CoreSerialLine):
    """A serial port of the gateway wired to the logger's RS-232/RS-485 output: the core's
    serial-line keys (port, baudrate, parity, stopbits, bytesize; 9600 8N1) and a frame timeout."""

    frame_timeout: Duration = 30.0

    @property
    def key(self) -> tuple[str, ...]:
        return ("serial", self.port)

    @property
    def line_settings(self) -> tuple[object, ...]:
        return (*super().line_settings, self.frame_timeout)

    def describe(self) -> str:
        return f"serial {self.port} {self.settings_text}"


class PointOverride(Strict):
    """Name and/or unit of one pollutant code at this station (instead of the built-in table)."""

    name: str | None = Field(default=None, pattern=ID_PATTERN)
    unit: str | None = Field(default=None, min_length=1, max_length=32)


class Options(Strict):
    listen: Listen | None = None
    serial: SerialLine | None = None
    mn: str                                        # the station's MN, as its logger sends it
    password: Secret | None = None                 # the PW the logger must send (checked when given)
    st: int | None = Field(default=None, ge=0, le=99)   # system code; frames with another ST are refused
    points: dict[str, PointOverride] = {}          # pollutant code -> name/unit
    stale_after: Duration = 300.0                  # offline when no valid frame for this long
    timezone: str = "Asia/Shanghai"                # DataTime/QN are the station's local time
    answer_st: int | Literal["station"] = 91       # ST of our answers: 91 (system interaction) or the station's
    flag_points: bool = False                      # also report each value's raw data flag as `{point}.flag`
    time_sync: bool = False                        # answer a time calibration request (1013) by setting the clock (1012)

    @field_validator("mn")
    @classmethod
    def _mn(cls, value: str) -> str:
        if not _MN.match(value):
            raise ValueError("expected the station's MN: 1..32 letters, digits, '_', '.' or '-'")
        return value

    @field_validator("answer_st")
    @classmethod
    def _answer_st(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 99:
            raise ValueError("expected a 2-digit system code (91 = system interaction) or 'station'")
        return value

    @field_validator("stale_after")
    @classmethod
    def _stale(cls, value: float) -> float:
        if value < 1.0:
            raise ValueError("stale_after must be at least 1s")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):   # OSError: 'Asia' is a folder of
            # the zone database (IsADirectoryError), a 300-character name too long for a file name:
            # both escaped load_config as tracebacks (found by bench/fuzz.py)
            raise ValueError(f"unknown time zone {value!r}; expected an IANA name such as Asia/Shanghai") from None
        return value

    @field_validator("points")
    @classmethod
    def _codes(cls, value: dict[str, PointOverride]) -> dict[str, PointOverride]:
        for code in value:
            if not code or any(c in code for c in ";,=-&") or len(code) > 16:
                raise ValueError(f"{code!r} is not a pollutant code (such as a34004, w01018, LA or B01)")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> "Options":
        if (self.listen is None) == (self.serial is None):
            raise ValueError("give exactly one of 'listen' ({host, port}: the logger connects over TCP) "
                             "or 'serial' ({port: /dev/ttyS1, baudrate: 9600})")
        return self

    @property
    def connection(self) -> Listen | SerialLine:
        """The transport (``check-config`` prints its ``describe()``)."""
        return self.listen if self.listen is not None else self.serial   # type: ignore[return-value]

    @property
    def st_text(self) -> str | None:
        return None if self.st is None else f"{self.st:02d}"
