"""Distillation, second half: the evaluation harness, the promotion gates, GFLOPs, restarting from an
exported model, the warm starts that reproduce the public models, the box ensemble and manifest
lineage paths."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distill.data import read_coco  # noqa: E402,I001
from distill.export import parity, to_onnx  # noqa: E402
from distill.students import (  # noqa: E402
    DetectorExport,
    PoseExport,
    StudentConfig,
    build_student,
)

from .conftest import DATA, TEACHERS  # noqa: E402
from .test_distill import _coco_set  # noqa: E402


def test_coco_ap_is_one_for_the_labels_themselves_and_drops_when_shifted(tmp_path):
    from distill.evaluate import coco_ap

    js = _coco_set(tmp_path / "coco")
    recs = read_coco(js)
    perfect, shifted = [], []
    for r in recs:
        for p in r.people:
            kp = p.keypoints.copy()
            perfect.append({"image_id": r.image_id, "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                            "score": 0.9})
            kp[:, 0] += 12
            shifted.append({"image_id": r.image_id, "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                            "score": 0.9})
    ids = [r.image_id for r in recs]
    assert coco_ap(js, perfect, ids)["AP"] == pytest.approx(1.0)
    assert coco_ap(js, shifted, ids)["AP"] < 0.9
    assert coco_ap(js, [], ids)["AP"] == 0.0


def test_gates_compare_accuracy_and_latency_with_production():
    from distill.export import Gates

    gates = Gates(min_ap=0.2, max_ap_drop=0.01, max_latency_ratio=1.1)
    prod = {"gt_boxes": {"AP": 0.30}, "ms_b1": 2.0}
    assert gates.check({"gt_boxes": {"AP": 0.295}, "ms_b1": 2.1}, prod) == (True, [])
    ok, why = gates.check({"gt_boxes": {"AP": 0.28}, "ms_b1": 2.1}, prod)
    assert not ok and "below production" in why[0]
    ok, why = gates.check({"gt_boxes": {"AP": 0.31}, "ms_b1": 2.5}, prod)
    assert not ok and "latency" in why[0]
    assert gates.check({"gt_boxes": {"AP": 0.25}, "ms_b1": 9.0}, None)[0]  # no production: only min_ap
    assert not gates.check({"gt_boxes": {"AP": 0.1}}, None)[0]
    assert not gates.check({}, None)[0]


def test_gates_refuse_a_student_worse_than_the_public_floor():
    """The floor (Lightning, re-measured in the same run) holds even when production is weaker: a student
    that beats today's production but loses to Lightning on accuracy, or is slower, is not promoted."""
    from distill.export import Gates

    gates = Gates(max_ap_drop=0.01, floor_latency_ratio=1.1)
    prod = {"gt_boxes": {"AP": 0.10}, "ms_b1": 5.0}
    floor = {"model": "movenet-lightning:1", "gt_boxes": {"AP": 0.307}, "ms_b1": 5.0}
    ok, why = gates.check({"gt_boxes": {"AP": 0.283}, "ms_b1": 4.0}, prod, floor)
    assert not ok and why == ["AP 0.283 is below movenet-lightning:1's 0.307"]
    ok, why = gates.check({"gt_boxes": {"AP": 0.35}, "ms_b1": 6.0}, None, floor)
    assert not ok and "latency" in why[0] and "movenet-lightning" in why[0]
    assert gates.check({"gt_boxes": {"AP": 0.35}, "ms_b1": 5.2}, prod, floor) == (True, [])
    assert not gates.check({"gt_boxes": {"AP": 0.35}, "ms_b1": 5.0}, None, {"model": "x", "ms_b1": 5.0})[0]


def test_gflops_counts_convolutions():
    from distill.evaluate import gflops

    cfg = StudentConfig("pose", 64, 1.0, 1, "none")
    module = PoseExport(build_student(cfg, None)).eval()
    data = to_onnx(module, cfg)
    expected = 0
    hooks = []

    def count(mod, inp, out):
        nonlocal expected
        expected += mod.weight.numel() * out.shape[-1] * out.shape[-2]

    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(count))
    with torch.no_grad():
        module(torch.zeros(1, 3, 64, 64))
    assert gflops(data, "image", (1, 3, 64, 64)) == pytest.approx(2 * expected / 1e9, abs=1e-3)


@pytest.mark.data
def test_eval_harness_reproduces_the_teachers_readme_numbers():
    """Lightning with ground-truth boxes on coco_mini_train: 0.306 AP in the teachers README, whose
    person score is the mean keypoint score. Guards the whole harness (reading, BGR/RGB, crops,
    decoding, OKS) against silent drift; the service's own person score ranks better (0.327 there)."""
    from distill.evaluate import coco_ap, predict
    from distill.teachers import load_model
    from service.engine import pipeline_for
    from service.settings import Settings

    ann = DATA / "labeled" / "coco_mini_train" / "annotations" / "person_keypoints_train2017.json"
    records = read_coco(ann)
    readme_scoring = pipeline_for(Settings(person_score="keypoints"))
    results, _ = predict(load_model("movenet-lightning"), records, pipeline=readme_scoring)
    assert coco_ap(ann, results, [r.image_id for r in records])["AP"] == pytest.approx(0.306, abs=0.005)
    scored, _ = predict(load_model("movenet-lightning"), records)
    assert coco_ap(ann, scored, [r.image_id for r in records])["AP"] > 0.306


@pytest.mark.data
def test_torch_copy_of_multipose_reproduces_its_centre_heatmap(tmp_path):
    """The detector student starts from MultiPose: its FPN convs come in another graph order than
    Thunder's, so they are matched by name."""
    import onnxruntime as ort

    from distill.movenet import Arch, MoveNetLike, normalise, read_teacher
    from distill.teachers_import import make_heads

    make_heads(TEACHERS / "movenet_multipose.onnx", tmp_path / "heads.onnx")
    tw = read_teacher(TEACHERS / "movenet_multipose.onnx")
    net = MoveNetLike(Arch.from_teacher(tw), {"center": 1}).eval()
    assert net.load_teacher(tw, {"center": "center"}) == ["center"]
    image = cv2.resize(cv2.imread(str(DATA / "opencv_samples" / "basketball1.png")), (256, 256))
    x = np.ascontiguousarray(image[..., ::-1])[None]
    sess = ort.InferenceSession(str(tmp_path / "heads.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x.astype(np.int32)})))
    with torch.no_grad():
        got = torch.sigmoid(net(normalise(torch.from_numpy(x)))["center"]).numpy()
    assert np.abs(got - outs["center_heatmap"]).max() < 1e-4


def test_a_student_restarts_from_its_exported_onnx():
    from distill.weights import load_exported

    cfg = StudentConfig("pose", 64, 1.0, 2, "none")
    torch.manual_seed(1)
    a = build_student(cfg, None)
    data = to_onnx(PoseExport(a).eval(), cfg)
    torch.manual_seed(2)
    b = build_student(cfg, None)
    loaded = load_exported(b, data)
    assert "net.conv1.weight" in loaded and not any(n.startswith("net.heads.b1.") for n in loaded)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(PoseExport(a).eval()(x), PoseExport(b).eval()(x), atol=1e-6)


def test_detector_targets_and_focal_loss_stay_bounded_without_people():
    from distill.detector import center_targets, focal_loss

    boxes = np.zeros((2, 3, 5), np.float32)
    boxes[0, 0] = (0.25, 0.25, 0.5, 0.75, 0.9)  # one person in the first view, none in the second
    t = center_targets(boxes, 16)
    assert t["mask"][0].sum() == 1 and t["mask"][1].sum() == 0
    iy, ix = np.argwhere(t["mask"][0, 0])[0]
    assert (iy, ix) == (8, 6) and t["heat"][0, 0, iy, ix] == 1.0
    assert np.allclose(t["size"][0, :, iy, ix], [8.0, 4.0])  # height, width in cells
    assert np.allclose(t["offset"][0, :, iy, ix], [0.0, 0.0])  # centre (8.0, 6.0): cell (8, 6)'s corner
    logits = torch.zeros(2, 1, 16, 16)  # p = 0.5 everywhere
    loss = focal_loss(logits, torch.from_numpy(t["heat"]))
    empty = focal_loss(logits, torch.zeros(2, 1, 16, 16))
    assert float(empty) < 2 * 16 * 16  # normalised per image at least, not per (absent) centre
    assert float(loss) > 0


# ---- MoveNet-head students: step 0 is the warm-start model -------------------------------------------
@pytest.mark.data
def test_lightning_warm_start_reproduces_lightning_through_the_pipeline():
    """pose-m before any training, exported to ONNX and served through the service's pipeline and
    MoveNet decoder, gives Lightning's own keypoints (Lightning's ONNX with its built-in decoder)."""
    from distill.export import export_module, manifest_fields
    from distill.publish import _served
    from distill.students import PRESETS, build_student
    from distill.teachers import load_model
    from distill.train import warm_start_weights
    from service.pipeline.pipeline import PosePipeline

    cfg = PRESETS["pose-m"]
    assert cfg.kind == "movenet" and cfg.warm_start == "movenet-lightning" and cfg.keep == 1.0
    module = export_module(build_student(cfg, warm_start_weights(cfg)), cfg)
    data = to_onnx(module, cfg)
    assert parity(module, data, cfg) < 1e-3
    student = _served(manifest_fields("pose-m", cfg, description="step 0", lineage={}), data)
    assert student.manifest.output.decoder == "movenet_heads"
    lightning = load_model("movenet-lightning")
    pipeline = PosePipeline()
    for name, boxes in (("basketball1.png", [[30, 80, 170, 480, 1], [430, 20, 640, 480, 1]]),
                        ("messi5.jpg", [[70, 60, 455, 330, 1]])):
        image = cv2.imread(str(DATA / "opencv_samples" / name))
        b = [np.array(boxes, np.float32)]
        ours, theirs = pipeline.pose(student, [image], b)[0], pipeline.pose(lightning, [image], b)[0]
        assert ours.shape == theirs.shape == (len(boxes), 17, 3)
        assert np.abs(ours[..., :2] - theirs[..., :2]).max() < 0.5  # pixels of the original image
        assert np.abs(ours[..., 2] - theirs[..., 2]).max() < 1e-3


@pytest.mark.data
def test_multipose_warm_start_is_multiposes_person_detector():
    """An unpruned detector student warm-started from MultiPose, before training, finds the same
    boxes as MultiPose through the service (its centre, box-size and box-offset heads are copied)."""
    from distill.students import StudentConfig, build_student
    from distill.teachers import DetectionTeacher, load_model

    cfg = StudentConfig("detector", 256, 1.0, 1, "movenet-multipose")
    from distill.train import warm_start_weights
    model = build_student(cfg, warm_start_weights(cfg)).eval()
    module = DetectorExport(model).eval()
    teacher = DetectionTeacher(load_model("movenet-multipose"), threshold=0.15)
    image = cv2.imread(str(DATA / "opencv_samples" / "basketball1.png"))
    h, w = image.shape[:2]
    s = 256 / max(h, w)
    canvas = np.zeros((256, 256, 3), np.uint8)
    canvas[:round(h * s), :round(w * s)] = cv2.resize(image, (round(w * s), round(h * s)),
                                                      interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(canvas[..., ::-1].copy())[None].permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        ours = module(x)[0].numpy()
    ours = ours[ours[:, 4] > 0.5]
    ours[:, :4] *= 256 / s
    theirs = teacher.boxes(image)
    assert len(ours) == len(theirs) == 2
    for box in theirs:
        assert np.abs(ours[:, :4] - box[:4]).max(-1).min() < 2.0


def test_box_ensemble_keeps_agreed_boxes_and_confident_singles():
    from distill.teachers import BoxEnsemble

    class Fixed:
        def __init__(self, name, rows):
            self.name, self.rows = name, np.array(rows, np.float32).reshape(-1, 5)

        def boxes(self, image):
            return self.rows

    centernet = Fixed("cn", [[10, 10, 50, 110, 0.35], [200, 0, 260, 40, 0.6], [300, 300, 310, 320, 0.2]])
    multipose = Fixed("mp", [[12, 20, 48, 100, 0.3], [400, 10, 450, 90, 0.25], [500, 10, 560, 90, 0.5]])
    rows = BoxEnsemble(centernet, multipose).boxes(np.zeros((8, 8, 3), np.uint8))
    as_list = [list(np.round(r, 3)) for r in rows]
    assert [10, 10, 50, 110, 0.35] in as_list            # both found it: CenterNet's box, the higher score
    assert [200, 0, 260, 40, 0.48] in as_list            # only CenterNet, but sure of it (score × 0.8)
    assert [500, 10, 560, 90, 0.4] in as_list            # only MultiPose, sure of it
    assert len(rows) == 3 and list(rows[:, 4]) == sorted(rows[:, 4], reverse=True)  # unsure singles dropped
    assert BoxEnsemble(Fixed("a", []), Fixed("b", [])).boxes(None).shape == (0, 5)


def test_manifest_paths_are_relative_to_the_data_root():
    from distill.publish import DATA, data_relative

    lineage = {"data": [f"lspet:{DATA}/labeled/lspet[:3600]"], "n": 3,
               "cache": {"command": f"posekd distill cache pose --data folder:{DATA}/unlabeled/images"}}
    out = data_relative(lineage)
    assert out["data"] == ["lspet:$POSEKD_DATA/labeled/lspet[:3600]"] and out["n"] == 3
    assert str(DATA) not in json.dumps(out) and "$POSEKD_DATA/unlabeled/images" in out["cache"]["command"]


def test_a_checkpoint_exports_without_its_warm_start_teacher(tmp_path):
    """The channel plan travels with the weights: a checkpoint whose warm-start teacher file is gone
    still exports (and matches torch), because the architecture is read from the checkpoint."""
    from distill.movenet import Arch
    from distill.publish import export_run
    from distill.students import StudentConfig, build_student

    arch = Arch((8, 8), [(24, o) for o in [8, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 24, 24, 24, 24]], 40,
                (16, 8, 8), 16)  # not the tiny default: a plan only the checkpoint knows
    cfg = StudentConfig("movenet", 64, 1.0, 1, str(tmp_path / "gone" / "teacher.onnx"))
    model = build_student(cfg, None, arch=arch)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"step": 3, "history": [], "student": cfg.to_dict(), "train": {}, "meta": {}, "best": 0.0,
                "arch": arch.to_dict(), "model": model.state_dict()}, run / "checkpoint.pt")
    exported = export_run(run)
    assert exported.diff < 1e-3 and exported.path.is_file()
    assert Arch.from_dict(arch.to_dict()) == arch
