"""The camera pipeline on real footage: the real detector, tracker, rules and evidence over the
whole of vtest.avi (Debian opencv-doc: people walking on a campus road, 795 frames at 10 fps).

    .venv/bin/python -m bench.real_footage [--fps 10] [--model nanodet] [--json] [--out DIR]

Prints, for the whole clip:

- person tracks (confirmed) and **identity switches**: a confirmed person track that ends inside
  the picture (not at its edge) and is taken up by a new track starting where it would be within
  1.5 s (a break: one person, two ids), and a track whose box jumps by more than half a body height
  between two detections (a swap: one id, two people). Counted from the tracks alone, so it counts
  breaks the detector caused too; ``--out`` writes a still of each for checking by eye;
- the ``zone_intrusion`` rule on a zone drawn on the road (``ZONE``): each report (track, time,
  where from), with its evidence built as the camera builds it (stills, crop), and the people
  the tracks saw walk in (a confirmed track whose feet go from outside to inside): each should be
  reported once;
- people standing still (a confirmed track whose feet stay within 0.3 body heights for 3 s or
  more): none may be reported as moving by the tracker (velocity over the pipeline's "moving"
  threshold for most of that time) or trigger a rule that needs movement.

The frames are fed with their real timing (``--fps`` of the 10 fps clip's frames: 5 takes every
second frame); the pipeline runs exactly as a camera's does, without the reader thread.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# the road in front of the lamp post and the sign, where people walk down towards the grass and
# across (pixels of the 768 x 576 frame). It stays clear of the frame's right edge, where people
# walk into the picture: someone first seen inside a zone is not counted (``from_outside``), so a
# zone up to the edge would miss everyone who comes in over it.
ZONE = [[330, 250], [560, 250], [690, 300], [690, 440], [560, 335], [330, 285]]
CLIP_FPS = 10.0
STILL_S = 3.0


def run(fps: float = 10.0, model: str = "nanodet", out: Path | None = None, frames: range | None = None,
        threads: int = 1) -> dict[str, Any]:
    import cv2
    import numpy as np

    from drivers.camera.evidence import build_violation
    from drivers.camera.options import Options
    from drivers.camera.pipeline import Pipeline
    from drivers.camera.reader import RawFrame
    from models.eval_footage import footage, open_without_stream_options
    from models.runtime import Detector

    path = footage()
    if path is None:
        raise SystemExit("vtest.avi not found: bash install.sh --dev installs Debian's opencv-doc")
    options = Options.model_validate({
        "url": str(path), "model": model, "fps": fps, "detect": {"threads": threads},
        "rules": [{"type": "zone_intrusion", "name": "road", "zone": ZONE, "min_time": "500ms"}],
        "evidence": {"clip_format": "none", "plate": False}})
    detector = Detector(options.model, threads=threads)
    posted: list[tuple[str, Any]] = []
    pipeline = Pipeline("vtest", options, None, lambda: detector, None,  # type: ignore[arg-type]
                        lambda kind, payload: posted.append((kind, payload)))
    pipeline.detector = detector
    step = max(1, round(CLIP_FPS / fps))
    cap = open_without_stream_options(path)
    t0 = 1_800_000_000.0
    history: dict[int, list[tuple[float, tuple, str]]] = {}     # track id -> (t, box, label) per detection
    violations: list[Any] = []
    evidence: list[dict[str, Any]] = []
    index = 0
    decode_s = 0.0
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    analysed = 0
    shape = (576, 768)
    thumbs: dict[int, Any] = {}     # --out: every frame as JPEG, for the stills of what was not reported
    while True:
        d0 = time.process_time()
        ok, image = cap.read()
        decode_s += time.process_time() - d0
        if not ok:
            break
        if index % step or (frames is not None and index not in frames):
            index += 1
            continue
        t = t0 + index / CLIP_FPS
        shape = image.shape[:2]
        if out is not None:
            thumbs[index] = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1]
        found = pipeline.process(RawFrame(index, t, image))
        analysed += 1
        for tr in pipeline.tracker.tracks.values():
            if tr.last_t == t and tr.hits >= options.tracker.min_hits:
                history.setdefault(tr.id, []).append((t, tuple(tr.box), tr.label, math.hypot(*tr.velocity)))
        for v in found:
            violations.append(v)
            ev = options.evidence
            built = build_violation(v, quality=ev.jpeg_quality, crop=ev.crop, plate=False, blur=options.privacy.blur_faces)
            evidence.append({"track": v.track, "files": [name for name, _, _ in built.files],
                             "bytes": sum(len(content) for _, content, _ in built.files)})
        index += 1
    cap.release()
    elapsed = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    video_s = analysed / fps
    h, w = shape
    people = {k: v for k, v in history.items() if v[0][2] == "person"}
    switches = identity_switches(people, w, h)
    walked_in = entries(people)
    still = standing(people)
    moving_flags = _moving_still(people, still)
    zone_reports = [{"track": v.track, "t": round(v.t - t0, 1), "label": v.label, **{k: v.data.get(k) for k in ("came_from",) if k in v.data}}
                    for v in violations if v.type == "zone_intrusion"]
    reported_tracks = [r["track"] for r in zone_reports]
    result = {
        "footage": str(path), "frames_analysed": analysed, "fps": fps, "model": model,
        "seconds": round(elapsed, 1), "ms_per_frame": round(1000 * elapsed / max(analysed, 1), 1),
        # CPU of the pipeline per second of video, as % of one core: what one camera at this fps
        # costs (decoding the file, which a camera's reader does for every frame it receives,
        # counted apart: the file's every frame is decoded, skipped or not)
        "cpu_percent_per_camera": round(100 * (cpu_s - decode_s) / max(video_s, 1e-9), 1),
        "decode_cpu_percent": round(100 * decode_s / max(video_s, 1e-9), 1),
        "person_tracks": len(people),
        "identity_switches": {"breaks": len(switches["breaks"]), "jumps": len(switches["jumps"]),
                              "per_person_track": round((len(switches["breaks"]) + len(switches["jumps"]))
                                                        / max(len(people), 1), 3),
                              "detail": switches},
        "zone": {"polygon": ZONE, "reports": zone_reports, "walked_in_tracks": sorted(walked_in),
                 "walked_in_not_reported": [k for k in walked_in if k not in reported_tracks],
                 "reported_twice": sorted({k for k in reported_tracks if reported_tracks.count(k) > 1}),
                 "evidence": evidence},
        "standing_still": {"tracks": sorted(still), "median_speed_heights_per_s": moving_flags,
                           "seen_as_moving": [k for k, v in moving_flags.items() if v > 0.3],
                           "reported": [k for k in reported_tracks if k in still and k not in walked_in]},
        "other_violations": [v.type for v in violations if v.type != "zone_intrusion"],
    }
    if out is not None:
        _write_stills(out, violations)
        import cv2
        for k in result["zone"]["walked_in_not_reported"]:
            t, box = walked_in[k]
            image = cv2.imdecode(thumbs[round((t - t0) * CLIP_FPS)], cv2.IMREAD_COLOR)
            b = [int(round(v)) for v in box]
            cv2.rectangle(image, (b[0], b[1]), (b[2], b[3]), (0, 0, 255), 2)
            cv2.polylines(image, [np.array(ZONE, np.int32)], True, (255, 160, 0), 1)
            cv2.imwrite(str(out / f"walked_in_not_reported_track{k}_t{t - t0:.1f}.jpg"), image)
        # each identity switch counted: the two moments side by side, the boxes drawn
        def still(t: float, box: list, colour: tuple) -> Any:
            image = cv2.imdecode(thumbs[round(t * CLIP_FPS)], cv2.IMREAD_COLOR)
            cv2.rectangle(image, (box[0], box[1]), (box[2], box[3]), colour, 2)
            return image
        for e in switches["breaks"]:
            pair = np.hstack([still(e["t"], e["box"], (0, 0, 255)), still(e["t_new"], e["box_new"], (0, 255, 0))])
            cv2.imwrite(str(out / f"break_track{e['ended']}_to{e['taken_up_by']}_t{e['t']:.1f}.jpg"), pair)
        for e in switches["jumps"]:
            pair = np.hstack([still(e["t_from"], e["from"], (0, 0, 255)), still(e["t"], e["to"], (0, 255, 0))])
            cv2.imwrite(str(out / f"jump_track{e['track']}_t{e['t']:.1f}.jpg"), pair)
    return result


def _height(box: tuple) -> float:
    return max(box[3] - box[1], 1.0)


def _feet(box: tuple) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, box[3])


def identity_switches(tracks: dict[int, list], w: int, h: int) -> dict[str, list]:
    breaks, jumps = [], []
    ends = {k: v[-1][:2] for k, v in tracks.items()}
    starts = {k: v[0][:2] for k, v in tracks.items()}
    for k, (t_end, box) in ends.items():
        margin = 0.25 * (box[2] - box[0])
        if box[0] <= margin or box[2] >= w - margin or box[3] >= h - 2:
            continue            # left the picture
        for j, (t_start, box2) in starts.items():
            if j == k or not 0 < t_start - t_end <= 1.5:
                continue
            if math.dist(_feet(box), _feet(box2)) <= 0.6 * _height(box) and abs(_height(box2) / _height(box) - 1) < 0.5:
                breaks.append({"ended": k, "t": round(t_end % 1000, 1), "taken_up_by": j, "box": [round(v) for v in box],
                               "t_new": round(t_start % 1000, 1), "box_new": [round(v) for v in box2]})
                break
    for k, obs in tracks.items():
        for (ta, a, *_), (tb, b, *_) in zip(obs, obs[1:]):
            if tb - ta <= 0.5 and math.dist(_feet(a), _feet(b)) > 0.5 * _height(a):
                jumps.append({"track": k, "t": round(tb % 1000, 1), "from": [round(v) for v in a], "to": [round(v) for v in b],
                              "t_from": round(ta % 1000, 1)})
    return {"breaks": breaks, "jumps": jumps}


def _inside(p: tuple[float, float]) -> bool:
    from drivers.camera.geometry import inside
    return inside(p, tuple(tuple(q) for q in ZONE))


def entries(tracks: dict[int, list]) -> dict[int, tuple[float, tuple]]:
    """Tracks whose feet were outside the zone and then inside it for 0.5 s or more: track id ->
    (time, box) when they had been inside for 0.5 s."""
    out = {}
    for k, obs in tracks.items():
        seen_out, since = False, None
        for t, box, *_ in obs:
            if not _inside(_feet(box)):
                seen_out, since = True, None
            elif seen_out:
                since = t if since is None else since
                if t - since >= 0.5:
                    out[k] = (t, box)
                    break
    return out


def standing(tracks: dict[int, list]) -> dict[int, tuple[float, float]]:
    """Tracks that stood still for STILL_S or more (feet within 0.3 body heights all that time):
    track id -> the first such window (t from, t to)."""
    out = {}
    for k, obs in tracks.items():
        for i, (t, box, *_) in enumerate(obs):
            window = [o for o in obs[i:] if o[0] - t <= STILL_S]
            if window[-1][0] - t < STILL_S * 0.9:
                break
            if all(math.dist(_feet(o[1]), _feet(box)) <= 0.3 * _height(box) for o in window):
                out[k] = (t, window[-1][0])
                break
    return out


def _moving_still(tracks: dict[int, list], still: dict[int, tuple[float, float]]) -> dict[int, float]:
    """For each still track, the tracker's median speed while it stood, in body heights a second:
    above 0.3 (a slow walk is 0.5 to 1) it would be taken as moving."""
    out = {}
    for k, (t0, t1) in still.items():
        obs = [o for o in tracks[k] if t0 <= o[0] <= t1]
        speeds = sorted(o[3] / _height(o[1]) for o in obs)
        out[k] = round(speeds[len(speeds) // 2], 3)
    return out


def _write_stills(out: Path, violations: list) -> None:
    """Each violation's three shots side by side, the subject boxed, the zone drawn."""
    import cv2
    import numpy as np
    out.mkdir(parents=True, exist_ok=True)
    for n, v in enumerate(violations):
        shots = []
        for shot in v.shots:
            image = shot.frame.image.copy()
            cv2.polylines(image, [np.array(ZONE, np.int32)], True, (255, 160, 0), 1)
            b = [int(round(x)) for x in shot.box]
            cv2.rectangle(image, (b[0], b[1]), (b[2], b[3]), (0, 0, 255), 2)
            shots.append(image)
        cv2.imwrite(str(out / f"{n:02d}_{v.type}_track{v.track}.jpg"), np.hstack(shots))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--model", default="nanodet")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="the whole result as JSON")
    ap.add_argument("--out", type=Path, help="write the trigger still of each violation here")
    args = ap.parse_args(argv)
    result = run(args.fps, args.model, args.out, threads=args.threads)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    s = result["identity_switches"]
    z = result["zone"]
    print(f"{result['footage']}: {result['frames_analysed']} frames at {result['fps']:g} fps, model {result['model']}, "
          f"{args.threads} thread(s): {result['ms_per_frame']} ms a frame through the pipeline, CPU "
          f"{result['cpu_percent_per_camera']} % of one core per camera (+ {result['decode_cpu_percent']} % decoding)")
    print(f"person tracks {result['person_tracks']}; identity switches: {s['breaks']} breaks + {s['jumps']} jumps "
          f"= {s['per_person_track']} per person track")
    print(f"zone: {len(z['reports'])} reports (tracks {[r['track'] for r in z['reports']]}), "
          f"{len(z['walked_in_tracks'])} tracks walked in, not reported {z['walked_in_not_reported']}, "
          f"reported twice {z['reported_twice']}, evidence {[e['files'] for e in z['evidence']][:1]}...")
    st = result["standing_still"]
    print(f"standing still >= {STILL_S:g} s: tracks {st['tracks']}, median speed while still (body heights/s) "
          f"{st['median_speed_heights_per_s']}, seen as moving {st['seen_as_moving']}, reported {st['reported']}")
    print(f"other violations: {result['other_violations']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
