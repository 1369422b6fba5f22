"""The RTSP face of the simulated intersection camera: GStreamer's RTSP server fed raw frames on stdin.

Runs under Debian's ``/usr/bin/python3`` (the GStreamer introspection bindings, ``python3-gi`` and
``gir1.2-gst-rtsp-server-1.0``, exist only there), so it imports nothing but ``gi`` and the standard
library. ``camera_sim.py`` starts it as a child process and writes frames into its stdin; it can also
be run by hand with any producer that speaks the same framing.

Pipeline (one shared media for every client, built when the first client asks)::

    appsrc (I420, live, timestamped on arrival) ! x264enc tune=zerolatency speed-preset=ultrafast
        key-int-max=<fps> ! breakmydata (fault injection, off by default) ! rtph264pay config-interval=-1

stdin framing: a 5-byte header, type (1 byte) + payload length (uint32, big endian), then the payload:

* ``F``: one frame, raw I420 (width * height * 3 / 2 bytes);
* ``C``: a JSON control message, ``{"corrupt": 0.05}`` (the fraction of encoded frames that get some
  30 random bytes changed by ``breakmydata``; 0 turns it off).

stdout: JSON lines, ``{"event": "ready", "port": 8554, "url": "rtsp://..."}`` once serving, then
``{"event": "clients", "n": 1}`` whenever the number of connected RTSP clients changes. EOF on stdin or
SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import struct
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

HEADER = struct.Struct(">cI")


def say(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class CameraServer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.frame_bytes = args.width * args.height * 3 // 2
        self.lock = threading.Lock()
        self.sources: list[Gst.Element] = []        # appsrc of each prepared media (shared: one)
        self.corrupt = 0.0
        self.rng = random.Random(1)
        self.clients = 0
        self.pushed = 0
        self.loop = GLib.MainLoop()

        self.server = GstRtspServer.RTSPServer()
        self.server.set_address(args.host)
        self.server.set_service(str(args.port))
        factory = GstRtspServer.RTSPMediaFactory()
        caps = f"video/x-raw,format=I420,width={args.width},height={args.height},framerate={args.fps}/1"
        factory.set_launch(
            f"( appsrc name=src is-live=true format=time do-timestamp=true block=false "
            f"max-buffers=2 leaky-type=downstream caps={caps} "
            f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} "
            f"bitrate={args.bitrate} threads={args.threads} "
            f"! video/x-h264,profile=constrained-baseline "
            f"! breakmydata name=corrupt probability=0 seed=1 "
            f"! rtph264pay name=pay0 pt=96 config-interval=-1 )")
        factory.set_shared(True)
        factory.set_latency(0)
        factory.connect("media-configure", self.on_media)
        self.server.get_mount_points().add_factory(args.mount, factory)
        self.server.connect("client-connected", self.on_client)

    # -- GStreamer callbacks (main loop thread) --------------------------------------------------

    def on_media(self, _factory: object, media: GstRtspServer.RTSPMedia) -> None:
        element = media.get_element()
        src = element.get_by_name_recurse_up("src")
        breaker = element.get_by_name_recurse_up("corrupt")
        with self.lock:
            self.sources.append(src)
        breaker.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self.choose, breaker)

        def gone(_media: object) -> None:
            with self.lock:
                if src in self.sources:
                    self.sources.remove(src)

        media.connect("unprepared", gone)

    def choose(self, _pad: Gst.Pad, info: Gst.PadProbeInfo, breaker: Gst.Element) -> Gst.PadProbeReturn:
        """Before each encoded frame: break it (about 30 bytes) with probability ``self.corrupt``."""
        hit = self.corrupt > 0 and self.rng.random() < self.corrupt
        size = info.get_buffer().get_size() if hit else 0
        breaker.set_property("probability", min(0.05, 30.0 / size) if size else 0.0)
        return Gst.PadProbeReturn.OK

    def on_client(self, _server: object, client: GstRtspServer.RTSPClient) -> None:
        self.clients += 1
        say(event="clients", n=self.clients)

        def closed(_client: object) -> None:
            self.clients -= 1
            say(event="clients", n=self.clients)

        client.connect("closed", closed)

    # -- stdin ---------------------------------------------------------------------------------

    def read_exact(self, stream: object, n: int) -> bytes | None:
        chunks, got = [], 0
        while got < n:
            chunk = stream.read(n - got)   # type: ignore[attr-defined]
            if not chunk:
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def reader(self) -> None:
        stream = sys.stdin.buffer
        try:
            while True:
                header = self.read_exact(stream, HEADER.size)
                if header is None:
                    break
                kind, length = HEADER.unpack(header)
                payload = self.read_exact(stream, length)
                if payload is None:
                    break
                if kind == b"F":
                    self.push(payload)
                elif kind == b"C":
                    self.control(json.loads(payload))
        finally:
            GLib.idle_add(self.loop.quit)

    def push(self, frame: bytes) -> None:
        if len(frame) != self.frame_bytes:
            return
        with self.lock:
            sources = list(self.sources)
        for src in sources:
            src.emit("push-buffer", Gst.Buffer.new_wrapped(frame))
            self.pushed += 1

    def control(self, message: dict) -> None:
        if "corrupt" in message:
            self.corrupt = max(0.0, min(1.0, float(message["corrupt"])))

    # -- run -----------------------------------------------------------------------------------

    def run(self) -> int:
        if self.server.attach(None) == 0:
            say(event="error", message=f"cannot listen on {self.args.host}:{self.args.port}")
            return 1
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, self.loop.quit)
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, self.loop.quit)
        port = self.server.get_bound_port()
        say(event="ready", port=port, url=f"rtsp://{self.args.host}:{port}{self.args.mount}")
        threading.Thread(target=self.reader, name="frames", daemon=True).start()
        self.loop.run()
        # Tearing down media and clients one by one takes about a second; closing the process closes
        # every socket at once, which is all a client sees of a server going away anyway.
        sys.stdout.flush()
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RTSP server fed I420 frames on stdin (see module docstring)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed in the ready line)")
    parser.add_argument("--mount", default="/cam1")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--bitrate", type=int, default=2000, help="kbit/s")
    parser.add_argument("--threads", type=int, default=1, help="x264 threads (0: as many as cores)")
    args = parser.parse_args(argv)
    Gst.init(None)
    return CameraServer(args).run()


if __name__ == "__main__":
    sys.exit(main())
