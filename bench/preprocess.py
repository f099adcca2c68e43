"""The pipeline's own work around the two networks, before and after it was rewritten on 2026-11-30:
model-input preparation (the one-pass ``to_tensor`` against the whole-batch chain it replaced) and
MoveNet-head decoding (separable distances and a cached centre weight against the full grids).

For every dev image this builds what the served pipeline feeds its two models — the detector's
letterboxed view, and the pose model's crops around the boxes the detector found — and times turning
them into input tensors both ways, and decoding the pose model's outputs for those crops both ways,
alternating over ``--rounds`` rounds (best pass of each). It checks that both ways give the same
result, and prints the pipeline's whole time per image beside it, so the saving reads as a share of
it. Appends the table to bench/RESULTS.md.

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


def decode_full_grids(manifest, outs: dict[str, np.ndarray]) -> np.ndarray:
    """``decode_movenet_heads`` as it was until 2026-11-30 (same arithmetic, full-size grids)."""
    from service.pipeline.decoders import _outputs

    kpt, center, regress, offset = _outputs(manifest, outs)
    n, k, h, w = kpt.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frame_w = 1.0 / (np.sqrt((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) + 1.8)
    cy, cx = np.divmod((center[:, 0] * frame_w).reshape(n, -1).argmax(-1), w)
    b = np.arange(n)
    reg = regress[b, :, cy, cx].reshape(n, k, 2)
    ry, rx = cy[:, None] + reg[..., 0], cx[:, None] + reg[..., 1]
    dist = np.sqrt((yy[None, None] - ry[..., None, None]) ** 2 + (xx[None, None] - rx[..., None, None]) ** 2)
    ky, kx = np.divmod((kpt / (dist + 1.8)).reshape(n, k, -1).argmax(-1), w)
    bi, ki = np.meshgrid(b, np.arange(k), indexing="ij")
    y = (ky + offset[bi, 2 * ki, ky, kx]) / h * manifest.input.height
    x = (kx + offset[bi, 2 * ki + 1, ky, kx]) / w * manifest.input.width
    return np.stack([x, y, kpt[bi, ki, ky, kx]], -1).astype(np.float32)


def view_sizes(views: list[list[np.ndarray]]) -> str:
    """``256×192: 20, 192×256: 5, …`` (width×height: images), most common first."""
    from collections import Counter

    counts = Counter(f"{v[0].shape[1]}×{v[0].shape[0]}" for v in views)
    return ", ".join(f"{size}: {k}" for size, k in counts.most_common())


def _time(fn, inputs, spec) -> float:
    t0 = time.perf_counter()
    for batch in inputs:
        fn(batch, spec)
    return (time.perf_counter() - t0) * 1000


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="posekd bench preprocess", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("POSEKD_MODEL_STORE", ROOT / "model_store")))
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads per session")
    ap.add_argument("--rounds", type=int, default=5, help="alternating passes over the dev images")
    ap.add_argument("--no-record", action="store_true")
    return ap


def _inputs(images, pipe, det, pose) -> tuple[list, list]:
    """Each image's letterboxed detector view, and its pose crops (one list per image that has some)."""
    from service.pipeline import preprocess as pp

    dspec, pspec = det.manifest.input, pose.manifest.input
    views = [[pp.resize_for_detector(im, dspec)[0]] for im in images]
    crops = []
    for im, boxes in zip(images, pipe.detect(det, images)):
        m = [pp.crop_matrix(b, pose.manifest.crop.margin, pspec.width, pspec.height) for b in boxes]
        crops.append([pp.warp_crop(im, k, pspec.width, pspec.height) for k in m])
    return views, [c for c in crops if c]


def _timings(rounds: int, views, crops, outputs, images, pipe, pose, det) -> tuple[dict, float]:  # noqa: PLR0913
    """Best of ``rounds`` alternating passes: the three pieces before and after, and the whole pipeline."""
    from service.pipeline import ImageTask
    from service.pipeline import preprocess as pp
    from service.pipeline.decoders import decode_movenet_heads

    dspec, pspec = det.manifest.input, pose.manifest.input
    best = {"before": [float("inf")] * 3, "after": [float("inf")] * 3}
    ways = {"before": (chained, decode_full_grids), "after": (pp.to_tensor, decode_movenet_heads)}
    whole = float("inf")
    for _ in range(rounds):
        for label, (prepare, decode) in ways.items():
            best[label][0] = min(best[label][0], _time(prepare, views, dspec))
            best[label][1] = min(best[label][1], _time(prepare, crops, pspec))
            best[label][2] = min(best[label][2], _time(lambda o, m, f=decode: f(m, o), outputs, pose.manifest))
        t0 = time.perf_counter()
        for im in images:
            pipe.run(pose, det, [ImageTask(image=im, min_score=0.0, max_people=20)])
        whole = min(whole, (time.perf_counter() - t0) * 1000)
    return best, whole


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    from distill.data import read_coco
    from distill.evaluate import served_pipeline
    from distill.publish import EVAL_SET
    from distill.teachers import load_model_bytes
    from service.pipeline import preprocess as pp
    from service.pipeline.decoders import decode_movenet_heads
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
    views, crops = _inputs(images, pipe, det, pose)
    for got, want in ((pp.to_tensor(v, dspec), chained(v, dspec)) for v in views[:3] + crops[:3]):
        if got.shape != want.shape or float(np.abs(got - want).max()) > 1e-5:
            print("to_tensor and the reference chain disagree", file=sys.stderr)
            return 1

    if pose.manifest.output.decoder != "movenet_heads":
        print(f"{pose.manifest.name} is not decoded as MoveNet heads", file=sys.stderr)
        return 2
    outputs = [pose.session.run(pp.to_tensor(c, pspec)) for c in crops]
    for outs in outputs[:3]:
        if not np.array_equal(decode_movenet_heads(pose.manifest, outs), decode_full_grids(pose.manifest, outs)):
            print("the two MoveNet-head decoders disagree", file=sys.stderr)
            return 1

    best, whole = _timings(args.rounds, views, crops, outputs, images, pipe, pose, det)
    n = len(images)
    rows = [f"| {label} | {v / n:.2f} | {c / n:.2f} | {d / n:.2f} | {(v + c + d) / n:.2f} | "
            f"{(v + c + d) / whole * 100:.1f} % |" for label, (v, c, d) in best.items()]
    n_crops = sum(len(c) for c in crops)
    lines = ["| code | detector input ms/image | pose input ms/image | pose decoding ms/image | all three | "
             "share of the pipeline's time |", "|---|---|---|---|---|---|", *rows, "",
             f"{n} dev images (`coco_mini_train`): one letterboxed view each for {s.default_detector} "
             f"({view_sizes(views)}), {n_crops} crops of {pspec.width}×{pspec.height} in all for "
             f"{s.default_pose_model} (the boxes above the service's detector threshold), each image's crops "
             f"as one batch; best of {args.rounds} alternating passes. The whole pipeline (with the new "
             f"code) took {whole / n:.1f} ms per image in the same run. Before and after give the same "
             "tensors (within 1e-5) and the same keypoints (checked on the first images)."]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        record("Pipeline code around the networks: before and after the 2026-11-30 rewrite",
               "posekd bench preprocess " + " ".join(argv or []), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
