"""The priority manager's timers on virtual time: expiry, re-assertion, refreshes under max_hold,
centre silence and release retries, each to the virtual millisecond. The controller is a fake
actuator that records each write and can stop answering (tests/fakes.py); the manager under test
is the real one, its watchdog running as the runner runs it. The same behaviour against the
controller simulator over real SNMP is in tests/test_signal_controller.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.core.clock import VirtualClock
from firmware_bridges.signal_controller.errors import ControllerOffline, PriorityRefused
from firmware_bridges.signal_controller.options import PhaseConfig, PriorityConfig
from firmware_bridges.signal_controller.priority import PriorityManager
from tests.fakes import FakeActuator, RecordingSink

pytestmark = pytest.mark.timeout(20)

DEVICE = "tsc-01"
PHASES = {2: PhaseConfig(approach="N"), 4: PhaseConfig(approach="E")}


class Bench:
    """A priority manager for preempts 1 (phase 2) and 2 (phase 4), on virtual time."""

    def __init__(self, **priority: Any):
        self.clock = VirtualClock()
        self.link = FakeActuator(self.clock)
        self.sink = RecordingSink(self.clock)
        config = PriorityConfig.model_validate({"preempt": {2: 1, 4: 2}, "min_duration": "1s",
                                                "max_duration": "5s", **priority})
        self.manager = PriorityManager(DEVICE, config, PHASES, self.link, self.sink, self.clock)

    def ended(self) -> list[dict[str, Any]]:
        return [e.data for e in self.sink.events("signal.priority_ended")]


@contextlib.asynccontextmanager
async def watched(bench: Bench) -> AsyncIterator[Bench]:
    """The manager's watchdog running, as SignalRunner.run runs it."""
    task = asyncio.create_task(bench.manager.run())
    await bench.clock.advance(0)
    try:
        yield bench
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_grant_is_reasserted_while_held_and_released_at_its_expiry():
    async def scenario() -> None:
        async with watched(Bench(reassert="2s")) as bench:
            clock, link = bench.clock, bench.link
            grant = await bench.manager.request(2, duration_s=5, source="cmd-1")
            assert (grant.granted_s, grant.clamped, grant.preempt) == (5, False, 1)
            assert grant.started_ms == clock.now_ms() and grant.expires_ms - grant.started_ms == 5000
            await clock.advance(4.75)
            assert link.writes_of(1, True) == [0.0, 2.0, 4.0]   # the request, then every 2 s
            assert bench.manager.active is not None and link.writes_of(1, False) == []
            await clock.advance(0.25)
            assert link.writes_of(1, False) == [5.0] and bench.manager.active is None
            await clock.advance(10)
            assert len(link.writes) == 4, "nothing more once released"
        (ended,) = bench.ended()
        assert ended["reason"] == "expired" and ended["held_s"] == 5.0 and ended["release_confirmed"] is True
        assert ended["source"] == "cmd-1"
        started = bench.sink.events("signal.priority_started")[0].data
        assert started["granted_s"] == 5 and started["phase"] == 2

    asyncio.run(scenario())


def test_a_refresh_extends_from_now_never_past_max_hold_and_never_shortens():
    async def scenario() -> None:
        async with watched(Bench(max_hold="6s", reassert="10s")) as bench:
            clock, manager = bench.clock, bench.manager
            long = await manager.request(2, duration_s=300)
            assert long.granted_s == 5 and long.clamped and long.requested_s == 300   # max_duration 5s
            with pytest.raises(PriorityRefused, match="phase 2 holds priority"):
                await manager.request(4, duration_s=3)
            await clock.advance(0.25)
            again = await manager.request(2, duration_s=5)                 # from now: 0.25 + 5
            assert again.refreshed and not again.clamped
            assert again.expires_ms - long.started_ms == 5250
            await clock.advance(2.0)
            capped = await manager.request(2, duration_s=5)                # 2.25 + 5 is past max_hold (6 s)
            assert capped.clamped and capped.granted_s == 3.75
            assert capped.expires_ms - long.started_ms == 6000
            shorter = await manager.request(2, duration_s=1)                # never shortens what was granted
            assert shorter.expires_ms == capped.expires_ms
            await clock.advance(3.5)
            assert manager.active is not None
            await clock.advance(0.25)
            assert manager.active is None and bench.link.writes_of(1, False) == [6.0]
        assert manager.stats.refreshes == 3
        assert [e.type for e in bench.sink.events()] == ["signal.priority_started"] + \
            ["signal.priority_extended"] * 3 + ["signal.priority_ended"]
        assert bench.ended()[0]["held_s"] == 6.0

    asyncio.run(scenario())


def test_the_centre_going_silent_releases_and_a_heartbeat_keeps_the_hold():
    async def scenario() -> None:
        async with watched(Bench(centre_silence="1s")) as bench:
            clock, manager, link = bench.clock, bench.manager, bench.link
            await manager.request(2, duration_s=5)      # a request is the centre talking (at 0)
            await clock.advance(0.5)
            manager.heartbeat()                          # ... heard again at 0.5 ...
            await clock.advance(0.75)
            assert manager.active is not None
            await clock.advance(0.25)                    # ... and silent since: released at 1.5
            assert manager.active is None and link.writes_of(1, False) == [1.5]
            await manager.request(4, duration_s=5)      # at 1.5
            manager.centre_alive(False)                  # the uplink lost the centre: at once
            await clock.advance(0)
            assert manager.active is None and link.writes_of(2, False) == [1.5]
        assert [e["reason"] for e in bench.ended()] == ["centre_silent", "centre_silent"]

    asyncio.run(scenario())


def test_a_release_the_controller_did_not_hear_is_retried_until_it_does():
    async def scenario() -> None:
        async with watched(Bench(reassert="2s")) as bench:
            clock, manager, link = bench.clock, bench.manager, bench.link
            await manager.request(2, duration_s=1)
            link.answering = False                       # the controller stops answering while held
            await clock.advance(1.0)                     # expiry: the release fails
            assert manager.active is None and manager.stats.pending_release == [1]
            await clock.advance(4.5)
            assert link.writes_of(1, False) == [1.0, 3.0, 5.0]   # retried every reassert interval
            link.answering = True
            await clock.advance(2.0)
            assert link.writes_of(1, False) == [1.0, 3.0, 5.0, 7.0] and link.asserted[1] is False
            assert manager.stats.pending_release == []
            await clock.advance(10)
            assert len(link.writes_of(1, False)) == 4, "no retry once released"
        (ended,) = bench.ended()
        assert ended["release_confirmed"] is False and "no snmp response" in ended["error"].lower()
        assert manager.stats.release_failures == 1

    asyncio.run(scenario())


def test_a_request_that_got_no_answer_is_taken_back():
    """The request may have reached the controller and only the answer got lost: the manager takes
    it back at once, and keeps trying until the controller answers."""

    async def scenario() -> None:
        async with watched(Bench(reassert="2s")) as bench:
            clock, manager, link = bench.clock, bench.manager, bench.link
            link.answering = False
            with pytest.raises(ControllerOffline, match="did not answer the priority request for phase 2"):
                await manager.request(2, duration_s=3)
            await clock.advance(0)
            assert manager.active is None and link.writes_of(1, False) == [0.0]
            await clock.advance(2.0)
            link.answering = True
            await clock.advance(2.0)
            assert link.writes_of(1, False) == [0.0, 2.0, 4.0] and link.asserted == {1: False}
            assert manager.stats.pending_release == []
            link.online = False                          # offline: nothing is asked of it
            with pytest.raises(ControllerOffline, match="is offline"):
                await manager.request(2, duration_s=3)
            assert len(link.writes) == 4
        # nothing was granted; the take-back that landed is audited
        assert [(e.type, e.data) for e in bench.sink.events()] == [("signal.priority_release_confirmed", {"preempt": 1})]

    asyncio.run(scenario())


def test_shutdown_releases_what_is_held_and_what_is_pending():
    async def scenario() -> None:
        bench = Bench()
        async with watched(bench):
            await bench.manager.request(2, duration_s=5)
        await bench.manager.shutdown()
        assert bench.link.asserted == {1: False} and bench.ended()[0]["reason"] == "shutdown"

    asyncio.run(scenario())
