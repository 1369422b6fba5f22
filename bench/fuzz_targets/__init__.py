"""Fuzz targets of bench/fuzz.py: one module per family, one class per entry point.

``REGISTRY`` maps a target's name to ``module:Class``; modules are imported only when a run
selects one of their targets (pysnmp, onnxruntime and paho cost seconds to import).
"""

from __future__ import annotations

import importlib

from bench.fuzz_targets.base import Target

REGISTRY: dict[str, str] = {
    "hj212.framer": "hj212:Framer",
    "hj212.station": "hj212:StationTarget",
    "hj212.decode": "hj212:Decode",
    "gb26875.deframer": "gb26875:DeframerTarget",
    "gb26875.appdata": "gb26875:AppDataTarget",
    "gb26875.channel": "gb26875:ChannelTarget",
    "gb26875.decode": "gb26875:Decode",
    "modbus.codec": "modbus:Codec",
    "modbus.answer": "modbus:Answer",
    "ntcip.answer": "ntcip:Answer",
    "gbt20999.framer": "gbt20999:FramerTarget",
    "gbt20999.client": "gbt20999:ClientTarget",
    "gbt20999.decode": "gbt20999:Decode",
    "gbt20999.hold_record": "gbt20999:HoldRecordTarget",
    "config": "config_files:Config",
    "model.manifest": "config_files:Manifest",
    "commands": "commands:Commands",
    "camera.frame": "camera:CameraFrame",
    "mqtt.packet": "mqtt:MqttPacket",
    "web.http": "web:WebHttp",
}


def target_class(name: str) -> type[Target]:
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(f"bench.fuzz_targets.{module}"), cls)
