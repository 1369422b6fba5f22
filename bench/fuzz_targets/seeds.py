"""Valid inputs to mutate, taken from the repository: the regression cases, the hardware
simulators' frame builders, the test vectors, the sample configs. Built with fixed times so a
fuzz seed replays the same inputs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CST = timezone(timedelta(hours=8))
WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=CST)


# -- HJ 212 -----------------------------------------------------------------------------------------

HJ212_CASES = REPO / "firmware_bridges" / "hj212" / "testcases"


@cache
def hj212_segments() -> tuple[str, ...]:
    """Data segments: every frame of the regression cases, and what the logger simulator sends
    (real-time, minute, hour with Cou, split parts, 2005 frames, status, run time, restart, time
    request)."""
    from firmware_bridges.hj212.frame import StreamFramer
    from tests.hardware_sim.hj212_logger import Hj212Logger

    segments: list[str] = []
    for case in sorted(p for p in HJ212_CASES.iterdir() if p.is_dir()):
        data = "".join(line + "\r\n" for line in (case / "input.txt").read_text().splitlines()).encode()
        segments += [item.segment for item in StreamFramer().feed(data) if hasattr(item, "cp")]
    for mn, st, version in (("010000A8900016F000169DC0", 22, 2017), ("88888880000001", 32, 2005), ("M1", 22, 2017)):
        logger = Hj212Logger(mn, st=st, version=version)
        logger._qn_ms = int(WHEN.timestamp() * 1000)   # noqa: SLF001 - QNs from a fixed clock
        segments += [
            logger.segment(2011, logger.realtime_cp(WHEN)),
            logger.segment(2011, logger.realtime_cp(WHEN), ack=False),
            logger.segment(2051, logger.aggregate_cp(WHEN)),
            logger.segment(2061, logger.aggregate_cp(WHEN, cou=True)),
            logger.segment(2031, logger.aggregate_cp(WHEN)),
            logger.segment(2021, f"DataTime={WHEN:%Y%m%d%H%M%S};SB1-RS=1;SB2-RS=0"),
            logger.segment(2041, f"DataTime={WHEN:%Y%m%d%H%M%S};SB1-RT=23.5"),
            logger.segment(2081, f"RestartTime={WHEN:%Y%m%d%H%M%S}"),
            logger.segment(1013, ""),
            logger.segment(9014, ""),
        ]
        cp = logger.aggregate_cp(WHEN)
        half = len(cp) // 2
        segments += [logger.segment(2061, part, qn="20240506070809123", split=(2, n))
                     for n, part in ((1, cp[:half]), (2, cp[half:]))]
    return tuple(segments)


def hj212_frame(segment: bytes) -> bytes:
    """A frame around a segment with its length and CRC right, whatever the segment holds (also
    beyond the standard's 1024 bytes: the length field then has more digits)."""
    from firmware_bridges.hj212.crc import crc16_hex

    return b"##%04d%s%s\r\n" % (len(segment), segment, crc16_hex(segment).encode())


@cache
def hj212_frames() -> tuple[bytes, ...]:
    return tuple(hj212_frame(s.encode()) for s in hj212_segments())


# -- GB/T 26875.3 -------------------------------------------------------------------------------

@cache
def gb26875_app_data() -> tuple[bytes, ...]:
    """Application data units: the test vectors and the fire panel simulator's builders."""
    from tests.hardware_sim import fire_panel as panel
    from tests.test_gb26875_frame import FIRE_FRAME, GO_COMPONENT, POWER_FAULT_FRAME

    from firmware_bridges.gb26875 import appdata
    from firmware_bridges.gb26875.frame import parse

    label = panel.time_label(WHEN.replace(tzinfo=None))
    units = [parse(FIRE_FRAME).app_data, parse(POWER_FAULT_FRAME).app_data, GO_COMPONENT,
             panel.component_status_app([(1, 1, 40, 0x0002000A, panel.NORMAL | panel.FIRE, "3楼东侧走廊烟感")], label),
             panel.component_status_app([(1, 1, 40, 0x0002000A, panel.NORMAL, "3楼东侧走廊烟感"),
                                         (1, 1, 23, 0x00030001, panel.NORMAL | panel.FAULT, "2层手报模块")], label),
             panel.system_status_app([(1, 1, panel.NORMAL | panel.FIRE)], label),
             panel.system_status_app([(1, 1, panel.NORMAL | panel.RESET), (10, 1, panel.NORMAL)], label),
             panel.analog_app(1, 1, 99, 0x11, 5, -1200, label),
             panel.analog_app(1, 1, 99, 0x12, 1, 32767, label),
             panel.operation_app(1, 1, 1 << 2, 7, label),
             panel.device_status_app(panel.NORMAL | panel.FIRE, label),
             panel.device_status_app(0x08, label),
             appdata.encode_unit(5, [bytes((1, 1, 2, 3))]),
             appdata.encode_unit(6, [bytes((1, 1, 6)) + "消防主机".encode("gb18030")[:6]]),
             appdata.encode_unit(7, [bytes((1, 1, 40, 10, 0, 0, 0)) + appdata.encode_text("3楼烟感")]),
             appdata.encode_unit(8, [bytes((1, 1)) + label]),
             appdata.encode_unit(24, [bytes((0x04, 9)) + label]),
             appdata.encode_unit(25, [bytes((1, 2))]),
             appdata.encode_unit(26, [bytes((4,)) + b"v1.0"]),
             appdata.encode_unit(28, [label]),
             appdata.encode_unit(90, [label]),
             appdata.encode_unit(61, [bytes((1, 1))])]
    return tuple(units)


@cache
def gb26875_frames() -> tuple[bytes, ...]:
    from tests.hardware_sim import fire_panel as panel
    from tests.test_gb26875_frame import CONFIRM_FRAME, DENY_FRAME, FIRE_FRAME, POWER_FAULT_FRAME

    label = panel.time_label(WHEN.replace(tzinfo=None))
    frames = [FIRE_FRAME, POWER_FAULT_FRAME, CONFIRM_FRAME, DENY_FRAME,
              panel.encode_frame(7, panel.SEND_DATA, b"", 889, 88888, label)]   # a heartbeat
    frames += [panel.encode_frame(10 + i, panel.SEND_DATA, app, 889, 88888, label)
               for i, app in enumerate(gb26875_app_data())]
    frames += [panel.encode_frame(90, command, b"", 889, 88888, label)
               for command in (panel.CONTROL, panel.REQUEST, panel.RESPONSE, 200)]
    return tuple(frames)


# -- configs, manifests, commands -------------------------------------------------------------------

GATEWAY = "gateway: {id: gw-fuzz, site: lab, location: {lat: 30.27, lon: 120.15}}\n"


@cache
def config_files() -> tuple[bytes, ...]:
    """config/example.yaml and every family's sample.yaml (a gateway section added where the
    sample is a devices list only)."""
    files = [(REPO / "config" / "example.yaml").read_bytes()]
    for sample in sorted([*REPO.glob("drivers/*/sample.yaml"), *REPO.glob("firmware_bridges/*/sample.yaml")]):
        text = sample.read_bytes()
        files.append(text if b"\ngateway:" in b"\n" + text else GATEWAY.encode() + text)
    return tuple(files)


@cache
def manifests() -> tuple[bytes, ...]:
    return tuple(p.read_bytes() for p in sorted(REPO.glob("models/*/manifest.yaml")))


@cache
def command_payloads() -> tuple[bytes, ...]:
    """The command channel's regression cases as they were published."""
    return tuple(p.read_bytes() for p in sorted((REPO / "tests" / "cases" / "commands").glob("*/payload")))
