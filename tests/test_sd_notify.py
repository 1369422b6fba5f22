"""systemd's readiness protocol: the datagrams the agent sends to $NOTIFY_SOCKET (the unit is
Type=notify), and nothing at all outside systemd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from agent import sd_notify
from tests.agent_proc import REPO, agent_config


def listen(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    return sock


def test_fields_go_to_a_socket_path_and_to_an_abstract_one(tmp_path, monkeypatch):
    with listen(str(tmp_path / "notify")) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert sd_notify.notify("READY=1", "STATUS=up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    with listen("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify.notify("STOPPING=1")
        assert sock.recv(4096) == b"STOPPING=1"


def test_outside_systemd_or_without_a_listener_nothing_happens(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sd_notify.notify("READY=1") is False   # no exception: the agent never depends on systemd


def test_the_status_line_is_sent_only_when_it_changes(tmp_path, monkeypatch):
    with listen(str(tmp_path / "notify")) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        line = sd_notify.StatusLine()
        for text in ("uplink connecting", "uplink connecting", "uplink connected"):
            line.update(text)
        sock.settimeout(0.2)
        got = []
        try:
            while True:
                got.append(sock.recv(4096))
        except TimeoutError:
            pass
    assert got == [b"STATUS=uplink connecting", b"STATUS=uplink connected"]


@pytest.mark.timeout(60)
def test_the_agent_says_ready_once_its_outbox_is_open_and_stopping_on_sigterm(tmp_path):
    config = agent_config(tmp_path, broker_port=1, devices=[])
    with listen(str(tmp_path / "notify")) as sock:
        env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"))
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(config)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            first = sock.recv(4096).decode()
            assert first.startswith("READY=1\n") and "STATUS=" in first
            assert (tmp_path / "outbox.db").exists()
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            while True:
                message = sock.recv(4096).decode()
                if message.startswith("STOPPING=1"):
                    break
                assert message.startswith("STATUS=") and time.monotonic() < deadline
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_a_restart_on_a_new_config_is_a_reload_for_systemd_not_a_stop(tmp_path, monkeypatch):
    """config.apply restarts the agent inside the same process: STOPPING=1 there would make systemd
    kill it TimeoutStopSec later; RELOADING=1, then READY=1 from the new agent, is what it expects."""
    import asyncio

    from agent.app import Agent
    from agent.config import load_config

    config = load_config(agent_config(tmp_path, broker_port=1, devices=[]))
    with listen(str(tmp_path / "notify")) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))

        async def restart_once() -> None:
            agent = Agent(config)
            running = asyncio.create_task(agent.run())
            await asyncio.sleep(0.3)
            agent.request_restart()
            await running

        asyncio.run(restart_once())
        sock.settimeout(0.2)
        states = []
        try:
            while True:
                states += [line for line in sock.recv(4096).decode().splitlines() if not line.startswith("STATUS=")]
        except TimeoutError:
            pass
    assert states == ["READY=1", "RELOADING=1"]
