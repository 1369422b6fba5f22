"""A pair of connected pseudo-terminals from socat, standing in for an RS-232/485 line between a
simulated device and the agent. A pty ignores baud rate, parity and timing; framing and CRC are real.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM socat when the thread that started it dies (Linux prctl), so a
    killed simulator does not leave ptys behind."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


class PtyPair:
    """Two connected ptys from ``socat``: the simulator opens ``sim_port``, the agent ``agent_port``."""

    def __init__(self, agent_link: str | os.PathLike | None = None,
                 sim_link: str | os.PathLike | None = None, socat: str = "socat") -> None:
        self._dir: str | None = None
        self._agent_link = Path(agent_link) if agent_link else None
        self._sim_link = Path(sim_link) if sim_link else None
        self._socat = socat
        self.proc: subprocess.Popen | None = None

    @property
    def agent_port(self) -> str:
        assert self._agent_link, "PtyPair not started"
        return str(self._agent_link)

    @property
    def sim_port(self) -> str:
        assert self._sim_link, "PtyPair not started"
        return str(self._sim_link)

    def start(self, timeout: float = 5.0) -> PtyPair:
        exe = shutil.which(self._socat)
        if exe is None:
            raise RuntimeError("socat not found; install it (apt-get install socat)")
        self._dir = tempfile.mkdtemp(prefix="sim-pty-")
        self._sim_link = self._sim_link or Path(self._dir, "sim")
        self._agent_link = self._agent_link or Path(self._dir, "agent")
        for link in (self._sim_link, self._agent_link):
            if link.is_symlink():         # left by a killed run; socat would refuse to replace it
                link.unlink()
        self.proc = subprocess.Popen(
            [exe, "-d", "-d", f"pty,raw,echo=0,link={self._sim_link}",
             f"pty,raw,echo=0,link={self._agent_link}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        deadline = time.monotonic() + timeout
        while not (self._sim_link.exists() and self._agent_link.exists()):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.stop()
                raise RuntimeError(f"socat exited: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("socat did not create its ptys in time")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(2)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        for link in (self._sim_link, self._agent_link):
            if link is not None and link.is_symlink():
                with contextlib.suppress(OSError):
                    link.unlink()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PtyPair:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
