"""The fuzzing engine's core: what a target is, what counts as a finding, and one worker's run.

A :class:`Target` is one place where bytes from outside enter the agent. It makes inputs
(``generate``), feeds one to the code under test (``feed``) and declares its contract: which
exception types the code may raise (``allowed``, or ``exceptions()``) and whether it runs on the
event loop (then one input may cost at most 50 ms of CPU, DESIGN.md). What else it checks
(outputs the uplink cannot carry, a request answered twice ...) it judges in ``check`` after the
input, untimed, and reports through ``self.problem(...)``.

A finding is any of:

- an exception out of ``feed`` whose type the contract does not allow;
- a failure counted on an ``agent.boundary`` boundary while the input was handled: the agent's
  isolation swallows bugs (it counts, logs and answers), so :class:`BoundaryTap` wraps
  ``Boundary.failed`` and keeps the exception for the report;
- a problem the target reported (``Target.problem``);
- more than ``LOOP_BUDGET_S`` of CPU (``time.thread_time``) for one input of a target on the
  event loop, confirmed by running the same input again (a garbage collection of the whole
  process can land inside any input once);
- an input still running after ``HANG_S`` seconds (wall clock).

Findings are grouped by target, kind, exception type and the traceback's last frame; each group
keeps its first input (hex in the report) and a count.
"""

from __future__ import annotations

import gc
import hashlib
import random
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from agent.core import boundary as boundary_module

LOOP_BUDGET_S = 0.050
HANG_S = 20.0
REPORT_BYTES = 512


class Hang(BaseException):
    """Raised by SIGALRM inside an input that runs too long (a BaseException: the agent's own
    ``except Exception`` isolation must not swallow it)."""


@dataclass
class Finding:
    target: str
    kind: str            # exception, boundary, contract, cpu, hang
    error: str           # exception type (or problem tag)
    message: str
    frame: str           # the traceback's last frame: file:line in function
    data: bytes          # the first input that produced it
    count: int = 1

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.target, self.kind, self.error, self.frame)

    def report(self, limit: int = REPORT_BYTES) -> str:
        shown = self.data[:limit].hex()
        more = f"... ({len(self.data)} bytes)" if len(self.data) > limit else f" ({len(self.data)} bytes)"
        return (f"[{self.target}] {self.kind}: {self.error}: {self.message}\n"
                f"    at {self.frame}   (x{self.count})\n"
                f"    input sha256 {hashlib.sha256(self.data).hexdigest()}\n"
                f"    input hex {shown}{more}")


@dataclass
class TargetResult:
    name: str
    inputs: int = 0
    seconds: float = 0.0        # wall time feeding inputs (generation excluded)
    cpu: float = 0.0
    max_cpu_ms: float = 0.0
    unconfirmed_slow: int = 0   # over budget once, within it when run again
    findings: dict[tuple[str, str, str, str], Finding] = field(default_factory=dict)

    def add(self, finding: Finding) -> None:
        known = self.findings.get(finding.key)
        if known is None:
            self.findings[finding.key] = finding
        else:
            known.count += finding.count

    def merge(self, other: "TargetResult") -> None:
        self.inputs += other.inputs
        self.seconds += other.seconds
        self.cpu += other.cpu
        self.max_cpu_ms = max(self.max_cpu_ms, other.max_cpu_ms)
        self.unconfirmed_slow += other.unconfirmed_slow
        for finding in other.findings.values():
            self.add(finding)


class Target:
    """One entry point; see the module docstring. Subclasses live one per module beside this."""

    name: ClassVar[str] = ""
    # relative number of inputs: thousands per million, chosen by speed so that a million inputs
    # take a few minutes on two cores (a camera frame costs what 300 HJ 212 frames cost)
    share: ClassVar[float] = 1.0
    allowed: ClassVar[tuple[type[BaseException], ...]] = ()
    on_loop: ClassVar[bool] = True        # handled on the event loop: 50 ms CPU budget per input
    hang_s: ClassVar[float] = HANG_S

    def __init__(self) -> None:
        self._problems: list[tuple[str, str]] = []
        # set by ``feed`` of a target that drives an event loop itself: the CPU of its longest
        # callback for this input (what the 50 ms budget is about), instead of the whole feed
        self.handler_cpu: float | None = None

    @classmethod
    def exceptions(cls) -> tuple[type[BaseException], ...]:
        """The exception types the contract allows: ``allowed``, or a method of the target's
        where naming them means importing its family."""
        return cls.allowed

    def setup(self, workdir: Path) -> None:
        """Heavy imports and state, once per worker (not timed)."""

    def generate(self, rng: random.Random) -> Any:
        raise NotImplementedError

    def feed(self, case: Any) -> None:
        raise NotImplementedError

    def check(self, case: Any) -> None:
        """After ``feed``, not timed: judge what it produced (outputs, answers), report through
        ``problem``. Kept out of ``feed`` so a check's cost never counts against the budget."""

    def to_bytes(self, case: Any) -> bytes:
        """The input as bytes for the report."""
        return bytes(case)

    def again(self, case: Any) -> Any:
        """The input to run once more to confirm that it is slow: the same one, unless the target
        would take another path for it the second time (a command's id is then a replay)."""
        return case

    def recover(self) -> None:
        """Called after an input that raised: put the target back in a usable state."""

    def close(self) -> None:
        """Release what setup took (sockets, loops, files)."""

    def problem(self, tag: str, message: str) -> None:
        """A broken contract that is not an exception of the code under test."""
        self._problems.append((tag, message))

    def take_problems(self) -> list[tuple[str, str]]:
        problems, self._problems = self._problems, []
        return problems


class Violation(Exception):
    """Raised by a target's own checks (never by the code under test)."""


# -- instruments -----------------------------------------------------------------------------------

class BoundaryTap:
    """Records every ``Boundary.failed`` call (and still lets the boundary count and log it)."""

    def __init__(self) -> None:
        self.failures: list[tuple[str, BaseException, Any, str]] = []
        self._original = boundary_module.Boundary.failed

    def install(self) -> "BoundaryTap":
        original, failures = self._original, self.failures

        def failed(bound: boundary_module.Boundary, exc: BaseException, data: Any = None, *, where: str = "") -> None:
            failures.append((bound.name, exc, data, where))
            original(bound, exc, data, where=where)

        boundary_module.Boundary.failed = failed   # type: ignore[method-assign]
        return self

    def uninstall(self) -> None:
        boundary_module.Boundary.failed = self._original   # type: ignore[method-assign]


def last_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "(no traceback)"
    f = frames[-1]
    where = f.filename
    for marker in ("/site-packages/", "/wt-fuzz/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{where}:{f.lineno} in {f.name}"


def stable_seed(*parts: object) -> int:
    """A seed that is the same in every process and every run (``hash()`` of a str is not)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def _alarm(signum: int, frame: Any) -> None:
    raise Hang()


# -- one worker's run -------------------------------------------------------------------------------

class Runner:
    """Feeds targets their inputs in one process; counts, times and collects findings."""

    def __init__(self, targets: list[Target], seed: int, worker: int):
        self.targets = targets
        self.rngs = {t.name: random.Random(stable_seed(seed, t.name, worker)) for t in targets}
        self.results = {t.name: TargetResult(t.name) for t in targets}
        self.tap = BoundaryTap().install()
        self._previous_alarm = signal.signal(signal.SIGALRM, _alarm)
        # what setup built (modules, models, engines) lives for the whole run: out of the
        # collector's sight, so a full collection costs what the inputs allocate, not seconds'
        # worth of imports, and does not land in some input's 50 ms as noise
        gc.collect()
        gc.freeze()

    def run(self, counts: dict[str, int], deadline: float, rounds: int = 40) -> dict[str, TargetResult]:
        """Every target in turn, a slice of its inputs per round, so a deadline cuts all of them
        alike rather than starving the last ones."""
        remaining = dict(counts)
        per_round = {name: max(1, -(-count // rounds)) for name, count in counts.items()}
        while any(remaining.values()) and time.monotonic() < deadline:
            for target in self.targets:
                todo = min(per_round.get(target.name, 0), remaining.get(target.name, 0))
                done = self.batch(target, todo, deadline)
                remaining[target.name] -= done
        return self.results

    def close(self) -> None:
        """Put back what the run changed in the process (the boundary hook, SIGALRM, the frozen
        objects)."""
        self.tap.uninstall()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous_alarm)
        gc.unfreeze()

    def batch(self, target: Target, count: int, deadline: float) -> int:
        rng = self.rngs[target.name]
        for i in range(count):
            if time.monotonic() >= deadline:
                return i
            self.one(target, target.generate(rng))
        return count

    def one(self, target: Target, case: Any) -> None:
        result = self.results[target.name]
        failures = self.tap.failures
        failures.clear()
        target.take_problems()
        exc, cpu, wall = self._timed(target, case)
        target.check(case)
        result.inputs += 1
        result.seconds += wall
        result.cpu += cpu
        if target.handler_cpu is not None:
            cpu = target.handler_cpu
        if cpu * 1000 > result.max_cpu_ms:
            result.max_cpu_ms = cpu * 1000
        found: list[Finding] = []
        if exc is not None:
            if isinstance(exc, Hang):
                found.append(self._finding(target, case, "hang", "Hang", f"still running after {target.hang_s:g}s", exc))
            elif isinstance(exc, Violation) or not isinstance(exc, target.exceptions()):
                found.append(self._finding(target, case, "exception", type(exc).__name__, str(exc), exc))
        for name, error, _, where in list(failures):
            found.append(self._finding(target, case, "boundary", f"{name}: {type(error).__name__}",
                                       f"{error} (from {where or 'no peer'})", error))
        for tag, message in target.take_problems():
            found.append(Finding(target.name, "contract", tag, message, "(the target's check)", target.to_bytes(case)))
        if target.on_loop and cpu > LOOP_BUDGET_S:
            repeat = target.again(case)
            _, again, _ = self._timed(target, repeat)   # confirm: not a GC or a page fault landing here
            target.check(repeat)
            if target.handler_cpu is not None:
                again = target.handler_cpu
            if again > LOOP_BUDGET_S:
                found.append(Finding(target.name, "cpu", "over the 50 ms loop budget",
                                     f"{cpu * 1000:.0f} ms, then {again * 1000:.0f} ms of CPU for one input",
                                     "(timed around the handler)", target.to_bytes(case)))
            else:
                result.unconfirmed_slow += 1
            target.take_problems()
        for finding in found:
            result.add(finding)
        if exc is not None or found:
            target.recover()

    def _timed(self, target: Target, case: Any) -> tuple[BaseException | None, float, float]:
        exc: BaseException | None = None
        target.handler_cpu = None
        signal.setitimer(signal.ITIMER_REAL, target.hang_s)
        w0 = time.perf_counter()
        c0 = time.thread_time()
        try:
            target.feed(case)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:   # noqa: BLE001 - judged against the target's contract
            exc = error
        finally:
            cpu = time.thread_time() - c0
            wall = time.perf_counter() - w0
            signal.setitimer(signal.ITIMER_REAL, 0)
        return exc, cpu, wall

    def _finding(self, target: Target, case: Any, kind: str, error: str, message: str,
                 exc: BaseException) -> Finding:
        if len(message) > 300:
            message = message[:297] + "..."
        return Finding(target.name, kind, error, message, last_frame(exc), target.to_bytes(case))
