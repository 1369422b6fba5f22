"""The durable record of a GB/T 20999 hold (hold_record.py) and the store it lives in
(agent/core/state.py): atomic writes, a record written before the hold and removed after the
restore, a corrupt record reported without stopping anything, a record for a device no longer
configured reported and kept, a disk that refuses the record refusing the hold. Against the
GB/T 20999 simulator on real UDP, with real files."""

from __future__ import annotations

import os

import orjson
import pytest

from agent.core.state import StateStore, StateUnreadable
from firmware_bridges.signal_controller import DRIVER
from firmware_bridges.signal_controller.errors import Refused
from firmware_bridges.signal_controller.gbt20999.hold_record import HoldRecord, report_orphans
from firmware_bridges.signal_controller.runner import FAMILY
from tests.fakes import RecordingSink, until
from tests.test_gbt20999_bridge import DEVICE, LOCAL_FIXED_TIME, events, gb_device, gbsim, held_phase, latest, sync
from tests.test_signal_controller import running

__all__ = ["gbsim"]   # the fixture, imported for the tests below
pytestmark = pytest.mark.timeout(60)


def record_path(tmp_path):
    return tmp_path / "families" / FAMILY / f"{DEVICE}.json"


def test_the_family_store_is_the_drivers_name():
    assert DRIVER.name == FAMILY


def test_a_write_replaces_the_document_whole_and_a_failed_one_leaves_the_old(tmp_path, monkeypatch):
    store = StateStore.of_family(tmp_path, "signal_controller")
    assert store.keys() == [] and store.get("tsc-1") is None
    store.put("tsc-1", {"plan": 1})
    store.put("tsc-1", {"plan": 2})
    assert store.get("tsc-1") == {"plan": 2} and store.keys() == ["tsc-1"]
    assert store.path("tsc-1") == tmp_path / "families" / "signal_controller" / "tsc-1.json"

    def refuse(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        store.put("tsc-1", {"plan": 3})
    monkeypatch.undo()
    assert store.get("tsc-1") == {"plan": 2}
    assert sorted(p.name for p in store.directory.iterdir()) == ["tsc-1.json"]   # no temporary file left
    (store.directory / ".tsc-2.abc.tmp").write_bytes(b'{"pl')   # a write cut short by a power cut
    assert store.keys() == ["tsc-1"]
    store.delete("tsc-1")
    store.delete("tsc-1")
    assert store.keys() == [] and store.get("tsc-1") is None


@pytest.mark.parametrize("key", ["../etc", "", ".hidden", "a/b", "x" * 65, 7])
def test_a_key_that_is_not_an_id_is_refused(tmp_path, key):
    with pytest.raises(ValueError, match="id"):
        StateStore(tmp_path).put(key, {})
    with pytest.raises(ValueError, match="id"):
        StateStore.of_family(tmp_path, "../x")


@pytest.mark.parametrize("content, why", [(b'{"format": 1, "run', "not JSON"), (b"[1, 2]", "not an object"),
                                          (b'{"format": 1}', "device_id"), (b"\xff\xfe", "not JSON")])
def test_a_corrupt_file_raises_for_its_key_only(tmp_path, content, why):
    store = StateStore(tmp_path)
    (tmp_path / "bad.json").write_bytes(content)
    store.put("good", {"plan": 1})
    with pytest.raises(StateUnreadable, match=why):
        document = store.get("bad")
        HoldRecord.parse(document)
    assert store.get("good") == {"plan": 1}


@sync
async def test_the_record_is_on_disk_during_the_hold_and_gone_after_the_restore(gbsim, tmp_path):
    sink = RecordingSink(state_dir=tmp_path)
    async with running(gb_device(gbsim), sink) as runner:
        await until(lambda: latest(sink, "phase2") is not None, 5, "first poll")
        grant = await runner.request_priority(DEVICE, held_phase(gbsim), duration_s=3)
        record = HoldRecord.parse(orjson.loads(record_path(tmp_path).read_bytes()))
        assert record == HoldRecord(DEVICE, runner.link.describe, LOCAL_FIXED_TIME, 1, grant.preempt,
                                    record.saved_ms, record.expires_ms)
        assert 0 <= grant.expires_ms - record.expires_ms < 500
        extended = await runner.request_priority(DEVICE, grant.phase, duration_s=5)
        await until(lambda: HoldRecord.parse(orjson.loads(record_path(tmp_path).read_bytes())).expires_ms
                    > record.expires_ms, 2, "the extension recorded")
        assert extended.expires_ms > grant.expires_ms
        await runner.release_priority(DEVICE)
        assert gbsim.held_stage is None and not record_path(tmp_path).exists()


@sync
async def test_a_record_left_by_a_killed_run_is_restored_when_the_controller_answers(gbsim, tmp_path):
    device = gb_device(gbsim)
    describe = DRIVER.options(device).connection.describe()
    StateStore.of_family(tmp_path, FAMILY).put(DEVICE, HoldRecord(DEVICE, describe, LOCAL_FIXED_TIME, 2, 1,
                                                                  1_700_000_000_000, 1_700_000_030_000).document())
    gbsim.sim.write(bytes((17, 1, 2, 1)), b"\x01")     # what the killed run had asked: stage 1 held
    assert gbsim.held_stage == 1 and gbsim.run_mode == 0x15
    sink = RecordingSink(state_dir=tmp_path)
    async with running(device, sink) as runner:
        await until(lambda: gbsim.held_stage is None and gbsim.run_mode == LOCAL_FIXED_TIME, 5, "restored")
        assert gbsim.plan_number == 2
        await until(lambda: len(events(sink, "signal.control")) == 2, 2, "the restore audited")
        assert not record_path(tmp_path).exists()
        audit = events(sink, "signal.control")
        assert [a["step"] for a in audit] == ["restart_found_hold", "restored"]
        assert audit[1] == {"step": "restored", "run_mode": "local_fixed_time", "run_mode_code": LOCAL_FIXED_TIME,
                            "plan": 2, "reason": "agent restarted during a hold"}
        assert runner.priority.as_dict()["pending_release"] == []
        # this run holds and lets go as any other: no restart reason on its own restore
        await runner.request_priority(DEVICE, held_phase(gbsim), duration_s=2)
        await runner.release_priority(DEVICE)
        assert "reason" not in events(sink, "signal.control")[-1]


@sync
async def test_a_corrupt_record_is_reported_and_the_controller_still_served(gbsim, tmp_path):
    record_path(tmp_path).parent.mkdir(parents=True)
    record_path(tmp_path).write_bytes(b'{"format": 1, "device_id": "tsc-gb", "run_mo')
    sink = RecordingSink(state_dir=tmp_path)
    async with running(gb_device(gbsim), sink) as runner:
        await until(lambda: latest(sink, "phase2") is not None, 5, "polls go on")
        unreadable = events(sink, "signal.control")
        assert [e["step"] for e in unreadable] == ["record_unreadable"]
        assert [e.severity for e in sink.events("signal.control")] == ["major"]
        assert "not JSON" in unreadable[0]["error"] and unreadable[0]["record"] == str(record_path(tmp_path))
        # a new hold writes a good record over it and restores as usual
        await runner.request_priority(DEVICE, held_phase(gbsim), duration_s=2)
        await runner.release_priority(DEVICE)
        assert gbsim.run_mode == LOCAL_FIXED_TIME and not record_path(tmp_path).exists()


def test_a_record_for_a_device_no_longer_configured_is_reported_and_kept(tmp_path):
    store = StateStore.of_family(tmp_path, FAMILY)
    gone = HoldRecord("tsc-gone", "gbt20999 udp 192.0.2.9:4050 road 1", LOCAL_FIXED_TIME, 3, 2, 1, 2)
    moved = HoldRecord("tsc-moved", "gbt20999 udp 192.0.2.10:4050 road 1", 0x22, 1, 1, 1, None)
    here = HoldRecord("tsc-here", "gbt20999 udp 192.0.2.11:4050 road 1", LOCAL_FIXED_TIME, 1, 1, 1, None)
    for record in (gone, moved, here):
        store.put(record.device_id, record.document())
    (store.directory / "tsc-junk.json").write_bytes(b"\x00garbage")
    sink = RecordingSink(state_dir=tmp_path)
    configured = {"tsc-moved": "gbt20999 udp 198.51.100.1:4050 road 1", "tsc-here": here.controller}
    assert report_orphans(store, configured, sink) == ["tsc-gone", "tsc-junk", "tsc-moved"]
    by_device = {d.device: d.event for d in sink.event_log}
    assert set(by_device) == {"tsc-gone", "tsc-junk", "tsc-moved"}
    assert all(e.type == "signal.control" and e.severity == "major" and e.data["step"] == "orphaned"
               for e in by_device.values())
    assert by_device["tsc-gone"].data | {"record": ""} == {
        "step": "orphaned", "record": "", "why": "device tsc-gone is not configured", "controller": gone.controller,
        "run_mode": "local_fixed_time", "run_mode_code": LOCAL_FIXED_TIME, "plan": 3, "stage": 2, "saved_ms": 1,
        "expires_ms": 2}
    assert by_device["tsc-moved"].data["why"] == "device tsc-moved is now gbt20999 udp 198.51.100.1:4050 road 1"
    assert "not JSON" in by_device["tsc-junk"].data["error"]
    assert store.keys() == ["tsc-gone", "tsc-here", "tsc-junk", "tsc-moved"]   # all kept


def test_the_driver_reports_orphans_when_it_creates_its_runners(tmp_path, gbsim):
    StateStore.of_family(tmp_path, FAMILY).put("tsc-old", HoldRecord("tsc-old", "x", 0x21, 1, 1, 1, 2).document())
    sink = RecordingSink(state_dir=tmp_path)
    runners = DRIVER.create_runners([gb_device(gbsim)], sink)
    assert [r.device_id for r in runners] == [DEVICE]
    assert [(d.device, d.event.data["step"]) for d in sink.event_log] == [("tsc-old", "orphaned")]


@sync
async def test_a_disk_that_refuses_the_record_refuses_the_hold_before_anything_is_sent(gbsim, tmp_path):
    (tmp_path / "families").write_bytes(b"")   # a file where the directory should be: mkdir fails
    sink = RecordingSink(state_dir=tmp_path)
    async with running(gb_device(gbsim), sink) as runner:
        await until(lambda: latest(sink, "phase2") is not None, 5)
        with pytest.raises(Refused, match="record could not be written"):
            await runner.request_priority(DEVICE, held_phase(gbsim), duration_s=2)
        assert gbsim.held_stage is None and gbsim.run_mode == LOCAL_FIXED_TIME
        assert [what for _, what, _ in gbsim.log] == [] and runner.link.saved is None
        assert runner.priority.active is None


def test_state_of_a_family_with_no_device_configured_is_listed_for_the_agent_to_log(tmp_path):
    from agent.core.state import kept_state
    assert kept_state(tmp_path) == {}
    StateStore.of_family(tmp_path, FAMILY).put("tsc-old", {"format": 1})
    StateStore.of_family(tmp_path, "other").put("x", {})
    StateStore.of_family(tmp_path, "other").delete("x")
    assert kept_state(tmp_path) == {FAMILY: ["tsc-old"]}


@sync
async def test_a_record_found_while_the_controller_is_silent_is_restored_once_it_answers(gbsim, tmp_path):
    device = gb_device(gbsim)
    describe = DRIVER.options(device).connection.describe()
    StateStore.of_family(tmp_path, FAMILY).put(DEVICE, HoldRecord(DEVICE, describe, LOCAL_FIXED_TIME, 1, 2, 1,
                                                                  None).document())
    gbsim.sim.write(bytes((17, 1, 2, 1)), b"\x02")
    gbsim.cut()
    sink = RecordingSink(state_dir=tmp_path)
    async with running(device, sink) as runner:
        await until(lambda: [e for e in events(sink, "signal.control") if e["step"] == "restore_failed"], 5,
                    "a first try")
        await until(lambda: runner.link.restore_failures >= 3, 10, "retries")
        assert gbsim.held_stage == 2 and record_path(tmp_path).exists()
        gbsim.restore()
        await until(lambda: gbsim.held_stage is None and gbsim.run_mode == LOCAL_FIXED_TIME, 5, "restored")
        await until(lambda: events(sink, "signal.control")[-1]["step"] == "restored", 2)
        audit = events(sink, "signal.control")
        assert [a["step"] for a in audit] == ["restart_found_hold", "restore_failed", "restored"]
        assert audit[1]["reason"] == audit[2]["reason"] == "agent restarted during a hold"
        assert audit[2]["attempts"] >= 4 and not record_path(tmp_path).exists()
