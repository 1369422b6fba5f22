"""The uplink contract (CONTRACT.md, version 1) as code: topics, JSON Schemas, validation.

Everything that checks a message against the contract goes through this module: the agent's own
tests, the reference consumer in ``tests/hardware_sim/consumer.py``, and the command handler for
downlink requests. The schemas live in ``agent/schemas/*.json`` (draft 2020-12), one per kind, each
referencing ``common.json`` for the fields every upward message carries.

Kinds are the schema names: ``state``, ``birth``, ``telemetry``, ``event``, ``metrics``,
``cmd_result`` (upward) and ``cmd_request`` (the downward ``cmd/{name}`` topic). ``evidence`` is a
kind of topic too, but its payload is raw bytes, so it has no schema.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

if TYPE_CHECKING:
    # jsonschema and referencing cost ~8 MB of RSS; the agent itself only needs topics and
    # signatures from this module, so they are imported where messages are validated.
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError
    from referencing import Registry

CONTRACT_VERSION = 1
DEFAULT_PREFIX = "citybrain"

ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")   # site, gateway, device, event, command ids (fullmatch)

# Topic kind -> (schema kind, number of topic levels after the kind).
_TOPIC_KINDS: dict[str, tuple[str, int]] = {
    "state": ("state", 0),
    "birth": ("birth", 0),
    "metrics": ("metrics", 0),
    "telemetry": ("telemetry", 1),     # telemetry/{device}
    "event": ("event", 1),             # event/{device}
    "cmd_result": ("cmd_result", 1),   # cmd_result/{id}
    "cmd": ("cmd_request", 1),         # cmd/{name}, downward
    "evidence": ("evidence", 2),       # evidence/{event}/{name}, raw bytes
}
SCHEMA_KINDS: frozenset[str] = frozenset(
    ("state", "birth", "telemetry", "event", "metrics", "cmd_result", "cmd_request"))
BINARY_KINDS: frozenset[str] = frozenset(("evidence",))
UPWARD_KINDS: frozenset[str] = SCHEMA_KINDS - {"cmd_request"}


class TopicParts(NamedTuple):
    prefix: str
    site: str
    gw: str
    kind: str    # schema kind: "telemetry", "cmd_request", "evidence" ...
    rest: str    # levels after the kind: device id, event id/name, command name, request id; "" if none


# -- topics -----------------------------------------------------------------------------------

def _check_id(what: str, value: str) -> None:
    if not ID_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not an id ([A-Za-z0-9_.-], 1 to 64 characters)")


def topic(prefix: str, site: str, gateway: str, suffix: str) -> str:
    """The topic a gateway publishes ``suffix`` (``state``, ``telemetry/aq-01`` ...) on."""
    if "+" in prefix or "#" in prefix:
        raise ValueError(f"prefix {prefix!r} must not contain MQTT wildcards")
    _check_id("site", site)
    _check_id("gateway", gateway)
    kind_of_topic(suffix)   # raises on an unknown suffix or a bad id in it
    return f"{prefix}/v{CONTRACT_VERSION}/{site}/{gateway}/{suffix}"


def subscription(prefix: str = DEFAULT_PREFIX, site: str = "+", gateway: str = "+") -> str:
    """A topic filter for everything of one gateway, one site or (the defaults) all of them."""
    return f"{prefix}/v{CONTRACT_VERSION}/{site}/{gateway}/#"


def kind_of_topic(suffix: str) -> str:
    """The schema kind of a topic suffix: ``telemetry/aq-01`` -> ``telemetry``, ``cmd/x`` -> ``cmd_request``.

    Raises ValueError for an unknown kind, a wrong number of levels, or a level that is not an id.
    """
    head, *rest = suffix.split("/")
    if head not in _TOPIC_KINDS:
        raise ValueError(f"unknown topic kind {head!r} in {suffix!r}")
    kind, levels = _TOPIC_KINDS[head]
    if len(rest) != levels:
        raise ValueError(f"{head!r} topics take {levels} level(s) after the kind, {suffix!r} has {len(rest)}")
    for level in rest:
        _check_id(f"topic level in {suffix!r}:", level)
    return kind


def parse_topic(topic_: str) -> TopicParts:
    """Split ``{prefix}/v1/{site}/{gw}/{suffix}`` into its parts. Raises ValueError if it is not one.

    The prefix may have several levels, so the topic is matched from the right: the kind is the level
    whose known arity reaches exactly to the end, with ``v1`` three levels before it.
    """
    parts = topic_.split("/")
    version = f"v{CONTRACT_VERSION}"
    for levels in (0, 1, 2):
        k = len(parts) - 1 - levels
        if k < 4 or parts[k] not in _TOPIC_KINDS or _TOPIC_KINDS[parts[k]][1] != levels:
            continue
        if parts[k - 3] != version:
            continue
        try:
            kind = kind_of_topic("/".join(parts[k:]))
            _check_id("site", parts[k - 2])
            _check_id("gateway", parts[k - 1])
        except ValueError as exc:
            raise ValueError(f"{topic_!r}: {exc}") from None
        prefix = "/".join(parts[: k - 3])
        return TopicParts(prefix, parts[k - 2], parts[k - 1], kind, "/".join(parts[k + 1:]))
    # Not one; say why in the terms of the first plausible reading ({prefix}/v1/{site}/{gw}/...).
    for i in range(1, len(parts) - 3):
        if parts[i] == version:
            try:
                kind_of_topic("/".join(parts[i + 3:]))
            except ValueError as exc:
                raise ValueError(f"{topic_!r}: {exc}") from None
    raise ValueError(f"{topic_!r} is not a contract v{CONTRACT_VERSION} topic "
                     f"({{prefix}}/{version}/{{site}}/{{gateway}}/{{kind}}[/...])")


# -- schemas ----------------------------------------------------------------------------------

def _schema_text(name: str) -> str:
    return resources.files("agent").joinpath("schemas", f"{name}.json").read_text(encoding="utf-8")


@cache
def _registry() -> "Registry":
    """All schema files under their $id, so ``$ref: common.json`` resolves offline."""
    from referencing import Registry, Resource

    resources_ = []
    for name in sorted(SCHEMA_KINDS | {"common"}):
        schema = json.loads(_schema_text(name))
        resources_.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources_)


@cache
def load_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one kind (or ``common``). Do not mutate the result: it is shared."""
    if kind in BINARY_KINDS:
        raise ValueError(f"{kind!r} payloads are raw bytes; there is no schema")
    if kind not in SCHEMA_KINDS and kind != "common":
        raise ValueError(f"unknown message kind {kind!r}; known: {', '.join(sorted(SCHEMA_KINDS))}")
    return json.loads(_schema_text(kind))


# Keywords that never change a validation result; dropped from the compiled copy.
_ANNOTATIONS = frozenset(("$id", "$schema", "$defs", "$comment", "title", "description"))
# Keywords through which other properties than the local "properties" can count as evaluated.
_APPLICATORS = frozenset(("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas",
                          "patternProperties", "additionalProperties", "$ref", "$dynamicRef"))


def _merge_ref(local: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """``{"$ref": target, **local}`` as one schema. A $ref beside other keywords means allOf; when the
    two only share ``properties`` (on different keys) and ``required`` they can be merged exactly,
    which keeps ``unevaluatedProperties`` cheap and its errors free of the common fields."""
    shared = local.keys() & target.keys()
    if shared <= {"properties", "required"} and not (
            local.get("properties", {}).keys() & target.get("properties", {}).keys()):
        merged = {**target, **local}
        if "properties" in shared:
            merged["properties"] = {**target["properties"], **local["properties"]}
        if "required" in shared:
            merged["required"] = [*target["required"], *local["required"]]
        return merged
    return {**local, "allOf": [*local.get("allOf", []), target]}


def _compile(node: Any, resolver: Any) -> Any:
    """A copy of a schema for fast validation, with the same verdicts: every $ref resolved once
    (jsonschema spends about 40% of its time resolving them otherwise; our schemas never recurse),
    annotations dropped, and ``unevaluatedProperties`` turned into the much cheaper
    ``additionalProperties`` where nothing but the local ``properties`` can evaluate a key."""
    if isinstance(node, list):
        return [_compile(item, resolver) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: value if key in ("enum", "const") else _compile(value, resolver)
           for key, value in node.items() if key not in _ANNOTATIONS and key != "$ref"}
    if "$ref" in node:
        resolved = resolver.lookup(node["$ref"])
        out = _merge_ref(out, _compile(resolved.contents, resolved.resolver))
    if "unevaluatedProperties" in out and not (out.keys() & _APPLICATORS):
        out["additionalProperties"] = out.pop("unevaluatedProperties")
    return out


@cache
def validator(kind: str) -> "Draft202012Validator":
    """A compiled validator for one kind, built once: the consumer checks thousands a second."""
    from jsonschema import Draft202012Validator

    schema = load_schema(kind)
    compiled = _compile(schema, _registry().resolver(schema["$id"]))
    return Draft202012Validator(compiled, format_checker=None)


def _where(error: "ValidationError") -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
    return path or "(top level)"


def _message(error: "ValidationError") -> str:
    schema_path = list(error.absolute_schema_path)
    if error.validator == "not" and isinstance(error.validator_value, dict) \
            and set(error.validator_value) == {"required"}:
        # cmd_result's "result xor error": jsonschema would print the whole message here.
        names = " and ".join(repr(n) for n in error.validator_value["required"])
        return f"{names} must not be present" + (" when ok is true" if "then" in schema_path else
                                                  " when ok is false" if "else" in schema_path else "")
    if "then" in schema_path and error.absolute_path and error.absolute_path[-1] == "q":
        return f"{error.message} (a null value needs quality bad or stale)"
    text = error.message
    return text if len(text) <= 300 else text[:297] + "..."


def validate(kind: str, message: Any) -> list[str]:
    """Problems of ``message`` against the kind's schema, each ``"key.path: what is wrong"``; [] if valid."""
    errors = sorted(validator(kind).iter_errors(message),
                    key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [f"{_where(e)}: {_message(e)}" for e in errors]


# -- checks beyond one schema -----------------------------------------------------------------

def check_topic(parts: TopicParts, message: Any) -> list[str]:
    """What a schema cannot say: the payload agrees with its topic, ids are unique, times ordered.

    Call it on a message that passed :func:`validate`; it only looks, never raises.
    """
    if not isinstance(message, Mapping):
        return []
    problems = []

    def same(key: str, expected: str, where: str) -> None:
        if key in message and message[key] != expected:
            problems.append(f"{key}: {message[key]!r} does not match the topic's {where} {expected!r}")

    if parts.kind in UPWARD_KINDS:
        same("gw", parts.gw, "gateway")
    if parts.kind in ("telemetry", "event"):
        same("device", parts.rest, "device")
    if parts.kind == "cmd_result":
        same("id", parts.rest, "request id")
    if parts.kind == "birth":
        same("site", parts.site, "site")
        ids = [d.get("id") for d in message.get("devices") or [] if isinstance(d, Mapping)]
        problems += [f"devices: id {i!r} is listed twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
    if parts.kind == "event":
        names = [e.get("name") for e in message.get("evidence") or [] if isinstance(e, Mapping)]
        problems += [f"evidence: name {n!r} is listed twice" for n in sorted({n for n in names if names.count(n) > 1})]
    if parts.kind == "cmd_request":
        ts, expires = message.get("ts"), message.get("expires")
        if isinstance(ts, int) and isinstance(expires, int) and expires < ts:
            problems.append(f"expires: {expires} is before ts {ts}")
    return problems


class Checked(NamedTuple):
    parts: TopicParts | None   # None when the topic is not a contract topic
    message: Any               # the parsed JSON (None if it did not parse), or the bytes of evidence
    problems: list[str]        # [] when the publication is valid


def check(topic_: str, payload: bytes | str) -> Checked:
    """Everything about one publication: topic, JSON, schema, topic/payload agreement. Never raises."""
    try:
        parts = parse_topic(topic_)
    except ValueError as exc:
        return Checked(None, None, [f"topic: {exc}"])
    if parts.kind in BINARY_KINDS:
        return Checked(parts, payload, [])
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return Checked(parts, None, [f"payload: not JSON ({exc})"])
    if not isinstance(message, dict):
        return Checked(parts, message, [f"payload: expected a JSON object, got {type(message).__name__}"])
    problems = validate(parts.kind, message)
    if not problems:
        problems = check_topic(parts, message)
    return Checked(parts, message, problems)


# -- command signatures -----------------------------------------------------------------------

def canonical_json(request: Mapping[str, Any]) -> bytes:
    """The bytes a command signature covers: the request without ``sig``, keys sorted at every
    level, no whitespace, UTF-8 (not ASCII-escaped). Both sides must produce identical bytes, so
    this is the single definition; prefer integers and strings in ``args`` (float spelling differs
    between JSON libraries)."""
    body = {k: v for k, v in request.items() if k != "sig"}
    try:
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:   # nested deeper than 255 levels, or not JSON at all
        raise ValueError(f"the request has no canonical form ({exc})") from None


def sign(request: Mapping[str, Any], key: bytes) -> str:
    """HMAC-SHA256 (lowercase hex) of :func:`canonical_json` of the request."""
    return hmac.new(key, canonical_json(request), hashlib.sha256).hexdigest()


def signature_ok(request: Mapping[str, Any], key: bytes) -> bool:
    """Whether ``request["sig"]`` is the right signature, compared in constant time. Raises
    ValueError for a request that has no canonical form (see :func:`canonical_json`)."""
    sig = request.get("sig")
    if not isinstance(sig, str):
        return False
    # as bytes: compare_digest refuses str with non-ASCII characters (TypeError), and a peer chooses `sig`
    return hmac.compare_digest(sig.encode("utf-8", "surrogatepass"), sign(request, key).encode("ascii"))
