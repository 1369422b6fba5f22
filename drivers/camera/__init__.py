"""RTSP camera driver: OpenCV (FFmpeg, TCP) → motion gate → ONNX detector → tracker → rules →
evidence, delivered through the agent's outbox.

Modules, one job each:

- :mod:`.options`   the `cameras:` entry's keys: URL and credentials, model, timeouts, rules, evidence
- :mod:`.reader`    a thread per camera keeping only the newest frame; reconnects with backoff; probe
- :mod:`.pipeline`  motion gate, detector, tracker, rules on a worker thread; the evidence thread
- :mod:`.tracker`   IoU/centroid tracker with stable ids
- :mod:`.rules`     red light, stop line, wrong way, illegal parking, zone intrusion; signal history
- :mod:`.evidence`  stills, crop, plate OCR (RapidOCR), clip, face blurring
- :mod:`.runner`    the asyncio side: results to the sink, signal state from the agent, watchdog
- :mod:`.tools`     `edge-agent snapshot` / `edge-agent detect`
- :mod:`.drawing`   its figures (lines, zones, lanes, ignore areas) for the web console's rule editor

See README.md beside this file for technicians.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.core.driver import DeviceInfo, Driver, PointInfo, Runner
from drivers.camera.options import Options

if TYPE_CHECKING:
    from agent.core.config import DeviceConfig
    from agent.core.model import DeviceSink

POINTS = (
    PointInfo("fps", "fps", "float32"),            # frames analysed per second
    PointInfo("infer_ms", "ms", "float32"),        # detector time per analysed frame (median)
    PointInfo("tracks", None, "int32"),            # road users tracked now
    PointInfo("violations", None, "int32"),        # violations found since the agent started
)


class CameraDriver(Driver):
    name = "camera"
    Options = Options
    section = "cameras"

    @staticmethod
    def options(device: "DeviceConfig") -> Options:
        if isinstance(device.options, Options):
            return device.options
        return Options.model_validate(device.model_extra or {})

    def describe(self, device: "DeviceConfig") -> DeviceInfo:
        return DeviceInfo(kind="camera", points=POINTS)

    def create_runners(self, devices: list["DeviceConfig"], sink: "DeviceSink") -> list[Runner]:
        from drivers.camera.runner import CameraRunner   # late: OpenCV loads only when a camera runs
        return [CameraRunner(device, self.options(device), sink) for device in devices]

    def validate_devices(self, devices: list["DeviceConfig"]) -> list[str]:
        seen: dict[str, str] = {}
        problems = []
        for device in devices:
            url = self.options(device).url
            if url in seen:
                problems.append(f"cameras {seen[url]} and {device.id} read the same stream {url}")
            seen.setdefault(url, device.id)
        return problems

    def check_devices(self, devices: list["DeviceConfig"]) -> list[str]:
        """Each camera's model opened as the camera would open it (sha256, output format, class
        map): a model that would disable the camera at start is named here, with what was expected."""
        from models.runtime import Detector, ModelError   # late: onnxruntime loads only when asked
        problems, seen = [], {}
        for device in devices:
            model = self.options(device).model
            if model not in seen:
                try:
                    Detector(model, threads=1)
                    seen[model] = None
                except ModelError as exc:
                    seen[model] = str(exc)
            if seen[model]:
                problems.append(f"cameras {device.id}: {seen[model]}")   # the message names the manifest
        return problems

    def commands(self) -> dict[str, Any]:
        from drivers.camera.commands import snapshot
        return {"camera.snapshot": snapshot}

    def metrics(self, stats: Any) -> dict[str, Any]:
        from drivers.camera.commands import inference
        return inference(stats)

    def shapes(self, entry: Any) -> list[Any]:
        from drivers.camera.drawing import shapes
        return shapes(entry)

    def shape_kinds(self) -> list[Any]:
        from drivers.camera.drawing import KINDS
        return list(KINDS)

    def add_cli(self, subcommands: Any, load_devices: Any, default_config: Any) -> None:
        from drivers.camera.commands import add_cli
        add_cli(subcommands, load_devices, default_config)


DRIVER = CameraDriver()

