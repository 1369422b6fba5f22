"""The agent's main job: devices → report policy → outbox → uplink, supervised in one asyncio loop.

A runner (one bus, one connection) that crashes is logged and restarted with backoff; it never
takes the others or the uplink with it. Everything a driver reports is committed to the outbox
before anything is published.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import signal
import uuid
from collections import deque
from pathlib import Path
from typing import Any


from agent import __version__, loopwatch, wire
from agent.boundary import Throttle
from agent.config import AgentConfig
from agent import config_apply
from agent.commands import CommandChannel
from agent.contract import topic as contract_topic
from agent import sd_notify
from agent import status as reporting
from agent.health import HealthSampler
from agent.status import DeviceStatus
from agent.model import SEVERITY_PRIORITY, Event, EvidenceFile, Priority, Reading, now_ms
from agent.outbox import Outbox
from agent.report import ReportFilter
from agent.rules import AlarmRules
from agent.uplink import MqttUplink
from drivers import get_driver
from drivers.base import DeviceInfo, Runner

log = logging.getLogger("agent")

RUNNER_RESTART_MAX = 60.0
SHUTDOWN_TASK_TIMEOUT = 5.0
RECENT_EVENTS = 6


class NotDurable(OSError):
    """A life-safety event was accepted but could not be committed to disk yet."""


class Agent:
    """Owns the outbox, the uplink and the device runners of one gateway."""

    def __init__(self, config: AgentConfig, config_path: Path | None = None):
        self.config = config
        self.config_path = config_path
        self.restart_requested = False
        self.boot_id = uuid.uuid4().hex[:12]
        self.started_ms = now_ms()
        gw = config.gateway
        config.buffer.path.parent.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(config.buffer.path, gateway_id=gw.id, max_bytes=config.buffer.max_bytes,
                             durable=config.buffer.durable)
        mqtt_cfg = config.uplink.mqtt
        password = mqtt_cfg.password.reveal() if mqtt_cfg.password else None
        self.uplink = MqttUplink(mqtt_cfg, gw, self.outbox, birth=self.birth, password=password,
                                 boot_id=self.boot_id)
        self.devices: dict[str, DeviceStatus] = {}
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)   # for status and the live view
        self.infos: dict[str, DeviceInfo] = {}
        self._filters: dict[str, ReportFilter] = {}
        self._rules: dict[str, AlarmRules] = {}
        self._telemetry_topics: dict[str, str] = {}
        self.runners: list[Runner] = []
        by_driver: dict[str, list] = {}
        for device in config.all_devices:
            if not device.enabled:
                continue
            driver = get_driver(device.driver)
            info = driver.describe(device)
            self.infos[device.id] = info
            self.devices[device.id] = DeviceStatus(device.id, device.driver, device.kind or info.kind)
            self._filters[device.id] = ReportFilter(device.report)
            if device.alarms:
                self._rules[device.id] = AlarmRules(device.alarms)
            self._telemetry_topics[device.id] = self.topic(f"telemetry/{device.id}")
            by_driver.setdefault(device.driver, []).append(device)
        for name, devices in by_driver.items():
            self.runners += get_driver(name).create_runners(devices, self)
        self._runner_of: dict[str, Runner] = {}
        for runner in self.runners:
            for device_id in runner.device_ids:
                self._runner_of[device_id] = runner
        self.commands: CommandChannel | None = None
        if config.commands.key is not None or config.commands.allow:
            import agent.command_handlers  # noqa: F401 - registers the v1 commands
            self.commands = CommandChannel(self, config.commands, config.agent.state_dir)
            self.uplink.on_command = self.commands.on_message
        self.uplink.on_state_change = self._uplink_changed
        self.health = HealthSampler(config.buffer.path.parent)
        self._stop = asyncio.Event()
        self._flush_soon = False
        self._commit_waiters: list[asyncio.Future[None]] = []
        self._warn = Throttle()
        self._status_line = sd_notify.StatusLine()

    def topic(self, suffix: str) -> str:
        mqtt_cfg = self.config.uplink.mqtt
        return contract_topic(mqtt_cfg.prefix, self.config.gateway.site, self.config.gateway.id, suffix)

    # -- DeviceSink: called by drivers on the event loop ----------------------------------------

    def readings(self, device_id: str, readings: list[Reading]) -> None:
        status = self.devices[device_id]
        readings, fixed = wire.safe_readings(readings)
        if fixed:   # a value out of range is one bad reading, never a lost batch
            status.invalid_values += fixed
            self._warn.warn(log, f"invalid:{device_id}", "device %s: %d value(s) the contract cannot carry "
                            "(out of range, not finite, too long) reported as bad", device_id, fixed)
        status.readings += len(readings)
        if readings:
            status.last_read_ms = readings[-1].t
            status.last_batch = readings
        rules = self._rules.get(device_id)
        if rules is not None:   # on every value read, before the report policy thins them out
            for event in rules.apply(readings):
                try:
                    self.event(device_id, event)
                except NotDurable:
                    log.error("alarm %s on %s kept in memory until the outbox can be written",
                              event.type, device_id)
        sent = self._filters[device_id].apply(readings)
        if not sent:
            return
        status.sent += len(sent)
        self.outbox.put(Priority.TELEMETRY, self._telemetry_topics[device_id],
                        {"device": device_id, "readings": [r.to_wire() for r in sent]})

    def latest(self, device_id: str, point: str) -> Reading | None:
        """The latest value read of another device's point (a camera's red-light rule asks the
        signal controller's phase state), or None when it has not been read."""
        status = self.devices.get(device_id)
        for reading in (status.last_batch or []) if status is not None else []:
            if reading.point == point:
                return reading
        return None

    def evidence(self, device_id: str, event: Event, files: list[EvidenceFile]) -> str:
        limit = self.config.uplink.mqtt.max_payload
        listed, parts = [], []
        for file in files:
            chunks = max(1, -(-len(file.data) // limit))
            entry = {"name": file.name, "sha256": hashlib.sha256(file.data).hexdigest(),
                     "bytes": len(file.data), "type": file.type}
            if chunks > 1:
                entry["chunks"] = chunks
            listed.append(entry)
            parts.append((file, chunks))
        event_id = self.event(device_id, event, evidence=listed)
        for file, chunks in parts:
            if chunks == 1:
                self.outbox.put_raw(Priority.BULK, self.topic(f"evidence/{event_id}/{file.name}"), file.data)
                continue
            for i in range(chunks):
                self.outbox.put_raw(Priority.BULK, self.topic(f"evidence/{event_id}/{file.name}.{i}"),
                                    file.data[i * limit:(i + 1) * limit])
        return event_id

    def event(self, device_id: str, event: Event, evidence: list[dict[str, Any]] | None = None) -> str:
        priority = SEVERITY_PRIORITY[event.severity]
        event_id = f"{self.config.gateway.id[:40]}-{self.outbox.allocate_seq()}"
        body: dict[str, Any] = {"id": event_id, "device": device_id, "type": event.type,
                                "severity": event.severity, "data": event.data}
        if evidence:
            body["evidence"] = evidence
        if event.t is not None:
            # the contract's ts is when the message was produced; when it happened goes in t
            # (a violation's clip follows seconds later, a panel reports an alarm it buffered)
            body["t"] = event.t
        try:
            self.outbox.put(priority, self.topic(f"event/{device_id}"), body)
        except TypeError:   # orjson: data a parser filled with what JSON cannot carry
            body["data"] = wire.safe_data(event.data)
            self._warn.warn(log, f"event-data:{device_id}", "event %s on %s: data the contract cannot carry "
                            "was replaced (numbers out of range, bytes, nesting)", event.type, device_id)
            self.outbox.put(priority, self.topic(f"event/{device_id}"), body)
        self.recent_events.append({"ts": now_ms(), "device": device_id, "type": event.type,
                                   "severity": event.severity})
        log.info("event %s %s on %s", event.severity, event.type, device_id)
        if priority == Priority.LIFE_SAFETY:
            # a fire alarm does not wait for the next group commit, and the caller must know
            # whether it is on disk: a bridge confirms the device's frame only then, so a panel
            # whose alarm could not be stored keeps resending it
            self._commit()
            if self.outbox.pending:
                raise NotDurable(f"life-safety event {event.type} on {device_id} is queued in memory: "
                                 f"the outbox {self.config.buffer.path} cannot be written")
        return event_id

    def device_state(self, device_id: str, online: bool, error: str | None = None) -> None:
        status = self.devices[device_id]
        if not online:
            status.errors += 1
            status.last_error = error
        if status.online == online:
            return
        was_known = status.online is not None
        status.online = online
        if online and not was_known:
            return   # first contact is not news
        log.warning("device %s is %s%s", device_id, "online" if online else "offline",
                    f": {error}" if error else "")
        self.event(device_id, Event("device.online" if online else "device.offline",
                                    "info" if online else "major",
                                    {"error": error} if error else {}))

    # -- birth, status, metrics ---------------------------------------------------------------

    def birth(self) -> dict[str, Any]:
        return reporting.birth(self)

    def snapshot(self) -> dict[str, Any]:
        return reporting.snapshot(self)

    def write_status(self, **override: Any) -> dict[str, Any]:
        return reporting.write_status(self, **override)

    def centre_heard(self) -> None:
        """An authenticated message from the centre: drivers holding something on its behalf
        (a signal priority) learn that it is still there."""
        for runner in self.runners:
            heartbeat = getattr(runner, "heartbeat", None)
            if heartbeat is not None:
                heartbeat()

    def _uplink_changed(self, connected: bool) -> None:
        """Without the broker the centre cannot reach us: what it holds is let go (the driver
        decides how; a signal priority is released)."""
        for runner in self.runners:
            centre_alive = getattr(runner, "centre_alive", None)
            if centre_alive is not None:
                centre_alive(connected)

    async def _centre_watch(self) -> None:
        """commands.centre_silence: when no authenticated message has come from the centre for
        that long, drivers holding something on its behalf (a signal priority) let go."""
        assert self.commands is not None
        silence_ms = self.config.commands.centre_silence * 1000
        told_silent = False
        while True:
            await asyncio.sleep(1.0)
            last = self.commands.stats.last_from_centre_ms
            silent = last is not None and now_ms() - last > silence_ms
            if silent and not told_silent:
                log.warning("no command from the centre for %.0fs: releasing what is held for it",
                            self.config.commands.centre_silence)
                self._uplink_changed(False)
            told_silent = silent

    def runner_for(self, device_id: str) -> Runner | None:
        return self._runner_of.get(device_id)

    def commit_soon(self) -> None:
        """Commit at the next turn of the loop instead of waiting for the group commit."""
        if not self._flush_soon:
            self._flush_soon = True

            def flush() -> None:
                self._flush_soon = False
                self._commit()
            asyncio.get_running_loop().call_soon(flush)

    def committed(self) -> "asyncio.Future[None]":
        """Resolves once everything handed to the sink so far is committed to disk (at the next
        group commit; later ones if the disk refuses): a bridge that acknowledges data to its
        device awaits this first, so a power cut never loses what a device was told arrived."""
        waiter = asyncio.get_running_loop().create_future()
        self._commit_waiters.append(waiter)
        return waiter

    def _commit(self) -> None:
        if self.outbox.flush():
            self.uplink.wake()
        if self._commit_waiters and not self.outbox.pending:
            waiters, self._commit_waiters = self._commit_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _commit_loop(self) -> None:
        interval = self.config.buffer.commit_interval
        while True:
            await asyncio.sleep(interval)
            self._commit()
            self.uplink.wake()   # acks deleted by the flush may have freed the window

    async def _metrics_loop(self) -> None:
        interval = self.config.agent.metrics_interval
        self.health.sample()   # prime cpu_percent
        while True:
            await asyncio.sleep(interval)
            self.outbox.put(Priority.TELEMETRY, self.topic("metrics"), reporting.metrics(self), qos=0)

    async def _status_loop(self) -> None:
        self.config.agent.state_dir.mkdir(parents=True, exist_ok=True)
        while True:
            self._status_line.update(reporting.status_line(self.write_status()))
            await asyncio.sleep(self.config.agent.status_interval)

    async def _supervise(self, name: str, run, close=None) -> None:
        """Run ``run()``; if it crashes, log it and start it again with backoff. A bug in one
        driver (or in the uplink) must not stop the rest of the agent."""
        failures = 0
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:   # noqa: BLE001 - see the docstring
                failures += 1
                delay = min(RUNNER_RESTART_MAX, 0.5 * 2 ** failures) * random.uniform(0.5, 1.0)
                log.exception("%s crashed; restarting in %.1fs", name, delay)
                if close is not None:
                    try:
                        await close()
                    except Exception:   # noqa: BLE001
                        log.exception("%s failed to close", name)
                await asyncio.sleep(delay)

    def request_stop(self) -> None:
        self._stop.set()

    def request_restart(self) -> None:
        """Stop, and let the caller start a new agent on the config file (config.apply)."""
        self.restart_requested = True
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loopwatch.install()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):
                pass
        log.info("edge-agent %s starting: gateway %s, %d devices, %d runners, buffer %s",
                 __version__, self.config.gateway.id, len(self.devices), len(self.runners),
                 self.config.buffer.path)
        tasks = [
            asyncio.create_task(self._supervise("uplink", self.uplink.run), name="uplink"),
            asyncio.create_task(self._commit_loop(), name="commit"),
            asyncio.create_task(self._metrics_loop(), name="metrics"),
            asyncio.create_task(self._status_loop(), name="status"),
            asyncio.create_task(config_apply.watch(self), name="config-apply"),
            *([asyncio.create_task(self._centre_watch(), name="centre-watch")] if self.commands else []),
        ] + [asyncio.create_task(self._supervise(f"runner {r.name}", r.run, r.close), name=f"runner:{r.name}")
             for r in self.runners]
        # config, secrets and outbox are open, the loop runs: systemctl start returns now
        sd_notify.notify("READY=1", f"STATUS=started, buffer {self.config.buffer.path}")
        try:
            await self._stop.wait()
        finally:
            log.info("stopping")
            if self.restart_requested:   # config.apply: the process goes on; READY=1 again ends the reload
                sd_notify.notify("RELOADING=1", "STATUS=restarting on the new config")
            else:   # systemd now expects the process to exit (within TimeoutStopSec)
                sd_notify.notify("STOPPING=1", "STATUS=stopping: closing the outbox")
            for task in tasks:
                if task.get_name() != "uplink":
                    task.cancel()
            # bounded: a driver stuck in a library call must not keep the agent from stopping
            _, stuck = await asyncio.wait(tasks[1:], timeout=SHUTDOWN_TASK_TIMEOUT)
            for task in stuck:
                log.error("task %s did not stop within %.0fs; leaving it", task.get_name(), SHUTDOWN_TASK_TIMEOUT)
            for runner in self.runners:
                try:
                    await asyncio.wait_for(runner.close(), SHUTDOWN_TASK_TIMEOUT)
                except Exception:   # noqa: BLE001 - TimeoutError included: close the others anyway
                    log.exception("runner %s failed to close", runner.name)
            self._commit()
            # give the uplink a moment to send what was just committed, then say goodbye
            deadline = loop.time() + 2.0
            while self.uplink.connected and self.outbox.stats().depth and loop.time() < deadline:
                self.uplink.wake()
                await asyncio.sleep(0.05)
                self._commit()
            await self.uplink.stop()
            tasks[0].cancel()
            await asyncio.gather(tasks[0], return_exceptions=True)
            self._commit()
            self.write_status(uplink={"state": "stopped"}, stopped=True)
            if self.commands is not None:
                self.commands.close()
            self.outbox.close()
            log.info("stopped")
