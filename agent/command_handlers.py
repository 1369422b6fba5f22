"""The agent's own commands of contract version 1 (a family adds its own through its Driver:
``camera.snapshot``, ``signal.priority``). Each validates its arguments (``bad_args``) and raises
:class:`agent.core.commands.Refused` with a code the centre can act on."""

from __future__ import annotations

from typing import Any

from agent.commands import DEFERRED, RequestContext
from agent.core.commands import Args, CommandHandler, Refused, parse_args
from agent.core.driver import DeviceError


class PointArgs(Args):
    device: str
    point: str


class WriteArgs(PointArgs):
    value: bool | int | float | str


async def device_read(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    a = parse_args(PointArgs, args)
    runner = ctx.runner(a.device)
    try:
        reading = await runner.read_point(a.device, a.point)
    except KeyError as exc:
        raise Refused("unknown_point", str(exc).strip("'\"")) from None
    except NotImplementedError as exc:
        raise Refused("unsupported", str(exc)) from None
    except (DeviceError, OSError, TimeoutError, ConnectionError) as exc:
        raise Refused("device_error", str(exc) or exc.__class__.__name__) from None
    return reading.to_wire()


async def device_write(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    a = parse_args(WriteArgs, args)
    runner = ctx.runner(a.device)
    points = {p.name: p for p in ctx.site.points_of(a.device)}
    if a.point not in points:
        raise Refused("unknown_point", f"{a.device} has no point {a.point!r}")
    if not points[a.point].writable:   # checked here too: the config, not the driver, is the authority
        raise Refused("not_writable", f"{a.device}.{a.point} is not marked writable in its profile")
    try:
        await runner.write_point(a.device, a.point, a.value)
    except PermissionError as exc:
        raise Refused("not_writable", str(exc)) from None
    except ValueError as exc:
        raise Refused("bad_value", str(exc)) from None
    except NotImplementedError as exc:
        raise Refused("unsupported", str(exc)) from None
    except (DeviceError, OSError, TimeoutError, ConnectionError) as exc:
        raise Refused("device_error", str(exc) or exc.__class__.__name__) from None
    return {"device": a.device, "point": a.point, "value": a.value}


async def buffer_stats(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    parse_args(Args, args)
    return ctx.site.buffer_stats()


async def apply_config(ctx: RequestContext, args: dict[str, Any]) -> Any:
    """Validated, installed, restarted on; answered once the new config is up or rolled back."""
    await ctx.site.apply_config(ctx.request_id, args)
    return DEFERRED


HANDLERS: dict[str, CommandHandler] = {
    "device.read": device_read,
    "device.write": device_write,
    "buffer.stats": buffer_stats,
    "config.apply": apply_config,
}
