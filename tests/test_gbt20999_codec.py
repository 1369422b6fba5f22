"""GB/T 20999-2017 frames: CRC, length, escaping, framers and the decode CLI, against frames a real
controller sent (firmware_bridges/signal_controller/testcases/gbt20999-*), the conventions' check
value, the simulator's independent encoder, and hypothesis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridges.signal_controller.gbt20999 import codec
from firmware_bridges.signal_controller.gbt20999.codec import BadFrame, DataValue, Frame, FrameError, FrameType
from firmware_bridges.signal_controller.gbt20999.decode import decode
from tests.hardware_sim import gbt20999_controller as sim_codec

CASES = Path(__file__).parent.parent / "firmware_bridges" / "signal_controller" / "testcases"
RUN_MODE_QUERY = "7e 00 13 01 00 05 00 00 00 00 00 01 10 01 01 04 0d 02 02 01 6c c2 7d"
RUN_MODE_ANSWER = "7e 00 14 01 00 05 00 00 00 00 00 02 20 01 01 05 0d 02 02 01 23 94 f4 7d"
RAW_7D_INSIDE = "7e 00 13 01 00 05 00 00 00 00 00 01 10 01 01 04 03 03 01 01 7D C1 7d"


def frames_of(case: Path) -> list[str]:
    return [line for line in (case / "frames.hex").read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_crc_check_value_of_the_conventions():
    # CRC-16 poly 0x1005, init 0, not reflected, no xor out: check value 0x5BB8 (PROTOCOLS.md; the
    # captured frames below agree). The Modbus/CCITT variants give other values and fail on them.
    assert codec.crc16(b"123456789") == 0x5BB8
    assert sim_codec.crc(b"123456789") == 0x5BB8


@pytest.mark.parametrize("case", sorted(CASES.glob("gbt20999-*")), ids=lambda p: p.name)
def test_captured_frames(case: Path):
    expected = json.loads((case / "expected.json").read_text())
    frames = frames_of(case)
    assert len(frames) == len(expected)
    for text, want in zip(frames, expected):
        got = decode(text)
        assert got["frame_type"] == want["frame_type"] and got["seq"] == want["seq"], text
        assert got["escaped"] is False     # captured on UDP: never escaped
        assert len(got["values"]) == len(want["values"])
        for value, wanted in zip(got["values"], want["values"]):
            for key, item in wanted.items():
                assert value[key] == item, (text, key)
        # and the bridge's encoder writes the same bytes again
        raw = bytes.fromhex(text.replace(" ", ""))
        assert codec.build(codec.parse(raw)) == raw


def test_a_captured_frame_with_a_raw_0x7d_inside_is_framed_by_its_length():
    raw = bytes.fromhex(RAW_7D_INSIDE.replace(" ", ""))
    framer = codec.DatagramFramer()
    items = framer.feed(raw)
    assert len(items) == 1 and isinstance(items[0], Frame) and framer.pending == 0
    escaped = codec.build(items[0], escaped=True)
    assert escaped.hex(" ").endswith("5c 7d c1 7d")          # TCP/RS-232: the 0x7D inside is escaped
    frame, was_escaped = codec.parse_any(escaped)
    assert was_escaped and frame == items[0]


def test_escaping_covers_every_special_byte_in_header_and_values_and_round_trips():
    # special bytes in the sequence, ids and values
    values = tuple(DataValue(3, 3, 2, g, bytes((0x7E, 0x7D, 0x5C))) for g in range(1, 13))
    frame = Frame(FrameType.QUERY_REPLY, values, seq=0x7D, centre=0x5C, controller=0x7E7D5C00, road=0x7E)
    raw = codec.build(frame)
    escaped = codec.build(frame, escaped=True)
    assert codec.unescape(escaped) == raw
    body, i = escaped[1:-1], 0
    while i < len(body):    # every special byte inside is escaped, and 0x5c escapes only special bytes
        if body[i] == codec.ESCAPE:
            assert body[i + 1] in (0x7E, 0x7D, 0x5C)
            i += 2
            continue
        assert body[i] not in (0x7E, 0x7D)
        i += 1
    assert raw[1:3] == b"\x00\x79" and escaped.count(b"\x5c") > 30
    assert codec.parse_any(escaped) == (codec.parse(raw), True)


def test_the_simulators_independent_encoder_agrees_with_the_bridge():
    ids_value = [(bytes((13, 2, 2, 1)), b"\x23"), (bytes((6, 3, 4, 1)), b"\x00\x05")]
    raw = sim_codec.frame(0x20, (0x0100, 5, 0, 0, 0), 2, ids_value)
    parsed = codec.parse(raw)
    assert [(bytes(v.ids), v.value) for v in parsed.values] == ids_value
    assert sim_codec.unescape_stream(bytearray(codec.build(parsed, escaped=True))) == [raw]


@pytest.mark.parametrize("text, where, words", [
    (RUN_MODE_ANSWER[:-5] + "f5 7d", 21, "CRC mismatch"),
    (RUN_MODE_ANSWER[:-9], 21, "cut short"),
    ("7e 00 13" + RUN_MODE_ANSWER[8:], 23, "length disagrees"),
    ("7e 00 14 01 00 05 00 00 00 00 00 02 20 02 01 05 0d 02 02 01 23 94 f4 7d", None, "CRC"),
    ("7d" + RUN_MODE_ANSWER[2:], 0, "starts with 0x7e"),
])
def test_bad_frames_say_what_and_where(text, where, words):
    with pytest.raises(FrameError) as info:
        decode(text)
    assert words in str(info.value)
    if where is not None:
        assert info.value.offset == where


def test_value_lengths_and_counts_are_checked():
    good = codec.build(Frame(FrameType.QUERY_REPLY, (DataValue(13, 2, 2, 1, b"\x23"),), seq=2))
    body = bytearray(good[:-3])
    body[15] = 9        # the value's length byte runs past the data
    bad = bytes(body) + codec.crc16(body[1:]).to_bytes(2, "big") + b"\x7d"
    with pytest.raises(FrameError, match="runs past"):
        codec.parse(bad)
    body = bytearray(good[:-3])
    body[13] = 2        # count says two values, one is there
    bad = bytes(body) + codec.crc16(body[1:]).to_bytes(2, "big") + b"\x7d"
    with pytest.raises(FrameError, match="count says 2"):
        codec.parse(bad)


def test_framers_resynchronise_after_garbage_and_bad_frames():
    query, answer = (bytes.fromhex(t.replace(" ", "")) for t in (RUN_MODE_QUERY, RUN_MODE_ANSWER))
    corrupt = answer[:-3] + b"\x00\x00\x7d"
    datagram = b"junk" + query + corrupt + answer
    items = codec.DatagramFramer().feed(datagram)
    frames = [i for i in items if isinstance(i, Frame)]
    assert [f.frame_type for f in frames] == [0x10, 0x20] and any(isinstance(i, BadFrame) for i in items)
    stream = b"\x00\x7d" + codec.escape(query) + b"\x7e\x01" + codec.escape(answer)
    framer = codec.StreamFramer()
    got = [item for byte in stream for item in framer.feed(bytes((byte,)))]
    assert [f.frame_type for f in got if isinstance(f, Frame)] == [0x10, 0x20]
    assert framer.pending == 0


def test_decode_cli_prints_json_and_exits_non_zero_on_a_bad_frame(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "agent.cli", "decode", "gbt20999", RUN_MODE_ANSWER],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["frame_type_name"] == "query_reply" and out["centre"] == 5 and out["controller"] == 0
    assert out["values"][0] | {"name": "run_mode"} == {"index": 1, "class": 13, "object": 2, "attribute": 2,
                                                         "element": 1, "raw": "23", "name": "run_mode",
                                                         "value": "local_coordinated"}
    bad = subprocess.run([sys.executable, "-m", "agent.cli", "decode", "gbt20999", RUN_MODE_ANSWER[:-5] + "f5 7d"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "CRC mismatch" in bad.stderr and "at byte 21" in bad.stderr


values_st = st.lists(st.builds(DataValue, st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
                               st.integers(0, 255), st.binary(max_size=20)), max_size=12)
frames_st = st.builds(Frame, st.sampled_from(list(FrameType)), values_st.map(tuple), st.integers(0, 255),
                      st.integers(0, 255), st.integers(0, 0xFFFFFFFF), st.integers(0, 255), st.integers(0, 0xFFFF))


@settings(max_examples=200, deadline=None)
@given(frame=frames_st, cuts=st.lists(st.integers(1, 40), max_size=8))
def test_frames_round_trip_through_both_framings(frame, cuts):
    numbered = Frame(frame.frame_type, tuple(DataValue(*v.ids, v.value, i) for i, v in enumerate(frame.values, 1)),
                     frame.seq, frame.centre, frame.controller, frame.road, frame.version)
    raw = codec.build(numbered)
    assert codec.parse(raw) == numbered
    assert codec.DatagramFramer().feed(raw) == [numbered]
    escaped = codec.build(numbered, escaped=True)
    framer, got, at = codec.StreamFramer(), [], 0
    for cut in cuts + [len(escaped)]:
        got += framer.feed(escaped[at:at + cut])
        at += cut
    got += framer.feed(escaped[at:])
    assert got == [numbered]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_parsers_refuse_junk_with_frame_errors_only(data):
    try:
        codec.parse_any(b"\x7e" + data)
    except FrameError:
        pass
    for framer in (codec.DatagramFramer(), codec.StreamFramer()):
        framer.feed(data)
        assert framer.pending <= 2 * codec.MAX_FRAME
