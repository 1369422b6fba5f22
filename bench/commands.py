"""Benchmark: commands from the centre, end to end on loopback. Prints figures, asserts nothing.

  1. latency of signed commands: publish -> the device sees the write (a coil on the simulated
     Modbus module, as a preemption input would be) and publish -> cmd_result at the centre
     (the broker has the agent's PUBACK before it forwards), p50/p99 over --commands requests;
  2. a junk flood (bad signatures, unsigned, garbage) at --junk-rate a second for --junk-seconds
     while telemetry flows: telemetry rate before and during, agent CPU, refusals counted.

    .venv/bin/python bench/commands.py
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from agent import contract  # noqa: E402
from agent.core.stats import percentile  # noqa: E402
from tests.agent_proc import AgentProcess, agent_config  # noqa: E402
from tests.hardware_sim.broker import MosquittoBroker  # noqa: E402
from tests.hardware_sim.consumer import Consumer  # noqa: E402
from tests.hardware_sim.modbus_sim import ModbusSim  # noqa: E402
from tests.hardware_sim.signal_controller import SignalControllerSim  # noqa: E402

GW, SITE = "gw-bench-cmd", "lab"
KEY = b"bench-key-0123456789abcdef012345"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main() -> int:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)   # the in-process simulators' frame dumps
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--units", type=int, default=20, help="telemetry load: air monitors polled every second")
    parser.add_argument("--junk-rate", type=float, default=500.0)
    parser.add_argument("--junk-seconds", type=float, default=20.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-cmd-"))
    (work / "key").write_bytes(KEY)
    (work / "key").chmod(0o600)
    # set_tcp_nodelay: a production broker for low-latency commands has it on (mosquitto's default is off)
    broker = MosquittoBroker(workdir=work / "mosquitto", max_queued=0, extra_config=["set_tcp_nodelay true"]).start()
    sim = ModbusSim("air_monitor_rs485", units=range(1, args.units + 1), tcp=("127.0.0.1", 0)).run_in_thread()
    writes: dict[bool, float] = {}
    state = sim.sim.state
    original_write = state._write

    def timed_write(unit, table, address, values, *rest, **kw):   # when the device sees the write
        if unit == 1 and table == "coil":
            writes[bool(values[0])] = time.monotonic()
        return original_write(unit, table, address, values, *rest, **kw)
    state._write = timed_write

    controller = SignalControllerSim(snmp=("127.0.0.1", 0)).run_in_thread()
    port = sim.tcp_address[1]
    devices = [{"id": f"aq-{u:02d}", "driver": "modbus", "unit": u, "profile": "air_monitor_rs485", "poll": "1s",
                "connection": {"type": "tcp", "host": "127.0.0.1", "port": port, "timeout": "300ms"}}
               for u in range(1, args.units + 1)]
    devices.append({"id": "tsc-01", "driver": "signal_controller", "protocol": "ntcip", "poll": "200ms",
                    "connection": {"host": "127.0.0.1", "port": controller.snmp_address[1], "timeout": "300ms"},
                    "report": {"mode": "on_change", "max_silence": "10s"},
                    "phases": {2: {"approach": "N"}, 4: {"approach": "E"}},
                    "priority": {"preempt": {2: 1, 4: 2}, "min_duration": "1s", "max_duration": "60s"}})
    config = agent_config(work, broker_port=broker.port, gateway=GW, site=SITE, devices=devices,
                          commands={"key": {"file": str(work / "key")}, "max_per_second": 1000,
                                    "allow": [{"command": "device.write", "devices": ["aq-01"], "points": ["fan_on"]},
                                              "signal.priority"]},
                          agent={"log": {"format": "text", "level": "error"}})
    agent = AgentProcess(config, work / "agent.log", check_loop=False).start()
    centre = Consumer(broker.host, broker.port, gateway=GW, site=SITE).start()
    try:
        agent.wait_status(lambda s: s["uplink"]["state"] == "connected", 30)
        centre.wait_for(lambda c: c.reading_count > 0, 10)

        to_device, to_result = [], []
        for i in range(args.commands):
            value = i % 2 == 0
            writes.pop(value, None)
            sent = time.monotonic()
            request = centre.send_command("device.write", {"device": "aq-01", "point": "fan_on", "value": value},
                                          key=KEY)
            centre.wait_for(lambda c: c.last("cmd_result", request["id"]), 10)
            answered = centre.last("cmd_result", request["id"]).at
            if value in writes:
                to_device.append((writes[value] - sent) * 1000)
            to_result.append((answered - sent) * 1000)
            time.sleep(0.02)
        print(f"signed device.write x{args.commands} (publish at the centre -> ...):")
        print(f"  device sees the write   p50 {percentile(to_device, .5, None):6.1f} ms   p99 {percentile(to_device, .99, None):6.1f} ms")
        print(f"  cmd_result at centre    p50 {percentile(to_result, .5, None):6.1f} ms   p99 {percentile(to_result, .99, None):6.1f} ms")

        to_preempt, to_grant = [], []
        for i in range(max(10, args.commands // 5)):
            sent = time.monotonic()
            request = centre.send_command("signal.priority", {"device": "tsc-01", "phase": 2, "duration_s": 5},
                                          key=KEY)
            while not controller.preempt_asserted(1) and time.monotonic() - sent < 5:
                time.sleep(0.0005)
            to_preempt.append((time.monotonic() - sent) * 1000)
            centre.wait_for(lambda c: c.last("cmd_result", request["id"]), 10)
            to_grant.append((centre.last("cmd_result", request["id"]).at - sent) * 1000)
            release = centre.send_command("signal.priority", {"device": "tsc-01", "release": True}, key=KEY)
            centre.wait_for(lambda c: c.last("cmd_result", release["id"]), 10)
            time.sleep(0.1)
        print(f"signal.priority over NTCIP/SNMP x{len(to_grant)} (publish at the centre -> ...):")
        print(f"  controller preempt set  p50 {percentile(to_preempt, .5, None):6.1f} ms   p99 {percentile(to_preempt, .99, None):6.1f} ms")
        print(f"  cmd_result at centre    p50 {percentile(to_grant, .5, None):6.1f} ms   p99 {percentile(to_grant, .99, None):6.1f} ms")

        window = 10.0
        before, t0 = centre.reading_count, time.monotonic()
        time.sleep(window)
        rate_before = (centre.reading_count - before) / (time.monotonic() - t0)
        cpu0 = cpu_seconds(agent.pid)
        executed_before = agent.wait_status(lambda s: True)["commands"]["executed"]
        sent_junk = 0
        stop = threading.Event()

        topic = f"citybrain/v1/{SITE}/{GW}/cmd/device.write"
        now = int(time.time() * 1000)
        forged = {"id": "forged", "ts": now, "expires": now + 600_000,
                  "args": {"device": "aq-01", "point": "fan_on", "value": True}}
        junk = [orjson.dumps({**forged, "sig": contract.sign(forged, b"not the key")}),   # bad signature
                orjson.dumps({k: v for k, v in forged.items()}),                           # unsigned
                os.urandom(64)]                                                              # garbage

        def flood() -> None:
            nonlocal sent_junk
            client = centre._client   # raw QoS 0 publishes: the centre side must not be the bottleneck
            interval = 1.0 / args.junk_rate
            next_at = time.monotonic()
            while not stop.is_set():
                client.publish(topic, junk[sent_junk % 3], qos=0)
                sent_junk += 1
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

        flooder = threading.Thread(target=flood, daemon=True)
        before, t0 = centre.reading_count, time.monotonic()
        flooder.start()
        time.sleep(args.junk_seconds)
        stop.set()
        flooder.join(5)
        elapsed = time.monotonic() - t0
        rate_during = (centre.reading_count - before) / elapsed
        cpu = cpu_seconds(agent.pid) - cpu0
        snap = agent.wait_status(lambda s: True)
        refused = snap["commands"]["refused"]
        print(f"junk flood: {sent_junk / elapsed:.0f} requests/s for {elapsed:.0f}s "
              f"(bad signature, unsigned, garbage)")
        print(f"  telemetry at the centre  before {rate_before:7.0f} readings/s   during {rate_during:7.0f} readings/s")
        print(f"  agent CPU during flood   {100 * cpu / elapsed:5.1f} % of one core")
        print(f"  refused {sum(refused.values())} ({', '.join(f'{k} {v}' for k, v in sorted(refused.items()))}), "
              f"answered {snap['commands']['answered_refusals']} (the rest counted only), "
              f"executed {snap['commands']['executed'] - executed_before} during the flood")
    finally:
        centre.stop()
        agent.stop()
        sim.stop()
        controller.stop()
        broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
