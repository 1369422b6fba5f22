"""The agent as drivers see it (the DeviceSink, agent/pipeline.py): a fire alarm that cannot be
written to disk is reported to the driver, which must then withhold its confirm so the device
sends it again."""

from __future__ import annotations

import pytest

from agent.app import Agent
from agent.pipeline import NotDurable
from agent.config import AgentConfig
from agent.core.model import Event
from tests.fakes import next_turn


def make_agent(tmp_path) -> Agent:
    config = AgentConfig.model_validate({
        "gateway": {"id": "gw-sink", "site": "lab"},
        "buffer": {"path": str(tmp_path / "outbox.db"), "max_bytes": "8MiB"},
        "agent": {"state_dir": str(tmp_path / "state")},
    })
    return Agent(config)


def test_fire_alarm_is_committed_before_event_returns(tmp_path):
    agent = make_agent(tmp_path)
    agent.sink.event("fire-01", Event("fire.alarm", "critical", {"zone": 3}))
    stats = agent.outbox.stats()
    assert stats.pending == 0 and stats.depth_by_priority[0] == 1   # on disk, LIFE_SAFETY
    agent.outbox.close()


def test_fire_alarm_that_cannot_be_written_raises_and_is_kept(tmp_path):
    agent = make_agent(tmp_path)
    db = agent.outbox.db
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")   # disk full
    with pytest.raises(NotDurable, match="fire.alarm on fire-01"):
        agent.sink.event("fire-01", Event("fire.alarm", "critical", {"zone": 3, "text": "x" * 8000}))
    assert agent.outbox.stats().pending == 1      # kept in memory, not lost
    db.execute("PRAGMA max_page_count = 1000000")  # space returns
    agent.outbox.flush()
    assert agent.outbox.stats().depth_by_priority[0] == 1
    agent.outbox.close()


def test_ordinary_events_do_not_wait_for_the_disk(tmp_path):
    agent = make_agent(tmp_path)
    agent.sink.event("aq-01", Event("threshold.pm25", "major", {"value": 80}))
    assert agent.outbox.stats().pending == 1   # committed with the next group commit
    agent.outbox.close()


def test_evidence_is_listed_in_the_event_and_chunked_over_the_size_limit(tmp_path):
    import hashlib

    import orjson

    from agent.contract import check
    from agent.core.model import EvidenceFile
    agent = make_agent(tmp_path)
    limit = agent.config.uplink.mqtt.max_payload
    big = bytes(range(256)) * (limit // 256 * 2 + 3)        # a little over two chunks
    small = b"\xff\xd8 jpeg \xff\xd9"
    event_id = agent.sink.evidence("cam-01", Event("violation.red_light", "major", {"track": 17}),
                              [EvidenceFile("0.jpg", small), EvidenceFile("clip.mp4", big, "video/mp4")])
    agent.outbox.flush()
    agent.outbox.start_session()
    messages = agent.outbox.take(100)
    event = next(m for m in messages if "/event/" in m.topic)
    assert check(event.topic, event.payload).problems == []
    listed = {e["name"]: e for e in orjson.loads(event.payload)["evidence"]}
    assert listed["0.jpg"] == {"name": "0.jpg", "sha256": hashlib.sha256(small).hexdigest(), "bytes": len(small),
                               "type": "image/jpeg"}
    assert listed["clip.mp4"]["chunks"] == 3 and listed["clip.mp4"]["bytes"] == len(big)
    files = {m.topic.rsplit("/", 1)[1]: m.payload for m in messages if f"/evidence/{event_id}/" in m.topic}
    assert files["0.jpg"] == small
    assert files["clip.mp4.0"] + files["clip.mp4.1"] + files["clip.mp4.2"] == big
    assert all(len(p) <= limit for p in files.values())
    assert messages.index(event) < min(messages.index(m) for m in messages if "/evidence/" in m.topic)
    agent.outbox.close()


def test_latest_reading_of_another_device(tmp_path):
    from agent.core.model import Reading
    config = AgentConfig.model_validate({
        "gateway": {"id": "gw-sink", "site": "lab"},
        "buffer": {"path": str(tmp_path / "outbox.db")}, "agent": {"state_dir": str(tmp_path / "state")},
        "devices": [{"id": "aq-01", "driver": "modbus", "unit": 1, "profile": "air_monitor_rs485",
                     "connection": {"type": "tcp", "host": "127.0.0.1", "port": 1}}]})
    agent = Agent(config)   # built, not run: no device is contacted
    assert agent.sink.latest("aq-01", "pm25") is None
    agent.sink.readings("aq-01", [Reading("pm25", 30.0, "ug/m3", 1), Reading("pm10", 50.0, "ug/m3", 1)])
    agent.sink.readings("aq-01", [Reading("pm25", 31.5, "ug/m3", 2), Reading("pm10", 52.0, "ug/m3", 2)])
    assert agent.sink.latest("aq-01", "pm25").value == 31.5
    assert agent.sink.latest("aq-01", "o3") is None and agent.sink.latest("nowhere", "pm25") is None
    agent.outbox.close()


def test_committed_resolves_only_once_the_data_is_on_disk(tmp_path):
    import asyncio

    async def scenario() -> None:
        agent = make_agent(tmp_path)
        agent.sink.event("aq-01", Event("threshold.pm25", "major", {"value": 80}))
        waiter = agent.sink.committed()
        await next_turn()
        assert not waiter.done()
        db = agent.outbox.db
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")   # disk full
        agent.sink.event("aq-01", Event("threshold.pm25", "major", {"text": "x" * 8000}))
        agent.sink.commit()
        assert not waiter.done(), "nothing may be acknowledged while the disk refuses it"
        db.execute("PRAGMA max_page_count = 1000000")
        agent.sink.commit()
        assert waiter.done() and waiter.exception() is None
        agent.outbox.close()

    asyncio.run(scenario())


def test_a_family_store_lives_under_the_state_directory_and_state_nobody_reads_is_logged(tmp_path, caplog):
    from agent.core.state import StateStore

    StateStore.of_family(tmp_path / "state", "signal_controller").put("tsc-old", {"format": 1})
    agent = make_agent(tmp_path)   # no signal controller configured: nothing would read that record
    assert "keeps state for tsc-old, but no signal_controller device is configured" in caplog.text
    store = agent.sink.store("signal_controller")
    assert store is not None and store.directory == tmp_path / "state" / "families" / "signal_controller"
    assert store.get("tsc-old") == {"format": 1}   # kept
    with pytest.raises(ValueError):
        agent.sink.store("../outbox")
    agent.outbox.close()
