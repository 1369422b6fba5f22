"""The supervisor's restarts and periodic jobs, and the agent's centre-silence watch that runs as
one of them, on virtual time: restart delays, job times and silences are checked in virtual
seconds, without waiting for any of them."""

from __future__ import annotations

import asyncio
import socket
import uuid

import orjson
import pytest

from agent import contract
from agent.app import Agent
from agent.config import AgentConfig
from agent.core.backoff import Backoff
from agent.core.clock import VirtualClock
from agent.supervisor import RESTART, Supervisor
from tests.fakes import CrashingTask, IdleRunner, next_turn

pytestmark = pytest.mark.timeout(30)


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 9) for a, b in zip(times, times[1:])]


def test_a_crashed_task_is_closed_and_restarted_with_growing_delays():
    async def scenario() -> None:
        clock = VirtualClock()
        supervisor = Supervisor(clock=clock)
        task = CrashingTask(clock, crashes=4)
        supervisor.keep_running("runner:crashy", task.run, task.close)
        await clock.advance(60)
        assert len(task.starts) == 5, task.starts              # four crashes, then it runs
        assert task.closes == task.starts[:4]                  # closed at once after each crash
        for n, gap in enumerate(gaps(task.starts), start=1):   # initial * 2**(n-1), plus up to initial
            floor = RESTART.initial * 2 ** (n - 1)
            assert floor <= gap <= floor + RESTART.initial, (n, gap)
        assert not supervisor.tasks["runner:crashy"].done()
        await supervisor.stop()

    asyncio.run(scenario())


def test_restart_delays_stop_growing_at_the_cap_and_a_task_that_returns_is_not_restarted():
    async def scenario() -> None:
        clock = VirtualClock()
        supervisor = Supervisor(Backoff(initial=1.0, max=3.0), clock=clock)
        crashy = CrashingTask(clock, crashes=6)
        supervisor.keep_running("crashy", crashy.run, crashy.close)
        finished: list[float] = []

        async def once() -> None:
            finished.append(clock.monotonic())
        supervisor.keep_running("once", once)
        await clock.advance(60)
        assert gaps(crashy.starts)[2:] == [3.0] * 4             # 4 + jitter and more: capped at max
        assert all(gap <= 3.0 for gap in gaps(crashy.starts))
        assert finished == [0.0] and supervisor.tasks["once"].done()
        assert not supervisor.tasks["crashy"].done()           # one task's crashes never stop another
        assert await supervisor.stop() == []

    asyncio.run(scenario())


def test_periodic_jobs_run_at_their_times_and_one_that_fails_runs_again():
    async def scenario() -> None:
        clock = VirtualClock()
        supervisor = Supervisor(clock=clock)
        status: list[float] = []
        commits: list[float] = []

        def commit() -> None:
            commits.append(clock.monotonic())
            if len(commits) == 2:
                raise OSError("disk full")
        supervisor.every("status", 2.5, lambda: status.append(clock.monotonic()), now=True)
        supervisor.every("commit", 1.0, commit)
        await clock.advance(5.0)
        assert status == [0.0, 2.5, 5.0]
        assert commits == [1.0, 2.0, 3.0, 4.0, 5.0]
        with pytest.raises(ValueError, match="runs already"):
            supervisor.every("commit", 1.0, commit)
        assert await supervisor.stop(keep={"status"}) == []
        await clock.advance(5.0)
        assert commits[-1] == 5.0 and status[-1] == 10.0
        await supervisor.stop()

    asyncio.run(scenario())


def test_a_task_stuck_past_the_stop_timeout_is_left_behind_and_named():
    async def scenario() -> None:
        supervisor = Supervisor(clock=VirtualClock())
        release = asyncio.Event()

        async def stubborn() -> None:
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    pass   # a library call that swallows the cancel
        supervisor.start("stubborn", stubborn())
        await next_turn()
        assert await supervisor.stop(timeout=0.05) == ["stubborn"]   # real time: the bound guards stuck I/O
        release.set()

    asyncio.run(scenario())


# -- the agent's centre-silence watch -----------------------------------------------------------------

KEY = b"0123456789abcdef0123456789abcdef"
# the agent's tasks asleep on its clock when idle: the commit, metrics, status and centre-watch jobs,
# and the uplink waiting to reconnect (it has no broker here)
AGENT_SLEEPERS = 5


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_agent_lets_go_of_what_it_holds_once_per_silence_of_the_centre(tmp_path):
    key_file = tmp_path / "command.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    config = AgentConfig.model_validate({
        "gateway": {"id": "gw-watch", "site": "lab"},
        "uplink": {"mqtt": {"host": "127.0.0.1", "port": refused_port()}},
        "buffer": {"path": str(tmp_path / "outbox.db")}, "agent": {"state_dir": str(tmp_path / "state")},
        "commands": {"key": {"file": str(key_file)}, "allow": ["buffer.stats"], "centre_silence": "10s"}})
    clock = VirtualClock()
    agent = Agent(config, clock=clock)
    holder = IdleRunner("holder", clock)
    agent.runners.append(holder)   # as a family's runner that holds something for the centre (a priority)

    def command_from_the_centre() -> None:
        now = clock.now_ms()
        request = {"id": uuid.uuid4().hex[:16], "ts": now, "expires": now + 60_000, "args": {}}
        request["sig"] = contract.sign(request, KEY)
        assert agent.commands is not None
        agent.commands.on_message(agent.topic("cmd/buffer.stats"), orjson.dumps(request))

    async def scenario() -> None:
        running = asyncio.create_task(agent.run())
        try:
            await clock.run_for(0.5, sleepers=AGENT_SLEEPERS)
            command_from_the_centre()                              # heard at 0.5
            assert holder.heard == [0.5]
            await clock.run_for(30, sleepers=AGENT_SLEEPERS)       # watched every second: silent after 10 s
            assert holder.lost == [11.0]                           # once, not at every watch
            command_from_the_centre()                              # heard again at 30.5 ...
            await clock.run_for(30, sleepers=AGENT_SLEEPERS)
            assert holder.heard == [0.5, 30.5] and holder.lost == [11.0, 41.0]   # ... and silent again
            assert agent.commands is not None and agent.commands.stats.succeeded == 2
        finally:
            agent.request_stop()
            await asyncio.wait_for(running, 10)

    asyncio.run(scenario())
