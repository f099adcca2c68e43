"""Distillation losses and the targets they compare against.

Heatmaps are per-keypoint logits ``(N, K, h, w)``. Location is learnt as a distribution over the map
(spatial-softmax cross-entropy against a normalised target): plain MSE on sigmoid heatmaps collapses
to all-zero maps at our budgets (teachers README). The absolute level, which the served heatmap
decoder reads as the keypoint score, is learnt by a light per-pixel BCE."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_coords(h: int, w: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres in 0..1 units of the map (cell i covers [i/w, (i+1)/w])."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    return ys, xs


def gaussians(points: torch.Tensor, h: int, w: int, sigma_cells: float | torch.Tensor) -> torch.Tensor:
    """Unnormalised Gaussians (peak 1) at ``points`` (N, K, 2) = x, y in 0..1; sigma in map cells
    (a float or an (N, K) tensor). Differentiable in points and sigma (DistilPose's simulated heatmaps)."""
    ys, xs = grid_coords(h, w, points.device)
    sig = torch.as_tensor(sigma_cells, dtype=torch.float32, device=points.device)
    if sig.dim() == 2:
        sig = sig[..., None, None]
    dx = (xs[None, None, None, :] - points[..., 0, None, None]) * w
    dy = (ys[None, None, :, None] - points[..., 1, None, None]) * h
    return torch.exp(-(dx ** 2 + dy ** 2) / (2 * sig ** 2))


def spatial_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between softmax over each map and ``target`` (normalised here), weighted per
    keypoint by ``weight`` (N, K); averaged over the total weight."""
    n, k = logits.shape[:2]
    logp = F.log_softmax(logits.reshape(n, k, -1).float(), -1)
    t = target.reshape(n, k, -1).float()
    t = t / t.sum(-1, keepdim=True).clamp_min(1e-8)
    ce = -(t * logp).sum(-1)
    return (ce * weight).sum() / weight.sum().clamp_min(1.0)


def pixel_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """OKDHP's pixel-wise KL between two sets of heatmap logits: KL(teacher || student) of the spatial
    softmax of each keypoint map, averaged over keypoints (teacher is not back-propagated)."""
    n, k = student.shape[:2]
    ls = F.log_softmax(student.reshape(n, k, -1).float() / temperature, -1)
    lt = F.log_softmax(teacher.detach().reshape(n, k, -1).float() / temperature, -1)
    return (lt.exp() * (lt - ls)).sum(-1).mean() * temperature ** 2


def heat_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 20.0) -> torch.Tensor:
    """Per-pixel BCE on the sigmoid of the logits against target levels in 0..1; pixels near a
    keypoint are rare, so they weigh ``pos_weight`` times more."""
    t = target.float()
    return F.binary_cross_entropy_with_logits(logits.float(), t, weight=1.0 + pos_weight * t)


def teacher_targets(teacher_hm: torch.Tensor | None, teacher_kp: torch.Tensor, h: int, w: int,
                    window_cells: float = 2.0, sigma_cells: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(distribution target, level target) from the teacher. With heatmaps: the teacher's own map,
    windowed around its decoded keypoint (MoveNet's raw maps show every person in the crop; its
    decoder picks the centred one, and so must the student). Without: a Gaussian at the decoded point
    with the teacher's score as its peak."""
    pts, score = teacher_kp[..., :2], teacher_kp[..., 2]
    if teacher_hm is not None:
        hm = teacher_hm.float()
        if hm.shape[-2:] != (h, w):
            hm = F.interpolate(hm, size=(h, w), mode="area")
        windowed = hm * gaussians(pts, h, w, window_cells)
        return windowed, windowed
    g = gaussians(pts, h, w, sigma_cells)
    return g, g * score[..., None, None]


def label_targets(gt_kp: torch.Tensor, h: int, w: int, sigma_cells: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian targets for human labels and their weights (1 where labelled)."""
    return gaussians(gt_kp[..., :2], h, w, sigma_cells), (gt_kp[..., 2] > 0).float()


def soft_argmax(logits: torch.Tensor, beta: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected (x, y) in 0..1 under the spatial softmax, and the per-keypoint spread (std in cells)."""
    n, k, h, w = logits.shape
    p = F.softmax(logits.reshape(n, k, -1).float() * beta, -1).reshape(n, k, h, w)
    ys, xs = grid_coords(h, w, logits.device)
    px, py = p.sum(2), p.sum(3)  # (n, k, w), (n, k, h)
    x = (px * xs).sum(-1)
    y = (py * ys).sum(-1)
    vx = (px * (xs * w) ** 2).sum(-1) - (x * w) ** 2
    vy = (py * (ys * h) ** 2).sum(-1) - (y * h) ** 2
    return torch.stack([x, y], -1), torch.sqrt(((vx + vy) / 2).clamp_min(1e-4))
