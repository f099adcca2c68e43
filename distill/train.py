"""Training loops for the students: cached teacher labels in, checkpoints and a curve image out.

Every run directory holds ``checkpoint.pt`` (model, optimiser, step, config, history; training resumes
from it), ``curve.png`` (losses and the held-out agreement with the teacher) and ``history.json``."""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F

from .augment import FLIP_INDEX
from .cache import PoseCache
from .heldout import HeldoutPCK, pose_agreement, predict_xy, save_curve  # noqa: F401  (re-exported)
from .memory import reuse_freed_memory
from .steps import heatmap_losses, hint_loss, movenet_step, pose_step, regress_step  # noqa: F401
from .students import StudentConfig, build_student, calibrate, channels_last, prepare
from .teachers import TEACHER_FILES, teachers_dir
from .weights import load_exported

log = logging.getLogger("posekd.distill")


@dataclass
class TrainConfig:
    steps: int = 3000
    batch: int = 32
    lr: float = 1e-3
    warm_start_lr: float = 4e-4      # parameters copied from the teacher move slower
    weight_decay: float = 1e-4
    warmup: int = 150
    gt_weight: float = 1.0           # human labels (LSPET, COCO-format training sets)
    kd_weight: float = 1.0           # the teacher's (windowed) heatmaps / decoded keypoints
    kl_weight: float = 0.5           # OKDHP: ensemble -> each branch, pixel-wise KL
    bce_weight: float = 1.0          # keypoint score level
    sim_weight: float = 0.1          # DistilPose: simulated vs teacher heatmaps (a squared distance × map area)
    coord_weight: float = 5.0        # DistilPose: L1 on coordinates
    hint_weight: float = 0.0         # FitNets hint on the teacher's FPN features (off: no gain per CPU-minute)
    holdout: int = 256               # last views of the cache, never trained on: the agreement curve
    calibration: int = 96            # views used to refit pruned blocks to the teacher's features
    eval_every: int = 250
    ema: float = 0.0                 # decay of an exponential moving average of the weights (0: off);
    #                                  when on, the average is what is evaluated, kept as best and exported
    threads: int = 0                 # torch threads (0: leave torch's default)
    max_minutes: float = 0.0         # stop (with a checkpoint) after this much wall time in this run (0: no cap);
    #                                  equal-CPU-time comparisons; not reproducible, so never in a recorded recipe
    stop_after: int = 0              # stop (with a checkpoint) at this step (0: at ``steps``): a budget of steps
    #                                  that leaves the schedule, defined over ``steps``, as it is
    dim_light: float = 0.0           # detector: share of views darkened as if shot in dim light (augment.dim_light)
    seed: int = 0
    extra: dict = field(default_factory=dict)


def warm_start_weights(cfg: StudentConfig):
    from .movenet import read_teacher

    if cfg.warm_start in ("", "none"):
        return None
    path = Path(cfg.warm_start)
    if not path.is_file():
        path = teachers_dir() / TEACHER_FILES.get(cfg.warm_start, cfg.warm_start)
    return read_teacher(path)


class PoseBatches:
    """Random batches of cached views, with an exact horizontal flip half of the time (the teacher's
    labels flip with the image, left/right swapped)."""

    def __init__(self, cache: PoseCache, size: int, holdout: int, seed: int = 0):
        self.cache, self.size = cache, size
        n = len(cache)
        self.train_idx = np.arange(0, max(1, n - holdout))
        self.val_idx = np.arange(max(1, n - holdout), n) if n > holdout else np.arange(0, 0)
        self.rng = np.random.default_rng(seed)

    def get(self, idx: np.ndarray, flip: bool | None = None) -> dict:
        idx = np.sort(idx)
        c = self.cache
        images = torch.from_numpy(np.ascontiguousarray(c.images[idx]))
        tkp = torch.from_numpy(c.teacher_kp[idx].copy())
        gkp = torch.from_numpy(c.gt_kp[idx].copy())
        thm = torch.from_numpy(np.asarray(c.teacher_hm[idx], np.float32)) if c.teacher_hm is not None else None
        tc = getattr(c, "teacher_center", None)
        tc = torch.from_numpy(np.asarray(tc[idx], np.float32)) if tc is not None else None
        do_flip = self.rng.random() < 0.5 if flip is None else flip
        if do_flip:
            images = images.flip(2)
            tkp, gkp = tkp[:, FLIP_INDEX], gkp[:, FLIP_INDEX]
            tkp[..., 0] = 1 - tkp[..., 0]
            gkp[..., 0] = 1 - gkp[..., 0]
            if thm is not None:
                thm = thm[:, FLIP_INDEX].flip(3)
            if tc is not None:
                tc = tc.flip(3)
        x = prepare(images)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
            x = x.contiguous(memory_format=torch.channels_last)
        return {"x": x, "teacher_kp": tkp, "gt_kp": gkp, "teacher_hm": thm, "teacher_center": tc}

    def sample(self, batch: int) -> dict:
        return self.get(self.rng.choice(self.train_idx, batch, replace=len(self.train_idx) < batch))


def resumed_meta(previous: dict, current: dict | None, step: int) -> dict:
    """Keep every command that trained a run, in order (``command`` joins them with ``&&``), and the
    steps at which it was resumed."""
    current = dict(current or {})
    commands = list(previous.get("commands") or ([previous["command"]] if previous.get("command") else []))
    commands = [c.split("  #")[0] for c in commands]
    if current.get("command"):
        commands.append(current["command"])
    current["commands"] = commands
    current["command"] = " && ".join(commands)
    current["resumed_at"] = [*previous.get("resumed_at", []), step]
    return current


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, warm_names: set[str]) -> torch.optim.Optimizer:
    warm: list[torch.nn.Parameter] = []
    fresh: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (warm if name in warm_names else fresh).append(p)
    groups = [{"params": warm, "lr": cfg.warm_start_lr}, {"params": fresh, "lr": cfg.lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)


# ---- per-kind losses -----------------------------------------------------------------------------
class TrainingRun:
    """What every student's training loop shares: build and warm-start the student, the optimiser and
    schedule, resuming from ``OUT/checkpoint.pt``, the update step with a smoothed loss and progress bar,
    and checkpoints (model, optimiser, history, curve image)."""

    def __init__(self, cfg: StudentConfig, tc: TrainConfig, out: Path | str, warm: Callable[[str], bool], *,
                 resume: bool, meta: dict | None, progress: bool, desc: str, curve_title: str):
        from tqdm import tqdm

        self.cfg, self.tc, self.curve_title = cfg, tc, curve_title
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        reuse_freed_memory()  # half the step time was page faults on freshly mapped activations
        torch.manual_seed(tc.seed)
        self.tw = warm_start_weights(cfg)
        self.model = build_student(cfg, self.tw)
        self.opt = make_optimizer(self.model, tc, {n for n, _ in self.model.named_parameters() if warm(n)})
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(tc))
        self.history: list[dict] = []
        self.step = 0
        self.meta = meta
        self.ckpt = self.out / "checkpoint.pt"
        self.best_path = self.out / "best.pt"
        self.best = -1.0
        self.ema: torch.nn.Module | None = None
        self._ema_state: dict | None = None
        if resume and self.ckpt.exists():
            state = torch.load(self.ckpt, map_location="cpu", weights_only=False)
            if state["student"] == cfg.to_dict():
                self.model.load_state_dict(state["model"])
                self._ema_state = state.get("ema")
                self.best = state.get("best", -1.0)
                self.opt.load_state_dict(state["optimizer"])
                self.sched.load_state_dict(state["scheduler"])
                self.step, self.history = state["step"], state["history"]
                self.meta = resumed_meta(state.get("meta", {}), meta, self.step)
                log.info("resumed %s at step %d", self.ckpt, self.step)
        self.smooth: float | None = None
        self.started = time.time()
        self.bar = tqdm(total=tc.steps, initial=self.step, desc=desc, disable=not progress, unit="step")

    @property
    def running(self) -> bool:
        if self.tc.max_minutes and time.time() - self.started > self.tc.max_minutes * 60:
            return False
        if self.tc.stop_after and self.step >= self.tc.stop_after:
            return False
        return self.step < self.tc.steps

    @property
    def selected(self) -> torch.nn.Module:
        """The weights that are evaluated, kept as best and exported: the EMA when it is on."""
        return self.ema if self.ema is not None else self.model

    def _update_ema(self) -> None:
        import copy

        if not self.tc.ema:
            return
        if self.ema is None:  # made lazily: after any --init / calibration changed the weights
            self.ema = copy.deepcopy(self.model).eval()
            if self._ema_state is not None:
                self.ema.load_state_dict(self._ema_state)
            for p in self.ema.parameters():
                p.requires_grad_(False)
            return
        d = min(self.tc.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for e, m in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
                if e.dtype.is_floating_point:
                    e.mul_(d).add_(m.detach(), alpha=1 - d)
                else:
                    e.copy_(m)

    def update(self, losses: dict[str, torch.Tensor]) -> bool:
        """One optimiser step on the summed losses; True when a checkpoint is due."""
        loss = torch.stack(list(losses.values())).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        self.sched.step()
        self._update_ema()
        self.step += 1
        value = float(loss.detach())
        self.smooth = value if self.smooth is None else 0.98 * self.smooth + 0.02 * value
        if self.step % 10 == 0:
            self.history.append({"step": self.step, "loss": round(self.smooth, 5),
                                 **{k: round(float(v), 5) for k, v in losses.items()}})
            self.bar.set_postfix(loss=f"{self.smooth:.4f}")
        self.bar.update(1)
        return self.step % self.tc.eval_every == 0 or self.step == self.tc.steps

    def save(self, evaluation: dict) -> None:
        """A checkpoint with ``evaluation`` (e.g. the held-out agreement) added to the history."""
        self.history.append({"step": self.step, **evaluation, "seconds": round(time.time() - self.started, 1)})
        signal = evaluation.get("signal", evaluation.get("agreement"))
        improved = signal is not None and signal > self.best
        if improved and signal is not None:
            self.best = float(signal)
        common = {"step": self.step, "history": self.history, "student": self.cfg.to_dict(), "train": self.tc.__dict__,
                  "meta": self.meta or {}, "best": self.best,
                  "arch": cast(Any, self.model).net.arch.to_dict()}  # self-describing: export needs no teacher
        torch.save({**common, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                    "scheduler": self.sched.state_dict(),
                    "ema": self.ema.state_dict() if self.ema is not None else None}, self.ckpt)
        if improved:  # the selected weights at their best held-out signal: what `distill export` takes
            torch.save({**common, "model": self.selected.state_dict(),
                        "selected_by": "mean of held-out teacher agreement and held-out PCK" if "signal" in evaluation
                        else "held-out teacher agreement"}, self.best_path)
        (self.out / "history.json").write_text(json.dumps(self.history))
        save_curve(self.history, self.out / "curve.png", self.curve_title)

    def report(self, what: str, value: float) -> None:
        self.bar.write(f"step {self.step}: loss {self.smooth:.4f}, {what} {value:.3f}")

    def finish(self) -> tuple[torch.nn.Module, dict]:
        self.bar.close()
        self.model.eval()
        last = [h for h in self.history if "agreement" in h]
        return self.model, {"steps": self.step, "agreement": last[-1]["agreement"] if last else None,
                            "seconds_this_run": round(time.time() - self.started, 1)}


def _warm_parameter(name: str) -> bool:
    """Parameters copied from the teacher (trained at the warm learning rate)."""
    return (name.startswith("net.") and not name.startswith("net.heads.")) or \
        name.startswith(("net.heads.b0.", "net.heads.attn.", "net.heads.kpt_", "net.heads.center."))


def _initialise(run: TrainingRun, batches: PoseBatches, cache: PoseCache, init: bytes | None) -> None:
    """Step 0: the weights of an exported model (``--init``), or a pruned warm start refitted to the
    teacher's features on a few cached views."""
    model, tw, cfg, tc = run.model, run.tw, run.cfg, run.tc
    if init is not None:
        loaded = load_exported(model, init)
        log.info("initialised %d tensors from the given exported model", len(loaded))
        return
    if tw is None:
        return
    calib = batches.train_idx[:: max(1, len(batches.train_idx) // tc.calibration)][: tc.calibration]
    x = torch.from_numpy(np.ascontiguousarray(cache.images[np.sort(calib)]))
    if x.shape[1] != cfg.size:
        x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(cfg.size,) * 2, mode="bilinear",
                          antialias=True).round().clamp(0, 255).byte().permute(0, 2, 3, 1)
    errors = calibrate(model, tw, x)
    if errors:
        log.info("pruned blocks refitted to the teacher's features; relative errors %s",
                 " ".join(f"{e:.2f}" for e in errors))


def _hint_network(run: TrainingRun, tc: TrainConfig):
    """Thunder's own trunk, frozen, for the FitNets-style feature hint (None without one)."""
    if run.tw is None or not tc.hint_weight:
        return None
    from .movenet import Arch, MoveNetLike
    net = channels_last(MoveNetLike(Arch.from_teacher(run.tw), {}).eval())
    net.load_teacher(run.tw)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class Recipe(Protocol):
    """One student kind's part of the loop (the rest is :func:`train`, the same for every kind)."""

    def start(self, run: TrainingRun) -> None:
        """Step 0 of a fresh run: the initial weights (a registered model's, or a refitted warm start)."""

    def batch(self, size: int) -> dict:
        """The next training batch."""

    def losses(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """One step's losses, by name."""

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """The held-out signals (``agreement``; ``signal``, what selects the best checkpoint, when there
        are several)."""


def train(run: TrainingRun, recipe: Recipe) -> tuple[torch.nn.Module, dict]:
    """The one training loop, read top to bottom: draw a batch, the kind's losses, backward and
    optimiser step, EMA (:meth:`TrainingRun.update`), and every ``eval_every`` steps the held-out
    signals and a checkpoint (:meth:`TrainingRun.save`)."""
    if run.step == 0:
        recipe.start(run)
        before = recipe.evaluate(run.model)
        run.history.append({"step": 0, **before, "seconds": 0.0})
        if before:
            log.info("held-out signals before training: %s", {k: round(v, 4) for k, v in before.items()})
    model = run.model = channels_last(run.model)
    model.train()
    while run.running:
        if run.update(recipe.losses(model, recipe.batch(run.tc.batch))):
            held = recipe.evaluate(run.selected)
            run.save(held)
            for key, value in held.items():
                run.report(key, value)
    if not run.ckpt.exists() or torch.load(run.ckpt, map_location="cpu", weights_only=False)["step"] != run.step:
        run.save(recipe.evaluate(run.selected))  # stopped between evaluations (--stop-after, --minutes)
    return run.finish()


class PoseRecipe:
    """Pose students (``movenet``, ``pose``, ``regress``) on a pose cache: augmented views with the
    teacher's labels, the kind's step, agreement on held-out views and, with ``heldout_pck``, PCK on
    labelled images never trained on (the best checkpoint then by the mean of the two)."""

    STEPS = {"regress": regress_step, "movenet": movenet_step, "pose": pose_step}

    def __init__(self, run: TrainingRun, cache: PoseCache, init: bytes | None, heldout_pck: HeldoutPCK | None):
        cfg, tc = run.cfg, run.tc
        self.cfg, self.tc, self.cache, self.init, self.heldout_pck = cfg, tc, cache, init, heldout_pck
        self.batches = PoseBatches(cache, cfg.size, tc.holdout, tc.seed + run.step)
        self.step_fn = self.STEPS[cfg.kind]
        self.hint_net = _hint_network(run, tc)

    def start(self, run: TrainingRun) -> None:
        _initialise(run, self.batches, self.cache, self.init)

    def batch(self, size: int) -> dict:
        b = self.batches.sample(size)
        if self.hint_net is not None:
            with torch.no_grad():
                b["teacher_features"] = self.hint_net.features(b["x"])
        return b

    def losses(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return self.step_fn(model, batch, self.tc)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        ev = pose_agreement(model, self.batches, self.cfg.kind)
        if self.heldout_pck is not None and len(self.heldout_pck):
            ev["heldout_pck"] = self.heldout_pck(model, self.cfg.kind)
            if "agreement" in ev:
                ev["signal"] = (ev["agreement"] + ev["heldout_pck"]) / 2
        return ev


def fit(student_cfg: StudentConfig, train_cfg: TrainConfig, cache: PoseCache, out: Path | str, *,
        resume: bool = True, progress: bool = True, meta: dict | None = None,
        init: bytes | None = None, heldout_pck: HeldoutPCK | None = None) -> tuple[torch.nn.Module, dict]:
    """Train a pose student on a pose cache (:class:`PoseRecipe` in :func:`train`); (model, summary)."""
    run = TrainingRun(student_cfg, train_cfg, out, _warm_parameter, resume=resume, meta=meta, progress=progress,
                      desc=f"distilling {student_cfg.kind} {Path(out).name}",
                      curve_title=f"{Path(out).name}: {student_cfg.kind}, keep {student_cfg.keep}, "
                                  f"{student_cfg.size}px")
    return train(run, PoseRecipe(run, cache, init, heldout_pck))
