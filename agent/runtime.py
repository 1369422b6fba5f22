"""Running an agent until it stops, shared by ``edge-agent run`` and ``edge-agent demo``: a
restart on the config file when ``config.apply`` asks for one, a return to the previous file when
the new one cannot even start, and the live view for a technician at a terminal."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import config_apply
from agent.app import Agent
from agent.config import AgentConfig, load_config
from agent.core.config import ConfigError


def load(path: Path) -> AgentConfig | None:
    """The config at ``path``, or None after printing its problems (file, line, key, expectation)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"config {path} has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None
    except Exception as exc:   # noqa: BLE001 - a loader bug meeting this file: one line, not a traceback
        print(f"config {path}: could not be checked ({type(exc).__name__}: {exc}); "
              "please report it with the file", file=sys.stderr)
        return None


async def run_agent(config: AgentConfig, live: bool, stop_after: float | None = None,
                    config_path: Path | None = None, on_console: Callable[[str], None] | None = None) -> None:
    """Run the agent; start it again on the config file when config.apply asks for a restart,
    and go back to the previous file when the new one cannot even start. With a ``web:``
    section, the console listens the whole time, across those restarts (``on_console`` is told
    its address)."""
    console = None
    if config.web is not None:
        from agent.web.server import WebConsole
        console = WebConsole(config.web)
        address = await console.start()
        if on_console is not None:
            on_console(address)
    try:
        await _run_agents(config, live, stop_after, config_path, console)
    finally:
        if console is not None:
            await console.stop()


async def _run_agents(config: AgentConfig, live: bool, stop_after: float | None, config_path: Path | None,
                      console: Any) -> None:
    while True:
        try:
            agent = Agent(config, config_path)
        except Exception as exc:   # noqa: BLE001 - a config from the centre that cannot start
            marker = config_apply.pending(config.agent.state_dir) if config_path else None
            if marker is None:
                raise
            config_apply.roll_back(config_path, config.agent.state_dir, marker, f"the agent could not start: {exc}")
            reloaded = load(config_path) if config_path else None
            if reloaded is None:
                raise
            config = reloaded
            continue
        if stop_after is not None:
            asyncio.get_running_loop().call_later(stop_after, agent.request_stop)
        if console is not None:
            console.attach(agent)
        try:
            await (_with_live_view(agent) if live else agent.run())
        finally:
            if console is not None:
                console.detach()
        if not agent.restart_requested or config_path is None:
            return
        reloaded = load(config_path)
        if reloaded is None:   # cannot happen for a file config.apply validated; be safe anyway
            return
        config = reloaded


async def _with_live_view(agent: Agent) -> None:
    from rich.live import Live

    from agent.status_view import render
    task = asyncio.create_task(agent.run())
    with Live(render(agent.snapshot()), refresh_per_second=2, screen=False) as view:
        while True:
            await asyncio.wait({task}, timeout=0.5)
            if task.done():   # the outbox is closed by now: keep the last frame
                break
            view.update(render(agent.snapshot()))
    await task
