"""The real teachers from ../shared/teachers on real images from ../shared/data (marker ``data``)."""
import shutil

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.pipeline import ImageTask, PosePipeline
from service.pipeline import preprocess as pp
from service.pipeline.runtime import OnnxModel
from service.settings import Settings
from service.store import ModelRegistry, ModelStore
from service.store.importer import import_teachers

from .conftest import DATA, TEACHERS

pytestmark = pytest.mark.data
TEACHER_DEFAULTS = {"default_pose_model": "movenet-thunder", "default_detector": "movenet-multipose"}


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory):
    store = ModelStore(tmp_path_factory.mktemp("teachers") / "store")
    import_teachers(store, TEACHERS)
    return store


@pytest.fixture(scope="module")
def client(teacher_store):
    settings = Settings(model_store=teacher_store.root, store_poll_s=0, api_keys=[], admin_api_keys=[],
                        **TEACHER_DEFAULTS)
    with TestClient(create_app(settings)) as c:
        yield c


def sample(name: str) -> bytes:
    return (DATA / "opencv_samples" / name).read_bytes()


def inside(kps, bbox, slack=0.15):
    x1, y1, x2, y2 = bbox
    w, h = x2 - x1, y2 - y1
    return ((kps[:, 0] > x1 - slack * w) & (kps[:, 0] < x2 + slack * w) &
            (kps[:, 1] > y1 - slack * h) & (kps[:, 1] < y2 + slack * h))


def test_basketball_returns_both_players(client):
    r = client.post("/v1/pose", files={"image": ("b.png", sample("basketball1.png"), "image/png")})
    assert r.status_code == 200, r.text
    people = r.json()["people"]
    assert len(people) == 2
    left, right = sorted(people, key=lambda p: p["bbox"][0])
    assert left["bbox"][2] < 320 < right["bbox"][0]  # one player on each side of the frame
    for p in people:
        kps = np.array(p["keypoints"])
        assert inside(kps, p["bbox"]).sum() >= 15
        assert kps[0:5, 1].mean() < kps[11:13, 1].mean()  # head above hips
    # the left player stands in full view: head above hips above ankles
    kps = np.array(left["keypoints"])
    assert kps[0:5, 1].mean() < kps[11:13, 1].mean() < kps[15:17, 1].mean()
    assert min(kps[15:17, 2]) > 0.5


def test_messi_returns_the_player(client):
    r = client.post("/v1/pose", content=sample("messi5.jpg"), headers={"content-type": "image/jpeg"})
    people = r.json()["people"]
    assert len(people) >= 1
    best = people[0]
    kps = np.array(best["keypoints"])
    assert best["score"] > 0.5 and inside(kps, best["bbox"], 0.0).all()
    assert kps[0, 1] < kps[15:17, 1].min()  # nose above the feet


def test_lightning_and_centernet_run_through_the_same_pipeline(client):
    r = client.post("/v1/pose", params={"model": "movenet-lightning", "detector": "centernet"},
                    files={"image": ("b.png", sample("basketball1.png"), "image/png")})
    assert r.status_code == 200
    assert r.json()["model"]["name"] == "movenet-lightning" and len(r.json()["people"]) >= 2


def test_heads_decoder_matches_movenet_own_decoder(teacher_store):
    """Our decoder over Thunder's raw heads must reproduce the full Thunder graph's output."""
    import onnxruntime as ort

    full = ort.InferenceSession(str(TEACHERS / "movenet_thunder.onnx"), providers=["CPUExecutionProvider"])
    reg = ModelRegistry(teacher_store, lambda m, d: OnnxModel(m, d, device="cpu"))
    heads = reg.get("movenet-thunder")
    image = cv2.imread(str(DATA / "opencv_samples" / "basketball2.png"))
    for box in ([30, 80, 165, 480], [430, 20, 636, 480]):
        m = pp.crop_matrix(np.array(box, np.float32), 1.25, 256, 256)
        crop = pp.warp_crop(image, m, 256, 256)
        x = pp.to_tensor([crop], heads.manifest.input)
        ref = full.run(None, {"input:0": x})[0][0, 0]  # (y, x, score) normalised
        ours = heads.session.run(x)
        from service.pipeline.decoders import decode_movenet_heads
        kp = decode_movenet_heads(heads.manifest, ours)[0]
        assert np.allclose(kp[:, 0] / 256, ref[:, 1], atol=1e-4)
        assert np.allclose(kp[:, 1] / 256, ref[:, 0], atol=1e-4)
        assert np.allclose(kp[:, 2], ref[:, 2], atol=1e-4)


def test_corrupt_real_model_refused_while_previous_serves(teacher_store, tmp_path):
    store = ModelStore(tmp_path / "store")
    shutil.copytree(teacher_store.root, store.root)
    settings = Settings(model_store=store.root, store_poll_s=0, api_keys=[], admin_api_keys=[], **TEACHER_DEFAULTS)
    with TestClient(create_app(settings)) as c:
        v2 = store.version_dir("movenet-thunder", 2)
        shutil.copytree(store.version_dir("movenet-thunder", 1), v2)
        manifest = (v2 / "model.json").read_text().replace('"version": 1', '"version": 2')
        (v2 / "model.json").write_text(manifest)
        data = bytearray((v2 / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0x01  # one flipped bit in the weights
        (v2 / "model.onnx").write_bytes(bytes(data))
        r = c.put("/v1/models/movenet-thunder/aliases/production", json={"version": 2})
        assert r.status_code == 409 and r.json()["error"]["code"] == "model_verification_failed"
        r = c.post("/v1/pose", files={"image": ("b.png", sample("basketball1.png"), "image/png")})
        assert r.status_code == 200 and r.json()["model"] == {"name": "movenet-thunder", "version": 1}
        assert len(r.json()["people"]) == 2


def test_crops_of_several_images_batch_through_thunder(teacher_store):
    reg = ModelRegistry(teacher_store, lambda m, d: OnnxModel(m, d, device="cpu"))
    pipe = PosePipeline()
    imgs = [cv2.imread(str(DATA / "opencv_samples" / n)) for n in ("basketball1.png", "basketball2.png")]
    together = pipe.run(reg.get("movenet-thunder"), reg.get("movenet-multipose"), [ImageTask(i) for i in imgs])
    alone = [pipe.run(reg.get("movenet-thunder"), reg.get("movenet-multipose"), [ImageTask(i)])[0] for i in imgs]
    for a, b in zip(together, alone):
        assert len(a.people) == len(b.people) == 2
        for p, q in zip(a.people, b.people):
            assert np.allclose(p.keypoints, q.keypoints, atol=1e-3)
