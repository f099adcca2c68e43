"""Students against their teachers, side by side in one run: OKS AP on coco_mini_train with
ground-truth boxes, parameters, GFLOPs and ONNX Runtime latency per crop (batch 1 and 8), then end to
end (detector + pose, no ground-truth boxes): AP and ms per image. Appends the table to
bench/RESULTS.md.

    posekd bench students [--pose pose-s pose-t pose-r] [--detector detector-s] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import ROOT, record


def multipose_alone(model, records) -> tuple[list, float]:
    """MultiPose's own keypoints (its [N, 6, 56] rows), as COCO results; ms per image."""
    import time

    import numpy as np

    from service.pipeline import preprocess as pp

    spec = model.manifest.input
    results, elapsed = [], 0.0
    for r in records:
        image = r.load()
        t0 = time.perf_counter()
        view, (sx, sy) = pp.resize_for_detector(image, spec)
        out = model.runner.run(pp.to_tensor([view], spec))[model.manifest.output.names[0]][0]
        elapsed += time.perf_counter() - t0
        for row in out:
            if row[55] < 0.05:
                continue
            kp = row[:51].reshape(17, 3)
            xy = np.stack([kp[:, 1] * spec.width / sx, kp[:, 0] * spec.height / sy, kp[:, 2]], -1)
            results.append({"image_id": r.image_id, "category_id": 1, "keypoints": xy.reshape(-1).tolist(),
                            "score": float(row[55])})
    return results, elapsed / max(1, len(records)) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="posekd bench students", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("POSEKD_MODEL_STORE", ROOT / "model_store")))
    ap.add_argument("--pose", nargs="+", default=["pose-s", "pose-t", "pose-r"])
    ap.add_argument("--detector", nargs="+", default=["detector-s"])
    ap.add_argument("--teachers", nargs="+", default=["movenet-thunder", "movenet-lightning"])
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--runs", type=int, default=40, help="timed runs per latency")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)

    from distill.cli import EVAL_SET
    from distill.data import read_coco
    from distill.evaluate import coco_ap, evaluate, predict
    from distill.teachers import load_model_bytes
    from service.store import ModelStore

    if not EVAL_SET.is_file():
        print(f"needs the evaluation set {EVAL_SET}", file=sys.stderr)
        return 2
    store = ModelStore(args.store)
    rows, e2e = [], []
    models = {}
    for ref in args.teachers + args.pose:
        try:
            models[ref] = load_model_bytes(ref, store=store, threads=args.threads)
        except Exception as exc:  # a student not trained yet: say so, keep going
            print(f"skipping {ref}: {exc}", file=sys.stderr)
    for ref, (model, data) in models.items():
        r = evaluate(model, data, annotations=EVAL_SET, speed=True, speed_runs=args.runs)
        rows.append((ref, r))
        print(ref, r["gt_boxes"], r["ms_b1"], r["ms_b8"], flush=True)

    records = read_coco(EVAL_SET)
    ids = [r.image_id for r in records]
    detectors = {}
    mp, _ = load_model_bytes("movenet-multipose", store=store, threads=args.threads, input_size=(512, 512))
    detectors["movenet-multipose (long side 512)"] = mp
    for ref in args.detector:
        try:
            detectors[ref] = load_model_bytes(ref, store=store, threads=args.threads)[0]
        except Exception as exc:
            print(f"skipping {ref}: {exc}", file=sys.stderr)
    pairs = [("movenet-multipose (long side 512)", "movenet-thunder")]
    pairs += [(d, p) for d in args.detector if d in detectors for p in args.pose if p in models]
    for det, pose in pairs:
        predict(models[pose][0], records[:3], detectors[det])  # warm-up
        res, ms = predict(models[pose][0], records, detectors[det])
        ap_ = coco_ap(EVAL_SET, res, ids)
        e2e.append((f"{det} → {pose}", ap_, ms))
        print(det, pose, ap_, round(ms, 1), flush=True)

    mp_alone, mp_ms = multipose_alone(detectors["movenet-multipose (long side 512)"], records)
    e2e.insert(0, ("movenet-multipose (long side 512) alone, its own keypoints", coco_ap(EVAL_SET, mp_alone, ids),
                   mp_ms))

    thunder = dict(rows).get("movenet-thunder")
    lines = ["| model | role | AP (GT boxes) | AR | params | GFLOPs | ms/crop b=1 | ms/crop b=8 | × Thunder b=1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for ref, r in rows:
        role = "teacher" if ref == "movenet-thunder" else ("Google's fast baseline" if ref == "movenet-lightning"
                                                            else "student")
        speed = f"{thunder['ms_b1'] / r['ms_b1']:.1f}×" if thunder else ""
        lines.append(f"| {r['model']} | {role} | {r['gt_boxes']['AP']:.3f} | {r['gt_boxes']['AR']:.3f} | "
                     f"{r['params'] / 1e6:.2f}M | {r['gflops']:.2f} | {r['ms_b1']:.2f} | {r['ms_b8']:.2f} | {speed} |")
    lines += ["", "| end to end: detector → pose | AP | AR | ms/image |", "|---|---|---|---|"]
    for label, ap_, ms in e2e:
        lines.append(f"| {label} | {ap_['AP']:.3f} | {ap_['AR']:.3f} | {ms:.1f} |")
    lines += ["", f"Evaluation set: `{EVAL_SET.relative_to(EVAL_SET.parents[3])}` ({len(records)} images, "
              f"{sum(len(r.people) for r in records)} people), pycocotools OKS AP, person score = mean keypoint "
              f"score; ONNX Runtime CPU, {args.threads} threads."]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        record("Students vs teachers (accuracy, size, speed)", "posekd bench students " + " ".join(argv or []), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
