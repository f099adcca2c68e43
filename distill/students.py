"""Student networks.

* :class:`PoseStudent` — KDLPN-style light top-down network (pruned MobileNetV2 trunk warm-started from
  the teacher, pixel-shuffle/DUC decoder) trained as in OKDHP: ``branches`` heatmap heads share the
  trunk, a feature aggregation unit (FAU) learns per-keypoint weights that mix the branches into an
  ensemble, and the ensemble teaches every branch by pixel-wise KL. One branch is exported.
* :class:`RegressionStudent` — DistilPose-style: the same trunk regresses coordinates (integral
  regression over per-keypoint attention maps) plus a score and an uncertainty per keypoint; trained
  through *simulated heatmaps* rendered from its coordinates and uncertainty and compared with the
  teacher's heatmaps. The exported graph outputs keypoints, so serving needs no heatmap decoder.
* :class:`MoveNetStudent` — MoveNet's own four heads (keypoint heatmaps, person centre, keypoint
  regression from the centre, sub-cell offsets) on the same trunk, decoded by MoveNet's centre-aware
  decoder (``movenet_heads``). Warm-started from MoveNet Lightning with every channel kept it *is*
  Lightning at step 0; distillation from Thunder then moves it. Optional OKDHP branches are extra
  keypoint-heatmap heads mixed by an FAU; only the main heads are exported.
* :class:`DetectorStudent` — a CenterNet-style single-class person detector (centre heatmap, box size
  and centre offset at stride 4) warm-started from MoveNet MultiPose, with the peak picking and box
  assembly inside the exported graph.

Presets (``PRESETS``) fix the sizes the project ships."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from .losses import soft_argmax
from .movenet import Arch, Head, MoveNetLike, TeacherWeights, normalise

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass
class StudentConfig:
    kind: str = "pose"            # pose | movenet | regress | detector
    size: int = 192               # input side (square)
    keep: float = 0.25            # fraction of expansion channels kept in trunk blocks 1-5 (high resolution)
    branches: int = 3             # OKDHP branches (pose)
    warm_start: str = "movenet-thunder"
    keep_deep: float | None = None  # the same for blocks 6-16 (default: keep)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, StudentConfig] = {
    # the served pose models: MoveNet heads, warm-started from Lightning (or Thunder), distilled from Thunder
    "pose-m": StudentConfig("movenet", 192, 1.0, 1, "movenet-lightning"),
    "pose-mf": StudentConfig("movenet", 192, 0.5, 1, "movenet-lightning"),
    # the served detectors: CenterNet-style centre heatmap + box size
    "centernet-s": StudentConfig("detector", 256, 1.0, 1, "movenet-multipose"),
    # earlier recipes (OKDHP heatmap branches / DistilPose regression on a pruned Thunder trunk)
    "okdhp": StudentConfig("pose", 192, 0.25, 3),
    "okdhp-160": StudentConfig("pose", 160, 0.25, 3),
    "distilpose": StudentConfig("regress", 192, 0.25, 1),
}
# presets renamed so that none shares a served model's name (recorded recipes name them the old way;
# `posekd distill reproduce` prints them with the new names)
RENAMED_PRESETS = {"pose-s": "okdhp", "pose-t": "okdhp-160", "pose-r": "distilpose", "detector-s": "centernet-s"}


class FAU(nn.Module):
    """Feature aggregation unit: from the shared features and every branch's maps, one weight per
    branch and keypoint (softmax over branches)."""

    def __init__(self, channels: int, branches: int, keypoints: int = 17):
        super().__init__()
        self.branches, self.k = branches, keypoints
        self.fc = nn.Sequential(nn.Linear(channels + branches * keypoints, 64), nn.ReLU(),
                                nn.Linear(64, branches * keypoints))
        last = cast(nn.Linear, self.fc[2])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, features: torch.Tensor, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = [features.mean((2, 3))] + [m.detach().amax((2, 3)) for m in maps]
        w = self.fc(torch.cat(pooled, 1)).reshape(-1, self.branches, self.k).softmax(1)  # (N, B, K)
        stacked = torch.stack(maps, 1)  # (N, B, K, h, w)
        return (stacked * w[..., None, None]).sum(1), w


class PoseStudent(nn.Module):
    def __init__(self, cfg: StudentConfig, arch: Arch):
        super().__init__()
        self.cfg = cfg
        self.net = MoveNetLike(arch, {f"b{i}": 17 for i in range(cfg.branches)})
        self.fau = FAU(arch.fpn[2], cfg.branches) if cfg.branches > 1 else None

    def warm_start(self, tw: TeacherWeights) -> list[str]:
        # branch 0 starts from the teacher's keypoint head; the others start fresh, so the branches
        # differ and the ensemble has something to aggregate
        return self.net.load_teacher(tw, {"b0": "kpt_heatmap"})

    def forward(self, x: torch.Tensor) -> dict:
        out = self.net(x, features=True)
        maps = [out[f"b{i}"] for i in range(self.cfg.branches)]
        res = {"branches": maps, "features": out["features"]}
        if self.fau is not None:
            res["ensemble"], res["weights"] = self.fau(out["features"], maps)
        return res


MOVENET_HEADS = {"kpt_heatmap": 17, "center": 1, "kpt_regress": 34, "kpt_offset": 34}


class MoveNetStudent(nn.Module):
    """MoveNet heads (raw logits / cell units); with ``branches > 1`` extra keypoint-heatmap heads
    ``kpt_heatmap_b1..`` start as perturbed copies of the teacher's head (distinct, but not garbage
    for the ensemble to average in) and an FAU mixes all heatmap branches into the ensemble."""

    def __init__(self, cfg: StudentConfig, arch: Arch):
        super().__init__()
        self.cfg = cfg
        heads = dict(MOVENET_HEADS)
        heads.update({f"kpt_heatmap_b{i}": 17 for i in range(1, cfg.branches)})
        self.net = MoveNetLike(arch, heads)
        self.fau = FAU(arch.fpn[2], cfg.branches) if cfg.branches > 1 else None

    def warm_start(self, tw: TeacherWeights) -> list[str]:
        mapping = {n: n for n in MOVENET_HEADS}
        mapping.update({f"kpt_heatmap_b{i}": "kpt_heatmap" for i in range(1, self.cfg.branches)})
        loaded = self.net.load_teacher(tw, mapping)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for i in range(1, self.cfg.branches):
                pw = cast(Head, self.net.heads[f"kpt_heatmap_b{i}"]).sep.pw.weight
                pw.mul_(1 + 0.2 * torch.randn(pw.shape, generator=g))
        return loaded

    def heatmap_branches(self, out: dict) -> list[torch.Tensor]:
        return [out["kpt_heatmap"]] + [out[f"kpt_heatmap_b{i}"] for i in range(1, self.cfg.branches)]

    def forward(self, x: torch.Tensor) -> dict:
        out = self.net(x, features=True)
        if self.fau is not None:
            out["branches"] = self.heatmap_branches(out)
            out["ensemble"], out["weights"] = self.fau(out["features"], out["branches"])
        return out


class RegressionStudent(nn.Module):
    def __init__(self, cfg: StudentConfig, arch: Arch):
        super().__init__()
        self.cfg = cfg
        self.net = MoveNetLike(arch, {"attn": 17, "score": 17})
        self.log_beta = nn.Parameter(torch.zeros(()))

    def warm_start(self, tw: TeacherWeights) -> list[str]:
        return self.net.load_teacher(tw, {"attn": "kpt_heatmap", "score": "kpt_heatmap"})

    def forward(self, x: torch.Tensor) -> dict:
        out = self.net(x, features=True)
        xy, spread = soft_argmax(out["attn"], self.log_beta.exp())
        # score: the score map read at the regressed location (bilinear), as a logit
        grid = (xy * 2 - 1)[:, :, None, :]  # (N, K, 1, 2) in -1..1
        s = out["score"]
        n, k = s.shape[:2]
        logit = F.grid_sample(s.reshape(n * k, 1, *s.shape[2:]), grid.reshape(n * k, 1, 1, 2),
                              align_corners=False).reshape(n, k)
        return {"xy": xy, "sigma": spread, "score_logit": logit, "attn": out["attn"], "features": out["features"]}


class DetectorStudent(nn.Module):
    """Heads in MoveNet MultiPose's own convention, so all three warm-start from it and the student
    *is* MultiPose's person detector at step 0 (without pruning): ``center`` (1 logit map), ``box_scale``
    (2: height, width in stride-4 cells), ``box_offset`` (2: centre position within its cell, from the
    cell's top-left corner)."""

    def __init__(self, cfg: StudentConfig, arch: Arch):
        super().__init__()
        self.cfg = cfg
        self.net = MoveNetLike(arch, {"center": 1, "box_scale": 2, "box_offset": 2})

    def warm_start(self, tw: TeacherWeights) -> list[str]:
        return self.net.load_teacher(tw, {"center": "center", "box_scale": "box_scale", "box_offset": "box_offset"})

    def forward(self, x: torch.Tensor) -> dict:
        return self.net(x)


def build_student(cfg: StudentConfig, tw: TeacherWeights | None, arch: Arch | None = None) -> nn.Module:
    """A student shaped after ``tw`` (the warm-start teacher's graph) and loaded from it; with ``arch``
    (a checkpoint's own channel plan) and no teacher, the same network uninitialised, for weights
    loaded next; with neither (``warm_start="none"``) a tiny randomly initialised one (smoke tests)."""
    if arch is None:
        arch = Arch.from_teacher(tw, cfg.keep, cfg.keep_deep) if tw is not None else Arch.tiny()
    cls = {"pose": PoseStudent, "movenet": MoveNetStudent, "regress": RegressionStudent,
           "detector": DetectorStudent}[cfg.kind]
    model = cls(cfg, arch)
    if tw is not None:
        cast(Any, model).warm_start(tw)
    return model


def calibrate(model: Any, tw: TeacherWeights | None, images_uint8: torch.Tensor) -> list[float]:
    """After a pruned warm start: refit the pruned blocks' projections so the trunk reproduces the
    teacher's block outputs on ``images_uint8`` (N, H, W, 3). No-op without pruning or teacher."""
    from .movenet import reconstruct_pruned

    if tw is None or (model.cfg.keep >= 1 and (model.cfg.keep_deep or 1) >= 1):
        return []
    full = MoveNetLike(Arch.from_teacher(tw), {}).eval()
    full.load_teacher(tw)
    return reconstruct_pruned(model.net, full, normalise(images_uint8))


def channels_last(model: ModuleT) -> ModuleT:
    """The model with its weights in channels-last layout (faster convolutions on the CPU)."""
    return cast(Any, model).to(memory_format=torch.channels_last)  # torch's stubs omit this overload


# ---- export wrappers: what the served ONNX graph computes -------------------------------------
class PoseExport(nn.Module):
    """uint8-free float input (N, 3, S, S) in [-1, 1] -> sigmoid heatmaps (N, 17, S/4, S/4) of one branch."""

    def __init__(self, student: PoseStudent, branch: int = 0):
        super().__init__()
        self.student, self.branch = student, branch

    def forward(self, x):
        net = self.student.net
        return torch.sigmoid(net.heads[f"b{self.branch}"](net.features(x)))


class MoveNetExport(nn.Module):
    """-> the four MoveNet heads as the ``_heads`` teacher files give them: sigmoid keypoint heatmaps
    (N, 17, S/4, S/4), sigmoid centre map (N, 1, ...), keypoint regression and offsets (N, 34, ...)."""
    OUTPUTS = ["kpt_heatmap", "center_heatmap", "kpt_regress", "kpt_offset"]

    def __init__(self, student: MoveNetStudent):
        super().__init__()
        self.student = student

    def forward(self, x):
        net = self.student.net
        f = net.features(x)
        h = net.heads
        return (torch.sigmoid(h["kpt_heatmap"](f)), torch.sigmoid(h["center"](f)), h["kpt_regress"](f),
                h["kpt_offset"](f))


def centre_cells(center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The person-centre cell MoveNet's decoder picks from a probability map (N, 1, h, w): the peak
    weighted by closeness to the middle of the crop."""
    n, _, h, w = center.shape
    yy = torch.arange(h, dtype=torch.float32, device=center.device)[:, None]
    xx = torch.arange(w, dtype=torch.float32, device=center.device)[None, :]
    frame_w = 1.0 / (torch.sqrt((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) + 1.8)
    idx = (center[:, 0].float() * frame_w).reshape(n, -1).argmax(-1)
    return torch.div(idx, w, rounding_mode="floor"), idx % w


def movenet_decode(heat: torch.Tensor, center: torch.Tensor, regress: torch.Tensor,
                   offset: torch.Tensor) -> torch.Tensor:
    """Torch twin of the service's ``movenet_heads`` decoder (probability maps in) -> (N, 17, 3):
    x, y in 0..1 of the input (cell units / grid, the decoder's convention) and the score."""
    n, k, h, w = heat.shape
    yy = torch.arange(h, dtype=torch.float32, device=heat.device)[:, None].expand(h, w)
    xx = torch.arange(w, dtype=torch.float32, device=heat.device)[None, :].expand(h, w)
    cy, cx = centre_cells(center)
    b = torch.arange(n, device=heat.device)
    reg = regress[b, :, cy, cx].reshape(n, k, 2)
    ry = cy[:, None].float() + reg[..., 0]
    rx = cx[:, None].float() + reg[..., 1]
    dist = torch.sqrt((yy - ry[..., None, None]) ** 2 + (xx - rx[..., None, None]) ** 2)
    kidx = (heat / (dist + 1.8)).reshape(n, k, -1).argmax(-1)
    ky, kx = torch.div(kidx, w, rounding_mode="floor"), kidx % w
    score = heat.reshape(n, k, -1).gather(2, kidx[..., None])[..., 0]
    off = offset.reshape(n, k, 2, -1).gather(3, kidx[:, :, None, None].expand(n, k, 2, 1))[..., 0]
    return torch.stack([(kx + off[..., 1]) / w, (ky + off[..., 0]) / h, score], -1)


class RegressionExport(nn.Module):
    """-> keypoints (N, 17, 3): x, y in 0..1 of the input, score."""

    def __init__(self, student: RegressionStudent):
        super().__init__()
        self.student = student

    def forward(self, x):
        out = self.student(x)
        return torch.cat([out["xy"], torch.sigmoid(out["score_logit"])[..., None]], -1)


class DetectorExport(nn.Module):
    """-> boxes (N, K, 5): x1, y1, x2, y2 in 0..1 of the input, score; the K best centre peaks
    (3x3 max-pool suppression)."""

    def __init__(self, student: DetectorStudent, top_k: int = 20):
        super().__init__()
        self.student, self.top_k = student, top_k

    def forward(self, x):
        out = self.student(x)
        return decode_centers(out["center"], out["box_scale"], out["box_offset"], self.top_k)


def decode_centers(center: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, top_k: int) -> torch.Tensor:
    n, _, h, w = center.shape
    heat = torch.sigmoid(center)
    peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat).float()
    score, idx = peaks.reshape(n, -1).topk(top_k, -1)
    cy = torch.div(idx, w, rounding_mode="floor").float()
    cx = (idx % w).float()
    sc = scale.reshape(n, 2, -1).gather(2, idx[:, None].expand(n, 2, top_k))
    of = offset.reshape(n, 2, -1).gather(2, idx[:, None].expand(n, 2, top_k))
    yc = (cy + of[:, 0]) / h
    xc = (cx + of[:, 1]) / w
    bh = sc[:, 0].clamp_min(0) / h
    bw = sc[:, 1].clamp_min(0) / w
    return torch.stack([xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2, score], -1)


def prepare(images_uint8: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> normalised NCHW float in channels_last memory."""
    return normalise(images_uint8).contiguous(memory_format=torch.channels_last)
