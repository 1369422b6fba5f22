"""What can go wrong talking to a controller, as exceptions whose message is for a technician or the
centre's operator (they end up in command results)."""

from __future__ import annotations

from agent.core.driver import DeviceError


class SignalError(DeviceError):
    """Base of this bridge's errors."""


class NoAnswer(SignalError, ConnectionError):
    """The controller (or I/O module) did not answer in time, or the link is down."""


class Refused(SignalError):
    """The controller answered with an error (SNMP error status, Modbus exception)."""


class BadAnswer(Refused):
    """The controller answered with a value these objects cannot have (an OBJECT IDENTIFIER where
    NTCIP 1202 has an INTEGER): the poll fails as the controller's fault, not as the agent's bug."""


class ControllerOffline(SignalError, ConnectionError):
    """A priority request on a controller that is not answering: nothing was asked of it."""


class PriorityRefused(SignalError, ValueError):
    """The request itself is not acceptable (no such phase, another phase holds priority, bad duration)."""
