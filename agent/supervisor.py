"""The agent's tasks on its event loop: the uplink and each runner kept running (one that crashes
is logged, closed and started again with backoff, and never takes the others with it), periodic
jobs (group commit, status, metrics), and a shutdown bounded in time (a task stuck in a library
call must not keep the agent from stopping).

Restarts and periodic jobs wait on the supervisor's ``clock`` (:mod:`agent.core.clock`; tests give
a virtual one); the bound on stopping stays on real time, since it guards tasks stuck in I/O."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from agent.core.backoff import Backoff, Retry
from agent.core.clock import SYSTEM, Clock

log = logging.getLogger("agent")

RESTART = Backoff(initial=0.5, max=60.0)   # a crashed task: the next start within a second, then slower


class Supervisor:
    def __init__(self, restart: Backoff = RESTART, *, clock: Clock = SYSTEM):
        self.restart = restart
        self.clock = clock
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def keep_running(self, name: str, run: Callable[[], Awaitable[None]],
                     close: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run ``run()`` until it returns; if it crashes, close and start it again with backoff."""
        self.start(name, self._supervise(name, run, close))

    def every(self, name: str, interval: float, job: Callable[[], None], *, now: bool = False) -> None:
        """``job()`` every ``interval`` seconds (also at once with ``now``). A job that raises is
        logged and runs again at its next time."""
        async def periodic() -> None:
            if now:
                self._run_job(name, job)
            while True:
                await self.clock.sleep(interval)
                self._run_job(name, job)
        self.start(name, periodic())

    def start(self, name: str, coro: Awaitable[None]) -> None:
        if name in self.tasks:
            if asyncio.iscoroutine(coro):
                coro.close()   # never to run: without this, Python warns it was never awaited
            raise ValueError(f"a task named {name!r} runs already")
        self.tasks[name] = asyncio.ensure_future(coro)
        self.tasks[name].set_name(name)

    async def stop(self, *, keep: Iterable[str] = (), timeout: float = 5.0) -> list[str]:
        """Cancel every task but those named in ``keep`` and wait at most ``timeout`` for them;
        returns the names of those that did not stop (left behind, logged)."""
        kept = set(keep)
        stopping = [task for name, task in self.tasks.items() if name not in kept]
        for task in stopping:
            task.cancel()
        if not stopping:
            return []
        _, stuck = await asyncio.wait(stopping, timeout=timeout)
        for task in stuck:
            log.error("task %s did not stop within %.0fs; leaving it", task.get_name(), timeout)
        for name in [n for n, t in self.tasks.items() if t in stopping]:
            del self.tasks[name]
        return [task.get_name() for task in stuck]

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]],
                         close: Callable[[], Awaitable[None]] | None) -> None:
        retry = Retry(self.restart)
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:   # noqa: BLE001 - a bug in one runner (or in the uplink) must not stop the rest
                delay = retry.next_delay()
                log.exception("%s crashed; restarting in %.1fs", name, delay)
                if close is not None:
                    try:
                        await close()
                    except Exception:   # noqa: BLE001
                        log.exception("%s failed to close", name)
                await self.clock.sleep(delay)

    @staticmethod
    def _run_job(name: str, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:   # noqa: BLE001 - the next turn may work (a full disk frees up)
            log.exception("%s failed; trying again at its next time", name)
