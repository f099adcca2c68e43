import numpy as np
import pytest

from service.pipeline import ImageTask, PosePipeline
from service.pipeline import decoders as dec
from service.pipeline import preprocess as pp
from service.pipeline.pipeline import nms
from service.pipeline.runtime import OnnxModel
from service.store import Manifest, ModelRegistry
from service.store import manifest as manifest_mod
from service.store.importer import import_model

from .helpers import POSE_FIELDS, blob_image, tiny_pose_onnx


def registry(store):
    return ModelRegistry(store, lambda m, d: OnnxModel(m, d, device="cpu", intra_threads=1))


def manifest(**over) -> Manifest:
    fields = {**POSE_FIELDS, "version": 1, "sha256": "0" * 64, **over}
    return Manifest.model_validate(fields)


def test_decoder_names_agree_with_manifest_schema():
    assert set(dec.POSE_DECODERS) == set(manifest_mod.POSE_DECODERS)
    assert set(dec.DETECTION_DECODERS) == set(manifest_mod.DETECTION_DECODERS)


def test_crop_matrix_round_trip():
    m = pp.crop_matrix(np.array([100, 50, 200, 250]), 1.25, 192, 256)
    centre = pp.apply_affine(np.array([[150.0, 150.0]]), m)
    assert np.allclose(centre, [[96, 128]], atol=1e-3)
    back = pp.apply_affine(pp.apply_affine(np.array([[120.0, 80.0]]), m), pp.invert(m))
    assert np.allclose(back, [[120, 80]], atol=1e-3)


@pytest.mark.parametrize("cx,cy", [(7.3, 5.6), (3.0, 12.45), (10.5, 10.5)])
def test_heatmap_decoder_is_subpixel(cx, cy):
    yy, xx = np.mgrid[0:16, 0:16].astype(np.float32)
    hm = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 1.5 ** 2)) * 0.8
    out = dec.decode_heatmap(manifest(), {"heatmaps": np.repeat(hm[None, None], 17, 1)})
    stride = 64 / 16
    assert np.allclose(out[0, :, 0], (cx + 0.5) * stride - 0.5, atol=0.05)
    assert np.allclose(out[0, :, 1], (cy + 0.5) * stride - 0.5, atol=0.05)
    assert np.allclose(out[0, :, 2], hm.max(), atol=1e-3)


def test_movenet_heads_decoder_picks_centred_person():
    n, k, h = 1, 17, 8
    kpt = np.zeros((n, k, h, h), np.float32)
    center = np.zeros((n, 1, h, h), np.float32)
    regress = np.zeros((n, 2 * k, h, h), np.float32)
    offset = np.zeros((n, 2 * k, h, h), np.float32)
    center[0, 0, 4, 4], center[0, 0, 0, 0] = 0.5, 0.6  # the corner one is stronger but far from the middle
    regress[0, 0::2, 4, 4], regress[0, 1::2, 4, 4] = -2, 1  # keypoints near (y=2, x=5)
    kpt[:, :, 2, 5] = 0.7
    kpt[:, :, 7, 0] = 0.9  # another person's joints, far from the regressed point
    offset[0, 0::2, 2, 5] = 0.25
    m = manifest(input={**POSE_FIELDS["input"], "height": 32, "width": 32},
                 output={"decoder": "movenet_heads", "names": ["a", "b", "c", "d"]})
    out = dec.decode_movenet_heads(m, {"a": kpt, "b": center, "c": regress, "d": offset})
    assert np.allclose(out[0, :, 0], 5 / 8 * 32)
    assert np.allclose(out[0, :, 1], 2.25 / 8 * 32)
    assert np.allclose(out[0, :, 2], 0.7)


def test_a_second_centre_peak_gives_the_other_person_in_the_crop():
    """Two people in one crop: the centre map has a second peak; its person is decoded from it (the first
    stays the decoder's), and a crop with one peak gives nobody more."""
    n, k, h = 2, 17, 16
    kpt = np.zeros((n, k, h, h), np.float32)
    center = np.zeros((n, 1, h, h), np.float32)
    regress = np.zeros((n, 2 * k, h, h), np.float32)
    offset = np.zeros((n, 2 * k, h, h), np.float32)
    center[:, 0, 8, 8] = 0.8  # the person in the middle of both crops
    center[0, 0, 8, 2] = 0.5  # crop 0 also holds someone on its left
    center[0, 0, 8, 9] = 0.6  # a neighbour cell of the first peak's person: too near, not someone else
    regress[0, 1::2, 8, 2] = -1  # their joints one cell left of their centre
    kpt[0, :, 8, 1] = 0.6
    kpt[:, :, 8, 8] = 0.9
    m = manifest(input={**POSE_FIELDS["input"], "height": 64, "width": 64},
                 output={"decoder": "movenet_heads", "names": ["a", "b", "c", "d"]})
    outs = {"a": kpt, "b": center, "c": regress, "d": offset}
    crops, kps, peaks = dec.movenet_second_people(m, outs, min_centre=0.3)
    assert crops.tolist() == [0] and np.allclose(peaks, [0.5])
    assert np.allclose(kps[0, :, 0], 1 / 16 * 64) and np.allclose(kps[0, :, 2], 0.6)
    assert np.allclose(dec.decode_movenet_heads(m, outs)[:, :, 0], 8 / 16 * 64)  # the first person unchanged
    assert len(dec.movenet_second_people(m, outs, min_centre=0.55)[0]) == 0  # below the bar


def test_keypoints_decoder_yx_normalised():
    m = manifest(output={"decoder": "keypoints", "names": ["k"], "params": {"order": "yx", "normalized": True}})
    raw = np.tile(np.array([0.25, 0.5, 0.9], np.float32), (1, 1, 17, 1))
    out = dec.decode_keypoints(m, {"k": raw})
    assert out.shape == (1, 17, 3)
    assert np.allclose(out[0, 0], [32, 16, 0.9])


def test_detection_decoders():
    det = {"name": "d", "version": 1, "sha256": "0" * 64, "task": "person_detection",
           "input": {"name": "x", "height": 100, "width": 200}}
    mp = Manifest.model_validate({**det, "output": {"decoder": "multipose", "names": ["o"]}})
    rows = np.zeros((1, 6, 56), np.float32)
    rows[0, 0, 51:56] = [0.1, 0.2, 0.5, 0.6, 0.8]
    boxes = dec.decode_multipose(mp, {"o": rows})[0]
    assert np.allclose(boxes[0], [40, 10, 120, 50, 0.8])
    cn = Manifest.model_validate({**det, "output": {"decoder": "centernet", "names": ["o"]}})
    rows = np.array([[[1, 2, 3, 4, 0.9, 0], [5, 6, 7, 8, 0.95, 2]]], np.float32)
    assert dec.decode_centernet(cn, {"o": rows})[0].tolist() == [[1, 2, 3, 4, pytest.approx(0.9)]]


def test_nms_drops_overlaps_keeps_best():
    boxes = np.array([[0, 0, 10, 10, 0.5], [1, 1, 10, 10, 0.9], [20, 20, 30, 30, 0.3]], np.float32)
    kept = nms(boxes, 0.5)
    assert kept[:, 4].tolist() == pytest.approx([0.9, 0.3])


def test_pipeline_maps_keypoints_back_to_image_pixels(store):
    reg = registry(store)
    pose, det = reg.get("tiny-pose"), reg.get("tiny-det")
    pipe = PosePipeline(detector_threshold=0.1)
    images = [blob_image(at=(90, 100)), blob_image(w=400, h=300, at=(150, 180))]
    out = pipe.run(pose, det, [ImageTask(im, min_score=0.0) for im in images])
    for res, (x, y) in zip(out, [(90, 100), (150, 180)]):
        assert len(res.people) == 1
        kps = res.people[0].keypoints
        assert np.abs(kps[:, 0] - x).max() < 4 and np.abs(kps[:, 1] - y).max() < 4
    # the detector box (normalised 0.1..0.6 × 0.1..0.9) comes back in image pixels
    assert np.allclose(out[1].people[0].bbox, [40, 30, 240, 270], atol=0.5)


def test_client_boxes_skip_the_detector_and_fixed_batch_models_chunk(store, tmp_path):
    m, _ = import_model(store, tiny_pose_onnx(tmp_path / "b1.onnx", batch=1),
                        {**POSE_FIELDS, "name": "tiny-pose-b1"})
    reg = registry(store)
    fixed, dynamic = reg.get("tiny-pose-b1"), reg.get("tiny-pose")
    assert fixed.session.max_batch == 1 and dynamic.session.max_batch == 0
    img = blob_image(w=500, h=300, at=(100, 100))
    img[:, 250:] = blob_image(w=250, h=300, at=(120, 200))  # second blob at (370, 200)
    boxes = np.array([[40, 40, 160, 160], [300, 120, 440, 280]], np.float32)
    pipe = PosePipeline()
    a = pipe.run(fixed, None, [ImageTask(img, boxes, 0.0, 5)])[0]
    b = pipe.run(dynamic, None, [ImageTask(img, boxes, 0.0, 5)])[0]
    got = sorted((p.keypoints[0, 0], p.keypoints[0, 1]) for p in a.people)
    assert np.allclose(got, [(100, 100), (370, 200)], atol=4)
    assert np.allclose(sorted(p.score for p in a.people), sorted(p.score for p in b.people))


def test_pipeline_requires_detector_without_boxes(store):
    reg = registry(store)
    with pytest.raises(ValueError):
        PosePipeline().run(reg.get("tiny-pose"), None, [ImageTask(blob_image())])


@pytest.mark.parametrize("spinning,value", [(False, "0"), (True, "1")])
def test_thread_spinning_follows_the_setting(store, spinning, value, monkeypatch):
    """Pool threads busy-wait only when asked: off by default, so the detector's and the pose model's
    sessions do not take cores from each other between their turns."""
    from service.engine import sessions_for
    from service.settings import Settings

    monkeypatch.setenv("POSEKD_ORT_SPINNING", "true" if spinning else "false")
    settings = Settings(device="cpu", ort_intra_threads=1)
    assert settings.ort_spinning is spinning
    manifest_, data = store.read_verified("tiny-pose", store.versions("tiny-pose")[0])
    model = sessions_for(settings)(manifest_, data)
    opts = model.ort.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == value
    assert OnnxModel(manifest_, data, device="cpu", intra_threads=1).ort.get_session_options() \
        .get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_letterbox_pads_only_to_the_next_multiple_when_the_graph_takes_any():
    spec = manifest(input={**POSE_FIELDS["input"], "height": 256, "width": 256, "size_multiple": 32}).input
    square = spec.model_copy(update={"size_multiple": 0})
    landscape, portrait = np.zeros((480, 640, 3), np.uint8), np.zeros((640, 427, 3), np.uint8)
    assert pp.resize_for_detector(landscape, square)[0].shape == (256, 256, 3)
    view, (sx, sy) = pp.resize_for_detector(landscape, spec)
    assert view.shape == (192, 256, 3) and sx == sy == 0.4
    assert pp.resize_for_detector(portrait, spec)[0].shape == (256, 192, 3)  # 171 px wide, padded to 192
    with pytest.raises(ValueError, match="multiples"):
        manifest(input={**POSE_FIELDS["input"], "height": 250, "width": 256, "size_multiple": 32})
    with pytest.raises(ValueError, match="letterbox"):
        manifest(input={**POSE_FIELDS["input"], "resize": "stretch", "size_multiple": 32})


def test_free_size_detector_runs_each_view_at_its_own_size(store, tmp_path):
    """Views of several sizes in one call: each size runs as its own batch and is decoded with its own
    height and width, so a box normalised to the view comes back in the right image pixels."""
    from .helpers import DET_FIELDS, tiny_detector_onnx

    fields = {**DET_FIELDS, "name": "tiny-det-free",
              "input": {**DET_FIELDS["input"], "resize": "letterbox", "size_multiple": 16}}
    import_model(store, tiny_detector_onnx(tmp_path / "free.onnx", free_size=True), fields)
    det = registry(store).get("tiny-det-free")
    images = [np.zeros((300, 400, 3), np.uint8), np.zeros((400, 300, 3), np.uint8),
              np.zeros((300, 400, 3), np.uint8), np.zeros((300, 300, 3), np.uint8)]
    boxes = PosePipeline(detector_threshold=0.1).detect(det, images)
    # views 64×48, 48×64, 64×48, 64×64 (scale 0.16, 0.16, 0.16, 0.2133): the box 0.1..0.6 × 0.1..0.9 of each view
    expected = [[40, 30, 240, 270], [30, 40, 180, 360], [40, 30, 240, 270], [30, 30, 180, 270]]
    for got, want in zip(boxes, expected):
        assert got.shape == (1, 5) and np.allclose(got[0, :4], want, atol=0.5)


def test_a_fixed_size_graph_is_refused_when_the_manifest_says_any_size(tmp_path):
    from .helpers import DET_FIELDS, tiny_detector_onnx

    fields = {**DET_FIELDS, "version": 1, "sha256": "0" * 64,
              "input": {**DET_FIELDS["input"], "resize": "letterbox", "size_multiple": 16}}
    data = tiny_detector_onnx(tmp_path / "fixed.onnx").read_bytes()
    with pytest.raises(ValueError, match="fixed"):
        OnnxModel(Manifest.model_validate(fields), data, device="cpu", intra_threads=1)
