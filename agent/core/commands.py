"""What a command handler is, for the agent's own commands and a family's alike.

A family contributes commands through its Driver (``Driver.commands()``: name -> handler). A
handler gets the request's arguments and a :class:`CommandContext`, which is all of the agent it
sees: the runner serving a device, the sink (for an event with evidence), the request id. It
validates its arguments (:func:`parse_args`), raises :class:`Refused` with a code the centre can
act on, and returns the result (JSON-ready). Signing, the allowlist, rate limits, timeouts,
answers and the audit log are the agent's (agent/commands.py), never the handler's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from agent.core.driver import Runner
    from agent.core.model import DeviceSink

A = TypeVar("A", bound=BaseModel)


class Refused(Exception):
    """A request that is not executed; ``code`` is machine-readable (docs/contract.md lists them),
    the message is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class CommandContext(Protocol):
    """What a handler may use of the agent."""

    @property
    def request_id(self) -> str: ...

    @property
    def sink(self) -> "DeviceSink": ...

    def runner(self, device_id: str) -> "Runner":
        """The runner serving a device; Refused("unknown_device") when the gateway has none."""
        ...


CommandHandler = Callable[[CommandContext, dict[str, Any]], Awaitable[Any]]


class Args(BaseModel):
    """Base for a command's arguments: an unknown key is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


def parse_args(model: type[A], args: dict[str, Any]) -> A:
    """``args`` validated as ``model``; Refused("bad_args") naming every problem otherwise."""
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in exc.errors())
        raise Refused("bad_args", problems) from None
