"""The reference consumer against a real Mosquitto (tests/hardware_sim/consumer.py, broker.py).

A plain paho client plays the gateway, so these tests pin the consumer and the broker harness,
not the agent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent import contract
from tests.fakes import eventually
from tests.hardware_sim.broker import BrokerTls, MosquittoBroker, port_open
from tests.hardware_sim.certs import make_test_certs
from tests.hardware_sim.consumer import Consumer

ROOT = Path(__file__).resolve().parents[1]
SITE, GW = "hz", "gw-01"
TS = 1763712000000


def topic(suffix: str, gw: str = GW) -> str:
    return contract.topic("citybrain", SITE, gw, suffix)


def telemetry(seq: int, values: list[float], device: str = "aq-01", gw: str = GW, hist: bool = False) -> dict[str, Any]:
    return {"v": 1, "gw": gw, "seq": seq, "ts": TS + seq, "hist": hist, "device": device,
            "readings": [{"p": "pm25", "v": v, "u": "ug/m3", "t": TS + seq, "q": "good"} for v in values]}


def event(seq: int, severity: str = "critical", type_: str = "fire.alarm", **extra: Any) -> dict[str, Any]:
    return {"v": 1, "gw": GW, "seq": seq, "ts": TS + seq, "hist": False, "id": f"{GW}-{seq}",
            "device": "fp-01", "type": type_, "severity": severity, "data": {"zone": 3}, **extra}


class Gateway:
    """A plain paho client standing in for the agent: publishes QoS 1 and waits for the PUBACK."""

    def __init__(self, host: str, port: int, client_id: str = "fake-gw", **tls: str) -> None:
        self.connected = threading.Event()
        self.received: list[mqtt.MQTTMessage] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = lambda c, u, f, rc, p: (not rc.is_failure) and self.connected.set()
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connected.clear()
        self.client.on_message = lambda c, u, m: self.received.append(m)
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        if tls:
            self.client.tls_set(ca_certs=tls["cafile"], certfile=tls.get("certfile"), keyfile=tls.get("keyfile"))
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.connected.wait(5), "fake gateway did not connect"

    def publish(self, topic_: str, payload: bytes | str | dict[str, Any], retain: bool = False) -> None:
        data = orjson.dumps(payload) if isinstance(payload, dict) else payload
        info = self.client.publish(topic_, data, qos=1, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published(), f"no PUBACK for {topic_}"

    def subscribe(self, filter_: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(filter_, qos=1)
        assert self.subscribed.wait(5), f"no SUBACK for {filter_}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def gateway(broker: MosquittoBroker) -> Iterator[Gateway]:
    fake = Gateway(broker.host, broker.port)
    yield fake
    fake.close()


def test_valid_messages_are_recorded_per_kind_and_device(consumer_factory: Callable[..., Consumer],
                                                         gateway: Gateway) -> None:
    consumer = consumer_factory(gateway=GW, site=SITE)
    jpeg = b"\xff\xd8" + os.urandom(64)
    gateway.publish(topic("state"), {"v": 1, "gw": GW, "seq": 1, "ts": TS, "hist": False,
                                     "online": True, "agent": "0.1.0", "boot": "b1"}, retain=True)
    gateway.publish(topic("telemetry/aq-01"), telemetry(2, [10.0, 11.0]))
    gateway.publish(topic("telemetry/aq-02"), telemetry(3, [99.0], device="aq-02"))
    gateway.publish(topic("telemetry/aq-01"), telemetry(4, [12.0], hist=True))
    gateway.publish(topic("event/fp-01"), event(5, evidence=[
        {"name": "0.jpg", "sha256": hashlib.sha256(jpeg).hexdigest(), "bytes": len(jpeg)}]))
    gateway.publish(topic(f"evidence/{GW}-5/0.jpg"), jpeg)
    gateway.publish(topic("telemetry/aq-01", gw="gw-02"), telemetry(2, [1.0], gw="gw-02"))  # not subscribed

    consumer.wait_for(lambda c: c.counts["evidence"] == 1, what="the evidence")
    assert consumer.invalid == [] and consumer.duplicates == 0
    assert consumer.seqs() == [1, 2, 3, 4, 5]
    assert [(r.v, r.seq, r.hist) for r in consumer.readings("aq-01", "pm25")] == \
        [(10.0, 2, False), (11.0, 2, False), (12.0, 4, True)]
    assert [r.v for r in consumer.readings("aq-02", "pm25")] == [99.0]
    assert consumer.reading_count == 4 and consumer.hist_count == 1
    assert [e["type"] for e in consumer.events()] == ["fire.alarm"]
    assert consumer.events(device="cam-01") == []
    assert consumer.evidence(f"{GW}-5") == {"0.jpg": jpeg}
    assert [m.seq for m in consumer.messages("telemetry", "aq-01")] == [2, 4]
    state = consumer.last("state")
    assert state is not None and state.body["online"] is True and state.retain is False

    # A consumer that comes later gets the retained state, flagged as retained.
    late = consumer_factory(gateway=GW)
    late.wait_for(lambda c: c.last("state") is not None)
    assert late.last("state").retain is True  # type: ignore[union-attr]


def test_invalid_messages_are_recorded_with_reasons_and_do_not_stop_the_consumer(
        consumer_factory: Callable[..., Consumer], gateway: Gateway) -> None:
    consumer = consumer_factory()
    bad = [
        (topic("telemetry/aq-01"), b"\x00\xff not json"),
        (topic("telemetry/aq-01"), b"[1, 2]"),
        (topic("telemetry/aq-01"), orjson.dumps({k: v for k, v in telemetry(1, [1.0]).items() if k != "seq"})),
        (topic("event/fp-01"), orjson.dumps(event(2, severity="apocalyptic"))),
        (topic("telemetry/aq-09"), orjson.dumps(telemetry(3, [1.0]))),           # device differs from topic
        (topic("telemetry/aq-01", gw="gw-02"), orjson.dumps(telemetry(4, [1.0]))),  # gw differs from topic
        ("citybrain/v1/hz/gw-01/firmware", b"{}"),                                # not a contract kind
    ]
    for topic_, payload in bad:
        gateway.publish(topic_, payload)
    gateway.publish(topic("telemetry/aq-01"), telemetry(5, [42.0]))

    consumer.wait_for(lambda c: c.seqs() == [5], what="the valid message after the garbage")
    invalid = consumer.invalid
    assert [i.topic for i in invalid] == [t for t, _ in bad]
    reasons = [" ".join(i.reasons) for i in invalid]
    for reason, expected in zip(reasons, ["not JSON", "expected a JSON object", "'seq' is a required property",
                                          "severity: 'apocalyptic' is not one of", "topic's device 'aq-09'",
                                          "topic's gateway 'gw-02'", "unknown topic kind 'firmware'"]):
        assert expected in reason, reason
    assert invalid[0].payload == b"\x00\xff not json"
    assert consumer.invalid_count == 7 and consumer.counts["telemetry"] == 1
    assert "invalid 7" in consumer.summary()


def test_duplicates_are_dropped_per_gateway_and_counted(consumer_factory: Callable[..., Consumer],
                                                        gateway: Gateway) -> None:
    consumer = consumer_factory()
    for seq, value in [(1, 1.0), (2, 2.0), (1, 1.0), (3, 3.0), (2, 2.0), (2, 2.0)]:
        gateway.publish(topic("telemetry/aq-01"), telemetry(seq, [value]))
    gateway.publish(topic("telemetry/aq-01", gw="gw-02"), telemetry(1, [7.0], gw="gw-02"))  # another gateway's 1

    consumer.wait_for(lambda c: c.duplicates == 3 and c.counts["telemetry"] == 4)
    assert consumer.seqs(GW) == [1, 2, 3] and consumer.seqs("gw-02") == [1]
    assert consumer.duplicate_keys == [(GW, 1), (GW, 2), (GW, 2)]
    assert [r.v for r in consumer.readings("aq-01", "pm25")] == [1.0, 2.0, 3.0, 7.0]
    assert consumer.reading_count == 4


def test_broker_restart_on_the_same_port_and_clients_reconnect(broker: MosquittoBroker,
                                                               consumer_factory: Callable[..., Consumer],
                                                               gateway: Gateway) -> None:
    consumer = consumer_factory()
    gateway.publish(topic("telemetry/aq-01"), telemetry(1, [1.0]))
    consumer.wait_for(lambda c: c.seqs() == [1])
    port, connects = broker.port, consumer.connects

    broker.restart(down_for=0.2)

    assert broker.port == port and broker.running
    consumer.wait_for(lambda c: c.connects > connects and c.subscribes > connects, what="consumer reconnect")
    assert gateway.connected.wait(5), "the fake gateway did not reconnect"
    gateway.publish(topic("telemetry/aq-01"), telemetry(2, [2.0]))
    consumer.wait_for(lambda c: c.seqs() == [1, 2], what="a message after the restart")
    assert "--- start on" in broker.log_tail(200) and broker.log_tail(200).count("--- start on") == 2


def test_killed_broker_drops_connections_and_starts_again(broker: MosquittoBroker,
                                                          consumer_factory: Callable[..., Consumer]) -> None:
    consumer = consumer_factory()
    broker.kill()
    consumer.wait_for(lambda c: not c.connected, what="the consumer to notice")
    assert not port_open(broker.host, broker.port)
    broker.start()
    consumer.wait_for(lambda c: c.subscribes >= 2, what="the consumer back")


def test_commands_are_signed_and_not_echoed_to_the_consumer(broker: MosquittoBroker,
                                                            consumer_factory: Callable[..., Consumer],
                                                            gateway: Gateway) -> None:
    gateway.subscribe(f"citybrain/v1/{SITE}/{GW}/cmd/#")
    consumer = consumer_factory(gateway=GW, site=SITE)
    request = consumer.send_command("signal.priority", {"phase": 2, "seconds": 20}, key=b"secret")

    eventually(lambda: gateway.received, 5, "the request at the gateway")
    (message,) = gateway.received
    assert message.topic == topic("cmd/signal.priority")
    received = orjson.loads(message.payload)
    assert received == request and contract.validate("cmd_request", received) == []
    assert contract.signature_ok(received, b"secret")

    # The gateway answers; the consumer matches it by request id.
    gateway.publish(topic(f"cmd_result/{request['id']}"), {"v": 1, "gw": GW, "seq": 9, "ts": TS, "hist": False,
                                                            "id": request["id"], "ok": True, "result": {}})
    consumer.wait_for(lambda c: c.last("cmd_result", request["id"]) is not None)
    assert consumer.messages("cmd_request") == []   # no_local: our own command is not echoed
    assert "sig" not in consumer.send_command("buffer.stats", key=None)


def test_wait_for_times_out_with_a_summary(consumer_factory: Callable[..., Consumer]) -> None:
    consumer = consumer_factory()
    with pytest.raises(TimeoutError, match="ten readings.*accepted: nothing"):
        consumer.wait_for(lambda c: c.reading_count >= 10, timeout=0.2, what="ten readings")


def test_password_protected_broker(tmp_path: Path) -> None:
    with MosquittoBroker(username="central", password="s3cret", workdir=tmp_path) as secured:
        with Consumer(secured.host, secured.port, username="central", password="s3cret") as consumer:
            assert consumer.connected
        with pytest.raises(ConnectionError, match="Not authorized|Bad user name or password"):
            Consumer(secured.host, secured.port, username="central", password="wrong").start()
        with pytest.raises(ConnectionError):
            Consumer(secured.host, secured.port).start()   # anonymous refused when users are set
    assert "password_file" in (tmp_path / "mosquitto.conf").read_text()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make certificates")
def test_mutual_tls_listener(tmp_path: Path) -> None:
    certs = make_test_certs(tmp_path)
    tls = BrokerTls(certs["ca.crt"], certs["server.crt"], certs["server.key"], require_certificate=True)
    with MosquittoBroker(tls=tls, workdir=tmp_path / "broker") as secured:
        assert secured.tls_port and secured.tls_port != secured.port
        client_cert = {"cafile": str(certs["ca.crt"]), "certfile": str(certs["client.crt"]),
                       "keyfile": str(certs["client.key"])}
        with Consumer(secured.host, secured.tls_port, **client_cert) as consumer:
            fake = Gateway(secured.host, secured.tls_port, **client_cert)
            fake.publish(topic("telemetry/aq-01"), telemetry(1, [5.0]))
            fake.close()
            consumer.wait_for(lambda c: c.seqs() == [1])
        with pytest.raises(TimeoutError):   # no client certificate: the handshake fails
            Consumer(secured.host, secured.tls_port, cafile=str(certs["ca.crt"])).start(timeout=0.5)


def test_broker_options_reach_the_config(tmp_path: Path) -> None:
    config = MosquittoBroker(7777, max_inflight=5, max_queued=50, workdir=tmp_path).config_text()
    for line in ("listener 7777 127.0.0.1", "max_inflight_messages 5", "max_queued_messages 50",
                 "persistence false", "allow_anonymous true"):
        assert line in config.splitlines()


def test_missing_mosquitto_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.hardware_sim import broker as broker_module
    monkeypatch.setattr(broker_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(broker_module.Path, "is_file", lambda self: False)
    with pytest.raises(broker_module.MosquittoNotInstalled, match="apt-get install mosquitto"):
        MosquittoBroker()


def test_clis_run_and_stop_on_ctrl_c(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    broker_cli = subprocess.Popen([sys.executable, "-m", "tests.hardware_sim.broker", "--workdir", str(tmp_path)],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = broker_cli.stdout.readline()  # type: ignore[union-attr]
        assert first.startswith("mosquitto listening on 127.0.0.1:"), first
        port = int(first.split(":")[1].split()[0])
        consumer_cli = subprocess.Popen([sys.executable, "-m", "tests.hardware_sim.consumer", "--port", str(port),
                                         "--gateway", GW, "--site", SITE], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        printed = ""   # what the consumer printed before ctrl-c: read until all three messages are there
        try:
            assert "listening on" in consumer_cli.stderr.readline()  # type: ignore[union-attr]
            fake = Gateway("127.0.0.1", port)
            fake.publish(topic("telemetry/aq-01"), telemetry(1, [35.2]))
            fake.publish(topic("telemetry/aq-01"), telemetry(1, [35.2]))
            fake.publish(topic("event/fp-01"), event(2, severity="bogus"))
            fake.close()
            while not all(line in printed for line in ("aq-01: pm25=35.2ug/m3", "DUPLICATE seq=1", "INVALID")):
                line = consumer_cli.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    break
                printed += line
        finally:
            consumer_cli.send_signal(signal.SIGINT)
            out, err = consumer_cli.communicate(timeout=5)
        out = printed + out
        assert "telemetry" in out and "aq-01: pm25=35.2ug/m3" in out
        assert "DUPLICATE seq=1" in out and "INVALID" in out and "severity" in out
        assert "duplicates 1, invalid 1" in err
    finally:
        broker_cli.send_signal(signal.SIGINT)
        broker_cli.communicate(timeout=5)
    assert broker_cli.returncode == 0
    assert not port_open("127.0.0.1", port)
