"""The ``posekd distill …``, ``posekd eval`` and ``posekd teachers …`` commands (their options are in
:mod:`distill.cli`)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from .publish import (
    DATA,
    EVAL_SET,
    _load_ref,
    command_line,
    description,
    det_size,
    evaluate_export,
    export_run,
    lineage_of,
    register_and_promote,
)

log = logging.getLogger("posekd.distill")

DEFAULT_POSE_DATA = [f"lspet:{DATA}/labeled/lspet", f"folder:{DATA}/unlabeled/images",
                     f"video:{DATA}/unlabeled/videos@15"]
DEFAULT_DET_DATA = [f"folder:{DATA}/unlabeled/images", f"video:{DATA}/unlabeled/videos@10",
                    f"video:{DATA}/opencv_samples/vtest.avi@8", f"lspet:{DATA}/labeled/lspet"]


def _records(specs: list[str], exclude: list[str], limit_per_source: int | None = None):
    from .cache import exclude_records
    from .data import read_source

    records = []
    for spec in specs:
        rs = read_source(spec)
        if limit_per_source:
            rs = rs[:limit_per_source]
        log.info("%s: %d images", spec, len(rs))
        records.extend(rs)
    for spec in exclude:
        before = len(records)
        records = exclude_records(records, read_source(spec))
        if before != len(records):
            log.warning("left out %d images that are in %s", before - len(records), spec)
    return records


def _default_exclude() -> list[str]:
    return [f"coco:{EVAL_SET}"] if EVAL_SET.is_file() else []


def gates_of(args, kind: str):
    """The gates ``export``, ``quantize`` and ``reshape`` were asked for (``kind``: the student kind;
    detectors are gated by end-to-end AP, pose models by AP with ground-truth boxes)."""
    from .export import Gates

    return Gates(min_ap=args.min_ap, max_ap_drop=args.max_ap_drop, max_latency_ratio=args.max_latency_ratio,
                 metric="end_to_end" if kind == "detector" else "gt_boxes",
                 floor_latency_ratio=args.floor_latency_ratio, floor_accuracy=args.floor_accuracy)


def refused_as_dirty(store_root, allow: bool) -> bool:
    """True (and why, on stderr) when this store may not take a version from the work tree as it is."""
    from .export import dirty_refusal

    refused = dirty_refusal(store_root, allow)
    if refused:
        print(refused, file=sys.stderr)
    return refused is not None


def evaluation_of(args):
    """What ``export``, ``quantize`` and ``reshape`` measure a candidate on and against."""
    from .publish import Evaluation

    return Evaluation(eval_set=args.eval_set, teacher=args.teacher, pose=args.pose, detector=args.detector,
                      pck=args.pck, floor=args.floor)


# ---- cache ------------------------------------------------------------------------------------
def cmd_cache(args) -> int:
    from service.settings import get_settings
    from service.store import ModelStore

    from .cache import build_detection_cache, build_pose_cache, find_people
    from .teachers import ConfirmedBoxes, DetectionTeacher, PoseTeacher, detection_labeller, load_model

    store = ModelStore(args.store or get_settings().model_store)

    exclude = args.exclude if args.exclude is not None else _default_exclude()
    if args.kind == "pose":
        data = args.data or DEFAULT_POSE_DATA
        records = _records(data, exclude, args.limit)
        detector = None
        if any(not r.people for r in records):
            detector = DetectionTeacher(load_model(args.detector, store=store, input_size=det_size(args.detector)),
                                        threshold=0.15)
        records = find_people(records, detector)
        teacher = PoseTeacher(load_model(args.teacher, store=store))
        info = build_pose_cache(records, teacher, args.out, views=args.views, student_size=args.size, seed=args.seed,
                                meta={"data": data, "exclude": exclude, "command": command_line(args)})
    else:
        data = args.data or DEFAULT_DET_DATA
        records = _records(data, exclude, args.limit)
        try:
            boxes_from = detection_labeller(args.teacher, store, confirm=args.confirm,
                                            confirm_keypoints=args.confirm_keypoints, solo=args.solo)
        except ValueError as exc:
            raise SystemExit(f"--teacher: {exc}") from None
        info = build_detection_cache(records, boxes_from, args.out, size=args.size, views_per_image=args.views,
                                     zoom_out=args.zoom_out, seed=args.seed, meta={"data": data, "exclude": exclude,
                                                           "command": command_line(args)})
        if isinstance(boxes_from, ConfirmedBoxes):
            log.info("%s confirmed %d of %d teacher boxes", args.confirm, boxes_from.kept, boxes_from.seen)
    print(json.dumps(info, indent=2))
    return 0


# ---- train --------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    import dataclasses

    import torch

    from .cache import PoseCache
    from .students import PRESETS, RENAMED_PRESETS
    from .train import TrainConfig, fit

    if args.preset in RENAMED_PRESETS:
        print(f"the preset {args.preset!r} is now {RENAMED_PRESETS[args.preset]!r} (no preset shares a served "
              "model's name)", file=sys.stderr)
        return 2
    if args.preset not in PRESETS:
        print(f"unknown preset {args.preset!r}: one of {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    cfg = PRESETS[args.preset]
    overrides = {k: v for k, v in (("size", args.size), ("keep", args.keep), ("branches", args.branches),
                                   ("warm_start", args.warm_start)) if v}
    cfg = dataclasses.replace(cfg, **overrides)
    tc = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, warm_start_lr=args.warm_lr,
                     threads=args.threads or torch.get_num_threads(),
                     eval_every=args.eval_every, holdout=args.holdout, gt_weight=args.gt_weight,
                     kl_weight=args.kl_weight, hint_weight=args.hint_weight, seed=args.seed, ema=args.ema,
                     max_minutes=args.minutes, stop_after=args.stop_after, dim_light=args.dim_light,
                     warmup=min(150, max(1, args.steps // 10)))
    init, pinned = None, None
    if args.init:
        from service.settings import get_settings
        from service.store import ModelStore

        from .teachers import load_model_bytes
        served, init = load_model_bytes(args.init, store=ModelStore(args.store or get_settings().model_store))
        # the recipe names the exact version (an alias moves) and its file
        pinned = {"model": f"{served.name}:{served.version}", "sha256": served.manifest.sha256}
        args.argv = [pinned["model"] if a == args.init else a for a in (getattr(args, "argv", None) or sys.argv[1:])]
    meta = {"command": command_line(args), "cache": str(args.cache), **({"init": pinned} if pinned else {})}
    if cfg.kind == "detector":
        from .detector import DetectionCache, fit_detector
        model, summary = fit_detector(cfg, tc, DetectionCache(args.cache), args.out, resume=not args.restart,
                                      meta=meta, init=init)
    else:
        heldout = None
        if args.heldout_pck:
            from .data import read_source
            from .train import HeldoutPCK
            heldout = HeldoutPCK(read_source(args.heldout_pck), cfg.size)
            log.info("held-out PCK on %d labelled people from %s", len(heldout), args.heldout_pck)
        model, summary = fit(cfg, tc, PoseCache(args.cache), args.out, resume=not args.restart, meta=meta, init=init,
                             heldout_pck=heldout)
    print(json.dumps(summary, indent=2))
    return 0





# ---- export + register --------------------------------------------------------------------------
def cmd_export(args) -> int:
    """Export, evaluate, register, promote (see :mod:`distill.publish`)."""
    from service.settings import get_settings
    from service.store import ModelStore

    from .export import manifest_fields

    store = ModelStore(args.store or get_settings().model_store)
    if refused_as_dirty(store.root, args.allow_dirty):
        return 2
    ex = export_run(Path(args.run), last=args.last, size=args.size)
    lineage, _ = lineage_of(ex, command_line(args))
    name = args.name or ex.run.name
    fields = manifest_fields(name, ex.cfg, description=args.description or description(ex.cfg), lineage=lineage)
    gates = gates_of(args, ex.cfg.kind)
    metrics, floor = evaluate_export(ex, fields, store, evaluation_of(args), gates)
    print(json.dumps(metrics, indent=2))
    fields.update(metrics=metrics, params=metrics.get("params"), gflops=metrics.get("gflops"))
    return register_and_promote(store, ex.path, fields, gates, floor, promote=not args.no_promote)


def cmd_reshape(args) -> int:
    """A detector with a free input size (see :mod:`distill.reshape`)."""
    from .reshape import cmd_reshape as run

    args.check = args.check or [f"folder:{DATA}/unlabeled/images"]
    return run(args)


def cmd_quantize(args) -> int:
    """An int8 version of a registered model (see :mod:`distill.quantize`)."""
    from .quantize import cmd_quantize as run

    return run(args)


def cmd_reproduce(args) -> int:
    from service.settings import get_settings
    from service.store import ModelStore

    from .reproduce import chain, render, run

    steps = chain(args.model, ModelStore(args.store or get_settings().model_store))
    print(render(steps))
    return 0 if args.dry_run else run(steps)


# ---- eval ---------------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from service.settings import get_settings
    from service.store import ModelStore

    from .data import read_source
    from .evaluate import evaluate, write_json
    from .teachers import load_model_bytes

    store = ModelStore(args.store or get_settings().model_store)
    model, data = load_model_bytes(args.model, store=store, threads=args.threads)
    annotations = args.data if args.data is not None else (str(EVAL_SET) if EVAL_SET.is_file() else None)
    pck_records = None
    if args.pck:
        pck_records = read_source(args.pck)[: args.pck_limit]
    other = _load_ref(args.detector, store, args.threads) if model.manifest.task == "pose" else \
        _load_ref(args.pose, store, args.threads)
    result = evaluate(model, data, annotations=annotations or None,
                      detector=other if model.manifest.task == "pose" else None,
                      teacher=_load_ref(args.teacher, store, args.threads) if model.manifest.task == "pose"
                      else other,
                      pck_records=pck_records, speed=not args.no_speed, speed_runs=args.runs)
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)
    return 0


# ---- teachers -----------------------------------------------------------------------------------
def cmd_teachers_import(args) -> int:
    from .teachers import teachers_dir
    from .teachers_import import import_teachers

    out = Path(args.out)
    shipped = None if args.no_compare else Path(args.compare or teachers_dir())
    if shipped is not None and shipped.resolve() == out.resolve():
        shipped = None
    report = import_teachers(out, workdir=Path(args.workdir), venv=Path(args.venv),
                             shipped=shipped if shipped and shipped.is_dir() else None, models=args.model)
    print(json.dumps(report, indent=2))
    if args.register:
        from service.settings import get_settings
        from service.store import ModelStore
        from service.store.importer import import_teachers as register_teachers

        store = ModelStore(args.store or get_settings().model_store)
        for manifest, added in register_teachers(store, out):
            print(f"{manifest.name}:{manifest.version} {'registered' if added else 'already in the store'}")
    bad = [name for name, entry in report.items() if entry.get("matches_shipped") is False]
    if bad:
        print(f"differs from the shipped teachers: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def fill_defaults(args) -> None:
    if getattr(args, "distill_command", None) == "cache":
        pose = args.kind == "pose"
        args.teacher = args.teacher or ("movenet-thunder" if pose else "movenet-multipose")
        args.views = args.views or (24000 if pose else 2)
        args.size = args.size or (192 if pose else 256)
