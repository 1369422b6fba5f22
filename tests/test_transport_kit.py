"""The bridges' transport kit (agent/core/transport) on its own, with a toy family: real sockets,
a pty pair for the serial port, and a VirtualClock wherever a timeout or a backoff is waited out.

The toy family's frames are lines: ``F...\\n`` is a valid frame, any other line a bad one; its
framer holds at most 64 bytes. Its session answers ``ACK <frame>``, waiting for the commit when
the frame is ``Fdata...``; ``Fboom`` meets a bug in the session, a ``!`` one in the framer.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.core.backoff import Backoff
from agent.core.boundary import boundary
from agent.core.clock import VirtualClock
from agent.core.transport import (
    Limits, Replies, SerialLine, SerialTransport, TcpDialer, TcpServer, UdpPort,
)
from tests.hardware_sim.broker import free_port
from tests.hardware_sim.pty import PtyPair

pytestmark = pytest.mark.timeout(30)
BIG = 512 * 1024   # an answer of Fbig: more than write_limit, a small part of a socket's buffers


# -- the toy family ----------------------------------------------------------------------------

class LineFramer:
    MAX = 64

    def __init__(self) -> None:
        self.buf = bytearray()
        self.frames = 0

    @property
    def pending(self) -> int:
        return len(self.buf)

    def feed(self, data: bytes) -> list[Any]:
        if b"!" in data:
            raise ValueError("a framer bug")
        self.buf += data
        out: list[Any] = []
        while (end := self.buf.find(b"\n")) >= 0:
            line = bytes(self.buf[:end])
            del self.buf[:end + 1]
            if line.startswith(b"F"):
                self.frames += 1
                out.append(line)
            else:
                out.append(("bad", line))
        if len(self.buf) > self.MAX:   # bounded: no frame is longer
            self.buf.clear()
        return out

    def reset(self) -> int:
        dropped = len(self.buf)
        self.buf.clear()
        return dropped


class LineSession:
    def __init__(self, family: "Family", link: Any):
        self.family = family
        self.link = link
        self.framer = LineFramer()

    def handle(self, items: list[Any]) -> None:
        for item in items:
            if isinstance(item, tuple):
                self.family.bad.append(item[1])
                continue
            if item == b"Fboom":
                raise RuntimeError("a session bug")
            self.family.frames.append((self.link.peer, item))
            self.link.send(b"ACK " + item + b"\n", after_commit=item.startswith(b"Fdata"))
            if item == b"Fbig":
                self.link.send(b"x" * BIG)

    def discarded(self, count: int, why: str) -> None:
        self.family.discarded.append((self.link.peer, count, why))

    def close(self) -> None:
        self.family.closed.append(self.link.peer)


class Family:
    """The toy family's runner, as the kit sees it (a Bridge)."""

    name = "toy"
    guard = boundary("test.transport")

    def __init__(self, committed: Callable[[], Any] | None = None):
        self.committed = committed
        self.frames: list[tuple[str, bytes]] = []
        self.bad: list[bytes] = []
        self.discarded: list[tuple[str, int, str]] = []
        self.closed: list[str] = []
        self.problems: list[str | None] = []
        self.sessions: list[LineSession] = []

    def open_session(self, link: Any) -> LineSession:
        session = LineSession(self, link)
        self.sessions.append(session)
        return session

    def transport_problem(self, error: str | None) -> None:
        self.problems.append(error)


class Commits:
    """The sink's ``committed()``: each waiter resolved (or failed) when the test says so."""

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future[None]] = []

    def __call__(self) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return waiter

    def commit(self) -> None:
        for waiter in self.waiters:
            waiter.set_result(None)
        self.waiters.clear()

    def fail(self) -> None:
        for waiter in self.waiters:
            waiter.set_exception(OSError("disk full"))
        self.waiters.clear()


async def until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 3.0) -> bool:
    """The server closed (or aborted) the connection: EOF or a reset, whatever was still unread."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if await asyncio.wait_for(reader.read(1 << 16), deadline - time.monotonic()) == b"":
                return True
    except (ConnectionError, OSError):
        return True
    except TimeoutError:
        return False
    return False


async def read_exactly(reader: asyncio.StreamReader, expected: bytes, timeout: float = 3.0) -> None:
    got = await asyncio.wait_for(reader.readexactly(len(expected)), timeout)
    assert got == expected


class Serving:
    """A transport's run() on the test's loop."""

    def __init__(self, transport: Any):
        self.transport = transport
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Any:
        self.task = asyncio.create_task(self.transport.run())
        return self.transport

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def listening(server: TcpServer) -> int:
    return await until(lambda: server.port, what="the server listening")


# -- Replies, without sockets ---------------------------------------------------------------------

def test_replies_keep_their_order_and_an_acknowledgement_waits_for_its_commit():
    async def scenario() -> None:
        written: list[bytes] = []
        commits = Commits()
        replies = Replies(written.append, commits)
        replies.send(b"plain")                       # nothing waits: at once
        replies.send(b"ack1", after_commit=True)
        replies.send(b"after")                       # behind ack1, though it needs no commit
        assert written == [b"plain"] and replies.waiting == 2
        commits.commit()
        await asyncio.sleep(0)
        assert written == [b"plain", b"ack1", b"after"]
        replies.send(b"ack2", after_commit=True)
        replies.send(b"ack3", after_commit=True)
        commits.fail()                               # the disk refused: no acknowledgement
        await asyncio.sleep(0)
        assert written[3:] == [] and replies.withheld == 2 and replies.waiting == 0
        replies.send(b"ack4", after_commit=True)
        replies.close()                              # the peer went: what waits is dropped
        commits.commit()
        await asyncio.sleep(0)
        replies.send(b"late")
        assert written == [b"plain", b"ack1", b"after"]

    asyncio.run(scenario())


def test_replies_without_a_commit_waiter_write_at_once():
    written: list[bytes] = []
    replies = Replies(written.append, None)
    replies.send(b"a", after_commit=True)
    replies.send(b"b")
    assert written == [b"a", b"b"]


# -- TCP server -----------------------------------------------------------------------------------

def test_tcp_server_answers_in_order_each_acknowledgement_after_the_commit():
    async def scenario() -> None:
        commits = Commits()
        family = Family(commits)
        async with Serving(TcpServer("127.0.0.1", 0, family)) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", await listening(server))
            writer.write(b"Fdata1\nFhello\n")
            await until(lambda: len(family.frames) == 2)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.2)   # nothing before the commit, not even Fhello's
            commits.commit()
            await read_exactly(reader, b"ACK Fdata1\nACK Fhello\n")
            writer.write(b"Fdata2\nFhello2\n")
            await until(lambda: commits.waiters)
            commits.fail()                                   # not committed: no 9014-like answer
            await read_exactly(reader, b"ACK Fhello2\n")
            [link] = server.links
            assert link.replies.withheld == 1 and link.valid_frames == 4
            assert server.stats.accepted == 1 and server.stats.connections == 1
            writer.close()
            await until(lambda: family.closed, what="the session closed")
            assert server.stats.connections == 0 and not server.links

    asyncio.run(scenario())


def test_a_bug_in_the_framer_or_the_session_costs_that_read_only():
    async def scenario() -> None:
        family = Family()
        before = family.guard.failures
        async with Serving(TcpServer("127.0.0.1", 0, family)) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", await listening(server))
            writer.write(b"F1\n!")                           # the framer raises on this read
            await until(lambda: family.guard.failures == before + 1)
            writer.write(b"Fboom\n")                         # the session raises
            await until(lambda: family.guard.failures == before + 2)
            writer.write(b"F2\n")
            await read_exactly(reader, b"ACK F2\n")
            assert [f for _, f in family.frames] == [b"F2"], "the read the framer failed on is lost, no more"
            writer.close()

    asyncio.run(scenario())


def test_idle_and_slow_loris_peers_are_closed_on_the_clock():
    async def scenario() -> None:
        clock = VirtualClock()
        family = Family()
        limits = Limits(idle_timeout=10.0, frame_timeout=3.0)
        async with Serving(TcpServer("127.0.0.1", 0, family, limits=limits, clock=clock)) as server:
            port = await listening(server)
            silent_r, silent_w = await asyncio.open_connection("127.0.0.1", port)
            loris_r, loris_w = await asyncio.open_connection("127.0.0.1", port)
            good_r, good_w = await asyncio.open_connection("127.0.0.1", port)
            loris_w.write(b"Fa frame that never ends")
            await until(lambda: len(server.links) == 3 and any(link.partial_since is not None for link in server.links))
            await clock.advance(4.0)
            assert await closed_by_peer(loris_r), "a frame incomplete beyond frame_timeout closes its peer"
            assert server.stats.timed_out == 1 and len(server.links) == 2
            for at in (5.0, 9.0):
                await clock.advance(at - clock.monotonic())
                good_w.write(b"Falive\n")
                await read_exactly(good_r, b"ACK Falive\n")
            await clock.advance(11.0 - clock.monotonic())
            assert await closed_by_peer(silent_r), "silent beyond idle_timeout"
            assert server.stats.timed_out == 2
            good_w.write(b"Fstill\n")
            await read_exactly(good_r, b"ACK Fstill\n")     # the talking peer was never touched
            for w in (silent_w, loris_w, good_w):
                w.close()

    asyncio.run(scenario())


def test_a_flooding_peer_is_closed_and_the_others_keep_their_answers():
    async def scenario() -> None:
        family = Family()
        async with Serving(TcpServer("127.0.0.1", 0, family, limits=Limits(flood_limit=10_000))) as server:
            port = await listening(server)
            flood_r, flood_w = await asyncio.open_connection("127.0.0.1", port)
            good_r, good_w = await asyncio.open_connection("127.0.0.1", port)
            try:
                for _ in range(40):
                    flood_w.write(b"junk line\n" * 100)      # lines, never a valid frame
                    await flood_w.drain()
                    good_w.write(b"Fok\n")
                    await read_exactly(good_r, b"ACK Fok\n")
            except (ConnectionError, OSError):
                pass
            assert await closed_by_peer(flood_r)
            assert server.stats.flooded == 1 and len(server.links) == 1
            for w in (flood_w, good_w):
                w.close()

    asyncio.run(scenario())


def test_max_connections_evicts_the_oldest_silent_peer_else_turns_the_newcomer_away():
    async def scenario() -> None:
        family = Family()
        async with Serving(TcpServer("127.0.0.1", 0, family, limits=Limits(max_connections=2))) as server:
            port = await listening(server)
            a_r, a_w = await asyncio.open_connection("127.0.0.1", port)
            a_w.write(b"Fa\n")
            await read_exactly(a_r, b"ACK Fa\n")
            b_r, b_w = await asyncio.open_connection("127.0.0.1", port)        # silent
            await until(lambda: len(server.links) == 2)
            c_r, c_w = await asyncio.open_connection("127.0.0.1", port)        # makes room: b goes
            assert await closed_by_peer(b_r)
            c_w.write(b"Fc\n")
            await read_exactly(c_r, b"ACK Fc\n")
            d_r, d_w = await asyncio.open_connection("127.0.0.1", port)        # both carry data: d goes
            assert await closed_by_peer(d_r)
            a_w.write(b"Fa2\n")
            await read_exactly(a_r, b"ACK Fa2\n")
            assert server.stats.refused_connections == 2 and server.stats.accepted == 3
            assert len(server.links) == server.stats.connections == 2
            for w in (a_w, b_w, c_w, d_w):
                w.close()

    asyncio.run(scenario())


def test_a_peer_that_does_not_read_our_answers_is_closed():
    async def scenario() -> None:
        family = Family()
        async with Serving(TcpServer("127.0.0.1", 0, family)) as server:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", await listening(server)))
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=sock)
            for _ in range(64):                              # answers far beyond what the sockets hold
                writer.write(b"Fbig\n")
                await asyncio.sleep(0.02)
                if family.closed:
                    break
            assert family.closed and not server.links, "closed once its unread answers passed write_limit"
            writer.close()

    asyncio.run(scenario())


def test_the_server_binds_again_with_backoff_while_its_port_is_taken():
    async def scenario() -> None:
        clock = VirtualClock()
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        family = Family()
        async with Serving(TcpServer("127.0.0.1", port, family, backoff=Backoff(initial=1.0, max=8.0),
                                     clock=clock)) as server:
            await until(lambda: family.problems)
            assert family.problems[0].startswith(f"cannot listen on 127.0.0.1:{port}: ")
            await clock.advance(30.0)                        # still taken: retried with growing delays
            tries = len(family.problems)
            assert 3 <= tries <= 6 and server.port is None
            blocker.close()
            await clock.advance(8.0)
            assert await until(lambda: server.port) == port and family.problems[-1] is None
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"Fup\n")
            await read_exactly(reader, b"ACK Fup\n")
            writer.close()

    asyncio.run(scenario())


# -- TCP dial ---------------------------------------------------------------------------------------

class Device:
    """A device the agent dials: sends one frame per connection, reads the answer, hangs up."""

    def __init__(self) -> None:
        self.connections = 0
        self.answers: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self, port: int = 0) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.write(b"Fhello\n")
            self.answers.append(await reader.readline())
            writer.close()
        self.server = await asyncio.start_server(serve, "127.0.0.1", port, reuse_address=True)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def test_the_dialler_reconnects_with_backoff_and_starts_over_once_a_link_worked():
    async def scenario() -> None:
        clock = VirtualClock()
        device = Device()
        port = await device.start()
        family = Family()
        dialler = TcpDialer("127.0.0.1", port, family, backoff=Backoff(initial=1.0, max=8.0), clock=clock)
        async with Serving(dialler):
            await until(lambda: device.answers == [b"ACK Fhello\n"])
            await until(lambda: family.closed and dialler.link is None, what="the device hung up")
            await clock.advance(0.9)
            assert device.connections == 1, "not before the backoff's first step"
            await clock.advance(1.2)                          # the link worked: the first step again
            await until(lambda: len(device.answers) == 2)
            await until(lambda: len(family.closed) == 2)
            await device.stop()
            await clock.advance(2.1)
            await until(lambda: any(p and p.startswith(f"cannot connect to 127.0.0.1:{port}") for p in family.problems))
            failures = sum(1 for p in family.problems if p)
            await clock.advance(3.0)                          # delays grow: 1-2s, 2-3s, 4-5s ...
            assert sum(1 for p in family.problems if p) - failures <= 2
            await device.start(port)
            await clock.advance(5.5)                          # the step in progress (4-5s) runs out
            await until(lambda: len(device.answers) >= 3)
            assert family.problems[-1] is None and dialler.stats.accepted >= 3
            await device.stop()

    asyncio.run(scenario())


# -- UDP ------------------------------------------------------------------------------------------

def test_udp_deframes_each_datagram_on_its_own_and_answers_its_sender():
    async def scenario() -> None:
        family = Family()
        port_number = free_port()
        async with Serving(UdpPort("127.0.0.1", port_number, family, limits=Limits(max_peers=2))) as udp:
            await until(lambda: udp.port)
            loop = asyncio.get_running_loop()
            got: list[tuple[bytes, Any]] = []

            class Client(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    got.append((data, addr))

            clients = [await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port_number))
                       for _ in range(3)]
            first = clients[0][0]
            first.sendto(b"F1\nF2\nFpart")
            await until(lambda: len(got) == 2)
            assert [d for d, _ in got] == [b"ACK F1\n", b"ACK F2\n"]
            peer = "127.0.0.1:%d" % first.get_extra_info("sockname")[1]
            assert family.discarded == [(peer, 5, "a datagram ended inside a frame")]
            first.sendto(b"ial\n")                              # not glued to the last datagram's rest
            await until(lambda: family.bad == [b"ial"])
            clients[1][0].sendto(b"Fb\n")
            clients[2][0].sendto(b"Fc\n")                        # a third sender: the oldest is forgotten
            await until(lambda: len(got) == 4)
            assert family.closed == [peer] and len(udp.links) == 2
            for transport, _ in clients:
                transport.close()

    asyncio.run(scenario())


def test_udp_link_to_lets_a_bridge_speak_first_and_hears_the_answer_on_the_same_link():
    """A centre polling a device (GB/T 20999) sends before it has heard anything: link_to makes the
    link (and its session) for the device's address; the answer comes back through it."""
    async def scenario() -> None:
        family = Family()
        loop = asyncio.get_running_loop()
        got: list[bytes] = []

        class Device(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.append(data)
                if data.startswith(b"Q"):                           # a query: answered to its sender
                    self.transport.sendto(b"F" + data[1:], addr)

        device, _ = await loop.create_datagram_endpoint(Device, local_addr=("127.0.0.1", 0))
        address = device.get_extra_info("sockname")[:2]
        udp = UdpPort("127.0.0.1", 0, family)
        assert udp.link_to(address) is None                   # not bound yet
        async with Serving(udp):
            await until(lambda: udp.port)
            link = udp.link_to(address)
            assert link is not None and udp.link_to(address) is link and len(udp.links) == 1
            link.send(b"Qpoll\n")
            await until(lambda: family.frames)                  # the answer, through the same link's session
            assert got[0] == b"Qpoll\n" and family.frames[0][1] == b"Fpoll"
            assert len(udp.links) == 1 and udp.stats.accepted == 1
        device.close()

    asyncio.run(scenario())


# -- serial ---------------------------------------------------------------------------------------

def _sim_open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)


async def _sim_read(fd: int, size: int, timeout: float = 3.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < size and time.monotonic() < deadline:
        try:
            data += os.read(fd, size - len(data))
        except BlockingIOError:
            await asyncio.sleep(0.01)
    return data


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_serial_port_answers_drops_a_stalled_frame_and_reopens_when_unplugged(tmp_path: Path):
    agent_link, sim_link = tmp_path / "agent", tmp_path / "sim"
    pair = PtyPair(agent_link=agent_link, sim_link=sim_link).start()

    async def scenario() -> None:
        nonlocal pair
        clock = VirtualClock()
        commits = Commits()
        family = Family(commits)
        serial = SerialTransport(SerialLine(port=str(agent_link)), family, limits=Limits(frame_timeout=2.0),
                                 backoff=Backoff(initial=0.5, max=4.0), clock=clock)
        async with Serving(serial):
            await until(lambda: serial.is_open, what="the port open")
            sim = _sim_open(str(sim_link))
            os.write(sim, b"Fdata1\nFhello\nFpart")
            await until(lambda: len(family.frames) == 2)
            assert await _sim_read(sim, 1, 0.2) == b"", "answers wait for the commit"
            commits.commit()
            assert await _sim_read(sim, 24) == b"ACK Fdata1\nACK Fhello\n"
            await clock.advance(3.0)                              # Fpart stalls beyond frame_timeout
            assert family.discarded == [(str(agent_link), 5, "a frame did not complete within 2s")]
            assert serial.stats.timed_out == 1
            os.write(sim, b"Fnext\n")
            assert await _sim_read(sim, 10) == b"ACK Fnext\n"
            os.close(sim)
            pair.stop()                                           # the adapter is unplugged
            await until(lambda: not serial.is_open, what="the port lost")
            assert family.closed == [str(agent_link)]
            await clock.advance(1.0)
            await until(lambda: any(p and p.startswith(f"cannot open {agent_link}") for p in family.problems))
            pair = PtyPair(agent_link=agent_link, sim_link=sim_link).start()   # plugged in again
            await clock.advance(5.0)
            await until(lambda: serial.is_open, what="the port reopened")
            assert family.problems[-1] is None
            sim = _sim_open(str(sim_link))
            os.write(sim, b"Fback\n")
            assert await _sim_read(sim, 10) == b"ACK Fback\n"
            os.close(sim)

    try:
        asyncio.run(scenario())
    finally:
        pair.stop()
