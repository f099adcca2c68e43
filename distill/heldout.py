"""Held-out signals for choosing checkpoints without the dev set: agreement with the teacher on cached
views never trained on, PCK@0.2 on labelled images no cache contains, and the training curve."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .students import prepare

if TYPE_CHECKING:
    from .train import PoseBatches

@torch.no_grad()
def pose_agreement(model, batches: PoseBatches, kind: str, threshold: float = 0.05) -> dict[str, float]:
    """Fraction of confident teacher keypoints (score > 0.3) that the exported output puts within
    ``threshold`` of the view size of the teacher's, on views never trained on."""
    if not len(batches.val_idx):
        return {}
    model.eval()
    hits = total = 0.0
    for i in range(0, len(batches.val_idx), 64):
        b = batches.get(batches.val_idx[i:i + 64], flip=False)
        xy = predict_xy(model, b["x"], kind)
        tk = b["teacher_kp"]
        conf = tk[..., 2] > 0.3
        d = (xy - tk[..., :2]).norm(dim=-1)
        hits += float(((d < threshold) & conf).sum())
        total += float(conf.sum())
    model.train()
    return {"agreement": hits / max(total, 1.0)}


class HeldoutPCK:
    """PCK@0.2 of the torso on human-labelled images never trained on (e.g. ``lspet:DIR[3600:]``), with
    the service's own crops (square, 1.25× the box) and the student's served decoding: the second
    held-out signal, on real labels rather than the teacher's."""

    def __init__(self, records: list, size: int, margin: float = 1.25, threshold: float = 0.2):
        from service.pipeline import preprocess as pp

        from .evaluate import scorable

        crops, gts, torsos = [], [], []
        for r in records:
            image = None
            for p, g, torso in scorable(r.people):
                image = r.load() if image is None else image
                m = pp.crop_matrix(np.asarray(p.box), margin, size, size)
                crops.append(pp.warp_crop(image, m, size, size)[..., ::-1])  # BGR -> RGB
                xy = pp.apply_affine(g[:, :2], m)  # labels in crop pixels
                gts.append(np.concatenate([xy, g[:, 2:3]], -1))
                torsos.append(torso * size / (margin * max(p.box[2] - p.box[0], p.box[3] - p.box[1])))
        self.x = prepare(torch.from_numpy(np.ascontiguousarray(np.stack(crops)))) if crops else None
        self.gt = torch.from_numpy(np.stack(gts)).float() if gts else None
        self.torso = torch.tensor(torsos, dtype=torch.float32)
        self.threshold = threshold

    def __len__(self) -> int:
        return 0 if self.gt is None else len(self.gt)

    @torch.no_grad()
    def __call__(self, model, kind: str) -> float:
        if self.x is None or self.gt is None:
            return 0.0
        model.eval()
        xy = torch.cat([predict_xy(model, self.x[i:i + 64], kind) for i in range(0, len(self.x), 64)])
        model.train()
        size = self.x.shape[-1]
        d = (xy * size - 0.5 - self.gt[..., :2]).norm(dim=-1)  # 0..1 pixel centres -> crop pixels
        vis = self.gt[..., 2] > 0
        return float(((d <= self.threshold * self.torso[:, None]) & vis).sum() / vis.sum().clamp_min(1))


def predict_xy(model, x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "regress":
        return model(x)["xy"]
    if kind == "movenet":  # decoded as served; the decoder's x/S convention -> pixel centres
        from .students import movenet_decode
        o = model(x)
        xy = movenet_decode(torch.sigmoid(o["kpt_heatmap"]), torch.sigmoid(o["center"]), o["kpt_regress"],
                            o["kpt_offset"])[..., :2]
        return xy + 0.5 / x.shape[-1]
    m = model(x)["branches"][0]
    n, k, h, w = m.shape
    idx = m.reshape(n, k, -1).argmax(-1)
    ys = torch.div(idx, w, rounding_mode="floor").float()
    return torch.stack([((idx % w).float() + 0.5) / w, (ys + 0.5) / h], -1)


# ---- the loop ------------------------------------------------------------------------------------
def save_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    steps = [h["step"] for h in history if "loss" in h]
    ax[0].plot(steps, [h["loss"] for h in history if "loss" in h], label="total loss (smoothed)")
    ax[0].set_xlabel("step")
    ax[0].set_yscale("log")
    ax[0].legend()
    ev = [h for h in history if "agreement" in h]
    if ev:
        ax[1].plot([h["step"] for h in ev], [h["agreement"] for h in ev], "o-", label="held-out agreement with teacher")
        pck = [h for h in ev if "heldout_pck" in h]
        if pck:
            ax[1].plot([h["step"] for h in pck], [h["heldout_pck"] for h in pck], "s-", label="held-out PCK@0.2")
        ax[1].set_ylim(0, 1)
        ax[1].set_xlabel("step")
        ax[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
