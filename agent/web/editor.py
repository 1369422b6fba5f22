"""The rule editor: figures a technician drew on a device's picture, turned into a change of the
config file, shown as a diff, checked as ``check-config`` checks, and applied through
``config.apply``.

The browser sends the edits as a list of operations on the file as it is (stateless: each
preview replays them all):

- ``{"op": "move", "path": [...], "points": [[x, y], ...]}``: new points for a figure the
  family's Driver lists (:meth:`agent.core.driver.Driver.shapes`) at that path;
- ``{"op": "add", "kind": KEY, "points": [...]}``: a new figure of a kind the Driver offers
  (:meth:`~agent.core.driver.Driver.shape_kinds`);
- ``{"op": "remove", "path": [...]}``: the rule or area a listed figure belongs to.

Nothing else in the file can be reached this way: a path is accepted only if it is one the
Driver lists for the device at that moment. Points must lie inside the picture's frame (the
one check the config cannot make: it does not know the camera's resolution). The file is
edited with ruamel.yaml, which keeps its comments, order and layout, so the diff shows the
figures that changed and nothing else.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import io
import math
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from agent.core.config import ConfigError
from agent.core.driver import Driver, Shape

MAX_OPS = 200
MAX_POINTS = 64
MAX_FILE = 1 * 2**20

Coord = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]
Point = tuple[Coord, Coord]
Key = Union[Annotated[str, Field(max_length=64)], Annotated[int, Field(ge=0, le=10_000)]]


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Move(_Op):
    op: Literal["move"]
    path: list[Key] = Field(max_length=8)
    points: list[Point] = Field(min_length=2, max_length=MAX_POINTS)


class Add(_Op):
    op: Literal["add"]
    kind: str = Field(max_length=64)
    points: list[Point] = Field(min_length=2, max_length=MAX_POINTS)


class Remove(_Op):
    op: Literal["remove"]
    path: list[Key] = Field(max_length=8)


Op = Annotated[Union[Move, Add, Remove], Field(discriminator="op")]


class Edit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    base: str | None = Field(default=None, max_length=64)   # sha256 of the file the edits were drawn on
    ops: list[Op] = Field(default_factory=list, max_length=MAX_OPS)


class Refusal(Exception):
    """An edit refused, with a message for the technician."""


_MINIMUM = {"line": 2, "arrow": 2, "path": 2, "polygon": 3}


def _yaml() -> YAML:
    y = YAML()   # round trip: comments, key order and flow styles kept
    y.preserve_quotes = True
    y.width = 4096   # one line per value: _merge compares values line by line
    return y


def _detect_indent(text: str) -> tuple[int, int]:
    """(sequence indent, offset) as the file writes a list under a key: ``key:`` then ``  - item``
    is (4, 2), ``key:`` then ``- item`` (PyYAML's way) is (2, 0)."""
    lines = [line.split(" #")[0].rstrip() for line in text.splitlines()]
    lines = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for key, item in zip(lines, lines[1:]):
        if key.endswith(":") and item.lstrip().startswith("- "):
            offset = (len(item) - len(item.lstrip())) - (len(key) - len(key.lstrip()))
            if offset >= 0:
                return offset + 2, offset
    return 2, 0


def _points(points: list[tuple[float, float]], like: Any = None) -> CommentedSeq:
    """Points as YAML, in the style of the value they replace: ``[[x, y], ...]`` (flow) unless
    the file wrote that value as a block list."""
    def number(v: float) -> float | int:
        r = round(v, 1)
        return int(r) if r == int(r) else r
    block = isinstance(like, CommentedSeq) and like.fa.flow_style() is False
    outer = CommentedSeq()
    for x, y in points:
        inner = CommentedSeq([number(x), number(y)])
        if not block:
            inner.fa.set_flow_style()
        outer.append(inner)
    if not block:
        outer.fa.set_flow_style()
    return outer


def _get(node: Any, path: list[Any]) -> Any:
    for key in path:
        node = node[key]
    return node


class Document:
    """The config file being edited, and one device's entry in it.

    Only that entry's lines are written again (``dump``): a file mixes layouts (the demo's lists
    sit at two indents), and ruamel.yaml writes one layout per document, so dumping the whole
    file would reformat sections nobody touched. The entry is dumped in its own layout, at its
    own indent, and put back in place of its old lines."""

    def __init__(self, text: str, device_id: str, section: str):
        if len(text) > MAX_FILE:
            raise Refusal("the config file is too large to edit here")
        self.text = text
        self.sha256 = hashlib.sha256(text.encode()).hexdigest()
        self.root = _yaml().load(text)
        entries = self.root.get(section) if isinstance(self.root, Mapping) else None
        if not isinstance(entries, CommentedSeq):
            raise Refusal(f"the config file has no {section!r} list")
        index = next((i for i, e in enumerate(entries) if isinstance(e, Mapping) and e.get("id") == device_id), None)
        if index is None or not isinstance(entries[index], CommentedMap):
            raise Refusal(f"{device_id} is not in the {section!r} section of the config file")
        self.entry = entries[index]
        lines = text.splitlines(keepends=True)
        line, column = entries.lc.item(index)
        self._start, self._column = line, column
        if index + 1 < len(entries):
            end = entries.lc.item(index + 1)[0]
        else:
            keys = list(self.root)
            later = keys[keys.index(section) + 1:]
            end = self.root.lc.key(later[0])[0] if later else len(lines)
        while end > line + 1 and lines[end - 1].strip().startswith("#") or (end > line + 1 and not lines[end - 1].strip()):
            end -= 1   # comments and blank lines before the next entry are the next entry's
        self._end = end
        if entries.fa.flow_style() or not lines[line][:column].rstrip().endswith("-"):
            raise Refusal(f"{device_id}'s entry is not written as a block list item: edit it as text")
        own = "".join(l[column:] if l[:column].strip() in ("", "-") else l for l in lines[line:end])
        self._indent = _detect_indent(own)

    def dump(self) -> str:
        y = _yaml()
        sequence, offset = self._indent
        y.indent(mapping=2, sequence=sequence, offset=offset)
        out = io.StringIO()
        y.dump(self.entry, out)
        pad = " " * self._column
        body = out.getvalue().splitlines(keepends=True)
        lines = self.text.splitlines(keepends=True)
        prefix = lines[self._start][:self._column]   # "  - " as the file has it
        entry = [prefix + body[0]] + [pad + l if l.strip() else l for l in body[1:]]
        return "".join(lines[:self._start] + _merge(lines[self._start:self._end], entry) + lines[self._end:])


_KEY = re.compile(r"""^(- )*[A-Za-z0-9_."'-]+\s*:(\s|$)""")


def _logical(lines: list[str]) -> list[list[str]]:
    """Lines grouped into YAML statements: a key, a list item or a comment, with the lines a
    long flow value was wrapped onto (deeper, neither a key nor an item)."""
    groups: list[list[str]] = []
    for line in lines:
        text = line.strip()
        continues = (groups and text and not text.startswith(("#", "- ")) and not _KEY.match(text)
                     and len(line) - len(line.lstrip()) > len(groups[-1][0]) - len(groups[-1][0].lstrip()))
        if continues:
            groups[-1].append(line)
        else:
            groups.append([line])
    return groups


def _normal(group: list[str]) -> str:
    text = " ".join(" ".join(group).split())
    return re.sub(r"\s+([\]}])", r"\1", re.sub(r"([\[{])\s+", r"\1", text))


def _merge(old: list[str], new: list[str]) -> list[str]:
    """``new`` (ruamel's writing of the entry), with every statement that means what it meant
    before written as the file had it (its wrapping, spacing, quotes): the diff shows what the
    edit changed and nothing that only the writer did differently."""
    before, after = _logical(old), _logical(new)
    matcher = difflib.SequenceMatcher(None, [_normal(g) for g in before], [_normal(g) for g in after],
                                      autojunk=False)
    merged: list[str] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        for group in (before[i1:i2] if tag == "equal" else after[j1:j2]):
            merged.extend(group)
    return merged


def apply_ops(doc: Document, driver: Driver, edit: Edit, frame: tuple[int, int] | None) -> list[Shape]:
    """Apply the edits to ``doc`` in order; returns the figures afterwards. Raises Refusal."""
    if edit.base is not None and edit.base != doc.sha256:
        raise Refusal("the config file changed since this picture's rules were loaded: reload the page "
                      "and draw the change again")
    kinds = {k.key: k for k in driver.shape_kinds()}
    for number, op in enumerate(edit.ops, 1):
        shapes = {tuple(s.path): s for s in driver.shapes(doc.entry)}
        removable = {tuple(s.remove) for s in shapes.values()}
        if isinstance(op, Move):
            shape = shapes.get(tuple(op.path))
            if shape is None:
                raise Refusal(f"edit {number}: there is no figure at {'.'.join(map(str, op.path))} to move")
            _check_points(number, shape.kind, op.points, frame, shape.label)
            parent = _get(doc.entry, list(op.path[:-1]))
            parent[op.path[-1]] = _points(list(op.points), like=parent[op.path[-1]])
        elif isinstance(op, Add):
            kind = kinds.get(op.kind)
            if kind is None:
                raise Refusal(f"edit {number}: no figure of kind {op.kind!r} (known: {', '.join(kinds)})")
            _check_points(number, kind.kind, op.points, frame, kind.label)
            target: Any = doc.entry
            for key in kind.into[:-1]:
                if target.get(key) is None:
                    target[key] = CommentedMap()
                target = target[key]
            if target.get(kind.into[-1]) is None:
                target[kind.into[-1]] = CommentedSeq()
            items = target[kind.into[-1]]
            if kind.field is None:
                items.append(_points(list(op.points)))
            else:
                item = CommentedMap(copy.deepcopy(dict(kind.template or {})))
                item[kind.field] = _points(list(op.points))
                items.append(item)
        else:
            if tuple(op.path) not in removable:
                raise Refusal(f"edit {number}: there is no rule or area at {'.'.join(map(str, op.path))} to remove")
            parent = _get(doc.entry, list(op.path[:-1]))
            del parent[op.path[-1]]
    return driver.shapes(doc.entry)


def _check_points(number: int, kind: str, points: list[tuple[float, float]], frame: tuple[int, int] | None,
                  label: str) -> None:
    least = _MINIMUM.get(kind, 2)
    if len(points) < least:
        raise Refusal(f"edit {number}: {label} needs at least {least} points")
    if kind in ("line", "arrow") and len(points) != 2:
        raise Refusal(f"edit {number}: {label} is drawn with exactly two points")
    if frame is None:
        raise Refusal("the camera has no picture yet: figures are placed on its frame (is the stream up?)")
    width, height = frame
    for x, y in points:
        if not (0 <= x <= width and 0 <= y <= height) or not (math.isfinite(x) and math.isfinite(y)):
            raise Refusal(f"edit {number}: {label} has a point at ({x:g}, {y:g}), outside the {width}x{height} "
                          "frame")


def diff(before: str, after: str, name: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        f"{name} (now)", f"{name} (edited)", n=2))


def check(text: str, config_path: Path) -> list[str]:
    """The problems ``edge-agent check-config`` would name in ``text`` as the file at ``config_path``
    (relative profile and model paths resolve beside it). The draft is written to a scratch
    directory, not beside the config: under the service /etc/edge-agent is read-only. Blocking
    (50-150 ms): a worker thread."""
    from agent.config import load_config, unreadable_files
    with tempfile.TemporaryDirectory(prefix="edge-agent-rules-") as scratch:
        candidate = Path(scratch) / config_path.name
        candidate.write_text(text, encoding="utf-8")
        try:
            config = load_config(candidate, standing_for=config_path)
        except ConfigError as exc:
            return [p.replace(str(candidate), config_path.name) for p in exc.problems]
        return [p.replace(str(candidate), config_path.name) for p in unreadable_files(config, candidate)]


@dataclass(frozen=True)
class Edited:
    """An edit replayed on the config file: the new text, its diff, check-config's problems."""

    text: str
    diff: str
    problems: list[str]
    shapes: list[Shape]
    changed: bool


def figures(path: Path, device_id: str, section: str, driver: Driver) -> tuple[str, list[Shape]]:
    """The file's sha256 (the edits' ``base``) and the device's figures. Blocking: a worker thread."""
    doc = Document(path.read_text(encoding="utf-8"), device_id, section)
    return doc.sha256, driver.shapes(doc.entry)


def edit_file(path: Path, device_id: str, section: str, driver: Driver, edit: Edit,
              frame: tuple[int, int] | None) -> Edited:
    """Replay ``edit`` on the file at ``path`` (which is not written: config.apply does that).
    Blocking (parse, dump, check-config's checks: 50-200 ms): a worker thread. Raises Refusal."""
    doc = Document(path.read_text(encoding="utf-8"), device_id, section)
    shapes = apply_ops(doc, driver, edit, frame)
    after = doc.dump()
    changed = after != doc.text
    return Edited(after, diff(doc.text, after, path.name), check(after, path) if changed else [], shapes, changed)


def parse_edit(body: Any) -> Edit:
    try:
        return Edit.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Refusal(f"the edit is malformed at {where or 'the top'}: {first['msg']}") from None
