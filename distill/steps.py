"""One training step's losses per student kind: heatmaps (+ OKDHP branches and FAU ensemble, KL),
feature hints, MoveNet's four heads, and DistilPose-style regression through simulated heatmaps."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .losses import heat_bce, label_targets, pixel_kl, spatial_ce, teacher_targets

if TYPE_CHECKING:
    from .train import TrainConfig


def heatmap_losses(logits: torch.Tensor, b: dict, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    h, w = logits.shape[-2:]
    t_dist, t_level = teacher_targets(b["teacher_hm"], b["teacher_kp"], h, w)
    g_dist, g_weight = label_targets(b["gt_kp"], h, w)
    tscore = b["teacher_kp"][..., 2]
    kd = spatial_ce(logits, t_dist, tscore)
    # the served score is the map's peak value: teach the peak the teacher's score directly, and keep the
    # rest of the map low with a light per-pixel BCE (alone, the many background pixels won: peaks ~0.01)
    peak = logits.float().amax((-1, -2))
    out = {"kd": kd * cfg.kd_weight, "score": F.binary_cross_entropy_with_logits(peak, tscore) * cfg.bce_weight,
           "bce": heat_bce(logits, t_level) * cfg.bce_weight * 0.5}
    if g_weight.sum() > 0:
        out["gt"] = spatial_ce(logits, g_dist, g_weight) * cfg.gt_weight
    return out


def hint_loss(out: dict, b: dict, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The warm-start teacher's own decoder features for the same view (computed in the loop): a dense
    target for the whole trunk, where the keypoint losses only reach it through 17 maps."""
    ft = b.get("teacher_features")
    if ft is None or not cfg.hint_weight:
        return {}
    fs = out["features"]
    return {"hint": F.mse_loss(fs.float(), ft) / ft.pow(2).mean().clamp_min(1e-6) * cfg.hint_weight}


def pose_step(model, b: dict, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    out = model(b["x"])
    losses: dict[str, torch.Tensor] = hint_loss(out, b, cfg)
    for i, m in enumerate(out["branches"]):
        for k, v in heatmap_losses(m, b, cfg).items():
            losses[f"{k}{i}"] = v
        if "ensemble" in out:
            losses[f"kl{i}"] = pixel_kl(m, out["ensemble"]) * cfg.kl_weight
    if "ensemble" in out:
        for k, v in heatmap_losses(out["ensemble"], b, cfg).items():
            losses[f"{k}_ens"] = v
    return losses


def movenet_step(model, b: dict, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    from .movenet_losses import movenet_losses

    return {**hint_loss(out := model(b["x"]), b, cfg),
            **movenet_losses(out, b, b["x"].shape[-1], kd_weight=cfg.kd_weight, gt_weight=cfg.gt_weight,
                             kl_weight=cfg.kl_weight)}


def regress_step(model, b: dict, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    from .losses import gaussians

    out = model(b["x"])
    h, w = out["attn"].shape[-2:]
    t_dist, t_level = teacher_targets(b["teacher_hm"], b["teacher_kp"], h, w)
    tscore = b["teacher_kp"][..., 2]
    # DistilPose: the student's coordinates and uncertainty rendered as a heatmap, compared with the
    # teacher's heatmap (both as distributions), plus the score and the coordinates themselves
    sim = gaussians(out["xy"], h, w, out["sigma"].clamp(0.7, 6.0))
    t = t_dist / t_dist.sum((-1, -2), keepdim=True).clamp_min(1e-8)
    s = sim / sim.sum((-1, -2), keepdim=True).clamp_min(1e-8)
    sim_loss = ((s - t) ** 2).sum((-1, -2)).mul(h * w).mul(tscore).mean()
    coord = (out["xy"] - b["teacher_kp"][..., :2]).abs().sum(-1)
    losses = {**hint_loss(out, b, cfg), "sim": sim_loss * cfg.sim_weight,
              "coord": (coord * tscore).mean() * cfg.coord_weight,
              "score": F.binary_cross_entropy_with_logits(out["score_logit"], tscore) * cfg.bce_weight,
              "attn": spatial_ce(out["attn"], t_dist, tscore) * 0.5}
    gv = (b["gt_kp"][..., 2] > 0).float()
    if gv.sum() > 0:
        losses["gt"] = ((out["xy"] - b["gt_kp"][..., :2]).abs().sum(-1) * gv).sum() / gv.sum() * cfg.coord_weight \
            * cfg.gt_weight
    return losses

