"""The contract's schemas and topic helpers (agent/contract.py, agent/schemas/)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from agent import contract
from agent.core.model import Reading

# CONTRACT.md's examples, verbatim.
CONTRACT_TELEMETRY = """{"v":1,"gw":"gw-01","seq":1042,"ts":1763712000123,"hist":false,"device":"aq-01",
 "readings":[{"p":"pm25","v":35.2,"u":"ug/m3","t":1763712000000,"q":"good"}]}"""
CONTRACT_EVENT = """{"v":1,"gw":"gw-01","seq":1043,"ts":1763712000456,"hist":false,"id":"gw-01-1043",
 "device":"cam-01","type":"violation.red_light","severity":"major",
 "data":{"track":17,"class":"car","confidence":0.91,"signal":"red"},
 "evidence":[{"name":"0.jpg","sha256":"…","bytes":48211}]}"""

TS = 1763712000123
JPEG_SHA = hashlib.sha256(b"jpeg").hexdigest()
COMMON = {"v": 1, "gw": "gw-01", "seq": 7, "ts": TS, "hist": False}

VALID: dict[str, list[dict[str, Any]]] = {
    "state": [
        {**COMMON, "online": True, "agent": "0.1.0", "boot": "b7f3c2"},
        {**COMMON, "online": False, "agent": "0.1.0", "boot": 12},       # the last will
    ],
    "birth": [{
        **COMMON, "site": "hz-xihu", "location": {"lat": 30.2741, "lon": 120.1551, "alt": 12}, "agent": "0.1.0",
        "devices": [
            {"id": "aq-01", "kind": "air_monitor", "driver": "modbus", "location": None,
             "points": [{"name": "pm25", "unit": "ug/m3", "type": "number", "writable": False},
                        {"name": "fan", "unit": None, "type": "bool", "writable": True}]},
            {"id": "cam-01", "kind": "camera", "driver": "rtsp", "points": [], "model": "vehicles"},
        ]},
        # additive: the gateway's and devices' names and the boot id (agent/status.py birth())
        {**COMMON, "site": "hz-xihu", "name": "Xihu junction 12", "location": None, "agent": "0.1.0",
         "boot": "e0c44c10aa0e", "devices": [{"id": "aq-01", "kind": "air_monitor", "driver": "modbus",
                                              "name": None, "location": None, "points": []}]},
    ],
    "telemetry": [
        json.loads(CONTRACT_TELEMETRY),
        {**COMMON, "hist": True, "device": "fp-01", "readings": [
            {"p": "zone1", "v": True, "t": TS, "q": "good"},
            {"p": "status", "v": "fault", "t": TS, "q": "good"},
            {"p": "pm10", "v": None, "u": "ug/m3", "t": TS, "q": "bad"},
            {"p": "temp", "v": None, "t": TS, "q": "stale"},
            {"p": "count", "v": 3, "t": TS, "q": "good"}]},
    ],
    "event": [
        {**json.loads(CONTRACT_EVENT), "evidence": [{"name": "0.jpg", "sha256": JPEG_SHA, "bytes": 48211}]},
        {**COMMON, "id": "gw-01-8", "device": "fp-01", "type": "fire.alarm", "severity": "critical",
         "data": {"zone": 3}, "t": TS - 5},
        # additive: evidence media type, and chunks for a file split over the size limit (agent/app.py)
        {**COMMON, "id": "gw-01-88", "device": "cam-01", "type": "evidence.clip", "severity": "info",
         "data": {"event": "gw-01-87"}, "evidence": [
             {"name": "0.jpg", "sha256": JPEG_SHA, "bytes": 48211, "type": "image/jpeg"},
             {"name": "clip.mp4", "sha256": JPEG_SHA, "bytes": 600000, "type": "video/mp4", "chunks": 3}]},
    ],
    "metrics": [
        {**COMMON, "cpu": 12.5, "memory": {"pct": 40, "used": 100}, "disk": 71,
         "buffer": {"depth": 0, "bytes": 0, "oldest_age_s": None, "evictions": 0},
         "devices": {"aq-01": {"errors": 0, "online": True, "last_read_ms": 12}},
         "uplink": {"connected": True}, "inference": {"cam-01": {"p50_ms": 41}}},
        {**COMMON, "cpu": 1, "memory": 2, "disk": 3, "devices": {},
         "buffer": {"depth": 5, "bytes": 900, "oldest_age_s": 3.5, "evictions": {"2": 4, "3": 10}}},
        # the shape agent/status.py metrics() and agent/health.py send (additive figures)
        {**COMMON, "commands": {"received": 3, "executed": 2, "succeeded": 1, "failed": 1, "answered_refusals": 1,
                                "unanswered": 0, "last_from_centre_ms": TS, "refused": {"expired": 1}},
         "cpu": {"agent_percent": 2.3, "system_percent": 41.0, "cores": 4},
         "memory": {"agent_rss_bytes": 111861760, "system_used_percent": 8.4},
         "disk": {"path": "/var/lib/edge-agent", "free_bytes": 83582820352, "used_percent": 23.3},
         "buffer": {"depth": 0, "bytes": 0, "oldest_age_s": None, "write_errors": 0,
                    "evictions": {"life_safety": 0, "alarm": 0, "telemetry": 0, "bulk": 0}},
         "uplink": {"state": "connected", "connects": 1, "published": 40, "acked": 40, "rejected": 0},
         "devices": {"aq-01": {"online": True, "errors": 0, "last_read_ms": TS, "readings": 195}}},
    ],
    "cmd_result": [
        {**COMMON, "id": "r1", "ok": True, "result": {"phase": 2}},
        {**COMMON, "id": "r2", "ok": True, "result": None},
        {**COMMON, "id": "r3", "ok": False, "error": "expired"},
        # additive: the {code, message} object the agent sends (agent/commands.py)
        {**COMMON, "id": "r4", "ok": False, "error": {"code": "bad_args", "message": "value: Field required"}},
    ],
    "cmd_request": [
        {"id": "r1", "ts": TS, "expires": TS + 60_000, "args": {"phase": 2, "seconds": 20}, "sig": "ab" * 32},
    ],
}


def broken(kind: str, index: int = 0, **changes: Any) -> dict[str, Any]:
    """A valid message of ``kind`` with keys replaced (value ``...`` deletes the key)."""
    message = copy.deepcopy(VALID[kind][index])
    for key, value in changes.items():
        if value is ...:
            del message[key]
        else:
            message[key] = value
    return message


def reading(**changes: Any) -> dict[str, Any]:
    return {**{"p": "pm25", "v": 1.0, "t": TS, "q": "good"}, **changes}


INVALID: list[tuple[str, str, dict[str, Any], str]] = [
    # (case, kind, message, a fragment of the expected error)
    ("missing seq", "telemetry", broken("telemetry", seq=...), "'seq' is a required property"),
    ("missing hist", "state", broken("state", hist=...), "'hist' is a required property"),
    ("v as a string", "telemetry", broken("telemetry", v="1"), "v: '1' is not of type 'integer'"),
    ("v of a future contract", "event", broken("event", v=2), "v: 1 was expected"),
    ("seq negative", "telemetry", broken("telemetry", seq=-1), "seq: -1 is less than the minimum"),
    ("seq fractional", "telemetry", broken("telemetry", seq=1.5), "seq: 1.5 is not of type 'integer'"),
    ("ts in seconds", "telemetry", broken("telemetry", ts=1763712000), "ts: 1763712000 is less than the minimum"),
    ("ts in microseconds", "state", broken("state", ts=TS * 1000), "ts:"),
    ("hist not a bool", "metrics", broken("metrics", hist=0), "hist: 0 is not of type 'boolean'"),
    ("gw with a space", "telemetry", broken("telemetry", gw="gw 01"), "gw: 'gw 01' does not match"),
    ("gw with a slash", "state", broken("state", gw="hz/gw-01"), "gw:"),
    ("gw too long", "state", broken("state", gw="g" * 65), "gw:"),
    ("gw empty", "state", broken("state", gw=""), "gw:"),
    ("gw with a trailing newline", "state", broken("state", gw="gw-01\n"), "gw:"),
    ("event id with a wildcard", "event", broken("event", id="gw-01+1"), "id:"),
    ("unknown top-level key", "telemetry", broken("telemetry", unit="ug/m3"), "'unit' was unexpected"),
    ("bad severity", "event", broken("event", severity="high"), "severity: 'high' is not one of"),
    ("event without data", "event", broken("event", data=...), "'data' is a required property"),
    ("event type with spaces", "event", broken("event", type="red light"), "type:"),
    ("evidence sha256 upper case", "event",
     broken("event", evidence=[{"name": "0.jpg", "sha256": JPEG_SHA.upper(), "bytes": 1}]), "evidence[0].sha256"),
    ("evidence without size", "event", broken("event", evidence=[{"name": "0.jpg", "sha256": JPEG_SHA}]),
     "evidence[0]: 'bytes' is a required property"),
    ("quality unknown", "telemetry", broken("telemetry", readings=[reading(q="ok")]), "readings[0].q: 'ok' is not one of"),
    ("null value with good quality", "telemetry", broken("telemetry", readings=[reading(v=None)]),
     "readings[0].q: 'good' is not one of ['bad', 'stale'] (a null value needs quality bad or stale)"),
    ("value an object", "telemetry", broken("telemetry", readings=[reading(v={"a": 1})]), "readings[0].v"),
    ("value a long string", "telemetry", broken("telemetry", readings=[reading(v="x" * 300)]), "readings[0].v"),
    ("reading without time", "telemetry", broken("telemetry", readings=[{"p": "a", "v": 1, "q": "good"}]),
     "readings[0]: 't' is a required property"),
    ("reading with unknown key", "telemetry", broken("telemetry", readings=[reading(unit="C")]), "'unit' was unexpected"),
    ("empty batch", "telemetry", broken("telemetry", readings=[]), "readings: [] should be non-empty"),
    ("state without boot", "state", broken("state", boot=...), "'boot' is a required property"),
    ("birth device without points", "birth",
     broken("birth", devices=[{"id": "aq-01", "driver": "modbus"}]), "devices[0]: 'points' is a required property"),
    ("birth location out of range", "birth", broken("birth", location={"lat": 91, "lon": 0}), "location"),
    ("metrics without buffer", "metrics", broken("metrics", buffer=...), "'buffer' is a required property"),
    ("metrics device errors negative", "metrics",
     broken("metrics", devices={"aq-01": {"errors": -1, "online": True}}), "devices.aq-01.errors"),
    ("metrics device id bad", "metrics", broken("metrics", devices={"aq 01": {"errors": 0, "online": True}}), "devices"),
    ("result and error", "cmd_result", broken("cmd_result", error="x"), "'error' must not be present when ok is true"),
    ("failure without error", "cmd_result", broken("cmd_result", 2, error=...), "'error' is a required property"),
    ("failure with result", "cmd_result", broken("cmd_result", 2, result=1), "'result' must not be present when ok is false"),
    ("unsigned request", "cmd_request", broken("cmd_request", sig=...), "'sig' is a required property"),
    ("request args a list", "cmd_request", broken("cmd_request", args=[1]), "args: [1] is not of type 'object'"),
    ("not an object", "state", [1, 2], "is not of type 'object'"),  # type: ignore[list-item]
    # the additive fields, with a wrong type
    ("error code a number", "cmd_result", broken("cmd_result", 3, error={"code": 5, "message": "x"}), "error:"),
    ("error without message", "cmd_result", broken("cmd_result", 3, error={"code": "expired"}), "error:"),
    ("error code with spaces", "cmd_result", broken("cmd_result", 3, error={"code": "bad args", "message": "x"}),
     "error:"),
    ("evidence chunks a string", "event",
     broken("event", 2, evidence=[{"name": "clip.mp4", "sha256": JPEG_SHA, "bytes": 9, "chunks": "3"}]),
     "evidence[0].chunks: '3' is not of type 'integer'"),
    ("evidence type a number", "event",
     broken("event", 2, evidence=[{"name": "0.jpg", "sha256": JPEG_SHA, "bytes": 9, "type": 1}]),
     "evidence[0].type: 1 is not of type 'string'"),
    ("metrics commands count a string", "metrics",
     broken("metrics", 2, commands={"received": "3"}), "commands.received: '3' is not of type 'integer'"),
    ("metrics write_errors negative", "metrics",
     broken("metrics", 2, buffer={"depth": 0, "bytes": 0, "oldest_age_s": None, "evictions": 0, "write_errors": -1}),
     "buffer.write_errors"),
    ("metrics device readings a string", "metrics",
     broken("metrics", 2, devices={"aq-01": {"online": True, "errors": 0, "readings": "195"}}),
     "devices.aq-01.readings"),
    ("metrics cores a string", "metrics", broken("metrics", 2, cpu={"cores": "4"}), "cpu:"),
    ("birth name a number", "birth", broken("birth", 1, name=12), "name: 12 is not of type"),
    ("birth boot empty", "birth", broken("birth", 1, boot=""), "boot:"),
]


@pytest.mark.parametrize("name", sorted(contract.SCHEMA_KINDS | {"common"}))
def test_schema_files_are_valid_draft_2020_12(name: str) -> None:
    schema = contract.load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_contract_telemetry_example_is_valid_verbatim() -> None:
    assert contract.validate("telemetry", json.loads(CONTRACT_TELEMETRY)) == []


def test_contract_event_example_is_valid_but_for_its_sha256_placeholder() -> None:
    # CONTRACT.md writes the hash as "…"; the contract means a real sha256 (64 hex).
    assert contract.validate("event", json.loads(CONTRACT_EVENT)) == [
        "evidence[0].sha256: '…' does not match '^[0-9a-f]{64}$(?!\\\\n)'"]


@pytest.mark.parametrize("kind,index", [(k, i) for k, ms in VALID.items() for i in range(len(ms))])
def test_valid_messages(kind: str, index: int) -> None:
    assert contract.validate(kind, VALID[kind][index]) == []


@pytest.mark.parametrize("case,kind,message,expected", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_messages_are_rejected_with_a_readable_reason(case: str, kind: str, message: Any, expected: str) -> None:
    errors = contract.validate(kind, message)
    assert errors, f"{case}: accepted"
    assert any(expected in e for e in errors), errors


def test_compiled_validators_agree_with_the_schemas_as_written() -> None:
    # contract.validator() resolves $refs and rewrites unevaluatedProperties for speed; the verdicts
    # must be those of the schema files themselves.
    cases = [(k, m) for k, ms in VALID.items() for m in ms] + [(k, m) for _, k, m, _ in INVALID]
    for kind, message in cases:
        reference = Draft202012Validator(contract.load_schema(kind), registry=contract._registry())
        assert reference.is_valid(message) == (contract.validate(kind, message) == []), (kind, message)


def test_readings_from_the_model_are_valid_telemetry() -> None:
    readings = [Reading("pm25", 35.2, "ug/m3", TS), Reading("door", False, None, TS),
                Reading("pm10", None, "ug/m3", TS, q="bad"), Reading("mode", "auto", "", TS, q="stale")]
    message = {**COMMON, "device": "aq-01", "readings": [r.to_wire() for r in readings]}
    assert contract.validate("telemetry", message) == []


def test_validators_are_cached() -> None:
    assert contract.validator("telemetry") is contract.validator("telemetry")


def test_evidence_has_no_schema_and_unknown_kinds_are_named() -> None:
    with pytest.raises(ValueError, match="raw bytes"):
        contract.load_schema("evidence")
    with pytest.raises(ValueError, match="unknown message kind 'telemtry'"):
        contract.validate("telemtry", {})


# -- topics -------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix,kind,rest", [
    ("state", "state", ""), ("birth", "birth", ""), ("metrics", "metrics", ""),
    ("telemetry/aq-01", "telemetry", "aq-01"), ("event/cam-01", "event", "cam-01"),
    ("evidence/gw-01-1043/0.jpg", "evidence", "gw-01-1043/0.jpg"),
    ("cmd/signal.priority", "cmd_request", "signal.priority"), ("cmd_result/r1", "cmd_result", "r1"),
])
@pytest.mark.parametrize("prefix", ["citybrain", "city/hz", "v1"])
def test_topics_round_trip(prefix: str, suffix: str, kind: str, rest: str) -> None:
    topic = contract.topic(prefix, "hz-xihu", "gw-01", suffix)
    assert topic == f"{prefix}/v1/hz-xihu/gw-01/{suffix}"
    assert contract.kind_of_topic(suffix) == kind
    assert contract.parse_topic(topic) == (prefix, "hz-xihu", "gw-01", kind, rest)


@pytest.mark.parametrize("topic,why", [
    ("citybrain/v1/hz/gw-01/telemetry", "'telemetry' topics take 1 level"),
    ("citybrain/v1/hz/gw-01/state/x", "'state' topics take 0 level(s)"),
    ("citybrain/v1/hz/gw-01/foo", "unknown topic kind 'foo'"),
    ("citybrain/v2/hz/gw-01/state", "not a contract v1 topic"),
    ("citybrain/v1/hz/gw 01/state", "gateway 'gw 01' is not an id"),
    ("citybrain/v1/hz/gw-01/telemetry/", "'' is not an id"),
    ("v1/hz/gw-01/state", "not a contract v1 topic"),
    ("", "not a contract v1 topic"),
])
def test_parse_topic_rejects_what_is_not_a_contract_topic(topic: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        contract.parse_topic(topic)


def test_topic_refuses_bad_ids_and_wildcards() -> None:
    with pytest.raises(ValueError, match="site"):
        contract.topic("citybrain", "+", "gw-01", "state")
    with pytest.raises(ValueError, match="not an id"):
        contract.topic("citybrain", "hz", "gw-01", "telemetry/a#")
    with pytest.raises(ValueError, match="wildcards"):
        contract.topic("city/#", "hz", "gw-01", "state")
    assert contract.subscription() == "citybrain/v1/+/+/#"
    assert contract.subscription("p", "hz", "gw-01") == "p/v1/hz/gw-01/#"


# -- whole publications ---------------------------------------------------------------------------

def test_check_accepts_a_valid_publication() -> None:
    checked = contract.check("citybrain/v1/hz/gw-01/telemetry/aq-01", CONTRACT_TELEMETRY.encode())
    assert checked.problems == [] and checked.parts.kind == "telemetry" and checked.message["seq"] == 1042


@pytest.mark.parametrize("topic,payload,expected", [
    ("citybrain/v1/hz/gw-02/telemetry/aq-01", CONTRACT_TELEMETRY, "gw: 'gw-01' does not match the topic's gateway 'gw-02'"),
    ("citybrain/v1/hz/gw-01/telemetry/aq-02", CONTRACT_TELEMETRY, "does not match the topic's device 'aq-02'"),
    ("citybrain/v1/hz/gw-01/cmd_result/r9", json.dumps(VALID["cmd_result"][0]), "request id 'r9'"),
    ("citybrain/v1/sh/gw-01/birth", json.dumps(VALID["birth"][0]), "topic's site 'sh'"),
    ("citybrain/v1/hz-xihu/gw-01/birth",
     json.dumps(broken("birth", devices=VALID["birth"][0]["devices"] * 2)), "id 'aq-01' is listed twice"),
    ("citybrain/v1/hz/gw-01/cmd/x", json.dumps(broken("cmd_request", expires=TS - 1)), "is before ts"),
    ("citybrain/v1/hz/gw-01/state", b"\xff\xfe", "payload: not JSON"),
    ("citybrain/v1/hz/gw-01/state", b"", "payload: not JSON"),
    ("citybrain/v1/hz/gw-01/state", b"[1]", "expected a JSON object, got list"),
    ("citybrain/v1/hz/gw-01/state", b"null", "expected a JSON object, got NoneType"),
    ("citybrain/v1/hz/gw-01/nope", b"{}", "topic:"),
])
def test_check_finds_what_a_schema_cannot(topic: str, payload: str | bytes, expected: str) -> None:
    problems = contract.check(topic, payload).problems
    assert any(expected in p for p in problems), problems


def test_evidence_is_bytes_and_always_passes_the_check() -> None:
    checked = contract.check("citybrain/v1/hz/gw-01/evidence/gw-01-1043/0.jpg", b"\xff\xd8jpeg")
    assert checked.problems == [] and checked.message == b"\xff\xd8jpeg"


# -- command signatures ----------------------------------------------------------------------------

def test_signature_covers_the_canonical_request_without_sig() -> None:
    request = {"ts": TS, "id": "r1", "expires": TS + 1, "args": {"b": 1, "a": "é"}}
    assert contract.canonical_json(request) == \
        '{"args":{"a":"é","b":1},"expires":1763712000124,"id":"r1","ts":1763712000123}'.encode()
    signed = {**request, "sig": contract.sign(request, b"k")}
    assert contract.validate("cmd_request", signed) == []
    assert contract.signature_ok(signed, b"k")
    assert not contract.signature_ok(signed, b"other key")
    assert not contract.signature_ok({**signed, "args": {"b": 2, "a": "é"}}, b"k")
    assert not contract.signature_ok(request, b"k")
