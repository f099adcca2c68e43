"""From a training run to a served version, in steps: :func:`export_run` (checkpoint → ONNX, checked
against torch), :func:`lineage_of` (what made it: teacher, data, commands), :func:`evaluate_export`
(metrics, and the public floor and the current production re-measured in the same run),
:func:`register_and_promote` (a new version in the store; ``production`` moves only through the gates).
``posekd distill export`` runs them in order."""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.shared import data_dir, shared_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = shared_dir()
DATA = data_dir()
EVAL_SET = DATA / "labeled" / "coco_mini_train" / "annotations" / "person_keypoints_train2017.json"

RECIPES = {
    "pose": "OKDHP online distillation: branches on a shared pruned-MoveNet trunk with a DUC decoder (KDLPN), "
            "FAU ensemble teaches each branch by pixel-wise KL; plus the teacher's heatmaps windowed at its "
            "decoded keypoints (spatial-softmax CE + score BCE) and human labels; consistent teaching on "
            "cached augmented views; branch 0 exported",
    "movenet": "MoveNet heads kept (keypoint heatmaps, person centre, regression, offsets; MoveNet's centre-aware "
               "decoder), warm-started from a public MoveNet (Lightning, or Thunder itself at a smaller input); "
               "distilled from Thunder at its own 256 px: its keypoint and centre maps pixel by pixel, its decoded "
               "keypoints (LSPET human labels where present) as offset/regression targets, its scores at the "
               "keypoint cells; EMA weights selected by held-out teacher agreement",
    "regress": "DistilPose-style regression: integral coordinates + uncertainty rendered as simulated heatmaps "
               "matched to the teacher's heatmaps, coordinate L1 to teacher and human labels, score BCE",
    "detector": "CenterNet-style single-class detector: centre focal loss, log box size and centre offset L1, "
                "targets from the detection teacher's boxes on the same letterboxed views",
}

def _served(fields: dict, data: bytes, threads: int = 2):
    from service.pipeline.runtime import OnnxModel
    from service.store.manifest import Manifest, sha256_bytes
    from service.store.registry import ServedModel

    manifest = Manifest.model_validate({**fields, "version": fields.get("version", 1), "sha256": sha256_bytes(data)})
    return ServedModel(manifest, OnnxModel(manifest, data, device="cpu", intra_threads=threads), (0, 0))


def _load_ref(ref: str | None, store, threads: int = 2):
    if not ref:
        return None
    from .teachers import load_model
    return load_model(ref, store=store, threads=threads)


def data_relative(value):
    """Paths under the data root written as ``$POSEKD_DATA/...`` (manifests name data relative to the data
    root, never the training machine's absolute path); applied through dicts, lists and strings."""
    if isinstance(value, str):
        resolved = DATA.resolve()
        for prefix in (str(resolved), str(DATA), os.path.relpath(resolved)):  # absolute, as given, from here
            if prefix not in (".", ""):
                value = value.replace(prefix, "$POSEKD_DATA")
        return value
    if isinstance(value, dict):
        return {k: data_relative(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [data_relative(v) for v in value]
    return value


def _load_ref_bytes(ref: str, store, threads: int = 2):
    from .teachers import load_model_bytes
    return load_model_bytes(ref, store=store, threads=threads, input_size=det_size(ref))


def _current_production(store, name: str):
    if name not in store.names() or "production" not in store.aliases(name):
        return None
    return store.manifest(name, store.aliases(name)["production"])


def train_commands(meta: dict, last_step: int | None = None) -> list[str]:
    """The training commands of a run, in order (a resumed run has several), each as it reruns: a
    wall-time cap (``--minutes``) becomes the step it stopped at (``--stop-after``), where the next
    command resumed or, for the last, ``last_step``."""
    from .reproduce import pin_stop

    commands = meta.get("commands") or ([meta["command"]] if meta.get("command") else [])
    stops = [*meta.get("resumed_at", []), last_step]
    return [pin_stop(c.split("  #")[0], stops[i] if i < len(stops) else None) for i, c in enumerate(commands)]


def det_size(ref: str) -> tuple[int, int] | None:
    """MultiPose labels at long side 512 (the teachers README's setting); others at their own size."""
    return (512, 512) if ref == "movenet-multipose" else None


def command_line(args=None) -> str:
    """The command as typed (``posekd …``), for lineages."""
    argv = getattr(args, "argv", None) or sys.argv[1:]
    return "posekd " + " ".join(shlex.quote(a) for a in argv)


@dataclass
class Exported:
    run: Path
    state: dict  # the checkpoint, with the selected (best) weights
    trained: Any  # StudentConfig as trained
    cfg: Any  # StudentConfig as exported (another input size possible)
    data: bytes  # the ONNX file
    path: Path
    diff: float  # max |ONNX - torch|


def export_run(run: Path, *, last: bool = False, size: int | None = None) -> Exported:
    """The run's best checkpoint (or the last with ``last``) to ONNX at its size (or ``size``: the
    network is fully convolutional), checked against torch at batch 1 and 3."""
    import torch

    from .export import export_module, parity, to_onnx
    from .students import StudentConfig, build_student
    from .train import warm_start_weights

    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    if state.get("ema") is not None:  # with EMA on, the average is what was evaluated and is exported
        state = {**state, "model": state["ema"]}
    if not last and (run / "best.pt").is_file():
        # the weights at the best held-out signal; the lineage (every command, resumes) stays the run's own
        best = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
        state = {**state, "model": best["model"], "selected": {"step": best["step"], "by": best.get("selected_by"),
                                                               "signal": best.get("best")}}
    print(f"exporting {run} at step {state.get('selected', state)['step']} of {state['step']}")
    cfg = trained = StudentConfig(**state["student"])
    if "arch" in state:  # the channel plan travels with the weights: no teacher file needed
        from .movenet import Arch
        model = build_student(cfg, None, arch=Arch.from_dict(state["arch"]))
    else:  # checkpoints written before the plan was saved: re-derive it from the warm-start teacher
        model = build_student(cfg, warm_start_weights(cfg))
    model.load_state_dict(state["model"])
    if size and size != cfg.size:
        cfg = dataclasses.replace(cfg, size=size)
        setattr(model, "cfg", cfg)  # noqa: B010  (nn.Module's __setattr__ types attributes as modules)
    module = export_module(model, cfg)
    data = to_onnx(module, cfg)
    if cfg.kind == "detector":  # fully convolutional: any multiple of 32 px (checked at the exported size)
        from .reshape import free_spatial_dims
        data = free_spatial_dims(data)
    diff = parity(module, data, cfg)
    path = run / "model.onnx"
    path.write_bytes(data)
    print(f"exported {path} ({len(data) / 1e6:.2f} MB); ONNX vs torch max |diff| = {diff:.2e}")
    return Exported(run, state, trained, cfg, data, path, diff)


def lineage_of(ex: Exported, command: str) -> tuple[dict, dict]:
    """(lineage, cache meta) of an exported run: teacher, warm start, recipe, training settings, data,
    excluded eval set, the exact cache + train + export commands, git commit."""
    from .export import git_commit

    state, cfg, trained = ex.state, ex.cfg, ex.trained
    cache_meta: dict = {}
    cache_dir = Path(state["meta"].get("cache", ""))
    if (cache_dir / "meta.json").is_file():
        cache_meta = json.loads((cache_dir / "meta.json").read_text())
    history = [h for h in state["history"] if "agreement" in h]
    if "selected" in state:  # the held-out signals of the exported weights
        history = [h for h in history if h["step"] <= state["selected"]["step"]] or history
    training = {"student": trained.to_dict(), **({"exported_size": cfg.size} if cfg is not trained else {}),
                "train": {k: v for k, v in state["train"].items() if k != "extra"},
                "steps": state["step"], **({"init": state["meta"]["init"]} if "init" in state["meta"] else {}),
                "heldout_teacher_agreement": history[-1]["agreement"] if history else None,
                "heldout_pck": history[-1].get("heldout_pck") if history else None,
                **({"selected": state["selected"]} if "selected" in state else {})}
    lineage = {
        "source": f"posekd distill ({cfg.kind} student)",
        "teacher": cache_meta.get("teacher"),
        "warm_start": f"{cfg.warm_start} (trunk/FPN/heads initializers, {cfg.keep:.0%} of expansion channels)",
        "recipe": RECIPES[cfg.kind],
        "training": training,
        "data": cache_meta.get("data", []),
        "excluded": cache_meta.get("exclude", []),
        "cache": {k: cache_meta.get(k) for k in ("count", "people", "seed", "teacher", "command") if k in cache_meta},
        "command": " && ".join(c for c in (cache_meta.get("command"), *train_commands(state["meta"], state["step"]),
                                            command) if c),
        "train_resumed_at": state["meta"].get("resumed_at", []),
        "git_commit": git_commit(),
        "license": "weights derived from Google's MoveNet (Apache-2.0) on research-only data; research use",
    }
    return data_relative(lineage), cache_meta


def _warm_name(ref: str) -> str:
    return {"movenet-lightning": "Lightning", "movenet-thunder": "Thunder architecture"}.get(ref, ref)


def description(cfg) -> str:
    return {"pose": f"PoseKD pose student (heatmaps, {cfg.size}px, OKDHP branch 0, DUC decoder)",
            "movenet": f"PoseKD pose student (MoveNet heads, {cfg.size}px, {_warm_name(cfg.warm_start)} warm start "
                       f"distilled from Thunder, {cfg.keep:.0%} of the high-resolution expansion channels)",
            "regress": f"PoseKD regression student (DistilPose-style, coordinates out, {cfg.size}px)",
            "detector": f"PoseKD person detector student (centre + box size, {cfg.size}px letterbox)"}[cfg.kind]


@dataclass(frozen=True)
class Evaluation:
    """What a candidate is measured on and against: ``eval_set`` (COCO keypoint JSON; None: the dev set,
    "": none), the ``teacher`` a pose model's agreement is measured with, the ``pose`` model a detector is
    measured end to end with, the ``detector`` a pose model is also measured end to end with, held-out
    ``pck`` data, and the public ``floor`` model measured again beside it."""
    eval_set: str | None = None
    teacher: str = "movenet-thunder"
    pose: str = "pose-s"
    detector: str | None = None
    pck: str = ""
    floor: str | None = None


def evaluate_export(ex: Exported, fields: dict, store, how: Evaluation, gates) -> tuple[dict, dict | None]:
    """(metrics of the export, metrics of the public floor measured again in this run or None)."""
    metrics, floor = evaluate_candidate(ex.cfg.kind, ex.data, fields, store, how, gates)
    metrics["export_max_abs_diff"] = ex.diff
    return metrics, floor


def evaluate_candidate(kind: str, data: bytes, fields: dict, store, how: Evaluation,  # noqa: PLR0913
                       gates) -> tuple[dict, dict | None]:
    """Metrics of a candidate ONNX (an export, a quantized or a re-shaped version; ``kind``: detector or a
    pose kind) and of the public floor measured again in this run (or None). The version the candidate
    would replace (the ``production`` of its name) is measured again too, the same way, and summarised
    under ``metrics["production"]``: the gates compare like with like, never with numbers recorded under
    other settings."""
    from .evaluate import evaluate

    served = _served(fields, data)
    annotations = how.eval_set if how.eval_set is not None else (str(EVAL_SET) if EVAL_SET.is_file() else None)
    teacher = _load_ref(how.teacher, store) if kind != "detector" else _load_ref(how.pose, store)
    detector = _load_ref(how.detector, store) if kind != "detector" and how.detector else None
    pck_records = None
    if kind != "detector" and how.pck:
        from .data import read_source
        pck_records = read_source(how.pck)
    metrics = evaluate(served, data, annotations=annotations, teacher=teacher, detector=detector,
                       pck_records=pck_records)
    floor = None
    if how.floor and annotations:  # the public model to beat, measured again now, like for like
        floor_model, floor_data = _load_ref_bytes(how.floor, store)
        if kind == "detector":
            floor = evaluate(floor_model, floor_data, annotations=annotations, teacher=teacher)
        else:
            floor = evaluate(floor_model, floor_data, annotations=annotations, detector=detector,
                             pck_records=pck_records)
        metrics["floor"] = {k: floor.get(k) for k in ("model", gates.metric, "ms_b1", "ms_b8", "pck@0.2")
                            if floor.get(k) is not None}
    current = _current_production(store, fields["name"])
    if current is not None and annotations:  # the version to replace, measured again now, like for like
        cur_model, cur_data = _load_ref_bytes(f"{current.name}:{current.version}", store)
        cur = evaluate(cur_model, cur_data, annotations=annotations, teacher=teacher, detector=detector,
                       pck_records=pck_records)
        metrics["production"] = {k: cur.get(k) for k in ("model", gates.metric, "ms_b1", "ms_b8", "pck@0.2")
                                 if cur.get(k) is not None}
    return data_relative(metrics), floor


def register_and_promote(store, path: Path, fields: dict, gates, floor: dict | None, promote: bool) -> int:
    """Register the version; move ``production`` to it only when it passes the gates against the
    current production (measured again beside the candidate by :func:`evaluate_candidate`, or, without an
    evaluation set, its recorded accuracy and its latency now) and the floor. Exit code: 0, or 3 when refused."""
    from .evaluate import latency
    from .export import library_versions

    name = fields["name"]
    metrics = fields["metrics"]
    fields.setdefault("lineage", {}).setdefault("libraries", library_versions())
    existing = store.versions(name)
    version = (existing[-1] if existing else 0) + 1
    for summary in (metrics, *(metrics.get(k) or {} for k in ("gt_boxes", "end_to_end"))):
        for key in ("model", "detector", "pose"):  # the candidate was measured before it had a version
            if summary.get(key) == f"{name}:1" and version != 1:
                summary[key] = f"{name}:{version}"
    manifest = store.add_version(path, fields, version=version)
    print(f"registered {manifest.name}:{manifest.version} in {store.root}")
    current = _current_production(store, name)
    current_metrics = None
    if current is not None and current.version != manifest.version:
        again = metrics.get("production") or {}
        if again.get("model") == f"{name}:{current.version}":  # measured in this run beside the candidate
            current_metrics = again
        else:  # not measured again (no evaluation set): its recorded accuracy, its latency now
            cur = _load_ref(f"{name}:{current.version}", store)
            current_metrics = {**current.metrics, "ms_b1": latency(cur, 1), "ms_b8": latency(cur, 8, 10)}
    ok, why = gates.check(metrics, current_metrics, floor)
    if not promote:
        print("not promoted (--no-promote)")
    elif ok:
        store.set_alias(name, "production", manifest.version)
        print(f"{name}:{manifest.version} passed the gates and is now production")
    else:
        print(f"{name}:{manifest.version} stays out of production: " + "; ".join(why))
        return 3
    return 0
