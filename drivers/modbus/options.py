"""The Modbus driver's keys in a device entry of the gateway config.

```yaml
- id: aq-01
  driver: modbus
  connection: {type: tcp, host: 192.0.2.10, port: 502, timeout: 500ms}
  unit: 1
  profile: air_monitor_rs485
  poll: 1s
```

The profile is loaded and validated here, at config load, so a wrong register map stops the agent
before it starts rather than at the first poll.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from agent.core.backoff import Backoff
from agent.core.config import Strict
from agent.core.transport.serial_line import SerialLine
from agent.core.units import Duration
from drivers.modbus.profile import (
    Point, Profile, ProfileNotFound, load_profile, looks_like_path, profile_search_dirs,
)

MIN_TIMEOUT, MAX_TIMEOUT = 0.05, 10.0


def _timeout(value: float) -> float:
    if not MIN_TIMEOUT <= value <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be between {MIN_TIMEOUT * 1000:g}ms and {MAX_TIMEOUT:g}s")
    return value


class TcpConnection(Strict):
    """Modbus TCP: a device or a serial server (TCP-to-RS-485 gateway) on the network."""

    type: Literal["tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    timeout: Duration = 0.5   # per request, and for connecting

    @field_validator("timeout")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        return _timeout(value)

    @property
    def bus_key(self) -> tuple[str, ...]:
        """Devices with the same key share one connection and take turns on it."""
        return ("tcp", self.host.lower(), str(self.port))

    def describe(self) -> str:
        return f"tcp {self.host}:{self.port}"


class RtuConnection(SerialLine):
    """Modbus RTU on a serial port (RS-485/RS-232) of the gateway: the core's serial-line keys
    (port, baudrate, parity, stopbits, bytesize; 9600 8N1), opened by pymodbus."""

    type: Literal["rtu"]
    timeout: Duration = 0.5

    @field_validator("timeout")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        return _timeout(value)

    @property
    def bus_key(self) -> tuple[str, ...]:
        return ("rtu", self.port)

    def describe(self) -> str:
        return f"rtu {self.port} {self.settings_text}"


_CONNECTIONS: dict[str, type[TcpConnection] | type[RtuConnection]] = {"tcp": TcpConnection, "rtu": RtuConnection}


def _connection(value: Any) -> Any:
    """Pick the connection model by ``type`` ourselves: pydantic's tagged union would put the tag in
    error paths (``connection.tcp.timeout``), a key the technician's file does not have."""
    if isinstance(value, (TcpConnection, RtuConnection)):
        return value
    if not isinstance(value, dict):
        raise ValueError("expected a mapping such as {type: tcp, host: ..., port: 502} or {type: rtu, port: /dev/ttyUSB0}")
    kind = value.get("type")
    model = _CONNECTIONS.get(kind) if isinstance(kind, str) else None   # a mapping as the type: unhashable
    if model is None:
        raise ValidationError.from_exception_data("connection", [InitErrorDetails(
            type=PydanticCustomError("connection_type", "expected 'tcp' or 'rtu'"),
            loc=("type",), input=value.get("type"))])
    return model.model_validate(value)   # its errors keep their keys, under 'connection'


Connection = Annotated[Union[TcpConnection, RtuConnection], BeforeValidator(_connection)]


class Options(Strict):
    connection: Connection
    unit: int                         # the device's Modbus address on its bus (slave id)
    profile: Profile
    points: list[str] | None = None   # poll only these points of the profile (default: all)
    backoff: Backoff = Backoff()      # a unit that stopped answering (and a dropped link): 1s .. 30s
    offline_after: int = Field(default=3, ge=1, le=100)   # consecutive failed polls before "offline"

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: int) -> int:
        if value == 0:
            raise ValueError("unit 0 is the broadcast address: no device answers it; use the device's own id (1..247)")
        if not 1 <= value <= 247:
            raise ValueError("unit must be 1..247 (248..255 are reserved)")
        return value

    @field_validator("profile", mode="before")
    @classmethod
    def _load_profile(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, Profile):
            return value
        if not isinstance(value, str):
            raise ValueError("expected a profile name (a file in profiles/ or config/profiles/) or a path")
        context = info.context or {}
        config_dir = context.get("config_dir")
        search = profile_search_dirs(Path(config_dir) if config_dir else None)
        if config_dir and looks_like_path(value) and not Path(value).is_absolute():
            value = str(Path(config_dir) / value)
        try:
            # a broken profile raises ConfigError naming its own file, key and line
            return load_profile(value, search)
        except ProfileNotFound as exc:   # reported at the config's own `profile:` key
            raise ValueError(exc.problems[0]) from None

    @field_validator("points")
    @classmethod
    def _known_points(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        profile: Profile | None = info.data.get("profile")
        if value is None or profile is None:
            return value
        if not value:
            raise ValueError("an empty list polls nothing; leave 'points' out to poll every point")
        known = {p.name for p in profile.points}
        unknown = [name for name in value if name not in known]
        if unknown:
            raise ValueError(f"not in profile {profile.model!r}: {', '.join(unknown)}; "
                             f"it has: {', '.join(sorted(known))}")
        if len(set(value)) != len(value):
            raise ValueError("a point is listed twice")
        return value

    def selected_points(self) -> list[Point]:
        """The points this device polls and describes, in profile order."""
        if self.points is None:
            return list(self.profile.points)
        wanted = set(self.points)
        return [p for p in self.profile.points if p.name in wanted]
