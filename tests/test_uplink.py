"""The MQTT uplink against real Mosquitto brokers: TLS, mutual TLS, an untrusted broker
certificate, and the fallback to MQTT 3.1.1 when a broker refuses MQTT 5; and its reconnect
backoff on virtual time, against a port nobody listens on."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import threading
from pathlib import Path

import pytest
import tenacity.wait

from agent.config import Gateway, Mqtt
from agent.core.clock import VirtualClock
from agent.core.model import Priority, now_ms
from agent.outbox import Outbox
from agent.uplink import MqttUplink
from tests.fakes import until as wait_until
from tests.hardware_sim.broker import BrokerTls, MosquittoBroker
from tests.hardware_sim.certs import make_test_certs
from tests.hardware_sim.consumer import Consumer

pytestmark = pytest.mark.timeout(60)
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

GATEWAY = Gateway(id="gw-up", site="lab")


def reading_body(value: float) -> dict:
    return {"device": "aq-01", "readings": [{"p": "pm25", "v": value, "u": "ug/m3", "t": now_ms(), "q": "good"}]}


async def run_uplink(tmp_path: Path, cfg: Mqtt, until, timeout: float = 10.0) -> MqttUplink:
    """Run an uplink with one telemetry message in its outbox until ``until(uplink)`` or timeout."""
    outbox = Outbox(tmp_path / "outbox.db", gateway_id=GATEWAY.id, max_bytes=1 << 20)
    outbox.put(Priority.TELEMETRY, "citybrain/v1/lab/gw-up/telemetry/aq-01", reading_body(35.2))
    outbox.flush()
    uplink = MqttUplink(cfg, GATEWAY, outbox, birth=lambda: {"site": "lab", "agent": "test", "devices": []})
    task = asyncio.create_task(uplink.run())

    def flushed_and_done() -> bool:
        outbox.flush()
        return until(uplink)
    try:
        with contextlib.suppress(AssertionError):   # the caller's assertions say what did not happen
            await wait_until(flushed_and_done, timeout, "the uplink's outcome", every=0.05)
    finally:
        await uplink.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        outbox.close()
    return uplink


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    return make_test_certs(tmp_path_factory.mktemp("certs"))


@needs_openssl
def test_mutual_tls_delivers(tmp_path, certs):
    tls = BrokerTls(certs["ca.crt"], certs["server.crt"], certs["server.key"], require_certificate=True)
    with MosquittoBroker(tls=tls, workdir=tmp_path / "broker") as broker:
        tls_client = {"cafile": str(certs["ca.crt"]), "certfile": str(certs["client.crt"]),
                      "keyfile": str(certs["client.key"])}
        with Consumer(broker.host, broker.tls_port, gateway=GATEWAY.id, **tls_client) as centre:
            cfg = Mqtt.model_validate({"host": "127.0.0.1", "port": broker.tls_port, "tls": {
                "ca_file": str(certs["ca.crt"]), "cert_file": str(certs["client.crt"]),
                "key_file": str(certs["client.key"])}})
            uplink = asyncio.run(run_uplink(tmp_path, cfg, lambda u: u.stats.acked >= 1))
            assert uplink.stats.acked == 1 and uplink.stats.connects == 1
            centre.wait_for(lambda c: c.readings("aq-01", "pm25"), 5)
            assert centre.invalid == []


@needs_openssl
def test_tls_without_client_certificate_is_refused_by_a_mutual_tls_broker(tmp_path, certs):
    tls = BrokerTls(certs["ca.crt"], certs["server.crt"], certs["server.key"], require_certificate=True)
    with MosquittoBroker(tls=tls, workdir=tmp_path / "broker") as broker:
        cfg = Mqtt.model_validate({"host": "127.0.0.1", "port": broker.tls_port,
                                   "tls": {"ca_file": str(certs["ca.crt"])}})
        uplink = asyncio.run(run_uplink(tmp_path, cfg, lambda u: u.stats.connect_failures >= 2, timeout=5))
        assert uplink.stats.acked == 0 and uplink.stats.connects == 0
        assert uplink.stats.last_error


@needs_openssl
def test_untrusted_broker_certificate_is_refused(tmp_path, certs):
    other_ca = make_test_certs(tmp_path / "other", ca_name="someone-else")
    tls = BrokerTls(certs["ca.crt"], certs["server.crt"], certs["server.key"])
    with MosquittoBroker(tls=tls, workdir=tmp_path / "broker") as broker:
        cfg = Mqtt.model_validate({"host": "127.0.0.1", "port": broker.tls_port,
                                   "tls": {"ca_file": str(other_ca["ca.crt"])}})
        uplink = asyncio.run(run_uplink(tmp_path, cfg, lambda u: u.stats.connect_failures >= 1, timeout=5))
        assert uplink.stats.connects == 0
        assert "certificate not trusted" in uplink.stats.last_error


class RefuseMqtt5Proxy:
    """A TCP proxy in front of Mosquitto that answers an MQTT 5 CONNECT the way a 3.1.1-only broker
    does (CONNACK, return code 1: unacceptable protocol version) and passes 3.1.1 through."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        first = client.recv(4096)
        # CONNECT: fixed header, remaining length, then "\x00\x04MQTT" and the protocol level
        level_at = first.find(b"\x00\x04MQTT") + 6
        if first[:1] == b"\x10" and level_at > 6 and first[level_at] == 5:
            self.refused += 1
            client.sendall(b"\x20\x02\x00\x01")
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        upstream.sendall(first)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_falls_back_to_mqtt_311_when_the_broker_refuses_mqtt_5(tmp_path, broker, consumer_factory):
    proxy = RefuseMqtt5Proxy(broker.port)
    try:
        centre = consumer_factory(gateway=GATEWAY.id)
        cfg = Mqtt(host="127.0.0.1", port=proxy.port)
        uplink = asyncio.run(run_uplink(tmp_path, cfg, lambda u: u.stats.acked >= 1))
        assert proxy.refused == 1
        assert uplink.stats.protocol == "3.1.1" and uplink.stats.acked == 1
        centre.wait_for(lambda c: c.readings("aq-01", "pm25") and c.last("birth"), 5)
        assert centre.invalid == []
    finally:
        proxy.close()


def test_protocol_pinned_to_5_does_not_fall_back(tmp_path, broker):
    proxy = RefuseMqtt5Proxy(broker.port)
    try:
        cfg = Mqtt(host="127.0.0.1", port=proxy.port, protocol="5")
        uplink = asyncio.run(run_uplink(tmp_path, cfg, lambda u: u.stats.connect_failures >= 2, timeout=5))
        assert uplink.stats.acked == 0 and proxy.refused >= 2
    finally:
        proxy.close()


def test_a_command_topic_that_is_not_utf8_is_handed_on_as_junk_not_counted_as_a_bug(tmp_path):
    """Found by bench/fuzz.py (a hostile broker): paho decodes a PUBLISH's topic when asked, and
    one that is not UTF-8 raised UnicodeDecodeError in the uplink's on_message, counted on the
    mqtt.cmd boundary as a bug. The command channel gets it (and refuses it) like other junk."""
    from paho.mqtt.client import MQTTMessage

    from agent.core import boundary

    outbox = Outbox(tmp_path / "outbox.db", gateway_id="gw-1", max_bytes=2**20)
    uplink = MqttUplink(Mqtt(), Gateway(id="gw-1", site="lab"), outbox, birth=dict)
    got: list[tuple[object, object]] = []
    uplink.on_command = lambda topic, payload: got.append((topic, payload))
    before = boundary.boundary("mqtt.cmd").failures
    message = MQTTMessage(topic=b"citybrain/v1/lab/gw-1/cmd/device.re\xf2d")
    message.payload = b"{}"
    uplink._on_message(None, None, message)
    assert got == [("citybrain/v1/lab/gw-1/cmd/device.re\ufffdd", b"{}")]
    assert boundary.boundary("mqtt.cmd").failures == before
    outbox.close()


# -- reconnect backoff, on virtual time ---------------------------------------------------------------

def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PinnedJitter:
    """``random`` for the backoff's draws, each pinned to one end of its range."""

    def __init__(self, end: str):
        self.end = end

    def uniform(self, low: float, high: float) -> float:
        return high if self.end == "high" else low


async def failure_times(tmp_path: Path, failures: int) -> tuple[list[float], MqttUplink]:
    """Run an uplink against a port nobody listens on (each connect refused at once, over a real
    socket); the virtual times of its first ``failures`` failed connects."""
    clock = VirtualClock()
    cfg = Mqtt(host="127.0.0.1", port=refused_port(), reconnect={"initial": "1s", "max": "8s"})
    outbox = Outbox(tmp_path / "outbox.db", gateway_id=GATEWAY.id, max_bytes=1 << 20, clock=clock.now_ms)
    uplink = MqttUplink(cfg, GATEWAY, outbox, birth=dict, clock=clock)
    task = asyncio.create_task(uplink.run())
    times: list[float] = []
    try:
        for n in range(1, failures + 1):
            # asleep between tries: one sleeper; trying (a connect in a worker thread): none
            await clock.run_until(lambda: uplink.stats.connect_failures == n, 10.0, what=f"failure {n}")
            times.append(clock.monotonic())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        outbox.close()
    return times, uplink


@pytest.mark.parametrize("end, waits", [("high", [2.0, 4.0, 8.0, 8.0, 8.0]), ("low", [1.0] * 5)])
def test_reconnect_waits_are_drawn_under_a_ceiling_that_doubles_up_to_max(tmp_path, monkeypatch, end, waits):
    """Full jitter: after the n-th failure in a row the uplink waits between ``initial`` and
    ``initial * 2**n`` (never above ``max``), so a fleet that lost one broker does not come back in
    step. Pinned to each end of the draw, the waits are exactly the bounds."""
    monkeypatch.setattr(tenacity.wait, "random", PinnedJitter(end))   # the core backoff draws through tenacity
    times, uplink = asyncio.run(failure_times(tmp_path, 6))
    assert [round(b - a, 6) for a, b in zip(times, times[1:])] == waits
    assert uplink.stats.state == "disconnected" and uplink.stats.connects == 0
    assert "connection refused" in uplink.stats.last_error


def test_reconnect_waits_drawn_at_random_stay_within_their_bounds(tmp_path):
    times, _ = asyncio.run(failure_times(tmp_path, 12))
    for n, wait in enumerate((b - a for a, b in zip(times, times[1:])), start=1):
        assert 1.0 <= wait <= min(8.0, 2.0 ** n), (n, wait)
