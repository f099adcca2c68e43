"""``posekd bench people``: how well the pipeline finds people, end to end, for a set of settings side
by side in one run (detector and its input size, OKS duplicate suppression, person score).

Three measures per setting:

* **held-out agreement with the teacher pipeline** (the signal settings are chosen by): photos of
  ``unlabeled/multi`` that no training cache holds (every tenth, ``[5::10]``), labelled by the best
  teacher pipeline we have (CenterNet ∪ MultiPose boxes kept where Thunder confirms a person, Thunder's
  keypoints, OKS-NMS; the recipe ``posekd bench labels`` chose against human labels): COCO OKS AP, AR,
  APm against those pseudo-labels, and the people-count error (mean |people returned at the service's
  default person threshold − people in the reference|);
* **stacked pairs** over the photos in ``../shared/data`` (not LSPET, not ``multi``): two answers that
  share ≥ 6 keypoints above 0.3 with a mean distance under 5 % of the box size;
* **the dev set** (``coco_mini_train``, real labels), reported, never tuned on, and the people invented
  on its images where nobody is labelled;

and the mean time per image of the whole pipeline (detector + pose) over the dev and held-out photos, the
settings taking turns on each image so that their time ratios hold on a shared, noisy machine."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from bench.common import ROOT, held_out_multi_spec, record

SETTINGS_HELP = ("a setting: LABEL=detector:REF,pose:REF,size:N,nms:OKS,score:combined|keypoints,box:W,spread:S,"
                 "inside:M,thr:T,centre:C,boxnms:IOU "
                 "(omitted keys: the service's defaults)")


@dataclass
class Setting:
    label: str
    detector: str = "detector-s@production"
    pose: str | None = None  # the pose model; None: --pose
    size: int = 0
    nms: float = 0.7  # the service default (POSEKD_POSE_NMS_OKS)
    score: str = "combined"
    box_weight: float = 0.5
    spread: float = 0.45
    inside: float = 0.15
    threshold: float | None = None  # the detector threshold; None: the service's
    centre: float | None = None  # second people from the pose model's centre heat; None: the service's
    box_nms: float | None = None  # IoU above which the detector's boxes suppress each other; None: the service's

    @classmethod
    def parse(cls, text: str) -> Setting:
        label, _, rest = text.partition("=")
        s = cls(label)
        for part in filter(None, rest.split(",")):
            key, _, value = part.partition(":")
            if key not in SETTING_KEYS:
                raise SystemExit(f"unknown key {key!r} in setting {text!r}")
            field_name, convert = SETTING_KEYS[key]
            setattr(s, field_name, convert(value))
        return s

    def pipeline(self):
        from distill.evaluate import served_pipeline
        from service.pipeline.people import PersonScoring

        pipe = served_pipeline()
        pipe.detector_size = self.size
        if self.threshold is not None:
            pipe.detector_threshold = self.threshold
        pipe.pose_nms = self.nms
        if self.box_nms is not None:
            pipe.box_nms_iou = self.box_nms
        if self.centre is not None:
            pipe.second_centre = self.centre
        pipe.scoring = PersonScoring(box_weight=self.box_weight, full_spread=self.spread,
                                     inside_margin=self.inside, legacy=self.score == "keypoints")
        return pipe


# the keys of a --setting: key -> (Setting field, conversion)
SETTING_KEYS = {"detector": ("detector", str), "pose": ("pose", str), "size": ("size", int), "nms": ("nms", float),
                "score": ("score", str), "box": ("box_weight", float), "spread": ("spread", float),
                "inside": ("inside", float), "thr": ("threshold", float), "centre": ("centre", float),
                "boxnms": ("box_nms", float)}

# each change on its own, then the detectors, the new one at three input sizes and a lower box threshold
DEFAULT_SETTINGS = [
    "before=detector:detector-s:3,size:0,nms:0,score:keypoints",
    "oks-nms 0.7=detector:detector-s:3,size:0,nms:0.7,score:keypoints",
    "+ person score=detector:detector-s:3,size:0,nms:0.7",
    "v4 at 384=detector:detector-s:4,size:384,nms:0.7",
    "v5 at 320=detector:detector-s:5,size:320,nms:0.7",
    "v5 at 384=detector:detector-s:5,size:384,nms:0.7",
    "v5 at 448=detector:detector-s:5,size:448,nms:0.7",
    "v5 at 384, threshold 0.1=detector:detector-s:5,size:384,nms:0.7,thr:0.1",
    "v5 at 384, threshold 0.2=detector:detector-s:5,size:384,nms:0.7,thr:0.2",
    "v5 at 384, threshold 0.25=detector:detector-s:5,size:384,nms:0.7,thr:0.25",
]


def teacher_reference(records, store, path: Path, threads: int, *, solo: float = 0.2, keypoints: int = 3) -> Path:
    """A COCO keypoint JSON of the teacher pipeline's people on ``records`` (written once, then read): CenterNet
    ∪ MultiPose boxes (a box one of them alone found kept from ``solo``), kept where Thunder finds
    ``keypoints`` confident keypoints inside, Thunder's keypoints on each, OKS-NMS 0.9. The same recipe as
    ``detector-s`` v5's training labels (bench/RESULTS.md: which recipe finds the labelled people)."""
    if path.is_file():
        return path
    from distill.teachers import ConfirmedBoxes, detection_labeller
    from service.pipeline.people import oks_nms

    boxes_from = cast(ConfirmedBoxes, detection_labeller("centernet+movenet-multipose", store,
                                                         confirm="movenet-thunder", confirm_keypoints=keypoints,
                                                         solo=solo, threads=threads))
    thunder = boxes_from.pose_model  # Thunder confirms the boxes and gives the reference's keypoints
    images: list[dict] = []
    annotations: list[dict] = []
    for r in records:
        image = r.load()
        boxes = boxes_from.boxes(image)
        kps = boxes_from.pipeline.pose(thunder, [image], [boxes])[0] if len(boxes) else np.zeros((0, 17, 3))
        keep = oks_nms(kps, boxes[:, :4], boxes[:, 4], 0.9) if len(boxes) else np.zeros(0, np.int64)
        images.append({"id": r.image_id, "file_name": r.path, "height": image.shape[0], "width": image.shape[1]})
        for i in keep:
            x1, y1, x2, y2 = (float(v) for v in boxes[i, :4])
            kp = kps[i].astype(np.float64)
            vis = kp[:, 2] >= 0.3
            flat = np.c_[kp[:, :2], np.where(vis, 2, 0)].reshape(-1)
            annotations.append({"id": len(annotations) + 1, "image_id": r.image_id, "category_id": 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": 0.53 * (x2 - x1) * (y2 - y1),
                                "iscrowd": 0, "num_keypoints": int(vis.sum()),
                                "keypoints": [round(float(v), 2) for v in flat]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "person"}],
                                "info": {"labelled_by": boxes_from.name + " → movenet-thunder, OKS-NMS 0.9"}}))
    return path


def nobody_records(annotations: Path):
    """The images of a COCO keypoint set with no person labelled at all: whoever is returned there is
    invented (a head in the crowd, an animal, a statue)."""
    from distill.data import Record

    doc = json.loads(Path(annotations).read_text())
    labelled = {a["image_id"] for a in doc["annotations"]}
    folder = Path(annotations).parent.parent / Path(annotations).stem.split("_")[-1]
    return [Record("photo", str(folder / im["file_name"]), [], image_id=int(im["id"]))
            for im in doc["images"] if im["id"] not in labelled]


def count_error(results: list, truth: dict[int, int], threshold: float) -> float:
    returned: dict[int, int] = {}
    for r in results:
        if r["score"] >= threshold:
            returned[r["image_id"]] = returned.get(r["image_id"], 0) + 1
    return float(np.mean([abs(returned.get(i, 0) - n) for i, n in truth.items()]))


def stacked(results: list) -> tuple[int, int]:
    """(pairs, photos with a pair) among results that carry their boxes."""
    from service.pipeline.people import stacked_pairs

    by_image: dict[int, list] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    pairs = photos = 0
    for people in by_image.values():
        kps = np.array([p["keypoints"] for p in people]).reshape(-1, 17, 3)
        boxes = np.array([p["bbox"] for p in people]).reshape(-1, 4)
        n = len(stacked_pairs(kps, boxes))
        pairs += n
        photos += n > 0
    return pairs, photos


THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35)  # person thresholds the count error is also given at


def score_setting(results_by_set: dict, sets: dict, min_score: float) -> dict:
    """One setting's accuracy, people counts and stacked pairs from its answers on every set."""
    from distill.evaluate import coco_ap

    out: dict = {"stacked": [0, 0]}
    for name, (records, labels, truth) in sets.items():
        results = results_by_set[name]
        if labels is not None:
            out[name] = {**coco_ap(labels, results, [r.image_id for r in records]),
                         "count_error": round(count_error(results, truth, min_score), 3),
                         "count_error_by_threshold": {t: round(count_error(results, truth, t), 3)
                                                      for t in THRESHOLDS}}
        elif truth is not None:  # images with nobody in them: every person returned is invented
            out[name] = {"invented": sum(r["score"] >= min_score for r in results), "images": len(records)}
        # duplicates are counted among the people a user gets (default person threshold)
        pairs, photos = stacked([r for r in results if r["score"] >= min_score])
        out["stacked"] = [out["stacked"][0] + pairs, out["stacked"][1] + photos]
    return out


def run_interleaved(runs: list, sets: dict) -> tuple[list[dict], np.ndarray]:
    """Every setting on every image, the settings taking turns image by image (the order rotating), so a
    slow minute of a shared machine falls on all of them alike. ``runs``: (pipeline, pose, detector) per
    setting. Returns each setting's answers per set and the seconds per image, one row per setting."""
    from service.pipeline.pipeline import ImageTask

    answers: list[dict] = [{name: [] for name in sets} for _ in runs]
    seconds: list[list[float]] = [[] for _ in runs]
    turn = 0
    for name, (records, _, _) in sets.items():
        for r in records:
            image = r.load()
            for k in (np.arange(len(runs)) + turn) % len(runs):
                pipe, pose, detector = runs[k]
                t0 = time.perf_counter()
                res = pipe.run(pose, detector, [ImageTask(image=image, min_score=0.0, max_people=20)])[0]
                seconds[k].append(time.perf_counter() - t0)
                answers[k][name] += [{"image_id": r.image_id, "category_id": 1, "bbox": p.bbox,
                                      "score": float(p.score),
                                      "keypoints": [float(v) for v in np.asarray(p.keypoints, np.float64).ravel()]}
                                     for p in res.people]
            turn += 1
    return answers, np.array(seconds)


def photo_files(data: Path) -> list[Path]:
    """The photos in ``data`` a user would try: not LSPET's 4,000 crops, not the detector's ``multi``, not
    Human3.6M's body-part maps (the stacked-pair measure here and in the data tests)."""
    skip = {"lspet", "multi", "h36m"}
    return sorted(p for p in data.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"}
                  and not skip & set(p.parts))


def photo_records(data: Path):
    from distill.data import Record

    return [Record("photo", str(p), [], image_id=10_000_000 + i) for i, p in enumerate(photo_files(data))]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="posekd bench people", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("POSEKD_MODEL_STORE", ROOT / "model_store")))
    ap.add_argument("--pose", default="pose-s@production")
    ap.add_argument("--setting", action="append", help=SETTINGS_HELP)
    ap.add_argument("--heldout", default=None, help="held-out photos (default folder:DATA/unlabeled/multi[5::10])")
    ap.add_argument("--reference", type=Path, default=None,
                    help="the teacher pipeline's labels of the held-out photos (made when missing; default "
                         "runs/heldout-multi-teacher-solo<S>-k<K>.json)")
    ap.add_argument("--reference-solo", type=float, default=0.2,
                    help="reference recipe: a box only one detection teacher found is kept from this score")
    ap.add_argument("--reference-keypoints", type=int, default=3,
                    help="reference recipe: confident Thunder keypoints a box needs inside to be a person")
    ap.add_argument("--no-photos", action="store_true", help="skip the stacked-pair count over ../shared/data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--no-record", action="store_true")
    return ap


def _table(rows: list, pose: str) -> list[str]:
    """The settings side by side, then their held-out count error at each person threshold."""
    lines = ["| setting | detector | pose | size | OKS-NMS | score | held-out AP | AR | APm | count err | "
             "stacked pairs (photos) | dev AP | dev AR | dev APm | dev count err | invented | ms/image | × first row |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s, r in rows:
        h, d = r["heldout"], r["dev"]
        score = "mean keypoint" if s.score == "keypoints" else \
            f"box^{s.box_weight}·kp, spread/{s.spread}" + (f", inside+{s.inside}" if s.inside else "")
        lines.append(f"| {s.label} | {s.detector} | {s.pose or pose} | {s.size or 'manifest'} | {s.nms or 'off'} | "
                     f"{score} | "
                     f"{h['AP']:.3f} | {h['AR']:.3f} | {h['APm']:.3f} | {h['count_error']:.2f} | "
                     f"{r['stacked'][0]} ({r['stacked'][1]}) | {d['AP']:.3f} | {d['AR']:.3f} | {d['APm']:.3f} | "
                     f"{d['count_error']:.2f} | {r['nobody']['invented']} | {r['ms_per_image']:.1f} | "
                     f"{r['time_ratio']:.2f} (median image {r['median_image_ratio']:.2f}) |")
    lines += ["", "| setting | " + " | ".join(f"held-out count error, person threshold {t:g}" for t in THRESHOLDS)
              + " |", "|---|" + "---|" * len(THRESHOLDS)]
    lines += [f"| {s.label} | " + " | ".join(f"{r['heldout']['count_error_by_threshold'][t]:.2f}" for t in THRESHOLDS)
              + " |" for s, r in rows]
    return lines


def run_settings(settings: list[Setting], args, store, sets: dict, min_score: float) -> list:
    """The settings over every set, timed in turn image by image; each detector and pose model loaded once."""
    from distill.teachers import load_model

    models: dict = {}
    runs = []
    for s in settings:
        for ref in (s.detector, s.pose or args.pose):
            if ref not in models:
                models[ref] = load_model(ref, store=store, threads=args.threads)
        runs.append((s.pipeline(), models[s.pose or args.pose], models[s.detector]))
    run_interleaved(runs, {"dev": (sets["dev"][0][:3], None, None)})  # warm-up
    answers, seconds = run_interleaved(runs, sets)
    rows = []
    for s, results, spent in zip(settings, answers, seconds):
        r = score_setting(results, sets, min_score)
        r["ms_per_image"] = round(float(spent.mean()) * 1000, 1)
        r["time_ratio"] = round(float(spent.sum() / seconds[0].sum()), 2)
        r["median_image_ratio"] = round(float(np.median(spent / seconds[0])), 2)
        rows.append((s, r))
        print(s.label, json.dumps(r), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    from distill.data import read_coco, read_source
    from distill.publish import DATA, EVAL_SET
    from service.settings import Settings
    from service.store import ModelStore

    store = ModelStore(args.store)
    min_score = Settings().min_score
    heldout_spec = args.heldout or held_out_multi_spec(DATA)
    heldout = read_source(heldout_spec)
    for i, record_ in enumerate(heldout):
        record_.image_id = 20_000_000 + i
    reference = teacher_reference(heldout, store, args.reference or ROOT / "runs" / (
        f"heldout-multi-teacher-solo{args.reference_solo:g}-k{args.reference_keypoints}.json"), args.threads,
        solo=args.reference_solo, keypoints=args.reference_keypoints)
    ref_doc = json.loads(reference.read_text())
    held_truth: dict[int, int] = {im["id"]: 0 for im in ref_doc["images"]}
    for a in ref_doc["annotations"]:
        held_truth[a["image_id"]] += 1
    dev = read_coco(EVAL_SET)
    dev_truth = {int(d.image_id or 0): sum(1 for p in d.people if p.keypoints is not None
                                           and (p.keypoints[:, 2] > 0).any()) for d in dev}
    nobody = nobody_records(EVAL_SET)
    sets: dict = {"heldout": (heldout, reference, held_truth), "dev": (dev, EVAL_SET, dev_truth),
                  "nobody": (nobody, None, {r.image_id: 0 for r in nobody})}
    if not args.no_photos:
        sets["photos"] = (photo_records(DATA), None, None)
    rows = run_settings([Setting.parse(t) for t in (args.setting or DEFAULT_SETTINGS)], args, store, sets, min_score)
    lines = _table(rows, args.pose)
    n_photos = len(sets["photos"][0]) if "photos" in sets else 0
    lines += ["", f"Held-out: `{heldout_spec.replace(str(DATA), '$POSEKD_DATA')}` ({len(heldout)} photos, "
              f"{sum(held_truth.values())} people by the teacher pipeline: {ref_doc['info']['labelled_by']}); dev: "
              f"coco_mini_train ({len(dev)} images, real labels, reported only); invented: people returned at the "
              f"default person threshold on the {len(nobody)} images of coco_mini_train where nobody is labelled "
              f"(reported only); stacked pairs over {n_photos} "
              f"photos of `$POSEKD_DATA` plus the two sets, among the people returned at the default person "
              f"threshold {min_score}; count error at that threshold; pose model {args.pose} where the row names "
              f"none; ONNX Runtime CPU, {args.threads} threads; ms/image = detector + pose + scoring, mean over the "
              f"held-out, dev and photo sets, the settings timed in turn on each image (the order rotating); "
              f"× first row: total time against the first row's, and the median of the per-image ratios."]
    table = "\n".join(lines)
    print(table)
    if args.json:
        args.json.write_text(json.dumps([{"setting": s.__dict__, **r} for s, r in rows], indent=2))
    if not args.no_record:
        record("People found end to end (detector size, OKS-NMS, person score)",
               "posekd bench people " + " ".join(argv or []), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
