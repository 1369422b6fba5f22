"""Fuzzing: every parser and handler where bytes from outside enter the agent, fed random and
mutated inputs. Prints figures and findings (not a pass/fail test; tests/test_fuzz.py runs a
bounded profile of it).

    .venv/bin/python bench/fuzz.py                          # a million inputs on 2 workers
    .venv/bin/python bench/fuzz.py --inputs 20000 --targets hj212.station,commands --seed 7
    .venv/bin/python bench/fuzz.py --seconds 60             # stop feeding after a minute
    .venv/bin/python bench/fuzz.py --list                   # the targets and their contracts

The inputs are split between targets by their ``share`` (weighted by speed: a camera frame costs
what a thousand HJ 212 frames cost) and between workers evenly; each (target, worker) has its
own random generator seeded from ``--seed``, so a seed replays the same inputs. Per target the
table shows inputs, inputs per second of one core, the most CPU one input took (for targets on
the event loop: its longest callback) and the findings; then every finding, grouped by where it
was raised, with the first input that raised it as hex. The exit code is 1 when there are
findings. What a finding is: bench/fuzz_targets/base.py.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.fuzz_targets import REGISTRY, target_class  # noqa: E402
from bench.fuzz_targets.base import Runner, TargetResult  # noqa: E402


def split_inputs(total: int, names: list[str]) -> dict[str, int]:
    """Inputs per target in proportion to its share (at least one each)."""
    shares = {name: target_class(name).share for name in names}
    whole = sum(shares.values())
    return {name: max(1, round(total * share / whole)) for name, share in shares.items()}


def run_worker(names: list[str], counts: dict[str, int], seed: int, worker: int,
               deadline: float | None) -> dict[str, TargetResult]:
    """One process's part: every target set up once, then fed its inputs; results returned."""
    logging.disable(logging.CRITICAL)   # the agent logs what it refuses; findings come from the instruments
    scratch = "/dev/shm" if os.path.isdir("/dev/shm") else None   # fsyncs of outboxes and audit logs stay in memory
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{worker}-", dir=scratch) as tmp:
        targets = []
        for name in names:
            target = target_class(name)()
            workdir = Path(tmp) / name
            workdir.mkdir()
            target.setup(workdir)
            targets.append(target)
        runner = Runner(targets, seed, worker)
        left = float("inf") if deadline is None else deadline - time.time()
        try:
            return runner.run(counts, time.monotonic() + left)
        finally:
            runner.close()
            for target in targets:
                target.close()


def _worker_main(job: tuple) -> dict[str, TargetResult]:
    return run_worker(*job)


def fuzz(names: list[str], total: int, seed: int, workers: int, seconds: float | None) -> tuple[dict[str, TargetResult], float]:
    counts = split_inputs(total, names)
    deadline = None if seconds is None else time.time() + seconds
    jobs = [(names, {n: c // workers + (k < c % workers) for n, c in counts.items()}, seed, k, deadline)
            for k in range(workers)]
    started = time.perf_counter()
    if workers == 1:
        parts = [_worker_main(jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_worker_main, jobs, chunksize=1)
    wall = time.perf_counter() - started
    merged = {name: TargetResult(name) for name in names}
    for part in parts:
        for name, result in part.items():
            merged[name].merge(result)
    return merged, wall


def print_report(results: dict[str, TargetResult], wall: float, workers: int, out=sys.stdout) -> int:
    """The table and the findings; returns the number of distinct findings."""
    print(f"{'target':<18} {'inputs':>9} {'inputs/s':>9} {'max CPU ms':>10} {'findings':>8}  notes", file=out)
    total_inputs = total_findings = 0
    for name, r in results.items():
        rate = r.inputs / r.seconds if r.seconds else 0.0
        found = sum(f.count for f in r.findings.values())
        notes = f"{r.unconfirmed_slow} slow once, fine again" if r.unconfirmed_slow else ""
        print(f"{name:<18} {r.inputs:>9} {rate:>9.0f} {r.max_cpu_ms:>10.1f} {found:>8}  {notes}", file=out)
        total_inputs += r.inputs
        total_findings += len(r.findings)
    print(f"{'all':<18} {total_inputs:>9} {total_inputs / wall if wall else 0:>9.0f}   in {wall:.1f} s wall on "
          f"{workers} worker(s) (inputs/s per target: per core)", file=out)
    if total_findings:
        print(f"\n{total_findings} distinct finding(s):", file=out)
        for r in results.values():
            for finding in sorted(r.findings.values(), key=lambda f: -f.count):
                print(finding.report(), file=out)
    else:
        print("\nno findings", file=out)
    return total_findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs in all (default 1 000 000)")
    parser.add_argument("--seconds", type=float, help="stop feeding after this long (wall clock)")
    parser.add_argument("--targets", help="comma-separated names (default: all; see --list)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--list", action="store_true", help="list the targets and their contracts")
    args = parser.parse_args(argv)
    names = list(REGISTRY) if not args.targets else [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    if args.list:
        for name in names:
            cls = target_class(name)
            allowed = ", ".join(e.__qualname__ if e.__module__ == "builtins" else f"{e.__module__}.{e.__qualname__}"
                                for e in cls.exceptions()) or "nothing"
            doc = " ".join((cls.__doc__ or "").split())
            print(f"{name:<18} share {cls.share:<6g} raises: {allowed}; "
                  f"{'event loop: 50 ms CPU per input' if cls.on_loop else 'not on the event loop'}\n    {doc}")
        return 0
    workers = max(1, min(args.workers, os.cpu_count() or 1, args.inputs))
    results, wall = fuzz(names, args.inputs, args.seed, workers, args.seconds)
    print(f"fuzz: seed {args.seed}, {args.inputs} inputs requested, {workers} worker(s)")
    return 1 if print_report(results, wall, workers) else 0


if __name__ == "__main__":
    sys.exit(main())
