"""RTSP reading: a thread per camera that keeps only the latest frame.

OpenCV's FFmpeg backend over TCP (``OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;tcp|...``) with
open and read timeouts. The thread grabs (demuxes and decodes) every frame the camera sends, so
nothing queues up inside FFmpeg, and converts to BGR only the frames it keeps (at most ``fps`` a
second); a consumer always gets the newest frame, never a stale buffered one.

The stream is reopened by the thread itself, with the agent's one backoff (exponential with
jitter, :mod:`agent.core.backoff`), when it cannot
be opened, when it ends, and when no frame came for ``freeze_after`` (a frozen camera, a server
that keeps the TCP session but sends nothing). Each change is reported through ``on_state`` with a
sentence for the technician: :func:`probe` asks the server directly (an RTSP DESCRIBE) to tell a
wrong host from a refused port, wrong credentials and a wrong path, which OpenCV cannot tell.

Credentials are only in the URL handed to FFmpeg; messages use ``display_url``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from agent.core.backoff import Backoff, Retry
from agent.core.boundary import boundary

log = logging.getLogger("drivers.camera")
FRAMES = boundary("camera")   # frames and streams of every camera (the pipeline counts here too)

# FFmpeg reads this at every open: RTSP over TCP (no UDP loss, passes NAT and firewalls), no
# demuxer buffering beyond what decoding needs.
FFMPEG_OPTIONS = ("rtsp_transport;tcp|fflags;nobuffer|flags;low_delay|max_delay;500000|reorder_queue_size;0"
                  "|analyzeduration;500000|probesize;65536")
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", FFMPEG_OPTIONS)
try:   # OpenCV's own warnings (a stream timeout) would repeat what on_state says, unstructured
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
except AttributeError:   # pragma: no cover - builds without the logging utils
    pass
_OPEN_LOCK = threading.Lock()   # the environment is process-wide: opens take turns


def display_url(url: str) -> str:
    """The URL without user information, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=host).geturl()


@dataclass(frozen=True, slots=True)
class RawFrame:
    seq: int
    t: float              # time.time() when it was decoded
    image: np.ndarray     # BGR


class Reader:
    """One camera's reading thread. ``on_state(online, message)`` is called from that thread."""

    def __init__(self, url: str, *, name: str = "camera", fps: float = 10.0, open_timeout: float = 5.0,
                 read_timeout: float = 3.0, freeze_after: float = 3.0,
                 backoff: Backoff | tuple[float, float] = Backoff(initial=0.5),
                 on_state: Callable[[bool, str | None], None] | None = None,
                 opener: Callable[..., cv2.VideoCapture] | None = None):
        self.url = url
        self.display = display_url(url)
        self.name = name
        self.min_interval = 1.0 / fps
        self.open_timeout = open_timeout
        self.read_timeout = min(read_timeout, freeze_after)
        self.freeze_after = freeze_after
        # (initial, max) is accepted too: the camera runner hands the config's two values
        self.backoff = backoff if isinstance(backoff, Backoff) else Backoff(initial=backoff[0], max=backoff[1])
        self.on_state = on_state or (lambda online, message: None)
        self.opener = opener or _open
        self._cond = threading.Condition()
        self._latest: RawFrame | None = None
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.online: bool | None = None
        self.heartbeat = time.monotonic()    # the thread's last sign of life (a watchdog reads it)
        # counters for stats()
        self.grabbed = 0
        self.kept = 0
        self.reconnects = 0
        self.opens_failed = 0
        self.undecodable = 0   # frames grabbed that could not be decoded (skipped)
        self.last_error: str | None = None
        self.last_frame_at: float | None = None   # monotonic
        self.connected_at: float | None = None

    # -- consumer side ---------------------------------------------------------------------------

    def latest(self) -> RawFrame | None:
        return self._latest

    def wait_newer(self, seq: int, timeout: float) -> RawFrame | None:
        """The newest frame if it is newer than ``seq``, waiting up to ``timeout`` for one."""
        with self._cond:
            if self._latest is None or self._latest.seq <= seq:
                self._cond.wait(timeout)
            frame = self._latest
        return frame if frame is not None and frame.seq > seq else None

    # -- thread ------------------------------------------------------------------------------------

    def start(self) -> "Reader":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"rtsp-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _state(self, online: bool, message: str | None) -> None:
        if not online:
            self.last_error = message
        if online != self.online or not online:
            self.online = online
            try:
                self.on_state(online, message)
            except Exception:   # noqa: BLE001 - the consumer's bug must not stop reading
                log.exception("camera %s: state callback failed", self.name)

    def _run(self) -> None:
        retry = Retry(self.backoff)
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                problem = self._session()
            except Exception as exc:   # noqa: BLE001 - OpenCV/FFmpeg meeting a stream it chokes on: reopen
                FRAMES.failed(exc, where=f"{self.name} {self.display}")
                problem = f"reading {self.display} failed ({type(exc).__name__}: {exc})"
            if self._stop.is_set():
                break
            if self.connected_at is not None and time.monotonic() - self.connected_at > 30:
                retry.reset()   # it ran a good while: start the backoff from the beginning
            delay = retry.next_delay()
            self._state(False, f"{problem}; retrying in {delay:.1f}s")
            self._stop.wait(delay)

    def _session(self) -> str:
        """Open, read until the stream fails; returns what went wrong, in words."""
        self.heartbeat = time.monotonic()
        self.connected_at = None
        try:
            cap = self.opener(self.url, self.open_timeout, self.read_timeout)
        except Exception as exc:   # noqa: BLE001 - OpenCV raises on odd URLs
            self.opens_failed += 1
            return f"cannot open {self.display}: {exc}"
        try:
            if not cap.isOpened():
                self.opens_failed += 1
                return probe(self.url, self.open_timeout)
            self.reconnects += 1 if self.online is not None else 0
            self.connected_at = time.monotonic()
            last_kept = 0.0
            last_frame = time.monotonic()
            announced = False
            while not self._stop.is_set():
                before = self.heartbeat = time.monotonic()
                ok = cap.grab()
                now = time.monotonic()
                if ok and now - before >= self.read_timeout * 0.9:
                    # FFmpeg's read timeout fired and it handed out what its decoder still held:
                    # the stream is frozen even though this call "succeeded"
                    return f"no frame from {self.display} for {now - before:.1f}s (stream frozen or stopped)"
                if not ok:
                    # FFmpeg gave up: end of stream, a dropped connection, or the read timeout
                    # (at most freeze_after) passed without a packet
                    if now - last_frame >= self.read_timeout * 0.9:
                        return f"no frame from {self.display} for {now - last_frame:.1f}s (stream frozen or stopped)"
                    return f"the stream from {self.display} ended"
                self.grabbed += 1
                if now - last_kept < self.min_interval * 0.95:
                    continue
                ok, image = cap.retrieve()
                if not ok or image is None or image.size == 0:
                    # a frame FFmpeg could not decode (corrupt): counted and skipped, the stream kept
                    self.undecodable += 1
                    if now - last_frame >= self.freeze_after:
                        return f"no decodable frame from {self.display} for {now - last_frame:.1f}s"
                    continue
                last_frame = last_kept = now
                self.last_frame_at = now
                self._publish(image)
                if not announced:
                    announced = True
                    h, w = image.shape[:2]
                    log.info("camera %s: streaming %s (%dx%d)", self.name, self.display, w, h)
                    self._state(True, None)
            return "stopped"
        finally:
            cap.release()

    def _publish(self, image: np.ndarray) -> None:
        with self._cond:
            self._seq += 1
            self.kept += 1
            self._latest = RawFrame(self._seq, time.time(), image)
            self._cond.notify_all()


def _open(url: str, open_timeout: float, read_timeout: float) -> cv2.VideoCapture:
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout * 1000),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout * 1000)]
    with _OPEN_LOCK:
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS") or FFMPEG_OPTIONS
        if urlsplit(url).scheme in ("rtsp", "rtsps", "http", "https"):
            return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        # a recorded file: the stream options are for live streams, and with fflags;nobuffer
        # FFmpeg starts some files (MS-MPEG4 AVI: opencv-doc's vtest.avi) without their key frame,
        # so their first seconds decode grey with only the moving parts drawn
        saved = os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS")
        try:
            return cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        finally:
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = saved


# -- probe: why could the stream not be opened? -----------------------------------------------------

def probe(url: str, timeout: float = 3.0) -> str:
    """Ask the RTSP server for the stream (DESCRIBE, with the URL's credentials if any) and say in
    words what is wrong. Never includes the credentials."""
    shown = display_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("rtsp",):
        return f"cannot open {shown}"
    host, port = parts.hostname or "", parts.port or 554
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return f"cannot open {shown}: host {host!r} not found (check the address in 'url')"
    try:
        sock = socket.create_connection(infos[0][4][:2], timeout=timeout)
    except ConnectionRefusedError:
        return f"cannot open {shown}: connection refused on port {port} (no RTSP server there; check the port)"
    except TimeoutError:
        return f"cannot open {shown}: no answer from {host}:{port} within {timeout:g}s (host down or firewalled)"
    except OSError as exc:
        return f"cannot open {shown}: {exc.strerror or exc}"
    with sock:
        sock.settimeout(timeout)
        try:
            status, headers = _describe(sock, url, None, 1)
            if status == 401 and (parts.username or parts.password):
                auth = _authorization(headers.get("www-authenticate", ""), url)
                if auth:
                    status, headers = _describe(sock, url, auth, 2)
        except (OSError, ValueError) as exc:
            return f"cannot open {shown}: the server at {host}:{port} does not answer RTSP ({exc})"
    if status == 401:
        if parts.username or parts.password:
            return f"cannot open {shown}: wrong user name or password (401 Unauthorized)"
        return f"cannot open {shown}: the camera needs a user name and password (401 Unauthorized): set 'username' and 'password'"
    if status == 404:
        return f"cannot open {shown}: no such stream on the server (404 Not Found): check the path in 'url'"
    if status == 200:
        return f"cannot open {shown}: the server offers the stream but it could not be decoded (codec or transport)"
    return f"cannot open {shown}: the server answered {status}"


def _describe(sock: socket.socket, url: str, auth: str | None, cseq: int) -> tuple[int, dict[str, str]]:
    request = f"DESCRIBE {display_url(url)} RTSP/1.0\r\nCSeq: {cseq}\r\nAccept: application/sdp\r\n"
    if auth:
        request += f"Authorization: {auth}\r\n"
    sock.sendall((request + "\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ValueError("connection closed")
        data += chunk
        if len(data) > 65536:
            raise ValueError("answer too long")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = lines[0].split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("RTSP/"):
        raise ValueError(f"not an RTSP answer: {lines[0][:40]!r}")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers.setdefault(key.strip().lower(), value.strip())
    length = int(headers.get("content-length", "0") or 0)
    while len(rest) < length:       # drain the body so the next request reads its own answer
        chunk = sock.recv(4096)
        if not chunk:
            break
        rest += chunk
    return int(fields[1]), headers


def _authorization(challenge: str, url: str) -> str | None:
    parts = urlsplit(url)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    scheme, _, rest = challenge.partition(" ")
    if scheme.lower() == "basic":
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    if scheme.lower() == "digest":
        fields = {}
        for item in rest.split(","):
            key, _, value = item.strip().partition("=")
            fields[key.lower()] = value.strip().strip('"')
        realm, nonce = fields.get("realm", ""), fields.get("nonce", "")
        uri = display_url(url)
        ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"DESCRIBE:{uri}".encode()).hexdigest()
        response = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
        return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                f'response="{response}"')
    return None
