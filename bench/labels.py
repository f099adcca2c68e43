"""``posekd bench labels``: which people the detector's training labels hold, against human labels.

The person detector learns the boxes a recipe of teachers gives (two detection teachers joined, each box
kept where Thunder finds a person in it); it cannot learn a person its labels leave out. This measures,
for each recipe and for the detectors themselves, the share of labelled people a box covers (IoU ≥ 0.5)
and the boxes given, on two sets of real human labels:

* ``mmpose_tests`` (the signal a recipe is chosen by): the COCO, OCHuman, CrowdPose, AI Challenger,
  ExLPose (dim light) and MHP frames of ``labeled/mmpose_tests``, 16 pictures with 43 labelled people,
  never trained on and not the dev set;
* the dev set (``coco_mini_train``, the 28 images with labelled keypoints), reported only.

A box on a person nobody labelled counts as unmatched, so "matched share" is a floor of the precision."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from bench.common import ROOT, record

MMPOSE_SETS = ["coco/test_coco.json", "ochuman/test_ochuman.json", "crowdpose/test_crowdpose.json",
               "aic/test_aic.json", "exlpose/test_exlpose.json", "mhp/test_mhp.json"]
# label recipes: LABEL=solo:S,keypoints:K (CenterNet ∪ MultiPose, confirmed by Thunder), or a detector
DEFAULT_RECIPES = ["solo 0.4, 4 keypoints (detector-s v4's labels)=solo:0.4,keypoints:4",
                   "solo 0.25, 4 keypoints=solo:0.25,keypoints:4",
                   "solo 0.2, 3 keypoints=solo:0.2,keypoints:3",
                   "solo 0.15, 3 keypoints=solo:0.15,keypoints:3",
                   "solo 0.15, 2 keypoints=solo:0.15,keypoints:2",
                   "CenterNet alone, 4 keypoints=only:centernet,keypoints:4",
                   "CenterNet alone, unconfirmed=only:centernet,keypoints:0",
                   "MultiPose alone, unconfirmed=only:movenet-multipose,keypoints:0"]


def mmpose_pictures(data: Path) -> list[tuple[Path, np.ndarray]]:
    """(picture, labelled boxes (M, 4) as corners) of the mmpose test frames."""
    out = []
    for name in MMPOSE_SETS:
        doc = json.loads((data / "labeled" / "mmpose_tests" / name).read_text())
        folder = (data / "labeled" / "mmpose_tests" / name).parent
        for im in doc["images"]:
            boxes = np.array([a["bbox"] for a in doc["annotations"] if a["image_id"] == im["id"]],
                             np.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            out.append((folder / im["file_name"], boxes))
    return out


def dev_pictures() -> list[tuple[Path, np.ndarray]]:
    from distill.data import read_coco
    from distill.publish import EVAL_SET

    out = []
    for r in read_coco(EVAL_SET):
        boxes = [p.box for p in r.people if p.keypoints is not None and (p.keypoints[:, 2] > 0).any()]
        out.append((Path(r.path), np.array(boxes, np.float32).reshape(-1, 4)))
    return out


def labeller(spec: str, store, threads: int):
    """The boxes of a recipe ``solo:S,keypoints:K[,only:TEACHER]`` or of a detector ``detector:REF``."""
    from distill.teachers import detection_labeller

    opts = dict(part.partition(":")[::2] for part in spec.split(","))
    if "detector" in opts:
        return detection_labeller(opts["detector"], store, threads=threads)
    keypoints = int(opts.get("keypoints", 4))
    return detection_labeller(opts.get("only", "centernet+movenet-multipose"), store,
                              confirm="movenet-thunder" if keypoints else None, confirm_keypoints=keypoints,
                              solo=float(opts.get("solo", 0.4)), threads=threads)


def recall_on(pictures, source) -> tuple[int, int, int]:
    """(labelled people covered, labelled people, boxes given)."""
    import cv2

    from distill.detector import match_boxes

    hit = total = given = 0
    for path, truth in pictures:
        boxes = source.boxes(cv2.imread(str(path)))
        hit += match_boxes(boxes, truth, 0.5)
        total += len(truth)
        given += len(boxes)
    return hit, total, given


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="posekd bench labels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("POSEKD_MODEL_STORE", ROOT / "model_store")))
    ap.add_argument("--recipe", action="append", help="LABEL=solo:S,keypoints:K[,only:TEACHER] or LABEL=detector:REF")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)

    from distill.publish import DATA
    from service.store import ModelStore

    store = ModelStore(args.store)
    sets = {"mmpose_tests": mmpose_pictures(Path(DATA)), "dev": dev_pictures()}
    lines = ["| labels | mmpose_tests: people covered | boxes | matched share | dev: people covered | boxes | "
             "matched share |", "|---|---|---|---|---|---|---|"]
    for text in args.recipe or DEFAULT_RECIPES:
        label, _, spec = text.partition("=")
        source = labeller(spec, store, args.threads)
        cells = []
        for pictures in sets.values():
            hit, total, given = recall_on(pictures, source)
            cells += [f"{hit / max(total, 1):.3f} ({hit}/{total})", str(given), f"{hit / max(given, 1):.2f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    n_mm = len(sets["mmpose_tests"])
    lines += ["", f"Recipes: CenterNet ∪ MultiPose (long side 512) boxes above 0.15, a box only one of them found "
              f"kept from `solo`, then kept where Thunder finds that many keypoints ≥ 0.3 inside the box (grown "
              f"10 %); detectors at their served size and threshold 0.15. Covered: labelled people a box matches "
              f"at IoU ≥ 0.5 (each box once). mmpose_tests: {n_mm} pictures of `labeled/mmpose_tests` (the choice "
              f"signal); dev: coco_mini_train's images with labelled keypoints (reported only)."]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        record("Detector training labels against human labels", "posekd bench labels " + " ".join(argv or []), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
