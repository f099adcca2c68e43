"""``posekd bench tracking``: how tracks hold up, for settings side by side in one run.

* ``vtest.avi`` (OpenCV's sample, 795 frames, about 20 walkers): tracks, people per frame, and four
  identities checked by eye: a man and a woman who cross behind a sign post (frames 456 → 490) and a
  couple walking side by side (frames 290 → 335). Each is the person nearest a position read off the
  frames; the check passes when the same track id is nearest at both frames. The positions were read
  from drawn frames (the man in a black jacket and jeans walks right, the woman in a red coat walks
  left; the couple keeps its order);
* every clip of ``unlabeled/videos``: tracks and people per frame; five of them show one person the
  whole time (marked), where one track is right.

Settings: ``before`` is the tracker and detector before the people work (detector-s v3 at its 256 px,
no OKS duplicate suppression, no appearance cue); ``tracker only`` the new tracker behind the old
detector; ``no recovery`` the defaults without OC-SORT's observation-centric recovery; ``after`` the defaults."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.common import record
from service.shared import data_dir

# (frame, x, y): the centre of the same person's box at two frames of vtest.avi, read off drawn frames
SAME_PERSON = {
    "crossing: man, black jacket": [(456, 346.5, 250.0), (490, 535.0, 305.5)],
    "crossing: woman, red coat": [(456, 548.0, 274.5), (490, 371.0, 234.0)],
    "couple: man": [(290, 610.5, 183.5), (335, 645.0, 246.5)],
    "couple: woman": [(290, 627.5, 184.0), (335, 665.0, 245.0)],
}
ONE_PERSON = {"taiji.mp4", "vid.mp4", "05_default_juggle.mp4", "clean_and_jerk.mp4", "ta_chi.mp4"}
SETTINGS: dict[str, dict[str, object]] = {
    "before": {"default_detector": "detector-s:3", "pose_nms_oks": 0.0, "track_appearance_weight": 0.0,
               "track_low_score": 0.25},
    "tracker only": {"default_detector": "detector-s:3"},
    "no recovery": {"track_recovery": False},
    "after": {},
}


def nearest_track(result: dict, frame: int, x: float, y: float) -> int | None:
    people = result["frames"][frame]["people"]
    if not people:
        return None

    def distance(p):
        b = p["bbox"]
        return ((b[0] + b[2]) / 2 - x) ** 2 + ((b[1] + b[3]) / 2 - y) ** 2
    return min(people, key=distance)["track_id"]


def summary(result: dict) -> tuple[int, float]:
    people = sum(len(f["people"]) for f in result["frames"])
    return len(result["tracks"]), people / max(len(result["frames"]), 1)


def main(argv: list[str] | None = None) -> int:
    from service.settings import Settings
    from service.video.offline import run

    ap = argparse.ArgumentParser(prog="posekd bench tracking", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=data_dir())
    ap.add_argument("--setting", action="append", choices=list(SETTINGS), help="default: all of them")
    ap.add_argument("--no-clips", action="store_true", help="vtest.avi only")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    vtest = args.data / "opencv_samples" / "vtest.avi"
    if not vtest.exists():
        raise SystemExit(f"{vtest} not found; set POSEKD_DATA")
    labels = args.setting or list(SETTINGS)
    clips = [] if args.no_clips else sorted((args.data / "unlabeled" / "videos").rglob("*.mp4"))
    rows: dict[str, dict] = {}
    for label in labels:
        s = Settings(**SETTINGS[label])  # type: ignore[arg-type]
        t0 = time.perf_counter()
        result = run(s, vtest, None, None, quiet=True)
        wall = time.perf_counter() - t0
        kept = {name: nearest_track(result, *a) == nearest_track(result, *b) for name, (a, b) in SAME_PERSON.items()}
        rows[label] = {"vtest": (*summary(result), result["video"]["frames"] / wall), "kept": kept, "clips": {}}
        print(label, rows[label]["vtest"], kept, flush=True)
        for clip in clips:
            rows[label]["clips"][clip.name] = summary(run(s, clip, None, None, quiet=True))
            print(" ", clip.name, rows[label]["clips"][clip.name], flush=True)
    lines = ["| setting | vtest tracks | people/frame | frames/s | " + " | ".join(SAME_PERSON) + " |",
             "|---|---|---|---|" + "---|" * len(SAME_PERSON)]
    for label, r in rows.items():
        tracks, ppf, fps = r["vtest"]
        lines.append(f"| {label} | {tracks} | {ppf:.2f} | {fps:.1f} | "
                     + " | ".join("kept" if r["kept"][k] else "**switched**" for k in SAME_PERSON) + " |")
    if clips:
        lines += ["", "| clip | " + " | ".join(f"{label}: tracks (people/frame)" for label in rows) + " |",
                  "|---|" + "---|" * len(rows)]
        for clip in clips:
            mark = " (one person)" if clip.name in ONE_PERSON else ""
            lines.append(f"| {clip.name}{mark} | " + " | ".join(
                f"{r['clips'][clip.name][0]} ({r['clips'][clip.name][1]:.2f})" for r in rows.values()) + " |")
    lines += ["", "Settings: " + "; ".join(f"`{k}` = {v or 'the defaults'}" for k, v in SETTINGS.items()
                                         if k in rows) + ". Identity: the track nearest an eye-read position "
              "of the same person at both frames (bench/tracking.py)."]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        record("Tracking: tracks, identities through crossings, one-person clips",
               "posekd bench tracking " + " ".join(argv or []), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
