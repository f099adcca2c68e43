"""Distilling through MoveNet's own heads (the ``movenet`` student kind).

The student keeps the four heads MoveNet's decoder reads, so every head gets the target the decoder
needs from it (cell units, the decoder's convention: a keypoint at continuous cell coordinate ``u``
is found at cell ``floor``-ish ``k`` with offset ``u - k``; the regression at the person's centre cell
``c`` points at ``u - c``):

* ``kpt_heatmap`` and ``center``: the teacher's own probability maps, pixel by pixel (BCE with soft
  targets, keypoint pixels up-weighted): the level stays calibrated, since the decoder reads the
  keypoint score straight off the map;
* ``kpt_offset``: on the 3x3 cells around each target keypoint, ``u - cell``;
* ``kpt_regress``: on the 3x3 cells around the teacher's centre peak (picked as the decoder picks it),
  ``u - cell``;
* the keypoint score: the map's value at the target cell against the teacher's score.

Coordinates come from the teacher's decoded keypoints, or from the human label where there is one
(LSPET), weighted by the teacher's score or ``gt_weight``. With OKDHP branches, each extra heatmap
branch learns the same map and the FAU ensemble teaches every branch by pixel-wise KL."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import heat_bce, pixel_kl
from .students import centre_cells

NEIGHBOURS = torch.tensor([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])  # (9, 2)
NEIGHBOUR_WEIGHT = torch.tensor([0.5 if dy or dx else 1.0 for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def coordinate_targets(b: dict, size: int, h: int, w: int, gt_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 17, 2) target positions (y, x) in continuous cell units and (N, 17) weights."""
    tk, gk = b["teacher_kp"], b["gt_kp"]
    scale = torch.tensor([w, h], dtype=torch.float32)
    ut = (tk[..., :2] - 0.5 / size) * scale
    ug = (gk[..., :2] - 0.5 / size) * scale
    labelled = (gk[..., 2] > 0) & (gt_weight > 0)
    u = torch.where(labelled[..., None], ug, ut).flip(-1)  # x, y -> y, x (the heads' channel order)
    weight = torch.where(labelled, torch.full_like(tk[..., 2], gt_weight), tk[..., 2] * (tk[..., 2] > 0.1))
    return u, weight


def _gather_pairs(field: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """field (N, 34, h, w) as (y, x) pairs per keypoint; ys, xs (N, 17, M) cells -> (N, 17, M, 2)."""
    n, c, h, w = field.shape
    flat = field.reshape(n, c // 2, 2, h * w)
    idx = (ys * w + xs)[:, :, None, :].expand(n, c // 2, 2, ys.shape[-1])
    return flat.gather(3, idx).permute(0, 1, 3, 2)


def _neighbourhood(cy: torch.Tensor, cx: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys = (cy[..., None] + NEIGHBOURS[:, 0]).clamp(0, h - 1)
    xs = (cx[..., None] + NEIGHBOURS[:, 1]).clamp(0, w - 1)
    return ys, xs


def movenet_losses(out: dict, b: dict, size: int, *, kd_weight: float = 1.0, gt_weight: float = 1.0,
                   coord_weight: float = 1.0, score_weight: float = 0.5, kl_weight: float = 0.5) -> dict:
    heat = out["kpt_heatmap"]
    n, k, h, w = heat.shape
    t_hm, t_c = b["teacher_hm"].float(), b["teacher_center"].float()
    if t_hm.shape[-2:] != (h, w):  # a student size other than the cache's: the teacher's maps follow
        t_hm = F.interpolate(t_hm, size=(h, w), mode="bilinear", align_corners=False)
        t_c = F.interpolate(t_c, size=(h, w), mode="bilinear", align_corners=False)
    u, cw = coordinate_targets(b, size, h, w, gt_weight)
    norm = cw.sum().clamp_min(1.0)
    losses = {"heat": heat_bce(heat, t_hm) * 10 * kd_weight,
              "center": heat_bce(out["center"], t_c) * 10 * kd_weight}
    # offsets around each target keypoint
    ky, kx = u[..., 0].floor().long().clamp(0, h - 1), u[..., 1].floor().long().clamp(0, w - 1)
    ys, xs = _neighbourhood(ky, kx, h, w)
    off = _gather_pairs(out["kpt_offset"].float(), ys, xs)
    target = u[:, :, None, :] - torch.stack([ys, xs], -1).float()
    err = F.smooth_l1_loss(off, target, reduction="none", beta=0.2).sum(-1) * NEIGHBOUR_WEIGHT
    losses["offset"] = (err.sum(-1) * cw).sum() / norm * coord_weight
    # regression from the teacher's centre cell (and its neighbours) to each keypoint
    cy, cx = centre_cells(t_c)
    ys, xs = _neighbourhood(cy[:, None].expand(n, k), cx[:, None].expand(n, k), h, w)
    reg = _gather_pairs(out["kpt_regress"].float(), ys, xs)
    target = u[:, :, None, :] - torch.stack([ys, xs], -1).float()
    err = F.smooth_l1_loss(reg, target, reduction="none", beta=0.5).sum(-1) * NEIGHBOUR_WEIGHT
    losses["regress"] = (err.sum(-1) * cw).sum() / norm * coord_weight * 0.25
    # the score the decoder will read: the map at the keypoint's cell
    logit = heat.float().reshape(n, k, -1).gather(2, (ky * w + kx)[..., None])[..., 0]
    tscore = b["teacher_kp"][..., 2].float()
    losses["score"] = F.binary_cross_entropy_with_logits(logit, tscore) * score_weight
    if "ensemble" in out:  # OKDHP: every branch learns the map, the FAU ensemble teaches each branch
        for i, m in enumerate(out["branches"]):
            if i:
                losses[f"heat{i}"] = heat_bce(m, t_hm) * 10 * kd_weight
            losses[f"kl{i}"] = pixel_kl(m, out["ensemble"]) * kl_weight
        losses["heat_ens"] = heat_bce(out["ensemble"], t_hm) * 10 * kd_weight
    return losses
