"""Config files and model manifests: what a technician (or config.apply) hands the agent.

YAML is mutated three ways: bytes anywhere (non-UTF-8 included), the parsed tree with a value
replaced (boundary numbers, odd strings, wrong types, deep nesting), a key dropped or renamed,
then dumped again; and YAML-level constructs spliced in as text: anchors and aliases (also a
recursive one and an alias bomb), tags, huge integers, impossible timestamps, deep flow nesting.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

from bench.fuzz_targets import seeds
from bench.fuzz_targets.base import Target
from bench.fuzz_targets.mutate import deep, mutate_bytes, random_bytes, weird_value

YAML_SNIPPETS = (
    "x: &a [*a]\n", "x: &a {k: *a}\n", "x: !!python/object:os.system echo\n", "x: !!binary ////\n",
    "x: !!timestamp 2024-13-45\n", "x: 2024-02-30\n", "x: 2001-12-14t21:59:43.10-25:00\n", "x: !!int 0x\n",
    "x: " + "9" * 5000 + "\n", "x: 0o" + "7" * 5000 + "\n", "x: 1e99999\n", "x: .nan\n", "x: !!float nan\n",
    "x: ? [a, b]\n", "? [a, b]\n: 1\n", "x: !!set {a, b}\n", "x: !!omap [a: 1]\n", "x: !!str\n", "<<: *z\n",
    "x: !custom 1\n", "x: '\\x00'\n", '"\\ud800": 1\n', "%YAML 9.9\n---\nx: 1\n", "--- 1\n--- 2\n", "\t- x\n",
    "x: " + deep(random.Random(0), "[", "]", (800,)) + "\n", "x: " + deep(random.Random(0), "{a: ", "}", (600,)) + "\n",
)


def alias_bomb(levels: int = 9) -> str:
    lines = ["b0: &b0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, path + (i,))
    return out


def mutate_tree(rng: random.Random, tree: Any) -> Any:
    """A value replaced, a key dropped or renamed, somewhere in the parsed document."""
    paths = _paths(tree)[1:]
    if not paths:
        return weird_value(rng)
    for _ in range(rng.choice((1, 1, 2, 3))):
        path = rng.choice(paths)
        parent = tree
        try:
            for part in path[:-1]:
                parent = parent[part]
            last = path[-1]
            what = rng.random()
            if what < 0.6:
                parent[last] = weird_value(rng)
            elif what < 0.75 and isinstance(parent, dict):
                del parent[last]
            elif what < 0.85 and isinstance(parent, dict):
                parent[rng.choice(("extra", "", "id", "driver", 1, "points", "gateway"))] = parent.pop(last)
            else:
                parent[last] = [parent[last]] if rng.random() < 0.5 else {"x": parent[last]}
        except (KeyError, IndexError, TypeError):
            continue
    return tree


def yaml_input(rng: random.Random, corpus: tuple[bytes, ...]) -> bytes:
    seed = rng.choice(corpus)
    pick = rng.random()
    if pick < 0.05:
        return random_bytes(rng, 2000)
    if pick < 0.35:
        return mutate_bytes(rng, seed, corpus)
    if pick < 0.75:
        tree = yaml.safe_load(seed)
        try:
            return yaml.safe_dump(mutate_tree(rng, tree), allow_unicode=True, sort_keys=False).encode(
                "utf-8", "surrogatepass")
        except (yaml.YAMLError, RecursionError, ValueError):
            return seed
    # a YAML construct spliced in at a line boundary (top level or inside a mapping)
    lines = seed.split(b"\n")
    at = rng.randrange(len(lines) + 1)
    snippet = (alias_bomb(rng.choice((4, 9))) if rng.random() < 0.1 else rng.choice(YAML_SNIPPETS)).encode(
        "utf-8", "surrogatepass")
    indent = b"  " * rng.choice((0, 0, 1, 2))
    snippet = b"\n".join(indent + line for line in snippet.split(b"\n"))
    return b"\n".join(lines[:at] + [snippet] + lines[at:])


class Config(Target):
    """``agent.config.load_config`` on a mutated gateway config (the example and every family's
    sample): ConfigError only, whatever the bytes."""

    name = "config"
    share = 0.25
    on_loop = False

    @classmethod
    def exceptions(cls) -> tuple[type[BaseException], ...]:
        from agent.core.config import ConfigError
        return (ConfigError,)

    def setup(self, workdir: Path) -> None:
        from agent.config import load_config
        self.load = load_config
        self.path = workdir / "gateway.yaml"

    def generate(self, rng: random.Random) -> bytes:
        return yaml_input(rng, seeds.config_files())

    def feed(self, case: bytes) -> None:
        self.path.write_bytes(case)
        self.load(self.path)


class Manifest(Target):
    """``models.manifest.load_manifest`` on a mutated model manifest: ModelError only."""

    name = "model.manifest"
    share = 0.25
    on_loop = False

    @classmethod
    def exceptions(cls) -> tuple[type[BaseException], ...]:
        from models.manifest import ModelError
        return (ModelError,)

    def setup(self, workdir: Path) -> None:
        from models.manifest import load_manifest
        self.load = load_manifest
        self.path = workdir / "manifest.yaml"

    def generate(self, rng: random.Random) -> bytes:
        return yaml_input(rng, seeds.manifests())

    def feed(self, case: bytes) -> None:
        self.path.write_bytes(case)
        self.load(self.path)
