"""Students against the public models, side by side in one run.

Per pose model (ground-truth person boxes): OKS AP on coco_mini_train (the dev set: reported, never
used to choose), PCK@0.2 on held-out LSPET images (never in a training cache) and agreement with
Thunder on the same people (the two signals training selects by), parameters, GFLOPs,
ONNX Runtime ms per crop at batch 1 and 8 and the ratio to MoveNet Lightning and Thunder measured in
the same run. End to end (detector → pose, no ground-truth boxes): AP and ms per image, beside
MultiPose alone and MultiPose → Thunder. Appends the tables to bench/RESULTS.md and draws the
accuracy-vs-latency chart (bench/students.png).

    posekd bench students [--pose pose-s@production] [--detector detector-s@production] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import ROOT, record

MULTIPOSE = "movenet-multipose (long side 512)"


def multipose_alone(model, records) -> tuple[list, float]:
    """MultiPose's own keypoints (its [N, 6, 56] rows), as COCO results; ms per image."""
    import time

    import numpy as np

    from service.pipeline import preprocess as pp

    spec = model.manifest.input
    results, elapsed = [], 0.0
    for r in records:
        image = r.load()
        t0 = time.perf_counter()
        view, (sx, sy) = pp.resize_for_detector(image, spec)
        out = model.session.run(pp.to_tensor([view], spec))[model.manifest.output.names[0]][0]
        elapsed += time.perf_counter() - t0
        for row in out:
            if row[55] < 0.05:
                continue
            kp = row[:51].reshape(17, 3)
            xy = np.stack([kp[:, 1] * spec.width / sx, kp[:, 0] * spec.height / sy, kp[:, 2]], -1)
            results.append({"image_id": r.image_id, "category_id": 1, "keypoints": xy.reshape(-1).tolist(),
                            "score": float(row[55])})
    return results, elapsed / max(1, len(records)) * 1000


def detector_ms(detector, records, runs: int = 2) -> float:
    """Mean ms per image of the person detector alone through the served pipeline (letterbox, network,
    box decoding, NMS), best of ``runs`` passes over ``records``."""
    import time

    from service.pipeline import PosePipeline

    pipe = PosePipeline()
    images = [r.load() for r in records]
    pipe.detect(detector, images[:2])  # warm-up
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        for image in images:
            pipe.detect(detector, [image])
        best = min(best, (time.perf_counter() - t0) / len(images) * 1000)
    return best


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def tables(rows: list[tuple[str, dict]], e2e: list[tuple[str, dict, float]], det_ms: dict[str, float]) -> list[str]:
    """The three markdown tables: pose models on GT boxes, whole pipelines, detectors alone."""
    by_ref = dict(rows)
    thunder, lightning = by_ref.get("movenet-thunder"), by_ref.get("movenet-lightning")
    lines = ["| model | role | AP (GT boxes) | AR | held-out PCK@0.2 | held-out agreement with Thunder | params "
             "| GFLOPs | ms/crop b=1 | ms/crop b=8 | × Lightning ms | × Thunder ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ref, r in rows:
        role = "teacher" if ref == "movenet-thunder" else ("Google's fast baseline" if ref == "movenet-lightning"
                                                            else "student")
        vs_l = f"{r['ms_b1'] / lightning['ms_b1']:.2f}" if lightning else ""
        vs_t = f"{r['ms_b1'] / thunder['ms_b1']:.2f}" if thunder else ""
        pck = f"{r['pck@0.2']:.3f}" if r.get("pck@0.2") is not None else "—"
        agree = f"{r['heldout_agreement']:.3f}" if r.get("heldout_agreement") is not None else "—"
        lines.append(f"| {r['model']} | {role} | {r['gt_boxes']['AP']:.3f} | {r['gt_boxes']['AR']:.3f} | {pck} | "
                     f"{agree} | "
                     f"{r['params'] / 1e6:.2f}M | {r['gflops']:.2f} | {r['ms_b1']:.2f} | {r['ms_b8']:.2f} | "
                     f"{vs_l} | {vs_t} |")
    base = next((ms for label, _, ms in e2e if label == f"{MULTIPOSE} → movenet-thunder"), None)
    mp_ms = e2e[0][2]
    lines += ["", "| end to end: detector → pose | AP | AR | APm | count error | stacked pairs | ms/image "
              "| × (MultiPose → Thunder) ms | × MultiPose ms |", "|---|---|---|---|---|---|---|---|---|"]
    for label, ap_, ms in e2e:
        head = (f"| {label} | {ap_['AP']:.3f} | {ap_['AR']:.3f} | {ap_.get('APm', 0):.3f} | "
                f"{_fmt(ap_.get('count_error'), '.2f')} | {_fmt(ap_.get('stacked'), 'd')} | {ms:.1f} |")
        lines.append(f"{head} {ms / base:.2f} | {ms / mp_ms:.2f} |" if base else f"{head} | |")
    lines += ["", "| person detector alone (per image) | ms/image | × MultiPose ms |", "|---|---|---|"]
    for ref, ms in det_ms.items():
        what = f"{ref}, one pass with its own keypoints" if ref == MULTIPOSE else ref
        lines.append(f"| {what} | {ms:.1f} | {ms / mp_ms:.2f} |")
    return lines


def draw_chart(rows: list[tuple[str, dict]], e2e: list[tuple[str, dict, float]], path: Path) -> None:
    """Accuracy vs latency: pose models per crop (left), whole pipelines per image (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.6))
    for ref, r in rows:
        public = ref.startswith("movenet")
        ax[0].scatter(r["ms_b1"], r["gt_boxes"]["AP"], s=60, marker="s" if public else "o",
                      color="tab:gray" if public else "tab:blue")
        ax[0].annotate(r["model"], (r["ms_b1"], r["gt_boxes"]["AP"]), textcoords="offset points", xytext=(5, 4),
                       fontsize=8)
    ax[0].set_xlabel("ms per crop (ONNX Runtime CPU, batch 1)")
    ax[0].set_ylabel("AP with ground-truth boxes (dev set)")
    ax[0].set_title("pose models (grey: public, blue: ours)")
    for label, ap_, ms in e2e:
        public = "movenet-multipose" in label.split(" → ")[0] or label.startswith("movenet")
        ax[1].scatter(ms, ap_["AP"], s=60, marker="s" if public else "o", color="tab:gray" if public else "tab:blue")
        ax[1].annotate(label.replace(" (long side 512)", "@512").replace(", its own keypoints", ""), (ms, ap_["AP"]),
                       textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax[1].set_xlabel("ms per image, detector + pose (CPU)")
    ax[1].set_ylabel("AP end to end (dev set)")
    ax[1].set_title("whole pipelines")
    for a in ax:
        a.grid(alpha=0.3)
        a.set_xlim(left=0)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="posekd bench students", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("POSEKD_MODEL_STORE", ROOT / "model_store")))
    ap.add_argument("--pose", nargs="+", default=None, help="our pose models (default: every pose model in the "
                                                             "store at its production alias)")
    ap.add_argument("--detector", nargs="+", default=None, help="our detectors (default: every detector in the "
                                                                 "store at its production alias)")
    ap.add_argument("--teachers", nargs="+", default=["movenet-thunder", "movenet-lightning"])
    ap.add_argument("--pck", default=None, help="held-out labelled data for PCK@0.2 (default: "
                                                "lspet:DATA/labeled/lspet[3600:], which the training caches leave out)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--runs", type=int, default=40, help="timed runs per latency")
    ap.add_argument("--chart", type=Path, default=ROOT / "bench" / "students.png")
    ap.add_argument("--no-record", action="store_true")
    return ap


def _ours(store, task: str) -> list[str]:
    """Every model of ``task`` in the store at its production alias, the teachers left out."""
    out = []
    for name in store.names():
        aliases = store.aliases(name)
        if "production" in aliases and store.manifest(name, aliases["production"]).task == task \
                and not name.startswith(("movenet-", "centernet")):
            out.append(f"{name}@production")
    return out


def _pose_rows(models: dict, args, pck_records) -> list:
    """Every pose model with ground-truth boxes: dev AP, held-out PCK and agreement, size, latency."""
    from distill.evaluate import agreement, evaluate
    from distill.publish import EVAL_SET

    rows = []
    thunder = models.get("movenet-thunder", (None,))[0]
    for ref, (model, data) in models.items():
        r = evaluate(model, data, annotations=EVAL_SET, speed=True, speed_runs=args.runs, pck_records=pck_records)
        if pck_records and thunder is not None and ref != "movenet-thunder":
            # the other held-out signal training selects by: mean OKS to Thunder's keypoints, same people
            r["heldout_agreement"] = agreement(model, thunder, pck_records)
        rows.append((ref, r))
        print(ref, r["gt_boxes"], r.get("pck@0.2"), r["ms_b1"], r["ms_b8"], flush=True)
    return rows


def _end_to_end(models: dict, detectors: dict, pairs: list, records: list) -> list:
    """Detector → pose pairs on the dev set: AP, count error, stacked pairs, ms per image."""
    from bench.people import count_error, stacked
    from distill.evaluate import coco_ap, predict
    from distill.publish import EVAL_SET
    from service.settings import Settings

    ids = [int(r.image_id or 0) for r in records]
    min_score = Settings().min_score
    truth = {int(r.image_id or 0): sum(1 for p in r.people if p.keypoints is not None and (p.keypoints[:, 2] > 0).any())
             for r in records}
    e2e = []
    for det, pose in pairs:
        predict(models[pose][0], records[:3], detectors[det])  # warm-up
        res, ms = predict(models[pose][0], records, detectors[det])
        shown = [dict(r, bbox=r["box_xyxy"]) for r in res if r["score"] >= min_score]
        ap_ = {**coco_ap(EVAL_SET, res, ids), "count_error": count_error(res, truth, min_score),
               "stacked": stacked(shown)[0]}
        e2e.append((f"{det} → {pose}", ap_, ms))
        print(det, pose, ap_, round(ms, 1), flush=True)
    return e2e


def _load_all(refs: list[str], store, threads: int, **kw) -> dict:
    out = {}
    for ref in refs:
        try:
            out[ref] = _load_model(ref, store, threads, **kw)
        except Exception as exc:  # a student not trained yet: say so, keep going
            print(f"skipping {ref}: {exc}", file=sys.stderr)
    return out


def _load_model(ref: str, store, threads: int, **kw):
    from distill.teachers import load_model_bytes
    return load_model_bytes(ref, store=store, threads=threads, **kw)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from distill.data import read_coco, read_source
    from distill.evaluate import coco_ap
    from distill.publish import DATA, EVAL_SET
    from service.store import ModelStore

    if not EVAL_SET.is_file():
        print(f"needs the evaluation set {EVAL_SET}", file=sys.stderr)
        return 2
    store = ModelStore(args.store)
    pose_refs, det_refs = args.pose or _ours(store, "pose"), args.detector or _ours(store, "person_detection")
    pck_spec = args.pck or f"lspet:{DATA}/labeled/lspet[3600:]"
    try:
        pck_records = read_source(pck_spec)
    except (OSError, ValueError) as exc:
        print(f"no held-out PCK ({exc})", file=sys.stderr)
        pck_records = None
    models = _load_all(args.teachers + pose_refs, store, args.threads)
    rows = _pose_rows(models, args, pck_records)
    records = read_coco(EVAL_SET)
    detectors = {MULTIPOSE: _load_model("movenet-multipose", store, args.threads,
                                                     input_size=(512, 512))[0]}
    detectors.update({ref: md[0] for ref, md in _load_all(det_refs, store, args.threads).items()})
    pairs = [(MULTIPOSE, "movenet-thunder")]
    pairs += [(d, p) for d in det_refs if d in detectors for p in [*pose_refs, *args.teachers] if p in models]
    e2e = _end_to_end(models, detectors, pairs, records)
    mp_alone, mp_ms = multipose_alone(detectors[MULTIPOSE], records)
    e2e.insert(0, (f"{MULTIPOSE} alone, its own keypoints", coco_ap(EVAL_SET, mp_alone, [int(r.image_id or 0)
                                                                                       for r in records]), mp_ms))
    det_ms = {ref: mp_ms if ref == MULTIPOSE else detector_ms(det, records) for ref, det in detectors.items()}
    lines = tables(rows, e2e, det_ms)
    pck_note = f"held-out PCK: `{pck_spec.replace(str(DATA), '$POSEKD_DATA')}`" if pck_records else "no held-out PCK"
    lines += ["", f"Dev set: `{EVAL_SET.relative_to(EVAL_SET.parents[3])}` ({len(records)} images, "
              f"{sum(len(r.people) for r in records)} people), pycocotools OKS AP (APm: medium people), "
              f"person score = the pipeline's (service.pipeline.people); count error: mean |people returned at "
              f"the default person threshold − labelled people| per image; stacked pairs: the same person "
              f"returned twice; {pck_note} (PCK@0.2 of the torso, GT boxes; held-out agreement: mean OKS to "
              f"Thunder's keypoints for the same people); ONNX Runtime CPU, {args.threads} threads. "
              f"End-to-end ms include the detector; MultiPose alone is one network pass."]
    draw_chart(rows, e2e, args.chart)
    lines += ["", f"![accuracy vs latency]({args.chart.name})"]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        record("Students vs public models (accuracy, size, speed)", "posekd bench students " + " ".join(argv or []),
               table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
