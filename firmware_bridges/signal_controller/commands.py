"""``signal.priority``: the centre asks a signal controller for a bounded priority (an ambulance's
approach), or releases it. The controller owns signal safety; the bridge clamps the duration to
its configured bounds and releases by itself at expiry, on shutdown and when the centre goes
silent (:class:`~.runner.SignalRunner` is ``HoldsForCentre``)."""

from __future__ import annotations

from typing import Any

from agent.core.commands import Args, CommandContext, Refused, parse_args


class PriorityArgs(Args):
    device: str
    phase: int | None = None
    approach: str | None = None
    duration_s: float | None = None
    release: bool = False


async def priority(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    from firmware_bridges.signal_controller.runner import SignalRunner

    a = parse_args(PriorityArgs, args)
    runner = ctx.runner(a.device)
    if not isinstance(runner, SignalRunner):
        raise Refused("unsupported", f"{a.device} is not a signal controller")
    if a.release:
        grant = await runner.release_priority(a.device, reason=f"released by {ctx.request_id}")
        return {"released": grant is not None, **({"grant": grant.as_dict()} if grant else {})}
    if a.duration_s is None or (a.phase is None) == (a.approach is None):
        raise Refused("bad_args", "give duration_s and exactly one of phase or approach (or release: true)")
    try:
        grant = await runner.request_priority(a.device, a.phase, approach=a.approach,
                                              duration_s=a.duration_s, source=ctx.request_id)
    except ConnectionError as exc:            # controller offline or not answering: nothing held
        raise Refused("device_offline", str(exc)) from None
    except ValueError as exc:                 # no such phase, another phase holds priority
        raise Refused("bad_args", str(exc)) from None
    except Exception as exc:                  # noqa: BLE001 - the controller refused
        raise Refused("device_error", str(exc) or exc.__class__.__name__) from None
    return grant.as_dict()
