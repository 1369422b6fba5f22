"""The one serial-line options model: how a gateway's serial port is set up, whoever uses it.

Every family with a serial port (HJ 212's ``serial:``, GB/T 26875's ``serial:``, Modbus RTU's
``connection: {type: rtu}``) takes these keys, with these defaults (9600 8N1), and adds its own
(a frame timeout, a request timeout) by subclassing. Devices that share one port must agree on
:attr:`SerialLine.line_settings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from agent.core.config import Strict

if TYPE_CHECKING:
    import serial


class SerialLine(Strict):
    """A serial port of the gateway (RS-232, RS-485)."""

    port: str = Field(min_length=1)            # device path: /dev/ttyS1, /dev/ttyUSB0
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @property
    def line_settings(self) -> tuple[object, ...]:
        """What every device on one port must agree on."""
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)

    @property
    def settings_text(self) -> str:
        """``9600 8N1``, as technicians write it."""
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    def open(self) -> "serial.Serial":
        """The port opened for the event loop: non-blocking reads and writes, and exclusive (two
        programs reading one line would each get half of every frame)."""
        import serial   # late: only serial devices need pyserial

        return serial.Serial(self.port, baudrate=self.baudrate, bytesize=self.bytesize, parity=self.parity,
                             stopbits=self.stopbits, timeout=0, write_timeout=0, exclusive=True)
