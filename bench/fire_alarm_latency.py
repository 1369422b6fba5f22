"""Benchmark: fire-alarm latency while an hour of buffered telemetry drains after an outage.

The agent (a real process) starts with its outbox holding a one-hour backlog of telemetry, as
after an hour without the broker, while a small Modbus fleet keeps polling live and the broker is
still down. Then the broker comes back, and while the backlog drains a simulated fire panel
(GB/T 26875.3 over TCP) raises fire alarms one after another. For each alarm it measures

  frame -> event at the subscriber   from the panel putting the frame on the wire to the event's
                                     arrival at an MQTT subscriber of the broker (the broker
                                     forwards a QoS 1 PUBLISH to its subscribers as it PUBACKs it
                                     to the agent, so this stands for the PUBACK time; the
                                     agent's own PUBACK receipt is a loopback hop later)
  frame -> confirm at the panel      from the same moment to the panel receiving the agent's
                                     confirm, which the agent sends after the event is committed
                                     to the outbox

Target: p99 of the first figure under 300 ms. Alarms go on every --interval until the backlog
has drained. Prints figures, asserts nothing.

With ``--junk-commands N`` an attacker on the broker publishes N commands without a valid key
(unsigned, a non-ASCII sig, JSON nested 300 levels, wrongly signed, not JSON) at ``--junk-rate``
a second while the alarms go on: the agent refuses them all, and the alarms must not notice.
At the end the agent's own figures say how long a callback held its event loop at most
(``--loop-clock``: wall time, what an alarm waits for, or the loop thread's CPU time).

    .venv/bin/python bench/fire_alarm_latency.py                       # 1 h backlog of 20 devices
    .venv/bin/python bench/fire_alarm_latency.py --devices 5 --minutes 10  # quicker
    .venv/bin/python bench/fire_alarm_latency.py --devices 5 --minutes 10 --junk-commands 5000

The backlog is written straight into the outbox file (the agent's Outbox class with its clock set
back an hour) rather than produced live for an hour: same rows, same sizes, same hist handling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.core.model import Priority  # noqa: E402
from agent.core.stats import percentile  # noqa: E402
from agent.outbox import Outbox  # noqa: E402
from tests.agent_proc import AgentProcess, agent_config  # noqa: E402
from tests.hardware_sim.broker import MosquittoBroker, free_port  # noqa: E402
from tests.hardware_sim.fire_panel import FirePanel  # noqa: E402

GW, SITE = "gw-bench", "lab"


def prefill(path: Path, devices: int, points: int, minutes: float, period: float) -> tuple[int, float]:
    """Write ``minutes`` of telemetry batches (one per device per ``period``) as the agent would have
    buffered them during an outage. Returns (messages, MiB)."""
    now = time.time() * 1000
    start = now - minutes * 60_000
    clock = [int(start)]
    outbox = Outbox(path, gateway_id=GW, max_bytes=4 * 2**30, durable=False, clock=lambda: clock[0])
    count = 0
    steps = int(minutes * 60 / period)
    for step in range(steps):
        t = int(start + step * period * 1000)
        clock[0] = t
        for d in range(devices):
            readings = [{"p": f"p{i:03d}", "v": round(20 + (step + i + d) % 97 * 0.1, 1), "u": "degC",
                         "t": t, "q": "good"} for i in range(points)]
            outbox.put(Priority.TELEMETRY, f"citybrain/v1/{SITE}/{GW}/telemetry/old-{d:03d}",
                       {"device": f"old-{d:03d}", "readings": readings})
            count += 1
        if step % 200 == 0:
            outbox.flush()
    outbox.flush()
    size = outbox.stats().bytes / 2**20
    outbox.close()
    return count, size


class EventClock:
    """A subscriber standing in for the centre: when did each fire alarm (by frame serial) arrive."""

    def __init__(self, port: int):
        self.arrivals: dict[int, float] = {}
        self.subscribed = threading.Event()
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-fire-centre", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(f"citybrain/v1/+/{GW}/event/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        at = time.time()
        body = orjson.loads(message.payload)
        if body.get("type") == "fire.alarm":
            with self.lock:
                self.arrivals.setdefault(body["data"]["serial"], at)

    def wait(self, serial: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if serial in self.arrivals:
                    return self.arrivals[serial]
            time.sleep(0.002)
        return None

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_fleet(port: int, units: int, registers: int, profile: Path) -> subprocess.Popen[str]:
    sim = subprocess.Popen(
        [sys.executable, "-m", "tests.hardware_sim.modbus_sim", "--tcp", f"127.0.0.1:{port}", "--units", str(units),
         "--registers", str(registers), "--write-profile", str(profile)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert sim.stdout is not None
    for line in sim.stdout:
        if "ready" in line:
            threading.Thread(target=lambda: [None for _ in sim.stdout], daemon=True).start()   # keep draining
            return sim
    raise RuntimeError(f"modbus simulator did not start (exit {sim.poll()})")


class JunkSender(threading.Thread):
    """An attacker on the broker: commands without the gateway's key, as fast as ``rate`` allows."""

    KINDS = (
        lambda i: {"id": f"junk-{i}", "ts": 1, "expires": 2, "args": {}},                        # unsigned
        lambda i: {"id": f"junk-{i}", "ts": 1, "expires": 2, "args": {}, "sig": "\u00e9"},       # non-ASCII sig
        lambda i: b'{"id":"junk-%d","args":{"a":%s},"sig":"00"}' % (i, b"[" * 300 + b"]" * 300),  # nested
        lambda i: {"id": f"junk-{i}", "ts": 1, "expires": 2, "args": {}, "sig": "0" * 64},        # wrong sig
        lambda i: b"\x00\xff not json %d" % i,                                                   # garbage
    )

    def __init__(self, port: int, count: int, rate: float):
        super().__init__(name="junk", daemon=True)
        self.count, self.rate, self.sent = count, rate, 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-attacker", protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.started_at: float | None = None
        self.finished_at: float | None = None

    def run(self) -> None:
        topic = f"citybrain/v1/{SITE}/{GW}/cmd/buffer.stats"
        self.started_at = time.monotonic()
        for i in range(self.count):
            request = self.KINDS[i % len(self.KINDS)](i)
            payload = request if isinstance(request, bytes) else orjson.dumps(request)
            self.client.publish(topic, payload, qos=1).wait_for_publish(5)
            self.sent += 1
            delay = self.started_at + (i + 1) / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.finished_at = time.monotonic()

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=20, help="devices in the backlog")
    parser.add_argument("--points", type=int, default=20, help="readings per backlog message")
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the outage the backlog covers")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between a device's batches")
    parser.add_argument("--live-units", type=int, default=20, help="Modbus units polled live every second (0: none)")
    parser.add_argument("--alarms", type=int, default=1000, help="at most this many alarms")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between alarms")
    parser.add_argument("--junk-commands", type=int, default=0, help="commands without a valid key sent meanwhile")
    parser.add_argument("--junk-rate", type=float, default=500.0, help="junk commands a second")
    parser.add_argument("--loop-clock", choices=("wall", "cpu"), default="wall",
                        help="what the agent's loop watch measures (default: wall time)")
    args = parser.parse_args()
    os.environ["EDGE_AGENT_LOOP_CLOCK"] = args.loop_clock

    work = Path(tempfile.mkdtemp(prefix="bench-fire-"))
    outbox_path = work / "outbox.db"
    t0 = time.monotonic()
    messages, mib = prefill(outbox_path, args.devices, args.points, args.minutes, args.period)
    print(f"backlog: {messages} telemetry messages ({args.devices} devices x {args.points} readings every "
          f"{args.period:g}s for {args.minutes:g} min), {mib:.0f} MiB, written in {time.monotonic() - t0:.0f}s",
          flush=True)

    broker = MosquittoBroker(workdir=work / "mosquitto", max_queued=0)   # not started: the outage
    fire_port = free_port()
    devices = [{"id": "fire-bldg-12", "driver": "gb26875", "listen": {"host": "127.0.0.1", "port": fire_port},
                "address": 889, "systems": {1: "fire alarm system, building 12"}}]
    sim = None
    if args.live_units:
        sim_port = free_port()
        profile = work / "fleet.yaml"
        sim = start_fleet(sim_port, args.live_units, 20, profile)
        devices += [{"id": f"unit-{u:03d}", "driver": "modbus", "unit": u, "profile": str(profile), "poll": "1s",
                     "connection": {"type": "tcp", "host": "127.0.0.1", "port": sim_port, "timeout": "500ms"}}
                    for u in range(1, args.live_units + 1)]
    commands = {}
    if args.junk_commands:
        key_file = work / "command.key"
        key_file.write_bytes(b"bench-key-" + os.urandom(16).hex().encode())
        key_file.chmod(0o600)
        commands = {"commands": {"key": {"file": str(key_file)}, "allow": ["buffer.stats"]}}
    config = agent_config(work, broker_port=broker.port, devices=devices, gateway=GW, site=SITE,
                          buffer={"path": str(outbox_path), "max_bytes": "4GiB"},
                          agent={"status_interval": "200ms", "metrics_interval": "30s",
                                 "log": {"format": "text", "level": "warning"}}, **commands)
    agent = AgentProcess(config, work / "agent.log", check_loop=False).start()
    panel = FirePanel(address=889, confirm_timeout=5.0, retries=3)
    clock: EventClock | None = None
    junk: JunkSender | None = None
    try:
        agent.wait_status(lambda s: s["buffer"]["depth"] >= messages, 60)
        panel.connect("127.0.0.1", fire_port)
        assert panel.wait_confirmed(panel.system_status(), 15), "the panel got no confirm"
        time.sleep(2)   # a little live telemetry buffers behind the backlog too
        clock = EventClock(broker.port)
        depth0 = agent.wait_status(lambda s: True)["buffer"]["depth"]
        broker.start()
        up = time.monotonic()
        if not clock.subscribed.wait(15):
            raise RuntimeError("the subscriber did not subscribe")
        agent.wait_status(lambda s: s["uplink"]["state"] == "connected", 30)
        print(f"broker back; backlog {depth0} messages; raising fire alarms every {args.interval:g}s "
              f"until it has drained", flush=True)
        if args.junk_commands:
            junk = JunkSender(broker.port, args.junk_commands, args.junk_rate)
            junk.start()
            print(f"meanwhile {args.junk_commands} junk commands at {args.junk_rate:g}/s", flush=True)

        to_event: list[float] = []
        to_confirm: list[float] = []
        depths: list[int] = []
        lost = 0
        during_junk: list[float] = []
        for i in range(args.alarms):
            depth = (agent.status() or {}).get("buffer", {}).get("depth", 0)
            junk_running = junk is not None and junk.is_alive()
            if depth < 1000 and i >= 20 and not junk_running:
                break   # drained (and the junk sent): the point was to measure meanwhile
            serial = panel.fire(0x00010000 + i, f"{i % 30 + 1}层 烟感 {i}")
            arrived = clock.wait(serial, 10)
            sent = panel.sent[serial]
            panel.wait_confirmed(serial, 10)
            if arrived is None or sent.first_sent_at is None:
                lost += 1
                continue
            to_event.append(1000 * (arrived - sent.first_sent_at))
            if junk_running:
                during_junk.append(to_event[-1])
            if sent.confirmed_at:
                to_confirm.append(1000 * (sent.confirmed_at - sent.first_sent_at))
            depths.append(depth)
            time.sleep(args.interval)
        snap = agent.wait_status(lambda s: (s["buffer"]["oldest_age_s"] or 0) < 5.0, 600)
        drained = time.monotonic() - up
        during = sum(1 for d in depths if d > 1000)
        print(f"alarms: {len(to_event)} measured, {lost} not seen within 10s; {during} raised with more than "
              f"1000 messages still queued (backlog at the alarms: {max(depths, default=0)} .. "
              f"{min(depths, default=0)})")
        if to_event:
            print(f"  frame -> event at subscriber  p50 {statistics.median(to_event):7.1f} ms   "
                  f"p99 {percentile(to_event, 0.99, None):7.1f} ms   max {max(to_event):7.1f} ms   (target p99 < 300 ms)")
        if to_confirm:
            print(f"  frame -> confirm at panel     p50 {statistics.median(to_confirm):7.1f} ms   "
                  f"p99 {percentile(to_confirm, 0.99, None):7.1f} ms   max {max(to_confirm):7.1f} ms")
        print(f"backlog drained {drained:.0f}s after the broker came back "
              f"({depth0 / max(drained, 1e-3):.0f} messages/s with live polling going on)")
        latency = snap["uplink"].get("ack_latency_ms", {})
        print(f"agent's own produced-to-PUBACK figures (all messages, last {latency.get('n')}): "
              f"p50 {latency.get('p50')} ms, p99 {latency.get('p99')} ms")
        if junk is not None:
            junk.join(60)
            try:   # the last of it may still be on its way through the broker
                snap = agent.wait_status(lambda s: s["commands"]["received"] >= junk.sent, 15)
            except AssertionError:
                snap = agent.status() or snap
            cmd = snap.get("commands", {})
            took = (junk.finished_at or time.monotonic()) - (junk.started_at or up)
            print(f"junk: {junk.sent} sent in {took:.1f}s; the agent received {cmd.get('received')}, refused "
                  f"{sum(cmd.get('refused', {}).values())} ({cmd.get('refused')}), answered "
                  f"{cmd.get('answered_refusals')}, executed {cmd.get('executed')}")
            if during_junk:
                print(f"  alarms while the junk arrived: {len(during_junk)}; frame -> event p50 "
                      f"{statistics.median(during_junk):.1f} ms, p99 {percentile(during_junk, 0.99, None):.1f} ms, "
                      f"max {max(during_junk):.1f} ms")
        snap = agent.status() or snap
        loop = snap.get("loop", {})
        print(f"event loop ({loop.get('clock')} time): longest callback {loop.get('max_callback_ms')} ms, "
              f"{loop.get('over_budget')} over {loop.get('budget_ms')} ms of {loop.get('callbacks')}; worst: "
              + "; ".join(f"{w['ms']} ms {w['callback']}" for w in loop.get("worst", [])[-3:]))
        failures = {k: v["failures"] for k, v in snap.get("boundaries", {}).items() if v["failures"]}
        print(f"boundary failures: {failures or 'none'}")
    finally:
        panel.stop()
        if junk is not None:
            junk.stop()
        if clock is not None:
            clock.stop()
        agent.stop()
        broker.close()
        if sim is not None:
            sim.terminate()
            sim.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
