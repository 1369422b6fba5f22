"""The RTSP reader against the simulator's real RTSP server (GStreamer, H.264 over RTSP/TCP).

Frames carry their number as 12 black/white blocks, so a test can tell which frame the reader
holds: the newest, not one buffered seconds ago.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.camera.reader import Reader, probe
from tests.fakes import eventually

pytestmark = pytest.mark.timeout(60)

SERVER = Path(__file__).resolve().parent / "hardware_sim" / "rtsp_server.py"
W, H, FPS = 320, 192, 10


def numbered(n: int) -> np.ndarray:
    image = np.full((H, W, 3), 90, np.uint8)
    for bit in range(12):
        image[0:32, bit * 26:(bit + 1) * 26] = 255 if (n >> bit) & 1 else 0
    return image


def number_of(image: np.ndarray) -> int:
    return sum(1 << bit for bit in range(12) if image[16, bit * 26 + 13].mean() > 128)


class NumberedStream:
    """tests/hardware_sim/rtsp_server.py fed numbered frames at FPS; pause() freezes the stream
    (the RTSP session stays up, no frames come)."""

    def __init__(self, port: int = 0):
        self.port = port
        self.n = 0
        self.paused = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    def start(self) -> "NumberedStream":
        self.proc = subprocess.Popen(["/usr/bin/python3", str(SERVER), "--port", str(self.port), "--width", str(W),
                                      "--height", str(H), "--fps", str(FPS)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())
        assert ready["event"] == "ready", ready
        self.port, self.url = ready["port"], ready["url"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()
        return self

    def _feed(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        while not self._stop.wait(1 / FPS):
            if self.paused:
                continue
            self.n += 1
            yuv = cv2.cvtColor(numbered(self.n), cv2.COLOR_BGR2YUV_I420).tobytes()
            try:
                with self.lock:
                    self.proc.stdin.write(struct.pack(">cI", b"F", len(yuv)) + yuv)
                    self.proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                return

    def corrupt(self, probability: float) -> None:
        """Bytes of encoded buffers changed at random (GStreamer's breakmydata): corrupt frames."""
        assert self.proc is not None and self.proc.stdin is not None
        body = json.dumps({"corrupt": probability}).encode()
        with self.lock:
            self.proc.stdin.write(struct.pack(">cI", b"C", len(body)) + body)
            self.proc.stdin.flush()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            for pipe in (self.proc.stdin, self.proc.stdout):
                try:
                    pipe.close()   # type: ignore[union-attr]
                except OSError:
                    pass


@pytest.fixture
def stream():
    running = NumberedStream().start()
    yield running
    running.stop()


class States:
    def __init__(self):
        self.items: list[tuple[float, bool, str | None]] = []

    def __call__(self, online: bool, message: str | None) -> None:
        self.items.append((time.monotonic(), online, message))

    def wait(self, predicate, timeout: float) -> tuple[float, bool, str | None]:
        return eventually(lambda: next((item for item in self.items if predicate(item)), None), timeout,
                          f"a state change (got {self.items})", every=0.02)


def reader_for(url: str, states: States, **kwargs) -> Reader:
    settings = dict(fps=FPS, open_timeout=3.0, read_timeout=2.0, freeze_after=1.5, backoff=(0.2, 1.0))
    settings.update(kwargs)
    return Reader(url, name="test", on_state=states, **settings).start()


def test_reader_always_holds_the_newest_frame(stream):
    states = States()
    reader = reader_for(stream.url, states)
    try:
        states.wait(lambda s: s[1], 10)
        for pause in (0.2, 1.5, 0.7):       # a slow consumer still gets the newest frame, not a backlog
            time.sleep(pause)               # real time on purpose: the consumer is slow, the stream is not
            frame = reader.latest()
            assert frame is not None
            behind = stream.n - number_of(frame.image)
            assert 0 <= behind <= 4, f"{behind} frames behind"
            assert time.time() - frame.t < 0.5
        assert reader.wait_newer(frame.seq, 1.0).seq > frame.seq
    finally:
        reader.stop()


def test_a_frozen_stream_is_reported_and_reopened(stream):
    states = States()
    reader = reader_for(stream.url, states)
    try:
        states.wait(lambda s: s[1], 10)
        stream.paused = True
        frozen_at = time.monotonic()
        _, _, message = states.wait(lambda s: not s[1], 6)
        assert "no frame" in message and "frozen" in message and "retrying" in message
        assert time.monotonic() - frozen_at < 1.5 + 2.0
        stream.paused = False
        resumed = time.monotonic()
        states.wait(lambda s: s[1] and s[0] > resumed, 8)
        eventually(lambda: stream.n - number_of(reader.latest().image) <= 4, 0.3, "the reader caught up")
    finally:
        reader.stop()


def test_reconnects_by_itself_after_the_server_restarts(stream):
    states = States()
    reader = reader_for(stream.url, states)
    restarted = None
    try:
        states.wait(lambda s: s[1], 10)
        stream.stop()
        down = time.monotonic()
        states.wait(lambda s: not s[1] and s[0] >= down, 6)
        restarted = NumberedStream(port=stream.port).start()
        up = time.monotonic()
        states.wait(lambda s: s[1] and s[0] > up, 10)
        assert time.monotonic() - up < 10
        eventually(lambda: restarted.n - number_of(reader.latest().image) <= 4, 0.3, "the reader caught up")
        assert reader.reconnects >= 1
    finally:
        reader.stop()
        if restarted is not None:
            restarted.stop()


def test_corrupt_frames_do_not_stop_the_reader(stream):
    states = States()
    reader = reader_for(stream.url, states)
    try:
        states.wait(lambda s: s[1], 10)
        stream.corrupt(0.02)
        time.sleep(3.0)                 # real time on purpose: the damage lasts a while before we look
        before = reader.kept
        eventually(lambda: reader.kept > before, 2.0, "frames through the damage")
        assert reader.alive                                 # frames keep coming through the damage

        def repaired() -> bool:                             # the next key frame repairs the picture
            frame = reader.latest()
            return time.time() - frame.t < 1.0 and stream.n - number_of(frame.image) <= 4
        stream.corrupt(0.0)
        eventually(repaired, 1.5, "a fresh, whole frame")
    finally:
        reader.stop()


def test_wrong_url_says_what_is_wrong(stream):
    port = stream.port
    assert "no such stream" in probe(f"rtsp://127.0.0.1:{port}/nope", 2)
    with socket.socket() as s:      # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert "connection refused" in probe(f"rtsp://127.0.0.1:{free}/cam1", 2)
    assert "not found" in probe("rtsp://no-such-camera.invalid/cam1", 2)
    states = States()
    reader = reader_for(f"rtsp://127.0.0.1:{port}/nope", states)
    try:
        _, online, message = states.wait(lambda s: not s[1], 10)
        assert "404" in message and "retrying" in message
    finally:
        reader.stop()


def _fake_rtsp(replies: list[bytes]) -> tuple[int, list[bytes]]:
    """A one-connection server answering each request with the next reply; returns its port and
    the requests it got."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn, server:
            for reply in replies:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                got.append(data)
                conn.sendall(reply)
    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], got


def test_wrong_credentials_are_told_apart_and_never_shown():
    challenge = (b'RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\nWWW-Authenticate: Digest realm="cam", '
                 b'nonce="abc123"\r\n\r\n')
    port, got = _fake_rtsp([challenge, challenge.replace(b"CSeq: 1", b"CSeq: 2")])
    message = probe(f"rtsp://admin:s3cret@127.0.0.1:{port}/cam1", 2)
    assert "wrong user name or password" in message
    assert "s3cret" not in message and "admin" not in message
    assert b"s3cret" not in b"".join(got) and b'Digest username="admin"' in got[1]
    port, _ = _fake_rtsp([challenge])
    assert "needs a user name and password" in probe(f"rtsp://127.0.0.1:{port}/cam1", 2)
