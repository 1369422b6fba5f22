"""Detector runtime overhead: ms per frame through ``models.runtime.Detector`` beside bare onnxruntime.

    python bench/detector.py                       # the real model (nanodet), 1 and 2 threads
    python bench/detector.py --manifest vehicles   # the simulated junction's model
    python bench/detector.py --manifest PATH --threads 2 --frames 40 --rounds 5

Frames are 1280x720: frames of real footage (vtest.avi of Debian's opencv-doc, 768x576, scaled up;
``--frames-from sim`` or without the footage: junction scenes from the camera simulator's renderer).
For each frame:

- ``bare``: ``detector.session.run`` on the already preprocessed input tensor of that frame (the
  model alone; what a hand-written loop around onnxruntime costs at least);
- ``detector``: ``detector.detect(frame)``: letterbox and tensor conversion, the same
  ``session.run``, decoding, NMS and boxes back to frame pixels.

The two are interleaved frame by frame so that a busy neighbour on a shared 2-core machine slows
both alike. Overhead = (detector - bare) / bare, on medians; the breakdown is Detector.last_timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.runtime import Detector  # noqa: E402

SHIPPED = "nanodet"


def frames(n: int, source: str = "real") -> tuple[list, str]:
    """n frames of 1280x720, and where they came from."""
    if source == "real":
        import cv2

        from models.eval_footage import footage, read_frames
        path = footage()
        if path is not None:
            got = read_frames(path, list(range(0, 20 * n, 20)))
            return [cv2.resize(f, (1280, 720), interpolation=cv2.INTER_LINEAR) for f in got.values()], \
                f"{path.name} scaled to 1280x720"
    from tests.hardware_sim.junction import Junction, JunctionRenderer, demo_scene
    J = Junction()
    renderer = JunctionRenderer(J, seed=3)
    return [renderer.render(demo_scene(J, seed=i, t=i * 0.1)) for i in range(n)], "rendered junction scenes"


def bench(manifest: str | Path, threads: int, imgs: list, rounds: int) -> dict:
    det = Detector(manifest, threads=threads)
    blobs = [det.preprocess(f)[0].copy() for f in imgs]    # a uint8 input is the detector's own canvas
    feeds = [{det.input_name: b, **det.extra_feeds} for b in blobs]
    for f in imgs[:3]:                      # warm up both paths
        det.detect(f)
        det.session.run(None, feeds[0])
    bare, full, pre, inf, post = [], [], [], [], []
    n_dets = 0
    for _ in range(rounds):
        for f, feed in zip(imgs, feeds):
            # each path gets its input freshly written, as a camera reader hands over a just-decoded
            # frame (and a hand-written loop its just-made tensor); copies are not timed
            fresh_feed = {k: v.copy() for k, v in feed.items()}
            t0 = time.perf_counter()
            det.session.run(None, fresh_feed)
            bare.append((time.perf_counter() - t0) * 1e3)
            fresh = f.copy()
            t1 = time.perf_counter()
            dets = det.detect(fresh)
            full.append((time.perf_counter() - t1) * 1e3)
            t = det.last_timing
            pre.append(t.preprocess_ms)
            inf.append(t.infer_ms)
            post.append(t.postprocess_ms)
            n_dets += len(dets)
    b, d = statistics.median(bare), statistics.median(full)
    return {"threads": threads, "bare": b, "detector": d, "overhead": (d - b) / b * 100,
            "pre": statistics.median(pre), "infer": statistics.median(inf), "post": statistics.median(post),
            "dets": n_dets / (rounds * len(imgs)), "p90": sorted(full)[int(0.9 * len(full))]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", default=SHIPPED, help="a shipped model's name or a manifest path")
    ap.add_argument("--frames-from", choices=["real", "sim"], default="real")
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    imgs, where = frames(args.frames, args.frames_from)
    det = Detector(args.manifest)
    m = det.manifest
    print(f"model {m.name or m.file}: {m.format}, input {m.input.width}x{m.input.height}, "
          f"{m.model_path.stat().st_size / 1e6:.2f} MB; {len(imgs)} frames ({where}), {args.rounds} rounds")
    print(f"{'threads':>7} {'bare ms':>8} {'detector ms':>11} {'overhead':>8}   {'pre':>5} {'infer':>6} {'post':>5} "
          f"{'p90':>6} {'dets/frame':>10}")
    for th in args.threads:
        r = bench(args.manifest, th, imgs, args.rounds)
        print(f"{r['threads']:>7} {r['bare']:>8.2f} {r['detector']:>11.2f} {r['overhead']:>7.1f}%   "
              f"{r['pre']:>5.2f} {r['infer']:>6.2f} {r['post']:>5.2f} {r['p90']:>6.2f} {r['dets']:>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
