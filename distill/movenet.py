"""MoveNet-family networks in torch, warm-started from a teacher's ONNX initializers.

The MoveNet teachers are a MobileNetV2 trunk, an FPN with three x2 upsamplings down to stride 4, and
CenterNet-style heads (``kpt_heatmap``, ``center``, ``kpt_offset``, ``kpt_regress`` and, in MultiPose,
``box_scale`` / ``box_offset``). :func:`read_teacher` reads those weights (batch-norm already folded
into conv biases by the converter) out of the ONNX graph; :class:`MoveNetLike` rebuilds the same
network with two changes that make it a student:

* the FPN's bilinear resizes become learnable pixel-shuffle (DUC) upsamplers as in KDLPN, initialised
  to exactly the bilinear x2 they replace;
* every inverted-residual block keeps only a fraction ``keep`` of its expansion channels (those that
  carry most weight into the projection), which is where almost all of the multiply-adds are.

With ``keep=1`` and the same input size the torch model reproduces the teacher's heads (see tests).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------------
# reading a teacher graph
# ---------------------------------------------------------------------------------------------
@dataclass
class ConvW:
    name: str
    weight: np.ndarray
    bias: np.ndarray | None
    stride: int
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    group: int


@dataclass
class TeacherWeights:
    """Convolutions of a MoveNet graph, grouped the way :class:`MoveNetLike` needs them."""
    stem: list[ConvW]                      # Conv1, expanded_conv dw, expanded_conv project
    blocks: list[list[ConvW]]              # [expand, dw, project] for block_1 .. block_16
    out_conv: ConvW                        # out_relu 1x1
    fpn: list[ConvW]                       # conv2d, conv2d_1, dw, pw, conv2d_2, dw, pw, conv2d_3, dw, pw
    heads: dict[str, list[ConvW]] = field(default_factory=dict)  # name -> [dw, pw, final]
    source: str = ""


def read_teacher(path: Path | str) -> TeacherWeights:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs: list[ConvW] = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        pads = tuple(attrs.get("pads", [0, 0, 0, 0]))
        bias = inits[node.input[2]].copy() if len(node.input) > 2 else None
        convs.append(ConvW(node.name, inits[node.input[1]].copy(), bias, int(attrs.get("strides", [1, 1])[0]),
                           pads, int(attrs.get("group", 1))))
    out_idx = next(i for i, c in enumerate(convs) if "out_relu" in c.name)
    trunk = convs[:out_idx]
    stem, rest = trunk[:3], trunk[3:]
    if len(rest) % 3:
        raise ValueError(f"{path}: unexpected MobileNetV2 trunk ({len(trunk)} convs)")
    blocks = [rest[i:i + 3] for i in range(0, len(rest), 3)]
    # the FPN's convs by name (their order in the graph differs between Thunder and MultiPose)
    fpn_names = ["conv2d", "conv2d_1", "separable_conv2d", "re_lu", "conv2d_2", "separable_conv2d_1", "re_lu_1",
                 "conv2d_3", "separable_conv2d_2", "re_lu_2"]
    tail = convs[out_idx + 1:]
    fpn = []
    for key in fpn_names:
        found = [c for c in tail if f"model_1/{key}/" in c.name]
        if len(found) != 1:
            raise ValueError(f"{path}: FPN conv {key!r} not found once ({len(found)})")
        fpn.append(found[0])
    heads: dict[str, list[ConvW]] = {}
    for c in tail:
        m = re.search(r"/(\w+?)_0/", c.name)
        if m:
            heads.setdefault(m.group(1), []).append(c)
    return TeacherWeights(stem, blocks, convs[out_idx], fpn, heads, str(path))


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
class SamePadConv(nn.Conv2d):
    """Conv2d with TensorFlow's SAME padding for stride 2 (one extra row/column bottom-right)."""

    def __init__(self, cin, cout, k, stride=1, groups=1, bias=True):
        super().__init__(cin, cout, k, stride, padding=0 if stride == 2 else k // 2, groups=groups, bias=bias)

    def forward(self, x):
        if self.stride[0] == 2:
            x = F.pad(x, (0, 1, 0, 1)) if self.kernel_size[0] == 3 else x
        return super().forward(x)


def _load(conv: nn.Conv2d, w: ConvW | None, out_idx=None, in_idx=None) -> None:
    if w is None:
        return
    weight = w.weight
    bias = w.bias
    if out_idx is not None:
        weight = weight[out_idx]
        bias = bias[out_idx] if bias is not None else None
    if in_idx is not None and weight.shape[1] > 1:
        weight = weight[:, in_idx]
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        if conv.bias is not None:
            if bias is None:
                conv.bias.zero_()
            else:
                conv.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias)))


class InvertedResidual(nn.Module):
    def __init__(self, cin, hidden, cout, stride):
        super().__init__()
        self.expand = nn.Conv2d(cin, hidden, 1)
        self.dw = SamePadConv(hidden, hidden, 3, stride, groups=hidden)
        self.project = nn.Conv2d(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(F.relu6(self.dw(F.relu6(self.expand(x)))))
        return x + y if self.residual else y


class DUC(nn.Module):
    """Dense upsampling convolution: a depthwise 3x3 producing 4 sub-pixel phases per channel, then
    PixelShuffle(2). Initialised to bilinear x2 upsampling (half-pixel centres, edge replicate)."""

    def __init__(self, channels: int, bilinear_init: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * 4, 3, padding=1, groups=channels, bias=True,
                              padding_mode="replicate")
        self.shuffle = nn.PixelShuffle(2)
        if bilinear_init:
            k0, k1 = np.array([0.25, 0.75, 0.0]), np.array([0.0, 0.75, 0.25])
            phases = [np.outer(a, b) for a in (k0, k1) for b in (k0, k1)]  # (i, j) row-major
            w = np.stack(phases)[:, None].astype(np.float32)  # 4, 1, 3, 3
            with torch.no_grad():
                self.conv.weight.copy_(torch.from_numpy(np.tile(w, (channels, 1, 1, 1))))
                bias = self.conv.bias
                assert bias is not None
                bias.zero_()

    def forward(self, x):
        return self.shuffle(self.conv(x))


class SepConv(nn.Module):
    """Depthwise 3x3 (no bias) then pointwise with bias and ReLU: the FPN/head separable conv."""

    def __init__(self, cin, cout):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pw = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return F.relu(self.pw(self.dw(x)))


class Head(nn.Module):
    def __init__(self, cin, hidden, cout):
        super().__init__()
        self.sep = SepConv(cin, hidden)
        self.out = nn.Conv2d(hidden, cout, 1)

    def forward(self, x):
        return self.out(self.sep(x))

    def load(self, ws: list[ConvW]) -> None:
        _load(self.sep.dw, ws[0])
        _load(self.sep.pw, ws[1])
        _load(self.out, ws[2])


# ---------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------
STRIDES = [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]  # block_1 .. block_16 (index 0 unused)
TAPS = {"s4": 2, "s8": 5, "s16": 9}                               # FPN lateral inputs: block numbers


@dataclass
class Arch:
    """Channel plan of a MoveNet-like network."""
    stem: tuple[int, int]          # Conv1 channels, expanded_conv output channels
    blocks: list[tuple[int, int]]  # (hidden, out) for block_1..block_16
    out_conv: int                  # channels of the stride-32 1x1 (1280)
    fpn: tuple[int, int, int]      # 64, 32, 24
    head_hidden: int = 96

    @classmethod
    def from_teacher(cls, tw: TeacherWeights, keep: float = 1.0, keep_deep: float | None = None) -> Arch:
        """``keep`` of the expansion channels in the high-resolution blocks (1-5, strides 2-8, where most
        multiply-adds are), ``keep_deep`` (default: ``keep``) in blocks 6-16 (strides 16-32)."""
        blocks = []
        for i, b in enumerate(tw.blocks, start=1):
            hidden = b[0].weight.shape[0]
            k = keep if i <= TAPS["s8"] or keep_deep is None else keep_deep
            blocks.append((max(8, int(round(hidden * k / 8)) * 8) if k < 1 else hidden, b[2].weight.shape[0]))
        return cls((tw.stem[0].weight.shape[0], tw.stem[2].weight.shape[0]), blocks, tw.out_conv.weight.shape[0],
                   (tw.fpn[0].weight.shape[0], tw.fpn[3].weight.shape[0], tw.fpn[6].weight.shape[0]))


    def to_dict(self) -> dict:
        """JSON-able, for checkpoints (the architecture travels with the weights)."""
        return {"stem": list(self.stem), "blocks": [list(b) for b in self.blocks], "out_conv": self.out_conv,
                "fpn": list(self.fpn), "head_hidden": self.head_hidden}

    @classmethod
    def from_dict(cls, d: dict) -> Arch:
        stem, fpn = d["stem"], d["fpn"]
        return cls((int(stem[0]), int(stem[1])), [(int(h), int(o)) for h, o in d["blocks"]], int(d["out_conv"]),
                   (int(fpn[0]), int(fpn[1]), int(fpn[2])), int(d.get("head_hidden", 96)))

    @classmethod
    def tiny(cls) -> Arch:
        """A few-thousand-parameter plan for smoke tests (no teacher to copy from)."""
        outs = [8, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 24, 24, 24, 24]
        return cls((8, 8), [(16, o) for o in outs], 32, (16, 8, 8), 16)


class MoveNetLike(nn.Module):
    """MobileNetV2 + FPN (DUC upsampling) + named heads at stride 4; returns a dict of head outputs
    (raw logits) and, with ``features=True``, the stride-4 feature map too."""

    def __init__(self, arch: Arch, heads: dict[str, int]):
        super().__init__()
        self.arch = arch
        c1, c2 = arch.stem
        self.conv1 = SamePadConv(3, c1, 3, 2)
        self.stem_dw = SamePadConv(c1, c1, 3, 1, groups=c1)
        self.stem_project = nn.Conv2d(c1, c2, 1)
        layers, cin = [], c2
        for i, (hidden, cout) in enumerate(arch.blocks, start=1):
            layers.append(InvertedResidual(cin, hidden, cout, STRIDES[i]))
            cin = cout
        self.blocks = nn.ModuleList(layers)
        self.block_list: list[InvertedResidual] = layers  # the same modules, typed
        self.out_conv = nn.Conv2d(cin, arch.out_conv, 1)
        f64, f32, f24 = arch.fpn
        ch = {n: arch.blocks[b - 1][1] for n, b in TAPS.items()}
        self.lat32 = nn.Conv2d(arch.out_conv, f64, 1)
        self.up32 = DUC(f64)
        self.lat16 = nn.Conv2d(ch["s16"], f64, 1)
        self.sep16 = SepConv(f64, f32)
        self.up16 = DUC(f32)
        self.lat8 = nn.Conv2d(ch["s8"], f32, 1)
        self.sep8 = SepConv(f32, f24)
        self.up8 = DUC(f24)
        self.lat4 = nn.Conv2d(ch["s4"], f24, 1)
        self.sep4 = SepConv(f24, f24)
        self.heads = nn.ModuleDict({n: Head(f24, arch.head_hidden, c) for n, c in heads.items()})

    @staticmethod
    def _fit(x, ref):
        """Crop an upsampled map to its lateral's size (inputs that are not multiples of 32)."""
        return x[..., :ref.shape[-2], :ref.shape[-1]]

    def features(self, x):
        """x: float (N, 3, H, W) already normalised to [-1, 1]."""
        x = F.relu6(self.conv1(x))
        x = self.stem_project(F.relu6(self.stem_dw(x)))
        taps = {}
        for i, blk in enumerate(self.blocks, start=1):
            x = blk(x)
            for n, b in TAPS.items():
                if b == i:
                    taps[n] = x
        top = self.lat32(F.relu6(self.out_conv(x)))
        p16 = self.sep16(self._fit(self.up32(top), taps["s16"]) + self.lat16(taps["s16"]))
        p8 = self.sep8(self._fit(self.up16(p16), taps["s8"]) + self.lat8(taps["s8"]))
        return self.sep4(self._fit(self.up8(p8), taps["s4"]) + self.lat4(taps["s4"]))

    def forward(self, x, features: bool = False):
        f = self.features(x)
        out = {n: h(f) for n, h in self.heads.items()}
        if features:
            out["features"] = f
        return out

    # -- warm start ---------------------------------------------------------------------------
    def load_teacher(self, tw: TeacherWeights, head_map: dict[str, str] | None = None) -> list[str]:
        """Copy the teacher's weights; pruned blocks keep the expansion channels with the largest
        L1 weight into their projection. ``head_map`` maps own head names to the teacher's.
        Returns the names of heads that were warm-started."""
        _load(self.conv1, tw.stem[0])
        _load(self.stem_dw, tw.stem[1])
        _load(self.stem_project, tw.stem[2])
        for blk, (we, wd, wp) in zip(self.block_list, tw.blocks):
            hidden = blk.expand.out_channels
            importance = np.abs(wp.weight[:, :, 0, 0]).sum(0) * np.abs(we.weight[:, :, 0, 0]).sum(1)
            keep = np.sort(np.argsort(-importance)[:hidden])
            _load(blk.expand, we, out_idx=keep)
            _load(blk.dw, wd, out_idx=keep)
            _load(blk.project, wp, in_idx=keep)
        _load(self.out_conv, tw.out_conv)
        f = tw.fpn
        _load(self.lat32, f[0])
        _load(self.lat16, f[1])
        _load(self.sep16.dw, f[2])
        _load(self.sep16.pw, f[3])
        _load(self.lat8, f[4])
        _load(self.sep8.dw, f[5])
        _load(self.sep8.pw, f[6])
        _load(self.lat4, f[7])
        _load(self.sep4.dw, f[8])
        _load(self.sep4.pw, f[9])
        loaded = []
        for own, theirs in (head_map or {}).items():
            head = cast(Head, self.heads[own]) if own in self.heads else None
            if head is not None and theirs in tw.heads and \
                    tw.heads[theirs][2].weight.shape[0] == head.out.out_channels:
                head.load(tw.heads[theirs])
                loaded.append(own)
        return loaded


@torch.no_grad()
def reconstruct_pruned(student: MoveNetLike, teacher: MoveNetLike, x: torch.Tensor, *, samples: int = 40000,
                       ridge: float = 1e-3, seed: int = 0, refine_steps: int = 0) -> list[float]:
    """Refit each pruned block's projection by least squares so that, fed with the pruned network's own
    activations, the block reproduces the teacher's block output (channel pruning with feature
    reconstruction, block by block so errors do not pile up). ``x``: calibration inputs, normalised.
    With ``refine_steps``, every conv of the block (expand, depthwise, projection) is then tuned by
    gradient descent on the same target (block-wise feature distillation), which the linear refit alone
    cannot do. Returns the relative error of each pruned block's output after the fit."""
    g = torch.Generator().manual_seed(seed)
    xs = student.stem_project(F.relu6(student.stem_dw(F.relu6(student.conv1(x)))))
    xt = teacher.stem_project(F.relu6(teacher.stem_dw(F.relu6(teacher.conv1(x)))))
    errors = []
    for bs, bt in zip(student.block_list, teacher.block_list):
        yt = bt(xt)
        if bs.expand.out_channels < bt.expand.out_channels:
            h = F.relu6(bs.dw(F.relu6(bs.expand(xs))))
            target = yt - xs if bs.residual else yt
            hm = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
            tm = target.permute(0, 2, 3, 1).reshape(-1, target.shape[1])
            if len(hm) > samples:
                pick = torch.randperm(len(hm), generator=g)[:samples]
                hm, tm = hm[pick], tm[pick]
            a = torch.cat([hm, torch.ones(len(hm), 1)], 1).double()
            gram = a.T @ a
            gram += ridge * torch.eye(len(gram), dtype=gram.dtype) * gram.diagonal().mean()
            sol = torch.linalg.solve(gram, a.T @ tm.double()).float()  # (k + 1, cout)
            bs.project.weight.copy_(sol[:-1].T[:, :, None, None])
            if bs.project.bias is None:
                raise ValueError("the projection refit needs a biased 1×1 convolution")
            bs.project.bias.copy_(sol[-1])
            if refine_steps:
                _refine_block(bs, xs, yt, refine_steps, g)
            out = bs(xs)
            errors.append(float((out - yt).norm() / yt.norm().clamp_min(1e-8)))
            xs = out
        else:
            xs = bs(xs)
        xt = yt
    return errors


def _refine_block(block: InvertedResidual, x: torch.Tensor, target: torch.Tensor, steps: int,
                  g: torch.Generator, batch: int = 16, lr: float = 2e-3) -> None:
    with torch.enable_grad():
        opt = torch.optim.Adam(block.parameters(), lr=lr)
        scale = target.pow(2).mean().clamp_min(1e-8)
        for _ in range(steps):
            pick = torch.randint(0, len(x), (min(batch, len(x)),), generator=g)
            loss = F.mse_loss(block(x[pick]), target[pick]) / scale
            opt.zero_grad()
            loss.backward()
            opt.step()


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float in [-1, 1], as the MoveNet graphs do."""
    return x_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0
