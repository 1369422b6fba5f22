"""HJ 212 parsing and server throughput (figures, not pass/fail).

    python bench/hj212_parse.py              # parsing: frames/s on one core
    python bench/hj212_parse.py --server     # also 100 loggers through the real TCP server

Parsing is measured three ways on typical ambient-air real-time frames (11 pollutants,
~420 bytes, what a station sends every 30 s):

- ``stream``: bytes -> frames (find '##', length, CRC, split the header), the work done per
  frame on every connection, fed in 64 KiB chunks;
- ``stream+map``: the same plus turning each frame's CP into named readings with quality and
  UTC time (everything short of the agent's outbox);
- ``one-per-read``: one frame per feed() call, as a logger that sends one frame per TCP segment.

``--server`` starts the bridge's TcpListener in this process with 100 stations and a counting
sink, and the logger simulator in a second process with 100 connections: sending as fast as the
server reads (no answers asked); then asking an answer (Flag=5) for every frame and waiting for
it; then paced at 1 frame/s per logger (real loggers send every 30 s or so). It prints frames/s
handled and this process's CPU use. The counting sink stands in for the agent's outbox, whose
own cost (SQLite, MQTT) is measured by the agent's benches.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.core.config import DeviceConfig  # noqa: E402
from agent.core.registry import get_driver  # noqa: E402
from firmware_bridges.hj212.frame import Frame, StreamFramer, build_frame  # noqa: E402
from firmware_bridges.hj212.mapping import LocalClock, PointMapper, map_upload  # noqa: E402
from tests.hardware_sim.hj212_logger import AIR_VALUES  # noqa: E402


def typical_frames(n: int = 1000) -> list[bytes]:
    frames = []
    for i in range(n):
        cp = ";".join([f"DataTime=20240101{i % 24:02d}{i % 60:02d}00"]
                      + [f"{code}-Rtd={value + (i % 97) * 0.1:.1f},{code}-Flag=N" for code, value in AIR_VALUES.items()])
        frames.append(build_frame(f"QN=20240101120000{i % 1000:03d};ST=22;CN=2011;PW=123456;"
                                  f"MN=010000A8900016F000169DC0;Flag=4;CP=&&{cp}&&"))
    return frames


def bench_parse(seconds: float = 2.0) -> None:
    frames = typical_frames()
    stream = b"".join(frames)
    chunks = [stream[i:i + 65536] for i in range(0, len(stream), 65536)]
    mapper, clock = PointMapper({}, "22"), LocalClock("Asia/Shanghai")
    print(f"typical frame: {len(frames[0])} bytes, {len(AIR_VALUES)} pollutants")

    def run(label: str, body) -> None:
        count, start = 0, time.process_time()
        while time.process_time() - start < seconds:
            count += body()
        elapsed = time.process_time() - start
        print(f"  {label:<14} {count / elapsed:>10,.0f} frames/s  ({elapsed / count * 1e6:.1f} us/frame, one core)")

    def stream_only() -> int:
        framer = StreamFramer()
        return sum(len(framer.feed(chunk)) for chunk in chunks)

    def stream_and_map() -> int:
        framer, n = StreamFramer(), 0
        for chunk in chunks:
            for item in framer.feed(chunk):
                assert isinstance(item, Frame)
                map_upload(item.cn, item.cp, item.qn, item.st, 1_700_000_000_000, mapper, clock)
                n += 1
        return n

    def one_per_read() -> int:
        framer = StreamFramer()
        return sum(len(framer.feed(frame)) for frame in frames)

    run("stream", stream_only)
    run("stream+map", stream_and_map)
    run("one-per-read", one_per_read)


async def bench_server(loggers: int, seconds: float) -> None:
    class Sink:
        batches = 0
        values = 0

        def readings(self, device_id, readings) -> None:
            self.batches += 1
            self.values += len(readings)

        def event(self, device_id, event) -> None: ...

        def device_state(self, device_id, online, error=None) -> None: ...

    sink = Sink()
    devices = [DeviceConfig.model_validate({
        "id": f"st-{i:04d}", "driver": "hj212", "mn": f"BENCH{i:04d}", "st": 22,
        "listen": {"host": "127.0.0.1", "port": 0, "max_connections": loggers + 10}}) for i in range(loggers)]
    [listener] = get_driver("hj212").create_runners(devices, sink)
    task = asyncio.create_task(listener.run())
    while listener.port is None:
        await asyncio.sleep(0.01)
    for ack, rate in ((False, 0.0), (True, 0.0), (True, 1.0)):
        args = [sys.executable, "-m", "tests.hardware_sim.hj212_logger", "--port", str(listener.port),
                "--mn", "BENCH", "--loggers", str(loggers), "--flood", "--duration", str(seconds),
                "--rate", str(rate)]
        if not ack:
            args.append("--no-ack")
        before_batches = sink.batches
        proc = await asyncio.create_subprocess_exec(*args, cwd=Path(__file__).resolve().parents[1],
                                                    stdout=subprocess.PIPE)
        # measure only while all loggers are connected and sending
        while listener.router.stats.connections < loggers:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        cpu0, wall0, b0 = time.process_time(), time.perf_counter(), sink.batches
        await asyncio.sleep(seconds - 1.5)
        cpu1, wall1, b1 = time.process_time(), time.perf_counter(), sink.batches
        out, _ = await proc.communicate()
        # let the server drain what the loggers had sent before the next round
        while listener.router.stats.connections:
            await asyncio.sleep(0.1)
        handled = (b1 - b0) / (wall1 - wall0)
        cpu = (cpu1 - cpu0) / (wall1 - wall0) * 100
        if not ack:
            mode = "Flag=4, no answers, pipelined as fast as the server reads"
        elif not rate:
            mode = "Flag=5, each frame answered (9014) before the next"
        else:
            mode = f"Flag=5, paced at {rate:g} frame/s per logger (a busy field load)"
        print(f"  {loggers} loggers, {mode}: {handled:,.0f} frames/s handled, server process CPU {cpu:.1f}% "
              f"of one core ({handled / max(cpu / 100, 1e-9):,.0f} frames per CPU-second); "
              f"{sink.batches - before_batches} frames in all; simulator: {out.decode().strip()}")
    duplicates = sum(s.stats.duplicates for s in listener.stations)
    errors = sum(s.stats.errors for s in listener.stations)
    print(f"  (resends recognised: {duplicates}, station errors: {errors})")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def main() -> None:
    logging.getLogger("firmware_bridges.hj212").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", action="store_true", help="also measure the TCP server with many loggers")
    parser.add_argument("--loggers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]} on {os.uname().machine}, {os.cpu_count()} CPUs")
    print("parsing (one core):")
    bench_parse()
    if args.server:
        print("server (real sockets, this process = the bridge, the simulator in another process):")
        asyncio.run(bench_server(args.loggers, args.seconds))


if __name__ == "__main__":
    main()
