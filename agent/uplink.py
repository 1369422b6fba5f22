"""MQTT uplink: drains the outbox to the broker with QoS 1 and deletes rows only after PUBACK.

paho-mqtt is driven from the agent's asyncio loop (socket reader + a writer when paho has bytes
queued), so PUBACK handling, outbox acks and publishing all happen on one thread without locks.
Each connection gets a fresh paho client: paho's own in-memory resend queue would otherwise race
with the outbox, which is the single source of truth for what still has to go out. After a
(re)connect everything unacknowledged is sent again from the outbox, marked ``hist``.

Time: the reconnect backoff, the keepalive loop and the timestamps run on the uplink's ``clock``
(:mod:`agent.core.clock`; tests give a virtual one). The limits on connecting and on saying goodbye
stay on real time: they guard I/O.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from agent import __version__
from agent.core.boundary import boundary
from agent.config import Gateway, Mqtt
from agent.contract import CONTRACT_VERSION, topic
from agent.core.backoff import Backoff, Retry
from agent.core.clock import SYSTEM, Clock
from agent.outbox import Outbox

log = logging.getLogger("agent.uplink")
INCOMING = boundary("mqtt.cmd")       # shared with agent/commands.py: one count per input channel
PACKETS = boundary("mqtt.packet")     # a packet paho could not take apart

# CONNACK reasons that mean "this broker does not speak MQTT 5": fall back to 3.1.1 at once.
_UNSUPPORTED_PROTOCOL = {1, 0x84}
# CONNACK reasons about who we are: retrying fast will not help, so back off to the slow cap.
_AUTH_REFUSED = {4, 5, 0x86, 0x87, 0x8C}
_AUTH_BACKOFF_MAX = 60.0


class ConnectRefused(Exception):
    def __init__(self, reason: str, code: int):
        super().__init__(reason)
        self.code = code


@dataclass
class UplinkStats:
    state: str = "starting"            # starting, connecting, connected, disconnected, refused
    broker: str = ""
    protocol: str = ""
    connected_since_ms: int | None = None
    last_error: str | None = None
    connects: int = 0
    connect_failures: int = 0
    published: int = 0
    acked: int = 0
    rejected: int = 0                  # PUBACK with a failure reason code (MQTT 5)
    inflight: int = 0
    last_ack_ms: int | None = None
    session_first_ack_ms: int | None = None   # first PUBACK of the current connection
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "extra"} | self.extra


class MqttUplink:
    """Keeps one MQTT connection up and the outbox flowing through it."""

    def __init__(self, cfg: Mqtt, gateway: Gateway, outbox: Outbox, *,
                 birth: Callable[[], dict[str, Any]], password: str | None = None,
                 boot_id: str | None = None, clock: Clock = SYSTEM):
        self.cfg = cfg
        self.clock = clock
        self.gateway = gateway
        self.outbox = outbox
        self._birth = birth
        self._password = password
        self.boot_id = boot_id or uuid.uuid4().hex[:12]
        self.stats = UplinkStats(broker=f"{cfg.host}:{cfg.port}")
        self._wake = asyncio.Event()
        # paho mid -> (outbox row id, when the message was produced, sent from the backlog)
        self._inflight: dict[int, tuple[int, int, bool]] = {}
        # produced-to-PUBACK latency of live messages, for status and the benchmark
        self.ack_latency_ms: deque[int] = deque(maxlen=4_000)
        self._client: mqtt.Client | None = None
        self._sock: Any = None
        self._connack: asyncio.Future[tuple[int, str]] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._use_v5 = cfg.protocol != "3.1.1"
        self._stopping = False
        self.on_command: Callable[[str, bytes], None] | None = None   # cmd/# handler
        self.on_state_change: Callable[[bool], None] | None = None    # connected / lost

    # -- public -------------------------------------------------------------------------------

    def topic(self, suffix: str) -> str:
        return topic(self.cfg.prefix, self.gateway.site, self.gateway.id, suffix)

    def wake(self) -> None:
        """Something new was committed to the outbox: publish it if the window allows."""
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self.stats.state == "connected"

    async def run(self) -> None:
        """Connect, drain, reconnect with exponential backoff and jitter, until cancelled."""
        loop = asyncio.get_running_loop()
        # "full" jitter on an exponential ceiling spreads a fleet reconnecting to one broker; refused
        # credentials will not get better by retrying fast, so those back off to a slower cap
        retries = {False: Retry(self.cfg.reconnect, spread="full"),
                   True: Retry(Backoff(initial=self.cfg.reconnect.initial, max=_AUTH_BACKOFF_MAX), spread="full")}
        attempt = 0
        while not self._stopping:
            self.stats.state = "connecting"
            try:
                await self._connect(loop)
            except (OSError, ConnectRefused, asyncio.TimeoutError, ssl.SSLError) as exc:
                attempt += 1
                self.stats.connect_failures += 1
                code = getattr(exc, "code", None)
                self.stats.state = "refused" if code in _AUTH_REFUSED else "disconnected"
                self._set_error(self._describe(exc))
                self._drop_client()
                if code in _UNSUPPORTED_PROTOCOL and self._use_v5 and self.cfg.protocol == "auto":
                    log.warning("broker %s does not speak MQTT 5; falling back to 3.1.1", self.stats.broker)
                    self._use_v5 = False
                    continue
                await self.clock.sleep(retries[code in _AUTH_REFUSED].delay(min(attempt, 16)))
                continue
            attempt = 0
            try:
                await self._serve()
            finally:
                self._drop_client()
                if self.stats.state == "connected":
                    self.stats.state = "disconnected"
                self.stats.connected_since_ms = None

    async def stop(self) -> None:
        """Say goodbye: retained state offline, then a clean DISCONNECT (no last will)."""
        self._stopping = True
        client = self._client
        if client is not None and self.connected:
            try:
                info = client.publish(self.topic("state"), self._state_payload(False), qos=1, retain=True)
                deadline = time.monotonic() + 1.0   # real time: it waits for the broker's PUBACK
                while not info.is_published() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                client.disconnect()
            except (OSError, RuntimeError, ValueError):
                pass
        self._drop_client()

    # -- connection -------------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        cfg = self.cfg
        protocol = MQTTProtocolVersion.MQTTv5 if self._use_v5 else MQTTProtocolVersion.MQTTv311
        kwargs: dict[str, Any] = {}
        if not self._use_v5:
            kwargs["clean_session"] = True   # the outbox, not the broker session, holds what is unsent
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id or self.gateway.id,
                             protocol=protocol, **kwargs)
        client.max_inflight_messages_set(cfg.inflight_window + 16)   # our window governs; paho must not queue
        client.max_queued_messages_set(0)
        client.connect_timeout = cfg.connect_timeout
        client.enable_logger(logging.getLogger("agent.uplink.paho"))
        # a bug in one of our callbacks is logged and counted by the callback itself; should one
        # slip through, paho must still finish handling the packet (and acknowledge it)
        client.suppress_exceptions = True
        if cfg.username:
            client.username_pw_set(cfg.username, self._password)
        if cfg.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                                 cafile=str(cfg.tls.ca_file) if cfg.tls.ca_file else None)
            if cfg.tls.cert_file and cfg.tls.key_file:
                context.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file))
            if cfg.tls.insecure_skip_verify:
                log.warning("TLS certificate verification is OFF for %s: use only on a test bench", self.stats.broker)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            client.tls_set_context(context)
        client.will_set(self.topic("state"), self._state_payload(False), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        client = self._new_client()
        self._client = client
        connack: asyncio.Future[tuple[int, str]] = loop.create_future()
        self._connack = connack
        self._closed = loop.create_future()
        extra: dict[str, Any] = {}
        if self._use_v5:   # clean start and properties exist only in MQTT 5
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 0
            extra = {"clean_start": True, "properties": properties}
        # connect() resolves the name, opens TCP and does the TLS handshake: blocking work, so it
        # runs in a worker thread and a slow broker never delays the event loop (or a fire alarm).
        await asyncio.wait_for(
            loop.run_in_executor(None, lambda: client.connect(self.cfg.host, self.cfg.port,
                                                              keepalive=int(self.cfg.keepalive), **extra)),
            timeout=self.cfg.connect_timeout + 1)
        sock = client.socket()
        if sock is None:
            raise OSError("connection closed during connect")
        # Small packets (a fire alarm, a command result, PUBACKs) must not wait for Nagle's
        # algorithm to coalesce them with the next write: up to 40 ms with delayed ACKs.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        client.on_socket_close = lambda _c, _u, s: self._detach(s)
        loop.add_reader(sock, self._readable)
        self._sock = sock
        self._flush_writes()
        try:
            code, reason = await asyncio.wait_for(asyncio.shield(connack), timeout=self.cfg.connect_timeout)
        except asyncio.TimeoutError:
            raise ConnectRefused("no CONNACK from the broker in time", -1) from None
        if code != 0:
            raise ConnectRefused(reason, code)

    def _detach(self, sock: Any) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock)
        loop.remove_writer(sock)

    def _drop_client(self) -> None:
        if self._connack is not None and self._connack.done() and not self._connack.cancelled():
            self._connack.exception()   # mark a failure nobody awaited as seen (no asyncio warning)
        client, self._client = self._client, None
        self._inflight.clear()
        self.stats.inflight = 0
        if client is not None:
            sock = client.socket()
            if sock is not None:
                try:
                    self._detach(sock)
                except (ValueError, OSError):
                    pass
            try:
                client._sock_close()   # no public "forget this socket" in paho; disconnect() needs a live link
            except (OSError, AttributeError):
                pass

    def _readable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            rc = client.loop_read(max_packets=64)
        except Exception as exc:   # noqa: BLE001 - paho could not parse what the broker sent
            # where it stopped inside the stream is unknown: a new connection starts clean, and
            # everything unacknowledged is sent again from the outbox
            PACKETS.failed(exc, where=self.stats.broker)
            rc = mqtt.MQTT_ERR_PROTOCOL
        if rc != mqtt.MQTT_ERR_SUCCESS and self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self._flush_writes()

    def _flush_writes(self) -> None:
        """Write what paho has queued; if the socket is full, finish when it becomes writable."""
        client = self._client
        if client is None:
            return
        client.loop_write()
        sock = client.socket()
        if sock is not None and client.want_write():
            asyncio.get_running_loop().add_writer(sock, self._writable)

    def _writable(self) -> None:
        client = self._client
        if client is None:
            return
        client.loop_write()
        sock = client.socket()
        if sock is not None and not client.want_write():
            asyncio.get_running_loop().remove_writer(sock)

    # -- paho callbacks (all on the event loop thread) ----------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((reason_code.value, str(reason_code)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(OSError(f"broker closed the connection ({reason_code})"))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        entry = self._inflight.pop(mid, None)
        self.stats.inflight = len(self._inflight)
        if entry is None:
            return
        row_id, created_ms, hist = entry
        # 0x10 "no matching subscribers" is a success: the broker took the message.
        if reason_code is not None and reason_code.is_failure and reason_code.value != 0x10:
            self.stats.rejected += 1
            self._set_error(f"broker refused message {row_id}: {reason_code}")
        else:
            self.outbox.ack(row_id)
            now = self.clock.now_ms()
            self.stats.acked += 1
            self.stats.last_ack_ms = now
            if self.stats.session_first_ack_ms is None:
                self.stats.session_first_ack_ms = now
            if not hist:
                self.ack_latency_ms.append(now - created_ms)
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        # paho sends the PUBACK of a QoS 1 message after this returns: an exception here would
        # leave it unacknowledged and the broker would deliver it again, forever
        if self.on_command is None:
            return
        try:
            topic = message.topic
        except UnicodeDecodeError:
            # a topic that is not UTF-8 (malformed MQTT from the broker) is junk like any other: the
            # command channel refuses it; it was counted as a bug on mqtt.cmd (found by bench/fuzz.py)
            topic = message._topic.decode("utf-8", "replace")   # paho keeps the bytes only there
        try:
            self.on_command(topic, message.payload)
        except Exception as exc:   # noqa: BLE001 - see agent/core/boundary.py
            INCOMING.failed(exc, message.payload, where="cmd/#")

    # -- connected life ------------------------------------------------------------------------

    async def _serve(self) -> None:
        client = self._client
        assert client is not None
        self.stats.state = "connected"
        self.stats.connects += 1
        self.stats.connected_since_ms = self.clock.now_ms()
        self.stats.session_first_ack_ms = None
        self.stats.protocol = "5" if self._use_v5 else "3.1.1"
        self.stats.last_error = None
        log.info("connected to %s (MQTT %s)", self.stats.broker, self.stats.protocol)
        self._notify(True)
        client.publish(self.topic("state"), self._state_payload(True), qos=1, retain=True)
        client.publish(self.topic("birth"), self._birth_payload(), qos=1, retain=True)
        # a wildcard is not a valid contract topic, so the filter is built from the state topic
        client.subscribe(self.topic("state").removesuffix("state") + "cmd/#", qos=1)
        self.outbox.start_session()
        self._flush_writes()
        misc = asyncio.create_task(self._keepalive())
        pump = asyncio.create_task(self._pump())
        closed = self._closed
        assert closed is not None
        try:
            done, _ = await asyncio.wait({pump, closed, misc}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not closed and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            pump.cancel()
            misc.cancel()
            await asyncio.gather(pump, misc, return_exceptions=True)
            if not self._stopping:
                log.warning("lost connection to %s; %d messages were in flight and will be resent",
                            self.stats.broker, len(self._inflight))
                self._set_error("connection lost")
            self._notify(False)

    async def _keepalive(self) -> None:
        # paho judges the keepalive on its own (real) clock; this loop only decides when it is asked
        while True:
            await self.clock.sleep(1.0)
            client = self._client
            if client is None:
                return
            if client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                if self._closed is not None and not self._closed.done():
                    self._closed.set_result(None)
                return
            self._flush_writes()

    async def _pump(self) -> None:
        window = self.cfg.inflight_window
        self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            client = self._client
            if client is None:
                return
            free = window - len(self._inflight)
            if free <= 0:
                continue
            batch = self.outbox.take(free)
            # paho writes each packet as it is published: corked, a batch leaves in as few TCP
            # segments as it fills instead of one per message (on loopback and in VMs each
            # transmission, not each send(), is what costs)
            corked = len(batch) > 1 and self._cork(client, True)
            try:
                for message in batch:
                    info = client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        # the link went down under us: the row stays in the outbox for the next session
                        self._set_error(f"publish failed: {mqtt.error_string(info.rc)}")
                        return
                    self.stats.published += 1
                    if message.qos == 0 and info.is_published():
                        # paho wrote a QoS 0 message inside publish() and already called on_publish,
                        # before we could note its mid: it is done, nothing will acknowledge it
                        self.outbox.ack(message.row_id)
                        continue
                    self._inflight[info.mid] = (message.row_id, message.created_ms, message.hist)
                self.stats.inflight = len(self._inflight)
                self._flush_writes()
            finally:
                if corked:
                    self._cork(client, False)

    @staticmethod
    def _cork(client: mqtt.Client, on: bool) -> bool:
        """TCP_CORK on paho's socket (Linux); False where it cannot be set. Uncorking sends at once."""
        sock = client.socket()
        cork = getattr(socket, "TCP_CORK", None)
        if sock is None or cork is None:
            return False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, cork, 1 if on else 0)
        except (OSError, AttributeError, ValueError):
            return False
        return True

    def _notify(self, connected: bool) -> None:
        if self.on_state_change is not None:
            try:
                self.on_state_change(connected)
            except Exception:   # noqa: BLE001 - a listener's bug must not take the uplink down
                log.exception("uplink state listener failed")

    # -- payloads ------------------------------------------------------------------------------

    def _common(self) -> dict[str, Any]:
        return {"v": CONTRACT_VERSION, "gw": self.gateway.id, "seq": self.outbox.allocate_seq(),
                "ts": self.clock.now_ms(), "hist": False}

    def _state_payload(self, online: bool) -> bytes:
        return orjson.dumps(self._common() | {"online": online, "agent": __version__, "boot": self.boot_id})

    def _birth_payload(self) -> bytes:
        return orjson.dumps(self._common() | self._birth())

    # -- errors --------------------------------------------------------------------------------

    def _set_error(self, message: str) -> None:
        if message != self.stats.last_error:
            log.warning("uplink %s: %s", self.stats.broker, message)
        self.stats.last_error = message

    def _describe(self, exc: BaseException) -> str:
        code = getattr(exc, "code", None)
        if code in _AUTH_REFUSED:
            return f"broker refused the credentials of user {self.cfg.username!r} ({exc})"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"broker certificate not trusted: {exc.verify_message}"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused (is the broker running, and is the port right?)"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve broker host {self.cfg.host!r}"
        if isinstance(exc, asyncio.TimeoutError):
            return "timed out connecting"
        return str(exc) or exc.__class__.__name__
