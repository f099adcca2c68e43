"""Distillation: readers, augmentation geometry, losses, the MoveNet-derived networks, export parity and
a smoke distillation through the CLI (tiny teacher, tiny student, a few steps)."""
from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distill import augment, losses  # noqa: E402
from distill.data import LSPET_TO_COCO, keypoint_box, read_coco, read_folder, read_lspet, read_source, video_frames  # noqa: E402,I001
from distill.export import parity, to_onnx  # noqa: E402
from distill.movenet import DUC  # noqa: E402
from distill.students import (  # noqa: E402
    DetectorExport,
    PoseExport,
    RegressionExport,
    StudentConfig,
    build_student,
    decode_centers,
)
from service.cli import main as cli  # noqa: E402
from service.store import ModelStore  # noqa: E402

from .conftest import DATA, TEACHERS  # noqa: E402
from .helpers import blob_image  # noqa: E402


# ---- readers -------------------------------------------------------------------------------------
def _coco_set(root, people=((40, 30, 60, 120), (180, 40, 50, 110)), n_images=2):
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    images, anns = [], []
    for i in range(n_images):
        name = f"{i:012d}.jpg"
        cv2.imwrite(str(root / "train2017" / name), blob_image(320, 200, at=(70 + 20 * i, 90)))
        images.append({"id": i + 1, "file_name": name, "width": 320, "height": 200})
        for j, (x, y, w, h) in enumerate(people):
            kps = np.zeros((17, 3))
            kps[:, 0] = x + w * np.linspace(0.2, 0.8, 17)
            kps[:, 1] = y + h * np.linspace(0.1, 0.9, 17)
            kps[:, 2] = 2
            kps[3, 2] = 0  # one unlabelled point
            anns.append({"id": 100 * i + j + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [x, y, w, h], "area": w * h * 0.6, "num_keypoints": 16,
                         "keypoints": kps.reshape(-1).round(1).tolist()})
        anns.append({"id": 100 * i + 99, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 5, 5],
                     "area": 20, "num_keypoints": 0, "keypoints": [0] * 51})
    js = root / "annotations" / "person_keypoints_train2017.json"
    js.write_text(json.dumps({"images": images, "annotations": anns,
                              "categories": [{"id": 1, "name": "person", "keypoints": [], "skeleton": []}]}))
    return js


def test_read_coco_finds_images_boxes_and_labels(tmp_path):
    js = _coco_set(tmp_path / "coco")
    recs = read_coco(js)
    assert [r.image_id for r in recs] == [1, 2]
    assert len(recs[0].people) == 2  # the person without keypoints is left out
    p = recs[0].people[0]
    assert p.box.tolist() == [40, 30, 100, 150]
    assert p.keypoints.shape == (17, 3) and p.keypoints[3, 2] == 0
    assert recs[0].load().shape == (200, 320, 3)
    assert len(read_source(f"coco:{js}")) == 2


def test_read_lspet_maps_twelve_joints_to_coco(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "lspet"
    (root / "images").mkdir(parents=True)
    joints = np.zeros((14, 3, 3))
    for j in range(14):
        joints[j, 0, 1] = 10 + j  # image im00002 (index 1): x encodes the LSPET joint number
        joints[j, 1, 1] = 50 + 2 * j
        joints[j, 2, 1] = 1 if j != 0 else 0  # r-ankle marked occluded: still a label
    savemat(root / "joints.mat", {"joints": joints})
    cv2.imwrite(str(root / "images" / "im00002.jpg"), blob_image(100, 100))
    recs = read_lspet(root)
    assert len(recs) == 1
    kp = recs[0].people[0].keypoints
    for src, dst in LSPET_TO_COCO.items():
        assert kp[dst, 0] == 10 + src and kp[dst, 2] > 0
    assert (kp[:5, 2] == 0).all()  # the face points are unlabelled (LSPET has none)
    assert kp[16, 0] == 10  # LSPET 0 (right ankle) -> COCO 16 (right ankle)
    assert kp[9, 0] == 21   # LSPET 11 (left wrist) -> COCO 9 (left wrist)
    box = recs[0].people[0].box
    assert box[1] < kp[kp[:, 2] > 0, 1].min()  # head room above the highest joint


def test_folder_and_video_readers(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"a{i}.png"), blob_image(64, 48))
    (tmp_path / "notes.txt").write_text("x")
    assert len(read_folder(tmp_path)) == 3
    clip = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(12):
        w.write(blob_image(64, 48, at=(10 + 3 * i, 24)))
    w.release()
    frames = list(video_frames(clip, every=5))
    assert [f.path.rsplit("#", 1)[1] for f in frames] == ["0", "5", "10"]
    assert frames[0].load().shape == (48, 64, 3)


def test_keypoint_box_needs_two_points():
    kp = np.zeros((17, 3), np.float32)
    kp[0] = (10, 10, 2)
    assert keypoint_box(kp) is None
    kp[1] = (30, 50, 2)
    assert keypoint_box(kp, pad=0.0).tolist() == [10, 10, 30, 50]


# ---- augmentation geometry -------------------------------------------------------------------------
def test_identity_view_centres_the_box_and_flip_swaps_sides():
    rng = np.random.default_rng(0)
    cfg = augment.AugmentConfig()
    box = np.array([100, 50, 140, 170], np.float32)
    m, flipped = augment.view_matrix(box, 256, rng, cfg, identity=True)
    assert not flipped
    centre = np.array([120, 110]) @ m[:, :2].T + m[:, 2]
    assert np.allclose(centre, 128, atol=1e-3)
    # a flipped view: the person's left shoulder (x smaller in the image) ends on the right, as label 6
    kp = np.zeros((17, 3), np.float32)
    kp[5] = (110, 80, 2)   # left shoulder
    kp[6] = (130, 80, 2)   # right shoulder
    flip_cfg = augment.AugmentConfig(p_flip=1.0, p_rotate=0, scale=(1, 1), shift=0, p_half_body=0)
    m, flipped = augment.view_matrix(box, 256, rng, flip_cfg)
    assert flipped
    out = augment.transform_keypoints(kp, m, 256, flipped)
    assert out[5, 0] < out[6, 0]  # after the swap, index 5 is again the one on the image's left
    assert np.isclose(out[5, 0] + out[6, 0], 2 * (255 - 128), atol=1e-3)  # mirrored about the centre


def test_dim_light_darkens_the_picture_not_the_letterbox_padding():
    rng = np.random.default_rng(0)
    views = np.zeros((6, 64, 64, 3), np.uint8)
    views[:, :40, :] = rng.integers(60, 250, (6, 40, 64, 3), dtype=np.uint8)  # a wide picture, padded below
    before = views.copy()
    dark = augment.dim_light(views, np.random.default_rng(1), 1.0)
    assert (views == before).all()  # the cache's views are never written to
    assert (dark[:, 40:] == 0).all()  # the padding stays what the service pads with
    assert (dark[:, :40].reshape(6, -1).mean(1) < 0.8 * before[:, :40].reshape(6, -1).mean(1)).all()
    assert augment.dim_light(views, np.random.default_rng(1), 0.0) is views  # p = 0: nothing changes


def test_scale_matrix_maps_the_same_view_to_another_size():
    rng = np.random.default_rng(1)
    m, _ = augment.view_matrix(np.array([10, 10, 90, 200], np.float32), 256, rng, augment.AugmentConfig())
    ms = augment.scale_matrix(m, 192 / 256)
    p = np.array([50.0, 120.0])
    a = p @ m[:, :2].T + m[:, 2]
    b = p @ ms[:, :2].T + ms[:, 2]
    assert np.allclose((a + 0.5) / 256, (b + 0.5) / 192, atol=1e-5)


# ---- losses ----------------------------------------------------------------------------------------
def test_gaussians_and_soft_argmax_agree_on_the_location():
    pts = torch.tensor([[[0.3, 0.7], [0.55, 0.2]]])
    g = losses.gaussians(pts, 32, 32, 1.5)
    assert g.shape == (1, 2, 32, 32)
    assert abs(float(g.max()) - 1.0) < 0.2
    xy, spread = losses.soft_argmax(torch.log(g.clamp_min(1e-9)))
    assert torch.allclose(xy, pts, atol=0.01)
    assert torch.allclose(spread, torch.full_like(spread, 1.5), atol=0.2)


def test_spatial_ce_is_smallest_at_the_target_and_weights_select_keypoints():
    t = losses.gaussians(torch.tensor([[[0.5, 0.5]]]), 16, 16, 1.0)
    good = torch.log(t.clamp_min(1e-9))
    bad = torch.log(losses.gaussians(torch.tensor([[[0.1, 0.9]]]), 16, 16, 1.0).clamp_min(1e-9))
    w = torch.ones(1, 1)
    assert losses.spatial_ce(good, t, w) < losses.spatial_ce(bad, t, w)
    assert float(losses.spatial_ce(bad, t, torch.zeros(1, 1))) == 0.0


def test_pixel_kl_is_zero_for_equal_maps_and_pulls_the_student():
    a = torch.randn(2, 17, 8, 8)
    assert float(losses.pixel_kl(a, a)) < 1e-6
    s = torch.zeros(2, 17, 8, 8, requires_grad=True)
    loss = losses.pixel_kl(s, a)
    loss.backward()
    assert loss > 0 and s.grad.abs().sum() > 0


def test_teacher_targets_window_out_other_people():
    hm = torch.zeros(1, 1, 16, 16)
    hm[0, 0, 4, 4] = 0.9    # the centred person's keypoint
    hm[0, 0, 12, 12] = 0.8  # someone else in the crop
    kp = torch.tensor([[[4.5 / 16, 4.5 / 16, 0.9]]])
    dist, level = losses.teacher_targets(hm, kp, 16, 16)
    assert float(dist[0, 0, 12, 12]) < 1e-3 and float(dist[0, 0, 4, 4]) > 0.8
    bce = losses.heat_bce(torch.zeros(1, 1, 16, 16), level)
    assert bce > 0


# ---- networks and export ----------------------------------------------------------------------------
def test_duc_starts_as_bilinear_upsampling():
    x = torch.randn(1, 5, 7, 9)
    ref = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(DUC(5)(x), ref, atol=1e-5)


@pytest.mark.parametrize("kind,wrapper", [("pose", PoseExport), ("regress", RegressionExport),
                                          ("detector", DetectorExport)])
def test_export_matches_torch_at_several_batch_sizes(kind, wrapper):
    torch.manual_seed(0)
    cfg = StudentConfig(kind, 64, 1.0, 2 if kind == "pose" else 1, "none")
    module = wrapper(build_student(cfg, None)).eval()
    data = to_onnx(module, cfg)
    assert parity(module, data, cfg, batches=(1, 3)) < 1e-3


def test_parity_check_catches_a_wrong_graph():
    cfg = StudentConfig("pose", 64, 1.0, 1, "none")
    a = PoseExport(build_student(cfg, None)).eval()
    torch.manual_seed(5)
    b = PoseExport(build_student(cfg, None)).eval()
    with pytest.raises(AssertionError):
        parity(a, to_onnx(b, cfg), cfg)


def test_center_decoding_returns_the_box_it_was_given():
    h = w = 16
    center = torch.full((1, 1, h, w), -8.0)
    center[0, 0, 5, 9] = 4.0
    scale = torch.zeros(1, 2, h, w)
    scale[0, :, 5, 9] = torch.tensor([8.0, 4.0])  # 8 cells high, 4 wide
    offset = torch.full((1, 2, h, w), 0.5)  # the cell's middle
    boxes = decode_centers(center, scale, offset, 3)
    x1, y1, x2, y2, s = boxes[0, 0].tolist()
    assert s > 0.9
    assert np.allclose([x1, y1, x2, y2], [(9.5 - 2) / 16, (5.5 - 4) / 16, (9.5 + 2) / 16, (5.5 + 4) / 16], atol=1e-5)


# ---- smoke distillation through the CLI -----------------------------------------------------------
def test_smoke_distillation_end_to_end(tmp_path, store):
    """cache (tiny teacher labels augmented views) -> train a few steps -> export (parity, eval with
    pycocotools, manifest lineage) -> registered and promoted -> the service pipeline runs it."""
    js = _coco_set(tmp_path / "coco", n_images=3)
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert cli(["distill", "cache", "pose", "--store", str(store.root), "--teacher", "tiny-pose",
                "--detector", "tiny-det", "--data", f"coco:{js}", "--exclude", f"folder:{tmp_path / 'none'}",
                "--views", "48", "--size", "64", "--out", str(cache)]) == 0
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["count"] == 48 and meta["teacher"] == "tiny-pose:1"
    assert np.load(cache / "teacher_hm.npy").shape == (48, 17, 16, 16)
    assert cli(["distill", "train", "okdhp", "--cache", str(cache), "--out", str(run), "--steps", "4",
                "--batch", "8", "--size", "64", "--warm-start", "none", "--eval-every", "2",
                "--holdout", "8"]) == 0
    assert (run / "checkpoint.pt").exists() and (run / "curve.png").stat().st_size > 1000
    history = json.loads((run / "history.json").read_text())
    assert any("agreement" in h for h in history)
    # resuming continues from the checkpoint
    assert cli(["distill", "train", "okdhp", "--cache", str(cache), "--out", str(run), "--steps", "6",
                "--batch", "8", "--size", "64", "--warm-start", "none", "--eval-every", "3", "--holdout", "8"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 6
    rc = cli(["distill", "export", str(run), "--name", "smoke-pose", "--store", str(store.root),
              "--eval-set", str(js), "--teacher", "tiny-pose"])
    assert rc == 0
    st = ModelStore(store.root)
    assert st.aliases("smoke-pose") == {"production": 1}
    m = st.manifest("smoke-pose", 1)
    assert m.output.decoder == "heatmap" and m.input.height == 64
    assert m.lineage.teacher == "tiny-pose:1"
    assert "posekd distill train okdhp" in m.lineage.command and "posekd distill cache pose" in m.lineage.command
    assert "--steps 4" in m.lineage.command and "--steps 6" in m.lineage.command  # both training commands
    assert m.lineage.model_dump()["train_resumed_at"] == [4]
    assert {"python", "torch", "onnx", "onnxruntime"} <= set(m.lineage.model_dump()["libraries"])
    assert {"AP", "AR"} <= set(m.metrics["gt_boxes"]) and m.metrics["export_max_abs_diff"] < 1e-3
    assert m.metrics["params"] > 0 and m.metrics["gflops"] > 0 and m.metrics["ms_b1"] > 0
    # a second export must pass the gates against the first; an impossible gate keeps it out
    rc = cli(["distill", "export", str(run), "--name", "smoke-pose", "--store", str(store.root),
              "--eval-set", str(js), "--teacher", "tiny-pose", "--min-ap", "1.01"])
    assert rc == 3
    assert st.aliases("smoke-pose") == {"production": 1} and st.versions("smoke-pose") == [1, 2]
    # and the service's pipeline serves it
    from distill.teachers import load_model
    from service.pipeline.pipeline import ImageTask, PosePipeline

    served = load_model("smoke-pose", store=st)
    image = cv2.cvtColor(blob_image(320, 200), cv2.COLOR_BGR2RGB)
    res = PosePipeline().run(served, None, [ImageTask(image=image, boxes=[[40, 30, 100, 150]], min_score=0.0)])
    assert res[0].people and np.asarray(res[0].people[0].keypoints).shape == (17, 3)


def test_smoke_detector_distillation_through_the_same_loop(tmp_path, store):
    """cache detection (tiny detector as the teacher) -> the detector recipe in the one training loop:
    held-out F1 before training and at each checkpoint, a checkpoint at the step budget (--stop-after)."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"{i}.png"), blob_image(320, 200, at=(60 + 30 * i, 100)))
    cache, run = tmp_path / "det-cache", tmp_path / "det-run"
    assert cli(["distill", "cache", "detection", "--store", str(store.root), "--teacher", "tiny-det",
                "--data", f"folder:{folder}", "--exclude", f"folder:{tmp_path / 'none'}", "--views", "2",
                "--size", "64", "--out", str(cache)]) == 0
    assert cli(["distill", "train", "centernet-s", "--cache", str(cache), "--out", str(run), "--steps", "6",
                "--stop-after", "3", "--batch", "4", "--size", "64", "--warm-start", "none", "--eval-every", "2",
                "--holdout", "2", "--dim-light", "0.5"]) == 0
    history = json.loads((run / "history.json").read_text())
    held = [h for h in history if "agreement" in h]
    assert [h["step"] for h in held] == [0, 2, 3]  # before training, at eval_every, at the budget
    assert all("dim_agreement" in h and "dim_recall" in h for h in held)  # also on darkened held-out views
    assert torch.load(run / "checkpoint.pt", weights_only=False)["train"]["dim_light"] == 0.5
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 3


# ---- the real teachers ---------------------------------------------------------------------------------
@pytest.mark.data
def test_torch_copy_of_thunder_reproduces_its_heads():
    import onnxruntime as ort

    from distill.movenet import Arch, MoveNetLike, normalise, read_teacher

    path = TEACHERS / "movenet_thunder_heads.onnx"
    tw = read_teacher(path)
    net = MoveNetLike(Arch.from_teacher(tw), {"kpt_heatmap": 17, "center": 1}).eval()
    assert set(net.load_teacher(tw, {"kpt_heatmap": "kpt_heatmap", "center": "center"})) == {"kpt_heatmap", "center"}
    image = cv2.cvtColor(cv2.imread(str(DATA / "opencv_samples" / "messi5.jpg")), cv2.COLOR_BGR2RGB)
    x = cv2.resize(image, (256, 256))[None]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input:0": x.astype(np.int32)})))
    with torch.no_grad():
        got = net(normalise(torch.from_numpy(x)))
    assert np.abs(torch.sigmoid(got["kpt_heatmap"]).numpy() - outs["kpt_heatmap"]).max() < 1e-4
    assert np.abs(torch.sigmoid(got["center"]).numpy() - outs["center_heatmap"]).max() < 1e-4


@pytest.mark.data
def test_real_lspet_labels_are_on_the_person():
    recs = read_lspet(DATA / "labeled" / "lspet", limit=20)
    assert len(recs) == 20
    for r in recs:
        h, w = r.load().shape[:2]
        kp = r.people[0].keypoints
        v = kp[:, 2] > 0
        assert v.sum() >= 8
        assert (kp[v, 0] <= w + 5).all() and (kp[v, 1] <= h + 5).all()


@pytest.mark.data
def test_heads_cut_from_thunder_match_the_shipped_heads_file(tmp_path):
    from distill.teachers_import import compare, make_heads

    out = tmp_path / "movenet_thunder_heads.onnx"
    heads = make_heads(TEACHERS / "movenet_thunder.onnx", out)
    assert set(heads) == {"kpt_heatmap", "center_heatmap", "kpt_offset", "kpt_regress"}
    result = compare(out, TEACHERS / "movenet_thunder_heads.onnx")
    assert result["max_abs_diff"] <= 1e-5
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"input:0": np.zeros((3, 256, 256, 3), np.int32)})  # the batch is free
    assert outs[0].shape == (3, 17, 64, 64)


# ---- evaluation harness and gates -----------------------------------------------------------------


_WHERE = """
import ctypes, sys
import numpy as np
from distill.memory import reuse_freed_memory
if sys.argv[1] == "on":
    assert reuse_freed_memory()
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
a = np.ones(64 << 20, np.uint8)  # an activation-sized block: above glibc's largest mmap threshold
info = libc.mallinfo2()
print(info.hblkhd >> 20, info.arena >> 20)  # MB in mmapped blocks, MB in the heap
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_trainer_keeps_large_blocks_on_the_heap_where_freeing_them_costs_nothing():
    import subprocess
    where = {mode: [int(v) for v in subprocess.run([sys.executable, "-c", _WHERE, mode], capture_output=True,
                                                   text=True, check=True).stdout.split()] for mode in ("off", "on")}
    assert where["off"][0] >= 64  # by default: its own mapping, unmapped on free, faulted in again next step
    assert where["on"][0] == 0 and where["on"][1] >= 64, where  # on the heap, reused by the next step


def test_zoomed_out_detection_views_keep_the_box_on_the_person(tmp_path):
    """``--zoom-out`` views shrink the whole picture onto the canvas at a random place (and flip half of
    them): the teacher's boxes on the whole picture must land where the person is drawn in each view."""
    from distill.cache import build_detection_cache
    from distill.data import Record

    image = np.zeros((200, 320, 3), np.uint8)
    image[50:150, 100:140] = 255  # the "person"
    cv2.imwrite(str(tmp_path / "one.png"), image)

    class WhiteBoxes:  # a teacher that boxes the white pixels of the view it is given
        name = "white"
        calls = 0

        def boxes(self, view):
            WhiteBoxes.calls += 1
            ys, xs = np.nonzero(view.max(-1) > 128)
            return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 0.9]], np.float32)

    info = build_detection_cache([Record("photo", str(tmp_path / "one.png"), [])], WhiteBoxes(), tmp_path / "c",
                                 size=128, views_per_image=1, zoom_out=6, seed=3, progress=False)
    assert info["count"] == 7 and WhiteBoxes.calls == 1  # zoomed-out views reuse the whole picture's boxes
    images, boxes = np.load(tmp_path / "c" / "images.npy"), np.load(tmp_path / "c" / "boxes.npy")
    widths = []
    for im, rows in zip(images, boxes):
        ys, xs = np.nonzero(im.max(-1) > 100)
        drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 128
        assert np.abs(rows[0, :4] - drawn).max() < 3 / 128, (rows[0], drawn)
        assert rows[1:].sum() == 0
        widths.append(drawn[2] - drawn[0])
    assert max(widths[1:]) < widths[0] * 0.9  # people smaller than the whole picture shows them
