"""The net under every place where outside bytes come in (agent/core/boundary.py), the sink's check on
what parsers return (agent/wire.py) and the loop watch (agent/core/loopwatch.py): a bug meeting one
input costs that input, is counted and logged once, and the input is answered and acknowledged."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.core import boundary as boundaries
from agent.core import loopwatch
from agent import wire
from agent.core.ratelimit import Throttle
from agent.core.boundary import boundary
from agent.core.model import Reading
from tests.fakes import RecordingSink, next_turn


# -- the boundary itself --------------------------------------------------------------------------

def test_a_failure_is_counted_logged_once_with_size_and_hash_never_the_input(caplog):
    b = boundary("test.secrets")
    secret = b"PW=hunter2-the-station-password"
    with caplog.at_level(logging.ERROR, logger="agent.boundary"):
        for _ in range(50):
            try:
                raise ValueError("a parser bug")
            except ValueError as exc:
                b.failed(exc, secret, where="10.0.0.7:4711")
    assert b.failures == 50 and b.last_error == "ValueError: a parser bug"
    records = [r for r in caplog.records if r.name == "agent.boundary"]
    assert len(records) == 1, "one line, then a summary a minute later"
    text = records[0].getMessage()
    assert f"{len(secret)} bytes, sha256 " in text and "10.0.0.7:4711" in text
    assert b"hunter2".decode() not in text and records[0].exc_info is not None
    assert boundaries.snapshot()["test.secrets"]["failures"] == 50


def test_report_carries_the_input_to_the_centre_at_a_bounded_rate():
    b = boundary("test.report")
    exc = RuntimeError("boom")
    reports = [b.report(exc, bytes(range(256)) * 20) for _ in range(25)]
    sent = [r for r in reports if r is not None]
    assert len(sent) == boundaries.REPORTS_PER_MINUTE   # the rest only counted
    data = sent[0].data
    assert sent[0].type == "device.input_unhandled" and sent[0].severity == "major"
    assert data["bytes"] == 5120 and data["truncated"] is True
    assert bytes.fromhex(data["input_hex"]) == (bytes(range(256)) * 20)[:boundaries.REPORT_BYTES]
    orjson.dumps(data)   # the outbox can take it


def test_throttle_lets_one_through_per_period_and_counts_the_rest():
    now = [0.0]
    throttle = Throttle(every=10.0, clock=lambda: now[0])
    assert throttle.ready("k") and not throttle.ready("k") and not throttle.ready("k")
    assert throttle.ready("other")
    now[0] = 10.5
    assert throttle.ready("k") and throttle.held("k") == 2 and throttle.held("k") == 0


# -- what parsers return is made encodable ------------------------------------------------------

T = 1_796_400_000_000


def test_good_readings_pass_untouched_without_a_copy():
    readings = [Reading("a", 1.5, "degC", T), Reading("b", True, None, T), Reading("c", "ok", None, T),
                Reading("d", None, None, T, "bad"), Reading("e", 2**63, None, T)]
    out, fixed = wire.safe_readings(readings)
    assert out is readings and fixed == 0


@pytest.mark.parametrize("value, expected", [
    (10**20, None), (-(10**30), None), (float("nan"), None), (float("inf"), None), (b"\x00", None),
    ("x" * 1000, "x" * wire.MAX_STRING),
])
def test_values_the_contract_cannot_carry_become_bad_readings(value, expected):
    readings = [Reading("ok", 1.0, None, T), Reading("odd", value, None, T)]
    out, fixed = wire.safe_readings(readings)
    assert fixed == 1 and out[0] is readings[0]
    assert out[1].value == expected and out[1].q == ("good" if expected is not None else "bad")
    orjson.dumps([r.to_wire() for r in out])


def test_a_reading_with_an_impossible_time_or_name_is_fixed_not_lost():
    out, fixed = wire.safe_readings([Reading("p" * 300, 1, "u" * 40, -5)])
    assert fixed == 1 and len(out[0].point) == wire.MAX_POINT and len(out[0].unit) == wire.MAX_UNIT
    assert wire.MIN_MS <= out[0].t <= wire.MAX_MS


def test_event_data_json_cannot_carry_is_replaced():
    data = {"big": 10**40, "raw": b"\x01\x02", 3: "int key", "deep": [[[[1]]]], "nan": float("nan")}
    safe = wire.safe_data(data)
    assert safe["big"] is None and safe["raw"] == "0102" and safe["3"] == "int key" and safe["nan"] is None
    orjson.dumps(safe)


# -- the loop watch ---------------------------------------------------------------------------------

@pytest.mark.loop_budget(1000)
def test_a_callback_over_budget_is_counted_with_what_it_was():
    watch = loopwatch.current()
    assert watch is not None

    def busy() -> None:
        end = time.thread_time() + 0.08
        while time.thread_time() < end:
            pass

    async def main() -> None:
        asyncio.get_running_loop().call_soon(busy)
        await next_turn()

    watch.budget_s = 0.05
    asyncio.run(main())
    over = list(watch.worst)
    watch.reset()   # this test's stall was on purpose
    assert any("busy" in o["callback"] and o["ms"] >= 80 for o in over), over


# -- the uplink's paho callback --------------------------------------------------------------------

def test_an_exception_in_the_command_handler_never_leaves_paho_s_callback():
    from agent.config import Gateway, Mqtt
    from agent.uplink import MqttUplink

    class Message:
        topic = "citybrain/v1/lab/gw/cmd/x"
        payload = b"{}"

    uplink = MqttUplink(Mqtt(), Gateway(id="gw", site="lab"), outbox=None, birth=dict)   # type: ignore[arg-type]
    before = boundary("mqtt.cmd").failures

    def broken(topic: str, payload: bytes) -> None:
        raise TypeError("comparing strings with non-ASCII characters is not supported")

    uplink.on_command = broken
    uplink._on_message(None, None, Message())   # returns: paho goes on to send the PUBACK
    assert boundary("mqtt.cmd").failures == before + 1


# -- bridges: one frame's bug costs that frame ----------------------------------------------------

def test_hj212_a_frame_that_meets_a_bug_is_refused_reported_and_the_next_frame_still_handled(monkeypatch):
    from firmware_bridges.hj212 import station as station_module
    from firmware_bridges.hj212.frame import StreamFramer, build_frame, decode_frame
    from firmware_bridges.hj212.options import Options
    from firmware_bridges.hj212.router import Router
    from firmware_bridges.hj212.station import Station

    class Session:
        name = "10.0.0.9:5000"
        stations: set = set()

    real = station_module.map_upload

    def map_upload(cn: str, cp: str, *args: Any):
        if "a01001" in cp:
            raise ZeroDivisionError("a mapping bug")
        return real(cn, cp, *args)

    monkeypatch.setattr(station_module, "map_upload", map_upload)
    sink = RecordingSink()
    station = Station("aq", Options.model_validate({"mn": "88888880000001", "listen": {"port": 9212}}), sink, None)
    router = Router("test", [station])
    frames = b"".join(build_frame(f"QN=2024010203040{i}123;ST=22;CN=2011;PW=123456;MN=88888880000001;Flag=5;"
                                  f"CP=&&DataTime=20240102030400;{code}-Rtd=1.5,{code}-Flag=N&&")
                      for i, code in enumerate(("a01001", "a34004")))
    before = boundary("hj212").failures
    answers = router.handle(StreamFramer().feed(frames), Session())
    segments = [decode_frame(a).segment for a in answers]
    assert "CN=9011" in segments[0] and "QnRtn=2" in segments[0]     # the broken frame: refused
    assert "CN=9014" in segments[1]                                   # the next one: accepted
    assert [r.point for r in sink.all_readings()] == ["pm25"]
    assert boundary("hj212").failures == before + 1 and station.stats.errors == 1
    (report,) = sink.events("device.input_unhandled")
    assert "a01001" in bytes.fromhex(report.data["input_hex"]).decode()


def test_gb26875_a_frame_that_meets_a_bug_is_confirmed_and_reported_not_resent_forever(monkeypatch):
    from agent.core.config import DeviceConfig
    from firmware_bridges.gb26875 import appdata, frame
    from firmware_bridges.gb26875.mapping import FireState
    from firmware_bridges.gb26875.options import Options
    from firmware_bridges.gb26875.session import Channel, Link

    def broken(self, unit, f, **kwargs):
        raise KeyError("a mapping bug")

    monkeypatch.setattr(FireState, "apply", broken)
    config = DeviceConfig.model_validate({"id": "fire-01", "driver": "gb26875", "listen": {"port": 9026}})
    sink = RecordingSink()
    channel = Channel("test", [(config, Options.model_validate(config.model_extra))], sink)
    app = appdata.encode_unit(2, [appdata.encode_component_status(1, 1, 40, 7, 3, "烟感", bytes([5, 4, 3, 2, 1, 24]))])
    data = frame.build(11, 2, app, source=889, destination=88888)
    sent: list[bytes] = []
    before = boundary("gb26875").failures
    channel.receive(frame.Deframer(), data, Link("panel", sent.append))
    assert [frame.parse(s).command for s in sent] == [3], "confirmed: the device must not resend it forever"
    assert boundary("gb26875").failures == before + 1
    (report,) = sink.events("device.input_unhandled")
    assert bytes.fromhex(report.data["input_hex"]) == app
    assert channel.devices[0].stats.internal_errors == 1


# -- the command channel ------------------------------------------------------------------------

def test_a_command_that_meets_a_bug_is_refused_as_internal_and_counted(tmp_path: Path, monkeypatch):
    from agent.app import Agent
    from agent.commands import CommandChannel
    from agent.config import AgentConfig

    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    config = AgentConfig.model_validate({
        "gateway": {"id": "gw", "site": "lab"}, "uplink": {"mqtt": {"host": "127.0.0.1", "port": 1}},
        "buffer": {"path": str(tmp_path / "outbox.db")}, "agent": {"state_dir": str(tmp_path / "state")},
        "commands": {"key": {"file": str(key)}, "allow": ["buffer.stats"]}})

    def broken(self, name: str, payload: bytes) -> dict:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(CommandChannel, "_verify", broken)

    agent = Agent(config)   # built before its loop runs, as the agent's main does
    assert agent.commands is not None

    async def main() -> None:
        agent.commands.on_message("citybrain/v1/lab/gw/cmd/buffer.stats", b'{"id": "req-1"}')
        await next_turn()   # the refusal's answer is committed at the next turn (commit_soon)

    before = boundary("mqtt.cmd").failures
    try:
        asyncio.run(main())
        assert agent.commands.stats.refused == {"internal": 1}
        assert boundary("mqtt.cmd").failures == before + 1
        agent.outbox.flush()
        (message,) = agent.outbox.take(10)
        assert message.topic.endswith("cmd_result/req-1")
        assert orjson.loads(message.payload)["error"]["code"] == "internal"
    finally:
        agent.commands.close()
        agent.outbox.close()
