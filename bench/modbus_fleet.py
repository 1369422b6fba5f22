"""Benchmark: a fleet of Modbus units behind one simulator port, polled every second, to the broker.

Prints figures, asserts nothing:
  readings/s delivered to the broker, agent CPU (% of one core, CPU seconds per 10 000 readings),
  peak RSS, produced-to-PUBACK latency p50/p99, and after a broker outage: time from the broker's
  return to the first PUBACK and the backlog drain rate.

    .venv/bin/python bench/modbus_fleet.py                    # 200 units x 50 registers, 5-minute outage
    .venv/bin/python bench/modbus_fleet.py --outage 30 --steady 20   # quicker

The simulator, the broker and the counting subscriber run in their own processes/threads; only the
agent process is measured (from /proc).
"""

from __future__ import annotations

import argparse
import os
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

from tests.agent_proc import AgentProcess, agent_config  # noqa: E402
from tests.hardware_sim.broker import MosquittoBroker, free_port  # noqa: E402
from tests.hardware_sim.modbus_sim import fleet_points  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Counter:
    """A light subscriber standing in for the centre: counts readings and backlog readings.
    (The reference consumer validates every message against the schemas, which costs more CPU
    than the agent itself at this rate, and the machine has two cores.)"""

    def __init__(self, port: int, gateway: str):
        self.readings = 0
        self.hist_readings = 0
        self.messages = 0
        self.last_hist_at: float | None = None
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-centre",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(f"citybrain/v1/+/{gateway}/telemetry/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        body = orjson.loads(message.payload)
        n = len(body["readings"])
        with self.lock:
            self.messages += 1
            self.readings += n
            if body["hist"]:
                self.hist_readings += n
                self.last_hist_at = time.monotonic()

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.readings, self.hist_readings

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK   # utime + stime


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_simulator(port: int, units: int, registers: int, profile: Path) -> subprocess.Popen:
    sim = subprocess.Popen(
        [sys.executable, "-m", "tests.hardware_sim.modbus_sim", "--tcp", f"127.0.0.1:{port}",
         "--units", str(units), "--registers", str(registers), "--write-profile", str(profile)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in sim.stdout:   # type: ignore[union-attr]
        if "ready" in line:
            threading.Thread(target=lambda: [None for _ in sim.stdout], daemon=True).start()  # keep draining
            return sim
    raise RuntimeError(f"simulator did not start (exit {sim.poll()})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=200)
    parser.add_argument("--points", type=int, default=50, help="readings per unit per poll")
    parser.add_argument("--poll", default="1s")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--steady", type=float, default=60.0, help="seconds measured at steady state")
    parser.add_argument("--outage", type=float, default=300.0, help="broker outage in seconds (0: skip)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    sim_port = free_port()
    profile = work / "fleet.yaml"
    # The fleet profile mixes 16- and 32-bit points; find how many registers give --points readings.
    registers = next(r for r in range(args.points, 4 * args.points) if len(fleet_points(r)) >= args.points)
    sim = start_simulator(sim_port, args.units, registers, profile)
    broker = MosquittoBroker(workdir=work / "mosquitto", max_queued=0).start()
    counter = Counter(broker.port, "gw-bench")
    devices = [{"id": f"unit-{u:03d}", "driver": "modbus", "unit": u, "profile": str(profile), "poll": args.poll,
                "connection": {"type": "tcp", "host": "127.0.0.1", "port": sim_port, "timeout": "500ms"}}
               for u in range(1, args.units + 1)]
    config = agent_config(work, broker_port=broker.port, devices=devices, gateway="gw-bench",
                          buffer={"max_bytes": "2GiB"},
                          agent={"status_interval": "1s", "metrics_interval": "30s",
                                 "log": {"format": "text", "level": "warning"}})
    agent = AgentProcess(config, work / "agent.log", check_loop=False).start()
    try:
        agent.wait_status(lambda s: s["uplink"]["state"] == "connected", 30)
        print(f"fleet: {args.units} units x {args.points} points ({registers} registers) every {args.poll}, "
              f"expected {args.units * args.points / float(args.poll.rstrip('s')):.0f} readings/s", flush=True)
        time.sleep(args.warmup)

        readings0, _ = counter.snapshot()
        cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
        time.sleep(args.steady)
        readings1, _ = counter.snapshot()
        cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
        snap = agent.status() or {}
        delivered = (readings1 - readings0) / (t1 - t0)
        cpu = cpu1 - cpu0
        latency = snap.get("uplink", {}).get("ack_latency_ms", {})
        print(f"steady state over {t1 - t0:.0f}s:")
        print(f"  delivered to broker      {delivered:9.0f} readings/s")
        print(f"  agent CPU                {100 * cpu / (t1 - t0):9.1f} % of one core")
        print(f"  CPU per 10 000 readings  {10_000 * cpu / max(1, readings1 - readings0):9.3f} s")
        print(f"  RSS now / peak           {rss_mb(agent.pid, 'VmRSS'):6.1f} / {rss_mb(agent.pid, 'VmHWM'):.1f} MB")
        print(f"  poll-to-PUBACK latency   p50 {latency.get('p50')} ms, p99 {latency.get('p99')} ms "
              f"(last {latency.get('n')} messages)")
        errors = sum(d["errors"] for d in snap.get("devices", {}).values())
        print(f"  device errors            {errors}")

        if args.outage > 0:
            broker.stop()
            down_at = time.monotonic()
            print(f"broker stopped for {args.outage:.0f}s ...", flush=True)
            agent.wait_status(lambda s: s["uplink"]["state"] != "connected", 30)
            time.sleep(args.outage)
            backlog = agent.wait_status(lambda s: True)["buffer"]
            _, hist0 = counter.snapshot()
            print("broker restarting", flush=True)
            broker.start()
            up_ms = time.time() * 1000
            up_at = time.monotonic()
            snap = agent.wait_status(lambda s: (s["uplink"].get("session_first_ack_ms") or 0) > up_ms, 30)
            first_ack_s = (snap["uplink"]["session_first_ack_ms"] - up_ms) / 1000
            snap = agent.wait_status(lambda s: (s["buffer"]["oldest_age_s"] or 0) < 2.0, 600)
            drained_at = time.monotonic()
            time.sleep(2)
            _, hist1 = counter.snapshot()
            last_hist = counter.last_hist_at or drained_at
            drain_s = max(1e-3, last_hist - up_at)
            print(f"outage of {up_at - down_at:.0f}s: backlog {backlog['depth']} messages, "
                  f"{backlog['bytes'] / 2**20:.1f} MiB")
            print(f"  broker back to first PUBACK  {first_ack_s:6.2f} s")
            print(f"  backlog drained in           {drain_s:6.1f} s, {hist1 - hist0} readings marked hist")
            print(f"  drain rate                   {(hist1 - hist0) / drain_s:9.0f} readings/s "
                  f"(while live polling continues)")
            print(f"  peak RSS                     {rss_mb(agent.pid, 'VmHWM'):6.1f} MB")
    finally:
        agent.stop()
        counter.stop()
        broker.close()
        sim.terminate()
        sim.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
