"""The command channel: requests from the centre into a real ``agent.app.Agent``.

The agent is built from a config in the worker's directory (outbox, replay cache and audit log
there; a Modbus bus, an HJ 212 station, an NTCIP controller and a camera, none of them reachable:
the commands reach their runners and are refused or answered as they would be with the device
down). No broker: ``CommandChannel.on_message`` is called on a running event loop, as the
uplink's socket reader calls it, and the handler tasks it spawns are left to finish.

Requests: the regression payloads of tests/cases/commands mutated as bytes; junk; and requests
of every command with fresh ids and valid times, their fields replaced (boundary numbers,
strings, wrong types, deep nesting), signed with the gateway's key (so they pass the signature
and reach the handlers) or not. The channel's clock is pinned to the input count so a seed
replays the same requests.

Contract, per request: ``on_message`` never raises and holds the loop for at most 50 ms of CPU,
and so does every callback of the tasks it starts; the request ends as exactly one of executed
(then one outcome: succeeded, failed with a code, or deferred) or refused with a code; at most
one result on ``cmd_result/{id}``, exactly one when the request has a usable id; everything the
outbox would publish passes the contract; no handler raises anything but ``Refused``; no
failure is counted on a boundary.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

import yaml

from bench.fuzz_targets import seeds
from bench.fuzz_targets.base import Target
from bench.fuzz_targets.mutate import deep, mutate_bytes, random_bytes, weird_value

KEY = b"fuzz-key-0123456789abcdef0123456"
EPOCH_MS = 1_800_000_000_000
COMMANDS = ("device.read", "device.write", "buffer.stats", "camera.snapshot", "config.apply", "signal.priority",
            "device.reboot", "", "a" * 200)
ARGS: dict[str, list[dict[str, Any]]] = {
    "device.read": [{"device": "aq-01", "point": "pm25"}, {"device": "aq-station", "point": "pm25"},
                    {"device": "tsc-01", "point": "phase2"}, {"device": "cam-01", "point": "x"}],
    "device.write": [{"device": "aq-01", "point": "fan_on", "value": False},
                     {"device": "aq-01", "point": "report_interval", "value": 70000},
                     {"device": "tsc-01", "point": "priority", "value": '{"phase": 2, "duration_s": 30}'}],
    "buffer.stats": [{}],
    "camera.snapshot": [{"camera": "cam-01"}, {"camera": "cam-01", "overlay": True}, {"camera": "aq-01"}],
    "config.apply": [{"config": {}}, {"yaml": "gateway: {id: gw-fuzz, site: lab}\n"}, {"deadline_s": 30}],
    "signal.priority": [{"device": "tsc-01", "phase": 2, "duration_s": 30}, {"device": "tsc-01", "release": True},
                        {"device": "tsc-01", "approach": "N", "duration_s": 1e300}],
}


def big_config(devices: int) -> str:
    """A gateway config of many Modbus devices: up to the 16 KiB a request may carry."""
    return "gateway: {id: gw-fuzz, site: lab}\ndevices:\n" + "".join(
        f"  - {{id: aq-{i}, driver: modbus, unit: {i % 247 + 1}, profile: air_monitor_rs485, poll: 1s,"
        f" connection: {{type: tcp, host: 192.0.2.10, port: 502}}}}\n" for i in range(devices))


def _mutate(rng: random.Random, node: Any, depth: int = 0) -> Any:
    """One field somewhere in the request replaced, added or removed (never the request itself)."""
    if isinstance(node, dict) and node and (depth == 0 or rng.random() < 0.7) and depth < 4:
        key = rng.choice(list(node))
        what = rng.random()
        if what < 0.55:
            node[key] = _mutate(rng, node[key], depth + 1)
        elif what < 0.75:
            node[rng.choice(("extra", "", "device", "point", "value", "sig", "args", "id", "ts", "é"))] = weird_value(rng)
        else:
            del node[key]
        return node
    return weird_value(rng)


class Commands(Target):
    """Signed and unsigned requests into ``CommandChannel.on_message`` of a real Agent: each ends
    exactly once, is answered at most once, within the loop budget (see the module docstring)."""

    name = "commands"
    share = 2
    on_loop = True

    def setup(self, workdir: Path) -> None:
        from agent import commands, contract
        from agent.core import loopwatch
        from agent.app import Agent
        from agent.config import load_config

        self.commands, self.contract = commands, contract
        key = workdir / "command.key"
        key.write_bytes(KEY)
        key.chmod(0o600)
        (workdir / "state").mkdir()
        config = {
            "gateway": {"id": "gw-fuzz", "site": "lab"},
            "uplink": {"mqtt": {"host": "127.0.0.1", "port": 1}},
            "buffer": {"path": str(workdir / "outbox.db"), "durable": False},
            "agent": {"state_dir": str(workdir / "state")},
            "devices": [
                {"id": "aq-01", "driver": "modbus", "unit": 1, "profile": "air_monitor_rs485",
                 "connection": {"type": "tcp", "host": "192.0.2.10", "port": 502}},
                {"id": "aq-station", "driver": "hj212", "mn": "M1", "st": 22, "listen": {"host": "127.0.0.1", "port": 0}},
                {"id": "tsc-01", "driver": "signal_controller", "protocol": "ntcip",
                 "connection": {"host": "192.0.2.20", "community": "public"}, "phases": {2: {"approach": "N"}},
                 "priority": {"preempt": {2: 1}}},
            ],
            "cameras": [{"id": "cam-01", "url": "rtsp://192.0.2.30/s", "model": "vehicles"}],
            "commands": {"key": {"file": str(key)}, "max_per_second": 1e9, "answers_per_second": 1e9,
                         "timeout": "5s", "allow": ["device.read", "device.write", "buffer.stats", "camera.snapshot",
                                                     "config.apply", "signal.priority"]},
        }
        self.config_path = workdir / "gateway.yaml"
        self.config_text = yaml.safe_dump(config, sort_keys=False)
        self.config_path.write_text(self.config_text)
        self.state_dir = workdir / "state"
        self.loop = asyncio.new_event_loop()
        self.watch = loopwatch.install(clock="cpu", every_loop=True)
        self.agent = Agent(load_config(self.config_path), self.config_path)
        self.channel = self.agent.commands
        assert self.channel is not None
        self.agent.runner_for("tsc-01").link.stats.online = False   # the controller is not answering
        # the channel's clock, pinned: a seed replays the same requests (see the module docstring)
        self.clock = itertools.count(EPOCH_MS)
        self.now = EPOCH_MS
        commands.now_ms = lambda: self.now
        self.raised: list[BaseException] = []
        self.deferred = 0
        handlers = self.channel.handlers   # the agent's own commands and every family's
        for name, handler in list(handlers.items()):
            handlers[name] = self._watched(handler)
        self.ids = itertools.count()
        self.topic_prefix = self.agent.topic("state").removesuffix("state") + "cmd/"
        self._drain_outbox()

    def _watched(self, handler: Any) -> Any:
        """A handler whose exceptions other than Refused are kept (the channel answers them
        'internal' and logs them; the contract says a handler never raises)."""
        from agent.core.commands import Refused

        async def watched(ctx: Any, args: Any) -> Any:
            try:
                result = await handler(ctx, args)
            except Refused:
                raise
            except BaseException as exc:
                self.raised.append(exc)
                raise
            if result is self.commands.DEFERRED:
                self.deferred += 1
            return result
        return watched

    # -- inputs ---------------------------------------------------------------------------------

    def generate(self, rng: random.Random) -> tuple[str, bytes, int]:
        now = next(self.clock)
        name = rng.choice(COMMANDS[:6]) if rng.random() < 0.9 else rng.choice(COMMANDS)
        pick = rng.random()
        if pick < 0.1:
            return name, mutate_bytes(rng, rng.choice(seeds.command_payloads()), seeds.command_payloads()), now
        if pick < 0.15:
            return name, random_bytes(rng, 300), now
        request: dict[str, Any] = {"id": f"fz-{next(self.ids)}", "ts": now - rng.choice((0, 1000, 60_000)),
                                   "expires": now + rng.choice((60_000, 60_000, 1000, 3_600_000))}
        request["args"] = json.loads(json.dumps(rng.choice(ARGS.get(name, [{}]))))
        if name == "config.apply" and rng.random() < 0.5:
            request["args"] = {"yaml": rng.choice(seeds.config_files()).decode() if rng.random() < 0.7
                               else big_config(rng.randrange(1, 100))}
            if rng.random() < 0.5:
                request["args"]["yaml"] = mutate_bytes(rng, request["args"]["yaml"].encode()).decode("utf-8", "replace")
        what = rng.random()
        if what < 0.55:     # the arguments: what reaches the handlers when signed
            request["args"] = _mutate(rng, request["args"]) if request["args"] else {"x": weird_value(rng)}
        elif what < 0.7:    # the envelope: id, times, unknown fields
            request = _mutate(rng, request)
        elif what < 0.73:
            request["args"] = {"a": json.loads(deep(rng, "[", "]", (100, 250, 300)))}
        if rng.random() < 0.85 and isinstance(request, dict):
            try:
                request["sig"] = self.contract.sign(request, KEY)
            except (ValueError, TypeError):
                request["sig"] = "0" * 64
        elif isinstance(request, dict):
            request["sig"] = weird_value(rng)
        try:
            payload = json.dumps(request, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        except (ValueError, TypeError, RecursionError):
            payload = b"{}"
        if rng.random() < 0.03:
            payload = mutate_bytes(rng, payload, rounds=1)
        return name, payload, now

    def again(self, case: tuple[str, bytes, int]) -> tuple[str, bytes, int]:
        """The same request under a new id (signed again if it was signed right), so that it is
        not refused as a replay the second time."""
        name, payload, now = case
        try:
            request = json.loads(payload)
        except ValueError:
            return case
        if not isinstance(request, dict) or not isinstance(request.get("id"), str):
            return case
        signed = isinstance(request.get("sig"), str) and self._signed_right(request)
        request["id"] = request["id"][:60] + "-bis"
        if signed:
            request["sig"] = self.contract.sign(request, KEY)
        return name, json.dumps(request, ensure_ascii=False).encode("utf-8", "surrogatepass"), now

    def _signed_right(self, request: dict[str, Any]) -> bool:
        try:
            return self.contract.signature_ok(request, KEY)
        except ValueError:
            return False

    def to_bytes(self, case: tuple[str, bytes, int]) -> bytes:
        return f"cmd/{case[0]} at {case[2]} ms: ".encode("utf-8", "surrogatepass") + case[1]

    # -- feeding --------------------------------------------------------------------------------

    def feed(self, case: tuple[str, bytes, int]) -> None:
        name, payload, now = case
        self.now = now
        stats = self.channel.stats
        self.before = (stats.received, sum(stats.refused.values()), stats.executed, stats.succeeded, stats.failed,
                       stats.unanswered, self.deferred)
        self.raised.clear()
        self.watch.reset()
        self.on_message_cpu = self.loop.run_until_complete(self._deliver(self.topic_prefix + name, payload))
        self.handler_cpu = max(self.on_message_cpu, self.watch.max_s)

    async def _deliver(self, topic: str, payload: bytes) -> float:
        started = time.thread_time()
        self.channel.on_message(topic, payload)
        cpu = time.thread_time() - started
        while self.channel._tasks:   # noqa: SLF001 - the handler tasks this request started
            await asyncio.wait(set(self.channel._tasks), timeout=10)   # noqa: SLF001
        await asyncio.sleep(0)   # commit_soon's flush
        return cpu

    def check(self, case: tuple[str, bytes, int]) -> None:
        stats = self.channel.stats
        received, refused, executed, succeeded, failed, unanswered, deferred = self.before
        d_refused = sum(stats.refused.values()) - refused
        d_executed = stats.executed - executed
        d_outcome = (stats.succeeded - succeeded) + (stats.failed - failed) + (self.deferred - deferred)
        if stats.received - received != 1 or d_refused + d_executed != 1 or d_outcome != d_executed:
            self.problem("request not ended exactly once",
                         f"received +{stats.received - received}, refused +{d_refused}, executed +{d_executed}, "
                         f"outcomes +{d_outcome}")
        for exc in self.raised:
            self.problem("handler raised", f"{type(exc).__name__}: {exc}"[:300])
        answers = self._drain_outbox()
        expected = 0 if (stats.unanswered - unanswered) or (self.deferred - deferred) else 1
        if len(answers) != expected:
            self.problem("answers per request", f"{len(answers)} results on cmd_result for one request "
                                                f"(expected {expected})")
        self._reset_config_apply()

    def _drain_outbox(self) -> list[str]:
        """What the uplink would publish since the last input, checked against the contract and
        acknowledged; the cmd_result topics among it."""
        outbox = self.agent.outbox
        outbox.flush()
        answers = []
        while batch := outbox.take(500):
            for message in batch:
                checked = self.contract.check(message.topic, message.payload)
                if checked.problems:
                    self.problem("message beyond the contract", f"{message.topic}: {'; '.join(checked.problems[:2])}"[:300])
                if "/cmd_result/" in message.topic:
                    answers.append(message.topic)
                outbox.ack(message.row_id)
            outbox.flush()
        return answers

    def _reset_config_apply(self) -> None:
        """A config.apply that was accepted installs the new file and asks for a restart: put the
        gateway back as it was, so the next request meets the same agent."""
        marker = self.state_dir / "config_apply.json"
        if marker.exists():
            marker.unlink()
            self.config_path.write_text(self.config_text)
        self.agent._stop.clear()   # noqa: SLF001
        self.agent.restart_requested = False

    def close(self) -> None:
        self.channel.close()
        self.agent.outbox.close()
        self.loop.close()
