"""ONNX Runtime's thread spinning on and off, end to end, side by side in one run.

The pipeline runs two sessions in turn for every image (person detector, then the pose model on the
crops), each with its own intra-op thread pool. ONNX Runtime lets idle pool threads busy-wait by
default; this benchmark measures what that costs when two pools share the cores. For each pipeline it
times every dev image through ``PosePipeline.run`` (decoded image in, people out: letterbox, detector,
crops, pose model, decoding), alternating the two settings over ``--rounds`` rounds and keeping each
one's best pass. Appends the table to bench/RESULTS.md.

    posekd bench runtime [--pairs detector-s@production,pose-s@production ...] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .common import ROOT, record

MULTIPOSE = "movenet-multipose"


def _load(ref: str, store, threads: int, spinning: bool):
    from distill.teachers import load_model_bytes
    from service.pipeline.runtime import OnnxModel
    from service.store.registry import ServedModel

    size = (512, 512) if ref == MULTIPOSE else None
    model, data = load_model_bytes(ref, store=store, threads=threads, input_size=size)
    runner = OnnxModel(model.manifest, data, device="cpu", intra_threads=threads, spinning=spinning)
    return ServedModel(model.manifest, runner, (0, 0))


def _pass(pipe, pose, detector, images) -> tuple[float, float, float]:
    """Mean ms per image: whole run, detect stage, pose stage."""
    from service.pipeline import ImageTask

    total = det = pos = 0.0
    for image in images:
        t0 = time.perf_counter()
        res = pipe.run(pose, detector, [ImageTask(image=image, min_score=0.0, max_people=20)])[0]
        total += time.perf_counter() - t0
        det += res.timing_ms["detect"]
        pos += res.timing_ms["pose"]
    n = max(1, len(images))
    return total / n * 1000, det / n, pos / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="posekd bench runtime", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("POSEKD_MODEL_STORE", ROOT / "model_store")))
    ap.add_argument("--pairs", nargs="+", default=None,
                    help="DETECTOR,POSE pipelines to time (default: the served defaults, and MultiPose at "
                         "512 px → Thunder)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads per session")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the dev images per setting")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)

    from distill.data import read_coco
    from distill.evaluate import served_pipeline
    from distill.publish import EVAL_SET
    from service.settings import Settings
    from service.store import ModelStore

    if not EVAL_SET.is_file():
        print(f"needs the evaluation set {EVAL_SET}", file=sys.stderr)
        return 2
    s = Settings()
    pairs = args.pairs or [f"{s.default_detector}@production,{s.default_pose_model}@production",
                           f"{MULTIPOSE},movenet-thunder"]
    store = ModelStore(args.store)
    images = [r.load() for r in read_coco(EVAL_SET)]
    pipe = served_pipeline()  # as the evaluation runs it: the service's defaults
    rows = []
    for pair in pairs:
        det_ref, _, pose_ref = pair.partition(",")
        if not pose_ref:
            print(f"--pairs takes DETECTOR,POSE, not {pair!r}", file=sys.stderr)
            return 2
        best = {True: (float("inf"),) * 3, False: (float("inf"),) * 3}
        models = {spin: (_load(det_ref, store, args.threads, spin), _load(pose_ref, store, args.threads, spin))
                  for spin in (True, False)}
        for det, pose in models.values():
            _pass(pipe, pose, det, images[:3])  # warm-up
        for _ in range(args.rounds):
            for spin, (det, pose) in models.items():
                got = _pass(pipe, pose, det, images)
                if got[0] < best[spin][0]:
                    best[spin] = got
        on, off = best[True], best[False]
        rows.append(f"| {det_ref} → {pose_ref} | {on[0]:.1f} ({on[1]:.1f} + {on[2]:.1f}) | "
                    f"{off[0]:.1f} ({off[1]:.1f} + {off[2]:.1f}) | {off[0] / on[0]:.2f} |")
        print(rows[-1], flush=True)
    lines = ["| pipeline | spinning on: ms/image (detect + pose) | spinning off | off / on |",
             "|---|---|---|---|", *rows, "",
             f"{len(images)} dev images (`coco_mini_train`), boxes above the service's detector threshold "
             f"({pipe.detector_threshold:g}) as in the evaluation; "
             f"{args.threads} intra-op threads per session, best of {args.rounds} alternating passes. "
             f"The service default is off (`POSEKD_ORT_SPINNING=false`)."]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        record("Runtime: ONNX Runtime thread spinning on vs off, end to end",
               "posekd bench runtime " + " ".join(argv or []), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
