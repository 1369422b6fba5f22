"""The Debian packages the package tests install: this checkout built by packaging/build-deb, and
"the next release", the same checkout with a bumped version and one more outbox migration, built
the same way (a real package N+1, for the upgrade test)."""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NEXT_SUFFIX = "+next"
# appended to agent/outbox_schema.py of the next release: a column every row gets, as a later
# release might add one (an older agent then refuses the file: it cannot know what it means)
NEXT_MIGRATION = '''

# -- added by tests/gateway_sim/package.py: the next release's schema change
MIGRATIONS.append(Migration(current_version() + 1, "messages.hops, the next release's",
                            lambda conn: conn.execute("ALTER TABLE messages ADD COLUMN hops INTEGER NOT NULL DEFAULT 0")))
'''


@dataclass(frozen=True)
class Built:
    path: Path
    version: str
    seconds: float   # how long build-deb took


def copy_checkout(dest: Path) -> Path:
    """The files build-deb would take from this checkout (tracked, and new ones git does not ignore)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.split(b"\0")
    dest.mkdir(parents=True)
    archive = dest.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        for name in filter(None, listed):
            path = REPO / name.decode()
            if path.exists():
                tar.add(path, arcname=name.decode(), recursive=False)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    archive.unlink()
    return dest


def version_of(source: Path) -> str:
    for line in (source / "agent" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise ValueError(f"no __version__ in {source}/agent/__init__.py")


def make_next_release(source: Path) -> str:
    """Turn a copy of the checkout into the next release; returns its version."""
    init = source / "agent" / "__init__.py"
    version = version_of(source) + NEXT_SUFFIX
    text = init.read_text()
    init.write_text(text.replace(f'__version__ = "{version_of(source)}"', f'__version__ = "{version}"'))
    schema = source / "agent" / "outbox_schema.py"
    schema.write_text(schema.read_text() + NEXT_MIGRATION)
    return version


# build-deb's cache of the dependencies' virtualenv, in the temp folder (tests write nothing else
# outside it) and kept across sessions: the first build of a lock file takes ~30 s, later ones ~8 s
CACHE = Path(tempfile.gettempdir()) / "edge-agent-build-deb-cache"


def build(source: Path, out: Path) -> Built:
    """Run the source's own packaging/build-deb (uncompressed: the fastest to build and install)."""
    started = time.monotonic()
    done = subprocess.run([str(source / "packaging" / "build-deb"), "--out", str(out), "--compress", "none",
                           "--cache", str(CACHE)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"build-deb failed ({done.returncode}):\n{done.stderr[-4000:]}")
    path = Path(done.stdout.strip().splitlines()[-1])
    return Built(path, version_of(source), time.monotonic() - started)
