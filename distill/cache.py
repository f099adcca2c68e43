"""Teacher-label caches: augmented views and what the teacher said about each, written once and read
by every training epoch (memory-mapped ``.npy`` files plus ``meta.json``).

Images come in BGR (OpenCV, the service's pipeline, the teachers); the caches store RGB.

Pose cache (one row per view): ``images`` uint8 RGB (N, S, S, 3) at the student's size; ``teacher_kp``
(N, 17, 3) = x, y in 0..1 of the view and the teacher's score; ``teacher_hm`` float16 (N, 17, S/4, S/4)
the teacher's heatmaps resampled to the student's grid (absent for teachers without heatmaps);
``gt_kp`` (N, 17, 3) = human labels in 0..1 of the view with v (0: none).

Detection cache (one row per image): ``images`` uint8 (N, S, S, 3) letterboxed; ``boxes`` float32
(N, M, 5) = x1, y1, x2, y2 in 0..1 of the view and score (score 0: padding)."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from numpy.lib.format import open_memmap

from service.store.manifest import sha256_file

from .augment import AugmentConfig, photometric, scale_matrix, transform_keypoints, view_matrix, warp
from .data import Record
from .teachers import BoxEnsemble, ConfirmedBoxes, DetectionTeacher, PoseTeacher

log = logging.getLogger("posekd.distill")


def file_sha(path: str) -> str | None:
    try:
        return sha256_file(Path(path))
    except OSError:
        return None


def exclude_records(records: list[Record], exclude: list[Record]) -> list[Record]:
    """Drop records whose image bytes equal any in ``exclude`` (the evaluation set is never trained on)."""
    banned = {file_sha(r.path) for r in exclude if r.image is None}
    banned.discard(None)
    return [r for r in records if r.image is not None or file_sha(r.path) not in banned]


def find_people(records: list[Record], detector: DetectionTeacher | None, *, min_score: float = 0.25,
                min_height: float = 40.0, progress: bool = True) -> list[Record]:
    """Give unlabelled records the detection teacher's person boxes (records with labels keep theirs)."""
    from tqdm import tqdm

    from .data import PersonLabel

    out = []
    for r in tqdm(records, desc="finding people", disable=not progress, unit="img"):
        if r.people:
            out.append(r)
            continue
        if detector is None:
            continue
        try:
            image = r.load()
        except OSError as exc:
            log.warning("%s", exc)
            continue
        boxes = detector.boxes(image)
        people = [PersonLabel(b[:4].copy(), None, {"score": float(b[4])}) for b in boxes
                  if b[4] >= min_score and b[3] - b[1] >= min_height]
        if people:
            out.append(Record(r.source, r.path, people, image=r.image))
    return out


def resample_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of an area resize along one axis (pixel centres aligned)."""
    return cv2.resize(np.eye(src, dtype=np.float32), (src, dst), interpolation=cv2.INTER_AREA)


class _Writer:
    def __init__(self, out: Path, shapes: dict[str, tuple[tuple[int, ...], str]], capacity: int):
        out.mkdir(parents=True, exist_ok=True)
        self.arrays = {k: open_memmap(out / f"{k}.npy", mode="w+", dtype=dt, shape=(capacity, *shp))
                       for k, (shp, dt) in shapes.items()}
        self.n = 0

    def add(self, **rows: np.ndarray) -> None:
        k = len(next(iter(rows.values())))
        for name, arr in rows.items():
            self.arrays[name][self.n:self.n + k] = arr
        self.n += k

    def close(self) -> None:
        for a in self.arrays.values():
            a.flush()


class _LabelledViews:
    """Views waiting for the teacher, labelled 64 at a time and written to the cache: the teacher's
    keypoints (0..1 of the view), its heatmaps and centre map resampled to the student's grid."""

    def __init__(self, teacher: PoseTeacher, writer: _Writer, grid: int, bar):
        self.teacher, self.writer, self.grid, self.bar = teacher, writer, grid, bar
        self.tsize = teacher.size[0]
        self.teacher_views: list[np.ndarray] = []
        self.student_views: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, tview: np.ndarray, sview: np.ndarray, gt: np.ndarray) -> None:
        self.teacher_views.append(tview)
        self.student_views.append(sview)
        self.labels.append(gt)
        if len(self.teacher_views) >= 64:
            self.flush()

    def flush(self) -> None:
        if not self.teacher_views:
            return
        labels = self.teacher.label_all(np.stack(self.teacher_views))
        kp, hm = labels["keypoints"].copy(), labels.get("heatmaps")
        kp[..., :2] = (kp[..., :2] + 0.5) / self.tsize  # input pixels -> 0..1 of the view (pixel centres)
        rows = {"images": np.stack(self.student_views), "teacher_kp": kp, "gt_kp": np.stack(self.labels)}
        if "teacher_hm" in self.writer.arrays:
            if hm is None:
                raise ValueError(f"teacher {self.teacher.name} declares heatmaps but returned none")
            a = resample_matrix(hm.shape[-1], self.grid)
            rows["teacher_hm"] = (a @ hm @ a.T).astype(np.float16)
        if "teacher_center" in self.writer.arrays:
            a = resample_matrix(labels["center"].shape[-1], self.grid)
            rows["teacher_center"] = (a @ labels["center"] @ a.T).astype(np.float16)
        self.writer.add(**rows)
        self.bar.update(len(self.teacher_views))
        self.teacher_views, self.student_views, self.labels = [], [], []


def _cache_shapes(teacher: PoseTeacher, student_size: int, grid: int) -> dict[str, tuple[tuple[int, ...], str]]:
    shapes = {"images": ((student_size, student_size, 3), "uint8"), "teacher_kp": ((17, 3), "float32"),
              "gt_kp": ((17, 3), "float32")}
    if teacher.heatmap_name is not None:
        shapes["teacher_hm"] = ((17, grid, grid), "float16")
    if getattr(teacher, "center_name", None) is not None:
        shapes["teacher_center"] = ((1, grid, grid), "float16")
    return shapes


def _view_pair(image: np.ndarray, person, tsize: int, student_size: int, rng, cfg: AugmentConfig):
    """One augmented view of a person: (the teacher's view, the student's in RGB, the human labels)."""
    m, flipped = view_matrix(person.box, tsize, rng, cfg, person.keypoints, identity=rng.random() < cfg.p_identity)
    ms = scale_matrix(m, student_size / tsize)
    tview, sview = warp(image, m, tsize), warp(image, ms, student_size)
    photometric([tview, sview], rng, cfg)
    sview = np.ascontiguousarray(sview[..., ::-1])  # BGR (teacher, service) -> RGB (student cache)
    gt = np.zeros((17, 3), np.float32)
    if person.keypoints is not None:
        gt = transform_keypoints(person.keypoints, m, tsize, flipped)
        gt[:, :2] = (gt[:, :2] + 0.5) / tsize
    return tview, sview, gt


def build_pose_cache(records: list[Record], teacher: PoseTeacher, out: Path | str, *, views: int,
                     student_size: int = 192, seed: int = 0, cfg: AugmentConfig | None = None,
                     meta: dict | None = None, progress: bool = True) -> dict:
    """``views`` augmented views in total, spread over every person of ``records`` in random order;
    the teacher labels each view at its own input size; the view is stored at ``student_size``."""
    from tqdm import tqdm

    out = Path(out)
    cfg = cfg or AugmentConfig()
    rng = np.random.default_rng(seed)
    people = [(ri, pi) for ri, r in enumerate(records) for pi in range(len(r.people))]
    if not people:
        raise ValueError("no people to make views of")
    tsize, grid = teacher.size[0], student_size // 4
    writer = _Writer(out, _cache_shapes(teacher, student_size, grid), views)
    order = np.concatenate([rng.permutation(len(people)) for _ in range(views // len(people) + 1)])[:views]
    started = time.time()
    bar = tqdm(total=views, desc=f"teacher {teacher.name} labelling views", disable=not progress, unit="view")
    pending = _LabelledViews(teacher, writer, grid, bar)
    for start in range(0, views, 512):  # by image within a chunk: each image is decoded once per chunk
        current, image = -1, None
        for idx in sorted(order[start:start + 512].tolist(), key=lambda i: people[i][0]):
            ri, pi = people[idx]
            if ri != current or image is None:
                image, current = records[ri].load(), ri
            pending.add(*_view_pair(image, records[ri].people[pi], tsize, student_size, rng, cfg))
        pending.flush()
    bar.close()
    writer.close()
    info = {"kind": "pose", "count": writer.n, "student_size": student_size, "heatmap_grid": grid,
            "teacher": teacher.name, "teacher_size": tsize, "seed": seed, "augment": asdict(cfg),
            "people": len(people), "sources": sorted({r.source for r in records}),
            "seconds": round(time.time() - started, 1), **(meta or {})}
    (out / "meta.json").write_text(json.dumps(info, indent=2))
    return info


class PoseCache:
    """Read side of a pose cache."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.meta = json.loads((self.root / "meta.json").read_text())
        n = self.meta["count"]
        self.images = np.load(self.root / "images.npy", mmap_mode="r")[:n]
        self.teacher_kp = np.load(self.root / "teacher_kp.npy")[:n]
        self.gt_kp = np.load(self.root / "gt_kp.npy")[:n]
        hm = self.root / "teacher_hm.npy"
        self.teacher_hm = np.load(hm, mmap_mode="r")[:n] if hm.exists() else None
        center = self.root / "teacher_center.npy"
        self.teacher_center = np.load(center, mmap_mode="r")[:n] if center.exists() else None

    def __len__(self) -> int:
        return len(self.teacher_kp)


def build_detection_cache(records: list[Record], teacher: DetectionTeacher | BoxEnsemble | ConfirmedBoxes,  # noqa: PLR0913
                          out: Path | str, *,
                          size: int = 256,
                          max_boxes: int = 20, views_per_image: int = 2, zoom_out: int = 0, seed: int = 0,
                          meta: dict | None = None, progress: bool = True) -> dict:
    """Letterboxed views (random scale and flip after the first) labelled by the detection teacher on
    the same view, so the student learns the teacher's boxes at the student's resolution; then
    ``zoom_out`` views per image shrunk onto the canvas (people smaller than the whole picture shows
    them, labelled by the teacher's boxes on the whole picture at its full resolution)."""
    from tqdm import tqdm

    out = Path(out)
    rng = np.random.default_rng(seed)
    writer = _Writer(out, {"images": ((size, size, 3), "uint8"), "boxes": ((max_boxes, 5), "float32")},
                     len(records) * (views_per_image + zoom_out))
    started = time.time()
    for r in tqdm(records, desc=f"teacher {teacher.name} labelling images", disable=not progress, unit="img"):
        try:
            image = r.load()
        except OSError as exc:
            log.warning("%s", exc)
            continue
        whole = np.zeros((0, 5), np.float32)
        for v in range(views_per_image):
            view = image
            if v > 0:  # random crop-zoom and flip: same view for teacher and student
                h, w = image.shape[:2]
                s = rng.uniform(0.55, 1.0)
                ch, cw = int(h * s), int(w * s)
                y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
                view = image[y0:y0 + ch, x0:x0 + cw]
                if rng.random() < 0.5:
                    view = view[:, ::-1]
                view = np.ascontiguousarray(view)
            boxes = teacher.boxes(view)
            whole = boxes if v == 0 else whole
            writer.add(**_detection_view(view, boxes, size, max_boxes, rng))
        for _ in range(zoom_out if views_per_image else 0):
            view, boxes = image, np.array(whole, np.float32, copy=True).reshape(-1, 5)
            if rng.random() < 0.5:
                view = np.ascontiguousarray(image[:, ::-1])
                boxes[:, [0, 2]] = image.shape[1] - boxes[:, [2, 0]]
            writer.add(**_detection_view(view, boxes, size, max_boxes, rng, zoom=rng.uniform(0.4, 0.85)))
    writer.close()
    info = {"kind": "detection", "count": writer.n, "size": size, "teacher": teacher.name, "seed": seed,
            "sources": sorted({r.source for r in records}), "seconds": round(time.time() - started, 1),
            **(meta or {})}
    (out / "meta.json").write_text(json.dumps(info, indent=2))
    return info


def _detection_view(view: np.ndarray, boxes: np.ndarray, size: int, max_boxes: int, rng, *,
                    zoom: float = 1.0) -> dict[str, np.ndarray]:
    """One cached detection view: ``view`` letterboxed into a ``size`` canvas (scaled a further ``zoom``
    and placed at random where it is below 1), photometric noise, its ``boxes`` as canvas fractions."""
    h, w = view.shape[:2]
    s = size / max(h, w) * zoom
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    y0 = int(rng.integers(0, size - nh + 1)) if zoom < 1 else 0
    x0 = int(rng.integers(0, size - nw + 1)) if zoom < 1 else 0
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[y0:y0 + nh, x0:x0 + nw] = cv2.resize(view, (nw, nh), interpolation=cv2.INTER_AREA)
    photometric([canvas], rng, AugmentConfig(p_occlude=0.0, p_blur=0.05))
    canvas = np.ascontiguousarray(canvas[..., ::-1])  # stored RGB, like the pose cache
    rows = np.zeros((max_boxes, 5), np.float32)
    b = boxes[:max_boxes]
    rows[:len(b), :4] = (b[:, :4] * s + np.array([x0, y0, x0, y0], np.float32)) / size
    rows[:len(b), 4] = b[:, 4]
    return {"images": canvas[None], "boxes": rows[None]}
