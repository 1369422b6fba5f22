"""What the camera family adds to the agent: the ``camera.snapshot`` command, the ``inference``
block of the metrics topic, and the ``snapshot`` and ``detect`` subcommands of ``edge-agent``."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from agent.core.commands import Args, CommandContext, Refused, parse_args
from agent.core.config import DeviceConfig
from agent.core.model import Event, EvidenceFile

# the contract's "inference latency", per camera, from its runner's figures
INFERENCE_FIGURES = ("infer_ms_p50", "infer_ms_p95", "frame_ms_p95", "fps", "commit_ms_p95")


class SnapshotArgs(Args):
    camera: str
    overlay: bool = False   # draw the camera's rules (lines, zones) on the image


async def snapshot(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    """The camera's newest frame as a JPEG, sent through the evidence path of a camera.snapshot event."""
    from drivers.camera.runner import CameraRunner

    a = parse_args(SnapshotArgs, args)
    runner = ctx.runner(a.camera)
    if not isinstance(runner, CameraRunner):
        raise Refused("unsupported", f"{a.camera} is not a camera")
    # JPEG encoding takes milliseconds of CPU: not on the event loop
    image = await asyncio.to_thread(runner.snapshot_jpeg, a.overlay)
    if image is None:
        raise Refused("device_offline", f"{a.camera} has no frame yet (is the stream up?)")
    event_id = ctx.sink.evidence(a.camera, Event("camera.snapshot", "info", {"requested_by": ctx.request_id}),
                                 [EvidenceFile("snapshot.jpg", image)])
    return {"event": event_id, "file": "snapshot.jpg", "bytes": len(image),
            "sha256": hashlib.sha256(image).hexdigest()}


def inference(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The metrics topic's ``inference`` block: per camera with figures yet."""
    block = {device: {k: figures.get(k) for k in INFERENCE_FIGURES}
             for device, figures in stats.items() if "infer_ms_p50" in figures}
    return {"inference": block} if block else {}


# -- edge-agent snapshot / detect ---------------------------------------------------------------

def add_cli(subcommands: argparse._SubParsersAction,
            load_devices: Callable[[Path], list[DeviceConfig] | None], default_config: Path) -> None:
    snap = subcommands.add_parser("snapshot", help="save a camera frame with its rules' lines and zones drawn on it")
    snap.add_argument("camera", help="a camera id from the config")
    snap.add_argument("-c", "--config", type=Path, default=default_config)
    snap.add_argument("-o", "--output", help="where to save it (default CAMERA.jpg)")
    snap.add_argument("--plain", action="store_true", help="the frame only, without the rules")
    snap.set_defaults(func=lambda args: _snapshot(args, load_devices))

    det = subcommands.add_parser("detect", help="run the detector on one image and print what it finds as JSON")
    det.add_argument("image", type=Path)
    det.add_argument("--model", default="nanodet",
                     help="a shipped model name (nanodet: real cameras; vehicles: the simulated junction) or a manifest path")
    det.add_argument("--score", type=float, default=None, help="score threshold (default: the manifest's)")
    det.set_defaults(func=_detect)


def _snapshot(args: argparse.Namespace, load_devices: Callable[[Path], list[DeviceConfig] | None]) -> int:
    """One frame of a configured camera with its rules' lines and zones drawn on it."""
    devices = load_devices(args.config)
    if devices is None:
        return 2
    cameras = [d for d in devices if d.driver == "camera"]
    camera = next((c for c in cameras if c.id == args.camera), None)
    if camera is None:
        known = ", ".join(c.id for c in cameras) or "none"
        print(f"snapshot: no camera {args.camera!r} in {args.config} (cameras: {known})", file=sys.stderr)
        return 2
    from drivers.camera.tools import snapshot as take
    try:
        saved = take(camera, args.output or f"{camera.id}.jpg", overlay=not args.plain)
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"snapshot {camera.id}: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(saved).decode())
    return 0


def _detect(args: argparse.Namespace) -> int:
    """The detector's findings in one image, as JSON."""
    from drivers.camera.tools import detect
    from models.runtime import ModelError
    try:
        found = detect(args.image, args.model, score=args.score)
    except (ValueError, ModelError, OSError) as exc:
        print(f"detect: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
    return 0
