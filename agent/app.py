"""The agent: wires one gateway's config into the device pipeline, the uplink, the runners of its
device families, the command channel and the reports, and runs them under the supervisor.

- :mod:`agent.pipeline` is the sink every runner delivers to (wire check, edge rules, report
  policy, outbox);
- :mod:`agent.uplink` drains the outbox to the broker;
- :mod:`agent.supervisor` keeps the uplink and the runners running and stops them in bounded time;
- the families (found by :mod:`agent.core.registry`) contribute their runners, commands and
  metrics through their Driver: nothing here names one.

The agent's ``clock`` (:mod:`agent.core.clock`) is the outbox's, the uplink's, the supervisor's and
the command channel's, and times the centre-silence watch; a test gives a virtual one. The
runners keep the real clock: the Driver contract does not pass one (their tests build them with
one of their own).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from pathlib import Path
from typing import Any

from agent import __version__, config_apply, sd_notify
from agent import status as reporting
from agent.command_handlers import HANDLERS as AGENT_COMMANDS
from agent.commands import AuditLog, CommandChannel, RequestContext, execute
from agent.config import AgentConfig
from agent.contract import topic as contract_topic
from agent.core import loopwatch
from agent.core.clock import SYSTEM, Clock
from agent.core.driver import Driver, HoldsForCentre, PointInfo, Runner
from agent.core.model import Priority
from agent.core.registry import available_drivers, get_driver
from agent.core.state import FAMILIES_DIR, kept_state
from agent.health import HealthSampler
from agent.outbox import Outbox
from agent.pipeline import DevicePipeline
from agent.supervisor import Supervisor
from agent.uplink import MqttUplink

log = logging.getLogger("agent")

SHUTDOWN_TASK_TIMEOUT = 5.0
LOCAL_PREFIX = "web:"   # request ids of the console's actions: a colon no id from the centre can hold (CONTRACT.md)
CENTRE_WATCH_S = 1.0


class Agent:
    """One gateway's agent. Build it before its loop runs; ``run()`` until stopped."""

    def __init__(self, config: AgentConfig, config_path: Path | None = None, *, clock: Clock = SYSTEM):
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.restart_requested = False
        self.boot_id = uuid.uuid4().hex[:12]
        self.started_ms = clock.now_ms()
        gw = config.gateway
        config.buffer.path.parent.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(config.buffer.path, gateway_id=gw.id, max_bytes=config.buffer.max_bytes,
                             durable=config.buffer.durable, clock=clock.now_ms)
        mqtt_cfg = config.uplink.mqtt
        password = mqtt_cfg.password.reveal() if mqtt_cfg.password else None
        self.uplink = MqttUplink(mqtt_cfg, gw, self.outbox, birth=self.birth, password=password,
                                 boot_id=self.boot_id, clock=clock)
        self.pipeline = DevicePipeline(self.outbox, gateway_id=gw.id, topic=self.topic,
                                       max_payload=mqtt_cfg.max_payload, on_commit=self.uplink.wake,
                                       state_dir=config.agent.state_dir)
        self.drivers: dict[str, Driver] = {}
        by_driver: dict[str, list] = {}
        for device in config.all_devices:
            if not device.enabled:
                continue
            driver = self.drivers.setdefault(device.driver, get_driver(device.driver))
            self.pipeline.add_device(device, driver.describe(device))
            by_driver.setdefault(device.driver, []).append(device)
        self.runners: list[Runner] = []
        for name, devices in by_driver.items():
            self.runners += self.drivers[name].create_runners(devices, self.pipeline)
        self._runner_of = {device_id: runner for runner in self.runners for device_id in runner.device_ids}
        for family, keys in kept_state(config.agent.state_dir).items():
            if family not in self.drivers:   # a family with devices reads (and reports) its own state
                log.error("%s/%s/ keeps state for %s, but no %s device is configured: see that family's README "
                          "(a signal controller's hold record names a junction that may still be held)",
                          config.agent.state_dir / FAMILIES_DIR, family, ", ".join(keys), family)
        self.commands: CommandChannel | None = None
        # every family's commands, configured here or not: a camera.snapshot on a gateway
        # without cameras is answered as the allowlist and the devices say, like any other
        self.handlers = dict(AGENT_COMMANDS)
        for driver in [get_driver(name) for name in available_drivers()] + list(self.drivers.values()):
            self.handlers.update(driver.commands())
        centre = config.commands.key is not None or bool(config.commands.allow)
        # one audit log for the centre's commands and the console's changes
        self.audit: AuditLog | None = None
        if centre or config.web is not None:
            config.agent.state_dir.mkdir(parents=True, exist_ok=True)
            self.audit = AuditLog(config.agent.state_dir / "audit.log")
        if centre:
            self.commands = CommandChannel(self, config.commands, config.agent.state_dir, self.handlers, clock=clock,
                                           audit=self.audit)
            self.uplink.on_command = self.commands.on_message
        # results of the console's own config.apply after the restart (agent/web), by request id
        self.on_local_answer: Any = None
        self.uplink.on_state_change = self._uplink_changed
        self.health = HealthSampler(config.buffer.path.parent)
        self.supervisor = Supervisor(clock=clock)
        self._stop = asyncio.Event()
        self._told_silent = False
        self._status_line = sd_notify.StatusLine()

    def topic(self, suffix: str) -> str:
        mqtt_cfg = self.config.uplink.mqtt
        return contract_topic(mqtt_cfg.prefix, self.config.gateway.site, self.config.gateway.id, suffix)

    @property
    def sink(self) -> DevicePipeline:
        """Where runners deliver (the DeviceSink)."""
        return self.pipeline

    # -- reports ---------------------------------------------------------------------------------

    def birth(self) -> dict[str, Any]:
        return reporting.birth(self)

    def snapshot(self) -> dict[str, Any]:
        return reporting.snapshot(self)

    def write_status(self, **override: Any) -> dict[str, Any]:
        return reporting.write_status(self, **override)

    def _report_status(self) -> None:
        """status.json for `edge-agent status`, and its line for `systemctl status`."""
        self._status_line.update(reporting.status_line(self.write_status()))

    # -- CommandSite (agent/commands.py) ----------------------------------------------------------

    def runner_for(self, device_id: str) -> Runner | None:
        return self._runner_of.get(device_id)

    def points_of(self, device_id: str) -> tuple[PointInfo, ...]:
        info = self.pipeline.infos.get(device_id)
        return info.points if info is not None else ()

    def buffer_stats(self) -> dict[str, Any]:
        return self.snapshot()["buffer"]

    async def apply_config(self, request_id: str, args: dict[str, Any]) -> None:
        # validating a config (YAML, profiles, models) takes 50-150 ms of CPU: off the loop (found
        # by bench/fuzz.py); the restart is asked for back on it
        await asyncio.to_thread(config_apply.prepare, self.config, self.config_path, request_id, args)
        self.request_restart()

    def publish_result(self, request_id: str, body: dict[str, Any]) -> None:
        self.outbox.put(Priority.ALARM, self.topic(f"cmd_result/{request_id}"), body)
        self.pipeline.commit_soon()

    async def run_local(self, name: str, args: dict[str, Any], by: str) -> tuple[bool, Any]:
        """A command from the technician's console: the handler, checks and audit log of the
        centre's same command (its signature and allowlist are the centre's; the console has
        its own login and roles). Returns ``(ok, result or error)``."""
        if self.audit is None:
            raise RuntimeError("no audit log: the console runs only with one")
        request_id = f"{LOCAL_PREFIX}{uuid.uuid4().hex[:16]}"
        ctx = RequestContext(request_id, self, self.config.commands)
        return await execute(self.handlers[name], ctx, name, args, self.audit, self.config.commands.timeout, by=by)

    def _answer(self, request_id: str, ok: bool, value: Any) -> None:
        """A result that comes after a restart (config.apply): to the centre, or to the console
        for one of its own."""
        if request_id.startswith(LOCAL_PREFIX):
            if self.audit is not None:
                self.audit.write({"event": "done" if ok else "failed", "command": "config.apply", "id": request_id,
                                  "after_restart": value})
            if self.on_local_answer is not None:
                self.on_local_answer(request_id, ok, value)
        elif self.commands is not None:
            self.commands.answer(request_id, ok, value)

    def centre_heard(self) -> None:
        """An authenticated message from the centre: runners holding something on its behalf (a
        signal priority) learn that it is still there."""
        for runner in self.runners:
            if isinstance(runner, HoldsForCentre):
                runner.centre_heard()

    def _centre_lost(self) -> None:
        for runner in self.runners:
            if isinstance(runner, HoldsForCentre):
                runner.centre_lost()

    def _uplink_changed(self, connected: bool) -> None:
        """Without the broker the centre cannot reach us: what is held for it is let go."""
        if connected:
            self.centre_heard()
        else:
            self._centre_lost()

    def _centre_watch(self) -> None:
        """commands.centre_silence: no authenticated message from the centre for that long, and
        what is held for it is let go (once per silence)."""
        assert self.commands is not None
        last = self.commands.stats.last_from_centre_ms
        silent = last is not None and self.clock.now_ms() - last > self.config.commands.centre_silence * 1000
        if silent and not self._told_silent:
            log.warning("no command from the centre for %.0fs: releasing what is held for it",
                        self.config.commands.centre_silence)
            self._centre_lost()
        self._told_silent = silent

    # -- life ----------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def request_restart(self) -> None:
        """Stop, and let the caller start a new agent on the config file (config.apply)."""
        self.restart_requested = True
        self._stop.set()

    def _commit_and_wake(self) -> None:
        self.pipeline.commit()
        self.uplink.wake()   # acks deleted by the flush may have freed the window

    def _publish_metrics(self) -> None:
        self.outbox.put(Priority.TELEMETRY, self.topic("metrics"), reporting.metrics(self), qos=0)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loopwatch.install().include(loop)   # this loop's callbacks, not a simulator's beside it (the demo)
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):
                pass
        log.info("edge-agent %s starting: gateway %s, %d devices, %d runners, buffer %s",
                 __version__, self.config.gateway.id, len(self.pipeline.devices), len(self.runners),
                 self.config.buffer.path)
        cfg = self.config
        cfg.agent.state_dir.mkdir(parents=True, exist_ok=True)
        self.health.sample()   # prime cpu_percent
        tasks = self.supervisor
        tasks.keep_running("uplink", self.uplink.run)
        tasks.every("commit", cfg.buffer.commit_interval, self._commit_and_wake)
        tasks.every("metrics", cfg.agent.metrics_interval, self._publish_metrics)
        tasks.every("status", cfg.agent.status_interval, self._report_status, now=True)
        tasks.start("config-apply", config_apply.watch(cfg, self.config_path, lambda: self.uplink.connected,
                                                       self._answer, self.request_restart))
        if self.commands is not None:
            tasks.every("centre-watch", CENTRE_WATCH_S, self._centre_watch)
        for runner in self.runners:
            tasks.keep_running(f"runner:{runner.name}", runner.run, runner.close)
        # config, secrets and outbox are open, the loop runs: systemctl start returns now
        sd_notify.notify("READY=1", f"STATUS=started, buffer {self.config.buffer.path}")
        try:
            await self._stop.wait()
        finally:
            await self._shut_down()

    async def _shut_down(self) -> None:
        log.info("stopping")
        if self.restart_requested:   # config.apply: the process goes on; READY=1 again ends the reload
            sd_notify.notify("RELOADING=1", "STATUS=restarting on the new config")
        else:   # systemd now expects the process to exit (within TimeoutStopSec)
            sd_notify.notify("STOPPING=1", "STATUS=stopping: closing the outbox")
        loop = asyncio.get_running_loop()
        await self.supervisor.stop(keep={"uplink"}, timeout=SHUTDOWN_TASK_TIMEOUT)
        for runner in self.runners:
            try:
                await asyncio.wait_for(runner.close(), SHUTDOWN_TASK_TIMEOUT)
            except Exception:   # noqa: BLE001 - TimeoutError included: close the others anyway
                log.exception("runner %s failed to close", runner.name)
        self.pipeline.commit()
        # give the uplink a moment to send what was just committed, then say goodbye (real time:
        # it waits for the broker)
        deadline = loop.time() + 2.0
        while self.uplink.connected and self.outbox.stats().depth and loop.time() < deadline:
            self.uplink.wake()
            await asyncio.sleep(0.05)
            self.pipeline.commit()
        await self.uplink.stop()
        await self.supervisor.stop(timeout=SHUTDOWN_TASK_TIMEOUT)
        self.pipeline.commit()
        self.write_status(uplink={"state": "stopped"}, stopped=True)
        if self.commands is not None:
            self.commands.close()
        if self.audit is not None:
            self.audit.close()
        self.outbox.close()
        log.info("stopped")
