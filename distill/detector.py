"""The person-detector student: CenterNet-style targets from a detection teacher's boxes.

Targets per view, at stride 4: a Gaussian peak at each box centre (radius from the box size, peak =
1), the box size as (height, width) in cells and the centre's position within its cell, measured from
the cell's corner (MoveNet MultiPose's convention, so its heads are the warm start).
Losses: penalty-reduced focal loss on the centre map (CenterNet), L1 on size and offset at centres."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from service.geometry import iou as box_iou

from .augment import dim_light
from .students import StudentConfig, calibrate, decode_centers, prepare
from .train import TrainConfig, TrainingRun, train
from .weights import load_exported

log = logging.getLogger("posekd.distill")


class DetectionCache:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.meta = json.loads((self.root / "meta.json").read_text())
        n = self.meta["count"]
        self.images = np.load(self.root / "images.npy", mmap_mode="r")[:n]
        self.boxes = np.load(self.root / "boxes.npy")[:n]

    def __len__(self) -> int:
        return len(self.boxes)

# a teacher box at least this sure is a training target (a person the student must find), and the same
# boxes are what the held-out F1 compares with: a student must not lose precision for finding them
TARGET_MIN_SCORE = 0.2


def center_targets(boxes: np.ndarray, grid: int, min_score: float = TARGET_MIN_SCORE) -> dict[str, np.ndarray]:
    """boxes: (N, M, 5) in 0..1 -> heat (N, 1, g, g), size/offset (N, 2, g, g), mask (N, 1, g, g)."""
    n = len(boxes)
    heat = np.zeros((n, 1, grid, grid), np.float32)
    size = np.zeros((n, 2, grid, grid), np.float32)
    off = np.zeros((n, 2, grid, grid), np.float32)
    mask = np.zeros((n, 1, grid, grid), np.float32)
    ys, xs = np.mgrid[0:grid, 0:grid].astype(np.float32)
    for i in range(n):
        for x1, y1, x2, y2, s in boxes[i]:
            if s < min_score:
                continue
            cx, cy = (x1 + x2) / 2 * grid, (y1 + y2) / 2 * grid
            w, h = max((x2 - x1) * grid, 0.5), max((y2 - y1) * grid, 0.5)
            ix, iy = int(np.clip(cx, 0, grid - 1)), int(np.clip(cy, 0, grid - 1))
            sigma = max(0.5, 0.1 * np.sqrt(w * h))
            g = np.exp(-((xs - (ix)) ** 2 + (ys - (iy)) ** 2) / (2 * sigma ** 2))
            heat[i, 0] = np.maximum(heat[i, 0], g)
            size[i, :, iy, ix] = (h, w)
            off[i, :, iy, ix] = (cy - iy, cx - ix)
            mask[i, 0, iy, ix] = 1.0
    return {"heat": heat, "size": size, "offset": off, "mask": mask}


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = torch.log(1 - p) * p ** alpha * (1 - target) ** beta * neg
    # normalised by the number of centres, but never by fewer than one per image: a batch of mostly
    # empty views would otherwise scale the background loss up by hundreds (seen: loss spikes of 10^3)
    npos = pos.sum().clamp_min(float(len(target)))
    return -(pos_loss.sum() + neg_loss.sum()) / npos


def detector_step(model, x: torch.Tensor, t: dict, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    out = model(x)
    m = t["mask"]
    msum = m.sum().clamp_min(1.0)
    return {"center": focal_loss(out["center"], t["heat"]),
            # relative L1 on the size (cells): a 10% error costs the same for a small and a large person
            "size": (F.l1_loss(out["box_scale"], t["size"], reduction="none") / t["size"].clamp_min(1.0) * m).sum()
            / msum,
            "offset": (F.l1_loss(out["box_offset"], t["offset"], reduction="none") * m).sum() / msum}


def match_boxes(pred: np.ndarray, ref: np.ndarray, iou: float = 0.5) -> int:
    """How many of the reference boxes (R, 4+) a prediction (P, 4+) covers at IoU ≥ ``iou``, each
    prediction used once (greedy, best overlap first)."""
    if not len(pred) or not len(ref):
        return 0
    ov = box_iou(ref[:, :4], pred[:, :4])
    hit = 0
    used = np.zeros(len(pred), bool)
    for r in np.argsort(-ov.max(1)):
        cand = np.where(~used & (ov[r] >= iou))[0]
        if len(cand):
            used[cand[ov[r, cand].argmax()]] = True
            hit += 1
    return hit


@torch.no_grad()
def box_agreement(model, cache: DetectionCache, idx: np.ndarray, iou: float = 0.5,
                  min_score: float = TARGET_MIN_SCORE, pred_score: float = 0.3, dim: bool = False) -> dict[str, float]:
    """Agreement with the teacher's boxes on held-out views: recall = share of the teacher's boxes the
    student is trained to find (score ≥ ``min_score``; 0.3 up to detector-s v5's run) that a student box
    (score ≥ ``pred_score``) matches at IoU ≥ ``iou``,
    precision = share of those student boxes that match one, and their F1 (the selection signal: recall
    alone would favour a student that fires everywhere). ``dim``: every view darkened first (the same
    draw each time), against the boxes the teacher gave on the well-lit view."""
    model.eval()
    rng = np.random.default_rng(1234)
    hit = total = found = 0
    for i in range(0, len(idx), 32):
        sel = idx[i:i + 32]
        images = np.ascontiguousarray(cache.images[sel])
        if dim:
            images = dim_light(images, rng, 1.0)
        out = model(prepare(torch.from_numpy(images)))
        pred = decode_centers(out["center"], out["box_scale"], out["box_offset"], 20).numpy()
        for p, g in zip(pred, cache.boxes[sel]):
            g = g[g[:, 4] >= min_score]
            p = p[p[:, 4] >= pred_score]
            total += len(g)
            found += len(p)
            hit += match_boxes(p, g, iou)
    model.train()
    recall, precision = hit / max(total, 1), hit / max(found, 1)
    return {"recall": recall, "precision": precision,
            "f1": 2 * recall * precision / max(recall + precision, 1e-9)}


class DetectorRecipe:
    """The person detector on a detection cache: letterboxed views with the teacher's boxes (flipped half
    the time, darkened ``dim_light`` of the time), centre/size/offset losses, and agreement = F1 with the
    teacher's boxes on held-out views (also reported on the same views darkened: ``dim_agreement``)."""

    def __init__(self, run: TrainingRun, cache: DetectionCache, init: bytes | None):
        self.cache, self.init, self.tc = cache, init, run.tc
        n = len(cache)
        holdout = min(run.tc.holdout, max(0, n // 5))
        self.train_idx, self.val_idx = np.arange(0, n - holdout), np.arange(n - holdout, n)
        self.rng = np.random.default_rng(run.tc.seed + run.step)
        self.grid = run.cfg.size // 4

    def start(self, run: TrainingRun) -> None:
        """A registered detector's weights (``--init``), or the pruned warm start refitted to the teacher."""
        if self.init is not None:
            log.info("initialised %d tensors from the given exported detector", len(load_exported(run.model,
                                                                                                  self.init)))
        elif run.tw is not None:
            n, calibration = len(self.cache), self.tc.calibration
            calib = np.arange(0, n, max(1, n // calibration))[:calibration]
            errors = calibrate(run.model, run.tw, torch.from_numpy(np.ascontiguousarray(self.cache.images[calib])))
            if errors:
                log.info("pruned blocks refitted to the teacher's features; relative errors %s",
                         " ".join(f"{e:.2f}" for e in errors))

    def batch(self, size: int) -> dict:
        sel = np.sort(self.rng.choice(self.train_idx, size, replace=len(self.train_idx) < size))
        images = torch.from_numpy(dim_light(np.ascontiguousarray(self.cache.images[sel]), self.rng,
                                            self.tc.dim_light))
        boxes = self.cache.boxes[sel].copy()
        if self.rng.random() < 0.5:  # flip: the letterboxed content sits top-left, so flip within the canvas
            images = images.flip(2)
            x1 = 1 - boxes[..., 2]
            boxes[..., 2] = 1 - boxes[..., 0]
            boxes[..., 0] = x1
        return {"x": prepare(images), "targets": {k: torch.from_numpy(v) for k, v in
                                                  center_targets(boxes, self.grid).items()}}

    def losses(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return detector_step(model, batch["x"], batch["targets"], self.tc)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        if not len(self.val_idx):
            return {}
        held = box_agreement(model, self.cache, self.val_idx)
        dim = box_agreement(model, self.cache, self.val_idx, dim=True)
        return {"agreement": held["f1"], "recall": held["recall"], "precision": held["precision"],
                "dim_agreement": dim["f1"], "dim_recall": dim["recall"]}


def fit_detector(cfg: StudentConfig, tc: TrainConfig, cache: DetectionCache, out: Path | str, *, resume: bool = True,
                 progress: bool = True, meta: dict | None = None, init: bytes | None = None):
    """Distil the detector on ``cache`` (:class:`DetectorRecipe` in :func:`distill.train.train`); ``init``:
    the ONNX bytes of a registered detector to continue from (replacing the pruned warm start at step 0)."""
    run = TrainingRun(cfg, tc, out, lambda n: True,  # every head is MultiPose's own
                      resume=resume, meta=meta, progress=progress, desc=f"distilling detector {Path(out).name}",
                      curve_title=f"{Path(out).name}: detector (agreement = F1 with the teacher boxes at IoU 0.5)")
    return train(run, DetectorRecipe(run, cache, init))
