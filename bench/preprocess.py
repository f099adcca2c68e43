"""Model-input preparation: the one-pass ``to_tensor`` against the whole-batch chain it replaced.

For every dev image this builds what the served pipeline feeds its two models — the detector's
letterboxed view, and the pose model's crops around the boxes the detector found — and times turning
them into input tensors both ways, alternating over ``--rounds`` rounds (best pass of each). It checks
that both give the same tensor, and prints the pipeline's whole time per image beside it, so the saving
reads as a share of it. Appends the table to bench/RESULTS.md.

    posekd bench preprocess [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from .common import ROOT, record


def chained(images: list[np.ndarray], spec) -> np.ndarray:
    """The implementation ``to_tensor`` had until 2026-11-30: flip, cast, scale, shift, transpose, copy."""
    batch = np.ascontiguousarray(np.stack(images))
    if spec.color == "RGB":
        batch = batch[..., ::-1]
    mean = np.asarray(spec.mean, np.float32)
    inv_std = 1.0 / np.asarray(spec.std, np.float32)
    x = ((batch.astype(np.float32) * spec.scale - mean) * inv_std).astype(spec.dtype, copy=False)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def _time(fn, inputs, spec) -> float:
    t0 = time.perf_counter()
    for batch in inputs:
        fn(batch, spec)
    return (time.perf_counter() - t0) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="posekd bench preprocess", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("POSEKD_MODEL_STORE", ROOT / "model_store")))
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads per session")
    ap.add_argument("--rounds", type=int, default=5, help="alternating passes over the dev images")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)

    from distill.cli import EVAL_SET
    from distill.data import read_coco
    from distill.evaluate import served_pipeline
    from distill.teachers import load_model_bytes
    from service.pipeline import ImageTask
    from service.pipeline import preprocess as pp
    from service.settings import Settings
    from service.store import ModelStore

    if not EVAL_SET.is_file():
        print(f"needs the evaluation set {EVAL_SET}", file=sys.stderr)
        return 2
    s = Settings()
    store = ModelStore(args.store)
    det = load_model_bytes(f"{s.default_detector}@production", store=store, threads=args.threads)[0]
    pose = load_model_bytes(f"{s.default_pose_model}@production", store=store, threads=args.threads)[0]
    images = [r.load() for r in read_coco(EVAL_SET)]
    pipe = served_pipeline()
    dspec, pspec = det.manifest.input, pose.manifest.input
    views = [[pp.resize_for_detector(im, dspec)[0]] for im in images]
    crops = []
    for im, boxes in zip(images, pipe.detect(det, images)):
        m = [pp.crop_matrix(b, pose.manifest.crop.margin, pspec.width, pspec.height) for b in boxes]
        crops.append([pp.warp_crop(im, k, pspec.width, pspec.height) for k in m])
    crops = [c for c in crops if c]
    for got, want in ((pp.to_tensor(v, dspec), chained(v, dspec)) for v in views[:3] + crops[:3]):
        if got.shape != want.shape or float(np.abs(got - want).max()) > 1e-5:
            print("to_tensor and the reference chain disagree", file=sys.stderr)
            return 1

    best = {"chain": [float("inf")] * 2, "one pass": [float("inf")] * 2}
    whole = float("inf")
    for _ in range(args.rounds):
        for label, fn in (("chain", chained), ("one pass", pp.to_tensor)):
            best[label][0] = min(best[label][0], _time(fn, views, dspec))
            best[label][1] = min(best[label][1], _time(fn, crops, pspec))
        t0 = time.perf_counter()
        for im in images:
            pipe.run(pose, det, [ImageTask(image=im, min_score=0.0, max_people=20)])
        whole = min(whole, (time.perf_counter() - t0) * 1000)
    n = len(images)
    rows = [f"| {label} | {v / n:.2f} | {c / n:.2f} | {(v + c) / n:.2f} | {(v + c) / whole * 100:.1f} % |"
            for label, (v, c) in best.items()]
    n_crops = sum(len(c) for c in crops)
    lines = ["| model input from pixels | detector view ms/image | pose crops ms/image | both | share of the "
             "pipeline's time |", "|---|---|---|---|---|", *rows, "",
             f"{n} dev images (`coco_mini_train`): one {dspec.width}×{dspec.height} view each for "
             f"{s.default_detector}, {n_crops} crops of {pspec.width}×{pspec.height} in all for "
             f"{s.default_pose_model} (the boxes above the service's detector threshold), each image's crops "
             f"as one batch; best of {args.rounds} alternating passes. The whole pipeline (with the one-pass "
             f"version) took {whole / n:.1f} ms per image in the same run. Both ways give the same tensor "
             "(checked on the first images)."]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        record("Preprocessing: one-pass model input vs the whole-batch chain",
               "posekd bench preprocess " + " ".join(argv or []), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
