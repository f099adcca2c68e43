"""Readers for the training and evaluation data: COCO keypoint JSON, LSPET ``joints.mat``, plain image
folders and video frames. Every reader yields :class:`Record` s: one image and the people in it, each
with a box and, where humans labelled them, COCO-17 keypoints ``(17, 3)`` = (x, y, v) with v = 0 for
joints that are not labelled (those are left out of the losses).

Images are BGR uint8, as OpenCV decodes them and as the service's pipeline takes them; the training
caches store the student's views in RGB (the students' manifests say RGB)."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".webm", ".mkv"}

# LSPET joint order -> COCO-17 index (neck and head-top have no COCO counterpart)
LSPET_TO_COCO = {0: 16, 1: 14, 2: 12, 3: 11, 4: 13, 5: 15, 6: 10, 7: 8, 8: 6, 9: 5, 10: 7, 11: 9}


@dataclass
class PersonLabel:
    box: np.ndarray                    # x1, y1, x2, y2 in image pixels
    keypoints: np.ndarray | None = None  # (17, 3) x, y, v (v > 0: labelled) or None (no human labels)
    extra: dict = field(default_factory=dict)


@dataclass
class Record:
    source: str                        # dataset name (lineage)
    path: str                          # image file, or "video.mp4#frame"
    people: list[PersonLabel]
    image: np.ndarray | None = None    # decoded BGR for video frames (files are read on demand)
    image_id: int | None = None

    def load(self) -> np.ndarray:
        if self.image is not None:
            return self.image
        im = cv2.imread(self.path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if im is None:
            raise OSError(f"cannot read image {self.path}")
        return im


def keypoint_box(kps: np.ndarray, pad: float = 0.1, head_room: float = 0.0) -> np.ndarray | None:
    """Box around the labelled keypoints, padded by ``pad`` of its size on each side and extended
    upwards by ``head_room`` of its height (for label sets without face points)."""
    v = kps[:, 2] > 0
    if v.sum() < 2:
        return None
    x1, y1 = kps[v, :2].min(0)
    x2, y2 = kps[v, :2].max(0)
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    return np.array([x1 - pad * w, y1 - pad * h - head_room * h, x2 + pad * w, y2 + pad * h], np.float32)


def read_coco(annotations: str | Path, images: str | Path | None = None, *, min_keypoints: int = 1,
              crowd: bool = False) -> list[Record]:
    """COCO keypoint JSON (``person_keypoints_*.json``): one record per image that has at least one
    person with ``min_keypoints`` labelled keypoints. Boxes are COCO's xywh turned into x1y1x2y2."""
    annotations = Path(annotations)
    with open(annotations) as f:
        coco = json.load(f)
    if images is None:  # COCO layout: annotations/person_keypoints_<split>.json next to <split>/ or images/
        split = annotations.stem.split("_")[-1]
        candidates = [annotations.parent.parent / split, annotations.parent.parent / "images" / split,
                      annotations.parent.parent / "images"]
        images = next((c for c in candidates if c.is_dir()), candidates[0])
    images = Path(images)
    by_image: dict[int, list[PersonLabel]] = {}
    for a in coco.get("annotations", []):
        if a.get("iscrowd", 0) and not crowd:
            continue
        if a.get("num_keypoints", 0) < min_keypoints:
            continue
        kps = np.asarray(a["keypoints"], np.float32).reshape(-1, 3)
        if kps.shape[0] != 17:
            raise ValueError(f"{annotations}: annotation {a.get('id')} has {kps.shape[0]} keypoints, not 17")
        x, y, w, h = a["bbox"]
        by_image.setdefault(a["image_id"], []).append(
            PersonLabel(np.array([x, y, x + w, y + h], np.float32), kps, {"id": a.get("id"), "area": a.get("area")}))
    records = []
    for im in coco.get("images", []):
        if im["id"] in by_image:
            records.append(Record("coco:" + annotations.stem, str(images / im["file_name"]), by_image[im["id"]],
                                  image_id=im["id"]))
    return records


def read_shadow(root: str | Path) -> list[Record]:
    """The samples a serving shadow teacher kept (``POSEKD_SHADOW_DIR``, see service/shadow/keeper.py): a
    COCO file whose keypoints are the teacher's answer, not human labels. The people keep their served
    boxes; their pseudo-labels go to ``extra`` (the cache labels every augmented view with the teacher
    again), so no loss treats them as ground truth."""
    root = Path(root)
    records = read_coco(root / "samples.json", root / "images", min_keypoints=0)
    for r in records:
        r.source = "shadow:" + root.name
        for p in r.people:
            p.extra["pseudo_keypoints"], p.keypoints = p.keypoints, None
    return records


def read_lspet(root: str | Path, *, limit: int | None = None) -> list[Record]:
    """LSPET: ``joints.mat`` holds ``joints[14, 3, 10000]`` (x, y, visible) for ``images/imNNNNN.jpg``
    at index NNNNN-1. 12 joints map to COCO-17; visibility marks occluded joints but their positions
    are annotated, so all 12 are used as labels; the face points stay unlabelled."""
    from scipy.io import loadmat

    root = Path(root)
    joints = loadmat(str(root / "joints.mat"))["joints"]
    if joints.shape[0] != 14:  # some copies store (x/y/v, 14, N) or (14, 3, N) transposed
        joints = np.transpose(joints, (1, 0, 2)) if joints.shape[1] == 14 else joints
    image_dir = root / "images" if (root / "images").is_dir() else root
    records = []
    for path in sorted(image_dir.glob("im*.jpg")):
        idx = int(path.stem[2:]) - 1
        if idx < 0 or idx >= joints.shape[2]:
            continue
        kps = np.zeros((17, 3), np.float32)
        for src, dst in LSPET_TO_COCO.items():
            x, y = joints[src, 0, idx], joints[src, 1, idx]
            if x > 0 and y > 0:
                kps[dst] = (x, y, 2.0 if joints[src, 2, idx] > 0 else 1.0)
        box = keypoint_box(kps, pad=0.1, head_room=0.25)
        if box is None:
            continue
        records.append(Record("lspet", str(path), [PersonLabel(box, kps)]))
        if limit and len(records) >= limit:
            break
    return records


def read_folder(root: str | Path, *, recursive: bool = True) -> list[Record]:
    """Plain images without labels (people are found by a detection teacher)."""
    root = Path(root)
    files = root.rglob("*") if recursive else root.glob("*")
    return [Record("folder:" + root.name, str(p), []) for p in sorted(files) if p.suffix.lower() in IMAGE_SUFFIXES]


def video_frames(path: str | Path, *, every: int = 10, max_frames: int | None = None,
                 max_side: int | None = 1280) -> Iterator[Record]:
    """Every ``every``-th frame of a clip, decoded one at a time (BGR, optionally downscaled)."""
    path = Path(path)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open video {path}")
    n = i = 0
    try:
        while True:
            ok = cap.grab()
            if not ok:
                break
            if i % every == 0:
                ok, frame = cap.retrieve()
                if not ok:
                    break
                if max_side and max(frame.shape[:2]) > max_side:
                    s = max_side / max(frame.shape[:2])
                    frame = cv2.resize(frame, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
                yield Record("video:" + path.name, f"{path}#{i}", [], image=frame)
                n += 1
                if max_frames and n >= max_frames:
                    break
            i += 1
    finally:
        cap.release()


def read_videos(root: str | Path, *, every: int = 10, max_frames: int | None = None) -> list[Record]:
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    out: list[Record] = []
    for f in files:
        out.extend(video_frames(f, every=every, max_frames=max_frames))
    return out


def read_source(spec: str) -> list[Record]:
    """``kind:path`` -> records. kinds: coco (annotation JSON), lspet (folder with joints.mat), folder,
    video (file or folder; ``video:PATH@every``). A trailing ``[start:stop]`` or ``[start:stop:step]``
    keeps that slice of the records in their sorted order (``lspet:DIR[:3600]`` to train,
    ``lspet:DIR[3600:]`` held out); ``[!start:stop:step]`` keeps every record *not* in it
    (``folder:DIR[!5::10]`` trains on nine in ten, ``folder:DIR[5::10]`` holds out the tenth)."""
    m = re.fullmatch(r"(.*)\[(!?)(-?\d*):(-?\d*)(?::(\d*))?\]", spec)
    if m:
        records = read_source(m.group(1))
        start, stop, step = (int(g) if g else None for g in (m.group(3), m.group(4), m.group(5)))
        chosen = range(len(records))[start:stop:step]
        if m.group(2):
            taken = set(chosen)
            return [r for i, r in enumerate(records) if i not in taken]
        return [records[i] for i in chosen]
    kind, _, path = spec.partition(":")
    if kind == "coco":
        return read_coco(path)
    if kind == "lspet":
        return read_lspet(path)
    if kind == "folder":
        return read_folder(path)
    if kind == "shadow":
        return read_shadow(path)
    if kind == "video":
        path, _, every = path.partition("@")
        return read_videos(path, every=int(every or 10))
    raise ValueError(f"unknown data source {spec!r} (coco:, lspet:, folder:, video:, shadow:)")
