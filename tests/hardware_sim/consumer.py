"""The reference consumer: what the central platform does with a gateway's MQTT traffic.

It subscribes to ``{prefix}/v1/{site}/{gw}/#`` (``+`` for any), checks every publication against the
contract through :mod:`agent.contract`, drops a ``(gw, seq)`` it has already seen (counting it),
and keeps what it accepted so tests can ask: which seqs arrived, the readings of one point in
order, the events, how many duplicates and invalid messages there were.

    consumer = Consumer(broker.host, broker.port, gateway="gw-01").start()
    consumer.wait_for(lambda c: len(c.readings("aq-01", "pm25")) >= 10, timeout=5)
    assert consumer.invalid == [] and consumer.duplicates == 0

It never crashes on garbage: a publication that is not valid is recorded in :attr:`invalid` with
the reasons. All methods are safe to call from the test thread while paho's loop thread delivers.

CLI: ``python -m tests.hardware_sim.consumer --host 127.0.0.1 --port 1883 --gateway gw-01 --site hz``;
one signed command and its result: add ``--command-key KEYFILE --command device.read --args '{"device": ...}'``.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import contract

Status = Literal["ok", "duplicate", "invalid"]


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted publication (valid, not a duplicate)."""

    topic: str
    kind: str          # contract kind: state, birth, telemetry, event, metrics, cmd_result, cmd_request, evidence
    site: str
    gw: str
    rest: str          # device id (telemetry, event), request id, command name, "event/name" of evidence
    body: Any          # the parsed JSON object; the raw bytes for evidence
    retain: bool
    qos: int
    at: float          # time.monotonic() at arrival

    @property
    def seq(self) -> int | None:
        return self.body.get("seq") if isinstance(self.body, dict) else None

    @property
    def hist(self) -> bool:
        return bool(self.body.get("hist")) if isinstance(self.body, dict) else False


@dataclass(frozen=True, slots=True)
class Invalid:
    """A publication that broke the contract, with every reason found."""

    topic: str
    payload: bytes     # the first 2 KiB
    reasons: tuple[str, ...]
    at: float

    def __str__(self) -> str:
        return f"{self.topic}: " + "; ".join(self.reasons)


@dataclass(frozen=True, slots=True)
class ReceivedReading:
    """One reading of an accepted telemetry batch, with its batch's seq and hist flag."""

    device: str
    point: str
    v: Any
    u: str | None
    t: int
    q: str
    seq: int
    hist: bool


class Consumer:
    """Subscribes, validates, de-duplicates and records. Start with :meth:`start`, or use ``with``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *,
                 prefix: str = contract.DEFAULT_PREFIX, site: str = "+", gateway: str = "+",
                 client_id: str | None = None,
                 username: str | None = None, password: str | None = None,
                 cafile: str | None = None, certfile: str | None = None, keyfile: str | None = None,
                 store: bool = True,
                 session_expiry: int = 0,
                 on_record: Callable[[Status, Received | Invalid], None] | None = None) -> None:
        """``store=False`` keeps only counters (for long CLI runs). ``on_record`` is called on paho's
        thread for every publication, after it was recorded. ``session_expiry`` > 0 asks the broker
        to keep the session (and queue for it) that many seconds while disconnected: give a fixed
        ``client_id`` too, and the consumer misses nothing across its own reconnects. ``cafile`` turns on TLS; ``certfile``
        and ``keyfile`` add a client certificate (mutual TLS)."""
        self.host, self.port = host, port
        self.prefix, self.site, self.gateway = prefix, site, gateway
        self.filter = contract.subscription(prefix, site, gateway)
        self.store = store
        self.session_expiry = session_expiry
        self.on_record = on_record

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)   # notified on every record and (re)connect
        self.clear()
        self.connects = 0       # CONNACKs with success; grows on every reconnect
        self.subscribes = 0     # SUBACKs; a test waits on this to know it is listening again
        self.connected = False
        self.last_disconnect: str | None = None
        self.refused: str | None = None   # why the broker refused the last CONNECT or SUBSCRIBE

        self._started = False
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"consumer-{uuid.uuid4().hex[:8]}",
                                   protocol=mqtt.MQTTv5)
        if username is not None:
            self._client.username_pw_set(username, password)
        if cafile:
            self._client.tls_set(ca_certs=cafile, certfile=certfile, keyfile=keyfile)
        # Short backoff: outage tests restart the broker and want the consumer back within a second.
        self._client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> "Consumer":
        """Connect and wait until the subscription is acknowledged. ConnectionError when the broker
        refuses (credentials), TimeoutError when nothing answers (wrong port, TLS handshake failing)."""
        properties = None
        if self.session_expiry:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.session_expiry
        self._started = True
        self._client.connect_async(self.host, self.port, keepalive=30,
                                   clean_start=not self.session_expiry, properties=properties)
        self._client.loop_start()
        try:
            self.wait_for(lambda c: c.subscribes > 0 or c.refused is not None, timeout,
                          what=f"subscribed to {self.filter} on {self.host}:{self.port}")
        except TimeoutError:
            self.stop()
            raise
        if self.refused is not None:
            self.stop()
            raise ConnectionError(f"{self.host}:{self.port}: {self.refused}")
        return self

    def stop(self) -> None:
        self._started = False
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> "Consumer":
        # `with Consumer(...).start() as c` must not start it twice: a second connect_async and
        # loop_start drop the first connection (and a publish made just then fails)
        return self if self._started else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def clear(self) -> None:
        """Forget everything received (not the connection counters); the seen (gw, seq) too."""
        with self._lock:
            self._seen: set[tuple[str, int]] = set()
            self._messages: list[Received] = []
            self._by_key: dict[tuple[str, str], list[Received]] = defaultdict(list)   # (kind, rest)
            self._readings: dict[tuple[str, str], list[ReceivedReading]] = defaultdict(list)
            self._invalid: list[Invalid] = []
            self._duplicate_keys: list[tuple[str, int]] = []
            self.counts: Counter[str] = Counter()   # accepted per kind
            self.reading_count = 0
            self.hist_count = 0                      # accepted messages with hist true
            self.invalid_count = 0
            self.duplicates = 0

    # -- paho callbacks (loop thread) ---------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            with self._changed:
                self.refused = f"connect refused: {reason}"
                self._changed.notify_all()
            return
        # The centre's commands are small packets: send them at once, not after Nagle's delay.
        sock = client.socket()
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        # Subscribe on every connect: the test broker keeps no sessions across restarts.
        # no_local: our own downlink commands are not echoed back to us.
        client.subscribe(self.filter, options=mqtt.SubscribeOptions(qos=1, noLocal=True))
        with self._changed:
            self.connects += 1
            self.connected = True
            self.refused = None
            self._changed.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, properties: Properties | None) -> None:
        with self._changed:
            self.connected = False
            self.last_disconnect = str(reason)
            self._changed.notify_all()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reasons: list[ReasonCode], properties: Properties | None) -> None:
        with self._changed:
            if all(not r.is_failure for r in reasons):
                self.subscribes += 1
            else:
                self.refused = f"subscribe refused: {[str(r) for r in reasons]}"
            self._changed.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # paho kills its loop thread on an exception in a callback: never let one out.
        try:
            status, record = self._record(msg.topic, msg.payload, bool(msg.retain), msg.qos)
        except Exception as exc:   # a bug here must show up as a finding, not a silent hang
            status, record = "invalid", self._add_invalid(msg.topic, msg.payload, [f"consumer error: {exc!r}"])
        if self.on_record is not None:
            try:
                self.on_record(status, record)
            except Exception as exc:
                print(f"consumer: on_record raised {exc!r}", file=sys.stderr)

    # -- recording ----------------------------------------------------------------------------

    def _add_invalid(self, topic: str, payload: bytes, reasons: list[str]) -> Invalid:
        record = Invalid(topic, bytes(payload[:2048]), tuple(reasons), time.monotonic())
        with self._changed:
            self.invalid_count += 1
            if self.store:
                self._invalid.append(record)
            self._changed.notify_all()
        return record

    def _record(self, topic: str, payload: bytes, retain: bool, qos: int) -> tuple[Status, Received | Invalid]:
        # Validation runs outside the lock: it is the slow part and touches no shared state.
        parts, body, problems = contract.check(topic, payload)
        if problems or parts is None:
            return "invalid", self._add_invalid(topic, payload, problems)
        record = Received(topic, parts.kind, parts.site, parts.gw, parts.rest, body, retain, qos, time.monotonic())
        with self._changed:
            seq = record.seq
            if seq is not None:
                key = (parts.gw, seq)
                if key in self._seen:
                    self.duplicates += 1
                    if self.store:
                        self._duplicate_keys.append(key)
                    self._changed.notify_all()
                    return "duplicate", record
                self._seen.add(key)
            self.counts[parts.kind] += 1
            self.hist_count += record.hist
            if parts.kind == "telemetry":
                self.reading_count += len(body["readings"])
            if self.store:
                self._messages.append(record)
                self._by_key[(parts.kind, parts.rest)].append(record)
                if parts.kind == "telemetry":
                    for r in body["readings"]:
                        self._readings[(parts.rest, r["p"])].append(ReceivedReading(
                            parts.rest, r["p"], r["v"], r.get("u"), r["t"], r["q"], seq, record.hist))
            self._changed.notify_all()
        return "ok", record

    # -- queries (any thread) -----------------------------------------------------------------

    def messages(self, kind: str | None = None, device: str | None = None) -> list[Received]:
        """Accepted publications in arrival order; ``device`` matches the topic's level after the
        kind (device id, request id, command name)."""
        with self._lock:
            if kind is not None and device is not None:
                return list(self._by_key.get((kind, device), ()))
            return [m for m in self._messages
                    if (kind is None or m.kind == kind) and (device is None or m.rest == device)]

    def last(self, kind: str, device: str | None = None) -> Received | None:
        found = self.messages(kind, device)
        return found[-1] if found else None

    def seqs(self, gw: str | None = None) -> list[int]:
        """The seq of every accepted message, in arrival order (duplicates are not in it)."""
        with self._lock:
            return [m.seq for m in self._messages if m.seq is not None and (gw is None or m.gw == gw)]

    def readings(self, device: str, point: str) -> list[ReceivedReading]:
        """Readings of one point in arrival order (sort by ``t`` for reading time)."""
        with self._lock:
            return list(self._readings.get((device, point), ()))

    def events(self, device: str | None = None, type: str | None = None) -> list[dict[str, Any]]:
        """Bodies of accepted events, in arrival order."""
        return [m.body for m in self.messages("event", device) if type is None or m.body["type"] == type]

    def evidence(self, event_id: str) -> dict[str, bytes]:
        """Evidence files received for one event, by name."""
        prefix = event_id + "/"
        return {m.rest[len(prefix):]: m.body for m in self.messages("evidence") if m.rest.startswith(prefix)}

    def evidence_file(self, event_id: str, entry: dict) -> bytes | None:
        """One evidence file as listed in an event (``{"name", "chunks"?...}``), put back together
        from its chunks ``{name}.0 … {name}.{chunks-1}`` when it was split; None until every
        part has arrived."""
        files = self.evidence(event_id)
        name, chunks = entry["name"], entry.get("chunks")
        if not chunks:
            return files.get(name)
        parts = [files.get(f"{name}.{i}") for i in range(chunks)]
        return None if any(p is None for p in parts) else b"".join(parts)

    @property
    def invalid(self) -> list[Invalid]:
        with self._lock:
            return list(self._invalid)

    @property
    def duplicate_keys(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._duplicate_keys)

    def wait_for(self, predicate: Callable[["Consumer"], bool], timeout: float = 5.0,
                 what: str | None = None) -> None:
        """Block until ``predicate(self)`` holds (checked on every message and connection change).
        Raises TimeoutError naming ``what`` and a summary of what did arrive."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"waited {timeout}s for {what or 'predicate'}; {self.summary()}")
                self._changed.wait(min(remaining, 0.1))   # also re-check on a timer: predicates may use the clock

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"accepted": dict(self.counts), "readings": self.reading_count, "hist": self.hist_count,
                    "duplicates": self.duplicates, "invalid": self.invalid_count,
                    "connects": self.connects, "connected": self.connected}

    def summary(self) -> str:
        s = self.stats()
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(s["accepted"].items())) or "nothing"
        text = (f"accepted: {kinds}; readings {s['readings']}, hist {s['hist']}, "
                f"duplicates {s['duplicates']}, invalid {s['invalid']}; connects {s['connects']}")
        invalid = self.invalid[:3]
        if invalid:
            text += "; first invalid: " + " | ".join(str(i) for i in invalid)
        return text

    # -- downlink -----------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str | Mapping[str, Any], qos: int = 1,
                retain: bool = False, timeout: float = 5.0) -> None:
        """Publish raw (a mapping is sent as JSON) and wait until the broker has it (PUBACK for QoS 1)."""
        data = orjson.dumps(payload) if isinstance(payload, Mapping) else payload
        info = self._client.publish(topic, data, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"publish to {topic} not acknowledged within {timeout}s (rc {info.rc})")

    def send_command(self, name: str, args: Mapping[str, Any] | None = None, *, key: bytes | None,
                     gateway: str | None = None, site: str | None = None, request_id: str | None = None,
                     ttl_s: float = 60.0, ts: int | None = None, **extra: Any) -> dict[str, Any]:
        """Build a command request, sign it with ``key`` (unsigned when None), publish it on
        ``cmd/{name}`` of the gateway, and return it. The result arrives as ``cmd_result/{id}``:
        ``consumer.wait_for(lambda c: c.last("cmd_result", req["id"]))``. ``extra`` adds or
        overrides fields, for tests of malformed requests."""
        gateway, site = gateway or self.gateway, site or self.site
        if "+" in (gateway, site):
            raise ValueError("send_command needs a concrete gateway and site (this consumer subscribes with '+')")
        now = ts if ts is not None else time.time_ns() // 1_000_000
        request: dict[str, Any] = {"id": request_id or uuid.uuid4().hex[:16], "ts": now,
                                   "expires": now + int(ttl_s * 1000), "args": dict(args or {}), **extra}
        if key is not None:
            request["sig"] = contract.sign(request, key)
        self.publish(contract.topic(self.prefix, site, gateway, f"cmd/{name}"), request)
        return request


# -- CLI ----------------------------------------------------------------------------------------

def describe(status: Status, record: Received | Invalid) -> str:
    """One line for a human watching the traffic."""
    clock = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    if isinstance(record, Invalid):
        return f"{clock} INVALID {record}"
    body, head = record.body, f"{clock} {record.kind:<10} {record.gw}"
    if status == "duplicate":
        return f"{head} DUPLICATE seq={record.seq} (dropped)"
    if record.kind == "evidence":
        return f"{head} {record.rest} {len(body)} bytes"
    head += f" seq={record.seq}{' hist' if record.hist else ''}{' retained' if record.retain else ''}"
    if record.kind == "telemetry":
        values = " ".join(f"{r['p']}={r['v']}{r.get('u') or ''}{'' if r['q'] == 'good' else '(' + r['q'] + ')'}"
                          for r in body["readings"])
        return f"{head} {record.rest}: {values}"
    if record.kind == "event":
        return f"{head} {record.rest}: {body['severity']} {body['type']} {orjson.dumps(body['data']).decode()}"
    if record.kind == "state":
        return f"{head} {'online' if body['online'] else 'OFFLINE'} agent={body['agent']} boot={body['boot']}"
    if record.kind == "birth":
        return f"{head} site={body['site']} agent={body['agent']} devices={[d['id'] for d in body['devices']]}"
    if record.kind == "cmd_result":
        outcome = "ok " + orjson.dumps(body.get("result")).decode() if body["ok"] else f"FAILED {body.get('error')}"
        return f"{head} {record.rest}: {outcome}"
    return f"{head} {orjson.dumps({k: v for k, v in body.items() if k not in ('v', 'gw', 'seq', 'ts', 'hist')}).decode()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hardware_sim.consumer",
                                     description="Watch a gateway's uplink and check it against the contract.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--prefix", default=contract.DEFAULT_PREFIX)
    parser.add_argument("--site", default="+", help="default: any")
    parser.add_argument("--gateway", default="+", help="default: any")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--cafile", help="turns on TLS")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--quiet", "-q", action="store_true", help="only invalid messages and the summary")
    parser.add_argument("--command", metavar="NAME",
                        help="instead of watching: send this command (signed with --command-key) to --gateway of "
                             "--site, print its result and exit (0: ok)")
    parser.add_argument("--args", default="{}", metavar="JSON", help="the command's arguments (default {})")
    parser.add_argument("--command-key", metavar="FILE",
                        help="the file of the gateway's command key (commands.key); without it unsigned")
    args = parser.parse_args(argv)
    if args.command:
        return _send(args)

    def show(status: Status, record: Received | Invalid) -> None:
        if not args.quiet or status != "ok":
            print(describe(status, record), flush=True)

    consumer = Consumer(args.host, args.port, prefix=args.prefix, site=args.site, gateway=args.gateway,
                        username=args.username, password=args.password, cafile=args.cafile,
                        certfile=args.certfile, keyfile=args.keyfile, store=False, on_record=show)
    try:
        consumer.start(timeout=10)
    except (TimeoutError, OSError) as exc:
        print(f"error: cannot subscribe on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"listening on {args.host}:{args.port} to {consumer.filter}; Ctrl-C for the summary", file=sys.stderr)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.stop()
        print(consumer.summary(), file=sys.stderr)
    return 0


def _send(args: argparse.Namespace) -> int:
    """--command: one signed request and its cmd_result, as the centre would send it."""
    try:
        command_args = orjson.loads(args.args)
        key = Path(args.command_key).read_bytes().strip() if args.command_key else None
    except (orjson.JSONDecodeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not isinstance(command_args, dict):
        print(f"error: --args must be a JSON object, got {args.args}", file=sys.stderr)
        return 2
    consumer = Consumer(args.host, args.port, prefix=args.prefix, site=args.site, gateway=args.gateway,
                        username=args.username, password=args.password, cafile=args.cafile,
                        certfile=args.certfile, keyfile=args.keyfile)
    try:
        consumer.start(timeout=10)
        request = consumer.send_command(args.command, command_args, key=key)
        consumer.wait_for(lambda c: c.last("cmd_result", request["id"]), 15, f"the result of {request['id']}")
    except (TimeoutError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        consumer.stop()
    result = consumer.last("cmd_result", request["id"])
    print(describe("ok", result), flush=True)
    return 0 if result.body["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
