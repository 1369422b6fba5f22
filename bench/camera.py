"""Benchmark: the camera driver on the simulated junction. Prints figures, asserts nothing.

Two parts:

  offline   the simulator's traffic rendered frame by frame straight into the camera pipeline
            (motion gate, detector, tracker, rules, evidence with plate OCR), no network: violation
            precision and recall per type against the simulator's ground truth, plate text accuracy,
            pipeline time per frame;
  rtsp      the whole chain: simulated camera over RTSP (``tests/hardware_sim/camera_sim.py``) and
            signal controller (SNMP) → the real agent process → Mosquitto → the reference consumer:
            precision/recall and plate accuracy from the events the centre got, p95 time from the
            moment of the violation to the evidence record committed, agent CPU with a static and a
            busy scene, recovery time after the RTSP server is restarted.

    .venv/bin/python bench/camera.py                    # both
    .venv/bin/python bench/camera.py --part offline --seconds 300
    .venv/bin/python bench/camera.py --part rtsp --keep /tmp/run   # + the agent's debug log, truth, found

Judged over RTSP: the violations staged in the busy window (not during the RTSP restarts after it).
People on the carriageway whom vehicles hid are in the truth once in view (``hidden_s``), or not at
all if never in view; the report says how many. A finding is matched to a truth of its type within
a tolerance of its moment, or, with the same plate, up to 20 s after it (decided late: the report
lists these, and their lateness counts in the time error and latency figures).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.hardware_sim.camera_sim import junction_camera  # noqa: E402
from tests.hardware_sim.junction import Junction  # noqa: E402

TOLERANCE = {"red_light": 1.5, "wrong_way": 4.0, "illegal_parking": 3.0, "zone_intrusion": 2.0}
LATE_SAME_PLATE = 20.0    # s: a finding this late still matches a truth with the same plate (pair_up)


def match(truth: list[dict[str, Any]], found: list[dict[str, Any]], cutoff: float | None = None) -> dict[str, Any]:
    """One-to-one matching by type and time (``t`` seconds on one clock): precision, recall, plates.

    ``cutoff``: the end of the judged window. Everything is matched, then what is left over after
    the cutoff is not counted: a violation staged in the last seconds may not be decided yet, and a
    decision just before the end may belong to a truth recorded just after it."""
    indexed = pair_up(truth, found)
    pairs = [(gt, found[i]) for gt, i in indexed]
    used = {i for _, i in indexed}
    if cutoff is not None:
        matched_truth = {id(gt) for gt, _ in pairs}
        truth = [gt for gt in truth if gt["t"] <= cutoff or id(gt) in matched_truth]
        keep = [i for i, f in enumerate(found) if f["t"] <= cutoff or i in used]
        index = {old: new for new, old in enumerate(keep)}
        found = [found[i] for i in keep]
        used = {index[i] for i in used}
    per_type: dict[str, dict[str, Any]] = {}
    for kind in TOLERANCE:
        n_gt = sum(1 for r in truth if r["type"] == kind)
        n_found = sum(1 for f in found if f["type"] == kind)
        n_ok = sum(1 for gt, _ in pairs if gt["type"] == kind)
        per_type[kind] = {"truth": n_gt, "found": n_found, "matched": n_ok,
                          "precision": n_ok / n_found if n_found else None, "recall": n_ok / n_gt if n_gt else None}
    plates = [(gt.get("plate"), f.get("plate")) for gt, f in pairs if gt.get("plate")]
    n_found_all = len(found)
    return {"per_type": per_type, "matched": len(pairs), "truth": len(truth), "found": n_found_all,
            "precision": len(pairs) / n_found_all if n_found_all else None,
            "recall": len(pairs) / len(truth) if truth else None,
            "plates": len(plates), "plates_ok": sum(1 for a, b in plates if a == b),
            "plate_misses": [(a, b) for a, b in plates if a != b][:10],
            "time_error": [round(f["t"] - gt["t"], 3) for gt, f in pairs],
            "late": [(gt["type"], round(gt["t"], 2), gt.get("plate"), round(f["t"] - gt["t"], 2)) for gt, f in pairs
                     if abs(f["t"] - gt["t"]) > TOLERANCE[gt["type"]]],
            "unmatched_truth": [gt for gt in truth if all(gt is not g for g, _ in pairs)][:10],
            "unmatched_found": [f for i, f in enumerate(found) if i not in used][:10]}


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def hidden_people(truth: list[dict[str, Any]], unseen: list[dict[str, Any]]) -> dict[str, int]:
    """People the simulator's truth holds back or records late because vehicles hid them."""
    return {"unseen": len(unseen), "late_in_view": sum(1 for r in truth if r.get("hidden_s"))}


def report(title: str, result: dict[str, Any]) -> None:
    print(f"\n{title}")
    for kind, row in result["per_type"].items():
        print(f"  {kind:16s} truth {row['truth']:3d}  found {row['found']:3d}  matched {row['matched']:3d}  "
              f"precision {pct(row['precision']):>8s}  recall {pct(row['recall']):>8s}")
    print(f"  {'all':16s} truth {result['truth']:3d}  found {result['found']:3d}  matched {result['matched']:3d}  "
          f"precision {pct(result['precision']):>8s}  recall {pct(result['recall']):>8s}")
    if result.get("unseen") or result.get("late_in_view"):
        print(f"  people on the carriageway behind vehicles: {result['unseen']} never in view (not in the truth), "
              f"{result['late_in_view']} recorded when they came into view")
    if result["plates"]:
        print(f"  plate text: {result['plates_ok']}/{result['plates']} = {pct(result['plates_ok'] / result['plates'])}"
              + (f"; misses (truth, read): {result['plate_misses']}" if result["plate_misses"] else ""))
    if result["time_error"]:
        errors = sorted(abs(e) for e in result["time_error"])
        print(f"  |t found - t truth|: median {statistics.median(errors):.3f} s, max {errors[-1]:.3f} s")
    if result["late"]:
        print(f"  late, matched by plate (type, t truth, plate, s late): {result['late']}")
    if result["unmatched_truth"]:
        print(f"  missed: {[(r['type'], r['t'], r.get('plate')) for r in result['unmatched_truth']]}")
    if result["unmatched_found"]:
        print(f"  false: {[(f['type'], round(f['t'], 2), f.get('plate')) for f in result['unmatched_found']]}")


# -- offline: frames straight into the pipeline ------------------------------------------------------

class OracleDetector:
    """The renderer's own boxes as detections (persons included): measures tracker, rules and OCR
    without the detector's errors."""

    def __init__(self, renderer: Any):
        self.renderer = renderer
        self.scene: Any = None
        self.last_timing = None

    def detect(self, image: Any) -> list[Any]:
        from models.runtime import Detection
        return [Detection(cls, 0.99, (x1, y1, x2, y2)) for cls, x1, y1, x2, y2 in self.renderer.boxes(self.scene)]


def offline(seconds: float, seed: int, fps: float, rates: float, dwell: float, verbose: bool,
            debug_dir: str | None = None, oracle: bool = False, model: str | None = None) -> dict[str, Any]:
    import resource

    from drivers.camera.options import Options
    from drivers.camera.pipeline import Pipeline
    from drivers.camera.reader import RawFrame
    from drivers.camera.rules import SignalBoard
    from models.runtime import Detector
    from tests.hardware_sim.junction import JunctionRenderer
    from tests.hardware_sim.traffic import TrafficModel

    J = Junction()
    entry = junction_camera(J, dwell=dwell)
    if model:       # another model than the simulated junction's own (the real one: --model nanodet)
        entry["model"] = model
    options = Options.model_validate({k: v for k, v in entry.items() if k != "id"})
    renderer = JunctionRenderer(J, seed=seed)
    traffic = TrafficModel(J, seed=seed, rates=rates, dwell=dwell, hidden=renderer.hidden_fraction)
    board = SignalBoard()
    results: list[tuple[str, Any]] = []
    if oracle:
        detector = OracleDetector(renderer)
    else:
        detector = Detector(options.model, threads=options.detect.threads)
    pipeline = Pipeline("bench", options, None, lambda: detector, board,   # type: ignore[arg-type]
                        lambda kind, payload: results.append((kind, payload)))
    pipeline.detector = detector
    pipeline.evidence.start()
    t0 = 1_800_000_000.0
    next_signal = 0.0
    frames = int(seconds * fps)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    render_s = 0.0
    for i in range(frames):
        t = i / fps
        while next_signal <= t:      # a signal controller polled every 200 ms
            board.feed("tsc-01", f"phase{J.approach_phase}", traffic.signal_at(next_signal)[J.approach_phase],
                       t0 + next_signal)
            next_signal += 0.2
        r0 = time.perf_counter()
        scene = traffic.step(t)
        image = renderer.render(scene)
        if oracle:
            detector.scene = scene
        render_s += time.perf_counter() - r0
        pipeline.process(RawFrame(i + 1, t0 + t, image))
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    deadline = time.monotonic() + 15
    while pipeline.evidence.busy and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    pipeline.evidence.stop()
    found = []
    for kind, payload in results:
        if kind != "violation":
            continue
        _, violation, built = payload
        found.append({"type": violation.type, "t": violation.t - t0, "plate": built.data.get("plate"),
                      "track": violation.track, "rule": violation.rule, "data": violation.data,
                      "boxes": [[round(v) for v in s.box] for s in violation.shots],
                      "shot_t": [round(s.frame.t - t0, 2) for s in violation.shots]})
        if debug_dir is not None:
            import cv2
            for k, shot in enumerate(violation.shots):
                img = shot.frame.image.copy()
                x1, y1, x2, y2 = (int(v) for v in shot.box)
                cv2.rectangle(img, (x1, y1), (x2, y2), (0, 0, 255), 2)
                cv2.imwrite(str(Path(debug_dir) / f"{violation.t - t0:07.2f}-{violation.type}-{k}.jpg"), img)
    truth = [{**r, "t": r["t_violation"]} for r in traffic.ground_truth()]
    result = match(truth, found, cutoff=seconds - 3)
    result.update(hidden_people(truth, traffic.unseen))
    stats = pipeline.stats.as_dict()
    cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime)
    result["pipeline"] = {"frames": frames, "detected": stats["detected"], "gated": stats["gated"],
                          "frame_ms_p95": stats["frame_ms_p95"], "infer_ms_p50": stats["infer_ms_p50"],
                          "cpu_s_per_frame_ms": round(1000 * (cpu - render_s) / frames, 1),
                          # the pipeline's CPU per second of video at this fps, as % of one core
                          # (rendering the frames, which a camera's stream does not cost, taken out)
                          "cpu_percent_per_camera": round(100 * (cpu - render_s) / seconds, 1),
                          "wall_s": round(wall, 1), "render_s": round(render_s, 1)}
    report(f"offline: {seconds:.0f} s of simulated traffic (seed {seed}) at {fps:g} fps, frames straight into the pipeline"
           + (", detections = the renderer's true boxes (oracle)" if oracle else f", model {entry['model']}"), result)
    p = result["pipeline"]
    print(f"  pipeline: {p['frames']} frames, detector ran on {p['detected']} ({p['gated']} skipped by the motion "
          f"gate), detector p50 {p['infer_ms_p50']} ms, frame p95 {p['frame_ms_p95']} ms; CPU per camera at {fps:g} fps: "
          f"{p['cpu_percent_per_camera']} % of one core")
    if verbose:
        print(json.dumps(result, ensure_ascii=False, indent=1, default=str))
    return result


def rtsp(args: argparse.Namespace) -> dict[str, Any]:
    """The whole chain over RTSP and MQTT with the real agent process."""
    import tempfile

    import psutil
    import yaml

    from tests.agent_proc import AgentProcess, agent_config
    from tests.hardware_sim.broker import MosquittoBroker
    from tests.hardware_sim.camera_sim import CameraSim
    from tests.hardware_sim.consumer import Consumer
    from tests.hardware_sim.signal_controller import DEFAULT_PLAN, SignalControllerSim
    from tests.test_signal_controller import ntcip_entry

    gw = "gw-bench-cam"
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-camera-") as tmp_name, \
            SignalControllerSim(DEFAULT_PLAN, snmp=("127.0.0.1", 0)).run_in_thread() as controller:
        tmp = Path(tmp_name)
        broker = MosquittoBroker(workdir=tmp / "mosquitto").start()
        consumer = Consumer(broker.host, broker.port, gateway=gw).start()
        static = CameraSim(plan=DEFAULT_PLAN, plan_epoch=controller.controller.t0, seed=args.seed,
                           rates=0.0, flow=0.0)
        static.start()
        port = static.port
        signal = ntcip_entry(controller.snmp_address[1], poll="100ms")
        signal["id"] = "tsc-01"
        config = agent_config(tmp, broker_port=broker.port, gateway=gw, devices=[signal],
                              agent={"metrics_interval": "10s"})
        settings = yaml.safe_load(config.read_text())
        settings["cameras"] = [junction_camera(url=static.url, signal_device="tsc-01", dwell=args.dwell)]
        if args.keep:    # the rules say at debug level why they did not report something
            settings["agent"]["log"]["level"] = "debug"
        config.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))
        agent = AgentProcess(config, tmp / "agent.log", check_loop=False).start()
        busy = None
        try:
            agent.wait_status(lambda s: s["devices"].get("cam-01", {}).get("online"), 60)
            proc = psutil.Process(agent.pid)

            def cpu_over(seconds: float) -> float:
                proc.cpu_percent(None)
                time.sleep(seconds)
                return proc.cpu_percent(None)

            time.sleep(3)
            out["cpu_static"] = cpu_over(args.cpu_seconds)
            stats = agent.status()["devices"]["cam-01"]["driver_stats"]
            out["static_detected"], out["static_gated"] = stats["detected"], stats["gated"]
            static.stop()
            busy = CameraSim(plan=DEFAULT_PLAN, plan_epoch=controller.controller.t0, seed=args.seed,
                             rates=args.rates, dwell=args.dwell, port=port)
            busy.start()
            agent.wait_status(lambda s: s["devices"]["cam-01"].get("online"), 30)
            commits: dict[str, dict[str, Any]] = {}
            started = time.monotonic()
            cpu_samples = []
            proc.cpu_percent(None)
            while time.monotonic() - started < args.rtsp_seconds:
                time.sleep(2.0)
                cpu_samples.append(proc.cpu_percent(None))
                snap = agent.status()
                if snap:
                    for record in snap["devices"]["cam-01"].get("driver_stats", {}).get("recent", []):
                        if record.get("committed_ms"):
                            commits[record["id"]] = record
            out["cpu_busy"] = statistics.mean(cpu_samples[1:]) if len(cpu_samples) > 1 else None
            busy_end = time.time()
            time.sleep(3)
            # recovery: the RTSP server goes away for a second and comes back on the same port
            recoveries = []
            for _ in range(args.restarts):
                busy.restart(downtime=1.0)
                back = time.time()
                agent.wait_status(lambda s: s["devices"]["cam-01"].get("online") is False, 15)
                agent.wait_status(lambda s: s["devices"]["cam-01"].get("online"), 30)
                recoveries.append(time.time() - back)
                time.sleep(3)
            out["recovery_s"] = recoveries
            time.sleep(2)
            snap = agent.status()
            for record in snap["devices"]["cam-01"].get("driver_stats", {}).get("recent", []):
                if record.get("committed_ms"):
                    commits[record["id"]] = record
            driver = snap["devices"]["cam-01"]["driver_stats"]
        finally:
            agent.stop()
            if busy is not None:
                busy.stop()
            static.stop()
            consumer.stop()
            broker.stop()
        truth = [{**r, "t": r["ts_violation"] / 1000} for r in (busy.ground_truth() if busy else [])]
        events = [e for e in consumer.events("cam-01") if e["type"].startswith("violation.")]
        found = [{"type": e["type"].split(".", 1)[1], "t": e["data"]["t_violation"] / 1000, "plate": e["data"].get("plate"),
                  "id": e["id"]} for e in events]
        # judged: what was staged in the busy window, not during the restarts that follow it (a
        # violation in the last 3 s still has those 3 s and 3 more of steady stream to be decided)
        result = match(truth, found, cutoff=busy_end - 3)
        result.update(hidden_people(truth, busy.model.unseen if busy else []))
        # violation moment (simulator's clock) -> evidence record committed in the agent's outbox
        latency, parts = [], {}
        for gt, f in ((gt, found[i]) for gt, i in pair_up(truth, found) if gt["t"] <= busy_end - 3):
            record = commits.get(f["id"])
            if record is not None:
                latency.append(record["committed_ms"] - gt["t"] * 1000)
                # where the time goes: the rule waiting for its proof (the car further on), the
                # frame reaching the pipeline + evidence build + hand-over, the group commit
                parts.setdefault(gt["type"], []).append((
                    record["committed_ms"] - gt["t"] * 1000,
                    record.get("decided_ms", record["t_violation"]) - record["t_violation"],
                    record["handed_ms"] - record.get("decided_ms", record["t_violation"]),
                    record["committed_ms"] - record["handed_ms"]))
        out.update(result=result, latency_ms=sorted(latency), latency_parts=parts, driver=driver,
                   invalid=len(consumer.invalid))
        if args.keep:    # what a maintainer needs to see why one was missed: the agent's log, both sides
            import shutil
            keep = Path(args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp / "agent.log", keep / "agent.log")
            (keep / "truth.json").write_text(json.dumps(truth, ensure_ascii=False, indent=1), encoding="utf-8")
            (keep / "found.json").write_text(json.dumps(found, ensure_ascii=False, indent=1), encoding="utf-8")
    report(f"rtsp: {args.rtsp_seconds:.0f} s of the simulated junction over RTSP through the agent to the centre", result)
    if latency:
        ordered = sorted(latency)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        print(f"  violation -> evidence record committed: p50 {statistics.median(ordered):.0f} ms, p95 {p95:.0f} ms, "
              f"max {ordered[-1]:.0f} ms (n={len(ordered)}; simulator's violation moment to the agent's commit)")
        for kind, rows in sorted(out["latency_parts"].items()):
            def q(i: int, p: float) -> float:
                column = sorted(r[i] for r in rows)
                return column[min(len(column) - 1, int(p * len(column)))]
            print(f"    {kind:16s} n={len(rows):3d}  total p50 {q(0, .5):5.0f} p95 {q(0, .95):5.0f} ms = rule decides "
                  f"p95 {q(1, .95):5.0f} + frame/evidence/hand-over p95 {q(2, .95):5.0f} + commit p95 {q(3, .95):4.0f}")
    print(f"  agent CPU (% of one core): static scene {out['cpu_static']:.1f} %, busy scene {out['cpu_busy']:.1f} % "
          f"(static: detector ran on {out['static_detected']} frames, skipped {out['static_gated']})")
    print(f"  recovery after the RTSP server restarted: {', '.join(f'{r:.1f} s' for r in out['recovery_s'])}")
    print(f"  agent: detector p50 {driver.get('infer_ms_p50')} ms, frame p95 {driver.get('frame_ms_p95')} ms, "
          f"fps {driver.get('fps')}, evidence wait p95 {driver.get('evidence_wait_ms_p95')} ms, build p95 "
          f"{driver.get('evidence_ms_p95')} ms; invalid messages "
          f"{out['invalid']}")
    return out


def pair_up(truth: list[dict[str, Any]], found: list[dict[str, Any]]) -> list[tuple[dict, int]]:
    """Each truth (earliest first) with the index of the nearest unused finding of its type within
    its tolerance: one-to-one. Then a truth left over with a plate takes a finding left over of its
    type with the same plate up to LATE_SAME_PLATE s after it: the same violation, decided late (a
    parked car hidden by a bus as it came to rest is only seen at rest later). Counting that as one
    false and one missed would mix up what was found with how fast; it is matched, and its lateness
    shows in the time error and the latency figures (``late`` in the report)."""
    pairs, used = [], set()
    for gt in sorted(truth, key=lambda r: r["t"]):
        candidates = [(abs(f["t"] - gt["t"]), i) for i, f in enumerate(found)
                      if i not in used and f["type"] == gt["type"] and abs(f["t"] - gt["t"]) <= TOLERANCE[gt["type"]]]
        if candidates:
            _, i = min(candidates)
            used.add(i)
            pairs.append((gt, i))
    paired = {id(gt) for gt, _ in pairs}
    for gt in sorted(truth, key=lambda r: r["t"]):
        if id(gt) in paired or not gt.get("plate"):
            continue
        candidates = [(f["t"] - gt["t"], i) for i, f in enumerate(found)
                      if i not in used and f["type"] == gt["type"] and f.get("plate") == gt["plate"]
                      and 0 < f["t"] - gt["t"] <= LATE_SAME_PLATE]
        if candidates:
            _, i = min(candidates)
            used.add(i)
            pairs.append((gt, i))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["offline", "rtsp", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=240.0, help="simulated seconds (offline)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--rates", type=float, default=2.0, help="staged violations of each type a minute")
    parser.add_argument("--dwell", type=float, default=10.0, help="no-parking dwell, seconds")
    parser.add_argument("--rtsp-seconds", type=float, default=180.0, help="busy scene over RTSP, seconds")
    parser.add_argument("--cpu-seconds", type=float, default=20.0, help="static scene CPU sample, seconds")
    parser.add_argument("--restarts", type=int, default=3, help="RTSP server restarts for the recovery time")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--model", help="offline: this model instead of the simulated junction's (vehicles)")
    parser.add_argument("--oracle", action="store_true", help="offline: the renderer's true boxes instead of the model")
    parser.add_argument("--keep", help="rtsp: copy the agent's log and the truth and found violations here")
    parser.add_argument("--debug-dir", help="offline: save every violation's shots with the subject boxed here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.part in ("offline", "all"):
        offline(args.seconds, args.seed, args.fps, args.rates, args.dwell, args.verbose, args.debug_dir, args.oracle,
                args.model)
    if args.part in ("rtsp", "all"):
        rtsp(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
