"""The gb26875 bridge's keys in a device entry of the gateway config.

```yaml
- id: fire-bldg-12
  driver: gb26875
  listen: {host: 0.0.0.0, port: 9026}      # or connect: {host, port} | udp: {host, port} | serial: {port, baudrate}
  address: 889                             # the device's own (source) address
  systems: {1: "fire alarm system, building 12"}
  confirm: true
```
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from agent.core.backoff import Backoff
from agent.core.config import Strict
from agent.core.transport.serial_line import SerialLine
from agent.core.units import Duration
from firmware_bridges.gb26875.frame import MAX_ADDRESS


class Endpoint(Strict):
    host: str = Field(default="0.0.0.0", min_length=1)
    port: int = Field(ge=1, le=65535)


class ConnectEndpoint(Strict):
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)


_WIRE = re.compile(r"^[0-9A-Fa-f]{2}([ :-][0-9A-Fa-f]{2}){5}$")


def parse_address(value: Any) -> int:
    """A 6-byte address from the config: a decimal number (889), a hex number ('0x379'), or the six
    bytes as a capture shows them, low byte first ('79 03 00 00 00 00', ':' or '-' also)."""
    if isinstance(value, bool):
        raise ValueError("expected an address")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[0-9A-Fa-f]{12}", text):   # decimal? hex? which byte first? refuse to guess
            raise ValueError(f"{text!r} is ambiguous: write 0x{text} for a hex number, or six bytes as on "
                             "the wire, low byte first, with spaces ('79 03 00 00 00 00')")
        if _WIRE.match(text):
            number = int.from_bytes(bytes.fromhex(re.sub(r"[ :-]", "", text)), "little")
        elif re.fullmatch(r"0[xX][0-9A-Fa-f]{1,12}", text):
            number = int(text, 16)
        elif re.fullmatch(r"\d{1,15}", text):
            number = int(text)
        else:
            raise ValueError("expected a decimal number (889), a hex number ('0x379') or six bytes as "
                             "on the wire, low byte first ('79 03 00 00 00 00')")
    else:
        raise ValueError("expected an address: 889, '0x379' or '79 03 00 00 00 00'")
    if not 0 <= number <= MAX_ADDRESS:
        raise ValueError(f"address {number} does not fit in 6 bytes")
    return number


class SystemName(Strict):
    name: str = Field(min_length=1, max_length=200)
    type: int = Field(default=1, ge=0, le=255)   # 1: fire alarm system (8.2.1.1)


class Options(Strict):
    listen: Endpoint | None = None             # the device connects to us (the usual case)
    connect: ConnectEndpoint | None = None     # we connect to the device (or to a serial server)
    udp: Endpoint | None = None                # datagrams to/from this local host:port
    serial: SerialLine | None = None           # RS-232/485 port of the gateway (9600 8N1 by default)
    address: int | None = None                 # the device's address: its frames' source
    systems: dict[tuple[int, int], str] = {}   # (system type, system address) -> name
    confirm: bool = True                       # answer data frames with confirm (3) / deny (6)
    dedupe_window: Duration = 120.0            # identical re-sent frames within this are not re-reported
    offline_after: Duration = 90.0             # no valid frame for this long: offline (heartbeats: 20-30 s)
    idle_timeout: Duration = 300.0             # TCP: close a connection silent this long
    utc_offset: float = Field(default=8.0, ge=-12, le=14)   # hours; device clocks run on local time
    max_component_points: int = Field(default=256, ge=0, le=100_000)
    # What is remembered per device, so a peer cannot grow it without bound. Components: their
    # last status words, the least recently seen quiet one forgotten first. Systems: beyond the
    # bound their objects still raise events (never drop a fire) but their state is not kept.
    max_components: int = Field(default=20_000, ge=1, le=1_000_000)
    max_systems: int = Field(default=256, ge=1, le=65_536)
    reconnect: Backoff = Backoff()             # connect/serial/a taken port: retry after a failure (1s .. 30s)

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        return None if value is None else parse_address(value)

    @field_validator("systems", mode="before")
    @classmethod
    def _systems(cls, value: Any) -> Any:
        """Keys: a system address (type 1, fire alarm system) or 'type-address' ('10-1'); values: a
        name, or {name, type}."""
        if not isinstance(value, dict):
            raise ValueError("expected a mapping such as {1: 'fire alarm system, building 12'}")
        out: dict[tuple[int, int], str] = {}
        for key, item in value.items():
            system_type = 1
            if isinstance(item, dict):
                spec = SystemName.model_validate(item)
                name, system_type = spec.name, spec.type
            elif isinstance(item, str) and item.strip():
                name = item.strip()
            else:
                raise ValueError(f"systems[{key!r}]: expected a name or {{name, type}}")
            text = str(key).strip()
            match = re.fullmatch(r"(\d{1,3})-(\d{1,3})", text)
            if match:
                system_type, address = int(match.group(1)), int(match.group(2))
            elif text.isdigit():
                address = int(text)
            else:
                raise ValueError(f"systems: key {key!r} is neither a system address (1) nor 'type-address' (10-1)")
            if not (0 <= system_type <= 255 and 0 <= address <= 255):
                raise ValueError(f"systems: {key!r}: system type and address are 0..255")
            if (system_type, address) in out:
                raise ValueError(f"systems: system type {system_type} address {address} is named twice")
            out[(system_type, address)] = name
        return out

    @model_validator(mode="after")
    def _one_transport(self) -> "Options":
        given = [k for k in ("listen", "connect", "udp", "serial") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'listen' (the device connects to the agent), 'connect' "
                             "(the agent connects to the device), 'udp' or 'serial'"
                             + (f"; got {', '.join(given)}" if given else ""))
        return self

    @property
    def transport(self) -> str:
        return next(k for k in ("listen", "connect", "udp", "serial") if getattr(self, k) is not None)

    @property
    def channel_key(self) -> tuple[str, ...]:
        """Devices with the same key share one runner: one listening socket, one outgoing
        connection or one serial port; frames are routed to them by source address."""
        if self.listen is not None:
            return ("tcp-listen", str(self.listen.port))
        if self.udp is not None:
            return ("udp", str(self.udp.port))
        if self.connect is not None:
            return ("tcp-connect", self.connect.host.lower(), str(self.connect.port))
        assert self.serial is not None
        return ("serial", self.serial.port)

    def describe_channel(self) -> str:
        if self.listen is not None:
            return f"tcp listen {self.listen.host}:{self.listen.port}"
        if self.udp is not None:
            return f"udp {self.udp.host}:{self.udp.port}"
        if self.connect is not None:
            return f"tcp connect {self.connect.host}:{self.connect.port}"
        assert self.serial is not None
        return f"serial {self.serial.port} {self.serial.settings_text}"

    def system_name(self, system_type: int, address: int) -> str | None:
        return self.systems.get((system_type, address))
