"""``posekd bench video``: frames per second on ``vtest.avi`` with the default models, keyframe
propagation vs per-frame detection side by side in one run, how much the two agree, and how the tracks
hold up (count, length) on every clip of ``../shared/data/unlabeled/videos``."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from service.shared import data_dir

from .common import record


def agreement(a: dict, b: dict, threshold: float = 0.5) -> dict:
    """People of run ``b`` (the reference) found by run ``a``: OKS-matched per frame (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    from service.geometry import oks_matrix as oks

    found, total, scores = 0, 0, []
    for fa, fb in zip(a["frames"], b["frames"]):
        pb = fb["people"]
        total += len(pb)
        if not pb or not fa["people"]:
            continue
        ka = np.array([p["keypoints"] for p in fa["people"]], np.float32)
        kb = np.array([p["keypoints"] for p in pb], np.float32)
        areas = np.array([(p["bbox"][2] - p["bbox"][0]) * (p["bbox"][3] - p["bbox"][1]) for p in pb])
        sim = np.maximum(oks(kb, ka, areas), 0)
        rows, cols = linear_sum_assignment(-sim)
        good = sim[rows, cols] >= threshold
        found += int(good.sum())
        scores += sim[rows, cols][good].tolist()
    return {"recall": found / max(total, 1), "oks": float(np.mean(scores)) if scores else 0.0}


def tracks_summary(result: dict) -> str:
    lengths = [t["frames"] for t in result["tracks"]]
    people = sum(len(f["people"]) for f in result["frames"])
    return (f"{len(lengths)} tracks, mean length {np.mean(lengths) if lengths else 0:.1f} frames, "
            f"{people / max(len(result['frames']), 1):.2f} people/frame")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="posekd bench video", description=__doc__)
    ap.add_argument("--data", type=Path, default=data_dir())
    ap.add_argument("--no-clips", action="store_true", help="vtest.avi only")
    ap.add_argument("--no-record", action="store_true")
    return ap


def _runs(s, vtest: Path) -> dict:
    """vtest with detection on every frame, with keyframes + propagation, and with the overlay rendered."""
    from service.video.offline import run

    runs = {}
    for label, k, render in (("per-frame detection (keyframe_interval 1)", 1, False),
                             (f"keyframes + propagation (keyframe_interval {s.video_keyframe_interval}, "
                              f"window {s.video_window})", None, False),
                             ("keyframes + propagation, overlay rendered", None, True)):
        out = Path("/tmp") / f"posekd-bench-{os.getpid()}.mp4" if render else None
        t0 = time.perf_counter()
        result = run(s, vtest, None, out, keyframe_interval=k, quiet=True)
        wall = time.perf_counter() - t0
        runs[label] = (result, wall)
        print(f"{label}: {result['video']['frames'] / wall:.1f} frames/s; {tracks_summary(result)}", flush=True)
        if out:
            out.unlink(missing_ok=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    from service.settings import get_settings
    from service.video.offline import run

    s = get_settings()
    args = _parser().parse_args(argv)
    vtest = args.data / "opencv_samples" / "vtest.avi"
    if not vtest.exists():
        raise SystemExit(f"{vtest} not found; set POSEKD_DATA")

    runs = _runs(s, vtest)
    labels = list(runs)
    base, prop = runs[labels[0]], runs[labels[1]]
    agree = agreement(prop[0], base[0])
    lines = ["| vtest.avi (768×576, 795 frames, 10 fps) | frames/s | × real time | keyframes | tracks |",
             "|---|---|---|---|---|"]
    for label, (result, wall) in runs.items():
        fps = result["video"]["frames"] / wall
        lines.append(f"| {label} | {fps:.1f} | {fps / result['video']['fps']:.2f} | "
                     f"{result['stats']['keyframe_ratio']:.0%} | {tracks_summary(result)} |")
    speedup = base[1] / prop[1]
    lines += ["", f"**Propagation speed-up: {speedup:.2f}×** (goal ≥ 1.5×); end to end including decode and "
                  f"JSON, wall clock. Agreement with per-frame detection: {agree['recall']:.1%} of its people "
                  f"found on the same frame at OKS ≥ 0.5, mean OKS {agree['oks']:.3f} over those."]

    if not args.no_clips:
        clips = sorted((args.data / "unlabeled" / "videos").rglob("*.mp4"))
        lines += ["", "| clip | size | frames | frames/s | keyframes | tracks |", "|---|---|---|---|---|---|"]
        for clip in clips:
            t0 = time.perf_counter()
            try:
                result = run(s, clip, None, None, quiet=True)
            except Exception as exc:  # a clip over the limits is reported, not fatal
                lines.append(f"| {clip.relative_to(args.data)} | – | – | – | – | {exc} |")
                continue
            wall = time.perf_counter() - t0
            v = result["video"]
            lines.append(f"| {clip.relative_to(args.data / 'unlabeled' / 'videos')} | {v['width']}×{v['height']} | "
                         f"{v['frames']} | {v['frames'] / wall:.1f} | {result['stats']['keyframe_ratio']:.0%} | "
                         f"{tracks_summary(result)} |")
            print(lines[-1], flush=True)
    lines += ["", f"Models: pose `{s.default_pose_model}`, detector `{s.default_detector}`; One-Euro smoothing on; "
                  f"ORT intra-op threads {s.ort_intra_threads or 'default'}."]
    table = "\n".join(lines)
    print("\n" + table)
    if not args.no_record:
        command = ("posekd bench video " + " ".join(argv or [])).strip()
        record("Video: keyframe propagation vs per-frame detection", command, table)
    return 0
