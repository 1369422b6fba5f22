"""The commands of contract version 1. Each validates its own arguments (``bad_args``) and
raises :class:`agent.commands.Refused` with a code the centre can act on."""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from agent import config_apply
from agent.commands import DEFERRED, CommandContext, Refused, command
from agent.model import Event, EvidenceFile
from drivers.base import DeviceError

if TYPE_CHECKING:
    from agent.app import Agent


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PointArgs(_Args):
    device: str
    point: str


class WriteArgs(PointArgs):
    value: bool | int | float | str


def _parse(model: type[BaseModel], args: dict[str, Any]) -> Any:
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in exc.errors())
        raise Refused("bad_args", problems) from None


def _runner(agent: "Agent", device_id: str) -> Any:
    runner = agent.runner_for(device_id)
    if runner is None:
        raise Refused("unknown_device", f"no device {device_id!r} on this gateway")
    return runner


@command("device.read")
async def device_read(agent: "Agent", args: dict[str, Any], ctx: CommandContext) -> dict[str, Any]:
    a = _parse(PointArgs, args)
    runner = _runner(agent, a.device)
    try:
        reading = await runner.read_point(a.device, a.point)
    except KeyError as exc:
        raise Refused("unknown_point", str(exc).strip("'\"")) from None
    except NotImplementedError as exc:
        raise Refused("unsupported", str(exc)) from None
    except (DeviceError, OSError, TimeoutError, ConnectionError) as exc:
        raise Refused("device_error", str(exc) or exc.__class__.__name__) from None
    return reading.to_wire()


@command("device.write")
async def device_write(agent: "Agent", args: dict[str, Any], ctx: CommandContext) -> dict[str, Any]:
    a = _parse(WriteArgs, args)
    runner = _runner(agent, a.device)
    points = {p.name: p for p in agent.infos[a.device].points}
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


@command("buffer.stats")
async def buffer_stats(agent: "Agent", args: dict[str, Any], ctx: CommandContext) -> dict[str, Any]:
    _parse(_Args, args)
    return agent.snapshot()["buffer"]


class SnapshotArgs(_Args):
    camera: str
    overlay: bool = False   # draw the camera's rules (lines, zones) on the image


@command("camera.snapshot")
async def camera_snapshot(agent: "Agent", args: dict[str, Any], ctx: CommandContext) -> dict[str, Any]:
    """The camera's newest frame as a JPEG, sent through the evidence path of a camera.snapshot event."""
    a = _parse(SnapshotArgs, args)
    runner = _runner(agent, a.camera)
    if not hasattr(runner, "snapshot_jpeg"):
        raise Refused("unsupported", f"{a.camera} is not a camera")
    # JPEG encoding takes milliseconds of CPU: not on the event loop
    image = await asyncio.to_thread(runner.snapshot_jpeg, a.overlay)
    if image is None:
        raise Refused("device_offline", f"{a.camera} has no frame yet (is the stream up?)")
    event_id = agent.evidence(a.camera, Event("camera.snapshot", "info", {"requested_by": ctx.id}),
                              [EvidenceFile("snapshot.jpg", image)])
    return {"event": event_id, "file": "snapshot.jpg", "bytes": len(image),
            "sha256": hashlib.sha256(image).hexdigest()}


@command("config.apply")
async def apply_config(agent: "Agent", args: dict[str, Any], ctx: CommandContext) -> Any:
    """Validated, installed, restarted on; answered once the new config is up or rolled back.
    Validation runs in a worker thread: a signed config of 16 KiB held the event loop 120 ms
    (found by bench/fuzz.py)."""
    await asyncio.to_thread(config_apply.prepare, agent, ctx.id, args)
    agent.request_restart()
    return DEFERRED


class PriorityArgs(_Args):
    device: str
    phase: int | None = None
    approach: str | None = None
    duration_s: float | None = None
    release: bool = False


@command("signal.priority")
async def signal_priority(agent: "Agent", args: dict[str, Any], ctx: CommandContext) -> dict[str, Any]:
    """Ask a signal controller for a bounded priority (an ambulance's approach), or release it.
    The controller owns signal safety; the bridge clamps the duration to its configured bounds
    and releases by itself at expiry, on shutdown and when the centre goes silent."""
    a = _parse(PriorityArgs, args)
    runner = _runner(agent, a.device)
    if not hasattr(runner, "request_priority"):
        raise Refused("unsupported", f"{a.device} is not a signal controller")
    if a.release:
        grant = await runner.release_priority(a.device, reason=f"released by {ctx.id}")
        return {"released": grant is not None, **({"grant": grant.as_dict()} if grant else {})}
    if a.duration_s is None or (a.phase is None) == (a.approach is None):
        raise Refused("bad_args", "give duration_s and exactly one of phase or approach (or release: true)")
    try:
        grant = await runner.request_priority(a.device, a.phase, approach=a.approach,
                                              duration_s=a.duration_s, source=ctx.id)
    except ConnectionError as exc:            # controller offline or not answering: nothing held
        raise Refused("device_offline", str(exc)) from None
    except ValueError as exc:                 # no such phase, another phase holds priority
        raise Refused("bad_args", str(exc)) from None
    except Exception as exc:                  # noqa: BLE001 - the controller refused
        raise Refused("device_error", str(exc) or exc.__class__.__name__) from None
    return grant.as_dict()
