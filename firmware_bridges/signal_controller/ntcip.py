"""NTCIP 1202 (Actuated Signal Controller MIB) over SNMP v2c/v3, with pysnmp's asyncio API.

Objects used, all under asc = 1.3.6.1.4.1.1206.4.2.1 (nema.transportation.devices.asc;
devices = 1.3.6.1.4.1.1206.4.2 comes from NTCIP 1201's TMIB-II):

| object | OID | access |
| --- | --- | --- |
| phaseStatusGroupReds.<g>       | asc.1.4.1.2.<g>  | read-only, INTEGER 0..255 |
| phaseStatusGroupYellows.<g>    | asc.1.4.1.3.<g>  | read-only |
| phaseStatusGroupGreens.<g>     | asc.1.4.1.4.<g>  | read-only |
| phaseStatusGroupDontWalks.<g>  | asc.1.4.1.5.<g>  | read-only |
| phaseStatusGroupPedClears.<g>  | asc.1.4.1.6.<g>  | read-only (pedestrian clearance: the flashing hand) |
| phaseStatusGroupWalks.<g>      | asc.1.4.1.7.<g>  | read-only |
| preemptState.<n>               | asc.6.2.1.16.<n> | read-only, optional: 1 other, 2 notActive, 3 notActiveWithCall, 4 entryStarted, 5 trackService, 6 dwell, 7 linkActive, 8 exitStarted, 9 maxPresence |
| preemptControlState.<n>        | asc.6.3.1.2.<n>  | read-write, 0/1: ON starts preempt n "unless already started by the physical input"; it stays active while this OR the input is ON |

Group g carries phases 8g-7 (bit 0) .. 8g (bit 7): "Bit 7: Phase # = (phaseStatusGroupNumber * 8)
... Bit 0: Phase # = (phaseStatusGroupNumber * 8) - 7" (the MIB's DESCRIPTION of each group object).

Where verified: the NTCIP 1202 ASC MIB (module ASC_MIB1, file 1202ASC.mib) as compiled to pysnmp by
pysmi - every OID, access and range above is taken from it; cross-checked with the MIB node table of
IRIS (Minnesota DOT, mnit-rtmc/iris, MIB1202.java: phaseStatusGroupEntry columns 1..11) and USDOT's
MMITSS controller interface (mmitss/mmitss-az: RED_GROUP = 1.3.6.1.4.1.1206.4.2.1.1.4.1.2.1,
preemptControlState used at 1.3.6.1.4.1.1206.4.2.1.6.3.1.2.<n> by several public clients).
NTCIP 1202 v03 keeps these OIDs. Some controllers return the group objects as a 1-byte OCTET
STRING instead of INTEGER; both are accepted.

Controllers also run a backup timer (unitBackupTime, NTCIP 1202): when the central stops talking,
remote control objects such as preemptControlState are dropped. That is the safety net if this agent
dies without releasing; the priority manager re-sends the request while it holds it (``reassert``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from agent.core import loopwatch
from agent.core.backoff import Retry
from agent.core.boundary import boundary
from agent.core.clock import SYSTEM, Clock
from firmware_bridges.signal_controller.errors import BadAnswer, NoAnswer, Refused
from firmware_bridges.signal_controller.options import NtcipConnection, Options
from firmware_bridges.signal_controller.phases import ControllerStatus, decode_groups, group_of
from firmware_bridges.signal_controller.polling import LinkStats, PollLoop

log = logging.getLogger("firmware_bridges.signal_controller")
ANSWERS = boundary("ntcip")   # what controllers answer, through pysnmp, into our decoding
T = TypeVar("T")

ASC = (1, 3, 6, 1, 4, 1, 1206, 4, 2, 1)
PHASE_STATUS_GROUP = ASC + (1, 4, 1)     # phaseStatusGroupEntry
GROUP_COLUMNS = {                        # our name -> column of phaseStatusGroupEntry
    "reds": 2, "yellows": 3, "greens": 4, "dont_walks": 5, "ped_clears": 6, "walks": 7,
}
MAX_PHASE_GROUPS = ASC + (1, 3, 0)       # maxPhaseGroups.0 (scalar)
MAX_PREEMPTS = ASC + (6, 1, 0)           # maxPreempts.0 (scalar)
PREEMPT_STATE = ASC + (6, 2, 1, 16)      # preemptEntry.preemptState
PREEMPT_CONTROL_STATE = ASC + (6, 3, 1, 2)   # preemptControlEntry.preemptControlState

PREEMPT_STATES = {1: "other", 2: "notActive", 3: "notActiveWithCall", 4: "entryStarted",
                  5: "trackService", 6: "dwell", 7: "linkActive", 8: "exitStarted", 9: "maxPresence"}
PREEMPT_ACTIVE = frozenset((4, 5, 6, 7))  # the controller is entering or serving the preempt


def oid_text(oid: Sequence[int]) -> str:
    return ".".join(map(str, oid))


class _SnmpLoop:
    """One event loop on a thread of its own for every SNMP client of the process. pysnmp is pure
    Python (pyasn1): 2-5 ms of CPU a request, 50-80 ms for a client's first (MIB tables, the USM
    user, the target), 200 ms to import. On the agent's loop that would hold a fire alarm back;
    here the agent's loop only waits for the GIL (a 5 ms switch interval). The loop watch leaves
    this loop out: its budget is the agent's loop's."""

    _loop: asyncio.AbstractEventLoop | None = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                loopwatch.exempt(loop)
                threading.Thread(target=loop.run_forever, name="snmp", daemon=True).start()
                cls._loop = loop
            return cls._loop


async def _on_snmp_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the SNMP loop; cancelling the caller cancels it there too."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, _SnmpLoop.get()))


class SnmpClient:
    """GET and SET of integer objects on one agent. Raises NoAnswer or Refused. Every pysnmp object
    lives and works on the SNMP loop (:class:`_SnmpLoop`)."""

    def __init__(self, connection: NtcipConnection):
        self.connection = connection
        self._engine: Any = None
        self._target: Any = None
        self._auth: Any = None

    async def get(self, oids: Sequence[tuple[int, ...]]) -> list[int | bytes | None]:
        """Values in order; None where the agent has no such object/instance."""
        return await _on_snmp_loop(self._get(oids))

    async def set_int(self, oid: tuple[int, ...], value: int) -> None:
        await _on_snmp_loop(self._set_int(oid, value))

    def close(self) -> None:
        """Close the socket. The next request opens a new engine and target (the supervisor restarts
        a crashed runner on the same objects after close)."""
        _SnmpLoop.get().call_soon_threadsafe(self._close_now)

    # -- on the SNMP loop -------------------------------------------------------------------------

    async def _ensure(self) -> None:
        if self._engine is not None:
            return
        # late import: the agent only loads pysnmp when a controller is configured
        from pysnmp.hlapi.v3arch.asyncio import SnmpEngine, UdpTransportTarget

        c = self.connection
        auth = _auth_data(c)
        try:
            target = await UdpTransportTarget.create((c.host, c.port), timeout=c.timeout, retries=c.retries)
        except Exception as exc:   # pysnmp wraps resolver errors in its own types
            raise NoAnswer(f"cannot resolve {c.host}: {exc}") from None
        self._engine, self._auth, self._target = SnmpEngine(), auth, target

    async def _get(self, oids: Sequence[tuple[int, ...]]) -> list[int | bytes | None]:
        await self._ensure()
        from pysnmp.hlapi.v3arch.asyncio import ContextData, ObjectIdentity, ObjectType, get_cmd

        binds = [ObjectType(ObjectIdentity(oid_text(oid))) for oid in oids]
        result = await self._call(get_cmd, binds, ContextData, "GET")
        return [_value(value) for _, value in result]

    async def _set_int(self, oid: tuple[int, ...], value: int) -> None:
        await self._ensure()
        from pysnmp.hlapi.v3arch.asyncio import ContextData, ObjectIdentity, ObjectType, set_cmd
        from pysnmp.proto.rfc1902 import Integer32

        await self._call(set_cmd, [ObjectType(ObjectIdentity(oid_text(oid)), Integer32(value))], ContextData, "SET")

    async def _call(self, command: Callable[..., Any], binds: list[Any], context: Callable[[], Any],
                    what: str) -> Sequence[Any]:
        c = self.connection
        limit = c.timeout * (c.retries + 1) + 1.0   # pysnmp times out itself; this guards a stuck engine
        try:
            async with asyncio.timeout(limit):
                indication, status, index, result = await command(
                    self._engine, self._auth, self._target, context(), *binds, lookupMib=False)
        except TimeoutError:
            raise NoAnswer(f"{c.describe()}: no answer to {what} within {limit:g}s") from None
        if indication:
            # a timeout (wrong community/credentials look the same: agents drop those silently)
            raise NoAnswer(f"{c.describe()}: {indication} ({what}; check address, port, community/user)")
        if status:
            where = binds[int(index) - 1][0] if index and int(index) <= len(binds) else None
            name = status.prettyPrint() if hasattr(status, "prettyPrint") else str(status)
            raise Refused(f"{c.describe()}: {what} refused: {name}" + (f" at {where}" if where is not None else ""))
        return result

    def _close_now(self) -> None:
        if self._engine is not None:
            try:
                self._engine.close_dispatcher()
            except Exception:   # noqa: BLE001 - closing must not fail the runner's close
                log.debug("closing the SNMP engine failed", exc_info=True)
        self._engine = self._target = self._auth = None


def _auth_data(c: NtcipConnection) -> Any:
    from pysnmp.hlapi.v3arch.asyncio import auth

    if c.version == "2c":
        community = c.community if isinstance(c.community, str) else c.community.reveal()
        return auth.CommunityData(community, mpModel=1)
    auth_protocols = {"none": auth.USM_AUTH_NONE, "md5": auth.USM_AUTH_HMAC96_MD5, "sha": auth.USM_AUTH_HMAC96_SHA,
                      "sha224": auth.USM_AUTH_HMAC128_SHA224, "sha256": auth.USM_AUTH_HMAC192_SHA256,
                      "sha384": auth.USM_AUTH_HMAC256_SHA384, "sha512": auth.USM_AUTH_HMAC384_SHA512}
    priv_protocols = {"none": auth.USM_PRIV_NONE, "des": auth.USM_PRIV_CBC56_DES, "3des": auth.USM_PRIV_CBC168_3DES,
                      "aes": auth.USM_PRIV_CFB128_AES, "aes192": auth.USM_PRIV_CFB192_AES,
                      "aes256": auth.USM_PRIV_CFB256_AES}
    if c.priv_protocol != "none":
        try:
            import cryptography  # noqa: F401 - pysnmp encrypts with it
        except ImportError:
            raise NoAnswer("SNMPv3 privacy needs the 'cryptography' package on the gateway "
                           "(pip install cryptography), or priv_protocol: none") from None
    from pysnmp.entity.config import AUTH_SERVICES, PRIV_SERVICES

    auth_protocol, priv_protocol = auth_protocols[c.auth_protocol], priv_protocols[c.priv_protocol]
    # RFC 3414's password-to-key hashes a megabyte, which pysnmp would redo for every engine id it
    # meets; hashed once here, pysnmp only localizes the master key (one hash).
    auth_key = priv_key = None
    if c.auth_key and c.auth_protocol != "none":
        auth_key = AUTH_SERVICES[auth_protocol].hash_passphrase(c.auth_key.reveal())
    if c.priv_key and c.priv_protocol != "none":
        priv_key = PRIV_SERVICES[priv_protocol].hash_passphrase(auth_protocol, c.priv_key.reveal())
    return auth.UsmUserData(c.user, authKey=auth_key, privKey=priv_key, authProtocol=auth_protocol,
                            privProtocol=priv_protocol, authKeyType=auth.USM_KEY_TYPE_MASTER,
                            privKeyType=auth.USM_KEY_TYPE_MASTER)


def _value(value: Any) -> int | bytes | None:
    """An integer (INTEGER, Counter, Gauge, TimeTicks), bytes (OCTET STRING and its kin), or None
    when the controller has no such object. Any other type raises BadAnswer: an OBJECT
    IDENTIFIER used to fall through to ``bytes()``, which raised ValueError for arcs above 255,
    and every poll of that controller failed as an internal error (found by bench/fuzz.py)."""
    from pyasn1.type import univ
    from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject

    if isinstance(value, (NoSuchObject, NoSuchInstance, EndOfMibView)):
        return None
    if isinstance(value, univ.Integer):
        return int(value)
    if isinstance(value, univ.OctetString) and not isinstance(value, univ.Null):
        return bytes(value)
    raise BadAnswer(f"the controller answered a {type(value).__name__} where NTCIP 1202 has an INTEGER")


def _mask(value: int | bytes | None) -> int:
    """A group bitmask: INTEGER per the MIB, or a 1-byte OCTET STRING on some controllers."""
    if value is None:
        return 0
    if isinstance(value, bytes):
        return value[0] if value else 0
    return int(value)


class NtcipLink(PollLoop):
    """Polls one NTCIP controller and sets its preempt control objects."""

    def __init__(self, device_id: str, options: Options, poll: float, *, clock: Clock = SYSTEM):
        assert isinstance(options.connection, NtcipConnection)
        self.device_id = device_id
        self.clock = clock   # the poll schedule and backoff; SNMP's own timeouts stay on real time
        self.describe = options.connection.describe()
        self.client = SnmpClient(options.connection)
        self.phases = list(options.phases)
        self.peds = options.peds
        self.poll = poll
        self.offline_after = options.offline_after
        self.preempts = sorted(set(options.priority.preempts.values())) if options.priority else []
        self.stats = LinkStats()
        self._backoff = Retry(options.backoff)
        self.answers = ANSWERS
        groups = sorted({group_of(p) for p in self.phases + self.peds})
        self._mask_keys = [(name, g) for name in GROUP_COLUMNS for g in groups]
        self._oids = [PHASE_STATUS_GROUP + (GROUP_COLUMNS[name], g) for name, g in self._mask_keys]
        # preemptState is optional in the MIB: without it, report what we asked for (preemptControlState)
        self._preempt_column = PREEMPT_STATE
        self._preempt_oids = [PREEMPT_STATE + (n,) for n in self.preempts]

    @property
    def online(self) -> bool | None:
        return self.stats.online

    async def read_status(self) -> ControllerStatus:
        values = await self.client.get(self._oids + self._preempt_oids)
        t = self.clock.now_ms()
        masks: dict[str, dict[int, int]] = {name: {} for name in GROUP_COLUMNS}
        for (name, group), value in zip(self._mask_keys, values):
            masks[name][group] = _mask(value)
        vehicles, peds = decode_groups(self.phases, self.peds, masks)
        status = ControllerStatus(vehicles, peds, t=t)
        if self.preempts:
            self._preempt(status, values[len(self._oids):])
        return status

    def _preempt(self, status: ControllerStatus, values: list[int | bytes | None]) -> None:
        if self._preempt_column == PREEMPT_STATE and all(v is None for v in values):
            log.info("%s: controller has no preemptState; reporting preemptControlState instead", self.device_id)
            self._preempt_column = PREEMPT_CONTROL_STATE
            self._preempt_oids = [PREEMPT_CONTROL_STATE + (n,) for n in self.preempts]
            return   # next poll reads the other column
        states = [int(v) if isinstance(v, int) else None for v in values]
        if self._preempt_column == PREEMPT_CONTROL_STATE:
            status.preempt = any(s == 1 for s in states)
            return
        status.preempt = any(s in PREEMPT_ACTIVE for s in states)
        active = next((s for s in states if s in PREEMPT_ACTIVE), None)
        shown = active if active is not None else states[0]
        status.preempt_state = PREEMPT_STATES.get(shown, "other") if shown is not None else None

    async def set_preempt(self, number: int, on: bool) -> None:
        await self.client.set_int(PREEMPT_CONTROL_STATE + (number,), 1 if on else 0)

    async def close(self) -> None:
        self.client.close()
